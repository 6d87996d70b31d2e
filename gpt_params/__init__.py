"""gpt-params: learned one-step optimizers from generative models of network checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpt-params")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from gpt_params.errors import GptParamsError  # noqa: E402

__all__ = ["GptParamsError", "__version__"]

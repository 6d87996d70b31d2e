"""gpt-params: learned one-step optimizers from generative models of network checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpt-params")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

from gpt_params.errors import GptParamsError  # noqa: E402


def __getattr__(name: str):
    # imported on first use, so `gpt-params --help` does not pay for torch and diffusers
    if name == "LearnedOptimizer":
        from gpt_params.optimizer import LearnedOptimizer

        return LearnedOptimizer
    raise AttributeError(f"module 'gpt_params' has no attribute {name!r}")


__all__ = ["GptParamsError", "LearnedOptimizer", "__version__"]

"""Exceptions raised where bad input enters; each message names the bad value and what was expected."""


class GptParamsError(ValueError):
    """Base class: the CLI turns any of these into a one-line error and a non-zero exit."""


class LayoutError(GptParamsError):
    """A parameter vector, state dict or module does not match a task's layout."""


class TaskError(GptParamsError):
    """Unknown task name or invalid task option."""


class DataError(GptParamsError):
    """A data directory or data file is missing, unreadable or malformed."""


class ZooError(GptParamsError):
    """A zoo file is missing, unreadable, of another task/layout/schema, or its config disagrees."""

"""Task registry: ``get_task(name)`` returns a :class:`Task`; ``TASKS`` lists the names."""

from __future__ import annotations

from collections.abc import Callable

from gpt_params.errors import TaskError
from gpt_params.tasks.base import Task
from gpt_params.tasks.cartpole import CartPoleTask
from gpt_params.tasks.supervised import (
    SupervisedTask,
    make_cifar10_cnn,
    make_digits_mlp,
    make_mnist_cnn,
    make_mnist_mlp,
)

_REGISTRY: dict[str, Callable[..., Task]] = {
    "mnist-mlp": make_mnist_mlp,
    "mnist-cnn": make_mnist_cnn,
    "cifar10-cnn": make_cifar10_cnn,
    "cartpole": lambda **kw: CartPoleTask(**kw),
    "digits-mlp": make_digits_mlp,
}
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str, **options) -> Task:
    """The task called ``name``. Supervised tasks take ``data_dir``, ``download`` and ``data`` (injected
    :class:`~gpt_params.tasks.data.Splits`); ``cartpole`` takes ``n_eval_episodes``, ``n_sampled_episodes``, ``sampled_seed`` and ``uniform_seed``."""
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as e:
        raise TaskError(f"invalid options {sorted(options)} for task {name!r}: {e}") from None


__all__ = ["TASKS", "CartPoleTask", "SupervisedTask", "Task", "get_task"]

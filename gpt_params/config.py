"""Typed dataclass configs turned into argparse flags (one flag per field, help from field metadata)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, TypeVar

T = TypeVar("T")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line doc that becomes the flag's help."""
    return field(default=default, metadata={"help": help})


def _base_type(tp: Any) -> type:
    """``int | None`` -> ``int``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` for each field of dataclass ``cls`` (required when it has no default)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, type=tp, required=True, help=help_)
        elif tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            parser.add_argument(flag, type=tp, default=f.default, help=f"{help_} (default: {f.default})")


def from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update(overrides)
    return cls(**values)

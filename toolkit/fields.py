"""Config fields that declare what they allow: a switch's default and its other allowed values, on the field.

    ffn: str = choice("swiglu", "gelu")      # the default first; `check_choices` refuses anything else
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from .errors import unknown


def choice(default: str, *others: str):
    """A switch's field: its default and the other allowed values, declared once, on the field."""
    return field(default=default, metadata={"choices": (default, *others)})


def check_choices(cfg: Any, prefix: str) -> None:
    """Every field declared with `choice` (recursively through nested dataclasses) holds an allowed value."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise unknown(f"{prefix}{f.name}", value, allowed)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")


def choices_of(cls: type, name: str) -> tuple:
    """The allowed values of a switch declared with `choice`."""
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)

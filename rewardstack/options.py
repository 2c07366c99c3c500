"""Config fields that document themselves: `option(default, "help")` keeps a field's default and its
help text in one place; the CLI builds each command's flags from them."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:  # noqa: A002 (the name click uses)
    """A dataclass field with `help` in its metadata; `factory` for mutable defaults."""
    return field(default=default, default_factory=factory, metadata={"help": help})


def help_of(dataclass_field) -> str:
    return dataclass_field.metadata.get("help", "")

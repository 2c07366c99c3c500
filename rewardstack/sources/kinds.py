"""The registry of source kinds. A YAML node `{kind: NAME, ...}` is built by the builder registered under
NAME: a new kind is a module with a source class and one `@register_kind` function, imported by tree.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class Place:
    """Where a node is: the folder its paths are relative to, its place in the tree (for messages), and
    the modules its rules may import besides those beside the tree."""

    base_dir: Path
    where: str
    allowed: tuple[str, ...] = ()

    def build(self, node: Any, suffix: str):
        """The source of a child node at `where + suffix`."""
        from .tree import build_source

        return build_source(node, self.base_dir, f"{self.where}{suffix}", self.allowed)


Builder = Callable[[dict, Place], Any]
BUILDERS: dict[str, Builder] = {}


def register_kind(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        BUILDERS[name] = builder
        return builder

    return register


def required(node: Any, key: str, where: str) -> Any:
    if not isinstance(node, dict) or node.get(key) is None:
        raise UserError(f"{where}: missing `{key}`")
    return node[key]


def number(node: dict, key: str, where: str, default: float | None = None) -> float:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}")
    return float(value)


def members(node: dict, place: Place) -> dict:
    """A composite node's `members: [{name, source}, ...]`, built, by name (names unique)."""
    listed = required(node, "members", place.where)
    if not isinstance(listed, list) or not listed:
        raise UserError(f"{place.where}.members: give a non-empty list")
    built = {}
    for i, member in enumerate(listed):
        name = str(member.get("name", f"member{i}")) if isinstance(member, dict) else f"member{i}"
        if name in built:
            raise UserError(f"{place.where}.members[{i}]: the name {name!r} is used twice")
        built[name] = place.build(required(member, "source", f"{place.where}.members[{i}]"), f".members[{i}].source")
    return built

"""`Registry`: string-keyed factories with aliases, shared by the norm and attention registries.

Names are case-insensitive and ``-`` equals ``_``. Registering the same factory again
(a notebook reloading a methods module) replaces the entry; a *different* factory under
a taken name raises unless ``overwrite=True``. Entries are any objects with a
``factory`` attribute (the caller's dataclass carries its own extra fields).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Generic, Sequence, TypeVar

from .errors import UnknownName

E = TypeVar("E")


def registry_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def factory_origin(factory: Callable) -> str:
    """``module.qualname`` of a factory (of its function, for a ``functools.partial``)."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


class Registry(Generic[E]):
    """``kind`` names what is registered (``"norm"``, ``"attention"``) in error messages."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self.entries: dict[str, E] = {}
        self.aliases: dict[str, str] = {}

    def add(self, name: str, factory: Callable, aliases: Sequence[str],
            make_entry: Callable[[str, tuple[str, ...]], E], overwrite: bool = False) -> E:
        key = registry_key(name)
        alias_keys = tuple(registry_key(a) for a in aliases)
        for k in (key, *alias_keys):
            owner = self.aliases.get(k)
            if owner is None or overwrite:
                continue
            owner_origin = factory_origin(self.entries[owner].factory)  # type: ignore[attr-defined]
            if owner_origin != factory_origin(factory) or (k == key and owner != key):
                raise ValueError(f"{self.kind} name {k!r} is already registered to {owner!r} "
                                 f"({owner_origin}); pass overwrite=True to replace it")
        if key in self.entries:   # drop the old entry's aliases before re-adding
            self.remove(key)
        entry = make_entry(key, alias_keys)
        self.entries[key] = entry
        for k in (key, *alias_keys):
            self.aliases[k] = key
        return entry

    def remove(self, name: str) -> None:
        key = self.aliases.get(registry_key(name))
        if key is None:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names(True))}")
        for k in [k for k, v in self.aliases.items() if v == key]:
            del self.aliases[k]
        del self.entries[key]

    def names(self, with_aliases: bool = False) -> list[str]:
        return sorted(self.aliases) if with_aliases else sorted(self.entries)

    def get(self, name: str) -> E:
        key = registry_key(name)
        if key not in self.aliases:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names(True))}. "
                              + self.hint)
        return self.entries[self.aliases[key]]

    def __contains__(self, name: Any) -> bool:
        return isinstance(name, str) and registry_key(name) in self.aliases

"""A name -> builder table with loud lookups (the pattern of timm's model registry)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import UnknownName

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, fn: T | None = None, *, name: str | None = None):
        """Decorator: `@REG.register` or `@REG.register(name="x")`."""

        def add(f: T) -> T:
            key = name or f.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._items[key] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownName(self.kind, name, self.names())
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def items(self):
        return sorted(self._items.items())

"""A name -> builder table with loud lookups (the pattern of timm's model registry)."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar, cast, overload

from imgtrain.core.errors import UnknownName

T = TypeVar("T")  # builder functions, or plain values (presets) registered with an explicit name


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, fn: T, *, name: str | None = None) -> T: ...

    @overload
    def register(self, fn: None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, fn: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Decorator: `@REG.register` or `@REG.register(name="x")`."""

        def add(f: T) -> T:
            key = name or cast("Callable[..., Any]", f).__name__  # without a name, f is a function
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

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

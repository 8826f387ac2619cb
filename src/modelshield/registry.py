"""Plain name -> class registries, filled when a class is defined."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from modelshield.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named classes (or factories) with a lookup error that lists the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

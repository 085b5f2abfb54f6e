"""One registry type for every extension point: architectures, datasets, bench backends, benchmark
comparisons. Names are unique (a second registration is a bug, raised at import), listed in the order
they were registered, and an unknown name is an error that lists the known ones."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, *, unknown: Callable[[str, list[str]], Exception] | None = None):
        """``what`` names the entries in messages ("architecture"); ``unknown(name, known)`` builds the
        error for a name nobody registered (a KeyError by default)."""
        self.what = what
        self._entries: dict[str, T] = {}
        self._unknown = unknown or (lambda name, known: KeyError(
            f"unknown {what} {name!r}; choose one of {', '.join(known)}"))

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self._unknown(name, self.names())
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

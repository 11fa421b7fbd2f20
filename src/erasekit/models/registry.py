"""`Registry`: names mapped to entries, each a value or a lazy target loaded on first use.

Methods, parameter scopes, saliency scorers, concept detectors, attacks and
concept packs are each one `Registry`.  An entry is given either as a value
(`add`) or as a lazy target (`lazy`), resolved by `get` and kept:

- ``"package.module:attribute"``: the module's attribute is the entry;
- ``"package.module"``: importing the module adds the entry itself (with `add`);
- a callable with no arguments: its return value is the entry.

So listing names (`names`) imports nothing.  An unknown name raises the
registry's error class with the close matches (``did you mean ...?``) and the
known names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """No entry has this name; the message lists close matches and the known names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries of one kind (``kind`` names it in error messages), by name."""

    def __init__(self, kind: str, error: type[Exception] = UnknownNameError, also: tuple[str, ...] = ()):
        self.kind = kind
        self.error = error
        self.also = also  # names the caller resolves itself (e.g. "auto"), listed in errors
        self._values: dict[str, T] = {}
        self._targets: dict[str, str | Callable[[], T]] = {}

    def add(self, name: str, value: T, overwrite: bool = False) -> T:
        """Record ``value`` under ``name``; a name already holding a value needs ``overwrite``."""
        if name in self._values and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._values[name] = value
        self._targets.pop(name, None)
        return value

    def lazy(self, name: str, target: str | Callable[[], T]) -> None:
        """Record where ``name``'s entry comes from, loaded by the first `get`."""
        if name in self._values or name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._targets[name] = target

    def names(self) -> list[str]:
        return sorted({*self._values, *self._targets})

    def __contains__(self, name: object) -> bool:
        return name in self._values or name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unknown(self, name: str) -> Exception:
        """The error for an unknown ``name``: close matches first, then every known name."""
        known = [*self.also, *self.names()]
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return self.error(f"unknown {self.kind} {name!r}{hint} (available: {', '.join(known)})")

    def get(self, name: str) -> T:
        """The entry ``name``, loading its lazy target on first use."""
        if name in self._values:
            return self._values[name]
        if name not in self._targets:
            raise self.unknown(name)
        target = self._targets[name]
        if callable(target):
            value = target()
        else:
            module, _, attribute = target.partition(":")
            loaded = importlib.import_module(module)
            if not attribute:
                if name not in self._values:
                    raise KeyError(f"{module} does not register {self.kind} {name!r}")
                return self._values[name]
            value = getattr(loaded, attribute)
        self._values[name] = value
        del self._targets[name]
        return value

"""Name -> callable registries, in the style of timm's: a dict you can also decorate with.

``MAP["name"] = fn`` (TextBrewer's way) and ``@MAP.register("name")`` both add an entry. Looking up an
unknown name raises :class:`~brewkit.errors.UnknownNameError` (a ``ConfigError`` and a ``KeyError``) that
names the registry and lists what exists, closest match first.
"""
from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from .errors import ConfigError, UnknownNameError


def _closest_first(name: str, known: list[str]) -> list[str]:
    if not known:  # difflib refuses n=0
        return []
    close = difflib.get_close_matches(str(name), known, n=len(known), cutoff=0.0)
    return close + [k for k in known if k not in close]


class Registry(MutableMapping):
    """A dict of named callables with a ``register`` decorator and helpful errors.

    Each entry may carry a one-line description (the first line of its docstring unless given) and
    attributes (``meta``) that the engine reads, e.g. ``builder=True`` for temperature-scheduler builders.
    """

    def __init__(self, name: str, what: str):
        self.name = name          # e.g. "MATCH_LOSS_MAP"
        self.what = what          # e.g. "match loss"
        self._store: dict[str, Callable] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    # -- dict protocol -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Callable:
        try:
            return self._store[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def __setitem__(self, name: str, fn: Callable) -> None:
        self._add(name, fn, overwrite=None)

    def __delitem__(self, name: str) -> None:
        if name not in self._store:
            raise self.unknown(name)
        del self._store[name]
        self._meta.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._store
        except TypeError:
            return False

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(self._store)})"

    # -- registration --------------------------------------------------------------------------------
    def register(self, name: str, *, overwrite: bool = False, description: str | None = None, **meta: Any):
        """Decorator: ``@MATCH_LOSS_MAP.register("my_l1")``. Re-using a name needs ``overwrite=True``."""

        def deco(fn: Callable) -> Callable:
            self._add(name, fn, overwrite=overwrite, description=description, **meta)
            return fn

        return deco

    def _add(self, name: str, fn: Callable, *, overwrite: bool | None, description: str | None = None,
             **meta: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"names must be non-empty strings, got {name!r}", self.name)
        if not callable(fn):
            raise ConfigError(f"{self.what} {name!r} must be callable, got {type(fn).__name__}", self.name)
        if name in self._store and self._store[name] is not fn:
            if overwrite is False:
                raise ConfigError(f"{name!r} is already registered; pass overwrite=True to replace it",
                                  self.name)
            if overwrite is None:  # plain assignment: allowed, as in TextBrewer, but never silent
                warnings.warn(f"{self.name}[{name!r}] replaced an existing entry", stacklevel=3)
        self._store[name] = fn
        doc = (description or (fn.__doc__ or "").strip().split("\n")[0]).strip()
        self._meta[name] = {"description": doc, **meta}

    def snapshot(self) -> tuple[dict, dict]:
        """The entries and their attributes as they are now, for :meth:`restore` (tests register and forget)."""
        return dict(self._store), {n: dict(m) for n, m in self._meta.items()}

    def restore(self, snapshot: tuple[dict, dict]) -> None:
        """Put back exactly the entries a :meth:`snapshot` saw, dropping any registered since."""
        store, meta = snapshot
        self._store.clear()
        self._store.update(store)
        self._meta.clear()
        self._meta.update({n: dict(m) for n, m in meta.items()})

    # -- introspection -------------------------------------------------------------------------------
    def meta(self, name: str) -> dict[str, Any]:
        """Attributes registered with ``name`` (``description`` and any flags)."""
        self[name]  # raises the helpful error
        return self._meta.get(name, {})

    def describe(self) -> list[tuple[str, str]]:
        """``(name, one-line description)`` for every entry, in registration order."""
        return [(n, self._meta.get(n, {}).get("description", "")) for n in self._store]

    def unknown(self, name: object) -> UnknownNameError:
        known = list(self._store)
        listed = ", ".join(repr(k) for k in _closest_first(str(name), known)) or "(none)"
        return UnknownNameError(f"unknown {self.what} {name!r}; known: {listed}", self.name)


class SchedulerRegistry(Registry):
    """TextBrewer's ``DynamicKeyDict``: a list/tuple key builds a scheduler from a registered builder.

    ``TEMPERATURE_SCHEDULER[['flsw', 1, 2]]`` calls ``builder(1, 2)``;
    ``TEMPERATURE_SCHEDULER[['flsw', {'beta': 1, 'gamma': 2}]]`` calls ``builder(beta=1, gamma=2)``.
    """

    def __getitem__(self, key):
        if isinstance(key, (list, tuple)):
            if not key:
                raise ConfigError(f"an empty spec names no {self.what}", self.name)
            builder = super().__getitem__(key[0])
            args = list(key[1:])
            try:
                if len(args) == 1 and isinstance(args[0], dict):
                    return builder(**args[0])
                return builder(*args)
            except TypeError as e:
                raise ConfigError(f"bad parameters for {self.what} {key[0]!r}: {e}", self.name) from None
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, (list, tuple)):
            return bool(key) and super().__contains__(key[0])
        return super().__contains__(key)

"""Checking plain config data: the validators every config section uses, and the base of the config classes.

Each ``check_*`` function returns the value (normalised to a plain Python type) or raises
:class:`~brewkit.errors.ConfigError` whose ``path`` names the field (``gradient_accumulation_steps``,
``split.eval_fraction``); callers put their section in front with :meth:`ConfigError.at`. :class:`ConfigBase`
gives a dataclass dict / JSON / YAML round-tripping; :func:`safe_load` reads YAML without building objects.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
from collections.abc import Sequence
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .yamlio import safe_load  # also re-exported from here; brewkit.yamlio reads all YAML

NONE = "none"
"""The spelling of "no scheduler" / "no cache" in configs (TextBrewer's ``'none'``)."""

T = TypeVar("T", bound="ConfigBase")


# -- type tests -----------------------------------------------------------------------------------------
def is_int(x: Any) -> bool:
    """True for Python and numpy integers; False for ``bool`` (``True`` is not a layer index)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """True for real numbers (int, float, numpy scalars); False for ``bool``."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# -- validators -----------------------------------------------------------------------------------------
def check_int(value: Any, path: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an ``int``; it must be an integer ``>= minimum`` (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not is_int(value) or (minimum is not None and value < minimum):
        need = f"an integer >= {minimum}" if minimum is not None else "an integer"
        raise ConfigError(f"must be {need}{' or null' if allow_none else ''}, got {value!r}", path)
    return int(value)


def check_number(value: Any, path: str, *, positive: bool = False, allow_none: bool = False) -> float | int | None:
    """``value`` as a plain ``int`` or ``float``: a finite real number, ``> 0`` when ``positive``.

    Integers stay ``int`` (``weight: 1`` round-trips as ``1``); numpy scalars become Python numbers, which
    JSON can write.
    """
    if value is None and allow_none:
        return None
    if not is_number(value) or (positive and not value > 0):
        need = "a positive number" if positive else "a number"
        raise ConfigError(f"must be {need}{' or null' if allow_none else ''}, got {value!r}", path)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", path)
    return int(value) if is_int(value) else float(value)


def check_bool(value: Any, path: str) -> bool:
    """``value`` itself; it must be ``True`` or ``False`` (``1`` and ``"yes"`` are mistakes)."""
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", path)
    return value


def check_choice(value: Any, path: str, allowed: Sequence[Any]) -> Any:
    """``value`` itself; it must be one of ``allowed`` (listed in the message)."""
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}", path)
    return value


def check_registered(registry: Any, name: Any, path: str, *, none_ok: bool = False) -> Any:
    """``name`` itself; it must be a key of ``registry`` (a :class:`~brewkit.registry.Registry`).

    With ``none_ok``, ``None`` and ``'none'`` are accepted and give ``'none'``. An unknown name gets the
    registry's message (closest names, how to register one).
    """
    if none_ok and (name is None or name == NONE):
        return NONE
    if not isinstance(name, str):
        raise ConfigError(f"must be a {registry.what} name (a string), got {name!r}", path)
    if name not in registry:
        raise ConfigError(registry.unknown(name).message, path)
    return name


def check_keys(d: Any, allowed: Sequence[str], path: str = "") -> None:
    """Raise ConfigError for a non-mapping or for keys not in ``allowed`` (closest allowed key suggested).

    The error's path is ``path.key`` for an unknown key, ``path`` for a non-mapping.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"must be a mapping, got {type(d).__name__}", path or None)
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key{hint}; allowed: {', '.join(allowed)}",
                              f"{path}.{key}" if path else str(key))


# -- the config base ------------------------------------------------------------------------------------
class ConfigBase:
    """Dict / JSON / YAML round-tripping for config dataclasses (subclasses are ``@dataclass``).

    ``from_dict`` rejects unknown keys (closest field suggested) and lets the dataclass' ``__post_init__``
    validate the values; ``to_dict`` gives plain JSON data (tuples become lists, nested configs dicts).
    """

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                v = [x.to_dict() if hasattr(x, "to_dict") else x for x in v]
            out[f.name] = v
        return json.loads(json.dumps(out))  # plain data only (tuples -> lists)

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        check_keys(d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)

    @classmethod
    def from_json_file(cls: type[T], path: str) -> T:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[T], text: str) -> T:
        return cls.from_dict(safe_load(text) or {})

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return "\n".join(f"{k} : {v}" for k, v in self.to_dict().items())

"""Exception types. Every error brewkit raises on bad input is a :class:`BrewkitError`.

Error messages stay short whatever they quote: :func:`brief` is a bounded ``repr`` for values put in a message,
and :class:`ConfigError` cuts a message longer than :data:`MESSAGE_LIMIT` characters in the middle.
"""
from __future__ import annotations

import reprlib
from typing import Any

MESSAGE_LIMIT = 1500
"""The most characters of a :class:`ConfigError` message (its path excluded); the middle of a longer one is cut."""
PATH_LIMIT = 300
"""The most characters of a :class:`ConfigError` path (a path built from very long keys is cut)."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 120, 120, 60


def brief(value: Any, limit: int = 200) -> str:
    """``repr(value)`` in at most ``limit`` characters (a longer one is cut in the middle, saying by how much).

    Containers show their first 8 items and 3 levels of nesting (``[[[1, 2, [...]], ...], ...]``), so a value
    built from nested YAML aliases costs no more than a small one; strings show their start and end.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 -- a broken __repr__ must not hide the error being reported
        text = f"<{type(value).__name__} object>"
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a note of what was left out."""
    if len(text) <= limit:
        return text
    note = f" ...[{len(text) - limit} characters cut]... "
    keep = max(limit - len(note), 2)
    head = (keep * 2) // 3
    return text[:head] + note + text[len(text) - (keep - head):]


class BrewkitError(Exception):
    """Base class of every error brewkit raises on purpose."""


class ConfigError(BrewkitError, ValueError):
    """A configuration value is wrong. ``path`` names the field (e.g. ``intermediate_matches[2].loss``).

    The message is bounded: beyond :data:`MESSAGE_LIMIT` characters its middle is replaced by a note of how much
    was cut (the path, the start of the message and its end, which usually says what to do, are kept)."""

    def __init__(self, message: str, path: str | None = None):
        message = _cut(str(message), MESSAGE_LIMIT)
        path = _cut(str(path), PATH_LIMIT) if path is not None else None
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def at(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` put in front of its path (``training`` + ``seed`` -> ``training.seed``)."""
        if not prefix:
            return self
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        err = type(self).__new__(type(self))
        ConfigError.__init__(err, self.message, path)
        return err


class UnknownNameError(ConfigError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return ConfigError.__str__(self)


class AdaptorError(BrewkitError, ValueError):
    """An adaptor returned something the distiller cannot use (wrong key, type, layer or shape).

    ``path`` names the config entry at fault when there is one (``intermediate_matches[1].layer_S``), so that a
    run-file front end can report it as ``distillation.intermediate_matches[1].layer_S``."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class NonFiniteLossError(BrewkitError, FloatingPointError):
    """A loss term or gradient became NaN or infinite."""


class CheckpointError(BrewkitError, RuntimeError):
    """A checkpoint is missing, incomplete, or does not belong to this run."""

"""Exception types. Every error brewkit raises on bad input is a :class:`BrewkitError`."""
from __future__ import annotations


class BrewkitError(Exception):
    """Base class of every error brewkit raises on purpose."""


class ConfigError(BrewkitError, ValueError):
    """A configuration value is wrong. ``path`` names the field (e.g. ``intermediate_matches[2].loss``)."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def at(self, prefix: str) -> "ConfigError":
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
    """An adaptor returned something the distiller cannot use (wrong key, type, layer or shape)."""


class NonFiniteLossError(BrewkitError, FloatingPointError):
    """A loss term or gradient became NaN or infinite."""


class CheckpointError(BrewkitError, RuntimeError):
    """A checkpoint is missing, incomplete, or does not belong to this run."""

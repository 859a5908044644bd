"""Adaptors turn a model's output (and its batch) into the dict the distillers read.

An adaptor is ``adaptor(batch, model_outputs) -> dict`` with keys from ``ADAPTOR_KEYS`` (``logits``,
``logits_mask``, ``losses``, ``inputs_mask``, ``labels``, ``hidden``, ``attention``) or a name appended to
``FEATURES``. ``hidden`` / ``attention`` / custom features are lists indexed by layer. Attention lists that hold
probabilities (as Hugging Face models return) are marked by wrapping them in :class:`AttentionProbs`.
A key whose value is ``None`` counts as absent (``{'attention': model_outputs.attentions}`` from a model that
returned no attentions is the same as leaving the key out).

Unknown keys: in brewkit's distillers a key that is neither in ``ADAPTOR_KEYS`` nor in ``FEATURES`` is an
:class:`~brewkit.errors.AdaptorError` naming the key and the closest known one (a misspelled ``input_mask``
would otherwise silently switch masking off, as it did in TextBrewer's MSRA-NER example). Through
``brewkit.compat.textbrewer`` (TextBrewer scripts, which TextBrewer let pass) the same key is a warning with
the same text, and is then ignored: see :class:`LenientAdaptor` and ``validate_output(unknown='warn')``.

Leave the adaptor out (``None``) for Hugging Face models: :func:`hf_adaptor` is used.
"""
from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..errors import AdaptorError, ConfigError
from .hf import AttentionProbs, hf_adaptor  # noqa: F401

_LISTED = ("logits", "logits_mask", "losses", "labels")


def normalize_output(out: object, who: str) -> dict:
    """TextBrewer's ``post_adaptor``: a new dict without the keys whose value is ``None`` (absent), with
    ``logits`` / ``logits_mask`` / ``losses`` / ``labels`` wrapped in a list when they are a single tensor.

    ``who`` (e.g. ``"adaptor_S"``) is used in error messages.
    """
    if not isinstance(out, Mapping):
        raise AdaptorError(f"{who} must return a dict, got {type(out).__name__}")
    out = {k: v for k, v in out.items() if v is not None}
    for key in _LISTED:
        if key in out and not isinstance(out[key], (list, tuple)):
            out[key] = [out[key]]
    return out


def allowed_keys(features: Iterable[str], keys: Iterable[str]) -> list[str]:
    """The keys an adaptor may return: ``keys`` (``ADAPTOR_KEYS``) then the other ``features``."""
    keys = list(keys)
    return keys + [f for f in features if f not in keys]


def unknown_key_message(who: str, key: object, allowed: list[str]) -> str:
    """One line: the unknown key, the closest allowed key (difflib) and the allowed keys."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"{who} returned unknown key {key!r}.{hint} Allowed keys: {', '.join(allowed)} "
            "(append a custom feature name to brewkit.presets.FEATURES)")


def validate_output(out: dict, who: str, features: list[str], keys: list[str], unknown: str = "error") -> None:
    """Check an adaptor's dict once (on the first batch): known keys, lists of tensors where lists belong.

    ``unknown='error'`` (brewkit) raises :class:`AdaptorError` for a key outside ``keys`` and ``features``;
    ``unknown='warn'`` (TextBrewer scripts) warns with the same message and leaves the key to be ignored.
    """
    if unknown not in ("error", "warn"):
        raise ConfigError(f"must be 'error' or 'warn', got {unknown!r}", "validate_output.unknown")
    allowed = allowed_keys(features, keys)
    for key in out:
        if key not in allowed:
            if unknown == "error":
                raise AdaptorError(unknown_key_message(who, key, allowed))
            warnings.warn(unknown_key_message(who, key, allowed) + "; ignored", UserWarning, stacklevel=2)
    for key in [k for k in out if k in features]:
        value = out[key]
        if isinstance(value, torch.Tensor):
            raise AdaptorError(f"{who}[{key!r}] must be a list of per-layer tensors, got a single tensor of shape "
                               f"{tuple(value.shape)}; wrap it as [tensor] (or list(...) over layers)")
        if not isinstance(value, (list, tuple)):
            raise AdaptorError(f"{who}[{key!r}] must be a list of per-layer tensors, got {type(value).__name__}")
    for key in _LISTED:
        for i, t in enumerate(out.get(key) or []):
            if not isinstance(t, torch.Tensor):
                raise AdaptorError(f"{who}[{key!r}][{i}] must be a tensor, got {type(t).__name__}")
    mask = out.get("inputs_mask")
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise AdaptorError(f"{who}['inputs_mask'] must be a (B, L) tensor, got {type(mask).__name__}")


class LenientAdaptor:
    """An adaptor that drops the keys TextBrewer would have ignored, with one warning per key.

    ``LenientAdaptor(adaptor, who)(batch, outputs)`` calls ``adaptor`` and returns its dict without the keys that
    are neither in ``keys`` (default ``brewkit.presets.ADAPTOR_KEYS``) nor in ``features`` (default
    ``brewkit.presets.FEATURES``, read at each call, so that names appended later count). The first time a key
    is dropped a ``UserWarning`` names it and the closest known key (``'input_mask'`` -> ``'inputs_mask'``).
    Keys whose value is ``None`` are absent, never warned about. ``brewkit.compat.textbrewer``'s distillers
    run every adaptor through one; brewkit's own distillers raise for such a key instead.
    """

    def __init__(self, adaptor: Callable[[Any, Any], Any], who: str, features: list[str] | None = None,
                 keys: list[str] | None = None):
        if not callable(adaptor):
            raise AdaptorError(f"{who} must be callable as adaptor(batch, model_outputs), got "
                               f"{type(adaptor).__name__}")
        self.adaptor, self.who = adaptor, who
        self.features, self.keys = features, keys
        self.warned: set[str] = set()
        functools.update_wrapper(self, adaptor, updated=())

    def __call__(self, batch: Any, model_outputs: Any) -> Any:
        out = self.adaptor(batch, model_outputs)
        if not isinstance(out, Mapping):
            return out  # normalize_output reports it
        from ..presets import ADAPTOR_KEYS, FEATURES

        allowed = allowed_keys(FEATURES if self.features is None else self.features,
                               ADAPTOR_KEYS if self.keys is None else self.keys)
        unknown = [k for k, v in out.items() if k not in allowed and v is not None]
        if not unknown:
            return out
        for key in unknown:
            if key not in self.warned:
                self.warned.add(key)
                warnings.warn(unknown_key_message(self.who, key, allowed) + "; ignored, as TextBrewer did",
                              UserWarning, stacklevel=2)
        return {k: v for k, v in out.items() if k not in unknown}

    def __repr__(self) -> str:
        return f"LenientAdaptor({self.adaptor!r}, {self.who!r})"

"""Tokenise a split once and keep the result on disk, keyed by tokenizer, settings and data.

The cache file is ``<cache_dir>/tokenized/<key>.arrow`` where the key hashes the tokenizer's full
definition (vocabulary, normaliser, special tokens, ...; see :func:`tokenizer_fingerprint`), ``max_length``
and the rows themselves, so a changed file, tokenizer or setting never reuses a stale result. Padding
is not part of the key: it happens per batch, in the collator.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

from ..errors import BrewkitError
from .config import DataConfig

logger = logging.getLogger(__name__)

CACHE_VERSION = "brewkit-tokenized-v1"  # bump when the stored columns change
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> str:
    """``$BREWKIT_CACHE``, else ``$XDG_CACHE_HOME/brewkit``, else ``~/.cache/brewkit`` (``~`` expanded in each)."""
    if os.environ.get("BREWKIT_CACHE"):
        return os.path.expanduser(os.environ["BREWKIT_CACHE"])
    base = os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"))
    return os.path.join(base, "brewkit")


class CacheDirError(BrewkitError, OSError):
    """The cache directory (``data.cache_dir``, else :func:`default_cache_dir`) is a file or cannot be written."""


def check_cache_dir(cfg: DataConfig) -> str:
    """Create the cache directory ``cfg`` uses (``cfg.cache_dir``, else :func:`default_cache_dir`) and check that
    a file can be written in it; returns its path. A path that is (or runs through) a file, or a directory that
    cannot be written, is a :class:`CacheDirError` naming the setting it came from, before any data is read."""
    path = cfg.cache_dir or default_cache_dir()
    if cfg.cache_dir:
        where, fix = "data.cache_dir", "set data.cache_dir to a writable directory"
    else:
        var = "BREWKIT_CACHE" if os.environ.get("BREWKIT_CACHE") else \
            "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else None
        where = f"the cache directory (from ${var})" if var else "the default cache directory"
        fix = "set data.cache_dir (or $BREWKIT_CACHE) to a writable directory"
    blocker = path
    while blocker and not os.path.exists(blocker):  # the nearest existing part of the path
        parent = os.path.dirname(blocker)
        blocker = parent if parent != blocker else ""
    if blocker and not os.path.isdir(blocker):
        inside = "" if blocker == path else f" (so {path} cannot be made in it)"
        raise CacheDirError(f"{where}: {blocker} is a file, not a directory{inside}; {fix}")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".brewkit-write-test-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CacheDirError(f"{where}: cannot write to {path} ({e.strerror or e}); {fix}") from None
    return path


def tokenizer_fingerprint(tokenizer) -> str:
    """A hex digest that changes whenever the tokenizer would produce different ids.

    Fast tokenizers hash their serialised ``tokenizers`` definition (minus the truncation / padding state
    that every call overwrites); slow ones hash the vocabulary and init arguments.
    """
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    extras = {"truncation_side": getattr(tokenizer, "truncation_side", None),
              "model_input_names": list(getattr(tokenizer, "model_input_names", []))}
    h.update(json.dumps(extras, sort_keys=True).encode())
    return h.hexdigest()


def _data_fingerprint(ds, columns: list[str]) -> str:
    h = hashlib.sha256(json.dumps([len(ds), columns]).encode())
    for batch in ds.select_columns(columns).iter(batch_size=10_000):
        h.update(json.dumps([batch[c] for c in columns]).encode())
    return h.hexdigest()


def encode_texts(rows: dict, *, tokenizer, max_length: int) -> dict:
    """Rows ``text`` [, ``text_pair``] [, ``label``] (lists) -> ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (when the tokenizer gives them), ``length`` and ``labels`` (the label ids): what a
    sequence-classification row becomes (``brewkit.tasks.Task.encode``)."""
    enc = tokenizer(rows["text"], rows.get("text_pair"), truncation=True, max_length=max_length)
    out = {k: enc[k] for k in TOKEN_COLUMNS if k in enc}
    out["length"] = [len(ids) for ids in enc["input_ids"]]
    if "label" in rows:
        out["labels"] = rows["label"]
    return out


def _encode_batch(batch: dict, indices: list[int] | None = None, *, tokenizer, max_length: int, task=None,
                  cfg: DataConfig | None = None) -> dict:
    out = task.encode(batch, tokenizer, cfg) if task is not None else \
        encode_texts(batch, tokenizer=tokenizer, max_length=max_length)
    if indices is not None:
        out["idx"] = indices
    return out


def tokenize_dataset(ds, tokenizer, cfg: DataConfig, task=None):
    """``ds`` (columns ``text`` [, ``text_pair``] [, ``label``] [, ``idx``]) tokenised, from cache when possible.

    Returns a ``datasets.Dataset`` with ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
    tokenizer gives them), ``length``, ``labels`` (when ``ds`` has ``label``) and ``idx`` (taken from ``ds``,
    or the row number). Rows are truncated to ``cfg.max_length`` and not padded. ``task`` (a
    :class:`brewkit.tasks.Task`) encodes the rows its own way (:meth:`~brewkit.tasks.Task.encode`: token labels,
    next-token targets); None: :func:`encode_texts`.
    """
    import datasets

    text_columns = [c for c in ("text", "text_pair", "label", "idx") if c in ds.column_names]
    parts = [CACHE_VERSION, tokenizer_fingerprint(tokenizer), cfg.max_length, _data_fingerprint(ds, text_columns)]
    if task is not None:
        parts.append(task.fingerprint(cfg, tokenizer))
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    path = os.path.join(cfg.cache_dir or default_cache_dir(), "tokenized", f"{key}.arrow")
    if os.path.isfile(path):
        logger.info("tokenised data from cache %s", path)
        return datasets.Dataset.from_file(path)
    has_idx = "idx" in ds.column_names
    drop = [c for c in ds.column_names if c != "idx"]
    # datasets writes a temporary file and renames it, so a reader (another rank) never sees half a file.
    return ds.map(_encode_batch, batched=True, with_indices=not has_idx, remove_columns=drop,
                  fn_kwargs={"tokenizer": tokenizer, "max_length": cfg.max_length, "task": task, "cfg": cfg},
                  cache_file_name=path, new_fingerprint=key, load_from_cache_file=False, desc="Tokenizing")

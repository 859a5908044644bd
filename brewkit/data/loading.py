"""Read the data files of a :class:`DataConfig` into train / eval ``datasets.Dataset`` objects.

The result has the columns ``text`` (``text_pair`` for pair tasks), ``label`` (int ids, absent when
``label_column`` is null), ``idx`` (0..N-1 within its split, a stable key for caching teacher outputs)
and, when the split rule groups rows, ``group`` (the group value as a string).
Steps, in order: read the file through ``datasets``; drop rows with a missing text or label; map label
names to ids (rows with an unlisted label are dropped); drop repeated texts (first kept); cut the eval
split by group; take the optional seeded subsets.
"""
from __future__ import annotations

import logging
import math
import os
import random
from typing import Any, Callable

from ..errors import ConfigError
from .config import DataConfig, SplitRule, resolve_data_path

logger = logging.getLogger(__name__)

_BUILDERS = {"csv": ("csv", {}), "tsv": ("csv", {"sep": "\t"}), "json": ("json", {}), "jsonl": ("json", {}),
             "parquet": ("parquet", {})}


def read_table(cfg: DataConfig, key: str, base_dir: str | None = None):
    """The raw file named by ``cfg.<key>`` (``train_file`` / ``eval_file``) as a ``datasets.Dataset``."""
    import datasets

    try:
        path = resolve_data_path(getattr(cfg, key), base_dir)
    except ConfigError as e:
        raise ConfigError(e.message, key) from None
    if not os.path.isfile(path):
        raise ConfigError(f"file not found: {path}", key)
    fmt = cfg.file_format(path)
    builder, kwargs = _BUILDERS[fmt]
    cache_dir = os.path.join(cfg.cache_dir, "datasets") if cfg.cache_dir else None
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as e:  # datasets raises many types; all mean "this file is not readable as fmt"
        raise ConfigError(f"cannot read {path} as {fmt}: {type(e).__name__}: {e}", key) from e


def _columns(cfg: DataConfig, raw, key: str, group_by: str | None) -> dict[str, list]:
    """The columns the config names, as lists; a missing column is a ConfigError naming the field."""
    wanted = [("text_column", cfg.text_column), ("text_pair_column", cfg.text_pair_column),
              ("label_column", cfg.label_column), ("split.group_by", group_by)]
    out = {}
    for field, column in wanted:
        if column is None:
            continue
        if column not in raw.column_names:
            raise ConfigError(f"column {column!r} is not in {getattr(cfg, key)}; its columns are: "
                              f"{', '.join(raw.column_names)}", field)
        out[field] = raw[column][:]  # [:] turns a lazy Column into a list
    return out


def _examples(cfg: DataConfig, raw, key: str, group_by: str | None = None) -> dict[str, list]:
    """Clean rows: ``text`` [, ``text_pair``] [, ``label``] [, ``group``] lists of equal length."""
    cols = _columns(cfg, raw, key, group_by)
    texts = cols["text_column"]
    pairs = cols.get("text_pair_column")
    labels = cols.get("label_column")
    groups = cols.get("split.group_by")
    label_ids = {name: i for i, name in enumerate(cfg.labels)} if cfg.labels is not None else None

    out: dict[str, list] = {"text": [], "text_pair": [], "label": [], "group": []}
    seen: set = set()
    missing = unlisted = repeated = 0
    for i, text in enumerate(texts):
        pair = pairs[i] if pairs is not None else None
        label = labels[i] if labels is not None else None
        if text is None or (pairs is not None and pair is None) or (labels is not None and _is_missing(label)):
            missing += 1
            continue
        for field, value in (("text_column", text), ("text_pair_column", pair)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"column {getattr(cfg, field)!r} must hold text, but row {i} holds {value!r}",
                                  field)
        if labels is not None:
            if label_ids is not None:
                if label not in label_ids:
                    unlisted += 1
                    continue
                label = label_ids[label]
            else:
                label = _integer_label(label, cfg.label_column, i)
        if cfg.dedupe:
            dedupe_key = (text, pair)
            if dedupe_key in seen:
                repeated += 1
                continue
            seen.add(dedupe_key)
        out["text"].append(text)
        out["text_pair"].append(pair)
        out["label"].append(label)
        out["group"].append(groups[i] if groups is not None else None)

    if label_ids is not None and not out["text"] and unlisted:
        found = sorted({str(v) for v in labels if not _is_missing(v)})[:10]
        raise ConfigError(f"no row of {getattr(cfg, key)} has one of the labels {cfg.labels}; column "
                          f"{cfg.label_column!r} holds values such as {found}", "labels")
    if not out["text"]:
        raise ConfigError(f"{getattr(cfg, key)} has no usable rows ({missing} have a missing text or label)", key)
    logger.info("%s: %d rows kept; dropped %d with a missing value, %d with an unlisted label, %d repeated texts",
                getattr(cfg, key), len(out["text"]), missing, unlisted, repeated)
    if pairs is None:
        del out["text_pair"]
    if labels is None:
        del out["label"]
    if groups is None:
        del out["group"]
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _integer_label(value: Any, column: str, row: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"column {column!r} holds {value!r} at row {row}; without a labels list the labels "
                          f"must be integer ids >= 0 (list the label names under labels to map them)", "labels")
    return value


def split_by_group(rows: dict[str, list], rule: SplitRule) -> tuple[dict[str, list], dict[str, list]]:
    """Cut ``rows`` into (train, eval); rows of one group stay together, the rest keeps file order.

    Groups (in order of first appearance) are shuffled by ``rule.seed`` and moved to eval until eval holds
    at least ``eval_fraction`` of the rows, so eval overshoots the fraction by less than one group.
    A row without a group value (``group_by`` null, or a missing cell) is a group of its own.
    """
    n = len(rows["text"])
    group_of = rows.get("group") or [None] * n
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(("row", i) if _is_missing(g) else ("group", g), []).append(i)
    order = list(members)
    random.Random(rule.seed).shuffle(order)
    target = rule.eval_fraction * n
    eval_rows: list[int] = []
    for g in order:
        if len(eval_rows) >= target:
            break
        eval_rows.extend(members[g])
    if not eval_rows or len(eval_rows) == n:
        raise ConfigError(f"the split leaves {'the eval' if not eval_rows else 'the train'} set empty "
                          f"({n} rows in {len(members)} groups)", "split.eval_fraction")
    in_eval = set(eval_rows)
    train_idx = [i for i in range(n) if i not in in_eval]
    eval_idx = sorted(eval_rows)
    return _take(rows, train_idx), _take(rows, eval_idx)


def _take(rows: dict[str, list], indices: list[int]) -> dict[str, list]:
    return {k: [v[i] for i in indices] for k, v in rows.items()}


def _subset(rows: dict[str, list], limit: int | None, seed: int) -> dict[str, list]:
    n = len(rows["text"])
    if limit is None or limit >= n:
        return rows
    return _take(rows, sorted(random.Random(seed).sample(range(n), limit)))


def _to_dataset(rows: dict[str, list]):
    import datasets

    rows = dict(rows)
    if "group" in rows:  # kept for inspection (which movie a review is about); tokenising drops it
        rows["group"] = [None if _is_missing(g) else str(g) for g in rows["group"]]
    rows["idx"] = list(range(len(rows["text"])))
    features = {"text": datasets.Value("string"), "group": datasets.Value("string"),
                "idx": datasets.Value("int64")}
    if "text_pair" in rows:
        features["text_pair"] = datasets.Value("string")
    if "label" in rows:
        features["label"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(rows, features=datasets.Features({k: features[k] for k in rows}))


def load_splits(cfg: DataConfig, base_dir: str | None = None, augment: Callable[[dict], dict] | None = None):
    """``(train, eval)`` datasets for ``cfg``; eval is None when there is neither ``eval_file`` nor ``split``.

    ``base_dir`` anchors relative file paths (e.g. the directory of the run's YAML file). ``augment`` (e.g. a
    :class:`~brewkit.data.augment.NeighbourAugmenter`) maps the training rows, as a dict of column lists, to
    the rows plus their altered copies; the eval rows are never augmented.
    """
    rule = cfg.split
    train = _examples(cfg, read_table(cfg, "train_file", base_dir), "train_file",
                      group_by=rule.group_by if rule is not None else None)
    evaluation = None
    if cfg.eval_file is not None:
        evaluation = _examples(cfg, read_table(cfg, "eval_file", base_dir), "eval_file")
    elif rule is not None:
        train, evaluation = split_by_group(train, rule)
    seed = rule.seed if rule is not None else 0
    train = _subset(train, cfg.max_train_examples, seed)
    if augment is not None:
        n = len(train["text"])
        train = augment(train)
        logger.info("augmentation: %d training rows -> %d", n, len(train["text"]))
    train = _to_dataset(train)
    if evaluation is not None:
        evaluation = _to_dataset(_subset(evaluation, cfg.max_eval_examples, seed))
    return train, evaluation

"""Read the data files of a :class:`DataConfig` into train / eval ``datasets.Dataset`` objects.

The result has the columns ``text`` (``text_pair`` for pair tasks), ``label`` (int ids, absent when
``label_column`` is null), ``idx`` (0..N-1 within its split, a stable key for caching teacher outputs)
and, when the split rule groups rows, ``group`` (the group value as a string).
Steps, in order: read the file through ``datasets``; drop rows with a missing text or label; map label
names to ids (a label value with spaces around it is matched without them; rows with an unlisted label are
dropped, but more than ``max_unlisted_label_fraction`` of them is an error); drop repeated texts (first
kept); cut the eval split by group; take the optional seeded subsets; refuse a training set of one class.
Every dropped row is counted, per reason and with a few of the values, in one WARNING line per file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, brief
from ..logging_utils import ensure_default_handler
from .config import DataConfig, SplitRule, resolve_data_path
from .files import check_file, explain_read_error

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
    check_file(path, key)
    fmt = cfg.file_format(path)
    builder, kwargs = _BUILDERS[fmt]
    cache_dir = os.path.join(cfg.cache_dir, "datasets") if cfg.cache_dir else None
    # datasets logs a broken file at ERROR (with a traceback-like line) before raising; the ConfigError says it
    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as e:  # noqa: BLE001 -- datasets raises many types; all mean "not readable as fmt"
        raise ConfigError(explain_read_error(path, fmt, e), key) from None
    finally:
        ds_logger.setLevel(level)


def text_fields(cfg: DataConfig) -> tuple[str, str | None]:
    """The fields whose columns become ``text`` and ``text_pair``: ``messages_column`` (chat data, one list of
    messages per row), ``prompt_column`` and ``completion_column``, else ``text_column`` and
    ``text_pair_column``."""
    if cfg.messages_column is not None:
        return "messages_column", None
    if cfg.prompt_column is not None:
        return "prompt_column", "completion_column"
    return "text_column", "text_pair_column"


def _columns(cfg: DataConfig, raw, key: str, group_by: str | None) -> dict[str, list]:
    """The columns the config names, as lists; a missing column is a ConfigError naming the field."""
    text_field, pair_field = text_fields(cfg)
    wanted = [("text_column", getattr(cfg, text_field)), ("text_pair_column", getattr(cfg, pair_field or "", None)),
              ("label_column", cfg.label_column), ("split.group_by", group_by)]
    field_of = {"text_column": text_field, "text_pair_column": pair_field}
    out = {}
    for field, column in wanted:
        if column is None:
            continue
        if column not in raw.column_names:
            raise ConfigError(f"column {column!r} is not in {getattr(cfg, key)}; its columns are: "
                              f"{', '.join(raw.column_names)}", field_of.get(field, field))
        out[field] = raw[column][:]  # [:] turns a lazy Column into a list
    return out


def _examples(cfg: DataConfig, raw, key: str, group_by: str | None = None, rows: str = "text") -> dict[str, list]:
    """Clean rows: ``text`` [, ``text_pair``] [, ``label``] [, ``group``] lists of equal length.

    Drops rows with a missing value, an unlisted label or a repeated text, and logs what it dropped (one
    WARNING line with counts per reason and examples). Raises ConfigError at ``labels`` when more than
    ``cfg.max_unlisted_label_fraction`` of the labelled rows hold a value not in ``cfg.labels``.
    ``rows="words"`` (token classification): ``text`` is a list of words and ``label`` a list of tag ids, one
    per word (:func:`_word_examples`). Chat data (``messages_column``): ``text`` is the row's messages as JSON.
    """
    if rows == "words":
        return _word_examples(cfg, raw, key, group_by)
    cols = _columns(cfg, raw, key, group_by)
    if cfg.messages_column is not None:
        cols["text_column"] = [_chat_json(v, cfg.messages_column, i) for i, v in enumerate(cols["text_column"])]
    texts = cols["text_column"]
    pairs = cols.get("text_pair_column")
    labels = cols.get("label_column")
    groups = cols.get("split.group_by")
    label_ids = {name: i for i, name in enumerate(cfg.labels)} if cfg.labels is not None else None
    to_drop = set(cfg.drop_labels or ())
    source = getattr(cfg, key)

    out: dict[str, list] = {"text": [], "text_pair": [], "label": [], "group": []}
    seen: set = set()
    missing: dict[str, list[int]] = {"text": [], "text pair": [], "label": []}  # reason -> row numbers
    unlisted: Counter = Counter()  # label value -> rows
    dropped: Counter = Counter()  # values of drop_labels -> rows
    stripped: Counter = Counter()
    repeated: list[str] = []
    for i, text in enumerate(texts):
        pair = pairs[i] if pairs is not None else None
        label = labels[i] if labels is not None else None
        gap = ("text" if text is None else "text pair" if pairs is not None and pair is None
               else "label" if labels is not None and _is_missing(label) else None)
        if gap is not None:
            missing[gap].append(i + 1)
            continue
        for field, value in zip(text_fields(cfg), (text, pair)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"column {getattr(cfg, field)!r} must hold text, but row {i} holds "
                                  f"{brief(value)}", field)
        if labels is not None:
            if to_drop and _hashable(label) in to_drop:
                dropped[label] += 1
                continue
            if label_ids is not None:
                if label not in label_ids and isinstance(label, str) and label.strip() in label_ids:
                    stripped[label] += 1
                    label = label.strip()
                if label not in label_ids:
                    unlisted[label] += 1
                    continue
                label = label_ids[label]
            else:
                label = _integer_label(label, cfg.label_column, i)
        if cfg.dedupe:
            dedupe_key = (text, pair)
            if dedupe_key in seen:
                repeated.append(text)
                continue
            seen.add(dedupe_key)
        out["text"].append(text)
        out["text_pair"].append(pair)
        out["label"].append(label)
        out["group"].append(groups[i] if groups is not None else None)

    n_unlisted = sum(unlisted.values())
    if label_ids is not None and not out["text"] and n_unlisted:
        found = sorted({str(v) for v in labels if not _is_missing(v)})[:10]
        raise ConfigError(f"no row of {source} has one of the labels {brief(cfg.labels)}; column "
                          f"{cfg.label_column!r} holds values such as {brief(found)}", "labels")
    labelled = len(texts) - sum(len(rows) for rows in missing.values()) - sum(dropped.values())
    if n_unlisted and n_unlisted > cfg.max_unlisted_label_fraction * labelled:
        raise ConfigError(f"{n_unlisted} of the {labelled} labelled rows of {source} "
                          f"({100 * n_unlisted / labelled:.1f}%) have a label that is not listed "
                          f"({brief(cfg.labels)}): {_tally(unlisted)}. List the label (or fix its spelling) "
                          "in data.labels, fix the file, or set data.max_unlisted_label_fraction (now "
                          f"{cfg.max_unlisted_label_fraction:g}) to 1 to drop such rows", "labels")
    if not out["text"]:
        raise ConfigError(f"{source} has no usable rows ({len(texts) - labelled} have a missing text or label)",
                          key)
    _report(source, len(texts), len(out["text"]), missing, dropped, unlisted, stripped, repeated)
    if pairs is None:
        del out["text_pair"]
    if labels is None:
        del out["label"]
    if groups is None:
        del out["group"]
    return out


def _chat_json(value: Any, column: str, row: int) -> str | None:
    """A chat cell (a list of ``{role, content}`` mappings with string values) as JSON; None stays None."""
    if value is None:
        return None
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise ConfigError(f"column {column!r} must hold a non-empty list of {{role, content}} messages per row, but "
                          f"row {row} holds {brief(value)}", "messages_column")
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in value], ensure_ascii=False)


def _tag_id(tag: Any, label_ids: dict | None, n_labels: int | None) -> int | None:
    """A tag's id: its position in ``labels``, or the tag itself when it is an integer id below ``n_labels``
    (files often store tag ids); None for a tag that is neither."""
    if label_ids is not None and _hashable(tag) in label_ids:
        return label_ids[tag]
    if isinstance(tag, str) and label_ids is not None and tag.strip() in label_ids:
        return label_ids[tag.strip()]
    if isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag < (n_labels or 0):
        return tag
    return None


def _word_examples(cfg: DataConfig, raw, key: str, group_by: str | None = None) -> dict[str, list]:
    """Token-classification rows: ``text`` (a list of words) and ``label`` (a list of tag ids, one per word).

    A row with a missing cell or no words is dropped and reported; a row whose tag list is not as long as its
    word list, or that holds a tag outside ``cfg.labels`` (names or ids), is a ConfigError naming the row.
    """
    cols = _columns(cfg, raw, key, group_by)
    words_col, tags_col = cols["text_column"], cols.get("label_column")
    groups = cols.get("split.group_by")
    label_ids = {name: i for i, name in enumerate(cfg.labels)} if cfg.labels is not None else None
    n_labels = len(cfg.labels) if cfg.labels is not None else None
    out: dict[str, list] = {"text": [], "label": [], "group": []}
    missing: dict[str, list[int]] = {"text": [], "text pair": [], "label": []}
    seen: set = set()
    repeated: list[str] = []
    for i, words in enumerate(words_col):
        tags = tags_col[i] if tags_col is not None else None
        if not words or (tags_col is not None and tags is None):
            missing["text" if not words else "label"].append(i + 1)
            continue
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise ConfigError(f"column {cfg.text_column!r} must hold a list of words per row (token_classification), "
                              f"but row {i} holds {brief(words)}", "text_column")
        ids = None
        if tags_col is not None:
            if not isinstance(tags, list) or len(tags) != len(words):
                raise ConfigError(f"row {i} of {getattr(cfg, key)} has {len(words)} words but its "
                                  f"{cfg.label_column!r} cell holds {brief(tags)}: one tag per word",
                                  "label_column")
            ids = [_tag_id(t, label_ids, n_labels) for t in tags]
            bad = [t for t, j in zip(tags, ids) if j is None]
            if bad:
                raise ConfigError(f"row {i} of {getattr(cfg, key)} has the tag {brief(bad[0])}, which is not in "
                                  f"labels {brief(cfg.labels)} (nor an id below {n_labels}); list every tag",
                                  "labels")
        if cfg.dedupe:
            dedupe_key = tuple(words)
            if dedupe_key in seen:
                repeated.append(" ".join(words))
                continue
            seen.add(dedupe_key)
        out["text"].append(list(words))
        out["label"].append(ids)
        out["group"].append(groups[i] if groups is not None else None)
    if not out["text"]:
        raise ConfigError(f"{getattr(cfg, key)} has no usable rows", key)
    _report(getattr(cfg, key), len(words_col), len(out["text"]), missing, Counter(), Counter(), Counter(),
            repeated)
    if tags_col is None:
        del out["label"]
    if groups is None:
        del out["group"]
    return out


_EXAMPLES = 3  # values quoted per reason in a report or an error


def _tally(counts: Counter) -> str:
    """``'pos ' (3 rows), 'neutral' (1 row)``: the most frequent values first, bounded."""
    items = [f"{brief(value, 60)} ({n} row{'s' if n != 1 else ''})" for value, n in counts.most_common(_EXAMPLES)]
    if len(counts) > _EXAMPLES:
        items.append(f"{len(counts) - _EXAMPLES} more value(s)")
    return ", ".join(items)


def _rows_list(rows: list[int]) -> str:
    more = f", ... ({len(rows)} in all)" if len(rows) > _EXAMPLES else ""
    return ", ".join(map(str, rows[:_EXAMPLES])) + more


def _report(source: str, total: int, kept: int, missing: dict[str, list[int]], dropped: Counter,
            unlisted: Counter, stripped: Counter, repeated: list[str]) -> None:
    """One log line for a file: INFO when every row was kept as it is, else WARNING with each reason."""
    parts = [f"dropped {len(rows)} with a missing {what} (rows {_rows_list(rows)}, counting from 1)"
             for what, rows in missing.items() if rows]
    if dropped:
        parts.append(f"dropped {sum(dropped.values())} with a label in data.drop_labels: {_tally(dropped)}")
    if unlisted:
        parts.append(f"dropped {sum(unlisted.values())} with a label not in data.labels: {_tally(unlisted)}")
    if repeated:
        examples = ", ".join(brief(t, 60) for t in repeated[:_EXAMPLES])
        parts.append(f"dropped {len(repeated)} repeated texts (first kept; data.dedupe), e.g. {examples}")
    if stripped:
        parts.append(f"matched {sum(stripped.values())} labels after removing the spaces around them: "
                     f"{_tally(stripped)}")
    if not parts:
        logger.info("%s: all %d rows kept", source, total)
        return
    logger.warning("%s: %d of %d rows kept; %s", source, kept, total, "; ".join(parts))


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:  # a list or dict in a JSON label column matches nothing
        return None
    return value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _integer_label(value: Any, column: str, row: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"column {column!r} holds {brief(value)} at row {row}; without a labels list the labels "
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
    words = bool(rows["text"]) and isinstance(rows["text"][0], list)  # token classification: lists per row
    features = {"text": datasets.Sequence(datasets.Value("string")) if words else datasets.Value("string"),
                "group": datasets.Value("string"), "idx": datasets.Value("int64")}
    if "text_pair" in rows:
        features["text_pair"] = datasets.Value("string")
    if "label" in rows:
        features["label"] = datasets.Sequence(datasets.Value("int64")) if words else datasets.Value("int64")
    return datasets.Dataset.from_dict(rows, features=datasets.Features({k: features[k] for k in rows}))


def load_splits(cfg: DataConfig, base_dir: str | None = None, augment: Callable[[dict], dict] | None = None,
                rows: str = "text"):
    """``(train, eval)`` datasets for ``cfg``; eval is None when there is neither ``eval_file`` nor ``split``.

    ``base_dir`` anchors relative file paths (e.g. the directory of the run's YAML file). ``augment`` (e.g. a
    :class:`~brewkit.data.augment.NeighbourAugmenter`) maps the training rows, as a dict of column lists, to
    the rows plus their altered copies; the eval rows are never augmented. ``rows``: ``"text"`` (one text or
    text pair per row) or ``"words"`` (token classification: a list of words and one of tags per row; the
    task's ``rows``).
    """
    ensure_default_handler()  # so that the report of dropped rows is seen (the engine sets it up later)
    rule = cfg.split
    train = _examples(cfg, read_table(cfg, "train_file", base_dir), "train_file",
                      group_by=rule.group_by if rule is not None else None, rows=rows)
    evaluation = None
    if cfg.eval_file is not None:
        evaluation = _examples(cfg, read_table(cfg, "eval_file", base_dir), "eval_file", rows=rows)
    elif rule is not None:
        train, evaluation = split_by_group(train, rule)
    seed = rule.seed if rule is not None else 0
    train = _subset(train, cfg.max_train_examples, seed)
    if evaluation is not None:
        evaluation = _subset(evaluation, cfg.max_eval_examples, seed)
    _check_classes(cfg, train, evaluation)
    if augment is not None:
        n = len(train["text"])
        train = augment(train)
        logger.info("augmentation: %d training rows -> %d", n, len(train["text"]))
    train = _to_dataset(train)
    if evaluation is not None:
        evaluation = _to_dataset(evaluation)
    return train, evaluation


def _check_classes(cfg: DataConfig, train: dict[str, list], evaluation: dict[str, list] | None) -> None:
    """A training set with a single class is an error (a classifier learns nothing from it); a single-class
    eval set is a warning (its accuracy says little)."""
    if "label" not in train:
        return
    field = "labels" if cfg.labels is not None else "label_column"

    def name(label_id: int) -> str:
        return brief(cfg.labels[label_id] if cfg.labels is not None else label_id, 60)

    words = bool(train["label"]) and isinstance(train["label"][0], list)
    classes = Counter(t for tags in train["label"] for t in tags) if words else Counter(train["label"])
    if len(classes) < 2:
        (only, n), = classes.items()
        where = f"{cfg.train_file} (after the split rule)" if cfg.split is not None else cfg.train_file
        raise ConfigError(f"all {n} training rows of {where} have the label {name(only)}: a classifier needs "
                          f"at least two classes; check data.labels against column {cfg.label_column!r} of the "
                          "file (rows with other labels are dropped)", field)
    if words:
        return
    if evaluation is not None and len(set(evaluation["label"])) == 1:
        logger.warning("every one of the %d eval rows has the label %s: accuracy on them says little",
                       len(evaluation["label"]), name(evaluation["label"][0]))

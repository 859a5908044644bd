"""Issue #17, inputs: rows dropped by label rules, data files that fail to parse, run files (duplicate keys,
not UTF-8, syntax errors, alias bombs), bounded error messages, ``~`` in paths, projection group options.

Each case failed (silently, or with a traceback or an unbounded message) before the fix. Run-file cases go
through ``python -m brewkit validate`` too: exit status 2 and one line on stderr, no traceback.
"""
import bz2
import contextlib
import gzip
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402
from helpers import run_dict, write_run  # noqa: E402

from brewkit.configs import DistillationConfig, IntermediateMatch, TrainingConfig  # noqa: E402
from brewkit.data import DataConfig, load_splits  # noqa: E402
from brewkit.data.tokenization import default_cache_dir  # noqa: E402
from brewkit.errors import MESSAGE_LIMIT, ConfigError, brief  # noqa: E402
from brewkit.yamlio import MAX_NODES, YAMLInputError, load_file, safe_load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _data(tmp_path, train_file, **kw) -> DataConfig:
    base = {"train_file": str(train_file), "labels": ["neg", "pos"], "cache_dir": str(tmp_path / "cache")}
    return DataConfig.from_dict({**base, **kw})


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _csv(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _balanced(n: int) -> list[dict]:
    return [{"text": f"text {i}", "label": "pos" if i % 2 else "neg"} for i in range(n)]


def _drop_report(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "rows kept" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def _python_m_brewkit(*argv, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "brewkit", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# == 1. rows dropped by label, split or filter rules ==================================================
def test_a_misspelt_label_is_a_config_error_not_a_silently_dropped_class(tmp_path):
    # labels: [neg, positive] while the file says pos: half the rows would go, and the run trained on one class
    path = _jsonl(tmp_path / "t.jsonl", _balanced(200))
    with pytest.raises(ConfigError) as info:
        load_splits(_data(tmp_path, path, labels=["neg", "positive"]))
    e = info.value
    assert e.path == "labels"
    assert "100 of the 200 labelled rows" in e.message and "(50.0%)" in e.message
    assert "'pos' (100 rows)" in e.message and path in e.message
    assert "data.max_unlisted_label_fraction" in e.message and "\n" not in str(e)


def test_unlisted_labels_up_to_the_threshold_are_dropped_and_reported(tmp_path, caplog):
    rows = _balanced(200) + [{"text": "odd one", "label": "neutral"}, {"text": "odd two", "label": "neutral"}]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="brewkit"):  # 2 of 202 rows = 0.99%: below the default 1%
        train, _ = load_splits(_data(tmp_path, path))
    assert len(train) == 200
    report = _drop_report(caplog)
    assert "200 of 202 rows kept" in report and "dropped 2 with a label not in data.labels: 'neutral' (2 rows)" \
        in report
    rows.append({"text": "odd three", "label": "neutral"})  # 3 of 203 = 1.48%
    path = _jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ConfigError, match="3 of the 203 labelled rows"):
        load_splits(_data(tmp_path, path))
    train, _ = load_splits(_data(tmp_path, path, max_unlisted_label_fraction=0.015))
    assert len(train) == 200


def test_labels_with_spaces_around_them_are_matched_and_the_report_says_so(tmp_path, caplog):
    # csv written by hand: 'pos ' and ' neg' were dropped from train and eval before
    path = _csv(tmp_path / "t.csv", ["text,label", "a,pos ", "b, neg", "c,pos", "d,neg", "e,pos  "])
    with caplog.at_level(logging.INFO, logger="brewkit"):
        train, _ = load_splits(_data(tmp_path, path))
    assert train["text"][:] == ["a", "b", "c", "d", "e"]
    assert train["label"][:] == [1, 0, 1, 0, 1]
    report = _drop_report(caplog)
    assert "5 of 5 rows kept" in report
    assert "matched 3 labels after removing the spaces around them" in report and "'pos '" in report


def test_each_drop_reason_is_counted_with_bounded_examples(tmp_path, caplog):
    long_label = "x" * 5000
    rows = ([{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]
            + [{"text": None, "label": "pos"}, {"text": "no label", "label": None},
               {"text": "t0", "label": "neg"}, {"text": "t1", "label": "pos"},
               {"text": "weird", "label": long_label}])
    path = _jsonl(tmp_path / "t.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="brewkit"):
        train, _ = load_splits(_data(tmp_path, path, max_unlisted_label_fraction=0.5))
    assert train["text"][:] == [f"t{i}" for i in range(8)]
    report = _drop_report(caplog)
    assert "8 of 13 rows kept" in report
    assert "dropped 1 with a missing text (rows 9, counting from 1)" in report
    assert "dropped 1 with a missing label (rows 10, counting from 1)" in report
    assert "dropped 2 repeated texts (first kept; data.dedupe), e.g. 't0', 't1'" in report
    assert "dropped 1 with a label not in data.labels: 'xxx" in report
    assert len(report) < 1000  # the 5000-character label is quoted in part


@pytest.mark.slow
def test_the_drop_report_is_printed_when_nothing_configured_logging(tmp_path):
    # The line used to be logged before any handler existed, so nothing was printed.
    path = _jsonl(tmp_path / "t.jsonl", _balanced(100) + [{"text": "t", "label": "meh"}])
    code = ("import sys; from brewkit.data import DataConfig, load_splits; "
            f"load_splits(DataConfig(train_file={path!r}, labels=['neg', 'pos'], cache_dir={str(tmp_path)!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if "rows kept" in line]
    assert len(lines) == 1 and " WARNING brewkit.data.loading: " in lines[0], p.stderr
    assert "100 of 101 rows kept; dropped 1 with a label not in data.labels: 'meh' (1 row)" in lines[0]


def test_a_single_class_training_set_is_a_config_error(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": "pos"} for i in range(10)])
    with pytest.raises(ConfigError) as info:
        load_splits(_data(tmp_path, path))
    assert info.value.path == "labels"
    assert "all 10 training rows" in info.value.message and "'pos'" in info.value.message
    path = _jsonl(tmp_path / "ids.jsonl", [{"text": f"t{i}", "label": 1} for i in range(10)])
    with pytest.raises(ConfigError) as info:
        load_splits(_data(tmp_path, path, labels=None))
    assert info.value.path == "label_column" and "the label 1" in info.value.message
    # unlabelled text (pure distillation) has no classes to check
    train, _ = load_splits(_data(tmp_path, path, labels=None, label_column=None))
    assert len(train) == 10


def test_a_split_that_leaves_one_class_in_training_is_a_config_error(tmp_path):
    # every neg row in one group, which the split sends to eval
    rows = [{"text": f"t{i}", "label": "neg" if i < 3 else "pos", "g": "a" if i < 3 else f"b{i}"}
            for i in range(10)]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    seeds = []
    for seed in range(50):
        try:
            load_splits(_data(tmp_path, path, split={"eval_fraction": 0.3, "group_by": "g", "seed": seed}))
        except ConfigError as e:
            assert e.path == "labels" and "(after the split rule)" in e.message
            seeds.append(seed)
    assert seeds and len(seeds) < 50  # some seeds move group 'a' to eval, others keep it in training


def test_drop_labels_drops_rows_on_purpose_and_is_validated(tmp_path, caplog):
    # the demo's case: 'plot' rows are not reviews (7.8% of the file)
    rows = _balanced(20) + [{"text": f"plot {i}", "label": "plot"} for i in range(5)]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ConfigError, match="'plot' \\(5 rows\\)"):
        load_splits(_data(tmp_path, path))
    with caplog.at_level(logging.INFO, logger="brewkit"):
        train, _ = load_splits(_data(tmp_path, path, drop_labels=["plot"]))
    assert len(train) == 20 and "dropped 5 with a label in data.drop_labels: 'plot' (5 rows)" in _drop_report(caplog)
    for bad, where, needle in [(["pos"], "drop_labels[0]", "also in labels"), ([], "drop_labels", "non-empty"),
                               (["plot", "plot"], "drop_labels[1]", "listed twice"),
                               ([1.5], "drop_labels[0]", "string or an integer")]:
        with pytest.raises(ConfigError) as info:
            _data(tmp_path, path, drop_labels=bad)
        assert info.value.path == where and needle in info.value.message
    assert _data(tmp_path, path, drop_labels=["plot"]).to_dict()["drop_labels"] == ["plot"]


@pytest.mark.parametrize("value", [1.5, -0.1, "1%", True, None])
def test_max_unlisted_label_fraction_must_be_between_0_and_1(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        _data(tmp_path, "t.csv", max_unlisted_label_fraction=value)
    assert info.value.path == "max_unlisted_label_fraction" and "a number from 0 to 1" in info.value.message
    for good in (0, 0.05, 1):
        assert _data(tmp_path, "t.csv", max_unlisted_label_fraction=good).max_unlisted_label_fraction == good


@pytest.mark.slow
def test_validate_refuses_a_misspelt_label_on_one_line(assets, tmp_path):
    from brewkit.cli import main

    d = run_dict(assets, tmp_path / "out")
    d["data"]["labels"] = ["neg", "positive"]
    run_file = write_run(tmp_path / "run.yaml", d)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", run_file])
    assert code == 2 and "Traceback" not in err.getvalue()
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith("error: data.labels: 16 of the 32 labelled rows of ") and "'pos' (16 rows)" in line


# == 2. data files that fail to parse =================================================================
def _truncated_gzip(path: Path) -> None:
    data = gzip.compress(("text,label\n" + "".join(f"row {i},pos\n" for i in range(2000))).encode())
    path.write_bytes(data[: len(data) // 2])


BROKEN_FILES = [
    # name, how to write it, what the message must say
    ("empty.csv", lambda p: p.write_bytes(b""), ["is empty (0 bytes)"]),
    ("latin1.csv", lambda p: p.write_bytes(b"text,label\ngood,pos\ncaf\xe9 bad,neg\n"),
     ["line 3: byte 23", "0xe9", "not UTF-8", "save the file as UTF-8"]),
    ("ragged.csv", lambda p: p.write_text("text,label\ngood,pos\nbad, awful,neg\nok,pos\n"),
     ["line 3: 3 fields, but the header (line 1) has 2", "must be quoted"]),
    ("truncated.jsonl", lambda p: p.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "lab\n'),
     ["line 2, column", "not valid JSON"]),
    ("array.jsonl", lambda p: p.write_text('{"text": "good", "label": "pos"}\n[1, 2]\n'),
     ["line 2 holds a JSON list, not an object"]),
    ("fake.csv.gz", lambda p: p.write_text("text,label\ngood,pos\n"),
     ["is not a gzip file", "starts with b'text,lab'", "remove .gz from its name"]),
    ("fake.csv.bz2", lambda p: p.write_text("text,label\ngood,pos\n"), ["is not a bzip2 file"]),
    ("cut.csv.gz", _truncated_gzip, ["gzip data is damaged or cut short after line"]),
    ("header_only.csv", lambda p: p.write_text("text,label\n"), ["the header is the only row"]),
    ("open_quote.csv", lambda p: p.write_text('text,label\ngood,pos\n"bad,neg\nok,pos\n'),
     ["line 3: a quoted field starts here and is never closed"]),
    ("broken.json", lambda p: p.write_text('[{"text": "good", "label": "pos"},\n {"text": '),
     ["line 2, column", "not valid JSON"]),
    ("broken.parquet", lambda p: p.write_text("not parquet"), ["not a readable parquet file"]),
    ("folder.csv", lambda p: p.mkdir(), ["is a directory"]),
    ("missing.csv", lambda p: None, ["file not found"]),
]


@pytest.mark.parametrize("name,write,needles", BROKEN_FILES, ids=[c[0] for c in BROKEN_FILES])
def test_a_data_file_that_cannot_be_read_is_one_line_naming_file_cause_and_line(tmp_path, name, write, needles):
    path = tmp_path / name
    write(path)
    with pytest.raises(ConfigError) as info:
        load_splits(_data(tmp_path, path))
    e = info.value
    assert e.path == "train_file"
    assert str(path) in e.message
    assert "An error occurred while generating the dataset" not in e.message
    assert "\n" not in str(e) and len(str(e)) < 600
    for needle in needles:
        assert needle in e.message, e.message


def test_a_broken_eval_file_is_blamed_on_eval_file(tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", _balanced(10))
    (tmp_path / "e.csv").write_bytes(b"text,label\n\xff,pos\n")
    with pytest.raises(ConfigError) as info:
        load_splits(_data(tmp_path, train, eval_file=str(tmp_path / "e.csv")))
    assert info.value.path == "eval_file" and "line 2: byte 11" in info.value.message


def test_good_compressed_files_still_read(tmp_path):
    text = "text,label\n" + "".join(f"row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(6))
    for name, opener in (("t.csv.gz", gzip.open), ("t.csv.bz2", bz2.open)):
        with opener(tmp_path / name, "wt", encoding="utf-8") as f:
            f.write(text)
        train, _ = load_splits(_data(tmp_path, tmp_path / name))
        assert train["text"][:] == [f"row {i}" for i in range(6)]


# == 3. run files =====================================================================================
DUPLICATE_SECTION = """\
distillation:
  temperature: 4
  intermediate_matches:
    - {layer_T: 2, layer_S: 1, feature: hidden, loss: hidden_mse, weight: 1}
training:
  num_epochs: 1
distillation:
  temperature: 2
"""


def test_a_duplicate_key_names_the_key_and_both_lines():
    with pytest.raises(ConfigError) as info:
        safe_load(DUPLICATE_SECTION)
    assert info.value.path == "distillation" and "at lines 1 and 7" in info.value.message
    with pytest.raises(ConfigError) as info:
        safe_load("training:\n  optimizer:\n    lr: 1.0e-3\n    weight_decay: 0\n    lr: 2.0e-3\n")
    assert info.value.path == "training.optimizer.lr" and "at lines 3 and 5" in info.value.message
    with pytest.raises(ConfigError) as info:
        safe_load("m:\n  - {a: 1}\n  - {b: 1,\n     b: 2}\n")
    assert info.value.path == "m[1].b" and "at lines 3 and 4" in info.value.message
    # merge keys still override on purpose; equal values under different keys are fine
    assert safe_load("base: &b {lr: 1, wd: 0}\nx:\n  <<: *b\n  lr: 2\n") == \
        {"base": {"lr": 1, "wd": 0}, "x": {"lr": 2, "wd": 0}}


def test_safe_load_keeps_yaml_safe_load_semantics():
    assert safe_load("lr: 2e-4\nb: 1E5\nc: 1.5\nd: '3e2'\ne: null\nf: [1, two]") == \
        {"lr": 2e-4, "b": 1e5, "c": 1.5, "d": "3e2", "e": None, "f": [1, "two"]}
    for text in ("!!python/object/apply:os.system ['true']", "a: !!python/name:os.system"):
        with pytest.raises(yaml.YAMLError):
            safe_load(text)
        with pytest.raises(ConfigError, match="could not determine a constructor"):
            safe_load(text)


def _billion_laughs() -> str:
    """1.6 KB that expands to 9^9 strings: the issue's run file, the bomb placed in a checked field."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [" + ", ".join(f"*{prev}" for _ in range(9)) + "]\n"
        prev = name
    return text


def test_nested_aliases_are_refused_quickly_with_a_short_message():
    text = "x: &x\n" + "".join("  " + line + "\n" for line in _billion_laughs().splitlines()) + \
        "data:\n  train_file: t.csv\n  labels: *x\n"
    assert len(text) < 2000
    start = time.perf_counter()
    with pytest.raises(YAMLInputError) as info:
        safe_load(text)
    assert time.perf_counter() - start < 2
    assert f"more than {MAX_NODES:,} values" in str(info.value) and len(str(info.value)) < 400
    # a small document with aliases still loads
    assert safe_load("a: &a [1, 2]\nb: [*a, *a]\n") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_recursive_aliases_and_deep_nesting_are_refused():
    with pytest.raises(YAMLInputError, match="refers to the node that contains it"):
        safe_load("a: &a [1, *a]\n")
    with pytest.raises(YAMLInputError, match="nested more than 100 levels"):
        safe_load("a: " + "[" * 120 + "]" * 120 + "\n")
    with pytest.raises(YAMLInputError, match="nested too deeply"):
        safe_load("a: " + "[" * 5000 + "]" * 5000 + "\n")


def test_a_run_file_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"output_dir: out\ndata:\n  train_file: caf\xe9.csv\n")
    def from_open_file():
        with open(path, encoding="utf-8") as f:  # what a caller that opened the file in text mode passes
            return safe_load(f)

    for read in (lambda: load_file(path), from_open_file):
        with pytest.raises(YAMLInputError) as info:
            read()
        assert str(info.value) == (f"{path}: byte 39 (line 3) is 0xe9, which is not UTF-8 (invalid continuation "
                                   "byte); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_a_yaml_syntax_error_is_file_line_col(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\ndata:\n  train_file: t.csv\n   labels: [a, b]\n")
    with pytest.raises(YAMLInputError) as info:
        load_file(path)
    assert str(info.value).startswith(f"{path}:4:10: mapping values are not allowed here")
    with pytest.raises(YAMLInputError, match="^line 1, column 5: mapping values are not allowed here$"):
        safe_load("a: b: c")


RUN_FILE_CASES = {
    "duplicate_section": (DUPLICATE_SECTION.encode(), ["distillation", "duplicate key", "lines 1 and 7"]),
    "not_utf8": (b"output_dir: out\ndata:\n  train_file: caf\xe9.csv\n",
                 ["byte 39 (line 3)", "is 0xe9, which is not UTF-8"]),
    "syntax": (b"output_dir: out\ndata:\n  train_file: t.csv\n   labels: [a, b]\n",
               [":4:10: mapping values are not allowed here"]),
    "alias_bomb": (("data: &x\n" + "".join("  " + line + "\n" for line in _billion_laughs().splitlines()))
                   .encode(), ["more than 100,000 values"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RUN_FILE_CASES))
def test_python_m_brewkit_validate_reports_a_broken_run_file_on_one_line(tmp_path, case):
    content, needles = RUN_FILE_CASES[case]
    run_file = tmp_path / "run.yaml"
    run_file.write_bytes(content)
    p = _python_m_brewkit("validate", run_file, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    line = _one_error_line(p.stderr)
    assert str(run_file) in line and len(line) < 600
    for needle in needles:
        assert needle in line, line


# == bounded messages =================================================================================
def test_brief_is_a_bounded_repr():
    assert brief("abc") == "'abc'" and brief(3.5) == "3.5" and brief({"a": [1, 2]}) == "{'a': [1, 2]}"
    assert len(brief("x" * 100_000)) <= 200
    nested = [1]
    for _ in range(40):  # 9^40 leaves if expanded
        nested = [nested] * 9
    start = time.perf_counter()
    text = brief(nested, limit=300)
    assert len(text) <= 300 and time.perf_counter() - start < 0.5

    class Broken:
        def __repr__(self):
            raise RuntimeError("no")

    assert brief(Broken()).startswith("<Broken instance at ")  # a broken __repr__ does not hide the error


def test_config_error_bounds_its_message_and_keeps_the_path_and_the_end():
    e = ConfigError("must be a list, got " + "[" * 100_000 + "; set it to null to disable", "data.labels")
    text = str(e)
    assert text.startswith("data.labels: must be a list, got [[[")
    assert text.endswith("; set it to null to disable")
    assert len(e.message) <= MESSAGE_LIMIT and "characters cut" in text
    assert str(e.at("run")).startswith("run.data.labels: ")
    assert str(ConfigError("short", "p")) == "p: short"


def test_a_huge_value_in_a_config_field_gives_a_short_error():
    with pytest.raises(ConfigError) as info:
        TrainingConfig(logging_steps=list(range(10**6)))
    assert len(str(info.value)) <= MESSAGE_LIMIT + 100 and str(info.value).startswith("logging_steps: ")
    nested = ["a"]
    for _ in range(30):  # what nested YAML aliases build: shared lists, 9^30 strings once written out
        nested = [nested] * 9
    start = time.perf_counter()
    for field in ("labels", "split", "text_column"):
        with pytest.raises(ConfigError) as info:
            DataConfig(train_file="t.csv", **{field: nested})
        assert info.value.path.startswith(field) and len(str(info.value)) < 500
    assert time.perf_counter() - start < 1  # repr() of these values would never finish


# == 4. ~ in paths ====================================================================================
@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_tilde_is_the_home_directory_in_config_paths(home):
    tc = TrainingConfig(output_dir="~/runs/a", log_dir="~/tb", resume_from_checkpoint="~/runs/a/checkpoint-3",
                        device="cpu")
    assert (tc.output_dir, tc.log_dir, tc.resume_from_checkpoint) == \
        (f"{home}/runs/a", f"{home}/tb", f"{home}/runs/a/checkpoint-3")
    assert TrainingConfig(resume_from_checkpoint=True, device="cpu").resume_from_checkpoint is True
    assert DistillationConfig(teacher_cache_dir="~/tc").teacher_cache_dir == f"{home}/tc"
    assert DataConfig(train_file="t.csv", cache_dir="~/cache").cache_dir == f"{home}/cache"


def test_tilde_in_data_files_model_paths_and_the_cache_variables(home, tmp_path, monkeypatch):
    from brewkit.models import resolve_model_path

    _jsonl(home / "t.jsonl", _balanced(6))
    train, _ = load_splits(DataConfig(train_file="~/t.jsonl", labels=["neg", "pos"], cache_dir=str(tmp_path)))
    assert len(train) == 6
    (home / "model").mkdir()
    assert resolve_model_path("~/model") == f"{home}/model"
    monkeypatch.setenv("BREWKIT_CACHE", "~/bk")
    assert default_cache_dir() == f"{home}/bk"
    monkeypatch.delenv("BREWKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert default_cache_dir() == f"{home}/xdg/brewkit"


def test_tilde_in_a_run_files_output_dir(assets, home, tmp_path):
    from brewkit.runfile import load_run

    run = load_run(run_dict(assets, "~/runs/x"))
    assert run.output_dir == run.training.output_dir == f"{home}/runs/x"


# == 5. projection optimizer-group options ============================================================
def _match(group) -> dict:
    return {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
            "proj": ["linear", 8, 16, group]}


def test_an_unknown_projection_group_option_is_named_with_the_known_ones():
    with pytest.raises(ConfigError) as info:
        DistillationConfig(intermediate_matches=[_match({"lr": 1e-3}), _match({"lrr": 0.5})])
    e = info.value
    assert e.path == "intermediate_matches[1].proj[3].lrr"
    assert "did you mean 'lr'?" in e.message and "known: lr, weight_decay, betas, eps, momentum" in e.message


@pytest.mark.parametrize("key,value", [("lr", "fast"), ("lr", -1), ("weight_decay", float("nan")),
                                       ("betas", [0.9]), ("betas", [0.9, 1.5]), ("nesterov", "yes"),
                                       ("fused", 1)])
def test_a_bad_projection_group_value_is_blamed_on_its_option(key, value):
    with pytest.raises(ConfigError) as info:
        DistillationConfig(intermediate_matches=[_match({key: value})])
    assert info.value.path == f"intermediate_matches[0].proj[3].{key}"


def test_good_projection_group_options_are_kept():
    m = IntermediateMatch(**_match({"lr": 1e-3, "weight_decay": 0, "betas": (0.9, 0.99), "foreach": None}))
    assert m.proj[3] == {"lr": 1e-3, "weight_decay": 0, "betas": [0.9, 0.99], "foreach": None}


def test_a_run_file_with_a_misspelt_projection_option_names_its_path(assets, tmp_path):
    from brewkit.runfile import load_run

    d = run_dict(assets, tmp_path / "out")
    d["distillation"]["intermediate_matches"][1]["proj"].append({"lrr": 0.5})
    with pytest.raises(ConfigError) as info:
        load_run(d)
    assert info.value.path == "distillation.intermediate_matches[1].proj[3].lrr"

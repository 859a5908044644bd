"""Files and environments that are not config values still end in one line (issue #17): damaged model directories,
damaged checkpoints on resume and on ``brewkit eval``, a checkpoint head of another label count, a non-finite
first-batch loss in ``validate``, ``max_length`` above the positions, a vocabulary smaller than the tokenizer,
nothing left trainable, sizes too large to represent, an sdpa model asked for attentions, an unusable output or
cache directory, and a disk that fills up while a checkpoint is written.

Each test fails on main before these fixes (93479ac), where these cases gave a traceback, an "unexpected error",
a loaded pickle, a printed accuracy or ``loss=nan ... ok``, except those marked "(held before)", which guard
behaviour that was already right.
"""
import json
import os
import pickle
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import STUDENT_ARGS, TEACHER_ARGS, cli, run_dict, write_run  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from brewkit.build import MAX_SIZE, build, check_positions, position_limit  # noqa: E402
from brewkit.checkpoint import (  # noqa: E402
    latest_checkpoint,
    list_checkpoints,
    load_state,
    load_student,
    save_checkpoint,
)
from brewkit.data import CacheDirError, DataConfig, check_cache_dir  # noqa: E402
from brewkit.errors import CheckpointError, ConfigError  # noqa: E402
from brewkit.models import ModelSpec, build_model  # noqa: E402
from brewkit.models import tiny_bert as make_tiny_bert  # noqa: E402
from brewkit.run import eval_run, validate_run  # noqa: E402
from brewkit.runfile import load_run  # noqa: E402


def error_line(stderr: str) -> str:
    """The one ``error:`` line that ends stderr (progress bars and log lines may come before it)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


# -- model directories -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(assets, tmp_path_factory) -> Path:
    """A saved tiny teacher (BertForSequenceClassification, hidden 16, 32 positions, 64 tokens) with the
    assets' tokenizer: a good ``teacher.path`` that tests copy and damage."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("models") / "teacher"
    make_tiny_bert(**TEACHER_ARGS).save_pretrained(d)
    AutoTokenizer.from_pretrained(assets.tokenizer).save_pretrained(d)
    return d


def damaged_copy(model_dir: Path, tmp_path: Path, damage) -> Path:
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    damage(d)
    return d


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def shard_index(d: Path, shards: list[str]) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {f"t{i}": s for i, s in
                                                                               enumerate(shards)}}))


DAMAGED_DIRS = {
    "truncated_weights": (lambda d: truncate(d / "model.safetensors"),
                          ["model.safetensors is not a readable safetensors file", "truncated or damaged"]),
    "garbage_weights": (lambda d: (d / "model.safetensors").write_bytes(b"not a tensor file " * 20),
                        ["model.safetensors is not a readable safetensors file"]),
    "empty_weights": (lambda d: (d / "model.safetensors").write_bytes(b""),
                      ["model.safetensors is not a readable safetensors file", "header too small"]),
    "broken_config": (lambda d: (d / "config.json").write_text('{"model_type": "bert",'),
                      ["config.json is not valid JSON (line 1, column 23", "cut short"]),
    "empty_config": (lambda d: (d / "config.json").write_text(""), ["config.json is empty"]),
    "config_list": (lambda d: (d / "config.json").write_text("[1, 2]"),
                    ["config.json holds a JSON list, not an object"]),
    "config_without_model_type": (lambda d: (d / "config.json").write_text('{"hidden_size": 16}'),
                                  ["config.json has no model_type"]),
    "unknown_model_type": (lambda d: edit_config(d, model_type="bert_of_tomorrow"),
                           ["cannot read the model config", "bert_of_tomorrow"]),
    "config_field_of_wrong_type": (lambda d: edit_config(d, hidden_size="sixteen"),
                                   ["cannot read the model config", "hidden_size"]),
    "weights_that_do_not_fit_the_config": (lambda d: edit_config(d, hidden_size=32, intermediate_size=64),
                                           ["do not fit its config.json", "different models"]),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(),
                   ["holds no model weights (no model.safetensors or model.safetensors.index.json; it has",
                    "'config.json'"]),
    "broken_shard_index": (lambda d: (d / "model.safetensors.index.json").write_text("{"),
                           ["model.safetensors.index.json is not valid JSON"]),
    "missing_shard": (lambda d: shard_index(d, ["model-00001-of-00002.safetensors"]),
                      ["model-00001-of-00002.safetensors is missing: the directory is incomplete"]),
    "damaged_tokenizer": (lambda d: (d / "tokenizer.json").write_text("{garbage"),
                          ["cannot load a tokenizer from", "JSONDecodeError", "damaged or incomplete"]),
}


@pytest.mark.parametrize("case", list(DAMAGED_DIRS))
def test_a_damaged_model_directory_is_a_config_error_naming_the_file_and_cause(model_dir, tmp_path, case):
    damage, needles = DAMAGED_DIRS[case]
    d = damaged_copy(model_dir, tmp_path, damage)
    with pytest.raises(ConfigError) as info:
        build_model(ModelSpec(path=str(d)), 2)
    assert info.value.path == "path"
    assert str(d) in str(info.value) and "\n" not in str(info.value)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize("section", ["teacher", "student"])
@pytest.mark.parametrize("case", ["truncated_weights", "broken_config", "no_weights"])
def test_validate_names_the_damaged_teacher_or_student_directory_on_one_line(assets, model_dir, tmp_path, section,
                                                                            case):
    damage, needles = DAMAGED_DIRS[case]
    d = damaged_copy(model_dir, tmp_path, damage)
    run = run_dict(assets, tmp_path / "out")
    run[section] = {"path": str(d)}
    if section == "student":  # a 16-wide student: the hidden matches compare 16 with 16
        for m in run["distillation"]["intermediate_matches"]:
            m.pop("proj")
    code, _, stderr = cli("validate", write_run(tmp_path / "run.yaml", run))
    assert code == 2
    line = error_line(stderr)
    assert line.startswith(f"error: {section}.path: ")
    for needle in needles:
        assert needle in line


class WritesMarker:
    """Unpickling this runs ``open(marker, 'w')``: a pickle that would execute code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", ["state_dict", "code"])
def test_a_directory_with_only_pytorch_model_bin_is_refused_and_never_unpickled(assets, model_dir, tmp_path,
                                                                                 payload):
    marker = tmp_path / "ran"
    state = load_file(model_dir / "model.safetensors")
    if payload == "code":
        state["bert.pooler.dense.bias"] = WritesMarker(str(marker))
    d = damaged_copy(model_dir, tmp_path, lambda d: (d / "model.safetensors").unlink())
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="has its weights only as pytorch_model.bin, which brewkit does not load"):
        build_model(ModelSpec(path=str(d)), 2)
    run = run_dict(assets, tmp_path / "out")
    run["teacher"] = {"path": str(d)}
    code, _, stderr = cli("validate", write_run(tmp_path / "run.yaml", run))
    assert code == 2
    assert "never unpickles" in error_line(stderr)
    assert not marker.exists()


def test_auto_map_stays_ignored_and_no_code_from_the_directory_runs(model_dir, tmp_path):
    """(held before) ``auto_map`` naming a module in the directory does not import it."""
    marker = tmp_path / "imported"
    d = damaged_copy(model_dir, tmp_path, lambda d: edit_config(
        d, auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}))
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('evil.py ran')\n")
    model, _ = build_model(ModelSpec(path=str(d)), 2)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert json.loads((d / "config.json").read_text())["auto_map"]  # the directory still says it
    assert not marker.exists()


# -- damaged checkpoints -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """A run trained for 4 steps with checkpoints at 2 and 4 (``final/`` removed, as if killed after step 4):
    ``(run dict, output_dir)``, to copy."""
    root = tmp_path_factory.mktemp("trained")
    run = run_dict(assets, root / "out")
    run["training"].update({"num_epochs": None, "num_steps": 4, "ckpt_steps": 2})
    code, _, stderr = cli("train", write_run(root / "run.yaml", run))
    assert code == 0, stderr
    shutil.rmtree(root / "out" / "final")
    return run, root / "out"


def copy_run(trained, tmp_path) -> tuple[str, Path]:
    run, out = trained
    shutil.copytree(out, tmp_path / "out")
    recorded = tmp_path / "out" / "run.yaml"  # the copy is the same run, in another place
    recorded.write_text(recorded.read_text().replace(str(out), str(tmp_path / "out")))
    run = {**run, "output_dir": str(tmp_path / "out")}
    return write_run(tmp_path / "run.yaml", run), tmp_path / "out"


DAMAGED_CHECKPOINTS = {
    "truncated_model": (lambda c, m: truncate(c / "model.safetensors"), "model.safetensors (SafetensorError"),
    "truncated_optimizer": (lambda c, m: truncate(c / "optimizer.pt"), "optimizer.pt ("),
    "empty_optimizer": (lambda c, m: (c / "optimizer.pt").write_bytes(b""), "optimizer.pt (EOFError"),
    "truncated_projections": (lambda c, m: truncate(c / "projections.safetensors"),
                              "projections.safetensors (SafetensorError"),
    "empty_trainer_state": (lambda c, m: (c / "trainer_state.json").write_text(""),
                            "trainer_state.json (JSONDecodeError: Expecting value: line 1 column 1"),
    "broken_trainer_state": (lambda c, m: (c / "trainer_state.json").write_text('{"global_step": 4,'),
                             "trainer_state.json (JSONDecodeError"),
    "trainer_state_without_step": (lambda c, m: (c / "trainer_state.json").write_text('{"epoch": 1}'),
                                   "trainer_state.json is not a brewkit trainer state"),
    "refused_pickle": (lambda c, m: torch.save({"torch": WritesMarker(m)}, c / "rng_state.pt"),
                       "refused to unpickle {ckpt}/rng_state.pt: it is not a brewkit checkpoint file (it refers to "),
}


@pytest.mark.parametrize("case", list(DAMAGED_CHECKPOINTS))
def test_resuming_from_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_one_before(trained, tmp_path, case):
    damage, needle = DAMAGED_CHECKPOINTS[case]
    run_file, out = copy_run(trained, tmp_path)
    marker = str(tmp_path / "ran")
    damage(out / "checkpoint-4", marker)
    code, _, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true")
    assert code == 1
    line = error_line(stderr)
    assert line.startswith("error: CheckpointError: ")
    assert needle.format(ckpt=out / "checkpoint-4") in line
    assert f"resume from {out / 'checkpoint-2'} (--set training.resume_from_checkpoint={out / 'checkpoint-2'}" in line
    assert not os.path.exists(marker)
    assert not (out / "final").exists()


def test_load_state_and_load_student_report_damage_as_checkpoint_errors(trained, tmp_path):
    _, out = copy_run(trained, tmp_path)
    ckpt = out / "checkpoint-4"
    marker = str(tmp_path / "ran")
    torch.save({"x": WritesMarker(marker)}, ckpt / "scheduler.pt")
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*scheduler\.pt: it is not a brewkit checkpoint "
                                              r"file \(it refers to .*open\)") as info:
        load_state(str(ckpt))
    assert isinstance(info.value, RuntimeError) and not isinstance(info.value, pickle.UnpicklingError)
    assert not os.path.exists(marker)
    (ckpt / "scheduler.pt").unlink()
    assert load_state(str(ckpt))["trainer_state"]["global_step"] == 4  # the rest reads

    student = make_tiny_bert(**STUDENT_ARGS)
    truncate(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors \(SafetensorError: .*\); the "
                                              r"checkpoint is damaged .*: resume from .*checkpoint-2"):
        load_student(student, str(ckpt))
    wide = make_tiny_bert(**{**STUDENT_ARGS, "hidden_size": 12})  # another shape, same names
    with pytest.raises(CheckpointError, match=r"checkpoint-2 does not match the student: .*size mismatch"):
        load_student(wide, str(out / "checkpoint-2"))
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(CheckpointError, match="damaged .*: delete it and train from the start"):
        load_student(student, str(ckpt))


@pytest.mark.parametrize("case", ["truncated_model", "broken_config"])
def test_eval_of_a_damaged_checkpoint_is_one_line_with_status_1(trained, tmp_path, case):
    run_file, out = copy_run(trained, tmp_path)
    ckpt = out / "checkpoint-4"
    if case == "truncated_model":
        truncate(ckpt / "model.safetensors")
        needle = "model.safetensors is not a readable safetensors file"
    else:
        (ckpt / "config.json").write_text("{")
        needle = "config.json is not valid JSON (line 1, column 2"
    code, _, stderr = cli("eval", run_file, "--checkpoint", ckpt)
    assert code == 1
    line = error_line(stderr)
    assert line.startswith(f"error: CheckpointError: --checkpoint: {ckpt}/")
    assert needle in line and "evaluate another checkpoint (or final/) of the run" in line


def test_eval_of_a_checkpoint_with_another_number_of_labels_names_both(trained, tmp_path):
    run_file, out = copy_run(trained, tmp_path)
    three = tmp_path / "three-labels"
    make_tiny_bert(**{**STUDENT_ARGS, "num_labels": 3}).save_pretrained(three)
    code, stdout, stderr = cli("eval", run_file, "--checkpoint", three)
    assert code == 2 and "eval_accuracy" not in stdout
    line = error_line(stderr)
    assert line.startswith(f"error: --checkpoint: {three} has a classifier head of 3 labels but the run has 2 "
                           "(data.labels)")
    with pytest.raises(ConfigError, match="head of 3 labels but the run has 2"):
        eval_run(load_run(run_file), str(three))
    code, stdout, _ = cli("eval", run_file, "--checkpoint", out / "checkpoint-4")  # the run's own head: evaluated
    assert code == 0 and "eval_accuracy: " in stdout


# -- validate: a non-finite first-batch loss ---------------------------------------------------------------------
def test_validate_fails_on_a_non_finite_first_batch_loss_naming_the_terms(assets, model_dir, tmp_path):
    def nan_head(d: Path) -> None:
        state = load_file(d / "model.safetensors")
        state["classifier.weight"][:] = float("nan")
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})

    d = damaged_copy(model_dir, tmp_path, nan_head)
    run = run_dict(assets, tmp_path / "out")
    run["teacher"] = {"path": str(d)}
    run_file = write_run(tmp_path / "run.yaml", run)
    code, stdout, stderr = cli("validate", run_file)
    assert code == 2 and "ok: the run file is valid" not in stdout
    line = error_line(stderr)
    assert line.startswith("error: the first batch's loss is not finite: loss=nan, unweighted_kd_loss=nan; ")
    assert "hidden_mse" not in line and "hard_label" not in line  # the finite terms are not named
    with pytest.raises(ConfigError, match="skip_nonfinite_steps"):
        validate_run(load_run(run_file))


# -- sizes against the models ------------------------------------------------------------------------------------
def test_max_length_above_the_position_table_is_a_config_error_at_build_time(assets, model_dir, tmp_path):
    run = run_dict(assets, tmp_path / "out")
    run["teacher"] = {"path": str(model_dir)}
    run["data"]["max_length"] = 100
    run_file = write_run(tmp_path / "run.yaml", run)
    code, _, stderr = cli("validate", run_file)
    assert code == 2
    assert error_line(stderr) == (
        "error: data.max_length: 100 is more than the teacher takes: its position table "
        "(bert.embeddings.position_embeddings) holds 32 positions (max_position_embeddings), so a row longer than "
        "32 tokens would fail in the model; set data.max_length to at most 32")
    run["data"]["max_length"] = 32  # the table's size itself is fine
    assert cli("validate", write_run(tmp_path / "run.yaml", run))[0] == 0


def test_position_limits_follow_the_table_padding_index_and_offset():
    from transformers import (
        BartConfig,
        BartForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    small = {"hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 40}
    roberta = RobertaForSequenceClassification(RobertaConfig(num_hidden_layers=1, max_position_embeddings=34,
                                                             pad_token_id=1, **small))
    assert position_limit(roberta) == (32, "roberta.embeddings.position_embeddings")  # 34 rows - (1 + 1)
    bart = BartForSequenceClassification(BartConfig(encoder_layers=1, decoder_layers=1, d_model=8,
                                                    encoder_attention_heads=2, decoder_attention_heads=2,
                                                    encoder_ffn_dim=16, decoder_ffn_dim=16, vocab_size=40,
                                                    max_position_embeddings=20))
    assert position_limit(bart)[0] == 20  # 22 rows less BART's offset of 2
    llama = LlamaForSequenceClassification(LlamaConfig(num_hidden_layers=1, max_position_embeddings=16, **small))
    assert position_limit(llama) is None  # rotary positions: no table, no limit read
    check_positions(llama, 10**6, "teacher")
    with pytest.raises(ConfigError, match="^data.max_length: 33 is more than the student takes: .* holds 32 "):
        check_positions(roberta, 33, "student")


def test_a_vocabulary_smaller_than_the_tokenizer_names_both_sizes(assets, tmp_path):
    run = run_dict(assets, tmp_path / "out")
    run["student"]["args"]["vocab_size"] = 20  # the assets' tokenizer has 33 tokens
    code, _, stderr = cli("validate", write_run(tmp_path / "run.yaml", run))
    assert code == 2
    assert error_line(stderr) == (
        "error: student.args.vocab_size: the student's input embedding has 20 rows (its vocab_size) but the "
        "tokenizer has 33 tokens, so ids 20..32 would index past it; give the student a vocab_size of at least 33, "
        "or the tokenizer it was trained with")
    run = run_dict(assets, tmp_path / "out")
    run["teacher"] = {"config": {"model_type": "bert", "vocab_size": 33, "hidden_size": 16, "num_hidden_layers": 4,
                                 "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32},
                      "tokenizer": assets.tokenizer}
    build(load_run(run))  # exactly the tokenizer's size is fine
    run["teacher"]["config"]["vocab_size"] = 32
    with pytest.raises(ConfigError, match=r"^teacher.config.vocab_size: .* 32 rows .* 33 tokens, so ids 32..32 "):
        build(load_run(run))


def test_freezing_every_student_parameter_is_a_config_error_at_student_freeze(assets, tmp_path):
    run = run_dict(assets, tmp_path / "out")
    run["student"]["freeze"] = ["bert", "classifier"]
    run_file = write_run(tmp_path / "run.yaml", run)
    for command in ("validate", "train"):
        code, _, stderr = cli(command, run_file)
        assert code == 2
        assert error_line(stderr).startswith("error: student.freeze: freezes every one of the student's 41 parameter "
                                             "tensors, so nothing is left to train")
    assert not (tmp_path / "out" / "final").exists()
    run["student"]["freeze"] = ["bert"]  # the classifier still trains
    build(load_run(run), with_optimizer=False)


@pytest.mark.parametrize("section, key, value", [
    ("data", "batch_size", 10**30), ("data", "eval_batch_size", 10**30), ("data", "max_length", 10**30),
    ("data", "pad_to_multiple_of", 10**30), ("training", "seed", 2**70)])
def test_a_size_too_large_to_represent_is_a_config_error_naming_the_field(assets, tmp_path, section, key, value):
    run = run_dict(assets, tmp_path / "out")
    run[section][key] = value
    run_file = write_run(tmp_path / "run.yaml", run)
    code, _, stderr = cli("validate", run_file)
    assert code == 2
    line = error_line(stderr)
    assert line.startswith(f"error: {section}.{key}: {value} is too large to represent: ")
    if section == "data":
        assert f"at most {MAX_SIZE:,}" in line
        code, _, stderr = cli("eval", run_file, "--checkpoint", tmp_path)  # checked before anything is read
        assert code == 2 and error_line(stderr).startswith(f"error: {section}.{key}: ")
    run[section][key] = MAX_SIZE if section == "data" and key != "max_length" else 16
    build(load_run(run), with_optimizer=False)


def test_a_learning_rate_too_large_to_represent_is_a_config_error(assets, tmp_path):
    """(held before) ``lr: 1e400`` reads as inf."""
    run = run_dict(assets, tmp_path / "out")
    run_file = write_run(tmp_path / "run.yaml", run)
    Path(run_file).write_text(Path(run_file).read_text().replace("lr: 0.001", "lr: 1e400"))
    code, _, stderr = cli("validate", run_file)
    assert code == 2
    assert error_line(stderr) == "error: training.optimizer.lr: must be a finite number, got inf"


# -- attention from an sdpa model --------------------------------------------------------------------------------
def test_an_sdpa_model_asked_for_attention_says_to_use_eager(assets, model_dir, tmp_path):
    run = run_dict(assets, tmp_path / "out")
    run["teacher"] = {"path": str(model_dir), "attn_implementation": "sdpa"}
    run["distillation"]["intermediate_matches"] = [
        {"layer_T": 1, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1}]
    code, _, stderr = cli("validate", write_run(tmp_path / "run.yaml", run))
    assert code == 2
    line = error_line(stderr)
    assert line.startswith("error: distillation.intermediate_matches[0].layer_T: adaptor_T returned no attention "
                           "tensors: the teacher model computed no attention weights (it uses attn_implementation "
                           "'sdpa')")
    assert "set attn_implementation: eager in the teacher section" in line and "0..-1" not in line
    run["teacher"]["attn_implementation"] = "eager"
    code, stdout, stderr = cli("validate", write_run(tmp_path / "run.yaml", run))
    assert code == 0, stderr
    assert "unweighted_attention_attention_mse_1_1=" in stdout


# -- output and cache directories --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["a_file", "under_a_file"])
def test_an_output_dir_that_cannot_be_made_is_one_line_with_status_1(assets, tmp_path, case):
    """(held before) ``brewkit.run_directory`` refuses it before anything is built."""
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if case == "a_file" else tmp_path / "taken" / "out"
    code, _, stderr = cli("train", write_run(tmp_path / "run.yaml", run_dict(assets, out)))
    assert code == 1
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"error: RunDirectoryError: output_dir: {'' if case == 'a_file' else 'cannot write to '}"
                           f"{out}")


@pytest.mark.parametrize("case", ["a_file", "under_a_file"])
def test_a_cache_dir_that_is_a_file_is_one_line_with_status_1(assets, tmp_path, case):
    (tmp_path / "taken").write_text("x")
    cache = tmp_path / "taken" if case == "a_file" else tmp_path / "taken" / "cache"
    run = run_dict(assets, tmp_path / "out")
    run["data"]["cache_dir"] = str(cache)
    for command in ("validate", "train"):
        code, _, stderr = cli(command, write_run(tmp_path / "run.yaml", run))
        assert code == 1
        line = error_line(stderr)
        inside = "" if case == "a_file" else f" (so {cache} cannot be made in it)"
        assert line == (f"error: CacheDirError: data.cache_dir: {tmp_path / 'taken'} is a file, not a directory"
                        f"{inside}; set data.cache_dir to a writable directory")


def test_a_cache_dir_that_cannot_be_written_or_comes_from_the_environment_is_named(tmp_path, monkeypatch):
    import brewkit.data.tokenization as tokenization

    cfg = DataConfig(train_file="t.csv", cache_dir=str(tmp_path / "cache"))
    assert check_cache_dir(cfg) == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    assert os.listdir(tmp_path / "cache") == []  # the write test leaves nothing

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tokenization.tempfile, "mkstemp", read_only)  # root can write anywhere: simulate
    with pytest.raises(CacheDirError, match=r"^data.cache_dir: cannot write to .*cache \(Permission denied\); set "):
        check_cache_dir(cfg)
    monkeypatch.undo()
    (tmp_path / "env-file").write_text("x")
    monkeypatch.setenv("BREWKIT_CACHE", str(tmp_path / "env-file"))
    with pytest.raises(CacheDirError, match=r"^the cache directory \(from \$BREWKIT_CACHE\): .*env-file is a file, "
                                            r"not a directory; set data.cache_dir \(or \$BREWKIT_CACHE\) to a "):
        check_cache_dir(DataConfig(train_file="t.csv"))


# -- a full disk while a checkpoint is written -------------------------------------------------------------------
def failing_torch_save(monkeypatch, when: str, error: Exception) -> None:
    """torch.save raises ``error`` for files whose path contains ``when`` (after writing part of them)."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if when in str(f):
            with open(f, "wb") as partial:
                partial.write(b"PK\x03\x04 partial")
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("case", ["iostream", "enospc"])
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_leaves_no_partial_directory(assets, tmp_path,
                                                                                           monkeypatch, case):
    out = tmp_path / "out"
    run = run_dict(assets, out)
    run["training"].update({"num_epochs": None, "num_steps": 4, "ckpt_steps": 2})
    if case == "iostream":  # at the second checkpoint: the first one stays
        failing_torch_save(monkeypatch, "checkpoint-4", RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos 2368 vs 2256: iostream error"))
    else:  # at the first one
        failing_torch_save(monkeypatch, "checkpoint-2", OSError(28, "No space left on device"))
    code, _, stderr = cli("train", write_run(tmp_path / "run.yaml", run))
    assert code == 1
    line = error_line(stderr)
    step = 4 if case == "iostream" else 2
    assert line.startswith(f"error: CheckpointError: cannot write checkpoint-{step} in {out}: ")
    assert ("RuntimeError: [enforce fail" if case == "iostream" else "No space left on device") in line
    if case == "iostream":
        assert line.endswith("free disk space (or choose another output_dir) and resume with --set "
                             "training.resume_from_checkpoint=true: the previous checkpoint, checkpoint-2, is intact")
        assert [s for s, _ in list_checkpoints(str(out))] == [2]
        load_state(str(out / "checkpoint-2"))  # complete and readable
    else:
        assert line.endswith("and train again: no earlier checkpoint was written")
        assert list_checkpoints(str(out)) == []
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-") or ".old-" in p.name]
    assert not (out / "final").exists()


def test_a_failed_rewrite_of_a_step_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    from helpers import Toy

    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"student": model, "projections": None, "optimizer": opt, "scheduler": None, "scaler": None,
              "rng_state": {"torch": torch.get_rng_state()}, "trainer_state": {"global_step": 3}, "configs": {}}
    path = save_checkpoint(str(tmp_path), 3, **kwargs)
    before = (Path(path) / "optimizer.pt").read_bytes()
    real_rename = os.rename

    def rename(src, dst):  # moving the new checkpoint into place fails: the old one was already moved aside
        if ".tmp-checkpoint-3-" in str(src):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint-3 .* the previous checkpoint, checkpoint-3, "
                                              r"is intact$"):
        save_checkpoint(str(tmp_path), 3, **kwargs)
    monkeypatch.undo()
    assert latest_checkpoint(str(tmp_path)) == path
    assert (Path(path) / "optimizer.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]

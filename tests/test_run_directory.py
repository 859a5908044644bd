"""The run directory of ``brewkit train`` is never silently lost, and resumption is exact and checked
(brewkit.run_directory, the loop's signal handling and its RNG discipline around callbacks).

Each test fails on brewkit 0.1 (main at da7e73e), where a second run replaced the first one's files, two runs
wrote into one directory, SIGTERM ended a run without a checkpoint, an evaluation after a checkpoint changed what
the resumed run drew, and a changed run resumed without a word.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import Toy, ToyDataset, cli, run_dict, toy_adaptor, write_run  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig  # noqa: E402
from brewkit.run_directory import RunDirectory, RunDirectoryError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def steps_logged(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def small_run(assets, tmp_path, **training) -> tuple[str, Path]:
    out = tmp_path / "out"
    d = run_dict(assets, out)
    d["training"].update({"num_epochs": None, "num_steps": 4, "ckpt_steps": 2, **training})
    return write_run(tmp_path / "run.yaml", d), out


# -- no overwrite -------------------------------------------------------------------------------------------
def test_a_finished_run_is_refused_and_kept_unless_overwrite_output_dir(assets, tmp_path):
    run_file, out = small_run(assets, tmp_path)
    assert cli("train", run_file)[0] == 0
    before = {p: digest(out / p) for p in ("final/model.safetensors", "run.yaml", "summary.json", "metrics.jsonl")}
    code, _, stderr = cli("train", run_file, "--set", "training.seed=7")
    assert code == 2
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"error: output_dir: {out} holds a finished run (final/)")
    assert "training.overwrite_output_dir: true" in line
    assert {p: digest(out / p) for p in before} == before  # nothing was touched
    code, _, stderr = cli("train", run_file, "--set", "training.seed=7", "--set", "training.overwrite_output_dir=true")
    assert code == 0, stderr
    assert digest(out / "final/model.safetensors") != before["final/model.safetensors"]
    assert steps_logged(out) == [1, 2, 3, 4]  # the old run's records are gone, not appended to


def test_an_unfinished_run_is_refused_unless_resumed(assets, tmp_path):
    run_file, out = small_run(assets, tmp_path)
    assert cli("train", run_file)[0] == 0
    os.rename(out / "final", tmp_path / "final-aside")  # as if the run had been killed after checkpoint-4
    code, _, stderr = cli("train", run_file)
    assert code == 2 and "holds checkpoints of an unfinished run" in stderr
    assert "--set training.resume_from_checkpoint=true" in stderr
    code, stdout, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true")
    assert code == 0, stderr


def test_a_second_process_on_the_same_output_dir_is_refused_with_the_first_ones_pid(assets, tmp_path):
    run_file, out = small_run(assets, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from brewkit.run_directory import RunDirectory;"
        "d = RunDirectory(sys.argv[2]); d.claim(resuming=False, overwrite=False); print('locked', flush=True);"
        "time.sleep(60)"), str(REPO), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, stderr = cli("train", run_file)
        assert code == 1
        [line] = stderr.strip().splitlines()
        assert f"is in use by a running brewkit train (process {holder.pid})" in line
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli("train", run_file)[0] == 0  # the lock died with its process


def test_output_dir_that_is_a_file_is_one_line_with_status_1(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        RunDirectory(str(target)).claim(resuming=False, overwrite=False)


def test_a_run_that_fails_at_its_first_batch_leaves_the_finished_run_intact(assets, tmp_path):
    run_file, out = small_run(assets, tmp_path)
    assert cli("train", run_file)[0] == 0
    before = {p: digest(out / p) for p in ("final/model.safetensors", "run.yaml", "summary.json")}
    code, _, stderr = cli("train", run_file, "--set", "training.overwrite_output_dir=true",
                          "--set", "distillation.intermediate_matches[0].layer_S=9")
    assert code == 2 and "intermediate_matches[0].layer_S" in stderr
    assert {p: digest(out / p) for p in before} == before
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_stale_partial_directories_are_removed_and_a_killed_first_attempt_is_not_logged_twice(assets, tmp_path):
    run_file, out = small_run(assets, tmp_path)
    out.mkdir()
    for name in (".tmp-checkpoint-2-999", ".deleting-checkpoint-1-998", ".tmp-final-997"):
        (out / name).mkdir()
        (out / name / "model.safetensors").write_bytes(b"partial")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')  # no checkpoint
    code, _, stderr = cli("train", run_file)
    assert code == 0, stderr
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp-", ".deleting-"))]
    assert steps_logged(out) == [1, 2, 3, 4]
    assert all(r.get("loss") != 9.0 for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()))


def test_final_is_replaced_atomically(tmp_path):
    d = RunDirectory(str(tmp_path))
    d.claim(resuming=False, overwrite=True)
    d.write_directory("final", lambda p: (os.makedirs(p), Path(p, "model.safetensors").write_text("old")))

    def broken(p):
        os.makedirs(p)
        Path(p, "model.safetensors").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        d.write_directory("final", broken)
    assert Path(tmp_path, "final", "model.safetensors").read_text() == "old"  # the good model is still there
    d.release()


# -- resumption --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, named", [
    (("--set", "training.optimizer.lr=0.5"), "training.optimizer.lr"),
    (("--set", "data.max_length=12"), "data.max_length"),
    (("--set", "training.gradient_accumulation_steps=2"), "training.gradient_accumulation_steps"),
])
def test_resume_refuses_a_changed_run_naming_the_setting(assets, tmp_path, change, named):
    run_file, out = small_run(assets, tmp_path)
    assert cli("train", run_file)[0] == 0
    code, _, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true", *change)
    assert code == 2
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert "cannot resume" in line and named in line and "training.force_resume: true" in line
    code, _, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true", *change,
                          "--set", "training.force_resume=true")
    assert code == 0, stderr


def test_resume_refuses_changed_data_file_contents(assets, tmp_path):
    import shutil

    train = tmp_path / "train.csv"
    shutil.copy(assets.train, train)
    out = tmp_path / "out"
    d = run_dict(assets, out)
    d["data"]["train_file"] = str(train)
    d["training"].update({"num_epochs": None, "num_steps": 2})
    run_file = write_run(tmp_path / "run.yaml", d)
    assert cli("train", run_file)[0] == 0
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[:-1] + [lines[-1].replace("good", "bad")]) + "\n")
    code, _, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true")
    assert code == 2 and "data_digests.train_file" in stderr


def test_an_evaluating_callback_does_not_change_what_the_resumed_run_draws(tmp_path):
    """The callback after checkpoint 3 iterates a DataLoader (which draws a seed from the global RNG) and the
    student has dropout: the run stopped right after that callback and resumed ends with the uninterrupted
    run's weights exactly."""
    eval_loader = torch.utils.data.DataLoader(ToyDataset(8, seed=5), batch_size=4)

    def run(out, stop_at=None, resume=False):
        torch.manual_seed(4)
        teacher, student = Toy(d_h=8), Toy(dropout=0.3)
        tc = TrainingConfig(output_dir=str(tmp_path / out), device="cpu", progress_bar=False, ckpt_steps=3,
                            seed=11, resume_from_checkpoint=resume or None)
        d = GeneralDistiller(tc, DistillationConfig(hard_label_weight=1.0), teacher, student, toy_adaptor,
                             toy_adaptor)
        loader = torch.utils.data.DataLoader(ToyDataset(24), batch_size=4, shuffle=True)

        def evaluate(model, step):
            model.eval()
            with torch.no_grad():
                [model(b["x"]) for b in eval_loader]
            torch.rand(3)  # and draws itself
            if step == stop_at:
                raise KeyboardInterrupt

        try:
            d.train(torch.optim.AdamW(student.parameters(), lr=1e-2), loader, num_steps=9, callback=evaluate)
        except KeyboardInterrupt:
            pass
        return student

    full = run("full")
    run("part", stop_at=3)
    resumed = run("part", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# -- signals and kills (subprocesses) ----------------------------------------------------------------------
def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def start(run_file: str, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "brewkit", "train", run_file, *extra], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(proc: subprocess.Popen, metrics: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= n):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143_with_the_resume_line(assets, tmp_path):
    out = tmp_path / "out"
    d = run_dict(assets, out)
    d["training"].update({"num_epochs": None, "num_steps": 400})
    run_file = write_run(tmp_path / "run.yaml", d)
    proc = start(run_file, tmp_path)
    wait_for_steps(proc, out / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    step = json.loads((out / "summary.json").read_text())["steps"]
    assert 2 <= step < 400 and (out / f"checkpoint-{step}" / "model.safetensors").is_file()
    assert not (out / "final").exists()
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("interrupted")]
    assert line.startswith(f"interrupted (SIGTERM) at step {step}: checkpoint saved in")
    code, stdout, stderr = cli("train", run_file, "--set", "training.resume_from_checkpoint=true")
    assert code == 0, stderr
    assert steps_logged(out) == list(range(1, 401))


@pytest.mark.slow
def test_sigkill_loop_with_evaluation_resumes_to_the_uninterrupted_weights(assets, tmp_path):
    """The README's layout (an eval split, evaluation every 2 steps, a checkpoint every 3, BERT's dropout): killed
    with SIGKILL twice at arbitrary points and resumed each time, the run ends with exactly the weights of
    the run that was never interrupted, and every step and evaluation is logged once."""
    def make(name):
        out = tmp_path / name
        d = run_dict(assets, out)
        d["training"].update({"num_epochs": 4, "ckpt_steps": 3})
        d["evaluation"]["steps"] = 2
        return write_run(tmp_path / f"{name}.yaml", d), out

    # every run in a subprocess: the same torch thread count as the killed ones (this process runs with 1)
    ref_file, ref_out = make("ref")
    proc = start(ref_file, tmp_path)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    run_file, out = make("killed")
    for kill_after in (2, 8):  # before and after a checkpoint-with-evaluation; the FSDP test kills a run too
        proc = start(run_file, tmp_path, "--set", "training.resume_from_checkpoint=true")
        wait_for_steps(proc, out / "metrics.jsonl", kill_after)
        proc.kill()
        proc.communicate()
    proc = start(run_file, tmp_path, "--set", "training.resume_from_checkpoint=true")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    ref, got = load_file(ref_out / "final/model.safetensors"), load_file(out / "final/model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    total = json.loads((ref_out / "summary.json").read_text())["steps"]
    assert steps_logged(out) == list(range(1, total + 1))
    evals = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "eval_accuracy" in r]
    assert evals == sorted(set(evals)) and evals[-1] == total

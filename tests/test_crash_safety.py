"""Crash safety and safe loading of checkpoints.

A training process is SIGKILLed at chosen points (inside a step, while a checkpoint is being written, while
old checkpoints are pruned, and at arbitrary times); afterwards the last complete checkpoint must load,
``latest_checkpoint`` / ``resume_from_checkpoint=True`` must never pick a partial one, and the resumed run
must end with the weights of an uninterrupted run. The runs come from ``tests/crash_worker.py``: most are
forked from this process (cheap: torch is already imported), one is a fresh ``python`` subprocess.
"""
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import crash_worker
import pytest
import torch
from helpers import Toy
from safetensors.torch import load_file

from brewkit.checkpoint import latest_checkpoint, list_checkpoints, load_state, load_student
from brewkit.errors import CheckpointError

N = crash_worker.NUM_STEPS
WORKER = os.path.abspath(crash_worker.__file__)
REPO = os.path.dirname(os.path.dirname(WORKER))


# -- helpers ----------------------------------------------------------------------------------------------
def _run_to_end(out, **build_kw):
    """Train (or resume, with resume=True) to NUM_STEPS in this process; return the distiller."""
    distiller, optimizer, loader = crash_worker.build(str(out), **build_kw)
    crash_worker.train(distiller, optimizer, loader)
    return distiller


def _wait_ready(ready, alive, describe, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if not alive():
            pytest.fail(f"the worker exited before its pause point ({describe()})")
        if time.monotonic() > deadline:
            pytest.fail("the worker never reached its pause point")
        time.sleep(0.005)


def _kill_forked_at(out, pause, **spec):
    """Fork a worker, let it reach ``pause``, SIGKILL it there."""
    ready = str(out) + ".ready"
    proc = multiprocessing.get_context("fork").Process(
        target=crash_worker.run, args=({"out": str(out), "pause": pause, "ready": ready, **spec},))
    proc.start()
    try:
        _wait_ready(ready, proc.is_alive, lambda: f"exit code {proc.exitcode}", timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
    assert proc.exitcode == -signal.SIGKILL


def _tmp_dirs(out):
    return [n for n in os.listdir(out) if n.startswith(".tmp-")]


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _assert_last_complete_checkpoint(out, step, reference_out, listed=None):
    """latest_checkpoint is checkpoint-{step}; list_checkpoints gives exactly the complete checkpoints ``listed``
    (default 1 ... step: no temporary, half-deleted or stray directory); the latest loads and holds exactly the
    uninterrupted run's state."""
    latest = latest_checkpoint(str(out))
    assert latest == os.path.join(str(out), f"checkpoint-{step}")
    listed = list(range(1, step + 1)) if listed is None else listed
    assert list_checkpoints(str(out)) == [(s, os.path.join(str(out), f"checkpoint-{s}")) for s in listed]
    state = load_state(latest)
    assert state["trainer_state"]["global_step"] == step
    student = Toy(d_h=6)
    load_student(student, latest)
    ref = os.path.join(str(reference_out), f"checkpoint-{step}")
    assert _same_tensors(student.state_dict(), load_file(os.path.join(ref, "model.safetensors")))
    assert _same_tensors(state["projections"], load_file(os.path.join(ref, "projections.safetensors")))
    ref_opt = load_state(ref)["optimizer"]["state"]
    assert all(_same_tensors(state["optimizer"]["state"][k], ref_opt[k]) for k in ref_opt)


def _assert_resume_matches(out, reference, from_step, **build_kw):
    """Resume to the end: only steps from_step+1 ... N run, and the weights equal the uninterrupted run's."""
    metrics = os.path.join(str(out), "metrics.jsonl")
    with open(metrics, encoding="utf-8") as f:
        before = [json.loads(line)["step"] for line in f]
    assert before[:from_step] == list(range(1, from_step + 1))  # the killed run logged past its checkpoint or not
    resumed = _run_to_end(out, resume=True, **build_kw)
    assert resumed.global_step == N
    with open(metrics, encoding="utf-8") as f:
        steps = [json.loads(line)["step"] for line in f]
    # records the killed run wrote past the checkpoint were dropped and redone: every step once, in order (a
    # run that started over would repeat 1..from_step)
    assert steps == list(range(1, N + 1))
    for a, b in zip(resumed.trainable_parameters(), reference.trainable_parameters(), strict=True):
        assert (a.detach() - b.detach()).abs().max() <= 1e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: (distiller at the end, its output_dir with checkpoint-1 ... checkpoint-N)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    distiller = _run_to_end(out)
    assert [s for s, _ in list_checkpoints(str(out))] == list(range(1, N + 1))
    return distiller, out


# -- kills at chosen points -------------------------------------------------------------------------------
@pytest.mark.parametrize("pause, truncate, partial_checkpoint", [
    (["forward", 3], False, False),                         # inside step 3, before its update
    (["after_update", 3], False, False),                    # step 3 applied in memory, not saved
    (["save_file", 3, "model.safetensors"], True, True),    # torn write of the student weights
    (["save_file", 3, "optimizer.pt"], False, True),        # some files written, others not
    (["save_file", 3, "trainer_state.json"], False, True),  # every file written, not yet fsynced/renamed
    (["before_rename", 3], False, True),                    # complete temp directory, not renamed
], ids=["in_forward", "after_update", "torn_model_file", "after_optimizer_file", "after_state_file",
        "before_rename"])
def test_sigkill_keeps_last_complete_checkpoint_and_resume_is_exact(tmp_path, reference, pause, truncate,
                                                                    partial_checkpoint):
    ref_distiller, ref_out = reference
    out = tmp_path / "out"
    _kill_forked_at(out, pause, truncate=truncate)
    tmp = _tmp_dirs(out)
    if partial_checkpoint:
        assert len(tmp) == 1 and tmp[0].startswith(".tmp-checkpoint-3-")  # the kill hit checkpoint 3's write
        if pause[0] == "before_rename":
            assert os.path.isfile(out / tmp[0] / "trainer_state.json")  # complete, yet never picked
    else:
        assert tmp == []
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-2"]
    # a stray directory that merely looks like a newer checkpoint (no trainer_state.json) is not picked either
    os.makedirs(out / "checkpoint-99")
    shutil.copy(out / "checkpoint-2" / "model.safetensors", out / "checkpoint-99")
    _assert_last_complete_checkpoint(out, 2, ref_out)
    _assert_resume_matches(out, ref_distiller, 2)


@pytest.mark.slow
def test_sigkill_of_a_fresh_python_process_mid_checkpoint(tmp_path, reference):
    """The same as above, with a real interpreter started from scratch (no fork)."""
    ref_distiller, ref_out = reference
    out, ready = tmp_path / "out", str(tmp_path / "ready")
    spec = {"out": str(out), "pause": ["save_file", 4, "rng_state.pt"], "ready": ready}
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(ready, lambda: proc.poll() is None,
                    lambda: proc.stderr.read().decode(errors="replace")[-2000:], timeout=120)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(_tmp_dirs(out)) == 1
    _assert_last_complete_checkpoint(out, 3, ref_out)
    _assert_resume_matches(out, ref_distiller, 3)


def test_sigkill_while_pruning_old_checkpoints(tmp_path, reference):
    ref_distiller, ref_out = reference
    out = tmp_path / "out"
    _kill_forked_at(out, ["prune", 3], save_total_limit=2)
    # checkpoint-3 was complete before pruning started; checkpoint-1 was hidden, then half deleted
    assert not os.path.exists(out / "checkpoint-1")
    assert [n for n in os.listdir(out) if n.startswith(".deleting-checkpoint-1-")]
    _assert_last_complete_checkpoint(out, 3, ref_out, listed=[2, 3])
    _assert_resume_matches(out, ref_distiller, 3, save_total_limit=2)
    assert [s for s, _ in list_checkpoints(str(out))] == [N - 1, N]  # the resumed run pruned as configured


def test_list_checkpoints_never_lists_a_half_pruned_checkpoint(tmp_path, reference):
    _, ref_out = reference
    out = tmp_path / "out"
    _kill_forked_at(out, ["prune", 3], save_total_limit=2)
    # on disk: checkpoint-2, checkpoint-3 and the hidden, half-deleted checkpoint-1; only the complete two listed
    assert sorted(n for n in os.listdir(out) if "checkpoint-" in n and not n.startswith(".deleting-")) == \
        ["checkpoint-2", "checkpoint-3"]
    listed = list_checkpoints(str(out))
    assert [s for s, _ in listed] == [2, 3]
    for step, path in listed:
        assert load_state(path)["trainer_state"]["global_step"] == step
        student = Toy(d_h=6)
        load_student(student, path)
        reference_weights = load_file(str(ref_out / f"checkpoint-{step}" / "model.safetensors"))
        assert _same_tensors(student.state_dict(), reference_weights)  # what the uninterrupted run saved there


@pytest.mark.parametrize("delay", [0.0, 0.012, 0.035])
def test_sigkill_at_arbitrary_times(tmp_path, reference, delay):
    """Steps slowed to ~30 ms; the kill lands `delay` s after checkpoint-2 appeared, wherever that is."""
    ref_distiller, _ = reference
    out = tmp_path / "out"
    proc = multiprocessing.get_context("fork").Process(
        target=crash_worker.run, args=({"out": str(out), "pause": ["sleep", 0.03]},))
    proc.start()
    try:
        _wait_ready(str(out / "checkpoint-2"), proc.is_alive, lambda: f"exit code {proc.exitcode}", timeout=30)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
        if proc.is_alive():  # the wait failed: never leave a worker behind (it would hold pytest's pipes)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
    latest = latest_checkpoint(str(out))
    step = load_state(latest)["trainer_state"]["global_step"]
    assert latest.endswith(f"checkpoint-{step}") and 2 <= step < N
    assert [s for s, _ in list_checkpoints(str(out))] == list(range(1, step + 1))  # every step saved, none partial
    load_student(Toy(d_h=6), latest)
    _assert_resume_matches(out, ref_distiller, step)


# -- safe loading -----------------------------------------------------------------------------------------

def _set_marker(path):
    """What a malicious pickle would run on load; weights_only=True must refuse to call it."""
    with open(path, "w") as f:
        f.write("code ran")
    return {}


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_set_marker, (self.path,))


def test_checkpoint_files_are_safetensors_json_and_weights_only_pickles(reference, tmp_path):
    ref_distiller, ref_out = reference
    path = latest_checkpoint(str(ref_out))
    names = sorted(os.listdir(path))
    assert {"model.safetensors", "projections.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pt",
            "trainer_state.json", "training_config.json", "distillation_config.json"} <= set(names)
    for name in names:
        file = os.path.join(path, name)
        if name.endswith(".pt"):
            torch.load(file, weights_only=True, map_location="cpu")
        elif name.endswith(".safetensors"):
            load_file(file)
        else:
            assert name.endswith(".json"), name
            with open(file) as f:
                content = json.load(f)
            if name == "trainer_state.json":
                assert content["global_step"] == N
    student = ref_distiller.model_S
    assert _same_tensors(load_file(os.path.join(path, "model.safetensors")),
                         {k: v.detach() for k, v in student.state_dict().items()})

    # brewkit's loader refuses a pickle that would run code (it uses weights_only=True)
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    marker = str(tmp_path / "marker")
    torch.save({"torch": _Payload(marker)}, bad / "rng_state.pt")
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*rng_state\.pt: it is not a brewkit checkpoint "
                                              r"file \(it refers to test_crash_safety\._set_marker\)"):
        load_state(str(bad))
    assert not os.path.exists(marker)


def test_resume_into_a_different_student_is_refused(reference, tmp_path):
    _, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    distiller, optimizer, loader = crash_worker.build(str(out), resume=True, student_width=7)
    before = [p.detach().clone() for p in distiller.model_S.parameters()]
    with pytest.raises(CheckpointError, match="different run"):
        crash_worker.train(distiller, optimizer, loader)
    assert all(torch.equal(a, b) for a, b in zip(before, distiller.model_S.parameters()))


@pytest.mark.parametrize("change", [{"teacher_layers": 4}, {"temperature": 3.0}], ids=["teacher", "config"])
def test_resume_with_a_different_teacher_or_config_is_refused(reference, tmp_path, change):
    _, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    distiller, optimizer, loader = crash_worker.build(str(out), resume=True, **change)
    before = [p.detach().clone() for p in distiller.model_S.parameters()]
    with pytest.raises(CheckpointError, match="(?s)different run.*force_resume=True"):
        crash_worker.train(distiller, optimizer, loader)
    assert all(torch.equal(a, b) for a, b in zip(before, distiller.model_S.parameters(), strict=True))


def test_metrics_writer_drops_records_past_the_resumed_step(tmp_path):
    from brewkit.engine.step_logger import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)]
    lines.insert(3, json.dumps({"step": 3, "eval_accuracy": 0.5}) + "\n")  # an eval record at the checkpoint
    lines.insert(1, "not json, but a complete line\n")  # not ours to judge: kept
    path.write_text("".join(lines) + '{"step": 6, "lo')  # torn by a kill mid-write: dropped
    MetricsWriter(str(tmp_path), None).drop_after(3)
    kept = path.read_text().splitlines()
    assert kept[1] == "not json, but a complete line"
    assert [json.loads(line)["step"] for i, line in enumerate(kept) if i != 1] == [1, 2, 3, 3]
    MetricsWriter(str(tmp_path), None).drop_after(3)  # nothing past 3 left: the file is untouched
    assert path.read_text().splitlines() == kept

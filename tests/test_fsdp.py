"""FSDP2 (``training.parallel='fsdp'``) on CPU with 2 gloo processes: the sharded student trains exactly as the
single-process and DDP ones, with gradient accumulation and masks; sharded checkpoints resume exactly, also at
another world size (2 -> 1, 1 -> 2); a torchrun run SIGKILLed, then SIGTERMed, resumes to the uninterrupted run's
weights; a student trained from an offline teacher store equals the live-teacher one."""
import os
import sys

import pytest
import torch
from helpers import free_port, spawn_and_wait

sys.path.insert(0, os.path.dirname(__file__))

pytestmark = pytest.mark.slow  # every test starts gloo processes (spawn)


def _run(rank: int, world: int, port: int, out: str, batch: int, accum: int, parallel: str, stop_at, resume: bool,
         shard_teachers: str = "shard", cache: str = "none") -> None:
    """10 SGD steps (effective batch 8, rows of different lengths) of KD + hard labels + masked matches with
    projections on the toy model, clipped; rank 0 saves the full trainable tensors."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from helpers import Toy, ToyDataset, toy_adaptor

    from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig
    from brewkit.fsdp import full_tensor

    torch.manual_seed(0)
    teacher, student = Toy(d_h=8, n_layers=3), Toy(n_layers=3)
    dc = DistillationConfig(temperature=2, hard_label_weight=1.0, intermediate_matches=[
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
         "proj": ["linear", 6, 8]},
        {"layer_T": 3, "layer_S": 3, "feature": "hidden", "loss": "pkd", "weight": 1.0, "proj": ["linear", 6, 8]}])
    dataset = ToyDataset(80)
    if cache != "none":  # the per-example teacher store keys on the example index
        dataset = [{**dataset[i], "idx": torch.tensor(i)} for i in range(len(dataset))]
        dc = DistillationConfig(**{**dc.to_dict(), "teacher_cache": cache,
                                   "teacher_cache_dir": os.path.join(out, "store")})
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    tc = TrainingConfig(output_dir=out, device="cpu", gradient_accumulation_steps=accum, ckpt_frequency=10,
                        logging_steps=5, progress_bar=False, resume_from_checkpoint=resume or None,
                        parallel=parallel, fsdp_teachers=shard_teachers, clip_projections=True)
    d = GeneralDistiller(tc, dc, teacher, student, toy_adaptor, toy_adaptor)

    def cb(model, step):
        if step == stop_at:
            raise SystemExit(0)

    try:
        d.train(torch.optim.SGD(student.parameters(), lr=0.5), loader, num_epochs=1 if cache == "none" else 2,
                max_grad_norm=0.5, callback=cb)
    except SystemExit:
        pass
    weights = [full_tensor(p.detach()).clone() for p in d.trainable_parameters()]  # a collective under FSDP
    if rank == 0:
        torch.save(weights, os.path.join(out, "final_weights.pt"))


def _launch(tmp_path, name, world, batch, accum, parallel="fsdp", stop_at=None, resume=False, shard_teachers="shard",
            cache="none"):
    out = str(tmp_path / name)
    args = (out, batch, accum, parallel, stop_at, resume, shard_teachers, cache)
    if world == 1:
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)
        _run(0, 1, 0, *args)
    else:
        spawn_and_wait(_run, (world, free_port(), *args), world, what=f"run {name}")
    return torch.load(os.path.join(out, "final_weights.pt"), weights_only=True)


def assert_same(a, b, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("batch, accum, teachers", [(4, 1, "shard"), (2, 2, "shard"), (2, 2, "replicate")])
def test_fsdp_student_equals_the_single_process_and_ddp_students(tmp_path, batch, accum, teachers):
    single = _launch(tmp_path, "single", 1, 8, 1, parallel="ddp")
    sharded = _launch(tmp_path, "fsdp", 2, batch, accum, shard_teachers=teachers)
    assert_same(single, sharded)
    if teachers == "replicate":  # the same layout as (2, 2, "shard"), which checks DDP and that training moved
        return
    ddp = _launch(tmp_path, "ddp", 2, batch, accum, parallel="ddp")
    assert_same(single, ddp)
    after_one = _launch(tmp_path, "one_step", 2, batch, accum, stop_at=1)
    assert max(float((w - s).abs().max()) for w, s in zip(sharded, after_one)) > 1e-3  # the steps after the
    # first moved the weights: the comparison is not between copies that hardly trained


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_fsdp_with_the_teacher_store_equals_the_single_process_run(tmp_path, cache):
    """The per-example teacher store under FSDP (the second epoch reads it): the same student as one process."""
    assert_same(_launch(tmp_path, "single", 1, 8, 1, parallel="ddp", cache=cache),
                _launch(tmp_path, "fsdp", 2, 2, 2, cache=cache))


def test_fsdp_checkpoints_are_sharded_and_resume_exactly(tmp_path):
    full = _launch(tmp_path, "full", 2, 2, 2)
    _launch(tmp_path, "part", 2, 2, 2, stop_at=4)
    ckpt = tmp_path / "part" / "checkpoint-4"
    assert (ckpt / "sharded" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (ckpt / "rng_state_rank1.pt").is_file() and (ckpt / "trainer_state.json").is_file()
    assert_same(full, _launch(tmp_path, "part", 2, 2, 2, resume=True), atol=1e-6)


def test_fsdp_resume_at_another_world_size(tmp_path):
    full = _launch(tmp_path, "full", 2, 2, 2)
    _launch(tmp_path, "two", 2, 2, 2, stop_at=4)
    assert_same(full, _launch(tmp_path, "two", 1, 4, 2, resume=True))  # 2 -> 1: the same effective batch
    _launch(tmp_path, "one", 1, 4, 2, stop_at=4)
    assert_same(full, _launch(tmp_path, "one", 2, 2, 2, resume=True))  # 1 -> 2


def test_torchrun_yaml_run_with_parallel_fsdp_writes_a_consolidated_final_model(assets, tmp_path):
    """``torchrun --nproc_per_node=2 -m brewkit train RUN.yaml --set training.parallel=fsdp``: sharded checkpoints,
    and a final/ that from_pretrained loads, equal (to 1e-5) to the DDP run's."""
    import json
    import subprocess

    from helpers import reference_accuracy, run_dict, write_run
    from safetensors.torch import load_file

    def torchrun(name, parallel):
        out = tmp_path / name
        d = run_dict(assets, out)
        d["data"]["batch_size"] = 4
        run_file = write_run(tmp_path / f"{name}.yaml", d)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            f"--master_port={free_port()}", "-m", "brewkit", "train", run_file,
                            "--set", f"training.parallel={parallel}"], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return out

    ddp, sharded = torchrun("ddp", "ddp"), torchrun("fsdp", "fsdp")
    assert (sharded / "checkpoint-4" / "sharded" / ".metadata").is_file()
    config = json.loads((sharded / "final" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    a, b = load_file(ddp / "final" / "model.safetensors"), load_file(sharded / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["eval_accuracy"] == pytest.approx(reference_accuracy(str(sharded / "final"), assets.eval_rows))


# -- torchrun FSDP runs stopped from outside: SIGKILL, then SIGTERM, then resumed --------------------------------------
KILL_STEPS = 24  # 32 rows, 4 a process: 4 steps an epoch; a checkpoint every 3 steps


def _torchrun_fsdp(run_file: str, logs, *extra: str):
    """``torchrun --nproc_per_node=2 -m brewkit train RUN --set training.parallel=fsdp`` started in a session of
    its own; each worker's stdout / stderr go to files under ``logs`` (torchrun's --redirects), the agent's to
    ``logs/agent.out`` / ``logs/agent.err`` (files, not pipes: a full pipe would stall the run)."""
    import subprocess

    logs.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           f"--log-dir={logs}", "--redirects=3", "-m", "brewkit", "train", run_file,
           "--set", "training.parallel=fsdp", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(logs / "agent.out", "w") as out, open(logs / "agent.err", "w") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)


def _worker_stderr(logs, rank: int) -> str:
    [path] = logs.glob(f"*/attempt_0/{rank}/stderr.log")
    return path.read_text()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _signal_every_process(agent, sig) -> list[int]:
    """``sig`` to the agent's process group and to each worker's, as Slurm signals every process of a job:
    torchrun starts each worker in a session of its own, so the agent's group alone does not reach them."""
    workers = _children(agent.pid)
    assert len(workers) == 2, workers
    for pid in [*workers, agent.pid]:
        os.killpg(pid, sig)
    return workers


def _steps_trained(worker_stderr: str) -> list[int]:
    """The steps this attempt trained, from rank 0's ``step N/24`` log lines."""
    import re

    return [int(s) for s in re.findall(rf"brewkit: step (\d+)/{KILL_STEPS} ", worker_stderr)]


def test_torchrun_fsdp_run_sigkilled_then_sigtermed_resumes_to_the_uninterrupted_weights(assets, tmp_path):
    """A torchrun FSDP run (24 steps, sharded checkpoints every 3) SIGKILLed, agent and workers, after its first
    checkpoint; resumed, then SIGTERMed in every process: a checkpoint at the step it stopped, the
    ``interrupted (SIGTERM) at step N`` line, no traceback from any worker, no final/; resumed again to the end:
    final/ equals the uninterrupted FSDP run's (1e-6), metrics.jsonl logs every step once with the same losses
    and evaluations, and each attempt trained only the steps after its checkpoint."""
    import contextlib
    import json
    import signal
    import time

    from helpers import run_dict, write_run
    from safetensors.torch import load_file
    from test_run_directory import steps_logged, wait_for_steps

    def run_file(name):
        d = run_dict(assets, tmp_path / name)
        d["data"]["batch_size"] = 4
        d["training"].update({"num_epochs": None, "num_steps": KILL_STEPS, "ckpt_steps": 3})
        d["evaluation"]["steps"] = 1  # whichever step SIGTERM stops at has an evaluation
        return write_run(tmp_path / f"{name}.yaml", d)

    def records(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    def dead(pids, timeout=30):
        deadline = time.monotonic() + timeout
        while any(map(_alive, pids)):
            assert time.monotonic() < deadline, [p for p in pids if _alive(p)]
            time.sleep(0.05)
        return True

    reference, out, resume = tmp_path / "reference", tmp_path / "out", ("--set", "training.resume_from_checkpoint=true")
    ref = _torchrun_fsdp(run_file("reference"), tmp_path / "logs-ref")
    assert ref.wait(timeout=300) == 0, (tmp_path / "logs-ref" / "agent.err").read_text()[-3000:]
    path = run_file("out")
    agents = []
    try:
        # 1. SIGKILL, everyone, some steps after checkpoint-3
        agents.append(_torchrun_fsdp(path, tmp_path / "logs-1"))
        wait_for_steps(agents[-1], out / "metrics.jsonl", 5, timeout=300)
        workers = _signal_every_process(agents[-1], signal.SIGKILL)
        assert agents[-1].wait(timeout=60) == -signal.SIGKILL and dead(workers)
        assert not (out / "final").exists()
        kept = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        assert kept >= 3 and (out / f"checkpoint-{kept}" / "sharded" / ".metadata").is_file()

        # 2. resumed, then SIGTERM to every process
        agents.append(_torchrun_fsdp(path, tmp_path / "logs-2", *resume))
        wait_for_steps(agents[-1], out / "metrics.jsonl", 14, timeout=300)
        workers = _signal_every_process(agents[-1], signal.SIGTERM)
        agents[-1].wait(timeout=120)
        assert dead(workers)
        # torchrun itself re-raises the signal it got (exit status 1, its own SignalException traceback); the
        # workers are what stop cleanly
        agent_err = (tmp_path / "logs-2" / "agent.err").read_text()
        assert agents[-1].returncode == 1, agent_err[-3000:]
        assert agent_err.rstrip().endswith(f"SignalException: Process {agents[-1].pid} got signal: 15")
        rank0, rank1 = _worker_stderr(tmp_path / "logs-2", 0), _worker_stderr(tmp_path / "logs-2", 1)
        assert "Traceback" not in rank0 and "Traceback" not in rank1, (rank0 + rank1)[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        stopped = summary["steps"]
        assert summary["interrupted"] and summary["signal"] == "SIGTERM"
        assert 14 <= stopped < KILL_STEPS and (out / f"checkpoint-{stopped}" / "sharded" / ".metadata").is_file()
        [line] = [ln for ln in rank0.splitlines() if ln.startswith("interrupted")]
        assert line.startswith(f"interrupted (SIGTERM) at step {stopped}: checkpoint saved in {out}/checkpoint-"
                               f"{stopped}; run again with --set training.resume_from_checkpoint=true")
        assert not (out / "final").exists()
        assert _steps_trained(rank0) == list(range(kept + 1, stopped + 1))  # from the SIGKILLed run's checkpoint

        # 3. resumed to the end
        agents.append(_torchrun_fsdp(path, tmp_path / "logs-3", *resume))
        assert agents[-1].wait(timeout=300) == 0, (tmp_path / "logs-3" / "agent.err").read_text()[-3000:]
    finally:  # a failed check leaves no run behind
        for agent in agents:
            if agent.poll() is None:
                for pid in [*_children(agent.pid), agent.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                agent.wait()
    assert _steps_trained(_worker_stderr(tmp_path / "logs-3", 0)) == list(range(stopped + 1, KILL_STEPS + 1))
    a, b = load_file(reference / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert steps_logged(out) == list(range(1, KILL_STEPS + 1))  # nothing the killed attempts logged twice
    want, got = records(reference), records(out)
    assert [r["loss"] for r in got if "loss" in r] == pytest.approx([r["loss"] for r in want if "loss" in r],
                                                                    rel=1e-6)
    # the evaluations too, that of the step SIGTERM stopped at included (it runs after the checkpoint, before
    # the run stops: the resumed run starts after that step)
    evaluations = [(r["step"], r["eval_accuracy"]) for r in want if "eval_accuracy" in r]
    assert [(r["step"], r["eval_accuracy"]) for r in got if "eval_accuracy" in r] == evaluations
    assert [step for step, _ in evaluations] == list(range(1, KILL_STEPS + 1))


# -- the offline teacher store under FSDP ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The causal-LM assets of tests/task_helpers.py (tokenizer of 43 ids, 24 training rows)."""
    from task_helpers import lm_assets

    return lm_assets(tmp_path_factory.mktemp("lm"))


def test_training_from_a_full_vocabulary_store_under_fsdp_equals_live_ddp_training(lm, tmp_path):
    """Two gloo processes capture a float32 store of the whole vocabulary (k = 43), then train from it with
    ``parallel: fsdp`` (no teacher model; sharded checkpoints): the same student, to 1e-5, as two processes
    distilling from the live teacher under DDP."""
    import json

    from task_helpers import VOCAB
    from test_offline_store import final_weights, index_entries, launch_cli, lm_sgd_run, store_run, write

    from brewkit.teacher_store import read_manifest

    live = lm_sgd_run(lm, tmp_path / "live", shuffle=True)
    live["data"]["batch_size"] = 4  # 24 rows, 4 a process: 3 steps an epoch, 4 steps
    path, store = write(tmp_path / "live.yaml", live), tmp_path / "store"
    launch_cli(2, ["capture", path, "--out", str(store), "--k", str(len(VOCAB)), "--dtype", "float32"])
    m = read_manifest(str(store))
    assert m["complete"] and (m["k"], m["vocab"], m["dtype"]) == (len(VOCAB), len(VOCAB), "float32")
    assert sorted(set(index_entries(store))) == list(range(24))
    launch_cli(2, ["train", path])  # parallel: ddp, the default
    launch_cli(2, ["train", write(tmp_path / "s.yaml", store_run(live, store, tmp_path / "from")),
                   "--set", "training.parallel=fsdp"])
    assert (tmp_path / "from" / "checkpoint-4" / "sharded" / ".metadata").is_file()  # FSDP did train it
    assert (tmp_path / "live" / "checkpoint-4" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "from" / "summary.json").read_text())["teacher_parameters"] == 0  # no teacher
    a, b = final_weights(tmp_path / "live"), final_weights(tmp_path / "from")
    assert a.keys() == b.keys()  # the output embedding tied to the input one is not written a second time
    for name, w in a.items():
        torch.testing.assert_close(b[name], w, rtol=0, atol=1e-5)

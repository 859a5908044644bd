"""A tiny distillation run that can stop itself at a chosen point, for the crash-safety tests.

The test starts :func:`run` in a child process (forked, or as ``python tests/crash_worker.py SPEC_JSON``),
waits until the child has written its ``ready`` file, which it does right when it reaches the chosen point,
and then kills it with SIGKILL. The child sleeps at that point, so the kill lands exactly there.

Pause points (``pause`` in the spec):

* ``["forward", k]``: inside optimizer step k, after the student's forward pass (nothing of step k applied).
* ``["after_update", k]``: inside step k, right after ``optimizer.step()`` (weights moved, not yet saved).
* ``["save_file", k, name]``: while checkpoint k is written, right after file ``name`` landed in the
  temporary directory. ``truncate: true`` cuts that file in half first (a torn write).
* ``["before_rename", k]``: checkpoint k is complete in its temporary directory, not yet renamed into place.
* ``["prune", k]``: while checkpoint k's save prunes an old checkpoint (``save_total_limit``): its
  ``model.safetensors`` is deleted, the rest not yet.
* ``["sleep", seconds]``: no pause, but each step sleeps this long (for kills at arbitrary times).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from helpers import Toy, ToyDataset, toy_adaptor  # noqa: E402

import brewkit.checkpoint as ckpt  # noqa: E402
from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig  # noqa: E402

NUM_STEPS = 6


def build(out_dir: str, resume: bool = False, save_total_limit: int | None = None, adaptor_S=toy_adaptor,
          student_width: int = 6, teacher_layers: int = 3, temperature: float = 2.0):
    """The distiller, optimizer and loader of every crash-test run (same seeds, so runs are comparable).
    The keyword arguments after ``adaptor_S`` change the run, for the tests that resume into a different one."""
    torch.manual_seed(0)
    teacher = Toy(d_h=8, n_layers=teacher_layers)
    student = Toy(d_h=student_width, dropout=0.2)
    dc = DistillationConfig(temperature=temperature, hard_label_weight=0.5, intermediate_matches=[
        {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
         "proj": ["linear", student_width, 8]}])
    tc = TrainingConfig(output_dir=out_dir, device="cpu", logging_steps=1, progress_bar=False, ckpt_steps=1,
                        seed=123, save_total_limit=save_total_limit, resume_from_checkpoint=resume or None)
    distiller = GeneralDistiller(tc, dc, teacher, student, toy_adaptor, adaptor_S)
    loader = torch.utils.data.DataLoader(ToyDataset(16), batch_size=4, shuffle=True)  # 4 batches / pass
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.05)
    return distiller, optimizer, loader


def train(distiller, optimizer, loader, num_steps: int = NUM_STEPS) -> None:
    distiller.train(optimizer, loader, num_steps=num_steps, scheduler_class=torch.optim.lr_scheduler.LambdaLR,
                    scheduler_args={"lr_lambda": lambda s: 1.0 - s / (2 * num_steps)})


def _hold(ready: str) -> None:
    """Tell the test we are at the pause point, then wait to be killed."""
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
    os._exit(3)  # never reached when the test kills us


def _in_tmp_of(path: str, step: int) -> bool:
    return os.path.basename(os.path.dirname(path)).startswith(f".tmp-checkpoint-{step}-")


def run(spec: dict) -> None:
    """Train as described by ``spec`` (keys: out, pause, ready, truncate, save_total_limit)."""
    pause, ready = spec.get("pause"), spec.get("ready")
    kind = pause[0] if pause else None
    state = {"forward_calls": 0}

    def adaptor_S(batch, out):
        state["forward_calls"] += 1
        if kind == "sleep":
            time.sleep(pause[1])
        if kind == "forward" and state["forward_calls"] == pause[1]:
            _hold(ready)
        return toy_adaptor(batch, out)

    distiller, optimizer, loader = build(spec["out"], save_total_limit=spec.get("save_total_limit"),
                                         adaptor_S=adaptor_S)

    if kind == "after_update":
        def after_step(opt, args, kwargs):
            if distiller.global_step + 1 == pause[1]:  # global_step is incremented after the update
                _hold(ready)

        optimizer.register_step_post_hook(after_step)

    if kind == "save_file":
        step_k, name = pause[1], pause[2]

        def after_write(path: str) -> None:
            if os.path.basename(path) == name and _in_tmp_of(path, step_k):
                if spec.get("truncate"):
                    size = os.path.getsize(path)
                    with open(path, "r+b") as f:
                        f.truncate(size // 2)
                _hold(ready)

        def wrap(fn, path_arg):
            def wrapped(*args, **kwargs):
                result = fn(*args, **kwargs)
                after_write(args[path_arg])
                return result
            return wrapped

        ckpt.save_model = wrap(ckpt.save_model, 1)   # model.safetensors
        ckpt.save_file = wrap(ckpt.save_file, 1)     # projections.safetensors
        ckpt.write_json = wrap(ckpt.write_json, 0)   # *_config.json, trainer_state.json
        torch.save = wrap(torch.save, 1)             # optimizer.pt, scheduler.pt, rng_state.pt

    if kind == "before_rename":
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            if os.path.basename(src).startswith(f".tmp-checkpoint-{pause[1]}-"):
                _hold(ready)
            return real_rename(src, dst, *args, **kwargs)

        os.rename = rename

    if kind == "prune":
        def rmtree(path, *args, **kwargs):
            name = os.path.basename(path)
            if distiller.global_step == pause[1] and name.startswith((".deleting-checkpoint-", "checkpoint-")):
                os.remove(os.path.join(path, "model.safetensors"))
                _hold(ready)
            return shutil.rmtree(path, *args, **kwargs)

        ckpt.shutil = type("PausingShutil", (), {"rmtree": staticmethod(rmtree)})

    train(distiller, optimizer, loader)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(json.loads(sys.argv[1]))

"""The demo's distillation stage with three ways of batching the same examples, side by side in one process.

    python scripts/bench_data.py [--teacher runs/demo/teacher/final] [--steps N] [--json]

1. ``fixed``: every batch padded to ``max_length`` (64), random batches (what TextBrewer's examples do);
2. ``dynamic``: each batch padded to its longest row, random batches (``padding: longest``);
3. ``grouped``: dynamic padding plus length-grouped batches (``group_by_length: true``, the default).

Each mode runs ``configs/demo_distill.yaml`` (teacher from stage 1 of ``scripts/demo.py``; run that first, or
pass ``--teacher``) with only the data settings changed, for the full epoch unless ``--steps`` is given, and
reports the median optimizer-step time, steps/s, the average padded batch length, wall time and the student's
eval accuracy (the full-epoch accuracy is the demo's own figure; with ``--steps`` it is that short run's).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo_distill.yaml")
MODES = {
    "fixed": ["data.padding=max_length", "data.group_by_length=false"],
    "dynamic": ["data.padding=longest", "data.group_by_length=false"],
    "grouped": ["data.padding=longest", "data.group_by_length=true"],
}


def run_mode(name: str, teacher: str, out: str, steps: int | None, extra: list[str] = ()) -> dict:
    """Train the demo's student in one mode; time every optimizer step and record the batch lengths."""
    from brewkit import run, runfile

    overrides = [*MODES[name], f"teacher.path={teacher}", f"output_dir={os.path.join(out, name)}",
                 "training.logging_steps=1000000", "training.progress_bar=false"]
    if steps:
        overrides.append(f"training.num_steps={steps}")
    overrides += list(extra)
    cfg = runfile.load_run(CONFIG, overrides)
    stamps: list[float] = []
    collated: list[tuple[float, int]] = []  # (time, padded length) of every batch built
    original_step = torch.optim.AdamW.step
    from brewkit.data import collate

    original_collate = collate.PadCollator.__call__

    def timed_step(self, *a, **k):
        r = original_step(self, *a, **k)
        stamps.append(time.perf_counter())
        return r

    def recording_collate(self, rows):
        batch = original_collate(self, rows)
        collated.append((time.perf_counter(), batch["input_ids"].shape[1]))
        return batch

    torch.optim.AdamW.step = timed_step
    collate.PadCollator.__call__ = recording_collate
    t0 = time.perf_counter()
    try:
        summary = run.train_run(cfg)
    finally:
        torch.optim.AdamW.step = original_step
        collate.PadCollator.__call__ = original_collate
    wall = time.perf_counter() - t0
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    lengths = [n for t, n in collated if t <= stamps[-1]]  # training batches (evaluation comes after)
    median = statistics.median(times)
    return {"mode": name, "steps": len(stamps), "median_step_s": median, "steps_per_s": 1 / median,
            "mean_batch_length": statistics.mean(lengths) if lengths else None, "wall_s": round(wall, 1),
            "accuracy": summary.get("eval_accuracy")}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="runs/demo/teacher/final", help="stage 1's fine-tuned teacher")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per mode (default: one full epoch)")
    p.add_argument("--modes", default="fixed,dynamic,grouped")
    p.add_argument("--out", default="runs/bench_data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more run-file overrides")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not os.path.isdir(args.teacher):
        p.error(f"no teacher at {args.teacher}: run `python scripts/demo.py` first or pass --teacher")
    torch.set_num_threads(args.threads)
    rows = [run_mode(m, args.teacher, args.out, args.steps, args.set) for m in args.modes.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        base = rows[0]["median_step_s"]
        print(f"\n{'batching':<10}{'s/step':>8}{'steps/s':>9}{'speed-up':>10}{'avg length':>12}{'wall s':>8}"
              f"{'accuracy':>10}")
        for r in rows:
            length = f"{r['mean_batch_length']:.1f}" if r["mean_batch_length"] else "-"
            print(f"{r['mode']:<10}{r['median_step_s']:>8.3f}{r['steps_per_s']:>9.2f}{base / r['median_step_s']:>9.2f}x"
                  f"{length:>12}{r['wall_s']:>8.0f}{r['accuracy']:>10.2%}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""The demo: distill a fine-tuned MiniLM-L6 into a 3-layer student on Rotten Tomatoes, offline, on CPU.

    python scripts/demo.py [--output-dir runs/demo] [--quick]

Stage 1 fine-tunes the teacher (configs/demo_teacher.yaml), stage 2 distills it into a 3-layer student
initialised from teacher layers 0, 2, 4 (configs/demo_distill.yaml: soft + hard labels + hidden and attention
matches), stage 3 trains the same 3-layer student without a teacher, on the labels alone, from layers 0, 2, 4 of
the pretrained MiniLM-L6 (configs/demo_baseline.yaml). It prints a table and
writes OUTPUT_DIR/results.json. ``--quick`` runs a few steps on a small subset (for the tests).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
QUICK = ["data.max_train_examples=96", "data.max_eval_examples=64", "training.num_epochs=1",
         "training.logging_steps=1"]


def stage(name: str, overrides: list[str]) -> dict:
    from brewkit import run

    cfg = run.load_run(os.path.join(CONFIGS, f"demo_{name}.yaml"), overrides)
    t0 = time.perf_counter()
    summary = run.train_run(cfg)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a few steps on a small subset (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.output_dir
    extra = QUICK if args.quick else []
    teacher_dir = os.path.join(out, "teacher")
    t0 = time.perf_counter()
    teacher = stage("teacher", [f"output_dir={teacher_dir}", *extra])
    student = stage("distill", [f"output_dir={os.path.join(out, 'student')}",
                                f"teacher.path={os.path.join(teacher_dir, 'final')}", *extra])
    baseline = stage("baseline", [f"output_dir={os.path.join(out, 'baseline')}", *extra])
    results = {
        "teacher_accuracy": teacher["eval_accuracy"],
        "student_accuracy": student["eval_accuracy"],
        "baseline_accuracy": baseline["eval_accuracy"],
        "teacher_parameters": teacher["student_parameters"],
        "student_parameters": student["student_parameters"],
        "teacher_seconds": teacher["wall_seconds"],
        "student_seconds": student["wall_seconds"],
        "baseline_seconds": baseline["wall_seconds"],
        "total_seconds": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    rows = [("teacher (MiniLM-L6, fine-tuned)", results["teacher_parameters"], results["teacher_accuracy"],
             results["teacher_seconds"]),
            ("student, distilled (3 layers)", results["student_parameters"], results["student_accuracy"],
             results["student_seconds"]),
            ("student, no teacher (baseline)", results["student_parameters"], results["baseline_accuracy"],
             results["baseline_seconds"])]
    print(f"\n{'model':<34}{'parameters':>12}{'accuracy':>10}{'seconds':>9}")
    for name, params, acc, secs in rows:
        print(f"{name:<34}{params / 1e6:>11.1f}M{acc:>10.2%}{secs:>9.0f}")
    print(f"total {results['total_seconds']:.0f} s; results in {os.path.join(out, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)

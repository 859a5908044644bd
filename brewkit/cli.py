"""The ``brewkit`` command: ``train``, ``validate``, ``eval``, ``generate``, ``capture``, ``plot`` and ``presets``.

Every failure ends in one line on stderr and no traceback (unless ``--debug``): configuration and input mistakes
(``error: distillation.intermediate_matches[1].layer_S: ...``) with exit status 2; the environment (disk,
permissions, a checkpoint that cannot be read, an output directory in use) with 1. A run stopped by Ctrl-C
exits with 130 and by SIGTERM with 143, after writing a checkpoint, with the command that resumes it.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import BrewkitError, ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brewkit", description="Config-driven knowledge distillation for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    def run_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("run_file", help="the run's YAML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a value of the run file (YAML syntax), e.g. --set training.seed=3")
        c.add_argument("--debug", action="store_true", help="show the traceback of an error")
        return c

    run_cmd("train", "train as the run file says")
    run_cmd("validate", "check a run file, build the models, run one batch, print the plan")
    e = run_cmd("eval", "evaluate a checkpoint (or the final student) on the run's eval split")
    e.add_argument("--checkpoint", required=True, help="a checkpoint directory or a saved student")
    g = run_cmd("generate", "continue a prompt with a saved causal LM of the run (task: causal_lm)")
    g.add_argument("--checkpoint", required=True, help="a checkpoint directory or a saved student")
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--max-new-tokens", type=int, default=40, help="at most this many new tokens (default 40)")
    g.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    cap = run_cmd("capture", "run the teacher once over the training data and write a teacher store to train from")
    cap.add_argument("--out", default=None, help="the store's directory (default: teacher.capture.dir)")
    cap.add_argument("--k", type=int, default=None, help="top-k token ids kept per position (default 64)")
    cap.add_argument("--temperature", type=float, default=None,
                     help="capture temperature (default: distillation.temperature)")
    cap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                     help="stored log-probabilities / logits (default float16 for top-k, float32 for logits)")
    cap.add_argument("--selection", default=None, choices=["top_k", "sampled"],
                     help="keep the teacher's k most likely ids (top_k, the default) or k ids sampled from it "
                          "(sampled: an unbiased estimate for the ce / kl losses)")
    sub.add_parser("presets", help="list every registered loss, projection, scheduler, layer map and model builder")
    pl = sub.add_parser("plot", help="draw a run's loss terms, learning rate and evaluation against the step (PNG)")
    pl.add_argument("run_dir", help="the run's output_dir (it holds metrics.jsonl)")
    pl.add_argument("--out", default=None, help="the PNG to write (default: RUN_DIR/run.png)")
    pl.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--version", action="version", version=f"brewkit {__import__('brewkit').__version__}")
    return p


def print_presets() -> None:
    from .layer_maps import LAYER_MAPS
    from .models import MODEL_BUILDERS
    from .presets import FEATURES, registries
    from .tasks import TASKS

    others = (LAYER_MAPS, MODEL_BUILDERS, TASKS)
    for name, reg in {**registries(), **{r.name: r for r in others}}.items():
        print(f"{name}:")
        width = max((len(k) for k in reg), default=0)
        for key, desc in reg.describe():
            print(f"  {key:<{width}}  {desc}")
        print()
    print(f"FEATURES: {', '.join(FEATURES)}")


def _one_line(e: Exception, limit: int = 2000) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 40] + f" ...[{len(text) - limit + 40} characters cut]"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "presets":
            print_presets()
            return 0
        if args.command == "plot":
            from .plot import plot_run

            print(plot_run(args.run_dir, args.out))
            return 0
        from . import run, runfile
        from .distributed import close_process_group

        cfg = runfile.load_run(args.run_file, args.overrides)
        if args.command == "validate":
            print(run.validate_run(cfg))
        elif args.command == "train":
            summary = run.train_run(cfg)
            print(run.format_summary(summary))
            if summary.get("interrupted"):
                print(f"interrupted ({summary.get('signal')}) at step {summary['steps']}: checkpoint saved in "
                      f"{summary['checkpoint']}; {summary['resume']}", file=sys.stderr)
                close_process_group()  # every process stopped at the same step (the loop agreed on it)
                return 143 if summary.get("signal") == "SIGTERM" else 130
        elif args.command == "capture":
            summary = run.capture_run(cfg, args.out, args.k, args.temperature, args.dtype,
                                      selection=args.selection)
            print(run.format_summary(summary))
        elif args.command == "eval":
            print(run.format_summary(run.eval_run(cfg, args.checkpoint)))
        elif args.command == "generate":
            out = run.generate_run(cfg, args.checkpoint, args.prompt, args.max_new_tokens, args.sample,
                                   args.temperature, args.top_k, args.seed)
            print(f"{out['prompt']}{' ' if out['completion'] else ''}{out['completion']}")
        close_process_group()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- the command line reports every failure in one line
        if getattr(args, "debug", False):
            raise
        if isinstance(e, ConfigError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        if isinstance(e, (BrewkitError, OSError)):
            print(f"error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
            return 1
        print(f"error: {type(e).__name__}: {_one_line(e)} (an unexpected error: run again with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return 1

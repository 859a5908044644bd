"""The ``brewkit`` command: ``train``, ``validate``, ``eval`` and ``presets``.

Configuration mistakes are printed on one line (``error: distillation.intermediate_matches[1].layer_S: ...``)
with exit status 2 and no traceback.
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
        return c

    run_cmd("train", "train as the run file says")
    run_cmd("validate", "check a run file, build the models, run one batch, print the plan")
    e = run_cmd("eval", "evaluate a checkpoint (or the final student) on the run's eval split")
    e.add_argument("--checkpoint", required=True, help="a checkpoint directory or a saved student")
    sub.add_parser("presets", help="list every registered loss, projection, scheduler, layer map and model builder")
    p.add_argument("--version", action="version", version=f"brewkit {__import__('brewkit').__version__}")
    return p


def print_presets() -> None:
    from .layer_maps import LAYER_MAPS
    from .models import MODEL_BUILDERS
    from .presets import FEATURES, registries

    for name, reg in {**registries(), LAYER_MAPS.name: LAYER_MAPS, MODEL_BUILDERS.name: MODEL_BUILDERS}.items():
        print(f"{name}:")
        width = max((len(k) for k in reg), default=0)
        for key, desc in reg.describe():
            print(f"  {key:<{width}}  {desc}")
        print()
    print(f"FEATURES: {', '.join(FEATURES)}")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "presets":
            print_presets()
            return 0
        from . import run, runfile

        cfg = runfile.load_run(args.run_file, args.overrides)
        if args.command == "validate":
            print(run.validate_run(cfg))
        elif args.command == "train":
            summary = run.train_run(cfg)
            print(run.format_summary(summary))
            if summary.get("interrupted"):
                print(f"interrupted at step {summary['steps']}: checkpoint saved in {summary['checkpoint']}; "
                      f"{summary['resume']}", file=sys.stderr)
                return 130
        elif args.command == "eval":
            print(run.format_summary(run.eval_run(cfg, args.checkpoint)))
        return 0
    except ConfigError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrewkitError as e:
        print(f"error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

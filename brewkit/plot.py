"""``brewkit plot RUN_DIR [--out run.png]``: a picture of a run from its ``metrics.jsonl``.

Three panels against the optimizer step: the loss (the weighted total, bold, and each unweighted term), the
learning rate, and the evaluation metrics (``eval_*`` records). Epoch boundaries are dotted lines. matplotlib is
an optional extra (``pip install 'brewkit[plot]'``); without it :func:`plot_run` raises a :class:`PlotError`
saying so. The figure is drawn with matplotlib's object API (no pyplot state), so it works in any thread and
without a display.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from .errors import BrewkitError

METRICS_FILE = "metrics.jsonl"
DEFAULT_NAME = "run.png"
#: Record keys that are not curves of the loss panel.
NOT_LOSS = ("step", "epoch", "lr", "grad_norm", "samples_per_s", "skipped_steps")


class PlotError(BrewkitError):
    """The run cannot be drawn: matplotlib is missing, or the directory holds no metrics."""


def matplotlib_installed() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def read_records(run_dir: str) -> tuple[list[dict], list[dict]]:
    """``(training records, evaluation records)`` of ``run_dir/metrics.jsonl``, in file order. A training record
    has ``loss``; an evaluation record has ``eval_*`` keys. Lines that are not records (a torn last line) are
    skipped."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise PlotError(f"no {METRICS_FILE} in {run_dir}: not a brewkit run directory, or it has not logged a step")
    train, evals = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
                continue
            if "loss" in record:
                train.append(record)
            elif any(k.startswith("eval_") for k in record):
                evals.append(record)
    if not train and not evals:
        raise PlotError(f"{path} holds no training or evaluation records")
    return train, evals


def loss_keys(train: list[dict]) -> list[str]:
    """``loss`` first, then the loss terms (``unweighted_*``, ``*_loss``) in the order they first appear."""
    keys: list[str] = []
    for record in train:
        for k, v in record.items():
            if k in keys or k in NOT_LOSS or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k == "loss" or k.startswith("unweighted_") or k.endswith("_loss"):
                keys.append(k)
    return sorted(keys, key=lambda k: k != "loss")


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Draw ``run_dir``'s loss terms, learning rate and evaluation metrics against the step into ``out``
    (default ``run_dir/run.png``); returns the path written."""
    fig = figure(run_dir)
    out = out or os.path.join(run_dir, DEFAULT_NAME)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def figure(run_dir: str) -> Any:
    """The ``matplotlib.figure.Figure`` of :func:`plot_run`: axes 0 the loss curves (``loss`` first, then the
    terms, in :func:`loss_keys` order), 1 the learning rate, 2 the ``eval_*`` curves (sorted by name)."""
    if not matplotlib_installed():
        raise PlotError("brewkit plot needs matplotlib: pip install 'brewkit[plot]' (or pip install matplotlib)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    train, evals = read_records(run_dir)
    fig = Figure(figsize=(10, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_eval = fig.subplots(3, 1, sharex=True, height_ratios=[2.2, 1, 1.4])
    name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    final = evals[-1] if evals else {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if k != "step" and isinstance(v, float))
    fig.suptitle(f"{name}: {len(train) and int(train[-1]['step'])} steps" + (f"; final {shown}" if shown else ""))

    keys = loss_keys(train)
    positive = True
    for k in keys:
        x, y = series(train, k)
        positive = positive and all(v > 0 for v in y)
        label = "loss (weighted total)" if k == "loss" else k.removeprefix("unweighted_")
        ax_loss.plot(x, y, label=label, linewidth=2.2 if k == "loss" else 1.1, color="black" if k == "loss" else None)
    if keys and positive:
        ax_loss.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax_loss.yaxis.set_major_formatter(plain)
        ax_loss.yaxis.set_minor_formatter(plain)
        ax_loss.tick_params(axis="y", which="minor", labelsize=7)
    ax_loss.set_ylabel("loss" + (" (log scale)" if keys and positive else ""))
    if keys:
        ax_loss.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax_loss.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax_loss.transAxes)

    x, y = series(train, "lr")
    ax_lr.plot(x, y, color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    eval_keys = sorted({k for r in evals for k in r if k.startswith("eval_")})
    for k in eval_keys:
        x, y = series(evals, k)
        ax_eval.plot(x, y, marker="o", markersize=4, label=k)
        if y:
            ax_eval.annotate(f"{y[-1]:.4f}", (x[-1], y[-1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_eval.set_ylabel("evaluation")
    if eval_keys:
        ax_eval.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax_eval.text(0.5, 0.5, "no evaluation records", ha="center", va="center", transform=ax_eval.transAxes)
    ax_eval.set_xlabel("optimizer step")
    ax_eval.xaxis.set_major_locator(MaxNLocator(integer=True))

    boundaries = [(a["step"] + b["step"]) / 2 for a, b in zip(train, train[1:]) if b.get("epoch") != a.get("epoch")]
    for ax in (ax_loss, ax_lr, ax_eval):
        ax.grid(True, alpha=0.3)
        for step in boundaries:
            ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
    return fig

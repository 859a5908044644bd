"""``StepLogger``: where training metrics go, and ``MetricsWriter``: the metrics file and TensorBoard.

Per micro-batch the logger only adds detached tensors (no device sync). On a logging step it averages them over
the micro-batches since the last record (and over the processes under DDP: every rank takes part, rank 0
writes), adds the learning rate, the loss weights, the gradient norm and the throughput, and writes one record
to ``output_dir/metrics.jsonl``, to TensorBoard when ``log_dir`` is set, to the progress bar and to the console.
Evaluation records (:meth:`StepLogger.log_eval`) go the same way. The logger keeps every record since the run's
first step in :attr:`StepLogger.history` (a resumed run reads the earlier ones back from the metrics file), which
``trainer_state.json`` carries as transformers' ``log_history``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

from ..logging_utils import logger


class MetricsWriter:
    """Appends one JSON object per record to ``output_dir/metrics.jsonl``; mirrors scalars to TensorBoard if
    ``log_dir`` is set (``scalar/<name>`` tags, as TextBrewer: ``scalar/loss``, ``scalar/lr``,
    ``scalar/grad_norm``, ``scalar/samples_per_s``, ``scalar/unweighted_kd_loss``, ``scalar/eval_accuracy``, ...,
    at the record's ``step``). The TensorBoard writer opens on the first record."""

    def __init__(self, output_dir: str | None, log_dir: str | None, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl") if (output_dir and enabled) else None
        self.log_dir = log_dir
        self.tb = None
        self.summary_writer: Any = None
        self.purge_step: int | None = None
        if enabled and log_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.summary_writer = SummaryWriter
            except ImportError:
                logger.warning("log_dir is set but tensorboard is not installed; metrics go to metrics.jsonl only")

    def drop_after(self, step: int) -> None:
        """Remove the records past ``step`` (a killed run wrote them; they are redone), so that each step
        appears once. The file is replaced atomically; TensorBoard is told to purge its events past ``step``."""
        self.purge_step = step + 1
        if not (self.path and os.path.exists(self.path)):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [line for line in lines if step_of(line) <= step]
        if len(kept) == len(lines):
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def records(self) -> list[dict]:
        """The records in the metrics file (lines that are not records are left out)."""
        if not (self.path and os.path.exists(self.path)):
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                    out.append(record)
        return out

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is None and self.summary_writer is not None:
            self.tb = self.summary_writer(self.log_dir, purge_step=self.purge_step)
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"scalar/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def step_of(line: str) -> float:
    """The ``step`` of a metrics line; lines that are not records (torn, or without a step) are kept."""
    try:
        record = json.loads(line)
    except ValueError:
        return float("-inf") if line.endswith("\n") else float("inf")  # a torn last line (killed mid-write) goes
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, (int, float)) else float("-inf")


class StepLogger:
    """Averages, writes and keeps the records of a run (see the module docstring).

    ``history``: every record written since the run's first step, training and evaluation ones in the order they
    were written (for a resumed run, the metrics file's records up to ``start_step`` first). On ranks other than
    0, which write no file, it holds the records of this ``train()`` call.
    """

    def __init__(self, writer: MetricsWriter, *, total_steps: int, start_step: int, is_main: bool,
                 mean_over_ranks: Any = None, world_size: int = 1, progress_bar: bool | None = None,
                 desc: str = "distilling"):
        self.writer, self.total_steps = writer, total_steps
        self.mean_over_ranks, self.world_size = mean_over_ranks, world_size
        self.history: list[dict] = [r for r in writer.records() if r["step"] <= start_step] if start_step else []
        self.sums: dict[str, torch.Tensor] = {}
        self.micro, self.samples, self.skipped = 0, 0, 0
        self.t_last = time.perf_counter()
        show = progress_bar if progress_bar is not None else sys.stderr.isatty()
        self.progress = None
        if show and is_main:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], samples: int) -> None:
        """One micro-batch's loss and unweighted terms (detached; no device sync)."""
        for k, v in {"loss": loss, **terms}.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.samples += samples
        self.micro += 1

    def step_done(self, skipped: bool) -> None:
        self.skipped += skipped
        if self.progress is not None:
            self.progress.update(1)

    def log_step(self, step: int, epoch: int, lr: float, weights: dict[str, float], grad_norm: Any) -> dict:
        """Write the record of logging step ``step``; the only host sync of the loop happens here."""
        elapsed = max(time.perf_counter() - self.t_last, 1e-9)
        sums, samples = self.sums, self.samples
        if self.world_size > 1:
            sums = self.mean_over_ranks(sums)
            samples *= self.world_size
        record: dict[str, Any] = {"step": step, "epoch": epoch}
        for k, v in sums.items():
            record[k] = float(v) / max(self.micro, 1)
        record["lr"] = float(lr)
        record.update({k: float(w) for k, w in weights.items()})
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        record["samples_per_s"] = samples / elapsed
        if self.skipped:
            record["skipped_steps"] = self.skipped
        self.writer.write(record)
        self.history.append(record)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{record['loss']:.4f}")
        logger.info("step %d/%d %s", step, self.total_steps,
                    " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "epoch"))
        self.sums, self.micro, self.samples, self.t_last = {}, 0, 0, time.perf_counter()
        return record

    def log_eval(self, step: int, metrics: dict[str, Any]) -> dict:
        """An evaluation record: ``{"step": step, **metrics}``, through the same writer (file and TensorBoard)."""
        record = {"step": step, **metrics}
        self.writer.write(record)
        self.history.append(record)
        logger.info("eval at step %d: %s", step, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in metrics.items()))
        return record

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.writer.close()

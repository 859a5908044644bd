"""Where training metrics go: JSON lines in ``output_dir/metrics.jsonl``, TensorBoard when installed, the
``brewkit`` logger on the console."""
from __future__ import annotations

import json
import logging
import os
import sys

logger = logging.getLogger("brewkit")


def ensure_default_handler() -> None:
    """Attach a console handler to the ``brewkit`` logger unless the application configured logging."""
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class MetricsWriter:
    """Appends one JSON object per logging step; mirrors scalars to TensorBoard if ``log_dir`` is set."""

    def __init__(self, output_dir: str | None, log_dir: str | None, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl") if (output_dir and enabled) else None
        self.tb = None
        if enabled and log_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir)
            except ImportError:
                logger.warning("log_dir is set but tensorboard is not installed; metrics go to metrics.jsonl only")

    def drop_after(self, step: int) -> None:
        """On resume from step ``step``: remove the records a killed run wrote past it (they are redone), so
        that each step appears once. The file is replaced atomically."""
        if not (self.path and os.path.exists(self.path)):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) == len(lines):
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"scalar/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _step_of(line: str) -> float:
    """The ``step`` of a metrics line; lines that are not records (torn, or without a step) are kept."""
    try:
        record = json.loads(line)
    except ValueError:
        return float("-inf") if line.endswith("\n") else float("inf")  # a torn last line (killed mid-write) goes
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, (int, float)) else float("-inf")

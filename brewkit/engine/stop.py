"""``StopSignal``: stopping a run cleanly, from Ctrl-C, SIGTERM or :meth:`request_stop`.

The first SIGINT (Ctrl-C) or SIGTERM (what ``docker stop``, systemd, Slurm and Kubernetes send) asks the loop to
finish the current optimizer step, write a checkpoint (then run that step's evaluation if one is due) and
return; a second SIGINT stops at once. Under DDP every rank must stop at the same step, so the loop agrees on the
flag collectively after each step (:meth:`agreed`): one tiny all-reduce over a CPU (gloo) group, which never
waits for the accelerator.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from ..logging_utils import logger

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    def __init__(self) -> None:
        self.requested = False
        self.reason: str | None = None
        self.control_group = None  # a gloo process group for the flag under DDP (set by the loop)

    def request(self, reason: str = "request_stop()") -> None:
        if not self.requested:
            self.requested, self.reason = True, reason

    def agreed(self, world_size: int) -> bool:
        """Whether any process asked to stop (every process gets the same answer)."""
        if world_size == 1:
            return self.requested
        import torch.distributed as dist

        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control_group)
        if flag.item() and not self.requested:
            self.request("another process")
        return bool(flag.item())

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only); restore the old handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.request(name)
            logger.warning("%s: saving a checkpoint after this step%s", name,
                           " (press Ctrl-C again to abort)" if signum == signal.SIGINT else "")

        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.requested, self.reason = False, None

"""``OptimizerStepper``: what happens between the losses of a step and the next step's first forward pass.

Backward through ``GradScaler(enabled=fp16)`` (a no-op scaler when fp16 is off, so there is one code path),
unscale, clip to ``max_grad_norm`` (the parameters given: the student's, and the projections' with
``clip_projections``), the non-finite checks,
``optimizer.step()``, the LR scheduler and ``zero_grad``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import NonFiniteLossError


class OptimizerStepper:
    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any, params: Sequence[torch.nn.Parameter], *,
                 max_grad_norm: float, fp16: bool, skip_nonfinite: bool):
        self.optimizer, self.scheduler, self.params = optimizer, scheduler, list(params)
        self.max_grad_norm, self.skip_nonfinite = max_grad_norm, skip_nonfinite
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, step: int, loss_finite: torch.Tensor, check: bool, want_norm: bool) -> tuple[Any, bool]:
        """Finish optimizer step ``step`` (1-based). Returns ``(gradient norm or None, skipped)``.

        ``check``: raise :class:`NonFiniteLossError` on a non-finite gradient norm (a device sync, done on the
        plan's check steps). With ``skip_nonfinite`` a step whose loss or gradient is not finite is skipped
        instead (that decision syncs every step). Under fp16 the scaler skips such steps itself."""
        fp16 = self.scaler.is_enabled()
        self.scaler.unscale_(self.optimizer)
        norm = None
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        elif want_norm or self.skip_nonfinite:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if norm is not None and hasattr(norm, "full_tensor"):  # sharded gradients (FSDP): the whole model's norm
            norm = norm.full_tensor()
        skipped = False
        if self.skip_nonfinite and not fp16:
            ok = torch.isfinite(norm) if norm is not None else torch.ones((), dtype=torch.bool)
            skipped = not bool(ok.to(loss_finite.device) & loss_finite)
        elif check and norm is not None and not fp16 and not torch.isfinite(norm):
            raise NonFiniteLossError(f"non-finite gradient norm at step {step}; the last checkpoint is intact "
                                     "(set skip_nonfinite_steps=True to skip such steps)")
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, skipped

"""Sharded training with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) and sharded checkpoints with
``torch.distributed.checkpoint`` (DCP), for ``TrainingConfig.parallel='fsdp'``.

What is sharded, with ``W`` processes:

* **the student**: each block of its layer stack (the ``nn.ModuleList`` that ``init_from_teacher`` copies, found by
  :func:`brewkit.layer_surgery.find_layer_stack`; a model without one is sharded whole), then the rest of it
  (embeddings, head) as one unit. Parameters, gradients and optimizer state are ``1/W`` per process.
* **the projections** of intermediate matches: each its own unit (so clipping sees one kind of parameter).
* **the teachers**: frozen, sharded the same way with ``fsdp_teachers='shard'`` (the default: each process holds
  ``1/W`` of every teacher and gathers a block's weights just for its forward), or kept whole on every process
  with ``'replicate'`` (no gathers: faster for a small teacher).

Gradients are reduce-scattered as means over the processes (DDP's semantics, so the effective-batch
normalisation is the same), once per optimizer step: the micro-batches before the last one of a step skip the
reduction (``set_requires_gradient_sync(False)``), and the gradients accumulate unsharded until then.
``bf16`` gives the mixed-precision policy parameters-in-bfloat16 / reductions-in-float32; ``fp16`` is refused
(its gradient scaler does not support sharded gradients here). Clipping works on the sharded gradients: the norm
is the norm of the whole model.

The optimizer may be built before sharding (as in every brewkit run and TextBrewer script): sharding replaces the
parameters, and :func:`shard_trainables` points the optimizer's groups at the new ones (by name).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .distributed import Trainables
from .errors import ConfigError
from .layer_surgery import find_layer_stack

DCP_DIR = "sharded"  # inside a checkpoint: the DCP files of the student, projections and optimizer


def shard_module(model: nn.Module, mp_policy: Any) -> None:
    """``fully_shard`` each block of ``model``'s layer stack, then ``model`` itself."""
    from torch.distributed.fsdp import fully_shard

    try:
        _, blocks = find_layer_stack(model, "training.parallel")
    except ConfigError:
        blocks = []
    for block in blocks:
        fully_shard(block, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy)


def mixed_precision(amp_dtype: torch.dtype | None) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if amp_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)


def shard_trainables(student: nn.Module, projections: list[nn.Module], optimizer: torch.optim.Optimizer,
                     amp_dtype: torch.dtype | None) -> Trainables:
    """Shard the student and the projections in place and re-point ``optimizer`` at the sharded parameters.
    Returns the two as one :class:`~brewkit.distributed.Trainables` module (what checkpoints hold)."""
    trainables = Trainables(student, projections)
    names = {id(p): n for n, p in trainables.named_parameters()}
    policy = mixed_precision(amp_dtype)
    shard_module(student, policy)
    from torch.distributed.fsdp import fully_shard

    for proj in projections:
        fully_shard(proj, mp_policy=policy)
    sharded = dict(trainables.named_parameters())
    for group in optimizer.param_groups:
        try:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
        except KeyError:
            raise ConfigError("the optimizer holds a parameter that is neither the student's nor a projection's; "
                              "under training.parallel='fsdp' optimise only those", "optimizer") from None
    return trainables


def shard_teachers(teachers: Iterable[nn.Module], amp_dtype: torch.dtype | None) -> None:
    for teacher in teachers:
        shard_module(teacher, mixed_precision(amp_dtype))


def set_gradient_sync(modules: Iterable[nn.Module], enabled: bool) -> None:
    """Reduce gradients on this backward (the last micro-batch of a step) or keep accumulating them."""
    for m in modules:
        if hasattr(m, "set_requires_gradient_sync"):
            m.set_requires_gradient_sync(enabled)


def full_tensor(x: Any) -> Any:
    """A DTensor as a plain (replicated) tensor; anything else as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


# -- checkpoints --------------------------------------------------------------------------------------------
def save_sharded(directory: str, trainables: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the trainables and the optimizer state to ``directory/sharded``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(trainables, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=os.path.join(directory, DCP_DIR))


def load_sharded(directory: str, trainables: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load ``directory/sharded`` into the trainables and the optimizer, resharding to this run's world size
    (also 1: a single process loads a sharded checkpoint into whole modules)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(trainables, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(directory, DCP_DIR))
    set_state_dict(trainables, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def is_sharded_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, DCP_DIR, ".metadata"))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of a sharded ``model`` on the CPU of rank 0 (empty elsewhere); a
    collective: every process calls it. Keys the model ties to one parameter (tied input / output embeddings)
    share one tensor, as in ``model.state_dict()``: the gather copies each key apart, and ``save_pretrained``
    would then write the tied copy too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(value), name)
        if owner != name and owner in state and name in state:
            state[name] = state[owner]
    return state


def unshard_architectures(directory: str) -> None:
    """``save_pretrained`` of a sharded model records its class as ``FSDP<Name>``; write ``<Name>`` back into
    ``directory/config.json`` so the saved model names the class it loads as."""
    import json

    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    names = config.get("architectures") or []
    config["architectures"] = [n[len("FSDP"):] if n.startswith("FSDP") else n for n in names]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)

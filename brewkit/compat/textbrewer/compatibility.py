"""``textbrewer.compatibility``: the mask dtype and whether NVIDIA apex is installed.

brewkit's mixed precision is native ``torch.amp``; ``is_apex_available`` only answers the question for scripts
that ask it.
"""
from __future__ import annotations

import importlib.util

import torch

__all__ = ["is_apex_available", "mask_dtype"]

#: The dtype TextBrewer converted masks to before ``masked_select`` (uint8 on torch < 1.2, which brewkit does
#: not support).
mask_dtype = torch.bool


def is_apex_available() -> bool:
    """Whether the ``apex`` package can be imported (brewkit never uses it: ``fp16`` is native AMP)."""
    return importlib.util.find_spec("apex") is not None

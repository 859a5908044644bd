"""``textbrewer.projections``: projection factories (brewkit's, :mod:`brewkit.projections`) and ``act_dict``.

``projection_with_activation`` also accepts an ``nn.Module`` class or instance in brewkit (TextBrewer took a
name only), and gives every projection its own activation module.
"""
from __future__ import annotations

from torch.nn.modules import activation

from ...projections import linear_projection, projection_with_activation

__all__ = ["act_dict", "linear_projection", "projection_with_activation"]

#: Every public name of ``torch.nn.modules.activation`` (the activation classes), as in TextBrewer.
act_dict = {name: getattr(activation, name) for name in activation.__all__}

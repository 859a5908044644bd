"""Every loss as a plain function (``torch.nn.functional`` style). Shapes and formulas are in the docstrings.

TextBrewer's losses keep TextBrewer's names and numbers; the new ones are documented as such. The divergence
family for logit KD (:mod:`.divergences`) has a plain, a chunked and a fused-linear form of every entry
(:mod:`.vocab`); :func:`~brewkit.losses.divergences.kd_loss_implementation` picks one.
"""
from . import easytransfer  # noqa: F401
from .divergences import (  # noqa: F401
    kd_jsd_loss,
    kd_loss_implementation,
    kd_reverse_kl_loss,
    kd_skew_kl_loss,
    kd_skew_reverse_kl_loss,
    kd_tvd_loss,
)
from .kd import kd_bce_loss, kd_ce_loss, kd_kl_loss, kd_mse_loss  # noqa: F401
from .match import (  # noqa: F401
    att_ce_loss,
    att_ce_mean_loss,
    att_mse_loss,
    att_mse_sum_loss,
    att_probs_ce_loss,
    att_probs_kl_loss,
    att_probs_mse_loss,
    cos_loss,
    fsp_loss,
    hid_mse_loss,
    mmd_loss,
    pkd_loss,
)
from .ranking import (  # noqa: F401
    coupled_rank_distil_expected,
    coupled_rank_distil_kd_loss,
    coupled_rank_distil_loss,
)
from .sampled_softmax import rank_sampled_softmax_loss  # noqa: F401
from .vocab import (  # noqa: F401
    chunked_kd_ce_loss,
    chunked_kd_kl_loss,
    chunked_kd_loss,
    fused_linear_kd_loss,
)

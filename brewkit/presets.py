"""The preset registries: every name a config can refer to.

=====================  ==============================================================================
``KD_LOSS_MAP``        ``f(logits_S, logits_T, temperature, mask=None, **kd_loss_args) -> scalar``
``MATCH_LOSS_MAP``     ``f(feature_S, feature_T, mask=None) -> scalar`` (two-layer losses take lists)
``PROJ_MAP``           ``factory(dim_in, dim_out) -> nn.Module``
``WEIGHT_SCHEDULER``   ``f(progress) -> weight``, progress = global_step / total_steps in (0, 1]
``TEMPERATURE_SCHEDULER``  ``f(logits_S, logits_T, base_temperature) -> number | per-row tensor``
=====================  ==============================================================================

Add your own with ``MAP["name"] = fn``, ``@MAP.register("name")`` or ``register_new(map_name, name, fn)``.
"""
from __future__ import annotations

from collections.abc import Callable

from . import losses, projections, schedulers
from .errors import ConfigError
from .losses import divergences
from .registry import Registry, SchedulerRegistry

KD_LOSS_MAP = Registry("KD_LOSS_MAP", "kd loss")
MATCH_LOSS_MAP = Registry("MATCH_LOSS_MAP", "match loss")
PROJ_MAP = Registry("PROJ_MAP", "projection")
WEIGHT_SCHEDULER = Registry("WEIGHT_SCHEDULER", "weight scheduler")
TEMPERATURE_SCHEDULER = SchedulerRegistry("TEMPERATURE_SCHEDULER", "temperature scheduler")

#: Feature names an intermediate match may use. Append a name to match a custom adaptor key.
FEATURES: list[str] = ["hidden", "attention"]
#: The keys an adaptor may return (plus any name in FEATURES).
ADAPTOR_KEYS: list[str] = ["logits", "logits_mask", "losses", "inputs_mask", "labels", "hidden", "attention"]

# -- KD losses ------------------------------------------------------------------------------------------
# Metadata: ``params`` (what ``kd_loss_args`` may set, with defaults and ranges; {} = nothing) and, for the
# softmax divergences, ``kind``: the divergence the chunked and fused forms compute
# (``brewkit.losses.divergences.kd_loss_implementation``).
def _kd(name: str, fn: Callable, description: str, kind: str | None = None, params: dict | None = None) -> None:
    params = dict(divergences.DIVERGENCE_PARAMS[kind]) if params is None and kind else (params or {})
    forms = "plain | chunked | fused" if kind else "plain"
    args = divergences.describe_params(params)
    text = f"{description} [{forms}]" + (f"; kd_loss_args: {args}" if args else "")
    KD_LOSS_MAP.register(name, description=text, kind=kind, params=params)(fn)


_kd("ce", losses.kd_ce_loss, "soft cross-entropy -sum p_T log p_S at temperature tau (TextBrewer)", "ce")
_kd("mse", losses.kd_mse_loss, "mean squared error of logits / tau (TextBrewer)")
_kd("kl", losses.kd_kl_loss, "forward KL(p_T || p_S) at temperature tau, mean over rows (new)", "kl")
_kd("bce", losses.kd_bce_loss, "multi-label KD: BCE against sigmoid(z_T / tau) (new)")
_kd("reverse_kl", losses.kd_reverse_kl_loss, "reverse KL(p_S || p_T), mode-seeking (new)", "reverse_kl")
_kd("jsd", losses.kd_jsd_loss, "generalized JSD (GKD Eq. 1): beta 0 forward KL, 1 reverse KL, as TRL (new)", "jsd")
_kd("skew_kl", losses.kd_skew_kl_loss, "skew KL(p_T || alpha p_T + (1-alpha) p_S) (DistiLLM) (new)", "skew_kl")
_kd("skew_reverse_kl", losses.kd_skew_reverse_kl_loss,
    "skew reverse KL(p_S || alpha p_S + (1-alpha) p_T) (DistiLLM) (new)", "skew_reverse_kl")
_kd("tvd", losses.kd_tvd_loss, "total variation 1/2 sum |p_T - p_S| (new)", "tvd")
_kd("chunked_ce", losses.chunked_kd_ce_loss, "'ce' computed in row chunks: no full (N, C) float32 copies (new)", "ce")
_kd("chunked_kl", losses.chunked_kd_kl_loss, "'kl' computed in row chunks: no full (N, C) float32 copies (new)", "kl")
_kd("coupled_rank_distil", losses.coupled_rank_distil_kd_loss,
    "list-wise KD: top-k Plackett-Luce NLL of teacher-sampled rankings (RankDistil)",
    params={"sample_size": divergences.LossParam(8, low=1, integer=True, doc="rankings drawn per list"),
            "topk": divergences.LossParam(None, low=1, integer=True, allow_none=True,
                                          doc="positions of each ranking the student pays for (null: all)")})
del _kd

# -- match losses ---------------------------------------------------------------------------------------
# denominator = (with a mask, without): what each loss's mean divides by, so that the engine can normalise a term
# over the whole effective batch (micro-batches x processes) instead of per micro-batch.
_M = MATCH_LOSS_MAP.register
_M("attention_mse_sum", denominator=("token_pairs", "position_pairs"), input="scores", probs_ok=True, same_shape=True,
   description="MSE of head-summed attention scores (TextBrewer)")(losses.att_mse_sum_loss)
_M("attention_mse", denominator=("token_pairs", "position_pairs"), input="scores", probs_ok=True, same_shape=True,
   description="MSE of attention scores, masked over query and key (TextBrewer)")(losses.att_mse_loss)
_M("attention_ce_mean", denominator=("tokens", "positions"), input="scores", same_shape=True,
   description="CE of softmaxed head-mean attention scores (TextBrewer)")(losses.att_ce_mean_loss)
_M("attention_ce", denominator=("tokens", "positions"), input="scores", same_shape=True,
   description="CE between softmaxed attention scores (TextBrewer)")(losses.att_ce_loss)
_M("attention_probs_mse", denominator=("token_pairs", "position_pairs"), input="probs", same_shape=True,
   description="MSE of attention probabilities, NaN-free with -inf masks (new)")(losses.att_probs_mse_loss)
_M("attention_probs_ce", denominator=("tokens", "positions"), input="probs", same_shape=True,
   description="CE -sum P_T log P_S of attention probabilities (new)")(losses.att_probs_ce_loss)
_M("attention_probs_kl", denominator=("tokens", "positions"), input="probs", same_shape=True,
   description="KL(P_T || P_S) of attention probabilities, MiniLM-style (new)")(losses.att_probs_kl_loss)
_M("hidden_mse", denominator=("tokens", "positions"), same_shape=True,
   description="MSE of hidden states, masked over tokens (TextBrewer)")(losses.hid_mse_loss)
_M("cos", denominator=("tokens", "positions"), same_shape=True,
   description="1 - cosine similarity per token, DistilBERT-style (TextBrewer)")(losses.cos_loss)
_M("pkd", denominator=("rows", "rows"), same_shape=True,
   description="MSE of L2-normalised [CLS] vectors, BERT-PKD-style (TextBrewer)")(losses.pkd_loss)
_M("fsp", denominator=("rows", "rows"), two_layer=True, same_shape=True,
   description="MSE of FSP / Gram matrices X0^T X1 / L of two layers (TextBrewer)")(losses.fsp_loss)
_M("gram", denominator=("rows", "rows"), two_layer=True, same_shape=True,
   description="alias of fsp (TextBrewer)")(losses.fsp_loss)
_M("nst", denominator=("token_pairs", "position_pairs"), two_layer=True,
   description="alias of mmd (TextBrewer)")(losses.mmd_loss)
_M("mmd", denominator=("token_pairs", "position_pairs"), two_layer=True,
   description="MSE of token similarity matrices X0 X1^T / D of two layers (TextBrewer)")(losses.mmd_loss)
del _M

# -- projections ----------------------------------------------------------------------------------------
PROJ_MAP.register("linear", description="Linear(dim_S, dim_T), N(0, 0.02^2) init")(projections.linear_projection)
PROJ_MAP.register("relu", description="Linear then ReLU")(projections.projection_with_activation("ReLU"))
PROJ_MAP.register("tanh", description="Linear then Tanh")(projections.projection_with_activation("Tanh"))

# -- weight schedulers ----------------------------------------------------------------------------------
WEIGHT_SCHEDULER.register("linear_decay", scales_base=False)(schedulers.linear_decay_weight_scheduler)
WEIGHT_SCHEDULER.register("linear_growth", scales_base=False)(schedulers.linear_growth_weight_scheduler)
WEIGHT_SCHEDULER.register("scaled_linear_decay", scales_base=True,
                          description="base weight * (1 - x) (new)")(schedulers.linear_decay_weight_scheduler)
WEIGHT_SCHEDULER.register("scaled_linear_growth", scales_base=True,
                          description="base weight * x (new)")(schedulers.linear_growth_weight_scheduler)
WEIGHT_SCHEDULER.register("cosine_decay", scales_base=True)(schedulers.cosine_decay_weight_scheduler)

# -- temperature schedulers -----------------------------------------------------------------------------
TEMPERATURE_SCHEDULER.register("constant")(schedulers.constant_temperature_scheduler)
TEMPERATURE_SCHEDULER.register("flsw", builder=True,
                               description="['flsw', beta, gamma]: lower tau where S and T logits disagree")(
    schedulers.flsw_temperature_scheduler_builder)
TEMPERATURE_SCHEDULER.register("cwsm", builder=True,
                               description="['cwsm', beta]: lower tau where the student is unsure")(
    schedulers.cwsm_temperature_scheduler_builder)

#: register_new's map names (TextBrewer's capitalised 'match_Loss' kept as an alias).
MAPS: dict[str, Registry] = {
    "kd_loss": KD_LOSS_MAP,
    "match_loss": MATCH_LOSS_MAP,
    "match_Loss": MATCH_LOSS_MAP,
    "projection": PROJ_MAP,
    "weight_scheduler": WEIGHT_SCHEDULER,
    "temperature_scheduler": TEMPERATURE_SCHEDULER,
}


def register_new(map_name: str, name: str, func: Callable, *, overwrite: bool = False, **meta) -> None:
    """Add ``func`` as ``name`` to the registry called ``map_name`` (see ``MAPS`` for the map names)."""
    if map_name not in MAPS:
        raise ConfigError(f"unknown map {map_name!r}; known: {', '.join(repr(m) for m in MAPS)}", "register_new")
    MAPS[map_name].register(name, overwrite=overwrite, **meta)(func)


def registries() -> dict[str, Registry]:
    """Every registry by its public name, for ``brewkit presets``."""
    return {r.name: r for r in (KD_LOSS_MAP, MATCH_LOSS_MAP, PROJ_MAP, WEIGHT_SCHEDULER, TEMPERATURE_SCHEDULER)}

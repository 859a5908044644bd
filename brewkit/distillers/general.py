"""``GeneralDistiller``: BasicDistiller plus intermediate-feature matches and their projections."""
from __future__ import annotations

from typing import Any

import torch

from ..adaptors import AttentionProbs
from ..configs import DistillationConfig, IntermediateMatch, TrainingConfig
from ..engine.micro_batch import MicroBatch, scale_of
from ..errors import AdaptorError, ConfigError
from ..logging_utils import logger
from ..presets import MATCH_LOSS_MAP, PROJ_MAP
from .basic import BasicDistiller


class GeneralDistiller(BasicDistiller):
    """The recommended distiller. Objective::

        w_kd * sum_k KD(z_S_k, z_T_k; tau) + sum_m w_m * Match_m(proj_m(f_S_m), f_T_m; inputs_mask_S)
        + w_hl * sum_j mean(losses_j)

    The KD term is computed when both adaptors return ``logits``. Each match with ``proj`` gets its own
    projection (student width -> teacher width), trained with the student: added to the optimizer as a
    param group with the match's options, clipped with the student, and saved in checkpoints.
    """

    uses_matches = True

    def __init__(self, train_config: TrainingConfig, distill_config: DistillationConfig, model_T, model_S,
                 adaptor_T: Any = None, adaptor_S: Any = None, custom_matches: list | None = None):
        if custom_matches:
            raise ConfigError("custom_matches was never functional in TextBrewer and is not supported; return "
                              "the tensor from an adaptor under a name appended to FEATURES", "custom_matches")
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        self.matches: list[IntermediateMatch] = list(distill_config.intermediate_matches or [])
        self.match_fns = [distill_config.match_loss_fn(m.loss) for m in self.matches]
        # (with a mask, without): what each loss's mean divides by, for effective-batch normalisation
        self.match_denominators = [match_denominator(m.loss) for m in self.matches]
        for m in self.matches:
            if m.proj:
                self.projs.append(PROJ_MAP[m.proj[0]](m.proj[1], m.proj[2]).to(self.device))
                self.projs_group.append(dict(m.proj[3]))
            else:
                self.projs.append(None)
                self.projs_group.append({})

    def needed_features(self) -> set[str]:
        return super().needed_features() | {m.feature for m in self.matches}

    def store_fingerprint_parts(self) -> dict:
        return {**super().store_fingerprint_parts(), "matches": [[m.feature, m.layer_T] for m in self.matches]}

    def slim_teacher(self, results_T: dict) -> dict:
        slim = super().slim_teacher(results_T)
        for feature in sorted(self.needed_features()):
            layers = set()
            for m in self.matches:
                if m.feature == feature:
                    layers.update(m.layer_T if isinstance(m.layer_T, list) else [m.layer_T])
            full = results_T.get(feature) or []
            kept = [t if i in layers else None for i, t in enumerate(full)]
            slim[feature] = AttentionProbs(kept) if isinstance(full, AttentionProbs) else kept
        return slim

    def compute_loss(self, results_S: dict, results_T: dict, micro: MicroBatch | None = None):
        total, terms = 0.0, {}
        has_S, has_T = bool(results_S.get("logits")), bool(results_T.get("logits"))
        if has_S != has_T and self.weights["kd_loss_weight"] != 0:
            who = "adaptor_T" if has_S else "adaptor_S"
            raise AdaptorError(f"{who} returned no 'logits', so the KD term cannot be computed; return logits "
                               "from both adaptors or set kd_loss_weight=0")
        total, terms = self.logits_terms(results_S, results_T, micro)
        if self.matches:
            match_total, match_terms = self.match_terms(results_S, results_T, micro)
            total, terms = total + match_total, {**terms, **match_terms}
        if not isinstance(total, torch.Tensor):
            raise AdaptorError("the adaptors returned nothing to train on: no logits pair, no matches and no "
                               "'losses' (check the adaptor keys)")
        return total, terms

    def match_terms(self, results_S: dict, results_T: dict, micro: MicroBatch | None = None
                    ) -> tuple[torch.Tensor, dict]:
        total, terms = 0.0, {}
        mask = results_S.get("inputs_mask")
        for i, (m, fn, proj, denominator) in enumerate(zip(self.matches, self.match_fns, self.projs,
                                                           self.match_denominators)):
            if not self._validated:
                self._check_match(i, m, results_S, results_T)
            feats_S, feats_T = results_S[m.feature], results_T[m.feature]
            if isinstance(m.layer_S, list):
                f_S = [feats_S[j] for j in m.layer_S]
                f_T = [feats_T[j] for j in m.layer_T]
                if proj is not None:
                    f_S = [proj(x) for x in f_S]
            else:
                f_S, f_T = feats_S[m.layer_S], feats_T[m.layer_T]
                if proj is not None:
                    f_S = proj(f_S)
            loss = fn(f_S, f_T, mask=mask)
            total = total + m.weight * loss * scale_of(micro, denominator[0 if mask is not None else 1])
            terms[f"unweighted_{m.name}"] = loss
        return total, terms

    def _check_match(self, i: int, m: IntermediateMatch, results_S: dict, results_T: dict) -> None:
        """First-batch checks: feature present, layer in range, widths compatible, attention kind right."""
        where = f"intermediate_matches[{i}]"
        for who, r, layers in (("adaptor_S", results_S, m.layer_S), ("adaptor_T", results_T, m.layer_T)):
            feats = r.get(m.feature)
            if feats is None:
                raise AdaptorError(f"{who} returned no {m.feature!r} (keys: {', '.join(r) or 'none'}); "
                                   "for Hugging Face models leave the adaptor out or return hidden/attention lists",
                                   where)
            side = "layer_S" if who == "adaptor_S" else "layer_T"
            if m.feature == "attention" and all(t is None for t in feats):
                # Hugging Face models under sdpa / flash attention compute no attention weights to return
                section, model = ("student", self.model_S) if who == "adaptor_S" else ("teacher", self.model_T)
                impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
                using = f" (it uses attn_implementation {impl!r})" if isinstance(impl, str) else ""
                raise AdaptorError(f"{who} returned no attention tensors: the {section} model computed no attention "
                                   f"weights{using}; sdpa and flash attention return none, so set "
                                   f"attn_implementation: eager in the {section} section (in Python: "
                                   "from_pretrained(..., attn_implementation='eager'))", f"{where}.{side}")
            for j in layers if isinstance(layers, list) else [layers]:
                if j >= len(feats) or feats[j] is None:
                    raise AdaptorError(f"layer {j} is out of range: {who} returned {len(feats)} {m.feature!r} "
                                       f"tensors (valid indices 0..{len(feats) - 1})", f"{where}.{side}")
        mask_S, mask_T = results_S.get("inputs_mask"), results_T.get("inputs_mask")
        if mask_S is not None and mask_T is not None and (
                mask_S.shape != mask_T.shape or not torch.equal(mask_S.bool(), mask_T.to(mask_S.device).bool())):
            raise AdaptorError(f"adaptor_T's inputs_mask {tuple(mask_T.shape)} differs from adaptor_S's "
                               f"{tuple(mask_S.shape)}; match losses use the student's inputs_mask for both sides, "
                               "so position-wise matches need the same tokenisation", where)
        meta = MATCH_LOSS_MAP.meta(m.loss)
        if meta.get("input") == "scores" and not meta.get("probs_ok") and \
                isinstance(results_T[m.feature], AttentionProbs):
            raise AdaptorError(f"{m.loss!r} expects pre-softmax attention scores but the adaptor "
                               "returned probabilities (Hugging Face attentions); use 'attention_probs_ce' or "
                               "'attention_probs_kl' (or 'attention_mse', which works on both)", f"{where}.loss")
        if not meta.get("same_shape"):
            return
        s = results_S[m.feature][m.layer_S if not isinstance(m.layer_S, list) else m.layer_S[0]]
        t = results_T[m.feature][m.layer_T if not isinstance(m.layer_T, list) else m.layer_T[0]]
        width = m.proj[2] if m.proj else s.shape[-1]
        if m.proj and s.shape[-1] != m.proj[1]:
            raise AdaptorError(f"the student feature has width {s.shape[-1]} "
                               f"(shape {tuple(s.shape)}) but proj says {m.proj[1]}", f"{where}.proj[1]")
        if tuple(s.shape[:-1]) + (width,) != tuple(t.shape):
            hint = f"; add proj: ['linear', {s.shape[-1]}, {t.shape[-1]}]" if s.shape[:-1] == t.shape[:-1] else ""
            raise AdaptorError(f"student {m.feature}[{m.layer_S}] has shape {tuple(s.shape)}"
                               f"{' -> ' + str(tuple(s.shape[:-1]) + (width,)) + ' after proj' if m.proj else ''}"
                               f" but teacher {m.feature}[{m.layer_T}] has shape {tuple(t.shape)}{hint}", where)


_UNDECLARED: set[str] = set()


def match_denominator(name: str) -> tuple[str, str]:
    """``(with a mask, without)``: what the match loss ``name``'s mean divides by, as registered
    (``MATCH_LOSS_MAP.register(name, denominator=(...))``). A loss registered without one is taken to be a mean
    over rows (examples), which is said once in the log."""
    meta = MATCH_LOSS_MAP.meta(name)
    if "denominator" in meta:
        return tuple(meta["denominator"])
    if name not in _UNDECLARED:
        _UNDECLARED.add(name)
        logger.info("match loss %r declares no denominator: it is taken to be a mean over rows (examples); "
                    "register it with denominator=('tokens', 'positions') or similar if it averages over tokens",
                    name)
    return ("rows", "rows")

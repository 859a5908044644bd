"""The ready adaptor for Hugging Face models (any ``ModelOutput`` / mapping with the usual field names)."""
from __future__ import annotations

from collections.abc import Mapping

import torch


class AttentionProbs(list):
    """A list of per-layer attention tensors that hold softmax probabilities (not pre-softmax scores)."""


def hf_adaptor(batch: object, model_outputs: object) -> dict:
    """Map a Hugging Face ``ModelOutput`` and its batch to brewkit's adaptor dict.

    ``logits`` -> ``logits``; ``hidden_states`` (embeddings + one tensor per layer) -> ``hidden``;
    ``attentions`` (probabilities, one per layer) -> ``attention`` as :class:`AttentionProbs`; ``loss`` (when
    the batch had labels) -> ``losses``; the batch's ``attention_mask`` -> ``inputs_mask``; its ``labels`` ->
    ``labels``.
    """
    out: dict = {}
    get = (lambda k: model_outputs.get(k)) if isinstance(model_outputs, Mapping) else \
        (lambda k: getattr(model_outputs, k, None))
    if isinstance(model_outputs, torch.Tensor):
        return {"logits": model_outputs}
    if get("logits") is not None:
        out["logits"] = get("logits")
    if get("hidden_states") is not None:
        out["hidden"] = list(get("hidden_states"))
    if get("attentions") is not None:
        out["attention"] = AttentionProbs(get("attentions"))
    if get("loss") is not None:
        out["losses"] = get("loss")
    if isinstance(batch, Mapping):
        if batch.get("attention_mask") is not None:
            out["inputs_mask"] = batch["attention_mask"]
        if batch.get("labels") is not None:
            out["labels"] = batch["labels"]
    return out


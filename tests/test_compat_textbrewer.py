"""brewkit.compat.textbrewer: TextBrewer's example scripts run with only their ``textbrewer`` imports changed.

Each port below keeps a TextBrewer example's API usage (its configs, adaptors, distiller calls, callbacks,
``scheduler_class`` / ``scheduler_args``, float ``num_epochs``, the EMDDistiller subclass) on tiny random models,
and compares the first loss and the final weights with :class:`TextBrewerLoop`, a re-implementation of
TextBrewer's training loop and loss formulas written in this file from the TextBrewer reference (TextBrewer itself
is not a dependency). What the ports change besides the imports: model sizes and data, ``transformers.AdamW``
(gone from transformers 5) -> ``torch.optim.AdamW``, ``device='cpu'``, output directories under ``tmp_path``, and
``logging_steps=1`` (brewkit logs every 50 optimizer steps by default; TextBrewer logged every forward pass).

Also here: the behaviours the compat layer and brewkit proper share (integral float ``num_epochs``, no reseeding
without a seed, ``gs{step}.pkl`` checkpoints, student-only clipping, ``textbrewer_numerics='0.2.1'``, ``None``
adaptor values, unknown adaptor keys) and the compat helpers (``display_parameters``, ``data_utils``, the
module layout).
"""
import copy
import functools
import importlib
import json
import math
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import Toy, toy_adaptor, toy_batches
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    ElectraConfig,
    ElectraModel,
    get_linear_schedule_with_warmup,
)

import brewkit
from brewkit.errors import AdaptorError, ConfigError

VOCAB, LENGTH = 50, 8


# =============================================================================================================
# TextBrewer's numbers, re-implemented for these tests (formulas: TextBrewer reference, sections 4-6)
# =============================================================================================================
def ref_kd_ce(z_S, z_T, tau):
    """Soft cross-entropy -sum_c softmax(z_T / tau) log softmax(z_S / tau), mean over rows."""
    p_T = torch.softmax(z_T / tau, dim=-1)
    return -(p_T * torch.log_softmax(z_S / tau, dim=-1)).sum(-1).mean()


def ref_hidden_mse(h_S, h_T, mask=None):
    """Unmasked: mean (h_S - h_T)^2. Masked: sum_{b,i,d} m_bi (h_S - h_T)^2 / (D * sum_b n_b)."""
    if mask is None:
        return ((h_S - h_T) ** 2).mean()
    m = mask.float().unsqueeze(-1)
    return ((h_S - h_T) ** 2 * m).sum() / (m.sum() * h_S.shape[-1])


def ref_mmd(pair_S, pair_T, mask=None, pypi=False):
    """G = X0 X1^T / D_own (PyPI 0.2.1 with a mask: / L); mean (G_S - G_T)^2, or masked over token pairs."""
    def gram(x0, x1):
        scale = x1.shape[1] if (pypi and mask is not None) else x1.shape[2]
        return torch.einsum("bid,bjd->bij", x0, x1) / scale

    g_S, g_T = gram(*pair_S), gram(*pair_T)
    if mask is None:
        return ((g_S - g_T) ** 2).mean()
    m = mask.float()
    pairs = m.unsqueeze(2) * m.unsqueeze(1)
    return ((g_S - g_T) ** 2 * pairs).sum() / (m.sum(1) ** 2).sum()


def ref_fsp(pair_S, pair_T, mask=None):
    """G = X0^T X1 / L (masked: X * m, / n_b), mean (G_S - G_T)^2 over B * D * D."""
    def gram(x0, x1):
        if mask is None:
            return torch.einsum("bld,ble->bde", x0, x1) / x0.shape[1]
        m = mask.float().unsqueeze(-1)
        return torch.einsum("bld,ble->bde", x0 * m, x1 * m) / m.sum(1, keepdim=True)

    return ((gram(*pair_S) - gram(*pair_T)) ** 2).mean()


MATCH_REF = {"hidden_mse": ref_hidden_mse, "mmd": ref_mmd, "nst": ref_mmd, "gram": ref_fsp, "fsp": ref_fsp}


def ref_matches(matches, hid_S, hid_T, mask, projs):
    """sum_m w_m * loss_m(proj_m(student feature), teacher feature; student mask), TextBrewer's match term."""
    total = 0.0
    for m, proj in zip(matches, projs):
        fn = MATCH_REF[m["loss"]]
        if isinstance(m["layer_S"], list):
            f_S = [hid_S[i] for i in m["layer_S"]]
            f_T = [hid_T[i] for i in m["layer_T"]]
            if proj is not None:
                f_S = [proj(x) for x in f_S]
        else:
            f_S, f_T = hid_S[m["layer_S"]], hid_T[m["layer_T"]]
            if proj is not None:
                f_S = proj(f_S)
        total = total + m["weight"] * fn(f_S, f_T, mask)
    return total


def listed(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def forward(model, batch, **kw):
    if isinstance(batch, dict):
        return model(**batch, **kw)
    return model(*batch, **kw)


class TextBrewerLoop:
    """TextBrewer's epoch-mode ``train()`` (reference section 4.2): per forward pass ``loss / accumulation``
    backward; every ``accumulation`` passes clip the *student's* parameters to ``max_grad_norm``, step the
    optimizer and the LR scheduler, zero the gradients, and set the scheduled weights to ``f(step / total)``.

    ``loss_fn(batch, weights) -> loss`` computes one micro-batch's objective; ``losses`` records each one.
    """

    def __init__(self, model_S, loss_fn, optimizer, scheduler=None, accumulation=1, max_grad_norm=-1.0,
                 weights=None, weight_schedules=None):
        self.model_S, self.loss_fn, self.optimizer, self.scheduler = model_S, loss_fn, optimizer, scheduler
        self.accumulation, self.max_grad_norm = accumulation, max_grad_norm
        self.weights = dict(weights or {})
        self.weight_schedules = weight_schedules or {}
        self.losses = []

    def run(self, dataloader, num_epochs, batch_postprocessor=None):
        steps_per_epoch = len(dataloader) // self.accumulation
        total, global_step = steps_per_epoch * int(num_epochs), 0
        for _ in range(int(num_epochs)):
            self.optimizer.zero_grad()
            for step, batch in enumerate(dataloader):
                if batch_postprocessor is not None:
                    batch = batch_postprocessor(batch)
                loss = self.loss_fn(batch, self.weights)
                self.losses.append(loss.detach().item())
                (loss / self.accumulation).backward()
                if (step + 1) % self.accumulation == 0:
                    if self.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(self.model_S.parameters(), self.max_grad_norm)
                    self.optimizer.step()
                    if self.scheduler is not None:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                    global_step += 1
                    for key, f in self.weight_schedules.items():
                        self.weights[key] = f(global_step / total)
        return self


def records(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def assert_same_weights(model, reference, rtol=1e-5, atol=1e-6):
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def step_losses(ref, accumulation=1):
    """What brewkit logs for each optimizer step (``logging_steps=1``): the mean of its micro-batches' losses."""
    n = len(ref.losses) // accumulation
    return [sum(ref.losses[i * accumulation:(i + 1) * accumulation]) / accumulation for i in range(n)]


def assert_same_losses(output_dir, ref, accumulation=1):
    logged = [r["loss"] for r in records(output_dir)]
    assert logged == pytest.approx(step_losses(ref, accumulation), rel=1e-5)


def attention_free_bert_config(layers, hidden=16, **kw):
    return BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, attn_implementation="eager", **kw)


def token_data(n, seed, num_labels=2, per_token_labels=False, full_masks=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    mask = torch.ones(n, LENGTH, dtype=torch.long)
    if not full_masks:
        for i, k in enumerate(torch.randint(3, LENGTH + 1, (n,), generator=g)):
            mask[i, k:] = 0
            ids[i, k:] = 0
    shape = (n, LENGTH) if per_token_labels else (n,)
    return ids, mask, torch.zeros(n, LENGTH, dtype=torch.long), torch.randint(0, num_labels, shape, generator=g)


# =============================================================================================================
# 1. random_tokens_example/distill.py
# =============================================================================================================
class DictDataset(Dataset):
    def __init__(self, all_input_ids, all_attention_mask, all_labels):
        assert len(all_input_ids) == len(all_attention_mask) == len(all_labels)
        self.all_input_ids, self.all_attention_mask, self.all_labels = all_input_ids, all_attention_mask, all_labels

    def __getitem__(self, index):
        return {"input_ids": self.all_input_ids[index], "attention_mask": self.all_attention_mask[index],
                "labels": self.all_labels[index]}

    def __len__(self):
        return self.all_input_ids.size(0)


def test_random_tokens_distill_py(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # TrainingConfig's default output_dir './saved_models' lands in tmp_path
    # --- the script after `sed -E 's/\btextbrewer\b/brewkit.compat.textbrewer/g'` ------------------------
    import brewkit.compat.textbrewer
    from brewkit.compat.textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    device = torch.device("cpu")
    bert_config = attention_free_bert_config(4)
    bert_config_T3 = attention_free_bert_config(2)
    bert_config.output_hidden_states = True
    bert_config_T3.output_hidden_states = True
    torch.manual_seed(1)
    teacher_model = BertForSequenceClassification(bert_config)
    student_model = BertForSequenceClassification(bert_config_T3)
    teacher_model.to(device=device)
    student_model.to(device=device)
    reference_student = copy.deepcopy(student_model)

    all_input_ids = torch.randint(low=0, high=VOCAB, size=(12, LENGTH))
    all_attention_mask = torch.ones_like(all_input_ids)
    all_labels = torch.randint(low=0, high=2, size=(12,))
    dataset = DictDataset(all_input_ids, all_attention_mask, all_labels)
    dataloader = DataLoader(dataset, batch_size=4)
    num_epochs = 2
    num_training_steps = len(dataloader) * num_epochs
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=1e-3, weight_decay=0.0)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {"num_warmup_steps": int(0.2 * num_training_steps), "num_training_steps": num_training_steps}

    result, _ = brewkit.compat.textbrewer.utils.display_parameters(teacher_model, max_level=3)
    assert "LAYER NAME" in result and "\n  --bert" in result and "\n    --embeddings:" in result

    def simple_adaptor(batch, model_outputs):
        return {"logits": model_outputs[1], "hidden": model_outputs[2], "inputs_mask": batch["attention_mask"]}

    seen_steps = []

    def predict(model, eval_dataset, step, device):
        model.eval()
        seen_steps.append(step)
        model.train()

    callback_fun = functools.partial(predict, eval_dataset=dataset, device=device)
    train_config = TrainingConfig(logging_steps=1, device=device)
    distill_config = DistillationConfig(
        temperature=8, hard_label_weight=0, kd_loss_type="ce", probability_shift=False,
        intermediate_matches=[
            {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
            {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
            {"layer_T": [0, 0], "layer_S": [0, 0], "feature": "hidden", "loss": "nst", "weight": 1},
            {"layer_T": [4, 4], "layer_S": [2, 2], "feature": "hidden", "loss": "nst", "weight": 1}])
    print(train_config)
    print(distill_config)
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher_model,
                                 model_S=student_model, adaptor_T=simple_adaptor, adaptor_S=simple_adaptor)
    with distiller:
        distiller.train(optimizer, dataloader, num_epochs=num_epochs, scheduler_class=scheduler_class,
                        scheduler_args=scheduler_args, callback=callback_fun)
    # --- the reference ---------------------------------------------------------------------------------
    matches = [m.to_dict() for m in distill_config.intermediate_matches]

    def loss_fn(batch, weights):
        with torch.no_grad():
            out_T = teacher_model(**batch)
        out_S = reference_student(**batch)
        kd = ref_kd_ce(out_S.logits, out_T.logits, 8)
        return kd + ref_matches(matches, out_S.hidden_states, out_T.hidden_states, batch["attention_mask"],
                                [None] * 4)

    opt = torch.optim.AdamW(reference_student.parameters(), lr=1e-3, weight_decay=0.0)
    ref = TextBrewerLoop(reference_student, loss_fn, opt, scheduler_class(optimizer=opt, **scheduler_args))
    ref.run(dataloader, num_epochs)
    assert_same_losses("saved_models", ref)
    assert_same_weights(student_model, reference_student)
    assert seen_steps == [3, 6]  # after each epoch's checkpoint
    assert sorted(f for f in os.listdir("saved_models") if f.endswith(".pkl")) == ["gs3.pkl", "gs6.pkl"]
    assert "temperature : 8" in capsys.readouterr().out


# =============================================================================================================
# 2-5. mnli_example: main.distill.py with the matches.py sets, main.multiteacher.py, main.trainer.py, main.emd.py
# =============================================================================================================
class BertForGLUESimple(nn.Module):
    """mnli_example/modeling.py's model (transformers 5: the BERT outputs are read by name)."""

    def __init__(self, config, num_labels):
        super().__init__()
        config.num_labels = num_labels
        self.num_labels = num_labels
        config.output_hidden_states = True
        self.bert = BertModel(config)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, attention_mask, token_type_ids, labels=None):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = self.classifier(self.dropout(out.pooler_output))
        if labels is not None:
            return logits, out.hidden_states, F.cross_entropy(logits, labels)
        return logits


def BertForGLUESimpleAdaptor(batch, model_outputs, no_logits=False, no_mask=False):  # the example's name
    dict_obj = {"hidden": model_outputs[1]}
    if not no_mask:
        dict_obj["inputs_mask"] = batch[1]
    if not no_logits:
        dict_obj["logits"] = (model_outputs[0],)
    return dict_obj


def BertForGLUESimpleAdaptorTraining(batch, model_outputs):
    return {"losses": (model_outputs[2],)}


def divide_parameters(named_parameters, lr=None):
    """mnli_example/utils.py: two groups, with and without weight decay."""
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    decay = [p for n, p in named_parameters if not any(nd in n for nd in no_decay)]
    rest = [p for n, p in named_parameters if any(nd in n for nd in no_decay)]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
    if lr is not None:
        for g in groups:
            g["lr"] = lr
    return [g for g in groups if g["params"]]


#: examples/matches/matches.py, for a 4-layer teacher (hidden 16) and 2-layer students (hidden 16, or 8: L2n/L2t)
matches = {
    "L2_hidden_mse": [{"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
                      {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
                      {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}],
    "L2_hidden_smmd": [{"layer_T": [0, 0], "layer_S": [0, 0], "feature": "hidden", "loss": "mmd", "weight": 1},
                       {"layer_T": [2, 2], "layer_S": [1, 1], "feature": "hidden", "loss": "mmd", "weight": 1},
                       {"layer_T": [4, 4], "layer_S": [2, 2], "feature": "hidden", "loss": "mmd", "weight": 1}],
    "L2n_hidden_mse": [{"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                        "proj": ["linear", 8, 16]},
                       {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                        "proj": ["linear", 8, 16]}],
    "L2t_hidden_sgram": [{"layer_T": [0, 0], "layer_S": [0, 0], "feature": "hidden", "loss": "gram", "weight": 1,
                          "proj": ["linear", 8, 16]},
                         {"layer_T": [4, 4], "layer_S": [2, 2], "feature": "hidden", "loss": "gram", "weight": 1,
                          "proj": ["linear", 8, 16]}],
}


def glue_models(student_hidden=16, n_teachers=1):
    teachers = []
    for i in range(n_teachers):
        torch.manual_seed(10 + i)
        teachers.append(BertForGLUESimple(attention_free_bert_config(4), num_labels=3))
    torch.manual_seed(20)
    student = BertForGLUESimple(attention_free_bert_config(2, hidden=student_hidden), num_labels=3)
    return teachers, student


def glue_dataset(n=16, seed=0):
    return TensorDataset(*token_data(n, seed, num_labels=3))


@pytest.mark.parametrize("match_sets, student_hidden", [
    (["L2_hidden_mse", "L2_hidden_smmd"], 16),
    (["L2n_hidden_mse"], 8),
    (["L2t_hidden_sgram"], 8),
])
def test_mnli_main_distill_py_with_the_matches_sets(tmp_path, match_sets, student_hidden):
    from brewkit.compat.textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    (model_T,), model_S = glue_models(student_hidden)
    reference_student = copy.deepcopy(model_S)
    train_dataset = glue_dataset()
    output_dir, accumulation, temperature = str(tmp_path / "out"), 2, 4
    params = list(model_S.named_parameters())
    all_trainable_params = divide_parameters(params, lr=1e-3)
    optimizer = torch.optim.AdamW(all_trainable_params, lr=1e-3)
    train_config = TrainingConfig(logging_steps=1, gradient_accumulation_steps=accumulation, ckpt_frequency=1,
                                  log_dir=output_dir, output_dir=output_dir, device="cpu")
    intermediate_matches = []
    for match in match_sets:
        intermediate_matches += matches[match]
    distill_config = DistillationConfig(temperature=temperature, intermediate_matches=intermediate_matches)
    adaptor_T = functools.partial(BertForGLUESimpleAdaptor, no_logits=False, no_mask=False)
    adaptor_S = functools.partial(BertForGLUESimpleAdaptor, no_logits=False, no_mask=False)
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=model_T,
                                 model_S=model_S, adaptor_T=adaptor_T, adaptor_S=adaptor_S)
    projections = copy.deepcopy(distiller.projs)  # initialised by the distiller; the reference starts from them
    train_sampler = RandomSampler(train_dataset)
    train_dataloader = DataLoader(train_dataset, sampler=train_sampler, batch_size=4, drop_last=True)
    steps = []
    callback_func = functools.partial(lambda model, step, eval_datasets, args: steps.append(step),
                                      eval_datasets=None, args=None)
    torch.manual_seed(99)  # the RandomSampler's order comes from here (train() does not reseed)
    with distiller:
        distiller.train(optimizer, scheduler=None, dataloader=train_dataloader, num_epochs=2.0,
                        callback=callback_func)

    def loss_fn(batch, weights):
        with torch.no_grad():
            logits_T, hid_T, _ = model_T(*batch)
        logits_S, hid_S, _ = reference_student(*batch)
        return ref_kd_ce(logits_S, logits_T, temperature) + ref_matches(intermediate_matches, hid_S, hid_T,
                                                                         batch[1], projections)

    opt = torch.optim.AdamW(divide_parameters(list(reference_student.named_parameters()), lr=1e-3), lr=1e-3)
    for p in projections:
        if p is not None:
            opt.add_param_group({"params": p.parameters()})
    torch.manual_seed(99)
    ref = TextBrewerLoop(reference_student, loss_fn, opt, accumulation=accumulation).run(train_dataloader, 2)
    assert_same_losses(output_dir, ref, accumulation)
    assert_same_weights(model_S, reference_student)
    for p, q in zip(distiller.projs, projections):
        if p is not None:
            torch.testing.assert_close(p.state_dict(), q.state_dict(), rtol=1e-5, atol=1e-6)
    assert steps == [2, 4]


def test_mnli_main_multiteacher_py(tmp_path):
    from brewkit.compat.textbrewer import DistillationConfig, MultiTeacherDistiller, TrainingConfig

    model_Ts, model_S = glue_models(n_teachers=2)
    reference_student = copy.deepcopy(model_S)
    train_dataset = glue_dataset(n=8, seed=1)
    output_dir = str(tmp_path / "out")
    optimizer = torch.optim.AdamW(divide_parameters(list(model_S.named_parameters()), lr=1e-3), lr=1e-3)
    train_config = TrainingConfig(logging_steps=1, gradient_accumulation_steps=1, ckpt_frequency=1, log_dir=None,
                                  output_dir=output_dir, device="cpu")
    distill_config = DistillationConfig(temperature=2, kd_loss_type="ce")
    adaptor = functools.partial(BertForGLUESimpleAdaptor, no_logits=False, no_mask=False)
    distiller = MultiTeacherDistiller(train_config=train_config, distill_config=distill_config, model_T=model_Ts,
                                      model_S=model_S, adaptor_T=adaptor, adaptor_S=adaptor)
    train_dataloader = DataLoader(train_dataset, sampler=SequentialSampler(train_dataset), batch_size=4,
                                  drop_last=True)
    with distiller:
        distiller.train(optimizer, scheduler=None, dataloader=train_dataloader, num_epochs=2.0, callback=None)

    def loss_fn(batch, weights):
        with torch.no_grad():
            mean_T = sum(m(*batch)[0] for m in model_Ts) / len(model_Ts)  # logits averaged, not probabilities
        return ref_kd_ce(reference_student(*batch)[0], mean_T, 2)

    opt = torch.optim.AdamW(divide_parameters(list(reference_student.named_parameters()), lr=1e-3), lr=1e-3)
    ref = TextBrewerLoop(reference_student, loss_fn, opt).run(train_dataloader, 2)
    assert_same_losses(output_dir, ref)
    assert_same_weights(model_S, reference_student)


def test_mnli_main_trainer_py(tmp_path):
    from brewkit.compat.textbrewer import BasicTrainer, TrainingConfig

    _, model_S = glue_models()
    reference_student = copy.deepcopy(model_S)
    train_dataset = glue_dataset(n=8, seed=2)
    output_dir = str(tmp_path / "out")
    optimizer = torch.optim.AdamW(divide_parameters(list(model_S.named_parameters()), lr=1e-3), lr=1e-3)
    train_config = TrainingConfig(logging_steps=1, gradient_accumulation_steps=1, ckpt_frequency=1, log_dir=output_dir,
                                  output_dir=output_dir, device="cpu")
    distiller = BasicTrainer(train_config=train_config, model=model_S, adaptor=BertForGLUESimpleAdaptorTraining)
    train_dataloader = DataLoader(train_dataset, sampler=SequentialSampler(train_dataset), batch_size=4,
                                  drop_last=True)
    with distiller:
        distiller.train(optimizer, scheduler=None, dataloader=train_dataloader, num_epochs=2.0, callback=None)

    def loss_fn(batch, weights):
        logits = reference_student(*batch)[0]
        return F.cross_entropy(logits, batch[3])

    opt = torch.optim.AdamW(divide_parameters(list(reference_student.named_parameters()), lr=1e-3), lr=1e-3)
    ref = TextBrewerLoop(reference_student, loss_fn, opt).run(train_dataloader, 2)
    assert_same_losses(output_dir, ref)
    assert_same_weights(model_S, reference_student)


#: mnli_example/distiller_emd.py, with ``textbrewer`` changed to ``brewkit.compat.textbrewer`` in its imports.
#: pyemd's ``emd_with_flow`` (not a dependency) is replaced by the product coupling of the two layer weightings,
#: a valid (not optimal) transport plan; the module is executed as source to keep its ``import *``.
DISTILLER_EMD_PY = '''
from brewkit.compat.textbrewer.distiller_utils import *
from brewkit.compat.textbrewer.distiller_basic import BasicDistiller


def emd_with_flow(weight_S, weight_T, distance):
    flow = np.outer(weight_S, weight_T)
    return float((flow * distance).sum()), flow.tolist()


class EMDDistiller(BasicDistiller):
    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S,
                 emd: Optional[Dict] = None):
        super(EMDDistiller, self).__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        self.projs = []
        self.projs_group = []
        self.d_config.is_caching_logits = False
        self.layer_num_S = emd['layer_num_S']
        self.layer_num_T = emd['layer_num_T']
        self.emd_feature = emd['feature']
        self.emd_loss_type = emd['loss']
        self.emd_loss_weight = emd['weight']
        if self.emd_feature != 'hidden' or self.emd_loss_type != 'hidden_mse':
            raise NotImplementedError
        self.feature_weight_S = np.ones(self.layer_num_S - 1) / (self.layer_num_S - 1)
        self.feature_weight_T = np.ones(self.layer_num_T - 1) / (self.layer_num_T - 1)
        if isinstance(emd['proj'], list) and len(emd['proj']) > 0:
            projection, dim_in, dim_out = emd['proj']
            for im in range(self.layer_num_S):
                self.projs.append(PROJ_MAP[projection](dim_in, dim_out))
                self.projs[-1].to(self.t_config.device)
                self.projs_group.append(dict())

    def train_on_batch(self, batch, args):
        (teacher_batch, results_T), (student_batch, results_S) = get_outputs_from_batch(
            batch, self.t_config.device, self.model_T, self.model_S, args)
        results_T = post_adaptor(self.adaptor_T(teacher_batch, results_T))
        results_S = post_adaptor(self.adaptor_S(student_batch, results_S))
        total_loss, losses_dict = self.compute_loss(results_S, results_T)
        return total_loss, losses_dict

    def compute_loss(self, results_S, results_T):
        losses_dict = dict()
        total_loss = 0
        if 'logits' in results_T and 'logits' in results_S:
            logits_list_T = results_T['logits']
            logits_list_S = results_S['logits']
            total_kd_loss = 0
            if 'logits_mask' in results_S:
                logits_list_S = select_logits_with_mask(logits_list_S, results_S['logits_mask'])
            if 'logits_mask' in results_T:
                logits_list_T = select_logits_with_mask(logits_list_T, results_T['logits_mask'])
            for l_T, l_S in zip(logits_list_T, logits_list_S):
                if self.d_config.temperature_scheduler is not None:
                    temperature = self.d_config.temperature_scheduler(l_S, l_T, self.d_config.temperature)
                else:
                    temperature = self.d_config.temperature
                total_kd_loss += self.kd_loss(l_S, l_T, temperature)
            total_loss += total_kd_loss * self.d_config.kd_loss_weight
            losses_dict['unweighted_kd_loss'] = total_kd_loss

        inters_T = {feature: results_T.get(feature, []) for feature in FEATURES}
        inters_S = {feature: results_S.get(feature, []) for feature in FEATURES}
        inputs_mask_S = results_S.get('inputs_mask', None)
        feature = self.emd_feature
        emd_loss_weight = self.emd_loss_weight
        loss_type = self.emd_loss_type
        match_loss = MATCH_LOSS_MAP[loss_type]
        feature_maps_S = inters_S[feature][1:]
        feature_maps_T = inters_T[feature][1:]
        embeddings_S = inters_S[feature][0]
        embeddings_T = inters_T[feature][0]
        assert len(feature_maps_S) == self.layer_num_S - 1
        assert len(feature_maps_T) == self.layer_num_T - 1
        if len(self.projs) > 0:
            embeddings_S = self.projs[0](embeddings_S)
            feature_maps_S = [proj(s) for proj, s in zip(self.projs[1:], feature_maps_S)]
        feature_num_S = len(feature_maps_S)
        feature_num_T = len(feature_maps_T)
        feature_num_A = feature_num_S + feature_num_T
        distance_matrix = torch.zeros([feature_num_A, feature_num_A]).to(feature_maps_S[0])
        for s in range(feature_num_S):
            f_S = feature_maps_S[s]
            for t in range(feature_num_T):
                f_T = feature_maps_T[t]
                distance_matrix[s][t + feature_num_S] = distance_matrix[t + feature_num_S][s] = \\
                    match_loss(f_S, f_T, mask=inputs_mask_S)
        feature_weight_S = np.concatenate([self.feature_weight_S, np.zeros(feature_num_T)])
        feature_weight_T = np.concatenate([np.zeros(feature_num_S), self.feature_weight_T])
        _, trans_matrix = emd_with_flow(feature_weight_S, feature_weight_T,
                                        distance_matrix.detach().cpu().numpy().astype('float64'))
        trans_matrix = torch.tensor(trans_matrix).to(distance_matrix)
        emd_loss = torch.sum(trans_matrix * distance_matrix)
        total_loss += emd_loss * emd_loss_weight
        losses_dict[f'unweighted_{feature}_{loss_type}_emd'] = emd_loss
        embedding_loss = match_loss(embeddings_S, embeddings_T, mask=inputs_mask_S)
        total_loss += embedding_loss * emd_loss_weight
        losses_dict[f'unweighted_embedding_{loss_type}'] = embedding_loss
        if 'losses' in results_S:
            total_hl_loss = 0
            for loss in results_S['losses']:
                total_hl_loss += loss.mean()
            total_loss += total_hl_loss * self.d_config.hard_label_weight
            losses_dict['unweighted_hard_label_loss'] = total_hl_loss
        return total_loss, losses_dict
'''


def load_distiller_emd():
    namespace = {"__name__": "distiller_emd"}
    exec(compile(DISTILLER_EMD_PY, "distiller_emd.py", "exec"), namespace)  # the port's own source
    return namespace["EMDDistiller"]


def test_mnli_main_emd_py_with_the_emd_distiller_subclass(tmp_path):
    EMDDistiller = load_distiller_emd()
    from brewkit.compat.textbrewer import DistillationConfig, TrainingConfig

    (model_T,), model_S = glue_models(student_hidden=8)
    reference_student = copy.deepcopy(model_S)
    train_dataset = glue_dataset(n=8, seed=3)
    output_dir, temperature = str(tmp_path / "out"), 3
    train_config = TrainingConfig(logging_steps=1, gradient_accumulation_steps=1, ckpt_frequency=1, log_dir=output_dir,
                                  output_dir=output_dir, device="cpu")
    distill_config = DistillationConfig(temperature=temperature)
    adaptor_T = BertForGLUESimpleAdaptor
    adaptor_S = BertForGLUESimpleAdaptor
    distiller = EMDDistiller(train_config=train_config, distill_config=distill_config, model_T=model_T,
                             model_S=model_S, adaptor_T=adaptor_T, adaptor_S=adaptor_S,
                             emd={"layer_num_S": 2 + 1, "layer_num_T": 4 + 1, "feature": "hidden",
                                  "loss": "hidden_mse", "weight": 1.0, "proj": ["linear", 8, 16]})
    projections = copy.deepcopy(distiller.projs)
    all_trainable_params = divide_parameters(list(model_S.named_parameters()), lr=1e-2)
    optimizer = torch.optim.AdamW(all_trainable_params, lr=1e-2)
    num_train_steps = 4
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {"num_warmup_steps": 1, "num_training_steps": num_train_steps}
    train_dataloader = DataLoader(train_dataset, sampler=SequentialSampler(train_dataset), batch_size=4)
    with distiller:
        distiller.train(optimizer, scheduler_class=scheduler_class, scheduler_args=scheduler_args,
                        dataloader=train_dataloader, num_epochs=2.0, callback=None, max_grad_norm=1)

    w_S, w_T = np.full(2, 1 / 2), np.full(4, 1 / 4)

    def loss_fn(batch, weights):
        with torch.no_grad():
            logits_T, hid_T, _ = model_T(*batch)
        logits_S, hid_S, _ = reference_student(*batch)
        mask = batch[1]
        emd = sum(w_S[s] * w_T[t] * ref_hidden_mse(projections[s + 1](hid_S[s + 1]), hid_T[t + 1], mask)
                  for s in range(2) for t in range(4))
        embedding = ref_hidden_mse(projections[0](hid_S[0]), hid_T[0], mask)
        return ref_kd_ce(logits_S, logits_T, temperature) + emd + embedding

    opt = torch.optim.AdamW(divide_parameters(list(reference_student.named_parameters()), lr=1e-2), lr=1e-2)
    for p in projections:
        opt.add_param_group({"params": p.parameters()})
    ref = TextBrewerLoop(reference_student, loss_fn, opt, scheduler_class(optimizer=opt, **scheduler_args),
                         max_grad_norm=1).run(train_dataloader, 2)
    assert_same_losses(output_dir, ref)
    assert_same_weights(model_S, reference_student, rtol=1e-4, atol=1e-5)
    for p, q in zip(distiller.projs, projections):  # clipped with the student? No: TextBrewer clipped it alone
        torch.testing.assert_close(p.state_dict(), q.state_dict(), rtol=1e-4, atol=1e-5)
    rec = records(output_dir)[0]
    assert {"unweighted_kd_loss", "unweighted_hidden_hidden_mse_emd", "unweighted_embedding_hidden_mse"} <= set(rec)


# =============================================================================================================
# 6. conll2003_example/run_ner_distill.py
# =============================================================================================================
class MyDataset(Dataset):
    def __init__(self, all_input_ids, all_input_mask, all_segment_ids, all_labels):
        super().__init__()
        self.all_input_ids, self.all_input_mask = all_input_ids, all_input_mask
        self.all_segment_ids, self.all_labels = all_segment_ids, all_labels

    def __getitem__(self, index):
        return {"input_ids": self.all_input_ids[index], "attention_mask": self.all_input_mask[index],
                "token_type_ids": self.all_segment_ids[index], "labels": self.all_labels[index]}

    def __len__(self):
        return len(self.all_labels)


def test_conll2003_run_ner_distill_py(tmp_path):
    from brewkit.compat.textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    torch.manual_seed(3)
    model_T = BertForTokenClassification(attention_free_bert_config(4, num_labels=5))
    model = BertForTokenClassification(attention_free_bert_config(2, num_labels=5))
    reference_student = copy.deepcopy(model)
    train_dataset = MyDataset(*token_data(8, seed=4, num_labels=5, per_token_labels=True))
    train_dataloader = DataLoader(train_dataset, sampler=RandomSampler(train_dataset), batch_size=4)
    num_train_epochs, output_dir = 2.0, str(tmp_path / "out")
    t_total = len(train_dataloader) // 1 * num_train_epochs
    no_decay = ["bias", "LayerNorm.weight"]
    optimizer_grouped_parameters = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=5e-3, eps=1e-8)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {"num_warmup_steps": int(0.25 * t_total), "num_training_steps": t_total}
    distill_config = DistillationConfig(temperature=8)
    train_config = TrainingConfig(logging_steps=1, device="cpu", log_dir=None, output_dir=output_dir)

    def adaptor_T(batch, model_output):
        return {"logits": (model_output[1],), "logits_mask": (batch["attention_mask"],)}

    def adaptor_S(batch, model_output):
        return {"logits": (model_output[1],), "logits_mask": (batch["attention_mask"],)}

    distiller = GeneralDistiller(train_config, distill_config, model_T, model, adaptor_T, adaptor_S,)
    torch.manual_seed(5)
    distiller.train(optimizer, train_dataloader, num_train_epochs, scheduler_class=scheduler_class,
                    scheduler_args=scheduler_args, max_grad_norm=1.0, callback=None)

    def loss_fn(batch, weights):
        with torch.no_grad():
            out_T = model_T(**batch)
        out_S = reference_student(**batch)
        keep = batch["attention_mask"].bool()  # (B, L, C) logits -> the (M, C) rows of real tokens
        return ref_kd_ce(out_S.logits[keep], out_T.logits[keep], 8)

    ref_groups = [{"params": [p for n, p in reference_student.named_parameters()
                              if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
                  {"params": [p for n, p in reference_student.named_parameters()
                              if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(ref_groups, lr=5e-3, eps=1e-8)
    torch.manual_seed(5)
    ref = TextBrewerLoop(reference_student, loss_fn, opt, scheduler_class(optimizer=opt, **scheduler_args),
                         max_grad_norm=1.0).run(train_dataloader, num_train_epochs)
    assert_same_losses(output_dir, ref)
    assert_same_weights(model, reference_student)


# =============================================================================================================
# 7. msra_ner_example/main.distill.dist.py, in one process (local_rank -1)
# =============================================================================================================
class ElectraForTokenClassification(nn.Module):
    """msra_ner_example/modeling.py's model: ``(loss), logits, hidden_states`` as a tuple."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.electra = ElectraModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None):
        hidden = self.electra(input_ids, attention_mask, token_type_ids, output_hidden_states=True)
        logits = self.classifier(self.dropout(hidden.last_hidden_state))
        output = (logits,)
        if labels is not None:
            active = attention_mask.view(-1) == 1
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels)[active], labels.view(-1)[active])
            output = (loss,) + output
        return output + (hidden.hidden_states,)


def ElectraForTokenClassificationAdaptor(batch, model_outputs):  # the example's name
    return {"logits": (model_outputs[1],),
            "hidden": model_outputs[2],
            "input_mask": batch[1],  # the example's typo: TextBrewer ignored it, so no match was masked
            "logits_mask": batch[1]}


msra_matches = {  # msra_ner_example/matches.py, for 4 and 2 layers
    "L2_hidden_mse": [{"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
                      {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}],
    "L2_hidden_smmd": [{"layer_T": [0, 0], "layer_S": [0, 0], "feature": "hidden", "loss": "mmd", "weight": 1},
                       {"layer_T": [4, 4], "layer_S": [2, 2], "feature": "hidden", "loss": "mmd", "weight": 1}],
}


def electra_config(layers):
    return ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=4,
                         attn_implementation="eager")


def msra_param_groups(model, learning_rate, lr_decay):
    """The example's layer-wise LR decay (its ``n_layers == 12`` check made ``2``)."""
    outputs_params = divide_parameters(list(model.classifier.named_parameters()), lr=learning_rate)
    electra_params = []
    n_layers = len(model.electra.encoder.layer)
    assert n_layers == 2
    for i, n in enumerate(reversed(range(n_layers))):
        encoder_params = list(model.electra.encoder.layer[n].named_parameters())
        electra_params += divide_parameters(encoder_params, lr=learning_rate * lr_decay ** (i + 1))
    embed_params = [(name, value) for name, value in model.electra.named_parameters() if "embedding" in name]
    electra_params += divide_parameters(embed_params, lr=learning_rate * lr_decay ** (n_layers + 1))
    all_trainable_params = outputs_params + electra_params
    assert sum(len(g["params"]) for g in all_trainable_params) == len(list(model.parameters()))
    return all_trainable_params


def test_msra_ner_main_distill_dist_py_single_process(tmp_path):
    from brewkit.compat.textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    torch.manual_seed(6)
    model_T = ElectraForTokenClassification(electra_config(4))
    model_S = ElectraForTokenClassification(electra_config(2))
    reference_student = copy.deepcopy(model_S)
    ids, mask, _, labels = token_data(8, seed=7, num_labels=4, per_token_labels=True)
    train_dataset = TensorDataset(ids, mask, labels)
    train_dataloader = DataLoader(train_dataset, sampler=RandomSampler(train_dataset), batch_size=4, drop_last=True)
    num_train_steps = len(train_dataloader) // 1 * 2
    all_trainable_params = msra_param_groups(model_S, 5e-3, 0.8)
    optimizer = torch.optim.AdamW(all_trainable_params, lr=5e-3)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {"num_warmup_steps": int(0.25 * num_train_steps), "num_training_steps": num_train_steps}
    output_dir = str(tmp_path / "out")
    train_config = TrainingConfig(logging_steps=1, gradient_accumulation_steps=1, ckpt_frequency=2, log_dir=None,
                                  output_dir=output_dir, device="cpu", fp16=False, local_rank=-1)
    intermediate_matches = []
    for match in ["L2_hidden_mse", "L2_hidden_smmd"]:
        intermediate_matches += msra_matches[match]
    distill_config = DistillationConfig(temperature=8, intermediate_matches=intermediate_matches)
    adaptor_T = ElectraForTokenClassificationAdaptor
    adaptor_S = ElectraForTokenClassificationAdaptor
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=model_T,
                                 model_S=model_S, adaptor_T=adaptor_T, adaptor_S=adaptor_S)
    steps = []
    callback_func = functools.partial(lambda model, step, eval_examples, eval_dataset, args: steps.append(step),
                                      eval_examples=None, eval_dataset=None, args=None)
    torch.manual_seed(8)
    with pytest.warns(UserWarning, match=r"adaptor_[ST] returned unknown key 'input_mask'\. Did you mean "
                                         r"'inputs_mask'\?.*ignored") as caught:
        with distiller:
            distiller.train(optimizer, scheduler_class=scheduler_class, scheduler_args=scheduler_args,
                            max_grad_norm=1.0, dataloader=train_dataloader, num_epochs=2.0, callback=callback_func)
    assert len([w for w in caught if "'input_mask'" in str(w.message)]) == 2  # once per adaptor, not per batch

    def loss_fn(batch, weights):
        with torch.no_grad():
            _, logits_T, hid_T = model_T(*batch)
        _, logits_S, hid_S = reference_student(*batch)
        keep = batch[1].bool()
        return ref_kd_ce(logits_S[keep], logits_T[keep], 8) + ref_matches(intermediate_matches, hid_S, hid_T,
                                                                           None, [None] * 4)

    opt = torch.optim.AdamW(msra_param_groups(reference_student, 5e-3, 0.8), lr=5e-3)
    torch.manual_seed(8)
    ref = TextBrewerLoop(reference_student, loss_fn, opt, scheduler_class(optimizer=opt, **scheduler_args),
                         max_grad_norm=1.0).run(train_dataloader, 2)
    assert_same_losses(output_dir, ref)
    assert_same_weights(model_S, reference_student)
    assert steps == [1, 2, 3, 4]  # ckpt_frequency=2: mid-epoch and end of epoch


# =============================================================================================================
# 8. notebook_examples/sqaudv1.1.ipynb: the adaptor returns 'attention': None; the gs{step}.pkl is loaded after
# =============================================================================================================
@pytest.mark.parametrize("numerics", ["master", "0.2.1"])
def test_squad_notebook_with_attention_none_and_gs_pkl(tmp_path, monkeypatch, numerics):
    monkeypatch.chdir(tmp_path)
    import brewkit.compat.textbrewer  # noqa: F401 (the notebook's `import textbrewer`)
    from brewkit.compat.textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    device = "cpu"
    bert_config, bert_config_T3 = attention_free_bert_config(4), attention_free_bert_config(2)
    bert_config.output_hidden_states = True
    bert_config_T3.output_hidden_states = True
    torch.manual_seed(9)
    teacher_model = BertForQuestionAnswering(bert_config)
    student_model = BertForQuestionAnswering(bert_config_T3)
    teacher_model.to(device=device)
    student_model.to(device=device)
    reference_student = copy.deepcopy(student_model)
    ids, mask, segments, _ = token_data(8, seed=10)
    g = torch.Generator().manual_seed(11)
    starts = torch.randint(0, 3, (8,), generator=g)
    train_dataset = TensorDataset(ids, mask, segments, starts, starts + 1, torch.zeros(8, dtype=torch.long),
                                  torch.ones(8, LENGTH), torch.zeros(8))  # squad_convert_examples_to_features' 8
    train_dataloader = DataLoader(train_dataset, sampler=RandomSampler(train_dataset), batch_size=4)

    num_epochs = 2
    num_training_steps = len(train_dataloader) * num_epochs
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=1e-3, weight_decay=0.0)
    scheduler_class = get_linear_schedule_with_warmup
    scheduler_args = {"num_warmup_steps": int(0.1 * num_training_steps), "num_training_steps": num_training_steps}

    def simple_adaptor(batch, model_outputs):
        return {"logits": (model_outputs.start_logits, model_outputs.end_logits),
                "hidden": model_outputs.hidden_states,
                "attention": model_outputs.attentions}  # None: the models return no attentions

    distill_config = DistillationConfig(
        temperature=1,
        intermediate_matches=[{"layer_T": [0, 0], "layer_S": [0, 0], "feature": "hidden", "loss": "mmd", "weight": 1},
                              {"layer_T": [2, 2], "layer_S": [1, 1], "feature": "hidden", "loss": "mmd", "weight": 1},
                              {"layer_T": [4, 4], "layer_S": [2, 2], "feature": "hidden", "loss": "mmd", "weight": 1}],
        textbrewer_numerics=numerics)
    train_config = TrainingConfig(logging_steps=1, device=device)
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher_model,
                                 model_S=student_model, adaptor_T=simple_adaptor, adaptor_S=simple_adaptor)

    def batch_postprocessor(batch):
        return {"input_ids": batch[0], "attention_mask": batch[1], "token_type_ids": batch[2],
                "start_positions": batch[3], "end_positions": batch[4]}

    torch.manual_seed(12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'attention': None is absent, not an unknown or malformed key
        with distiller:
            distiller.train(optimizer, train_dataloader, num_epochs, scheduler_class=scheduler_class,
                            scheduler_args=scheduler_args, batch_postprocessor=batch_postprocessor, callback=None)

    test_model = BertForQuestionAnswering(bert_config_T3)
    test_model.load_state_dict(torch.load(f"saved_models/gs{num_training_steps}.pkl", weights_only=True))
    for k, v in student_model.state_dict().items():
        assert torch.equal(test_model.state_dict()[k], v), k

    matches_ = [m.to_dict() for m in distill_config.intermediate_matches]

    def loss_fn(batch, weights):
        with torch.no_grad():
            out_T = teacher_model(**batch)
        out_S = reference_student(**batch)
        pairs = [(out_S.start_logits, out_T.start_logits), (out_S.end_logits, out_T.end_logits)]
        if numerics == "0.2.1":
            pairs = pairs[-1:]  # PyPI 0.2.1 counted only the last logits pair
        kd = sum(ref_kd_ce(s, t, 1) for s, t in pairs)
        return kd + ref_matches(matches_, out_S.hidden_states, out_T.hidden_states, None, [None] * 3)

    opt = torch.optim.AdamW(reference_student.parameters(), lr=1e-3, weight_decay=0.0)
    torch.manual_seed(12)
    ref = TextBrewerLoop(reference_student, loss_fn, opt, scheduler_class(optimizer=opt, **scheduler_args))
    ref.run(train_dataloader, num_epochs, batch_postprocessor)
    assert_same_losses("saved_models", ref)
    assert_same_weights(student_model, reference_student)


# =============================================================================================================
# Behaviours shared with brewkit proper
# =============================================================================================================
def toy_setup(tmp_path, training_cls=brewkit.TrainingConfig, **training):
    torch.manual_seed(0)
    teacher, student = Toy(d_h=8, n_layers=2), Toy(d_h=6, n_layers=2)
    training.setdefault("output_dir", str(tmp_path / "out"))
    training.setdefault("device", "cpu")
    training.setdefault("progress_bar", False)
    training.setdefault("logging_steps", 1)
    return teacher, student, training_cls(**training)


@pytest.mark.parametrize("package", ["brewkit", "compat"])
def test_num_epochs_integral_float_accepted_non_integral_refused(tmp_path, package):
    tb = importlib.import_module("brewkit.compat.textbrewer") if package == "compat" else brewkit
    teacher, student, tc = toy_setup(tmp_path, tb.TrainingConfig)
    d = tb.BasicDistiller(tc, tb.DistillationConfig(), teacher, student, toy_adaptor, toy_adaptor)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    d.train(opt, toy_batches(2), num_epochs=2.0)
    assert [r["step"] for r in records(tc.output_dir)] == [1, 2, 3, 4]  # 2 epochs x 2 batches
    for bad in (2.5, 0.0, -1.0, float("nan"), "2", True):
        with pytest.raises(ConfigError) as e:
            d.train(opt, toy_batches(2), num_epochs=bad)
        assert "num_epochs" in str(e.value) and repr(bad) in str(e.value)


class IndexDataset(Dataset):
    def __init__(self, n=12):
        self.x = torch.randn(n, 5, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "mask": torch.ones(5, dtype=torch.long), "labels": torch.tensor(i % 3),
                "idx": torch.tensor(i)}


class IndexedToy(Toy):
    def forward(self, x, mask=None, labels=None, idx=None):
        return super().forward(x, mask, labels)


def test_no_reseed_unless_a_seed_is_given(tmp_path):
    """TextBrewer never reseeded: the script's seed decides the data order; TrainingConfig.seed reseeds."""
    assert brewkit.TrainingConfig().seed is None
    from brewkit.compat.textbrewer import TrainingConfig as TBTrainingConfig

    assert TBTrainingConfig().seed is None

    def seen_order(seed, script_seed, sub):
        _, _, tc = toy_setup(tmp_path, output_dir=str(tmp_path / sub), seed=seed)
        torch.manual_seed(0)
        teacher, student = IndexedToy(), IndexedToy()
        order = []

        def adaptor(batch, out):
            order.extend(batch["idx"].tolist())
            return toy_adaptor(batch, out)

        loader = DataLoader(IndexDataset(), sampler=RandomSampler(IndexDataset()), batch_size=4)
        d = brewkit.BasicDistiller(tc, brewkit.DistillationConfig(), teacher, student, toy_adaptor, adaptor)
        torch.manual_seed(script_seed)
        d.train(torch.optim.SGD(student.parameters(), lr=0.1), loader, num_epochs=2)
        return order

    def expected(seed):
        torch.manual_seed(seed)
        loader = DataLoader(IndexDataset(), sampler=RandomSampler(IndexDataset()), batch_size=4)
        return [int(i) for _ in range(2) for b in loader for i in b["idx"]]

    assert seen_order(None, 1234, "a") == expected(1234)
    assert seen_order(None, 4321, "b") == expected(4321) != expected(1234)
    assert seen_order(7, 1234, "c") == expected(7) == seen_order(7, 4321, "d")


@pytest.mark.parametrize("fmt, written", [("brewkit", False), ("textbrewer", True)])
def test_gs_pkl_student_state_dicts(tmp_path, fmt, written):
    teacher, student, tc = toy_setup(tmp_path, checkpoint_format=fmt, ckpt_steps=2)
    d = brewkit.BasicDistiller(tc, brewkit.DistillationConfig(), teacher, student, toy_adaptor, toy_adaptor)
    saved = {}
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(3), num_steps=3,
            callback=lambda model, step: saved.update({step: copy.deepcopy(model.state_dict())}))
    pkls = sorted(f for f in os.listdir(tc.output_dir) if f.endswith(".pkl"))
    assert pkls == (["gs2.pkl", "gs3.pkl"] if written else [])
    assert sorted(f for f in os.listdir(tc.output_dir) if f.startswith("checkpoint-")) == \
        ["checkpoint-2", "checkpoint-3"]
    for name in pkls:
        state = torch.load(os.path.join(tc.output_dir, name), weights_only=True)
        step = int(name[2:-4])
        assert state.keys() == student.state_dict().keys()
        for k, v in state.items():
            assert torch.equal(v, saved[step][k]), (name, k)
    if written:
        final = torch.load(os.path.join(tc.output_dir, "gs3.pkl"), weights_only=True)
        assert all(torch.equal(final[k], v) for k, v in student.state_dict().items())


def test_gradient_accumulation_averages_per_micro_batch_in_compat(tmp_path):
    """TextBrewer: each micro-batch's own mean, divided by the accumulation steps (compat default
    ``loss_normalization='micro_batch'``), not a mean over the whole effective batch (brewkit's default)."""
    from brewkit.compat import textbrewer as tb

    matches_ = [{"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0}]
    batches = toy_batches(4, seed=3)
    torch.manual_seed(0)
    teacher, student = Toy(d_h=6), Toy(d_h=6)
    reference_student = copy.deepcopy(student)
    tc = tb.TrainingConfig(output_dir=str(tmp_path / "out"), device="cpu", progress_bar=False, logging_steps=1,
                           gradient_accumulation_steps=2)
    d = tb.GeneralDistiller(tc, tb.DistillationConfig(intermediate_matches=matches_), teacher, student,
                            toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.5), batches, num_epochs=1)

    def terms(batch, model):
        with torch.no_grad():
            out_T = teacher(**batch)
        out_S = model(**batch)
        return ref_kd_ce(out_S["logits"], out_T["logits"], 4), \
            ref_hidden_mse(out_S["hidden_states"][2], out_T["hidden_states"][2], batch["mask"])

    def loss_fn(batch, weights):
        return sum(terms(batch, reference_student))

    opt = torch.optim.SGD(reference_student.parameters(), lr=0.5)
    ref = TextBrewerLoop(reference_student, loss_fn, opt, accumulation=2).run(batches, 1)
    assert_same_losses(tc.output_dir, ref, accumulation=2)
    assert_same_weights(student, reference_student)
    # the data tells the two normalisations apart: step 1's micro-batches hold different numbers of tokens, so
    # the token-weighted mean of the hidden term is not the mean of the two micro-batch means
    first, second = batches[0]["mask"].sum(), batches[1]["mask"].sum()
    assert first != second
    with torch.no_grad():
        fresh = copy.deepcopy(reference_student)
        mse = [terms(b, fresh)[1] for b in batches[:2]]
    assert not math.isclose(float((mse[0] * first + mse[1] * second) / (first + second)),
                            float((mse[0] + mse[1]) / 2), rel_tol=1e-3)


@pytest.mark.parametrize("clip_projections", [False, True])
def test_clipping_covers_the_student_only_unless_clip_projections(tmp_path, clip_projections):
    teacher, student, tc = toy_setup(tmp_path, clip_projections=clip_projections)
    matches_ = [{"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 5.0,
                 "proj": ["linear", 6, 8]}]
    d = brewkit.GeneralDistiller(tc, brewkit.DistillationConfig(intermediate_matches=matches_), teacher, student,
                                 toy_adaptor, toy_adaptor)
    proj = copy.deepcopy(d.projs[0])
    ref_student = copy.deepcopy(student)
    batch = toy_batches(1)[0]
    max_norm, lr = 0.05, 1.0
    d.train(torch.optim.SGD(student.parameters(), lr=lr), [batch], num_steps=1, max_grad_norm=max_norm)
    # by hand: TextBrewer's objective, the gradient norm over the clipped set, SGD
    with torch.no_grad():
        out_T = teacher(**batch)
    out_S = ref_student(**batch)
    loss = ref_kd_ce(out_S["logits"], out_T["logits"], 4) + \
        5.0 * ref_hidden_mse(proj(out_S["hidden_states"][2]), out_T["hidden_states"][2], batch["mask"])
    loss.backward()
    clipped = list(ref_student.parameters()) + (list(proj.parameters()) if clip_projections else [])
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in clipped))
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    assert scale < 1  # the test clips
    with torch.no_grad():
        for p in ref_student.parameters():
            p -= lr * scale * p.grad
        for p in proj.parameters():
            p -= lr * (scale if clip_projections else 1.0) * p.grad
    assert_same_weights(student, ref_student)
    torch.testing.assert_close(d.projs[0].state_dict(), proj.state_dict(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("numerics", ["master", "0.2.1"])
def test_textbrewer_numerics_masked_mmd_scaling(tmp_path, numerics):
    teacher, student, tc = toy_setup(tmp_path)  # hidden sizes 8 (teacher) and 6 (student): the scalings differ
    m = {"layer_T": [1, 2], "layer_S": [1, 2], "feature": "hidden", "loss": "nst", "weight": 1.0}
    dc = brewkit.DistillationConfig(kd_loss_weight=0, intermediate_matches=[m], textbrewer_numerics=numerics)
    d = brewkit.GeneralDistiller(tc, dc, teacher, student, toy_adaptor, toy_adaptor)
    batch = toy_batches(1)[0]
    with torch.no_grad():
        h_T, h_S = teacher(**batch)["hidden_states"], student(**batch)["hidden_states"]
        want = ref_mmd([h_S[1], h_S[2]], [h_T[1], h_T[2]], batch["mask"], pypi=numerics == "0.2.1")
        other = ref_mmd([h_S[1], h_S[2]], [h_T[1], h_T[2]], batch["mask"], pypi=numerics != "0.2.1")
    assert not math.isclose(float(want), float(other), rel_tol=1e-3)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), [batch], num_steps=1)
    rec = records(tc.output_dir)[0]
    assert rec["unweighted_hidden_nst_1-2_1-2"] == pytest.approx(float(want), rel=1e-5)


def test_textbrewer_numerics_last_logits_pair(tmp_path):
    torch.manual_seed(0)
    teacher, student = Toy(), Toy()

    def two_heads(batch, out):
        return {"logits": [out["logits"], 2 * out["logits"]]}

    batch = toy_batches(1)[0]
    with torch.no_grad():
        z_T, z_S = teacher(**batch)["logits"], student(**batch)["logits"]
    first, last = float(ref_kd_ce(z_S, z_T, 4)), float(ref_kd_ce(2 * z_S, 2 * z_T, 4))
    for numerics, want in (("master", first + last), ("0.2.1", last)):
        out = str(tmp_path / numerics)
        tc = brewkit.TrainingConfig(output_dir=out, device="cpu", progress_bar=False, logging_steps=1)
        dc = brewkit.DistillationConfig(textbrewer_numerics=numerics)
        d = brewkit.BasicDistiller(tc, dc, teacher, copy.deepcopy(student), two_heads, two_heads)
        d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.0), [batch], num_steps=1)
        assert records(out)[0]["unweighted_kd_loss"] == pytest.approx(want, rel=1e-5)


def test_adaptor_keys_none_is_absent_unknown_is_an_error_in_brewkit_a_warning_in_compat(tmp_path):
    from brewkit.compat import textbrewer as tb

    def with_typo(batch, out):
        return {**toy_adaptor(batch, out), "input_mask": batch["mask"], "attention": None}

    def with_none(batch, out):
        return {**toy_adaptor(batch, out), "attention": None, "losses": None}

    batch = toy_batches(1)[0]
    teacher, student, tc = toy_setup(tmp_path)
    d = brewkit.BasicDistiller(tc, brewkit.DistillationConfig(), teacher, student, toy_adaptor, with_typo)
    with pytest.raises(AdaptorError, match=r"adaptor_S returned unknown key 'input_mask'\. Did you mean "
                                           r"'inputs_mask'\?"):
        d.train(torch.optim.SGD(student.parameters(), lr=0.1), [batch], num_steps=1)
    losses = {}
    for name, adaptor, cls, training in (("brewkit_none", with_none, brewkit.BasicDistiller, brewkit.TrainingConfig),
                                         ("compat_typo", with_typo, tb.BasicDistiller, tb.TrainingConfig),
                                         ("plain", toy_adaptor, brewkit.BasicDistiller, brewkit.TrainingConfig)):
        teacher, student, tc = toy_setup(tmp_path / name, training)
        d = cls(tc, tb.DistillationConfig(hard_label_weight=1.0), teacher, student, toy_adaptor, adaptor)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d.train(torch.optim.SGD(student.parameters(), lr=0.1), [batch, batch], num_steps=2)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        typo = [m for m in messages if "'input_mask'" in m]
        assert len(typo) == (1 if name == "compat_typo" else 0), messages
        if typo:
            assert "Did you mean 'inputs_mask'?" in typo[0] and "ignored" in typo[0]
        losses[name] = [r["loss"] for r in records(tc.output_dir)]
    # a None 'losses' is absent (no hard-label term); the ignored key changes nothing
    assert losses["compat_typo"] == pytest.approx(losses["plain"], rel=1e-6)
    assert "unweighted_hard_label_loss" not in records(str(tmp_path / "brewkit_none" / "out"))[0]


def test_scheduler_attributes_read_as_textbrewer_reads_them():
    from brewkit.compat.textbrewer import DistillationConfig
    from brewkit.presets import TEMPERATURE_SCHEDULER
    from brewkit.schedulers import linear_decay_weight_scheduler, linear_growth_weight_scheduler

    plain = brewkit.DistillationConfig(temperature_scheduler=["flsw", 1, 2], kd_loss_weight_scheduler="linear_decay")
    assert plain.temperature_scheduler == ["flsw", 1, 2] and plain.kd_loss_weight_scheduler == "linear_decay"
    assert plain.hard_label_weight_scheduler == "none"  # brewkit proper: plain data

    tb = DistillationConfig(temperature_scheduler=["flsw", 1, 2], kd_loss_weight_scheduler="linear_decay",
                            hard_label_weight_scheduler="linear_growth")
    assert DistillationConfig().temperature_scheduler is None and DistillationConfig().kd_loss_weight_scheduler is None
    assert tb.kd_loss_weight_scheduler is linear_decay_weight_scheduler
    assert tb.hard_label_weight_scheduler is linear_growth_weight_scheduler
    z_S, z_T = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(tb.temperature_scheduler(z_S, z_T, 4.0),
                               TEMPERATURE_SCHEDULER[["flsw", 1, 2]](z_S, z_T, 4.0))
    assert tb.temperature_scheduler is tb.temperature_scheduler  # one object, as TextBrewer's attribute
    # the specs stay plain data: validation, to_dict, from_dict, replace, equality
    assert tb.spec("temperature_scheduler") == ["flsw", 1, 2] and tb.to_dict() == plain.replace(
        hard_label_weight_scheduler="linear_growth").to_dict() | {"intermediate_matches": []}
    assert DistillationConfig.from_dict(tb.to_dict()) == tb and tb.replace(temperature=2).temperature == 2
    assert tb.replace().kd_loss_weight_scheduler is linear_decay_weight_scheduler
    assert DistillationConfig() == brewkit.DistillationConfig(intermediate_matches=[])
    assert "temperature_scheduler=['flsw', 1, 2]" in repr(tb)
    again = pickle.loads(pickle.dumps(tb))  # the built closure is not pickled; it is rebuilt from the spec
    assert again == tb and callable(again.temperature_scheduler)
    with pytest.raises(ConfigError, match="temperature_scheduler"):
        DistillationConfig(temperature_scheduler="flsw")  # brewkit's validation, unchanged
    # scaled schedules multiply the configured base weight, as brewkit's engine does
    scaled = DistillationConfig(kd_loss_weight=3.0, kd_loss_weight_scheduler="scaled_linear_decay")
    assert scaled.kd_loss_weight_scheduler(0.25) == pytest.approx(2.25)
    tb.temperature_scheduler = "none"  # assigning a spec replaces it
    assert tb.temperature_scheduler is None and tb.to_dict()["temperature_scheduler"] == "none"
    assert DistillationConfig().intermediate_matches == []  # TextBrewer's distillers iterate it


def test_weight_schedules_follow_textbrewer_through_the_compat_layer(tmp_path):
    """TextBrewer: the configured weight for the first optimizer step, then f(g / total) after step g."""
    from brewkit.compat.textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

    teacher, student, tc = toy_setup(tmp_path, TrainingConfig)
    dc = DistillationConfig(kd_loss_weight=2.0, kd_loss_weight_scheduler="linear_decay", hard_label_weight=0.5,
                            hard_label_weight_scheduler="linear_growth")
    d = BasicDistiller(tc, dc, teacher, student, toy_adaptor, toy_adaptor)
    d.train(torch.optim.SGD(student.parameters(), lr=0.1), toy_batches(4), num_epochs=1)
    recs, total = records(tc.output_dir), 4
    for r in recs:
        g = r["step"]
        w_kd = 2.0 if g == 1 else 1 - (g - 1) / total
        w_hl = 0.5 if g == 1 else (g - 1) / total
        assert r["loss"] == pytest.approx(w_kd * r["unweighted_kd_loss"] + w_hl * r["unweighted_hard_label_loss"],
                                          rel=1e-5)
        assert r["kd_loss_weight"] == pytest.approx(1 - g / total)  # logged after the step's update
    assert dc.kd_loss_weight == 2.0  # the config itself is not changed


def test_compat_multitask_distiller_runs_with_dict_adaptors(tmp_path):
    from brewkit.compat.textbrewer import DistillationConfig, MultiTaskDistiller, TrainingConfig

    torch.manual_seed(0)
    teachers = {"a": Toy(), "b": Toy()}
    student = Toy()

    def lenient(batch, out):
        return {**toy_adaptor(batch, out), "input_mask": batch["mask"]}

    tc = TrainingConfig(output_dir=str(tmp_path / "out"), device="cpu", progress_bar=False, logging_steps=1,
                        ckpt_steps=2)
    d = MultiTaskDistiller(tc, DistillationConfig(), teachers, student, {"a": toy_adaptor, "b": toy_adaptor},
                           {"a": lenient, "b": toy_adaptor})
    with pytest.warns(UserWarning, match="'input_mask'"):
        d.train(torch.optim.SGD(student.parameters(), lr=0.1), {"a": toy_batches(2), "b": toy_batches(2, seed=1)},
                num_steps=4)
    assert [r["step"] for r in records(tc.output_dir)] == [1, 2, 3, 4]
    assert sorted(f for f in os.listdir(tc.output_dir) if f.endswith(".pkl")) == ["gs2.pkl", "gs4.pkl"]


# =============================================================================================================
# Compat helpers
# =============================================================================================================
def test_display_parameters_output_format(capsys):
    from brewkit.compat.textbrewer.utils import display_parameters

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)  # 40
            self.enc = nn.Sequential(nn.Linear(4, 4))  # 16 + 4
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # tied: counted once

    table, root = display_parameters(Tiny())
    assert capsys.readouterr().out == table + "\n"  # printed, like TextBrewer
    mb = lambda n: f"{n * 4 / 2 ** 20:>8.2f}"  # noqa: E731
    w = len("    --weight(shared)") + 1  # the widest indent + name, plus the colon
    lines = [
        "",
        f"{'LAYER NAME':<{w}}\t{'#PARAMS':>15}\t{'RATIO':>10}\t{'MEM(MB)':>8}",
        f"{'--model:':<{w}}\t{60:15,d}\t{'100.00%':>10}\t{mb(60)}",
        f"{'  --emb':<{w}}",
        f"{'    --weight:':<{w}}\t{40:15,d}\t{'66.67%':>10}\t{mb(40)}",
        f"{'  --enc':<{w}}",
        f"{'    --0:':<{w}}\t{20:15,d}\t{'33.33%':>10}\t{mb(20)}",
        f"{'      --weight:':<{w}}\t{16:15,d}\t{'26.67%':>10}\t{mb(16)}",
        f"{'      --bias:':<{w}}\t{4:15,d}\t{'6.67%':>10}\t{mb(4)}",
        f"{'  --head':<{w}}",
        f"{'    --weight(shared):':<{w}}\t{0:15,d}\t{'0.00%':>10}\t{mb(0)}",
        "",
    ]
    assert table == "\n".join(lines)
    assert root.value[0] == 60 and root["enc"]["0"].value[0] == 20 and root["enc"].fullname == "enc"
    # max_level stops the table, the root's line included; a state dict works too
    table, _ = display_parameters(Tiny().state_dict(), max_level=1)
    w1 = len("  --head") + 1
    assert table.split("\n")[2:] == [
        f"{'--model:':<{w1}}\t{60:15,d}\t{'100.00%':>10}\t{mb(60)}",
        f"{'  --emb:':<{w1}}\t{40:15,d}\t{'66.67%':>10}\t{mb(40)}",
        f"{'  --enc:':<{w1}}\t{20:15,d}\t{'33.33%':>10}\t{mb(20)}",
        f"{'  --head:':<{w1}}\t{0:15,d}\t{'0.00%':>10}\t{mb(0)}", ""]
    with pytest.raises(ConfigError, match="display_parameters.model: must be a torch.nn.Module or a state dict"):
        display_parameters([1, 2])


def test_data_utils_draws_in_textbrewer_order():
    from brewkit.compat.textbrewer import data_utils as du

    tokens = list("abcdefghij")
    np.random.seed(0)
    draws = np.random.rand(10)
    np.random.seed(0)
    assert du.masking(tokens, p=0.5) == ["[MASK]" if r < 0.5 else t for r, t in zip(draws, tokens)]
    np.random.seed(1)
    keep = np.random.binomial(1, 0.7, 10)
    np.random.seed(1)
    assert du.deleting(tokens, p=0.3) == [t for t, k in zip(tokens, keep) if k]
    assert du.deleting(tokens, p=0.0) == tokens and du.deleting(tokens, p=1.0) == []
    np.random.seed(2)
    span = int(np.random.choice([3], p=[1.0]))  # the span's length is drawn first, then its start
    start = np.random.randint(0, 10 - span + 1)
    np.random.seed(2)
    assert du.n_gram_sampling(tokens, p_ng=[1.0], l_ng=[3]) == tokens[start:start + 3]
    # deterministic cases of the disorders, by hand
    assert du.short_disorder(list("abcde"), p=[0, 1, 0, 0, 0]) == list("badce")
    assert du.short_disorder(list("abcdef"), p=[0, 0, 1, 0, 0]) == list("cbafed")
    assert du.short_disorder(list("abcdefg"), p=[0, 0, 0, 1, 0]) == list("cabfdeg")
    assert du.short_disorder(list("abcde"), p=[0, 0, 0, 0, 1]) == list("bcaed")  # 'de' at the end: a swap
    assert du.long_disorder(tokens, p=1.0, length=4) == list("cdabghefij")
    assert du.long_disorder(tokens, p=1.0, length=3) == list("cdabghefij")  # rounded up to 4
    assert du.long_disorder(tokens, p=1.0, length=0.5) == list("defabcghij")  # 0.5 x 10 -> 6 tokens
    assert du.long_disorder(tokens, p=0.0) == tokens
    with pytest.raises(ConfigError, match="span of 5 tokens"):
        du.n_gram_sampling(list("ab"), p_ng=[1.0], l_ng=[5])


TEXTBREWER_NAMES = {
    "": ["__version__", "TrainingConfig", "DistillationConfig", "BasicTrainer", "BasicDistiller", "GeneralDistiller",
         "MultiTeacherDistiller", "MultiTaskDistiller", "Distillers", "FEATURES", "ADAPTOR_KEYS", "KD_LOSS_MAP",
         "MATCH_LOSS_MAP", "PROJ_MAP", "WEIGHT_SCHEDULER", "TEMPERATURE_SCHEDULER", "register_new"],
    "losses": ["kd_mse_loss", "kd_ce_loss", "att_mse_loss", "att_mse_sum_loss", "att_ce_loss", "att_ce_mean_loss",
               "hid_mse_loss", "cos_loss", "pkd_loss", "fsp_loss", "mmd_loss"],
    "schedulers": ["linear_growth_weight_scheduler", "linear_decay_weight_scheduler", "constant_temperature_scheduler",
                   "flsw_temperature_scheduler_builder", "cwsm_temperature_scheduler_builder"],
    "projections": ["linear_projection", "projection_with_activation", "act_dict"],
    "presets": ["KD_LOSS_MAP", "MATCH_LOSS_MAP", "PROJ_MAP", "WEIGHT_SCHEDULER", "TEMPERATURE_SCHEDULER", "FEATURES",
                "ADAPTOR_KEYS", "MAPS", "DynamicKeyDict", "register_new"],
    "utils": ["display_parameters", "LayerNode", "cycle", "initializer_builder"],
    "data_utils": ["masking", "deleting", "n_gram_sampling", "short_disorder", "long_disorder"],
    "distiller_utils": ["AbstractDistiller", "DistillationContext", "CustomMatch", "select_logits_with_mask",
                        "post_adaptor", "probability_shift_", "move_to_device", "get_outputs_from_batch",
                        "auto_forward", "no_op", "logger"],
    "compatibility": ["mask_dtype", "is_apex_available"],
    "configurations": ["Config", "TrainingConfig", "IntermediateMatch", "DistillationConfig"],
    "distiller_basic": ["BasicDistiller"], "distiller_general": ["GeneralDistiller"],
    "distiller_multiteacher": ["MultiTeacherDistiller"], "distiller_multitask": ["MultiTaskDistiller"],
    "distiller_train": ["BasicTrainer"],
}


@pytest.mark.parametrize("module", sorted(TEXTBREWER_NAMES))
def test_textbrewer_module_layout(module):
    mod = importlib.import_module("brewkit.compat.textbrewer" + (f".{module}" if module else ""))
    missing = [n for n in TEXTBREWER_NAMES[module] if not hasattr(mod, n)]
    assert not missing
    star = {}
    exec(f"from {mod.__name__} import *", star)
    assert set(TEXTBREWER_NAMES[module]) - {"__version__"} <= set(star)


def test_compat_registries_are_brewkit_registries_and_distillers_are_brewkit_distillers():
    import brewkit.compat.textbrewer as tb
    from brewkit import presets

    assert tb.MATCH_LOSS_MAP is presets.MATCH_LOSS_MAP and tb.FEATURES is presets.FEATURES
    for name, cls in tb.Distillers.items():
        assert issubclass(cls, brewkit.Distillers[name]) and cls.__name__ == brewkit.Distillers[name].__name__
    assert issubclass(tb.TrainingConfig, brewkit.TrainingConfig)
    tc = tb.TrainingConfig()
    assert (tc.checkpoint_format, tc.loss_normalization, tc.seed, tc.clip_projections) == (
        "textbrewer", "micro_batch", None, False)
    assert brewkit.TrainingConfig().checkpoint_format == "brewkit"
    # TextBrewer's DynamicKeyDict over a plain dict
    dkd = tb.presets.DynamicKeyDict({"add": lambda a, b=0: a + b})
    assert dkd[["add", 1, 2]] == 3 and dkd[("add", {"a": 4, "b": 1})] == 5 and ["add"] in dkd and "x" not in dkd


def test_get_outputs_from_batch_and_post_adaptor():
    from brewkit.compat.textbrewer.distiller_utils import auto_forward, get_outputs_from_batch, post_adaptor

    torch.manual_seed(0)
    teacher, student = Toy(), Toy()
    batch = toy_batches(1)[0]
    (tb_, out_T), (sb, out_S) = get_outputs_from_batch(batch, "cpu", teacher, student, {})
    assert tb_ is sb and not out_T["logits"].requires_grad and out_S["logits"].requires_grad
    torch.testing.assert_close(out_T["logits"], teacher(**batch)["logits"])
    split = {"teacher": batch, "student": {"x": batch["x"] * 2, "mask": batch["mask"]},
             "teacher_cache": {"logits": torch.ones(3, 3)}}
    (tb_, out_T), (sb, out_S) = get_outputs_from_batch(split, "cpu", teacher, student, {})
    assert torch.equal(out_T["logits"], torch.ones(3, 3)) and torch.equal(sb["x"], batch["x"] * 2)
    (_, none), _ = get_outputs_from_batch(batch, "cpu", teacher, student, {}, no_teacher_forward=True)
    assert none is None
    tuple_batch = (batch["x"], batch["mask"])
    outs = auto_forward([teacher, student], tuple_batch, {})
    torch.testing.assert_close(outs[1]["logits"], student(*tuple_batch)["logits"])
    logits, hidden = torch.zeros(2), [torch.zeros(1)]
    d = {"logits": logits, "hidden": hidden, "attention": None, "extra": 1}
    assert post_adaptor(d) is d  # in place, as TextBrewer's
    assert set(d) == {"logits", "hidden", "extra"} and d["logits"] == [logits] and d["hidden"] is hidden

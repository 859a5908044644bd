import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)


class Toy(nn.Module):
    """A tiny layered model: hidden_states = [x, h1, ..., hn], logits from position 0 of the last layer."""

    def __init__(self, d_in=4, d_h=6, n_layers=2, n_cls=3, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in if i == 0 else d_h, d_h) for i in range(n_layers))
        self.head = nn.Linear(d_h, n_cls)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask=None, labels=None):
        hs, h = [x], x
        for layer in self.layers:
            h = torch.tanh(self.drop(layer(h)))
            hs.append(h)
        logits = self.head(h[:, 0])
        out = {"logits": logits, "hidden_states": hs}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def toy_adaptor(batch, out):
    d = {"logits": out["logits"], "hidden": out["hidden_states"], "inputs_mask": batch["mask"]}
    if "loss" in out:
        d["losses"] = out["loss"]
    return d


def toy_batches(n_batches=4, batch_size=3, length=5, d_in=4, n_cls=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        mask = torch.ones(batch_size, length, dtype=torch.long)
        lens = torch.randint(2, length + 1, (batch_size,), generator=g)
        for i, n in enumerate(lens):
            mask[i, n:] = 0
        out.append({"x": torch.randn(batch_size, length, d_in, generator=g), "mask": mask,
                    "labels": torch.randint(0, n_cls, (batch_size,), generator=g)})
    return out


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=24, length=5, d_in=4, n_cls=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, length, d_in, generator=g)
        self.mask = torch.ones(n, length, dtype=torch.long)
        for i, k in enumerate(torch.randint(2, length + 1, (n,), generator=g)):
            self.mask[i, k:] = 0
        self.labels = torch.randint(0, n_cls, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "mask": self.mask[i], "labels": self.labels[i]}


@pytest.fixture
def toy():
    return Toy, toy_adaptor, toy_batches


def tiny_bert(num_layers=2, hidden=16, heads=2, num_labels=2, seed=0, vocab=50):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                     intermediate_size=hidden * 2, max_position_embeddings=32, num_labels=num_labels,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(cfg)


def bert_batches(n_batches=3, batch_size=4, length=8, vocab=50, seed=0, num_labels=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, vocab, (batch_size, length), generator=g)
        mask = torch.ones(batch_size, length, dtype=torch.long)
        for i, k in enumerate(torch.randint(3, length + 1, (batch_size,), generator=g)):
            mask[i, k:] = 0
            ids[i, k:] = 0
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.randint(0, num_labels, (batch_size,), generator=g)})
    return out

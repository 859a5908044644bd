"""brewkit.evaluation: accuracy and macro-F1 against hand arithmetic, and DDP evaluation (each rank its shard,
predictions gathered) equal to one process evaluating the whole split."""
import os
from types import SimpleNamespace

import pytest
import torch
from helpers import free_port, spawn_and_wait
from torch import nn

from brewkit.data.collate import PadCollator
from brewkit.data.sampler import RandomBatchSampler
from brewkit.evaluation import accuracy, evaluate, is_sharded, macro_f1


def test_accuracy_and_macro_f1_by_hand():
    p = torch.tensor([0, 0, 1, 1, 2, 0])
    g = torch.tensor([0, 1, 1, 1, 2, 2])
    assert accuracy(p, g) == pytest.approx(4 / 6)
    # class 0: TP 1, P 1/3, R 1/1 -> F1 0.5; class 1: TP 2, P 2/2, R 2/3 -> 0.8; class 2: TP 1, P 1/1, R 1/2 -> 2/3
    assert macro_f1(p, g) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class only predicted (never gold) counts with F1 0
    assert macro_f1(torch.tensor([0, 3]), torch.tensor([0, 0])) == pytest.approx((2 * 1 * 0.5 / 1.5 + 0) / 2)


class Scorer(nn.Module):
    """Logits ``[B, 3]``: the mean embedding of the real tokens; a test model with a ``.logits`` output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(30, 3)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return SimpleNamespace(logits=(self.emb(input_ids) * m).sum(1) / m.sum(1))


def rows(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 30, (int(k),), generator=g).tolist(), "labels": i % 3, "idx": i}
            for i, k in enumerate(torch.randint(2, 7, (n,), generator=g))]


def loader(data: list[dict], world: int = 1, rank: int = 0) -> torch.utils.data.DataLoader:
    sampler = RandomBatchSampler(len(data), 4, shuffle=False, num_replicas=world, rank=rank)
    return torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=PadCollator(0))


def test_evaluate_one_process_matches_the_predictions_and_restores_train_mode():
    model, data = Scorer().train(), rows(11)
    out = evaluate(model, loader(data), "cpu", "macro_f1")
    batch = PadCollator(0)(data)
    preds = model(batch["input_ids"], batch["attention_mask"]).logits.argmax(-1)
    assert out == {"accuracy": accuracy(preds, batch["labels"]), "macro_f1": macro_f1(preds, batch["labels"])}
    assert model.training
    assert not is_sharded(loader(data)) and is_sharded(loader(data, world=2))


def _rank(rank: int, world: int, port: int, n: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    result = evaluate(Scorer(), loader(rows(n), world, rank), "cpu", "macro_f1")
    torch.save(result, os.path.join(out, f"eval{n}_rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_evaluation_gathers_the_shards(tmp_path):
    """11 examples over 2 ranks (uneven shards) and 1 example over 2 ranks (repeated: counted once)."""
    for n in (11, 1):
        spawn_and_wait(_rank, (2, free_port(), n, str(tmp_path)), 2, timeout=120, what="DDP evaluation")
        single = evaluate(Scorer(), loader(rows(n)), "cpu", "macro_f1")
        for r in range(2):
            assert torch.load(tmp_path / f"eval{n}_rank{r}.pt", weights_only=True) == single, (n, r)

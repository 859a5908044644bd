"""DDP on CPU with 2 gloo processes: the same effective batch gives the same update; resume under DDP."""
import os
import sys

import pytest
import torch
from helpers import free_port, spawn_and_wait

sys.path.insert(0, os.path.dirname(__file__))

pytestmark = pytest.mark.slow  # every test starts 2 gloo processes (spawn)


def _run(rank: int, world: int, port: int, out: str, batch: int, accum: int, stop_at, resume: bool,
         normalization: str = "effective_batch", textbrewer_way: bool = False) -> None:
    """One process of a run: 10 SGD steps of KD + hard labels + masked matches on the toy model, effective
    batch 8 (the toy dataset's rows have different lengths, so per-micro-batch means would differ)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from helpers import Toy, ToyDataset, toy_adaptor

    from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig

    torch.manual_seed(0)
    teacher, student = Toy(d_h=8, n_layers=3), Toy()
    # rows-, token- and masked token-normalised terms: each must be averaged over the whole effective batch
    dc = DistillationConfig(temperature=2, hard_label_weight=1.0, intermediate_matches=[
        {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "pkd", "weight": 1.0, "proj": ["linear", 6, 8]},
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
         "proj": ["linear", 6, 8]},
        {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "cos", "weight": 1.0, "proj": ["linear", 6, 8]},
        {"layer_T": [1, 2], "layer_S": [1, 2], "feature": "hidden", "loss": "mmd", "weight": 1.0}])
    local_rank = -1
    dataset = ToyDataset(80)
    if textbrewer_way:  # the user initialises the group, builds the sampler and passes local_rank
        import torch.distributed as dist

        dist.init_process_group("gloo")
        local_rank = rank
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    tc = TrainingConfig(output_dir=out, device="cpu", gradient_accumulation_steps=accum, ckpt_frequency=10,
                        logging_steps=5, progress_bar=False, resume_from_checkpoint=resume or None,
                        loss_normalization=normalization, local_rank=local_rank)
    d = GeneralDistiller(tc, dc, teacher, student, toy_adaptor, toy_adaptor)

    def cb(model, step):
        if step == stop_at:
            raise SystemExit(0)

    try:
        d.train(torch.optim.SGD(student.parameters(), lr=0.5), loader, num_epochs=1, callback=cb)
    except SystemExit:
        pass
    if rank == 0:
        torch.save([p.detach().clone() for p in d.trainable_parameters()], os.path.join(out, "final_weights.pt"))


def _launch(tmp_path, name, world, batch, accum, stop_at=None, resume=False, normalization="effective_batch",
            textbrewer_way=False):
    out = str(tmp_path / name)
    if world == 1:
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(k, None)
        _run(0, 1, 0, out, batch, accum, stop_at, resume, normalization)
    else:
        spawn_and_wait(_run, (world, free_port(), out, batch, accum, stop_at, resume, normalization, textbrewer_way),
                       world, what=f"DDP run {name}")
    return torch.load(os.path.join(out, "final_weights.pt"), weights_only=True)


@pytest.mark.parametrize("world, batch, accum", [(1, 4, 2), (2, 4, 1), (2, 2, 2)])
def test_same_effective_batch_same_update(tmp_path, world, batch, accum):
    reference = _launch(tmp_path, "ref", 1, 8, 1)
    other = _launch(tmp_path, "other", world, batch, accum)
    for a, b in zip(reference, other):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_textbrewer_way_user_group_sampler_and_local_rank(tmp_path):
    reference = _launch(tmp_path, "ref", 1, 8, 1)
    other = _launch(tmp_path, "tb", 2, 4, 1, textbrewer_way=True)
    for a, b in zip(reference, other):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_per_micro_batch_means_would_break_the_invariance(tmp_path):
    """The property above is not trivial: TextBrewer-style per-micro-batch means give a different update."""
    reference = _launch(tmp_path, "ref", 1, 8, 1)
    other = _launch(tmp_path, "other", 2, 2, 2, normalization="micro_batch")
    assert max(float((a - b).abs().max()) for a, b in zip(reference, other)) > 1e-4


def test_resume_under_ddp_matches_an_uninterrupted_run(tmp_path):
    full = _launch(tmp_path, "full", 2, 2, 2)
    _launch(tmp_path, "part", 2, 2, 2, stop_at=4)
    assert sorted(n for n in os.listdir(tmp_path / "part") if n.startswith("checkpoint-"))[-1] == "checkpoint-4"
    assert os.path.exists(tmp_path / "part" / "checkpoint-4" / "rng_state_rank1.pt")
    resumed = _launch(tmp_path, "part", 2, 2, 2, resume=True)
    for a, b in zip(full, resumed):
        assert (a - b).abs().max() <= 1e-6


def _run_cached(rank: int, world: int, port: int, out: str, mode: str) -> None:
    """3 epochs of a tiny BERT GeneralDistiller on a shuffled, sharded loader; counts teacher forwards."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from helpers import tiny_bert

    from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig
    from brewkit.data.collate import PadCollator

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 50, (int(n),), generator=g).tolist(), "labels": i % 2, "idx": i}
            for i, n in enumerate(torch.randint(3, 12, (32,), generator=g))]
    teacher, student = tiny_bert(num_layers=4, seed=0), tiny_bert(num_layers=2, seed=1)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    loader = torch.utils.data.DataLoader(rows, batch_size=4, shuffle=True, collate_fn=PadCollator(0))
    tc = TrainingConfig(output_dir=out, device="cpu", seed=3, progress_bar=False, logging_steps=100)
    dc = DistillationConfig(temperature=2, hard_label_weight=1, teacher_cache=mode, intermediate_matches=[
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
        {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1}])
    d = GeneralDistiller(tc, dc, teacher, student)
    from brewkit.run import drop_example_index

    d.train(torch.optim.SGD(student.parameters(), lr=0.5), loader, num_epochs=3,
            batch_postprocessor=drop_example_index if mode == "none" else None)
    torch.save({"calls": len(calls), "weights": [p.detach().clone() for p in d.trainable_parameters()]},
               os.path.join(out, f"result_rank{rank}.pt"))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_teacher_cache_under_ddp_gives_the_uncached_update(tmp_path, mode):
    """Each epoch reshuffles which rank sees which example. The disk cache shares every rank's entries at each
    epoch start, so the teacher runs in epoch 1 only; the memory cache is per process, so later epochs miss the
    examples the other rank cached. Either way the student equals the uncached DDP run's."""
    results = {}
    for m in ("none", mode):
        out = str(tmp_path / m)
        spawn_and_wait(_run_cached, (2, free_port(), out, m), 2, what=f"DDP run {m}")
        results[m] = [torch.load(os.path.join(out, f"result_rank{r}.pt"), weights_only=True) for r in range(2)]
    for a, b in zip(results["none"][0]["weights"], results[mode][0]["weights"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    per_epoch = 32 // 4 // 2  # batches per rank and epoch
    assert [r["calls"] for r in results["none"]] == [3 * per_epoch] * 2
    cached_calls = [r["calls"] for r in results[mode]]
    if mode == "disk":
        assert cached_calls == [per_epoch] * 2
    else:
        assert all(per_epoch < c < 3 * per_epoch for c in cached_calls)

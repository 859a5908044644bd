"""The per-example teacher cache (``DistillationConfig.teacher_cache``, :mod:`brewkit.teacher_cache`).

Training with ``teacher_cache='memory'`` or ``'disk'`` must give exactly the student of the uncached run while
the teacher runs only in the first epoch; a disk cache is reused by a later run and refused when the teacher,
the data or the storage dtype changed; a killed writer leaves a consistent cache; ``put``/``get`` round-trip
hand-built results through any padding; bad settings raise ``ConfigError`` naming the field; YAML runs and
resuming work with the cache switched on.
"""
import json
import os
import shutil
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import run_dict, tiny_bert, write_run  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from brewkit import (  # noqa: E402
    BasicDistiller,
    DistillationConfig,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
    TrainingConfig,
)
from brewkit.adaptors.hf import AttentionProbs  # noqa: E402
from brewkit.data.collate import PadCollator  # noqa: E402
from brewkit.errors import CheckpointError, ConfigError  # noqa: E402
from brewkit.run import drop_example_index, train_run  # noqa: E402
from brewkit.runfile import load_run  # noqa: E402
from brewkit.teacher_store import open_store, token_hashes  # noqa: E402

MATCHES = [{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
           {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1}]
N_EXAMPLES, BATCH, EPOCHS = 20, 6, 3
STEPS_PER_EPOCH = 4  # ceil(20 / 6)


# -- helpers --------------------------------------------------------------------------------------------
def make_rows(changed: int | None = None) -> list[dict]:
    """20 rows of 3..11 random token ids with a label and ``idx``; ``changed``: that row gets other tokens."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, n in enumerate(torch.randint(3, 12, (N_EXAMPLES,), generator=g)):
        ids = torch.randint(1, 50, (int(n),), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": int(torch.randint(0, 2, (1,), generator=g)), "idx": i})
    if changed is not None:
        rows[changed]["input_ids"] = [(t % 49) + 1 for t in rows[changed]["input_ids"]]  # same length, new ids
    return rows


def snapshot(directory) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


def train(kind: str, mode: str, out, *, rows=None, cache_dir=None, cache_dtype="float32", bump_teacher=False,
          epochs=EPOCHS, resume=None, stop_at=None, **dc_extra) -> SimpleNamespace:
    """Distill tiny BERTs with a shuffling loader and dynamic right padding; count the teachers' forwards.

    ``kind``: 'general' (hidden + attention matches, KD, hard labels), 'basic' (logits only) or 'multi'
    (two teachers). Without a cache, ``idx`` is dropped by the batch postprocessor (models must not see it).
    """
    teachers = [tiny_bert(num_layers=4, seed=0)] + ([tiny_bert(num_layers=3, seed=2)] if kind == "multi" else [])
    if bump_teacher:
        with torch.no_grad():
            teachers[0].classifier.weight[0, 0] += 1e-3
    student = tiny_bert(num_layers=2, seed=1)
    calls, seen = [], []
    for t in teachers:
        t.register_forward_hook(lambda *a: calls.append(1))

    def record(module, args, kwargs):  # (padded length, real tokens) of every example the student sees
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
        seen.extend((ids.shape[1], tuple(row[m].tolist())) for row, m in zip(ids, mask))

    student.register_forward_pre_hook(record, with_kwargs=True)
    loader = torch.utils.data.DataLoader(rows or make_rows(), batch_size=BATCH, shuffle=True,
                                         collate_fn=PadCollator(0))
    tc = TrainingConfig(output_dir=str(out), seed=3, device="cpu", progress_bar=False, logging_steps=100,
                        ckpt_frequency=2 if stop_at else 1, ckpt_epoch_frequency=1 if stop_at else 100,
                        resume_from_checkpoint=resume)
    dc = DistillationConfig(**{"temperature": 2, "hard_label_weight": 1, "teacher_cache": mode,
                               "teacher_cache_dir": cache_dir, "teacher_cache_dtype": cache_dtype,
                               "intermediate_matches": MATCHES if kind == "general" else None, **dc_extra})
    cls = {"general": GeneralDistiller, "basic": BasicDistiller, "multi": MultiTeacherDistiller}[kind]
    dist = cls(tc, dc, teachers if kind == "multi" else teachers[0], student)

    def stop(model, step):
        if step == stop_at:
            raise KeyboardInterrupt

    try:
        dist.train(torch.optim.SGD(student.parameters(), lr=0.5), loader, num_epochs=epochs, callback=stop,
                   batch_postprocessor=drop_example_index if mode == "none" else None)
    except KeyboardInterrupt:
        pass
    return SimpleNamespace(student=student, teachers=teachers, calls=len(calls), seen=seen, dist=dist,
                           cache=dist.teacher_store)


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    """The GeneralDistiller run uncached, with a memory cache and with a disk cache (in ``disk_dir``)."""
    base = tmp_path_factory.mktemp("general")
    disk_dir = str(base / "disk_cache")
    return SimpleNamespace(base=base, disk_dir=disk_dir, none=train("general", "none", base / "none"),
                           memory=train("general", "memory", base / "memory"),
                           disk=train("general", "disk", base / "disk", cache_dir=disk_dir))


# -- 1. the cached runs equal the uncached one -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_general_distiller_with_cache_trains_the_same_student_and_runs_the_teacher_in_epoch_one_only(general,
                                                                                                     mode):
    plain, cached = general.none, getattr(general, mode)
    assert max_diff(plain.student, cached.student) <= 1e-6
    assert plain.calls == EPOCHS * STEPS_PER_EPOCH
    assert cached.calls == STEPS_PER_EPOCH  # every batch of epoch 1, none later
    assert (cached.cache.misses, cached.cache.hits) == (STEPS_PER_EPOCH, (EPOCHS - 1) * STEPS_PER_EPOCH)
    assert len(cached.cache) == N_EXAMPLES
    assert plain.cache is None
    # the cached results really were re-padded: examples came back in batches of other lengths
    lengths = {}
    for length, tokens in cached.seen:
        lengths.setdefault(tokens, set()).add(length)
    assert len(lengths) == N_EXAMPLES and len(cached.seen) == EPOCHS * N_EXAMPLES
    assert sum(len(v) > 1 for v in lengths.values()) >= N_EXAMPLES // 2


@pytest.mark.slow
def test_disk_cache_holds_the_teachers_unpadded_outputs_per_example(general):
    """Read back single examples and compare with the teacher run on that example alone (no padding)."""
    teacher = general.disk.teachers[0].eval()
    cache = open_store("disk", general.disk.cache.fingerprint, directory=general.disk_dir)
    assert len(cache) == N_EXAMPLES
    index = load_file(os.path.join(general.disk_dir, "index-rank0.safetensors"))
    assert sorted(index["idx"].tolist()) == list(range(N_EXAMPLES))
    for k, row in enumerate(make_rows()):
        ids = torch.tensor([row["input_ids"]])
        mask = torch.ones_like(ids)
        got = cache.get(torch.tensor([k]), {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        torch.testing.assert_close(got["logits"][0], out.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["hidden"][2], out.hidden_states[2], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["attention"][3], out.attentions[3], atol=1e-5, rtol=0)
        assert isinstance(got["attention"], AttentionProbs)
        # only the matched layers are stored
        assert [i for i, t in enumerate(got["hidden"]) if t is not None] == [2]
        assert [i for i, t in enumerate(got["attention"]) if t is not None] == [3]
    assert cache.hits == N_EXAMPLES


@pytest.mark.parametrize("kind,n_teachers", [("basic", 1), ("multi", 2)])
def test_basic_and_multi_teacher_distillers_with_memory_cache_equal_uncached(tmp_path, kind, n_teachers):
    plain = train(kind, "none", tmp_path / "none")
    cached = train(kind, "memory", tmp_path / "memory")
    assert max_diff(plain.student, cached.student) <= 1e-6
    assert plain.calls == n_teachers * EPOCHS * STEPS_PER_EPOCH
    assert cached.calls == n_teachers * STEPS_PER_EPOCH
    assert (cached.cache.misses, cached.cache.hits) == (STEPS_PER_EPOCH, (EPOCHS - 1) * STEPS_PER_EPOCH)


# -- 2. a later run reuses the disk cache ----------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_on_the_same_disk_cache_never_runs_the_teacher(general, tmp_path):
    before = snapshot(general.disk_dir)
    again = train("general", "disk", tmp_path / "again", cache_dir=general.disk_dir)
    assert again.calls == 0
    assert (again.cache.misses, again.cache.hits) == (0, EPOCHS * STEPS_PER_EPOCH)
    assert max_diff(general.none.student, again.student) <= 1e-6
    assert snapshot(general.disk_dir) == before  # nothing new to write


# -- 3. refusals -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_changed_teacher_weight_is_refused_and_the_cache_left_untouched(general, tmp_path):
    cache_dir = str(tmp_path / "cache")
    shutil.copytree(general.disk_dir, cache_dir)
    before = snapshot(cache_dir)
    with pytest.raises(CheckpointError) as e:
        train("general", "disk", tmp_path / "run", cache_dir=cache_dir, bump_teacher=True)
    assert cache_dir in str(e.value) and "fingerprint" in str(e.value)
    assert snapshot(cache_dir) == before


@pytest.mark.slow
def test_changed_tokens_under_a_cached_index_are_refused(general, tmp_path):
    cache_dir = str(tmp_path / "cache")
    shutil.copytree(general.disk_dir, cache_dir)
    before = snapshot(cache_dir)
    with pytest.raises(CheckpointError) as e:
        train("general", "disk", tmp_path / "run", cache_dir=cache_dir, rows=make_rows(changed=7))
    msg = str(e.value)
    assert "idx=7" in msg and "tokens" in msg and "data changed" in msg and cache_dir in msg
    assert snapshot(cache_dir) == before


@pytest.mark.slow
def test_another_storage_dtype_is_refused(general, tmp_path):
    cache_dir = str(tmp_path / "cache")
    shutil.copytree(general.disk_dir, cache_dir)
    before = snapshot(cache_dir)
    with pytest.raises(CheckpointError, match="dtype float32.*float16"):
        train("general", "disk", tmp_path / "run", cache_dir=cache_dir, cache_dtype="float16")
    assert snapshot(cache_dir) == before
    # meta.json edited to say bfloat16: a float32 cache with the right fingerprint refuses it too
    meta_path = os.path.join(cache_dir, "meta.json")
    meta = json.loads(before["meta.json"])
    meta["dtype"] = "bfloat16"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    fp = general.disk.cache.fingerprint
    with pytest.raises(CheckpointError, match="bfloat16"):
        open_store("disk", fp, "float32", directory=cache_dir)
    meta["dtype"] = "float32"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    assert len(open_store("disk", fp, "float32", directory=cache_dir)) == N_EXAMPLES  # the control


# -- hand-built teacher results ---------------------------------------------------------------------------
H, D, C = 2, 3, 4


def examples(n_examples=5, seed=0) -> list[dict]:
    """Per-example 'teacher outputs', unpadded: tokens [n], logits [C], hidden [n, D] x2, attention [H, n, n]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in [5, 2, 4, 1, 3][:n_examples]:
        out.append({"ids": torch.randint(5, 60, (n,), generator=g), "logits": torch.randn(C, generator=g),
                    "lmask": torch.rand(n, generator=g) > 0.3,
                    "h1": torch.randn(n, D, generator=g), "h3": torch.randn(n, D, generator=g),
                    "att": torch.rand(H, n, n, generator=g)})
    return out


def batch_of(exs: list[dict], order: list[int], length: int, layout: str, junk: float = 7.0):
    """A padded batch of examples ``order`` and hand-padded teacher results; padded slots hold ``junk``.

    ``layout``: 'right', 'left' or 'holes' (real tokens at every other position first: a non-contiguous mask).
    Returns (idx, batch_T, results, positions) where positions[b] are row b's real positions."""
    B = len(order)
    ids = torch.zeros(B, length, dtype=torch.long)
    mask = torch.zeros(B, length, dtype=torch.long)
    logits = torch.zeros(B, C)
    lmask = torch.zeros(B, length, dtype=torch.bool)
    h1, h3 = torch.full((B, length, D), junk), torch.full((B, length, D), junk)
    att = torch.full((B, H, length, length), junk)
    positions = []
    for b, k in enumerate(order):
        e = exs[k]
        n = len(e["ids"])
        if layout == "right":
            pos = list(range(n))
        elif layout == "left":
            pos = list(range(length - n, length))
        else:
            pos = list(range(0, 2 * n, 2))
            assert pos[-1] < length
        positions.append(pos)
        for i, p in enumerate(pos):
            ids[b, p], mask[b, p], lmask[b, p] = e["ids"][i], 1, e["lmask"][i]
            h1[b, p], h3[b, p] = e["h1"][i], e["h3"][i]
            for j, q in enumerate(pos):
                att[b, :, p, q] = e["att"][:, i, j]
        logits[b] = e["logits"]
    results = {"logits": [logits], "logits_mask": [lmask], "hidden": [None, h1, None, h3, None],
               "attention": AttentionProbs([None, att])}
    return torch.tensor(order), {"input_ids": ids, "attention_mask": mask}, results, positions


def expected_batch(exs, order, length, positions, cast) -> dict:
    """What ``get`` must return: each example's values (through ``cast``) at its real positions, zeros elsewhere."""
    B = len(order)
    logits = torch.zeros(B, C)
    lmask = torch.zeros(B, length, dtype=torch.bool)
    h1, h3 = torch.zeros(B, length, D), torch.zeros(B, length, D)
    att = torch.zeros(B, H, length, length)
    for b, k in enumerate(order):
        e = exs[k]
        logits[b] = cast(e["logits"])
        for i, p in enumerate(positions[b]):
            lmask[b, p] = e["lmask"][i]
            h1[b, p], h3[b, p] = cast(e["h1"][i]), cast(e["h3"][i])
            for j, q in enumerate(positions[b]):
                att[b, :, p, q] = cast(e["att"][:, i, j])
    return {"logits": logits, "logits_mask": lmask, "h1": h1, "h3": h3, "att": att}


def check(got: dict, want: dict) -> None:
    assert set(got) == {"logits", "logits_mask", "hidden", "attention"}
    assert isinstance(got["attention"], AttentionProbs) and not isinstance(got["hidden"], AttentionProbs)
    assert got["hidden"][0] is None and got["hidden"][2] is None and got["hidden"][4] is None
    assert len(got["hidden"]) == 5 and len(got["attention"]) == 2 and got["attention"][0] is None
    pairs = [(got["logits"][0], want["logits"]), (got["logits_mask"][0], want["logits_mask"]),
             (got["hidden"][1], want["h1"]), (got["hidden"][3], want["h3"]), (got["attention"][1], want["att"])]
    for g, w in pairs:
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)


ROUNDING = {"float32": 0.0, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}  # unit roundoff


# -- 5. put / get round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_put_get_round_trip_through_right_left_and_non_contiguous_padding(tmp_path, mode, dtype):
    exs = examples()
    store = getattr(torch, dtype)

    def cast(t):
        return t.to(store).to(torch.float32)

    # the cast only rounds: within one unit roundoff (relative) of the original
    for e in exs:
        for key in ("logits", "h1", "h3", "att"):
            assert ((cast(e[key]) - e[key]).abs() <= ROUNDING[dtype] * e[key].abs()).all()
    cache = open_store(mode, "fp", dtype, directory=str(tmp_path / "c") if mode == "disk" else None)

    # stored from a right-padded batch (examples 0, 1, 2) and a left-padded one (3, 4)
    idx, bt, res, _ = batch_of(exs, [0, 1, 2], 6, "right")
    assert cache.get(idx, bt) is None  # nothing cached yet
    cache.put(idx, bt, res)
    idx, bt, res, _ = batch_of(exs, [3, 4], 4, "left")
    cache.put(idx, bt, res)
    assert len(cache) == 5
    idx, bt, _, _ = batch_of(exs, [4, 0, 1], 7, "right")  # one example missing from the cache...
    assert cache.get(torch.tensor([4, 0, 9]), bt) is None  # ...misses
    cache.flush()

    readers = [cache]
    if mode == "disk":  # and a fresh reader of the directory
        cache.close()
        readers.append(open_store("disk", "fp", dtype, directory=str(tmp_path / "c")))
    for reader in readers:
        for order, length, layout in [([4, 0, 1], 5, "right"),     # same examples, other batches
                                      ([2, 3, 0], 8, "left"),      # left padding, longer than stored
                                      ([1, 4, 2, 3], 9, "holes"),  # non-contiguous real positions
                                      ([0, 1, 2, 3, 4], 12, "right")]:  # re-padded much longer
            idx, bt, _, positions = batch_of(exs, order, length, layout)
            got = reader.get(idx, bt)
            assert got is not None
            check(got, expected_batch(exs, order, length, positions, cast))
            assert got["logits"][0].dtype == torch.float32 and got["logits_mask"][0].dtype == torch.bool
        assert reader.hits == 4


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_put_keeps_the_first_results_of_an_example_and_stores_only_new_ones(tmp_path, mode):
    exs = examples()
    cache = open_store(mode, "fp", "float32", directory=str(tmp_path / "c") if mode == "disk" else None)
    idx, bt, res, _ = batch_of(exs, [0, 1], 5, "right")
    cache.put(idx, bt, res)
    idx, bt, res, _ = batch_of(exs, [1, 2], 6, "left")
    doubled = {"logits": [res["logits"][0] * 2], "logits_mask": res["logits_mask"],
               "hidden": [None if t is None else t * 2 for t in res["hidden"]],
               "attention": AttentionProbs([None, res["attention"][1] * 2])}
    cache.put(idx, bt, doubled)  # example 1 is cached already: its new results are ignored
    assert len(cache) == 3
    idx, bt, _, positions = batch_of(exs, [2, 1, 0], 6, "right")
    want = expected_batch(exs, [2, 1, 0], 6, positions, lambda t: t)
    want["logits"][0] *= 2
    want["h1"][0] *= 2
    want["h3"][0] *= 2
    want["att"][0] *= 2
    check(cache.get(idx, bt), want)
    if mode == "disk":
        cache.close()
        assert os.path.getsize(tmp_path / "c" / "data-rank0.bin") == sum(map(entry_bytes, (5, 2, 4)))


def test_a_row_without_real_tokens_round_trips_as_zeros():
    cache = open_store("memory", "fp")
    ids = torch.tensor([[5, 6, 7], [0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long()}
    hidden = torch.randn(2, 3, 4)
    cache.put(torch.tensor([0, 1]), batch, {"hidden": [hidden]})
    got = cache.get(torch.tensor([0, 1]), batch)["hidden"][0]
    assert torch.equal(got[0], hidden[0]) and torch.equal(got[1], torch.zeros(3, 4))


def test_batch_of_helper_makes_a_non_contiguous_mask():
    # guard for the round-trip test: 'holes' really takes the fancy-indexing path
    _, bt, _, positions = batch_of(examples(), [0, 2], 9, "holes")
    assert positions == [[0, 2, 4, 6, 8], [0, 2, 4, 6]]
    assert bt["attention_mask"][1].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 0]


def test_token_hashes_ignore_padding_and_its_side():
    exs = examples()
    _, right, _, _ = batch_of(exs, [0, 1, 2], 6, "right")
    _, left, _, _ = batch_of(exs, [0, 1, 2], 9, "left")
    hr = token_hashes(right["input_ids"], right["attention_mask"])
    assert hr == token_hashes(left["input_ids"], left["attention_mask"])
    assert len(set(hr)) == 3 and all(0 <= h < 2 ** 63 for h in hr)


# -- 4. crash consistency ---------------------------------------------------------------------------------

def entry_bytes(n: int) -> int:
    """float32 bytes one example of ``examples()`` takes: logits C + mask n + 2 hidden n*D + attention H*n*n."""
    return 4 * (C + n + 2 * n * D + H * n * n)


def killed_writer(directory: str, garbage: bytes) -> int:
    """Examples 0, 1 stored and flushed; 2, 3 stored but never flushed (their bytes reached the file, as a
    killed process may leave them), then ``garbage`` appended. Returns the flushed data size in bytes."""
    exs = examples()
    data = os.path.join(directory, "data-rank0.bin")
    writer = open_store("disk", "fp", "float32", directory=directory)
    idx, bt, res, _ = batch_of(exs, [0, 1], 5, "right")
    writer.put(idx, bt, res)
    writer.flush()
    flushed = os.path.getsize(data)
    assert flushed == entry_bytes(5) + entry_bytes(2)
    idx, bt, res, _ = batch_of(exs, [2, 3], 4, "right")
    writer.put(idx, bt, res)  # no flush: the index does not name them
    writer._writer.flush()
    writer._writer.close()  # the process dies here
    with open(data, "ab") as f:
        f.write(garbage)
    assert os.path.getsize(data) == flushed + entry_bytes(4) + entry_bytes(1) + len(garbage)
    return flushed


@pytest.mark.parametrize("garbage", [
    b"\x13garbage-after-a-crash!" * 4,  # 96 bytes: whole float32 words
    b"\x13garbage-after-a-crash" * 3,  # 66 bytes: a torn last word
])
def test_a_reopened_cache_sees_only_the_flushed_entries_of_a_killed_writer(tmp_path, garbage):
    exs = examples()
    d = str(tmp_path / "c")
    killed_writer(d, garbage)
    size = os.path.getsize(os.path.join(d, "data-rank0.bin"))
    reopened = open_store("disk", "fp", "float32", directory=d)
    assert len(reopened) == 2
    assert reopened.get(torch.tensor([2]), batch_of(exs, [2], 4, "right")[1]) is None
    for order in ([0], [1], [1, 0]):
        idx, bt, _, positions = batch_of(exs, order, 6, "left")
        check(reopened.get(idx, bt), expected_batch(exs, order, 6, positions, lambda t: t))
    reopened.close()  # nothing appended: nothing written
    assert os.path.getsize(os.path.join(d, "data-rank0.bin")) == size


def test_the_next_append_cuts_a_killed_writers_bytes_and_keeps_every_flushed_entry(tmp_path):
    exs = examples()
    d = str(tmp_path / "c")
    data = os.path.join(d, "data-rank0.bin")
    flushed = killed_writer(d, b"\x13garbage-after-a-crash!" * 4)
    reopened = open_store("disk", "fp", "float32", directory=d)
    idx, bt, res, _ = batch_of(exs, [2, 3, 4], 6, "right")
    reopened.put(idx, bt, res)
    reopened.close()
    assert os.path.getsize(data) == flushed + entry_bytes(4) + entry_bytes(1) + entry_bytes(3)
    final = open_store("disk", "fp", "float32", directory=d)
    assert len(final) == 5
    order = [3, 1, 4, 0, 2]
    idx, bt, _, positions = batch_of(exs, order, 10, "holes")
    check(final.get(idx, bt), expected_batch(exs, order, 10, positions, lambda t: t))


@pytest.mark.slow
def test_a_run_with_more_examples_extends_a_disk_cache(general, tmp_path):
    """A first run caches 12 examples; a second run over all 20 adds the other 8 to the same directory."""
    cache_dir = str(tmp_path / "cache")
    first = train("general", "disk", tmp_path / "first", rows=make_rows()[:12], cache_dir=cache_dir)
    assert len(first.cache) == 12
    second = train("general", "disk", tmp_path / "second", cache_dir=cache_dir)
    assert len(second.cache) == N_EXAMPLES
    assert max_diff(general.none.student, second.student) <= 1e-6
    reader = open_store("disk", first.cache.fingerprint, directory=cache_dir)
    teacher = first.teachers[0].eval()
    for k, row in enumerate(make_rows()):
        ids = torch.tensor([row["input_ids"]])
        got = reader.get(torch.tensor([k]), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        with torch.no_grad():
            torch.testing.assert_close(got["logits"][0], teacher(input_ids=ids).logits, atol=1e-5, rtol=0)


# -- 6. bad inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,path,fragment", [
    ({"teacher_cache": "ram"}, "teacher_cache", "'memory'"),
    ({"teacher_cache": "disk", "teacher_cache_dtype": "int8"}, "teacher_cache_dtype", "'bfloat16'"),
    ({"teacher_cache": "disk", "teacher_cache_dir": ""}, "teacher_cache_dir", "directory"),
    ({"teacher_cache": "memory", "is_caching_logits": True}, "teacher_cache", "is_caching_logits"),
])
def test_bad_teacher_cache_settings_name_the_field(kw, path, fragment):
    with pytest.raises(ConfigError) as e:
        DistillationConfig(**kw)
    assert e.value.path == path
    assert fragment in str(e.value)


def test_a_batch_without_idx_is_a_config_error(tmp_path):
    teacher, student = tiny_bert(num_layers=2, seed=0), tiny_bert(num_layers=1, seed=1)
    rows = [{k: v for k, v in r.items() if k != "idx"} for r in make_rows()]
    loader = torch.utils.data.DataLoader(rows, batch_size=BATCH, collate_fn=PadCollator(0))
    tc = TrainingConfig(output_dir=str(tmp_path), device="cpu", progress_bar=False)
    d = BasicDistiller(tc, DistillationConfig(teacher_cache="memory"), teacher, student)
    with pytest.raises(ConfigError, match="'idx'") as e:
        d.train(torch.optim.SGD(student.parameters(), lr=0.1), loader, num_epochs=1)
    assert e.value.path == "teacher_cache"


def test_multi_task_distiller_refuses_the_teacher_cache(tmp_path):
    teachers = {"a": tiny_bert(num_layers=2, seed=0), "b": tiny_bert(num_layers=2, seed=2)}
    tc = TrainingConfig(output_dir=str(tmp_path), device="cpu", progress_bar=False)
    with pytest.raises(ConfigError) as e:
        MultiTaskDistiller(tc, DistillationConfig(teacher_cache="memory"), teachers, tiny_bert(1, seed=1))
    assert e.value.path == "teacher_cache"
    MultiTaskDistiller(tc, DistillationConfig(), teachers, tiny_bert(1, seed=1))  # the control


# -- 7. YAML runs ---------------------------------------------------------------------------------------------
def test_yaml_run_with_a_disk_cache_fills_it_and_trains_the_same_student(assets, tmp_path):
    from safetensors.torch import load_file as load_weights

    summaries = {}
    for mode in ("none", "disk"):
        d = run_dict(assets, tmp_path / mode)
        d["training"]["num_epochs"] = 2
        d["distillation"]["teacher_cache"] = mode
        # projections are initialised from the global RNG while the run is built (before training.seed is
        # applied), so both runs start from the same global state
        torch.manual_seed(0)
        summaries[mode] = train_run(load_run(write_run(tmp_path / f"{mode}.yaml", d)))
    cache_dir = tmp_path / "disk" / "teacher_cache"
    assert sorted(os.listdir(cache_dir)) == ["data-rank0.bin", "index-rank0.safetensors", "meta.json"]
    meta = json.loads((cache_dir / "meta.json").read_text())
    assert meta["dtype"] == "float32" and len(meta["fingerprint"]) == 64
    index = load_file(str(cache_dir / "index-rank0.safetensors"))
    assert sorted(index["idx"].tolist()) == list(range(32))  # the 32 train rows, each once
    assert not (tmp_path / "none" / "teacher_cache").exists()
    assert summaries["disk"]["steps"] == summaries["none"]["steps"] == 8
    assert summaries["disk"]["eval_accuracy"] == summaries["none"]["eval_accuracy"]
    w_none = load_weights(str(tmp_path / "none" / "final" / "model.safetensors"))
    w_disk = load_weights(str(tmp_path / "disk" / "final" / "model.safetensors"))
    assert w_none.keys() == w_disk.keys()
    for k in w_none:
        torch.testing.assert_close(w_disk[k], w_none[k], atol=1e-6, rtol=0)


# -- 8. resuming -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_uncached_checkpoint_resumes_with_the_memory_cache(general, tmp_path):
    out = tmp_path / "part"
    part = train("general", "none", out, stop_at=6)  # 4 steps per epoch: step 6 is mid-epoch 2
    assert part.dist.global_step == 6 and os.path.isdir(out / "checkpoint-6")
    # the fingerprint check is live: another temperature is refused...
    with pytest.raises(CheckpointError, match="different run"):
        train("general", "memory", out, resume=True, temperature=3)
    # ...while switching the cache on is not
    resumed = train("general", "memory", out, resume=True)
    assert resumed.dist.global_step == EPOCHS * STEPS_PER_EPOCH
    assert resumed.cache.hits + resumed.cache.misses == 6 and resumed.calls == resumed.cache.misses
    assert max_diff(general.none.student, resumed.student) <= 1e-6
    assert max_diff(general.none.student, part.student) > 1e-3  # the control: the partial run differs


def test_the_stored_layout_does_not_depend_on_the_order_of_the_result_keys(tmp_path):
    """Processes may build the results dict in different orders (a set's order follows PYTHONHASHSEED); a disk
    cache written by one must read back right in another, and accept its writes."""
    bt = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    hidden = [torch.arange(24.).reshape(2, 3, 4), torch.arange(24., 48.).reshape(2, 3, 4)]
    att = AttentionProbs([torch.arange(36.).reshape(2, 2, 3, 3)])
    logits = [torch.tensor([[1., 2.], [3., 4.]])]
    d = str(tmp_path / "c")
    first = open_store("disk", "fp", "float32", directory=d)
    first.put(torch.tensor([0, 1]), bt, {"logits": logits, "hidden": hidden, "attention": att})
    first.close()
    second = open_store("disk", "fp", "float32", directory=d, rank=1)
    second.put(torch.tensor([2]), {k: v[:1] for k, v in bt.items()},
               {"attention": AttentionProbs([att[0][:1]]), "hidden": [h[:1] for h in hidden],
                "logits": [logits[0][:1]]})
    got = second.get(torch.tensor([1, 2]), {"input_ids": torch.tensor([[8, 9, 0], [5, 6, 7]]),
                                            "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])})
    assert torch.equal(got["logits"][0], torch.tensor([[3., 4.], [1., 2.]]))
    assert torch.equal(got["hidden"][1][0, :2], hidden[1][1, :2]) and not got["hidden"][1][0, 2].any()
    assert torch.equal(got["hidden"][0][1], hidden[0][0])
    assert isinstance(got["attention"], AttentionProbs)
    assert torch.equal(got["attention"][0][0, :, :2, :2], att[0][1, :, :2, :2])
    assert torch.equal(got["attention"][0][1], att[0][0])

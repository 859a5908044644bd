"""examples/distill_causal_lm.py: the fused-KD distiller's loss equals KL on full logits over the next-token
mask, no full logits are made while distilling, and the --quick run finishes with a student that improved."""
import importlib.util
import json
import math
import os

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example():
    path = os.path.join(REPO, "examples", "distill_causal_lm.py")
    spec = importlib.util.spec_from_file_location("distill_causal_lm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_next_token_mask():
    ex = example()
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(ex.next_token_mask(attention), want)


def test_fused_distiller_loss_equals_kl_on_full_logits_and_makes_no_full_logits(tmp_path):
    from brewkit import DistillationConfig, TrainingConfig

    ex = example()
    teacher = ex.gpt2(vocab_size=60, length=8, width=16, layers=2, heads=2, seed=0)
    student = ex.gpt2(vocab_size=60, length=8, width=8, layers=1, heads=2, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 60, (3, 8), generator=g)
    attention = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    batch = {"input_ids": ids.masked_fill(attention == 0, 0), "attention_mask": attention}
    with torch.no_grad():  # the reference: full logits, KL(p_T || p_S) at tau = 2 over positions with a next token
        z_s = student(**batch).logits[:, :-1][attention[:, 1:].bool()]
        z_t = teacher(**batch).logits[:, :-1][attention[:, 1:].bool()]
        log_p_s, log_p_t = F.log_softmax(z_s / 2, -1), F.log_softmax(z_t / 2, -1)
        want = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean().item()
    seen = []
    hooks = [m.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[1]))
             for m in (teacher, student)]
    distiller = ex.FusedKDDistiller(
        TrainingConfig(output_dir=str(tmp_path), device="cpu", logging_steps=1, progress_bar=False),
        DistillationConfig(temperature=2.0), teacher, student)
    distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), [batch], num_steps=1, logits_to_keep=1)
    for h in hooks:
        h.remove()
    with open(tmp_path / "metrics.jsonl") as f:
        record = json.loads(f.readline())
    assert math.isclose(record["unweighted_kd_loss"], want, rel_tol=1e-5)
    assert seen == [1, 1]  # both LM heads ran on one position only


def test_quick_run_finishes_and_distillation_improves_the_student(tmp_path):
    ex = example()
    result = ex.main(["--quick", "--output-dir", str(tmp_path)])
    assert set(result) == {"teacher_ppl", "student_ppl_before", "distilled_ppl", "alone_ppl"}
    assert all(math.isfinite(v) and v > 1 for v in result.values())
    assert result["distilled_ppl"] < 0.8 * result["student_ppl_before"]
    assert result["teacher_ppl"] < result["student_ppl_before"]

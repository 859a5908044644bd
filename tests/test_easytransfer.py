"""EasyTransfer KD losses: the original's numbers (quirks included) and the fixed versions, by hand arithmetic."""
import math
import warnings

import pytest
import torch

from brewkit.errors import ConfigError
from brewkit.layer_maps import proportional_layer_map
from brewkit.losses.easytransfer import build_kd_loss, build_kd_probes_loss, probe_layer_pairs

T_ROWS = [[1.0, 2.0], [3.0, 0.5]]
S_ROWS = [[0.5, 0.0], [1.0, 1.5]]
Y = [1, 0]
TEACHER = torch.tensor(T_ROWS, dtype=torch.float64)
STUDENT = torch.tensor(S_ROWS, dtype=torch.float64)
LABELS = torch.tensor(Y)


def softmax(row, temp=1.0):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def ce(row, label):
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def task_term():
    return sum(ce(s, y) for s, y in zip(S_ROWS, Y)) / 2


# -- mse ------------------------------------------------------------------------------------------------------
def test_mse_faithful_is_half_sum_over_everything():
    # differences 0.5, 2, 2, -1 -> squares 0.25 + 4 + 4 + 1 = 9.25 -> tf.nn.l2_loss = 4.625
    assert build_kd_loss(TEACHER, STUDENT).item() == pytest.approx(4.625)
    # labels, temperature and task_balance are ignored
    assert build_kd_loss(TEACHER, STUDENT, task_balance=0.9, distill_temperature=7.0, labels=LABELS).item() == \
        pytest.approx(4.625)
    # it grows with the batch (a sum, not a mean)
    doubled = build_kd_loss(TEACHER.repeat(2, 1), STUDENT.repeat(2, 1)).item()
    assert doubled == pytest.approx(9.25)


def test_mse_fixed_is_elementwise_mean():
    assert build_kd_loss(TEACHER, STUDENT, faithful=False).item() == pytest.approx(9.25 / 4)
    assert build_kd_loss(TEACHER.repeat(3, 1), STUDENT.repeat(3, 1), faithful=False).item() == pytest.approx(9.25 / 4)


# -- xent -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("faithful", [True, False])
def test_xent_softens_only_the_teacher(faithful):
    tb, temp = 0.3, 2.0
    distill = 0.0
    for t, s in zip(T_ROWS, S_ROWS):
        p_t = softmax(t, temp)
        log_p_s = [math.log(v) for v in softmax(s)]          # student at T = 1
        distill += -sum(a * b for a, b in zip(p_t, log_p_s))
    want = tb * task_term() + (1 - tb) * distill / 2
    got = build_kd_loss(TEACHER, STUDENT, tb, temp, LABELS, "xent", faithful=faithful).item()
    assert got == pytest.approx(want, abs=1e-12)
    if not faithful:
        sq = build_kd_loss(TEACHER, STUDENT, tb, temp, LABELS, "xent", faithful=False, temperature_squared=True)
        assert sq.item() == pytest.approx(tb * task_term() + (1 - tb) * temp**2 * distill / 2, abs=1e-12)


def test_xent_never_sends_gradient_to_the_teacher():
    t = TEACHER.clone().requires_grad_(True)
    s = STUDENT.clone().requires_grad_(True)
    build_kd_loss(t, s, labels=LABELS, loss_type="xent").backward()
    assert t.grad is None and s.grad is not None


# -- kld ------------------------------------------------------------------------------------------------------
def faithful_kld_distill(t_rows, s_rows, temp):
    total = 0.0
    for t, s in zip(t_rows, s_rows):
        p_s, q_t = softmax(s, temp), softmax(t, temp)     # the +1e-5 inside the softmax cancels
        total += sum(a * math.log(a - math.log(b)) for a, b in zip(p_s, q_t))
    return total


def test_kld_faithful_reproduces_the_misplaced_parenthesis():
    tb, temp = 0.3, 2.0
    want = tb * task_term() + (1 - tb) * faithful_kld_distill(T_ROWS, S_ROWS, temp)
    got = build_kd_loss(TEACHER, STUDENT, tb, temp, LABELS, "kld").item()
    assert got == pytest.approx(want, abs=1e-9)


def test_kld_faithful_is_not_a_divergence_and_sums_over_the_batch():
    same = build_kd_loss(STUDENT, STUDENT, 0.0, 2.0, LABELS, "kld").item()
    assert same == pytest.approx(faithful_kld_distill(S_ROWS, S_ROWS, 2.0), abs=1e-9)
    assert abs(same) > 0.1                     # a divergence would be 0 here
    s = STUDENT.clone().requires_grad_(True)
    build_kd_loss(STUDENT, s, 0.0, 2.0, LABELS, "kld").backward()
    assert s.grad.abs().max().item() > 1e-3    # ... and not stationary at p_s = p_t
    doubled = build_kd_loss(TEACHER.repeat(2, 1), STUDENT.repeat(2, 1), 0.0, 2.0, LABELS.repeat(2), "kld").item()
    single = build_kd_loss(TEACHER, STUDENT, 0.0, 2.0, LABELS, "kld").item()
    assert doubled == pytest.approx(2 * single, abs=1e-9)


def test_kld_faithful_lets_gradient_reach_the_teacher_fixed_does_not():
    t = TEACHER.clone().requires_grad_(True)
    build_kd_loss(t, STUDENT, labels=LABELS, loss_type="kld").backward()
    assert t.grad is not None and t.grad.abs().sum().item() > 0
    t2 = TEACHER.clone().requires_grad_(True)
    build_kd_loss(t2, STUDENT.clone().requires_grad_(True), labels=LABELS, loss_type="kld", faithful=False).backward()
    assert t2.grad is None


@pytest.mark.parametrize("direction", ["student||teacher", "teacher||student"])
def test_kld_fixed_is_a_batch_mean_kl(direction):
    tb, temp = 0.25, 3.0
    kl = 0.0
    for t, s in zip(T_ROWS, S_ROWS):
        p_s, p_t = softmax(s, temp), softmax(t, temp)
        a, b = (p_s, p_t) if direction == "student||teacher" else (p_t, p_s)
        kl += sum(x * (math.log(x + 1e-5) - math.log(y + 1e-5)) for x, y in zip(a, b))
    want = tb * task_term() + (1 - tb) * kl / 2
    got = build_kd_loss(TEACHER, STUDENT, tb, temp, LABELS, "kld", faithful=False, kl_direction=direction).item()
    assert got == pytest.approx(want, abs=1e-12)
    sq = build_kd_loss(TEACHER, STUDENT, tb, temp, LABELS, "kld", faithful=False, kl_direction=direction,
                       temperature_squared=True).item()
    assert sq == pytest.approx(tb * task_term() + (1 - tb) * temp**2 * kl / 2, abs=1e-12)
    # a real divergence: zero at p_s = p_t
    assert build_kd_loss(STUDENT, STUDENT, 0.0, temp, LABELS, "kld", faithful=False).item() == pytest.approx(0.0,
                                                                                                             abs=1e-12)


def test_unknown_loss_type_is_kld_when_faithful_and_an_error_when_fixed():
    kld = build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="kld").item()
    with pytest.warns(UserWarning, match="'kl_div'"):
        typo = build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="kl_div").item()
    assert typo == kld
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="kld")
    with pytest.raises(ConfigError, match="unknown loss_type 'kl_div'") as e:
        build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="kl_div", faithful=False)
    assert e.value.path == "loss_type"


# -- labels and other arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["xent", "kld"])
def test_label_handling(loss_type):
    a = build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type=loss_type)
    b = build_kd_loss(TEACHER, STUDENT, labels=LABELS[:, None], loss_type=loss_type)
    assert a.item() == b.item()
    # batch of one with [1, 1] labels (the original's squeeze crashed here)
    one = build_kd_loss(TEACHER[:1], STUDENT[:1], labels=LABELS[:1, None], loss_type=loss_type, faithful=False)
    flat = build_kd_loss(TEACHER[:1], STUDENT[:1], labels=LABELS[:1], loss_type=loss_type, faithful=False)
    assert torch.isfinite(one) and one.item() == pytest.approx(flat.item(), abs=1e-12)
    with pytest.raises(ConfigError, match="needs integer class labels") as e:
        build_kd_loss(TEACHER, STUDENT, loss_type=loss_type)
    assert e.value.path == "labels"
    with pytest.raises(ConfigError, match="integer class ids"):
        build_kd_loss(TEACHER, STUDENT, labels=LABELS.double(), loss_type=loss_type)
    with pytest.raises(ConfigError, match=r"\[B\] or \[B, 1\]"):
        build_kd_loss(TEACHER, STUDENT, labels=torch.tensor([0, 1, 1]), loss_type=loss_type)


def test_other_argument_errors_and_the_misspelt_keyword():
    with pytest.raises(ConfigError) as e:
        build_kd_loss(TEACHER, STUDENT[:, :1])
    assert e.value.path == "student_logits"
    with pytest.raises(ConfigError) as e:
        build_kd_loss(TEACHER, STUDENT, distill_temperature=0)
    assert e.value.path == "distill_temperature"
    with pytest.raises(ConfigError) as e:
        build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="kld", kl_direction="teacher||student")
    assert e.value.path == "faithful"
    with pytest.raises(ConfigError) as e:
        build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="kld", faithful=False, kl_direction="both")
    assert e.value.path == "kl_direction"
    a = build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="xent", distill_tempreture=5.0)
    b = build_kd_loss(TEACHER, STUDENT, labels=LABELS, loss_type="xent", distill_temperature=5.0)
    assert a.item() == b.item()


# -- probes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_t, n_s, ceil_map, floor_map", [
    (13, 5, [0, 3, 6, 9], [0, 3, 6, 9]),
    (13, 6, [0, 3, 5, 8, 10], [0, 2, 4, 7, 9]),
    (3, 5, [0, 1, 1, 2], [0, 0, 1, 1]),       # student deeper: the teacher's last entry can be reused
    (13, 1, [], []),
])
def test_probe_layer_maps(n_t, n_s, ceil_map, floor_map):
    assert probe_layer_pairs(n_t, n_s) == list(enumerate(ceil_map))
    assert probe_layer_pairs(n_t, n_s, "floor") == list(enumerate(floor_map))
    assert [j for _, j in probe_layer_pairs(n_t, n_s)] == [math.ceil(i * (n_t - 1) / (n_s - 1))
                                                         for i in range(n_s - 1)]


def test_probes_loss_sums_the_mapped_pairs():
    # teacher probe j = j * ones, student probes = 0: each mse pair costs 0.5 * (B * C) * j^2 = 2 j^2
    teacher = [torch.full((2, 2), float(j)) for j in range(13)]
    student = [torch.zeros(2, 2) for _ in range(5)]
    assert build_kd_probes_loss(teacher, student).item() == pytest.approx(2 * (0 + 9 + 36 + 81))
    assert build_kd_probes_loss(teacher, student, faithful=False).item() == pytest.approx(0 + 9 + 36 + 81)
    six = [torch.zeros(2, 2) for _ in range(6)]
    assert build_kd_probes_loss(teacher, six, layer_map="floor").item() == pytest.approx(2 * (0 + 4 + 16 + 49 + 81))
    assert build_kd_probes_loss(teacher, student[:1]).item() == 0.0


def test_probes_with_labels_match_summed_build_kd_loss():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(4, 3, generator=g) for _ in range(13)]
    student = [torch.randn(4, 3, generator=g) for _ in range(6)]
    labels = torch.tensor([0, 2, 1, 2])
    for lt in ("xent", "kld"):
        got = build_kd_probes_loss(teacher, student, 0.4, 3.0, labels, lt).item()
        want = sum(build_kd_loss(teacher[j], student[i], 0.4, 3.0, labels, lt).item()
                   for i, j in [(0, 0), (1, 3), (2, 5), (3, 8), (4, 10)])
        assert got == pytest.approx(want, rel=1e-6)


def test_probe_map_is_the_proportional_layer_map():
    # hidden-state probes: index 0 = embeddings, index l = layer l; the probes map is preset "proportional"
    for n_layers_t, n_layers_s in [(12, 4), (12, 5), (12, 6), (24, 7), (6, 6)]:
        teacher_layers = [0] + proportional_layer_map(n_layers_t, n_layers_s)
        assert [j for _, j in probe_layer_pairs(n_layers_t + 1, n_layers_s + 1)] == teacher_layers[:-1]


def test_probes_bad_inputs():
    with pytest.raises(ConfigError) as e:
        build_kd_probes_loss(torch.zeros(3, 2), [torch.zeros(3, 2)])
    assert e.value.path == "teacher_logits"
    with pytest.raises(ConfigError) as e:
        build_kd_probes_loss([torch.zeros(3, 2)], [])
    assert e.value.path == "student_logits"
    with pytest.raises(ConfigError) as e:
        build_kd_probes_loss([torch.zeros(3, 2)] * 3, [torch.zeros(3, 2)] * 3, layer_map="round")
    assert e.value.path == "layer_map"

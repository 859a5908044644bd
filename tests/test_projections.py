"""Projections: shapes, initialisation, activations."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

from brewkit.errors import ConfigError  # noqa: E402
from brewkit.presets import PROJ_MAP  # noqa: E402
from brewkit.projections import init_weights, linear_projection, projection_with_activation  # noqa: E402


def linear_of(module):
    return module if isinstance(module, nn.Linear) else module[0]


@pytest.mark.parametrize("name", list(PROJ_MAP))
@pytest.mark.parametrize("shape", [(2, 7, 8), (3, 8)])
def test_output_shapes(name, shape):
    torch.manual_seed(0)
    proj = PROJ_MAP[name](8, 12)
    out = proj(torch.randn(*shape))
    assert out.shape == shape[:-1] + (12,)
    lin = linear_of(proj)
    assert (lin.in_features, lin.out_features) == (8, 12)
    assert lin.bias is not None


def test_required_names():
    assert {"linear", "relu", "tanh"} <= set(PROJ_MAP)


@pytest.mark.parametrize("name", ["linear", "relu", "tanh"])
def test_init_statistics(name):
    torch.manual_seed(1)
    lin = linear_of(PROJ_MAP[name](512, 768))
    w = lin.weight.detach()
    assert w.std().item() == pytest.approx(0.02, rel=0.02)  # 393k samples: std error ~0.1%
    assert abs(w.mean().item()) < 1e-3
    assert torch.count_nonzero(lin.bias).item() == 0


def test_activations_applied():
    torch.manual_seed(2)
    x = torch.randn(4, 6)
    for name, act in (("linear", lambda y: y), ("relu", torch.relu), ("tanh", torch.tanh)):
        proj = PROJ_MAP[name](6, 5)
        lin = linear_of(proj)
        expected = act(x @ lin.weight.T + lin.bias)
        torch.testing.assert_close(proj(x), expected)
    assert isinstance(PROJ_MAP["relu"](6, 5)[1], nn.ReLU)
    assert isinstance(PROJ_MAP["tanh"](6, 5)[1], nn.Tanh)


@pytest.mark.parametrize("name", ["relu", "tanh"])
def test_each_projection_has_its_own_activation(name):
    a, b = PROJ_MAP[name](4, 4), PROJ_MAP[name](4, 4)
    assert a[1] is not b[1]
    assert a[0] is not b[0]
    assert a[0].weight.data_ptr() != b[0].weight.data_ptr()


def test_activation_by_name_class_and_instance():
    torch.manual_seed(3)
    x = torch.randn(5, 3) * 3
    by_name = projection_with_activation("GELU")(3, 4)
    assert isinstance(by_name[1], nn.GELU)
    by_class = projection_with_activation(nn.Softplus)(3, 4)
    assert isinstance(by_class[1], nn.Softplus)
    torch.testing.assert_close(by_class(x), F.softplus(x @ by_class[0].weight.T + by_class[0].bias))
    template = nn.LeakyReLU(negative_slope=0.3)
    factory = projection_with_activation(template)
    p1, p2 = factory(3, 4), factory(3, 4)
    assert p1[1] is not template and p2[1] is not template and p1[1] is not p2[1]
    assert p1[1].negative_slope == 0.3
    y = x @ p1[0].weight.T + p1[0].bias
    torch.testing.assert_close(p1(x), torch.where(y > 0, y, 0.3 * y))


@pytest.mark.parametrize("bad", ["NoSuchActivation", "functional", 3, None, torch.relu])
def test_bad_activation(bad):
    with pytest.raises(ConfigError, match="activation") as e:
        projection_with_activation(bad)
    assert e.value.path == "projection"


def test_init_weights_touches_linear_and_embedding_only():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Embedding(1000, 64), nn.Linear(64, 64), nn.LayerNorm(64))
    with torch.no_grad():
        model[1].bias.fill_(5.0)
        model[2].weight.fill_(3.0)
    init_weights(model, std=0.05)
    assert model[0].weight.std().item() == pytest.approx(0.05, rel=0.03)
    assert model[1].weight.std().item() == pytest.approx(0.05, rel=0.1)
    assert torch.count_nonzero(model[1].bias).item() == 0
    assert (model[2].weight == 3.0).all()  # LayerNorm untouched


def test_projection_trains():
    torch.manual_seed(5)
    proj = linear_projection(4, 2)
    x = torch.randn(8, 4)
    proj(x).pow(2).sum().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0

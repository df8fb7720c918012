"""Model shapes, parameter counts and seeded initialization."""

from __future__ import annotations

import pytest
import torch

from fedlab_app.config import ModelCfg
from fedlab_app.models import build_model


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_lenet5_classic_28x28():
    """LeNet-5 with padding 2 on 28x28: 156 + 2416 + 48120 + 10164 + 850 = 61,706 parameters."""
    m = build_model(ModelCfg("lenet5"), (1, 28, 28), 10)
    assert n_params(m) == 61_706
    assert m(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_lenet5_32x32_rgb_with_bn_and_dropout():
    """32x32x3 without padding: 456 + 2416 + 48120 + 10164 + 850 = 62,006 (+ 2*(6+16) BN affine)."""
    plain = build_model(ModelCfg("lenet5"), (3, 32, 32), 10)
    assert n_params(plain) == 62_006
    bn = build_model(ModelCfg("lenet5", batchnorm=True, dropout=0.5), (3, 32, 32), 100)
    assert n_params(bn) == 62_006 + 2 * (6 + 16) + 90 * 85  # 100 classes: 84*100+100 instead of 84*10+10
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in bn.modules()) == 2
    assert sum(isinstance(x, torch.nn.Dropout) for x in bn.modules()) >= 1
    assert bn(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_cnn64_filters_and_output():
    m = build_model(ModelCfg("cnn64"), (3, 32, 32), 10)
    convs = [x.out_channels for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert convs == [64, 128, 64]
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelCfg("lenet5"), (1, 28, 28), 10, seed=5)
    assert torch.equal(torch.rand(1), before)  # fork_rng: the global stream is untouched
    b = build_model(ModelCfg("lenet5"), (1, 28, 28), 10, seed=5)
    c = build_model(ModelCfg("lenet5"), (1, 28, 28), 10, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_bad_input_size():
    with pytest.raises(ValueError, match="28x28 or 32x32"):
        build_model(ModelCfg("lenet5"), (1, 64, 64), 10)

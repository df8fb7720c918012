"""Tests of the batched random crop + flip (clients/augment.py) against a per-sample reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clients.augment import Augmenter, crop_flip_indices, random_crop_flip, sample_crop_flip

SHAPES = [(16, 3, 32, 32), (16, 1, 28, 28), (12, 3, 9, 14), (12, 1, 13, 5)]  # (N, C, H, W)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clone(g: torch.Generator) -> torch.Generator:
    """A generator in the same state as ``g``."""
    return torch.Generator().set_state(g.get_state())


def reference(x: torch.Tensor, pad: int, g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per-sample crop + flip with plain slicing, from the same drawn offsets and flags."""
    oy, ox, flipped = sample_crop_flip(x.shape[0], pad, g, flip)
    xp = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    out = []
    for k in range(x.shape[0]):
        crop = xp[k, :, int(oy[k]):int(oy[k]) + h, int(ox[k]):int(ox[k]) + w]
        out.append(torch.flip(crop, dims=[-1]) if flipped[k] else crop)
    return torch.stack(out)


def images(shape, dtype=torch.uint8, seed=0) -> torch.Tensor:
    """Random images with no zero pixel (so zeros in the output can only come from padding)."""
    return torch.randint(1, 256, shape, generator=gen(seed)).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pad", [1, 4])
@pytest.mark.parametrize("flip", [True, False])
def test_matches_per_sample_reference(shape, pad, flip):
    x = images(shape)
    g = gen(3)
    expected = reference(x, pad, clone(g), flip)
    out = random_crop_flip(x, pad, g, flip)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, expected)


def test_flip_only_matches_reference():
    x = images((32, 3, 8, 8))
    g = gen(5)
    expected = reference(x, 0, clone(g), True)
    out = random_crop_flip(x, 0, g, True)
    assert torch.equal(out, expected)
    flipped = [torch.equal(out[k], x[k].flip(-1)) for k in range(32)]
    assert 0 < sum(flipped) < 32  # some flipped, some not (seeded)


def test_indices_consistent_with_draws():
    """rows = oy + arange(h); cols = ox + arange(w), reversed where flipped; same generator use."""
    g = gen(11)
    oy, ox, flipped = sample_crop_flip(64, 3, clone(g), True)
    rows, cols = crop_flip_indices(64, 5, 7, 3, g, True)
    assert rows.shape == (64, 5) and cols.shape == (64, 7)
    assert rows.dtype == cols.dtype == torch.int64
    assert torch.equal(rows, oy[:, None] + torch.arange(5))
    fwd = ox[:, None] + torch.arange(7)
    assert torch.equal(cols[~flipped], fwd[~flipped])
    assert torch.equal(cols[flipped], fwd[flipped].flip(1))


def test_draw_order_is_pinned():
    """Reproducibility across versions: (oy, ox) from one randint (2, n), then the flip flags."""
    g = gen(21)
    oy_ox = torch.randint(0, 9, (2, 50), generator=g)
    flags = torch.randint(0, 2, (50,), generator=g).bool()
    oy, ox, flipped = sample_crop_flip(50, 4, gen(21), True)
    assert torch.equal(oy, oy_ox[0]) and torch.equal(ox, oy_ox[1]) and torch.equal(flipped, flags)


def test_generator_advanced_like_crop_flip_indices():
    g1, g2 = gen(2), gen(2)
    random_crop_flip(images((10, 3, 6, 6)), 2, g1)
    crop_flip_indices(10, 6, 6, 2, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_shape_and_dtype_preserved(dtype):
    x = images((8, 3, 10, 12), dtype)
    out = Augmenter(pad=4)(x, gen(0))
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()


def test_deterministic_for_seed_and_different_for_another():
    x = images((64, 3, 32, 32))
    a = random_crop_flip(x, 4, gen(7))
    b = random_crop_flip(x, 4, gen(7))
    c = random_crop_flip(x, 4, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(7)
    first, second = random_crop_flip(x, 4, g), random_crop_flip(x, 4, g)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances


@pytest.mark.parametrize("shape", [(32, 3, 12, 12), (32, 1, 7, 11)])
def test_each_crop_is_a_valid_window(shape):
    """Decode each output pixel back to its source pixel: a contiguous window, no wrap-around,
    zeros exactly where the window leaves the image."""
    n, c, h, w = shape
    pad = 4
    ids = torch.arange(1, c * h * w + 1, dtype=torch.float64).reshape(1, c, h, w)  # all distinct, > 0
    x = ids.expand(n, c, h, w).contiguous()
    out = random_crop_flip(x, pad, gen(1))
    a = torch.arange(h)[:, None].expand(h, w)  # output row of each pixel
    b = torch.arange(w)[None, :].expand(h, w)  # output column
    for k in range(n):
        for ch in range(c):
            o = out[k, ch]
            nz = o != 0
            assert nz.any()
            src = o[nz].long() - 1
            assert torch.all(src // (h * w) == ch)  # channels never mixed
            i, j = (src % (h * w)) // w, src % w
            dy = (i - a[nz]).unique()
            assert dy.numel() == 1 and -pad <= dy.item() <= pad  # rows shifted, not wrapped
            dx_fwd, dx_rev = (j - b[nz]).unique(), (j + b[nz]).unique()
            flipped = dx_fwd.numel() != 1
            if flipped:
                assert dx_rev.numel() == 1
                j_all = dx_rev.item() - b  # source column of every output pixel
                assert -pad <= dx_rev.item() - (w - 1) <= pad
            else:
                j_all = dx_fwd.item() + b
                assert -pad <= dx_fwd.item() <= pad
            i_all = dy.item() + a
            inside = (i_all >= 0) & (i_all < h) & (j_all >= 0) & (j_all < w)
            assert torch.equal(nz, inside)  # zeros only (and always) where the window is padding


def test_flip_fraction_and_offset_coverage():
    n, pad = 20000, 4
    oy, ox, flipped = sample_crop_flip(n, pad, gen(0), True)
    assert abs(flipped.float().mean().item() - 0.5) < 0.02  # std ~0.0035
    for off in (oy, ox):
        counts = torch.bincount(off, minlength=2 * pad + 1)
        assert off.min() == 0 and off.max() == 2 * pad and counts.numel() == 2 * pad + 1
        assert torch.all((counts / n - 1 / (2 * pad + 1)).abs() < 0.02)  # roughly uniform
    assert not torch.equal(oy, ox)
    # The same statistics read off the real output (first column's source tells flip and offset).
    rows, cols = crop_flip_indices(n, 32, 32, pad, gen(0))
    assert torch.equal(rows[:, 0], oy) and torch.equal(cols[:, 0] > cols[:, -1], flipped)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_when_no_pad_no_flip(dtype):
    x = images((8, 3, 5, 7), dtype)
    g = gen(0)
    state = g.get_state()
    out = random_crop_flip(x, 0, g, flip=False)
    assert torch.equal(out, x) and out.dtype == dtype
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert Augmenter(pad=0, flip=False).identity
    assert torch.equal(Augmenter(pad=0, flip=False)(x, g), x)


def test_no_flip_keeps_orientation():
    x = images((16, 1, 6, 6))
    out = random_crop_flip(x, 0, gen(0), flip=False)
    assert torch.equal(out, x)
    rows, cols = crop_flip_indices(16, 6, 6, 2, gen(0), flip=False)
    assert torch.all(cols[:, 1:] - cols[:, :-1] == 1)


def test_uint8_stays_uint8_and_values_come_from_input():
    x = images((16, 3, 32, 32))
    out = random_crop_flip(x, 4, gen(4))
    assert out.dtype == torch.uint8
    for k in range(16):  # every non-zero value is one of the sample's own values
        assert torch.isin(out[k][out[k] != 0], x[k]).all()


def test_augmenter_is_frozen_and_matches_function():
    aug = Augmenter()
    assert (aug.pad, aug.flip) == (4, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        aug.pad = 2
    x = images((8, 3, 32, 32))
    assert torch.equal(aug(x, gen(9)), random_crop_flip(x, 4, gen(9), True))


def test_bad_arguments():
    x = images((2, 3, 4, 4))
    with pytest.raises(ValueError, match="pad"):
        random_crop_flip(x, -1, gen(0))
    with pytest.raises(ValueError, match="pad"):
        Augmenter(pad=-2)
    with pytest.raises(ValueError, match="shape"):
        random_crop_flip(x[0], 2, gen(0))

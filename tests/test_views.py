"""TTA and scale views: every augment has an exact inverse; sizes and padding are as documented."""

from __future__ import annotations

import numpy as np
import pytest

from segensemble.views import TTA, padded_size, prepare_input, scaled_size


@pytest.mark.parametrize("name", sorted(TTA))
def test_deaugment_inverts_augment(name):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    t = TTA[name]
    y = t.augment(x)
    assert y.shape[2:] == ((5, 4) if t.swaps_hw else (4, 5))
    np.testing.assert_array_equal(t.deaugment(y), x)
    if name != "identity":
        assert not np.array_equal(y.shape == x.shape and y, x)


def test_rot90_matches_torch_convention():
    x = np.arange(6).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(TTA["rot90"].augment(x)[0, 0], [[2, 5], [1, 4], [0, 3]])


def test_scaled_and_padded_sizes():
    assert scaled_size((512, 512), 0.75) == (384, 384)
    assert scaled_size((5, 3), 0.5) == (3, 2)  # 2.5 rounds half up, 1.5 too
    assert padded_size((100, 64), 32) == (128, 64)


def test_prepare_input_normalizes_and_pads_with_zero():
    img = np.full((10, 12, 3), 255, np.uint8)
    mean, std = np.array([0.5, 0.5, 0.5], np.float32), np.array([0.25, 0.25, 0.25], np.float32)
    x = prepare_input(img, (10, 12), mean, std, 8)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :10, :12], 2.0)
    assert not x[:, 10:, :].any() and not x[:, :, 12:].any()


def test_model_sizes_lists_every_size_a_members_views_feed_its_model():
    from segensemble.views import model_sizes

    assert model_sizes((64, 96), None, [1.0, 0.5], ["identity", "hflip"], 32) == [(64, 96), (32, 64)]
    assert model_sizes((64, 96), None, [1.0], ["identity", "rot90"], 32) == [(64, 96), (96, 64)]
    assert model_sizes(None, (256, 128), [1.0, 2.0], ["transpose"], 32) == [(128, 256), (256, 128)]  # tiles: the tile, any scale
    assert model_sizes(None, None, [1.0], ["identity"], 32) is None  # the image's own size

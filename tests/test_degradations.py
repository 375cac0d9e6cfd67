"""The degradations super-resolution learns to undo: reproducible, in range, and each the acquisition it says."""
import numpy as np
import pytest

from degradations import DEGRADATIONS, area_average, degrade, kspace_truncate


@pytest.mark.parametrize("kind", sorted(DEGRADATIONS))
def test_a_degradation_halves_the_slice_keeps_its_range_and_repeats_with_its_seed(kind):
    img = np.random.default_rng(0).random((37, 50)) * 300 + 20
    low = degrade(img, kind, 2, noise=0.03, seed=5)
    assert low.shape == (18, 25) and low.min() >= img.min() and low.max() <= img.max()
    assert np.array_equal(low, degrade(img, kind, 2, noise=0.03, seed=5))
    assert not np.array_equal(low, degrade(img, kind, 2, noise=0.03, seed=6))
    flat = np.full((32, 32), 7.0)
    assert np.allclose(degrade(flat, kind, 2), 7.0)  # a constant stays itself without noise


def test_area_averaging_is_the_block_mean_and_kspace_keeps_what_the_coarse_grid_can_hold():
    img = np.arange(16, dtype=float).reshape(4, 4)
    assert np.array_equal(area_average(img, 2), [[2.5, 4.5], [10.5, 12.5]])
    # a wave the coarse grid can carry survives truncation exactly (sampled at the coarse pixels' centres)...
    y, x = np.mgrid[:64, :64]
    slow = np.cos(2 * np.pi * 3 * x / 64) + np.sin(2 * np.pi * 5 * y / 64)
    low = kspace_truncate(slow, 2)
    yy, xx = np.mgrid[:32, :32] * 2 + 0.5
    assert np.allclose(low, np.cos(2 * np.pi * 3 * xx / 64) + np.sin(2 * np.pi * 5 * yy / 64), atol=1e-9)
    # ...and one finer than it is gone
    fast = np.cos(2 * np.pi * 20 * x / 64)
    assert np.abs(kspace_truncate(fast, 2)).max() < 1e-9
    with pytest.raises(ValueError, match="unknown degradation 'blur'"):
        degrade(img, "blur")


def test_training_pairs_are_crops_at_the_slices_own_scale_and_repeat_with_their_seed():
    from degradations import training_pairs
    rng = np.random.default_rng(0)
    slices = [rng.random((40, 56)), rng.random((20, 24))]  # the second smaller than a crop: padded
    inputs, targets = training_pairs(slices, 3, 32, seed=1)
    assert inputs.shape == targets.shape == (6, 1, 32, 32) and inputs.dtype == np.float32
    again = training_pairs(slices, 3, 32, seed=1)
    assert np.array_equal(inputs, again[0]) and np.array_equal(targets, again[1])
    # each target is a crop of its slice as it is (no resizing)
    big = slices[0]
    for t in targets[:3, 0]:
        assert any(np.allclose(t, big[y:y + 32, x:x + 32], atol=1e-6) for y in range(9) for x in range(25))
    assert np.allclose(targets[3:, 0, 20:, :], 0) and np.allclose(targets[3:, 0, :, 24:], 0)

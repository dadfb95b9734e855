"""Shared helpers for the fastlstm tests."""
import numpy as np
import pytest


def make_lstm_inputs(T, B, D, H, dtype=np.float64, seed=0, state=True):
    """x, W_x, W_h, b, h0, c0 with PyTorch's initial magnitudes (uniform +-1/sqrt(H));
    h0, c0 are None unless ``state``."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    W_x = rng.uniform(-k, k, (D, 4 * H)).astype(dtype)
    W_h = rng.uniform(-k, k, (H, 4 * H)).astype(dtype)
    b = rng.uniform(-k, k, 4 * H).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) * 0.5 if state else None
    c0 = rng.standard_normal((B, H)).astype(dtype) * 0.5 if state else None
    return x, W_x, W_h, b, h0, c0


def mixed_lengths(T, B, seed=0):
    """(B,) lengths in [0, T] that include 0 and T when B allows, in no particular order."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(0, T + 1, size=B)
    if B >= 1:
        lengths[0] = T
    if B >= 2:
        lengths[-1] = 0
    if B >= 3:
        lengths[1] = min(1, T)
    return lengths


def rel_err(actual, expected):
    """max |actual - expected| relative to max |expected| (absolute when that is ~0)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size == 0:
        return 0.0
    scale = max(np.abs(expected).max(), 1e-12)
    return float(np.abs(actual - expected).max() / scale)


def numeric_grad(loss, array, eps=1e-6):
    """Central finite differences of ``loss()`` w.r.t. every entry of ``array`` (which
    ``loss`` reads; it is perturbed in place and restored)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        up = loss()
        array[idx] = old - eps
        down = loss()
        array[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


# float64 must agree with the reference to ~1e-10 relative; float32 to a few hundred ulp of
# the array's scale (errors accumulate through the recursion and the reductions over T*B).
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-4}


@pytest.fixture
def tol():
    return lambda dtype: TOLERANCE[np.dtype(dtype)]

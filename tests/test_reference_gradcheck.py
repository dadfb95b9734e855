"""The NumPy reference (``fastlstm.reference``) checked from first principles, float64:

* its forward against a direct per-sequence, per-step, per-unit scalar transcription of
  docs/design.md's equations (written here, not using reference.py), including the
  ``lengths`` semantics;
* its backward against central finite differences of the scalar loss
  ``L = sum(hs * R) + sum(h_n * Rh) + sum(c_n * Rc)``, entry by entry, for every input
  (x, h0, c0, W_x, W_h, b), with and without ``lengths`` and in the many-to-one case
  (``dhs=None``).

Self-contained on purpose (no conftest helpers), so it reads as a specification.
"""
import math

import numpy as np
import pytest

from fastlstm import reference
from conftest import numeric_grad, rel_err

T, B, D, H = 3, 2, 4, 3
PARAM_NAMES = ("x", "h0", "c0", "W_x", "W_h", "b")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def make_inputs(T, B, D, H, seed=0):
    """float64 x, W_x, W_h, b, h0, c0 with PyTorch-like magnitudes (weights +-1/sqrt(H))
    but a bias and states large enough that every gate is away from 0.5 / 0."""
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(H)
    return {
        "x": rng.standard_normal((T, B, D)),
        "W_x": rng.uniform(-k, k, (D, 4 * H)),
        "W_h": rng.uniform(-k, k, (H, 4 * H)),
        "b": rng.uniform(-k, k, 4 * H),
        "h0": 0.5 * rng.standard_normal((B, H)),
        "c0": 0.5 * rng.standard_normal((B, H)),
    }


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def scalar_lstm(x, W_x, W_h, b, h0=None, c0=None, lengths=None):
    """docs/design.md's LSTM, one sequence, one step, one unit at a time, with Python floats.

    a_t = x_t W_x + h_{t-1} W_h + b, blocks i, f, g, o of H along the 4H axis;
    i, f, o = sigmoid, g = tanh; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).
    With lengths: steps t >= lengths[s] leave sequence s's state unchanged and hs = 0;
    h_n / c_n are the state after the sequence's own last step.
    """
    T_, B_, D_ = x.shape
    H_ = W_h.shape[0]
    hs = np.zeros((T_, B_, H_))
    h_n = np.zeros((B_, H_))
    c_n = np.zeros((B_, H_))
    for s in range(B_):
        h = [0.0] * H_ if h0 is None else [float(v) for v in h0[s]]
        c = [0.0] * H_ if c0 is None else [float(v) for v in c0[s]]
        n_steps = T_ if lengths is None else int(lengths[s])
        for t in range(T_):
            if t >= n_steps:
                # Frozen: state carried unchanged, output zero.
                for j in range(H_):
                    hs[t, s, j] = 0.0
                continue
            a = []
            for k in range(4 * H_):
                acc = float(b[k])
                for d in range(D_):
                    acc += float(x[t, s, d]) * float(W_x[d, k])
                for j in range(H_):
                    acc += h[j] * float(W_h[j, k])
                a.append(acc)
            new_h, new_c = [], []
            for j in range(H_):
                i_g = _sig(a[0 * H_ + j])
                f_g = _sig(a[1 * H_ + j])
                g_g = math.tanh(a[2 * H_ + j])
                o_g = _sig(a[3 * H_ + j])
                cj = f_g * c[j] + i_g * g_g
                new_c.append(cj)
                new_h.append(o_g * math.tanh(cj))
            h, c = new_h, new_c
            for j in range(H_):
                hs[t, s, j] = h[j]
        h_n[s] = h
        c_n[s] = c
    return hs, h_n, c_n


def assert_entrywise_close(name, analytic, numeric, rtol=1e-6, atol=1e-9):
    """Every entry: |a - n| <= rtol * max(|a|, |n|) + atol; report the worst entry."""
    analytic = np.asarray(analytic, np.float64)
    numeric = np.asarray(numeric, np.float64)
    assert analytic.shape == numeric.shape, (name, analytic.shape, numeric.shape)
    diff = np.abs(analytic - numeric)
    bound = rtol * np.maximum(np.abs(analytic), np.abs(numeric)) + atol
    bad = diff > bound
    if bad.any():
        idx = np.unravel_index(np.argmax(diff - bound), diff.shape)
        raise AssertionError(
            f"d{name}: {int(bad.sum())}/{bad.size} entries off; worst at {idx}: "
            f"analytic {analytic[idx]!r} vs numeric {numeric[idx]!r}")
    # And as a whole, relative to the array's scale.
    assert rel_err(analytic, numeric) < 1e-7, (name, rel_err(analytic, numeric))


# --------------------------------------------------------------------------------------
# forward vs the scalar loop
# --------------------------------------------------------------------------------------

FORWARD_CASES = {
    # name: (T, B, D, H, lengths or None, with initial state)
    "full": (3, 2, 4, 3, None, True),
    "full-zero-state": (3, 2, 4, 3, None, False),
    "lengths-0-and-T": (3, 2, 4, 3, [0, 3], True),
    "lengths-mixed": (5, 4, 3, 2, [5, 0, 2, 1], True),
    "lengths-all-T": (4, 3, 2, 3, [4, 4, 4], True),
    "lengths-all-0": (3, 2, 2, 3, [0, 0], True),
    "single-step": (1, 3, 2, 4, [1, 0, 1], True),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_matches_scalar_loop(case):
    T_, B_, D_, H_, lengths, state = FORWARD_CASES[case]
    p = make_inputs(T_, B_, D_, H_, seed=3)
    h0 = p["h0"] if state else None
    c0 = p["c0"] if state else None
    lengths = None if lengths is None else np.array(lengths)
    hs, (h_n, c_n), _ = reference.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], h0, c0,
                                               lengths=lengths)
    e_hs, e_h, e_c = scalar_lstm(p["x"], p["W_x"], p["W_h"], p["b"], h0, c0, lengths)
    assert hs.shape == (T_, B_, H_) and h_n.shape == (B_, H_) and c_n.shape == (B_, H_)
    assert hs.dtype == h_n.dtype == c_n.dtype == np.float64
    assert rel_err(hs, e_hs) < 1e-13
    assert rel_err(h_n, e_h) < 1e-13
    assert rel_err(c_n, e_c) < 1e-13


def test_scalar_loop_sanity():
    """The hand-written oracle itself: one unit, one step, worked by hand."""
    x = np.array([[[1.0]]])
    W_x = np.array([[0.1, 0.2, 0.3, 0.4]])
    W_h = np.array([[0.5, -0.5, 0.25, -0.25]])
    b = np.array([0.0, 1.0, -1.0, 0.5])
    h0, c0 = np.array([[0.2]]), np.array([[-0.3]])
    a = [0.1 + 0.1, 0.2 - 0.1 + 1.0, 0.3 + 0.05 - 1.0, 0.4 - 0.05 + 0.5]
    i, f, g, o = _sig(a[0]), _sig(a[1]), math.tanh(a[2]), _sig(a[3])
    c = f * -0.3 + i * g
    h = o * math.tanh(c)
    hs, h_n, c_n = scalar_lstm(x, W_x, W_h, b, h0, c0)
    assert hs[0, 0, 0] == pytest.approx(h, rel=1e-15)
    assert h_n[0, 0] == pytest.approx(h, rel=1e-15)
    assert c_n[0, 0] == pytest.approx(c, rel=1e-15)
    r_hs, (r_h, r_c), _ = reference.lstm_forward(x, W_x, W_h, b, h0, c0)
    assert r_hs[0, 0, 0] == pytest.approx(h, rel=1e-14)
    assert r_c[0, 0] == pytest.approx(c, rel=1e-14)


def test_lengths_semantics():
    """Frozen state, zero outputs past the length, h_n/c_n at each sequence's own last
    step — equivalently, each sequence run alone over just its own steps."""
    T_, B_, D_, H_ = 5, 4, 3, 2
    p = make_inputs(T_, B_, D_, H_, seed=5)
    lengths = np.array([2, 5, 0, 3])   # unsorted, includes 0 and T
    hs, (h_n, c_n), cache = reference.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"],
                                                   p["h0"], p["c0"], lengths=lengths)
    full_hs, _, full_cache = reference.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"],
                                                    p["h0"], p["c0"])
    for s, L in enumerate(lengths):
        # Outputs: exactly zero past the length, the unmasked run's values before it.
        assert np.all(hs[L:, s] == 0.0)
        np.testing.assert_array_equal(hs[:L, s], full_hs[:L, s])
        # Final state = the state after step L-1 of the unmasked run (h0/c0 when L == 0).
        np.testing.assert_array_equal(h_n[s], full_cache.h_states[L, s])
        np.testing.assert_array_equal(c_n[s], full_cache.c_states[L, s])
        if L == 0:
            np.testing.assert_array_equal(h_n[s], p["h0"][s])
            np.testing.assert_array_equal(c_n[s], p["c0"][s])
        else:
            np.testing.assert_array_equal(h_n[s], hs[L - 1, s])
        # The state is carried unchanged through the frozen steps.
        for t in range(L, T_ + 1):
            np.testing.assert_array_equal(cache.h_states[t, s], cache.h_states[L, s])
            np.testing.assert_array_equal(cache.c_states[t, s], cache.c_states[L, s])
        # Running the sequence alone, truncated to its length, gives the same final state.
        if L > 0:
            alone_hs, (a_h, a_c), _ = reference.lstm_forward(
                np.ascontiguousarray(p["x"][:L, s:s + 1]), p["W_x"], p["W_h"], p["b"],
                p["h0"][s:s + 1].copy(), p["c0"][s:s + 1].copy())
            assert rel_err(alone_hs[:, 0], hs[:L, s]) < 1e-14
            assert rel_err(a_h[0], h_n[s]) < 1e-14
            assert rel_err(a_c[0], c_n[s]) < 1e-14


def test_lengths_none_equals_lengths_all_T():
    p = make_inputs(4, 3, 2, 3, seed=8)
    args = (p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"])
    hs, (h_n, c_n), _ = reference.lstm_forward(*args)
    m_hs, (m_h, m_c), _ = reference.lstm_forward(*args, lengths=np.full(3, 4))
    np.testing.assert_array_equal(hs, m_hs)
    np.testing.assert_array_equal(h_n, m_h)
    np.testing.assert_array_equal(c_n, m_c)


# --------------------------------------------------------------------------------------
# backward vs central finite differences
# --------------------------------------------------------------------------------------

GRAD_CASES = {
    # name: (lengths or None, loss on hs, loss on c_n)
    "full": (None, True, True),
    "lengths-0-and-T": ([0, 3], True, True),
    "lengths-T-and-1": ([3, 1], True, True),
    "many-to-one": (None, False, False),              # dhs=None, loss only on h_n
    "many-to-one-lengths": ([1, 3], False, False),
    "many-to-one-with-c_n": ([3, 0], False, True),
    "lengths-2-and-0": ([2, 0], True, True),
}


def _grad_setup(case, seed=11):
    lengths, on_hs, on_c = GRAD_CASES[case]
    params = make_inputs(T, B, D, H, seed=seed)
    rng = np.random.default_rng(seed + 1)
    R = rng.standard_normal((T, B, H)) if on_hs else None
    Rh = rng.standard_normal((B, H))
    Rc = rng.standard_normal((B, H)) if on_c else None
    lengths = None if lengths is None else np.array(lengths)

    def loss():
        hs, (h_n, c_n), _ = reference.lstm_forward(
            params["x"], params["W_x"], params["W_h"], params["b"], params["h0"],
            params["c0"], lengths=lengths)
        total = float(np.sum(h_n * Rh))
        if R is not None:
            total += float(np.sum(hs * R))
        if Rc is not None:
            total += float(np.sum(c_n * Rc))
        return total

    _, _, cache = reference.lstm_forward(params["x"], params["W_x"], params["W_h"],
                                         params["b"], params["h0"], params["c0"],
                                         lengths=lengths)
    grads = reference.lstm_backward(R, cache, Rh, Rc)
    return params, loss, grads, lengths, R, Rh, Rc


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradients_match_finite_differences(case):
    params, loss, grads, _, _, _, _ = _grad_setup(case)
    analytic = {"x": grads.dx, "h0": grads.dh0, "c0": grads.dc0, "W_x": grads.dW_x,
                "W_h": grads.dW_h, "b": grads.db}
    assert set(analytic) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        a = analytic[name]
        assert a.shape == params[name].shape, (name, a.shape, params[name].shape)
        assert a.dtype == np.float64, (name, a.dtype)
        numeric = numeric_grad(loss, params[name])
        # The problem must be non-trivial: some gradient entries are far from zero.
        assert np.abs(numeric).max() > 1e-3, (name, np.abs(numeric).max())
        assert_entrywise_close(name, a, numeric)


def test_grads_container_and_dtypes():
    _, _, grads, _, _, _, _ = _grad_setup("full")
    assert isinstance(grads, reference.LSTMGrads)
    assert grads._fields == ("dx", "dh0", "dc0", "dW_x", "dW_h", "db")
    assert grads.dx.shape == (T, B, D)
    assert grads.dh0.shape == grads.dc0.shape == (B, H)
    assert grads.dW_x.shape == (D, 4 * H)
    assert grads.dW_h.shape == (H, 4 * H)
    assert grads.db.shape == (4 * H,)


def test_masked_gradients_are_exact():
    """Steps past a length do not touch the loss: dx is exactly 0 there, and a sequence of
    length 0 passes dh_n / dc_n straight through to dh0 / dc0."""
    params, _, grads, lengths, R, Rh, Rc = _grad_setup("lengths-0-and-T")
    assert list(lengths) == [0, 3]
    assert np.all(grads.dx[:, 0] == 0.0)                      # length 0: no step used
    np.testing.assert_array_equal(grads.dh0[0], Rh[0])
    np.testing.assert_array_equal(grads.dc0[0], Rc[0])
    assert np.abs(grads.dx[:, 1]).min() > 0                    # length T: every step used

    params, _, grads, lengths, _, _, _ = _grad_setup("lengths-T-and-1")
    assert list(lengths) == [3, 1]
    assert np.all(grads.dx[1:, 1] == 0.0)


def test_upstream_gradient_past_length_is_ignored():
    """hs is 0 past a length whatever the parameters, so dhs there must not matter."""
    params = make_inputs(T, B, D, H, seed=21)
    lengths = np.array([1, 3])
    _, _, cache = reference.lstm_forward(params["x"], params["W_x"], params["W_h"],
                                         params["b"], params["h0"], params["c0"],
                                         lengths=lengths)
    rng = np.random.default_rng(22)
    dhs = rng.standard_normal((T, B, H))
    noisy = dhs.copy()
    noisy[1:, 0] = 1e3 * rng.standard_normal((T - 1, H))
    a = reference.lstm_backward(dhs, cache)
    b = reference.lstm_backward(noisy, cache)
    for name, ga, gb in zip(a._fields, a, b):
        np.testing.assert_array_equal(ga, gb, err_msg=name)


def test_none_upstream_equals_zeros():
    params = make_inputs(T, B, D, H, seed=31)
    _, _, cache = reference.lstm_forward(params["x"], params["W_x"], params["W_h"],
                                         params["b"], params["h0"], params["c0"],
                                         lengths=np.array([2, 3]))
    rng = np.random.default_rng(32)
    dh_n = rng.standard_normal((B, H))
    zeros_hs, zeros_bh = np.zeros((T, B, H)), np.zeros((B, H))
    a = reference.lstm_backward(None, cache, dh_n)
    b = reference.lstm_backward(zeros_hs, cache, dh_n, zeros_bh)
    for name, ga, gb in zip(a._fields, a, b):
        np.testing.assert_array_equal(ga, gb, err_msg=name)
    # No upstream gradient at all: every gradient is zero.
    for name, g in zip(a._fields, reference.lstm_backward(None, cache)):
        assert np.all(g == 0.0), name

"""The GRU: the NumPy reference from first principles (central differences, torch.nn.GRU)
and the compiled kernels against the reference.

Loss for the gradient checks: ``L = sum(hs * R) + sum(h_n * Rh)`` with fixed random R,
Rh, so ``dhs = R`` and ``dh_n = Rh``.
"""
import numpy as np
import pytest

import fastlstm
from fastlstm import reference
from conftest import mixed_lengths, numeric_grad, rel_err

GRAD_NAMES = ("dx", "dh0", "dW_x", "dW_h", "db_x", "db_h")


def make_gru_inputs(T, B, D, H, dtype=np.float64, seed=0, state=True):
    """x, W_x, W_h, b_x, b_h, h0 with torch's initial magnitudes (uniform +-1/sqrt(H)),
    the biases a little larger so no gate sits at its midpoint; h0 None unless ``state``."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    W_x = rng.uniform(-k, k, (D, 3 * H)).astype(dtype)
    W_h = rng.uniform(-k, k, (H, 3 * H)).astype(dtype)
    b_x = rng.uniform(-0.5, 0.5, 3 * H).astype(dtype)
    b_h = rng.uniform(-0.5, 0.5, 3 * H).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if state else None
    return x, W_x, W_h, b_x, b_h, h0


# --------------------------------------------------------------------------------------
# the reference against central differences (float64)
# --------------------------------------------------------------------------------------

GRADCHECK_CASES = {
    # name: (T, B, D, H, lengths, h0 given, dhs given, dh_n given)
    "full": (3, 2, 4, 3, None, True, True, True),
    "zero-state": (3, 2, 3, 2, None, False, True, True),
    "many-to-one": (4, 2, 3, 3, None, True, False, True),
    "lengths": (4, 4, 3, 3, [4, 0, 1, 2], True, True, True),
    "lengths-no-dh_n": (3, 3, 2, 2, [2, 3, 0], True, True, False),
    "single-step": (1, 2, 2, 3, None, True, True, True),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_reference_gradients_match_central_differences(case):
    T, B, D, H, lengths, state, with_dhs, with_dh_n = GRADCHECK_CASES[case]
    x, W_x, W_h, b_x, b_h, h0 = make_gru_inputs(T, B, D, H, seed=11)
    if h0 is None or not state:
        h0 = np.zeros((B, H))   # perturbed below, so dh0 is checked at a zero state too
    lengths = None if lengths is None else np.array(lengths)
    rng = np.random.default_rng(12)
    R = rng.standard_normal((T, B, H)) if with_dhs else None
    Rh = rng.standard_normal((B, H)) if with_dh_n else None
    arrays = {"x": x, "h0": h0, "W_x": W_x, "W_h": W_h, "b_x": b_x, "b_h": b_h}

    def loss():
        hs, h_n, _ = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths=lengths)
        total = 0.0
        if R is not None:
            total += float(np.sum(hs * R))
        if Rh is not None:
            total += float(np.sum(h_n * Rh))
        return total

    _, _, cache = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths=lengths)
    grads = reference.gru_backward(R, cache, Rh)
    assert isinstance(grads, fastlstm.GRUGrads)
    for name, array in arrays.items():
        numeric = numeric_grad(loss, array)
        analytic = getattr(grads, "d" + name)
        assert analytic.shape == array.shape and analytic.dtype == np.float64
        assert np.abs(numeric).max() > 0 or name == "h0", name   # the check has teeth
        assert rel_err(analytic, numeric) < 1e-7, (name, rel_err(analytic, numeric))


def test_reference_forward_worked_by_hand():
    """One unit, one step: the equations with Python floats."""
    import math
    x = np.array([[[0.7]]])
    W_x = np.array([[0.1, -0.2, 0.3]])
    W_h = np.array([[0.5, 0.4, -0.6]])
    b_x = np.array([0.05, -0.1, 0.2])
    b_h = np.array([-0.3, 0.25, 0.15])
    h0 = np.array([[0.4]])
    sig = lambda v: 1 / (1 + math.exp(-v))   # noqa: E731
    r = sig(0.7 * 0.1 + 0.05 + 0.4 * 0.5 - 0.3)
    z = sig(0.7 * -0.2 - 0.1 + 0.4 * 0.4 + 0.25)
    n = math.tanh(0.7 * 0.3 + 0.2 + r * (0.4 * -0.6 + 0.15))
    h = (1 - z) * n + z * 0.4
    hs, h_n, _ = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0)
    assert hs[0, 0, 0] == pytest.approx(h, rel=1e-14)
    assert h_n[0, 0] == pytest.approx(h, rel=1e-14)


def test_reference_lengths_semantics():
    """Outputs zero past the length, the state frozen there, h_n the state after the
    sequence's own last step (h0 for length 0)."""
    T, B, D, H = 5, 4, 3, 2
    x, W_x, W_h, b_x, b_h, h0 = make_gru_inputs(T, B, D, H, seed=5)
    lengths = np.array([2, 5, 0, 3])
    hs, h_n, cache = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths=lengths)
    full_hs, _, full_cache = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0)
    for s, L in enumerate(lengths):
        assert np.all(hs[L:, s] == 0.0)
        np.testing.assert_array_equal(hs[:L, s], full_hs[:L, s])
        np.testing.assert_array_equal(h_n[s], full_cache.h_states[L, s])
        for t in range(L, T + 1):
            np.testing.assert_array_equal(cache.h_states[t, s], cache.h_states[L, s])
    np.testing.assert_array_equal(h_n[2], h0[2])


# --------------------------------------------------------------------------------------
# the reference against torch.nn.GRU
# --------------------------------------------------------------------------------------

def _torch_gru(D, H, dtype, seed):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    gru = torch.nn.GRU(D, H).to(getattr(torch, np.dtype(dtype).name))
    W_x = np.ascontiguousarray(gru.weight_ih_l0.detach().numpy().T)
    W_h = np.ascontiguousarray(gru.weight_hh_l0.detach().numpy().T)
    b_x = gru.bias_ih_l0.detach().numpy().copy()
    b_h = gru.bias_hh_l0.detach().numpy().copy()
    return gru, W_x, W_h, b_x, b_h


def run_torch_gru(gru, x, h0, lengths, dhs, dh_n):
    """torch forward + autograd of sum(out * dhs) + sum(h_n * dh_n); numpy results and
    gradients in fastlstm's layout. Sequences of length 0 must have been left out."""
    import torch
    gru.zero_grad(set_to_none=True)
    T = x.shape[0]
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.as_tensor(np.asarray(lengths, np.int64)), enforce_sorted=False)
        out, h_nt = gru(packed, h0t)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    else:
        out, h_nt = gru(xt, h0t)
    loss = 0.0 * out.sum() + (h_nt[0] * torch.tensor(dh_n)).sum()
    if dhs is not None:
        loss = loss + (out * torch.tensor(dhs)).sum()
    loss.backward()
    grads = {"dx": xt.grad.numpy(), "dh0": h0t.grad[0].numpy(),
             "dW_x": gru.weight_ih_l0.grad.numpy().T, "dW_h": gru.weight_hh_l0.grad.numpy().T,
             "db_x": gru.bias_ih_l0.grad.numpy(), "db_h": gru.bias_hh_l0.grad.numpy()}
    return out.detach().numpy(), h_nt[0].detach().numpy(), grads


TORCH_CASES = {
    # name: (T, B, D, H, lengths or None, dhs given)
    "small": (5, 3, 4, 6, None, True),
    "single": (1, 1, 1, 1, None, True),
    "medium": (17, 9, 13, 33, None, True),
    "many-to-one": (8, 4, 5, 6, None, False),
    "packed-unsorted": (7, 5, 6, 9, [3, 7, 1, 7, 5], True),
    "packed-medium": (15, 10, 12, 33, [15, 2, 9, 1, 15, 7, 11, 3, 14, 5], True),
    "packed-many-to-one": (6, 4, 3, 4, [1, 2, 4, 6], False),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_reference_matches_torch_gru(case):
    T, B, D, H, lengths, with_dhs = TORCH_CASES[case]
    gru, W_x, W_h, b_x, b_h = _torch_gru(D, H, np.float64, seed=1)
    x, _, _, _, _, h0 = make_gru_inputs(T, B, D, H, seed=2)
    rng = np.random.default_rng(3)
    dhs = rng.standard_normal((T, B, H)) if with_dhs else None
    dh_n = rng.standard_normal((B, H))
    t_hs, t_h, t_grads = run_torch_gru(gru, x, h0, lengths, dhs, dh_n)
    if dhs is not None and lengths is not None:   # torch's padded outputs carry none
        dhs = dhs * (np.arange(T)[:, None] < np.array(lengths)[None, :])[:, :, None]
    hs, h_n, cache = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths=lengths)
    grads = reference.gru_backward(dhs, cache, dh_n)
    assert rel_err(hs, t_hs) < 1e-12 and rel_err(h_n, t_h) < 1e-12
    for name in GRAD_NAMES:
        assert rel_err(getattr(grads, name), t_grads[name]) < 1e-10, name


def test_reference_length_zero_rows_against_torch_on_the_others():
    """torch cannot pack a length of 0: run it on the other rows, and check the empty
    rows on our side (h_n = h0, dh0 = dh_n, no output and no input gradient)."""
    T, B, D, H = 6, 5, 4, 7
    lengths = mixed_lengths(T, B, seed=4)
    assert (lengths == 0).any() and (lengths == T).any()
    gru, W_x, W_h, b_x, b_h = _torch_gru(D, H, np.float64, seed=7)
    x, _, _, _, _, h0 = make_gru_inputs(T, B, D, H, seed=8)
    rng = np.random.default_rng(9)
    dhs = rng.standard_normal((T, B, H))
    dh_n = rng.standard_normal((B, H))
    dhs *= (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
    hs, h_n, cache = reference.gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths=lengths)
    grads = reference.gru_backward(dhs, cache, dh_n)
    keep = lengths > 0
    xs = np.ascontiguousarray(x[:, keep])
    t_hs, t_h, t_grads = run_torch_gru(gru, xs, h0[keep].copy(), lengths[keep],
                                       np.ascontiguousarray(dhs[:, keep]), dh_n[keep].copy())
    assert rel_err(hs[:, keep], t_hs) < 1e-12 and rel_err(h_n[keep], t_h) < 1e-12
    assert rel_err(grads.dx[:, keep], t_grads["dx"]) < 1e-10
    assert rel_err(grads.dh0[keep], t_grads["dh0"]) < 1e-10
    for name in ("dW_x", "dW_h", "db_x", "db_h"):   # empty rows add nothing to these
        assert rel_err(getattr(grads, name), t_grads[name]) < 1e-10, name
    empty = ~keep
    assert np.all(hs[:, empty] == 0) and np.all(grads.dx[:, empty] == 0)
    np.testing.assert_array_equal(h_n[empty], h0[empty])
    np.testing.assert_array_equal(grads.dh0[empty], dh_n[empty])

"""Parity with ``torch.nn.LSTM`` (skipped when torch is missing).

Both the NumPy reference (``fastlstm.reference``) and the compiled kernels
(``fastlstm.lstm_forward/lstm_backward`` with ``backend="cython"``) against a
``torch.nn.LSTM(D, H)`` whose weights are mapped as docs/design.md says:
``W_x = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0``.

Forward outputs (hs, h_n, c_n) and gradients (dx, dh0, dc0, dW_x, dW_h, db) are compared
for a loss with random upstream gradients on hs, h_n and c_n, computed by torch autograd.
``lengths`` go through ``pack_padded_sequence(enforce_sorted=False)`` /
``pad_packed_sequence(total_length=T)``. torch cannot pack a length of 0, so length-0
sequences are checked on our side only (against torch run on the other sequences).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlstm  # noqa: E402
from fastlstm import reference  # noqa: E402
from conftest import make_lstm_inputs, rel_err  # noqa: E402

# float64: agree to 1e-10 relative to each array's scale; float32: both sides round at
# ~6e-8 per operation and the errors grow through the recursion and the T*B reductions.
TOL = {"float64": 1e-10, "float32": 2e-5}


def _compiled():
    return fastlstm.config()["compiled"]


BACKENDS = [
    "reference",
    pytest.param("cython", marks=pytest.mark.skipif(not _compiled(),
                                                    reason="compiled kernels not built")),
]


def run_ours(backend, x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n, num_threads=None):
    if backend == "reference":
        hs, (h_n, c_n), cache = reference.lstm_forward(x, W_x, W_h, b, h0, c0,
                                                       lengths=lengths)
        grads = reference.lstm_backward(dhs, cache, dh_n, dc_n)
    else:
        hs, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0,
                                                      lengths=lengths, backend=backend,
                                                      num_threads=num_threads)
        grads = fastlstm.lstm_backward(dhs, cache, dh_n, dc_n)
    return hs, h_n, c_n, grads


def make_torch_lstm(D, H, dtype_name, seed=0):
    """A torch.nn.LSTM(D, H) and the fused numpy weights (contiguous) it corresponds to."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(D, H).to(getattr(torch, dtype_name))
    with torch.no_grad():   # make sure the two biases differ, so their sum is exercised
        lstm.bias_hh_l0.add_(0.1 * torch.randn_like(lstm.bias_hh_l0))
    W_x = np.ascontiguousarray(lstm.weight_ih_l0.detach().numpy().T)
    W_h = np.ascontiguousarray(lstm.weight_hh_l0.detach().numpy().T)
    b = np.ascontiguousarray((lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy())
    assert W_x.shape == (D, 4 * H) and W_h.shape == (H, 4 * H) and b.shape == (4 * H,)
    return lstm, W_x, W_h, b


def run_torch(lstm, x, h0, c0, lengths, dhs, dh_n, dc_n):
    """torch forward + autograd backward of sum(out*dhs) + sum(h_n*dh_n) + sum(c_n*dc_n).

    Returns numpy hs, h_n, c_n and a dict of gradients in fastlstm's layout.
    h0 / c0 None: torch's default zero state. dhs / dh_n / dc_n None: not in the loss.
    """
    lstm.zero_grad(set_to_none=True)
    T = x.shape[0]
    xt = torch.tensor(x, requires_grad=True)
    state = None
    if h0 is not None:
        h0t = torch.tensor(h0[None], requires_grad=True)
        c0t = torch.tensor(c0[None], requires_grad=True)
        state = (h0t, c0t)
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.as_tensor(np.asarray(lengths, np.int64)), enforce_sorted=False)
        out, (h_nt, c_nt) = lstm(packed, state)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    else:
        out, (h_nt, c_nt) = lstm(xt, state)
    loss = 0.0 * out.sum()
    if dhs is not None:
        loss = loss + (out * torch.tensor(dhs)).sum()
    if dh_n is not None:
        loss = loss + (h_nt[0] * torch.tensor(dh_n)).sum()
    if dc_n is not None:
        loss = loss + (c_nt[0] * torch.tensor(dc_n)).sum()
    loss.backward()
    grads = {
        "dx": xt.grad.numpy(),
        "dW_x": lstm.weight_ih_l0.grad.numpy().T,
        "dW_h": lstm.weight_hh_l0.grad.numpy().T,
        "db": lstm.bias_ih_l0.grad.numpy(),
        "db_hh": lstm.bias_hh_l0.grad.numpy(),
    }
    if state is not None:
        grads["dh0"] = state[0].grad[0].numpy()
        grads["dc0"] = state[1].grad[0].numpy()
    return (out.detach().numpy(), h_nt[0].detach().numpy(), c_nt[0].detach().numpy(),
            grads)


def random_problem(T, B, D, H, dtype_name, seed, many_to_one=False):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype_name)
    x = rng.standard_normal((T, B, D)).astype(dt)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dt)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dt)
    dhs = None if many_to_one else rng.standard_normal((T, B, H)).astype(dt)
    dh_n = rng.standard_normal((B, H)).astype(dt)
    dc_n = None if many_to_one else rng.standard_normal((B, H)).astype(dt)
    return x, h0, c0, dhs, dh_n, dc_n


def assert_parity(ours, theirs, tol, with_state=True):
    hs, h_n, c_n, grads = ours
    t_hs, t_h, t_c, t_grads = theirs
    assert hs.dtype == t_hs.dtype, (hs.dtype, t_hs.dtype)
    errors = {
        "hs": rel_err(hs, t_hs),
        "h_n": rel_err(h_n, t_h),
        "c_n": rel_err(c_n, t_c),
        "dx": rel_err(grads.dx, t_grads["dx"]),
        "dW_x": rel_err(grads.dW_x, t_grads["dW_x"]),
        "dW_h": rel_err(grads.dW_h, t_grads["dW_h"]),
        "db (bias_ih)": rel_err(grads.db, t_grads["db"]),
        "db (bias_hh)": rel_err(grads.db, t_grads["db_hh"]),
    }
    if with_state:
        errors["dh0"] = rel_err(grads.dh0, t_grads["dh0"])
        errors["dc0"] = rel_err(grads.dc0, t_grads["dc0"])
    for g in grads:
        assert g.dtype == hs.dtype
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


# --------------------------------------------------------------------------------------

SHAPES = {
    # name: (T, B, D, H)
    "small": (5, 3, 4, 6),
    "single": (1, 1, 1, 1),
    "medium": (17, 9, 13, 33),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_matches_torch(backend, shape):
    T, B, D, H = SHAPES[shape]
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float64", seed=1)
    x, h0, c0, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float64", seed=2)
    theirs = run_torch(lstm, x, h0, c0, None, dhs, dh_n, dc_n)
    ours = run_ours(backend, x, W_x, W_h, b, h0, c0, None, dhs, dh_n, dc_n)
    assert_parity(ours, theirs, TOL["float64"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_zero_initial_state_matches_torch(backend):
    """h0 = c0 = None on our side is torch's default (zero) state; dh0/dc0 are still
    returned (as the gradients w.r.t. that zero state)."""
    T, B, D, H = 6, 4, 5, 7
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float64", seed=3)
    x, _, _, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float64", seed=4)
    theirs = run_torch(lstm, x, None, None, None, dhs, dh_n, dc_n)
    ours = run_ours(backend, x, W_x, W_h, b, None, None, None, dhs, dh_n, dc_n)
    assert_parity(ours, theirs, TOL["float64"], with_state=False)
    # And against torch with an explicit zero state, for dh0 / dc0.
    zeros = np.zeros((B, H))
    theirs = run_torch(lstm, x, zeros, zeros, None, dhs, dh_n, dc_n)
    assert_parity(ours, theirs, TOL["float64"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_many_to_one_matches_torch(backend):
    """dhs=None, dc_n=None: only h_n carries a gradient."""
    T, B, D, H = 8, 4, 5, 6
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float64", seed=5)
    x, h0, c0, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float64", seed=6,
                                                many_to_one=True)
    assert dhs is None and dc_n is None
    theirs = run_torch(lstm, x, h0, c0, None, None, dh_n, None)
    ours = run_ours(backend, x, W_x, W_h, b, h0, c0, None, None, dh_n, None)
    assert_parity(ours, theirs, TOL["float64"])


LENGTHS = {
    # name: (T, B, D, H, lengths) — lengths unsorted, including T; torch needs >= 1
    "unsorted": (7, 5, 6, 9, [3, 7, 1, 7, 5]),
    "all-T": (4, 3, 2, 5, [4, 4, 4]),
    "all-1": (4, 3, 2, 5, [1, 1, 1]),
    "ascending": (6, 4, 3, 4, [1, 2, 4, 6]),
    "medium": (15, 10, 12, 33, [15, 2, 9, 1, 15, 7, 11, 3, 14, 5]),
}


@pytest.mark.parametrize("many_to_one", [False, True], ids=["seq", "many-to-one"])
@pytest.mark.parametrize("case", list(LENGTHS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_lengths_match_torch_packed(backend, case, many_to_one):
    T, B, D, H, lengths = LENGTHS[case]
    lengths = np.array(lengths)
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float64", seed=7)
    x, h0, c0, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float64", seed=8,
                                                many_to_one=many_to_one)
    theirs = run_torch(lstm, x, h0, c0, lengths, dhs, dh_n, dc_n)
    # The padded outputs are zero past each length on torch's side too.
    for s, L in enumerate(lengths):
        assert np.all(theirs[0][L:, s] == 0)
    ours = run_ours(backend, x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n)
    assert_parity(ours, theirs, TOL["float64"])
    hs = ours[0]
    for s, L in enumerate(lengths):
        assert np.all(hs[L:, s] == 0)
        np.testing.assert_array_equal(ours[1][s], hs[L - 1, s])   # h_n = last valid h


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_length_zero_on_our_side(backend):
    """A length-0 sequence (torch cannot pack it): its outputs are 0, h_n/c_n are h0/c0,
    dh0/dc0 are dh_n/dc_n, dx is 0; the others match torch run without it, and so do the
    weight gradients (the empty sequence contributes nothing)."""
    T, B, D, H = 6, 5, 4, 5
    lengths = np.array([4, 0, 6, 0, 2])
    keep = lengths > 0
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float64", seed=9)
    x, h0, c0, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float64", seed=10)
    hs, h_n, c_n, grads = run_ours(backend, x, W_x, W_h, b, h0, c0, lengths,
                                   dhs, dh_n, dc_n)
    for s in np.flatnonzero(~keep):
        assert np.all(hs[:, s] == 0)
        np.testing.assert_array_equal(h_n[s], h0[s])
        np.testing.assert_array_equal(c_n[s], c0[s])
        np.testing.assert_array_equal(grads.dh0[s], dh_n[s])
        np.testing.assert_array_equal(grads.dc0[s], dc_n[s])
        assert np.all(grads.dx[:, s] == 0)

    sub = lambda a, axis: np.ascontiguousarray(np.compress(keep, a, axis=axis))
    t_hs, t_h, t_c, t_grads = run_torch(lstm, sub(x, 1), sub(h0, 0), sub(c0, 0),
                                        lengths[keep], sub(dhs, 1), sub(dh_n, 0),
                                        sub(dc_n, 0))
    tol = TOL["float64"]
    assert rel_err(sub(hs, 1), t_hs) <= tol
    assert rel_err(sub(h_n, 0), t_h) <= tol
    assert rel_err(sub(c_n, 0), t_c) <= tol
    assert rel_err(sub(grads.dx, 1), t_grads["dx"]) <= tol
    assert rel_err(sub(grads.dh0, 0), t_grads["dh0"]) <= tol
    assert rel_err(sub(grads.dc0, 0), t_grads["dc0"]) <= tol
    assert rel_err(grads.dW_x, t_grads["dW_x"]) <= tol
    assert rel_err(grads.dW_h, t_grads["dW_h"]) <= tol
    assert rel_err(grads.db, t_grads["db"]) <= tol


@pytest.mark.parametrize("num_threads", [1, 2])
def test_cython_threads_match_torch(num_threads):
    if not _compiled():
        pytest.skip("compiled kernels not built")
    T, B, D, H = 9, 7, 5, 11
    lengths = np.array([9, 3, 1, 9, 6, 2, 8])
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float64", seed=11)
    x, h0, c0, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float64", seed=12)
    theirs = run_torch(lstm, x, h0, c0, lengths, dhs, dh_n, dc_n)
    ours = run_ours("cython", x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n,
                    num_threads=num_threads)
    assert_parity(ours, theirs, TOL["float64"])


FLOAT32_CASES = {
    # name: (T, B, D, H, lengths)
    "small": (5, 3, 4, 6, None),
    "long": (40, 4, 8, 16, None),   # T * rows per thread large enough for packed GEMM
    "lengths": (20, 6, 8, 33, [20, 3, 1, 20, 11, 7]),
}


@pytest.mark.parametrize("case", list(FLOAT32_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_torch(backend, case):
    T, B, D, H, lengths = FLOAT32_CASES[case]
    lengths = None if lengths is None else np.array(lengths)
    lstm, W_x, W_h, b = make_torch_lstm(D, H, "float32", seed=13)
    assert W_x.dtype == W_h.dtype == b.dtype == np.float32
    x, h0, c0, dhs, dh_n, dc_n = random_problem(T, B, D, H, "float32", seed=14)
    theirs = run_torch(lstm, x, h0, c0, lengths, dhs, dh_n, dc_n)
    assert theirs[0].dtype == np.float32
    ours = run_ours(backend, x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n)
    assert ours[0].dtype == np.float32
    assert_parity(ours, theirs, TOL["float32"])


def test_torch_weights_round_trip():
    """The README's mapping back: weight_ih_l0 = W_x.T, weight_hh_l0 = W_h.T,
    bias_ih_l0 = b, bias_hh_l0 = 0 gives the same LSTM."""
    T, B, D, H = 4, 2, 3, 5
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H)
    lstm = torch.nn.LSTM(D, H).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.tensor(W_x.T))
        lstm.weight_hh_l0.copy_(torch.tensor(W_h.T))
        lstm.bias_ih_l0.copy_(torch.tensor(b))
        lstm.bias_hh_l0.zero_()
        out, _ = lstm(torch.tensor(x), (torch.tensor(h0[None]), torch.tensor(c0[None])))
    hs, _, _ = reference.lstm_forward(x, W_x, W_h, b, h0, c0)
    assert rel_err(hs, out.numpy()) < 1e-12

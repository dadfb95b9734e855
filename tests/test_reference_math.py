"""The reference itself: against a direct scalar transcription of the equations, against
central finite differences (float64), and against torch.nn.LSTM when torch is present."""
import numpy as np
import pytest

from fastlstm import reference
from conftest import make_lstm_inputs, mixed_lengths, rel_err


def scalar_lstm(x, W_x, W_h, b, h0, c0, lengths):
    """DESIGN.md's equations one sequence, one step and one unit at a time."""
    T, B, D = x.shape
    H = W_h.shape[0]
    hs = np.zeros((T, B, H))
    h_n = np.zeros((B, H))
    c_n = np.zeros((B, H))
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    for s in range(B):
        h = list(h0[s])
        c = list(c0[s])
        for t in range(lengths[s]):
            a = [b[k] + sum(x[t, s, d] * W_x[d, k] for d in range(D))
                 + sum(h[j] * W_h[j, k] for j in range(H)) for k in range(4 * H)]
            new_h, new_c = [], []
            for j in range(H):
                i, f = sig(a[j]), sig(a[H + j])
                g, o = np.tanh(a[2 * H + j]), sig(a[3 * H + j])
                new_c.append(f * c[j] + i * g)
                new_h.append(o * np.tanh(new_c[-1]))
            h, c = new_h, new_c
            hs[t, s] = h
        h_n[s], c_n[s] = h, c
    return hs, h_n, c_n


def test_forward_matches_the_equations():
    T, B, D, H = 4, 4, 3, 2
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H)
    lengths = np.array([4, 0, 2, 1])
    hs, (h_n, c_n), _ = reference.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths)
    e_hs, e_h, e_c = scalar_lstm(x, W_x, W_h, b, h0, c0, lengths)
    assert rel_err(hs, e_hs) < 1e-13
    assert rel_err(h_n, e_h) < 1e-13
    assert rel_err(c_n, e_c) < 1e-13
    full_hs, _, _ = reference.lstm_forward(x, W_x, W_h, b, h0, c0)
    assert rel_err(full_hs, scalar_lstm(x, W_x, W_h, b, h0, c0, [T] * B)[0]) < 1e-13


def test_zero_initial_state_is_the_default():
    x, W_x, W_h, b, _, _ = make_lstm_inputs(3, 2, 3, 4, state=False)
    zeros = np.zeros((2, 4))
    a = reference.lstm_forward(x, W_x, W_h, b)
    r = reference.lstm_forward(x, W_x, W_h, b, zeros, zeros)
    np.testing.assert_array_equal(a[0], r[0])


@pytest.mark.parametrize("case", ["full", "lengths", "many-to-one"])
def test_gradients_match_finite_differences(case):
    T, B, D, H = 3, 3, 4, 3
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, seed=11)
    rng = np.random.default_rng(12)
    R_hs = None if case == "many-to-one" else rng.standard_normal((T, B, H))
    R_h = rng.standard_normal((B, H))
    R_c = rng.standard_normal((B, H))
    lengths = np.array([3, 0, 1]) if case == "lengths" else None
    params = {"x": x, "h0": h0, "c0": c0, "W_x": W_x, "W_h": W_h, "b": b}

    def loss():
        hs, (h_n, c_n), _ = reference.lstm_forward(params["x"], params["W_x"], params["W_h"],
                                                   params["b"], params["h0"], params["c0"],
                                                   lengths=lengths)
        total = np.sum(h_n * R_h) + np.sum(c_n * R_c)
        return total if R_hs is None else total + np.sum(hs * R_hs)

    _, _, cache = reference.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths)
    grads = reference.lstm_backward(R_hs, cache, R_h, R_c)
    analytic = {"x": grads.dx, "h0": grads.dh0, "c0": grads.dc0, "W_x": grads.dW_x,
                "W_h": grads.dW_h, "b": grads.db}
    eps = 1e-6
    for name, p in params.items():
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = loss()
            p[idx] = old - eps
            down = loss()
            p[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        assert rel_err(analytic[name], numeric) < 1e-7, (name, rel_err(analytic[name], numeric))


# --- torch.nn.LSTM parity -------------------------------------------------------------

def _torch_lstm(torch, D, H, dtype, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(D, H).to(dtype)
    W_x = lstm.weight_ih_l0.detach().numpy().T.copy()
    W_h = lstm.weight_hh_l0.detach().numpy().T.copy()
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy().copy()
    return lstm, W_x, W_h, b


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_matches_torch_lstm(dtype_name, with_lengths, backend):
    torch = pytest.importorskip("torch")
    import fastlstm
    if backend == "cython" and not fastlstm.config()["compiled"]:
        pytest.skip("compiled kernels not built")
    T, B, D, H = 7, 5, 6, 9
    np_dtype = np.dtype(dtype_name)
    t_dtype = getattr(torch, dtype_name)
    tol = 1e-10 if dtype_name == "float64" else 2e-5
    lstm, W_x, W_h, b = _torch_lstm(torch, D, H, t_dtype)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((T, B, D)).astype(np_dtype)
    h0 = rng.standard_normal((B, H)).astype(np_dtype)
    c0 = rng.standard_normal((B, H)).astype(np_dtype)
    dhs = rng.standard_normal((T, B, H)).astype(np_dtype)
    dh_n = rng.standard_normal((B, H)).astype(np_dtype)
    dc_n = rng.standard_normal((B, H)).astype(np_dtype)
    lengths = np.array([7, 3, 1, 7, 5]) if with_lengths else None   # unsorted; torch needs >= 1

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    c0t = torch.tensor(c0[None], requires_grad=True)
    if with_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out, (h_nt, c_nt) = lstm(packed, (h0t, c0t))
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    else:
        out, (h_nt, c_nt) = lstm(xt, (h0t, c0t))
    loss = ((out * torch.tensor(dhs)).sum() + (h_nt[0] * torch.tensor(dh_n)).sum()
            + (c_nt[0] * torch.tensor(dc_n)).sum())
    loss.backward()

    hs, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths,
                                                  backend=backend)
    grads = fastlstm.lstm_backward(dhs, cache, dh_n, dc_n)
    assert rel_err(hs, out.detach().numpy()) < tol
    assert rel_err(h_n, h_nt[0].detach().numpy()) < tol
    assert rel_err(c_n, c_nt[0].detach().numpy()) < tol
    assert rel_err(grads.dx, xt.grad.numpy()) < tol
    assert rel_err(grads.dh0, h0t.grad[0].numpy()) < tol
    assert rel_err(grads.dc0, c0t.grad[0].numpy()) < tol
    assert rel_err(grads.dW_x, lstm.weight_ih_l0.grad.numpy().T) < tol
    assert rel_err(grads.dW_h, lstm.weight_hh_l0.grad.numpy().T) < tol
    assert rel_err(grads.db, lstm.bias_ih_l0.grad.numpy()) < tol
    assert rel_err(grads.db, lstm.bias_hh_l0.grad.numpy()) < tol


def test_torch_weights_round_trip():
    """The README's mapping back: weight_ih_l0 = W_x.T, weight_hh_l0 = W_h.T, bias_ih_l0 = b."""
    torch = pytest.importorskip("torch")
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

"""The vanilla-RNN reference: against the equations, finite differences, a direct
implementation of the truncated-BPTT definition, torch.nn.RNN, and the error rules."""
import numpy as np
import pytest

from fastlstm import reference
from conftest import numeric_grad, rel_err

T, B, D, H = 5, 3, 2, 3


def make_rnn(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return dict(x=rng.standard_normal((T, B, D)).astype(dtype),
                W_x=rng.uniform(-k, k, (D, H)).astype(dtype) * 2,
                W_h=rng.uniform(-k, k, (H, H)).astype(dtype) * 2,
                b=rng.uniform(-k, k, H).astype(dtype),
                h0=rng.standard_normal((B, H)).astype(dtype))


ACT = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_forward_matches_the_equations(nonlinearity):
    p = make_rnn()
    lengths = np.array([5, 0, 2])
    hs, h_n, _ = reference.rnn_forward(**p, nonlinearity=nonlinearity, lengths=lengths)
    act = ACT[nonlinearity]
    for s in range(B):
        h = p["h0"][s].copy()
        for t in range(T):
            if t < lengths[s]:
                h = act(p["x"][t, s] @ p["W_x"] + h @ p["W_h"] + p["b"])
                assert rel_err(hs[t, s], h) < 1e-14
            else:
                assert not np.any(hs[t, s])
        assert rel_err(h_n[s], h) < 1e-14


def _windows_loss(p, nonlinearity, R, R_n, lengths, k, frozen):
    """The truncated-BPTT objective written out: each loss term recomputes its own
    window of k + 1 steps from the state before the window, taken from ``frozen`` (no
    gradient) unless the window starts at step 0, where the state is h0 itself."""
    act = ACT[nonlinearity]
    total = 0.0
    for s in range(B):
        terms = [(t, R[t, s]) for t in range(lengths[s])]
        if lengths[s] == 0:
            total += p["h0"][s] @ R_n[s]          # h_n is h0 itself
        else:
            terms.append((lengths[s] - 1, R_n[s]))
        for t, weight in terms:
            start = max(t - k, 0)
            h = p["h0"][s] if start == 0 else frozen[start, s]
            for u in range(start, t + 1):
                h = act(p["x"][u, s] @ p["W_x"] + h @ p["W_h"] + p["b"])
            total += h @ weight
    return total


def _numeric_grads(p, loss):
    return {name: numeric_grad(loss, p[name]) for name in ("x", "h0", "W_x", "W_h", "b")}


def _as_dict(grads):
    return {"x": grads.dx, "h0": grads.dh0, "W_x": grads.dW_x, "W_h": grads.dW_h,
            "b": grads.db}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("k", [0, 1, 2, T - 2, T - 1, None])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_backward_matches_the_definition(nonlinearity, k, with_lengths):
    """Full and truncated BPTT against finite differences of the objective written out
    window by window (for k=None, one window covering everything: plain gradients)."""
    p = make_rnn(seed=3)
    rng = np.random.default_rng(4)
    R = rng.standard_normal((T, B, H))
    R_n = rng.standard_normal((B, H))
    lengths = np.array([5, 0, 3]) if with_lengths else np.full(B, T)
    _, _, cache = reference.rnn_forward(**p, nonlinearity=nonlinearity,
                                        lengths=lengths if with_lengths else None)
    frozen = cache.h_states.copy()   # states before each step: frozen[t] feeds step t
    window = T if k is None else k
    numeric = _numeric_grads(
        p, lambda: _windows_loss(p, nonlinearity, R, R_n, lengths, window, frozen))
    analytic = _as_dict(reference.rnn_backward(R, cache, R_n, bptt_truncate=k))
    for name in numeric:
        assert rel_err(analytic[name], numeric[name]) < 1e-6, (name, k)


def test_truncation_reaches_exactly_k_steps_back():
    """One loss term at the last step: with k, the inputs of the last k + 1 steps get
    gradient and no earlier input does."""
    p = make_rnn(seed=5)
    _, _, cache = reference.rnn_forward(**p)
    R = np.zeros((T, B, H))
    R[T - 1] = 1.0
    for k in range(T):
        dx = reference.rnn_backward(R, cache, bptt_truncate=k).dx
        reached = np.any(dx != 0, axis=(1, 2))
        assert list(reached) == [t >= T - 1 - k for t in range(T)], k


def test_many_to_one_and_zero_upstream():
    p = make_rnn()
    _, _, cache = reference.rnn_forward(**p)
    zero = reference.rnn_backward(None, cache)
    assert all(not np.any(g) for g in zero)
    only_final = reference.rnn_backward(None, cache, np.ones((B, H)))
    with_zeros = reference.rnn_backward(np.zeros((T, B, H)), cache, np.ones((B, H)))
    for a, b in zip(only_final, with_zeros):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_matches_torch_rnn(nonlinearity, with_lengths):
    torch = pytest.importorskip("torch")
    Tt, Bt, Dt, Ht = 6, 4, 5, 7
    torch.manual_seed(0)
    rnn = torch.nn.RNN(Dt, Ht, nonlinearity=nonlinearity).double()
    W_x = rnn.weight_ih_l0.detach().numpy().T.copy()
    W_h = rnn.weight_hh_l0.detach().numpy().T.copy()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy().copy()
    rng = np.random.default_rng(6)
    x = rng.standard_normal((Tt, Bt, Dt))
    h0 = rng.standard_normal((Bt, Ht))
    dhs = rng.standard_normal((Tt, Bt, Ht))
    dh_n = rng.standard_normal((Bt, Ht))
    lengths = np.array([6, 2, 4, 1]) if with_lengths else None
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    if with_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out, h_nt = rnn(packed, h0t)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=Tt)
    else:
        out, h_nt = rnn(xt, h0t)
    ((out * torch.tensor(dhs)).sum() + (h_nt[0] * torch.tensor(dh_n)).sum()).backward()
    hs, h_n, cache = reference.rnn_forward(x, W_x, W_h, b, h0, nonlinearity=nonlinearity,
                                           lengths=lengths)
    g = reference.rnn_backward(dhs, cache, dh_n)
    assert rel_err(hs, out.detach().numpy()) < 1e-12
    assert rel_err(h_n, h_nt[0].detach().numpy()) < 1e-12
    assert rel_err(g.dx, xt.grad.numpy()) < 1e-12
    assert rel_err(g.dh0, h0t.grad[0].numpy()) < 1e-12
    assert rel_err(g.dW_x, rnn.weight_ih_l0.grad.numpy().T) < 1e-12
    assert rel_err(g.dW_h, rnn.weight_hh_l0.grad.numpy().T) < 1e-12
    assert rel_err(g.db, rnn.bias_ih_l0.grad.numpy()) < 1e-12


BAD_FORWARD = [
    (dict(nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    (dict(nonlinearity=None), ValueError, "nonlinearity"),
    (dict(W_h=np.zeros((H, H + 1))), ValueError, "W_h"),
    (dict(W_x=np.zeros((D + 1, H))), ValueError, "W_x"),
    (dict(b=np.zeros(H + 1)), ValueError, "b"),
    (dict(h0=np.zeros((B, H + 1))), ValueError, "h0"),
    (dict(W_x=np.zeros((D, H), np.float32)), TypeError, "W_x"),
    (dict(lengths=[1, 2, T + 1]), ValueError, "lengths"),
    (dict(backend="fast"), ValueError, "backend"),
    (dict(num_threads=0), ValueError, "num_threads"),
]


@pytest.mark.parametrize("overrides, exc, name", BAD_FORWARD)
def test_forward_rejects_bad_input(overrides, exc, name):
    kwargs = make_rnn()
    kwargs.update(overrides)
    with pytest.raises(exc) as info:
        reference.rnn_forward(**kwargs)
    assert name in str(info.value)


@pytest.mark.parametrize("overrides, exc, name", [
    (dict(bptt_truncate=-1), ValueError, "bptt_truncate"),
    (dict(bptt_truncate=1.5), TypeError, "bptt_truncate"),
    (dict(bptt_truncate=True), TypeError, "bptt_truncate"),
    (dict(dhs=np.zeros((T, B, H + 1))), ValueError, "dhs"),
    (dict(dh_n=np.zeros((B, H), np.float32)), TypeError, "dh_n"),
    (dict(cache="cache"), TypeError, "cache"),
])
def test_backward_rejects_bad_input(overrides, exc, name):
    _, _, cache = reference.rnn_forward(**make_rnn())
    kwargs = dict(dhs=None, cache=cache, dh_n=None, bptt_truncate=None)
    kwargs.update(overrides)
    with pytest.raises(exc) as info:
        reference.rnn_backward(**kwargs)
    assert name in str(info.value)

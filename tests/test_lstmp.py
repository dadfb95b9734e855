"""The projected LSTM (``lstmp_forward`` / ``lstmp_backward``, torch's ``proj_size``).

* the NumPy reference against central differences (float64) for every input and weight,
  with and without ``lengths`` (0 and T included), and in the many-to-one case;
* the reference against ``torch.nn.LSTM(D, H, proj_size=P)`` (skipped without torch),
  forward and backward, packed sequences included;
* the compiled kernels against the reference;
* argument errors naming the argument, ``InputModifiedError``, and the kernel entry
  points called directly with bad arguments.
"""
import numpy as np
import pytest

import fastlstm
from fastlstm import reference
from conftest import mixed_lengths, numeric_grad, rel_err

INPUT_NAMES = ("x", "h0", "c0", "W_x", "W_h", "b", "W_hr")


def make_lstmp_inputs(T, B, D, H, P, dtype=np.float64, seed=0, state=True):
    """A dict x, W_x, W_h, b, W_hr, h0, c0 with torch's initial magnitudes (weights
    uniform +-1/sqrt(H)) and states large enough that the gates are away from 0.5;
    h0, c0 None unless ``state``."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    return {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "W_x": rng.uniform(-k, k, (D, 4 * H)).astype(dtype),
        "W_h": rng.uniform(-k, k, (P, 4 * H)).astype(dtype),
        "b": rng.uniform(-k, k, 4 * H).astype(dtype),
        "W_hr": rng.uniform(-k, k, (H, P)).astype(dtype),
        "h0": (0.5 * rng.standard_normal((B, P))).astype(dtype) if state else None,
        "c0": (0.5 * rng.standard_normal((B, H))).astype(dtype) if state else None,
    }


def upstream(T, B, H, P, dtype=np.float64, seed=1):
    """Random dhs (T, B, P), dh_n (B, P), dc_n (B, H)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, P)).astype(dtype),
            rng.standard_normal((B, P)).astype(dtype),
            rng.standard_normal((B, H)).astype(dtype))


def run(module, inp, lengths=None, dhs=None, dh_n=None, dc_n=None, **kwargs):
    """Forward and backward through ``module`` (fastlstm or fastlstm.reference)."""
    hs, (h_n, c_n), cache = module.lstmp_forward(
        inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["W_hr"], inp["h0"], inp["c0"],
        lengths=lengths, **kwargs)
    grads = module.lstmp_backward(dhs, cache, dh_n, dc_n)
    return hs, h_n, c_n, grads


# --------------------------------------------------------------------------------------
# reference: forward semantics and central differences
# --------------------------------------------------------------------------------------

def scalar_lstmp(inp, lengths=None):
    """The equations one sequence and one step at a time (NumPy only for the products
    of one row): a = x W_x + h W_h + b; c = f c + i g; m = o tanh(c); h = m W_hr."""
    x, W_x, W_h, b, W_hr = (inp[k] for k in ("x", "W_x", "W_h", "b", "W_hr"))
    T, B, _ = x.shape
    H, P = W_hr.shape
    hs = np.zeros((T, B, P))
    h_n, c_n = np.zeros((B, P)), np.zeros((B, H))
    for s in range(B):
        h = np.zeros(P) if inp["h0"] is None else inp["h0"][s].copy()
        c = np.zeros(H) if inp["c0"] is None else inp["c0"][s].copy()
        for t in range(T if lengths is None else int(lengths[s])):
            a = x[t, s] @ W_x + h @ W_h + b
            i, f, o = (1 / (1 + np.exp(-a[k * H:(k + 1) * H])) for k in (0, 1, 3))
            g = np.tanh(a[2 * H:3 * H])
            c = f * c + i * g
            h = (o * np.tanh(c)) @ W_hr
            hs[t, s] = h
        h_n[s], c_n[s] = h, c
    return hs, h_n, c_n


@pytest.mark.parametrize("lengths", [None, [3, 1, 0, 2]])
@pytest.mark.parametrize("state", [True, False])
def test_reference_forward_matches_the_equations(lengths, state):
    inp = make_lstmp_inputs(3, 4, 3, 5, 2, seed=3, state=state)
    hs, (h_n, c_n), cache = reference.lstmp_forward(*(inp[k] for k in (
        "x", "W_x", "W_h", "b", "W_hr", "h0", "c0")), lengths=lengths)
    e_hs, e_h, e_c = scalar_lstmp(inp, lengths)
    assert hs.shape == (3, 4, 2) and h_n.shape == (4, 2) and c_n.shape == (4, 5)
    assert rel_err(hs, e_hs) < 1e-13
    assert rel_err(h_n, e_h) < 1e-13
    assert rel_err(c_n, e_c) < 1e-13
    assert repr(cache).startswith("LSTMPCache(T=3, B=4, D=3, H=5, P=2")


GRADCHECK_CASES = {
    # name: (T, B, D, H, P, lengths, many_to_one)
    "full": (3, 2, 3, 4, 2, None, False),
    "lengths-0-and-T": (4, 4, 2, 3, 2, [4, 0, 1, 3], False),
    "many-to-one-lengths": (3, 3, 2, 3, 3, [2, 3, 1], True),
    "P>H": (2, 2, 2, 2, 3, None, False),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_reference_backward_matches_central_differences(case):
    T, B, D, H, P, lengths, many_to_one = GRADCHECK_CASES[case]
    inp = make_lstmp_inputs(T, B, D, H, P, seed=5)
    R, Rh, Rc = upstream(T, B, H, P, seed=6)
    if many_to_one:
        R, Rc = None, None

    def loss():
        hs, (h_n, c_n), _ = reference.lstmp_forward(
            inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["W_hr"], inp["h0"],
            inp["c0"], lengths=lengths)
        total = float(np.sum(h_n * Rh))
        if R is not None:
            total += float(np.sum(hs * R)) + float(np.sum(c_n * Rc))
        return total

    _, _, _, grads = run(reference, inp, lengths, R, Rh, Rc)
    analytic = {"x": grads.dx, "h0": grads.dh0, "c0": grads.dc0, "W_x": grads.dW_x,
                "W_h": grads.dW_h, "b": grads.db, "W_hr": grads.dW_hr}
    for name in INPUT_NAMES:
        numeric = numeric_grad(loss, inp[name])
        assert analytic[name].shape == inp[name].shape
        assert rel_err(analytic[name], numeric) < 1e-7, (name, rel_err(analytic[name],
                                                                       numeric))
    if lengths is not None:
        empty = np.asarray(lengths) == 0
        # A sequence of length 0 computes nothing: its state and gradients pass through.
        assert np.array_equal(grads.dh0[empty], Rh[empty])
        assert np.all(grads.dx[:, empty] == 0)


# --------------------------------------------------------------------------------------
# reference (and the compiled kernels) against torch.nn.LSTM(proj_size=P)
# --------------------------------------------------------------------------------------

def torch_lstmp(D, H, P, dtype, seed=0):
    """A torch.nn.LSTM(D, H, proj_size=P) and the dict of our weights it corresponds to
    (W_x = weight_ih_l0.T, W_h = weight_hh_l0.T, b = the two biases' sum,
    W_hr = weight_hr_l0.T)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(D, H, proj_size=P).to(getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():   # different biases, so their sum is exercised
        lstm.bias_hh_l0.add_(0.1 * torch.randn_like(lstm.bias_hh_l0))
    t = lambda p: np.ascontiguousarray(p.detach().numpy().T)  # noqa: E731
    weights = {"W_x": t(lstm.weight_ih_l0), "W_h": t(lstm.weight_hh_l0),
               "b": (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy().copy(),
               "W_hr": t(lstm.weight_hr_l0)}
    assert weights["W_h"].shape == (P, 4 * H) and weights["W_hr"].shape == (H, P)
    return lstm, weights


def run_torch_lstmp(lstm, x, h0, c0, lengths, dhs, dh_n, dc_n):
    """torch forward + autograd of sum(out*dhs) + sum(h_n*dh_n) + sum(c_n*dc_n):
    numpy hs, h_n, c_n and the gradients in our layout."""
    import torch
    lstm.zero_grad(set_to_none=True)
    T = x.shape[0]
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    c0t = torch.tensor(c0[None], requires_grad=True)
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.as_tensor(np.asarray(lengths, np.int64)), enforce_sorted=False)
        out, (h_nt, c_nt) = lstm(packed, (h0t, c0t))
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    else:
        out, (h_nt, c_nt) = lstm(xt, (h0t, c0t))
    loss = (h_nt[0] * torch.tensor(dh_n)).sum()
    if dhs is not None:
        loss = loss + (out * torch.tensor(dhs)).sum()
    if dc_n is not None:
        loss = loss + (c_nt[0] * torch.tensor(dc_n)).sum()
    loss.backward()
    grads = {"dx": xt.grad.numpy(), "dh0": h0t.grad[0].numpy(), "dc0": c0t.grad[0].numpy(),
             "dW_x": lstm.weight_ih_l0.grad.numpy().T, "dW_h": lstm.weight_hh_l0.grad.numpy().T,
             "db": lstm.bias_ih_l0.grad.numpy(), "db_hh": lstm.bias_hh_l0.grad.numpy(),
             "dW_hr": lstm.weight_hr_l0.grad.numpy().T}
    return (out.detach().numpy(), h_nt[0].detach().numpy(), c_nt[0].detach().numpy(),
            grads)


def _compiled():
    return fastlstm.config()["compiled"]


TORCH_BACKENDS = ["reference",
                  pytest.param("cython", marks=pytest.mark.skipif(
                      not _compiled(), reason="compiled kernels not built"))]

TORCH_CASES = {
    # name: (T, B, D, H, P, lengths or None (torch cannot pack a length of 0), many_to_one)
    "small": (5, 3, 4, 6, 3, None, False),
    "single": (1, 1, 1, 2, 1, None, False),
    "odd": (9, 5, 7, 13, 5, None, False),
    "many-to-one": (6, 4, 5, 7, 3, None, True),
    "packed-unsorted": (7, 5, 6, 9, 4, [3, 7, 1, 7, 5], False),
    "packed-medium": (12, 8, 10, 20, 7, [12, 2, 9, 1, 12, 7, 11, 3], False),
}


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_matches_torch(backend, case, dtype):
    T, B, D, H, P, lengths, many_to_one = TORCH_CASES[case]
    lstm, inp = torch_lstmp(D, H, P, dtype, seed=7)
    rng = np.random.default_rng(8)
    inp["x"] = rng.standard_normal((T, B, D)).astype(dtype)
    inp["h0"] = (0.5 * rng.standard_normal((B, P))).astype(dtype)
    inp["c0"] = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    dhs, dh_n, dc_n = upstream(T, B, H, P, dtype, seed=9)
    if many_to_one:
        dhs, dc_n = None, None
    theirs = run_torch_lstmp(lstm, inp["x"], inp["h0"], inp["c0"], lengths, dhs, dh_n, dc_n)
    if backend == "reference":
        hs, h_n, c_n, grads = run(reference, inp, lengths, dhs, dh_n, dc_n)
    else:
        hs, h_n, c_n, grads = run(fastlstm, inp, lengths, dhs, dh_n, dc_n,
                                  backend="cython", num_threads=2)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    t_hs, t_h, t_c, t_grads = theirs
    errors = {"hs": rel_err(hs, t_hs), "h_n": rel_err(h_n, t_h), "c_n": rel_err(c_n, t_c)}
    errors.update({name: rel_err(getattr(grads, name.replace("_hh", "")), t_grads[name])
                   for name in t_grads})
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    assert all(a.dtype == np.dtype(dtype) for a in (hs, h_n, c_n, *grads))

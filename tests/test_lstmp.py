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


# --------------------------------------------------------------------------------------
# the compiled kernels against the reference (run in float64 on the same values)
# --------------------------------------------------------------------------------------

compiled_only = pytest.mark.skipif(not _compiled(), reason="compiled kernels not built")
OUTPUTS = ("hs", "h_n", "c_n")
ALL_FIELDS = OUTPUTS + fastlstm.LSTMPGrads._fields
F32_EPS = float(np.finfo(np.float32).eps)


def tolerance(dtype, T, B, D, H, P):
    """float64: 1e-10, the contract. float32: the results are sums of at most
    n = T*B + D + 4H + H + P rounded float32 terms (the weight gradients reduce over the
    T*B rows; a step's products over D, P and H inputs, the backward's over 4H and P),
    whose error grows like sqrt(n) eps for random data; 16 sqrt(n) eps leaves an order
    of magnitude over what the kernels show, as in test_compiled_vs_reference.py."""
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 16 * F32_EPS * np.sqrt(T * B + D + 5 * H + P)


def compiled_rel_err(actual, expected):
    """rel_err, with finite values required and an exact 0 required where the reference
    is all zeros."""
    actual = np.asarray(actual, np.float64)
    assert np.all(np.isfinite(actual)), "non-finite values in the result"
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max()
                 / max(np.abs(expected).max(), 1e-30))


def run_all(backend, inp, up, *, lengths=None, num_threads=None, h0=True, c0=True,
            dhs=True, dh_n=True, dc_n=True):
    """Forward and backward on ``backend`` ("cython" or "numpy"); a dict of the 10
    result arrays. The flags drop the optional arguments (None)."""
    hs, (h_n, c_n), cache = fastlstm.lstmp_forward(
        inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["W_hr"],
        inp["h0"] if h0 else None, inp["c0"] if c0 else None, lengths=lengths,
        backend=backend, num_threads=num_threads)
    assert cache.backend == ("numpy" if backend == "numpy" else "cython")
    grads = fastlstm.lstmp_backward(up[0] if dhs else None, cache, up[1] if dh_n else None,
                                    up[2] if dc_n else None)
    return dict(zip(ALL_FIELDS, (hs, h_n, c_n) + tuple(grads)))


def check_compiled(T, B, D, H, P, dtype, seed=0, **kw):
    inp = make_lstmp_inputs(T, B, D, H, P, dtype, seed)
    up = upstream(T, B, H, P, dtype, seed + 1)
    out = run_all("cython", inp, up, **kw)
    ref = run_all("numpy", {k: v.astype(np.float64) for k, v in inp.items()},
                  tuple(u.astype(np.float64) for u in up), **kw)
    shapes = dict(hs=(T, B, P), h_n=(B, P), c_n=(B, H), dx=(T, B, D), dh0=(B, P),
                  dc0=(B, H), dW_x=(D, 4 * H), dW_h=(P, 4 * H), db=(4 * H,), dW_hr=(H, P))
    for name, a in out.items():
        assert a.dtype == np.dtype(dtype) and a.shape == shapes[name], (name, a.dtype,
                                                                      a.shape)
    tol = tolerance(dtype, T, B, D, H, P)
    errors = {name: compiled_rel_err(out[name], ref[name]) for name in ALL_FIELDS}
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{(T, B, D, H, P)} {kw}: relative errors above {tol:.3g}: {bad}"
    return inp, up, out


SHAPES = {
    # name: (T, B, D, H, P)
    "one-step-one-seq": (1, 1, 3, 7, 3),
    "one-step": (1, 3, 4, 7, 3),
    "one-seq": (9, 1, 5, 13, 5),          # the GEMV / dot-product path
    "odd": (11, 5, 7, 13, 5),             # B not divisible by 2 threads, H not by 8
    "P>H": (6, 4, 3, 5, 12),
    "P>4H": (5, 4, 3, 2, 11),            # scratch sized by P, not 4H
    "wide": (12, 6, 9, 130, 64),          # packed kernels (T * rows >= 32), H > 4 panels
    "chunks": (40, 8, 6, 9, 4),           # the backward in 5 chunks of 8 steps
}


def test_chunk_shape_spans_several_chunks():
    from fastlstm._buffers import backward_chunk_steps
    T, B = SHAPES["chunks"][:2]
    assert -(-T // backward_chunk_steps(T, B)) >= 3


@compiled_only
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_compiled_matches_reference(shape, dtype, num_threads, lengths):
    T, B, D, H, P = SHAPES[shape]
    check_compiled(T, B, D, H, P, dtype, num_threads=num_threads,
                   lengths=None if lengths == "full" else mixed_lengths(T, B))


@compiled_only
@pytest.mark.parametrize("paths", ["blas", "own-kernels"])
@pytest.mark.parametrize("shape", ["odd", "P>4H", "wide"])
def test_compiled_paths_match_reference(shape, paths, monkeypatch):
    """float32 with the step products forced onto BLAS, or onto fastlstm's packed kernels
    at any size (the heuristics pick one of them by size)."""
    from fastlstm import _schedule
    if paths == "blas":
        monkeypatch.setattr(_schedule, "PACKED_GEMM_ENABLED", False)
    else:
        monkeypatch.setattr(_schedule, "PACKED_GEMM_MIN_STEP_ROWS", 1)
        monkeypatch.setattr(_schedule, "NT_MAX_ROWS_AVX2", 10**9)
    T, B, D, H, P = SHAPES[shape]
    for num_threads in (1, 2):
        check_compiled(T, B, D, H, P, np.float32, num_threads=num_threads,
                       lengths=mixed_lengths(T, B, seed=3))


OPTIONAL = {
    # which optional arguments are None
    "no-state": dict(h0=False, c0=False),
    "no-h0": dict(h0=False),
    "many-to-one": dict(dhs=False, dc_n=False),
    "no-final-grads": dict(dh_n=False, dc_n=False),
    "only-dc_n": dict(dhs=False, dh_n=False),
}


@compiled_only
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optional", list(OPTIONAL))
def test_compiled_optional_arguments(optional, dtype):
    T, B, D, H, P = SHAPES["odd"]
    check_compiled(T, B, D, H, P, dtype, num_threads=2, lengths=mixed_lengths(T, B),
                   **OPTIONAL[optional])


@compiled_only
@pytest.mark.parametrize("lengths", [None, [0, 7, 3, 1, 5]])
def test_batch_equals_sequences_one_at_a_time(lengths):
    """Each sequence run alone (B = 1, x cut to its length) gives its slice of the
    batch's results; the sequences' weight gradients add up to the batch's."""
    T, B, D, H, P = 7, 5, 4, 9, 3
    inp = make_lstmp_inputs(T, B, D, H, P, seed=11)
    dhs, dh_n, dc_n = upstream(T, B, H, P, seed=12)
    batch = run_all("cython", inp, (dhs, dh_n, dc_n), lengths=lengths, num_threads=2)
    sums = {name: np.zeros_like(batch[name]) for name in ("dW_x", "dW_h", "db", "dW_hr")}
    for i, L in enumerate(np.full(B, T) if lengths is None else lengths):
        s = slice(i, i + 1)
        if L == 0:   # nothing runs: state and gradients pass straight through
            assert np.array_equal(batch["h_n"][s], inp["h0"][s])
            assert np.array_equal(batch["c_n"][s], inp["c0"][s])
            assert np.array_equal(batch["dh0"][s], dh_n[s])
            assert np.array_equal(batch["dc0"][s], dc_n[s])
            assert not np.any(batch["hs"][:, i]) and not np.any(batch["dx"][:, i])
            continue
        one = dict(inp, x=inp["x"][:L, s], h0=inp["h0"][s], c0=inp["c0"][s])
        single = run_all("cython", one, (dhs[:L, s], dh_n[s], dc_n[s]), num_threads=1)
        mine = dict(hs=batch["hs"][:L, s], h_n=batch["h_n"][s], c_n=batch["c_n"][s],
                    dx=batch["dx"][:L, s], dh0=batch["dh0"][s], dc0=batch["dc0"][s])
        for name, a in mine.items():
            assert rel_err(a, single[name]) < 1e-12, (i, name)
        assert not np.any(batch["hs"][L:, i]) and not np.any(batch["dx"][L:, i])
        for name in sums:
            sums[name] += single[name]
    for name, total in sums.items():
        assert rel_err(batch[name], total) < 1e-12, name


@compiled_only
def test_caches_are_interchangeable_and_inputs_untouched():
    """Either backend's backward runs on the other's cache (one layout, frozen steps
    included), the backward can run twice, and no input array is written to."""
    T, B, D, H, P = 6, 4, 5, 7, 3
    lengths = [6, 0, 2, 5]
    inp = make_lstmp_inputs(T, B, D, H, P, seed=2)
    dhs, dh_n, dc_n = upstream(T, B, H, P, seed=3)
    before = {k: v.copy() for k, v in inp.items()}
    args = [inp[k] for k in ("x", "W_x", "W_h", "b", "W_hr", "h0", "c0")]
    _, _, compiled_cache = fastlstm.lstmp_forward(*args, lengths=lengths, backend="cython")
    _, _, numpy_cache = fastlstm.lstmp_forward(*args, lengths=lengths, backend="numpy")
    for name in ("gates", "h_states", "c_states", "m_states"):
        a, b = getattr(compiled_cache, name), getattr(numpy_cache, name)
        assert a.shape == b.shape and a.dtype == b.dtype
    assert not np.any(compiled_cache.m_states[np.arange(T)[:, None] >= lengths])
    expected = reference.lstmp_backward(dhs, numpy_cache, dh_n, dc_n)
    for grads in (reference.lstmp_backward(dhs, compiled_cache, dh_n, dc_n),
                  fastlstm.lstmp_backward(dhs, compiled_cache, dh_n, dc_n),
                  fastlstm.lstmp_backward(dhs, compiled_cache, dh_n, dc_n)):
        for name, g, e in zip(grads._fields, grads, expected):
            assert rel_err(g, e) < 1e-12, name
    for k, v in inp.items():
        assert np.array_equal(v, before[k]), k


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

T0, B0, D0, H0, P0 = 3, 2, 4, 5, 2
FORWARD_ERRORS = {
    # name: (argument, bad value (a function of the good inputs), exception)
    "x-2d": ("x", lambda i: i["x"][0], ValueError),
    "x-int": ("x", lambda i: i["x"].astype(np.int64), TypeError),
    "W_x-shape": ("W_x", lambda i: i["W_x"][:, :-1], ValueError),
    "W_h-(H,4H)": ("W_h", lambda i: np.zeros((H0, 4 * H0)), ValueError),
    "W_h-float32": ("W_h", lambda i: i["W_h"].astype(np.float32), TypeError),
    "b-shape": ("b", lambda i: i["b"][:-1], ValueError),
    "W_hr-1d": ("W_hr", lambda i: i["W_hr"].ravel(), ValueError),
    "W_hr-none": ("W_hr", lambda i: None, TypeError),
    "W_hr-float32": ("W_hr", lambda i: i["W_hr"].astype(np.float32), TypeError),
    "W_hr-no-columns": ("W_hr", lambda i: np.zeros((H0, 0)), ValueError),
    "h0-(B,H)": ("h0", lambda i: np.zeros((B0, H0)), ValueError),
    "c0-(B,P)": ("c0", lambda i: np.zeros((B0, P0)), ValueError),
    "c0-text": ("c0", lambda i: "zeros", TypeError),
    "lengths-above-T": ("lengths", lambda i: [T0 + 1, 1], ValueError),
    "lengths-negative": ("lengths", lambda i: [-1, 1], ValueError),
    "lengths-fraction": ("lengths", lambda i: [1.5, 1], ValueError),
    "lengths-shape": ("lengths", lambda i: [1, 1, 1], ValueError),
    "backend": ("backend", lambda i: "torch", ValueError),
    "num_threads-0": ("num_threads", lambda i: 0, ValueError),
    "num_threads-float": ("num_threads", lambda i: 1.5, TypeError),
}


def _forward_with(module, inp, argument, value):
    kwargs = dict(lengths=None, backend="numpy" if module is reference else "auto",
                  num_threads=None)
    args = dict(inp)
    if argument in kwargs:
        kwargs[argument] = value
    else:
        args[argument] = value
    return module.lstmp_forward(args["x"], args["W_x"], args["W_h"], args["b"],
                                args["W_hr"], args["h0"], args["c0"], **kwargs)


@pytest.mark.parametrize("module", [fastlstm, reference], ids=["fastlstm", "reference"])
@pytest.mark.parametrize("case", list(FORWARD_ERRORS))
def test_forward_errors_name_the_argument(case, module):
    argument, bad, error = FORWARD_ERRORS[case]
    inp = make_lstmp_inputs(T0, B0, D0, H0, P0)
    with pytest.raises(error) as info:
        _forward_with(module, inp, argument, bad(inp))
    assert argument in str(info.value)


BACKWARD_ERRORS = {
    # name: (argument, bad value, exception)
    "dhs-(T,B,H)": ("dhs", np.zeros((T0, B0, H0)), ValueError),
    "dhs-float32": ("dhs", np.zeros((T0, B0, P0), np.float32), TypeError),
    "dh_n-(B,H)": ("dh_n", np.zeros((B0, H0)), ValueError),
    "dc_n-(B,P)": ("dc_n", np.zeros((B0, P0)), ValueError),
    "dc_n-text": ("dc_n", "zeros", TypeError),
    "cache-lstm": ("cache", "lstm", TypeError),
    "cache-none": ("cache", None, TypeError),
}


@pytest.mark.parametrize("module", [fastlstm, reference], ids=["fastlstm", "reference"])
@pytest.mark.parametrize("case", list(BACKWARD_ERRORS))
def test_backward_errors_name_the_argument(case, module):
    argument, bad, error = BACKWARD_ERRORS[case]
    inp = make_lstmp_inputs(T0, B0, D0, H0, P0)
    _, _, cache = _forward_with(module, inp, "backend",
                                "numpy" if module is reference else "auto")
    args = dict(dhs=None, cache=cache, dh_n=None, dc_n=None)
    if isinstance(bad, str) and bad == "lstm":
        x, W_x, W_h, b = (make_lstmp_inputs(T0, B0, D0, H0, H0)[k]
                          for k in ("x", "W_x", "W_h", "b"))
        bad = fastlstm.lstm_forward(x, W_x, W_h, b)[2]
    args[argument] = bad
    with pytest.raises(error) as info:
        module.lstmp_backward(**args)
    assert argument in str(info.value)


def test_cache_arrays_that_disagree_are_refused():
    inp = make_lstmp_inputs(T0, B0, D0, H0, P0)
    _, _, cache = _forward_with(reference, inp, "backend", "numpy")
    cache.m_states = cache.m_states[:, :, :-1].copy()
    with pytest.raises(ValueError, match="m_states"):
        reference.lstmp_backward(None, cache)


@pytest.mark.parametrize("full_check", [False, True], ids=["sampled", "debug-checks"])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("cython", marks=compiled_only)])
@pytest.mark.parametrize("name", ["x", "W_x", "W_h", "W_hr"])
def test_input_modified_between_forward_and_backward(name, backend, full_check):
    inp = make_lstmp_inputs(4, 3, 5, 6, 2, seed=4)
    previous = fastlstm.set_debug_checks(full_check)
    try:
        _, _, cache = _forward_with(fastlstm, inp, "backend", backend)
    finally:
        fastlstm.set_debug_checks(previous)
    if full_check:
        inp[name].flat[1] += 1.0   # one element: the full check catches it
    else:
        inp[name] *= 3.0           # the whole array: the sampled check catches it
    with pytest.raises(fastlstm.InputModifiedError) as info:
        fastlstm.lstmp_backward(None, cache, np.ones((3, 2)))
    assert info.value.name == name and name in str(info.value)
    assert "lstmp_forward" in str(info.value)


# --------------------------------------------------------------------------------------
# the kernel entry points, called directly with bad arguments: errors, not crashes
# --------------------------------------------------------------------------------------

def _kernel_arguments(dtype=np.float64):
    """Good arguments of both entry points for a small problem with lengths."""
    T, B, D, H, P = 4, 3, 5, 6, 2
    inp = make_lstmp_inputs(T, B, D, H, P, dtype)
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    fwd = dict(x=inp["x"], W_x=inp["W_x"], W_h=inp["W_h"], b=inp["b"], W_hr=inp["W_hr"],
               gates=z(T, B, 4 * H), h_states=z(T + 1, B, P), c_states=z(T + 1, B, H),
               m_states=z(T, B, H), hs=z(T, B, P), lengths=np.array([4, 0, 2], np.intc),
               packed=None, n_threads=2)
    bwd = dict(x=inp["x"], W_x=inp["W_x"], W_h=inp["W_h"], W_hr=inp["W_hr"],
               gates=fwd["gates"], h_states=fwd["h_states"], c_states=fwd["c_states"],
               m_states=fwd["m_states"], dhs=z(T, B, P), lengths=fwd["lengths"],
               dh=z(B, P), dc=z(B, H), dh_scratch=z(B, P), dm=z(B, H),
               d_gates=z(2, B, 4 * H), d_proj=z(2, B, P), dx=z(T, B, D), dW_x=z(D, 4 * H),
               dW_h=z(P, 4 * H), dW_hr=z(H, P), db_acc=np.zeros(4 * H), packed=None,
               nt_dx=False, n_threads=2)
    return fwd, bwd


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


KERNEL_ERRORS = {
    # name: (entry point, argument, bad value (a function of the good one), exception)
    "fwd-x-list": ("forward", "x", lambda a: a.tolist(), TypeError),
    "fwd-x-int": ("forward", "x", lambda a: a.astype(np.int32), TypeError),
    "fwd-W_hr-float32": ("forward", "W_hr", lambda a: a.astype(np.float32), TypeError),
    "fwd-W_hr-(P,H)": ("forward", "W_hr", lambda a: a.T.copy(), ValueError),
    "fwd-W_h-shape": ("forward", "W_h", lambda a: a[:1].copy(), ValueError),
    "fwd-b-2d": ("forward", "b", lambda a: a[None], TypeError),
    "fwd-h_states-short": ("forward", "h_states", lambda a: a[:-1].copy(), ValueError),
    "fwd-m_states-shape": ("forward", "m_states", lambda a: a[:, :, :-1].copy(), ValueError),
    "fwd-hs-read-only": ("forward", "hs", _read_only, TypeError),
    "fwd-hs-strided": ("forward", "hs", lambda a: np.zeros((8, 3, 2))[::2], TypeError),
    "fwd-lengths-range": ("forward", "lengths", lambda a: np.array([5, 0, 2], np.intc),
                          ValueError),
    "fwd-lengths-int64": ("forward", "lengths", lambda a: a.astype(np.int64), TypeError),
    "fwd-lengths-shape": ("forward", "lengths", lambda a: a[:2].copy(), ValueError),
    "fwd-packed-small": ("forward", "packed", lambda a: np.zeros(3, np.float32), ValueError),
    "fwd-n_threads-0": ("forward", "n_threads", lambda a: 0, ValueError),
    "bwd-dhs-shape": ("backward", "dhs", lambda a: a[:, :, :1].copy(), ValueError),
    "bwd-dc-shape": ("backward", "dc", lambda a: a[:, :-1].copy(), ValueError),
    "bwd-dm-read-only": ("backward", "dm", _read_only, TypeError),
    "bwd-d_gates-too-many-steps": ("backward", "d_gates",
                                   lambda a: np.zeros((5,) + a.shape[1:]), ValueError),
    "bwd-d_proj-steps": ("backward", "d_proj", lambda a: np.zeros((1,) + a.shape[1:]),
                         ValueError),
    "bwd-dW_hr-shape": ("backward", "dW_hr", lambda a: a.T.copy(), ValueError),
    "bwd-db_acc-float32": ("backward", "db_acc", lambda a: a.astype(np.float32),
                           TypeError),
    "bwd-m_states-dtype": ("backward", "m_states", lambda a: a.astype(np.float32),
                           TypeError),
    "bwd-packed-small": ("backward", "packed", lambda a: np.zeros(3, np.float32),
                         ValueError),
    "bwd-lengths-range": ("backward", "lengths", lambda a: np.array([-1, 0, 2], np.intc),
                          ValueError),
}


@compiled_only
@pytest.mark.parametrize("case", list(KERNEL_ERRORS))
def test_kernel_entry_points_check_their_arguments(case):
    from fastlstm import _lstmp
    which, name, bad, error = KERNEL_ERRORS[case]
    fwd, bwd = _kernel_arguments()
    if which == "forward":
        _lstmp.lstmp_forward_kernel(**fwd)   # the good arguments run
        fwd[name] = bad(fwd[name])
        with pytest.raises(error, match=name):
            _lstmp.lstmp_forward_kernel(**fwd)
    else:
        _lstmp.lstmp_backward_kernel(**bwd)
        bwd[name] = bad(bwd[name])
        with pytest.raises(error, match=name):
            _lstmp.lstmp_backward_kernel(**bwd)

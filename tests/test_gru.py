"""The GRU: the NumPy reference from first principles (central differences, torch.nn.GRU)
and the compiled kernels against the reference.

Loss for the gradient checks: ``L = sum(hs * R) + sum(h_n * Rh)`` with fixed random R,
Rh, so ``dhs = R`` and ``dh_n = Rh``.
"""
import contextlib
import json

import numpy as np
import pytest

import fastlstm
from fastlstm import _schedule, gru as gru_module, reference
from conftest import isa_limited, mixed_lengths, numeric_grad, rel_err, run_child

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


# --------------------------------------------------------------------------------------
# the compiled kernels against the reference
# --------------------------------------------------------------------------------------

compiled = pytest.mark.skipif(not fastlstm.config()["compiled"],
                              reason="compiled kernels not built")
F32_EPS = float(np.finfo(np.float32).eps)
RESULTS = ("hs", "h_n") + GRAD_NAMES


def tolerance(dtype, T, B, D, H):
    """float64: the 1e-10 contract. float32 (against the float64 reference on the same
    values): the results are sums of at most n = T*B + D + 3H rounded terms (weight
    gradients over all (step, sequence) rows, products over D and H inputs, one rounding
    per step of the recursion), whose error grows like sqrt(n) eps; 16 sqrt(n) eps is an
    order of magnitude above what the kernels show and far below 2e-4 at these sizes."""
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 16 * F32_EPS * np.sqrt(T * B + D + 3 * H)


def strict_rel_err(actual, expected):
    """rel_err that also insists on finite results and matching dtypes' shapes."""
    actual = np.asarray(actual)
    assert np.all(np.isfinite(actual)), "non-finite values in the result"
    return rel_err(actual, expected)


def gru_problem(T, B, D, H, dtype, seed=0):
    x, W_x, W_h, b_x, b_h, h0 = make_gru_inputs(T, B, D, H, dtype, seed)
    rng = np.random.default_rng(seed + 50)
    return dict(x=x, W_x=W_x, W_h=W_h, b_x=b_x, b_h=b_h, h0=h0,
                dhs=rng.standard_normal((T, B, H)).astype(dtype),
                dh_n=rng.standard_normal((B, H)).astype(dtype))


def run_gru(module, p, *, lengths=None, h0=True, dhs=True, dh_n=True, **kwargs):
    """Forward and backward through ``module`` (fastlstm or fastlstm.reference); a dict
    of hs, h_n and the six gradients."""
    hs, h_n, cache = module.gru_forward(p["x"], p["W_x"], p["W_h"], p["b_x"], p["b_h"],
                                        p["h0"] if h0 else None, lengths=lengths, **kwargs)
    grads = module.gru_backward(p["dhs"] if dhs else None, cache,
                                p["dh_n"] if dh_n else None)
    out = dict(hs=hs, h_n=h_n, **grads._asdict())
    out["cache"] = cache
    return out


def as_float64(p):
    return {k: v.astype(np.float64) for k, v in p.items()}


def assert_matches_reference(p, dtype, *, lengths=None, **options):
    """The compiled result of ``p`` against the reference in float64 on the same values."""
    T, B, D = p["x"].shape
    H = p["W_h"].shape[0]
    ours = run_gru(fastlstm, p, lengths=lengths, backend="cython", **options)
    threads = options.pop("num_threads", None)
    ref = run_gru(reference, as_float64(p), lengths=lengths, **options)
    assert ours["cache"].backend == "cython"
    tol = tolerance(dtype, T, B, D, H)
    errors = {}
    for name in RESULTS:
        assert ours[name].dtype == np.dtype(dtype), name
        errors[name] = strict_rel_err(ours[name], ref[name])
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"threads={threads}: relative errors above {tol:.2e}: {bad}"
    return ours


SHAPES = {
    # name: (T, B, D, H)
    "one-step": (1, 3, 4, 7),
    "one-sequence": (9, 1, 5, 13),
    "odd": (7, 5, 3, 13),
    "H-20": (6, 4, 5, 20),
    "wide-packed": (12, 8, 6, 130),        # packed step GEMM (batch or unit split)
    "one-sequence-wide": (8, 1, 4, 130),   # GEMV; the unit split at 2 threads
    "chunks": (40, 6, 3, 10),              # four backward chunks
}
OPTIONS = {
    "all-given": dict(),
    "no-h0-no-dh_n": dict(h0=False, dh_n=False),
    "many-to-one": dict(dhs=False),
}


@pytest.fixture(params=["default", "packed"])
def backward_pack(request):
    """The backward's step products as the size heuristic says, or over W_h^T packed
    from the first step (fastlstm._runtime.set_backward_pack_min_step_rows)."""
    if request.param == "packed":
        from fastlstm import _runtime
        previous = _runtime.set_backward_pack_min_step_rows(1)
        request.addfinalizer(lambda: _runtime.set_backward_pack_min_step_rows(previous))
    return request.param


@compiled
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_compiled_matches_reference(monkeypatch, dtype, shape, threads, lengths, options,
                                    backward_pack):
    T, B, D, H = SHAPES[shape]
    if shape == "chunks":   # the shared chunk heuristic alone: several chunks
        monkeypatch.setattr(gru_module, "CHUNK_BUFFER_BYTES", 0)
        assert gru_module._chunk_steps(T, B, H, dtype) * 3 < T
    p = gru_problem(T, B, D, H, dtype, seed=T + B + H)
    L = mixed_lengths(T, B) if lengths == "mixed" else None
    assert_matches_reference(p, dtype, lengths=L, num_threads=threads, **OPTIONS[options])


# Every code path of the recursion on one problem: own kernels or BLAS for the step
# products, batch or unit split, each instruction set the CPU has.
PATH_SHAPES = {"rows": (10, 12, 5, 130), "one-row": (10, 1, 5, 70)}


@compiled
@pytest.mark.parametrize("isa", ["native", "avx2", "generic"])
@pytest.mark.parametrize("own_kernels", [True, False], ids=["own", "blas"])
@pytest.mark.parametrize("split", [None, "units", "rows"])
@pytest.mark.parametrize("shape", list(PATH_SHAPES))
def test_every_path_matches_reference(monkeypatch, shape, split, own_kernels, isa,
                                      backward_pack):
    T, B, D, H = PATH_SHAPES[shape]
    monkeypatch.setattr(_schedule, "PACKED_GEMM_ENABLED", own_kernels)
    monkeypatch.setattr(_schedule, "PACKED_GEMM_MIN_STEP_ROWS", 1)
    if split == "units":   # every batch split into units
        monkeypatch.setattr(_schedule, "UNIT_SPLIT_MAX_ROWS", 1 << 20)
        monkeypatch.setattr(_schedule, "UNIT_SPLIT_MIN_H", 1)
    elif split == "rows":
        monkeypatch.setattr(_schedule, "UNIT_SPLIT_MAX_ROWS", 0)
        monkeypatch.setattr(_schedule, "UNIT_SPLIT_BACKWARD_MAX_ROWS_AVX2", -1)
        monkeypatch.setattr(_schedule, "UNIT_SPLIT_IDLE_MIN_H", 1 << 20)
    # (a busy machine would otherwise let the stall guard run unit splits on one thread)
    monkeypatch.setattr(_schedule.stall_guard, "backing_off", lambda now=None: False)
    if split is not None:
        for backward in (False, True):
            plan = _schedule.plan_for(B, H, 2, backward)
            assert plan.split_units == (split == "units")
            assert plan.n_threads == (1 if split == "rows" and B == 1 else 2)
    p = gru_problem(T, B, D, H, np.float32, seed=3)
    L = mixed_lengths(T, B)
    with contextlib_isa(isa):
        assert_matches_reference(p, np.float32, lengths=L, num_threads=2)
        assert_matches_reference(as_float64(p), np.float64, lengths=L, num_threads=2)


def contextlib_isa(isa):
    """The CPU's own level ("native"), or every kernel limited to ``isa``."""
    return contextlib.nullcontext() if isa == "native" else isa_limited(isa)


@compiled
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(11, 6, 5, 13), (9, 3, 4, 140), (7, 1, 3, 96)])
def test_thread_count_changes_only_rounding(dtype, shape):
    T, B, D, H = shape
    p = gru_problem(T, B, D, H, dtype, seed=9)
    L = mixed_lengths(T, B)
    one = run_gru(fastlstm, p, lengths=L, num_threads=1)
    eps = float(np.finfo(dtype).eps)
    tol = 16 * eps * np.sqrt(T * B + D + 3 * H)
    for threads in (2, 3):
        other = run_gru(fastlstm, p, lengths=L, num_threads=threads)
        for name in RESULTS:
            assert strict_rel_err(other[name], one[name]) <= tol, (threads, name)


@compiled
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_equals_its_sequences_one_by_one(threads):
    T, B, D, H = 8, 5, 4, 11
    p = gru_problem(T, B, D, H, np.float64, seed=21)
    L = mixed_lengths(T, B)
    whole = run_gru(fastlstm, p, lengths=L, num_threads=threads)
    summed = {name: 0.0 for name in ("dW_x", "dW_h", "db_x", "db_h")}
    for b in range(B):
        one = {k: np.ascontiguousarray(v[:, b:b + 1]) for k, v in p.items()
               if k in ("x", "dhs")}
        one.update({k: p[k] for k in ("W_x", "W_h", "b_x", "b_h")})
        one.update({k: p[k][b:b + 1].copy() for k in ("h0", "dh_n")})
        alone = run_gru(fastlstm, one, lengths=L[b:b + 1], num_threads=threads)
        for name in ("hs", "dx"):
            assert rel_err(alone[name][:, 0], whole[name][:, b]) < 1e-12, (b, name)
        for name in ("h_n", "dh0"):
            assert rel_err(alone[name][0], whole[name][b]) < 1e-12, (b, name)
        for name in summed:
            summed[name] = summed[name] + alone[name]
    for name, total in summed.items():
        assert rel_err(whole[name], total) < 1e-12, name


@compiled
def test_caches_are_shared_between_backends():
    """A compiled forward's cache gives the same gradients through the reference's
    backward, and the functional API's numpy backend is the reference."""
    T, B, D, H = 6, 3, 4, 9
    p = gru_problem(T, B, D, H, np.float64, seed=2)
    L = mixed_lengths(T, B)
    ours = run_gru(fastlstm, p, lengths=L)
    ref_grads = reference.gru_backward(p["dhs"], ours["cache"], p["dh_n"])
    for name in GRAD_NAMES:
        assert rel_err(getattr(ref_grads, name), ours[name]) < 1e-12, name
    numpy_run = run_gru(fastlstm, p, lengths=L, backend="numpy")
    ref_run = run_gru(reference, p, lengths=L)
    assert numpy_run["cache"].backend == "numpy"
    for name in RESULTS:
        np.testing.assert_array_equal(numpy_run[name], ref_run[name])


@compiled
def test_inputs_are_not_written_and_backward_repeats():
    T, B, D, H = 5, 4, 3, 16
    p = gru_problem(T, B, D, H, np.float32, seed=4)
    before = {k: v.copy() for k, v in p.items()}
    hs, h_n, cache = fastlstm.gru_forward(p["x"], p["W_x"], p["W_h"], p["b_x"], p["b_h"],
                                          p["h0"], lengths=mixed_lengths(T, B))
    first = fastlstm.gru_backward(p["dhs"], cache, p["dh_n"])
    second = fastlstm.gru_backward(p["dhs"], cache, p["dh_n"])
    for name in GRAD_NAMES:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    for k, v in p.items():
        np.testing.assert_array_equal(v, before[k])


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

def _forward_args(dtype=np.float64):
    x, W_x, W_h, b_x, b_h, h0 = make_gru_inputs(4, 3, 5, 6, dtype, seed=1)
    return dict(x=x, W_x=W_x, W_h=W_h, b_x=b_x, b_h=b_h, h0=h0, lengths=None,
                backend="auto", num_threads=None)


FORWARD_ERRORS = [
    # (argument, bad value (a function of the valid arguments), exception)
    ("x", lambda a: a["x"][0], ValueError),
    ("x", lambda a: a["x"].astype(np.int32), TypeError),
    ("x", lambda a: None, TypeError),
    ("W_x", lambda a: a["W_x"][:, :-1], ValueError),
    ("W_x", lambda a: a["W_x"].astype(np.float32), TypeError),
    ("W_h", lambda a: a["W_h"][:, :-3], ValueError),
    ("W_h", lambda a: np.zeros((6, 24)), ValueError),   # an LSTM's (H, 4H)
    ("b_x", lambda a: a["b_x"][:-1], ValueError),
    ("b_x", lambda a: "bias", TypeError),
    ("b_h", lambda a: a["b_h"].astype(np.float32), TypeError),
    ("b_h", lambda a: np.zeros((2, 18)), ValueError),
    ("h0", lambda a: a["h0"][:2], ValueError),
    ("h0", lambda a: a["h0"].astype(np.float32), TypeError),
    ("lengths", lambda a: np.array([1, 2, 5]), ValueError),
    ("lengths", lambda a: np.array([1, -1, 2]), ValueError),
    ("lengths", lambda a: np.array([1, 2]), ValueError),
    ("lengths", lambda a: np.array([1.5, 2, 2]), ValueError),
    ("lengths", lambda a: np.array(["a", "b", "c"]), TypeError),
    ("backend", lambda a: "torch", ValueError),
    ("num_threads", lambda a: 0, ValueError),
    ("num_threads", lambda a: 1.5, TypeError),
]


@pytest.mark.parametrize("module", ["fastlstm", "reference"])
@pytest.mark.parametrize("case", range(len(FORWARD_ERRORS)),
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FORWARD_ERRORS)])
def test_forward_errors_name_the_argument(module, case):
    name, bad, exc = FORWARD_ERRORS[case]
    args = _forward_args()
    args[name] = bad(args)
    fn = (fastlstm if module == "fastlstm" else reference).gru_forward
    with pytest.raises(exc, match=name):
        fn(args.pop("x"), args.pop("W_x"), args.pop("W_h"), args.pop("b_x"),
           args.pop("b_h"), args.pop("h0"), **args)


BACKWARD_ERRORS = [
    ("dhs", lambda c: np.zeros((4, 3, 7)), ValueError),
    ("dhs", lambda c: np.zeros((4, 3, 6), np.float32), TypeError),
    ("dh_n", lambda c: np.zeros((3,)), ValueError),
    ("dh_n", lambda c: [[1.0, 2.0]], ValueError),
    ("dh_n", lambda c: np.zeros((3, 6), np.int64), TypeError),
]


@pytest.mark.parametrize("backend", ["auto", "numpy"])
@pytest.mark.parametrize("case", range(len(BACKWARD_ERRORS)),
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BACKWARD_ERRORS)])
def test_backward_errors_name_the_argument(backend, case):
    name, bad, exc = BACKWARD_ERRORS[case]
    a = _forward_args()
    _, _, cache = fastlstm.gru_forward(a["x"], a["W_x"], a["W_h"], a["b_x"], a["b_h"],
                                       a["h0"], backend=backend)
    kwargs = {"dhs": None, "dh_n": None, name: bad(cache)}
    with pytest.raises(exc, match=name):
        fastlstm.gru_backward(kwargs["dhs"], cache, kwargs["dh_n"])


def test_backward_rejects_other_caches():
    a = _forward_args()
    _, _, rnn_cache = fastlstm.rnn_forward(a["x"], a["W_x"][:, :6], a["W_h"][:, :6],
                                           a["b_x"][:6], backend="numpy")
    for module in (fastlstm, reference):
        with pytest.raises(TypeError, match="cache"):
            module.gru_backward(None, rnn_cache)
        with pytest.raises(TypeError, match="cache"):
            module.gru_backward(None, "cache")
    _, _, cache = fastlstm.gru_forward(a["x"], a["W_x"], a["W_h"], a["b_x"], a["b_h"])
    cache.gates = cache.gates[:, :, :-1].copy()   # a hand-broken cache
    with pytest.raises(ValueError, match="gates"):
        fastlstm.gru_backward(None, cache)


@pytest.mark.parametrize("backend", ["auto", "numpy"])
@pytest.mark.parametrize("name", ["x", "W_x", "W_h"])
def test_changed_inputs_raise_input_modified_error(backend, name):
    a = _forward_args()
    _, _, cache = fastlstm.gru_forward(a["x"], a["W_x"], a["W_h"], a["b_x"], a["b_h"],
                                       a["h0"], backend=backend)
    fastlstm.gru_backward(None, cache, a["h0"])   # unchanged: fine
    a[name] *= 3
    with pytest.raises(fastlstm.InputModifiedError, match=name) as info:
        fastlstm.gru_backward(None, cache, a["h0"])
    assert info.value.name == name and "gru_forward" in str(info.value)


# --- the kernel entry points, called directly with bad arguments (in a child process,
# so that a missing check shows as a failed test instead of a crash) ---------------

KT, KB, KD, KH = 5, 3, 4, 6


def kernel_forward_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((KT, KB, KD)).astype(dtype),
                W_x=rng.standard_normal((KD, 3 * KH)).astype(dtype),
                W_h=0.3 * rng.standard_normal((KH, 3 * KH)).astype(dtype),
                b_x=np.zeros(3 * KH, dtype), b_h=np.zeros(3 * KH, dtype),
                gates=np.empty((KT, KB, 4 * KH), dtype),
                h_states=np.zeros((KT + 1, KB, KH), dtype), hs=np.empty((KT, KB, KH), dtype),
                lengths=np.array([5, 0, 3], np.intc), packed=None, split_units=False,
                n_threads=1)


def kernel_backward_args(dtype=np.float32):
    f = kernel_forward_args(dtype)
    return dict(x=f["x"], W_x=f["W_x"], W_h=f["W_h"], gates=np.zeros((KT, KB, 4 * KH), dtype),
                h_states=f["h_states"], dhs=np.ones((KT, KB, KH), dtype),
                lengths=f["lengths"], dh=np.zeros((KB, KH), dtype),
                dh_scratch=np.zeros((KB, KH), dtype), d_gx=np.empty((2, KB, 3 * KH), dtype),
                d_gh=np.empty((2, KB, 3 * KH), dtype), dx=np.empty((KT, KB, KD), dtype),
                dW_x=np.empty((KD, 3 * KH), dtype), dW_h=np.empty((KH, 3 * KH), dtype),
                db_x_acc=np.zeros(3 * KH), db_h_acc=np.zeros(3 * KH), small_m_gemm=True,
                split_units=False, n_threads=1)


KV = 7   # rows of the lookup kernels' table


def kernel_forward_lookup_args(dtype=np.float32):
    f = kernel_forward_args(dtype)
    del f["x"], f["W_x"]
    rng = np.random.default_rng(1)
    return dict(ids=rng.integers(0, KV, KT * KB).astype(np.intc),
                table=rng.standard_normal((KV, 3 * KH)).astype(dtype), **f)


def kernel_backward_lookup_args(dtype=np.float32):
    f = kernel_backward_args(dtype)
    for name in ("x", "W_x", "dx", "dW_x"):
        del f[name]
    lookup = kernel_forward_lookup_args(dtype)
    return dict(ids=lookup["ids"], table=lookup["table"],
                d_table=np.zeros((KV, 3 * KH), dtype), **f)


def _break(how, a):
    if how == "wrong_dtype":
        return a.astype(np.float64 if a.dtype != np.float64 else np.float32)
    if how == "not_array":
        return a.tolist()
    if how == "bigger":
        return np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)
    if how == "smaller_T":
        return np.zeros((a.shape[0] - 1,) + a.shape[1:], a.dtype)
    if how == "read_only":
        a = a.copy()
        a.flags.writeable = False
        return a
    if how == "transposed":
        return np.zeros(a.shape[::-1], a.dtype).T
    if how == "flat":
        return a.reshape(-1)
    if how == "zero_d":
        return np.array(1, a.dtype)
    if how == "lstm_width":
        return np.zeros(a.shape[:-1] + (a.shape[-1] // 3 * 4,), a.dtype)
    if how == "out_of_range":
        return np.array([KT + 1, 0, 1], np.intc)
    if how == "too_long":
        return np.zeros(KB + 1, np.intc)
    if how == "wrong_int":
        return a.astype(np.int64)
    if how == "tiny_packed":
        return np.zeros(3, np.float32)
    if how == "zero":
        return 0
    if how == "bigger_rows":
        return np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2]), a.dtype)
    if how == "no_steps":
        return np.zeros((0,) + a.shape[1:], a.dtype)
    if how == "past_table":
        return np.full_like(a, KV)
    if how == "same_as_dh":
        return None   # replaced by dh itself in the child
    raise AssertionError(how)


KERNEL_CASES = [
    # (kernel, argument, how, exception)
    ("gru_forward_kernel", "x", "wrong_dtype", "TypeError"),
    ("gru_forward_kernel", "x", "zero_d", "TypeError"),
    ("gru_forward_kernel", "x", "flat", "TypeError"),
    ("gru_forward_kernel", "W_h", "not_array", "TypeError"),
    ("gru_forward_kernel", "W_h", "bigger", "ValueError"),
    ("gru_forward_kernel", "W_h", "lstm_width", "ValueError"),
    ("gru_forward_kernel", "W_x", "bigger", "ValueError"),
    ("gru_forward_kernel", "b_x", "bigger", "ValueError"),
    ("gru_forward_kernel", "b_h", "wrong_dtype", "TypeError"),
    ("gru_forward_kernel", "gates", "read_only", "TypeError"),
    ("gru_forward_kernel", "gates", "lstm_width", "ValueError"),
    ("gru_forward_kernel", "gates", "smaller_T", "ValueError"),
    ("gru_forward_kernel", "h_states", "smaller_T", "ValueError"),
    ("gru_forward_kernel", "hs", "transposed", "TypeError"),
    ("gru_forward_kernel", "lengths", "out_of_range", "ValueError"),
    ("gru_forward_kernel", "lengths", "too_long", "ValueError"),
    ("gru_forward_kernel", "lengths", "wrong_int", "TypeError"),
    ("gru_forward_kernel", "packed", "tiny_packed", "ValueError"),
    ("gru_forward_kernel", "n_threads", "zero", "ValueError"),
    ("gru_backward_kernel", "x", "wrong_dtype", "TypeError"),
    ("gru_backward_kernel", "gates", "flat", "TypeError"),
    ("gru_backward_kernel", "gates", "smaller_T", "ValueError"),
    ("gru_backward_kernel", "h_states", "smaller_T", "ValueError"),
    ("gru_backward_kernel", "dhs", "smaller_T", "ValueError"),
    ("gru_backward_kernel", "dh", "read_only", "TypeError"),
    ("gru_backward_kernel", "dh", "bigger", "ValueError"),
    ("gru_backward_kernel", "dh_scratch", "same_as_dh", "ValueError"),
    ("gru_backward_kernel", "d_gx", "bigger_rows", "ValueError"),
    ("gru_backward_kernel", "d_gx", "no_steps", "ValueError"),
    ("gru_backward_kernel", "d_gh", "smaller_T", "ValueError"),
    ("gru_backward_kernel", "d_gh", "zero_d", "TypeError"),
    ("gru_backward_kernel", "dx", "smaller_T", "ValueError"),
    ("gru_backward_kernel", "dW_x", "bigger", "ValueError"),
    ("gru_backward_kernel", "dW_h", "lstm_width", "ValueError"),
    ("gru_backward_kernel", "db_x_acc", "wrong_dtype", "TypeError"),
    ("gru_backward_kernel", "db_h_acc", "bigger", "ValueError"),
    ("gru_backward_kernel", "lengths", "out_of_range", "ValueError"),
    ("gru_backward_kernel", "n_threads", "zero", "ValueError"),
    ("gru_forward_lookup_kernel", "ids", "past_table", "ValueError"),
    ("gru_forward_lookup_kernel", "ids", "too_long", "ValueError"),
    ("gru_forward_lookup_kernel", "ids", "wrong_int", "TypeError"),
    ("gru_forward_lookup_kernel", "table", "wrong_dtype", "TypeError"),
    ("gru_forward_lookup_kernel", "table", "lstm_width", "ValueError"),
    ("gru_forward_lookup_kernel", "gates", "lstm_width", "ValueError"),
    ("gru_forward_lookup_kernel", "hs", "smaller_T", "ValueError"),
    ("gru_backward_lookup_kernel", "ids", "past_table", "ValueError"),
    ("gru_backward_lookup_kernel", "table", "flat", "TypeError"),
    ("gru_backward_lookup_kernel", "d_table", "bigger", "ValueError"),
    ("gru_backward_lookup_kernel", "d_table", "read_only", "TypeError"),
    ("gru_backward_lookup_kernel", "d_gh", "bigger_rows", "ValueError"),
    ("gru_backward_lookup_kernel", "h_states", "smaller_T", "ValueError"),
]


def kernel_child_main():
    """Each kernel once with valid arguments, then every broken call, in this process."""
    from fastlstm import _gru
    for kernel in ("gru_forward_kernel", "gru_backward_kernel", "gru_forward_lookup_kernel",
                   "gru_backward_lookup_kernel"):
        for dtype in (np.float32, np.float64):
            args = globals()[kernel.replace("gru_", "kernel_").replace("_kernel", "_args")](
                dtype)
            getattr(_gru, kernel)(**args)
        print("RESULT " + json.dumps({"id": f"{kernel}-valid", "raised": None}), flush=True)
    for kernel, name, how, _ in KERNEL_CASES:
        args = globals()[kernel.replace("gru_", "kernel_").replace("_kernel", "_args")]()
        args[name] = args["dh"] if how == "same_as_dh" else _break(how, args[name])
        print(f"BEGIN {kernel}-{name}-{how}", flush=True)
        try:
            getattr(_gru, kernel)(**args)
            raised, message = None, ""
        except Exception as exc:   # noqa: BLE001 - reported to the parent
            raised, message = type(exc).__name__, str(exc)
        print("RESULT " + json.dumps({"id": f"{kernel}-{name}-{how}", "raised": raised,
                                      "message": message}), flush=True)
    print("DONE", flush=True)


@pytest.fixture(scope="module")
def kernel_child():
    return run_child("import test_gru; test_gru.kernel_child_main()")


@compiled
def test_kernel_child_ran_every_case(kernel_child):
    assert kernel_child.done, (kernel_child.last_begun, kernel_child.stderr[-2000:])
    assert kernel_child.results["gru_forward_kernel-valid"]["raised"] is None
    assert kernel_child.results["gru_backward_kernel-valid"]["raised"] is None
    assert kernel_child.results["gru_forward_lookup_kernel-valid"]["raised"] is None
    assert kernel_child.results["gru_backward_lookup_kernel-valid"]["raised"] is None


@compiled
@pytest.mark.parametrize("case", KERNEL_CASES, ids=["-".join(c[:3]) for c in KERNEL_CASES])
def test_kernels_reject_bad_arguments(kernel_child, case):
    kernel, name, how, expected = case
    result = kernel_child.results.get(f"{kernel}-{name}-{how}")
    assert result is not None, f"the child crashed at {kernel_child.last_begun}"
    assert result["raised"] == expected, result
    # (x sets the call's dtype: with another one, the first array checked against it
    # is named)
    if how != "zero" and not (how == "wrong_dtype" and name == "x"):
        assert name in result["message"], result


# --------------------------------------------------------------------------------------
# the lookup: ids into a table of projected inputs
# --------------------------------------------------------------------------------------

def lookup_problem(T, B, V, H, dtype, seed=0):
    """ids, a table and the rest of a GRU call, and the one-hot inputs x with which
    ``gru_forward(x, table, ...)`` computes the same thing (x W_x = table[ids])."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (T, B))
    x = np.zeros((T, B, V), dtype)
    np.put_along_axis(x, ids[:, :, None], 1.0, axis=2)
    _, table, W_h, b_x, b_h, h0 = make_gru_inputs(T, B, V, H, dtype, seed + 1)
    return dict(ids=ids, x=x, table=table, W_h=W_h, b_x=b_x, b_h=b_h, h0=h0,
                dhs=rng.standard_normal((T, B, H)).astype(dtype),
                dh_n=rng.standard_normal((B, H)).astype(dtype))


LOOKUP_SHAPES = {"small": (6, 4, 5, 9), "one-sequence": (7, 1, 3, 13),
                 "wide": (12, 8, 11, 130), "chunks": (40, 6, 4, 10)}


@compiled
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", list(LOOKUP_SHAPES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_lookup_matches_reference_on_one_hot_inputs(monkeypatch, dtype, shape, threads,
                                                    lengths, backward_pack):
    """table = W_x with one-hot x: the lookup's d_table is the reference's dW_x."""
    T, B, V, H = LOOKUP_SHAPES[shape]
    if shape == "chunks":
        monkeypatch.setattr(gru_module, "CHUNK_BUFFER_BYTES", 0)
        assert gru_module._chunk_steps(T, B, H, dtype) * 3 < T
    p = lookup_problem(T, B, V, H, dtype, seed=T + H)
    L = mixed_lengths(T, B) if lengths == "mixed" else None
    hs, h_n, cache = fastlstm.gru_forward_lookup(p["ids"], p["table"], p["W_h"], p["b_x"],
                                                 p["b_h"], p["h0"], lengths=L,
                                                 num_threads=threads)
    grads = fastlstm.gru_backward_lookup(p["dhs"], cache, p["dh_n"])
    assert isinstance(grads, fastlstm.GRULookupGrads)
    f = {k: (v.astype(np.float64) if k != "ids" else v) for k, v in p.items()}
    r_hs, r_h_n, r_cache = reference.gru_forward(f["x"], f["table"], f["W_h"], f["b_x"],
                                                 f["b_h"], f["h0"], lengths=L)
    r = reference.gru_backward(f["dhs"], r_cache, f["dh_n"])
    tol = tolerance(dtype, T, B, V, H)
    pairs = {"hs": (hs, r_hs), "h_n": (h_n, r_h_n), "d_table": (grads.d_table, r.dW_x),
             "dh0": (grads.dh0, r.dh0), "dW_h": (grads.dW_h, r.dW_h),
             "db_x": (grads.db_x, r.db_x), "db_h": (grads.db_h, r.db_h)}
    for name, (ours, ref) in pairs.items():
        assert ours.dtype == np.dtype(dtype), name
        assert strict_rel_err(ours, ref) <= tol, (name, strict_rel_err(ours, ref))


@compiled
def test_lookup_errors():
    p = lookup_problem(5, 3, 4, 6, np.float64)
    args = (p["ids"], p["table"], p["W_h"], p["b_x"], p["b_h"])
    with pytest.raises(ValueError, match="ids"):
        fastlstm.gru_forward_lookup(p["ids"] + 4, *args[1:])
    with pytest.raises(TypeError, match="ids"):
        fastlstm.gru_forward_lookup(p["ids"].astype(float), *args[1:])
    with pytest.raises(ValueError, match="table"):
        fastlstm.gru_forward_lookup(p["ids"], p["table"][:, 1:], *args[2:])
    with pytest.raises(TypeError, match="b_h"):
        fastlstm.gru_forward_lookup(*args[:4], p["b_h"].astype(np.float32))
    with pytest.raises(ValueError, match="lengths"):
        fastlstm.gru_forward_lookup(*args, lengths=[1, 2, 6])
    _, _, cache = fastlstm.gru_forward(p["x"], p["table"], p["W_h"], p["b_x"], p["b_h"])
    with pytest.raises(TypeError, match="cache"):
        fastlstm.gru_backward_lookup(None, cache)
    ids = p["ids"].astype(np.intc)   # referenced by the cache, so changes are noticed
    for name in ("table", "ids", "W_h"):
        arrays = {"ids": ids.copy(), "table": p["table"].copy(), "W_h": p["W_h"].copy()}
        _, _, cache = fastlstm.gru_forward_lookup(arrays["ids"], arrays["table"],
                                                  arrays["W_h"], p["b_x"], p["b_h"])
        with pytest.raises(ValueError, match="dhs"):
            fastlstm.gru_backward_lookup(np.zeros((5, 3, 7)), cache)
        arrays[name] += 1
        with pytest.raises(fastlstm.InputModifiedError, match=name):
            fastlstm.gru_backward_lookup(None, cache)

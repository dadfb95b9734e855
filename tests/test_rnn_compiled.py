"""The compiled vanilla-RNN kernels against the NumPy reference: both dtypes, tanh and
relu, odd sizes, 1 and 2 threads, lengths, full and truncated BPTT, every internal path."""
import numpy as np
import pytest

import fastlstm
from fastlstm import _schedule, reference
from conftest import isa_limited, mixed_lengths, rel_err, TOLERANCE

pytestmark = pytest.mark.skipif(not fastlstm.config()["compiled"],
                                reason="compiled kernels not built")

SHAPES = [(1, 1, 1, 1), (5, 3, 4, 6), (6, 1, 7, 13), (40, 7, 5, 13), (30, 37, 9, 45),
          (300, 2, 3, 4), (9, 5, 6, 100),
          (7, 1, 5, 37)]   # one sequence: the single-row kernels, with masked vector tails


def make(T, B, D, H, dtype, seed):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return (rng.standard_normal((T, B, D)).astype(dtype),
            rng.uniform(-k, k, (D, H)).astype(dtype),
            rng.uniform(-k, k, (H, H)).astype(dtype),
            rng.uniform(-k, k, H).astype(dtype),
            rng.standard_normal((B, H)).astype(dtype))


@pytest.fixture(params=["auto", "blas", "own-gemm", "avx2-kernels", "generic"])
def path(request, monkeypatch):
    if request.param == "blas":
        monkeypatch.setattr(_schedule, "PACKED_GEMM_ENABLED", False)
    elif request.param in ("own-gemm", "avx2-kernels"):
        monkeypatch.setattr(_schedule, "PACKED_GEMM_MIN_STEP_ROWS", 1)
        monkeypatch.setattr(_schedule, "NT_MAX_ROWS_AVX2", 10**9)
    isa = {"avx2-kernels": "avx2", "generic": "generic"}.get(request.param)
    if isa is None:
        yield request.param
        return
    with isa_limited(isa):
        yield request.param


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}".format(*s))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_matches_reference(path, shape, dtype, nonlinearity, num_threads, with_lengths):
    T, B, D, H = shape
    x, W_x, W_h, b, h0 = make(T, B, D, H, dtype, seed=T + B + H)
    rng = np.random.default_rng(1)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    lengths = mixed_lengths(T, B) if with_lengths else None
    hs, h_n, cache = fastlstm.rnn_forward(x, W_x, W_h, b, h0, nonlinearity=nonlinearity,
                                          lengths=lengths, backend="cython",
                                          num_threads=num_threads)
    f64 = [a.astype(np.float64) for a in (x, W_x, W_h, b, h0, dhs, dh_n)]
    r_hs, r_h_n, r_cache = reference.rnn_forward(*f64[:5], nonlinearity=nonlinearity,
                                                 lengths=lengths)
    tol = TOLERANCE[np.dtype(dtype)]
    assert rel_err(hs, r_hs) <= tol and rel_err(h_n, r_h_n) <= tol
    for k in sorted({None, 0, 1, 3, max(T - 2, 0), T - 1}, key=lambda v: -1 if v is None else v):
        grads = fastlstm.rnn_backward(dhs, cache, dh_n, bptt_truncate=k)
        ref = reference.rnn_backward(f64[5], r_cache, f64[6], bptt_truncate=k)
        for name, a, r in zip(fastlstm.RNNGrads._fields, grads, ref):
            assert a.dtype == dtype
            assert rel_err(a, r) <= tol, (name, k, rel_err(a, r))


@pytest.mark.parametrize("k", [None, 0, 2])
def test_many_to_one_and_no_upstream(k):
    x, W_x, W_h, b, h0 = make(6, 4, 3, 5, np.float64, seed=2)
    _, _, cache = fastlstm.rnn_forward(x, W_x, W_h, b, h0, lengths=[6, 0, 2, 5])
    _, _, r_cache = reference.rnn_forward(x, W_x, W_h, b, h0, lengths=[6, 0, 2, 5])
    dh_n = np.ones((4, 5))
    for a, r in zip(fastlstm.rnn_backward(None, cache, dh_n, bptt_truncate=k),
                    reference.rnn_backward(None, r_cache, dh_n, bptt_truncate=k)):
        assert rel_err(a, r) <= 1e-10
    assert all(not np.any(g) for g in fastlstm.rnn_backward(None, cache, bptt_truncate=k))


def test_caches_are_interchangeable_and_inputs_untouched():
    x, W_x, W_h, b, h0 = make(7, 3, 4, 6, np.float32, seed=3)
    copies = [a.copy() for a in (x, W_x, W_h, b, h0)]
    dhs = np.ones((7, 3, 6), np.float32)
    _, _, compiled = fastlstm.rnn_forward(x, W_x, W_h, b, h0, nonlinearity="relu")
    _, _, numpy_cache = fastlstm.rnn_forward(x, W_x, W_h, b, h0, nonlinearity="relu",
                                             backend="numpy")
    for k in (None, 1):
        for a, r in zip(reference.rnn_backward(dhs, compiled, bptt_truncate=k),
                        fastlstm.rnn_backward(dhs, numpy_cache, bptt_truncate=k)):
            assert rel_err(a, r) <= 2e-4
    for a, c in zip((x, W_x, W_h, b, h0), copies):
        np.testing.assert_array_equal(a, c)


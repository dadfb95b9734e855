"""The compiled dense kernels (fastlstm._dense through fastlstm._dense_ops) against plain
NumPy: products, softmax cross-entropy, Adagrad and Adam updates, the embedding's
scatter-add; float64 to ~1e-12, float32 to a dtype-aware tolerance; 1 and 2 threads; odd
sizes and sizes on both sides of the parallel thresholds."""
import numpy as np
import pytest

from fastlstm import _dense_ops
from fastlstm.nn.functional import cross_entropy
from fastlstm.nn.layers import Embedding, Linear, _scatter_add_rows
from fastlstm.optim import Adagrad, Adam, AdamW

pytestmark = pytest.mark.skipif(not _dense_ops.compiled(),
                                reason="fastlstm._dense is not built")

DTYPES = [np.float64, np.float32]
THREADS = [1, 2]


def _tol(dtype, scale=1.0):
    return dict(rtol=1e-12 * scale, atol=1e-12 * scale) if dtype == np.float64 else \
        dict(rtol=2e-5 * scale, atol=2e-6 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (1, 65, 100), (13, 7, 5), (800, 65, 100),
                                     (65, 100, 800), (33, 1000, 129), (2, 3, 4096)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_matmul_matches_numpy(dtype, threads, M, N, K, trans_a, trans_b):
    rng = np.random.default_rng(M * 1000 + N + K)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    got = _dense_ops.matmul(a, b, trans_a, trans_b, num_threads=threads)
    np.testing.assert_allclose(got, expected, **_tol(dtype, np.sqrt(K)))
    base = rng.standard_normal((M, N)).astype(dtype)
    out = base.copy()
    _dense_ops.matmul(a, b, trans_a, trans_b, out=out, accumulate=True, num_threads=threads)
    np.testing.assert_allclose(out, base + expected, **_tol(dtype, np.sqrt(K)))


def test_matmul_parallel_split_matches_one_thread():
    """Two threads split the product into bands (of rows, or of columns when C is wider
    than tall) and call BLAS on each band. The arithmetic is BLAS's, not fastlstm's: its
    kernels may round a row differently with the band's size (OpenBLAS's Haswell sgemm
    does), so the two results agree to a float32 tolerance, not bitwise; every entry
    must still be the same dot product."""
    rng = np.random.default_rng(1)
    for shape_a, shape_b in [((700, 90), (90, 65)), ((40, 90), (90, 3000))]:
        a = rng.standard_normal(shape_a).astype(np.float32)
        b = rng.standard_normal(shape_b).astype(np.float32)
        one = _dense_ops.matmul(a, b, num_threads=1)
        two = _dense_ops.matmul(a, b, num_threads=2)
        np.testing.assert_allclose(two, one, **_tol(np.float32, np.sqrt(a.shape[1])))
        exact = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_allclose(two, exact, **_tol(np.float32, np.sqrt(a.shape[1])))


def test_matmul_empty_and_unsuitable_inputs_fall_back():
    a = np.ones((3, 0))
    b = np.ones((0, 4))
    out = np.full((3, 4), 2.0)
    _dense_ops.matmul(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, 2.0)
    assert _dense_ops.matmul(a, b).tolist() == np.zeros((3, 4)).tolist()
    # a strided view and a float16 array take NumPy's path
    x = np.arange(24.0).reshape(4, 6)[:, ::2]
    np.testing.assert_allclose(_dense_ops.matmul(x, np.eye(3)), x)
    h = np.ones((2, 2), np.float16)
    assert _dense_ops.matmul(h, h).dtype == np.float16


def _xent_numpy(z, t, ignore_index=None):
    z64 = z.astype(np.float64)
    keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    log_p = z64 - z64.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    n = keep.sum()
    rows = np.nonzero(keep)[0]
    loss = -log_p[rows, t[rows]].sum() / max(n, 1)
    grad = np.exp(log_p)
    grad[rows, t[rows]] -= 1
    grad[~keep] = 0
    return loss, grad / max(n, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("N, V", [(1, 1), (1, 65), (7, 3), (800, 65), (33, 17), (64, 1031),
                                  (3, 20000)])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_cross_entropy_compiled_matches_float64_numpy(dtype, threads, N, V, ignore_index):
    rng = np.random.default_rng(N + V)
    z = (rng.standard_normal((N, V)) * 4).astype(dtype)
    z[0, 0] = 60        # a large logit: the max shift keeps exp finite
    t = rng.integers(0, V, N)
    if ignore_index is not None:
        t[::3] = ignore_index
        if V <= ignore_index:
            t[t >= V] = 0
    loss, grad = cross_entropy(z, t, ignore_index=ignore_index, num_threads=threads)
    want_loss, want_grad = _xent_numpy(z, t, ignore_index)
    assert grad.dtype == dtype and grad.shape == z.shape
    tol = _tol(dtype, 10)
    assert loss == pytest.approx(want_loss, rel=tol["rtol"], abs=tol["atol"])
    np.testing.assert_allclose(grad, want_grad, **tol)


def test_cross_entropy_all_ignored_and_bad_targets():
    z = np.zeros((4, 5), np.float32)
    loss, grad = cross_entropy(z, np.full(4, -100), ignore_index=-100)
    assert loss == 0.0 and not grad.any()
    with pytest.raises(ValueError, match="targets must lie"):
        cross_entropy(z, np.array([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="targets must lie"):
        cross_entropy(z, np.array([0, -1, 1, 2]), ignore_index=-100)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", [1, 17, 40000])
def test_adagrad_update_matches_numpy(dtype, threads, n):
    rng = np.random.default_rng(n)
    p, g = rng.standard_normal((2, n)).astype(dtype)
    s = rng.random(n).astype(dtype)
    want_s = s + g * g
    want_p = p - 0.1 * g / (np.sqrt(want_s) + 1e-8)
    _dense_ops.adagrad(p, g, s, 0.1, 1e-8, threads)
    np.testing.assert_allclose(s, want_s, **_tol(dtype))
    np.testing.assert_allclose(p, want_p, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", [1, 17, 40000])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_update_matches_numpy(dtype, threads, n, weight_decay):
    rng = np.random.default_rng(n)
    p, g, m = rng.standard_normal((3, n)).astype(dtype)
    v = rng.random(n).astype(dtype)
    b1, b2, eps, step_size, sqrt_bc2 = 0.9, 0.999, 1e-8, 1e-3 / (1 - 0.9 ** 3), \
        np.sqrt(1 - 0.999 ** 3)
    g2 = g + weight_decay * p
    want_m = b1 * m + (1 - b1) * g2
    want_v = b2 * v + (1 - b2) * g2 * g2
    want_p = p - step_size * want_m / (np.sqrt(want_v) / sqrt_bc2 + eps)
    _dense_ops.adam(p, g, m, v, b1, b2, weight_decay, step_size, sqrt_bc2, eps, threads)
    tol = _tol(dtype, 10)
    np.testing.assert_allclose(m, want_m, **tol)
    np.testing.assert_allclose(v, want_v, **tol)
    np.testing.assert_allclose(p, want_p, **tol)


@pytest.mark.parametrize("cls, kwargs", [(Adagrad, dict(lr=0.05)),
                                         (Adam, dict(lr=0.01, weight_decay=0.1)),
                                         (AdamW, dict(lr=0.01, weight_decay=0.1))])
def test_optimizer_threads_do_not_change_the_result(cls, kwargs):
    """One and two threads update every entry by the same formula: identical bits."""
    from fastlstm.nn.parameter import Parameter
    rng = np.random.default_rng(0)
    runs = []
    for threads in THREADS:
        params = [Parameter(rng_init.copy()) for rng_init in
                  (np.linspace(-1, 1, 50000, dtype=np.float32),
                   np.linspace(-2, 2, 33, dtype=np.float32).reshape(3, 11))]
        opt = cls(params, num_threads=threads, **kwargs)
        for k in range(5):
            for p in params:
                p.grad[...] = np.sin(p.data * (k + 1))
            opt.step()
        runs.append([p.data.copy() for p in params])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    del rng


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
def test_linear_forward_backward_match_numpy(dtype, threads):
    rng = np.random.default_rng(3)
    layer = Linear(37, 65, dtype=dtype, seed=1, num_threads=threads)
    x = rng.standard_normal((9, 11, 37)).astype(dtype)
    y = layer(x)
    np.testing.assert_allclose(y, x @ layer.W.data + layer.b.data, **_tol(dtype, 10))
    dy = rng.standard_normal(y.shape).astype(dtype)
    layer.W.grad[...] = 1.0
    dx = layer.backward(dy)
    flat_x, flat_dy = x.reshape(-1, 37), dy.reshape(-1, 65)
    np.testing.assert_allclose(dx, dy @ layer.W.data.T, **_tol(dtype, 10))
    np.testing.assert_allclose(layer.W.grad, 1.0 + flat_x.T @ flat_dy, **_tol(dtype, 30))
    np.testing.assert_allclose(layer.b.grad, flat_dy.sum(axis=0), **_tol(dtype, 30))


def test_linear_accepts_non_contiguous_input():
    layer = Linear(4, 3, dtype=np.float64, seed=0)
    x = np.arange(40.0).reshape(5, 8)[:, ::2]
    np.testing.assert_allclose(layer(x), x @ layer.W.data + layer.b.data, rtol=1e-12)


@pytest.mark.parametrize("ids", [np.array([3]), np.array([0, 0, 0]),
                                 np.array([[5, 1, 5], [1, 9, 0]]), np.arange(10)[::-1],
                                 np.array([], dtype=np.int64)])
def test_scatter_add_rows_equals_add_at(ids):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, 4))
    rows = rng.standard_normal((ids.size, 4))
    want = table.copy()
    np.add.at(want, ids.reshape(-1), rows)
    _scatter_add_rows(table, ids.reshape(-1), rows)
    np.testing.assert_allclose(table, want, rtol=1e-14, atol=1e-14)


def test_embedding_padding_row_gets_no_gradient():
    emb = Embedding(6, 3, padding_idx=0, dtype=np.float64, seed=0)
    ids = np.array([[0, 2, 2], [5, 0, 1]])
    emb(ids)
    emb.backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [0, 1, 2, 0, 0, 1])

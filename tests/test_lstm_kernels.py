"""The compiled LSTM kernels (``backend="cython"``) against the NumPy reference.

Every output of ``lstm_forward`` (hs, h_n, c_n) and every gradient of ``lstm_backward``
(dx, dh0, dc0, dW_x, dW_h, db) is compared with ``fastlstm.reference``:

* float64: max |compiled - reference| <= 1e-10 * max |reference| (per array);
* float32: the compiled float32 result against the float64 reference run on the *same*
  float32 values (so only the kernel's rounding is measured, not the rounding of the
  inputs), with a tolerance that scales with float32's epsilon and the length of the
  longest sum in the computation (see ``tolerance``).

Besides the shape/thread/lengths/optional-argument grid, the file checks properties of
the kernels: the cache layout shared between backends, independence of the thread
count, that a batch equals its sequences run one at a time, that non-contiguous inputs
give the same results as contiguous ones, that no input is written to, and that the
backward can run twice on one cache.
"""
import numpy as np
import pytest

import fastlstm
from fastlstm import _buffers, reference
from fastlstm._containers import LSTMCache

pytestmark = pytest.mark.skipif(not fastlstm._backend.compiled_available(),
                                reason="compiled kernels not built")

OUTPUTS = ("hs", "h_n", "c_n")
GRADS = fastlstm.LSTMGrads._fields     # dx, dh0, dc0, dW_x, dW_h, db
ALL_FIELDS = OUTPUTS + GRADS

F32_EPS = float(np.finfo(np.float32).eps)
# Floor for the scale of an all-zero reference array: the compiled result must then be
# (essentially) exactly zero, which it is when every contribution is multiplied by zero.
ZERO_FLOOR = 1e-30


# --- helpers -----------------------------------------------------------------------

def make_inputs(T, B, D, H, dtype, seed=0):
    """x, W_x, W_h, b (PyTorch's initial magnitudes, uniform +-1/sqrt(H)), h0, c0,
    and upstream gradients dhs, dh_n, dc_n, all of ``dtype``."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    return dict(
        x=rng.standard_normal((T, B, D)).astype(dtype),
        W_x=rng.uniform(-k, k, (D, 4 * H)).astype(dtype),
        W_h=rng.uniform(-k, k, (H, 4 * H)).astype(dtype),
        b=rng.uniform(-k, k, 4 * H).astype(dtype),
        h0=(0.5 * rng.standard_normal((B, H))).astype(dtype),
        c0=(0.5 * rng.standard_normal((B, H))).astype(dtype),
        dhs=rng.standard_normal((T, B, H)).astype(dtype),
        dh_n=rng.standard_normal((B, H)).astype(dtype),
        dc_n=rng.standard_normal((B, H)).astype(dtype),
    )


def unsorted_lengths(T, B, seed=0):
    """(B,) lengths in [0, T] holding 0 and T (when B >= 2) in neither ascending nor
    descending order (when B >= 3 and T >= 2)."""
    if B == 1:
        return np.array([max(T - 1, 0)])   # T = 1: an empty sequence
    rng = np.random.default_rng(seed + 100)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = 0
    lengths[1] = T
    if B >= 3:
        lengths[2] = (T + 1) // 2
    return lengths


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (floored at ZERO_FLOOR)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    assert np.all(np.isfinite(actual)), "non-finite values in the result"
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), ZERO_FLOOR))


def tolerance(dtype, T, B, D, H):
    """Allowed relative error of a compiled result against the float64 reference.

    float64: 1e-10, the contract. float32: the kernel's results are sums of at most
    n = T*B + D + 4H rounded float32 terms (the weight gradients reduce over all T*B
    (step, sequence) rows; each step's products over D and H inputs; the recursion
    adds one rounding per step), whose rounding error grows like sqrt(n) * eps for
    random data; 16 * sqrt(n) * eps leaves an order of magnitude over what the kernels
    actually show (a few eps) while staying far below 1e-4 for every size used here.
    """
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 16 * F32_EPS * np.sqrt(T * B + D + 4 * H)


def rounding_tolerance(dtype, T, B, D, H):
    """Two compiled runs that differ only in summation order (thread partitioning,
    buffer alignment): a few eps of sqrt(n)-growth, for either precision."""
    eps = float(np.finfo(dtype).eps)
    return 16 * eps * np.sqrt(T * B + D + 4 * H)


def run(backend, inp, *, lengths=None, num_threads=None, h0=True, c0=True, dhs=True,
        dh_n=True, dc_n=True):
    """Forward and backward on ``backend``; returns a dict of the 9 result arrays."""
    hs, (h_n, c_n), cache = fastlstm.lstm_forward(
        inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["h0"] if h0 else None,
        inp["c0"] if c0 else None, lengths=lengths, backend=backend,
        num_threads=num_threads)
    assert cache.backend == ("numpy" if backend == "numpy" else "cython")
    grads = fastlstm.lstm_backward(inp["dhs"] if dhs else None, cache,
                                   inp["dh_n"] if dh_n else None,
                                   inp["dc_n"] if dc_n else None)
    return dict(zip(ALL_FIELDS, (hs, h_n, c_n) + tuple(grads)))


def run_reference64(inp, **kw):
    """The NumPy reference in float64 on the same (possibly float32) values."""
    inp64 = {k: v.astype(np.float64) for k, v in inp.items()}
    return run("numpy", inp64, **kw)


def assert_close(actual, expected, tol, what=""):
    failures = {name: rel_err(actual[name], expected[name]) for name in expected}
    bad = {name: err for name, err in failures.items() if not err <= tol}
    assert not bad, f"{what}: relative errors above {tol:.3g}: {bad}"


def check_against_reference(T, B, D, H, dtype, *, seed=0, **kw):
    inp = make_inputs(T, B, D, H, dtype, seed)
    out = run("cython", inp, **kw)
    ref = run_reference64(inp, **kw)
    expected_shapes = dict(hs=(T, B, H), h_n=(B, H), c_n=(B, H), dx=(T, B, D), dh0=(B, H),
                           dc0=(B, H), dW_x=(D, 4 * H), dW_h=(H, 4 * H), db=(4 * H,))
    for name, a in out.items():
        assert a.dtype == np.dtype(dtype), (name, a.dtype)
        assert a.shape == expected_shapes[name], (name, a.shape)
    assert_close(out, ref, tolerance(dtype, T, B, D, H), f"{(T, B, D, H)} {kw}")
    return inp, out, ref


# --- the grid ----------------------------------------------------------------------

SHAPES = [  # (T, B, D, H)
    (1, 1, 1, 1),
    (1, 1, 7, 13),      # T = 1 and B = 1
    (6, 1, 7, 13),      # B = 1, several steps
    (1, 3, 7, 13),      # T = 1, B = 3
    (6, 3, 7, 13),      # B not divisible by 2 threads
    (7, 5, 7, 13),      # B = 5
    (40, 8, 5, 13),     # B*T = 320 > 256: the backward runs in several time chunks
    (70, 5, 3, 9),      # B*T = 350, odd B, chunk length does not divide T
    (9, 4, 6, 20),      # H = 20: a multiple of 4, not of 8 or 16
    (5, 3, 6, 130),     # H >= 128 with few rows: the hidden-unit split across threads
]


def shape_id(shape):
    return "T{}B{}D{}H{}".format(*shape)


def test_chunked_shapes_span_several_chunks():
    """The B*T > 256 shapes above really exercise the backward's chunking."""
    for T, B, D, H in SHAPES:
        if T * B > 256:
            chunk_T = _buffers.backward_chunk_steps(T, B)
            assert chunk_T < T and -(-T // chunk_T) >= 3, (T, B, chunk_T)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(shape, dtype, num_threads, with_lengths):
    T, B, D, H = shape
    lengths = unsorted_lengths(T, B, seed=sum(shape)) if with_lengths else None
    check_against_reference(T, B, D, H, dtype, seed=sum(shape), lengths=lengths,
                            num_threads=num_threads)


VARIANTS = {   # which optional arguments are passed
    "no-h0-c0": dict(h0=False, c0=False),
    "h0-only": dict(c0=False),
    "c0-only": dict(h0=False),
    "many-to-one": dict(dhs=False),                 # dhs=None, dh_n and dc_n given
    "many-to-one-dh_n": dict(dhs=False, dc_n=False),
    "dhs-only": dict(dh_n=False, dc_n=False),
    "dc_n-only": dict(dhs=False, dh_n=False),
    "nothing": dict(h0=False, c0=False, dhs=False, dh_n=False, dc_n=False),
}


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optional_arguments(variant, dtype, num_threads, with_lengths):
    T, B, D, H = 8, 5, 7, 13
    lengths = unsorted_lengths(T, B) if with_lengths else None
    _, out, _ = check_against_reference(T, B, D, H, dtype, lengths=lengths,
                                        num_threads=num_threads, **VARIANTS[variant])
    if variant == "nothing":   # no upstream gradient at all: every gradient is exactly 0
        for name in GRADS:
            assert not np.any(out[name]), name


def test_many_to_one_on_a_chunked_shape():
    """dhs=None through several backward chunks, with lengths."""
    T, B, D, H = 40, 8, 5, 13
    for dtype in (np.float64, np.float32):
        check_against_reference(T, B, D, H, dtype, lengths=unsorted_lengths(T, B),
                                num_threads=2, dhs=False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk_rows, chunk_T", [(7, 3), (1, 1)])
def test_forced_small_chunks(monkeypatch, chunk_rows, chunk_T, dtype):
    """Chunks of a few steps with a partial last chunk (T = 10 = 3 + 3 + 3 + 1), and
    one step per chunk."""
    if not hasattr(_buffers, "BACKWARD_CHUNK_MIN_ROWS"):
        pytest.skip("fastlstm._buffers no longer has BACKWARD_CHUNK_(MIN_)ROWS")
    monkeypatch.setattr(_buffers, "BACKWARD_CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(_buffers, "BACKWARD_CHUNK_MIN_ROWS", chunk_rows)
    T, B, D, H = 10, 3, 7, 13
    assert _buffers.backward_chunk_steps(T, B) == chunk_T
    for num_threads in (1, 2):
        for lengths in (None, unsorted_lengths(T, B)):
            check_against_reference(T, B, D, H, dtype, lengths=lengths,
                                    num_threads=num_threads)


def test_lengths_all_T_equals_no_lengths():
    T, B, D, H = 6, 3, 7, 13
    for dtype in (np.float64, np.float32):
        inp = make_inputs(T, B, D, H, dtype)
        for num_threads in (1, 2):
            a = run("cython", inp, num_threads=num_threads)
            b = run("cython", inp, num_threads=num_threads, lengths=np.full(B, T))
            assert_close(b, a, rounding_tolerance(dtype, T, B, D, H), "lengths=T")


# --- the cache layout is shared ----------------------------------------------------

def relabelled(cache, backend):
    """The same cache arrays, with the other backend's backward."""
    return LSTMCache(cache.x, cache.W_x, cache.W_h, cache.gates, cache.h_states,
                     cache.c_states, cache.lengths, cache.num_threads, backend)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(6, 3, 7, 13), (40, 8, 5, 13)], ids=shape_id)
def test_caches_are_interchangeable(shape, dtype, with_lengths):
    """A cache from one backend, fed to the other backend's backward, gives the same
    gradients as the backward of the backend that made it."""
    T, B, D, H = shape
    inp = make_inputs(T, B, D, H, dtype, seed=3)
    lengths = unsorted_lengths(T, B) if with_lengths else None
    args = (inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["h0"], inp["c0"])
    upstream = (inp["dhs"], inp["dh_n"], inp["dc_n"])
    _, _, c_cache = fastlstm.lstm_forward(*args, lengths=lengths, backend="cython",
                                          num_threads=2)
    _, _, n_cache = fastlstm.lstm_forward(*args, lengths=lengths, backend="numpy")
    assert type(c_cache) is type(n_cache) is LSTMCache
    for field in ("gates", "h_states", "c_states"):
        a, r = getattr(c_cache, field), getattr(n_cache, field)
        assert a.shape == r.shape and a.dtype == r.dtype, field
    tol = tolerance(dtype, T, B, D, H)
    # The compiled cache through the reference backward. Gate values past a sequence's
    # length are unspecified (and masked out), so they may hold anything.
    with np.errstate(all="ignore"):
        cross = reference.lstm_backward(upstream[0], c_cache, *upstream[1:])
    native = fastlstm.lstm_backward(upstream[0], c_cache, *upstream[1:])
    assert_close(dict(zip(GRADS, cross)), dict(zip(GRADS, native)), tol, "cython cache")
    # The reference's cache through the compiled backward.
    cross = fastlstm.lstm_backward(upstream[0], relabelled(n_cache, "cython"), *upstream[1:])
    native = fastlstm.lstm_backward(upstream[0], n_cache, *upstream[1:])
    assert_close(dict(zip(GRADS, cross)), dict(zip(GRADS, native)), tol, "numpy cache")
    # The states the two forwards stored agree (where they are specified).
    for field in ("h_states", "c_states"):
        assert rel_err(getattr(c_cache, field), getattr(n_cache, field)) <= tol, field


# --- thread count ------------------------------------------------------------------

@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(7, 5, 7, 13), (40, 8, 5, 13), (5, 3, 6, 130),
                                   (6, 1, 7, 70)], ids=shape_id)
def test_thread_count_changes_only_rounding(shape, dtype, with_lengths):
    T, B, D, H = shape
    inp = make_inputs(T, B, D, H, dtype, seed=4)
    lengths = unsorted_lengths(T, B) if with_lengths else None
    one = run("cython", inp, lengths=lengths, num_threads=1)
    tol = rounding_tolerance(dtype, T, B, D, H)
    for n in (2, None):
        assert_close(run("cython", inp, lengths=lengths, num_threads=n), one, tol,
                     f"num_threads={n}")


# --- a batch is its sequences ------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_batch_equals_sequences_one_at_a_time(with_lengths, backend, dtype):
    """Each sequence run alone (B = 1, x truncated to its length) gives its slice of the
    batch's hs, h_n, c_n, dx, dh0, dc0; the weight gradients of the sequences add up to
    the batch's."""
    T, B, D, H = 9, 5, 7, 13
    inp = make_inputs(T, B, D, H, dtype, seed=5)
    lengths = np.array([9, 3, 0, 6, 1]) if with_lengths else np.full(B, T)
    batch = run(backend, inp, lengths=lengths if with_lengths else None, num_threads=2)
    # Tolerance: the batch's and a sequence's results are both within tolerance() of
    # the exact values, so of each other within twice that.
    tol = 2 * tolerance(dtype, T, B, D, H)
    sums = {name: np.zeros(batch[name].shape, np.float64) for name in ("dW_x", "dW_h", "db")}
    for i, L in enumerate(lengths):
        sl = slice(i, i + 1)
        if L == 0:   # an empty sequence: the state and its gradient pass straight through
            assert np.array_equal(batch["h_n"][sl], inp["h0"][sl])
            assert np.array_equal(batch["c_n"][sl], inp["c0"][sl])
            assert np.array_equal(batch["dh0"][sl], inp["dh_n"][sl])
            assert np.array_equal(batch["dc0"][sl], inp["dc_n"][sl])
            assert not np.any(batch["hs"][:, i]) and not np.any(batch["dx"][:, i])
            continue
        single_inp = dict(x=inp["x"][:L, sl], W_x=inp["W_x"], W_h=inp["W_h"], b=inp["b"],
                          h0=inp["h0"][sl], c0=inp["c0"][sl], dhs=inp["dhs"][:L, sl],
                          dh_n=inp["dh_n"][sl], dc_n=inp["dc_n"][sl])
        single = run(backend, single_inp, num_threads=1)
        mine = dict(hs=batch["hs"][:L, sl], h_n=batch["h_n"][sl], c_n=batch["c_n"][sl],
                    dx=batch["dx"][:L, sl], dh0=batch["dh0"][sl], dc0=batch["dc0"][sl])
        assert_close(mine, {k: single[k] for k in mine}, tol, f"sequence {i} (length {L})")
        # Past its length a sequence has hs = 0 and receives no input gradient.
        assert not np.any(batch["hs"][L:, i]) and not np.any(batch["dx"][L:, i])
        for name in sums:
            sums[name] += single[name]
    assert_close({k: batch[k] for k in sums}, sums, tol, "summed weight gradients")


# --- non-contiguous inputs ---------------------------------------------------------

def non_contiguous(inp):
    """The same values in non-contiguous layouts: x a transposed (B, T, D) array, weights
    Fortran-ordered, b and the states strided slices, dhs sliced from a wider array."""
    out = {}
    x = inp["x"]
    out["x"] = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    out["W_x"] = np.asfortranarray(inp["W_x"])
    out["W_h"] = np.asfortranarray(inp["W_h"])
    wide_b = np.zeros(2 * inp["b"].size, inp["b"].dtype)
    wide_b[::2] = inp["b"]
    out["b"] = wide_b[::2]
    out["h0"] = np.asfortranarray(inp["h0"])
    c0 = inp["c0"]
    wide_c0 = np.zeros((c0.shape[0], 2 * c0.shape[1]), c0.dtype)
    wide_c0[:, 1::2] = c0
    out["c0"] = wide_c0[:, 1::2]
    dhs = inp["dhs"]
    wide_dhs = np.zeros(dhs.shape[:2] + (dhs.shape[2] + 3,), dhs.dtype)
    wide_dhs[:, :, 2:-1] = dhs
    out["dhs"] = wide_dhs[:, :, 2:-1]
    out["dh_n"] = np.asfortranarray(inp["dh_n"])
    dc_n = inp["dc_n"]
    wide_dc = np.zeros((2 * dc_n.shape[0], dc_n.shape[1]), dc_n.dtype)
    wide_dc[::2] = dc_n
    out["dc_n"] = wide_dc[::2]
    for name, a in out.items():
        assert np.array_equal(a, inp[name]), name
        assert not a.flags.c_contiguous, name
    return out


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_non_contiguous_inputs(dtype, backend):
    T, B, D, H = 6, 3, 7, 13
    inp = make_inputs(T, B, D, H, dtype, seed=6)
    lengths = unsorted_lengths(T, B)
    wide_lengths = np.zeros(2 * B, np.int64)
    wide_lengths[::2] = lengths
    strided = non_contiguous(inp)
    for num_threads in (1, 2):
        contiguous = run(backend, inp, lengths=lengths, num_threads=num_threads)
        other = run(backend, strided, lengths=wide_lengths[::2], num_threads=num_threads)
        assert_close(other, contiguous, rounding_tolerance(dtype, T, B, D, H),
                     f"non-contiguous, num_threads={num_threads}")
    # A sliced x (every other step of a longer sequence) is a plain strided view too.
    long_x = np.repeat(inp["x"], 2, axis=0)
    sliced = dict(inp, x=long_x[::2])
    assert not sliced["x"].flags.c_contiguous
    assert_close(run(backend, sliced), run(backend, inp),
                 rounding_tolerance(dtype, T, B, D, H), "sliced x")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_byte_swapped_and_read_only_inputs(dtype):
    T, B, D, H = 5, 3, 7, 13
    inp = make_inputs(T, B, D, H, dtype, seed=7)
    expected = run("cython", inp, num_threads=2)
    swapped = {k: v.astype(v.dtype.newbyteorder(">" if v.dtype.byteorder != ">" else "<"))
               for k, v in inp.items()}
    assert all(np.array_equal(swapped[k], inp[k]) for k in inp)
    assert_close(run("cython", swapped, num_threads=2), expected,
                 rounding_tolerance(dtype, T, B, D, H), "byte-swapped")
    read_only = {k: v.copy() for k, v in inp.items()}
    for v in read_only.values():
        v.flags.writeable = False
    assert_close(run("cython", read_only, num_threads=2), expected,
                 rounding_tolerance(dtype, T, B, D, H), "read-only")


# --- inputs are not written to; backward can run twice -----------------------------

@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_inputs_are_not_modified(backend, dtype, with_lengths):
    for shape in [(6, 3, 7, 13), (40, 8, 5, 13)]:
        T, B, D, H = shape
        inp = make_inputs(T, B, D, H, dtype, seed=8)
        lengths = unsorted_lengths(T, B) if with_lengths else None
        before = {k: v.copy() for k, v in inp.items()}
        lengths_before = None if lengths is None else lengths.copy()
        for num_threads in (1, 2):
            hs, (h_n, c_n), cache = fastlstm.lstm_forward(
                inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["h0"], inp["c0"],
                lengths=lengths, backend=backend, num_threads=num_threads)
            for k in before:
                assert np.array_equal(inp[k], before[k]), f"forward modified {k}"
            cache_before = {f: getattr(cache, f).copy()
                            for f in ("x", "W_x", "W_h", "gates", "h_states", "c_states")}
            fastlstm.lstm_backward(inp["dhs"], cache, inp["dh_n"], inp["dc_n"])
            fastlstm.lstm_backward(None, cache, inp["dh_n"], None)
            for k in before:
                assert np.array_equal(inp[k], before[k]), f"backward modified {k}"
            if lengths is not None:
                assert np.array_equal(lengths, lengths_before), "lengths modified"
                assert np.array_equal(cache.lengths, lengths_before)
            for f, v in cache_before.items():
                # the cache (including gate values past a length) is read-only to backward
                assert np.array_equal(getattr(cache, f), v, equal_nan=True), \
                    f"backward modified cache.{f}"
            # The outputs are fresh arrays, not views of the inputs or of each other.
            for out in (hs, h_n, c_n):
                for v in inp.values():
                    assert not np.shares_memory(out, v)
            assert not np.shares_memory(h_n, c_n)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_backward_twice_on_one_cache(backend, dtype, with_lengths):
    T, B, D, H = 40, 8, 5, 13
    inp = make_inputs(T, B, D, H, dtype, seed=9)
    lengths = unsorted_lengths(T, B) if with_lengths else None
    _, _, cache = fastlstm.lstm_forward(inp["x"], inp["W_x"], inp["W_h"], inp["b"],
                                        inp["h0"], inp["c0"], lengths=lengths,
                                        backend=backend, num_threads=2)
    first = fastlstm.lstm_backward(inp["dhs"], cache, inp["dh_n"], inp["dc_n"])
    # A different backward in between must not leave anything behind in the cache.
    other = fastlstm.lstm_backward(None, cache, inp["dc_n"], None)
    second = fastlstm.lstm_backward(inp["dhs"], cache, inp["dh_n"], inp["dc_n"])
    for name, a, b in zip(GRADS, first, second):
        assert not np.shares_memory(a, b), name
        # Same cache, same thread count, same arguments: the same computation.
        assert rel_err(b, a) <= rounding_tolerance(dtype, T, B, D, H), name
    # and the gradients returned earlier were not overwritten by the later calls
    assert not any(np.shares_memory(a, b) for a in first for b in other)

"""The compiled kernels (``backend="cython"``) against the NumPy reference, for the LSTM
and the vanilla RNN.

Every output of the forward (hs, h_n, c_n) and every gradient of the backward is compared
with ``fastlstm.reference`` run in float64 on the *same* values, so for float32 only the
kernel's rounding is measured, not the rounding of the inputs:

* float64: max |compiled - reference| <= 1e-10 * max |reference| (per array);
* float32, LSTM: a tolerance that scales with float32's epsilon and the length of the
  longest sum in the computation (see ``tolerance``); float32, RNN: 2e-4
  (conftest.TOLERANCE).

The grid covers shapes (one step, one sequence, odd sizes, several backward chunks, wide
H), both dtypes, 1 and 2 threads, lengths (none, and mixed lengths in two orders), the
optional initial states and upstream gradients, and every internal code path (BLAS or
fastlstm's own GEMM kernels; batch or hidden-unit partitioning; each instruction set),
and for the RNN tanh and relu with full and truncated BPTT. Besides the grid, the file
checks properties of the kernels: the cache layout shared between backends, independence
of the thread count, that a batch equals its sequences run one at a time, that
non-contiguous, byte-swapped and read-only inputs give the same results as contiguous
ones, that no input is written to, that the backward can run twice on one cache and that
outputs do not alias it, that the kernels release the GIL, cope with fewer OpenMP threads
than asked for and with calls from several Python threads.
"""
import contextlib
import threading
import time

import numpy as np
import pytest

import fastlstm
from fastlstm import _buffers, _schedule, reference
from fastlstm._containers import LSTMCache
from conftest import TOLERANCE, isa_limited, make_lstm_inputs, mixed_lengths

pytestmark = pytest.mark.skipif(not fastlstm._backend.compiled_available(),
                                reason="compiled kernels not built")

OUTPUTS = ("hs", "h_n", "c_n")
GRADS = fastlstm.LSTMGrads._fields     # dx, dh0, dc0, dW_x, dW_h, db
ALL_FIELDS = OUTPUTS + GRADS
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])

F32_EPS = float(np.finfo(np.float32).eps)
# Floor for the scale of an all-zero reference array: the compiled result must then be
# (essentially) exactly zero, which it is when every contribution is multiplied by zero.
ZERO_FLOOR = 1e-30


# --- helpers -----------------------------------------------------------------------

def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (floored at ZERO_FLOOR); the actual
    values must be finite."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    assert np.all(np.isfinite(actual)), "non-finite values in the result"
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), ZERO_FLOOR))


def tolerance(dtype, T, B, D, H):
    """Allowed relative error of a compiled LSTM result against the float64 reference.

    float64: 1e-10, the contract. float32: the kernel's results are sums of at most
    n = T*B + D + 4H rounded float32 terms (the weight gradients reduce over all T*B
    (step, sequence) rows; each step's products over D and H inputs; the recursion
    adds one rounding per step), whose rounding error grows like sqrt(n) * eps for
    random data; 16 * sqrt(n) * eps leaves an order of magnitude over what the kernels
    actually show (a few eps) while staying far below conftest.TOLERANCE (2e-4) for
    every size used here.
    """
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 16 * F32_EPS * np.sqrt(T * B + D + 4 * H)


def rounding_tolerance(dtype, T, B, D, H):
    """Two compiled runs that differ only in summation order (thread partitioning,
    buffer alignment): a few eps of sqrt(n)-growth, for either precision."""
    eps = float(np.finfo(dtype).eps)
    return 16 * eps * np.sqrt(T * B + D + 4 * H)


def make_inputs(T, B, D, H, dtype, seed=0):
    """x, W_x, W_h, b (PyTorch's initial magnitudes, uniform +-1/sqrt(H)), h0, c0 (the
    values of conftest.make_lstm_inputs), and upstream gradients dhs, dh_n, dc_n, all
    of ``dtype``."""
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


# Lengths: none; conftest.mixed_lengths (T first, 0 last: a full sequence at B = 1);
# unsorted_lengths (0 first, then T: an empty or shortened sequence at B = 1).
LENGTHS = ["full", "mixed", "unsorted"]


def make_lengths(kind, T, B, seed=0):
    if kind == "full":
        return None
    if kind == "mixed":
        return mixed_lengths(T, B)
    return unsorted_lengths(T, B, seed)


def run(backend, inp, *, lengths=None, num_threads=None, h0=True, c0=True, dhs=True,
        dh_n=True, dc_n=True):
    """LSTM forward and backward on ``backend``; returns a dict of the 9 result arrays."""
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


def shape_id(shape):
    return "T{}B{}D{}H{}".format(*shape)


# === the LSTM ======================================================================

SHAPES = [  # (T, B, D, H)
    (1, 1, 1, 1),
    (1, 1, 7, 13),      # T = 1 and B = 1
    (1, 3, 7, 13),      # T = 1, B = 3
    (6, 1, 7, 13),      # B = 1, several steps
    (6, 3, 7, 13),      # B not divisible by 2 threads
    (4, 5, 7, 13),      # B not divisible by 2 threads
    (7, 5, 7, 13),      # B = 5
    (3, 37, 20, 45),
    (40, 6, 6, 9),      # several backward chunks
    (40, 8, 5, 13),     # B*T = 320 > 256: the backward runs in several time chunks
    (70, 5, 3, 9),      # B*T = 350, odd B, chunk length does not divide T
    (300, 2, 4, 3),     # many chunks, tiny H
    (9, 4, 6, 20),      # H = 20: a multiple of 4, not of 8 or 16
    (12, 3, 10, 130),   # H >= 128 with few rows per thread: hidden-unit partitioning
    (5, 3, 6, 130),     # H >= 128 with few rows: the hidden-unit split across threads
    (9, 40, 5, 33),     # H just past a 32-column panel
    (5, 1, 9, 70),      # one sequence, units shared by 2 threads: masked vector tails
    (4, 1, 3, 130),     # one sequence, wide: single-row products in column blocks
    (40, 1, 5, 96),     # one sequence, long enough for the per-thread copy of W_h
    (4, 1, 5, 67),      # one sequence, W_h past 64 KB: the streaming AVX2 GEMV, with a
                        # tail of rows (67 = 8 * 8 + 3) and of columns (268 = 8 * 33 + 4)
]

PATHS = {
    # Each entry forces one internal path regardless of the size heuristics.
    "auto": {},
    "blas": {"PACKED_GEMM_ENABLED": False},
    "own-gemm": {"PACKED_GEMM_ENABLED": True, "PACKED_GEMM_MIN_STEP_ROWS": 1},
    "unit-split": {"UNIT_SPLIT_MAX_ROWS": 10**9, "UNIT_SPLIT_MIN_H": 1,
                   "PACKED_GEMM_MIN_STEP_ROWS": 1},
    "batch-split": {"UNIT_SPLIT_MAX_ROWS": 0, "UNIT_SPLIT_BACKWARD_MAX_ROWS_AVX2": -1,
                    "UNIT_SPLIT_IDLE_MIN_H": 10**9},
    # fastlstm's own kernels at a lower instruction set than this CPU's best, so the AVX2
    # kernels are checked on AVX-512 machines too (skipped where the CPU lacks them).
    # (and the NT kernel at any row count, where BLAS would take the taller products)
    "avx2-kernels": {"PACKED_GEMM_MIN_STEP_ROWS": 1, "NT_MAX_ROWS_AVX2": 10**9,
                     "isa": "avx2"},
    "avx2-unit-split": {"UNIT_SPLIT_MAX_ROWS": 10**9, "UNIT_SPLIT_MIN_H": 1,
                        "PACKED_GEMM_MIN_STEP_ROWS": 1, "NT_MAX_ROWS_AVX2": 10**9,
                        "isa": "avx2"},
    # the backward's step products on the packed GEMM over W_h^T packed once per call
    # (from the first step), or on the NT kernel over W_h in place (never packed), each
    # split by batch rows and by hidden units
    "packed-backward": {"backward_pack_min": 1},
    "packed-backward-unit-split": {"UNIT_SPLIT_MAX_ROWS": 10**9, "UNIT_SPLIT_MIN_H": 1,
                                   "backward_pack_min": 1},
    "avx2-packed-backward": {"NT_MAX_ROWS_AVX2": 10**9, "backward_pack_min": 1,
                             "isa": "avx2"},
    "nt-backward": {"backward_pack_min": 10**9},
    "nt-backward-unit-split": {"UNIT_SPLIT_MAX_ROWS": 10**9, "UNIT_SPLIT_MIN_H": 1,
                               "backward_pack_min": 10**9},
    # one sequence on several threads with each thread's share of W_h copied side by
    # side, from the first step (by default only sequences of 16 steps or more)
    "one-sequence-copy": {"copy_min_steps": 1},
    "avx2-one-sequence-copy": {"copy_min_steps": 1, "isa": "avx2"},
    # no ISA-specific kernel: BLAS for every product, portable C for the cell math (what
    # runs on ARM and on x86-64 CPUs without AVX2)
    "generic": {"isa": "generic"},
    "generic-unit-split": {"UNIT_SPLIT_MAX_ROWS": 10**9, "UNIT_SPLIT_MIN_H": 1,
                           "isa": "generic"},
}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    settings = dict(PATHS[request.param])
    isa = settings.pop("isa", None)
    copy_min_steps = settings.pop("copy_min_steps", None)
    backward_pack_min = settings.pop("backward_pack_min", None)
    for name, value in settings.items():
        monkeypatch.setattr(_schedule, name, value)
    kernels = fastlstm._backend.lstm_kernels
    if backward_pack_min is not None:
        previous_pack = kernels.set_backward_pack_min_step_rows(backward_pack_min)
        request.addfinalizer(
            lambda: kernels.set_backward_pack_min_step_rows(previous_pack))
    if copy_min_steps is not None:
        previous = kernels.set_one_sequence_copy_min_steps(copy_min_steps)
        request.addfinalizer(lambda: kernels.set_one_sequence_copy_min_steps(previous))
    with isa_limited(isa) if isa is not None else contextlib.nullcontext():
        yield request.param


def test_chunked_shapes_span_several_chunks():
    """The B*T > 256 shapes above really exercise the backward's chunking."""
    for T, B, D, H in SHAPES:
        if T * B > 256:
            chunk_T = _buffers.backward_chunk_steps(T, B)
            assert chunk_T < T and -(-T // chunk_T) >= 3, (T, B, chunk_T)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("num_threads", [1, 2])
@DTYPES
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(path, shape, dtype, num_threads, lengths):
    T, B, D, H = shape
    check_against_reference(T, B, D, H, dtype, seed=sum(shape),
                            lengths=make_lengths(lengths, T, B, seed=sum(shape)),
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


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("num_threads", [1, 2, None])
@DTYPES
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_optional_arguments(path, variant, dtype, num_threads, lengths):
    """h0/c0 omitted, dhs=None (only the final state gets a gradient), dh_n/dc_n
    omitted, in every combination the API allows."""
    for T, B, D, H in [(8, 5, 7, 13), (7, 5, 6, 11), (5, 3, 4, 6)]:
        _, out, _ = check_against_reference(T, B, D, H, dtype,
                                            lengths=make_lengths(lengths, T, B),
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


@DTYPES
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


@pytest.mark.parametrize("upstream", ["all", "dhs-only"])
@pytest.mark.parametrize("lengths", LENGTHS)
@DTYPES
@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (6, 3, 7, 13), (40, 8, 5, 13)],
                         ids=shape_id)
def test_caches_are_interchangeable(shape, dtype, lengths, upstream):
    """A cache from one backend, fed to the other backend's backward, gives the same
    gradients as the backward of the backend that made it, and as the other backend's
    own forward and backward."""
    T, B, D, H = shape
    inp = make_inputs(T, B, D, H, dtype, seed=3)
    lengths = make_lengths(lengths, T, B)
    args = (inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["h0"], inp["c0"])
    up = (inp["dhs"], inp["dh_n"], inp["dc_n"]) if upstream == "all" else (inp["dhs"],)
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
        cross = reference.lstm_backward(up[0], c_cache, *up[1:])
    native = fastlstm.lstm_backward(up[0], c_cache, *up[1:])
    assert_close(dict(zip(GRADS, cross)), dict(zip(GRADS, native)), tol, "cython cache")
    # ... and against the reference's own forward and backward.
    numpy_grads = fastlstm.lstm_backward(up[0], n_cache, *up[1:])
    assert_close(dict(zip(GRADS, cross)), dict(zip(GRADS, numpy_grads)), tol,
                 "cython cache against the numpy cache")
    # The reference's cache through the compiled backward.
    cross = fastlstm.lstm_backward(up[0], relabelled(n_cache, "cython"), *up[1:])
    assert_close(dict(zip(GRADS, cross)), dict(zip(GRADS, numpy_grads)), tol, "numpy cache")
    # The states the two forwards stored agree (where they are specified).
    for field in ("h_states", "c_states"):
        assert rel_err(getattr(c_cache, field), getattr(n_cache, field)) <= tol, field


# --- thread count ------------------------------------------------------------------

@pytest.mark.parametrize("upstream", ["all", "dhs-only"])
@pytest.mark.parametrize("lengths", LENGTHS)
@DTYPES
@pytest.mark.parametrize("shape", [(7, 5, 7, 13), (40, 8, 5, 13), (5, 3, 6, 130),
                                   (6, 1, 7, 70), (9, 7, 6, 130)], ids=shape_id)
def test_thread_count_changes_only_rounding(shape, dtype, lengths, upstream):
    T, B, D, H = shape
    inp = make_inputs(T, B, D, H, dtype, seed=4)
    lengths = make_lengths(lengths, T, B)
    given = {} if upstream == "all" else dict(dh_n=False, dc_n=False)
    one = run("cython", inp, lengths=lengths, num_threads=1, **given)
    tol = rounding_tolerance(dtype, T, B, D, H)
    for n in (2, 3, None):
        assert_close(run("cython", inp, lengths=lengths, num_threads=n, **given), one, tol,
                     f"num_threads={n}")


# --- a batch is its sequences ------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("shape, lengths", [
    ((9, 5, 7, 13), None),
    ((9, 5, 7, 13), [9, 3, 0, 6, 1]),
    ((8, 5, 4, 6), [8, 3, 0, 5, 1]),
], ids=["full", "lengths", "lengths-small"])
def test_batch_equals_sequences_one_at_a_time(shape, lengths, backend, dtype):
    """Each sequence run alone (B = 1, x truncated to its length) gives its slice of the
    batch's hs, h_n, c_n, dx, dh0, dc0; the weight gradients of the sequences add up to
    the batch's."""
    T, B, D, H = shape
    inp = make_inputs(T, B, D, H, dtype, seed=5)
    batch = run(backend, inp, lengths=lengths, num_threads=2)
    lengths = np.full(B, T) if lengths is None else np.array(lengths)
    # Tolerance: the batch's and a sequence's results are both within tolerance() of
    # the exact values, so of each other within twice that; float64 within the
    # contract's 1e-10 all the same.
    tol = min(2 * tolerance(dtype, T, B, D, H), TOLERANCE[np.dtype(dtype)])
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
@DTYPES
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
    # Contiguous copies of transposed arrays, Fortran-ordered weights, a strided b: the
    # compiled kernels copy their inputs into their own layout, so they give bit for bit
    # the contiguous results; the reference's products may take other BLAS routes for
    # other layouts, so it agrees to rounding.
    T, B, D, H = 5, 4, 6, 7
    inp = make_inputs(T, B, D, H, dtype)
    tol = 0.0 if backend == "cython" else rounding_tolerance(dtype, T, B, D, H)
    x_strided = np.ascontiguousarray(inp["x"].transpose(1, 0, 2)).transpose(1, 0, 2)
    b_strided = np.repeat(inp["b"], 2)[::2]
    assert not x_strided.flags.c_contiguous and not b_strided.flags.c_contiguous
    transposed = dict(inp, x=x_strided, W_x=np.asfortranarray(inp["W_x"]),
                      W_h=np.asfortranarray(inp["W_h"]), b=b_strided,
                      h0=np.ascontiguousarray(inp["h0"].T).T,
                      dhs=np.ascontiguousarray(inp["dhs"].transpose(2, 1, 0))
                      .transpose(2, 1, 0))
    for num_threads in (None, 1, 2):
        assert_close(run(backend, transposed, num_threads=num_threads, dh_n=False,
                         dc_n=False),
                     run(backend, inp, num_threads=num_threads, dh_n=False, dc_n=False),
                     tol, f"transposed copies, num_threads={num_threads}")


@DTYPES
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

@pytest.mark.parametrize("lengths", LENGTHS)
@DTYPES
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_inputs_are_not_modified_and_backward_repeats(backend, dtype, lengths):
    kind = lengths
    for shape in [(6, 3, 4, 5), (6, 3, 7, 13), (40, 8, 5, 13)]:
        T, B, D, H = shape
        inp = make_inputs(T, B, D, H, dtype, seed=8)
        lengths = make_lengths(kind, T, B)
        before = {k: v.copy() for k, v in inp.items()}
        lengths_before = None if lengths is None else lengths.copy()
        for num_threads in (1, 2, None):
            hs, (h_n, c_n), cache = fastlstm.lstm_forward(
                inp["x"], inp["W_x"], inp["W_h"], inp["b"], inp["h0"], inp["c0"],
                lengths=lengths, backend=backend, num_threads=num_threads)
            for k in before:
                assert np.array_equal(inp[k], before[k]), f"forward modified {k}"
            cache_before = {f: getattr(cache, f).copy()
                            for f in ("x", "W_x", "W_h", "gates", "h_states", "c_states")}
            fastlstm.lstm_backward(inp["dhs"], cache, inp["dh_n"], inp["dc_n"])
            fastlstm.lstm_backward(None, cache, inp["dh_n"], None)
            # the same backward twice on one cache: the same gradients, bit for bit
            first = fastlstm.lstm_backward(inp["dhs"], cache, inp["dh_n"], inp["dh_n"])
            second = fastlstm.lstm_backward(inp["dhs"], cache, inp["dh_n"], inp["dh_n"])
            for name, a, r in zip(GRADS, first, second):
                np.testing.assert_array_equal(a, r, err_msg=name)
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
@DTYPES
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


def test_outputs_do_not_alias_the_cache():
    """Writing into hs, h_n, c_n or a gradient must not corrupt a later backward."""
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(5, 3, 4, 6)
    dhs = np.ones((5, 3, 6))
    hs, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0)
    expected = fastlstm.lstm_backward(dhs, cache)
    for a in (hs, h_n, c_n) + tuple(expected):
        a[...] = np.nan
    again = fastlstm.lstm_backward(dhs, cache)
    reference_grads = reference.lstm_backward(dhs, cache)
    for a, r in zip(again, reference_grads):
        assert rel_err(a, r) <= 1e-10


def test_kernels_release_the_gil():
    """A Python thread keeps running while a long compiled forward+backward is under way."""
    x, W_x, W_h, b, _, _ = make_lstm_inputs(200, 64, 64, 128, np.float32)
    done = threading.Event()
    durations = []

    def work():
        t0 = time.perf_counter()
        _, _, cache = fastlstm.lstm_forward(x, W_x, W_h, b, num_threads=1)
        fastlstm.lstm_backward(None, cache)
        durations.append(time.perf_counter() - t0)
        done.set()

    worker = threading.Thread(target=work)
    ticks = 0
    worker.start()
    while not done.is_set():
        ticks += 1
    worker.join()
    # With the GIL held for the whole call, this loop would barely advance.
    assert durations[0] > 0.01
    assert ticks > 10_000, ticks


def test_fewer_threads_than_asked_for():
    """LSTM and RNN (full and truncated BPTT): the OpenMP runtime may grant fewer threads
    than num_threads asks for (here
    OMP_THREAD_LIMIT=1): every thread then takes more rows, and its scratch must grow to
    match. Run in a child process, where the limit can be set before OpenMP starts."""
    import os
    import pathlib
    import subprocess
    import sys
    script = (
        "import numpy as np, fastlstm\n"
        "from conftest import make_lstm_inputs, rel_err\n"
        "for dtype in (np.float32, np.float64):\n"
        "    for B, H in ((5, 13), (40, 33), (3, 130)):\n"
        "        x, W_x, W_h, b, h0, c0 = make_lstm_inputs(60, B, 7, H, dtype)\n"
        "        lengths = np.arange(B) % 61\n"
        "        out = [fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths,\n"
        "                                     num_threads=n) for n in (1, 2, 8)]\n"
        "        g = [fastlstm.lstm_backward(o[0], o[2]) for o in out]\n"
        "        for o, gi in zip(out[1:], g[1:]):\n"
        "            assert rel_err(o[0], out[0][0]) < 1e-5\n"
        "            assert all(rel_err(a, r) < 1e-5 for a, r in zip(gi, g[0]))\n"
        "        W_r = W_h[:, :H].copy()\n"
        "        for k in (None, 3):\n"
        "            rnn = [fastlstm.rnn_forward(x, W_x[:, :H].copy(), W_r, b[:H].copy(), h0,\n"
        "                                        lengths=lengths, num_threads=n)\n"
        "                   for n in (1, 2, 8)]\n"
        "            rg = [fastlstm.rnn_backward(o[0], o[2], bptt_truncate=k) for o in rnn]\n"
        "            for gi in rg[1:]:\n"
        "                assert all(rel_err(a, r) < 1e-5 for a, r in zip(gi, rg[0]))\n"
        "print('OK')\n")
    tests = pathlib.Path(__file__).parent
    env = dict(os.environ, OMP_THREAD_LIMIT="1",
               PYTHONPATH=os.pathsep.join([str(pathlib.Path(fastlstm.__file__).resolve()
                                                .parent.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tests, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_concurrent_calls_from_python_threads():
    """Kernels called from several Python threads at once give the single-threaded
    results, and the process's BLAS thread counts are restored afterwards."""
    from fastlstm._threads import _blas_pools
    before = [pool.get() for pool in _blas_pools()]
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(30, 9, 8, 40, np.float32)
    dhs = np.ones((30, 9, 40), np.float32)
    expected_hs, _, cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, num_threads=1)
    expected = fastlstm.lstm_backward(dhs, cache)
    errors = []

    def work():
        try:
            for _ in range(20):
                hs, _, c = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, num_threads=2)
                g = fastlstm.lstm_backward(dhs, c)
                assert rel_err(hs, expected_hs) < 1e-5
                assert all(rel_err(a, r) < 1e-5 for a, r in zip(g, expected))
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    assert [pool.get() for pool in _blas_pools()] == before


# === the RNN =======================================================================

RNN_SHAPES = [(1, 1, 1, 1), (5, 3, 4, 6), (6, 1, 7, 13), (40, 7, 5, 13), (30, 37, 9, 45),
          (300, 2, 3, 4), (9, 5, 6, 100),
          (7, 1, 5, 37)]   # one sequence: the single-row kernels, with masked vector tails


def make_rnn_inputs(T, B, D, H, dtype, seed):
    """x, W_x, W_h, b, h0 of ``dtype``."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return (rng.standard_normal((T, B, D)).astype(dtype),
            rng.uniform(-k, k, (D, H)).astype(dtype),
            rng.uniform(-k, k, (H, H)).astype(dtype),
            rng.uniform(-k, k, H).astype(dtype),
            rng.standard_normal((B, H)).astype(dtype))


@pytest.fixture(params=["auto", "blas", "own-gemm", "avx2-kernels", "generic"])
def rnn_path(request, monkeypatch):
    """Forces one internal path of the RNN kernels (as ``path`` does for the LSTM's)."""
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


@pytest.mark.parametrize("shape", RNN_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_rnn_matches_reference(rnn_path, shape, dtype, nonlinearity, num_threads,
                               with_lengths):
    T, B, D, H = shape
    x, W_x, W_h, b, h0 = make_rnn_inputs(T, B, D, H, dtype, seed=T + B + H)
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
def test_rnn_many_to_one_and_no_upstream(k):
    x, W_x, W_h, b, h0 = make_rnn_inputs(6, 4, 3, 5, np.float64, seed=2)
    _, _, cache = fastlstm.rnn_forward(x, W_x, W_h, b, h0, lengths=[6, 0, 2, 5])
    _, _, r_cache = reference.rnn_forward(x, W_x, W_h, b, h0, lengths=[6, 0, 2, 5])
    dh_n = np.ones((4, 5))
    for a, r in zip(fastlstm.rnn_backward(None, cache, dh_n, bptt_truncate=k),
                    reference.rnn_backward(None, r_cache, dh_n, bptt_truncate=k)):
        assert rel_err(a, r) <= 1e-10
    assert all(not np.any(g) for g in fastlstm.rnn_backward(None, cache, bptt_truncate=k))


def test_rnn_caches_are_interchangeable_and_inputs_untouched():
    x, W_x, W_h, b, h0 = make_rnn_inputs(7, 3, 4, 6, np.float32, seed=3)
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


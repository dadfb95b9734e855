"""The compiled kernels against the NumPy reference, over shapes, dtypes, threads,
lengths, initial states and upstream gradients, and through every internal code path
(BLAS or fastlstm's own GEMM kernels; batch or hidden-unit partitioning)."""
import contextlib
import threading
import time

import numpy as np
import pytest

import fastlstm
from fastlstm import _schedule, reference
from conftest import isa_limited, make_lstm_inputs, mixed_lengths, rel_err, TOLERANCE

pytestmark = pytest.mark.skipif(not fastlstm.config()["compiled"],
                                reason="compiled kernels not built")

SHAPES = [  # (T, B, D, H)
    (1, 1, 1, 1),
    (1, 3, 7, 13),
    (6, 1, 7, 13),
    (4, 5, 7, 13),      # B not divisible by 2 threads
    (3, 37, 20, 45),
    (40, 6, 6, 9),      # several backward chunks
    (300, 2, 4, 3),     # many chunks, tiny H
    (12, 3, 10, 130),   # H >= 128 with few rows per thread: hidden-unit partitioning
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
    for name, value in settings.items():
        monkeypatch.setattr(_schedule, name, value)
    kernels = fastlstm._backend.lstm_kernels
    if copy_min_steps is not None:
        previous = kernels.set_one_sequence_copy_min_steps(copy_min_steps)
        request.addfinalizer(lambda: kernels.set_one_sequence_copy_min_steps(previous))
    with isa_limited(isa) if isa is not None else contextlib.nullcontext():
        yield request.param


def run_both(x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n, num_threads):
    out = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths, backend="cython",
                                num_threads=num_threads)
    grads = fastlstm.lstm_backward(dhs, out[2], dh_n, dc_n)
    # The reference runs in float64 on the same (possibly float32-rounded) values.
    f64 = [None if a is None else np.asarray(a, np.float64)
           for a in (x, W_x, W_h, b, h0, c0, dhs, dh_n, dc_n)]
    ref = reference.lstm_forward(*f64[:6], lengths=lengths)
    ref_grads = reference.lstm_backward(f64[6], ref[2], f64[7], f64[8])
    return out, grads, ref, ref_grads


def assert_matches(out, grads, ref, ref_grads, dtype):
    tol = TOLERANCE[np.dtype(dtype)]
    hs, (h_n, c_n), _ = out
    assert hs.dtype == h_n.dtype == c_n.dtype == dtype
    for name, a, r in (("hs", hs, ref[0]), ("h_n", h_n, ref[1][0]), ("c_n", c_n, ref[1][1])):
        assert rel_err(a, r) <= tol, (name, rel_err(a, r))
    for name, a, r in zip(fastlstm.LSTMGrads._fields, grads, ref_grads):
        assert a.dtype == dtype, name
        assert rel_err(a, r) <= tol, (name, rel_err(a, r))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}D{}H{}".format(*s))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_matches_reference(path, shape, dtype, num_threads, with_lengths):
    T, B, D, H = shape
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype, seed=T + B + H)
    rng = np.random.default_rng(1)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype)
    lengths = mixed_lengths(T, B) if with_lengths else None
    assert_matches(*run_both(x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n, num_threads),
                   dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["no-state", "many-to-one", "only-dhs"])
def test_optional_arguments(path, dtype, variant):
    """h0/c0 omitted, dhs=None (only the final state gets a gradient), dh_n/dc_n omitted."""
    T, B, D, H = 7, 5, 6, 11
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype, state=variant != "no-state")
    rng = np.random.default_rng(2)
    dhs = None if variant == "many-to-one" else rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = None if variant == "only-dhs" else rng.standard_normal((B, H)).astype(dtype)
    dc_n = None if variant != "no-state" else rng.standard_normal((B, H)).astype(dtype)
    for num_threads in (1, 2):
        for lengths in (None, mixed_lengths(T, B)):
            assert_matches(*run_both(x, W_x, W_h, b, h0, c0, lengths, dhs, dh_n, dc_n,
                                     num_threads), dtype)


def test_many_to_one_gradient_only_through_final_state():
    x, W_x, W_h, b, _, _ = make_lstm_inputs(5, 3, 4, 6)
    _, _, cache = fastlstm.lstm_forward(x, W_x, W_h, b)
    grads = fastlstm.lstm_backward(None, cache)
    for g in grads:   # no upstream gradient at all: everything is exactly zero
        assert not np.any(g)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_caches_are_interchangeable(dtype):
    """A cache made by one backend gives the same gradients in the other's backward."""
    T, B, D, H = 6, 4, 5, 7
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype)
    dhs = np.random.default_rng(3).standard_normal((T, B, H)).astype(dtype)
    lengths = mixed_lengths(T, B)
    _, _, compiled_cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths)
    _, _, numpy_cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths,
                                              backend="numpy")
    tol = TOLERANCE[np.dtype(dtype)]
    for a, r in zip(reference.lstm_backward(dhs, compiled_cache),
                    fastlstm.lstm_backward(dhs, numpy_cache)):
        assert rel_err(a, r) <= tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_thread_count_changes_only_rounding(dtype):
    T, B, D, H = 9, 7, 6, 130
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype)
    dhs = np.random.default_rng(4).standard_normal((T, B, H)).astype(dtype)
    results = []
    for n in (1, 2, 3):
        hs, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, num_threads=n)
        results.append((hs, h_n, c_n) + tuple(fastlstm.lstm_backward(dhs, cache)))
    tol = TOLERANCE[np.dtype(dtype)]
    for other in results[1:]:
        for a, r in zip(other, results[0]):
            assert rel_err(a, r) <= tol


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_equals_sequences_one_at_a_time(backend, dtype):
    """Each sequence of a padded batch, run alone at its own length, gives its slice of
    the batch's outputs and gradients; weight gradients add up over the sequences."""
    T, B, D, H = 8, 5, 4, 6
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype)
    lengths = np.array([8, 3, 0, 5, 1])
    rng = np.random.default_rng(5)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype)
    hs, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0, lengths=lengths,
                                                  backend=backend, num_threads=2)
    grads = fastlstm.lstm_backward(dhs, cache, dh_n, dc_n)
    tol = TOLERANCE[np.dtype(dtype)]
    sums = {name: np.zeros_like(getattr(grads, name)) for name in ("dW_x", "dW_h", "db")}
    for i, L in enumerate(lengths):
        sl = slice(i, i + 1)
        if L == 0:   # an empty sequence: the state passes straight through
            assert rel_err(h_n[sl], h0[sl]) == 0 and rel_err(c_n[sl], c0[sl]) == 0
            assert not np.any(hs[:, i])
            assert rel_err(grads.dh0[sl], dh_n[sl]) == 0
            assert rel_err(grads.dc0[sl], dc_n[sl]) == 0
            assert not np.any(grads.dx[:, i])
            continue
        hs_i, (h_i, c_i), cache_i = fastlstm.lstm_forward(x[:L, sl], W_x, W_h, b, h0[sl],
                                                          c0[sl], backend=backend)
        g_i = fastlstm.lstm_backward(dhs[:L, sl], cache_i, dh_n[sl], dc_n[sl])
        assert rel_err(hs[:L, sl], hs_i) <= tol
        assert not np.any(hs[L:, i])
        assert rel_err(h_n[sl], h_i) <= tol and rel_err(c_n[sl], c_i) <= tol
        assert rel_err(grads.dx[:L, sl], g_i.dx) <= tol
        assert not np.any(grads.dx[L:, i])
        assert rel_err(grads.dh0[sl], g_i.dh0) <= tol
        assert rel_err(grads.dc0[sl], g_i.dc0) <= tol
        for name in sums:
            sums[name] += getattr(g_i, name)
    for name, total in sums.items():
        assert rel_err(getattr(grads, name), total) <= tol, name


def test_non_contiguous_inputs_give_the_same_results():
    T, B, D, H = 5, 4, 6, 7
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H)
    dhs = np.random.default_rng(6).standard_normal((T, B, H))
    expected_out = fastlstm.lstm_forward(x, W_x, W_h, b, h0, c0)
    expected = fastlstm.lstm_backward(dhs, expected_out[2])
    x_strided = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    W_x_f = np.asfortranarray(W_x)
    W_h_f = np.asfortranarray(W_h)
    b_strided = np.repeat(b, 2)[::2]
    h0_t = np.ascontiguousarray(h0.T).T
    dhs_strided = np.ascontiguousarray(dhs.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert not x_strided.flags.c_contiguous and not b_strided.flags.c_contiguous
    out = fastlstm.lstm_forward(x_strided, W_x_f, W_h_f, b_strided, h0_t, c0)
    grads = fastlstm.lstm_backward(dhs_strided, out[2])
    assert rel_err(out[0], expected_out[0]) == 0
    for a, r in zip(grads, expected):
        assert rel_err(a, r) == 0


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_inputs_are_not_modified_and_backward_repeats(backend):
    T, B, D, H = 6, 3, 4, 5
    args = make_lstm_inputs(T, B, D, H, np.float32)
    rng = np.random.default_rng(7)
    dhs = rng.standard_normal((T, B, H)).astype(np.float32)
    dh_n = rng.standard_normal((B, H)).astype(np.float32)
    lengths = np.array([6, 2, 0])
    copies = [a.copy() for a in args] + [dhs.copy(), dh_n.copy(), lengths.copy()]
    _, _, cache = fastlstm.lstm_forward(*args, lengths=lengths, backend=backend)
    first = fastlstm.lstm_backward(dhs, cache, dh_n, dh_n)
    second = fastlstm.lstm_backward(dhs, cache, dh_n, dh_n)
    for a, c in zip(list(args) + [dhs, dh_n, lengths], copies):
        np.testing.assert_array_equal(a, c)
    for a, r in zip(first, second):
        np.testing.assert_array_equal(a, r)


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

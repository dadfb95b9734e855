"""The public LSTM functions: validate, pick a backend, run.

Both backends share one cache layout (``LSTMCache``), so ``lstm_backward`` runs with
the backend that made the cache. ``lstm_forward_lookup`` / ``lstm_backward_lookup`` run
the same recursion on inputs given as ids into a table of projected inputs (compiled
kernels only; cache ``LSTMLookupCache``).
"""
import time

import numpy as np

from . import _backend, _isa, reference
from ._buffers import aligned_empty as _empty, backward_chunk_steps as _backward_chunk_steps
from ._containers import LSTMCache, LSTMGrads, LSTMLookupCache, LSTMLookupGrads
from ._threads import blas_threads, resolve_num_threads
from ._validation import (validate_lstm_backward, validate_lstm_backward_lookup,
                          validate_lstm_forward, validate_lstm_forward_lookup)

__all__ = ["lstm_forward", "lstm_backward", "LSTMGrads", "LSTMCache",
           "lstm_forward_lookup", "lstm_backward_lookup", "LSTMLookupGrads",
           "LSTMLookupCache", "lookup_available"]

# Thread partitioning and the recurrent GEMM (module attributes so tests and benchmarks
# can force each path).
PACKED_GEMM_ENABLED = True
PACKED_GEMM_MIN_STEP_ROWS = 32
UNIT_SPLIT_MAX_ROWS = 16      # hidden-unit split below this many rows per thread ...
UNIT_SPLIT_MIN_H = 128        # ... for layers at least this wide,
UNIT_SPLIT_IDLE_MIN_H = 64    # and for narrower ones when a batch split would idle threads
# At the AVX2 level the backward shares out the units up to this many rows per thread:
# each thread's step product then streams its share of W_h instead of all of it, which
# pays on AVX2 CPUs' smaller L2 caches.
UNIT_SPLIT_BACKWARD_MAX_ROWS_AVX2 = 32
# The backward's step product dh = d_gates W_h^T (and dx = d_gates W_x^T) on fastlstm's
# NT kernel, or on BLAS: at the AVX2 level OpenBLAS's sgemm is the faster of the two once
# a thread's product has more than this many rows (measured on Zen 1); the AVX-512 NT
# kernel, tuned on Zen 4, runs at every size.
NT_MAX_ROWS_AVX2 = 32


def own_backward_gemm(dtype, rows_per_thread):
    """True to run the backward's float32 step products on fastlstm's own kernels."""
    return (dtype == np.float32 and _backend.lstm_kernels.packed_gemm_available()
            and PACKED_GEMM_ENABLED
            and (_isa.current() != "avx2" or rows_per_thread <= NT_MAX_ROWS_AVX2))


class _StallGuard:
    """Falls back to one thread when the hidden-unit split stalls.

    The unit split meets at a barrier every step, so it needs all its threads running.
    When other busy processes share the cores, a descheduled thread holds the others at
    the barrier for a scheduler time slice (0.2 ms calls took 100 ms). A call far slower
    than the fastest call of its shape is taken as such a stall: the unit split then runs
    on one thread for ``backoff_s`` seconds, doubled (up to a minute) while stalls recur
    and reset once a multi-threaded call runs at full speed again. A lone slow call is
    not taken as such a stall: a back-off starts when a second one comes within
    ``STALL_WINDOW_S`` of the last (a busy machine stalls call after call, while on a
    virtual machine a single call now and then is held up for milliseconds, and backing
    off for it would run the next thousands of calls on one thread).
    """

    STALL_FACTOR = 8          # slower than the best call of the shape by this much ...
    MIN_STALL_S = 2e-3        # ... and by at least this long (a time slice is ~3 ms)
    FIRST_BACKOFF_S = 0.5
    MAX_BACKOFF_S = 60.0
    STALL_WINDOW_S = 2.0

    def __init__(self):
        self.best = {}
        self.until = 0.0
        self.backoff_s = self.FIRST_BACKOFF_S
        self.stalls = 0
        self.last_stall = None

    def backing_off(self, now=None):
        return (time.monotonic() if now is None else now) < self.until

    def record(self, key, seconds, now=None):
        """Note the duration of one multi-threaded unit-split call of shape ``key``."""
        best = self.best.get(key)
        if best is None or seconds < best:
            if len(self.best) > 4096:
                self.best.clear()
            self.best[key] = seconds
        if best is not None and seconds > self.MIN_STALL_S and \
                seconds > self.STALL_FACTOR * best:
            self.stalls += 1
            now = time.monotonic() if now is None else now
            if self.last_stall is not None and now - self.last_stall <= self.STALL_WINDOW_S:
                self.until = now + self.backoff_s
                self.backoff_s = min(2 * self.backoff_s, self.MAX_BACKOFF_S)
            self.last_stall = now
        elif best is not None and seconds < 2 * best:
            self.backoff_s = self.FIRST_BACKOFF_S


_stall_guard = _StallGuard()


def _plan_for(B, H, num_threads, backward=False):
    unit_rows = UNIT_SPLIT_MAX_ROWS
    if backward and _isa.current() == "avx2":
        unit_rows = max(unit_rows, UNIT_SPLIT_BACKWARD_MAX_ROWS_AVX2 + 1)
    plan = _Plan(B, H, num_threads, unit_rows)
    if plan.split_units and plan.n_threads > 1 and _stall_guard.backing_off():
        plan = _Plan(B, H, 1, unit_rows)
    return plan


def _timed_kernel(plan, key, kernel, *args):
    """Run ``kernel(*args)``; time multi-threaded unit-split calls for the stall guard."""
    if not (plan.split_units and plan.n_threads > 1):
        return kernel(*args)
    start = time.perf_counter()
    result = kernel(*args)
    _stall_guard.record(key + (plan.n_threads,), time.perf_counter() - start)
    return result


class _Plan:
    """How the compiled kernels share one call out between threads."""

    __slots__ = ("n_threads", "split_units", "rows_per_thread")

    def __init__(self, B, H, num_threads, unit_split_max_rows=None):
        n = resolve_num_threads(num_threads)
        kernels = _backend.lstm_kernels
        if unit_split_max_rows is None:
            unit_split_max_rows = UNIT_SPLIT_MAX_ROWS
        # Small batches with wide layers: give each thread all rows and a share of the
        # hidden units (one barrier per step) instead of a thin slice of the batch; and
        # with fewer sequences than threads (B = 1), share the units so no thread idles.
        self.split_units = n > 1 and (
            (-(-B // n) < unit_split_max_rows and H >= UNIT_SPLIT_MIN_H)
            or (B < n and H >= UNIT_SPLIT_IDLE_MIN_H))
        if self.split_units:
            self.n_threads = min(n, -(-H // kernels.UNIT_BLOCK))
            self.rows_per_thread = B
        else:
            self.n_threads = max(1, min(n, B))
            self.rows_per_thread = -(-B // self.n_threads)

    def packed_weights(self, T, H, dtype):
        """A buffer for the packed recurrent weights, or None to let BLAS do the steps.

        Packing costs about as much as a few rows of the product, so it pays once the
        recursion runs enough (step, row) products per thread; float32 only.
        """
        kernels = _backend.lstm_kernels
        if (dtype != np.float32 or not kernels.packed_gemm_available()
                or not PACKED_GEMM_ENABLED):
            return None
        if T * self.rows_per_thread < PACKED_GEMM_MIN_STEP_ROWS:
            return None
        if self.rows_per_thread == 1:   # one row a step: the GEMV reads W_h in place
            return None
        return _empty((kernels.packed_size(H, self.split_units),), np.float32)


def lstm_forward(x, W_x, W_h, b, h0=None, c0=None, *, lengths=None, backend="auto",
                 num_threads=None):
    """Run an LSTM over a time-major batch (gate order i, f, g, o, as PyTorch).

    Parameters
    ----------
    x : ndarray (T, B, D), float32 or float64
    W_x : (D, 4H), W_h : (H, 4H), b : (4H,)
        Fused weights and bias, same dtype as ``x``.
    h0, c0 : (B, H) or None
        Initial states (None: zeros).
    lengths : (B,) ints in [0, T], or None
        Sequence b runs for ``lengths[b]`` steps; after that its state is carried
        unchanged and ``hs[t, b]`` is 0 (PyTorch packed-sequence semantics).
    backend : "auto" | "cython" | "numpy"
        "auto" and "cython" run the compiled kernels, "numpy" the reference.
    num_threads : int >= 1 or None
        Threads for the compiled kernels (None: every usable core). Results do not
        depend on it beyond float rounding.

    Returns
    -------
    hs : (T, B, H)
    (h_n, c_n) : (B, H) each, every sequence's state after its own last step
    cache : LSTMCache, for ``lstm_backward``. It references ``x``, ``W_x`` and ``W_h``
        (``b``, ``h0`` and ``c0`` are copied): changing them before the backward pass is
        an error, which ``lstm_backward`` reports (``InputModifiedError``) from a sample
        of each array, or from all of it under ``fastlstm.set_debug_checks(True)``.
    """
    args = validate_lstm_forward(x, W_x, W_h, b, h0, c0, lengths, backend, num_threads)
    if not _backend.use_compiled(args.backend):
        return reference.lstm_forward(args.x, args.W_x, args.W_h, args.b, args.h0, args.c0,
                                      lengths=args.lengths, num_threads=args.num_threads)
    x, W_x, W_h = args.x, args.W_x, args.W_h
    T, B, _ = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    gates = _empty((T, B, 4 * H), dtype)
    h_states = _empty((T + 1, B, H), dtype)
    c_states = _empty((T + 1, B, H), dtype)
    h_states[0] = 0 if args.h0 is None else args.h0
    c_states[0] = 0 if args.c0 is None else args.c0
    hs = _empty((T, B, H), dtype)
    plan = _plan_for(B, H, args.num_threads)
    packed = plan.packed_weights(T, H, dtype)
    with blas_threads(1):
        _timed_kernel(plan, ("forward", T, B, x.shape[2], H, dtype.char),
                      _backend.lstm_kernels.lstm_forward_kernel, x, W_x, W_h, args.b, gates,
                      h_states, c_states, hs, args.lengths, packed, plan.split_units,
                      plan.n_threads)
    cache = LSTMCache(x, W_x, W_h, gates, h_states, c_states, args.lengths,
                      args.num_threads, "cython")
    return hs, (h_states[T].copy(), c_states[T].copy()), cache


def lstm_backward(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstm_forward``.

    Parameters
    ----------
    dhs : (T, B, H) or None
        Gradient of the loss w.r.t. ``hs``; None means zeros (many-to-one models).
    cache : LSTMCache from ``lstm_forward``; the backward runs on the same backend.
    dh_n, dc_n : (B, H) or None
        Gradients w.r.t. ``h_n`` and ``c_n`` (None: zeros).

    Returns
    -------
    LSTMGrads(dx (T,B,D), dh0 (B,H), dc0 (B,H), dW_x (D,4H), dW_h (H,4H), db (4H,)),
    all of the forward dtype.

    Raises
    ------
    InputModifiedError (a ValueError) naming ``x``, ``W_x`` or ``W_h`` if it changed in
    place since the forward pass.
    """
    dhs, dh_n, dc_n = validate_lstm_backward(dhs, cache, dh_n, dc_n)
    if cache.backend == "numpy":
        return reference.lstm_backward(dhs, cache, dh_n, dc_n)
    _backend.use_compiled("cython")
    x, W_x, W_h = cache.x, cache.W_x, cache.W_h
    T, B, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    dh_scratch = _empty((B, H), dtype) if cache.lengths is not None else dh
    chunk_T = _backward_chunk_steps(T, B)
    d_gates = _empty((chunk_T, B, 4 * H), dtype)
    dx = _empty((T, B, D), dtype)
    dW_x = _empty((D, 4 * H), dtype)
    dW_h = _empty((H, 4 * H), dtype)
    db_acc = np.zeros(4 * H, np.float64)
    plan = _plan_for(B, H, cache.num_threads, backward=True)
    # The backward's own kernel reads W_h in place (no packing): no set-up to amortise.
    small_m_gemm = own_backward_gemm(dtype, plan.rows_per_thread)
    with blas_threads(1):
        _timed_kernel(plan, ("backward", T, B, D, H, dtype.char),
                      _backend.lstm_kernels.lstm_backward_kernel, x, W_x, W_h, cache.gates,
                      cache.h_states, cache.c_states, dhs, cache.lengths, dh, dc,
                      dh_scratch, d_gates, dx, dW_x, dW_h, db_acc, small_m_gemm,
                      plan.split_units, plan.n_threads)
    return LSTMGrads(dx, dh, dc, dW_x, dW_h, db_acc.astype(dtype))


def lookup_available(dtype):
    """True when the compiled kernels can run ``lstm_forward_lookup`` for ``dtype``."""
    return (_backend.compiled_available() and _backend.rnn_kernels is not None
            and np.dtype(dtype) in (np.float32, np.float64))


def lstm_forward_lookup(ids, table, W_h, b, h0=None, c0=None, *, lengths=None,
                        num_threads=None):
    """``lstm_forward`` for inputs that are rows of a table, with each step's input
    projection looked up instead of multiplied: step t of sequence b uses
    ``table[ids[t, b]]`` where ``lstm_forward`` uses ``x[t, b] @ W_x``.

    For inputs picked by ids from a table E (an embedding, or one-hot vectors) the
    projection ``E[ids] @ W_x`` equals ``(E @ W_x)[ids]``: with few distinct ids this
    skips the (T*B, D) x (D, 4H) product here and two like it in the backward. One-hot
    inputs look up ``table = W_x`` itself. The compiled kernels run it
    (``lookup_available``); ``nn.LSTM`` takes ids and picks this path where it pays.

    Parameters
    ----------
    ids : (T, B) integers in [0, V)
    table : (V, 4H) float32 or float64, rows of projected inputs (gate blocks i, f, g, o);
        its dtype is the call's
    W_h, b, h0, c0, lengths, num_threads : as for ``lstm_forward``

    Returns
    -------
    hs (T, B, H), (h_n, c_n) (B, H) each, and an ``LSTMLookupCache`` for
    ``lstm_backward_lookup``. The cache references ``table``, ``W_h`` and (when they are
    intc and contiguous) ``ids``: changing them before the backward pass is an
    ``InputModifiedError`` there, as for ``lstm_forward``.
    """
    args = validate_lstm_forward_lookup(ids, table, W_h, b, h0, c0, lengths, num_threads)
    table = args.table
    dtype = table.dtype
    if not lookup_available(dtype):
        raise ImportError(f"lstm_forward_lookup needs the compiled extensions: "
                          f"{_backend.IMPORT_ERROR}")
    T, B = args.T, args.B
    H = args.W_h.shape[0]
    gates = _empty((T, B, 4 * H), dtype)
    h_states = _empty((T + 1, B, H), dtype)
    c_states = _empty((T + 1, B, H), dtype)
    h_states[0] = 0 if args.h0 is None else args.h0
    c_states[0] = 0 if args.c0 is None else args.c0
    hs = _empty((T, B, H), dtype)
    plan = _plan_for(B, H, args.num_threads)
    packed = plan.packed_weights(T, H, dtype)
    with blas_threads(1):
        _timed_kernel(plan, ("forward-lookup", T, B, H, dtype.char),
                      _backend.lstm_kernels.lstm_forward_lookup_kernel, args.ids, table,
                      args.W_h, args.b, gates, h_states, c_states, hs, args.lengths, packed,
                      plan.split_units, plan.n_threads)
    cache = LSTMLookupCache(table, args.ids, args.W_h, gates, h_states, c_states,
                            args.lengths, args.num_threads)
    return hs, (h_states[T].copy(), c_states[T].copy()), cache


def lstm_backward_lookup(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstm_forward_lookup``.

    dhs (T, B, H) or None, dh_n / dc_n (B, H) or None, as for ``lstm_backward``.

    Returns
    -------
    LSTMLookupGrads(d_table (V, 4H), dh0 (B, H), dc0 (B, H), dW_h (H, 4H), db (4H,)):
    ``d_table[v]`` sums the gate-input gradients of the steps whose id is v.

    Raises
    ------
    InputModifiedError (a ValueError) naming ``table``, ``ids`` or ``W_h`` if it changed
    in place since the forward pass.
    """
    dhs, dh_n, dc_n = validate_lstm_backward_lookup(dhs, cache, dh_n, dc_n)
    T, B, G = cache.gates.shape
    H = G // 4
    dtype = cache.dtype
    dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    dh_scratch = _empty((B, H), dtype) if cache.lengths is not None else dh
    d_gates = _empty((_backward_chunk_steps(T, B), B, G), dtype)
    d_table = np.zeros(cache.table.shape, dtype)
    dW_h = _empty((H, G), dtype)
    db_acc = np.zeros(G, np.float64)
    plan = _plan_for(B, H, cache.num_threads, backward=True)
    small_m_gemm = own_backward_gemm(dtype, plan.rows_per_thread)
    with blas_threads(1):
        _timed_kernel(plan, ("backward-lookup", T, B, H, dtype.char),
                      _backend.lstm_kernels.lstm_backward_lookup_kernel, cache.ids,
                      cache.table, cache.W_h, cache.gates, cache.h_states, cache.c_states,
                      dhs, cache.lengths, dh, dc, dh_scratch, d_gates, d_table, dW_h, db_acc,
                      small_m_gemm, plan.split_units, plan.n_threads)
    return LSTMLookupGrads(d_table, dh, dc, dW_h, db_acc.astype(dtype))

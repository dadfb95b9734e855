"""How the compiled recurrent kernels share a call out: between OpenMP threads (by batch
slices or by hidden units), on fastlstm's own small-M GEMM kernels or on BLAS, and what
to do when a unit split stalls on a busy machine. fastlstm.lstm and fastlstm.rnn both ask
here; the knobs are module attributes so tests and benchmarks can force each path.
"""
import time

import numpy as np

from . import _backend, _isa
from ._buffers import aligned_empty
from ._threads import blas_threads, resolve_num_threads

# Module attributes, so tests and benchmarks can force each path.
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
# a thread's product has more than this many rows (on Zen 1); the AVX-512 NT
# kernel, tuned on Zen 4, runs at every size.
NT_MAX_ROWS_AVX2 = 32


def own_step_gemm(dtype, step_rows):
    """True to run a float32 recursion's step products on fastlstm's own kernel over
    packed weights. Packing costs about as much as a few rows of the product, so it pays
    once the recursion runs enough (step, row) products per thread (``step_rows``)."""
    return (dtype == np.float32 and _backend.lstm_kernels.packed_gemm_available()
            and PACKED_GEMM_ENABLED and step_rows >= PACKED_GEMM_MIN_STEP_ROWS)


def own_backward_gemm(dtype, rows_per_thread):
    """True to run the backward's float32 step products on fastlstm's own kernels."""
    return (dtype == np.float32 and _backend.lstm_kernels.packed_gemm_available()
            and PACKED_GEMM_ENABLED
            and (_isa.current() != "avx2" or rows_per_thread <= NT_MAX_ROWS_AVX2))


class StallGuard:
    """Falls back to one thread when the hidden-unit split (or a pair of calls) stalls.

    The unit split meets at a barrier every step, so it needs all its threads running
    (a pair of calls, the two directions of a bidirectional layer, meets at a few).
    When other busy processes share the cores, a descheduled thread holds the others at
    the barrier for a scheduler time slice, many times the call itself. A call far slower
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


stall_guard = StallGuard()


def plan_for(B, H, num_threads, backward=False):
    """The Plan of an LSTM call (a unit split on one thread while the guard backs off)."""
    unit_rows = UNIT_SPLIT_MAX_ROWS
    if backward and _isa.current() == "avx2":
        unit_rows = max(unit_rows, UNIT_SPLIT_BACKWARD_MAX_ROWS_AVX2 + 1)
    plan = Plan(B, H, num_threads, unit_rows)
    if plan.split_units and plan.n_threads > 1 and stall_guard.backing_off():
        plan = Plan(B, H, 1, unit_rows)
    return plan


def forward_pairable(first, second, compiled):
    """Whether two validated forward calls (their arguments: ``.x``, ``.W_h``,
    ``.backend``, ``.num_threads``) can run as a pair, one thread each in one parallel
    region: ``compiled(backend)`` for both, one thread each, and the same T, B, W_h shape
    and dtype (so both threads pass the same barriers)."""
    return (compiled(first.backend) and compiled(second.backend)
            and first.num_threads == second.num_threads == 1
            and _forward_sizes(first) == _forward_sizes(second))


def backward_pairable(first, second, compiled):
    """``forward_pairable`` for two backward calls, given their caches: ``compiled(cache)``
    for both, one thread each, the same T, B, H and dtype."""
    return (compiled(first) and compiled(second)
            and first.num_threads == second.num_threads == 1
            and _backward_sizes(first) == _backward_sizes(second))


def _forward_sizes(args):
    return args.x.shape[:2], args.W_h.shape, args.x.dtype


def _backward_sizes(cache):
    T, B, _, H = cache.sizes
    return T, B, H, cache.dtype


def run_pair(key, pair_kernel, kernel, first, second):
    """Run two calls of ``kernel`` (their argument tuples) as one call of ``pair_kernel``
    (one parallel region, one thread each), BLAS single-threaded, and time it for the
    stall guard: the pair's two threads meet at barriers, so a busy machine stalls it as
    it stalls a unit split. While the guard backs off, the two calls run one after the
    other through ``kernel``."""
    with blas_threads(1):
        if stall_guard.backing_off():
            kernel(*first)
            kernel(*second)
            return
        start = time.perf_counter()
        pair_kernel(first, second)
        stall_guard.record(("pair",) + key, time.perf_counter() - start)


def timed_kernel(plan, key, kernel, *args):
    """Run ``kernel(*args)``; time multi-threaded unit-split calls for the stall guard."""
    if not (plan.split_units and plan.n_threads > 1):
        return kernel(*args)
    start = time.perf_counter()
    result = kernel(*args)
    stall_guard.record(key + (plan.n_threads,), time.perf_counter() - start)
    return result


class Plan:
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
        """A buffer for the packed recurrent weights, or None to let BLAS do the steps."""
        if self.rows_per_thread == 1:   # one row a step: the GEMV reads W_h in place
            return None
        if not own_step_gemm(dtype, T * self.rows_per_thread):
            return None
        return aligned_empty((_backend.lstm_kernels.packed_size(H, self.split_units),),
                             np.float32)

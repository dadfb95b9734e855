"""LSTM speed and memory: fastlstm's compiled kernels vs the NumPy reference vs
torch.nn.LSTM, float32, "forward" and "forward+backward", 1 and 2 threads each.

Run from the repository root:

    # the full measurement (a few minutes on 2 quiet cores)
    python -m pytest benchmarks/bench_lstm.py --benchmark-min-rounds=3 --benchmark-max-time=0.5
    # smoke: every case once, no timing (CI)
    python -m pytest benchmarks/bench_lstm.py --benchmark-disable
    # quicker smoke: only the two smallest cases
    FASTLSTM_BENCH_QUICK=1 python -m pytest benchmarks/bench_lstm.py --benchmark-disable

Every implementation runs at the same thread count n: the compiled kernels with
``num_threads=n`` (they keep BLAS single-threaded inside their own threads), the
reference with NumPy's BLAS limited to n threads (threadpoolctl), torch with
``torch.set_num_threads(n)``. The thread limit is set around the whole ``benchmark()``
call, so its cost stays out of the timings.

FLOPs: forward = 2*T*B*(D+H)*4H (the two GEMMs of every step), forward+backward = 3x
that. ``test_projected`` measures the projected LSTM (``lstmp_forward`` /
``lstmp_backward`` against ``torch.nn.LSTM(proj_size=P)``), forward+backward, with
forward FLOPs 2*T*B*((D+P)*4H + H*P). ``extra_info`` carries T, B, D, H, threads, impl, mode, flops and GFLOP/s (from
the mean time); benchmarks/conftest.py prints the comparison table at the end.
Timings are never asserted.
"""
import contextlib
import functools
import os
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastlstm
from fastlstm import reference

QUICK = os.environ.get("FASTLSTM_BENCH_QUICK", "") not in ("", "0")
DTYPE = np.float32
THREADS = [1, 2]
FORWARD, FORWARD_BACKWARD = "forward", "forward+backward"
MODES = [FORWARD, FORWARD_BACKWARD]
MEMORY_THREADS = 1    # tracemalloc sees NumPy buffers only; their sizes do not depend on it

ALL_CASES = [  # (T, B, D, H)
    (25, 1, 65, 100),      # the char-LM tutorial
    (25, 32, 65, 100),     # ... batched
    (200, 128, 100, 128),  # the IMDB sentiment tutorial
    (100, 64, 256, 256),
    (50, 32, 512, 1024),
    (1, 1, 256, 512),      # one decode step
]


def forward_flops(T, B, D, H):
    return 2 * T * B * (D + H) * 4 * H


def lstm_flops(case, mode):
    return forward_flops(*case) * (1 if mode == FORWARD else 3)


def _smallest(cases, k):
    keep = sorted(cases, key=lambda c: forward_flops(*c))[:k]
    return [c for c in cases if c in keep]


CASES = _smallest(ALL_CASES, 2) if QUICK else ALL_CASES


def case_label(case):
    return "T{} B{} D{} H{}".format(*case)


def case_id(case):
    return "T{}-B{}-D{}-H{}".format(*case)


@functools.lru_cache(maxsize=1)     # the tests run case by case: build each problem once
def problem(case, seed=0):
    """Inputs with PyTorch's initial weight magnitudes, and a random dhs."""
    T, B, D, H = case
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return SimpleNamespace(
        x=rng.standard_normal((T, B, D)).astype(DTYPE),
        W_x=rng.uniform(-k, k, (D, 4 * H)).astype(DTYPE),
        W_h=rng.uniform(-k, k, (H, 4 * H)).astype(DTYPE),
        b=rng.uniform(-k, k, 4 * H).astype(DTYPE),
        dhs=rng.standard_normal((T, B, H)).astype(DTYPE),
    )


def torch_thread_limit(n):
    """A ``thread_limit()`` for torch: runs the body on ``n`` intra-op threads."""
    @contextlib.contextmanager
    def thread_limit():
        import torch
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)
    return thread_limit


# --- the implementations: impl(case, mode, n) -> (run, thread_limit) ---------------
# ``run()`` is what is timed; ``thread_limit()`` a context manager entered around the
# whole benchmark.

def compiled_impl(case, mode, n):
    p = problem(case)

    def forward():
        fastlstm.lstm_forward(p.x, p.W_x, p.W_h, p.b, backend="cython", num_threads=n)

    def forward_backward():
        _, _, cache = fastlstm.lstm_forward(p.x, p.W_x, p.W_h, p.b, backend="cython",
                                            num_threads=n)
        fastlstm.lstm_backward(p.dhs, cache, None, None)

    return (forward if mode == FORWARD else forward_backward), contextlib.nullcontext


def reference_impl(case, mode, n):
    p = problem(case)

    def forward():
        reference.lstm_forward(p.x, p.W_x, p.W_h, p.b)

    def forward_backward():
        _, _, cache = reference.lstm_forward(p.x, p.W_x, p.W_h, p.b)
        reference.lstm_backward(p.dhs, cache, None, None)

    # threadpool_limits applies its limit when constructed: hence the partial.
    return ((forward if mode == FORWARD else forward_backward),
            functools.partial(threadpool_limits, limits=n, user_api="blas"))


def import_torch():
    """torch, or skip the benchmark (torch is an optional extra, never a dependency)."""
    try:
        import torch
    except ImportError as exc:     # absent, or a broken install
        pytest.skip(f"torch not importable: {exc}")
    return torch


@functools.lru_cache(maxsize=1)
def torch_lstm(case):
    """A float32 torch.nn.LSTM with the problem's weights (b as bias_ih, bias_hh = 0),
    checked once against the compiled forward so the comparison is like for like."""
    torch = import_torch()
    p = problem(case)
    T, B, D, H = case
    lstm = torch.nn.LSTM(D, H).float()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_x.T)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_h.T)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(p.b))
        lstm.bias_hh_l0.zero_()
        out, _ = lstm(torch.from_numpy(p.x))
    hs, _, _ = fastlstm.lstm_forward(p.x, p.W_x, p.W_h, p.b, backend="cython")
    np.testing.assert_allclose(out.numpy(), hs, rtol=1e-3, atol=1e-4,
                               err_msg="torch.nn.LSTM set-up differs from fastlstm")
    return lstm


def torch_impl(case, mode, n):
    torch = import_torch()
    p = problem(case)
    lstm = torch_lstm(case)
    x = torch.from_numpy(p.x)
    dhs = torch.from_numpy(p.dhs)

    def forward():
        with torch.no_grad():
            lstm(x)

    xg = x.detach().clone().requires_grad_(True)

    def forward_backward():
        lstm.zero_grad(set_to_none=True)
        xg.grad = None
        out, _ = lstm(xg)
        out.backward(dhs)

    return (forward if mode == FORWARD else forward_backward), torch_thread_limit(n)


IMPLS = {"compiled": compiled_impl, "reference": reference_impl, "torch": torch_impl}


# --- the benchmarks -----------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
def test_sgemm_peak(sgemm_peak, threads):
    """The sgemm 1024^3 ceiling (conftest's ``sgemm_peak``); defined first so it runs
    first."""
    sgemm_peak(threads)


LSTM_PARAMS = [
    pytest.param(case, threads, mode, impl,
                 id=f"{case_id(case)}-{threads}thr-{mode}-{impl}")
    for case in CASES for threads in THREADS for mode in MODES for impl in IMPLS
]


@pytest.mark.parametrize("case, threads, mode, impl", LSTM_PARAMS)
def test_lstm(benchmark, bench_log, case, threads, mode, impl):
    T, B, D, H = case
    run, thread_limit = IMPLS[impl](case, mode, threads)
    flops = lstm_flops(case, mode)
    benchmark.group = f"LSTM {case_label(case)} {mode}, {threads} thread(s)"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=threads, impl=impl, mode=mode,
                                flops=flops)
    # pytest-benchmark's calibration call is not timed: it doubles as the warm-up.
    with thread_limit():
        benchmark(run)
    bench_log.record(benchmark, case=case_label(case), threads=threads, mode=mode,
                     impl=impl, flops=flops)


def must_keep_bytes(T, B, D, H, itemsize=np.dtype(DTYPE).itemsize):
    """The arrays a forward+backward has to hold: the cache (gates (T,B,4H), h and c
    states (T+1,B,H) each) and the gradients (dx, dh0, dc0, dW_x, dW_h, db)."""
    cache = T * B * 4 * H + 2 * (T + 1) * B * H
    grads = T * B * D + 2 * B * H + (D + H) * 4 * H + 4 * H
    return itemsize * (cache + grads)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_memory(benchmark, bench_log, case):
    """Peak traced memory (tracemalloc; NumPy reports its buffers to it) of one compiled
    forward+backward, against ``must_keep_bytes``. A measurement, not a check: the ratio
    goes to extra_info and the summary table. The inputs are allocated before tracing
    starts, so they are not counted; the kernels' small per-thread C scratch is not
    traced. The one timed round includes tracemalloc's overhead: not a speed figure."""
    T, B, D, H = case
    run, _ = compiled_impl(case, FORWARD_BACKWARD, MEMORY_THREADS)
    run()    # warm-up outside the trace: lazy imports, thread pools, caches
    peak = {}

    def traced():
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            run()
            peak["bytes"] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    benchmark.group = "memory: compiled forward+backward under tracemalloc"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=MEMORY_THREADS, impl="compiled",
                                mode=FORWARD_BACKWARD)
    benchmark.pedantic(traced, rounds=1, iterations=1)
    bench_log.record_memory(benchmark, case=case_label(case), threads=MEMORY_THREADS,
                            peak_bytes=peak["bytes"], keep_bytes=must_keep_bytes(T, B, D, H))


# --- the projected LSTM (LSTMP, torch's proj_size) -----------------------------------

ALL_PROJECTED_CASES = [  # (T, B, D, H, P)
    (100, 64, 256, 512, 128),
    (25, 1, 65, 100, 50),    # the char-LM tutorial's shape, projected
]
PROJECTED_CASES = ALL_PROJECTED_CASES[1:] if QUICK else ALL_PROJECTED_CASES


def projected_flops(T, B, D, H, P):
    """forward+backward: 3x the forward's 2*T*B*((D+P)*4H + H*P)."""
    return 3 * 2 * T * B * ((D + P) * 4 * H + H * P)


def projected_label(case):
    return "T{} B{} D{} H{} P{}".format(*case)


@functools.lru_cache(maxsize=1)
def projected_problem(case, seed=0):
    """Inputs with PyTorch's initial weight magnitudes, and a random dhs (T, B, P)."""
    T, B, D, H, P = case
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return SimpleNamespace(
        x=rng.standard_normal((T, B, D)).astype(DTYPE),
        W_x=rng.uniform(-k, k, (D, 4 * H)).astype(DTYPE),
        W_h=rng.uniform(-k, k, (P, 4 * H)).astype(DTYPE),
        b=rng.uniform(-k, k, 4 * H).astype(DTYPE),
        W_hr=rng.uniform(-k, k, (H, P)).astype(DTYPE),
        dhs=rng.standard_normal((T, B, P)).astype(DTYPE),
    )


def projected_compiled_impl(case, n):
    p = projected_problem(case)

    def forward_backward():
        _, _, cache = fastlstm.lstmp_forward(p.x, p.W_x, p.W_h, p.b, p.W_hr,
                                             backend="cython", num_threads=n)
        fastlstm.lstmp_backward(p.dhs, cache)

    return forward_backward, contextlib.nullcontext


def projected_reference_impl(case, n):
    p = projected_problem(case)

    def forward_backward():
        _, _, cache = reference.lstmp_forward(p.x, p.W_x, p.W_h, p.b, p.W_hr)
        reference.lstmp_backward(p.dhs, cache)

    return forward_backward, functools.partial(threadpool_limits, limits=n, user_api="blas")


@functools.lru_cache(maxsize=1)
def torch_projected_lstm(case):
    """A float32 torch.nn.LSTM(D, H, proj_size=P) with the problem's weights, checked
    once against the compiled forward."""
    torch = import_torch()
    p = projected_problem(case)
    T, B, D, H, P = case
    lstm = torch.nn.LSTM(D, H, proj_size=P).float()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_x.T)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_h.T)))
        lstm.weight_hr_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_hr.T)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(p.b))
        lstm.bias_hh_l0.zero_()
        out, _ = lstm(torch.from_numpy(p.x))
    hs, _, _ = fastlstm.lstmp_forward(p.x, p.W_x, p.W_h, p.b, p.W_hr, backend="cython")
    np.testing.assert_allclose(out.numpy(), hs, rtol=1e-3, atol=1e-4,
                               err_msg="torch.nn.LSTM(proj_size) set-up differs from fastlstm")
    return lstm


def projected_torch_impl(case, n):
    torch = import_torch()
    p = projected_problem(case)
    lstm = torch_projected_lstm(case)
    xg = torch.from_numpy(p.x).requires_grad_(True)
    dhs = torch.from_numpy(p.dhs)

    def forward_backward():
        lstm.zero_grad(set_to_none=True)
        xg.grad = None
        out, _ = lstm(xg)
        out.backward(dhs)

    return forward_backward, torch_thread_limit(n)


PROJECTED_IMPLS = {"compiled": projected_compiled_impl, "reference": projected_reference_impl,
                   "torch": projected_torch_impl}
PROJECTED_PARAMS = [
    pytest.param(case, threads, impl,
                 id=f"T{case[0]}-B{case[1]}-D{case[2]}-H{case[3]}-P{case[4]}-{threads}thr-{impl}")
    for case in PROJECTED_CASES for threads in THREADS for impl in PROJECTED_IMPLS
]


# torch runs projections on its generic path and says so once
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
@pytest.mark.parametrize("case, threads, impl", PROJECTED_PARAMS)
def test_projected(benchmark, bench_log, case, threads, impl):
    T, B, D, H, P = case
    run, thread_limit = PROJECTED_IMPLS[impl](case, threads)
    flops = projected_flops(*case)
    benchmark.group = f"LSTMP {projected_label(case)} {FORWARD_BACKWARD}, {threads} thread(s)"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, P=P, threads=threads, impl=impl,
                                mode=FORWARD_BACKWARD, flops=flops)
    with thread_limit():
        benchmark(run)
    bench_log.record(benchmark, case=projected_label(case), threads=threads,
                     mode=FORWARD_BACKWARD, impl=impl, flops=flops)

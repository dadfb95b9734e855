"""GRU speed: fastlstm's compiled kernels vs the NumPy reference vs torch.nn.GRU, float32
forward+backward, 1 and 2 threads, on the LSTM benchmark's shapes.

Run from the repository root:

    python -m pytest benchmarks/bench_gru.py --benchmark-min-rounds=5 --benchmark-max-time=0.5
    # smoke: the two smallest cases once, no timing
    FASTLSTM_BENCH_QUICK=1 python -m pytest benchmarks/bench_gru.py --benchmark-disable

Every implementation runs at the same thread count n: the compiled kernels with
``num_threads=n`` (BLAS single-threaded inside their threads), the reference with
NumPy's BLAS limited to n threads, torch with ``torch.set_num_threads(n)``; the limit
is set around the whole ``benchmark()`` call, so its cost stays out of the timings.

FLOPs: forward = 2*T*B*(D+H)*3H (the two GEMMs of every step), forward+backward = 3x
that. benchmarks/conftest.py prints the comparison table (speedup vs torch and vs the
reference) at the end. Timings are never asserted.
"""
import contextlib
import functools
import os
from types import SimpleNamespace

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastlstm
from fastlstm import reference

QUICK = os.environ.get("FASTLSTM_BENCH_QUICK", "") not in ("", "0")
DTYPE = np.float32
THREADS = [1, 2]
MODE = "forward+backward"

ALL_CASES = [  # (T, B, D, H): bench_lstm.py's ALL_CASES
    (25, 1, 65, 100),      # the char-LM tutorial
    (25, 32, 65, 100),     # ... batched
    (200, 128, 100, 128),  # the IMDB sentiment tutorial
    (100, 64, 256, 256),
    (50, 32, 512, 1024),
    (1, 1, 256, 512),      # one decode step
]


def forward_flops(T, B, D, H):
    return 2 * T * B * (D + H) * 3 * H


def _smallest(cases, k):
    keep = sorted(cases, key=lambda c: forward_flops(*c))[:k]
    return [c for c in cases if c in keep]


CASES = _smallest(ALL_CASES, 2) if QUICK else ALL_CASES


def case_label(case):
    return "T{} B{} D{} H{}".format(*case)


@functools.lru_cache(maxsize=1)     # the benchmarks run case by case: build each once
def problem(case, seed=0):
    """Inputs with PyTorch's initial weight magnitudes (both biases), and a random dhs."""
    T, B, D, H = case
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    return SimpleNamespace(
        x=rng.standard_normal((T, B, D)).astype(DTYPE),
        W_x=rng.uniform(-k, k, (D, 3 * H)).astype(DTYPE),
        W_h=rng.uniform(-k, k, (H, 3 * H)).astype(DTYPE),
        b_x=rng.uniform(-k, k, 3 * H).astype(DTYPE),
        b_h=rng.uniform(-k, k, 3 * H).astype(DTYPE),
        dhs=rng.standard_normal((T, B, H)).astype(DTYPE),
    )


# --- the implementations: impl(case, n) -> (run, thread_limit) ---------------------

def compiled_impl(case, n):
    p = problem(case)

    def run():
        _, _, cache = fastlstm.gru_forward(p.x, p.W_x, p.W_h, p.b_x, p.b_h,
                                           backend="cython", num_threads=n)
        fastlstm.gru_backward(p.dhs, cache)

    return run, contextlib.nullcontext


def reference_impl(case, n):
    p = problem(case)

    def run():
        _, _, cache = reference.gru_forward(p.x, p.W_x, p.W_h, p.b_x, p.b_h)
        reference.gru_backward(p.dhs, cache)

    # threadpool_limits applies its limit when constructed: hence the partial.
    return run, functools.partial(threadpool_limits, limits=n, user_api="blas")


def import_torch():
    """torch, or skip the benchmark (torch is an optional extra, never a dependency)."""
    try:
        import torch
    except ImportError as exc:
        pytest.skip(f"torch not importable: {exc}")
    return torch


def torch_thread_limit(n):
    @contextlib.contextmanager
    def thread_limit():
        torch = import_torch()
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)
    return thread_limit


@functools.lru_cache(maxsize=1)
def torch_gru(case):
    """A float32 torch.nn.GRU with the problem's weights, checked once against the
    compiled forward so the comparison is like for like."""
    torch = import_torch()
    p = problem(case)
    T, B, D, H = case
    gru = torch.nn.GRU(D, H).float()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_x.T)))
        gru.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(p.W_h.T)))
        gru.bias_ih_l0.copy_(torch.from_numpy(p.b_x))
        gru.bias_hh_l0.copy_(torch.from_numpy(p.b_h))
        out, _ = gru(torch.from_numpy(p.x))
    hs, _, _ = fastlstm.gru_forward(p.x, p.W_x, p.W_h, p.b_x, p.b_h, backend="cython")
    np.testing.assert_allclose(out.numpy(), hs, rtol=1e-3, atol=1e-4,
                               err_msg="torch.nn.GRU set-up differs from fastlstm")
    return gru


def torch_impl(case, n):
    torch = import_torch()
    p = problem(case)
    gru = torch_gru(case)
    xg = torch.from_numpy(p.x).detach().clone().requires_grad_(True)
    dhs = torch.from_numpy(p.dhs)

    def run():
        gru.zero_grad(set_to_none=True)
        xg.grad = None
        out, _ = gru(xg)
        out.backward(dhs)

    return run, torch_thread_limit(n)


IMPLS = {"compiled": compiled_impl, "reference": reference_impl, "torch": torch_impl}

GRU_PARAMS = [
    pytest.param(case, threads, impl,
                 id="T{}-B{}-D{}-H{}".format(*case) + f"-{threads}thr-{impl}")
    for case in CASES for threads in THREADS for impl in IMPLS
]


@pytest.mark.parametrize("case, threads, impl", GRU_PARAMS)
def test_gru(benchmark, bench_log, case, threads, impl):
    T, B, D, H = case
    run, thread_limit = IMPLS[impl](case, threads)
    flops = 3 * forward_flops(*case)
    benchmark.group = f"GRU {case_label(case)} {MODE}, {threads} thread(s)"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=threads, impl=impl, mode=MODE,
                                flops=flops)
    # pytest-benchmark's calibration call is not timed: it doubles as the warm-up.
    with thread_limit():
        benchmark(run)
    bench_log.record(benchmark, case=case_label(case), threads=threads, mode=f"gru {MODE}",
                     impl=impl, flops=flops)

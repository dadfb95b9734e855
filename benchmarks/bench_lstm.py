"""LSTM speed: fastlstm's compiled kernels vs the NumPy reference vs torch.nn.LSTM, float32,
forward and forward+backward, 1 and 2 threads for every implementation.

    pytest benchmarks/bench_lstm.py                               # the full table
    FASTLSTM_BENCH_QUICK=1 pytest benchmarks/bench_lstm.py --benchmark-disable   # smoke

FLOPs: forward = 2*T*B*(D+H)*4H, forward+backward = 3x that. Timings are never asserted;
the table printed at the end (benchmarks/conftest.py) holds the ratios.
"""
import os
import tracemalloc

import numpy as np
import pytest

import fastlstm
from fastlstm import reference
from fastlstm._threads import blas_threads

from conftest import MEMORY, PEAKS, _case_name, record

QUICK = bool(os.environ.get("FASTLSTM_BENCH_QUICK"))
CASES = [  # (T, B, D, H)
    (25, 1, 65, 100),     # the char-LM tutorial
    (25, 32, 65, 100),
    (200, 128, 100, 128),  # the IMDB tutorial
    (100, 64, 256, 256),
    (50, 32, 512, 1024),
    (1, 1, 256, 512),     # one decode step
]
if QUICK:
    CASES = [CASES[0], CASES[-1]]
THREADS = [1, 2]
MODES = ["forward", "forward+backward"]
IMPLS = ["fastlstm", "reference", "torch"]


def lstm_flops(T, B, D, H, mode):
    forward = 2 * T * B * (D + H) * 4 * H
    return forward if mode == "forward" else 3 * forward


def make_problem(T, B, D, H, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    f32 = np.float32
    return dict(
        x=rng.standard_normal((T, B, D)).astype(f32),
        W_x=rng.uniform(-k, k, (D, 4 * H)).astype(f32),
        W_h=rng.uniform(-k, k, (H, 4 * H)).astype(f32),
        b=rng.uniform(-k, k, 4 * H).astype(f32),
        dhs=rng.standard_normal((T, B, H)).astype(f32),
    )


def fastlstm_step(p, mode, n):
    def run():
        hs, _, cache = fastlstm.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"],
                                             backend="cython", num_threads=n)
        if mode != "forward":
            fastlstm.lstm_backward(p["dhs"], cache)
    return run


def reference_step(p, mode, n):
    def run():
        with blas_threads(n):   # NumPy's BLAS gets the same thread count
            hs, _, cache = reference.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"])
            if mode != "forward":
                reference.lstm_backward(p["dhs"], cache)
    return run


def torch_step(p, mode, n):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(n)
    D, H = p["W_x"].shape[0], p["W_h"].shape[0]
    lstm = torch.nn.LSTM(D, H)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(p["W_x"].T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(p["W_h"].T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(p["b"]))
        lstm.bias_hh_l0.zero_()
    x = torch.from_numpy(p["x"])
    dhs = torch.from_numpy(p["dhs"])

    def forward():
        torch.set_num_threads(n)
        with torch.no_grad():
            lstm(x)

    def forward_backward():
        torch.set_num_threads(n)
        xg = x.detach().requires_grad_(True)
        lstm.zero_grad(set_to_none=True)
        out, _ = lstm(xg)
        out.backward(dhs)

    return forward if mode == "forward" else forward_backward


STEPS = {"fastlstm": fastlstm_step, "reference": reference_step, "torch": torch_step}


@pytest.mark.parametrize("threads", THREADS)
def test_sgemm_peak(benchmark, threads):
    """The ceiling: scipy's BLAS (the one the kernels call) on a 1024^3 float32 product.
    Defined first so it runs first, on a quiet machine."""
    from scipy.linalg.blas import sgemm
    rng = np.random.default_rng(0)
    A = np.asfortranarray(rng.standard_normal((1024, 1024)).astype(np.float32))
    Bm = np.asfortranarray(rng.standard_normal((1024, 1024)).astype(np.float32))
    C = np.zeros((1024, 1024), np.float32, order="F")

    def run():
        with blas_threads(threads):
            sgemm(1.0, A, Bm, c=C, overwrite_c=1)

    benchmark.group = "sgemm 1024^3"
    benchmark.extra_info.update(threads=threads, flops=2 * 1024**3)
    # Many rounds, best one kept: the ceiling should not be lowered by a noisy moment.
    benchmark.pedantic(run, rounds=40, warmup_rounds=3)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        # the best round: the ceiling the kernels are measured against
        PEAKS[threads] = 2 * 1024**3 / stats.stats.min / 1e9
        benchmark.extra_info["gflops"] = PEAKS[threads]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}-B{}-D{}-H{}".format(*c))
def test_lstm(benchmark, case, threads, mode, impl):
    T, B, D, H = case
    problem = make_problem(T, B, D, H)
    run = STEPS[impl](problem, mode, threads)
    benchmark.group = f"{_case_name(*case)} {mode} {threads} thread(s)"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=threads, impl=impl, mode=mode,
                                flops=lstm_flops(T, B, D, H, mode))
    benchmark(run)
    record(benchmark, case=_case_name(*case), threads=threads, mode=mode, impl=impl,
           flops=lstm_flops(T, B, D, H, mode))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}-B{}-D{}-H{}".format(*c))
def test_memory(case):
    """Peak traced memory of one compiled forward+backward against the arrays it must keep:
    the cache (gates (T,B,4H), h and c states (T+1,B,H) each) and the gradients."""
    T, B, D, H = case
    p = make_problem(T, B, D, H)
    fastlstm_step(p, "forward+backward", 1)()      # warm up: lazy imports, BLAS handles
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fastlstm_step(p, "forward+backward", 1)()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    item = np.dtype(np.float32).itemsize
    keep = item * (T * B * 4 * H + 2 * (T + 1) * B * H            # cache
                   + T * B * D + 2 * B * H + (D + H) * 4 * H + 4 * H)   # gradients
    MEMORY.append(dict(case=_case_name(*case), peak_bytes=peak, keep_bytes=keep))
    assert peak > 0

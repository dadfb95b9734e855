"""Bidirectional layers: fastlstm's nn.LSTM / nn.GRU / nn.RNN with bidirectional=True
against the same layer with one direction, the NumPy reference (backend="numpy") and
torch's bidirectional module, float32 forward+backward, 1 and 2 threads.

    python -m pytest benchmarks/bench_bidirectional.py --benchmark-min-rounds=5 \
        --benchmark-max-time=0.5
    FASTLSTM_BENCH_QUICK=1 python -m pytest benchmarks/bench_bidirectional.py \
        --benchmark-disable   # smoke

The "vs 1-dir" column of a compiled row is the one-direction layer's mean time over the
bidirectional one's: the target at B=1 on 2 threads is >= 0.8 (a bidirectional layer
costs at most 1.25x one direction), which the two directions running at once, one
thread each, make possible. The layers run on ids-free float inputs, all sequences full
length; FLOPs count both directions (2x the cell's forward, 3x for forward+backward).
"""
import contextlib
import functools
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastlstm import nn

QUICK = os.environ.get("FASTLSTM_BENCH_QUICK", "") not in ("", "0")
DTYPE = np.float32
THREADS = [1, 2]
MODE = "forward+backward"
CASES = [(25, 1, 65, 100), (25, 32, 65, 100), (200, 128, 100, 128)]   # (T, B, D, H)
if QUICK:
    CASES = CASES[:1]
CELLS = {"lstm": (nn.LSTM, 4), "gru": (nn.GRU, 3), "rnn": (nn.RNN, 1)}


def case_label(cell, case):
    return "{} bi T{} B{} D{} H{}".format(cell.upper(), *case)


@functools.lru_cache(maxsize=4)
def problem(case, seed=0):
    T, B, D, H = case
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, D)).astype(DTYPE),
            rng.standard_normal((T, B, 2 * H)).astype(DTYPE))


def fastlstm_impl(cell, case, n, bidirectional=True, backend="auto"):
    T, B, D, H = case
    x, dhs = problem(case)
    layer = CELLS[cell][0](D, H, dtype=DTYPE, seed=0, num_threads=n, backend=backend,
                           bidirectional=bidirectional)
    dhs = dhs if bidirectional else np.ascontiguousarray(dhs[..., :H])

    def run():
        layer(x)
        layer.backward(dhs)

    limit = (functools.partial(threadpool_limits, limits=n, user_api="blas")
             if backend == "numpy" else contextlib.nullcontext)
    return run, limit


def torch_impl(cell, case, n):
    try:
        import torch
    except ImportError as exc:
        pytest.skip(f"torch not importable: {exc}")
    T, B, D, H = case
    x, dhs = problem(case)
    ours = CELLS[cell][0](D, H, dtype=DTYPE, seed=0, bidirectional=True)
    module = getattr(torch.nn, cell.upper())(D, H, bidirectional=True).float()
    module.load_state_dict({k: torch.from_numpy(v)
                            for k, v in ours.to_torch_state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    dt = torch.from_numpy(dhs)

    def run():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = module(xt)
        out.backward(dt)

    @contextlib.contextmanager
    def limit():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)
    return run, limit


IMPLS = {
    "compiled": lambda cell, case, n: fastlstm_impl(cell, case, n),
    "one direction": lambda cell, case, n: fastlstm_impl(cell, case, n, False),
    "reference": lambda cell, case, n: fastlstm_impl(cell, case, n, backend="numpy"),
    "torch": torch_impl,
}


@pytest.mark.parametrize("threads", THREADS)
def test_sgemm_peak(sgemm_peak, threads):
    sgemm_peak(threads)


@pytest.mark.parametrize("cell, case, threads, impl", [
    pytest.param(cell, case, threads, impl,
                 id=f"{cell}-T{case[0]}-B{case[1]}-D{case[2]}-H{case[3]}-{threads}thr-{impl}")
    for cell in CELLS for case in CASES for threads in THREADS for impl in IMPLS
    if not (impl == "reference" and case[1] > 32)])
def test_bidirectional(benchmark, bench_log, cell, case, threads, impl):
    T, B, D, H = case
    run, limit = IMPLS[impl](cell, case, threads)
    directions = 1 if impl == "one direction" else 2
    flops = directions * 3 * 2 * T * B * (D + H) * CELLS[cell][1] * H
    benchmark.group = f"{case_label(cell, case)} {MODE}, {threads} thread(s)"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=threads, impl=impl, mode=MODE,
                                cell=cell, flops=flops)
    with limit():
        benchmark(run)
    bench_log.record(benchmark, case=case_label(cell, case), threads=threads, mode=MODE,
                     impl=impl, flops=flops)

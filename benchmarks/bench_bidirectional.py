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


# --- the directions' kernels, without the layer ---------------------------------------
# The functional pair entry points (``*_forward_pair`` / ``*_backward_pair``: both
# directions in one parallel region, one thread each) against one direction's functional
# call on 1 and 2 threads, at B=1. The pair does twice one direction's work on two
# threads, so it cannot take less than one direction on one thread: its "vs 1-dir" (one
# direction on 2 threads over the pair) is at most one direction's own 2-thread speedup
# inverted. That bounds what any bidirectional layer built on these kernels can reach
# against one direction, whatever the Python around them costs.

def _functional(cell):
    from fastlstm import gru as _gru, lstm as _lstm, rnn as _rnn
    module = {"lstm": _lstm, "gru": _gru, "rnn": _rnn}[cell]
    return (getattr(module, f"{cell}_forward"), getattr(module, f"{cell}_backward"),
            getattr(module, f"{cell}_forward_pair"), getattr(module, f"{cell}_backward_pair"))


def _direction_arguments(cell, case, seed):
    T, B, D, H = case
    G = CELLS[cell][1] * H
    rng = np.random.default_rng(seed)
    kwargs = dict(W_x=(0.1 * rng.standard_normal((D, G))).astype(DTYPE),
                  W_h=(0.1 * rng.standard_normal((H, G))).astype(DTYPE), h0=None,
                  lengths=None, backend="auto")
    if cell == "gru":
        kwargs.update(b_x=np.zeros(G, DTYPE), b_h=np.zeros(G, DTYPE))
    else:
        kwargs.update(b=np.zeros(G, DTYPE))
    if cell == "lstm":
        kwargs.update(c0=None)
    if cell == "rnn":
        kwargs.update(nonlinearity="tanh")
    return kwargs


PAIR_CASES = [(25, 1, 65, 100)]


@pytest.mark.parametrize("cell, case, threads, impl", [
    pytest.param(cell, case, threads, impl,
                 id=f"{cell}-T{case[0]}-B{case[1]}-D{case[2]}-H{case[3]}-{threads}thr-{impl}")
    for cell in CELLS for case in PAIR_CASES
    for threads, impl in ((1, "one direction"), (2, "one direction"), (2, "pair"))])
def test_direction_pair_kernels(benchmark, bench_log, cell, case, threads, impl):
    T, B, D, H = case
    x, dhs = problem(case)
    x_reverse = np.ascontiguousarray(x[::-1])
    dhs = np.ascontiguousarray(dhs[..., :H])
    forward, backward, forward_pair, backward_pair = _functional(cell)
    first = dict(_direction_arguments(cell, case, 1), x=x)
    second = dict(_direction_arguments(cell, case, 2), x=x_reverse)
    tail = (None,) * (2 if cell == "lstm" else 1 if cell == "gru" else 2)

    if impl == "pair":
        def run():
            (_, _, cache_f), (_, _, cache_r) = forward_pair(dict(first, num_threads=1),
                                                            dict(second, num_threads=1))
            backward_pair((dhs, cache_f) + tail, (dhs, cache_r) + tail)
    else:
        def run():
            _, _, cache = forward(**dict(first, num_threads=threads))
            backward(dhs, cache)

    directions = 2 if impl == "pair" else 1
    flops = directions * 3 * 2 * T * B * (D + H) * CELLS[cell][1] * H
    label = "{} pair T{} B{} D{} H{}".format(cell.upper(), *case)
    benchmark.group = f"{label} {MODE}, functional"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=threads, impl=impl, mode=MODE,
                                cell=cell, flops=flops)
    benchmark(run)
    bench_log.record(benchmark, case=label, threads=threads, mode=MODE, impl=impl,
                     flops=flops)

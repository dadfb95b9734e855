"""Vanilla-RNN speed: fastlstm's compiled kernels vs the NumPy reference vs torch.nn.RNN,
float32 forward+backward, 1 and 2 threads, full and truncated (k=4) BPTT.

    python -m pytest benchmarks/bench_rnn.py --benchmark-min-rounds=3 \
        --benchmark-max-time=0.5
    FASTLSTM_BENCH_QUICK=1 python -m pytest benchmarks/bench_rnn.py --benchmark-disable   # smoke

torch.nn.RNN has no per-loss-term truncation, so it appears in the full-BPTT rows only.
GFLOP/s use the nominal 3 x forward FLOPs (forward = 2*T*B*(D+H)*H) in both modes;
truncated BPTT does up to k times more backward work, so its rate is a lower bound.
"""
import os

import numpy as np
import pytest

import fastlstm
from fastlstm import reference
from fastlstm._threads import blas_threads

QUICK = bool(os.environ.get("FASTLSTM_BENCH_QUICK"))
CASES = [(25, 1, 100, 100), (50, 32, 128, 100), (100, 64, 256, 512)]   # (T, B, D, H)
if QUICK:
    CASES = CASES[:1]
THREADS = [1, 2]
MODES = {"rnn full BPTT": None, "rnn BPTT k=4": 4}


def _case_name(T, B, D, H):
    return f"T{T} B{B} D{D} H{H}"


def make_problem(T, B, D, H, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    f32 = np.float32
    return dict(x=rng.standard_normal((T, B, D)).astype(f32),
                W_x=rng.uniform(-k, k, (D, H)).astype(f32),
                W_h=rng.uniform(-k, k, (H, H)).astype(f32),
                b=rng.uniform(-k, k, H).astype(f32),
                dhs=rng.standard_normal((T, B, H)).astype(f32))


def fastlstm_step(p, k, n):
    def run():
        _, _, cache = fastlstm.rnn_forward(p["x"], p["W_x"], p["W_h"], p["b"],
                                           backend="cython", num_threads=n)
        fastlstm.rnn_backward(p["dhs"], cache, bptt_truncate=k)
    return run


def reference_step(p, k, n):
    def run():
        with blas_threads(n):
            _, _, cache = reference.rnn_forward(p["x"], p["W_x"], p["W_h"], p["b"])
            reference.rnn_backward(p["dhs"], cache, bptt_truncate=k)
    return run


def torch_step(p, k, n):
    torch = pytest.importorskip("torch")
    if k is not None:
        pytest.skip("torch.nn.RNN has no per-loss-term truncated BPTT")
    D, H = p["W_x"].shape
    rnn = torch.nn.RNN(D, H)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(p["W_x"].T.copy()))
        rnn.weight_hh_l0.copy_(torch.from_numpy(p["W_h"].T.copy()))
        rnn.bias_ih_l0.copy_(torch.from_numpy(p["b"]))
        rnn.bias_hh_l0.zero_()
    x = torch.from_numpy(p["x"])
    dhs = torch.from_numpy(p["dhs"])

    def run():
        torch.set_num_threads(n)
        xg = x.detach().requires_grad_(True)
        rnn.zero_grad(set_to_none=True)
        out, _ = rnn(xg)
        out.backward(dhs)
    return run


STEPS = {"compiled": fastlstm_step, "reference": reference_step, "torch": torch_step}


@pytest.mark.parametrize("impl", list(STEPS))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}-B{}-D{}-H{}".format(*c))
def test_rnn(benchmark, bench_log, case, threads, mode, impl):
    T, B, D, H = case
    run = STEPS[impl](make_problem(T, B, D, H), MODES[mode], threads)
    flops = 3 * 2 * T * B * (D + H) * H
    benchmark.group = f"RNN {_case_name(*case)} {mode} {threads} thread(s)"
    benchmark.extra_info.update(T=T, B=B, D=D, H=H, threads=threads, impl=impl, mode=mode,
                                flops=flops)
    benchmark(run)
    bench_log.record(benchmark, case=_case_name(*case), threads=threads, mode=mode,
                     impl=impl, flops=flops)

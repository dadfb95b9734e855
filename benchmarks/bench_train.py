"""End-to-end training throughput of a character language model, float32: one training
step (embedding -> LSTM -> Linear -> softmax cross-entropy -> backward -> clip each
gradient entry to [-5, 5] -> Adagrad), the hidden state carried from step to step as in
truncated BPTT. Three implementations of the same step, at the same thread count:

* ``compiled``: ``fastlstm.models.CharLM`` with ``fastlstm.nn.functional.cross_entropy``,
  ``fastlstm.nn.utils.clip_grad_value_`` and ``fastlstm.optim.Adagrad``, every part on
  ``num_threads=n`` (NumPy's own BLAS held at one thread, as ``fastlstm train`` runs);
* ``reference``: the same step written in NumPy over ``fastlstm.reference`` (the
  tutorials' way), NumPy's BLAS limited to n threads;
* ``torch``: ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear`` + ``F.cross_entropy`` +
  ``clip_grad_value_`` + ``optim.Adagrad``, ``torch.set_num_threads(n)``; its weights are
  copied from the CharLM and its first loss checked against it.

Sizes: vocabulary 65 (the char-LM tutorial's), embedding 64, and (H, T, B) =
(100, 25, 1), (100, 25, 32) (the tutorial's) and (512, 64, 32); 1 and 2 threads.

    python -m pytest benchmarks/bench_train.py --benchmark-min-rounds=5
    FASTLSTM_BENCH_QUICK=1 python -m pytest benchmarks/bench_train.py --benchmark-disable

The summary (benchmarks/conftest.py) prints tokens/s with the speedups over torch and
over the reference, and GFLOP/s against the sgemm 1024^3 peak. FLOPs of a step:
3 x (2*T*B*(E+H)*4H + 2*T*B*H*V) (forward, and a backward of twice the forward).
Nothing here asserts a timing.
"""
import functools
import os

import numpy as np
import pytest
from bench_lstm import torch_thread_limit
from threadpoolctl import threadpool_limits

from fastlstm import reference
from fastlstm.models import CharLM
from fastlstm.nn.functional import cross_entropy
from fastlstm.nn.utils import clip_grad_value_
from fastlstm.optim import Adagrad

QUICK = os.environ.get("FASTLSTM_BENCH_QUICK", "") not in ("", "0")
VOCAB, EMBED = 65, 64
LR, CLIP = 0.1, 5.0
THREADS = [1, 2]
ALL_CASES = [(100, 25, 1), (100, 25, 32), (512, 64, 32)]      # (H, T, B)
CASES = ALL_CASES[:2] if QUICK else ALL_CASES
N_BATCHES = 8            # the steps cycle over this many random (T+1, B) id chunks
MODE = "train step"


def case_label(case):
    return "H{} T{} B{}".format(*case)


def step_flops(case):
    H, T, B = case
    return 3 * (2 * T * B * (EMBED + H) * 4 * H + 2 * T * B * H * VOCAB)


@functools.lru_cache(maxsize=1)
def batches(case):
    H, T, B = case
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (N_BATCHES, T + 1, B))


def new_model(case, n):
    return CharLM(VOCAB, case[0], embedding_dim=EMBED, seed=0, num_threads=n)


def _cycle(case):
    data = batches(case)
    k = 0
    while True:
        chunk = data[k % N_BATCHES]
        yield chunk[:-1], chunk[1:]
        k += 1


# --- the implementations: impl(case, n) -> (step, thread_limit) --------------------

def compiled_impl(case, n):
    model = new_model(case, n)
    params = model.parameters()
    optimizer = Adagrad(params, lr=LR, num_threads=n)
    chunks = _cycle(case)
    state = [None]

    def step():
        x, y = next(chunks)
        logits, state[0] = model(x, state[0])
        loss, dlogits = cross_entropy(logits, y, num_threads=n)
        model.zero_grad()
        model.backward(dlogits)
        clip_grad_value_(params, CLIP)
        optimizer.step()
        return loss

    return step, functools.partial(threadpool_limits, limits=1, user_api="blas")


def reference_impl(case, n):
    """The step in NumPy, as the tutorials write it, over fastlstm.reference."""
    model = new_model(case, n)
    names = ["embed.weight", "rnn.W_x_l0", "rnn.W_h_l0", "rnn.b_l0", "head.W", "head.b"]
    weights = model.state_dict()
    params = [weights[k] for k in names]
    sums = [np.zeros_like(p) for p in params]
    chunks = _cycle(case)
    H = case[0]
    carried = [None, None]

    def step():
        table, W_x, W_h, b, W_o, b_o = params
        x, y = next(chunks)
        T, B = x.shape
        emb = table[x]
        hs, (h_n, c_n), cache = reference.lstm_forward(emb, W_x, W_h, b, *carried)
        carried[:] = h_n, c_n
        logits = hs.reshape(-1, H) @ W_o + b_o
        z = logits - logits.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        rows, targets = np.arange(T * B), y.reshape(-1)
        loss = -log_p[rows, targets].mean()
        d_logits = np.exp(log_p)
        d_logits[rows, targets] -= 1
        d_logits /= T * B
        d_W_o = hs.reshape(-1, H).T @ d_logits
        d_b_o = d_logits.sum(axis=0)
        grads = reference.lstm_backward((d_logits @ W_o.T).reshape(T, B, H), cache)
        d_table = np.zeros_like(table)
        np.add.at(d_table, x.reshape(-1), grads.dx.reshape(T * B, -1))
        for p, g, s in zip(params, [d_table, grads.dW_x, grads.dW_h, grads.db, d_W_o, d_b_o],
                           sums):
            np.clip(g, -CLIP, CLIP, out=g)
            s += g * g
            p -= LR * g / (np.sqrt(s) + 1e-8)
        return float(loss)

    return step, functools.partial(threadpool_limits, limits=n, user_api="blas")


def import_torch():
    """torch, or skip the benchmark (torch is an optional extra, never a dependency)."""
    try:
        import torch
    except ImportError as exc:     # absent, or a broken install
        pytest.skip(f"torch not importable: {exc}")
    return torch


def torch_impl(case, n):
    torch = import_torch()
    H, T, B = case
    ours = new_model(case, n)
    embed = torch.nn.Embedding(VOCAB, EMBED)
    lstm = torch.nn.LSTM(EMBED, H)
    head = torch.nn.Linear(H, VOCAB)
    with torch.no_grad():     # the CharLM's weights, so both start from the same model
        embed.weight.copy_(torch.from_numpy(ours.embed.weight.data))
        lstm.load_state_dict({k: torch.from_numpy(v)
                              for k, v in ours.rnn.to_torch_state_dict().items()})
        head.weight.copy_(torch.from_numpy(ours.head.W.data.T.copy()))
        head.bias.copy_(torch.from_numpy(ours.head.b.data))
    params = [*embed.parameters(), *lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adagrad(params, lr=LR, eps=1e-8)
    data = torch.from_numpy(batches(case))
    counter = [0]
    state = [None]

    def step():
        chunk = data[counter[0] % N_BATCHES]
        counter[0] += 1
        x, y = chunk[:-1], chunk[1:]
        out, new_state = lstm(embed(x), state[0])
        state[0] = tuple(s.detach() for s in new_state)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), y.reshape(-1))
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, CLIP)
        optimizer.step()
        return float(loss.detach())

    first_ours = cross_entropy(ours(batches(case)[0][:-1])[0], batches(case)[0][1:])[0]
    with torch.no_grad():
        x0 = data[0][:-1]
        first_torch = float(torch.nn.functional.cross_entropy(
            head(lstm(embed(x0))[0]).reshape(-1, VOCAB), data[0][1:].reshape(-1)))
    assert abs(first_ours - first_torch) < 1e-4, \
        f"torch model set-up differs from the CharLM: loss {first_torch} vs {first_ours}"

    return step, torch_thread_limit(n)


IMPLS = {"compiled": compiled_impl, "reference": reference_impl, "torch": torch_impl}


# --- the benchmarks -----------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
def test_sgemm_peak(sgemm_peak, threads):
    """The sgemm 1024^3 ceiling for the %peak column; defined first so it runs first."""
    sgemm_peak(threads)


@pytest.mark.parametrize("case, threads, impl", [
    pytest.param(case, threads, impl, id=f"H{case[0]}-T{case[1]}-B{case[2]}-{threads}thr-{impl}")
    for case in CASES for threads in THREADS for impl in IMPLS])
def test_train_step(benchmark, bench_log, case, threads, impl):
    H, T, B = case
    step, thread_limit = IMPLS[impl](case, threads)
    flops = step_flops(case)
    benchmark.group = f"char-LM training step {case_label(case)}, {threads} thread(s)"
    benchmark.extra_info.update(H=H, T=T, B=B, vocab=VOCAB, embedding=EMBED,
                                threads=threads, impl=impl, flops=flops)
    with thread_limit():
        for _ in range(3):       # warm-up: thread pools, optimizer state, buffers
            loss = step()
        assert np.isfinite(loss)
        benchmark(step)
    bench_log.record(benchmark, case=case_label(case), threads=threads, mode=MODE,
                     impl=impl, flops=flops, tokens=T * B)

"""A one-minute demo: train a small character-level LSTM language model on text taken
from the running Python's own standard library, with fastlstm.nn and fastlstm.optim.

    fastlstm demo [--steps 300] [--hidden 128] [--threads N]

Prints the loss as it falls, the speed against the NumPy reference, and a sample.
"""
import argparse
import sys
import time

import numpy as np

from . import nn, optim, reference
from .corpus import stdlib_text
from ._argtypes import integer
from ._threads import blas_threads, usable_cores
from .nn.functional import cross_entropy

def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastlstm demo",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=integer(1), default=300)
    ap.add_argument("--hidden", type=integer(1), default=128)
    ap.add_argument("--seq", type=integer(1), default=32)
    ap.add_argument("--batch", type=integer(1), default=32)
    ap.add_argument("--threads", type=integer(1), default=None)
    ap.add_argument("--seed", type=integer(0), default=0)
    args = ap.parse_args(argv)

    text = stdlib_text()
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int64)
    V, H, T, B = len(chars), args.hidden, args.seq, args.batch
    print(f"corpus: {len(text):,} characters of stdlib docstrings, vocabulary {V}; "
          f"LSTM H={H}, T={T}, B={B}")
    # One-hot characters -> LSTM -> Linear -> softmax, trained with Adagrad and clipping
    # as the char-LM tutorial does (forget-gate bias 1: remember by default).
    lstm = nn.LSTM(V, H, init="xavier", seed=args.seed, num_threads=args.threads)
    head = nn.Linear(H, V, seed=args.seed + 1)
    # The output layer's small NumPy products run single-threaded: a multi-threaded BLAS
    # keeps its idle threads spinning between calls, taking the cores from the kernels.
    with blas_threads(1):
        _train(args, data, lstm, head, chars, index)
    return 0


def _train(args, data, lstm, head, chars, index):
    V, T, B = len(chars), args.seq, args.batch
    params = lstm.parameters() + head.parameters()
    opt = optim.Adagrad(params, lr=0.05, eps=1e-8)
    eye = np.eye(V, dtype=np.float32)
    # B parallel streams through the text, the state carried from chunk to chunk.
    stream_len = (len(data) - 1) // B
    starts = np.arange(B) * stream_len
    state = None
    pos = 0
    t0 = time.perf_counter()
    kernel_time = 0.0
    for step in range(1, args.steps + 1):
        if pos + T + 1 > stream_len:
            pos, state = 0, None
        idx = starts[None, :] + pos + np.arange(T)[:, None]          # (T, B)
        x = eye[data[idx]]                                           # one-hot (T, B, V)
        pos += T
        k0 = time.perf_counter()
        hs, state = lstm(x, state)
        kernel_time += time.perf_counter() - k0
        loss, dlogits = cross_entropy(head(hs), data[idx + 1])
        for p in params:
            p.zero_grad()
        dhs = head.backward(dlogits)
        k0 = time.perf_counter()
        lstm.backward(dhs)
        kernel_time += time.perf_counter() - k0
        nn.utils.clip_grad_value_(params, 5.0)
        opt.step()
        if step == 1 or step % 50 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss:.3f}  (uniform guess {np.log(V):.3f})  "
                  f"{step * T * B / (time.perf_counter() - t0):,.0f} chars/s", flush=True)

    # The same forward+backward with the NumPy reference, for the speed ratio.
    W_x, W_h, b = (p.data for p in lstm.layer_weights(0))
    with blas_threads(args.threads or usable_cores()):
        r0 = time.perf_counter()
        for _ in range(5):
            _, _, cache = reference.lstm_forward(x, W_x, W_h, b)
            reference.lstm_backward(dhs, cache)
        ref_time = (time.perf_counter() - r0) / 5
    per_step = kernel_time / args.steps
    print(f"LSTM forward+backward: {per_step * 1e3:.2f} ms per step compiled, "
          f"{ref_time * 1e3:.2f} ms NumPy reference ({ref_time / per_step:.1f}x)")

    # Sample 200 characters, one step at a time.
    lstm.eval()
    rng = np.random.default_rng(args.seed + 2)
    state, ch, out = None, index.get("T", 0), []
    for _ in range(200):
        hs, state = lstm(eye[[ch]][None], state)
        z = head(hs[0, 0])
        p = np.exp((z - z.max()) / 0.7)
        ch = int(rng.choice(V, p=p / p.sum()))
        out.append(chars[ch])
    print("sample:", "".join(out).replace("\n", " "))


if __name__ == "__main__":
    sys.exit(main())

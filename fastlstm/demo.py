"""A one-minute demo: train a small character-level LSTM language model on text taken
from the running Python's own standard library, with the functional API.

    python -m fastlstm.demo [--steps 300] [--hidden 128] [--threads N]

Prints the loss as it falls, the speed against the NumPy reference, and a sample.
"""
import argparse
import sys
import time

import numpy as np

from . import lstm_backward, lstm_forward, reference
from ._threads import blas_threads, usable_cores

_MODULES = ("json", "textwrap", "collections", "functools", "itertools", "argparse",
            "string", "pathlib", "random", "statistics")


def stdlib_text():
    """Docstrings of a few standard-library modules and their public functions."""
    import importlib
    parts = []
    for name in _MODULES:
        mod = importlib.import_module(name)
        parts.append(mod.__doc__ or "")
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if not attr.startswith("_") and callable(obj) and obj.__doc__:
                parts.append(obj.__doc__)
    return "\n".join(parts)


def _softmax_xent(logits, targets):
    """Mean cross-entropy over rows and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    n = targets.size
    loss = -np.log(p.reshape(n, -1)[np.arange(n), targets.ravel()] + 1e-12).mean()
    p.reshape(n, -1)[np.arange(n), targets.ravel()] -= 1
    return float(loss), p / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    text = stdlib_text()
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int64)
    V, H, T, B = len(chars), args.hidden, args.seq, args.batch
    print(f"corpus: {len(text):,} characters of stdlib docstrings, vocabulary {V}; "
          f"LSTM H={H}, T={T}, B={B}")

    rng = np.random.default_rng(args.seed)
    f32 = np.float32
    scale = 1 / np.sqrt(H)
    params = {
        "W_x": rng.uniform(-scale, scale, (V, 4 * H)).astype(f32),
        "W_h": rng.uniform(-scale, scale, (H, 4 * H)).astype(f32),
        "b": np.zeros(4 * H, f32),
        "W_y": rng.uniform(-scale, scale, (H, V)).astype(f32),
        "b_y": np.zeros(V, f32),
    }
    params["b"][H:2 * H] = 1.0   # forget-gate bias 1: remember by default
    memory = {k: np.full_like(v, 1e-8) for k, v in params.items()}   # Adagrad
    # B parallel streams through the text, the state carried from chunk to chunk.
    stream_len = (len(data) - 1) // B
    starts = np.arange(B) * stream_len
    eye = np.eye(V, dtype=f32)
    # The output layer's small NumPy products run single-threaded: a multi-threaded BLAS
    # keeps its idle threads spinning between calls, taking the cores from the kernels.
    with blas_threads(1):
        params = _train(args, data, params, memory, starts, stream_len, eye, chars, index)
    return 0


def _train(args, data, params, memory, starts, stream_len, eye, chars, index):
    V, H, T, B = len(chars), args.hidden, args.seq, args.batch
    f32 = np.float32
    lr = 0.05
    rng = np.random.default_rng(args.seed + 1)
    h = np.zeros((B, H), f32)
    c = np.zeros((B, H), f32)
    pos = 0
    t0 = time.perf_counter()
    kernel_time = 0.0
    for step in range(1, args.steps + 1):
        if pos + T + 1 > stream_len:
            pos = 0
            h[:] = 0
            c[:] = 0
        idx = starts[None, :] + pos + np.arange(T)[:, None]          # (T, B)
        x = eye[data[idx]]                                           # one-hot (T, B, V)
        targets = data[idx + 1]
        pos += T
        k0 = time.perf_counter()
        hs, (h, c), cache = lstm_forward(x, params["W_x"], params["W_h"], params["b"], h, c,
                                         num_threads=args.threads)
        kernel_time += time.perf_counter() - k0
        logits = hs @ params["W_y"] + params["b_y"]
        loss, dlogits = _softmax_xent(logits, targets)
        dlogits = dlogits.astype(f32)
        grads = {"W_y": hs.reshape(-1, H).T @ dlogits.reshape(-1, V),
                 "b_y": dlogits.reshape(-1, V).sum(0)}
        k0 = time.perf_counter()
        g = lstm_backward(dlogits @ params["W_y"].T, cache)
        kernel_time += time.perf_counter() - k0
        grads.update(W_x=g.dW_x, W_h=g.dW_h, b=g.db)
        for k, p in params.items():
            gk = np.clip(grads[k], -5, 5)
            memory[k] += gk * gk
            p -= (lr * gk / np.sqrt(memory[k])).astype(f32)
        if step == 1 or step % 50 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss:.3f}  (uniform guess {np.log(V):.3f})  "
                  f"{step * T * B / (time.perf_counter() - t0):,.0f} chars/s", flush=True)

    # Same forward+backward with the NumPy reference, for the speed ratio.
    with blas_threads(args.threads or usable_cores()):
        r0 = time.perf_counter()
        for _ in range(5):
            _, _, rc = reference.lstm_forward(x, params["W_x"], params["W_h"], params["b"])
            reference.lstm_backward(dlogits @ params["W_y"].T, rc)
        ref_time = (time.perf_counter() - r0) / 5
    print(f"LSTM forward+backward: {kernel_time / args.steps * 1e3:.2f} ms per step compiled, "
          f"{ref_time * 1e3:.2f} ms NumPy reference ({ref_time / (kernel_time / args.steps):.1f}x)")

    # Sample 200 characters, one step at a time.
    hb, cb = np.zeros((1, H), f32), np.zeros((1, H), f32)
    ch = index.get("T", 0)
    out = []
    for _ in range(200):
        hs, (hb, cb), _ = lstm_forward(eye[[ch]][None], params["W_x"], params["W_h"],
                                       params["b"], hb, cb, num_threads=1)
        z = hs[0, 0] @ params["W_y"] + params["b_y"]
        p = np.exp((z - z.max()) / 0.7)
        ch = int(rng.choice(V, p=p / p.sum()))
        out.append(chars[ch])
    print("sample:", "".join(out).replace("\n", " "))
    return params


if __name__ == "__main__":
    sys.exit(main())

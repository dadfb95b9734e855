"""The dense operations of a training step (products, softmax cross-entropy, optimizer
updates) on fastlstm's OpenMP threads, with NumPy doing the same work when the compiled
extension is missing or the arrays do not suit it.

Why not NumPy's own threaded BLAS: OpenBLAS keeps a thread pool of its own, and on a
machine with as many cores as threads its idle threads spin on the cores that the
recurrent kernels' OpenMP threads need next (and the other way round). Keeping all the
parallel work in one pool avoids that (see ``fastlstm/_dense.pyx``).
"""
import numpy as np

from ._threads import blas_threads, resolve_num_threads

try:
    from . import _dense as _kernels
except ImportError:  # pragma: no cover - only in a build without the extension
    _kernels = None

# Below this many multiply-adds a product runs on one thread: starting the team would
# cost more than it saves.
PARALLEL_MIN_MACS = 1 << 17
# Element-wise work (updates, cross-entropy) below this many entries stays on one thread.
PARALLEL_MIN_ELEMENTS = 1 << 15


def compiled():
    return _kernels is not None


def _suits(*arrays):
    return _kernels is not None and all(
        a.dtype in (np.float32, np.float64) and a.dtype == arrays[0].dtype
        and a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative
        for a in arrays)


def _threads_for(num_threads, work, threshold):
    n = resolve_num_threads(num_threads)
    return n if work >= threshold else 1


def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False,
           num_threads=None):
    """``op(a) @ op(b)`` for 2-D arrays, into ``out`` (added to it with ``accumulate``).

    a: (M, K), or (K, M) with ``trans_a``; b: (K, N), or (N, K) with ``trans_b``;
    out: (M, N) of their dtype, or None for a new array. Returns out.
    """
    M = a.shape[1] if trans_a else a.shape[0]
    K = a.shape[0] if trans_a else a.shape[1]
    N = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = np.empty((M, N), a.dtype)
        accumulate = False
    if K == 0 or not _suits(a, b, out):
        product = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if accumulate:
            out += product
        else:
            out[...] = product
        return out
    n = _threads_for(num_threads, M * N * K, PARALLEL_MIN_MACS)
    with blas_threads(1):
        _kernels.matmul(a, b, out, trans_a, trans_b, 1.0 if accumulate else 0.0, n)
    return out


def softmax_cross_entropy(logits, targets, ignore_index, num_threads=None):
    """(sum of the kept rows' losses, number kept, gradient of the mean loss) for logits
    (N, V) and int targets (N,); rows whose target is ``ignore_index`` are not kept.
    Kept targets must already be checked to lie in [0, V)."""
    keep = None if ignore_index is None else targets != ignore_index
    n_kept = targets.shape[0] if keep is None else int(keep.sum())
    scale = 1.0 / n_kept if n_kept else 0.0
    if _suits(logits) and targets.shape[0]:
        grad = np.empty_like(logits)
        t = np.ascontiguousarray(targets, dtype=np.int64)
        n = _threads_for(num_threads, logits.size, PARALLEL_MIN_ELEMENTS)
        total = _kernels.softmax_cross_entropy(
            logits, t, grad, ignore_index is not None,
            0 if ignore_index is None else int(ignore_index), scale, n)
        return float(total), n_kept, grad
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    rows = np.arange(targets.shape[0]) if keep is None else np.nonzero(keep)[0]
    total = -log_probs[rows, targets[rows]].sum(dtype=np.float64)
    grad = np.exp(log_probs)
    grad[rows, targets[rows]] -= 1
    if keep is not None:
        grad[~keep] = 0
    grad *= grad.dtype.type(scale)
    return float(total), n_kept, grad.astype(logits.dtype, copy=False)


def adagrad(p, g, state_sum, lr, eps, num_threads=None):
    """In place: state_sum += g^2; p -= lr * g / (sqrt(state_sum) + eps)."""
    if _suits(p, g, state_sum):
        n = _threads_for(num_threads, p.size, PARALLEL_MIN_ELEMENTS)
        _kernels.adagrad(p.reshape(-1), g.reshape(-1), state_sum.reshape(-1), lr, eps, n)
        return
    state_sum += g * g
    p -= lr * g / (np.sqrt(state_sum) + eps)


def adam(p, g, exp_avg, exp_avg_sq, beta1, beta2, weight_decay, step_size,
         sqrt_bias_correction2, eps, num_threads=None):
    """In place, PyTorch's Adam step (weight decay, if any, added to the gradient)."""
    if _suits(p, g, exp_avg, exp_avg_sq):
        n = _threads_for(num_threads, p.size, PARALLEL_MIN_ELEMENTS)
        _kernels.adam(p.reshape(-1), g.reshape(-1), exp_avg.reshape(-1),
                      exp_avg_sq.reshape(-1), beta1, beta2, weight_decay, step_size,
                      sqrt_bias_correction2, eps, n)
        return
    if weight_decay:
        g = g + weight_decay * p
    exp_avg *= beta1
    exp_avg += (1 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    denom = np.sqrt(exp_avg_sq) / sqrt_bias_correction2 + eps
    p -= (step_size * exp_avg / denom).astype(p.dtype, copy=False)

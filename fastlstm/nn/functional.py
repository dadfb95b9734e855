"""Losses that return ``(loss, dlogits)``: the mean loss and its gradient w.r.t. the
logits, computed stably (log-sum-exp, softplus) in the logits' dtype."""
import numpy as np

from .. import _dense_ops


def cross_entropy(logits, targets, ignore_index=None, num_threads=None):
    """Mean softmax cross-entropy over ``(..., V)`` logits and integer ``(...)`` targets.

    Positions whose target equals ``ignore_index`` contribute nothing and are not counted
    in the mean (as in ``torch.nn.functional.cross_entropy``); if every position is
    ignored the loss is 0 with a zero gradient. The row-wise work runs compiled on
    ``num_threads`` threads (None: every usable core) when the extension is built.

    Returns
    -------
    loss : float, dlogits : array like ``logits``
    """
    logits = np.asarray(logits)
    if logits.dtype.kind != "f" or logits.ndim < 1:
        raise TypeError(f"logits must be a float array (..., V), got dtype {logits.dtype} "
                        f"and shape {logits.shape}")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {logits.shape[:-1]} (logits without "
                         f"the class axis), got {targets.shape}")
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    t = targets.reshape(-1)
    kept = t if ignore_index is None else t[t != ignore_index]
    if kept.size and (kept.min() < 0 or kept.max() >= V):
        raise ValueError(f"targets must lie in [0, {V}) (or equal ignore_index)")
    total, n, grad = _dense_ops.softmax_cross_entropy(np.ascontiguousarray(flat), t,
                                                      ignore_index, num_threads)
    if n == 0:
        return 0.0, np.zeros_like(logits)
    return total / n, grad.reshape(logits.shape)


def binary_cross_entropy_with_logits(logits, targets):
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``targets`` in [0, 1].

    loss = mean(max(z, 0) - z * y + log(1 + exp(-|z|))), exact for any z.

    Returns
    -------
    loss : float, dlogits : array like ``logits`` ( (sigmoid(z) - y) / N )
    """
    z = np.asarray(logits)
    if z.dtype.kind != "f":
        raise TypeError(f"logits must be a float array, got dtype {z.dtype}")
    y = np.asarray(targets, dtype=z.dtype)
    if y.shape != z.shape:
        raise ValueError(f"targets must have the logits' shape {z.shape}, got {y.shape}")
    n = z.size
    loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum() / n
    # sigmoid without overflow: exp of a non-positive number only
    e = np.exp(-np.abs(z))
    sig = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return float(loss), ((sig - y) / n).astype(z.dtype, copy=False)

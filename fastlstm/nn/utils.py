"""Gradient clipping, in place on ``Parameter.grad`` (PyTorch's names and semantics)."""
import numpy as np


def _grads(params):
    return [p.grad for p in params]


def clip_grad_value_(params, clip_value):
    """Clamp every gradient entry to [-clip_value, clip_value], in place."""
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for g in _grads(params):
        np.clip(g, -clip_value, clip_value, out=g)


def clip_grad_norm_(params, max_norm, eps=1e-6):
    """Scale all gradients together so their global 2-norm is at most ``max_norm``.

    The scale is ``max_norm / (total_norm + eps)`` when below 1 (as in PyTorch).
    Returns the total norm before clipping (a float, summed in float64).
    """
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    grads = _grads(params)
    total = float(np.sqrt(sum(float(np.dot(g.ravel().astype(np.float64),
                                           g.ravel().astype(np.float64))) for g in grads)))
    scale = max_norm / (total + eps)
    if scale < 1:
        for g in grads:
            g *= g.dtype.type(scale)
    return total

"""The NumPy reference: readable, the specification and the test oracle.

An LSTM step, with the fused gate pre-activations ``a_t`` split into blocks of H in the
order i, f, g, o (PyTorch's order)::

    a_t = x_t W_x + h_{t-1} W_h + b                      (B, 4H)
    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

With ``lengths``, sequence b is frozen from step ``lengths[b]`` on: its state is carried
unchanged and ``hs[t, b] = 0`` (PyTorch packed-sequence semantics).

This module never imports the compiled code it checks. ``backend`` and ``num_threads``
are accepted (and validated) so the signatures match ``fastlstm.lstm_forward``; they do
not change what is computed here.
"""
import numpy as np

from ._containers import LSTMCache, LSTMGrads
from ._validation import validate_lstm_backward, validate_lstm_forward

__all__ = ["lstm_forward", "lstm_backward", "sigmoid", "LSTMGrads"]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _step_mask(lengths, T, B):
    """(T, B, 1) bool: True where step t of sequence b is a real step, or None."""
    if lengths is None:
        return None
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def lstm_forward(x, W_x, W_h, b, h0=None, c0=None, *, lengths=None, backend="numpy",
                 num_threads=None):
    """Run an LSTM over a time-major batch.

    Parameters
    ----------
    x : (T, B, D) float32 or float64
    W_x : (D, 4H), W_h : (H, 4H), b : (4H,)  same dtype as ``x``; gate blocks i, f, g, o
    h0, c0 : (B, H) or None (zeros)
    lengths : (B,) ints in [0, T] or None (every sequence has length T)

    Returns
    -------
    hs : (T, B, H)  hidden state of every step (zero past a sequence's length)
    (h_n, c_n) : (B, H) each, every sequence's state after its own last step
    cache : LSTMCache for ``lstm_backward``
    """
    args = validate_lstm_forward(x, W_x, W_h, b, h0, c0, lengths, backend, num_threads)
    x, W_x, W_h, b = args.x, args.W_x, args.W_h, args.b
    T, B, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype

    h_states = np.zeros((T + 1, B, H), dtype)
    c_states = np.zeros((T + 1, B, H), dtype)
    if args.h0 is not None:
        h_states[0] = args.h0
    if args.c0 is not None:
        c_states[0] = args.c0
    mask = _step_mask(args.lengths, T, B)

    # The input projection of every step in one GEMM; only h_{t-1} W_h is left in the loop.
    x_proj = (x.reshape(T * B, D) @ W_x + b).reshape(T, B, 4 * H)
    gates = np.empty((T, B, 4 * H), dtype)
    for t in range(T):
        a = x_proj[t] + h_states[t] @ W_h
        i = sigmoid(a[:, 0 * H:1 * H])
        f = sigmoid(a[:, 1 * H:2 * H])
        g = np.tanh(a[:, 2 * H:3 * H])
        o = sigmoid(a[:, 3 * H:4 * H])
        c = f * c_states[t] + i * g
        h = o * np.tanh(c)
        if mask is not None:
            c = np.where(mask[t], c, c_states[t])
            h = np.where(mask[t], h, h_states[t])
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        c_states[t + 1] = c
        h_states[t + 1] = h

    hs = h_states[1:].copy() if mask is None else np.where(mask, h_states[1:], 0).astype(dtype)
    cache = LSTMCache(x, W_x, W_h, gates, h_states, c_states, args.lengths,
                      args.num_threads, "numpy")
    return hs, (h_states[T].copy(), c_states[T].copy()), cache


def lstm_backward(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstm_forward``.

    Parameters
    ----------
    dhs : (T, B, H) or None  gradient of the loss w.r.t. ``hs`` (None: zeros, many-to-one)
    cache : the LSTMCache returned by ``lstm_forward`` (either backend)
    dh_n, dc_n : (B, H) or None  gradients w.r.t. ``h_n`` and ``c_n`` (None: zeros)

    Returns
    -------
    LSTMGrads(dx (T,B,D), dh0 (B,H), dc0 (B,H), dW_x (D,4H), dW_h (H,4H), db (4H,))
    """
    dhs, dh_n, dc_n = validate_lstm_backward(dhs, cache, dh_n, dc_n)
    x, W_x, W_h, gates = cache.x, cache.W_x, cache.W_h, cache.gates
    T, B, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    mask = _step_mask(cache.lengths, T, B)

    dh_next = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    dc_next = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    d_gates = np.empty((T, B, 4 * H), dtype)   # gradient w.r.t. the pre-activations a_t
    for t in reversed(range(T)):
        i = gates[t, :, 0 * H:1 * H]
        f = gates[t, :, 1 * H:2 * H]
        g = gates[t, :, 2 * H:3 * H]
        o = gates[t, :, 3 * H:4 * H]
        c_prev, c = cache.c_states[t], cache.c_states[t + 1]
        dh = dh_next if dhs is None else dh_next + dhs[t]
        tanh_c = np.tanh(c)
        dc = dc_next + dh * o * (1 - tanh_c**2)
        da = np.concatenate([dc * g * i * (1 - i),
                             dc * c_prev * f * (1 - f),
                             dc * i * (1 - g**2),
                             dh * tanh_c * o * (1 - o)], axis=1)
        dc_prev = dc * f
        if mask is not None:
            da = np.where(mask[t], da, 0).astype(dtype)
            dc_prev = np.where(mask[t], dc_prev, dc_next)
            dh_prev = np.where(mask[t], da @ W_h.T, dh_next)
        else:
            dh_prev = da @ W_h.T
        d_gates[t] = da
        dh_next, dc_next = dh_prev, dc_prev

    # Weight and input gradients of all steps at once, after the time loop.
    da_all = d_gates.reshape(T * B, 4 * H)
    dx = (da_all @ W_x.T).reshape(T, B, D)
    dW_x = x.reshape(T * B, D).T @ da_all
    dW_h = cache.h_states[:-1].reshape(T * B, H).T @ da_all
    db = da_all.sum(axis=0)
    return LSTMGrads(dx, dh_next, dc_next, dW_x, dW_h, db)

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

from ._containers import LSTMCache, LSTMGrads, LSTMPCache, LSTMPGrads, RNNCache, RNNGrads
from ._validation import (validate_lstm_backward, validate_lstm_forward,
                          validate_lstmp_backward, validate_lstmp_forward,
                          validate_rnn_backward, validate_rnn_forward)

__all__ = ["lstm_forward", "lstm_backward", "lstmp_forward", "lstmp_backward",
           "rnn_forward", "rnn_backward", "sigmoid", "LSTMGrads", "LSTMPGrads", "RNNGrads"]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _step_mask(lengths, T, B):
    """(T, B, 1) bool: True where step t of sequence b is a real step, or None."""
    if lengths is None:
        return None
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def _zero_frozen(a, mask, dtype):
    """A copy of ``a`` with the entries of frozen steps (``mask`` False: past a sequence's
    length) set to 0; ``mask`` None: every step is real."""
    return a.copy() if mask is None else np.where(mask, a, 0).astype(dtype)


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

    hs = _zero_frozen(h_states[1:], mask, dtype)
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
    T, B, D, H = cache.sizes
    dtype = cache.dtype
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
            da = _zero_frozen(da, mask[t], dtype)
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


# --- projected LSTM (LSTMP, torch's proj_size) ---------------------------------------
#
#     a_t = x_t W_x + h_{t-1} W_h + b        W_h (P, 4H): the recurrence reads h, not m
#     c_t = f * c_{t-1} + i * g              (gates as in the LSTM)
#     m_t = o * tanh(c_t)                    (B, H)
#     h_t = m_t W_hr                         (B, P), W_hr (H, P) = torch's weight_hr_l0.T

def lstmp_forward(x, W_x, W_h, b, W_hr, h0=None, c0=None, *, lengths=None,
                  backend="numpy", num_threads=None):
    """Run a projected LSTM over a time-major batch.

    Parameters
    ----------
    x : (T, B, D) float32 or float64
    W_x : (D, 4H), W_h : (P, 4H), b : (4H,), W_hr : (H, P)  same dtype as ``x``;
        gate blocks i, f, g, o
    h0 : (B, P) or None, c0 : (B, H) or None (zeros)
    lengths : (B,) ints in [0, T] or None (every sequence has length T)

    Returns
    -------
    hs : (T, B, P)  projected hidden state of every step (zero past a sequence's length)
    (h_n, c_n) : (B, P), (B, H), every sequence's state after its own last step
    cache : LSTMPCache for ``lstmp_backward``
    """
    args = validate_lstmp_forward(x, W_x, W_h, b, W_hr, h0, c0, lengths, backend,
                                  num_threads)
    x, W_x, W_h, b, W_hr = args.x, args.W_x, args.W_h, args.b, args.W_hr
    T, B, D = x.shape
    H, P = W_hr.shape
    dtype = x.dtype

    h_states = np.zeros((T + 1, B, P), dtype)
    c_states = np.zeros((T + 1, B, H), dtype)
    m_states = np.zeros((T, B, H), dtype)
    if args.h0 is not None:
        h_states[0] = args.h0
    if args.c0 is not None:
        c_states[0] = args.c0
    mask = _step_mask(args.lengths, T, B)

    x_proj = (x.reshape(T * B, D) @ W_x + b).reshape(T, B, 4 * H)
    gates = np.empty((T, B, 4 * H), dtype)
    for t in range(T):
        a = x_proj[t] + h_states[t] @ W_h
        i = sigmoid(a[:, 0 * H:1 * H])
        f = sigmoid(a[:, 1 * H:2 * H])
        g = np.tanh(a[:, 2 * H:3 * H])
        o = sigmoid(a[:, 3 * H:4 * H])
        c = f * c_states[t] + i * g
        m = o * np.tanh(c)
        h = m @ W_hr
        if mask is not None:
            c = np.where(mask[t], c, c_states[t])
            h = np.where(mask[t], h, h_states[t])
            m = np.where(mask[t], m, 0)
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        c_states[t + 1] = c
        h_states[t + 1] = h
        m_states[t] = m

    hs = _zero_frozen(h_states[1:], mask, dtype)
    cache = LSTMPCache(x, W_x, W_h, W_hr, gates, h_states, c_states, m_states,
                       args.lengths, args.num_threads, "numpy")
    return hs, (h_states[T].copy(), c_states[T].copy()), cache


def lstmp_backward(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstmp_forward``.

    Parameters
    ----------
    dhs : (T, B, P) or None  gradient of the loss w.r.t. ``hs`` (None: zeros)
    cache : the LSTMPCache returned by ``lstmp_forward`` (either backend)
    dh_n : (B, P) or None, dc_n : (B, H) or None  gradients w.r.t. ``h_n``, ``c_n``

    Returns
    -------
    LSTMPGrads(dx (T,B,D), dh0 (B,P), dc0 (B,H), dW_x (D,4H), dW_h (P,4H), db (4H,),
               dW_hr (H,P))
    """
    dhs, dh_n, dc_n = validate_lstmp_backward(dhs, cache, dh_n, dc_n)
    x, W_x, W_h, W_hr, gates = cache.x, cache.W_x, cache.W_h, cache.W_hr, cache.gates
    T, B, D, H, P = cache.sizes
    dtype = cache.dtype
    mask = _step_mask(cache.lengths, T, B)

    dh_next = np.zeros((B, P), dtype) if dh_n is None else dh_n.copy()
    dc_next = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    d_gates = np.empty((T, B, 4 * H), dtype)   # gradient w.r.t. the pre-activations a_t
    d_h = np.empty((T, B, P), dtype)           # gradient w.r.t. h_t = m_t W_hr
    for t in reversed(range(T)):
        i = gates[t, :, 0 * H:1 * H]
        f = gates[t, :, 1 * H:2 * H]
        g = gates[t, :, 2 * H:3 * H]
        o = gates[t, :, 3 * H:4 * H]
        c_prev, c = cache.c_states[t], cache.c_states[t + 1]
        dh = dh_next if dhs is None else dh_next + dhs[t]
        dm = dh @ W_hr.T
        tanh_c = np.tanh(c)
        dc = dc_next + dm * o * (1 - tanh_c**2)
        da = np.concatenate([dc * g * i * (1 - i),
                             dc * c_prev * f * (1 - f),
                             dc * i * (1 - g**2),
                             dm * tanh_c * o * (1 - o)], axis=1)
        dc_prev = dc * f
        if mask is not None:
            # A frozen step computed nothing: gradients pass through it unchanged (dhs
            # there meets hs[t] = 0, a constant, and is dropped).
            da = _zero_frozen(da, mask[t], dtype)
            dh = _zero_frozen(dh, mask[t], dtype)
            dc_prev = np.where(mask[t], dc_prev, dc_next)
            dh_prev = np.where(mask[t], da @ W_h.T, dh_next)
        else:
            dh_prev = da @ W_h.T
        d_gates[t] = da
        d_h[t] = dh
        dh_next, dc_next = dh_prev, dc_prev

    da_all = d_gates.reshape(T * B, 4 * H)
    dx = (da_all @ W_x.T).reshape(T, B, D)
    dW_x = x.reshape(T * B, D).T @ da_all
    dW_h = cache.h_states[:-1].reshape(T * B, P).T @ da_all
    db = da_all.sum(axis=0)
    dW_hr = cache.m_states.reshape(T * B, H).T @ d_h.reshape(T * B, P)
    return LSTMPGrads(dx, dh_next, dc_next, dW_x, dW_h, db, dW_hr)


# --- vanilla RNN --------------------------------------------------------------------
#
#     a_t = x_t W_x + h_{t-1} W_h + b,   h_t = act(a_t),   act = tanh or relu

def _activation(a, nonlinearity):
    return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)


def _activation_grad(h, nonlinearity):
    """d act / d a, written in terms of the output h = act(a)."""
    return 1 - h * h if nonlinearity == "tanh" else (h > 0).astype(h.dtype)


def rnn_forward(x, W_x, W_h, b, h0=None, *, nonlinearity="tanh", lengths=None,
                backend="numpy", num_threads=None):
    """Run a vanilla RNN, ``h_t = act(x_t W_x + h_{t-1} W_h + b)``, over a time-major batch.

    Parameters
    ----------
    x : (T, B, D) float32 or float64
    W_x : (D, H), W_h : (H, H), b : (H,)  same dtype as ``x``
    h0 : (B, H) or None (zeros)
    nonlinearity : "tanh" or "relu"
    lengths : (B,) ints in [0, T] or None; past its length a sequence's state is carried
        unchanged and ``hs[t, b] = 0``

    Returns
    -------
    hs : (T, B, H), h_n : (B, H) (each sequence's state after its own last step), cache
    """
    args = validate_rnn_forward(x, W_x, W_h, b, h0, nonlinearity, lengths, backend,
                                num_threads)
    x, W_x, W_h, b = args.x, args.W_x, args.W_h, args.b
    T, B, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    h_states = np.zeros((T + 1, B, H), dtype)
    if args.h0 is not None:
        h_states[0] = args.h0
    mask = _step_mask(args.lengths, T, B)
    x_proj = (x.reshape(T * B, D) @ W_x + b).reshape(T, B, H)   # every step in one GEMM
    for t in range(T):
        h = _activation(x_proj[t] + h_states[t] @ W_h, args.nonlinearity)
        h_states[t + 1] = h if mask is None else np.where(mask[t], h, h_states[t])
    hs = _zero_frozen(h_states[1:], mask, dtype)
    cache = RNNCache(x, W_x, W_h, h_states, args.lengths, args.nonlinearity,
                     args.num_threads, "numpy")
    return hs, h_states[T].copy(), cache


def rnn_backward(dhs, cache, dh_n=None, bptt_truncate=None):
    """Backpropagate through ``rnn_forward``, in full or truncated.

    Parameters
    ----------
    dhs : (T, B, H) or None  gradient of the loss w.r.t. ``hs`` (None: zeros)
    cache : the RNNCache from ``rnn_forward``
    dh_n : (B, H) or None  gradient w.r.t. ``h_n``; it enters at each sequence's last
        step, like a loss term there
    bptt_truncate : None or int k >= 0
        None: full backpropagation through time. k: the loss term at step t sends
        gradient to steps t, t-1, ..., t-k and no further (k = 0: only to step t
        itself); h0 receives gradient from the loss terms whose window reaches step 0.
        Any k >= T-1 is full BPTT. Steps are counted within each sequence's own length.

        Example, T = 3, k = 1: the loss at step 2 reaches steps 2 and 1 (not step 0,
        not h0); the loss at step 1 reaches steps 1 and 0 and, through step 0, h0; the
        loss at step 0 reaches step 0 and h0. Every step a loss term reaches adds to
        that step's share of dx, dW_x, dW_h and db.

    Returns
    -------
    RNNGrads(dx (T,B,D), dh0 (B,H), dW_x (D,H), dW_h (H,H), db (H,))
    """
    dhs, dh_n, k = validate_rnn_backward(dhs, cache, dh_n, bptt_truncate)
    x, W_x, W_h, h_states = cache.x, cache.W_x, cache.W_h, cache.h_states
    T, B, D, H = cache.sizes
    dtype = cache.dtype
    mask = _step_mask(cache.lengths, T, B)
    act_grad = _activation_grad(h_states[1:], cache.nonlinearity)   # (T, B, H)
    d_pre = np.zeros((T, B, H), dtype)   # gradient w.r.t. the pre-activations a_t

    if k is None or k >= T - 1:
        # Full BPTT: one backward sweep; frozen steps pass dh through unchanged.
        dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
        for t in reversed(range(T)):
            g = dh if dhs is None else dh + dhs[t]
            da = g * act_grad[t]
            if mask is not None:
                da = _zero_frozen(da, mask[t], dtype)
                dh = np.where(mask[t], da @ W_h.T, dh)
            else:
                dh = da @ W_h.T
            d_pre[t] = da
        dh0 = dh
    else:
        # Truncated: every loss term walks back through its own window of k + 1 steps.
        lengths = np.full(B, T) if cache.lengths is None else cache.lengths
        origin = np.zeros((T, B, H), dtype)   # the loss term at each real step
        if dhs is not None:
            origin += _zero_frozen(dhs, mask, dtype)
        dh0 = np.zeros((B, H), dtype)
        if dh_n is not None:
            last = lengths - 1
            for bi in range(B):
                if last[bi] >= 0:
                    origin[last[bi], bi] += dh_n[bi]
                else:
                    dh0[bi] += dh_n[bi]   # an empty sequence: h_n is h0
        for t in range(T):
            g = origin[t]
            for s in range(t, max(t - k, 0) - 1, -1):
                da = g * act_grad[s]
                d_pre[s] += da
                g = da @ W_h.T
            if t - k <= 0:   # the window reached step 0, whose input state is h0
                dh0 += g

    dA = d_pre.reshape(T * B, H)
    dx = (dA @ W_x.T).reshape(T, B, D)
    dW_x = x.reshape(T * B, D).T @ dA
    dW_h = h_states[:-1].reshape(T * B, H).T @ dA
    db = dA.sum(axis=0)
    return RNNGrads(dx, dh0, dW_x, dW_h, db)


# --- GRU ----------------------------------------------------------------------------
#
# PyTorch's formulation, gate blocks r, z, n of H columns each; the two biases stay
# apart because b_hn sits inside the reset gate's product:
#
#     a_x = x_t W_x + b_x,   a_h = h_{t-1} W_h + b_h                 (B, 3H) each
#     r = sigmoid(a_xr + a_hr)    z = sigmoid(a_xz + a_hz)
#     n = tanh(a_xn + r * a_hn)
#     h_t = (1 - z) * n + z * h_{t-1}

from ._containers import GRUCache, GRUGrads  # noqa: E402
from ._validation import validate_gru_backward, validate_gru_forward  # noqa: E402

__all__ += ["gru_forward", "gru_backward", "GRUGrads"]


def gru_forward(x, W_x, W_h, b_x, b_h, h0=None, *, lengths=None, backend="numpy",
                num_threads=None):
    """Run a GRU over a time-major batch.

    Parameters
    ----------
    x : (T, B, D) float32 or float64
    W_x : (D, 3H), W_h : (H, 3H), b_x, b_h : (3H,)  same dtype as ``x``; gate blocks
        r, z, n
    h0 : (B, H) or None (zeros)
    lengths : (B,) ints in [0, T] or None; past its length a sequence's state is carried
        unchanged and ``hs[t, b] = 0``

    Returns
    -------
    hs : (T, B, H), h_n : (B, H) (each sequence's state after its own last step),
    cache : GRUCache for ``gru_backward``
    """
    args = validate_gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths, backend, num_threads)
    x, W_x, W_h, b_x, b_h = args.x, args.W_x, args.W_h, args.b_x, args.b_h
    T, B, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    h_states = np.zeros((T + 1, B, H), dtype)
    if args.h0 is not None:
        h_states[0] = args.h0
    mask = _step_mask(args.lengths, T, B)

    a_x_all = (x.reshape(T * B, D) @ W_x + b_x).reshape(T, B, 3 * H)  # every step at once
    gates = np.empty((T, B, 4 * H), dtype)
    for t in range(T):
        h_prev = h_states[t]
        a_x = a_x_all[t]
        a_h = h_prev @ W_h + b_h
        r = sigmoid(a_x[:, 0 * H:1 * H] + a_h[:, 0 * H:1 * H])
        z = sigmoid(a_x[:, 1 * H:2 * H] + a_h[:, 1 * H:2 * H])
        a_hn = a_h[:, 2 * H:3 * H]
        n = np.tanh(a_x[:, 2 * H:3 * H] + r * a_hn)
        h = (1 - z) * n + z * h_prev
        h_states[t + 1] = h if mask is None else np.where(mask[t], h, h_prev)
        gates[t] = np.concatenate([r, z, n, a_hn], axis=1)

    hs = _zero_frozen(h_states[1:], mask, dtype)
    cache = GRUCache(x, W_x, W_h, gates, h_states, args.lengths, args.num_threads, "numpy")
    return hs, h_states[T].copy(), cache


def gru_backward(dhs, cache, dh_n=None):
    """Backpropagate through ``gru_forward``.

    Parameters
    ----------
    dhs : (T, B, H) or None  gradient of the loss w.r.t. ``hs`` (None: zeros)
    cache : the GRUCache from ``gru_forward`` (either backend)
    dh_n : (B, H) or None  gradient w.r.t. ``h_n``; it enters at each sequence's last step

    Returns
    -------
    GRUGrads(dx (T,B,D), dh0 (B,H), dW_x (D,3H), dW_h (H,3H), db_x (3H,), db_h (3H,))
    """
    dhs, dh_n = validate_gru_backward(dhs, cache, dh_n)
    x, W_x, W_h, h_states, gates = cache.x, cache.W_x, cache.W_h, cache.h_states, cache.gates
    T, B, D, H = cache.sizes
    dtype = cache.dtype
    mask = _step_mask(cache.lengths, T, B)

    # Gradients w.r.t. the pre-activations a_x and a_h: equal but for the n block, where
    # d a_hn = d a_xn * r.
    d_ax = np.zeros((T, B, 3 * H), dtype)
    d_ah = np.zeros((T, B, 3 * H), dtype)
    dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    for t in reversed(range(T)):
        r = gates[t, :, 0 * H:1 * H]
        z = gates[t, :, 1 * H:2 * H]
        n = gates[t, :, 2 * H:3 * H]
        a_hn = gates[t, :, 3 * H:4 * H]
        h_prev = h_states[t]
        g = dh if dhs is None else dh + dhs[t]
        d_n = g * (1 - z) * (1 - n * n)           # w.r.t. n's pre-activation
        d_z = g * (h_prev - n) * z * (1 - z)
        d_r = d_n * a_hn * r * (1 - r)
        dax = np.concatenate([d_r, d_z, d_n], axis=1)
        dah = np.concatenate([d_r, d_z, d_n * r], axis=1)
        dh_prev = g * z + dah @ W_h.T
        if mask is not None:
            dax = _zero_frozen(dax, mask[t], dtype)
            dah = _zero_frozen(dah, mask[t], dtype)
            dh_prev = np.where(mask[t], dh_prev, dh)
        d_ax[t] = dax
        d_ah[t] = dah
        dh = dh_prev

    dAx = d_ax.reshape(T * B, 3 * H)
    dAh = d_ah.reshape(T * B, 3 * H)
    dx = (dAx @ W_x.T).reshape(T, B, D)
    dW_x = x.reshape(T * B, D).T @ dAx
    dW_h = h_states[:-1].reshape(T * B, H).T @ dAh
    return GRUGrads(dx, dh, dW_x, dW_h, dAx.sum(axis=0), dAh.sum(axis=0))

"""Result and cache containers shared by both backends.

The cache layout is the same for the NumPy reference and the compiled kernels, so a
cache made by one backend can be handed to the other's backward (the tests rely on it).
"""
from typing import NamedTuple, Optional

import numpy as np


class LSTMGrads(NamedTuple):
    """Gradients of an LSTM call; every array has the dtype of the forward inputs.

    dx   (T, B, D)  gradient w.r.t. the inputs ``x``
    dh0  (B, H)     gradient w.r.t. the initial hidden state
    dc0  (B, H)     gradient w.r.t. the initial cell state
    dW_x (D, 4H)    gradient w.r.t. the input weights (gate blocks i, f, g, o)
    dW_h (H, 4H)    gradient w.r.t. the recurrent weights
    db   (4H,)      gradient w.r.t. the bias
    """

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_x: np.ndarray
    dW_h: np.ndarray
    db: np.ndarray


class _KernelCache:
    """Fields every cache has: the inputs and weights (referenced, not copied), the hidden
    states, the lengths, and which backend and thread count made it."""

    __slots__ = ("x", "W_x", "W_h", "h_states", "lengths", "num_threads", "backend")

    def __init__(self, x, W_x, W_h, h_states, lengths, num_threads: Optional[int],
                 backend: str):
        self.x = x
        self.W_x = W_x
        self.W_h = W_h
        self.h_states = h_states
        self.lengths = lengths
        self.num_threads = num_threads
        self.backend = backend

    @property
    def dtype(self):
        return self.x.dtype

    def _describe(self):
        T, B, D = self.x.shape
        return (f"T={T}, B={B}, D={D}, H={self.W_h.shape[0]}, dtype={self.x.dtype}, "
                f"backend={self.backend!r}, lengths={'yes' if self.lengths is not None else 'no'}")


class LSTMCache(_KernelCache):
    """What ``lstm_backward`` needs from ``lstm_forward``; treat it as opaque.

    Arrays (T steps, batch B, input D, hidden H):
      x         (T, B, D)     the inputs (referenced, not copied)
      W_x, W_h                the weights (referenced, not copied)
      gates     (T, B, 4H)    activated gates i, f, g, o of every step
      h_states  (T+1, B, H)   h_states[0] = h0, h_states[t+1] = state after step t
      c_states  (T+1, B, H)   the same for the cell state
      lengths   (B,) intc or None
    For steps past a sequence's length the states are carried unchanged and the
    gate values are unspecified.
    """

    __slots__ = ("gates", "c_states")

    def __init__(self, x, W_x, W_h, gates, h_states, c_states, lengths,
                 num_threads: Optional[int], backend: str):
        super().__init__(x, W_x, W_h, h_states, lengths, num_threads, backend)
        self.gates = gates
        self.c_states = c_states

    def __repr__(self):
        return f"LSTMCache({self._describe()})"


class RNNGrads(NamedTuple):
    """Gradients of a vanilla-RNN call; every array has the dtype of the forward inputs.

    dx   (T, B, D)  gradient w.r.t. the inputs ``x``
    dh0  (B, H)     gradient w.r.t. the initial hidden state
    dW_x (D, H)     gradient w.r.t. the input weights
    dW_h (H, H)     gradient w.r.t. the recurrent weights
    db   (H,)       gradient w.r.t. the bias
    """

    dx: np.ndarray
    dh0: np.ndarray
    dW_x: np.ndarray
    dW_h: np.ndarray
    db: np.ndarray


class RNNCache(_KernelCache):
    """What ``rnn_backward`` needs from ``rnn_forward``; treat it as opaque.

      x         (T, B, D)     the inputs (referenced, not copied)
      W_x, W_h                the weights (referenced, not copied)
      h_states  (T+1, B, H)   h_states[0] = h0, h_states[t+1] = state after step t
      lengths   (B,) intc or None
      nonlinearity            "tanh" or "relu"; its derivative is read off h_states
    """

    __slots__ = ("nonlinearity",)

    def __init__(self, x, W_x, W_h, h_states, lengths, nonlinearity,
                 num_threads: Optional[int], backend: str):
        super().__init__(x, W_x, W_h, h_states, lengths, num_threads, backend)
        self.nonlinearity = nonlinearity

    def __repr__(self):
        return f"RNNCache({self._describe()}, nonlinearity={self.nonlinearity!r})"

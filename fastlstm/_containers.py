"""Result and cache containers shared by both backends.

The cache layout is the same for the NumPy reference and the compiled kernels, so a
cache made by one backend can be handed to the other's backward (the tests rely on it).

A cache references the arrays it was given (``x`` and the weights), so a change to
them between the forward pass and its backward pass would make the gradients wrong.
Every cache therefore records a fingerprint of those arrays when it is made, and the
backward pass compares it before it runs (``InputModifiedError`` if it differs):

- by default, the bytes of 16 elements of each array, one in each sixteenth of it (a
  small fraction of even the smallest LSTM call): it catches edits of a whole array
  (``x *= 3``, an optimizer step, new data copied in) unless all 16 sampled elements
  keep their bits, as zeros scaled do; it can miss edits of a few elements;
- with ``set_debug_checks(True)`` (or ``FASTLSTM_DEBUG_CHECKS=1`` in the environment),
  a CRC-32 of all their bytes: it reads every element in the forward and again in the
  backward, and catches every change within 32 consecutive bits (one float32 element)
  and any other change but for a 1 in 2**32 chance.

Bits are compared, not values, so NaNs compare equal to themselves.
"""
import os
import zlib
from typing import NamedTuple, Optional

import numpy as np

DEBUG_CHECKS_ENV_VAR = "FASTLSTM_DEBUG_CHECKS"

# Where the default fingerprint samples an array of n elements: element int(f * n) of its
# flat order for each fraction f, one in each sixteenth of the array, at an irregular
# place within it (the fractional parts of multiples of the golden ratio) so that the
# samples do not line up with the rows or columns of a matrix.
SAMPLE_POSITIONS = np.array([(i + (i * 0.6180339887498949) % 1.0) / 16 for i in range(16)])


def python_sampled_bytes(arrays, positions):
    """NumPy twin of ``fastlstm._lstm.sampled_bytes``: the bytes of the elements at
    ``positions`` (fractions of each array's length) of every C-contiguous ndarray in
    ``arrays``, all the elements of arrays no longer than ``positions``, concatenated."""
    parts = []
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
            continue
        flat = a.reshape(-1)
        n = flat.size
        if n <= positions.size:
            parts.append(flat.tobytes())
        else:
            parts.append(flat[np.minimum((positions * n).astype(np.intp), n - 1)].tobytes())
    return b"".join(parts)


try:   # in C, many times faster than in NumPy: it runs twice in every forward-backward pair
    from ._lstm import sampled_bytes
except ImportError:   # no compiled extensions
    sampled_bytes = python_sampled_bytes


def _parse_debug_checks(value):
    value = value.strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{DEBUG_CHECKS_ENV_VAR}={value!r}: use 1 to check every element of "
                     f"the arrays a cache references, 0 (or unset) to sample them")


_full_checks = _parse_debug_checks(os.environ.get(DEBUG_CHECKS_ENV_VAR, ""))


def set_debug_checks(enabled):
    """Check every element (``True``) or a sample (``False``, the default) of the arrays
    a forward pass's cache references, before its backward pass; returns the previous
    setting. Caches keep the kind of fingerprint they were made with.

    The full check reads ``x`` and the weights once in the forward and once in the
    backward (a CRC-32 at several GB/s); it catches a change of a single element, which
    the default sample of 16 elements an array may miss. ``FASTLSTM_DEBUG_CHECKS=1`` in
    the environment turns it on at import.
    """
    global _full_checks
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_debug_checks takes True or False, got "
                        f"{type(enabled).__name__} {enabled!r}")
    previous = _full_checks
    _full_checks = bool(enabled)
    return previous


class InputModifiedError(ValueError):
    """An array a forward pass's cache references changed before its backward pass.

    ``name`` is the array's name as the caller knows it ("x", "W_h", a layer's
    parameter name).
    """

    def __init__(self, name, forward, backward):
        self.name = name
        super().__init__(
            f"{name} was changed in place after {forward} and before {backward}: the "
            f"backward pass reads it, so the gradients would be wrong. Change inputs and "
            f"weights (an optimizer step, too) only after the backward pass, or give "
            f"{forward} a copy")
        self._parts = (name, forward, backward)

    def __reduce__(self):   # (pickled as its parts: the constructor takes three)
        return type(self), self._parts


def _crc(a):
    if isinstance(a, np.ndarray) and a.flags.c_contiguous:
        return zlib.crc32(a)
    return None


def fingerprint(arrays):
    """What ``changed_array`` compares ``arrays`` (a tuple) against later."""
    if _full_checks:
        return tuple(_crc(a) for a in arrays)
    return sampled_bytes(arrays, SAMPLE_POSITIONS)


def changed_array(arrays, recorded):
    """The index of the first of ``arrays`` whose fingerprint differs from ``recorded``
    (what ``fingerprint`` gave for the same arrays), or None if none does."""
    if type(recorded) is tuple:
        for i, (a, crc) in enumerate(zip(arrays, recorded)):
            if _crc(a) != crc:
                return i
        return None
    if sampled_bytes(arrays, SAMPLE_POSITIONS) == recorded:
        return None
    start = 0
    for i, a in enumerate(arrays):
        now = sampled_bytes((a,), SAMPLE_POSITIONS)
        if recorded[start:start + len(now)] != now:
            return i
        start += len(now)
    return len(arrays) - 1   # the shares matched but the record is longer: the last shrank


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


class InputsRecord:
    """Base of the caches: a fingerprint of the arrays the cache references (named by
    ``INPUT_NAMES``, returned by ``_inputs()``), made by ``_record_inputs()`` right after
    the forward pass and compared by ``check_inputs()`` before the backward pass."""

    __slots__ = ("inputs_fingerprint",)
    INPUT_NAMES = ()

    def _inputs(self):
        raise NotImplementedError

    def _record_inputs(self):
        self.inputs_fingerprint = fingerprint(self._inputs())

    def changed_input(self):
        """The name of the first referenced array that changed since the forward pass,
        or None."""
        i = changed_array(self._inputs(), self.inputs_fingerprint)
        return None if i is None else self.INPUT_NAMES[i]

    def check_inputs(self, forward, backward):
        """Raise InputModifiedError if a referenced array changed since the forward pass
        (``forward``, ``backward``: the functions' names, for the message)."""
        recorded = self.inputs_fingerprint
        if type(recorded) is bytes and sampled_bytes(self._inputs(),
                                                     SAMPLE_POSITIONS) == recorded:
            return   # the common case, in one call: it runs before every backward pass
        name = self.changed_input()
        if name is not None:
            raise InputModifiedError(name, forward, backward)


class _KernelCache(InputsRecord):
    """Fields every cache has: the inputs and weights (referenced, not copied), the hidden
    states, the lengths, and which backend and thread count made it."""

    __slots__ = ("x", "W_x", "W_h", "h_states", "lengths", "num_threads", "backend")
    INPUT_NAMES = ("x", "W_x", "W_h")

    def __init__(self, x, W_x, W_h, h_states, lengths, num_threads: Optional[int],
                 backend: str):
        self.x = x
        self.W_x = W_x
        self.W_h = W_h
        self.h_states = h_states
        self.lengths = lengths
        self.num_threads = num_threads
        self.backend = backend
        # made with the cache, right after the forward pass read them
        self.inputs_fingerprint = fingerprint((x, W_x, W_h))

    def _inputs(self):
        return (self.x, self.W_x, self.W_h)

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def sizes(self):
        """``(T, B, D, H)``: steps, batch, input and hidden sizes."""
        T, B, D = self.x.shape
        return T, B, D, self.W_h.shape[0]

    def _describe(self):
        T, B, D, H = self.sizes
        return (f"T={T}, B={B}, D={D}, H={H}, dtype={self.x.dtype}, "
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


class LSTMLookupGrads(NamedTuple):
    """Gradients of an LSTM call whose inputs were looked up (``lstm_forward_lookup``);
    every array has the dtype of the table.

    d_table (V, 4H)  gradient w.r.t. the table: row v sums the gate-input gradients of
                     the steps whose id is v (for a table ``E @ W_x``, dW_x = E^T d_table
                     and dE = d_table W_x^T; for one-hot inputs, table = W_x, it is dW_x)
    dh0     (B, H)   gradient w.r.t. the initial hidden state
    dc0     (B, H)   gradient w.r.t. the initial cell state
    dW_h    (H, 4H)  gradient w.r.t. the recurrent weights
    db      (4H,)    gradient w.r.t. the bias
    """

    d_table: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_h: np.ndarray
    db: np.ndarray


class LSTMLookupCache(InputsRecord):
    """What ``lstm_backward_lookup`` needs from ``lstm_forward_lookup``; treat it as
    opaque.

      table     (V, 4H)       the looked-up rows (referenced, not copied)
      ids       (T*B,) intc   step t of sequence b read row ids[t*B + b] (referenced
                              when the caller's ids were intc and contiguous, else a copy)
      W_h                     the recurrent weights (referenced, not copied)
      gates, h_states, c_states, lengths   as in ``LSTMCache``
    The compiled kernels alone run lookups, so there is no ``backend`` field.
    """

    __slots__ = ("table", "ids", "W_h", "gates", "h_states", "c_states", "lengths",
                 "num_threads")
    INPUT_NAMES = ("table", "ids", "W_h")

    def __init__(self, table, ids, W_h, gates, h_states, c_states, lengths,
                 num_threads: Optional[int]):
        self.table, self.ids, self.W_h = table, ids, W_h
        self.gates, self.h_states, self.c_states = gates, h_states, c_states
        self.lengths, self.num_threads = lengths, num_threads
        self._record_inputs()

    def _inputs(self):
        return (self.table, self.ids, self.W_h)

    @property
    def dtype(self):
        return self.table.dtype

    def __repr__(self):
        T, B, G = self.gates.shape
        return (f"LSTMLookupCache(T={T}, B={B}, V={self.table.shape[0]}, H={G // 4}, "
                f"dtype={self.table.dtype}, "
                f"lengths={'yes' if self.lengths is not None else 'no'})")


class LSTMPGrads(NamedTuple):
    """Gradients of a projected-LSTM call (``lstmp_forward``); every array has the dtype
    of the forward inputs (H cell units, P projected outputs).

    dx   (T, B, D)  gradient w.r.t. the inputs ``x``
    dh0  (B, P)     gradient w.r.t. the initial (projected) hidden state
    dc0  (B, H)     gradient w.r.t. the initial cell state
    dW_x (D, 4H)    gradient w.r.t. the input weights (gate blocks i, f, g, o)
    dW_h (P, 4H)    gradient w.r.t. the recurrent weights
    db   (4H,)      gradient w.r.t. the bias
    dW_hr (H, P)    gradient w.r.t. the projection weights
    """

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_x: np.ndarray
    dW_h: np.ndarray
    db: np.ndarray
    dW_hr: np.ndarray


class LSTMPCache(_KernelCache):
    """What ``lstmp_backward`` needs from ``lstmp_forward``; treat it as opaque.

    Arrays (T steps, batch B, input D, H cell units, P projected outputs):
      x         (T, B, D)     the inputs (referenced, not copied)
      W_x (D, 4H), W_h (P, 4H), W_hr (H, P)   the weights (referenced, not copied)
      gates     (T, B, 4H)    activated gates i, f, g, o of every step
      h_states  (T+1, B, P)   h_states[0] = h0, h_states[t+1] = projected state after step t
      c_states  (T+1, B, H)   the same for the cell state
      m_states  (T, B, H)     m_t = o * tanh(c_t), the unprojected output of step t
      lengths   (B,) intc or None
    For steps past a sequence's length the states are carried unchanged, ``m_states``
    is 0 and the gate values are unspecified.
    """

    __slots__ = ("W_hr", "gates", "c_states", "m_states")
    INPUT_NAMES = ("x", "W_x", "W_h", "W_hr")

    def __init__(self, x, W_x, W_h, W_hr, gates, h_states, c_states, m_states, lengths,
                 num_threads: Optional[int], backend: str):
        # (not _KernelCache.__init__: its fingerprint would miss W_hr, and computing
        # one twice costs a full read of every array under set_debug_checks)
        self.x, self.W_x, self.W_h, self.W_hr = x, W_x, W_h, W_hr
        self.gates, self.h_states, self.c_states, self.m_states = (gates, h_states,
                                                                   c_states, m_states)
        self.lengths = lengths
        self.num_threads = num_threads
        self.backend = backend
        self._record_inputs()

    def _inputs(self):
        return (self.x, self.W_x, self.W_h, self.W_hr)

    @property
    def sizes(self):
        """``(T, B, D, H, P)``: steps, batch, input, cell and projected sizes."""
        T, B, D = self.x.shape
        H, P = self.W_hr.shape
        return T, B, D, H, P

    def __repr__(self):
        T, B, D, H, P = self.sizes
        return (f"LSTMPCache(T={T}, B={B}, D={D}, H={H}, P={P}, dtype={self.x.dtype}, "
                f"backend={self.backend!r}, "
                f"lengths={'yes' if self.lengths is not None else 'no'})")


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


class GRUGrads(NamedTuple):
    """Gradients of a GRU call; every array has the dtype of the forward inputs.

    dx   (T, B, D)   gradient w.r.t. the inputs ``x``
    dh0  (B, H)      gradient w.r.t. the initial hidden state
    dW_x (D, 3H)     gradient w.r.t. the input weights (gate blocks r, z, n)
    dW_h (H, 3H)     gradient w.r.t. the recurrent weights
    db_x (3H,)       gradient w.r.t. the input-side bias
    db_h (3H,)       gradient w.r.t. the recurrent-side bias (its n block differs from
                     db_x's: b_hn sits inside the reset gate's product)
    """

    dx: np.ndarray
    dh0: np.ndarray
    dW_x: np.ndarray
    dW_h: np.ndarray
    db_x: np.ndarray
    db_h: np.ndarray


class GRUCache(_KernelCache):
    """What ``gru_backward`` needs from ``gru_forward``; treat it as opaque.

      x         (T, B, D)     the inputs (referenced, not copied)
      W_x, W_h                the weights (referenced, not copied)
      gates     (T, B, 4H)    per step, blocks of H: r, z, n (activated) and
                              a_hn = h_{t-1} W_hn + b_hn (the product the reset gate
                              scales, which dr needs)
      h_states  (T+1, B, H)   h_states[0] = h0, h_states[t+1] = state after step t
      lengths   (B,) intc or None
    For steps past a sequence's length the states are carried unchanged and the
    gate values are unspecified. The biases are not kept: the backward needs neither.
    """

    __slots__ = ("gates",)

    def __init__(self, x, W_x, W_h, gates, h_states, lengths, num_threads: Optional[int],
                 backend: str):
        super().__init__(x, W_x, W_h, h_states, lengths, num_threads, backend)
        self.gates = gates

    def __repr__(self):
        return f"GRUCache({self._describe()})"


class GRULookupGrads(NamedTuple):
    """Gradients of a GRU call whose inputs were looked up (``gru_forward_lookup``);
    every array has the dtype of the table.

    d_table (V, 3H)  gradient w.r.t. the table: row v sums the input-side pre-activation
                     gradients (w.r.t. x W_x + b_x) of the steps whose id is v (for a
                     table ``E @ W_x``, dW_x = E^T d_table and dE = d_table W_x^T; for
                     one-hot inputs, table = W_x, it is dW_x)
    dh0     (B, H)   gradient w.r.t. the initial hidden state
    dW_h    (H, 3H)  gradient w.r.t. the recurrent weights
    db_x    (3H,)    gradient w.r.t. the input-side bias
    db_h    (3H,)    gradient w.r.t. the recurrent-side bias
    """

    d_table: np.ndarray
    dh0: np.ndarray
    dW_h: np.ndarray
    db_x: np.ndarray
    db_h: np.ndarray


class GRULookupCache(InputsRecord):
    """What ``gru_backward_lookup`` needs from ``gru_forward_lookup``; treat it as opaque.

      table     (V, 3H)       the looked-up rows (referenced, not copied)
      ids       (T*B,) intc   step t of sequence b read row ids[t*B + b] (referenced
                              when the caller's ids were intc and contiguous, else a copy)
      W_h                     the recurrent weights (referenced, not copied)
      gates, h_states, lengths   as in ``GRUCache``
    The compiled kernels alone run lookups, so there is no ``backend`` field.
    """

    __slots__ = ("table", "ids", "W_h", "gates", "h_states", "lengths", "num_threads")
    INPUT_NAMES = ("table", "ids", "W_h")

    def __init__(self, table, ids, W_h, gates, h_states, lengths,
                 num_threads: Optional[int]):
        self.table, self.ids, self.W_h = table, ids, W_h
        self.gates, self.h_states = gates, h_states
        self.lengths, self.num_threads = lengths, num_threads
        self._record_inputs()

    def _inputs(self):
        return (self.table, self.ids, self.W_h)

    @property
    def dtype(self):
        return self.table.dtype

    def __repr__(self):
        T, B, G = self.gates.shape
        return (f"GRULookupCache(T={T}, B={B}, V={self.table.shape[0]}, H={G // 4}, "
                f"dtype={self.table.dtype}, "
                f"lengths={'yes' if self.lengths is not None else 'no'})")

"""The public LSTM functions: validate, pick a backend, run.

Both backends share one cache layout (``LSTMCache``), so ``lstm_backward`` runs with
the backend that made the cache. ``lstm_forward_lookup`` / ``lstm_backward_lookup`` run
the same recursion on inputs given as ids into a table of projected inputs (compiled
kernels only; cache ``LSTMLookupCache``).
"""
import numpy as np

from . import _backend, reference
from ._buffers import aligned_empty as _empty, backward_chunk_steps as _backward_chunk_steps
from ._containers import LSTMCache, LSTMGrads, LSTMLookupCache, LSTMLookupGrads
from ._schedule import (backward_pairable, forward_pairable, own_backward_gemm,
                        plan_for as _plan_for, run_pair, timed_kernel as _timed_kernel)
from ._threads import blas_threads
from ._validation import (validate_lstm_backward, validate_lstm_backward_lookup,
                          validate_lstm_forward, validate_lstm_forward_lookup)

__all__ = ["lstm_forward", "lstm_backward", "LSTMGrads", "LSTMCache",
           "lstm_forward_lookup", "lstm_backward_lookup", "LSTMLookupGrads",
           "LSTMLookupCache", "lookup_available"]


def _forward_buffers(T, B, H, dtype, args):
    """What both forward entry points hand their kernel: gates (T, B, 4H), h_states and
    c_states (T+1, B, H) with index 0 set to ``args.h0`` / ``args.c0`` (None: zeros),
    hs (T, B, H), the thread plan and its packed weights (or None)."""
    gates = _empty((T, B, 4 * H), dtype)
    h_states = _empty((T + 1, B, H), dtype)
    c_states = _empty((T + 1, B, H), dtype)
    h_states[0] = 0 if args.h0 is None else args.h0
    c_states[0] = 0 if args.c0 is None else args.c0
    hs = _empty((T, B, H), dtype)
    plan = _plan_for(B, H, args.num_threads)
    return gates, h_states, c_states, hs, plan, plan.packed_weights(T, H, dtype)


def _backward_state(cache, B, H, dtype, dh_n, dc_n):
    """What both backward entry points hand their kernel besides the gradients' buffers:
    dh and dc (in: dh_n / dc_n, None: zeros; out: dh0 / dc0), the (B, H) scratch that
    lengths need (without lengths the kernel takes dh itself), the thread plan and
    whether the step products run on fastlstm's own kernel."""
    dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    dh_scratch = _empty((B, H), dtype) if cache.lengths is not None else dh
    plan = _plan_for(B, H, cache.num_threads, backward=True)
    # The backward's kernel packs W_h^T itself (when the call is long enough to repay
    # it: _lstm.set_backward_pack_min_step_rows), so there is no buffer to hand it.
    return dh, dc, dh_scratch, plan, own_backward_gemm(dtype, plan.rows_per_thread)


def lstm_forward(x, W_x, W_h, b, h0=None, c0=None, *, lengths=None, backend="auto",
                 num_threads=None):
    """Run an LSTM over a time-major batch (gate order i, f, g, o, as PyTorch).

    Parameters
    ----------
    x : ndarray (T, B, D), float32 or float64
    W_x : (D, 4H), W_h : (H, 4H), b : (4H,)
        Fused weights and bias, same dtype as ``x``.
    h0, c0 : (B, H) or None
        Initial states (None: zeros).
    lengths : (B,) ints in [0, T], or None
        Sequence b runs for ``lengths[b]`` steps; after that its state is carried
        unchanged and ``hs[t, b]`` is 0 (PyTorch packed-sequence semantics).
    backend : "auto" | "cython" | "numpy"
        "auto" and "cython" run the compiled kernels, "numpy" the reference.
    num_threads : int >= 1 or None
        Threads for the compiled kernels (None: every usable core). Results do not
        depend on it beyond float rounding.

    Returns
    -------
    hs : (T, B, H)
    (h_n, c_n) : (B, H) each, every sequence's state after its own last step
    cache : LSTMCache, for ``lstm_backward``. It references ``x``, ``W_x`` and ``W_h``
        (``b``, ``h0`` and ``c0`` are copied): changing them before the backward pass is
        an error, which ``lstm_backward`` reports (``InputModifiedError``) from a sample
        of each array, or from all of it under ``fastlstm.set_debug_checks(True)``.
    """
    args = validate_lstm_forward(x, W_x, W_h, b, h0, c0, lengths, backend, num_threads)
    if not _backend.use_compiled(args.backend):
        return _reference_forward(args)
    call = _ForwardCall(args)
    with blas_threads(1):
        _timed_kernel(call.plan, call.key, _backend.lstm_kernels.lstm_forward_kernel,
                      *call.arguments)
    return call.result()


def _reference_forward(args):
    return reference.lstm_forward(args.x, args.W_x, args.W_h, args.b, args.h0, args.c0,
                                  lengths=args.lengths, num_threads=args.num_threads)


class _ForwardCall:
    """One compiled forward call: its buffers, plan and kernel arguments; ``result()``
    once the kernel ran."""

    def __init__(self, args):
        x, W_x, W_h = args.x, args.W_x, args.W_h
        T, B, D = x.shape
        H = W_h.shape[0]
        gates, h_states, c_states, hs, plan, packed = _forward_buffers(T, B, H, x.dtype,
                                                                       args)
        self.args, self.plan, self.key = args, plan, ("forward", T, B, D, H, x.dtype.char)
        self.arguments = (x, W_x, W_h, args.b, gates, h_states, c_states, hs, args.lengths,
                          packed, plan.split_units, plan.n_threads)

    def result(self):
        args = self.args
        _, _, _, _, gates, h_states, c_states, hs = self.arguments[:8]
        cache = LSTMCache(args.x, args.W_x, args.W_h, gates, h_states, c_states,
                          args.lengths, args.num_threads, "cython")
        return hs, (h_states[-1].copy(), c_states[-1].copy()), cache


def lstm_forward_pair(first, second):
    """Two ``lstm_forward`` calls at once, one thread each, in one parallel region: the
    two directions of a bidirectional layer. ``first``, ``second``: dicts of every
    argument of ``lstm_forward`` (x, W_x, W_h, b, h0, c0, lengths, backend,
    num_threads=1). Returns the two results. Calls that cannot pair (the NumPy backend,
    other thread counts, different sizes or dtypes) run one after the other."""
    a, b = validate_lstm_forward(**first), validate_lstm_forward(**second)
    if not forward_pairable(a, b, _backend.use_compiled):
        return lstm_forward(**first), lstm_forward(**second)
    calls = [_ForwardCall(a), _ForwardCall(b)]
    kernels = _backend.lstm_kernels
    run_pair(calls[0].key, kernels.lstm_forward_pair_kernel, kernels.lstm_forward_kernel,
             calls[0].arguments, calls[1].arguments)
    return calls[0].result(), calls[1].result()


def lstm_backward(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstm_forward``.

    Parameters
    ----------
    dhs : (T, B, H) or None
        Gradient of the loss w.r.t. ``hs``; None means zeros (many-to-one models).
    cache : LSTMCache from ``lstm_forward``; the backward runs on the same backend.
    dh_n, dc_n : (B, H) or None
        Gradients w.r.t. ``h_n`` and ``c_n`` (None: zeros).

    Returns
    -------
    LSTMGrads(dx (T,B,D), dh0 (B,H), dc0 (B,H), dW_x (D,4H), dW_h (H,4H), db (4H,)),
    all of the forward dtype.

    Raises
    ------
    InputModifiedError (a ValueError) naming ``x``, ``W_x`` or ``W_h`` if it changed in
    place since the forward pass.
    """
    dhs, dh_n, dc_n = validate_lstm_backward(dhs, cache, dh_n, dc_n)
    if not _backend.use_compiled_for(cache):
        return reference.lstm_backward(dhs, cache, dh_n, dc_n)
    call = _BackwardCall(dhs, cache, dh_n, dc_n)
    with blas_threads(1):
        _timed_kernel(call.plan, call.key, _backend.lstm_kernels.lstm_backward_kernel,
                      *call.arguments)
    return call.result()


class _BackwardCall:
    """One compiled backward call: its buffers, plan and kernel arguments; ``result()``
    once the kernel ran."""

    def __init__(self, dhs, cache, dh_n, dc_n):
        T, B, D, H = cache.sizes
        dtype = cache.dtype
        dh, dc, dh_scratch, plan, small_m_gemm = _backward_state(cache, B, H, dtype, dh_n,
                                                                 dc_n)
        chunk_T = _backward_chunk_steps(T, B)
        self.plan, self.key = plan, ("backward", T, B, D, H, dtype.char)
        self.arguments = (cache.x, cache.W_x, cache.W_h, cache.gates, cache.h_states,
                          cache.c_states, dhs, cache.lengths, dh, dc, dh_scratch,
                          _empty((chunk_T, B, 4 * H), dtype), _empty((T, B, D), dtype),
                          _empty((D, 4 * H), dtype), _empty((H, 4 * H), dtype),
                          np.zeros(4 * H, np.float64), small_m_gemm, plan.split_units,
                          plan.n_threads)

    def result(self):
        dh, dc, _, _, dx, dW_x, dW_h, db_acc = self.arguments[8:16]
        return LSTMGrads(dx, dh, dc, dW_x, dW_h, db_acc.astype(dW_h.dtype))


def lstm_backward_pair(first, second):
    """Two ``lstm_backward`` calls at once, one thread each (see ``lstm_forward_pair``):
    ``first``, ``second`` are ``(dhs, cache, dh_n, dc_n)``. Returns the two LSTMGrads."""
    checked = [validate_lstm_backward(*call) for call in (first, second)]
    caches = (first[1], second[1])
    if not backward_pairable(*caches, _backend.use_compiled_for):
        return tuple(lstm_backward(*call) for call in (first, second))
    calls = [_BackwardCall(dhs, cache, dh_n, dc_n)
             for (dhs, dh_n, dc_n), cache in zip(checked, caches)]
    kernels = _backend.lstm_kernels
    run_pair(calls[0].key, kernels.lstm_backward_pair_kernel, kernels.lstm_backward_kernel,
             calls[0].arguments, calls[1].arguments)
    return tuple(c.result() for c in calls)



def lookup_available(dtype):
    """True when the compiled kernels can run ``lstm_forward_lookup`` for ``dtype``."""
    return (_backend.compiled_available() and _backend.rnn_kernels is not None
            and np.dtype(dtype) in (np.float32, np.float64))


def lstm_forward_lookup(ids, table, W_h, b, h0=None, c0=None, *, lengths=None,
                        num_threads=None):
    """``lstm_forward`` for inputs that are rows of a table, with each step's input
    projection looked up instead of multiplied: step t of sequence b uses
    ``table[ids[t, b]]`` where ``lstm_forward`` uses ``x[t, b] @ W_x``.

    For inputs picked by ids from a table E (an embedding, or one-hot vectors) the
    projection ``E[ids] @ W_x`` equals ``(E @ W_x)[ids]``: with few distinct ids this
    skips the (T*B, D) x (D, 4H) product here and two like it in the backward. One-hot
    inputs look up ``table = W_x`` itself. The compiled kernels run it
    (``lookup_available``); ``nn.LSTM`` takes ids and picks this path where it pays.

    Parameters
    ----------
    ids : (T, B) integers in [0, V)
    table : (V, 4H) float32 or float64, rows of projected inputs (gate blocks i, f, g, o);
        its dtype is the call's
    W_h, b, h0, c0, lengths, num_threads : as for ``lstm_forward``

    Returns
    -------
    hs (T, B, H), (h_n, c_n) (B, H) each, and an ``LSTMLookupCache`` for
    ``lstm_backward_lookup``. The cache references ``table``, ``W_h`` and (when they are
    intc and contiguous) ``ids``: changing them before the backward pass is an
    ``InputModifiedError`` there, as for ``lstm_forward``.
    """
    args = validate_lstm_forward_lookup(ids, table, W_h, b, h0, c0, lengths, num_threads)
    table = args.table
    dtype = table.dtype
    if not lookup_available(dtype):
        raise ImportError(f"lstm_forward_lookup needs the compiled extensions: "
                          f"{_backend.IMPORT_ERROR}")
    T, B = args.T, args.B
    H = args.W_h.shape[0]
    gates, h_states, c_states, hs, plan, packed = _forward_buffers(T, B, H, dtype, args)
    with blas_threads(1):
        _timed_kernel(plan, ("forward-lookup", T, B, H, dtype.char),
                      _backend.lstm_kernels.lstm_forward_lookup_kernel, args.ids, table,
                      args.W_h, args.b, gates, h_states, c_states, hs, args.lengths, packed,
                      plan.split_units, plan.n_threads)
    cache = LSTMLookupCache(table, args.ids, args.W_h, gates, h_states, c_states,
                            args.lengths, args.num_threads)
    return hs, (h_states[T].copy(), c_states[T].copy()), cache


def lstm_backward_lookup(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstm_forward_lookup``.

    dhs (T, B, H) or None, dh_n / dc_n (B, H) or None, as for ``lstm_backward``.

    Returns
    -------
    LSTMLookupGrads(d_table (V, 4H), dh0 (B, H), dc0 (B, H), dW_h (H, 4H), db (4H,)):
    ``d_table[v]`` sums the gate-input gradients of the steps whose id is v.

    Raises
    ------
    InputModifiedError (a ValueError) naming ``table``, ``ids`` or ``W_h`` if it changed
    in place since the forward pass.
    """
    dhs, dh_n, dc_n = validate_lstm_backward_lookup(dhs, cache, dh_n, dc_n)
    T, B, G = cache.gates.shape
    H = G // 4
    dtype = cache.dtype
    dh, dc, dh_scratch, plan, small_m_gemm = _backward_state(cache, B, H, dtype, dh_n, dc_n)
    d_gates = _empty((_backward_chunk_steps(T, B), B, G), dtype)
    d_table = np.zeros(cache.table.shape, dtype)
    dW_h = _empty((H, G), dtype)
    db_acc = np.zeros(G, np.float64)
    with blas_threads(1):
        _timed_kernel(plan, ("backward-lookup", T, B, H, dtype.char),
                      _backend.lstm_kernels.lstm_backward_lookup_kernel, cache.ids,
                      cache.table, cache.W_h, cache.gates, cache.h_states, cache.c_states,
                      dhs, cache.lengths, dh, dc, dh_scratch, d_gates, d_table, dW_h, db_acc,
                      small_m_gemm, plan.split_units, plan.n_threads)
    return LSTMLookupGrads(d_table, dh, dc, dW_h, db_acc.astype(dtype))

"""The public vanilla-RNN functions: validate, pick a backend, run.

``h_t = act(x_t W_x + h_{t-1} W_h + b)``, act = tanh (default) or relu; the reference
(``fastlstm.reference.rnn_forward``) states the semantics, including truncated BPTT.
"""
import numpy as np

from . import _backend, reference
from ._buffers import aligned_empty, backward_chunk_steps
from ._containers import RNNCache, RNNGrads
from ._schedule import (backward_pairable, forward_pairable, own_backward_gemm,
                        own_step_gemm, run_pair)
from ._threads import blas_threads, resolve_num_threads
from ._validation import validate_rnn_backward, validate_rnn_forward

__all__ = ["rnn_forward", "rnn_backward", "RNNGrads", "RNNCache"]


def _threads_for(num_threads, B):
    """Threads for a batch of B: the kernels share rows out, so at most one a row."""
    return max(1, min(resolve_num_threads(num_threads), B))


def rnn_forward(x, W_x, W_h, b, h0=None, *, nonlinearity="tanh", lengths=None,
                backend="auto", num_threads=None):
    """Run a vanilla RNN over a time-major batch.

    Parameters
    ----------
    x : (T, B, D) float32 or float64
    W_x : (D, H), W_h : (H, H), b : (H,)  same dtype as ``x``
    h0 : (B, H) or None (zeros)
    nonlinearity : "tanh" or "relu"
    lengths : (B,) ints in [0, T] or None; past its length a sequence's state is carried
        unchanged and ``hs[t, b] = 0`` (PyTorch packed-sequence semantics)
    backend : "auto" | "cython" | "numpy";  num_threads : int >= 1 or None (all cores)

    Returns
    -------
    hs : (T, B, H), h_n : (B, H) (each sequence's state after its own last step),
    cache : RNNCache for ``rnn_backward``; it references ``x``, ``W_x`` and ``W_h``
        (``b`` and ``h0`` are copied), which must not change before the backward pass
        (``rnn_backward`` raises ``InputModifiedError`` if they did)
    """
    args = validate_rnn_forward(x, W_x, W_h, b, h0, nonlinearity, lengths, backend,
                                num_threads)
    if not _backend.use_compiled(args.backend):
        return _reference_forward(args)
    call = _ForwardCall(args, _threads_for(args.num_threads, args.x.shape[1]))
    with blas_threads(1):
        _backend.rnn_kernels.rnn_forward_kernel(*call.arguments)
    return call.result()


def _reference_forward(args):
    return reference.rnn_forward(args.x, args.W_x, args.W_h, args.b, args.h0,
                                 nonlinearity=args.nonlinearity, lengths=args.lengths,
                                 num_threads=args.num_threads)


class _ForwardCall:
    """One compiled forward call on ``n_threads``: its buffers and kernel arguments;
    ``result()`` once the kernel ran."""

    def __init__(self, args, n_threads):
        x = args.x
        T, B, _ = x.shape
        H = args.W_h.shape[0]
        dtype = x.dtype
        h_states = aligned_empty((T + 1, B, H), dtype)
        h_states[0] = 0 if args.h0 is None else args.h0
        packed = None
        if own_step_gemm(dtype, T * -(-B // n_threads)):
            packed = aligned_empty((_backend.rnn_kernels.packed_size(H),), np.float32)
        self.args = args
        self.arguments = (x, args.W_x, args.W_h, args.b, h_states,
                          aligned_empty((T, B, H), dtype), args.lengths, packed,
                          args.nonlinearity == "relu", n_threads)

    def result(self):
        args = self.args
        h_states, hs = self.arguments[4:6]
        cache = RNNCache(args.x, args.W_x, args.W_h, h_states, args.lengths,
                         args.nonlinearity, args.num_threads, "cython")
        return hs, h_states[-1].copy(), cache


def rnn_forward_pair(first, second):
    """Two ``rnn_forward`` calls at once, one thread each, in one parallel region: the
    two directions of a bidirectional layer. ``first``, ``second``: dicts of every
    argument of ``rnn_forward`` (x, W_x, W_h, b, h0, nonlinearity, lengths, backend,
    num_threads=1). Returns the two results. Calls that cannot pair (the NumPy backend,
    other thread counts, different sizes or dtypes) run one after the other."""
    a, b = validate_rnn_forward(**first), validate_rnn_forward(**second)
    if not forward_pairable(a, b, _backend.use_compiled):
        return rnn_forward(**first), rnn_forward(**second)
    calls = [_ForwardCall(a, 1), _ForwardCall(b, 1)]
    kernels = _backend.rnn_kernels
    run_pair(("rnn forward",) + a.x.shape + (a.W_h.shape[0], a.x.dtype.char),
             kernels.rnn_forward_pair_kernel, kernels.rnn_forward_kernel,
             calls[0].arguments, calls[1].arguments)
    return calls[0].result(), calls[1].result()


def rnn_backward(dhs, cache, dh_n=None, bptt_truncate=None):
    """Backpropagate through ``rnn_forward``, in full or truncated.

    Parameters
    ----------
    dhs : (T, B, H) or None (zeros);  cache : RNNCache from ``rnn_forward``
    dh_n : (B, H) or None  gradient w.r.t. ``h_n``, entering at each sequence's last step
    bptt_truncate : None (full BPTT) or int k >= 0: the loss term at step t sends gradient
        to steps t, t-1, ..., t-k and no further (see ``fastlstm.reference.rnn_backward``
        for the worked example); any k >= T-1 is full BPTT.

    Returns
    -------
    RNNGrads(dx (T,B,D), dh0 (B,H), dW_x (D,H), dW_h (H,H), db (H,))

    Raises
    ------
    InputModifiedError (a ValueError) naming ``x``, ``W_x`` or ``W_h`` if it changed in
    place since the forward pass.
    """
    dhs, dh_n, k = validate_rnn_backward(dhs, cache, dh_n, bptt_truncate)
    if not _backend.use_compiled_for(cache):
        return reference.rnn_backward(dhs, cache, dh_n, k)
    call = _BackwardCall(dhs, cache, dh_n, k)
    with blas_threads(1):
        _backend.rnn_kernels.rnn_backward_kernel(*call.arguments)
    return call.result()


class _BackwardCall:
    """One compiled backward call: its buffers and kernel arguments; ``result()`` once
    the kernel ran."""

    def __init__(self, dhs, cache, dh_n, k):
        T, B, D, H = cache.sizes
        dtype = cache.dtype
        n_threads = _threads_for(cache.num_threads, B)
        truncated = k is not None and k < T - 1
        if truncated:
            # dh_n enters at each row's last step inside the kernel; rows of length 0
            # have none, and their h_n is h0 itself.
            dh = np.zeros((B, H), dtype)
            if dh_n is not None and cache.lengths is not None:
                empty = cache.lengths == 0
                dh[empty] = dh_n[empty]
        else:
            dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
        chunk_T = backward_chunk_steps(T, B)
        self.arguments = (
            cache.x, cache.W_x, cache.W_h, cache.h_states, dhs,
            dh_n if truncated else None, cache.lengths, dh, aligned_empty((B, H), dtype),
            aligned_empty((chunk_T, B, H), dtype), aligned_empty((T, B, D), dtype),
            aligned_empty((D, H), dtype), aligned_empty((H, H), dtype),
            np.zeros(H, np.float64), cache.nonlinearity == "relu",
            k if truncated else -1, own_backward_gemm(dtype, -(-B // n_threads)),
            n_threads)

    def result(self):
        dh = self.arguments[7]
        dx, dW_x, dW_h, db_acc = self.arguments[10:14]
        return RNNGrads(dx, dh, dW_x, dW_h, db_acc.astype(dW_h.dtype))


def rnn_backward_pair(first, second):
    """Two ``rnn_backward`` calls at once, one thread each (see ``rnn_forward_pair``):
    ``first``, ``second`` are ``(dhs, cache, dh_n, bptt_truncate)``. Returns the two
    RNNGrads."""
    checked = [validate_rnn_backward(*call) for call in (first, second)]
    caches = (first[1], second[1])
    T = caches[0].sizes[0]
    truncation = [k if k is not None and k < T - 1 else -1 for _, _, k in checked]
    if not (backward_pairable(*caches, _backend.use_compiled_for)
            and truncation[0] == truncation[1]):
        return rnn_backward(*first), rnn_backward(*second)
    calls = [_BackwardCall(dhs, cache, dh_n, k)
             for (dhs, dh_n, k), cache in zip(checked, caches)]
    kernels = _backend.rnn_kernels
    run_pair(("rnn backward",) + caches[0].sizes + (caches[0].dtype.char, truncation[0]),
             kernels.rnn_backward_pair_kernel, kernels.rnn_backward_kernel,
             calls[0].arguments, calls[1].arguments)
    return calls[0].result(), calls[1].result()

"""The public vanilla-RNN functions: validate, pick a backend, run.

``h_t = act(x_t W_x + h_{t-1} W_h + b)``, act = tanh (default) or relu; the reference
(``fastlstm.reference.rnn_forward``) states the semantics, including truncated BPTT.
"""
import numpy as np

from . import _backend, reference
from ._buffers import aligned_empty, backward_chunk_steps
from ._containers import RNNCache, RNNGrads
from ._schedule import own_backward_gemm, own_step_gemm
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
        return reference.rnn_forward(args.x, args.W_x, args.W_h, args.b, args.h0,
                                     nonlinearity=args.nonlinearity, lengths=args.lengths,
                                     num_threads=args.num_threads)
    x, W_x, W_h = args.x, args.W_x, args.W_h
    T, B, _ = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    n_threads = _threads_for(args.num_threads, B)
    h_states = aligned_empty((T + 1, B, H), dtype)
    h_states[0] = 0 if args.h0 is None else args.h0
    hs = aligned_empty((T, B, H), dtype)
    packed = None
    if own_step_gemm(dtype, T * -(-B // n_threads)):
        packed = aligned_empty((_backend.rnn_kernels.packed_size(H),), np.float32)
    with blas_threads(1):
        _backend.rnn_kernels.rnn_forward_kernel(x, W_x, W_h, args.b, h_states, hs,
                                                args.lengths, packed,
                                                args.nonlinearity == "relu", n_threads)
    cache = RNNCache(x, W_x, W_h, h_states, args.lengths, args.nonlinearity,
                     args.num_threads, "cython")
    return hs, h_states[T].copy(), cache


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
    x, W_x, W_h = cache.x, cache.W_x, cache.W_h
    T, B, D, H = cache.sizes
    dtype = cache.dtype
    n_threads = _threads_for(cache.num_threads, B)
    truncated = k is not None and k < T - 1
    if truncated:
        # dh_n enters at each row's last step inside the kernel; rows of length 0 have
        # none, and their h_n is h0 itself.
        dh = np.zeros((B, H), dtype)
        if dh_n is not None and cache.lengths is not None:
            empty = cache.lengths == 0
            dh[empty] = dh_n[empty]
    else:
        dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    dh_scratch = aligned_empty((B, H), dtype)
    chunk_T = backward_chunk_steps(T, B)
    d_pre = aligned_empty((chunk_T, B, H), dtype)
    dx = aligned_empty((T, B, D), dtype)
    dW_x = aligned_empty((D, H), dtype)
    dW_h = aligned_empty((H, H), dtype)
    db_acc = np.zeros(H, np.float64)
    small_m_gemm = own_backward_gemm(dtype, -(-B // n_threads))
    with blas_threads(1):
        _backend.rnn_kernels.rnn_backward_kernel(
            x, W_x, W_h, cache.h_states, dhs, dh_n if truncated else None, cache.lengths,
            dh, dh_scratch, d_pre, dx, dW_x, dW_h, db_acc, cache.nonlinearity == "relu",
            k if truncated else -1, small_m_gemm, n_threads)
    return RNNGrads(dx, dh, dW_x, dW_h, db_acc.astype(dtype))

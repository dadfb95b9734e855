"""The public projected-LSTM functions (LSTMP, torch's ``proj_size``): validate, pick a
backend, run.

    a_t = x_t W_x + h_{t-1} W_h + b;  c_t = f * c_{t-1} + i * g;  m_t = o * tanh(c_t)
    h_t = m_t W_hr

Both backends share one cache layout (``LSTMPCache``), so ``lstmp_backward`` runs with
the backend that made the cache.
"""
import numpy as np

from . import _backend, reference
from ._buffers import aligned_empty, backward_chunk_steps
from ._containers import LSTMPCache, LSTMPGrads
from ._schedule import own_backward_gemm, own_step_gemm
from ._threads import blas_threads, resolve_num_threads
from ._validation import validate_lstmp_backward, validate_lstmp_forward

try:
    from . import _lstmp as _kernels
except ImportError:   # no compiled extensions: _backend reports why when asked
    _kernels = None

__all__ = ["lstmp_forward", "lstmp_backward", "LSTMPGrads", "LSTMPCache"]


def lstmp_forward(x, W_x, W_h, b, W_hr, h0=None, c0=None, *, lengths=None,
                  backend="auto", num_threads=None):
    """Run a projected LSTM over a time-major batch (gate order i, f, g, o, as PyTorch).

    The cell has H units; its output ``m_t = o * tanh(c_t)`` is projected to P values,
    ``h_t = m_t W_hr``, which are both the step's output and the state the next step
    reads (``torch.nn.LSTM(D, H, proj_size=P)`` with ``W_hr = weight_hr_l0.T``).

    Parameters
    ----------
    x : ndarray (T, B, D), float32 or float64
    W_x : (D, 4H), W_h : (P, 4H), b : (4H,), W_hr : (H, P)
        Fused weights, bias and projection, same dtype as ``x``. Any P >= 1.
    h0 : (B, P) or None, c0 : (B, H) or None
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
    hs : (T, B, P)
    (h_n, c_n) : (B, P) and (B, H), every sequence's state after its own last step
    cache : LSTMPCache, for ``lstmp_backward``. It references ``x``, ``W_x``, ``W_h`` and
        ``W_hr`` (``b``, ``h0`` and ``c0`` are copied): changing them before the backward
        pass is an ``InputModifiedError`` there.
    """
    args = validate_lstmp_forward(x, W_x, W_h, b, W_hr, h0, c0, lengths, backend,
                                  num_threads)
    if not _use_kernels(args.backend):
        return reference.lstmp_forward(args.x, args.W_x, args.W_h, args.b, args.W_hr,
                                       args.h0, args.c0, lengths=args.lengths,
                                       num_threads=args.num_threads)
    x, W_x, W_h, W_hr = args.x, args.W_x, args.W_h, args.W_hr
    T, B, _ = x.shape
    H, P = W_hr.shape
    dtype = x.dtype
    n_threads, rows = _threads_for(args.num_threads, B)
    gates = aligned_empty((T, B, 4 * H), dtype)
    h_states = aligned_empty((T + 1, B, P), dtype)
    c_states = aligned_empty((T + 1, B, H), dtype)
    h_states[0] = 0 if args.h0 is None else args.h0
    c_states[0] = 0 if args.c0 is None else args.c0
    m_states = aligned_empty((T, B, H), dtype)
    hs = aligned_empty((T, B, P), dtype)
    packed = None
    # (one row a step: the GEMV reads the weights in place, nothing to pack)
    if rows > 1 and own_step_gemm(dtype, T * rows):
        packed = aligned_empty((_kernels.forward_packed_size(H, P),), np.float32)
    with blas_threads(1):
        _kernels.lstmp_forward_kernel(x, W_x, W_h, args.b, W_hr, gates, h_states, c_states,
                                      m_states, hs, args.lengths, packed, n_threads)
    cache = LSTMPCache(x, W_x, W_h, W_hr, gates, h_states, c_states, m_states,
                       args.lengths, args.num_threads, "cython")
    return hs, (h_states[T].copy(), c_states[T].copy()), cache


def lstmp_backward(dhs, cache, dh_n=None, dc_n=None):
    """Backpropagate through ``lstmp_forward``.

    Parameters
    ----------
    dhs : (T, B, P) or None
        Gradient of the loss w.r.t. ``hs``; None means zeros (many-to-one models).
    cache : LSTMPCache from ``lstmp_forward``; the backward runs on the same backend.
    dh_n : (B, P) or None, dc_n : (B, H) or None
        Gradients w.r.t. ``h_n`` and ``c_n`` (None: zeros).

    Returns
    -------
    LSTMPGrads(dx (T,B,D), dh0 (B,P), dc0 (B,H), dW_x (D,4H), dW_h (P,4H), db (4H,),
    dW_hr (H,P)), all of the forward dtype.

    Raises
    ------
    InputModifiedError (a ValueError) naming ``x``, ``W_x``, ``W_h`` or ``W_hr`` if it
    changed in place since the forward pass.
    """
    dhs, dh_n, dc_n = validate_lstmp_backward(dhs, cache, dh_n, dc_n)
    if cache.backend == "numpy" or not _use_kernels("cython"):
        return reference.lstmp_backward(dhs, cache, dh_n, dc_n)
    T, B, D, H, P = cache.sizes
    dtype = cache.dtype
    n_threads, rows = _threads_for(cache.num_threads, B)
    dh = np.zeros((B, P), dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    dh_scratch = aligned_empty((B, P), dtype) if cache.lengths is not None else dh
    dm = aligned_empty((B, H), dtype)
    chunk_T = backward_chunk_steps(T, B)
    d_gates = aligned_empty((chunk_T, B, 4 * H), dtype)
    d_proj = aligned_empty((chunk_T, B, P), dtype)
    dx = aligned_empty((T, B, D), dtype)
    dW_x = aligned_empty((D, 4 * H), dtype)
    dW_h = aligned_empty((P, 4 * H), dtype)
    dW_hr = aligned_empty((H, P), dtype)
    db_acc = np.zeros(4 * H, np.float64)
    packed = None
    if rows > 1 and own_step_gemm(dtype, T * rows):
        packed = aligned_empty((_kernels.backward_packed_size(H, P),), np.float32)
    with blas_threads(1):
        _kernels.lstmp_backward_kernel(
            cache.x, cache.W_x, cache.W_h, cache.W_hr, cache.gates, cache.h_states,
            cache.c_states, cache.m_states, dhs, cache.lengths, dh, dc, dh_scratch, dm,
            d_gates, d_proj, dx, dW_x, dW_h, dW_hr, db_acc, packed,
            own_backward_gemm(dtype, rows), n_threads)
    return LSTMPGrads(dx, dh, dc, dW_x, dW_h, db_acc.astype(dtype), dW_hr)


def _use_kernels(backend):
    """True to run the compiled kernels for ``backend`` (validated): as
    ``_backend.use_compiled``, which also needs this module's extension."""
    if not _backend.use_compiled(backend):
        return False
    if _kernels is None:
        if backend == "cython":
            raise ImportError("backend='cython' needs the compiled extension "
                              "fastlstm._lstmp, which is not built for this Python; "
                              "rebuild with 'python setup.py build_ext --inplace'")
        return False
    return True


def _threads_for(num_threads, B):
    """Threads for a batch of B and the most rows one gets: the kernels share the batch
    out, so at most one thread a row."""
    n = max(1, min(resolve_num_threads(num_threads), B))
    return n, -(-B // n)

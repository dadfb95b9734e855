"""The public projected-LSTM functions (LSTMP, torch's ``proj_size``): validate, pick a
backend, run.

    a_t = x_t W_x + h_{t-1} W_h + b;  c_t = f * c_{t-1} + i * g;  m_t = o * tanh(c_t)
    h_t = m_t W_hr

Both backends share one cache layout (``LSTMPCache``), so ``lstmp_backward`` runs with
the backend that made the cache.
"""
from . import _backend, reference
from ._containers import LSTMPCache, LSTMPGrads
from ._validation import validate_lstmp_backward, validate_lstmp_forward

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
    _backend.use_compiled(args.backend)   # (only for its errors and warning: see below)
    return reference.lstmp_forward(args.x, args.W_x, args.W_h, args.b, args.W_hr, args.h0,
                                   args.c0, lengths=args.lengths,
                                   num_threads=args.num_threads)


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
    return reference.lstmp_backward(dhs, cache, dh_n, dc_n)

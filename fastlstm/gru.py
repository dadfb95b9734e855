"""The public GRU functions: validate, pick a backend, run.

PyTorch's GRU, gate blocks r, z, n of H columns each (see ``fastlstm.reference`` and
docs/design.md)::

    r = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
    z = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
    n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h
"""
from . import reference
from ._containers import GRUCache, GRUGrads
from ._validation import validate_gru_backward, validate_gru_forward

__all__ = ["gru_forward", "gru_backward", "GRUGrads", "GRUCache"]


def gru_forward(x, W_x, W_h, b_x, b_h, h0=None, *, lengths=None, backend="auto",
                num_threads=None):
    """Run a GRU over a time-major batch.

    Parameters
    ----------
    x : (T, B, D) float32 or float64
    W_x : (D, 3H), W_h : (H, 3H)  same dtype as ``x``; gate blocks r, z, n (from a
        ``torch.nn.GRU``: ``weight_ih_l0.T``, ``weight_hh_l0.T``)
    b_x, b_h : (3H,)  the input-side and recurrent-side biases (torch's ``bias_ih_l0``,
        ``bias_hh_l0``), kept apart because ``b_hn`` is scaled by the reset gate
    h0 : (B, H) or None (zeros)
    lengths : (B,) ints in [0, T] or None; past its length a sequence's state is carried
        unchanged and ``hs[t, b] = 0`` (PyTorch packed-sequence semantics)
    backend : "auto" | "cython" | "numpy";  num_threads : int >= 1 or None (all cores)

    Returns
    -------
    hs : (T, B, H), h_n : (B, H) (each sequence's state after its own last step),
    cache : GRUCache for ``gru_backward``; it references ``x``, ``W_x`` and ``W_h``
        (``h0`` is copied, the biases are not needed), which must not change before the
        backward pass (``gru_backward`` raises ``InputModifiedError`` if they did)
    """
    args = validate_gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths, backend, num_threads)
    return reference.gru_forward(args.x, args.W_x, args.W_h, args.b_x, args.b_h, args.h0,
                                 lengths=args.lengths, num_threads=args.num_threads)


def gru_backward(dhs, cache, dh_n=None):
    """Backpropagate through ``gru_forward``.

    Parameters
    ----------
    dhs : (T, B, H) or None (zeros);  cache : GRUCache from ``gru_forward``
    dh_n : (B, H) or None  gradient w.r.t. ``h_n``, entering at each sequence's last step

    Returns
    -------
    GRUGrads(dx (T,B,D), dh0 (B,H), dW_x (D,3H), dW_h (H,3H), db_x (3H,), db_h (3H,)),
    in the dtype of the forward inputs

    Raises
    ------
    InputModifiedError (a ValueError) naming ``x``, ``W_x`` or ``W_h`` if it changed in
    place since the forward pass.
    """
    dhs, dh_n = validate_gru_backward(dhs, cache, dh_n)
    return reference.gru_backward(dhs, cache, dh_n)

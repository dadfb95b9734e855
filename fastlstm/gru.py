"""The public GRU functions: validate, pick a backend, run.

PyTorch's GRU, gate blocks r, z, n of H columns each (see ``fastlstm.reference`` and
docs/design.md)::

    r = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
    z = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
    n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

Both backends share one cache layout (``GRUCache``), so ``gru_backward`` runs with the
backend that made the cache. The compiled kernels (fastlstm._gru) share a call out as
the LSTM's do (``fastlstm._schedule``: batch slices, or hidden units for small batches
of wide layers; fastlstm's own float32 step products where they pay).
``gru_forward_lookup`` / ``gru_backward_lookup`` run the same recursion on inputs given
as ids into a table of projected inputs (compiled kernels only; ``GRULookupCache``).
"""
import warnings

import numpy as np

from . import _backend, reference
from ._buffers import aligned_empty as _empty, backward_chunk_steps as _backward_chunk_steps
from ._containers import GRUCache, GRUGrads, GRULookupCache, GRULookupGrads
from ._schedule import (backward_pairable, forward_pairable, own_backward_gemm,
                        own_step_gemm, plan_for as _plan_for, run_pair,
                        timed_kernel as _timed_kernel)
from ._threads import blas_threads
from ._validation import (validate_gru_backward, validate_gru_backward_lookup,
                          validate_gru_forward, validate_gru_forward_lookup)

try:
    from . import _gru as _kernels
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only in broken installs
    _kernels = None
    _IMPORT_ERROR = exc
_warned = False

# The backward's chunks of d_gx and d_gh: the shared heuristic (``backward_chunk_steps``,
# chunks of 64 to 256 rows), or more steps while each buffer stays within this many
# bytes. Every chunk costs two barriers between the threads; a smaller problem in fewer
# chunks keeps its buffers in cache all the same, and meets less often.
CHUNK_BUFFER_BYTES = 1 << 20


def _chunk_steps(T, B, H, dtype):
    """Steps per backward chunk."""
    by_bytes = CHUNK_BUFFER_BYTES // (B * 3 * H * np.dtype(dtype).itemsize)
    return min(T, max(_backward_chunk_steps(T, B), by_bytes))


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
    if not _use_compiled(args.backend):
        return reference.gru_forward(args.x, args.W_x, args.W_h, args.b_x, args.b_h,
                                     args.h0, lengths=args.lengths,
                                     num_threads=args.num_threads)
    call = _ForwardCall(args)
    with blas_threads(1):
        _timed_kernel(call.plan, call.key, _kernels.gru_forward_kernel, *call.arguments)
    return call.result()


class _ForwardCall:
    """One compiled forward call: its buffers, plan and kernel arguments; ``result()``
    once the kernel ran."""

    def __init__(self, args):
        x = args.x
        T, B, D = x.shape
        H = args.W_h.shape[0]
        dtype = x.dtype
        h_states = _empty((T + 1, B, H), dtype)
        h_states[0] = 0 if args.h0 is None else args.h0
        plan = _plan_for(B, H, args.num_threads)
        packed = None
        if plan.rows_per_thread > 1 and own_step_gemm(dtype, T * plan.rows_per_thread):
            packed = _empty((_kernels.packed_size(H, plan.split_units),), np.float32)
        self.args, self.plan, self.key = args, plan, ("gru-forward", T, B, D, H, dtype.char)
        self.arguments = (x, args.W_x, args.W_h, args.b_x, args.b_h,
                          _empty((T, B, 4 * H), dtype), h_states, _empty((T, B, H), dtype),
                          args.lengths, packed, plan.split_units, plan.n_threads)

    def result(self):
        args = self.args
        gates, h_states, hs = self.arguments[5:8]
        cache = GRUCache(args.x, args.W_x, args.W_h, gates, h_states, args.lengths,
                         args.num_threads, "cython")
        return hs, h_states[-1].copy(), cache


def gru_forward_pair(first, second):
    """Two ``gru_forward`` calls at once, one thread each, in one parallel region: the
    two directions of a bidirectional layer. ``first``, ``second``: dicts of every
    argument of ``gru_forward`` (x, W_x, W_h, b_x, b_h, h0, lengths, backend,
    num_threads=1). Returns the two results. Calls that cannot pair (the NumPy backend,
    other thread counts, different sizes or dtypes) run one after the other."""
    a, b = validate_gru_forward(**first), validate_gru_forward(**second)
    if not forward_pairable(a, b, _use_compiled):
        return gru_forward(**first), gru_forward(**second)
    calls = [_ForwardCall(a), _ForwardCall(b)]
    run_pair(calls[0].key, _kernels.gru_forward_pair_kernel, _kernels.gru_forward_kernel,
             calls[0].arguments, calls[1].arguments)
    return calls[0].result(), calls[1].result()


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
    if not _compiled_for(cache):
        return reference.gru_backward(dhs, cache, dh_n)
    call = _BackwardCall(dhs, cache, dh_n)
    with blas_threads(1):
        _timed_kernel(call.plan, call.key, _kernels.gru_backward_kernel, *call.arguments)
    return call.result()


class _BackwardCall:
    """One compiled backward call: its buffers, plan and kernel arguments; ``result()``
    once the kernel ran."""

    def __init__(self, dhs, cache, dh_n):
        T, B, D, H = cache.sizes
        dtype = cache.dtype
        dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
        plan = _plan_for(B, H, cache.num_threads, backward=True)
        chunk_T = _chunk_steps(T, B, H, dtype)
        self.plan, self.key = plan, ("gru-backward", T, B, D, H, dtype.char)
        self.arguments = (
            cache.x, cache.W_x, cache.W_h, cache.gates, cache.h_states, dhs, cache.lengths,
            dh, _empty((B, H), dtype), _empty((chunk_T, B, 3 * H), dtype),
            _empty((chunk_T, B, 3 * H), dtype), _empty((T, B, D), dtype),
            _empty((D, 3 * H), dtype), _empty((H, 3 * H), dtype),
            np.zeros(3 * H, np.float64), np.zeros(3 * H, np.float64),
            own_backward_gemm(dtype, plan.rows_per_thread), plan.split_units,
            plan.n_threads)

    def result(self):
        dh = self.arguments[7]
        dx, dW_x, dW_h, db_x, db_h = self.arguments[11:16]
        dtype = dW_h.dtype
        return GRUGrads(dx, dh, dW_x, dW_h, db_x.astype(dtype), db_h.astype(dtype))


def gru_backward_pair(first, second):
    """Two ``gru_backward`` calls at once, one thread each (see ``gru_forward_pair``):
    ``first``, ``second`` are ``(dhs, cache, dh_n)``. Returns the two GRUGrads."""
    checked = [validate_gru_backward(*call) for call in (first, second)]
    caches = (first[1], second[1])
    if not backward_pairable(*caches, _compiled_for):
        return gru_backward(*first), gru_backward(*second)
    calls = [_BackwardCall(dhs, cache, dh_n) for (dhs, dh_n), cache in zip(checked, caches)]
    run_pair(calls[0].key, _kernels.gru_backward_pair_kernel, _kernels.gru_backward_kernel,
             calls[0].arguments, calls[1].arguments)
    return calls[0].result(), calls[1].result()


def _use_compiled(backend):
    """True to run the compiled kernels for ``backend`` (validated): as for the other
    cells (``_backend.use_compiled``), with the GRU's own extension required too."""
    global _warned
    if not _backend.use_compiled(backend):
        return False
    if _kernels is not None:
        return True
    if backend == "cython":
        raise ImportError(f"backend='cython' needs the compiled GRU kernels "
                          f"(fastlstm._gru failed to load: {_IMPORT_ERROR}); build them "
                          f"with 'pip install .' or 'python setup.py build_ext --inplace'")
    if not _warned:
        warnings.warn(f"fastlstm._gru failed to load ({_IMPORT_ERROR}); falling back to "
                      f"the slow NumPy reference", RuntimeWarning, stacklevel=3)
        _warned = True
    return False


def gru_forward_lookup(ids, table, W_h, b_x, b_h, h0=None, *, lengths=None,
                       num_threads=None):
    """``gru_forward`` for inputs that are rows of a table, with each step's input
    projection looked up instead of multiplied: step t of sequence b uses
    ``table[ids[t, b]] + b_x`` where ``gru_forward`` uses ``x[t, b] @ W_x + b_x``.

    For inputs picked by ids from a table E (an embedding, or one-hot vectors) the
    projection ``E[ids] @ W_x`` equals ``(E @ W_x)[ids]``: with few distinct ids this
    skips the (T*B, D) x (D, 3H) product here and two like it in the backward. One-hot
    inputs look up ``table = W_x`` itself. Compiled kernels only.

    Parameters
    ----------
    ids : (T, B) integers in [0, V)
    table : (V, 3H) float32 or float64, rows of projected inputs x W_x (gate blocks
        r, z, n; without b_x); its dtype is the call's
    W_h (H, 3H), b_x, b_h (3H,), h0 (B, H) or None, lengths, num_threads : as for
        ``gru_forward``

    Returns
    -------
    hs (T, B, H), h_n (B, H), and a ``GRULookupCache`` for ``gru_backward_lookup``. The
    cache references ``table``, ``W_h`` and (when they are intc and contiguous) ``ids``:
    changing them before the backward pass is an ``InputModifiedError`` there.
    """
    args = validate_gru_forward_lookup(ids, table, W_h, b_x, b_h, h0, lengths, num_threads)
    table = args.table
    dtype = table.dtype
    _use_compiled("cython")   # ImportError without the kernels: the lookup has no twin
    T, B = args.T, args.B
    H = args.W_h.shape[0]
    gates = _empty((T, B, 4 * H), dtype)
    h_states = _empty((T + 1, B, H), dtype)
    h_states[0] = 0 if args.h0 is None else args.h0
    hs = _empty((T, B, H), dtype)
    plan = _plan_for(B, H, args.num_threads)
    packed = None
    if plan.rows_per_thread > 1 and own_step_gemm(dtype, T * plan.rows_per_thread):
        packed = _empty((_kernels.packed_size(H, plan.split_units),), np.float32)
    with blas_threads(1):
        _timed_kernel(plan, ("gru-forward-lookup", T, B, H, dtype.char),
                      _kernels.gru_forward_lookup_kernel, args.ids, table, args.W_h,
                      args.b_x, args.b_h, gates, h_states, hs, args.lengths, packed,
                      plan.split_units, plan.n_threads)
    cache = GRULookupCache(table, args.ids, args.W_h, gates, h_states, args.lengths,
                           args.num_threads)
    return hs, h_states[T].copy(), cache


def gru_backward_lookup(dhs, cache, dh_n=None):
    """Backpropagate through ``gru_forward_lookup``.

    dhs (T, B, H) or None, dh_n (B, H) or None, as for ``gru_backward``.

    Returns
    -------
    GRULookupGrads(d_table (V, 3H), dh0 (B, H), dW_h (H, 3H), db_x (3H,), db_h (3H,)):
    ``d_table[v]`` sums the input-side pre-activation gradients of the steps whose id
    is v.

    Raises
    ------
    InputModifiedError (a ValueError) naming ``table``, ``ids`` or ``W_h`` if it changed
    in place since the forward pass.
    """
    dhs, dh_n = validate_gru_backward_lookup(dhs, cache, dh_n)
    T, B, G = cache.gates.shape
    H = G // 4
    dtype = cache.dtype
    dh = np.zeros((B, H), dtype) if dh_n is None else dh_n.copy()
    dh_scratch = _empty((B, H), dtype)
    plan = _plan_for(B, H, cache.num_threads, backward=True)
    chunk_T = _chunk_steps(T, B, H, dtype)
    d_gx = _empty((chunk_T, B, 3 * H), dtype)
    d_gh = _empty((chunk_T, B, 3 * H), dtype)
    d_table = np.zeros(cache.table.shape, dtype)
    dW_h = _empty((H, 3 * H), dtype)
    db_x = np.zeros(3 * H, np.float64)
    db_h = np.zeros(3 * H, np.float64)
    with blas_threads(1):
        _timed_kernel(plan, ("gru-backward-lookup", T, B, H, dtype.char),
                      _kernels.gru_backward_lookup_kernel, cache.ids, cache.table,
                      cache.W_h, cache.gates, cache.h_states, dhs, cache.lengths, dh,
                      dh_scratch, d_gx, d_gh, d_table, dW_h, db_x, db_h,
                      own_backward_gemm(dtype, plan.rows_per_thread), plan.split_units,
                      plan.n_threads)
    return GRULookupGrads(d_table, dh, dW_h, db_x.astype(dtype), db_h.astype(dtype))


def _compiled_for(cache):
    """True when the backward of ``cache`` runs the compiled kernels: those of the
    backend that made it."""
    return cache.backend != "numpy" and _use_compiled("cython")


def lookup_available(dtype):
    """True when the compiled kernels can run ``gru_forward_lookup`` for ``dtype``."""
    return (_backend.compiled_available() and _kernels is not None
            and np.dtype(dtype) in (np.float32, np.float64))

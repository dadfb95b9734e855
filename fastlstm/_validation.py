"""Argument checks shared by every backend (docs/design.md, "Errors, never crashes").

Everything a kernel reads is checked here, before any compiled code runs: ranks, shapes,
one floating dtype per call (never converted), lengths, backend and thread count. The
checked arrays come back C-contiguous in native byte order, copied at most once.
"""
from typing import NamedTuple, Optional

import numpy as np

from ._containers import LSTMCache, LSTMLookupCache, LSTMPCache, RNNCache

BACKENDS = ("auto", "cython", "numpy")
NONLINEARITIES = ("tanh", "relu")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# BLAS takes 32-bit ints for sizes and leading dimensions.
_BLAS_INT_MAX = 2**31 - 1


def check_backend(backend):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_num_threads(num_threads):
    """Return ``None`` (all usable cores) or an int >= 1 (at most a C int: the kernels
    take it as one)."""
    if num_threads is None:
        return None
    return check_int("num_threads", num_threads, 1, none_allowed=True)


def _is_int(value):
    """An int or NumPy integer, not a bool."""
    return (isinstance(value, (int, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def check_int(name, value, minimum=1, maximum=_BLAS_INT_MAX, limit_reason="",
              none_allowed=False):
    """``value`` as a Python int in [minimum, maximum]; None too with ``none_allowed``.

    TypeError unless an int (NumPy integers are ints, bools are not), ValueError out of
    range; the message names ``name``. The default maximum is BLAS's 32-bit int, which
    every size the kernels see must fit; ``limit_reason`` says why a smaller one applies.
    """
    if type(value) is int and minimum <= value <= maximum:
        return value   # the common case, first: num_threads is checked on every call
    if none_allowed and value is None:
        return None
    expected = f"{'None or ' if none_allowed else ''}an int >= {minimum}"
    if not _is_int(value):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be {expected} and at most {maximum}"
                         f"{limit_reason or ' (a 32-bit int, as the kernels take it)'}, "
                         f"got {value}")
    return int(value)


def check_probability(name, value):
    """A finite real number in [0, 1) (a dropout probability) as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} "
                        f"{value!r}")
    if not 0 <= value < 1:   # (NaN fails this too)
        raise ValueError(f"{name} must be a number in [0, 1), got {value}")
    return float(value)


def check_choice(name, value, choices):
    """``value``, one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                        f"{type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                         f"{value!r}")
    return str(value)


def check_flag(name, value):
    """``value``, True or False (a NumPy bool too), as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} "
                        f"{value!r}")
    return bool(value)


def check_float_dtype(name, dtype):
    """``dtype`` (np.float32, "float64", np.dtype(...), ...) as np.dtype float32 or
    float64: TypeError for what is not a dtype at all, ValueError for another dtype."""
    try:
        if dtype is None:   # (which NumPy would read as float64)
            raise TypeError
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be float32 or float64, got {type(dtype).__name__} "
                        f"{dtype!r}") from None
    if dt not in _FLOAT_DTYPES or not dt.isnative:
        raise ValueError(f"{name} must be float32 or float64, got {dt}")
    return dt


def make_rng(seed, name="seed"):
    """A ``np.random.Generator`` from ``seed``: None (fresh entropy), an int >= 0, a
    SeedSequence or BitGenerator, or a Generator (used as it is, shared)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (np.random.SeedSequence, np.random.BitGenerator)):
        return np.random.default_rng(seed)
    if not _is_int(seed):
        raise TypeError(f"{name} must be None, an int >= 0 or a NumPy Generator, "
                        f"SeedSequence or BitGenerator, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be None, an int >= 0 or a NumPy Generator, "
                         f"SeedSequence or BitGenerator, got {seed}")
    return np.random.default_rng(int(seed))


def check_table(name, value, shape):
    """``value`` as a float32/float64 array of ``shape`` (initial weights), not copied."""
    a = _as_array(name, value)
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def _describe(a):
    return f"shape {tuple(a.shape)} and dtype {a.dtype}"


def float_array(name, value, dtype=None, reference="x"):
    """``value`` as a C-contiguous float32/float64 array, checked against ``dtype`` (the
    dtype of the argument named ``reference``, which sets the call's precision).

    Non-contiguous or byte-swapped arrays are copied once; the precision is never changed.
    """
    if (type(value) is np.ndarray and value.dtype in _FLOAT_DTYPES
            and value.flags.c_contiguous and (dtype is None or value.dtype == dtype)):
        return value   # the common case, checked cheaply: kernels are called per step
    if value is None:
        raise TypeError(f"{name} must be a float32 or float64 array, got None")
    a = _as_array(name, value)
    if a.dtype.kind != "f" or a.dtype.newbyteorder("=") not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    native = a.dtype.newbyteorder("=")
    if dtype is not None and native != dtype:
        raise TypeError(f"{name} has dtype {native} but {reference} has dtype {dtype}; "
                        f"fastlstm never converts between precisions: pass "
                        f"{name}.astype(np.{dtype})")
    a = a.astype(native, copy=False)
    # (np.ascontiguousarray would turn a 0-d array into shape (1,) and misreport it)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _as_array(name, value):
    try:
        return np.asarray(value)
    except ValueError as exc:   # ragged nested sequences
        raise ValueError(f"{name} must be a rectangular array, got {exc}") from None


def check_shape(name, a, expected, meaning):
    """Raise ValueError unless ``a.shape == expected``; ``meaning`` spells the axes out."""
    if a.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(expected)}, "
                         f"got {_describe(a)}")


def check_lengths(lengths, T, B):
    """``lengths`` as a C-contiguous ``(B,)`` intc array with values in ``[0, T]``, or None."""
    if lengths is None:
        return None
    a = _as_array("lengths", lengths)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError("lengths must be finite integers in [0, T], got non-finite values")
        if not np.all(a == np.round(a)):
            raise ValueError("lengths must hold whole numbers, got fractional values")
    elif a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array of shape (B,) = ({B},), "
                        f"got dtype {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got shape {a.shape}")
    if B and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got values from "
                         f"{a.min()} to {a.max()}")
    return np.array(a, dtype=np.intc, order="C")   # a copy: the cache keeps it


def _checked_x(x):
    """x as a checked (T, B, D) float array; its dtype is the call's dtype."""
    x = float_array("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, D) (time-major), got {_describe(x)}")
    return x


def _optional_arrays(dtype, *specs, reference="x"):
    """Each (name, value, shape, meaning): None stays None, an array is checked."""
    out = []
    for name, value, shape, meaning in specs:
        if value is not None:
            value = float_array(name, value, dtype, reference)
            check_shape(name, value, shape, meaning)
        out.append(value)
    return out


def _check_sizes(T, B, D, H, gates=4):
    if (T >= 1 and B >= 1 and D >= 1 and H >= 1 and T * B <= _BLAS_INT_MAX
            and gates * H <= _BLAS_INT_MAX and D <= _BLAS_INT_MAX):
        return
    for name, size in (("T (x.shape[0])", T), ("B (x.shape[1])", B), ("D (x.shape[2])", D),
                       ("H (W_h.shape[0])", H)):
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")
    if T * B > _BLAS_INT_MAX or gates * H > _BLAS_INT_MAX or D > _BLAS_INT_MAX:
        raise ValueError(f"sizes T*B={T * B}, D={D}, {gates}H={gates * H} exceed the 32-bit "
                         f"BLAS limit {_BLAS_INT_MAX}")


class LSTMForwardArgs(NamedTuple):
    x: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    b: np.ndarray
    h0: Optional[np.ndarray]
    c0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    backend: str
    num_threads: Optional[int]


def validate_lstm_forward(x, W_x, W_h, b, h0, c0, lengths, backend, num_threads):
    """Check the arguments of ``lstm_forward``; see docs/design.md for the contract."""
    backend = check_backend(backend)
    num_threads = check_num_threads(num_threads)
    x = _checked_x(x)
    dtype = x.dtype
    W_h = float_array("W_h", W_h, dtype)
    if W_h.ndim != 2 or W_h.shape[1] != 4 * W_h.shape[0]:
        raise ValueError(f"W_h must have shape (H, 4H) (gate blocks i, f, g, o), "
                         f"got {_describe(W_h)}")
    T, B, D = x.shape
    H = W_h.shape[0]
    _check_sizes(T, B, D, H)
    W_x = float_array("W_x", W_x, dtype)
    check_shape("W_x", W_x, (D, 4 * H), "(D, 4H)")
    b = float_array("b", b, dtype)
    check_shape("b", b, (4 * H,), "(4H,)")
    h0, c0 = _optional_arrays(dtype, ("h0", h0, (B, H), "(B, H)"),
                              ("c0", c0, (B, H), "(B, H)"))
    lengths = check_lengths(lengths, T, B)
    return LSTMForwardArgs(x, W_x, W_h, b, h0, c0, lengths, backend, num_threads)


def _check_cache(cache, gates):
    """A cache's arrays must agree with each other (it may have been built by hand): the
    kernels index them by the shapes of x and W_h. (One pass with few lookups: it runs
    before every backward call.) Returns ``(T, B, H)``."""
    x, W_h = cache.x, cache.W_h
    named = [("x", x), ("W_x", cache.W_x), ("W_h", W_h), ("h_states", cache.h_states)]
    if gates == 4:
        named += [("gates", cache.gates), ("c_states", cache.c_states)]
    for name, a in named:
        if not (isinstance(a, np.ndarray) and a.dtype in _FLOAT_DTYPES
                and a.flags.c_contiguous):
            raise TypeError(f"cache.{name} must be a C-contiguous float32/float64 array")
    if x.ndim != 3 or W_h.ndim != 2:
        raise ValueError("cache.x must be (T, B, D) and cache.W_h 2-D")
    T, B, D = x.shape
    H = W_h.shape[0]
    expected = [(D, gates * H), (H, gates * H), (T + 1, B, H), (T, B, 4 * H), (T + 1, B, H)]
    for (name, a), shape in zip(named[1:], expected):
        if a.shape != shape:
            raise ValueError(f"cache.{name} has shape {a.shape}, expected {shape} "
                             f"from cache.x {x.shape} and cache.W_h {W_h.shape}")
        if a.dtype != x.dtype:
            raise TypeError(f"cache.{name} has dtype {a.dtype}, cache.x {x.dtype}")
    L = cache.lengths
    if L is not None and not (isinstance(L, np.ndarray) and L.dtype == np.intc
                              and L.shape == (B,) and L.flags.c_contiguous
                              and (B == 0 or (L.min() >= 0 and L.max() <= T))):
        raise ValueError(f"cache.lengths must be a ({B},) intc array in [0, {T}]")
    return T, B, H


def _checked_cache(cache, cache_type, gates, forward, backward):
    """Check that ``cache`` is a whole ``cache_type`` made by ``forward`` whose inputs have
    not changed since; returns ``(T, B, H, dtype)`` for checking the gradients."""
    if not isinstance(cache, cache_type):
        raise TypeError(f"cache must be the {cache_type.__name__} returned by {forward}, "
                        f"got {type(cache).__name__}")
    T, B, H = _check_cache(cache, gates)
    cache.check_inputs(forward, backward)
    return T, B, H, cache.x.dtype


def validate_lstm_backward(dhs, cache, dh_n, dc_n):
    """Check the arguments of ``lstm_backward``; returns ``(dhs, dh_n, dc_n)``."""
    T, B, H, dtype = _checked_cache(cache, LSTMCache, 4, "lstm_forward", "lstm_backward")
    return tuple(_optional_arrays(dtype, ("dhs", dhs, (T, B, H), "(T, B, H)"),
                                  ("dh_n", dh_n, (B, H), "(B, H)"),
                                  ("dc_n", dc_n, (B, H), "(B, H)")))


class LSTMLookupArgs(NamedTuple):
    ids: np.ndarray          # (T*B,) intc, C-contiguous
    table: np.ndarray
    W_h: np.ndarray
    b: np.ndarray
    h0: Optional[np.ndarray]
    c0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    num_threads: Optional[int]
    T: int
    B: int


def _checked_ids(ids, V):
    """ids as a (T, B) integer array with values in [0, V)."""
    if type(ids) is not np.ndarray:
        ids = _as_array("ids", ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array of shape (T, B), got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"ids must be 2-D (T, B) (time-major), got shape {ids.shape}")
    T, B = ids.shape
    if T < 1 or B < 1 or T * B > _BLAS_INT_MAX:
        raise ValueError(f"ids must have T >= 1 steps and B >= 1 sequences, T*B at most "
                         f"{_BLAS_INT_MAX}, got shape {ids.shape}")
    low, high = ids.min(), ids.max()
    if low < 0 or high >= V:
        raise ValueError(f"ids must lie in [0, {V}) (rows of the table), got values from "
                         f"{low} to {high}")
    return ids


def validate_lstm_forward_lookup(ids, table, W_h, b, h0, c0, lengths, num_threads):
    """Check the arguments of ``lstm_forward_lookup``: the rules of ``lstm_forward``, with
    the table setting the dtype as x does there."""
    num_threads = check_num_threads(num_threads)
    table = float_array("table", table)
    dtype = table.dtype
    W_h = float_array("W_h", W_h, dtype, "table")
    if W_h.ndim != 2 or W_h.shape[1] != 4 * W_h.shape[0]:
        raise ValueError(f"W_h must have shape (H, 4H) (gate blocks i, f, g, o), "
                         f"got {_describe(W_h)}")
    H = W_h.shape[0]
    if H < 1 or 4 * H > _BLAS_INT_MAX:
        raise ValueError(f"H (W_h.shape[0]) must lie in [1, {_BLAS_INT_MAX // 4}], got {H}")
    if table.ndim != 2 or table.shape[1] != 4 * H:
        raise ValueError(f"table must have shape (V, 4H) = (V, {4 * H}) (one row of "
                         f"projected inputs per id), got {_describe(table)}")
    ids = _checked_ids(ids, table.shape[0])
    T, B = ids.shape
    b = float_array("b", b, dtype, "table")
    check_shape("b", b, (4 * H,), "(4H,)")
    h0, c0 = _optional_arrays(dtype, ("h0", h0, (B, H), "(B, H)"),
                              ("c0", c0, (B, H), "(B, H)"), reference="table")
    lengths = check_lengths(lengths, T, B)
    # (a view when the caller's ids are intc and contiguous: the cache then references
    # them, and checks them for changes before the backward pass)
    flat_ids = np.ascontiguousarray(ids.reshape(-1), dtype=np.intc)
    return LSTMLookupArgs(flat_ids, table, W_h, b, h0, c0, lengths, num_threads, T, B)


def validate_lstm_backward_lookup(dhs, cache, dh_n, dc_n):
    """Check the arguments of ``lstm_backward_lookup``; returns ``(dhs, dh_n, dc_n)``."""
    if not isinstance(cache, LSTMLookupCache):
        raise TypeError(f"cache must be the LSTMLookupCache returned by "
                        f"lstm_forward_lookup, got {type(cache).__name__}")
    cache.check_inputs("lstm_forward_lookup", "lstm_backward_lookup")
    T, B, G = cache.gates.shape
    H = G // 4
    return tuple(_optional_arrays(cache.dtype, ("dhs", dhs, (T, B, H), "(T, B, H)"),
                                  ("dh_n", dh_n, (B, H), "(B, H)"),
                                  ("dc_n", dc_n, (B, H), "(B, H)"), reference="table"))


class LSTMPForwardArgs(NamedTuple):
    x: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    b: np.ndarray
    W_hr: np.ndarray
    h0: Optional[np.ndarray]
    c0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    backend: str
    num_threads: Optional[int]


def validate_lstmp_forward(x, W_x, W_h, b, W_hr, h0, c0, lengths, backend, num_threads):
    """Check the arguments of ``lstmp_forward`` (the rules of ``lstm_forward``; W_hr
    (H, P) sets the cell size H and the projected size P)."""
    backend = check_backend(backend)
    num_threads = check_num_threads(num_threads)
    x = _checked_x(x)
    dtype = x.dtype
    W_hr = float_array("W_hr", W_hr, dtype)
    if W_hr.ndim != 2 or W_hr.shape[0] < 1 or W_hr.shape[1] < 1:
        raise ValueError(f"W_hr must have shape (H, P) (cell units to projected outputs) "
                         f"with H, P >= 1, got {_describe(W_hr)}")
    H, P = W_hr.shape
    T, B, D = x.shape
    _check_sizes(T, B, D, H)
    if P > _BLAS_INT_MAX:
        raise ValueError(f"P (W_hr.shape[1]) = {P} exceeds the 32-bit BLAS limit "
                         f"{_BLAS_INT_MAX}")
    W_h = float_array("W_h", W_h, dtype)
    check_shape("W_h", W_h, (P, 4 * H), "(P, 4H) (gate blocks i, f, g, o)")
    W_x = float_array("W_x", W_x, dtype)
    check_shape("W_x", W_x, (D, 4 * H), "(D, 4H)")
    b = float_array("b", b, dtype)
    check_shape("b", b, (4 * H,), "(4H,)")
    h0, c0 = _optional_arrays(dtype, ("h0", h0, (B, P), "(B, P)"),
                              ("c0", c0, (B, H), "(B, H)"))
    lengths = check_lengths(lengths, T, B)
    return LSTMPForwardArgs(x, W_x, W_h, b, W_hr, h0, c0, lengths, backend, num_threads)


def _check_lstmp_cache(cache):
    """``_check_cache`` for an LSTMPCache: its arrays must agree with x and W_hr.
    Returns ``(T, B, H, P)``."""
    x, W_hr = cache.x, cache.W_hr
    named = [("x", x), ("W_hr", W_hr), ("W_x", cache.W_x), ("W_h", cache.W_h),
             ("gates", cache.gates), ("h_states", cache.h_states),
             ("c_states", cache.c_states), ("m_states", cache.m_states)]
    for name, a in named:
        if not (isinstance(a, np.ndarray) and a.dtype in _FLOAT_DTYPES
                and a.flags.c_contiguous):
            raise TypeError(f"cache.{name} must be a C-contiguous float32/float64 array")
    if x.ndim != 3 or W_hr.ndim != 2:
        raise ValueError("cache.x must be (T, B, D) and cache.W_hr (H, P)")
    T, B, D = x.shape
    H, P = W_hr.shape
    expected = [(D, 4 * H), (P, 4 * H), (T, B, 4 * H), (T + 1, B, P), (T + 1, B, H),
                (T, B, H)]
    for (name, a), shape in zip(named[2:], expected):
        if a.shape != shape:
            raise ValueError(f"cache.{name} has shape {a.shape}, expected {shape} "
                             f"from cache.x {x.shape} and cache.W_hr {W_hr.shape}")
    for name, a in named[1:]:
        if a.dtype != x.dtype:
            raise TypeError(f"cache.{name} has dtype {a.dtype}, cache.x {x.dtype}")
    L = cache.lengths
    if L is not None and not (isinstance(L, np.ndarray) and L.dtype == np.intc
                              and L.shape == (B,) and L.flags.c_contiguous
                              and (L.min() >= 0 and L.max() <= T)):
        raise ValueError(f"cache.lengths must be a ({B},) intc array in [0, {T}]")
    return T, B, H, P


def validate_lstmp_backward(dhs, cache, dh_n, dc_n):
    """Check the arguments of ``lstmp_backward``; returns ``(dhs, dh_n, dc_n)``."""
    if not isinstance(cache, LSTMPCache):
        raise TypeError(f"cache must be the LSTMPCache returned by lstmp_forward, "
                        f"got {type(cache).__name__}")
    T, B, H, P = _check_lstmp_cache(cache)
    cache.check_inputs("lstmp_forward", "lstmp_backward")
    return tuple(_optional_arrays(cache.x.dtype, ("dhs", dhs, (T, B, P), "(T, B, P)"),
                                  ("dh_n", dh_n, (B, P), "(B, P)"),
                                  ("dc_n", dc_n, (B, H), "(B, H)")))


class RNNForwardArgs(NamedTuple):
    x: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    b: np.ndarray
    h0: Optional[np.ndarray]
    nonlinearity: str
    lengths: Optional[np.ndarray]
    backend: str
    num_threads: Optional[int]


def validate_rnn_forward(x, W_x, W_h, b, h0, nonlinearity, lengths, backend, num_threads):
    """Check the arguments of ``rnn_forward``; see docs/design.md for the contract."""
    backend = check_backend(backend)
    num_threads = check_num_threads(num_threads)
    if not isinstance(nonlinearity, str) or nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    x = _checked_x(x)
    dtype = x.dtype
    W_h = float_array("W_h", W_h, dtype)
    if W_h.ndim != 2 or W_h.shape[0] != W_h.shape[1]:
        raise ValueError(f"W_h must be square, (H, H), got {_describe(W_h)}")
    T, B, D = x.shape
    H = W_h.shape[0]
    _check_sizes(T, B, D, H, gates=1)
    W_x = float_array("W_x", W_x, dtype)
    check_shape("W_x", W_x, (D, H), "(D, H)")
    b = float_array("b", b, dtype)
    check_shape("b", b, (H,), "(H,)")
    (h0,) = _optional_arrays(dtype, ("h0", h0, (B, H), "(B, H)"))
    lengths = check_lengths(lengths, T, B)
    return RNNForwardArgs(x, W_x, W_h, b, h0, nonlinearity, lengths, backend, num_threads)


def check_bptt_truncate(bptt_truncate):
    """``None`` (full BPTT) or an int >= 0."""
    if bptt_truncate is None:
        return None
    if (isinstance(bptt_truncate, (bool, np.bool_))
            or not isinstance(bptt_truncate, (int, np.integer))):
        raise TypeError(f"bptt_truncate must be None or an int >= 0, got "
                        f"{type(bptt_truncate).__name__} {bptt_truncate!r}")
    if bptt_truncate < 0:
        raise ValueError(f"bptt_truncate must be None or an int >= 0, got {bptt_truncate}")
    return int(bptt_truncate)


def validate_rnn_backward(dhs, cache, dh_n, bptt_truncate):
    """Check the arguments of ``rnn_backward``; returns ``(dhs, dh_n, bptt_truncate)``."""
    T, B, H, dtype = _checked_cache(cache, RNNCache, 1, "rnn_forward", "rnn_backward")
    dhs, dh_n = _optional_arrays(dtype, ("dhs", dhs, (T, B, H), "(T, B, H)"),
                                 ("dh_n", dh_n, (B, H), "(B, H)"))
    return dhs, dh_n, check_bptt_truncate(bptt_truncate)


# --- GRU ------------------------------------------------------------------------------
from ._containers import GRUCache  # noqa: E402


class GRUForwardArgs(NamedTuple):
    x: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray
    h0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    backend: str
    num_threads: Optional[int]


def validate_gru_forward(x, W_x, W_h, b_x, b_h, h0, lengths, backend, num_threads):
    """Check the arguments of ``gru_forward``; see docs/design.md for the contract."""
    backend = check_backend(backend)
    num_threads = check_num_threads(num_threads)
    x = _checked_x(x)
    dtype = x.dtype
    W_h = float_array("W_h", W_h, dtype)
    if W_h.ndim != 2 or W_h.shape[1] != 3 * W_h.shape[0]:
        raise ValueError(f"W_h must have shape (H, 3H) (gate blocks r, z, n), "
                         f"got {_describe(W_h)}")
    T, B, D = x.shape
    H = W_h.shape[0]
    _check_sizes(T, B, D, H, gates=3)
    W_x = float_array("W_x", W_x, dtype)
    check_shape("W_x", W_x, (D, 3 * H), "(D, 3H)")
    b_x = float_array("b_x", b_x, dtype)
    check_shape("b_x", b_x, (3 * H,), "(3H,)")
    b_h = float_array("b_h", b_h, dtype)
    check_shape("b_h", b_h, (3 * H,), "(3H,)")
    (h0,) = _optional_arrays(dtype, ("h0", h0, (B, H), "(B, H)"))
    lengths = check_lengths(lengths, T, B)
    return GRUForwardArgs(x, W_x, W_h, b_x, b_h, h0, lengths, backend, num_threads)


def validate_gru_backward(dhs, cache, dh_n):
    """Check the arguments of ``gru_backward``; returns ``(dhs, dh_n)``."""
    if not isinstance(cache, GRUCache):
        raise TypeError(f"cache must be the GRUCache returned by gru_forward, "
                        f"got {type(cache).__name__}")
    g = cache.gates
    if not (isinstance(g, np.ndarray) and g.dtype in _FLOAT_DTYPES and g.flags.c_contiguous):
        raise TypeError("cache.gates must be a C-contiguous float32/float64 array")
    T, B, H, dtype = _checked_cache(cache, GRUCache, 3, "gru_forward", "gru_backward")
    if g.shape != (T, B, 4 * H) or g.dtype != dtype:
        raise ValueError(f"cache.gates has shape {g.shape} and dtype {g.dtype}, expected "
                         f"{(T, B, 4 * H)} and {dtype} from cache.x and cache.W_h")
    dhs, dh_n = _optional_arrays(dtype, ("dhs", dhs, (T, B, H), "(T, B, H)"),
                                 ("dh_n", dh_n, (B, H), "(B, H)"))
    return dhs, dh_n


from ._containers import GRULookupCache  # noqa: E402


class GRULookupArgs(NamedTuple):
    ids: np.ndarray          # (T*B,) intc, C-contiguous
    table: np.ndarray
    W_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray
    h0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]
    num_threads: Optional[int]
    T: int
    B: int


def validate_gru_forward_lookup(ids, table, W_h, b_x, b_h, h0, lengths, num_threads):
    """Check the arguments of ``gru_forward_lookup``: the rules of ``gru_forward``, with
    the table setting the dtype as x does there."""
    num_threads = check_num_threads(num_threads)
    table = float_array("table", table)
    dtype = table.dtype
    W_h = float_array("W_h", W_h, dtype, "table")
    if W_h.ndim != 2 or W_h.shape[1] != 3 * W_h.shape[0]:
        raise ValueError(f"W_h must have shape (H, 3H) (gate blocks r, z, n), "
                         f"got {_describe(W_h)}")
    H = W_h.shape[0]
    if H < 1 or 3 * H > _BLAS_INT_MAX:
        raise ValueError(f"H (W_h.shape[0]) must lie in [1, {_BLAS_INT_MAX // 3}], got {H}")
    if table.ndim != 2 or table.shape[1] != 3 * H:
        raise ValueError(f"table must have shape (V, 3H) = (V, {3 * H}) (one row of "
                         f"projected inputs per id), got {_describe(table)}")
    ids = _checked_ids(ids, table.shape[0])
    T, B = ids.shape
    b_x = float_array("b_x", b_x, dtype, "table")
    check_shape("b_x", b_x, (3 * H,), "(3H,)")
    b_h = float_array("b_h", b_h, dtype, "table")
    check_shape("b_h", b_h, (3 * H,), "(3H,)")
    (h0,) = _optional_arrays(dtype, ("h0", h0, (B, H), "(B, H)"), reference="table")
    lengths = check_lengths(lengths, T, B)
    # (a view when the caller's ids are intc and contiguous: the cache then references
    # them, and checks them for changes before the backward pass)
    flat_ids = np.ascontiguousarray(ids.reshape(-1), dtype=np.intc)
    return GRULookupArgs(flat_ids, table, W_h, b_x, b_h, h0, lengths, num_threads, T, B)


def validate_gru_backward_lookup(dhs, cache, dh_n):
    """Check the arguments of ``gru_backward_lookup``; returns ``(dhs, dh_n)``."""
    if not isinstance(cache, GRULookupCache):
        raise TypeError(f"cache must be the GRULookupCache returned by "
                        f"gru_forward_lookup, got {type(cache).__name__}")
    cache.check_inputs("gru_forward_lookup", "gru_backward_lookup")
    T, B, G = cache.gates.shape
    H = G // 4
    return tuple(_optional_arrays(cache.dtype, ("dhs", dhs, (T, B, H), "(T, B, H)"),
                                  ("dh_n", dh_n, (B, H), "(B, H)"), reference="table"))

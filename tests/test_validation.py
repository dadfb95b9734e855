"""docs/design.md, "Errors, never crashes": bad input raises ValueError or TypeError whose
message names the argument, from every backend, before any compiled code runs; unusual
but valid input is accepted.

* ``lstm_forward`` and ``lstm_backward``: wrong rank or shape, mismatched sizes, mixed or
  unsupported dtypes, bad ``lengths``, an unknown backend or a bad ``num_threads``, a zero
  size, and a ``cache`` that is not an LSTMCache raise ValueError/TypeError whose message
  names the argument (and, where there is one, the offending shape, dtype or value).
  Where a case states one exception type, exactly that type is raised. Non-contiguous,
  unaligned, read-only and byte-swapped arrays, lists, and lengths of any integral dtype
  are accepted and give what their plain C-contiguous copies give.
* ``rnn_forward`` and ``rnn_backward``: the same rules and their own arguments
  (``nonlinearity``, ``bptt_truncate``), from both backends.
* The constructors in fastlstm.nn and fastlstm.models check every argument before they
  draw any weight; the message starts with the argument's name.
* A missing extension is an ImportError for backend="cython" and a one-time warning and
  the reference for "auto"; ``show_config`` and ``python -m fastlstm`` report the build.

Each lstm_forward/lstm_backward case runs on every backend. The NumPy backend (and
``fastlstm.reference`` called directly) run in this process; the compiled backends
("cython", "auto") run every case of a group in one child Python process, so that an
input slipping past the checks into the C code could segfault the child but not the test
run: the child reports each case's outcome as a JSON line, and its exit status is
checked.
"""
import inspect
import json
import re
import subprocess
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np
import pytest

import fastlstm
from fastlstm import _backend, models, nn, reference
from conftest import TESTS_DIR, child_env, make_lstm_inputs, run_child

T, B, D, H = 4, 3, 5, 6     # T != B != H, so transposed arrays have the wrong shape
G = 4 * H
IN_PROCESS = ["numpy", "reference-module"]   # pure Python: safe to run here
COMPILED = ["cython", "auto"]                # reach the C code: run in a child
ALL_BACKENDS = IN_PROCESS + COMPILED
UNSUPPORTED = {"int64": np.int64, "int32": np.int32, "uint8": np.uint8,
               "float16": np.float16, "longdouble": np.longdouble,
               "complex128": np.complex128, "complex64": np.complex64, "bool": np.bool_,
               "object": object}


# --- inputs ------------------------------------------------------------------------

def good(dtype=np.float64):
    """Valid forward arguments (fresh arrays each call)."""
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype)
    return dict(x=x, W_x=W_x, W_h=W_h, b=b, h0=h0, c0=c0)


def upstream(dtype=np.float64):
    rng = np.random.default_rng(1)
    return dict(dhs=rng.standard_normal((T, B, H)).astype(dtype),
                dh_n=rng.standard_normal((B, H)).astype(dtype),
                dc_n=rng.standard_normal((B, H)).astype(dtype))


def as_dtype(a, dtype):
    """``a``'s values as ``dtype`` (object arrays hold Python floats)."""
    if dtype is object:
        out = np.empty(a.shape, object)
        out[...] = a.tolist() if a.ndim else a.item()
        return out
    if np.dtype(dtype).kind in "iub":
        return (np.abs(a) * 3).astype(dtype)
    return a.astype(dtype)


def module_of(backend):
    return reference if backend == "reference-module" else fastlstm


def call_forward(backend, overrides=None):
    """lstm_forward on ``backend`` with the good arguments, some overridden."""
    kw = good()
    kw.update(lengths=None, backend=backend, num_threads=None)
    if backend == "reference-module":
        kw["backend"] = "numpy"
    kw.update(overrides or {})
    args = [kw.pop(name) for name in ("x", "W_x", "W_h", "b", "h0", "c0")]
    return module_of(backend).lstm_forward(*args, **kw)


def call_backward(backend, fwd_dtype, overrides, module=None):
    """lstm_backward (of ``module``, by default the backend's) of a cache made on
    ``backend`` from good ``fwd_dtype`` inputs, with some arguments overridden; an
    override may be a function of (hs, cache)."""
    g = good(fwd_dtype)
    hs, _, cache = call_forward(backend, {k: v for k, v in g.items()})
    kw = dict(upstream(fwd_dtype), cache=cache)
    for name, value in overrides.items():
        kw[name] = value(hs, cache) if callable(value) else value
    module = module or module_of(backend)
    return module.lstm_backward(kw.pop("dhs"), kw.pop("cache"), **kw)


# --- the cases -----------------------------------------------------------------------

class Case(NamedTuple):
    id: str
    overrides: dict                # arguments replacing the good ones
    name: Any                      # the argument(s) the message must name
    detail: Any = None             # the offending shape/dtype/value(s), also in the message
    fwd_dtype: Any = np.float64    # backward cases: dtype of the forward that made the cache
    exc: Any = (ValueError, TypeError)
    both_modules: bool = False     # backward: fastlstm's and the reference's backward
                                   # both reject it, given the backend's cache


# Cases whose exception type is stated exactly rather than as (ValueError, TypeError).
PINNED_TYPE_ERRORS = {("x", "float16"), ("x", "complex128")}
PINNED_NUM_THREADS = {"zero": ValueError, "negative": ValueError, "float": TypeError,
                      "True": TypeError, "str": TypeError}


def forward_error_cases():
    g, g32 = good(), good(np.float32)
    cases = []

    def add(id, overrides, name, detail=None, exc=(ValueError, TypeError)):
        cases.append(Case(id, overrides, name, detail, exc=exc))

    # wrong rank
    add("x-1d", dict(x=g["x"].ravel()), "x", str((T * B * D,)))
    add("x-2d", dict(x=g["x"][0]), "x", str((B, D)), exc=ValueError)
    add("x-4d", dict(x=g["x"][None]), "x", str((1, T, B, D)), exc=ValueError)
    add("x-0d", dict(x=np.float64(1.0)), "x")
    add("W_x-1d", dict(W_x=g["W_x"].ravel()), "W_x", str((D * G,)), exc=ValueError)
    add("W_x-3d", dict(W_x=g["W_x"][None]), "W_x", str((1, D, G)))
    add("W_h-1d", dict(W_h=g["W_h"].ravel()), "W_h", str((H * G,)))
    add("W_h-3d", dict(W_h=g["W_h"][None]), "W_h", str((1, H, G)), exc=ValueError)
    add("W_h-0d", dict(W_h=np.float64(0.5)), "W_h")
    add("b-2d", dict(b=g["b"][None]), "b", str((1, G)), exc=ValueError)
    add("b-2d-two-biases", dict(b=np.stack([g["b"], g["b"]])), "b", str((2, G)))
    add("b-0d", dict(b=np.float64(0.0)), "b")
    add("h0-1d", dict(h0=g["h0"][0]), "h0", str((H,)))
    add("h0-3d-torch-layout", dict(h0=g["h0"][None]), "h0", str((1, B, H)))
    add("c0-1d", dict(c0=g["c0"][0]), "c0", str((H,)))
    add("c0-3d-torch-layout", dict(c0=g["c0"][None]), "c0", str((1, B, H)))
    # mismatched sizes
    # the message also says what was expected, symbolically and as numbers
    add("W_x-rows-more", dict(W_x=np.zeros((D + 1, G))), "W_x",
        ("(D, 4H)", str((D, G)), str((D + 1, G))), exc=ValueError)
    add("W_x-rows-fewer", dict(W_x=g["W_x"][:-1]), "W_x", str((D - 1, G)), exc=ValueError)
    add("W_x-cols", dict(W_x=g["W_x"][:, :-1]), "W_x", str((D, G - 1)), exc=ValueError)
    add("W_x-cols-H", dict(W_x=g["W_x"][:, :H]), "W_x", str((D, H)))
    add("W_x-transposed", dict(W_x=g["W_x"].T), "W_x", str((G, D)))
    add("W_h-not-4H", dict(W_h=g["W_h"][:, :-1]), "W_h", str((H, G - 1)), exc=ValueError)
    add("W_h-square", dict(W_h=np.zeros((H, H))), "W_h", str((H, H)), exc=ValueError)
    add("W_h-transposed", dict(W_h=g["W_h"].T), "W_h", str((G, H)))
    add("W_h-other-H", dict(W_h=np.zeros((H + 1, 4 * (H + 1)))), "W_x", str((D, G)))
    add("b-short", dict(b=g["b"][:-1]), "b", str((G - 1,)), exc=ValueError)
    add("b-long", dict(b=np.zeros(G + 1)), "b", str((G + 1,)))
    add("b-H", dict(b=g["b"][:H]), "b", str((H,)))
    add("h0-rows", dict(h0=g["h0"][:-1]), "h0", str((B - 1, H)), exc=ValueError)
    add("h0-cols", dict(h0=np.zeros((B, H + 1))), "h0", str((B, H + 1)))
    add("h0-transposed", dict(h0=g["h0"].T), "h0", str((H, B)), exc=ValueError)
    add("c0-rows", dict(c0=np.zeros((B + 1, H))), "c0", str((B + 1, H)))
    add("c0-cols", dict(c0=g["c0"][:, :-1]), "c0", str((B, H - 1)), exc=ValueError)
    add("c0-transposed", dict(c0=g["c0"].T), "c0", str((H, B)))
    # mixed dtypes: one argument of the other precision
    for name in ("W_x", "W_h", "b", "h0", "c0"):
        # W_h: the message shows both dtypes, the one given and the one expected
        add(f"{name}-float32-rest-float64", {name: g32[name]}, name,
            ("float32", "float64") if name == "W_h" else "float32", exc=TypeError)
        add(f"{name}-float64-rest-float32", dict(g32, **{name: g[name]}), name, "float64")
    add("x-float32-weights-float64", dict(x=g32["x"]), "x", "float32", exc=TypeError)
    add("x-float32-states-float64", dict(g, x=g32["x"], W_x=g32["W_x"], W_h=g32["W_h"],
                                         b=g32["b"]), "h0", "float64")
    add("x-float64-rest-float32", dict(g32, x=g["x"]), "x", "float64")
    # unsupported dtypes, for each array argument, and for every argument at once
    for name in ("x", "W_x", "W_h", "b", "h0", "c0"):
        for label, dtype in UNSUPPORTED.items():
            detail = "object" if dtype is object else str(np.dtype(dtype))
            exc = TypeError if (name, label) in PINNED_TYPE_ERRORS else (ValueError, TypeError)
            add(f"{name}-{label}", {name: as_dtype(g[name], dtype)}, name, detail, exc=exc)
    for label in ("int64", "float16", "complex128", "bool"):
        add(f"all-{label}", {k: as_dtype(v, UNSUPPORTED[label]) for k, v in g.items()},
            "x", str(np.dtype(UNSUPPORTED[label])))
    add("x-None", dict(x=None), "x", exc=TypeError)
    add("W_h-None", dict(W_h=None), "W_h")
    add("x-str", dict(x="not an array"), "x")
    add("b-str-list", dict(b=["a"] * G), "b")
    # lengths
    add("lengths-too-long", dict(lengths=[1, T + 1, 2]), "lengths", str(T + 1),
        exc=ValueError)
    add("lengths-huge", dict(lengths=np.array([1, 2**40, 2])), "lengths", str(2**40))
    add("lengths-negative", dict(lengths=[1, -1, 2]), "lengths", "-1", exc=ValueError)
    add("lengths-very-negative", dict(lengths=np.array([1, -2**40, 2])), "lengths")
    add("lengths-short", dict(lengths=[1, 2]), "lengths", "(2,)", exc=ValueError)
    add("lengths-long", dict(lengths=[1, 2, 3, 4]), "lengths", "(4,)")
    add("lengths-empty", dict(lengths=[]), "lengths", "(0,)")
    add("lengths-column", dict(lengths=[[1], [2], [3]]), "lengths", str((B, 1)))
    add("lengths-row", dict(lengths=[[1, 2, 3]]), "lengths", str((1, B)), exc=ValueError)
    add("lengths-scalar", dict(lengths=2), "lengths")
    add("lengths-nan", dict(lengths=np.array([1.0, np.nan, 2.0])), "lengths", exc=ValueError)
    add("lengths-inf", dict(lengths=np.array([1.0, np.inf, 2.0])), "lengths", exc=ValueError)
    add("lengths-minus-inf", dict(lengths=np.array([1.0, -np.inf, 2.0])), "lengths")
    add("lengths-nan-float32", dict(lengths=np.array([1, np.nan, 2], np.float32)), "lengths")
    add("lengths-nan-wrong-shape", dict(lengths=np.array([np.nan, 1.0])), "lengths")
    add("lengths-fractional", dict(lengths=np.array([1.0, 1.5, 2.0])), "lengths",
        exc=ValueError)
    add("lengths-fractional-small", dict(lengths=[1.0, 2.0, 0.25]), "lengths")
    add("lengths-float-too-long", dict(lengths=[1.0, 1e300, 2.0]), "lengths")
    add("lengths-bool", dict(lengths=np.array([True, False, True])), "lengths", "bool",
        exc=TypeError)
    add("lengths-bool-list", dict(lengths=[True, True, True]), "lengths", "bool")
    add("lengths-object", dict(lengths=np.array([1, None, 2], object)), "lengths", "object")
    add("lengths-str", dict(lengths=["1", "2", "3"]), "lengths")
    add("lengths-complex", dict(lengths=np.array([1, 2, 3], complex)), "lengths", "complex")
    add("lengths-timedelta", dict(lengths=np.array([1, 2, 3], "m8[s]")), "lengths")
    # backend
    for label, value in (("unknown", "torch"), ("capitalised", "Cython"), ("empty", ""),
                         ("padded", " numpy"), ("None", None), ("int", 1),
                         ("bytes", b"numpy"), ("list", ["numpy"])):
        exc = ValueError if label in ("unknown", "int") else (ValueError, TypeError)
        add(f"backend-{label}", dict(backend=value), "backend", repr(value), exc=exc)
    # num_threads
    for label, value in (("zero", 0), ("negative", -1), ("float", 1.5), ("float-whole", 2.0),
                         ("True", True), ("False", False), ("str", "2"),
                         ("np-zero", np.int64(0)), ("np-negative", np.int32(-3)),
                         ("np-bool", np.bool_(True)), ("np-float", np.float64(2.0)),
                         ("list", [2])):
        add(f"num_threads-{label}", dict(num_threads=value), "num_threads",
            exc=PINNED_NUM_THREADS.get(label, (ValueError, TypeError)))
    # the same rules on other values: ones, a mask, empty (None) objects, short strings
    add("x-int64-ones", dict(x=np.ones((T, B, D), np.int64)), "x", exc=TypeError)
    add("x-bool-mask", dict(x=g["x"] > 0), "x", exc=TypeError)
    add("x-object-of-None", dict(x=np.empty((T, B, D), object)), "x", exc=TypeError)
    add("x-str-short", dict(x="abc"), "x", exc=TypeError)
    add("lengths-str-letters", dict(lengths=["a", "b", "c"]), "lengths", exc=TypeError)
    return cases


def zero_size_cases():
    g = good()
    return [
        Case("T=0", dict(x=g["x"][:0]), ("x", "T"), exc=ValueError),
        Case("B=0", dict(x=g["x"][:, :0], h0=None, c0=None), ("x", "B"), exc=ValueError),
        Case("B=0-with-states", dict(x=g["x"][:, :0], h0=g["h0"][:0], c0=g["c0"][:0]), "x",
             exc=ValueError),
        Case("B=0-with-lengths", dict(x=g["x"][:, :0], h0=None, c0=None,
                                      lengths=np.zeros(0, int)), "x", exc=ValueError),
        Case("D=0", dict(x=g["x"][:, :, :0], W_x=g["W_x"][:0]), ("x", "D"),
             exc=ValueError),
        Case("H=0", dict(W_x=np.zeros((D, 0)), W_h=np.zeros((0, 0)), b=np.zeros(0),
                         h0=None, c0=None), ("W_h", "H"), exc=ValueError),
        Case("H=0-with-states", dict(W_x=np.zeros((D, 0)), W_h=np.zeros((0, 0)),
                                     b=np.zeros(0), h0=np.zeros((B, 0)),
                                     c0=np.zeros((B, 0))), "W_h", exc=ValueError),
        Case("all-zero", dict(x=np.zeros((0, 0, 0)), W_x=np.zeros((0, 0)),
                              W_h=np.zeros((0, 0)), b=np.zeros(0), h0=None, c0=None),
             "x", exc=ValueError),
    ]


def backward_error_cases():
    u, u32 = upstream(), upstream(np.float32)
    cases = []

    def add(id, overrides, name, detail=None, fwd_dtype=np.float64):
        cases.append(Case(id, overrides, name, detail, fwd_dtype))

    # shapes and ranks
    add("dhs-2d", dict(dhs=u["dhs"][0]), "dhs", str((B, H)))
    add("dhs-4d", dict(dhs=u["dhs"][None]), "dhs", str((1, T, B, H)))
    add("dhs-flat", dict(dhs=u["dhs"].reshape(T * B, H)), "dhs", str((T * B, H)))
    add("dhs-H+1", dict(dhs=np.zeros((T, B, H + 1))), "dhs", str((T, B, H + 1)))
    add("dhs-T+1", dict(dhs=np.zeros((T + 1, B, H))), "dhs", str((T + 1, B, H)))
    add("dhs-T-1", dict(dhs=u["dhs"][1:]), "dhs", str((T - 1, B, H)))
    add("dhs-batch-major", dict(dhs=u["dhs"].transpose(1, 0, 2)), "dhs", str((B, T, H)))
    add("dhs-0d", dict(dhs=np.float64(1.0)), "dhs")
    for name in ("dh_n", "dc_n"):
        add(f"{name}-1d", {name: u[name][0]}, name, str((H,)))
        add(f"{name}-3d-torch-layout", {name: u[name][None]}, name, str((1, B, H)))
        add(f"{name}-rows", {name: np.zeros((B + 1, H))}, name, str((B + 1, H)))
        add(f"{name}-cols", {name: u[name][:, :-1]}, name, str((B, H - 1)))
        add(f"{name}-transposed", {name: u[name].T}, name, str((H, B)))
        add(f"{name}-0d", {name: np.float64(0.0)}, name)
    # dtypes: the other precision, and unsupported ones
    for name in ("dhs", "dh_n", "dc_n"):
        add(f"{name}-float32-cache-float64", {name: u32[name]}, name, "float32")
        add(f"{name}-float64-cache-float32", {name: u[name]}, name, "float64",
            fwd_dtype=np.float32)
        for label in ("int64", "float16", "longdouble", "complex128", "bool", "object"):
            dtype = UNSUPPORTED[label]
            detail = "object" if dtype is object else str(np.dtype(dtype))
            add(f"{name}-{label}", {name: as_dtype(u[name], dtype)}, name, detail)
    add("dhs-str", dict(dhs="not an array"), "dhs")
    # not an LSTMCache
    add("cache-None", dict(cache=None), "cache")
    add("cache-object", dict(cache=object()), "cache")
    add("cache-forward-tuple", dict(cache=lambda hs, c: (hs, (hs[-1], hs[-1]), c)), "cache")
    add("cache-dict", dict(cache=lambda hs, c: {s: getattr(c, s) for s in
                                                ("x", "W_x", "W_h", "gates", "h_states",
                                                 "c_states", "lengths")}), "cache")
    add("cache-hs", dict(cache=lambda hs, c: hs), "cache")
    add("cache-grads", dict(cache=lambda hs, c: fastlstm.LSTMGrads(*[hs] * 6)), "cache")
    add("cache-rnn", dict(cache=lambda hs, c: fastlstm.rnn_forward(
        np.ones((T, B, D)), np.ones((D, H)), np.ones((H, H)), np.ones(H),
        backend="numpy")[2]), "cache")
    # One bad argument with every other upstream gradient None; the reference's backward
    # must reject it too when handed the backend's cache.
    rng = np.random.default_rng(0)
    alone = dict(dhs=None, dh_n=None, dc_n=None)

    def add_alone(id, overrides, name, exc):
        cases.append(Case(id, dict(alone, **overrides), name, exc=exc, both_modules=True))

    add_alone("alone-dhs-H+1", dict(dhs=rng.standard_normal((T, B, H + 1))), "dhs",
              ValueError)
    add_alone("alone-dhs-2d", dict(dhs=rng.standard_normal((B, H))), "dhs", ValueError)
    add_alone("alone-dhs-float32", dict(dhs=rng.standard_normal((T, B, H)).astype(np.float32)),
              "dhs", TypeError)
    add_alone("alone-dhs-int", dict(dhs=np.ones((T, B, H), int)), "dhs", TypeError)
    add_alone("alone-dh_n-rows", dict(dh_n=rng.standard_normal((B + 1, H))), "dh_n",
              ValueError)
    add_alone("alone-dc_n-transposed", dict(dc_n=rng.standard_normal((H, B))), "dc_n",
              ValueError)
    add_alone("alone-dc_n-float32", dict(dc_n=rng.standard_normal((B, H)).astype(np.float32)),
              "dc_n", TypeError)
    add_alone("alone-cache-tuple", dict(cache=(1, 2, 3)), "cache", TypeError)
    add_alone("alone-cache-None", dict(cache=None), "cache", TypeError)
    return cases


class Accepted(NamedTuple):
    id: str
    overrides: dict      # unusual but valid arguments
    baseline: dict       # the same values as plain C-contiguous arrays
    backward: bool = False
    exact: bool = False  # bit for bit the baseline's results, not only to rounding


def accepted_cases():
    g, u = good(), upstream()
    lengths = np.array([4, 0, 2])
    x_bt = np.ascontiguousarray(g["x"].transpose(1, 0, 2))
    wide = np.zeros((2 * G,))
    wide[::2] = g["b"]
    long_x = np.repeat(g["x"], 2, axis=0)
    unaligned = np.ndarray(g["x"].shape, np.float64,
                           buffer=bytearray(g["x"].nbytes + 1), offset=1)
    unaligned[...] = g["x"]
    read_only = {k: v.copy() for k, v in g.items()}
    for v in read_only.values():
        v.flags.writeable = False
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in g.items()}
    wide_lengths = np.zeros(2 * B, np.int64)
    wide_lengths[::2] = lengths
    cases = [
        Accepted("x-transposed-view", dict(x=x_bt.transpose(1, 0, 2)), {}),
        Accepted("x-sliced-steps", dict(x=long_x[::2]), {}),
        Accepted("x-sliced-features", dict(x=np.repeat(g["x"], 3, axis=2)[:, :, ::3]), {}),
        Accepted("x-unaligned", dict(x=unaligned), {}),
        Accepted("weights-fortran", dict(W_x=np.asfortranarray(g["W_x"]),
                                         W_h=np.asfortranarray(g["W_h"])), {}),
        Accepted("b-strided", dict(b=wide[::2]), {}),
        Accepted("states-fortran", dict(h0=np.asfortranarray(g["h0"]),
                                        c0=np.asfortranarray(g["c0"])), {}),
        Accepted("everything-read-only", read_only, {}),
        Accepted("everything-big-endian", swapped, {}),
        Accepted("x-big-endian-weights-fortran-views",
                 dict(x=g["x"].astype(g["x"].dtype.newbyteorder(">")),
                      W_x=np.asfortranarray(g["W_x"]), W_h=g["W_h"][:, :], b=g["b"][::1]),
                 {}, exact=True),
        Accepted("lists", {k: v.tolist() for k, v in g.items()}, {}),
        Accepted("lengths-strided", dict(lengths=wide_lengths[::2]), dict(lengths=lengths)),
        Accepted("lengths-list", dict(lengths=lengths.tolist()), dict(lengths=lengths),
                 exact=True),
        Accepted("lengths-whole-floats", dict(lengths=lengths.astype(float)),
                 dict(lengths=lengths), exact=True),
        Accepted("lengths-uint8", dict(lengths=lengths.astype(np.uint8)),
                 dict(lengths=lengths), exact=True),
        Accepted("lengths-intc", dict(lengths=lengths.astype(np.intc)),
                 dict(lengths=lengths)),
        Accepted("num_threads-numpy-int", dict(num_threads=np.int64(2)),
                 dict(num_threads=2)),
        Accepted("num_threads-large", dict(num_threads=10**6), dict(num_threads=None)),
        Accepted("num_threads-one", dict(num_threads=1), dict(num_threads=None)),
    ]
    cases += [
        Accepted("dhs-sliced", dict(dhs=np.repeat(u["dhs"], 2, axis=2)[:, :, ::2]), {},
                 backward=True),
        Accepted("dhs-transposed-view",
                 dict(dhs=np.ascontiguousarray(u["dhs"].transpose(1, 0, 2))
                      .transpose(1, 0, 2)), {}, backward=True),
        Accepted("dh_n-dc_n-fortran", dict(dh_n=np.asfortranarray(u["dh_n"]),
                                           dc_n=np.asfortranarray(u["dc_n"])), {},
                 backward=True),
        Accepted("upstream-lists", {k: v.tolist() for k, v in u.items()}, {}, backward=True),
        Accepted("upstream-big-endian",
                 {k: v.astype(v.dtype.newbyteorder(">")) for k, v in u.items()}, {},
                 backward=True),
    ]
    return cases


def run_accepted(backend, case):
    """Max relative difference between the case and its contiguous baseline over every
    output and gradient."""
    def outputs(overrides):
        fwd = {k: v for k, v in overrides.items() if k not in ("dhs", "dh_n", "dc_n")}
        hs, (h_n, c_n), cache = call_forward(backend, fwd)
        up = upstream()
        up.update({k: v for k, v in overrides.items() if k in ("dhs", "dh_n", "dc_n")})
        grads = module_of(backend).lstm_backward(up["dhs"], cache, up["dh_n"], up["dc_n"])
        return [hs, h_n, c_n, *grads]

    got = outputs(case.overrides)
    expected = outputs(case.baseline)
    worst = 0.0
    for a, e in zip(got, expected):
        assert a.dtype == np.float64 and a.shape == e.shape
        scale = max(float(np.abs(e).max()), 1e-30)
        worst = max(worst, float(np.abs(a - e).max()) / scale)
    return worst


GROUPS = {
    "forward": forward_error_cases,
    "zero-size": zero_size_cases,
    "backward": backward_error_cases,
    "accepted": accepted_cases,
}


def attempt(call):
    """The outcome of ``call()`` as a JSON-able dict."""
    try:
        call()
    except Exception as exc:   # noqa: BLE001 - every outcome is reported
        return dict(outcome="raised", type=type(exc).__name__,
                    mro=[c.__name__ for c in type(exc).__mro__], message=str(exc))
    return dict(outcome="returned")


def run_case(backend, group, case):
    """The outcome of one case as a JSON-able dict; a backward case checked in both
    modules holds the other module's outcome under "other"."""
    if group == "accepted":
        try:
            return dict(outcome="ok", rel=run_accepted(backend, case))
        except Exception as exc:   # noqa: BLE001 - every outcome is reported
            return dict(outcome="raised", type=type(exc).__name__, message=str(exc))
    if group != "backward":
        return attempt(lambda: call_forward(backend, case.overrides))
    result = attempt(lambda: call_backward(backend, case.fwd_dtype, case.overrides))
    if case.both_modules:
        other = fastlstm if module_of(backend) is reference else reference
        result["other"] = attempt(lambda: call_backward(backend, case.fwd_dtype,
                                                        case.overrides, module=other))
    return result


def child_main(backend, group):
    """Run every case of ``group`` on ``backend``: one JSON line per case, each
    announced first so a crash shows which case caused it."""
    for case in GROUPS[group]():
        print("BEGIN " + case.id, flush=True)
        print("RESULT " + json.dumps(dict(run_case(backend, group, case), id=case.id)),
              flush=True)
    print("DONE", flush=True)


# --- running the compiled cases in a child ---------------------------------------------

_child_runs = {}


def run_in_child(backend, group):
    """Every case of ``group`` on ``backend`` in one child process (cached)."""
    key = (backend, group)
    if key not in _child_runs:
        _child_runs[key] = run_child(f"import test_validation; "
                                     f"test_validation.child_main({backend!r}, {group!r})")
    return _child_runs[key]


def outcome(backend, group, case):
    if backend in IN_PROCESS:
        return run_case(backend, group, case)
    run = run_in_child(backend, group)
    assert run.returncode == 0 and run.done, (
        f"the child running the {group!r} cases on backend {backend!r} exited with "
        f"status {run.returncode} during case {run.last_begun!r}:\n{run.stderr[-3000:]}")
    assert case.id in run.results, f"no result for {case.id}"
    return run.results[case.id]


def names_argument(message, name):
    """``name`` appears in ``message`` as a whole word ("b" in "b must ...", not in
    "by")."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message)


def as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def check_raised(result, case):
    assert result["outcome"] == "raised", f"{case.id}: no exception ({result['outcome']})"
    allowed = [c.__name__ for c in as_tuple(case.exc)]
    assert any(c in result["mro"] for c in allowed), (
        f"{case.id}: {result['type']}: {result['message']} (expected {allowed})")
    message = result["message"]
    for name in as_tuple(case.name):
        assert names_argument(message, name), \
            f"{case.id}: the message does not name {name!r}: {message!r}"
    for detail in as_tuple(case.detail) if case.detail is not None else ():
        assert detail in message, \
            f"{case.id}: the message does not show {detail!r}: {message!r}"
    if case.both_modules:
        check_raised(result["other"], case._replace(both_modules=False))


# --- the tests -------------------------------------------------------------------------

@pytest.mark.parametrize("case", forward_error_cases(), ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_forward_rejects(backend, case):
    check_raised(outcome(backend, "forward", case), case)


@pytest.mark.parametrize("case", zero_size_cases(), ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_size_is_a_value_error(backend, case):
    check_raised(outcome(backend, "zero-size", case), case)


@pytest.mark.parametrize("case", backward_error_cases(), ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backward_rejects(backend, case):
    check_raised(outcome(backend, "backward", case), case)


@pytest.mark.parametrize("case", accepted_cases(), ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_unusual_layouts_are_accepted(backend, case):
    """Non-contiguous, unaligned, read-only, byte-swapped arrays and lists are accepted
    and give what their contiguous copies give (to rounding where num_threads may
    differ; exactly where only the layout or the lengths' dtype does)."""
    result = outcome(backend, "accepted", case)
    assert result["outcome"] == "ok", f"{case.id}: {result}"
    limit = 0.0 if case.exact else 1e-12
    assert result["rel"] <= limit, f"{case.id}: differs from its baseline by {result['rel']}"


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("backend", COMPILED)
def test_child_exits_normally(backend, group):
    """Every case of the group ran in the child and it exited cleanly (no crash)."""
    run = run_in_child(backend, group)
    assert run.returncode == 0 and run.done, (
        f"exit status {run.returncode}, last case begun {run.last_begun!r}:\n"
        f"{run.stderr[-3000:]}")
    assert set(run.results) == {c.id for c in GROUPS[group]()}


def test_every_rule_has_cases():
    """The case lists cover each argument and each rule of the contract."""
    ids = {c.id for c in forward_error_cases()} | {c.id for c in backward_error_cases()}
    for name in ("x", "W_x", "W_h", "b", "h0", "c0", "dhs", "dh_n", "dc_n"):
        assert any(i.startswith(name + "-") for i in ids), name
    named = {c.name for c in forward_error_cases() + backward_error_cases()}
    assert {"lengths", "backend", "num_threads", "cache"} <= named
    assert {c.id for c in zero_size_cases()} >= {"T=0", "B=0", "D=0", "H=0"}


# --- 0-d arrays, ragged lists, hand-built caches -----------------------------------------

@pytest.mark.parametrize("backend", IN_PROCESS)
def test_scalar_argument_reports_its_real_shape(backend):
    with pytest.raises(ValueError) as info:
        call_forward(backend, dict(W_h=np.float64(0.5)))
    assert "()" in str(info.value), str(info.value)


@pytest.mark.parametrize("backend", IN_PROCESS)
def test_ragged_list_names_the_argument(backend):
    with pytest.raises((ValueError, TypeError)) as info:
        call_forward(backend, dict(x=[[[1.0] * D] * B] * (T - 1) + [[[1.0] * (D + 1)] * B]))
    assert names_argument(str(info.value), "x"), str(info.value)


def test_inconsistent_hand_built_cache_does_not_crash():
    code = (
        "import numpy as np, fastlstm\n"
        "from fastlstm import LSTMCache\n"
        f"T, B, D, H = {T}, {B}, {D}, {H}\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((T, B, D))\n"
        "_, _, c = fastlstm.lstm_forward(x, rng.standard_normal((D, 4 * H)),\n"
        "                                rng.standard_normal((H, 4 * H)), np.zeros(4 * H),\n"
        "                                backend='cython')\n"
        "bad = LSTMCache(np.zeros((400, 300, D)), c.W_x, c.W_h, c.gates, c.h_states,\n"
        "                c.c_states, None, None, 'cython')\n"
        "try:\n"
        "    fastlstm.lstm_backward(None, bad, np.ones((300, H)))\n"
        "except (ValueError, TypeError) as e:\n"
        "    print('RAISED', type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=TESTS_DIR, env=child_env())
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    assert "RAISED" in proc.stdout and "cache" in proc.stdout, proc.stdout

# --- the RNN -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_rnn_errors_from_both_backends(backend):
    rng = np.random.default_rng(4)
    k = 1 / np.sqrt(5)
    x = rng.standard_normal((4, 2, 3))
    W_x, W_h, b = (rng.uniform(-k, k, (3, 5)), rng.uniform(-k, k, (5, 5)),
                   rng.uniform(-k, k, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        fastlstm.rnn_forward(x, W_x, W_h, b, nonlinearity="gelu", backend=backend)
    with pytest.raises(ValueError, match="W_h"):
        fastlstm.rnn_forward(x, W_x, W_h[:, :4], b, backend=backend)
    with pytest.raises(TypeError, match="W_x"):
        fastlstm.rnn_forward(x, W_x.astype(np.float32), W_h, b, backend=backend)
    _, _, cache = fastlstm.rnn_forward(x, W_x, W_h, b, backend=backend)
    with pytest.raises(ValueError, match="bptt_truncate"):
        fastlstm.rnn_backward(None, cache, bptt_truncate=-2)
    with pytest.raises(TypeError, match="cache"):
        fastlstm.rnn_backward(None, object())
    with pytest.raises(TypeError, match="cache"):
        _, _, lstm_cache = fastlstm.lstm_forward(x, np.zeros((3, 20)), np.zeros((5, 20)),
                                                 np.zeros(20))
        fastlstm.rnn_backward(None, lstm_cache)


# --- a missing extension; the build and the command line ------------------------------

def test_missing_extension(monkeypatch):
    """backend="cython" without the extension is an error; "auto" warns once and falls
    back to the reference (a broken build is never silently slow)."""
    monkeypatch.setattr(_backend, "lstm_kernels", None)
    monkeypatch.setattr(_backend, "IMPORT_ERROR", ImportError("simulated"))
    monkeypatch.setattr(_backend, "_warned", False)
    with pytest.raises(ImportError, match="cython"):
        call_forward("cython", {})
    with pytest.warns(RuntimeWarning, match="reference"):
        hs, _, cache = call_forward("auto", {})
    assert cache.backend == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call_forward("auto", {})      # warned once only
    np.testing.assert_allclose(hs, call_forward("numpy", {})[0], rtol=0, atol=0)


def test_show_config_reports_the_build(capsys):
    fastlstm.show_config()
    out = capsys.readouterr().out
    assert fastlstm.__version__ in out
    assert "compiled kernels:" in out and "OpenMP:" in out and "BLAS:" in out
    info = fastlstm.config()
    assert info["compiled"] is True
    assert isinstance(info["openmp"], bool)


def test_command_line_runs_the_demo():
    """``python -m fastlstm demo`` (the README's main job) trains and samples."""
    proc = subprocess.run([sys.executable, "-m", "fastlstm", "demo", "--steps", "3",
                           "--hidden", "16", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=TESTS_DIR,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step     3  loss" in proc.stdout and "sample:" in proc.stdout
    assert "falling back" not in proc.stderr
    version = subprocess.run([sys.executable, "-m", "fastlstm", "--version"],
                             capture_output=True, text=True, timeout=60, cwd=TESTS_DIR,
                             env=child_env())
    assert version.stdout.strip().startswith(f"fastlstm {fastlstm.__version__} (")


# --- constructors: every argument checked before anything is built --------------------

# name -> (class, the smallest valid arguments)
CONSTRUCTORS = {
    "LSTM": (nn.LSTM, dict(input_size=3, hidden_size=4)),
    "GRU": (nn.GRU, dict(input_size=3, hidden_size=4)),
    "RNN": (nn.RNN, dict(input_size=3, hidden_size=4)),
    "Linear": (nn.Linear, dict(in_features=3, out_features=4)),
    "Embedding": (nn.Embedding, dict(num_embeddings=5, embedding_dim=3)),
    "Dropout": (nn.Dropout, dict()),
    "CharLM": (models.CharLM, dict(vocab_size=7, hidden_size=4)),
    "WordLM": (models.WordLM, dict(vocab_size=7, embedding_dim=3, hidden_size=4)),
    "SentimentClassifier": (models.SentimentClassifier,
                            dict(vocab_size=7, embedding_dim=3, hidden_size=4)),
}
NAN, INF = float("nan"), float("inf")
BAD_SIZES = [(0, ValueError), (-1, ValueError), (10**30, ValueError), (2.5, TypeError),
             (True, TypeError), ("3", TypeError), (NAN, TypeError), (INF, TypeError),
             (None, TypeError), (np.float64(3.0), TypeError)]
BAD_OPTIONAL_SIZES = [(-1, ValueError), (10**30, ValueError), (2.5, TypeError),
                      (True, TypeError), ("3", TypeError), (NAN, TypeError)]
BAD_THREADS = [(0, ValueError), (-1, ValueError), (10**30, ValueError), (2.5, TypeError),
               (True, TypeError), ("3", TypeError), (NAN, TypeError)]
BAD_PROBABILITIES = [(-0.1, ValueError), (1, ValueError), (1.0, ValueError),
                     (NAN, ValueError), (INF, ValueError), (-INF, ValueError),
                     (10**30, ValueError), ("0.5", TypeError), (None, TypeError),
                     (True, TypeError)]
BAD_DTYPES = [(np.int32, ValueError), (np.float16, ValueError), ("int64", ValueError),
              (np.dtype(">f4"), ValueError), (None, TypeError), ("abc", TypeError),
              (3, TypeError), (2.5, TypeError)]
BAD_SEEDS = [(-1, ValueError), (2.5, TypeError), ("3", TypeError), (True, TypeError),
             (NAN, TypeError)]
BAD_CHOICES = [("bogus", ValueError), (1, TypeError), (None, TypeError)]
BAD_FLAGS = [(1, TypeError), ("yes", TypeError), (None, TypeError)]
BAD_PROJ_SIZES = [(-1, ValueError), (4, ValueError), (5, ValueError), (2.5, TypeError),
                  (True, TypeError), ("3", TypeError), (None, TypeError)]
BAD_BPTT = [(-1, ValueError), (2.5, TypeError), (True, TypeError), ("3", TypeError)]

ARGUMENTS = {   # constructor -> [(argument, [(bad value, exception)])]
    "LSTM": [("input_size", BAD_SIZES), ("hidden_size", BAD_SIZES),
             ("num_layers", BAD_SIZES), ("dropout", BAD_PROBABILITIES),
             ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("init", BAD_CHOICES),
             ("backend", BAD_CHOICES), ("num_threads", BAD_THREADS),
             ("bidirectional", BAD_FLAGS), ("proj_size", BAD_PROJ_SIZES)],
    "GRU": [("input_size", BAD_SIZES), ("hidden_size", BAD_SIZES),
            ("num_layers", BAD_SIZES), ("dropout", BAD_PROBABILITIES),
            ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("init", BAD_CHOICES),
            ("backend", BAD_CHOICES), ("num_threads", BAD_THREADS),
            ("bidirectional", BAD_FLAGS)],
    "RNN": [("input_size", BAD_SIZES), ("hidden_size", BAD_SIZES),
            ("num_layers", BAD_SIZES), ("nonlinearity", BAD_CHOICES),
            ("dropout", BAD_PROBABILITIES), ("bptt_truncate", BAD_BPTT),
            ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("init", BAD_CHOICES),
            ("backend", BAD_CHOICES), ("num_threads", BAD_THREADS),
            ("bidirectional", BAD_FLAGS)],
    "Linear": [("in_features", BAD_SIZES), ("out_features", BAD_SIZES),
               ("bias", BAD_FLAGS), ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS),
               ("num_threads", BAD_THREADS)],
    "Embedding": [("num_embeddings", BAD_SIZES), ("embedding_dim", BAD_SIZES),
                  ("padding_idx", [(5, ValueError), (-6, ValueError), (10**30, ValueError),
                                   (2.5, TypeError), (True, TypeError), ("1", TypeError)]),
                  ("weight", [(np.zeros((5, 4)), ValueError), (np.zeros(15), ValueError),
                              (np.zeros((5, 3), np.int64), TypeError),
                              (np.zeros((5, 3), np.float16), TypeError)]),
                  ("freeze", BAD_FLAGS), ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS)],
    "Dropout": [("p", BAD_PROBABILITIES), ("seed", BAD_SEEDS)],
    "CharLM": [("vocab_size", BAD_SIZES), ("hidden_size", BAD_SIZES),
               ("num_layers", BAD_SIZES), ("embedding_dim", BAD_OPTIONAL_SIZES),
               ("dropout", BAD_PROBABILITIES), ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS),
               ("num_threads", BAD_THREADS), ("cell", BAD_CHOICES + [("LSTM", ValueError)])],
    "WordLM": [("vocab_size", BAD_SIZES), ("embedding_dim", BAD_OPTIONAL_SIZES),
               ("hidden_size", BAD_SIZES), ("num_layers", BAD_SIZES),
               ("cell", BAD_CHOICES), ("dropout", BAD_PROBABILITIES),
               ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("num_threads", BAD_THREADS),
               ("bptt_truncate", BAD_BPTT + [(2, ValueError)])],   # 2: needs cell="rnn"
    "SentimentClassifier": [
        ("vocab_size", BAD_SIZES), ("embedding_dim", BAD_SIZES), ("hidden_size", BAD_SIZES),
        ("num_layers", BAD_SIZES), ("pooling", BAD_CHOICES),
        ("dropout", BAD_PROBABILITIES), ("freeze_embedding", BAD_FLAGS),
        ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("num_threads", BAD_THREADS),
        ("embedding_weight", [(np.zeros((7, 4), np.float32), ValueError),
                              (np.zeros((7, 3), np.int32), TypeError),
                              (np.zeros((7, 3), np.float64), TypeError)]),   # not float32
        ("cell", BAD_CHOICES + [("rnn", ValueError)]),   # the classifier has no vanilla RNN
        ("bidirectional", BAD_FLAGS)],
}


def constructor_cases():
    for ctor, arguments in ARGUMENTS.items():
        for argument, bad in arguments:
            for value, exc in bad:
                shown = (f"array{value.shape}{value.dtype}" if isinstance(value, np.ndarray)
                         else repr(value))
                yield pytest.param(ctor, argument, value, exc,
                                   id=f"{ctor}-{argument}={shown[:20]}")


def takes_seed(ctor):
    return "seed" in inspect.signature(CONSTRUCTORS[ctor][0]).parameters


@pytest.mark.parametrize("ctor, argument, value, exc", list(constructor_cases()))
def test_constructors_reject_bad_arguments(ctor, argument, value, exc):
    cls, kwargs = CONSTRUCTORS[ctor]
    kwargs = dict(kwargs, **{argument: value})
    rng = np.random.default_rng(0)
    if argument != "seed" and takes_seed(ctor):
        kwargs["seed"] = rng          # shared: drawing from it would be work begun
    state = rng.bit_generator.state
    with pytest.raises(exc) as info:
        cls(**kwargs)
    assert str(info.value).startswith(argument), str(info.value)
    assert rng.bit_generator.state == state, "weights were drawn before the check"


def test_every_constructor_argument_is_covered():
    for ctor, (cls, _) in CONSTRUCTORS.items():
        params = set(inspect.signature(cls).parameters) - {"self"}
        assert params == {argument for argument, _ in ARGUMENTS[ctor]}, ctor


@pytest.mark.parametrize("ctor", CONSTRUCTORS)
def test_constructors_accept_numpy_scalars_and_store_plain_values(ctor):
    """NumPy ints and floats are accepted; the config (saved as JSON by checkpoints)
    holds plain Python values."""
    cls, kwargs = CONSTRUCTORS[ctor]
    kwargs = dict(kwargs)
    if ctor in ("LSTM", "GRU", "RNN", "CharLM", "WordLM", "SentimentClassifier"):
        kwargs.update(dropout=0.25, num_layers=2)
    if ctor == "Dropout":
        kwargs.update(p=0.5)
    as_numpy = {k: np.float32(v) if isinstance(v, float) else np.int64(v)
                for k, v in kwargs.items()}
    module = cls(**as_numpy, seed=np.int64(1))
    json.dumps(module.config)
    assert module.config == cls(**kwargs, seed=1).config


def test_valid_edge_values_are_accepted():
    assert nn.Dropout(0.0).p == 0.0
    assert nn.Embedding(5, 3, padding_idx=-5).padding_idx == -5
    assert models.CharLM(7, 4, embedding_dim=0).embed is None
    assert models.WordLM(7, embedding_dim=None, hidden_size=4).embed is None
    assert models.WordLM(7, 3, 4, cell="rnn", bptt_truncate=10**30).rnn.bptt_truncate \
        == 10**30   # any k >= T - 1 is full BPTT
    assert nn.LSTM(3, 4, dtype="float64", seed=np.random.default_rng(0)).W_h_l0.dtype \
        == np.float64
    nn.RNN(3, 4, seed=np.random.SeedSequence(1))
    nn.Linear(3, 4, bias=np.bool_(False), num_threads=np.int64(1))


def test_lstm_with_zero_hidden_units():
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1, got 0"):
        nn.LSTM(5, 0)

"""The private compiled kernels check their own arguments.

``fastlstm.lstm`` and ``fastlstm.rnn`` validate everything before calling the kernels,
but the kernels are reachable from Python too (``fastlstm._lstm.lstm_forward_kernel``
and the rest), and docs/design.md allows no input reachable from Python to crash or write
outside its buffers. Each case breaks one argument of an otherwise valid call and
expects a TypeError or ValueError. All run in one child process, so a missing check
shows up as a failed test instead of taking the test run down.
"""
import json

import numpy as np
import pytest

import fastlstm
from conftest import run_child

pytestmark = pytest.mark.skipif(not fastlstm.config()["compiled"],
                                reason="compiled kernels not built")

T, B, D, H = 5, 3, 4, 6


def lstm_forward_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    G = 4 * H
    return dict(x=rng.standard_normal((T, B, D)).astype(dtype),
                W_x=rng.standard_normal((D, G)).astype(dtype),
                W_h=rng.standard_normal((H, G)).astype(dtype),
                b=np.zeros(G, dtype), gates=np.empty((T, B, G), dtype),
                h_states=np.zeros((T + 1, B, H), dtype),
                c_states=np.zeros((T + 1, B, H), dtype), hs=np.empty((T, B, H), dtype),
                lengths=np.array([5, 0, 3], np.intc), packed=None, split_units=False,
                n_threads=1)


def lstm_backward_args(dtype=np.float32):
    f = lstm_forward_args(dtype)
    G = 4 * H
    return dict(x=f["x"], W_x=f["W_x"], W_h=f["W_h"], gates=f["gates"] * 0,
                h_states=f["h_states"], c_states=f["c_states"],
                dhs=np.ones((T, B, H), dtype), lengths=f["lengths"],
                dh=np.zeros((B, H), dtype), dc=np.zeros((B, H), dtype),
                dh_scratch=np.zeros((B, H), dtype), d_gates=np.empty((2, B, G), dtype),
                dx=np.empty((T, B, D), dtype), dW_x=np.empty((D, G), dtype),
                dW_h=np.empty((H, G), dtype), db_acc=np.zeros(G), small_m_gemm=True,
                split_units=False, n_threads=1)


V = 7


def lstm_forward_lookup_args(dtype=np.float32):
    f = lstm_forward_args(dtype)
    del f["x"], f["W_x"]
    rng = np.random.default_rng(1)
    return dict(ids=rng.integers(0, V, T * B).astype(np.intc),
                table=rng.standard_normal((V, 4 * H)).astype(dtype), **f)


def lstm_backward_lookup_args(dtype=np.float32):
    f = lstm_backward_args(dtype)
    for name in ("x", "W_x", "dx", "dW_x"):
        del f[name]
    lookup = lstm_forward_lookup_args(dtype)
    return dict(ids=lookup["ids"], table=lookup["table"],
                d_table=np.zeros((V, 4 * H), dtype), **f)


def rnn_forward_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((T, B, D)).astype(dtype),
                W_x=rng.standard_normal((D, H)).astype(dtype),
                W_h=rng.standard_normal((H, H)).astype(dtype) * 0.1, b=np.zeros(H, dtype),
                h_states=np.zeros((T + 1, B, H), dtype), hs=np.empty((T, B, H), dtype),
                lengths=None, packed=None, relu=False, n_threads=1)


def rnn_backward_args(dtype=np.float32):
    f = rnn_forward_args(dtype)
    return dict(x=f["x"], W_x=f["W_x"], W_h=f["W_h"], h_states=f["h_states"],
                dhs=np.ones((T, B, H), dtype), dh_n=None, lengths=None,
                dh=np.zeros((B, H), dtype), dh_scratch=np.zeros((B, H), dtype),
                d_pre=np.empty((T, B, H), dtype), dx=np.empty((T, B, D), dtype),
                dW_x=np.empty((D, H), dtype), dW_h=np.empty((H, H), dtype),
                db_acc=np.zeros(H), relu=False, bptt_truncate=-1, small_m_gemm=True,
                n_threads=1)


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def bigger(a):
    return np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)


KERNELS = ("lstm_forward_kernel", "lstm_backward_kernel", "lstm_forward_lookup_kernel",
           "lstm_backward_lookup_kernel", "rnn_forward_kernel", "rnn_backward_kernel")

# (kernel, argument builder, the argument to break, how, expected exception)
CASES = [
    ("lstm_forward_kernel", "lstm_forward_args", "x", "wrong_dtype", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "W_h", "not_array", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "W_h", "bigger", "ValueError"),
    # arrays the sizes are read from, without the dimensions they are read from
    ("lstm_forward_kernel", "lstm_forward_args", "gates", "zero_d", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "W_h", "zero_d", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "x", "flat", "TypeError"),
    ("lstm_backward_kernel", "lstm_backward_args", "gates", "flat", "TypeError"),
    ("lstm_backward_kernel", "lstm_backward_args", "d_gates", "zero_d", "TypeError"),
    ("rnn_forward_kernel", "rnn_forward_args", "x", "zero_d", "TypeError"),
    ("rnn_backward_kernel", "rnn_backward_args", "d_pre", "zero_d", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "b", "bigger", "ValueError"),
    ("lstm_forward_kernel", "lstm_forward_args", "W_x", "bigger", "ValueError"),
    ("lstm_forward_kernel", "lstm_forward_args", "gates", "read_only", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "h_states", "smaller_T", "ValueError"),
    ("lstm_forward_kernel", "lstm_forward_args", "hs", "transposed", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "hs", "flat", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "lengths", "too_long", "ValueError"),
    ("lstm_forward_kernel", "lstm_forward_args", "lengths", "wrong_int", "TypeError"),
    ("lstm_forward_kernel", "lstm_forward_args", "packed", "tiny_packed", "ValueError"),
    ("lstm_forward_kernel", "lstm_forward_args", "n_threads", "zero", "ValueError"),
    ("lstm_backward_kernel", "lstm_backward_args", "dW_h", "bigger", "ValueError"),
    ("lstm_backward_kernel", "lstm_backward_args", "dx", "smaller_T", "ValueError"),
    ("lstm_backward_kernel", "lstm_backward_args", "d_gates", "bigger_rows", "ValueError"),
    ("lstm_backward_kernel", "lstm_backward_args", "d_gates", "no_steps", "ValueError"),
    ("lstm_backward_kernel", "lstm_backward_args", "dhs", "smaller_T", "ValueError"),
    ("lstm_backward_kernel", "lstm_backward_args", "db_acc", "wrong_dtype", "TypeError"),
    ("lstm_backward_kernel", "lstm_backward_args", "dc", "read_only", "TypeError"),
    ("lstm_backward_kernel", "lstm_backward_args", "lengths", "out_of_range", "ValueError"),
    ("rnn_forward_kernel", "rnn_forward_args", "W_h", "bigger", "ValueError"),
    ("rnn_forward_kernel", "rnn_forward_args", "hs", "smaller_T", "ValueError"),
    ("rnn_forward_kernel", "rnn_forward_args", "b", "wrong_dtype", "TypeError"),
    ("rnn_backward_kernel", "rnn_backward_args", "dW_x", "bigger", "ValueError"),
    ("rnn_backward_kernel", "rnn_backward_args", "d_pre", "bigger_rows", "ValueError"),
    ("rnn_backward_kernel", "rnn_backward_args", "h_states", "smaller_T", "ValueError"),
    ("rnn_backward_kernel", "rnn_backward_args", "dh", "read_only", "TypeError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "ids", "past_table",
     "ValueError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "ids", "wrong_int",
     "TypeError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "ids", "too_long",
     "ValueError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "table", "wrong_dtype",
     "TypeError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "table", "narrow",
     "ValueError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "gates", "zero_d",
     "TypeError"),
    ("lstm_forward_lookup_kernel", "lstm_forward_lookup_args", "hs", "smaller_T",
     "ValueError"),
    ("lstm_backward_lookup_kernel", "lstm_backward_lookup_args", "ids", "past_table",
     "ValueError"),
    ("lstm_backward_lookup_kernel", "lstm_backward_lookup_args", "table", "flat",
     "TypeError"),
    ("lstm_backward_lookup_kernel", "lstm_backward_lookup_args", "d_table", "bigger",
     "ValueError"),
    ("lstm_backward_lookup_kernel", "lstm_backward_lookup_args", "d_table", "read_only",
     "TypeError"),
    ("lstm_backward_lookup_kernel", "lstm_backward_lookup_args", "d_gates", "bigger_rows",
     "ValueError"),
]


def broken(how, a):
    if how == "wrong_dtype":
        return a.astype(np.float64 if a.dtype != np.float64 else np.float32)
    if how == "not_array":
        return a.tolist()
    if how == "bigger":
        return bigger(a)
    if how == "read_only":
        return read_only(a)
    if how == "smaller_T":
        return np.zeros((a.shape[0] - 1,) + a.shape[1:], a.dtype)
    if how == "transposed":
        return np.zeros(a.shape[::-1], a.dtype).T
    if how == "flat":
        return a.reshape(-1)
    if how == "zero_d":
        return np.array(1, a.dtype)
    if how == "too_long":
        return np.zeros(B + 1, np.intc)
    if how == "wrong_int":
        return a.astype(np.int64)
    if how == "out_of_range":
        return np.array([T + 1, 0, 1], np.intc)
    if how == "tiny_packed":
        return np.zeros(3, np.float32)
    if how == "zero":
        return 0
    if how == "bigger_rows":
        return np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2]), a.dtype)
    if how == "no_steps":
        return np.zeros((0,) + a.shape[1:], a.dtype)
    if how == "past_table":
        return np.full_like(a, V)
    if how == "narrow":
        return a[:, 1:].copy()
    raise AssertionError(how)


def _f32(*shape):
    return np.ones(shape, np.float32)


# fastlstm._dense: (id, call) with one inconsistent argument each, and a valid call
DENSE_CASES = {
    "matmul-valid": lambda d: d.matmul(_f32(3, 4), _f32(4, 5), _f32(3, 5), False, False,
                                       np.float32(0), 1),
    "matmul-B-rows": lambda d: d.matmul(_f32(3, 4), _f32(5, 5), _f32(3, 5), False, False,
                                        np.float32(0), 1),
    "matmul-B-trans": lambda d: d.matmul(_f32(3, 4), _f32(4, 5), _f32(3, 5), False, True,
                                         np.float32(0), 2),
    "matmul-A-rows": lambda d: d.matmul(_f32(4, 4), _f32(4, 5), _f32(3, 5), False, False,
                                        np.float32(0), 1),
    "xent-valid": lambda d: d.softmax_cross_entropy(_f32(3, 5), np.array([0, 4, 2]),
                                                    _f32(3, 5), False, -100,
                                                    np.float32(1), 1),
    "xent-target": lambda d: d.softmax_cross_entropy(_f32(3, 5), np.array([0, 5, 2]),
                                                     _f32(3, 5), False, -100,
                                                     np.float32(1), 1),
    "xent-negative-target": lambda d: d.softmax_cross_entropy(
        _f32(3, 5), np.array([0, -1, 2]), _f32(3, 5), False, -100, np.float32(1), 1),
    "xent-grad": lambda d: d.softmax_cross_entropy(_f32(3, 5), np.array([0, 4, 2]),
                                                   _f32(2, 5), False, -100,
                                                   np.float32(1), 1),
    "xent-targets-length": lambda d: d.softmax_cross_entropy(
        _f32(3, 5), np.array([0, 4]), _f32(3, 5), False, -100, np.float32(1), 1),
    "adagrad-valid": lambda d: d.adagrad(_f32(40), _f32(40), _f32(40), np.float32(0.1),
                                         np.float32(1e-8), 2),
    "adagrad-g": lambda d: d.adagrad(_f32(40), _f32(39), _f32(40), np.float32(0.1),
                                     np.float32(1e-8), 2),
    "adam-state": lambda d: d.adam(_f32(40), _f32(40), _f32(40), _f32(8), np.float32(0.9),
                                   np.float32(0.999), np.float32(0), np.float32(1e-3),
                                   np.float32(1), np.float32(1e-8), 2),
}


def child_main():
    """Run every case (and each kernel once with valid arguments) in this process."""
    from fastlstm import _dense, _lstm, _rnn
    modules = {"lstm": _lstm, "rnn": _rnn}
    for kernel in KERNELS:
        args = globals()[kernel.replace("_kernel", "_args")]()
        getattr(modules[kernel[:kernel.index("_")]], kernel)(**args)
        print("RESULT " + json.dumps({"id": f"{kernel}-valid", "raised": None}), flush=True)
    for kernel, builder, name, how, _ in CASES:
        args = globals()[builder]()
        args[name] = broken(how, args[name])
        print(f"BEGIN {kernel}-{name}-{how}", flush=True)
        try:
            getattr(modules[kernel[:kernel.index("_")]], kernel)(**args)
            raised, message = None, ""
        except Exception as exc:   # noqa: BLE001 - reported to the parent
            raised, message = type(exc).__name__, str(exc)
        print("RESULT " + json.dumps({"id": f"{kernel}-{name}-{how}", "raised": raised,
                                      "message": message}), flush=True)
    # One sequence split over 2 threads with packed weights passed in (the wrappers no
    # longer pack for one row, but a direct call may): the per-thread copy of W_h must
    # be sized for the packed split's wider unit blocks (H = 96: 64 units, not 48).
    print("BEGIN one-sequence-packed", flush=True)
    T1, D1, H1 = 40, 5, 96
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T1, 1, D1)).astype(np.float32)
    W_x = (rng.standard_normal((D1, 4 * H1)) * 0.1).astype(np.float32)
    W_h = (rng.standard_normal((H1, 4 * H1)) * 0.1).astype(np.float32)
    b = np.zeros(4 * H1, np.float32)
    gates = np.empty((T1, 1, 4 * H1), np.float32)
    h_states = np.zeros((T1 + 1, 1, H1), np.float32)
    c_states = np.zeros((T1 + 1, 1, H1), np.float32)
    hs = np.empty((T1, 1, H1), np.float32)
    packed = np.empty(_lstm.packed_size(H1, True), np.float32)
    previous = _lstm.set_one_sequence_copy_min_steps(1)
    _lstm.lstm_forward_kernel(x, W_x, W_h, b, gates, h_states, c_states, hs, None, packed,
                              True, 2)
    _lstm.set_one_sequence_copy_min_steps(previous)
    from fastlstm import reference
    expected = reference.lstm_forward(x.astype(np.float64), W_x.astype(np.float64),
                                      W_h.astype(np.float64), b.astype(np.float64))[0]
    print("RESULT " + json.dumps({"id": "one-sequence-packed", "raised": None,
                                  "max_error": float(np.abs(hs - expected).max())}),
          flush=True)
    for case_id, call in DENSE_CASES.items():
        print(f"BEGIN {case_id}", flush=True)
        try:
            call(_dense)
            raised, message = None, ""
        except Exception as exc:   # noqa: BLE001 - reported to the parent
            raised, message = type(exc).__name__, str(exc)
        print("RESULT " + json.dumps({"id": case_id, "raised": raised, "message": message}),
              flush=True)
    print("DONE", flush=True)


_run = []


def child_results():
    """What the child printed for every case (run once, in tests/)."""
    if not _run:
        _run.append(run_child("import test_kernel_arguments as t; t.child_main()"))
    run = _run[0]
    assert run.returncode == 0 and run.done, (
        f"the child exited with status {run.returncode} during {run.last_begun!r}:\n"
        f"{run.stderr[-3000:]}")
    return run.results


@pytest.mark.parametrize("kernel", KERNELS)
def test_valid_arguments_run(kernel):
    assert child_results()[f"{kernel}-valid"]["raised"] is None


@pytest.mark.parametrize("kernel, builder, name, how, expected", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_a_broken_argument_is_an_error_naming_it(kernel, builder, name, how, expected):
    result = child_results()[f"{kernel}-{name}-{how}"]
    assert result["raised"] == expected, result
    assert name in result["message"] or how == "zero", result


@pytest.mark.parametrize("case_id", list(DENSE_CASES))
def test_dense_kernels_check_their_shapes(case_id):
    result = child_results()[case_id]
    if case_id.endswith("-valid"):
        assert result["raised"] is None, result
    else:
        assert result["raised"] == "ValueError", result


def test_one_sequence_with_packed_weights_passed_in():
    result = child_results()["one-sequence-packed"]
    assert result["max_error"] < 1e-5, result

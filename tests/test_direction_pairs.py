"""The pair entry points: two calls of a cell's kernel in one parallel region, one thread
each (the two directions of a bidirectional layer at once). Each call of a pair runs
the same code on one thread as a single call with ``num_threads=1``, so the results must
be bitwise equal to the two calls run one after the other; the kernels must reject pairs
whose threads would not pass the same barriers."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastlstm
from fastlstm import _backend, gru, lstm, rnn

pytestmark = pytest.mark.skipif(not _backend.compiled_available(),
                                reason="compiled kernels not built")


def _inputs(cell, T, B, D, H, dtype, seed, lengths):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell] * H
    k = 1 / np.sqrt(H)
    kw = dict(x=rng.standard_normal((T, B, D)).astype(dtype),
              W_x=rng.uniform(-k, k, (D, G)).astype(dtype),
              W_h=rng.uniform(-k, k, (H, G)).astype(dtype),
              b=rng.uniform(-k, k, G).astype(dtype),
              h0=rng.standard_normal((B, H)).astype(dtype),
              lengths=lengths, backend="cython", num_threads=1)
    if cell == "gru":
        kw["b_x"] = kw.pop("b")
        kw["b_h"] = rng.uniform(-k, k, G).astype(dtype)
    elif cell == "lstm":
        kw["c0"] = rng.standard_normal((B, H)).astype(dtype)
    else:
        kw["nonlinearity"] = "tanh"
    return kw


FUNCTIONS = {   # cell -> (forward, backward, forward_pair, backward_pair)
    "lstm": (fastlstm.lstm_forward, fastlstm.lstm_backward, lstm.lstm_forward_pair,
             lstm.lstm_backward_pair),
    "gru": (fastlstm.gru_forward, fastlstm.gru_backward, gru.gru_forward_pair,
            gru.gru_backward_pair),
    "rnn": (fastlstm.rnn_forward, fastlstm.rnn_backward, rnn.rnn_forward_pair,
            rnn.rnn_backward_pair),
}


def _backward_args(cell, result, dhs, seed, bptt_truncate=None):
    hs, final, cache = result
    rng = np.random.default_rng(seed)
    if cell == "lstm":
        h, c = final
        return (dhs, cache, rng.standard_normal(h.shape).astype(h.dtype),
                rng.standard_normal(c.shape).astype(c.dtype))
    if cell == "gru":
        return (dhs, cache, rng.standard_normal(final.shape).astype(final.dtype))
    return (dhs, cache, rng.standard_normal(final.shape).astype(final.dtype), bptt_truncate)


def _flat(result):
    out = []
    for item in result:
        if isinstance(item, tuple):
            out += _flat(item)
        elif isinstance(item, np.ndarray):
            out.append(item)
    return out


SHAPES = [(1, 1, 3, 5), (6, 1, 7, 13), (9, 4, 5, 8), (5, 3, 4, 130), (40, 2, 3, 9)]


@pytest.mark.parametrize("cell", list(FUNCTIONS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d-B%d-D%d-H%d" % s)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_a_pair_equals_its_two_calls_bitwise(cell, dtype, shape, with_lengths):
    T, B, D, H = shape
    forward, backward, forward_pair, backward_pair = FUNCTIONS[cell]
    lengths = None
    if with_lengths:
        lengths = np.array([T, 0] + [(3 * b) % (T + 1) for b in range(2, B + 2)])[:B]
    first = _inputs(cell, T, B, D, H, dtype, 1, lengths)
    second = _inputs(cell, T, B, D, H, dtype, 2, lengths)
    paired = forward_pair(first, second)
    alone = forward(**first), forward(**second)
    for p, a in zip(paired, alone):
        for got, expected in zip(_flat(p), _flat(a)):
            np.testing.assert_array_equal(got, expected)
    rng = np.random.default_rng(3)
    dhs = [rng.standard_normal((T, B, H)).astype(dtype) for _ in range(2)]
    truncations = [None, 2] if cell == "rnn" else [None]
    for k in truncations:
        extra = (k,) if cell == "rnn" else ()
        args = [_backward_args(cell, r, d, 4 + i, *extra)
                for i, (r, d) in enumerate(zip(paired, dhs))]
        for g_pair, g_alone in zip(backward_pair(*args), (backward(*a) for a in args)):
            for got, expected in zip(g_pair, g_alone):
                np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("cell", list(FUNCTIONS))
def test_calls_that_cannot_pair_run_one_after_the_other(cell):
    forward, _, forward_pair, _ = FUNCTIONS[cell]
    first = _inputs(cell, 4, 2, 3, 5, np.float64, 5, None)
    for change in (dict(backend="numpy"), dict(num_threads=2),
                   dict(x=np.ones((3, 2, 3)))):
        second = dict(_inputs(cell, 4, 2, 3, 5, np.float64, 6, None), **change)
        paired = forward_pair(first, second)
        for p, a in zip(paired, (forward(**first), forward(**second))):
            for got, expected in zip(_flat(p), _flat(a)):
                np.testing.assert_array_equal(got, expected)


def _kernel_call(cell, T=4, B=2, D=3, H=5, dtype=np.float64, n_threads=1):
    """A forward kernel's argument tuple, as the functional API builds it."""
    kw = _inputs(cell, T, B, D, H, dtype, 7, None)
    module = {"lstm": lstm, "gru": gru, "rnn": rnn}[cell]
    args = getattr(module, f"validate_{cell}_forward")(**kw)
    if cell == "rnn":
        return rnn._ForwardCall(args, n_threads).arguments
    return module._ForwardCall(args).arguments[:-1] + (n_threads,)


PAIR_KERNELS = {"lstm": lambda: _backend.lstm_kernels.lstm_forward_pair_kernel,
                "gru": lambda: gru._kernels.gru_forward_pair_kernel,
                "rnn": lambda: _backend.rnn_kernels.rnn_forward_pair_kernel}


@pytest.mark.parametrize("cell", list(FUNCTIONS))
@pytest.mark.parametrize("other, exc, match", [
    (dict(T=5), ValueError, "same T, B, H"),
    (dict(B=3), ValueError, "same T, B, H"),
    (dict(H=6), ValueError, "same T, B, H"),
    (dict(dtype=np.float32), TypeError, "one float dtype"),
    (dict(n_threads=2), ValueError, "one thread"),
])
def test_pair_kernels_reject_calls_whose_threads_would_not_meet(cell, other, exc, match):
    kernel = PAIR_KERNELS[cell]()
    with pytest.raises(exc, match=match):
        kernel(_kernel_call(cell), _kernel_call(cell, **other))


@pytest.mark.parametrize("cell", list(FUNCTIONS))
def test_pair_kernels_check_the_number_of_arguments(cell):
    kernel = PAIR_KERNELS[cell]()
    call = _kernel_call(cell)
    with pytest.raises(TypeError, match="arguments"):
        kernel(call, call[:-1])


def test_a_pair_on_one_granted_thread():
    """With OMP_THREAD_LIMIT=1 the runtime grants the pair's region one thread, which
    then runs both calls one after the other."""
    script = (
        "import numpy as np\n"
        "from test_direction_pairs import FUNCTIONS, _inputs, _flat, _backward_args\n"
        "for cell, (forward, backward, forward_pair, backward_pair) in FUNCTIONS.items():\n"
        "    for dtype in (np.float32, np.float64):\n"
        "        lengths = np.array([6, 0, 3])\n"
        "        first = _inputs(cell, 6, 3, 4, 70, dtype, 1, lengths)\n"
        "        second = _inputs(cell, 6, 3, 4, 70, dtype, 2, lengths)\n"
        "        paired = forward_pair(first, second)\n"
        "        alone = forward(**first), forward(**second)\n"
        "        for p, a in zip(paired, alone):\n"
        "            assert all(np.array_equal(g, e) for g, e in zip(_flat(p), _flat(a)))\n"
        "        dhs = np.ones((6, 3, 70), dtype)\n"
        "        args = [_backward_args(cell, r, dhs, 4) for r in paired]\n"
        "        for gp, ga in zip(backward_pair(*args), (backward(*a) for a in args)):\n"
        "            assert all(np.array_equal(g, e) for g, e in zip(gp, ga))\n"
        "print('OK')\n")
    tests = pathlib.Path(__file__).parent
    env = dict(os.environ, OMP_THREAD_LIMIT="1",
               PYTHONPATH=os.pathsep.join([str(pathlib.Path(fastlstm.__file__).resolve()
                                                .parent.parent), str(tests),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tests, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("cell", list(FUNCTIONS))
def test_a_stalling_pair_backs_off_to_one_call_after_the_other(cell, monkeypatch):
    """While the stall guard backs off (a busy machine held a pair's threads up), the
    pair functions run the two calls one after the other, with the same results."""
    from fastlstm import _schedule
    forward, backward, forward_pair, backward_pair = FUNCTIONS[cell]
    first = _inputs(cell, 7, 3, 4, 9, np.float32, 8, np.array([7, 0, 4]))
    second = _inputs(cell, 7, 3, 4, 9, np.float32, 9, np.array([7, 0, 4]))
    calls = []
    kernels = {"lstm": _backend.lstm_kernels, "gru": gru._kernels,
               "rnn": _backend.rnn_kernels}[cell]
    for name in (f"{cell}_forward_pair_kernel", f"{cell}_backward_pair_kernel"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *a, _real=real, _name=name: (calls.append(_name),
                                                                _real(*a))[1])
    expected = [forward(**first), forward(**second)]
    for backing_off in (False, True):
        calls.clear()
        monkeypatch.setattr(_schedule.stall_guard, "until",
                            float("inf") if backing_off else 0.0)
        paired = forward_pair(first, second)
        args = [_backward_args(cell, r, np.ones((7, 3, 9), np.float32), 10) for r in paired]
        grads = backward_pair(*args)
        assert len(calls) == (0 if backing_off else 2)
        for p, a in zip(paired, expected):
            for got, want in zip(_flat(p), _flat(a)):
                np.testing.assert_array_equal(got, want)
        for g, a in zip(grads, args):
            for got, want in zip(g, backward(*a)):
                np.testing.assert_array_equal(got, want)

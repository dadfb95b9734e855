"""Every rule of DESIGN.md's "Errors, never crashes": bad input raises ValueError or
TypeError naming the argument, from every backend, before any compiled code runs."""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastlstm
from fastlstm import _backend, reference
from conftest import TESTS_DIR, child_env, make_lstm_inputs

BACKENDS = ["numpy", "cython", "auto"]
T, B, D, H = 4, 3, 5, 6


def good(dtype=np.float64):
    x, W_x, W_h, b, h0, c0 = make_lstm_inputs(T, B, D, H, dtype)
    return dict(x=x, W_x=W_x, W_h=W_h, b=b, h0=h0, c0=c0)


def forward_cases():
    """(id, overrides of the good arguments, exception type, name the message must hold)."""
    f32 = good(np.float32)
    g = good()
    return [
        ("x-2d", dict(x=g["x"][0]), ValueError, "x"),
        ("x-4d", dict(x=g["x"][None]), ValueError, "x"),
        ("x-int", dict(x=np.ones((T, B, D), np.int64)), TypeError, "x"),
        ("x-float16", dict(x=g["x"].astype(np.float16)), TypeError, "x"),
        ("x-complex", dict(x=g["x"].astype(np.complex128)), TypeError, "x"),
        ("x-bool", dict(x=g["x"] > 0), TypeError, "x"),
        ("x-object", dict(x=np.empty((T, B, D), object)), TypeError, "x"),
        ("x-none", dict(x=None), TypeError, "x"),
        ("x-string", dict(x="abc"), TypeError, "x"),
        ("W_x-rows", dict(W_x=g["W_x"][:-1]), ValueError, "W_x"),
        ("W_x-1d", dict(W_x=g["W_x"].ravel()), ValueError, "W_x"),
        ("W_x-cols", dict(W_x=g["W_x"][:, :-1]), ValueError, "W_x"),
        ("W_h-not-4H", dict(W_h=g["W_h"][:, :-1]), ValueError, "W_h"),
        ("W_h-square", dict(W_h=np.zeros((H, H))), ValueError, "W_h"),
        ("W_h-3d", dict(W_h=g["W_h"][None]), ValueError, "W_h"),
        ("b-short", dict(b=g["b"][:-1]), ValueError, "b"),
        ("b-2d", dict(b=g["b"][None]), ValueError, "b"),
        ("h0-shape", dict(h0=g["h0"][:-1]), ValueError, "h0"),
        ("h0-transposed", dict(h0=g["h0"].T), ValueError, "h0"),
        ("c0-shape", dict(c0=g["c0"][:, :-1]), ValueError, "c0"),
        ("mixed-W_x", dict(W_x=f32["W_x"]), TypeError, "W_x"),
        ("mixed-W_h", dict(W_h=f32["W_h"]), TypeError, "W_h"),
        ("mixed-b", dict(b=f32["b"]), TypeError, "b"),
        ("mixed-h0", dict(h0=f32["h0"]), TypeError, "h0"),
        ("mixed-c0", dict(c0=f32["c0"]), TypeError, "c0"),
        ("mixed-x", dict(x=f32["x"]), TypeError, "x"),
        ("zero-T", dict(x=g["x"][:0]), ValueError, "T"),
        ("zero-B", dict(x=g["x"][:, :0], h0=None, c0=None), ValueError, "B"),
        ("zero-D", dict(x=g["x"][:, :, :0], W_x=g["W_x"][:0]), ValueError, "D"),
        ("zero-H", dict(W_h=np.zeros((0, 0)), W_x=np.zeros((D, 0)), b=np.zeros(0),
                        h0=None, c0=None), ValueError, "H"),
        ("lengths-negative", dict(lengths=[1, -1, 2]), ValueError, "lengths"),
        ("lengths-too-long", dict(lengths=[1, T + 1, 2]), ValueError, "lengths"),
        ("lengths-shape", dict(lengths=[1, 2]), ValueError, "lengths"),
        ("lengths-2d", dict(lengths=[[1, 2, 3]]), ValueError, "lengths"),
        ("lengths-nan", dict(lengths=np.array([1.0, np.nan, 2.0])), ValueError, "lengths"),
        ("lengths-inf", dict(lengths=np.array([1.0, np.inf, 2.0])), ValueError, "lengths"),
        ("lengths-fraction", dict(lengths=np.array([1.0, 1.5, 2.0])), ValueError, "lengths"),
        ("lengths-bool", dict(lengths=np.array([True, False, True])), TypeError, "lengths"),
        ("lengths-str", dict(lengths=["a", "b", "c"]), TypeError, "lengths"),
        ("backend-unknown", dict(backend="torch"), ValueError, "backend"),
        ("backend-not-str", dict(backend=1), ValueError, "backend"),
        ("threads-zero", dict(num_threads=0), ValueError, "num_threads"),
        ("threads-negative", dict(num_threads=-1), ValueError, "num_threads"),
        ("threads-float", dict(num_threads=1.5), TypeError, "num_threads"),
        ("threads-bool", dict(num_threads=True), TypeError, "num_threads"),
        ("threads-str", dict(num_threads="2"), TypeError, "num_threads"),
    ]


def call_forward(backend, overrides, module=fastlstm):
    kwargs = good()
    kwargs.update(backend=backend)
    kwargs.update(overrides)
    args = [kwargs.pop(k) for k in ("x", "W_x", "W_h", "b", "h0", "c0")]
    return module.lstm_forward(*args, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", forward_cases(), ids=lambda c: c[0])
def test_forward_rejects_bad_input(backend, case):
    _, overrides, exc, name = case
    with pytest.raises(exc) as info:
        call_forward(backend, overrides)
    assert name in str(info.value)


@pytest.mark.parametrize("case", forward_cases(), ids=lambda c: c[0])
def test_reference_module_rejects_bad_input(case):
    _, overrides, exc, name = case
    with pytest.raises(exc) as info:
        call_forward("numpy", overrides, module=reference)
    assert name in str(info.value)


def backward_cases():
    rng = np.random.default_rng(0)
    return [
        ("dhs-shape", dict(dhs=rng.standard_normal((T, B, H + 1))), ValueError, "dhs"),
        ("dhs-2d", dict(dhs=rng.standard_normal((B, H))), ValueError, "dhs"),
        ("dhs-float32", dict(dhs=rng.standard_normal((T, B, H)).astype(np.float32)),
         TypeError, "dhs"),
        ("dhs-int", dict(dhs=np.ones((T, B, H), int)), TypeError, "dhs"),
        ("dh_n-shape", dict(dh_n=rng.standard_normal((B + 1, H))), ValueError, "dh_n"),
        ("dc_n-shape", dict(dc_n=rng.standard_normal((H, B))), ValueError, "dc_n"),
        ("dc_n-dtype", dict(dc_n=rng.standard_normal((B, H)).astype(np.float32)),
         TypeError, "dc_n"),
        ("cache-wrong", dict(cache=(1, 2, 3)), TypeError, "cache"),
        ("cache-none", dict(cache=None), TypeError, "cache"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", backward_cases(), ids=lambda c: c[0])
def test_backward_rejects_bad_input(backend, case):
    _, overrides, exc, name = case
    _, _, cache = call_forward(backend, {})
    kwargs = dict(dhs=None, cache=cache, dh_n=None, dc_n=None)
    kwargs.update(overrides)
    for module in (fastlstm, reference):
        with pytest.raises(exc) as info:
            module.lstm_backward(**kwargs)
        assert name in str(info.value)


def test_error_messages_say_what_was_expected():
    with pytest.raises(ValueError) as info:
        call_forward("cython", dict(W_x=np.zeros((D + 1, 4 * H))))
    msg = str(info.value)
    assert "(D, 4H)" in msg and str((D, 4 * H)) in msg and str((D + 1, 4 * H)) in msg
    with pytest.raises(TypeError) as info:
        call_forward("cython", dict(W_h=good(np.float32)["W_h"]))
    assert "float32" in str(info.value) and "float64" in str(info.value)


def test_bad_input_never_crashes_the_interpreter():
    """All the cases above, in a child process per backend: a segfault or abort there
    shows up as a failed exit status here instead of taking the test run down."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, {tests!r})
        import test_validation as tv
        import fastlstm
        bad = 0
        for backend in ("cython", "auto"):
            for name, overrides, exc, arg in tv.forward_cases():
                try:
                    tv.call_forward(backend, overrides)
                except exc as e:
                    if arg not in str(e):
                        bad += 1
                else:
                    bad += 1
            _, _, cache = tv.call_forward(backend, {{}})
            for name, overrides, exc, arg in tv.backward_cases():
                kwargs = dict(dhs=None, cache=cache, dh_n=None, dc_n=None)
                kwargs.update(overrides)
                try:
                    fastlstm.lstm_backward(**kwargs)
                except exc:
                    pass
                else:
                    bad += 1
        print("BAD", bad)
    """).format(tests=TESTS_DIR)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=TESTS_DIR, env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BAD 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_non_contiguous_and_byte_swapped_inputs_are_accepted():
    g = good()
    swapped = g["x"].astype(g["x"].dtype.newbyteorder(">"))
    out = fastlstm.lstm_forward(swapped, np.asfortranarray(g["W_x"]), g["W_h"][:, :],
                                g["b"][::1], g["h0"], g["c0"])
    expected = fastlstm.lstm_forward(g["x"], g["W_x"], g["W_h"], g["b"], g["h0"], g["c0"])
    np.testing.assert_array_equal(out[0], expected[0])
    assert out[0].dtype == np.float64


def test_lengths_accept_integral_floats_and_any_int_dtype():
    g = good()
    base = fastlstm.lstm_forward(**g, lengths=np.array([4, 0, 2]))[0]
    for lengths in (np.array([4.0, 0.0, 2.0]), np.array([4, 0, 2], np.uint8), [4, 0, 2]):
        np.testing.assert_array_equal(fastlstm.lstm_forward(**g, lengths=lengths)[0], base)


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

from fastlstm import models, nn  # noqa: E402

# name -> (class, the smallest valid arguments)
CONSTRUCTORS = {
    "LSTM": (nn.LSTM, dict(input_size=3, hidden_size=4)),
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
BAD_BPTT = [(-1, ValueError), (2.5, TypeError), (True, TypeError), ("3", TypeError)]

ARGUMENTS = {   # constructor -> [(argument, [(bad value, exception)])]
    "LSTM": [("input_size", BAD_SIZES), ("hidden_size", BAD_SIZES),
             ("num_layers", BAD_SIZES), ("dropout", BAD_PROBABILITIES),
             ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("init", BAD_CHOICES),
             ("backend", BAD_CHOICES), ("num_threads", BAD_THREADS)],
    "RNN": [("input_size", BAD_SIZES), ("hidden_size", BAD_SIZES),
            ("num_layers", BAD_SIZES), ("nonlinearity", BAD_CHOICES),
            ("dropout", BAD_PROBABILITIES), ("bptt_truncate", BAD_BPTT),
            ("dtype", BAD_DTYPES), ("seed", BAD_SEEDS), ("init", BAD_CHOICES),
            ("backend", BAD_CHOICES), ("num_threads", BAD_THREADS)],
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
               ("num_threads", BAD_THREADS)],
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
                              (np.zeros((7, 3), np.float64), TypeError)])],   # not float32
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
    import inspect
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
    import inspect
    for ctor, (cls, _) in CONSTRUCTORS.items():
        params = set(inspect.signature(cls).parameters) - {"self"}
        assert params == {argument for argument, _ in ARGUMENTS[ctor]}, ctor


@pytest.mark.parametrize("ctor", CONSTRUCTORS)
def test_constructors_accept_numpy_scalars_and_store_plain_values(ctor):
    """NumPy ints and floats are accepted; the config (saved as JSON by checkpoints)
    holds plain Python values."""
    import json
    cls, kwargs = CONSTRUCTORS[ctor]
    kwargs = dict(kwargs)
    if ctor in ("LSTM", "RNN", "CharLM", "WordLM", "SentimentClassifier"):
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


def test_issue_example_lstm_with_zero_hidden_units():
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1, got 0"):
        nn.LSTM(5, 0)

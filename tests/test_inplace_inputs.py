"""Arrays changed in place between a forward pass and its backward pass: the caches
reference ``x`` and the weights, so such a change raises ``InputModifiedError`` naming
the array, for every function and layer, backend and dtype; unchanged round trips, NaNs
and the optimizer's step after backward never raise; ``set_debug_checks(True)`` catches
a single changed element that the default sample does not see."""
import subprocess
import sys

import numpy as np
import pytest

import fastlstm
from fastlstm import InputModifiedError, _containers, nn, optim, reference
from fastlstm.lstm import lookup_available, lstm_backward_lookup, lstm_forward_lookup
from fastlstm.models import CharLM, SentimentClassifier
from conftest import TESTS_DIR, child_env

BACKENDS = ["cython", "numpy"]
DTYPES = [np.float32, np.float64]
T, B, D, H = 5, 3, 4, 6

compiled_only = pytest.mark.skipif(not lookup_available(np.float64),
                                   reason="compiled kernels not built")


@pytest.fixture
def debug_checks():
    """Full checks for the test's body, the previous setting restored afterwards."""
    previous = fastlstm.set_debug_checks(True)
    yield
    fastlstm.set_debug_checks(previous)


@pytest.fixture(autouse=True)
def sampled_checks_by_default():
    """Each test starts with the default (sampled) checks, whatever the environment."""
    previous = fastlstm.set_debug_checks(False)
    yield
    fastlstm.set_debug_checks(previous)


class Case:
    """One recurrent function pair and the arrays its forward takes."""

    def __init__(self, kind, dtype, seed=0):
        rng = np.random.default_rng(seed)
        G = 4 * H if kind == "lstm" else H
        self.kind = kind
        self.arrays = dict(x=rng.standard_normal((T, B, D)).astype(dtype),
                           W_x=(0.4 * rng.standard_normal((D, G))).astype(dtype),
                           W_h=(0.4 * rng.standard_normal((H, G))).astype(dtype),
                           b=(0.1 * rng.standard_normal(G)).astype(dtype),
                           h0=(0.5 * rng.standard_normal((B, H))).astype(dtype))
        if kind == "lstm":
            self.arrays["c0"] = (0.5 * rng.standard_normal((B, H))).astype(dtype)
        self.dhs = rng.standard_normal((T, B, H)).astype(dtype)

    def forward(self, backend, module=fastlstm):
        a = self.arrays
        if self.kind == "lstm":
            return module.lstm_forward(a["x"], a["W_x"], a["W_h"], a["b"], a["h0"], a["c0"],
                                       backend=backend)[2]
        return module.rnn_forward(a["x"], a["W_x"], a["W_h"], a["b"], a["h0"],
                                  backend=backend)[2]

    def backward(self, cache, module=fastlstm):
        if self.kind == "lstm":
            return module.lstm_backward(self.dhs, cache)
        return module.rnn_backward(self.dhs, cache)


def assert_same_grads(actual, expected):
    for name, a, e in zip(expected._fields, actual, expected):
        np.testing.assert_array_equal(a, e, err_msg=name)


def assert_names(info, name):
    """The error is a ValueError whose message and ``name`` give the array's name."""
    assert isinstance(info.value, ValueError)
    assert info.value.name == name, str(info.value)
    message = str(info.value)
    assert message.startswith(f"{name} was changed in place after"), message
    assert "backward" in message


# --- lstm_forward/lstm_backward and rnn_forward/rnn_backward ---------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("name", ["x", "W_x", "W_h"])
def test_scaling_an_array_between_forward_and_backward_raises(kind, backend, dtype, name):
    case = Case(kind, dtype)
    cache = case.forward(backend)
    case.arrays[name] *= 3
    with pytest.raises(InputModifiedError) as info:
        case.backward(cache)
    assert_names(info, name)
    assert f"after {kind}_forward and before {kind}_backward" in str(info.value)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("name", ["x", "W_x", "W_h"])
def test_the_reference_module_checks_too(kind, dtype, name):
    case = Case(kind, dtype)
    cache = case.forward("numpy", module=reference)
    case.arrays[name] += 1
    with pytest.raises(InputModifiedError) as info:
        case.backward(cache, module=reference)
    assert_names(info, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("name", ["x", "W_x", "W_h"])
def test_new_values_copied_in_raise(kind, backend, dtype, name):
    """New data of the same shape copied into the array (the next batch, an optimizer's
    step) rather than a rescaling."""
    case = Case(kind, dtype)
    cache = case.forward(backend)
    a = case.arrays[name]
    a[...] = np.random.default_rng(99).standard_normal(a.shape)
    with pytest.raises(InputModifiedError) as info:
        case.backward(cache)
    assert_names(info, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_an_unchanged_round_trip_does_not_raise(kind, backend, dtype):
    case = Case(kind, dtype)
    cache = case.forward(backend)
    first = case.backward(cache)
    again = case.backward(cache)      # a second backward of the same cache is allowed
    assert_same_grads(again, first)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_arrays_the_forward_copied_may_change(kind, backend, dtype):
    """b, h0 and c0 reach the cache as copies (in the gates and the states), so changing
    them after the forward changes no gradient, and is not an error."""
    case = Case(kind, dtype)
    expected = case.backward(case.forward(backend))
    cache = case.forward(backend)
    for name in ("b", "h0", "c0"):
        if name in case.arrays:
            case.arrays[name] *= 3
    assert_same_grads(case.backward(cache), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_copied_input_may_change(backend, dtype):
    """A non-contiguous x is copied once by the forward: the caller's array is then free."""
    case = Case("lstm", dtype)
    expected = case.backward(case.forward(backend))
    a = case.arrays
    x_f = np.asfortranarray(a["x"])
    cache = fastlstm.lstm_forward(x_f, a["W_x"], a["W_h"], a["b"], a["h0"], a["c0"],
                                  backend=backend)[2]
    x_f *= 3
    assert_same_grads(case.backward(cache), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_nan_inputs_do_not_raise(kind, backend, dtype):
    """The fingerprints compare bits: NaN (unequal to itself as a number) matches."""
    for full in (False, True):
        fastlstm.set_debug_checks(full)
        case = Case(kind, dtype)
        case.arrays["x"][...] = np.nan
        case.arrays["W_h"][0] = np.nan
        cache = case.forward(backend)
        grads = case.backward(cache)
        assert np.isnan(grads.dW_x).any()


# --- the full check under set_debug_checks --------------------------------------------

def unsampled_index(n):
    """A flat index the default fingerprint does not read in an array of n elements."""
    sampled = {min(int(f * n), n - 1) for f in _containers.SAMPLE_POSITIONS}
    return next(i for i in range(n) if i not in sampled)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("name", ["x", "W_x", "W_h"])
def test_debug_checks_catch_one_changed_element(kind, backend, dtype, name):
    case = Case(kind, dtype)
    a = case.arrays[name]
    i = unsampled_index(a.size)
    # The default sample does not read element i, so it does not see this edit ...
    cache = case.forward(backend)
    a.flat[i] += 1
    case.backward(cache)
    a.flat[i] -= 1
    # ... and the full check does.
    previous = fastlstm.set_debug_checks(True)
    try:
        cache = case.forward(backend)
        a.flat[i] += 1
        with pytest.raises(InputModifiedError) as info:
            case.backward(cache)
    finally:
        fastlstm.set_debug_checks(previous)
    assert_names(info, name)


def test_a_cache_keeps_the_check_it_was_made_with(debug_checks):
    case = Case("lstm", np.float64)
    cache = case.forward("cython")
    fastlstm.set_debug_checks(False)
    case.arrays["x"].flat[unsampled_index(case.arrays["x"].size)] += 1
    with pytest.raises(InputModifiedError):
        case.backward(cache)


def test_set_debug_checks_takes_a_bool_and_returns_the_previous_setting():
    assert fastlstm.set_debug_checks(True) is False
    assert fastlstm.set_debug_checks(np.bool_(False)) is True
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="set_debug_checks"):
            fastlstm.set_debug_checks(bad)


CHILD = """
import numpy as np, fastlstm
x = np.ones((4, 2, 3)); W_h = np.full((5, 20), 0.1)
cache = fastlstm.lstm_forward(x, np.full((3, 20), 0.1), W_h, np.zeros(20))[2]
W_h[0, 1] = 2.0
try:
    fastlstm.lstm_backward(None, cache, np.ones((2, 5)))
    print("NOT RAISED")
except fastlstm.InputModifiedError as e:
    print("RAISED", e.name)
"""


@pytest.mark.parametrize("value, expected", [("1", "RAISED W_h"), ("0", "NOT RAISED"),
                                             ("", "NOT RAISED")])
def test_environment_variable_sets_the_check_at_import(value, expected):
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, cwd=TESTS_DIR,
                          env=child_env(FASTLSTM_DEBUG_CHECKS=value))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == expected


def test_environment_variable_rejects_other_values():
    proc = subprocess.run([sys.executable, "-c", "import fastlstm"], capture_output=True,
                          text=True, timeout=120, cwd=TESTS_DIR,
                          env=child_env(FASTLSTM_DEBUG_CHECKS="yes"))
    assert proc.returncode != 0
    assert "FASTLSTM_DEBUG_CHECKS='yes'" in proc.stderr


# --- the sampler ----------------------------------------------------------------------

@compiled_only
def test_compiled_sampler_equals_the_numpy_twin():
    from fastlstm._lstm import sampled_bytes
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n).astype(dt) for n in (0, 1, 15, 16, 17, 1000, 99991)
              for dt in (np.float32, np.float64)]
    arrays += [rng.standard_normal((25, 1, 65)).astype(np.float32),
               np.arange(600, dtype=np.intc).reshape(20, 30), np.array(3.5),
               rng.standard_normal((8, 9))[:, ::2],     # not contiguous: not sampled
               None, [1.0, 2.0]]
    for a in arrays:
        assert sampled_bytes((a,), _containers.SAMPLE_POSITIONS) == \
            _containers.python_sampled_bytes((a,), _containers.SAMPLE_POSITIONS)
    together = tuple(arrays)
    assert sampled_bytes(together, _containers.SAMPLE_POSITIONS) == \
        _containers.python_sampled_bytes(together, _containers.SAMPLE_POSITIONS)


def test_the_sample_covers_every_sixteenth_of_an_array():
    n = 1000
    indices = sorted(min(int(f * n), n - 1) for f in _containers.SAMPLE_POSITIONS)
    assert [i * 16 // n for i in indices] == list(range(16))


def test_changed_array_names_the_first_changed_array():
    rng = np.random.default_rng(1)
    arrays = (rng.standard_normal(100), rng.standard_normal(7), rng.standard_normal(300))
    for full in (False, True):
        fastlstm.set_debug_checks(full)
        recorded = _containers.fingerprint(arrays)
        assert _containers.changed_array(arrays, recorded) is None
        for k in (2, 1, 0):
            arrays[k][...] *= 2
            assert _containers.changed_array(arrays, recorded) == k


# --- the looked-up input projection ---------------------------------------------------------

def lookup_case(dtype, ids_dtype=np.intc, seed=0):
    rng = np.random.default_rng(seed)
    V = 7
    return dict(table=(0.4 * rng.standard_normal((V, 4 * H))).astype(dtype),
                ids=rng.integers(0, V, (T, B)).astype(ids_dtype),
                W_h=(0.4 * rng.standard_normal((H, 4 * H))).astype(dtype),
                b=np.zeros(4 * H, dtype)), rng.standard_normal((T, B, H)).astype(dtype)


@compiled_only
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["table", "W_h", "ids"])
def test_lookup_path_raises_naming_the_array(dtype, name):
    args, dhs = lookup_case(dtype)
    cache = lstm_forward_lookup(**args)[2]
    if name == "ids":   # (intc and contiguous: the cache references the caller's ids)
        args["ids"][...] = (args["ids"] + 1) % args["table"].shape[0]
    else:
        args[name] *= 3
    with pytest.raises(InputModifiedError) as info:
        lstm_backward_lookup(dhs, cache)
    assert_names(info, name)
    assert "lstm_forward_lookup" in str(info.value)


@compiled_only
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_lookup_round_trip_and_copied_ids(dtype):
    args, dhs = lookup_case(dtype, ids_dtype=np.int64)
    expected = lstm_backward_lookup(dhs, lstm_forward_lookup(**args)[2])
    cache = lstm_forward_lookup(**args)[2]
    args["ids"][...] = 0      # int64 ids are converted, so the cache holds a copy
    args["b"] += 1
    for got, want in zip(lstm_backward_lookup(dhs, cache), expected):
        np.testing.assert_array_equal(got, want)


@compiled_only
def test_lookup_debug_check_catches_one_element(debug_checks):
    args, dhs = lookup_case(np.float32)
    cache = lstm_forward_lookup(**args)[2]
    args["table"].flat[unsampled_index(args["table"].size)] += 1
    with pytest.raises(InputModifiedError) as info:
        lstm_backward_lookup(dhs, cache)
    assert_names(info, "table")


# --- the layers -----------------------------------------------------------------------

def stacked(kind, backend, dtype):
    make = nn.LSTM if kind == "lstm" else nn.RNN
    return make(D, H, num_layers=2, dtype=dtype, seed=3, backend=backend)


def grads_of(module):
    return {name: p.grad.copy() for name, p in module.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("edit", ["the input x", "W_x_l0", "W_h_l0", "W_x_l1", "W_h_l1"])
def test_stacked_layers_name_the_changed_parameter(kind, backend, dtype, edit):
    m = stacked(kind, backend, dtype)
    x = np.random.default_rng(4).standard_normal((T, B, D)).astype(dtype)
    hs, _ = m(x)
    if edit == "the input x":
        x *= 3
    else:
        getattr(m, edit).data *= 3
    with pytest.raises(InputModifiedError) as info:
        m.backward(np.ones_like(hs))
    expected = edit if edit == "the input x" else f"parameter {edit}"
    assert info.value.name == expected
    kind_name = type(m).__name__
    assert f"after {kind_name}.forward and before {kind_name}.backward" in str(info.value)
    # raised before any gradient was accumulated
    assert all(not g.any() for g in grads_of(m).values())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_training_loop_with_optimizer_steps_after_backward_does_not_raise(kind, backend,
                                                                          dtype):
    """forward, backward, step, again: every step changes every weight in place after its
    backward, and the next forward records the new values."""
    m = stacked(kind, backend, dtype)
    opt = optim.SGD(m.parameters(), lr=0.1)
    x = np.random.default_rng(5).standard_normal((T, B, D)).astype(dtype)
    before = {name: p.data.copy() for name, p in m.named_parameters()}
    for step in range(3):
        opt.zero_grad()
        hs, _ = m(x)
        m.backward(np.ones_like(hs))
        opt.step()
    assert all(not np.array_equal(p.data, before[name]) for name, p in m.named_parameters())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_stacked_layer_bias_may_change_before_backward(kind, backend, dtype):
    m = stacked(kind, backend, dtype)
    x = np.random.default_rng(4).standard_normal((T, B, D)).astype(dtype)
    hs, _ = m(x)
    m.backward(np.ones_like(hs))
    expected = grads_of(m)
    m.zero_grad()
    hs, _ = m(x)
    m.b_l0.data += 1
    m.b_l1.data += 1
    m.backward(np.ones_like(hs))
    for name, g in grads_of(m).items():
        np.testing.assert_array_equal(g, expected[name], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stacked_layer_debug_check_catches_one_element(backend, dtype, debug_checks):
    m = stacked("lstm", backend, dtype)
    x = np.random.default_rng(4).standard_normal((T, B, D)).astype(dtype)
    hs, _ = m(x)
    W = m.W_h_l1.data
    W.flat[unsampled_index(W.size)] += 1
    with pytest.raises(InputModifiedError) as info:
        m.backward(np.ones_like(hs))
    assert info.value.name == "parameter W_h_l1"


@compiled_only
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_lookup_layer_names_W_x_l0(dtype):
    """nn.LSTM on one-hot ids looks W_x_l0 itself up; on embedded ids, a table computed
    from it (``rows @ W_x_l0``)."""
    m = nn.LSTM(D, H, dtype=dtype, seed=3)
    ids = np.random.default_rng(6).integers(0, D, (T, B))
    hs, _ = m(ids)
    assert m._lookup and m._caches[0][0].table is m.W_x_l0.data
    m.W_x_l0.data *= 3
    with pytest.raises(InputModifiedError) as info:
        m.backward(np.ones_like(hs))
    assert info.value.name == "parameter W_x_l0 (the lookup table)"

    emb = nn.Embedding(D, D, dtype=dtype, seed=7)
    hs, _ = m(ids, embedding=emb)
    assert m._lookup and m._caches[0][0].table is not m.W_x_l0.data
    m.W_x_l0.data *= 3
    with pytest.raises(InputModifiedError) as info:
        m.backward(np.ones_like(hs))
    assert info.value.name == "parameter W_x_l0 (the lookup table was computed from it)"

    hs, _ = m(ids, embedding=emb)
    m.backward(np.ones_like(hs))     # unchanged: no error


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("edit", ["the input x", "parameter W"])
def test_linear_names_the_changed_array(dtype, edit):
    lin = nn.Linear(D, 3, dtype=dtype, seed=1)
    x = np.random.default_rng(2).standard_normal((T, B, D)).astype(dtype)
    y = lin(x)
    if edit == "the input x":
        x *= 3
    else:
        lin.W.data *= 3
    with pytest.raises(InputModifiedError) as info:
        lin.backward(np.ones_like(y))
    assert info.value.name == edit
    assert "after Linear.forward and before Linear.backward" in str(info.value)
    assert not lin.W.grad.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_linear_round_trip_bias_edit_and_debug_check(dtype):
    lin = nn.Linear(D, 3, dtype=dtype, seed=1)
    x = np.random.default_rng(2).standard_normal((T, B, D)).astype(dtype)
    dy = np.ones((T, B, 3), dtype)
    lin(x)
    dx = lin.backward(dy)
    dW = lin.W.grad.copy()
    lin.zero_grad()
    lin(x)
    lin.b.data += 1            # the backward does not read b
    np.testing.assert_array_equal(lin.backward(dy), dx)
    np.testing.assert_array_equal(lin.W.grad, dW)
    previous = fastlstm.set_debug_checks(True)
    try:
        lin(x)
        x.flat[unsampled_index(x.size)] += 1
        with pytest.raises(InputModifiedError):
            lin.backward(dy)
    finally:
        fastlstm.set_debug_checks(previous)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_embedding_keeps_its_own_copy_of_the_ids(dtype):
    emb = nn.Embedding(7, 3, dtype=dtype, seed=0)
    ids = np.random.default_rng(3).integers(0, 7, (T, B))
    dout = np.random.default_rng(4).standard_normal((T, B, 3)).astype(dtype)
    emb(ids)
    emb.backward(dout)
    expected = emb.weight.grad.copy()
    emb.zero_grad()
    emb(ids)
    ids[...] = 0          # the next batch written into the same buffer
    emb.backward(dout)
    np.testing.assert_array_equal(emb.weight.grad, expected)


def test_models_raise_for_a_step_between_forward_and_backward():
    """The mistake the check is for: the optimizer's step before the backward pass."""
    ids = np.random.default_rng(0).integers(0, 11, (6, 4))
    for model in (CharLM(11, 8, seed=0), CharLM(11, 8, embedding_dim=5, seed=0),
                  SentimentClassifier(11, 5, 8, seed=0)):
        opt = optim.SGD(model.parameters(), lr=0.1)
        out = model(ids)[0] if isinstance(model, CharLM) else model(ids)
        model.backward(np.ones_like(out))
        opt.step()
        out = model(ids)[0] if isinstance(model, CharLM) else model(ids)
        opt.step()
        with pytest.raises(InputModifiedError):
            model.backward(np.ones_like(out))


@compiled_only
def test_lookup_backward_rejects_another_cache():
    case = Case("lstm", np.float64)
    with pytest.raises(TypeError, match="LSTMLookupCache"):
        lstm_backward_lookup(case.dhs, case.forward("cython"))


def test_the_error_pickles():
    """(Process pools send exceptions back pickled.)"""
    import pickle
    error = pickle.loads(pickle.dumps(InputModifiedError("W_h", "lstm_forward",
                                                         "lstm_backward")))
    assert isinstance(error, InputModifiedError) and error.name == "W_h"
    assert str(error).startswith("W_h was changed in place after lstm_forward")

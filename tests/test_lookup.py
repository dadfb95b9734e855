"""The looked-up input projection (fastlstm.lstm.lstm_forward_lookup, and nn.LSTM on ids
with an embedding or one-hot, as the models use it) against the plain compiled LSTM on the gathered inputs and
against the NumPy reference: float64 to ~1e-10, float32 dtype-aware; odd sizes, B=1, T=1,
the hidden-unit split, 1 and 2 threads, lengths (0 and T included), initial and final
state gradients."""
import numpy as np
import pytest

import fastlstm
from fastlstm.lstm import lookup_available, lstm_backward_lookup, lstm_forward_lookup
from fastlstm import nn
from fastlstm.models import CharLM, SentimentClassifier, WordLM

pytestmark = pytest.mark.skipif(not lookup_available(np.float64),
                                reason="compiled kernels not built")

SHAPES = [  # T, B, V, E, H, threads
    (1, 1, 3, 2, 5, 1), (5, 3, 7, 4, 13, 1), (6, 7, 11, 6, 13, 2), (25, 32, 65, 64, 100, 2),
    (9, 2, 5, 3, 200, 2),    # B < threads, wide layer: the hidden-unit split
]


def _tol(dtype):
    return 1e-10 if dtype == np.float64 else 5e-4


@pytest.fixture(params=["default", "packed", "in-place"])
def backward_pack(request):
    """The backward's step products over W_h^T packed from the first step, never
    packed, or as the size heuristic says (the lookup backward shares that loop)."""
    kernels = fastlstm._backend.lstm_kernels
    setting = {"default": None, "packed": 1, "in-place": 10**9}[request.param]
    if setting is not None:
        previous = kernels.set_backward_pack_min_step_rows(setting)
        request.addfinalizer(lambda: kernels.set_backward_pack_min_step_rows(previous))
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T, B, V, E, H, threads", SHAPES)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_lookup_equals_lstm_on_gathered_inputs(dtype, T, B, V, E, H, threads,
                                                  with_lengths, backward_pack):
    rng = np.random.default_rng(T * 100 + B * 10 + H)
    table_E = rng.standard_normal((V, E)).astype(dtype)
    W_x = (rng.standard_normal((E, 4 * H)) * 0.3).astype(dtype)
    W_h = (rng.standard_normal((H, 4 * H)) * 0.3).astype(dtype)
    b = rng.standard_normal(4 * H).astype(dtype)
    ids = rng.integers(0, V, (T, B))
    h0, c0, dh_n, dc_n = rng.standard_normal((4, B, H)).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T
        if B > 1:
            lengths[1] = 0
    hs, (h, c), cache = fastlstm.lstm_forward(table_E[ids], W_x, W_h, b, h0, c0,
                                              lengths=lengths, num_threads=threads)
    g = fastlstm.lstm_backward(dhs, cache, dh_n, dc_n)
    hs2, (h2, c2), cache2 = lstm_forward_lookup(ids, table_E @ W_x, W_h, b, h0, c0,
                                                lengths=lengths, num_threads=threads)
    d_table, dh0, dc0, dW_h, db = lstm_backward_lookup(dhs, cache2, dh_n, dc_n)
    d_E = np.zeros_like(table_E)
    np.add.at(d_E, ids.reshape(-1), g.dx.reshape(T * B, E))
    pairs = {"hs": (hs, hs2), "h_n": (h, h2), "c_n": (c, c2), "dh0": (g.dh0, dh0),
             "dc0": (g.dc0, dc0), "dW_h": (g.dW_h, dW_h), "db": (g.db, db),
             "dW_x": (g.dW_x, table_E.T @ d_table), "dE": (d_E, d_table @ W_x.T)}
    for name, (want, got) in pairs.items():
        assert got.dtype == dtype, name
        err = np.abs(want - got).max() / max(1.0, np.abs(want).max())
        assert err <= _tol(dtype), f"{name}: relative error {err:.2e}"


def test_lookup_rejects_bad_arguments():
    W_h = np.zeros((3, 12))
    b = np.zeros(12)
    table = np.zeros((5, 12))
    ids = np.zeros((2, 4), np.int64)
    with pytest.raises(TypeError, match="ids"):
        lstm_forward_lookup(ids.astype(float), table, W_h, b)
    # the rules of lstm_forward: a wrong rank or shape is a ValueError, a wrong dtype a
    # TypeError, each naming the argument
    with pytest.raises(ValueError, match="ids must be 2-D"):
        lstm_forward_lookup(ids[0], table, W_h, b)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        lstm_forward_lookup(ids + 5, table, W_h, b)
    with pytest.raises(ValueError, match="table"):
        lstm_forward_lookup(ids, np.zeros((5, 8)), W_h, b)
    with pytest.raises(TypeError, match="W_h has dtype float64 but table has dtype float32"):
        lstm_forward_lookup(ids, table.astype(np.float32), W_h, b)
    with pytest.raises(TypeError, match="table must be a float32 or float64 array"):
        lstm_forward_lookup(ids, table.astype(np.int64), W_h, b)
    with pytest.raises(ValueError, match="W_h must have shape"):
        lstm_forward_lookup(ids, table, W_h[:, :8], b)
    with pytest.raises(ValueError, match="b must have shape"):
        lstm_forward_lookup(ids, table, W_h, b[:4])
    with pytest.raises(ValueError, match="lengths"):
        lstm_forward_lookup(ids, table, W_h, b, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="num_threads"):
        lstm_forward_lookup(ids, table, W_h, b, num_threads=0)
    with pytest.raises(ValueError, match="h0"):
        lstm_forward_lookup(ids, table, W_h, b, h0=np.zeros((3, 3)))
    _, _, cache = lstm_forward_lookup(ids, table, W_h, b)
    with pytest.raises(ValueError, match="dhs"):
        lstm_backward_lookup(np.zeros((2, 4, 4)), cache)
    with pytest.raises(TypeError, match="dh_n has dtype float32 but table has dtype float64"):
        lstm_backward_lookup(None, cache, np.zeros((4, 3), np.float32))
    grads = lstm_backward_lookup(None, cache)
    assert isinstance(grads, fastlstm.LSTMLookupGrads)
    assert grads.d_table.shape == table.shape and grads.dW_h.shape == W_h.shape


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("input_kind", ["one-hot", "embedding", "frozen-embedding"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_layers_on_ids_equal_the_layers_on_gathered_inputs(kind, input_kind, num_layers):
    """nn.LSTM / nn.RNN on ids own the whole input path: the same outputs as on the rows
    the ids stand for, W_x_l0.grad filled, the embedding's gradient accumulated."""
    V, E, H, T, B = 6, 4, 5, 7, 3
    D = V if input_kind == "one-hot" else E
    make = nn.LSTM if kind == "lstm" else nn.RNN
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 4, (T, B))   # few distinct ids: the LSTM looks them up
    dhs = rng.standard_normal((T, B, H))
    emb = emb_ref = None
    if input_kind != "one-hot":
        frozen = input_kind == "frozen-embedding"
        emb = nn.Embedding(V, E, dtype=np.float64, seed=2, freeze=frozen)
        emb_ref = nn.Embedding(V, E, dtype=np.float64, seed=2, freeze=frozen)
    on_ids = make(D, H, num_layers, dtype=np.float64, seed=1)
    ref = make(D, H, num_layers, dtype=np.float64, seed=1)
    out, state = on_ids(ids, None, embedding=emb)
    x = emb_ref(ids) if emb_ref is not None else np.eye(V)[ids]
    out_ref, state_ref = ref(x)
    if kind == "lstm":
        assert on_ids._lookup
    np.testing.assert_allclose(out, out_ref, rtol=1e-10, atol=1e-12)
    dx, _ = on_ids.backward(dhs)
    assert dx is None
    dx_ref, _ = ref.backward(dhs)
    if emb_ref is not None:
        emb_ref.backward(dx_ref)
    for (name, p), (_, p_ref) in zip(on_ids.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.grad, p_ref.grad, rtol=1e-9, atol=1e-12, err_msg=name)
    if emb is not None:
        np.testing.assert_allclose(emb.weight.grad, emb_ref.weight.grad, rtol=1e-9,
                                   atol=1e-12)
        assert emb.weight.grad.any() == (input_kind == "embedding")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_layers_check_ids_and_the_embedding(kind):
    make = nn.LSTM if kind == "lstm" else nn.RNN
    layer = make(4, 3, dtype=np.float64, seed=0)
    ids = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        layer(ids + 4)
    with pytest.raises(ValueError, match="ids must be 2-D"):
        layer(ids[0])
    with pytest.raises(TypeError, match="embedding must be None or an nn.Embedding"):
        layer(ids, None, embedding=np.zeros((5, 4)))
    with pytest.raises(ValueError, match="input_size is 4"):
        layer(ids, None, embedding=nn.Embedding(5, 3, dtype=np.float64))
    with pytest.raises(TypeError, match="embedding has dtype float32"):
        layer(ids, None, embedding=nn.Embedding(5, 4, dtype=np.float32))
    with pytest.raises(TypeError, match="integer ids"):
        layer(np.zeros((2, 3, 4)), None, embedding=nn.Embedding(5, 4, dtype=np.float64))
    with pytest.raises(ValueError, match="Embedding ids must lie in"):
        layer(ids + 5, None, embedding=nn.Embedding(5, 4, dtype=np.float64))


def _grads(model):
    return {k: p.grad.copy() for k, p in model.named_parameters()}


def _lm_step(model, ids, targets, state=None):
    from fastlstm.nn.functional import cross_entropy
    logits, state = model(ids, state)
    loss, dlogits = cross_entropy(logits, targets)
    model.zero_grad()
    model.backward(dlogits)
    return loss, state


@pytest.mark.parametrize("make", [
    lambda: CharLM(9, 13, embedding_dim=None, dtype=np.float64, seed=1),
    lambda: CharLM(9, 13, embedding_dim=5, dtype=np.float64, seed=1),
    lambda: CharLM(9, 13, num_layers=2, embedding_dim=5, dtype=np.float64, seed=1),
    lambda: WordLM(9, 5, 13, dtype=np.float64, seed=1),
], ids=["charlm-onehot", "charlm-embedding", "charlm-2-layers", "wordlm"])
def test_language_models_lookup_equals_reference_backend(make):
    """The fused path (compiled lookup) and the plain NumPy reference path give the same
    loss, carried state and gradients of every parameter."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (12, 3))       # few distinct ids: the lookup runs
    targets = rng.integers(0, 9, (12, 3))
    fused, plain = make(), make()
    plain.rnn.backend = "numpy"
    loss_f, state_f = _lm_step(fused, ids, targets)
    assert fused.rnn._lookup
    loss_p, state_p = _lm_step(plain, ids, targets)
    assert not plain.rnn._lookup
    assert loss_f == pytest.approx(loss_p, rel=1e-12)
    for a, b in zip(state_f, state_p):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    gf, gp = _grads(fused), _grads(plain)
    for name in gp:
        np.testing.assert_allclose(gf[name], gp[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_language_model_with_varied_ids_takes_the_plain_path():
    model = CharLM(50, 7, embedding_dim=4, dtype=np.float64, seed=0)
    _lm_step(model, np.arange(40).reshape(8, 5), np.zeros((8, 5), np.int64))
    assert not model.rnn._lookup


@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_sentiment_lookup_equals_reference_backend(freeze, pooling):
    from fastlstm.nn.functional import binary_cross_entropy_with_logits
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 5, (10, 4))
    lengths = np.array([10, 3, 7, 1])
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    models = []
    for backend in ("auto", "numpy"):
        m = SentimentClassifier(6, 5, 7, pooling=pooling, freeze_embedding=freeze,
                                dtype=np.float64, seed=3)
        m.lstm.backend = backend
        loss, dlogits = binary_cross_entropy_with_logits(m(ids, lengths), labels)
        m.zero_grad()
        m.backward(dlogits)
        models.append((loss, m))
    (loss_f, fused), (loss_p, plain) = models
    assert fused.lstm._lookup and not plain.lstm._lookup
    assert loss_f == pytest.approx(loss_p, rel=1e-12)
    gf, gp = _grads(fused), _grads(plain)
    assert ("embed.weight" in gp) == (not freeze)
    for name in gp:
        np.testing.assert_allclose(gf[name], gp[name], rtol=1e-9, atol=1e-12, err_msg=name)

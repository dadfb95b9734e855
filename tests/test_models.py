"""The seeds' models: gradcheck, learning, padding invariance, sampling, checkpoints;
every cell (LSTM, GRU, vanilla RNN) and the bidirectional classifier."""
import numpy as np
import pytest

import fastlstm
from fastlstm import optim
from fastlstm.models import CharLM, SentimentClassifier, WordLM, sample
from fastlstm.nn.functional import binary_cross_entropy_with_logits, cross_entropy

F64 = np.float64


def _lm_loss(ids, targets):
    def run(m):
        logits, _ = m(ids)
        loss, d = cross_entropy(logits, targets)
        m.backward(d)
        return loss
    return run


@pytest.mark.parametrize("make", [
    lambda: CharLM(6, 5, dtype=F64, seed=0),
    lambda: CharLM(6, 5, embedding_dim=3, num_layers=2, dtype=F64, seed=1),
    lambda: WordLM(7, 3, 4, cell="lstm", dtype=F64, seed=2),
    lambda: WordLM(7, 3, 4, cell="rnn", dtype=F64, seed=3),
    lambda: CharLM(6, 5, num_layers=2, dtype=F64, seed=4, cell="gru"),
    lambda: CharLM(6, 5, embedding_dim=3, dtype=F64, seed=5, cell="rnn"),
    lambda: WordLM(7, 3, 4, cell="gru", dtype=F64, seed=6),
], ids=["char-onehot", "char-embed-2layer", "word-lstm", "word-rnn", "char-gru-2layer",
        "char-rnn", "word-gru"])
def test_language_models_pass_gradcheck(make):
    m = make()
    rng = np.random.default_rng(4)
    V = m.vocab_size
    ids, targets = rng.integers(0, V, (4, 2)), rng.integers(0, V, (4, 2))
    report = fastlstm.gradcheck(_lm_loss(ids, targets), m)
    assert report.ok, str(report)


SENTIMENT_GRADCHECKS = [   # (cell, bidirectional, layers, pooling): each pooling of each
    ("lstm", False, 1, "last"), ("lstm", False, 1, "mean"), ("lstm", False, 1, "max"),
    ("lstm", True, 2, "last"), ("lstm", True, 1, "mean"), ("lstm", True, 1, "max"),
    ("gru", False, 2, "last"), ("gru", False, 1, "mean"), ("gru", False, 1, "max"),
    ("gru", True, 1, "last"), ("gru", True, 1, "mean"), ("gru", True, 2, "max")]


@pytest.mark.parametrize("cell,bidirectional,layers,pooling", SENTIMENT_GRADCHECKS,
                         ids=[f"{'bi' * b}{c}-{n}layer-{p}"
                              for c, b, n, p in SENTIMENT_GRADCHECKS])
def test_sentiment_classifier_passes_gradcheck(cell, bidirectional, layers, pooling):
    # One thread: at these sizes a direction pair on two threads only waits for the
    # other (tens of ms per call on a busy machine, over thousands of calls here).
    m = SentimentClassifier(8, 3, 4, layers, pooling=pooling, dtype=F64, seed=5, cell=cell,
                            bidirectional=bidirectional, num_threads=1)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 8, (5, 3))
    lengths = np.array([5, 2, 3])
    y = np.array([1.0, 0.0, 1.0])

    def run(m):
        loss, d = binary_cross_entropy_with_logits(m(ids, lengths), y)
        m.backward(d)
        return loss
    report = fastlstm.gradcheck(run, m)
    assert report.ok, str(report)


def test_char_lm_overfits_a_short_text():
    text = ("the quick brown fox jumps over the lazy dog. " * 5)[:200]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    m = CharLM(len(chars), 64, seed=7)
    opt = optim.Adam(m.parameters(), lr=0.01)
    x, y = ids[:-1, None], ids[1:, None]
    for _ in range(150):
        m.zero_grad()
        logits, _ = m(x)
        loss, d = cross_entropy(logits, y)
        m.backward(d)
        opt.step()
    assert loss < 0.1, loss
    # and it recites the text greedily from its first character
    out = sample(m, ids[:1], 40, temperature=0)
    assert "".join(chars[i] for i in out) == text[1:41]


def test_sentiment_classifier_learns_a_separable_task_and_ignores_padding():
    rng = np.random.default_rng(8)
    n, V = 400, 20
    lengths = rng.integers(3, 12, n)
    labels = rng.integers(0, 2, n)
    seqs = []
    for L, y in zip(lengths, labels):
        s = rng.integers(2, 10, L) if y == 0 else rng.integers(10, 20, L)
        seqs.append(s)
    T = lengths.max()
    ids = np.zeros((T, n), np.int64)   # id 0 pads
    for j, s in enumerate(seqs):
        ids[:len(s), j] = s
    m = SentimentClassifier(V, 8, 16, pooling="mean", seed=9)
    opt = optim.Adam(m.parameters(), lr=0.02)
    for step in range(60):
        m.zero_grad()
        loss, d = binary_cross_entropy_with_logits(m(ids, lengths), labels.astype(np.float32))
        m.backward(d)
        opt.step()
    m.eval()
    acc = np.mean((m(ids, lengths) > 0) == labels)
    assert acc > 0.95, acc
    padded = np.concatenate([ids, np.full((7, n), 3)])   # extra garbage past the lengths
    np.testing.assert_allclose(m(padded, lengths), m(ids, lengths), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_bidirectional_classifier_pools_both_directions_and_ignores_padding(cell, pooling):
    H, T = 5, 6
    m = SentimentClassifier(9, 3, H, num_layers=2, pooling=pooling, dtype=F64, seed=2,
                            cell=cell, bidirectional=True, num_threads=1).eval()
    assert m.head.W.data.shape == (2 * H, 1)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 9, (T, 4))
    lengths = np.array([6, 1, 4, 2])
    logits = m(ids, lengths)
    padded = np.concatenate([ids, rng.integers(1, 9, (3, 4))])   # garbage past the ends
    np.testing.assert_allclose(m(padded, lengths), logits, rtol=1e-12, atol=1e-12)
    # The pooled vector from the layer's outputs, by the definition: "last" is the
    # forward direction at each review's last step, then the reverse direction at its
    # first (where the reverse pass ends).
    hs, _ = m.recurrent(ids, lengths=lengths, embedding=m.embed)
    cols = np.arange(4)
    if pooling == "last":
        pooled = np.concatenate([hs[lengths - 1, cols, :H], hs[0, cols, H:]], axis=1)
    else:
        valid = np.arange(T)[:, None, None] < lengths[None, :, None]
        pooled = (np.where(valid, hs, 0).sum(0) / lengths[:, None] if pooling == "mean"
                  else np.where(valid, hs, -np.inf).max(0))
    want = (pooled @ m.head.W.data + m.head.b.data)[:, 0]
    np.testing.assert_allclose(logits, want, rtol=1e-12, atol=1e-12)


def test_sampling_is_seeded_and_validated():
    m = CharLM(9, 8, seed=10)
    assert sample(m, [1, 2], 10, seed=3) == sample(m, [1, 2], 10, seed=3)
    greedy = sample(m, [1], 5, temperature=0)
    assert greedy == sample(m, [1], 5, temperature=0, top_k=1, seed=99)
    assert all(0 <= i < 9 for i in sample(m, [1], 20, top_k=2, seed=1))
    with pytest.raises(ValueError, match="prefix"):
        sample(m, [], 3)
    with pytest.raises(ValueError, match="temperature"):
        sample(m, [1], 3, temperature=-1)


def test_models_round_trip_through_checkpoints(tmp_path):
    for m in (CharLM(9, 8, embedding_dim=4, seed=11), WordLM(12, 4, 8, cell="rnn", seed=12),
              SentimentClassifier(10, 4, 6, pooling="max", seed=13)):
        fastlstm.save(tmp_path / "m.npz", m, epoch=1)
        again = fastlstm.load(tmp_path / "m.npz").model
        assert type(again) is type(m)
        for a, b in zip(m.state_dict().values(), again.state_dict().values()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda: CharLM(11, 12, num_layers=2, seed=0),
    lambda: CharLM(11, 12, embedding_dim=5, seed=1),
    lambda: WordLM(13, 6, 10, num_layers=2, cell="rnn", seed=2),
    lambda: WordLM(13, 6, 10, cell="lstm", seed=3),
    lambda: CharLM(11, 12, num_layers=2, seed=4, cell="gru"),
    lambda: CharLM(11, 12, embedding_dim=5, seed=5, cell="rnn"),
    lambda: WordLM(13, 6, 10, num_layers=2, cell="gru", seed=6),
], ids=["char-onehot-2layers", "char-embedded", "word-rnn-2layers", "word-lstm",
        "char-gru-2layers", "char-rnn-embedded", "word-gru-2layers"])
def test_decode_step_equals_the_checked_forward(make):
    # The fast sampling path (NumPy, no checks) against the kernels, step after step.
    m = make().eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.vocab_size, (6, 3))
    full, final = m(ids)
    logits, state = m(ids[:1])
    for t in range(1, 6):
        logits, state = m.decode_step(ids[t], state)
        np.testing.assert_allclose(logits, full[t], rtol=1e-5, atol=1e-5)
    for got, want in zip(state if isinstance(state, tuple) else (state,),
                         final if isinstance(final, tuple) else (final,)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_rnn_language_models_learn_and_sample(cell):
    text = ("the quick brown fox jumps over the lazy dog. " * 5)[:200]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    m = CharLM(len(chars), 48, seed=7, cell=cell)
    opt = optim.Adam(m.parameters(), lr=0.01)
    x, y = ids[:-1, None], ids[1:, None]
    losses = []
    for _ in range(60):
        m.zero_grad()
        logits, _ = m(x)
        loss, d = cross_entropy(logits, y)
        m.backward(d)
        opt.step()
        losses.append(loss)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses[::10]
    out = sample(m, ids[:3], 20, seed=1)
    assert len(out) == 20 and out == sample(m, ids[:3], 20, seed=1)


def test_sample_stops_at_the_stop_id_and_checks_its_arguments():
    m = CharLM(9, 8, seed=0)
    greedy = sample(m, [1], 30, temperature=0)
    stop = greedy[3]
    cut = sample(m, [1], 30, temperature=0, stop=stop)
    assert cut == greedy[:greedy.index(stop) + 1]
    assert sample(m, [1], 0) == []
    for bad in (dict(length=-1), dict(length=2.5), dict(top_k=0), dict(temperature=float("nan"))):
        kwargs = {"length": 3, **bad}
        with pytest.raises(ValueError):
            sample(m, [1], **kwargs)
    with pytest.raises(ValueError, match="integer ids"):
        sample(m, [0.5], 3)

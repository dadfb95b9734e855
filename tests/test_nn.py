"""Layers, gradcheck and checkpoints: every layer and loss passes gradcheck;
stacked LSTM/RNN equal torch's; checkpoints round-trip bitwise and reject bad files."""
import os

import numpy as np
import pytest

import fastlstm
from fastlstm import nn, optim
from fastlstm.nn.functional import binary_cross_entropy_with_logits, cross_entropy
from conftest import rel_err

F64 = np.float64


def _weights(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def test_gradcheck_linear_embedding_and_losses():
    x = _weights((3, 2, 4), 0)
    lin = nn.Linear(4, 5, dtype=F64, seed=1)
    R = _weights((3, 2, 5), 2)

    def run_linear(m):
        y = m(x)
        m.backward(R)
        return float(np.sum(y * R))
    report = fastlstm.gradcheck(run_linear, lin)
    assert report.ok, str(report)

    emb = nn.Embedding(7, 3, padding_idx=0, dtype=F64, seed=3)
    R2 = _weights((2, 3, 3), 4)

    def run_embedding(m, ids):
        out = m(ids)
        m.backward(R2)
        return float(np.sum(out * R2))
    report = fastlstm.gradcheck(lambda m: run_embedding(m, np.array([[1, 3, 6], [6, 2, 1]])),
                                emb)
    assert report.ok, str(report)
    # the padding row gets no gradient by design, even where it is looked up
    emb.zero_grad()
    run_embedding(emb, np.array([[1, 0, 6], [6, 0, 1]]))
    assert not np.any(emb.weight.grad[0]) and np.any(emb.weight.grad[6])

    targets = np.array([[1, 2], [0, 4]])
    report = fastlstm.gradcheck(lambda z: cross_entropy(z, targets), [_weights((2, 2, 5), 5)])
    assert report.ok, str(report)
    y = np.array([0.0, 1.0, 1.0])
    report = fastlstm.gradcheck(lambda z: binary_cross_entropy_with_logits(z, y),
                                {"z": _weights(3, 6)})
    assert report.ok, str(report)


def test_gradcheck_dropout():
    R = _weights((4, 3), 30)

    def run(x):
        drop = nn.Dropout(0.3, seed=1)   # the same mask on every call
        y = drop(x)
        return float(np.sum(y * R)), drop.backward(R)
    report = fastlstm.gradcheck(run, [_weights((4, 3), 31)])
    assert report.ok, str(report)


def test_gradcheck_reports_a_wrong_gradient():
    report = fastlstm.gradcheck(lambda a: (float(np.sum(a ** 2)), [3 * a]), [_weights(4, 7)])
    assert not report.ok and "FAILS" in str(report)
    with pytest.raises(TypeError, match="float64"):
        fastlstm.gradcheck(lambda a: (0.0, [a]), [np.zeros(3, np.float32)])


@pytest.mark.parametrize("kind", ["lstm", "rnn-tanh", "rnn-relu", "rnn-truncated"])
def test_gradcheck_stacked_recurrent_layers(kind):
    T, B, D, H = 4, 2, 3, 4
    x = _weights((T, B, D), 8)
    lengths = np.array([4, 2])
    R = _weights((T, B, H), 9)
    if kind == "lstm":
        m = nn.LSTM(D, H, num_layers=2, dtype=F64, seed=10)
        Rh = _weights((2, B, H), 11)

        def run(m):
            hs, (h_n, c_n) = m(x, lengths=lengths)
            m.backward(R, (Rh, Rh))
            return float(np.sum(hs * R) + np.sum(h_n * Rh) + np.sum(c_n * Rh))
    else:
        nonlinearity = "relu" if kind == "rnn-relu" else "tanh"
        m = nn.RNN(D, H, num_layers=2, nonlinearity=nonlinearity, dtype=F64, seed=12)
        Rh = _weights((2, B, H), 13)

        def run(m):
            hs, h_n = m(x, lengths=lengths)
            m.backward(R, Rh)
            return float(np.sum(hs * R) + np.sum(h_n * Rh))
    if kind == "rnn-truncated":
        # truncation changes the gradient on purpose: it must NOT match full differences
        m.bptt_truncate = 1
        assert not fastlstm.gradcheck(run, m).ok
        m.bptt_truncate = None
    report = fastlstm.gradcheck(run, m)
    assert report.ok, str(report)


def test_two_layer_lstm_equals_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=2).double()
    m = nn.LSTM.from_torch(ref)
    assert [n for n, _ in m.named_parameters()] == ["W_x_l0", "W_h_l0", "b_l0", "W_x_l1",
                                                   "W_h_l1", "b_l1"]
    x = _weights((6, 4, 3), 14)
    h0, c0 = _weights((2, 4, 5), 15), _weights((2, 4, 5), 16)
    R, Rh, Rc = _weights((6, 4, 5), 17), _weights((2, 4, 5), 18), _weights((2, 4, 5), 19)
    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    out, (hn, cn) = ref(xt, (h0t, c0t))
    ((out * torch.tensor(R)).sum() + (hn * torch.tensor(Rh)).sum()
     + (cn * torch.tensor(Rc)).sum()).backward()
    hs, (h_n, c_n) = m(x, (h0, c0))
    dx, (dh0, dc0) = m.backward(R, (Rh, Rc))
    for a, r in ((hs, out), (h_n, hn), (c_n, cn), (dx, xt.grad), (dh0, h0t.grad),
                 (dc0, c0t.grad)):
        assert rel_err(a, r.detach().numpy()) < 1e-10
    for layer in range(2):
        W_x, W_h, b = m.layer_weights(layer)
        assert rel_err(W_x.grad, getattr(ref, f"weight_ih_l{layer}").grad.numpy().T) < 1e-10
        assert rel_err(W_h.grad, getattr(ref, f"weight_hh_l{layer}").grad.numpy().T) < 1e-10
        assert rel_err(b.grad, getattr(ref, f"bias_ih_l{layer}").grad.numpy()) < 1e-10
    back = torch.nn.LSTM(3, 5, num_layers=2).double()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in m.to_torch_state_dict().items()})
    assert rel_err(back(xt, (h0t, c0t))[0].detach().numpy(), out.detach().numpy()) < 1e-12


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_two_layer_rnn_equals_torch(nonlinearity):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    ref = torch.nn.RNN(3, 5, num_layers=2, nonlinearity=nonlinearity).double()
    m = nn.RNN.from_torch(ref)
    x, h0 = _weights((6, 4, 3), 20), _weights((2, 4, 5), 21)
    R, Rh = _weights((6, 4, 5), 22), _weights((2, 4, 5), 23)
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    out, hn = ref(xt, h0t)
    ((out * torch.tensor(R)).sum() + (hn * torch.tensor(Rh)).sum()).backward()
    hs, h_n = m(x, h0)
    dx, dh0 = m.backward(R, Rh)
    for a, r in ((hs, out), (h_n, hn), (dx, xt.grad), (dh0, h0t.grad)):
        assert rel_err(a, r.detach().numpy()) < 1e-10
    assert rel_err(m.W_h_l1.grad, ref.weight_hh_l1.grad.numpy().T) < 1e-10


def test_dropout_between_layers_and_modes():
    m = nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=F64, seed=24)
    x = _weights((5, 2, 3), 25)
    a, _ = m(x)
    b, _ = m(x)
    assert not np.array_equal(a, b)          # training: fresh masks each call
    m.eval()
    c, _ = m(x)
    d, _ = m(x)
    np.testing.assert_array_equal(c, d)
    drop = nn.Dropout(0.25, seed=0)
    y = drop(np.ones((1000,)))
    assert set(np.unique(y)) <= {0.0, 1 / 0.75} and abs(y.mean() - 1) < 0.1
    np.testing.assert_array_equal(drop.backward(np.ones(1000)), y)
    drop.eval()
    np.testing.assert_array_equal(drop(np.ones(3)), np.ones(3))


def test_state_dict_errors_list_every_difference():
    a = nn.LSTM(3, 4, dtype=F64)
    sd = a.state_dict()
    sd["W_h_l0"] = sd["W_h_l0"][:2]
    sd["extra"] = np.zeros(1)
    del sd["b_l0"]
    sd["W_x_l0"] = sd["W_x_l0"].astype(np.float32)
    with pytest.raises(ValueError) as info:
        a.load_state_dict(sd)
    msg = str(info.value)
    assert "missing: ['b_l0']" in msg and "unexpected: ['extra']" in msg
    assert "W_h_l0: shape" in msg and "W_x_l0: dtype float32" in msg


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    m = nn.LSTM(3, 4, num_layers=2, dropout=0.1, seed=26)
    opt = optim.Adam(m.parameters(), lr=0.01, weight_decay=0.001)
    x = _weights((5, 2, 3), 27).astype(np.float32)
    for _ in range(3):
        m.zero_grad()
        hs, _ = m(x)
        m.backward(np.ones_like(hs))
        opt.step()
    path = tmp_path / "model.npz"
    fastlstm.save(path, m, opt, epoch=3, note="test")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]   # no temporary left behind
    ck = fastlstm.load(path)
    assert type(ck.model) is nn.LSTM and ck.metadata == {"epoch": 3, "note": "test"}
    for (n1, p1), (n2, p2) in zip(m.named_parameters(), ck.model.named_parameters()):
        assert n1 == n2 and p1.data.dtype == p2.data.dtype
        np.testing.assert_array_equal(p1.data, p2.data)
    assert ck.optimizer.step_count == 3 and ck.optimizer.lr == 0.01
    for s1, s2 in zip(opt.state, ck.optimizer.state):
        for k in s1:
            np.testing.assert_array_equal(s1[k], s2[k])
    for cls, args in ((nn.RNN, (3, 4)), (nn.Linear, (3, 4)), (nn.Embedding, (5, 2))):
        model = cls(*args)
        fastlstm.save(tmp_path / "x.npz", model)
        again = fastlstm.load(tmp_path / "x.npz").model
        for a, b in zip(model.state_dict().values(), again.state_dict().values()):
            np.testing.assert_array_equal(a, b)


def test_checkpoint_rejects_truncated_and_foreign_files(tmp_path):
    m = nn.RNN(3, 4)
    path = tmp_path / "ok.npz"
    fastlstm.save(path, m)
    raw = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(fastlstm.CheckpointError, match="truncated.npz"):
        fastlstm.load(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz"):
        fastlstm.load(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(fastlstm.CheckpointError, match="plain.npz"):
        fastlstm.load(plain)

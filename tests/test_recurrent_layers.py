"""The recurrent layers' options: bidirectional nn.LSTM / nn.GRU / nn.RNN, the projected
nn.LSTM (proj_size) and nn.GRU, against finite differences, against their own
unidirectional pieces, across backends and thread counts, and against torch (packed
sequences) when it is installed."""
import numpy as np
import pytest

import fastlstm
from fastlstm import nn

F64 = np.float64
T, B, D, H = 5, 3, 4, 6
LENGTHS = np.array([5, 2, 0])   # full, partial and empty sequences

# kind -> (constructor, its extra arguments)
KINDS = {
    "lstm": (nn.LSTM, {}),
    "lstm-proj": (nn.LSTM, dict(proj_size=4)),
    "gru": (nn.GRU, {}),
    "rnn": (nn.RNN, {}),
}


def make_layer(kind, num_layers=2, bidirectional=True, dtype=F64, seed=0, **kwargs):
    cls, extra = KINDS[kind]
    return cls(D, H, num_layers=num_layers, dtype=dtype, seed=seed,
               bidirectional=bidirectional, **extra, **kwargs)


def random(shape, seed, dtype=F64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def state_like(m, B, seed, dtype=F64):
    """A random initial state (or its gradient) in the layer's public layout."""
    n = m.num_layers * m.num_directions
    h = random((n, B, m.output_size), seed, dtype)
    if isinstance(m, nn.LSTM):
        return h, random((n, B, H), seed + 1, dtype)
    return h


def run(m, x, state=None, lengths=None):
    return m(x, state, lengths=lengths)


def loss_and_backward(m, x, R, Rs, lengths, state=None):
    """sum(hs * R) + sum(final * Rs); runs the backward with those gradients."""
    hs, final = run(m, x, state, lengths)
    finals = final if isinstance(final, tuple) else (final,)
    weights = Rs if isinstance(Rs, tuple) else (Rs,)
    loss = float(np.sum(hs * R) + sum(np.sum(f * w) for f, w in zip(finals, weights)))
    dx, dstate = m.backward(R, Rs)
    return loss, hs, final, dx, dstate


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "uni"])
def test_gradients_match_finite_differences(kind, bidirectional):
    m = make_layer(kind, bidirectional=bidirectional)
    x = random((T, B, D), 1)
    R = random((T, B, m.num_directions * m.output_size), 2)
    Rs = state_like(m, B, 3)

    def objective(m):
        return loss_and_backward(m, x, R, Rs, LENGTHS)[0]

    report = fastlstm.gradcheck(objective, m)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", list(KINDS))
def test_input_and_state_gradients_match_finite_differences(kind):
    m = make_layer(kind)
    x = random((T, B, D), 4)
    s0 = state_like(m, B, 5)
    R = random((T, B, 2 * m.output_size), 6)
    Rs = state_like(m, B, 7)
    _, _, _, dx, dstate = loss_and_backward(m, x, R, Rs, LENGTHS, s0)
    s0_arrays = s0 if isinstance(s0, tuple) else (s0,)
    d_arrays = dstate if isinstance(dstate, tuple) else (dstate,)
    eps = 1e-6
    rng = np.random.default_rng(8)
    for array, grad, name in [(x, dx, "x")] + [(a, g, f"state{i}") for i, (a, g)
                                                in enumerate(zip(s0_arrays, d_arrays))]:
        for _ in range(6):
            i = tuple(rng.integers(0, n) for n in array.shape)
            old = array[i]
            array[i] = old + eps
            up = loss_and_backward(m, x, R, Rs, LENGTHS, s0)[0]
            array[i] = old - eps
            down = loss_and_backward(m, x, R, Rs, LENGTHS, s0)[0]
            array[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(grad[i] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, i)


def reverse_sequences(a, lengths):
    """Each sequence's valid steps in reverse order; the padding left where it is."""
    out = a.copy()
    for b, L in enumerate(lengths):
        out[:L, b] = a[:L, b][::-1]
    return out


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_a_bidirectional_layer_is_two_unidirectional_ones(kind, lengths):
    """The forward half is the unidirectional layer; the reverse half is the
    unidirectional layer run on each sequence reversed from its own last valid step,
    its outputs put back at the steps they belong to."""
    bi = make_layer(kind, num_layers=1)
    fwd = make_layer(kind, num_layers=1, bidirectional=False)
    rev = make_layer(kind, num_layers=1, bidirectional=False)
    for name, p in fwd.named_parameters():
        p.data[...] = getattr(bi, name).data
        getattr(rev, name).data[...] = getattr(bi, name + "_reverse").data
    x = random((T, B, D), 9)
    L = np.full(B, T) if lengths is None else lengths
    hs, final = run(bi, x, None, lengths)
    hs_f, final_f = run(fwd, x, None, lengths)
    hs_r, final_r = run(rev, reverse_sequences(x, L), None, lengths)
    W = bi.output_size
    np.testing.assert_allclose(hs[..., :W], hs_f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hs[..., W:], reverse_sequences(hs_r, L), rtol=0, atol=1e-12)
    finals = final if isinstance(final, tuple) else (final,)
    finals_f = final_f if isinstance(final_f, tuple) else (final_f,)
    finals_r = final_r if isinstance(final_r, tuple) else (final_r,)
    for f, ff, fr in zip(finals, finals_f, finals_r):
        np.testing.assert_allclose(f[0], ff[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(f[1], fr[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_padding_never_changes_a_bidirectional_result(kind):
    """pytorch#517: the reverse direction must start at each sequence's last valid
    step, so the values in the padding change nothing, forward or backward."""
    m = make_layer(kind)
    x = random((T, B, D), 10)
    R = random((T, B, 2 * m.output_size), 11)
    valid = (np.arange(T)[:, None] < LENGTHS[None, :])[:, :, None]
    R *= valid
    Rs = state_like(m, B, 12)
    results = []
    for seed in (13, 14):
        x_padded = np.where(valid, x, random((T, B, D), seed) * 100)
        m.zero_grad()
        _, hs, final, dx, dstate = loss_and_backward(m, x_padded, R, Rs, LENGTHS)
        results.append((hs, final, dx * valid, dstate,
                        [p.grad.copy() for p in m.parameters()]))
    (hs1, f1, dx1, ds1, g1), (hs2, f2, dx2, ds2, g2) = results
    np.testing.assert_array_equal(hs1, hs2)
    for a, b in zip(np.atleast_1d(f1) if not isinstance(f1, tuple) else f1,
                    np.atleast_1d(f2) if not isinstance(f2, tuple) else f2):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx1, dx2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    assert np.all(hs1[~np.broadcast_to(valid, hs1.shape)] == 0)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_compiled_equals_numpy_and_threads_agree(kind, dtype):
    if not fastlstm._backend.compiled_available():
        pytest.skip("compiled kernels not built")
    x = random((T, B, D), 15, dtype)
    R = random((T, B, 2 * (4 if kind == "lstm-proj" else H)), 16, dtype)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    results = {}
    for backend, threads in [("numpy", 1), ("cython", 1), ("cython", 2)]:
        m = make_layer(kind, dtype=dtype, seed=17, backend=backend, num_threads=threads)
        Rs = state_like(m, B, 18, dtype)
        _, hs, final, dx, dstate = loss_and_backward(m, x, R, Rs, LENGTHS)
        results[backend, threads] = [hs, dx] + [p.grad for p in m.parameters()]
    expected = results["numpy", 1]
    for key, got in results.items():
        for g, e in zip(got, expected):
            scale = max(np.abs(e).max(), 1e-30)
            assert np.abs(g - e).max() <= tol * scale, key


@pytest.mark.parametrize("kind", list(KINDS))
def test_ids_through_an_embedding(kind):
    """Ids are gathered (bidirectional layers have no lookup path); the embedding gets
    the gradient of both directions."""
    m = make_layer(kind)
    emb = nn.Embedding(9, D, dtype=F64, seed=19)
    ids = np.random.default_rng(20).integers(0, 9, (T, B))
    hs, _ = m(ids, None, lengths=LENGTHS, embedding=emb)
    x = emb.weight.data[ids]
    m2 = make_layer(kind)
    hs2, _ = run(m2, x, None, LENGTHS)
    np.testing.assert_allclose(hs, hs2, rtol=0, atol=1e-12)
    R = random(hs.shape, 21)
    emb.zero_grad()
    dx, _ = m.backward(R)
    assert dx is None
    dx2, _ = m2.backward(R)
    expected = np.zeros_like(emb.weight.data)
    np.add.at(expected, ids, dx2)
    np.testing.assert_allclose(emb.weight.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_state_shapes_name_the_argument(kind):
    m = make_layer(kind)
    x = random((T, B, D), 22)
    h0 = random((2, B, m.output_size), 23)   # should stack num_layers * 2 = 4
    state = (h0, None) if isinstance(m, nn.LSTM) else h0
    with pytest.raises(ValueError, match="h0 must stack num_layers \\* num_directions = 4"):
        m(x, state)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_bidirectional_layer_cannot_decode_step_by_step(kind):
    m = make_layer(kind, num_layers=1)
    state = state_like(m, B, 24)
    with pytest.raises(ValueError, match="cannot decode step by step"):
        m.step(random((B, D), 25), state)


@pytest.mark.parametrize("kind", ["lstm-proj", "gru"])
def test_step_equals_forward(kind):
    m = make_layer(kind, bidirectional=False)
    x = random((T, B, D), 26)
    hs, final = run(m, x)
    n = m.num_layers
    h = np.zeros((n, B, m.output_size))
    state = (h, np.zeros((n, B, H))) if isinstance(m, nn.LSTM) else h
    for t in range(T):
        top, state = m.step(x[t], state)
        np.testing.assert_allclose(top, hs[t], rtol=0, atol=1e-12)
    finals = final if isinstance(final, tuple) else (final,)
    states = state if isinstance(state, tuple) else (state,)
    for a, b in zip(finals, states):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_parameter_names_and_shapes_follow_torch():
    m = nn.LSTM(D, H, num_layers=2, bidirectional=True, proj_size=4)
    shapes = dict(nn.LSTM.parameter_shapes(D, H, 2, bidirectional=True, proj_size=4))
    assert {name: p.data.shape for name, p in m.named_parameters()} == shapes
    assert shapes["W_x_l1_reverse"] == (8, 4 * H)     # both directions' P-wide outputs
    assert shapes["W_h_l0_reverse"] == (4, 4 * H)
    assert shapes["W_hr_l1"] == (H, 4)
    g = dict(nn.GRU.parameter_shapes(D, H, 1, bidirectional=True))
    assert set(g) == {f"{n}_l0{s}" for n in ("W_x", "W_h", "b_x", "b_h")
                      for s in ("", "_reverse")}


# --- torch -----------------------------------------------------------------------------

def _torch_module(torch, kind, num_layers, bidirectional):
    if kind.startswith("lstm"):
        return torch.nn.LSTM(D, H, num_layers=num_layers, bidirectional=bidirectional,
                             proj_size=4 if kind == "lstm-proj" else 0)
    if kind == "gru":
        return torch.nn.GRU(D, H, num_layers=num_layers, bidirectional=bidirectional)
    return torch.nn.RNN(D, H, num_layers=num_layers, bidirectional=bidirectional)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "uni"])
def test_equals_torch_with_packed_sequences(kind, bidirectional):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    ref = _torch_module(torch, kind, 2, bidirectional).double()
    m = KINDS[kind][0].from_torch(ref)
    assert m.bidirectional == bidirectional and m.num_layers == 2
    lengths = np.array([5, 2, 4])   # torch's packed sequences have no empty one
    x = random((T, B, D), 27)
    hs, final = run(m, x, None, lengths)
    R = random(hs.shape, 28)
    Rs = state_like(m, B, 29)
    dx, dstate = m.backward(R, Rs)

    xt = torch.tensor(x, requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    out, final_t = ref(packed)
    out, _ = pad_packed_sequence(out, total_length=T)
    finals_t = final_t if isinstance(final_t, tuple) else (final_t,)
    weights = Rs if isinstance(Rs, tuple) else (Rs,)
    loss = (out * torch.tensor(R)).sum() + sum((f * torch.tensor(w)).sum()
                                               for f, w in zip(finals_t, weights))
    loss.backward()
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=0, atol=1e-12)
    finals = final if isinstance(final, tuple) else (final,)
    for f, ft in zip(finals, finals_t):
        np.testing.assert_allclose(f, ft.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-11)
    grads = _grads_in_torch_layout(m)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=0, atol=1e-11,
                                   err_msg=name)


def _grads_in_torch_layout(m):
    """Our gradients under torch's names: bias gradients of the LSTM/RNN's summed bias
    are both torch biases' gradients."""
    out = {}
    for layer in range(m.num_layers):
        for direction in range(m.num_directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for name, p in m.cell_parameters(layer, direction):
                if name == "W_x":
                    out["weight_ih" + suffix] = p.grad.T
                elif name == "W_h":
                    out["weight_hh" + suffix] = p.grad.T
                elif name == "W_hr":
                    out["weight_hr" + suffix] = p.grad.T
                elif name == "b":
                    out["bias_ih" + suffix] = out["bias_hh" + suffix] = p.grad
                else:
                    out[("bias_ih" if name == "b_x" else "bias_hh") + suffix] = p.grad
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_torch_state_dict_round_trips(kind):
    torch = pytest.importorskip("torch")
    m = make_layer(kind)
    ref = _torch_module(torch, kind, 2, True).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in m.to_torch_state_dict().items()})
    x = random((T, B, D), 30)
    hs, _ = run(m, x)
    out, _ = ref(torch.tensor(x))
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("embedded", [False, True], ids=["one-hot", "embedding"])
def test_the_lookup_path_equals_the_gathered_rows(kind, embedded):
    """On ids a unidirectional LSTM or GRU looks layer 0's input projection up; its
    outputs and every gradient (W_x_l0's from the table's, the embedding's) equal the
    layer run on the gathered rows."""
    if not fastlstm._backend.compiled_available():
        pytest.skip("compiled kernels not built")
    V = D if not embedded else 9
    ids = np.random.default_rng(31).integers(0, V, (T, B))
    ids[:, 0] = ids[0, 0]      # few distinct ids: the embedded path looks up too
    results = []
    for backend in ("auto", "numpy"):
        m = make_layer(kind, bidirectional=False, backend=backend, seed=32)
        emb = nn.Embedding(9, D, dtype=F64, seed=33) if embedded else None
        hs, final = m(ids, None, lengths=LENGTHS, embedding=emb)
        assert m._lookup == (backend == "auto")
        R = random(hs.shape, 34)
        dx, dstate = m.backward(R, state_like(m, B, 35))
        assert dx is None
        grads = [p.grad.copy() for p in m.parameters()]
        if embedded:
            grads.append(emb.weight.grad.copy())
        results.append([hs] + list(final if isinstance(final, tuple) else (final,))
                       + list(dstate if isinstance(dstate, tuple) else (dstate,)) + grads)
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11)


def test_how_the_two_directions_share_the_threads():
    """Small batches run both directions at once (the pair kernels, or two Python
    threads where a cell has none); large ones one direction after the other."""
    from fastlstm.nn.recurrent import PAIR_MAX_ROWS
    lstm2 = nn.LSTM(D, H, bidirectional=True, num_threads=2)
    assert lstm2._directions_plan(1) == ("pair", 1)
    assert lstm2._directions_plan(PAIR_MAX_ROWS) == ("pair", 1)
    assert lstm2._directions_plan(PAIR_MAX_ROWS + 1) == ("sequential", 2)
    assert nn.LSTM(D, H, bidirectional=True, num_threads=1)._directions_plan(1) == \
        ("sequential", 1)
    assert nn.LSTM(D, H, bidirectional=True, proj_size=2,
                   num_threads=2)._directions_plan(1) == ("threads", 2)
    assert nn.GRU(D, H, bidirectional=True, num_threads=4)._directions_plan(2) == ("pair", 1)
    assert nn.GRU(D, H, bidirectional=True, num_threads=4)._directions_plan(8) == \
        ("threads", 4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_and_load_round_trip_every_layer_kind(kind, tmp_path):
    """A saved layer (bidirectional, projected, GRU) loads back with its config, weights
    and optimizer state: the same outputs bitwise, and one more step on both copies gives
    the same weights."""
    from fastlstm import optim
    m = make_layer(kind, dtype=np.float32, seed=36)
    opt = optim.Adam(m.parameters(), lr=1e-2)
    x = random((T, B, D), 37, np.float32)

    def step(m, opt):
        hs, _ = m(x, lengths=LENGTHS)
        for p in m.parameters():
            p.zero_grad()
        m.backward(np.ones_like(hs))
        opt.step()

    step(m, opt)
    fastlstm.save(tmp_path / "m.npz", {"m": m}, opt)
    ck = fastlstm.load(tmp_path / "m.npz")
    m2 = ck.model["m"]
    assert type(m2) is type(m) and m2.config == m.config
    np.testing.assert_array_equal(m2(x, lengths=LENGTHS)[0], m(x, lengths=LENGTHS)[0])
    step(m, opt)
    step(m2, ck.optimizer)
    for (name, p), (name2, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert name == name2
        np.testing.assert_array_equal(p.data, p2.data)

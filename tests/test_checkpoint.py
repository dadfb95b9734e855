"""fastlstm.save / fastlstm.load: optimizer state tied to parameters by identity, dicts of
modules, format-1 files, and hand-edited or foreign files refused by field."""
import json
import pathlib

import numpy as np
import pytest

import fastlstm
from fastlstm import models, nn, optim
from fastlstm.checkpoint import CheckpointError, load, save

DATA = pathlib.Path(__file__).resolve().parent / "data"


def _step(optimizer, params, seed):
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad[...] = rng.standard_normal(p.data.shape)
    optimizer.step()


def _assert_same_state(a, b):
    assert type(a) is type(b) and a.step_count == b.step_count and a.lr == b.lr
    assert len(a.params) == len(b.params)
    for pa, pb, sa, sb in zip(a.params, b.params, a.state, b.state):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert sorted(sa) == sorted(sb)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])


def _tutorial_modules(seed=0):
    emb = nn.Embedding(11, 4, seed=seed)
    lstm = nn.LSTM(4, 6, seed=seed + 1)
    head = nn.Linear(6, 3, seed=seed + 2)
    return emb, lstm, head


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW, optim.Adagrad, optim.SGD])
def test_a_dict_of_modules_round_trips_with_its_optimizer(tmp_path, cls):
    emb, lstm, head = _tutorial_modules()
    params = emb.parameters() + lstm.parameters() + head.parameters()
    opt = cls(params, lr=0.01, **({"momentum": 0.9} if cls is optim.SGD else {}))
    for seed in range(2):
        _step(opt, params, seed)
    save(tmp_path / "m.npz", {"emb": emb, "lstm": lstm, "head": head}, opt, epoch=2)
    ck = load(tmp_path / "m.npz")
    assert list(ck.model) == ["emb", "lstm", "head"] and ck.metadata == {"epoch": 2}
    assert [type(m) for m in ck.model.values()] == [nn.Embedding, nn.LSTM, nn.Linear]
    _assert_same_state(opt, ck.optimizer)
    # The optimizer steps over the rebuilt modules' own parameters, in the saved order.
    rebuilt = (ck.model["emb"].parameters() + ck.model["lstm"].parameters()
               + ck.model["head"].parameters())
    assert [id(p) for p in ck.optimizer.params] == [id(p) for p in rebuilt]
    # ... and a step on both gives the same weights.
    _step(opt, params, 7)
    _step(ck.optimizer, rebuilt, 7)
    for p, q in zip(params, rebuilt):
        np.testing.assert_array_equal(p.data, q.data)


def test_optimizer_order_other_than_the_models_keeps_each_state_with_its_parameter(tmp_path):
    lstm = nn.LSTM(6, 6, seed=3)        # W_x and W_h have the same shape: (6, 24)
    opt = optim.Adam([lstm.W_h_l0, lstm.W_x_l0, lstm.b_l0], lr=0.1)
    _step(opt, opt.params, 1)
    save(tmp_path / "m.npz", lstm, opt)
    ck = load(tmp_path / "m.npz")
    assert ck.optimizer.params[0] is ck.model.W_h_l0
    assert ck.optimizer.params[1] is ck.model.W_x_l0
    _assert_same_state(opt, ck.optimizer)


def test_optimizer_over_a_subset_of_the_parameters(tmp_path):
    emb, lstm, head = _tutorial_modules(4)
    opt = optim.SGD(head.parameters(), lr=0.1, momentum=0.5)
    _step(opt, opt.params, 2)
    save(tmp_path / "m.npz", {"emb": emb, "lstm": lstm, "head": head}, opt)
    ck = load(tmp_path / "m.npz")
    assert [id(p) for p in ck.optimizer.params] == [id(p) for p in ck.model["head"].parameters()]
    _assert_same_state(opt, ck.optimizer)


def test_save_refuses_an_optimizer_over_parameters_it_was_not_given(tmp_path):
    emb, lstm, head = _tutorial_modules()
    opt = optim.Adam(emb.parameters() + lstm.parameters() + head.parameters())
    with pytest.raises(ValueError, match=r"optimizer parameter 0 .*belongs to no module.*"
                                         r"as a dict"):
        save(tmp_path / "m.npz", lstm, opt)
    assert not list(tmp_path.iterdir())         # nothing written


def test_save_refuses_what_load_could_not_read_back(tmp_path):
    lstm = nn.LSTM(3, 4)
    lstm.W_h_l0.data[1, 2] = np.nan
    with pytest.raises(ValueError, match="W_h_l0 holds 1 non-finite value"):
        save(tmp_path / "a.npz", lstm)
    lstm = nn.LSTM(3, 4)
    opt = optim.Adam(lstm.parameters())
    _step(opt, opt.params, 0)
    opt.state[2]["exp_avg_sq"][0] = np.inf
    with pytest.raises(ValueError, match="optimizer state 'exp_avg_sq' of b_l0"):
        save(tmp_path / "b.npz", lstm, opt)
    shared = nn.Linear(2, 2)
    other = nn.Linear(2, 2)
    other.W = shared.W
    with pytest.raises(ValueError, match="shared between modules"):
        save(tmp_path / "c.npz", {"a": shared, "b": other})
    with pytest.raises(ValueError, match="keys name the modules"):
        save(tmp_path / "d.npz", {"a/b": shared})
    with pytest.raises(TypeError, match="metadata must be JSON"):
        save(tmp_path / "e.npz", shared, note=object())

    class Custom(nn.Linear):
        pass
    with pytest.raises(TypeError, match=r"register_model.*Custom \(model\['x'\]\)"):
        save(tmp_path / "f.npz", {"x": Custom(2, 2)})
    assert not list(tmp_path.iterdir())


def test_an_optimizer_refuses_a_parameter_given_twice():
    lstm = nn.LSTM(3, 4)
    with pytest.raises(ValueError, match="same Parameter more than once"):
        optim.Adam([lstm.W_x_l0, lstm.W_x_l0])


def test_format_1_files_still_load():
    """A checkpoint written by fastlstm 0.1 (format 1): a CharLM and Adam after two steps."""
    path = DATA / "checkpoint_format1.npz"
    ck = load(path)
    assert type(ck.model) is models.CharLM and ck.metadata["note"].endswith("(format 1)")
    with np.load(path) as raw:
        arrays = {k: raw[k] for k in raw.files}
    for name, p in ck.model.named_parameters(include_frozen=True):
        np.testing.assert_array_equal(p.data, arrays[f"model/{name}"])
    assert ck.optimizer.step_count == 2
    for i, (p, s) in enumerate(zip(ck.optimizer.params, ck.optimizer.state)):
        assert p is ck.model.parameters()[i]
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(s[k], arrays[f"optimizer/{i}/{k}"])


# --- hand-edited and foreign files ----------------------------------------------------

def _saved_charlm(tmp_path):
    m = models.CharLM(7, 8, embedding_dim=4, seed=0)
    opt = optim.Adam(m.parameters(), lr=0.01)
    _step(opt, opt.params, 0)
    return save(tmp_path / "good.npz", m, opt, step=1)


def _edited(tmp_path, edit):
    with np.load(_saved_charlm(tmp_path)) as raw:
        arrays = {k: raw[k] for k in raw.files}
    config = json.loads(str(arrays["config"]))
    edit(config, arrays)
    arrays["config"] = np.array(json.dumps(config))
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    return path


def _model_config(**changes):
    return lambda c, a: c["model"]["config"].update(changes)


EDITS = {
    "a hidden size of 10**7": (_model_config(hidden_size=10 ** 7),
                               r"model\.config: hidden_size=10000000 gives model/rnn\.W_x_l0 "
                               r"the shape \(4, 40000000\); the file holds \(4, 32\)"),
    "a shortened vocabulary": (_model_config(vocab_size=5),
                               r"model\.config: vocab_size=5 gives model/embed\.weight the "
                               r"shape \(5, 4\)"),
    "a billion layers": (_model_config(num_layers=10 ** 9),
                         r"model\.config: num_layers=1000000000 gives more than 6 arrays"),
    "a size of the wrong type": (_model_config(hidden_size="8"),
                                 r"model\.config\.hidden_size: expected an integer, got '8'"),
    "a negative size": (_model_config(embedding_dim=-4),
                        r"model\.config\.embedding_dim: expected an integer >= 0"),
    "a flag of the wrong type": (_model_config(dtype=3),
                                 r"model\.config\.dtype: expected 'float32' or 'float64'"),
    "an unknown field": (_model_config(colour="red"),
                         r"model\.config\.colour: not an argument of CharLM"),
    "a nested config value": (_model_config(dropout=[0.1]),
                              r"model\.config\.dropout: expected a number, string"),
    "another cell": (_model_config(cell="gru"),
                     r"model\.config\.cell: 'gru', but the file holds the arrays of "
                     r"cell='lstm'"),
    # the vanilla RNN's arrays have the LSTM's names: the shapes alone tell them apart
    "an RNN cell over an LSTM's arrays": (_model_config(cell="rnn"),
                                          r"model\.config\.cell: 'rnn', but the file holds "
                                          r"the arrays of cell='lstm'"),
    "an unknown cell": (_model_config(cell="transformer"),
                        r"model\.config\.cell: expected one of 'lstm', 'gru', 'rnn', got "
                        r"'transformer'"),
    "a cell of the wrong type": (_model_config(cell=4),
                                 r"model\.config\.cell: expected a string, got 4"),
    "an invalid dropout": (_model_config(dropout=1.5),
                           r"model\.config: CharLM\(.*\) fails: .*dropout"),
    "an unknown class": (lambda c, a: c["model"].update({"class": "Popen"}),
                         r"model\.class: unknown model class 'Popen'"),
    "a model that is a list": (lambda c, a: c.update(model=[]),
                               r"model: expected an object, got list"),
    "no metadata": (lambda c, a: c.pop("metadata"), r"metadata: missing"),
    "a format of the wrong type": (lambda c, a: c.update(format="2"),
                                   r"format: expected an integer, got str"),
    "a future format": (lambda c, a: c.update(format=99), r"checkpoint format 99"),
    "a missing array": (lambda c, a: a.pop("model/head.b"),
                        r"the file lacks \['head\.b'\]"),
    "an extra array": (lambda c, a: a.update({"model/extra": np.zeros(2, np.float32)}),
                       r"has extra \['extra'\]"),
    "an array of the wrong dtype": (lambda c, a: a.update(
        {"model/head.b": a["model/head.b"].astype(np.float64)}),
        r"model/head\.b: dtype float64, the config's dtype is float32"),
    "a NaN weight": (lambda c, a: a["model/head.W"].__setitem__((0, 0), np.nan),
                     r"model/head\.W: holds non-finite values"),
    "a string array": (lambda c, a: a.update({"model/head.b": np.array(["x"])}),
                       r"model/head\.b: an array of dtype <U1"),
    "an unknown optimizer": (lambda c, a: c["optimizer"].update({"class": "Lion"}),
                             r"optimizer\.class: unknown optimizer 'Lion'"),
    "an lr of the wrong type": (lambda c, a: c["optimizer"].update(lr="0.1"),
                                r"optimizer\.lr: expected a number, got str"),
    "a negative lr": (lambda c, a: c["optimizer"].update(lr=-1),
                      r"optimizer\.lr: expected a finite number >= 0"),
    "a negative step count": (lambda c, a: c["optimizer"].update(step_count=-3),
                              r"optimizer\.step_count: expected an integer >= 0"),
    "an unknown hyperparameter": (lambda c, a: c["optimizer"]["defaults"].update(foo=1),
                                  r"optimizer\.defaults\.foo: not an argument of Adam"),
    "one beta": (lambda c, a: c["optimizer"]["defaults"].update(betas=[0.9]),
                 r"optimizer\.defaults\.betas: expected two numbers"),
    "a parameter name not in the model": (
        lambda c, a: c["optimizer"]["params"].__setitem__(0, [None, "rnn.W_x_l7"]),
        r"optimizer\.params\[0\]: no parameter rnn\.W_x_l7 in the model"),
    "a parameter listed twice": (
        lambda c, a: c["optimizer"]["params"].__setitem__(1, c["optimizer"]["params"][0]),
        r"optimizer\.params: a parameter listed twice"),
    "a state of the wrong shape": (
        lambda c, a: a.update({"optimizer/0/exp_avg": np.zeros(3, np.float32)}),
        r"optimizer/0/exp_avg: shape \(3,\), its parameter's is \(7, 4\)"),
    "a state another optimizer keeps": (
        lambda c, a: a.update({"optimizer/0/momentum_buffer": a["optimizer/0/exp_avg"]}),
        r"optimizer/0/momentum_buffer: Adam keeps no state 'momentum_buffer'"),
    "half of Adam's state": (lambda c, a: a.pop("optimizer/1/exp_avg_sq"),
                             r"optimizer/1: Adam state \['exp_avg'\]; it needs all"),
    "a state for a parameter that is not there": (
        lambda c, a: a.update({"optimizer/40/exp_avg": np.zeros(3, np.float32)}),
        r"optimizer/40/exp_avg: not a state of one of the optimizer's 6 parameters"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_load_names_the_field_of_a_hand_edited_checkpoint(tmp_path, name):
    edit, message = EDITS[name]
    path = _edited(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_the_unedited_file_loads(tmp_path):
    ck = load(_edited(tmp_path, lambda c, a: None))
    assert type(ck.model) is models.CharLM and ck.metadata == {"step": 1}


@pytest.mark.parametrize("cls,args", [
    (nn.LSTM, dict(input_size=3, hidden_size=5, num_layers=2)),
    (nn.RNN, dict(input_size=4, hidden_size=3, num_layers=3)),
    (nn.Linear, dict(in_features=3, out_features=2, bias=False)),
    (nn.Linear, dict(in_features=3, out_features=2)),
    (nn.Embedding, dict(num_embeddings=6, embedding_dim=2)),
    (nn.Dropout, dict(p=0.3)),
    (models.CharLM, dict(vocab_size=9, hidden_size=4)),
    (models.CharLM, dict(vocab_size=9, hidden_size=4, num_layers=2, embedding_dim=3)),
    (models.WordLM, dict(vocab_size=9, embedding_dim=3, hidden_size=4, cell="rnn")),
    (models.WordLM, dict(vocab_size=9, embedding_dim=3, hidden_size=4, num_layers=2)),
    (models.SentimentClassifier, dict(vocab_size=9, embedding_dim=3, hidden_size=4,
                                      freeze_embedding=True)),
    (models.CharLM, dict(vocab_size=9, hidden_size=4, num_layers=2, cell="gru")),
    (models.CharLM, dict(vocab_size=9, hidden_size=4, embedding_dim=3, cell="rnn")),
    (models.WordLM, dict(vocab_size=9, embedding_dim=3, hidden_size=4, cell="gru")),
    (models.SentimentClassifier, dict(vocab_size=9, embedding_dim=3, hidden_size=4,
                                      num_layers=2, bidirectional=True)),
    (models.SentimentClassifier, dict(vocab_size=9, embedding_dim=3, hidden_size=4,
                                      num_layers=2, cell="gru")),
    (models.SentimentClassifier, dict(vocab_size=9, embedding_dim=3, hidden_size=4,
                                      cell="gru", bidirectional=True)),
])
def test_parameter_shapes_match_what_the_constructor_builds(cls, args):
    module = cls(**args)
    built = {name: p.data.shape for name, p in module.named_parameters(include_frozen=True)}
    assert dict(cls.parameter_shapes(**module.config)) == built
    assert fastlstm.load is load


def test_one_hot_word_models_and_numpy_metadata_round_trip(tmp_path):
    m = models.WordLM(10, None, 4, seed=0)          # embedding_dim None: one-hot words
    save(tmp_path / "w.npz", m, loss=np.float32(2.5), step=np.int64(7))
    ck = load(tmp_path / "w.npz")
    assert type(ck.model) is models.WordLM and ck.model.config["embedding_dim"] is None
    assert ck.metadata == {"loss": 2.5, "step": 7}
    with pytest.raises(TypeError, match="metadata must be JSON"):
        save(tmp_path / "x.npz", m, weights=np.zeros(3))


# --- every cell -----------------------------------------------------------------------

ROUND_TRIPS = {
    "char-lstm": lambda: models.CharLM(9, 8, embedding_dim=4, seed=0),
    "char-gru": lambda: models.CharLM(9, 8, num_layers=2, seed=1, cell="gru"),
    "char-rnn": lambda: models.CharLM(9, 8, seed=2, cell="rnn"),
    "word-lstm": lambda: models.WordLM(9, 4, 8, num_layers=2, seed=3),
    "word-gru": lambda: models.WordLM(9, 4, 8, cell="gru", seed=4),
    "word-rnn": lambda: models.WordLM(9, 4, 8, cell="rnn", seed=5, bptt_truncate=3),
    "sentiment-lstm": lambda: models.SentimentClassifier(9, 4, 6, pooling="max", seed=6),
    "sentiment-bilstm": lambda: models.SentimentClassifier(9, 4, 6, num_layers=2, seed=7,
                                                           bidirectional=True),
    "sentiment-gru": lambda: models.SentimentClassifier(9, 4, 6, pooling="mean", seed=8,
                                                        cell="gru"),
    "sentiment-bigru": lambda: models.SentimentClassifier(9, 4, 6, seed=9, cell="gru",
                                                          bidirectional=True),
}


def _outputs(model, ids, lengths):
    """The model's forward output on ids (T, B): logits, and a language model's state."""
    model.eval()
    if isinstance(model, models.SentimentClassifier):
        return [model(ids, lengths)]
    logits, state = model(ids)
    return [logits, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_every_model_round_trips_bitwise_with_its_optimizer(tmp_path, name):
    m = ROUND_TRIPS[name]()
    opt = optim.Adam(m.parameters(), lr=0.01)
    _step(opt, opt.params, 0)
    save(tmp_path / "m.npz", m, opt, step=1)
    ck = load(tmp_path / "m.npz")
    assert type(ck.model) is type(m) and ck.model.config == m.config
    assert list(ck.model.state_dict()) == list(m.state_dict())
    _assert_same_state(opt, ck.optimizer)
    ids = np.random.default_rng(1).integers(0, 9, (5, 3))
    lengths = np.array([5, 2, 4])
    for got, want in zip(_outputs(ck.model, ids, lengths), _outputs(m, ids, lengths)):
        np.testing.assert_array_equal(got, want)


def _with_model_config(tmp_path, model, edit):
    """A copy of ``model``'s checkpoint whose model config ``edit`` changed in place."""
    with np.load(save(tmp_path / "good.npz", model)) as raw:
        arrays = {k: raw[k] for k in raw.files}
    config = json.loads(str(arrays["config"]))
    edit(config["model"]["config"])
    arrays["config"] = np.array(json.dumps(config))
    np.savez(tmp_path / "edited.npz", **arrays)
    return tmp_path / "edited.npz"


@pytest.mark.parametrize("name", ["char-lstm", "sentiment-lstm"])
def test_a_config_without_cell_is_an_lstm(tmp_path, name):
    """Checkpoints written before the cell was a config field load as they did."""
    m = ROUND_TRIPS[name]()

    def forget_cell(config):
        del config["cell"]
        config.pop("bidirectional", None)

    again = load(_with_model_config(tmp_path, m, forget_cell)).model
    assert again.config == m.config and again.config["cell"] == "lstm"
    ids = np.random.default_rng(2).integers(0, 9, (4, 2))
    for got, want in zip(_outputs(again, ids, None), _outputs(m, ids, None)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name,edit,message", [
    ("sentiment-bilstm", dict(bidirectional=False),
     r"model\.config\.bidirectional: False, but the file holds the arrays of "
     r"bidirectional=True"),
    ("sentiment-lstm", dict(bidirectional=True),       # more arrays than the file holds
     r"model\.config\.bidirectional: True, but the file holds the arrays of "
     r"bidirectional=False"),
    ("sentiment-bigru", dict(cell="lstm"),
     r"model\.config\.cell: 'lstm', but the file holds the arrays of cell='gru'"),
    ("sentiment-lstm", dict(cell="rnn"),
     r"model\.config\.cell: expected one of 'lstm', 'gru', got 'rnn'"),
    ("sentiment-lstm", dict(bidirectional=1),
     r"model\.config\.bidirectional: expected true or false, got 1"),
    ("word-rnn", dict(cell="gru"),
     r"model\.config\.cell: 'gru', but the file holds the arrays of cell='rnn'"),
])
def test_load_names_a_hand_edited_cell_or_direction(tmp_path, name, edit, message):
    path = _with_model_config(tmp_path, ROUND_TRIPS[name](), lambda c: c.update(edit))
    with pytest.raises(CheckpointError, match=message) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")

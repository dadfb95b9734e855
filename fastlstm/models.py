"""The seeds' models: CharLM, WordLM, SentimentClassifier, and
``sample`` for the language models. Explicit forward/backward like every layer.

The recurrent layer is chosen by ``cell``: "lstm", "gru" or "rnn" for the language
models, "lstm" or "gru" (optionally bidirectional) for the classifier. Its parameters
keep the names earlier checkpoints use (``rnn.W_x_l0`` in a language model,
``lstm.W_x_l0`` in the classifier; a classifier's GRU is ``gru``), so a config without
``cell`` is an LSTM's."""
import numpy as np

from ._validation import (check_bptt_truncate, check_choice, check_flag, check_float_dtype,
                          check_int, check_num_threads, check_probability, check_table,
                          make_rng)
from ._registry import register_model
from .nn.layers import Embedding, Linear
from .nn.module import Module
from .nn.recurrent import GRU, LSTM, RNN

__all__ = ["CharLM", "WordLM", "SentimentClassifier", "sample"]

# The recurrent layer of each cell name.
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def _checked_hidden_size(hidden_size, cell):
    """hidden_size as an int, small enough that the cell's fused gate width
    (gates * hidden_size) is a 32-bit BLAS size."""
    gates = CELLS[cell].gates
    return check_int("hidden_size", hidden_size, 1, (2**31 - 1) // gates,
                     f" ({gates} * hidden_size is a 32-bit BLAS size)" if gates > 1 else "")


class _LanguageModel(Module):
    """ids (T, B) -> [embedding or one-hot] -> recurrent stack -> Linear -> logits (T, B, V)."""

    # The choices of the config fields that decide which arrays a checkpoint holds
    # (``fastlstm.load`` checks a file's values against them).
    config_choices = {"cell": tuple(CELLS)}

    @staticmethod
    def _checked(vocab_size, embedding_dim, hidden_size, num_layers, cell, dropout, dtype,
                 seed, num_threads):
        """The language models' arguments, checked before anything is built (TypeError,
        ValueError naming the argument) and normalised; ``seed`` becomes ``rng``."""
        cell = check_choice("cell", cell, tuple(CELLS))
        return dict(vocab_size=check_int("vocab_size", vocab_size),
                    embedding_dim=check_int("embedding_dim", embedding_dim, 0,
                                            none_allowed=True),
                    hidden_size=_checked_hidden_size(hidden_size, cell),
                    num_layers=check_int("num_layers", num_layers),
                    cell=cell,
                    dropout=check_probability("dropout", dropout),
                    dtype=check_float_dtype("dtype", dtype),
                    rng=make_rng(seed),
                    num_threads=check_num_threads(num_threads))

    def _build(self, vocab_size, embedding_dim, hidden_size, num_layers, cell, dropout,
               dtype, rng, num_threads):
        """The layers, from the arguments as ``_checked`` returns them."""
        self.vocab_size = vocab_size
        self.embed = (Embedding(vocab_size, embedding_dim, dtype=dtype, seed=rng)
                      if embedding_dim else None)
        width = embedding_dim or vocab_size
        # (keywords: the RNN takes nonlinearity before dropout)
        self.rnn = CELLS[cell](width, hidden_size, num_layers, dropout=dropout, dtype=dtype,
                               seed=rng, num_threads=num_threads)
        self.head = Linear(hidden_size, vocab_size, dtype=dtype, seed=rng,
                           num_threads=num_threads)
        self.num_threads = num_threads

    @staticmethod
    def _shapes(vocab_size, embedding_dim, hidden_size, num_layers, cell):
        check_choice("cell", cell, tuple(CELLS))
        if embedding_dim:
            yield "embed.weight", (vocab_size, embedding_dim)
        for name, shape in CELLS[cell].parameter_shapes(embedding_dim or vocab_size,
                                                        hidden_size, num_layers):
            yield f"rnn.{name}", shape
        yield "head.W", (hidden_size, vocab_size)
        yield "head.b", (vocab_size,)

    def forward(self, ids, state=None, lengths=None):
        """ids (T, B) -> logits (T, B, V) and the recurrent state to carry into the next
        chunk: ``(h_n, c_n)`` for an LSTM, ``h_n`` for a GRU or RNN, each
        (num_layers, B, H); ``state`` None (zeros) or what the last call returned."""
        hs, state = self.rnn(ids, state, lengths=lengths, embedding=self.embed)
        return self.head(hs), state

    def decode_step(self, ids, state):
        """One step of inference for every row: ids (B,) int -> (logits (B, V), state).

        The fast path for sampling: plain NumPy on the current weights, no input checks
        (ids must lie in [0, V)), no cache, no dropout. ``state`` is what ``forward`` or
        ``decode_step`` returned.
        """
        top, state = self.rnn.step(ids, state, embedding=self.embed)
        logits = top @ self.head.W.data
        if self.head.b is not None:
            logits += self.head.b.data
        return logits, state

    def backward(self, dlogits):
        """Accumulate every parameter's gradient from dlogits (T, B, V)."""
        self.rnn.backward(self.head.backward(dlogits))


@register_model
class CharLM(_LanguageModel):
    """Character-level LM: one-hot (``embedding_dim=None`` or 0) or embedded characters
    -> LSTM, GRU or vanilla RNN (``cell``) -> Linear.

    vocab_size, hidden_size, num_layers : int >= 1;  embedding_dim : None, 0 or an int
    >= 1;  dropout : a number in [0, 1) (between stacked layers);  dtype : float32 or
    float64;  seed : None, an int >= 0 or a NumPy Generator;  num_threads : None or an
    int >= 1;  cell : "lstm" (the default, and what a config without it means), "gru" or
    "rnn" (tanh).
    """

    def __init__(self, vocab_size, hidden_size=128, num_layers=1, embedding_dim=None,
                 dropout=0.0, dtype=np.float32, seed=None, num_threads=None, cell="lstm"):
        a = self._checked(vocab_size, embedding_dim, hidden_size, num_layers, cell,
                          dropout, dtype, seed, num_threads)
        self.config = dict(vocab_size=a["vocab_size"], hidden_size=a["hidden_size"],
                           num_layers=a["num_layers"], embedding_dim=a["embedding_dim"],
                           dropout=a["dropout"], dtype=a["dtype"].name, cell=a["cell"])
        self._build(**a)

    @classmethod
    def parameter_shapes(cls, vocab_size, hidden_size=128, num_layers=1, embedding_dim=None,
                         cell="lstm", **config):
        """(name, shape) of each parameter the constructor arguments give."""
        return cls._shapes(vocab_size, embedding_dim, hidden_size, num_layers, cell)


@register_model
class WordLM(_LanguageModel):
    """Word-level LM: Embedding -> LSTM, GRU or vanilla RNN (``cell``) -> Linear.

    As ``CharLM``, plus ``bptt_truncate`` (None, or an int >= 0 with cell="rnn");
    ``embedding_dim`` None or 0 feeds one-hot words.
    """

    def __init__(self, vocab_size, embedding_dim=64, hidden_size=128, num_layers=1,
                 cell="lstm", dropout=0.0, dtype=np.float32, seed=None, num_threads=None,
                 bptt_truncate=None):
        a = self._checked(vocab_size, embedding_dim, hidden_size, num_layers, cell,
                          dropout, dtype, seed, num_threads)
        bptt_truncate = check_bptt_truncate(bptt_truncate)
        if bptt_truncate is not None and a["cell"] != "rnn":
            raise ValueError("bptt_truncate applies to cell='rnn' only")
        self.config = dict(vocab_size=a["vocab_size"], embedding_dim=a["embedding_dim"],
                           hidden_size=a["hidden_size"], num_layers=a["num_layers"],
                           cell=a["cell"], dropout=a["dropout"], dtype=a["dtype"].name,
                           bptt_truncate=bptt_truncate)
        self._build(**a)
        if a["cell"] == "rnn":
            self.rnn.bptt_truncate = bptt_truncate

    @classmethod
    def parameter_shapes(cls, vocab_size, embedding_dim=64, hidden_size=128, num_layers=1,
                         cell="lstm", **config):
        """(name, shape) of each parameter the constructor arguments give."""
        return cls._shapes(vocab_size, embedding_dim, hidden_size, num_layers, cell)


@register_model
class SentimentClassifier(Module):
    """Embedding -> LSTM or GRU (``cell``), one direction or both (``bidirectional``)
    -> pooling over each review's valid steps -> Linear -> one logit.

    ``pooling``: "last" (each sequence's final state of the top layer; bidirectional:
    the forward direction's, after the review's last valid step, then the reverse
    direction's, after its first, concatenated to 2H), "mean" or "max" over its steps
    (of all H, or 2H, output columns). Padded batches pass ``lengths``; padding never
    changes a prediction.

    vocab_size, embedding_dim, hidden_size, num_layers : int >= 1;  dropout : a number
    in [0, 1);  freeze_embedding : bool;  dtype : float32 or float64;  seed : None, an
    int >= 0 or a NumPy Generator;  num_threads : None or an int >= 1;
    embedding_weight : None or a (vocab_size, embedding_dim) array of ``dtype``;
    cell : "lstm" (the layer is the attribute ``lstm``; a config without ``cell`` means
    it) or "gru" (attribute ``gru``);  bidirectional : bool (the head then reads 2H).
    """

    config_choices = {"cell": ("lstm", "gru"), "bidirectional": (False, True)}

    def __init__(self, vocab_size, embedding_dim=50, hidden_size=64, num_layers=1,
                 pooling="last", dropout=0.0, freeze_embedding=False, dtype=np.float32,
                 seed=None, num_threads=None, embedding_weight=None, cell="lstm",
                 bidirectional=False):
        vocab_size = check_int("vocab_size", vocab_size)
        embedding_dim = check_int("embedding_dim", embedding_dim)
        # the cell first: it decides how large hidden_size may be
        cell = check_choice("cell", cell, self.config_choices["cell"])
        hidden_size = _checked_hidden_size(hidden_size, cell)
        num_layers = check_int("num_layers", num_layers)
        pooling = check_choice("pooling", pooling, ("last", "mean", "max"))
        dropout = check_probability("dropout", dropout)
        freeze_embedding = check_flag("freeze_embedding", freeze_embedding)
        bidirectional = check_flag("bidirectional", bidirectional)
        dtype = check_float_dtype("dtype", dtype)
        num_threads = check_num_threads(num_threads)
        if embedding_weight is not None:
            embedding_weight = check_table("embedding_weight", embedding_weight,
                                           (vocab_size, embedding_dim))
            if embedding_weight.dtype != dtype:
                raise TypeError(f"embedding_weight has dtype {embedding_weight.dtype} but "
                                f"dtype is {dtype}: pass embedding_weight.astype(np.{dtype})")
        rng = make_rng(seed)
        self.config = dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                           hidden_size=hidden_size, num_layers=num_layers, pooling=pooling,
                           dropout=dropout, freeze_embedding=freeze_embedding,
                           dtype=dtype.name, cell=cell, bidirectional=bidirectional)
        self.pooling = pooling
        self.cell = cell
        self.embed = Embedding(vocab_size, embedding_dim, weight=embedding_weight,
                               freeze=freeze_embedding, dtype=dtype, seed=rng)
        recurrent = CELLS[cell](embedding_dim, hidden_size, num_layers, dropout=dropout,
                                dtype=dtype, seed=rng, init="xavier",
                                num_threads=num_threads, bidirectional=bidirectional)
        # Assigned between embed and head: parameters (and an optimizer's state) keep
        # the order and the names "lstm.*" of checkpoints written before the GRU.
        setattr(self, cell, recurrent)
        self.head = Linear(recurrent.num_directions * hidden_size, 1, dtype=dtype, seed=rng,
                           num_threads=num_threads)
        self.num_threads = num_threads
        self._pool = None

    @property
    def recurrent(self):
        """The recurrent layer: ``self.lstm`` or ``self.gru``, as ``cell`` says."""
        return getattr(self, self.cell)

    @classmethod
    def parameter_shapes(cls, vocab_size, embedding_dim=50, hidden_size=64, num_layers=1,
                         cell="lstm", bidirectional=False, **config):
        """(name, shape) of each parameter the constructor arguments give."""
        check_choice("cell", cell, cls.config_choices["cell"])
        yield "embed.weight", (vocab_size, embedding_dim)
        for name, shape in CELLS[cell].parameter_shapes(embedding_dim, hidden_size,
                                                        num_layers,
                                                        bidirectional=bidirectional):
            yield f"{cell}.{name}", shape
        yield "head.W", ((2 if bidirectional else 1) * hidden_size, 1)
        yield "head.b", (1,)

    def forward(self, ids, lengths=None):
        """ids (T, B) integers in [0, vocab_size), lengths (B,) integers in [1, T] or
        None (every review T long) -> logits (B,)."""
        ids = np.asarray(ids)
        T, B = ids.shape
        lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
        if np.any(lengths < 1):
            raise ValueError("every review needs at least one token (lengths >= 1)")
        recurrent = self.recurrent
        hs, final = recurrent(ids, lengths=lengths, embedding=self.embed)   # hs (T, B, W)
        h_n = final[0] if self.cell == "lstm" else final    # (layers * directions, B, H)
        valid = (np.arange(T)[:, None] < lengths[None, :])[:, :, None]   # (T, B, 1)
        if self.pooling == "last":
            # The top layer's final states, forward direction first: (B, W).
            pooled = np.concatenate(h_n[-recurrent.num_directions:], axis=-1)
        elif self.pooling == "mean":
            pooled = hs.sum(axis=0) / lengths[:, None].astype(hs.dtype)
        else:
            masked = np.where(valid, hs, -np.inf)
            pooled = masked.max(axis=0)
            self._argmax = masked.argmax(axis=0)
        self._pool = (hs.shape, lengths, valid)
        return self.head(pooled)[:, 0]

    def backward(self, dlogits):
        """Accumulate every parameter's gradient (the embedding's unless frozen) from
        dlogits (B,), the gradient of the loss w.r.t. the last forward's logits."""
        (T, B, W), lengths, valid = self._pool
        dpooled = self.head.backward(np.asarray(dlogits)[:, None])   # (B, W)
        recurrent = self.recurrent
        if self.pooling == "last":
            directions = recurrent.num_directions
            H = W // directions
            dh_n = np.zeros((recurrent.num_layers * directions, B, H), dpooled.dtype)
            # column block d of the pooled vector is direction d's final state
            dh_n[-directions:] = dpooled.reshape(B, directions, H).transpose(1, 0, 2)
            recurrent.backward(None, (dh_n, np.zeros_like(dh_n)) if self.cell == "lstm"
                               else dh_n)
        else:
            if self.pooling == "mean":
                dhs = np.broadcast_to(dpooled / lengths[:, None].astype(dpooled.dtype),
                                      (T, B, W)) * valid
            else:
                dhs = np.zeros((T, B, W), dpooled.dtype)
                np.put_along_axis(dhs, self._argmax[None], dpooled[None], axis=0)
            recurrent.backward(np.ascontiguousarray(dhs, dtype=dpooled.dtype))


def sample(model, prefix, length, temperature=1.0, top_k=None, seed=None, stop=None):
    """Continue ``prefix`` (a sequence of ids) by ``length`` ids from a language model.

    Temperature 0 is greedy; ``top_k`` keeps only the k likeliest ids; the same seed gives
    the same ids. The prefix is read in one checked call; then each generated id takes one
    ``decode_step`` (no per-step checks). ``stop`` (an id or None) ends the sample early
    once generated (it is included). Returns a list of at most ``length`` ids.
    """
    prefix = np.asarray(prefix)
    if prefix.ndim != 1 or prefix.size == 0 or not np.issubdtype(prefix.dtype, np.integer):
        raise ValueError("prefix must be a non-empty 1-D sequence of integer ids")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool)
                              or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        logits, state = model(prefix.astype(np.int64)[:, None])
        z = logits[-1, 0]
        out = []
        step_ids = np.zeros(1, np.int64)
        for _ in range(length):
            z = z.astype(np.float64)
            if top_k is not None and top_k < z.size:
                cut = np.partition(z, z.size - top_k)[z.size - top_k]
                z = np.where(z >= cut, z, -np.inf)
            if temperature == 0:
                nxt = int(np.argmax(z))
            else:
                p = np.exp((z - z.max()) / temperature)
                cdf = np.cumsum(p)
                nxt = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")),
                          z.size - 1)
            out.append(nxt)
            if nxt == stop:
                break
            step_ids[0] = nxt
            logits, state = model.decode_step(step_ids, state)
            z = logits[0]
        return out
    finally:
        model.train(was_training)

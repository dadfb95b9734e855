"""Stacked LSTM and vanilla-RNN layers over the kernels, with dropout between layers and
conversion to and from ``torch.nn.LSTM`` / ``torch.nn.RNN`` (whose weights are ours
transposed, with the two biases summed).

Both take float inputs (T, B, input_size) or integer ids (T, B): one-hot inputs (id v is
row v of the identity, so its projection is row v of ``W_x_l0``) or, with an
``nn.Embedding`` passed to ``forward``, rows of that embedding. On ids the LSTM looks
layer 0's input projection up per distinct id (``fastlstm.lstm.lstm_forward_lookup``)
where the compiled kernels run and it pays, and its backward fills ``W_x_l0.grad`` and the
embedding's gradient itself; otherwise (and always for the RNN, whose kernels have no
lookup) the layer gathers the input rows and runs its float path.
"""
import numpy as np

from .. import _dense_ops
from .._containers import InputModifiedError, changed_array, fingerprint
from ..lstm import (lookup_available, lstm_backward, lstm_backward_lookup, lstm_forward,
                    lstm_forward_lookup)
from ..rnn import rnn_backward, rnn_forward
from .._validation import (BACKENDS, NONLINEARITIES, check_bptt_truncate, check_choice,
                           check_float_dtype, check_int, check_num_threads,
                           check_probability, make_rng)
from .layers import Embedding
from .module import Module
from .parameter import Parameter

INITS = ("default", "xavier")


class _IdsInput:
    """What a forward pass on ids keeps for its backward pass."""

    __slots__ = ("embedding", "lookup", "rows", "source", "source_fingerprint")

    def __init__(self, embedding, lookup=False, rows=None, source=None):
        self.embedding = embedding   # None: one-hot inputs
        self.lookup = lookup         # layer 0 ran lstm_forward_lookup
        # With an embedding the lookup table is ``rows @ source`` (source = W_x_l0, rows
        # the distinct ids' embedding rows); the backward reads both again, so W_x_l0
        # must not change in between.
        self.rows = rows
        self.source = source
        self.source_fingerprint = None if source is None else fingerprint((source,))


class _Stacked(Module):
    """What nn.LSTM and nn.RNN share: per-layer weights, dropout between layers."""

    gates = 1

    @classmethod
    def _checked(cls, input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                 backend, num_threads):
        """The shared constructor arguments, checked (TypeError, ValueError naming the
        argument) and normalised, before anything is built."""
        max_hidden = (2**31 - 1) // cls.gates
        return dict(
            input_size=check_int("input_size", input_size),
            hidden_size=check_int("hidden_size", hidden_size, 1, max_hidden,
                                  f" ({cls.gates} * hidden_size is a 32-bit BLAS size)"
                                  if cls.gates > 1 else ""),
            num_layers=check_int("num_layers", num_layers),
            dropout=check_probability("dropout", dropout),
            dtype=check_float_dtype("dtype", dtype),
            rng=make_rng(seed),
            init=check_choice("init", init, INITS),
            backend=check_choice("backend", backend, BACKENDS),
            num_threads=check_num_threads(num_threads))

    def __init__(self, input_size, hidden_size, num_layers, dropout, dtype, rng, init,
                 backend, num_threads):
        """The arguments as ``_checked`` returns them."""
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.backend, self.num_threads = dropout, backend, num_threads
        self._rng = rng
        G, H = self.gates * hidden_size, hidden_size
        k = 1 / np.sqrt(H)
        for layer in range(num_layers):
            D = input_size if layer == 0 else H
            if init == "default":   # PyTorch's: uniform(+-1/sqrt(H)) everywhere
                W_x = self._rng.uniform(-k, k, (D, G))
                W_h = self._rng.uniform(-k, k, (H, G))
                b = self._rng.uniform(-k, k, G) + self._rng.uniform(-k, k, G)
            else:                   # Glorot uniform weights, zero bias
                W_x = self._rng.uniform(-1, 1, (D, G)) * np.sqrt(6 / (D + G))
                W_h = self._rng.uniform(-1, 1, (H, G)) * np.sqrt(6 / (H + G))
                b = np.zeros(G)
                if self.gates == 4:
                    b[H:2 * H] = 1.0   # forget-gate bias 1: remember by default
            setattr(self, f"W_x_l{layer}", Parameter(W_x.astype(dtype)))
            setattr(self, f"W_h_l{layer}", Parameter(W_h.astype(dtype)))
            setattr(self, f"b_l{layer}", Parameter(b.astype(dtype)))
        self._caches = None
        self._masks = None
        self._eye = None
        self._ids_input = None   # an _IdsInput when the last forward took ids

    @classmethod
    def parameter_shapes(cls, input_size, hidden_size, num_layers=1, **config):
        """(name, shape) of each parameter the constructor arguments give, without
        allocating them (``fastlstm.load`` checks a file against them)."""
        G = cls.gates * hidden_size
        for layer in range(num_layers):
            yield f"W_x_l{layer}", (input_size if layer == 0 else hidden_size, G)
            yield f"W_h_l{layer}", (hidden_size, G)
            yield f"b_l{layer}", (G,)

    def layer_weights(self, layer):
        return (getattr(self, f"W_x_l{layer}"), getattr(self, f"W_h_l{layer}"),
                getattr(self, f"b_l{layer}"))

    def _ids(self, x, embedding):
        """``x`` as checked (T, B) ids when it holds integers, else None (float inputs);
        ``embedding`` (None or an nn.Embedding of input_size columns) checked too."""
        if embedding is not None:
            if not isinstance(embedding, Embedding):
                raise TypeError(f"embedding must be None or an nn.Embedding, got "
                                f"{type(embedding).__name__}")
            weight = embedding.weight.data
            if weight.shape[1] != self.input_size:
                raise ValueError(f"embedding has rows of {weight.shape[1]}, but the layer's "
                                 f"input_size is {self.input_size}")
            if weight.dtype != self.W_x_l0.data.dtype:
                raise TypeError(f"embedding has dtype {weight.dtype} but the layer has "
                                f"{self.W_x_l0.data.dtype}")
        ids = x if isinstance(x, np.ndarray) else np.asarray(x)
        if ids.dtype.kind not in "iu":
            if embedding is not None:
                raise TypeError(f"with an embedding, the input must be integer ids (T, B), "
                                f"got dtype {ids.dtype}")
            return None
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (T, B) (time-major), got shape {ids.shape}")
        if embedding is None and ids.size and (ids.min() < 0 or ids.max() >= self.input_size):
            raise ValueError(f"ids must lie in [0, {self.input_size}) (one-hot inputs: "
                             f"input_size), got values from {ids.min()} to {ids.max()}")
        return ids

    def _gathered(self, ids, embedding):
        """The float inputs (T, B, input_size) that ``ids`` stand for."""
        if embedding is not None:
            return embedding(ids)   # (its backward runs in ours)
        if self._eye is None:
            self._eye = np.eye(self.input_size, dtype=self.W_x_l0.data.dtype)
        return self._eye[ids]

    def _step_projection(self, x, embedding):
        """Layer 0's ``x @ W_x`` for one decoding step (x floats, or ids)."""
        W_x0 = self.W_x_l0.data
        if x.dtype.kind in "iu":
            if embedding is None:   # a one-hot input's projection is a row of W_x_l0
                return W_x0[x]
            x = embedding.weight.data[x]
        return x @ W_x0

    def _changed_since_forward(self):
        """What the last forward's caches reference that has changed since: a name for
        the message (a parameter's, or the input's), or None."""
        for layer, cache in enumerate(self._caches):
            name = cache.changed_input()
            if name is None:
                continue
            if name in ("W_x", "W_h"):
                return f"parameter {name}_l{layer}"
            if name == "x":
                return ("the input x" if layer == 0 else
                        f"the input of layer {layer} (the output of layer {layer - 1})")
            if name == "table" and cache.table is self.W_x_l0.data:
                return "parameter W_x_l0 (the lookup table)"
            return f"the lookup {name}"
        ids_input = self._ids_input
        if ids_input is not None and ids_input.source is not None:
            if changed_array((ids_input.source,), ids_input.source_fingerprint) is not None:
                return "parameter W_x_l0 (the lookup table was computed from it)"
        return None

    def _check_inputs(self):
        """Raise InputModifiedError before any gradient is accumulated if an array the
        forward pass's caches reference (an input, a weight) changed since forward."""
        name = self._changed_since_forward()
        if name is not None:
            kind = type(self).__name__
            raise InputModifiedError(name, f"{kind}.forward", f"{kind}.backward")

    _lookup = False   # whether layer 0 looked its input projection up (LSTM only)

    def _run_layers(self, x, run_layer):
        """The stacked forward pass: ``run_layer(layer, out, W_x, W_h, b) -> (hs, state,
        cache)`` runs one layer on ``out`` (x, or the output of the layer below after its
        dropout). Keeps each layer's cache and dropout mask for the backward pass;
        returns the top layer's output and the layers' final states, bottom first."""
        self._caches, self._masks = [], []
        states = []
        out = x
        for layer in range(self.num_layers):
            hs, state, cache = run_layer(layer, out, *self.layer_weights(layer))
            self._caches.append(cache)
            states.append(state)
            out, mask = self._dropout(hs, layer)
            self._masks.append(mask)
        return out, states

    def _backward_layers(self, dhs, backward_layer):
        """The stacked backward pass, top layer first: ``backward_layer(layer, d_out, W_x)
        -> (g, d_in)`` runs one layer's backward on the gradient w.r.t. its output and
        adds to ``W_x.grad`` itself (a lookup layer's comes from its table); ``d_in`` is
        the gradient w.r.t. the layer's input. Accumulates W_h's and b's gradients and
        the embedding's; returns ``(dx, grads)``, dx None after a forward on ids, grads
        each layer's ``g`` bottom first. Call ``_check_backward`` first."""
        grads = [None] * self.num_layers
        d_out = dhs
        for layer in reversed(range(self.num_layers)):
            if self._masks[layer] is not None and d_out is not None:
                d_out = d_out * self._masks[layer]
            W_x, W_h, b = self.layer_weights(layer)
            g, d_out = backward_layer(layer, d_out, W_x)
            W_h.grad += g.dW_h
            b.grad += g.db
            grads[layer] = g
        if self._ids_input is not None:
            if not self._lookup and self._ids_input.embedding is not None:
                self._ids_input.embedding.backward(d_out)
            d_out = None
        return d_out, grads

    def _check_backward(self):
        """Raise unless a forward pass made the caches and its inputs are unchanged."""
        if self._caches is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        self._check_inputs()

    def _step_preactivation(self, layer, x, out, h, embedding):
        """One decoding step's ``input @ W_x + h @ W_h + b`` for ``layer`` (a new array):
        its input is x (floats or ids) for layer 0, else ``out``, the layer below's."""
        W_x, W_h, b = self.layer_weights(layer)
        z = self._step_projection(x, embedding) if layer == 0 else out @ W_x.data
        z = z + h @ W_h.data
        z += b.data
        return z

    def _dropout(self, hs, layer):
        if not self.training or self.dropout == 0 or layer == self.num_layers - 1:
            return hs, None
        mask = (self._rng.random(hs.shape) >= self.dropout).astype(hs.dtype)
        mask /= 1 - self.dropout
        return hs * mask, mask

    def to_torch_state_dict(self):
        """This layer's weights under torch's names and layout, as NumPy arrays
        (``{k: torch.from_numpy(v) for k, v in ...}`` loads them into torch)."""
        out = {}
        for layer in range(self.num_layers):
            W_x, W_h, b = self.layer_weights(layer)
            out[f"weight_ih_l{layer}"] = W_x.data.T.copy()
            out[f"weight_hh_l{layer}"] = W_h.data.T.copy()
            out[f"bias_ih_l{layer}"] = b.data.copy()
            out[f"bias_hh_l{layer}"] = np.zeros_like(b.data)
        return out

    def _load_torch(self, module):
        for layer in range(self.num_layers):
            W_x, W_h, b = self.layer_weights(layer)
            get = lambda name: getattr(module, f"{name}_l{layer}").detach().cpu().numpy()
            W_x.data[...] = get("weight_ih").T
            W_h.data[...] = get("weight_hh").T
            b.data[...] = get("bias_ih") + get("bias_hh") if module.bias else 0
        return self

    @staticmethod
    def _torch_args(module, kind):
        if getattr(module, "batch_first", False) or getattr(module, "bidirectional", False):
            raise ValueError(f"from_torch supports time-major, unidirectional {kind}s only")
        if getattr(module, "proj_size", 0):
            raise ValueError("from_torch does not support proj_size")
        dtype = module.weight_ih_l0.detach().cpu().numpy().dtype
        return dict(input_size=module.input_size, hidden_size=module.hidden_size,
                    num_layers=module.num_layers, dropout=module.dropout, dtype=dtype)


class LSTM(_Stacked):
    """A stack of LSTM layers, weights fused per layer as ``W_x_l{k}`` (D_k, 4H),
    ``W_h_l{k}`` (H, 4H), ``b_l{k}`` (4H,), gate order i, f, g, o.

    ``forward(x, state=None, lengths=None, embedding=None) -> (hs, (h_n, c_n))`` with
    ``x`` (T, B, input_size) floats or (T, B) integer ids (see the module docstring),
    ``h_n``, ``c_n`` of shape (num_layers, B, H); ``backward(dhs, dstate=None) ->
    (dx, (dh0, dc0))`` with ``dstate = (dh_n, dc_n)`` or None (dx is None after a
    forward on ids). Dropout (training mode only) applies to each layer's output except
    the last's.

    input_size : int >= 1;  hidden_size : int >= 1 (4 * hidden_size fits a 32-bit int)
    num_layers : int >= 1;  dropout : a number in [0, 1);  dtype : float32 or float64
    seed : None, an int >= 0, or a NumPy Generator/SeedSequence/BitGenerator
    init : "default" (PyTorch's) or "xavier";  backend : "auto", "cython" or "numpy"
    num_threads : None (every usable core) or an int >= 1
    """

    gates = 4

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0,
                 dtype=np.float32, seed=None, init="default", backend="auto",
                 num_threads=None):
        a = self._checked(input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                          backend, num_threads)
        self.config = dict(input_size=a["input_size"], hidden_size=a["hidden_size"],
                           num_layers=a["num_layers"], dropout=a["dropout"],
                           dtype=a["dtype"].name, init=a["init"])
        super().__init__(**a)

    @classmethod
    def from_torch(cls, module):
        """An nn.LSTM with the weights of a ``torch.nn.LSTM``."""
        return cls(**cls._torch_args(module, "LSTM"))._load_torch(module)

    @property
    def _lookup(self):
        """Whether the last forward looked layer 0's input projection up."""
        return self._ids_input is not None and self._ids_input.lookup

    def forward(self, x, state=None, lengths=None, embedding=None):
        """x (T, B, input_size) floats, or (T, B) integer ids: one-hot inputs (ids in
        [0, input_size)), or rows of ``embedding`` (an ``nn.Embedding`` with input_size
        columns, whose gradient the backward pass accumulates); state ``(h0, c0)`` each
        (num_layers, B, H) or None -> ``(hs (T, B, H), (h_n, c_n))``."""
        ids = self._ids(x, embedding)
        self._ids_input = None
        if ids is None:
            return self._forward(x, None, None, state, lengths)
        W_x0 = self.W_x_l0.data
        if self.backend != "numpy" and lookup_available(W_x0.dtype):
            if embedding is None:   # a one-hot input's projection is a row of W_x_l0
                self._ids_input = _IdsInput(None, lookup=True)
                return self._forward(None, ids, W_x0, state, lengths)
            distinct, index = np.unique(ids, return_inverse=True)
            # (nearly) every id distinct: the product per distinct id would save nothing
            if 2 * distinct.size <= ids.size:
                rows = embedding(distinct)   # its backward scatters into these rows
                table = _dense_ops.matmul(rows, W_x0, num_threads=self.num_threads)
                self._ids_input = _IdsInput(embedding, lookup=True, rows=rows, source=W_x0)
                return self._forward(None, index.reshape(ids.shape), table, state, lengths)
        self._ids_input = _IdsInput(embedding)
        return self._forward(self._gathered(ids, embedding), None, None, state, lengths)

    def _forward(self, x, ids, table, state, lengths):
        h0s = c0s = [None] * self.num_layers
        if state is not None:
            h0s, c0s = state

        def run_layer(layer, out, W_x, W_h, b):
            if layer == 0 and ids is not None:
                return lstm_forward_lookup(ids, table, W_h.data, b.data, h0s[layer],
                                           c0s[layer], lengths=lengths,
                                           num_threads=self.num_threads)
            return lstm_forward(out, W_x.data, W_h.data, b.data, h0s[layer], c0s[layer],
                                lengths=lengths, backend=self.backend,
                                num_threads=self.num_threads)

        out, states = self._run_layers(x, run_layer)
        h_n, c_n = zip(*states)
        return out, (np.stack(h_n), np.stack(c_n))

    def step(self, x, state, embedding=None):
        """One time step for decoding, in NumPy, without input checks or a cache.

        x: an ndarray (B, input_size) of floats, or (B,) integer ids (one-hot, or rows of
        ``embedding``) in range; state ``(h, c)``, each (num_layers, B, H). Returns
        ``(h_top (B, H), (h, c))``. Inference only: no dropout, nothing kept for a
        backward pass.
        """
        h_prev, c_prev = state
        H = self.hidden_size
        h_new, c_new = np.empty_like(h_prev), np.empty_like(c_prev)
        out = None
        for layer in range(self.num_layers):
            z = self._step_preactivation(layer, x, out, h_prev[layer], embedding)
            g = np.tanh(z[:, 2 * H:3 * H])
            # sigmoid over all four gate blocks in place (the g block is unused)
            np.negative(z, out=z)
            np.exp(z, out=z)
            z += 1
            np.reciprocal(z, out=z)
            c = c_new[layer]
            np.multiply(z[:, H:2 * H], c_prev[layer], out=c)
            c += z[:, :H] * g
            out = h_new[layer]
            np.multiply(z[:, 3 * H:], np.tanh(c), out=out)
        return out, (h_new, c_new)

    def backward(self, dhs, dstate=None):
        """dhs (T, B, H) or None, dstate ``(dh_n, dc_n)`` each (num_layers, B, H) or None
        -> ``(dx, (dh0, dc0))``; accumulates into every parameter's ``.grad`` (and, after
        a forward on ids with an embedding, into the embedding's; dx is then None: ids
        have no gradient). Raises InputModifiedError, before any gradient is
        accumulated, if the input or a weight changed in place since ``forward``."""
        self._check_backward()
        L = self.num_layers
        dh_n, dc_n = dstate if dstate is not None else ([None] * L, [None] * L)

        def backward_layer(layer, d_out, W_x):
            if layer == 0 and self._lookup:
                g = lstm_backward_lookup(d_out, self._caches[layer], dh_n[layer],
                                         dc_n[layer])
                self._table_backward(g.d_table)
                return g, d_out
            g = lstm_backward(d_out, self._caches[layer], dh_n[layer], dc_n[layer])
            W_x.grad += g.dW_x
            return g, g.dx

        d_out, grads = self._backward_layers(dhs, backward_layer)
        return d_out, (np.stack([g.dh0 for g in grads]), np.stack([g.dc0 for g in grads]))

    def _table_backward(self, d_table):
        """W_x_l0's gradient, and the embedding's, from the lookup table's (V', 4H)."""
        W_x0 = self.W_x_l0
        ids_input = self._ids_input
        if ids_input.embedding is None:   # one-hot: the table is W_x_l0 itself
            W_x0.grad += d_table
            return
        _dense_ops.matmul(ids_input.rows, d_table, trans_a=True, out=W_x0.grad,
                          accumulate=True, num_threads=self.num_threads)
        if ids_input.embedding.weight.requires_grad:
            ids_input.embedding.backward(_dense_ops.matmul(
                d_table, W_x0.data, trans_b=True, num_threads=self.num_threads))


class RNN(_Stacked):
    """A stack of vanilla-RNN layers, ``h_t = act(x_t W_x + h_{t-1} W_h + b)``, weights
    ``W_x_l{k}`` (D_k, H), ``W_h_l{k}`` (H, H), ``b_l{k}`` (H,).

    ``forward(x, h0=None, lengths=None, embedding=None) -> (hs, h_n)`` with h_n
    (num_layers, B, H), x floats or integer ids as for ``LSTM`` (the RNN gathers the
    rows ids stand for and runs on them: its kernels have no lookup);
    ``backward(dhs, dh_n=None) -> (dx, dh0)``; ``bptt_truncate`` (None or k >= 0) is
    applied in every layer's backward.

    nonlinearity : "tanh" or "relu";  bptt_truncate : None (full BPTT) or an int >= 0;
    the other arguments as for ``LSTM`` (hidden_size up to 2**31 - 1).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh",
                 dropout=0.0, bptt_truncate=None, dtype=np.float32, seed=None,
                 init="default", backend="auto", num_threads=None):
        nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        bptt_truncate = check_bptt_truncate(bptt_truncate)
        a = self._checked(input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                          backend, num_threads)
        self.config = dict(input_size=a["input_size"], hidden_size=a["hidden_size"],
                           num_layers=a["num_layers"], nonlinearity=nonlinearity,
                           dropout=a["dropout"], bptt_truncate=bptt_truncate,
                           dtype=a["dtype"].name, init=a["init"])
        self.nonlinearity = nonlinearity
        self.bptt_truncate = bptt_truncate
        super().__init__(**a)

    @classmethod
    def from_torch(cls, module):
        """An nn.RNN with the weights of a ``torch.nn.RNN``."""
        return cls(nonlinearity=module.nonlinearity,
                   **cls._torch_args(module, "RNN"))._load_torch(module)

    def forward(self, x, h0=None, lengths=None, embedding=None):
        """x (T, B, input_size) floats or (T, B) integer ids (with ``embedding``, rows of
        it; without, one-hot), h0 (num_layers, B, H) or None -> ``(hs, h_n)``."""
        ids = self._ids(x, embedding)
        self._ids_input = None
        if ids is not None:
            self._ids_input = _IdsInput(embedding)
            x = self._gathered(ids, embedding)
        h0s = [None] * self.num_layers if h0 is None else h0

        def run_layer(layer, out, W_x, W_h, b):
            return rnn_forward(out, W_x.data, W_h.data, b.data, h0s[layer],
                               nonlinearity=self.nonlinearity, lengths=lengths,
                               backend=self.backend, num_threads=self.num_threads)

        out, h_n = self._run_layers(x, run_layer)
        return out, np.stack(h_n)

    def step(self, x, h, embedding=None):
        """One time step for decoding, in NumPy, without input checks or a cache:
        x an ndarray (B, input_size) of floats or (B,) integer ids (as for ``LSTM.step``),
        h (num_layers, B, H). Returns ``(h_top (B, H), h_new)``."""
        act = np.tanh if self.nonlinearity == "tanh" else (lambda z: np.maximum(z, 0))
        h_new = np.empty_like(h)
        out = None
        for layer in range(self.num_layers):
            z = self._step_preactivation(layer, x, out, h[layer], embedding)
            out = h_new[layer] = act(z)
        return out, h_new

    def backward(self, dhs, dh_n=None):
        """dhs (T, B, H) or None, dh_n (num_layers, B, H) or None -> ``(dx, dh0)``;
        accumulates into every parameter's ``.grad`` (and, after a forward on ids with an
        embedding, into the embedding's; dx is then None). Raises InputModifiedError,
        before any gradient is accumulated, if the input or a weight changed in place
        since ``forward``."""
        self._check_backward()
        dh_n = [None] * self.num_layers if dh_n is None else dh_n

        def backward_layer(layer, d_out, W_x):
            g = rnn_backward(d_out, self._caches[layer], dh_n[layer], self.bptt_truncate)
            W_x.grad += g.dW_x
            return g, g.dx

        d_out, grads = self._backward_layers(dhs, backward_layer)
        return d_out, np.stack([g.dh0 for g in grads])

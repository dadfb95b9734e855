"""Stacked recurrent layers over the kernels: ``LSTM`` (optionally projected, torch's
``proj_size``), ``GRU`` and the vanilla ``RNN``, each uni- or bidirectional, with dropout
between layers and conversion to and from ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (whose
weights are ours transposed; the LSTM and RNN keep torch's two biases summed in one, the
GRU keeps them apart, as its n gate needs).

All take float inputs (T, B, input_size) or integer ids (T, B): one-hot inputs (id v is
row v of the identity, so its projection is row v of ``W_x_l0``) or, with an
``nn.Embedding`` passed to ``forward``, rows of that embedding. On ids a unidirectional,
unprojected LSTM or GRU looks layer 0's input projection up per distinct id
(``lstm_forward_lookup``, ``gru_forward_lookup``) where the compiled kernels run and it
pays, and its backward fills ``W_x_l0.grad`` and the embedding's gradient itself;
otherwise the layer gathers the input rows and runs its float path.

Bidirectional layers (``bidirectional=True``) follow torch: each layer runs a forward and
a reverse direction, its output is the two halves concatenated on the last axis
(forward first), the final states stack as ``(num_layers * 2, B, H)`` with index
``2 * layer + direction``, and the reverse direction's weights are named
``..._l{k}_reverse``. With ``lengths``, the reverse direction reads every sequence from
its own last valid step back to its first, never from the padding, and its output is
written back at the steps it belongs to. With two or more threads the two directions run
at the same time, each on half of them.
"""
import concurrent.futures
import threading

import numpy as np

from .. import _dense_ops
from .._containers import InputModifiedError, changed_array, fingerprint
from .._threads import resolve_num_threads, usable_cores
from ..gru import (gru_backward, gru_backward_lookup, gru_backward_pair, gru_forward,
                   gru_forward_lookup, gru_forward_pair,
                   lookup_available as gru_lookup_available)
from ..lstm import (lookup_available, lstm_backward, lstm_backward_lookup,
                    lstm_backward_pair, lstm_forward, lstm_forward_lookup, lstm_forward_pair)
from ..lstmp import lstmp_backward, lstmp_forward
from ..rnn import rnn_backward, rnn_backward_pair, rnn_forward, rnn_forward_pair
from .._validation import (BACKENDS, NONLINEARITIES, check_bptt_truncate, check_choice,
                           check_flag, check_float_dtype, check_int, check_lengths,
                           check_num_threads, check_probability, make_rng)
from .layers import Embedding
from .module import Module
from .parameter import Parameter

INITS = ("default", "xavier")
# Above this many sequences one direction keeps every thread busy on its own (batch
# slices), and running the directions one after the other, each on all threads, beats
# two single-threaded directions side by side (which compete for the caches).
PAIR_MAX_ROWS = 64
_MAX_INT = 2**31 - 1


def parameter_name(name, layer, direction=0):
    """A recurrent parameter's attribute name: ``W_x_l0``, ``W_h_l1_reverse``, ..."""
    return f"{name}_l{layer}{'_reverse' if direction else ''}"


# torch's name of each of our per-layer parameters (weights transposed)
_TORCH_WEIGHT = {"W_x": "weight_ih", "W_h": "weight_hh", "W_hr": "weight_hr"}


class _Reversal:
    """The reverse direction's view of a padded batch: step t of sequence b is step
    ``lengths[b] - 1 - t`` of the input while ``t < lengths[b]``; the padding stays
    where it is (a reverse pass must start at each sequence's own last step). Applying
    it twice gives the input back, so it also maps the reverse outputs, and their
    gradients, to the steps they belong to."""

    def __init__(self, T, B, lengths):
        if lengths is None:
            self.index = None
            return
        t = np.arange(T)[:, None]
        L = lengths.astype(np.intp)[None, :]
        self.index = np.where(t < L, L - 1 - t, t)   # (T, B)
        self.columns = np.arange(B)

    def _read(self, a):
        """``a`` (T, B, ...) read in the reverse direction: a view where there is no
        padding, else a gathered copy."""
        return a[::-1] if self.index is None else a[self.index, self.columns]

    def __call__(self, a):
        """``a`` (T, B, ...) read in the reverse direction, as a new C-contiguous array."""
        return np.ascontiguousarray(self._read(a))

    def add_into(self, out, a):
        """``out += self(a)``, without the intermediate copy where there is no padding."""
        out += self._read(a)
        return out

    def concatenated(self, forward, reverse):
        """``concatenate([forward, self(reverse)], axis=-1)`` in one new array."""
        W = forward.shape[-1]
        out = np.empty(forward.shape[:-1] + (W + reverse.shape[-1],), forward.dtype)
        out[..., :W] = forward
        out[..., W:] = self._read(reverse)
        return out


def _stacked(arrays):
    """``np.stack(arrays)`` for a few equal-shaped arrays, without its generic checks
    (it runs after every pass; the arrays are the kernels' own final states)."""
    first = arrays[0]
    out = np.empty((len(arrays),) + first.shape, first.dtype)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


_pool = None
_pool_lock = threading.Lock()


def _directions_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=usable_cores(), thread_name_prefix="fastlstm-reverse")
    return _pool


def _both_directions(run_forward, run_reverse, n_threads, at_once):
    """``(run_forward(n), run_reverse(n))``: one after the other, each on ``n_threads``,
    or, ``at_once``, both at the same time in two Python threads (the kernels release
    the GIL), each on its own share of the threads."""
    if not at_once:
        return run_forward(n_threads), run_reverse(n_threads)
    n_reverse = n_threads // 2
    future = _directions_pool().submit(run_reverse, n_reverse)
    try:
        forward = run_forward(n_threads - n_reverse)
    except BaseException:
        concurrent.futures.wait([future])
        raise
    return forward, future.result()


def _normalised(result):
    """A forward function's ``(hs, final, cache)`` with ``final`` as a tuple of states."""
    hs, final, cache = result
    return hs, final if isinstance(final, tuple) else (final,), cache


class _IdsInput:
    """What a forward pass on ids keeps for its backward pass."""

    __slots__ = ("embedding", "lookup", "rows", "source", "source_fingerprint")

    def __init__(self, embedding, lookup=False, rows=None, source=None):
        self.embedding = embedding   # None: one-hot inputs
        self.lookup = lookup         # layer 0 looked its input projection up
        # With an embedding the lookup table is ``rows @ source`` (source = W_x_l0, rows
        # the distinct ids' embedding rows); the backward reads both again, so W_x_l0
        # must not change in between.
        self.rows = rows
        self.source = source
        self.source_fingerprint = None if source is None else fingerprint((source,))


class _Stacked(Module):
    """What the recurrent layers share: per-layer and per-direction weights, dropout
    between layers, bidirectional runs, torch conversion.

    A subclass says what its cell is: ``gates`` (how many H-wide blocks W_x has),
    ``state_names`` (("h", "c") or ("h",)), ``_cell_shapes`` (its parameters for one
    layer and direction), ``_forward_call`` / ``_backward_call`` (one layer and
    direction as a call of the functional API), ``_pair_functions`` (the API's
    functions that run both directions at once, if it has them) and
    ``_pack_state`` / ``_unpack_state`` (its public state as per-layer tuples and
    back)."""

    gates = 1
    proj_size = 0
    state_names = ("h",)

    @classmethod
    def _checked(cls, input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                 backend, num_threads, bidirectional=False):
        """The shared constructor arguments, checked (TypeError, ValueError naming the
        argument) and normalised, before anything is built."""
        max_hidden = _MAX_INT // cls.gates
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
            num_threads=check_num_threads(num_threads),
            bidirectional=check_flag("bidirectional", bidirectional))

    def __init__(self, input_size, hidden_size, num_layers, dropout, dtype, rng, init,
                 backend, num_threads, bidirectional=False):
        """The arguments as ``_checked`` returns them (``proj_size`` is set before)."""
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.backend, self.num_threads = dropout, backend, num_threads
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self._rng = rng
        H = hidden_size
        k = 1 / np.sqrt(H)
        for layer, direction, D in self._layer_inputs(input_size, hidden_size, num_layers,
                                                      self.num_directions, self.proj_size):
            for name, shape in self._cell_shapes(D, H, self.proj_size):
                if init == "default":   # PyTorch's: uniform(+-1/sqrt(H)) everywhere
                    value = self._rng.uniform(-k, k, shape)
                    if name == "b":     # torch's two biases, summed
                        value = value + self._rng.uniform(-k, k, shape)
                elif name.startswith("W"):   # Glorot uniform weights, zero biases
                    value = self._rng.uniform(-1, 1, shape) * np.sqrt(6 / sum(shape))
                else:
                    value = np.zeros(shape)
                    if self.gates == 4 and name == "b":
                        value[H:2 * H] = 1.0   # forget-gate bias 1: remember by default
                setattr(self, parameter_name(name, layer, direction),
                        Parameter(value.astype(dtype)))
        self._caches = None
        self._masks = None
        self._eye = None
        self._reversal = None
        self._ids_input = None   # an _IdsInput when the last forward took ids

    @staticmethod
    def _layer_inputs(input_size, hidden_size, num_layers, num_directions, proj_size):
        """(layer, direction, input width) of every layer and direction, in order."""
        out = proj_size or hidden_size
        for layer in range(num_layers):
            D = input_size if layer == 0 else num_directions * out
            for direction in range(num_directions):
                yield layer, direction, D

    @classmethod
    def parameter_shapes(cls, input_size, hidden_size, num_layers=1, bidirectional=False,
                         proj_size=0, **config):
        """(name, shape) of each parameter the constructor arguments give, without
        allocating them (``fastlstm.load`` checks a file against them)."""
        for layer, direction, D in cls._layer_inputs(input_size, hidden_size, num_layers,
                                                     2 if bidirectional else 1, proj_size):
            for name, shape in cls._cell_shapes(D, hidden_size, proj_size):
                yield parameter_name(name, layer, direction), shape

    @property
    def output_size(self):
        """The width of one direction's output: proj_size if projected, else hidden_size."""
        return self.proj_size or self.hidden_size

    def cell_parameters(self, layer, direction=0):
        """[(name, Parameter)] of one layer and direction, in ``_cell_shapes`` order,
        names without their layer suffix (W_x, W_h, b, ...)."""
        D = self.input_size if layer == 0 else self.num_directions * self.output_size
        return [(name, getattr(self, parameter_name(name, layer, direction)))
                for name, _ in self._cell_shapes(D, self.hidden_size, self.proj_size)]

    def layer_weights(self, layer, direction=0):
        """The Parameters of one layer and direction, in ``_cell_shapes`` order."""
        return tuple(p for _, p in self.cell_parameters(layer, direction))

    # --- inputs ----------------------------------------------------------------------

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

    def _step_input_projection(self, layer, x, out, embedding):
        """One decoding step's ``input @ W_x`` for ``layer``: its input is x (floats or
        ids) for layer 0, else ``out``, the layer below's output."""
        if self.bidirectional:
            raise ValueError(f"a bidirectional {type(self).__name__} cannot decode step by "
                             f"step: its reverse direction reads the whole sequence")
        if layer == 0:
            return self._step_projection(x, embedding)
        return out @ getattr(self, parameter_name("W_x", layer)).data

    def _step_preactivation(self, layer, x, out, h, embedding):
        """One decoding step's ``input @ W_x + h @ W_h + b`` for ``layer`` (a new array)."""
        z = self._step_input_projection(layer, x, out, embedding)
        z = z + h @ getattr(self, parameter_name("W_h", layer)).data
        z += getattr(self, parameter_name("b", layer)).data
        return z

    def _split_states(self, state):
        """The public initial state as one tuple per (layer, direction), entries None
        for zeros; stacked arrays must have num_layers * num_directions entries."""
        n = self.num_layers * self.num_directions
        arrays = self._unpack_state(state)
        for name, a in zip(self.state_names, arrays):
            if a is not None and (np.ndim(a) < 1 or len(a) != n):
                raise ValueError(
                    f"{name}0 must stack num_layers * num_directions = {n} states on its "
                    f"first axis, got shape {np.shape(a)}")
        return [tuple(None if a is None else a[i] for a in arrays) for i in range(n)]

    # --- ids and the lookup path ---------------------------------------------------------

    def _lookup_functions(self):
        """(forward_lookup, backward_lookup) of this cell's functional API when layer 0
        can look its input projection up (compiled kernels, one direction, no
        projection), else None."""
        return None

    @property
    def _lookup(self):
        """Whether the last forward looked layer 0's input projection up."""
        return self._ids_input is not None and self._ids_input.lookup

    def _forward(self, x, state, lengths, embedding):
        """The forward pass on floats or ids (see the module docstring)."""
        ids = self._ids(x, embedding)
        self._ids_input = None
        if ids is None:
            return self._run_layers(x, state, lengths)
        W_x0 = self.W_x_l0.data
        if self._lookup_functions() is not None:
            if embedding is None:   # a one-hot input's projection is a row of W_x_l0
                self._ids_input = _IdsInput(None, lookup=True)
                return self._run_layers(None, state, lengths, lookup=(ids, W_x0))
            distinct, index = np.unique(ids, return_inverse=True)
            # (nearly) every id distinct: the product per distinct id would save nothing
            if 2 * distinct.size <= ids.size:
                rows = embedding(distinct)   # its backward scatters into these rows
                table = _dense_ops.matmul(rows, W_x0, num_threads=self.num_threads)
                self._ids_input = _IdsInput(embedding, lookup=True, rows=rows, source=W_x0)
                return self._run_layers(None, state, lengths,
                                        lookup=(index.reshape(ids.shape), table))
        self._ids_input = _IdsInput(embedding)
        return self._run_layers(self._gathered(ids, embedding), state, lengths)

    def _lookup_forward(self, ids, table, state0, lengths):
        """Layer 0 on looked-up input projections: the cell's weights but W_x."""
        weights = [p.data for name, p in self.cell_parameters(0) if name != "W_x"]
        return _normalised(self._lookup_functions()[0](
            ids, table, *weights, *state0, lengths=lengths, num_threads=self.num_threads))

    def _lookup_backward(self, d_out, cache, dfinal):
        g = self._lookup_functions()[1](d_out, cache, *dfinal)
        self._table_backward(g.d_table)
        return g

    def _table_backward(self, d_table):
        """W_x_l0's gradient, and the embedding's, from the lookup table's (V', G)."""
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

    # --- the passes --------------------------------------------------------------------

    def _changed_since_forward(self):
        """What the last forward's caches reference that has changed since: a name for
        the message (a parameter's, or the input's), or None."""
        for layer, caches in enumerate(self._caches):
            for direction, cache in enumerate(caches):
                name = cache.changed_input()
                if name is None:
                    continue
                if name.startswith("W_"):
                    return f"parameter {parameter_name(name, layer, direction)}"
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

    def _run_layers(self, x, state, lengths, lookup=None):
        """The stacked forward pass over ``x`` (T, B, input_size), or over ids when
        ``lookup = (ids, table)`` (layer 0 then runs ``_lookup_forward``). Keeps each
        layer's caches and dropout mask for the backward pass; returns the top layer's
        output and the final states in the public layout."""
        T, B = lookup[0].shape if lookup is not None else np.shape(x)[:2]
        states0 = self._split_states(state)
        self._reversal = None
        if self.bidirectional:
            self._reversal = _Reversal(T, B, check_lengths(lengths, T, B))
        self._caches, self._masks = [], []
        finals = []
        out = x
        for layer in range(self.num_layers):
            if not self.bidirectional:
                if layer == 0 and lookup is not None:
                    hs, final, cache = self._lookup_forward(*lookup, states0[0], lengths)
                else:
                    hs, final, cache = self._cell_forward(
                        layer, 0, out, states0[layer], lengths, self.num_threads)
                self._caches.append([cache])
                finals.append(final)
            else:
                hs = self._bidirectional_forward(layer, out, states0, lengths, finals)
            out, mask = self._dropout(hs, layer)
            self._masks.append(mask)
        return out, self._pack_state(finals)

    def _directions_plan(self, B):
        """How a bidirectional layer of B sequences runs its two directions: ``("pair",
        1)`` one thread each in one parallel region (the kernels' pair entry points),
        ``("threads", n)`` at once in two Python threads sharing n threads, or
        ``("sequential", n)`` one after the other on n threads each. Small batches
        cannot keep many threads busy with one direction; large ones can."""
        n = resolve_num_threads(self.num_threads)
        if n < 2:
            return "sequential", 1
        if B > PAIR_MAX_ROWS:
            return "sequential", n
        if self._pair_functions() is not None and (n == 2 or B < n):
            return "pair", 1
        return "threads", n

    def _pair_functions(self):
        """(forward_pair, backward_pair) of this cell's functional API, or None."""
        return None

    def _cell_forward(self, layer, direction, x, state0, lengths, num_threads):
        function, kwargs = self._forward_call(layer, direction, x, state0, lengths,
                                              num_threads)
        return _normalised(function(**kwargs))

    def _cell_backward(self, cache, d_out, dfinal):
        function, args = self._backward_call(cache, d_out, dfinal)
        return function(*args)

    def _bidirectional_forward(self, layer, inputs, states0, lengths, finals):
        """One bidirectional layer: both directions, the outputs concatenated."""
        reversal = self._reversal
        reversed_inputs = reversal(inputs)
        how, n = self._directions_plan(inputs.shape[1])
        s_f, s_r = states0[2 * layer], states0[2 * layer + 1]
        if how == "pair":
            _, kw_f = self._forward_call(layer, 0, inputs, s_f, lengths, 1)
            _, kw_r = self._forward_call(layer, 1, reversed_inputs, s_r, lengths, 1)
            result_f, result_r = (_normalised(r) for r in
                                  self._pair_functions()[0](kw_f, kw_r))
        else:
            result_f, result_r = _both_directions(
                lambda n: self._cell_forward(layer, 0, inputs, s_f, lengths, n),
                lambda n: self._cell_forward(layer, 1, reversed_inputs, s_r, lengths, n),
                n, how == "threads")
        (hs_f, final_f, cache_f), (hs_r, final_r, cache_r) = result_f, result_r
        self._caches.append([cache_f, cache_r])
        finals += [final_f, final_r]
        return reversal.concatenated(hs_f, hs_r)

    def _backward_layers(self, dhs, dstate):
        """The stacked backward pass, top layer first. Accumulates every parameter's
        gradient (a lookup layer's W_x from its table) and the embedding's; returns
        ``(dx, grads)``, dx None after a forward on ids, grads one list per layer of each
        direction's gradients. Call ``_check_backward`` first."""
        dfinals = self._split_states(dstate)
        grads = [None] * self.num_layers
        d_out = dhs
        for layer in reversed(range(self.num_layers)):
            if self._masks[layer] is not None and d_out is not None:
                d_out = d_out * self._masks[layer]
            if not self.bidirectional:
                if layer == 0 and self._lookup:
                    g = self._lookup_backward(d_out, self._caches[0][0], dfinals[0])
                    layer_grads, d_in = [g], d_out
                else:
                    g = self._cell_backward(self._caches[layer][0], d_out, dfinals[layer])
                    layer_grads, d_in = [g], g.dx
            else:
                layer_grads, d_in = self._bidirectional_backward(layer, d_out, dfinals)
            for direction, g in enumerate(layer_grads):
                for name, param in self.cell_parameters(layer, direction):
                    if name == "W_x" and layer == 0 and self._lookup:
                        continue   # filled from the lookup table's gradient
                    param.grad += getattr(g, "d" + name)
            grads[layer] = layer_grads
            d_out = d_in
        if self._ids_input is not None:
            if not self._lookup and self._ids_input.embedding is not None:
                self._ids_input.embedding.backward(d_out)
            d_out = None
        return d_out, grads

    def _bidirectional_backward(self, layer, d_out, dfinals):
        """Both directions' backward of one bidirectional layer: their gradients and the
        gradient w.r.t. the layer's input (the two directions' summed)."""
        reversal = self._reversal
        cache_f, cache_r = self._caches[layer]
        W = self.output_size
        d_f = d_r = None
        if d_out is not None:
            d_f = np.ascontiguousarray(d_out[..., :W])
            d_r = reversal(d_out[..., W:])
        call_f = self._backward_call(cache_f, d_f, dfinals[2 * layer])
        call_r = self._backward_call(cache_r, d_r, dfinals[2 * layer + 1])
        how, n = self._directions_plan(cache_f.sizes[1])
        if how == "pair":
            g_f, g_r = self._pair_functions()[1](call_f[1], call_r[1])
        else:
            # a cache runs its backward on the threads its forward had
            g_f, g_r = _both_directions(lambda n: call_f[0](*call_f[1]),
                                        lambda n: call_r[0](*call_r[1]), n,
                                        how == "threads")
        d_in = reversal.add_into(g_f.dx, g_r.dx)   # g_f.dx is this call's own buffer
        return [g_f, g_r], d_in

    def _check_backward(self):
        """Raise unless a forward pass made the caches and its inputs are unchanged."""
        if self._caches is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        self._check_inputs()

    def _initial_gradients(self, grads):
        """The gradient w.r.t. the initial state, in the public layout."""
        per_direction = [g for layer_grads in grads for g in layer_grads]
        fields = [("dh0", "dc0")[i] for i in range(len(self.state_names))]
        return self._pack_state([tuple(getattr(g, f) for f in fields)
                                 for g in per_direction])

    def _dropout(self, hs, layer):
        if not self.training or self.dropout == 0 or layer == self.num_layers - 1:
            return hs, None
        mask = (self._rng.random(hs.shape) >= self.dropout).astype(hs.dtype)
        mask /= 1 - self.dropout
        return hs * mask, mask

    # --- torch -------------------------------------------------------------------------

    def to_torch_state_dict(self):
        """This layer's weights under torch's names and layout, as NumPy arrays
        (``{k: torch.from_numpy(v) for k, v in ...}`` loads them into torch)."""
        out = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = parameter_name("", layer, direction)   # "_l0", "_l0_reverse"
                params = dict(self.cell_parameters(layer, direction))
                for name, p in params.items():
                    if name in _TORCH_WEIGHT:
                        out[_TORCH_WEIGHT[name] + suffix] = p.data.T.copy()
                if "b" in params:    # one summed bias: torch's bias_hh is then zero
                    out["bias_ih" + suffix] = params["b"].data.copy()
                    out["bias_hh" + suffix] = np.zeros_like(params["b"].data)
                else:
                    out["bias_ih" + suffix] = params["b_x"].data.copy()
                    out["bias_hh" + suffix] = params["b_h"].data.copy()
        return out

    def _load_torch(self, module):
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = parameter_name("", layer, direction)

                def get(name):
                    return getattr(module, name + suffix).detach().cpu().numpy()

                for name, p in self.cell_parameters(layer, direction):
                    if name in _TORCH_WEIGHT:
                        p.data[...] = get(_TORCH_WEIGHT[name]).T
                    elif name == "b":
                        p.data[...] = get("bias_ih") + get("bias_hh") if module.bias else 0
                    else:
                        torch_name = "bias_ih" if name == "b_x" else "bias_hh"
                        p.data[...] = get(torch_name) if module.bias else 0
        return self

    @staticmethod
    def _torch_args(module, kind):
        if getattr(module, "batch_first", False):
            raise ValueError(f"from_torch supports time-major {kind}s only "
                             f"(batch_first=False)")
        if getattr(module, "proj_size", 0) and kind != "LSTM":
            raise ValueError("proj_size exists for LSTMs only")
        dtype = module.weight_ih_l0.detach().cpu().numpy().dtype
        return dict(input_size=module.input_size, hidden_size=module.hidden_size,
                    num_layers=module.num_layers, dropout=module.dropout, dtype=dtype,
                    bidirectional=bool(module.bidirectional))


class LSTM(_Stacked):
    """A stack of LSTM layers, weights fused per layer as ``W_x_l{k}`` (D_k, 4H),
    ``W_h_l{k}`` (H, 4H), ``b_l{k}`` (4H,), gate order i, f, g, o.

    ``forward(x, state=None, lengths=None, embedding=None) -> (hs, (h_n, c_n))`` with
    ``x`` (T, B, input_size) floats or (T, B) integer ids (see the module docstring),
    ``hs`` (T, B, num_directions * out), ``h_n`` (num_layers * num_directions, B, out),
    ``c_n`` (num_layers * num_directions, B, H), where out = proj_size or H;
    ``backward(dhs, dstate=None) -> (dx, (dh0, dc0))`` with ``dstate = (dh_n, dc_n)`` or
    None (dx is None after a forward on ids). Dropout (training mode only) applies to
    each layer's output except the last's.

    With ``proj_size = P > 0`` (torch's LSTMP) each layer's output is projected:
    ``h_t = (o * tanh(c_t)) W_hr_l{k}`` with ``W_hr_l{k}`` (H, P), and the recurrence
    runs on the P-wide h: ``W_h_l{k}`` is (P, 4H).

    input_size : int >= 1;  hidden_size : int >= 1 (4 * hidden_size fits a 32-bit int)
    num_layers : int >= 1;  dropout : a number in [0, 1);  dtype : float32 or float64
    seed : None, an int >= 0, or a NumPy Generator/SeedSequence/BitGenerator
    init : "default" (PyTorch's) or "xavier";  backend : "auto", "cython" or "numpy"
    num_threads : None (every usable core) or an int >= 1
    bidirectional : bool (see the module docstring);  proj_size : 0 or an int in
    [1, hidden_size)
    """

    gates = 4
    state_names = ("h", "c")

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0,
                 dtype=np.float32, seed=None, init="default", backend="auto",
                 num_threads=None, bidirectional=False, proj_size=0):
        a = self._checked(input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                          backend, num_threads, bidirectional)
        proj_size = check_int("proj_size", proj_size, 0)
        if proj_size >= a["hidden_size"]:
            raise ValueError(f"proj_size must be 0 or smaller than hidden_size "
                             f"({a['hidden_size']}), got {proj_size}")
        self.proj_size = proj_size
        self.config = dict(input_size=a["input_size"], hidden_size=a["hidden_size"],
                           num_layers=a["num_layers"], dropout=a["dropout"],
                           dtype=a["dtype"].name, init=a["init"],
                           bidirectional=a["bidirectional"], proj_size=proj_size)
        super().__init__(**a)

    @staticmethod
    def _cell_shapes(D, H, P=0):
        G = 4 * H
        shapes = [("W_x", (D, G)), ("W_h", (P or H, G)), ("b", (G,))]
        if P:
            shapes.append(("W_hr", (H, P)))
        return shapes

    @classmethod
    def from_torch(cls, module):
        """An nn.LSTM with the weights of a ``torch.nn.LSTM`` (bidirectional and
        projected ones too)."""
        return cls(proj_size=getattr(module, "proj_size", 0),
                   **cls._torch_args(module, "LSTM"))._load_torch(module)

    @staticmethod
    def _unpack_state(state):
        if state is None:
            return None, None
        h0, c0 = state
        return h0, c0

    @staticmethod
    def _pack_state(finals):
        h, c = zip(*finals)
        return _stacked(h), _stacked(c)

    def _forward_call(self, layer, direction, x, state0, lengths, num_threads):
        kwargs = {name: p.data for name, p in self.cell_parameters(layer, direction)}
        kwargs.update(x=x, h0=state0[0], c0=state0[1], lengths=lengths,
                      backend=self.backend, num_threads=num_threads)
        return (lstmp_forward if self.proj_size else lstm_forward), kwargs

    def _backward_call(self, cache, d_out, dfinal):
        return (lstmp_backward if self.proj_size else lstm_backward), (d_out, cache) + dfinal

    def _pair_functions(self):
        return None if self.proj_size else (lstm_forward_pair, lstm_backward_pair)

    def _lookup_functions(self):
        if (self.backend == "numpy" or self.bidirectional or self.proj_size
                or not lookup_available(self.W_x_l0.data.dtype)):
            return None
        return lstm_forward_lookup, lstm_backward_lookup

    def forward(self, x, state=None, lengths=None, embedding=None):
        """x (T, B, input_size) floats, or (T, B) integer ids: one-hot inputs (ids in
        [0, input_size)), or rows of ``embedding`` (an ``nn.Embedding`` with input_size
        columns, whose gradient the backward pass accumulates); state ``(h0, c0)``,
        h0 (num_layers * num_directions, B, out), c0 (num_layers * num_directions, B, H),
        either None for zeros -> ``(hs (T, B, num_directions * out), (h_n, c_n))``."""
        return self._forward(x, state, lengths, embedding)

    def step(self, x, state, embedding=None):
        """One time step for decoding, in NumPy, without input checks or a cache.

        x: an ndarray (B, input_size) of floats, or (B,) integer ids (one-hot, or rows of
        ``embedding``) in range; state ``(h, c)``, h (num_layers, B, out), c
        (num_layers, B, H). Returns ``(h_top (B, out), (h, c))``. Inference only: no
        dropout, nothing kept for a backward pass; unidirectional layers only.
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
            if self.proj_size:
                np.matmul(z[:, 3 * H:] * np.tanh(c),
                          getattr(self, parameter_name("W_hr", layer)).data, out=out)
            else:
                np.multiply(z[:, 3 * H:], np.tanh(c), out=out)
        return out, (h_new, c_new)

    def backward(self, dhs, dstate=None):
        """dhs (T, B, num_directions * out) or None, dstate ``(dh_n, dc_n)`` shaped as
        ``(h_n, c_n)`` (either None for zeros) or None -> ``(dx, (dh0, dc0))``;
        accumulates into every parameter's ``.grad`` (and, after a forward on ids with
        an embedding, into the embedding's; dx is then None: ids have no gradient).
        Raises InputModifiedError, before any gradient is accumulated, if the input or a
        weight changed in place since ``forward``."""
        self._check_backward()
        d_out, grads = self._backward_layers(dhs, dstate)
        return d_out, self._initial_gradients(grads)


class _SingleState(_Stacked):
    """The GRU and the RNN: one state h, ``forward(x, h0=None, lengths=None,
    embedding=None) -> (hs, h_n)``, ``backward(dhs, dh_n=None) -> (dx, dh0)``."""

    @staticmethod
    def _unpack_state(state):
        return (state,)

    @staticmethod
    def _pack_state(finals):
        return _stacked([f[0] for f in finals])

    def forward(self, x, h0=None, lengths=None, embedding=None):
        """x (T, B, input_size) floats or (T, B) integer ids (with ``embedding``, rows of
        it; without, one-hot), h0 (num_layers * num_directions, B, H) or None ->
        ``(hs (T, B, num_directions * H), h_n (num_layers * num_directions, B, H))``."""
        return self._forward(x, h0, lengths, embedding)

    def backward(self, dhs, dh_n=None):
        """dhs (T, B, num_directions * H) or None, dh_n shaped as h_n, or None ->
        ``(dx, dh0)``; accumulates into every parameter's ``.grad`` (and, after a forward
        on ids with an embedding, into the embedding's; dx is then None). Raises
        InputModifiedError, before any gradient is accumulated, if the input or a weight
        changed in place since ``forward``."""
        self._check_backward()
        d_out, grads = self._backward_layers(dhs, dh_n)
        return d_out, self._initial_gradients(grads)


class GRU(_SingleState):
    """A stack of GRU layers (torch's formulation, gate order r, z, n), weights fused per
    layer as ``W_x_l{k}`` (D_k, 3H), ``W_h_l{k}`` (H, 3H) and the two biases kept apart,
    ``b_x_l{k}``, ``b_h_l{k}`` (3H,)::

        r = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
        z = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
        n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))
        h' = (1 - z) * n + z * h

    ``forward(x, h0=None, lengths=None, embedding=None) -> (hs, h_n)``,
    ``backward(dhs, dh_n=None) -> (dx, dh0)``, x floats or integer ids as for ``LSTM``
    (gathered into their rows); bidirectional as for ``LSTM``.

    The arguments as for ``LSTM`` (hidden_size up to (2**31 - 1) // 3, no proj_size).
    """

    gates = 3

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0,
                 dtype=np.float32, seed=None, init="default", backend="auto",
                 num_threads=None, bidirectional=False):
        a = self._checked(input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                          backend, num_threads, bidirectional)
        self.config = dict(input_size=a["input_size"], hidden_size=a["hidden_size"],
                           num_layers=a["num_layers"], dropout=a["dropout"],
                           dtype=a["dtype"].name, init=a["init"],
                           bidirectional=a["bidirectional"])
        super().__init__(**a)

    @staticmethod
    def _cell_shapes(D, H, P=0):
        G = 3 * H
        return [("W_x", (D, G)), ("W_h", (H, G)), ("b_x", (G,)), ("b_h", (G,))]

    @classmethod
    def from_torch(cls, module):
        """An nn.GRU with the weights of a ``torch.nn.GRU`` (bidirectional too)."""
        return cls(**cls._torch_args(module, "GRU"))._load_torch(module)

    def _forward_call(self, layer, direction, x, state0, lengths, num_threads):
        kwargs = {name: p.data for name, p in self.cell_parameters(layer, direction)}
        kwargs.update(x=x, h0=state0[0], lengths=lengths, backend=self.backend,
                      num_threads=num_threads)
        return gru_forward, kwargs

    @staticmethod
    def _backward_call(cache, d_out, dfinal):
        return gru_backward, (d_out, cache, dfinal[0])

    def _pair_functions(self):
        return gru_forward_pair, gru_backward_pair

    def _lookup_functions(self):
        if (self.backend == "numpy" or self.bidirectional
                or not gru_lookup_available(self.W_x_l0.data.dtype)):
            return None
        return gru_forward_lookup, gru_backward_lookup

    def step(self, x, h, embedding=None):
        """One time step for decoding, in NumPy, without input checks or a cache:
        x an ndarray (B, input_size) of floats or (B,) integer ids (as for ``LSTM.step``),
        h (num_layers, B, H). Returns ``(h_top (B, H), h_new)``; unidirectional only."""
        H = self.hidden_size
        h_new = np.empty_like(h)
        out = None
        for layer in range(self.num_layers):
            gx = self._step_input_projection(layer, x, out, embedding)
            gx += getattr(self, parameter_name("b_x", layer)).data
            gh = h[layer] @ getattr(self, parameter_name("W_h", layer)).data
            gh += getattr(self, parameter_name("b_h", layer)).data
            rz = 1 / (1 + np.exp(-(gx[:, :2 * H] + gh[:, :2 * H])))
            r, z = rz[:, :H], rz[:, H:]
            n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
            out = h_new[layer] = n + z * (h[layer] - n)
        return out, h_new


class RNN(_SingleState):
    """A stack of vanilla-RNN layers, ``h_t = act(x_t W_x + h_{t-1} W_h + b)``, weights
    ``W_x_l{k}`` (D_k, H), ``W_h_l{k}`` (H, H), ``b_l{k}`` (H,).

    ``forward(x, h0=None, lengths=None, embedding=None) -> (hs, h_n)`` with h_n
    (num_layers * num_directions, B, H), x floats or integer ids as for ``LSTM`` (the
    RNN gathers the rows ids stand for and runs on them: its kernels have no lookup);
    ``backward(dhs, dh_n=None) -> (dx, dh0)``; ``bptt_truncate`` (None or k >= 0) is
    applied in every layer's backward (each direction along its own time order).

    nonlinearity : "tanh" or "relu";  bptt_truncate : None (full BPTT) or an int >= 0;
    the other arguments as for ``LSTM`` (hidden_size up to 2**31 - 1, no proj_size).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh",
                 dropout=0.0, bptt_truncate=None, dtype=np.float32, seed=None,
                 init="default", backend="auto", num_threads=None, bidirectional=False):
        nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        bptt_truncate = check_bptt_truncate(bptt_truncate)
        a = self._checked(input_size, hidden_size, num_layers, dropout, dtype, seed, init,
                          backend, num_threads, bidirectional)
        self.config = dict(input_size=a["input_size"], hidden_size=a["hidden_size"],
                           num_layers=a["num_layers"], nonlinearity=nonlinearity,
                           dropout=a["dropout"], bptt_truncate=bptt_truncate,
                           dtype=a["dtype"].name, init=a["init"],
                           bidirectional=a["bidirectional"])
        self.nonlinearity = nonlinearity
        self.bptt_truncate = bptt_truncate
        super().__init__(**a)

    @staticmethod
    def _cell_shapes(D, H, P=0):
        return [("W_x", (D, H)), ("W_h", (H, H)), ("b", (H,))]

    @classmethod
    def from_torch(cls, module):
        """An nn.RNN with the weights of a ``torch.nn.RNN`` (bidirectional too)."""
        return cls(nonlinearity=module.nonlinearity,
                   **cls._torch_args(module, "RNN"))._load_torch(module)

    def _forward_call(self, layer, direction, x, state0, lengths, num_threads):
        kwargs = {name: p.data for name, p in self.cell_parameters(layer, direction)}
        kwargs.update(x=x, h0=state0[0], nonlinearity=self.nonlinearity, lengths=lengths,
                      backend=self.backend, num_threads=num_threads)
        return rnn_forward, kwargs

    def _backward_call(self, cache, d_out, dfinal):
        return rnn_backward, (d_out, cache, dfinal[0], self.bptt_truncate)

    def _pair_functions(self):
        return rnn_forward_pair, rnn_backward_pair

    def step(self, x, h, embedding=None):
        """One time step for decoding, in NumPy, without input checks or a cache:
        x an ndarray (B, input_size) of floats or (B,) integer ids (as for ``LSTM.step``),
        h (num_layers, B, H). Returns ``(h_top (B, H), h_new)``; unidirectional only."""
        act = np.tanh if self.nonlinearity == "tanh" else (lambda z: np.maximum(z, 0))
        h_new = np.empty_like(h)
        out = None
        for layer in range(self.num_layers):
            z = self._step_preactivation(layer, x, out, h[layer], embedding)
            out = h_new[layer] = act(z)
        return out, h_new

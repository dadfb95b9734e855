"""Feed-forward layers: Linear, Embedding, Dropout. Each ``forward`` caches what its
``backward`` needs; ``backward`` returns the input gradient and accumulates into the
parameters' ``.grad``."""
import numpy as np

from .. import _dense_ops
from .._containers import InputModifiedError, changed_array, fingerprint
from .._validation import (check_flag, check_float_dtype, check_int, check_num_threads,
                           check_probability, check_table, make_rng)
from .module import Module
from .parameter import Parameter


class Linear(Module):
    """y = x W + b over any leading shape: x (..., in_features) -> y (..., out_features).

    W is stored (in_features, out_features), the transpose of torch's ``weight``;
    initialised uniform(+-1/sqrt(in_features)) as PyTorch. The products run on
    ``num_threads`` of fastlstm's threads (None: every usable core), with BLAS
    single-threaded inside each, like the recurrent kernels.

    in_features, out_features : int >= 1;  bias : bool;  dtype : float32 or float64
    seed : None, an int >= 0, or a NumPy Generator/SeedSequence/BitGenerator
    num_threads : None or an int >= 1
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None,
                 num_threads=None):
        in_features = check_int("in_features", in_features)
        out_features = check_int("out_features", out_features)
        bias = check_flag("bias", bias)
        dtype = check_float_dtype("dtype", dtype)
        num_threads = check_num_threads(num_threads)
        rng = make_rng(seed)
        k = 1 / np.sqrt(in_features)
        self.config = dict(in_features=in_features, out_features=out_features, bias=bias,
                           dtype=dtype.name)
        self.W = Parameter(rng.uniform(-k, k, (in_features, out_features)).astype(dtype))
        self.b = Parameter(rng.uniform(-k, k, out_features).astype(dtype)) if bias else None
        self.num_threads = num_threads
        self._saved = None

    @staticmethod
    def parameter_shapes(in_features, out_features, bias=True, **config):
        """(name, shape) of each parameter the constructor arguments give."""
        yield "W", (in_features, out_features)
        if bias:
            yield "b", (out_features,)

    def forward(self, x):
        """x (..., in_features) -> y (..., out_features), of W's dtype."""
        x = np.asarray(x)
        if x.shape[-1:] != self.W.data.shape[:1] or x.dtype != self.W.data.dtype:
            raise ValueError(f"Linear expects (..., {self.W.data.shape[0]}) "
                             f"{self.W.data.dtype} input, got {x.shape} {x.dtype}")
        flat_x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        W = self.W.data
        # The backward reads x and W as they are then (both referenced, not copied).
        self._saved = (flat_x, W)
        self._saved_fingerprint = fingerprint(self._saved)
        y = _dense_ops.matmul(flat_x, W, num_threads=self.num_threads)
        if self.b is not None:
            y += self.b.data
        return y.reshape(x.shape[:-1] + y.shape[-1:])

    def backward(self, dy):
        """dy (..., out_features) -> dx (..., in_features); W.grad (+)= x^T dy. Raises
        InputModifiedError if x or W changed in place since ``forward``."""
        if self._saved is None:
            raise RuntimeError("Linear.backward called before forward")
        changed = changed_array(self._saved, self._saved_fingerprint)
        if changed is not None:
            raise InputModifiedError(("the input x", "parameter W")[changed],
                                     "Linear.forward", "Linear.backward")
        flat_x, W = self._saved
        flat_dy = np.ascontiguousarray(dy.reshape(-1, dy.shape[-1]), dtype=flat_x.dtype)
        _dense_ops.matmul(flat_x, flat_dy, trans_a=True, out=self.W.grad, accumulate=True,
                          num_threads=self.num_threads)
        if self.b is not None:
            self.b.grad += flat_dy.sum(axis=0)
        dx = _dense_ops.matmul(flat_dy, W, trans_b=True, num_threads=self.num_threads)
        return dx.reshape(dy.shape[:-1] + dx.shape[-1:])


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table for integer ids of any shape.

    ``weight`` (e.g. GloVe vectors) initialises the table; ``freeze=True`` keeps it out of
    ``parameters()``. The row at ``padding_idx`` starts at zero and gets no gradient.

    num_embeddings, embedding_dim : int >= 1
    padding_idx : None or an int in [-num_embeddings, num_embeddings) (negative counts
        from the end)
    weight : None (standard normal) or a float32/float64 (num_embeddings, embedding_dim)
        array, copied; its dtype is the layer's, whatever ``dtype`` says
    freeze : bool;  dtype : float32 or float64
    seed : None, an int >= 0, or a NumPy Generator/SeedSequence/BitGenerator
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, weight=None,
                 freeze=False, dtype=np.float32, seed=None):
        num_embeddings = check_int("num_embeddings", num_embeddings)
        embedding_dim = check_int("embedding_dim", embedding_dim)
        padding_idx = check_int("padding_idx", padding_idx, -num_embeddings,
                                num_embeddings - 1, " (a row of the table)",
                                none_allowed=True)
        freeze = check_flag("freeze", freeze)
        dtype = check_float_dtype("dtype", dtype)
        if weight is not None:
            weight = check_table("weight", weight, (num_embeddings, embedding_dim))
        rng = make_rng(seed)
        if weight is None:
            weight = rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype)
            if padding_idx is not None:
                weight[padding_idx] = 0
        weight = np.array(weight, copy=True)
        self.config = dict(num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                           padding_idx=padding_idx, freeze=freeze,
                           dtype=weight.dtype.name)
        self.padding_idx = padding_idx
        self.weight = Parameter(weight, requires_grad=not freeze)
        self._ids = None

    @staticmethod
    def parameter_shapes(num_embeddings, embedding_dim, **config):
        """(name, shape) of each parameter the constructor arguments give."""
        yield "weight", (num_embeddings, embedding_dim)

    def forward(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        n = self.weight.data.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"Embedding ids must lie in [0, {n}), got {ids.min()}..{ids.max()}")
        # A copy for the backward (a fraction of the output's size), so the caller may
        # reuse the ids' buffer before it runs.
        self._ids = ids.copy()
        return self.weight.data[ids]

    def backward(self, dout):
        """Scatter-add into the table's gradient; ids have no gradient (returns None)."""
        if self.weight.requires_grad:
            _scatter_add_rows(self.weight.grad, self._ids.reshape(-1),
                              dout.reshape(-1, dout.shape[-1]))
            if self.padding_idx is not None:
                self.weight.grad[self.padding_idx] = 0
        return None


def _scatter_add_rows(table, ids, rows):
    """table[ids[i]] += rows[i] for every i, repeated ids summed (np.add.at, but one
    gather and one segment sum instead of a slow per-row loop)."""
    if ids.size == 0:
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    table[sorted_ids[starts]] += np.add.reduceat(rows[order], starts, axis=0)


class Dropout(Module):
    """Zero each entry with probability p in training mode, scaling the rest by 1/(1-p);
    the identity in eval mode.

    p : a number in [0, 1)
    seed : None, an int >= 0, or a NumPy Generator/SeedSequence/BitGenerator
    """

    def __init__(self, p=0.5, seed=None):
        p = check_probability("p (the dropout probability)", p)
        self._rng = make_rng(seed)
        self.config = dict(p=p)
        self.p = p
        self._mask = None

    @staticmethod
    def parameter_shapes(**config):
        """Dropout has no parameters."""
        return iter(())

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask = None
            return x
        self._mask = (self._rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * self._mask

    def backward(self, dout):
        return dout if self._mask is None else dout * self._mask

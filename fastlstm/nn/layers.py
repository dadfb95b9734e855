"""Feed-forward layers: Linear, Embedding, Dropout. Each ``forward`` caches what its
``backward`` needs; ``backward`` returns the input gradient and accumulates into the
parameters' ``.grad``."""
import numpy as np

from .module import Module
from .parameter import Parameter


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class Linear(Module):
    """y = x W + b over any leading shape: x (..., in_features) -> y (..., out_features).

    W is stored (in_features, out_features), the transpose of torch's ``weight``;
    initialised uniform(+-1/sqrt(in_features)) as PyTorch.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None):
        rng = _rng(seed)
        k = 1 / np.sqrt(in_features)
        self.config = dict(in_features=in_features, out_features=out_features, bias=bias,
                           dtype=np.dtype(dtype).name)
        self.W = Parameter(rng.uniform(-k, k, (in_features, out_features)).astype(dtype))
        self.b = Parameter(rng.uniform(-k, k, out_features).astype(dtype)) if bias else None
        self._x = None

    def forward(self, x):
        x = np.asarray(x)
        if x.shape[-1:] != self.W.data.shape[:1] or x.dtype != self.W.data.dtype:
            raise ValueError(f"Linear expects (..., {self.W.data.shape[0]}) "
                             f"{self.W.data.dtype} input, got {x.shape} {x.dtype}")
        self._x = x
        y = x @ self.W.data
        return y + self.b.data if self.b is not None else y

    def backward(self, dy):
        x = self._x
        flat_x = x.reshape(-1, x.shape[-1])
        flat_dy = dy.reshape(-1, dy.shape[-1])
        self.W.grad += flat_x.T @ flat_dy
        if self.b is not None:
            self.b.grad += flat_dy.sum(axis=0)
        return dy @ self.W.data.T


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table for integer ids of any shape.

    ``weight`` (e.g. GloVe vectors) initialises the table; ``freeze=True`` keeps it out of
    ``parameters()``. The row at ``padding_idx`` starts at zero and gets no gradient.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, weight=None,
                 freeze=False, dtype=np.float32, seed=None):
        if weight is None:
            weight = _rng(seed).standard_normal((num_embeddings, embedding_dim)).astype(dtype)
            if padding_idx is not None:
                weight[padding_idx] = 0
        weight = np.array(weight, copy=True)
        if weight.shape != (num_embeddings, embedding_dim):
            raise ValueError(f"weight must have shape ({num_embeddings}, {embedding_dim}), "
                             f"got {weight.shape}")
        self.config = dict(num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                           padding_idx=padding_idx, freeze=freeze,
                           dtype=weight.dtype.name)
        self.padding_idx = padding_idx
        self.weight = Parameter(weight, requires_grad=not freeze)
        self._ids = None

    def forward(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        n = self.weight.data.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"Embedding ids must lie in [0, {n}), got {ids.min()}..{ids.max()}")
        self._ids = ids
        return self.weight.data[ids]

    def backward(self, dout):
        """Scatter-add into the table's gradient; ids have no gradient (returns None)."""
        if self.weight.requires_grad:
            np.add.at(self.weight.grad, self._ids.reshape(-1),
                      dout.reshape(-1, dout.shape[-1]))
            if self.padding_idx is not None:
                self.weight.grad[self.padding_idx] = 0
        return None


class Dropout(Module):
    """Zero each entry with probability p in training mode, scaling the rest by 1/(1-p);
    the identity in eval mode."""

    def __init__(self, p=0.5, seed=None):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.config = dict(p=p)
        self.p = p
        self._rng = _rng(seed)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask = None
            return x
        self._mask = (self._rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * self._mask

    def backward(self, dout):
        return dout if self._mask is None else dout * self._mask

"""``Parameter``: an array and its gradient, what optimizers update."""
import numpy as np


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype).

    Layers accumulate into ``grad`` in their backward pass; optimizers read ``grad`` and
    update ``data`` in place; ``zero_grad()`` resets the gradient.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        data = np.asarray(data)
        if data.dtype.kind != "f":
            raise TypeError(f"Parameter data must be a float array, got dtype {data.dtype}")
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.requires_grad = bool(requires_grad)   # False: frozen, skipped by parameters()

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"

"""``Module``: parameters found by attribute, state dicts, train/eval mode."""
import numpy as np

from .parameter import Parameter


class Module:
    """Base class of the layers. Parameters and sub-modules are attributes; the order in
    which they were assigned is the order of ``named_parameters()``."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _children(self):
        for name, value in vars(self).items():
            if isinstance(value, (Parameter, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(
                    isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def named_parameters(self, prefix="", include_frozen=False):
        """(dotted name, Parameter) pairs; frozen parameters only when asked for."""
        for name, value in self._children():
            if isinstance(value, Parameter):
                if value.requires_grad or include_frozen:
                    yield prefix + name, value
            else:
                yield from value.named_parameters(prefix + name + ".", include_frozen)

    def parameters(self):
        """The trainable Parameters, for an optimizer."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for _, p in self.named_parameters(include_frozen=True):
            p.zero_grad()

    def train(self, mode=True):
        self.training = bool(mode)
        for _, value in self._children():
            if isinstance(value, Module):
                value.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """{dotted name: a copy of the data}, frozen parameters included."""
        return {name: p.data.copy()
                for name, p in self.named_parameters(include_frozen=True)}

    def load_state_dict(self, state_dict):
        """Copy arrays in by name; names, shapes and dtypes must all match (the error
        lists every difference)."""
        own = dict(self.named_parameters(include_frozen=True))
        problems = []
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing:
            problems.append(f"missing: {missing}")
        if unexpected:
            problems.append(f"unexpected: {unexpected}")
        for name in sorted(set(own) & set(state_dict)):
            value = np.asarray(state_dict[name])
            p = own[name]
            if value.shape != p.data.shape:
                problems.append(f"{name}: shape {value.shape}, expected {p.data.shape}")
            elif value.dtype != p.data.dtype:
                problems.append(f"{name}: dtype {value.dtype}, expected {p.data.dtype}")
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: "
                             + "; ".join(problems))
        for name, p in own.items():
            p.data[...] = state_dict[name]

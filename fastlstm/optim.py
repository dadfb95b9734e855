"""Optimizers over ``Parameter``s (PyTorch's update rules, step for step) and learning-rate
schedulers. Optimizers see Parameters only: ``.data`` is updated in place from ``.grad``.
"""
import math

import numpy as np

from . import _dense_ops

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "StepLR", "ReduceLROnPlateau"]


class Optimizer:
    """Shared bookkeeping: the parameter list, hyperparameters, per-parameter state."""

    def __init__(self, params, defaults):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(f"optimizers take Parameters (with .data and .grad), got "
                                f"{type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got the same Parameter more than once")
        if not defaults["lr"] >= 0:
            raise ValueError(f"lr must be >= 0, got {defaults['lr']}")
        self.defaults = dict(defaults)
        self.lr = defaults["lr"]
        self.state = [dict() for _ in self.params]
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        self.step_count += 1
        for p, state in zip(self.params, self.state):
            self._update(p, state)

    def _update(self, p, state):  # pragma: no cover - every optimizer overrides it
        raise NotImplementedError

    def state_dict(self):
        """Hyperparameters, the step count and the per-parameter state (arrays copied)."""
        return {"lr": self.lr, "defaults": dict(self.defaults), "step_count": self.step_count,
                "state": [{k: np.array(v, copy=True) for k, v in s.items()}
                          for s in self.state]}

    def load_state_dict(self, state_dict):
        state = state_dict["state"]
        if len(state) != len(self.params):
            raise ValueError(f"state_dict holds state for {len(state)} parameters, the "
                             f"optimizer has {len(self.params)}")
        for i, (s, p) in enumerate(zip(state, self.params)):
            for k, v in s.items():
                if np.shape(v) != p.data.shape:
                    raise ValueError(f"state {k!r} of parameter {i} has shape "
                                     f"{np.shape(v)}, the parameter {p.data.shape}")
        self.lr = state_dict["lr"]
        self.step_count = state_dict["step_count"]
        self.state = [{k: np.array(v, dtype=p.data.dtype, copy=True) for k, v in s.items()}
                      for s, p in zip(state, self.params)]


class SGD(Optimizer):
    """SGD with optional momentum (heavy-ball or Nesterov) and L2 weight decay."""

    state_keys = ("momentum_buffer",)   # kept only with momentum

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _update(self, p, state):
        d = self.defaults
        g = p.grad + d["weight_decay"] * p.data if d["weight_decay"] else p.grad
        if d["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                state["momentum_buffer"] *= d["momentum"]
                state["momentum_buffer"] += g
            buf = state["momentum_buffer"]
            g = g + d["momentum"] * buf if d["nesterov"] else buf
        p.data -= p.data.dtype.type(self.lr) * g


class Adagrad(Optimizer):
    """Adagrad: p -= lr * g / (sqrt(sum of g^2) + eps), as the char-LM tutorial trains."""

    state_keys = ("sum",)

    def __init__(self, params, lr=0.01, eps=1e-8, num_threads=None):
        super().__init__(params, dict(lr=lr, eps=eps))
        self.num_threads = num_threads   # for the fused update (None: every usable core)

    def _update(self, p, state):
        if "sum" not in state:
            state["sum"] = np.zeros_like(p.data)
        _dense_ops.adagrad(p.data, p.grad, state["sum"], self.lr, self.defaults["eps"],
                           self.num_threads)


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (as the IMDB tutorial, and as
    ``torch.optim.Adam``)."""

    decoupled = False
    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 num_threads=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.num_threads = num_threads   # for the fused update (None: every usable core)

    def _update(self, p, state):
        d = self.defaults
        b1, b2 = d["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        weight_decay = d["weight_decay"]
        if weight_decay and self.decoupled:
            p.data *= p.data.dtype.type(1 - self.lr * weight_decay)
            weight_decay = 0.0
        t = self.step_count
        _dense_ops.adam(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], b1, b2,
                        weight_decay, self.lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t),
                        d["eps"], self.num_threads)


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 num_threads=None):
        super().__init__(params, lr, betas, eps, weight_decay, num_threads)


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` calls of ``step()``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.optimizer = optimizer
        self.step_size = step_size
        self.gamma = gamma
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self):
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)
        return self.optimizer.lr


class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` (default 0.5: halving, as the vanilla-RNN
    tutorial does) when the metric has not improved for more than ``patience`` calls.

    Improvement means below ``best * (1 - threshold)`` (mode "min") or above
    ``best * (1 + threshold)`` (mode "max"), PyTorch's relative threshold; after a cut,
    ``cooldown`` calls pass before counting again; the rate never drops below ``min_lr``.
    """

    def __init__(self, optimizer, mode="min", factor=0.5, patience=10, threshold=1e-4,
                 cooldown=0, min_lr=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        self.optimizer = optimizer
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    def _better(self, value):
        if self.mode == "min":
            return value < self.best * (1 - self.threshold)
        return value > self.best * (1 + self.threshold)

    def step(self, metric):
        metric = float(metric)
        if self._better(metric):
            self.best = metric
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.cooldown_left = self.cooldown
            self.bad_epochs = 0
        return self.optimizer.lr

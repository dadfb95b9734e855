"""``gradcheck``: analytic gradients against central differences, in float64."""
from typing import Dict, NamedTuple

import numpy as np


class GradcheckReport(NamedTuple):
    """The worst relative error of every checked gradient, and whether all pass."""

    errors: Dict[str, float]
    tolerance: float

    @property
    def ok(self):
        return all(e <= self.tolerance for e in self.errors.values())

    def __str__(self):
        width = max([len(n) for n in self.errors] + [4])
        lines = [f"{'name':<{width}}  worst relative error"]
        for name, err in self.errors.items():
            flag = "ok" if err <= self.tolerance else f"FAILS (> {self.tolerance:g})"
            lines.append(f"{name:<{width}}  {err:.3e}  {flag}")
        return "\n".join(lines)


def _rel(analytic, numeric):
    scale = max(float(np.abs(numeric).max(initial=0.0)), 1e-12)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def gradcheck(fn, inputs_or_module, eps=1e-6, tolerance=1e-6):
    """Compare analytic gradients with central differences (all arrays float64).

    - ``inputs_or_module`` a Module: ``fn(module)`` runs forward and backward and returns
      the scalar loss; the analytic gradients are the parameters' ``.grad`` (zeroed
      before each call). Every parameter, frozen ones excepted, is checked entry by entry.
    - ``inputs_or_module`` a dict (or list) of arrays: ``fn(**arrays)`` (or ``fn(*arrays)``)
      returns ``(loss, grads)`` with ``grads`` keyed (or ordered) like the arrays (or,
      for a single array, its gradient array itself, as the losses return it).

    ``fn`` must be deterministic (dropout off or seeded). Returns a GradcheckReport;
    ``report.ok`` tells whether every worst relative error is within ``tolerance``.
    """
    from .nn.module import Module
    if isinstance(inputs_or_module, Module):
        module = inputs_or_module
        params = dict(module.named_parameters())

        def loss_and_grads():
            module.zero_grad()
            loss = float(fn(module))
            return loss, {name: p.grad.copy() for name, p in params.items()}
        arrays = {name: p.data for name, p in params.items()}
    else:
        is_dict = isinstance(inputs_or_module, dict)
        arrays = (dict(inputs_or_module) if is_dict
                  else {str(i): a for i, a in enumerate(inputs_or_module)})

        def loss_and_grads():
            loss, grads = fn(**arrays) if is_dict else fn(*arrays.values())
            if isinstance(grads, np.ndarray) and len(arrays) == 1:
                grads = {next(iter(arrays)): grads}   # one input: its gradient alone
            elif not is_dict:
                grads = {str(i): g for i, g in enumerate(grads)}
            return float(loss), {k: np.asarray(g, np.float64) for k, g in grads.items()}
    for name, a in arrays.items():
        if not (isinstance(a, np.ndarray) and a.dtype == np.float64):
            raise TypeError(f"gradcheck needs float64 arrays; {name!r} is "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
    _, analytic = loss_and_grads()
    errors = {}
    for name, a in arrays.items():
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            up = loss_and_grads()[0]
            a[idx] = old - eps
            down = loss_and_grads()[0]
            a[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        errors[name] = _rel(analytic[name], numeric)
    return GradcheckReport(errors, tolerance)

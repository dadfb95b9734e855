"""Layers and training pieces on top of the kernels (issue 6, in progress): so far
``Parameter``, ``functional`` (losses) and ``utils`` (gradient clipping)."""
from . import functional, utils
from .parameter import Parameter

__all__ = ["Parameter", "functional", "utils"]

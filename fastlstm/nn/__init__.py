"""Layers and training pieces on top of the kernels: ``Module``, ``Parameter``,
``LSTM``, ``GRU``, ``RNN``, ``Linear``, ``Embedding``, ``Dropout``, ``functional`` (losses) and
``utils`` (gradient clipping). Backward passes are explicit: ``module.backward(dout)``."""
from . import functional, utils
from .layers import Dropout, Embedding, Linear
from .module import Module
from .parameter import Parameter
from .recurrent import GRU, LSTM, RNN

__all__ = ["Module", "Parameter", "LSTM", "GRU", "RNN", "Linear", "Embedding", "Dropout",
           "functional", "utils"]

"""fastlstm: LSTMs and vanilla RNNs trained on the CPU from NumPy, fast.

The functional API (time-major, gate order i, f, g, o, see docs/design.md)::

    hs, (h_n, c_n), cache = fastlstm.lstm_forward(x, W_x, W_h, b)
    grads = fastlstm.lstm_backward(dhs, cache)

``fastlstm.reference`` holds the NumPy twin of every kernel. The cache references ``x``
and the weights: changing them before the backward pass raises ``InputModifiedError``
(a sample of each array is compared; ``set_debug_checks(True)`` compares all of it).
"""
__version__ = "0.1.0"

from . import _isa  # noqa: F401  (applies FASTLSTM_ISA, or the CPU's best, to every kernel)
from ._config import config, show_config
from ._containers import (InputModifiedError, LSTMCache, LSTMGrads, LSTMLookupCache,
                          LSTMLookupGrads, LSTMPCache, LSTMPGrads, RNNCache, RNNGrads,
                          set_debug_checks)
from .lstm import lstm_backward, lstm_backward_lookup, lstm_forward, lstm_forward_lookup
from .lstmp import lstmp_backward, lstmp_forward
from .rnn import rnn_backward, rnn_forward
from .gru import (GRUCache, GRUGrads, GRULookupCache, GRULookupGrads, gru_backward,
                  gru_backward_lookup, gru_forward, gru_forward_lookup)
from . import nn, optim
from .checkpoint import Checkpoint, CheckpointError, load, save
from .gradcheck import gradcheck

__all__ = ["lstm_forward", "lstm_backward", "lstm_forward_lookup", "lstm_backward_lookup",
           "lstmp_forward", "lstmp_backward", "LSTMPGrads", "LSTMPCache",
           "rnn_forward", "rnn_backward", "LSTMGrads", "LSTMCache", "LSTMLookupGrads",
           "LSTMLookupCache", "RNNGrads", "RNNCache", "nn", "optim", "gradcheck", "save", "load",
           "Checkpoint", "CheckpointError", "show_config", "config", "__version__",
           "InputModifiedError", "set_debug_checks",
           "gru_forward", "gru_backward", "GRUGrads", "GRUCache", "gru_forward_lookup",
           "gru_backward_lookup", "GRULookupGrads", "GRULookupCache"]

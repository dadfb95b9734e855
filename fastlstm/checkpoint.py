"""Checkpoints: one ``.npz`` of plain arrays plus a JSON config, never pickled.

``save(path, model, optimizer=None, **metadata)`` writes to a temporary file beside
``path`` and renames it, so an interrupted save never leaves a half-written checkpoint.
``load(path)`` rebuilds the model from its config (every built-in layer), restores its
weights and the optimizer, and raises ``CheckpointError`` (a ValueError) naming the file
if it is truncated or corrupt.
"""
import json
import os
import zipfile
from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from . import optim
from .nn import layers, recurrent

FORMAT_VERSION = 1
MODELS = {cls.__name__: cls for cls in (recurrent.LSTM, recurrent.RNN, layers.Linear,
                                        layers.Embedding, layers.Dropout)}
OPTIMIZERS = {cls.__name__: cls for cls in (optim.SGD, optim.Adagrad, optim.Adam,
                                            optim.AdamW)}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read back."""


class Checkpoint(NamedTuple):
    model: Any
    optimizer: Optional[Any]
    metadata: Dict[str, Any]


def register_model(cls):
    """Make ``load`` able to rebuild ``cls`` (it needs a ``config`` dict of its
    constructor arguments). Returns ``cls``, so it works as a class decorator."""
    MODELS[cls.__name__] = cls
    return cls


def save(path, model, optimizer=None, **metadata):
    """Write ``model`` (and ``optimizer``) to ``path`` atomically; metadata must be JSON."""
    name = type(model).__name__
    if name not in MODELS or not hasattr(model, "config"):
        raise TypeError(f"save() rebuilds built-in models only (or ones passed to "
                        f"register_model); got {name}")
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    config = {"format": FORMAT_VERSION, "model": {"class": name, "config": model.config},
              "metadata": metadata, "optimizer": None}
    if optimizer is not None:
        state = optimizer.state_dict()
        config["optimizer"] = {"class": type(optimizer).__name__,
                               "defaults": state["defaults"], "lr": state["lr"],
                               "step_count": state["step_count"],
                               "n_params": len(state["state"])}
        for i, s in enumerate(state["state"]):
            for k, v in s.items():
                arrays[f"optimizer/{i}/{k}"] = v
    arrays["config"] = np.array(json.dumps(config))
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load(path):
    """Read a checkpoint written by ``save``: ``Checkpoint(model, optimizer, metadata)``."""
    from . import models  # noqa: F401 - registers CharLM, WordLM, SentimentClassifier
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        config = json.loads(str(arrays.pop("config")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable fastlstm checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    if config.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {config.get('format')!r}, this "
                              f"fastlstm reads {FORMAT_VERSION}")
    try:
        cls = MODELS[config["model"]["class"]]
        model = cls(**config["model"]["config"])
        model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                               if k.startswith("model/")})
        optimizer = None
        if config["optimizer"] is not None:
            o = config["optimizer"]
            defaults = dict(o["defaults"])
            if "betas" in defaults:
                defaults["betas"] = tuple(defaults["betas"])
            optimizer = OPTIMIZERS[o["class"]](model.parameters(), **defaults)
            state = [{} for _ in range(o["n_params"])]
            for k, v in arrays.items():
                if k.startswith("optimizer/"):
                    _, i, key = k.split("/", 2)
                    state[int(i)][key] = v
            optimizer.load_state_dict({"lr": o["lr"], "step_count": o["step_count"],
                                       "state": state})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: inconsistent checkpoint ({exc})") from exc
    return Checkpoint(model, optimizer, config["metadata"])

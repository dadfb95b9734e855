"""The model classes ``fastlstm.load`` can rebuild, by class name.

A module defining models registers them here when it is imported (``register_model``).
This module imports nothing of fastlstm's, so the models and ``checkpoint`` both depend
on it and not on each other.
"""
import importlib

MODELS = {}

# Modules whose import registers models. ``model_classes`` imports them by name, so a
# checkpoint of a CharLM loads in a process that never imported fastlstm.models, while
# checkpoint.py, a layer below the models, holds no import of them.
PROVIDERS = ("fastlstm.models",)


def register_model(cls):
    """Make ``load`` able to rebuild ``cls`` (it needs a ``config`` dict of its
    constructor arguments). Returns ``cls``, so it works as a class decorator.

    A class with a ``parameter_shapes(**config)`` method yielding (name, shape) pairs has
    its checkpoints checked against the config before anything is allocated. A
    ``config_choices`` dict ({field: (allowed values)}, e.g. {"cell": ("lstm", "gru")})
    names the fields with a fixed set of values: ``load`` refuses others, and names the
    field when the arrays are those of another of its values."""
    MODELS[cls.__name__] = cls
    return cls


def model_classes():
    """{class name: class} of every registered model, the ``PROVIDERS`` imported first."""
    for name in PROVIDERS:
        importlib.import_module(name)
    return MODELS

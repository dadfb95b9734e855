"""Checkpoints: one ``.npz`` of plain arrays plus a JSON config, never pickled.

``save(path, model, optimizer=None, **metadata)`` writes to a temporary file beside
``path`` and renames it, so an interrupted save never leaves a half-written checkpoint.
``model`` is one module or a dict of them (``{"emb": emb, "lstm": lstm, "head": head}``);
every optimizer state is tied to its parameter by identity and stored under that
parameter's name, so ``load`` gives each state back to the same parameter.

``load(path)`` checks the file before it builds anything: the config's fields and types,
the array names and shapes the config implies (so a hand-edited hidden size of 10**7 is
an error, not a 160 GB allocation), finite numbers, the optimizer's state keys. Anything
wrong raises ``CheckpointError`` (a ValueError) naming the file and the field.

A file ``save`` writes, ``load`` reads back; what ``load`` would refuse (non-finite
weights, a model it cannot rebuild, an optimizer over parameters not in the model),
``save`` refuses first. Files of format 1 (fastlstm 0.1: one module, the optimizer over
all of its parameters in order) still load.
"""
import inspect
import json
import math
import os
import zipfile
from collections.abc import Mapping
from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from . import optim
from ._registry import MODELS, model_classes, register_model
from .nn import layers, recurrent

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
for _cls in (recurrent.LSTM, recurrent.GRU, recurrent.RNN, layers.Linear,
             layers.Embedding, layers.Dropout):
    register_model(_cls)
del _cls
OPTIMIZERS = {cls.__name__: cls for cls in (optim.SGD, optim.Adagrad, optim.Adam,
                                            optim.AdamW)}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read back."""


class Checkpoint(NamedTuple):
    """What ``load`` returns. ``model`` is one module, or a dict of modules when a dict
    was saved; ``optimizer`` steps over the same parameters in the same order as the
    saved one (None when none was saved)."""
    model: Any
    optimizer: Optional[Any]
    metadata: Dict[str, Any]


# --- save -------------------------------------------------------------------------------

def _as_modules(model):
    """{key: module} with key None for a single module; checks what save can rebuild."""
    if isinstance(model, Mapping):
        if not model:
            raise ValueError("save() got an empty dict of modules")
        modules = {}
        for key, module in model.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ValueError(f"the dict's keys name the modules in the file: non-empty "
                                 f"strings without '/', got {key!r}")
            modules[key] = module
    else:
        modules = {None: model}
    for key, module in modules.items():
        name = type(module).__name__
        if MODELS.get(name) is not type(module) or not isinstance(
                getattr(module, "config", None), dict):
            where = "" if key is None else f" (model[{key!r}])"
            raise TypeError(f"save() rebuilds built-in models only (or ones passed to "
                            f"register_model, with a config dict); got {name}{where}")
    return modules


def _array_prefix(key):
    return "model/" if key is None else f"model/{key}/"


def _label(key, name):
    return name if key is None else f"{key}.{name}"


def _owners(modules):
    """{id(Parameter): (key, name)} over every module; a Parameter held by two of them
    cannot be restored as one, so it is refused."""
    owners = {}
    for key, module in modules.items():
        for name, p in module.named_parameters(include_frozen=True):
            if id(p) in owners:
                raise ValueError(f"parameter {_label(*owners[id(p)])} is also "
                                 f"{_label(key, name)}: save cannot restore a parameter "
                                 f"shared between modules")
            owners[id(p)] = (key, name)
    return owners


def _check_finite(name, array):
    array = np.asarray(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name} holds {bad} non-finite value{'s' * (bad > 1)} "
                         f"(NaN or inf); a checkpoint keeps finite weights only")


def save(path, model, optimizer=None, **metadata):
    """Write ``model`` (and ``optimizer``) to ``path`` atomically; returns ``path``.

    model: a module (built-in, or registered with ``register_model``) or a dict
        ``{name: module}`` of them; ``load`` gives back the same kind.
    optimizer: None or an optimizer whose every parameter belongs to ``model`` (checked
        by identity: a parameter of a module left out of ``model`` is an error naming it).
    metadata: JSON values (numbers, strings, lists, dicts), given back by ``load``.

    Raises TypeError/ValueError, and writes nothing, for what ``load`` could not read
    back: an unknown module class, a foreign or shared parameter, non-finite weights or
    optimizer state, metadata that is not JSON.
    """
    modules = _as_modules(model)
    owners = _owners(modules)
    arrays = {}
    entries = {}
    for key, module in modules.items():
        for name, value in module.state_dict().items():
            _check_finite(_label(key, name), value)
            arrays[_array_prefix(key) + name] = value
        entries[key] = {"class": type(module).__name__, "config": module.config}
    if None in entries:
        model_config = entries[None]
    else:
        model_config = {"modules": entries}
    config = {"format": FORMAT_VERSION, "model": model_config, "metadata": metadata,
              "optimizer": None}
    if optimizer is not None:
        config["optimizer"] = _optimizer_config(optimizer, owners, arrays)
    try:
        arrays["config"] = np.array(json.dumps(config, default=_json_scalar))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save(): the metadata must be JSON (numbers, strings, lists, "
                        f"dicts): {exc}") from None
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


def _json_scalar(value):
    """NumPy scalars in metadata (a loss, a step count) are stored as Python numbers."""
    if isinstance(value, np.generic) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _optimizer_config(optimizer, owners, arrays):
    cls = type(optimizer).__name__
    if OPTIMIZERS.get(cls) is not type(optimizer):
        raise TypeError(f"save() stores the built-in optimizers only, got {cls}")
    state = optimizer.state_dict()
    names = []
    for i, (p, s) in enumerate(zip(optimizer.params, state["state"])):
        if id(p) not in owners:
            raise ValueError(
                f"optimizer parameter {i} ({p!r}) belongs to no module passed to save(); "
                f"pass every module the optimizer updates, as a dict: "
                f"save(path, {{'emb': emb, 'lstm': lstm, 'head': head}}, optimizer)")
        key, name = owners[id(p)]
        names.append([key, name])
        for k, v in s.items():
            _check_finite(f"optimizer state {k!r} of {_label(key, name)}", v)
            arrays[f"optimizer/{i}/{k}"] = v
    return {"class": cls, "defaults": state["defaults"], "lr": state["lr"],
            "step_count": state["step_count"], "params": names}


# --- load -------------------------------------------------------------------------------

class _Reader:
    """Field access into the JSON config that names the field in every error."""

    def __init__(self, path):
        self.path = path

    def fail(self, field, message):
        raise CheckpointError(f"{self.path}: {field}: {message}")

    def get(self, obj, key, field, kinds, optional=False):
        where = f"{field}.{key}" if field else key
        if not isinstance(obj, dict):
            self.fail(field or "config", f"expected a JSON object, got {type(obj).__name__}")
        if key not in obj:
            if optional:
                return None
            self.fail(where, "missing")
        value = obj[key]
        if optional and value is None:
            return None
        if isinstance(value, bool) and bool not in kinds:
            self.fail(where, f"expected {_kind_names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            self.fail(where, f"expected {_kind_names(kinds)}, got "
                             f"{type(value).__name__} {value!r:.60}")
        return value


def _kind_names(kinds):
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object",
             list: "a list", bool: "true or false"}
    if float in kinds:
        kinds = tuple(k for k in kinds if k is not int)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load(path):
    """Read a checkpoint written by ``save``: ``Checkpoint(model, optimizer, metadata)``.

    Raises ``CheckpointError`` naming the file and the field for a file that is not a
    checkpoint, is truncated, or whose config does not match its arrays."""
    model_classes()
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        config = json.loads(str(arrays.pop("config")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable fastlstm checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    r = _Reader(path)
    version = r.get(config, "format", "", (int,))
    if version not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this fastlstm reads "
                              f"{', '.join(map(str, READABLE_FORMATS))}")
    metadata = r.get(config, "metadata", "", (dict,))
    for name, value in arrays.items():
        if value.dtype.kind not in "fiub":
            r.fail(name, f"an array of dtype {value.dtype}; checkpoints hold numbers only")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            r.fail(name, "holds non-finite values (NaN or inf)")
    model_cfg = r.get(config, "model", "", (dict,))
    if "modules" in model_cfg:
        entries = r.get(model_cfg, "modules", "model", (dict,))
        if not entries:
            r.fail("model.modules", "empty")
        entries = {key: entry for key, entry in entries.items()}
        field_of = {key: f"model.modules.{key}" for key in entries}
    else:
        entries = {None: model_cfg}
        field_of = {None: "model"}
    # Every module's config and array shapes are checked before any module is built.
    classes = {}
    for key, entry in entries.items():
        field = field_of[key]
        name = r.get(entry, "class", field, (str,))
        if name not in MODELS:
            r.fail(f"{field}.class", f"unknown model class {name!r} (known: "
                                     f"{', '.join(sorted(MODELS))}; register_model adds one)")
        cls = MODELS[name]
        cfg = r.get(entry, "config", field, (dict,))
        _check_arguments(r, cls, cfg, f"{field}.config")
        prefix = _array_prefix(key)
        own = {k[len(prefix):]: v for k, v in arrays.items()
               if k.startswith(prefix) and (key is not None or k.count("/") == 1)}
        _check_shapes(r, cls, cfg, f"{field}.config", prefix, own)
        classes[key] = (cls, cfg, own)
    modules = {}
    for key, (cls, cfg, own) in classes.items():
        field = field_of[key]
        try:
            module = cls(**cfg)
        except (TypeError, ValueError, OverflowError, MemoryError) as exc:
            r.fail(f"{field}.config", f"{cls.__name__}({_short(cfg)}) fails: {exc}")
        try:
            module.load_state_dict(own)
        except ValueError as exc:
            r.fail(f"{field} arrays", str(exc))
        modules[key] = module
    optimizer = None
    opt_cfg = r.get(config, "optimizer", "", (dict,), optional=True)
    if opt_cfg is not None:
        optimizer = _load_optimizer(r, version, opt_cfg, modules, arrays)
    model = modules[None] if None in modules else modules
    return Checkpoint(model, optimizer, metadata)


def _short(cfg):
    return ", ".join(f"{k}={v!r}" for k, v in cfg.items())


def _check_arguments(r, cls, cfg, field):
    """Config keys must be constructor arguments, values JSON scalars."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):     # a signature Python cannot read: trust the class
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for k, v in cfg.items():
        if k not in params and not takes_kwargs:
            r.fail(f"{field}.{k}", f"not an argument of {cls.__name__}")
        if not (v is None or isinstance(v, (bool, int, float, str))):
            r.fail(f"{field}.{k}", f"expected a number, string, boolean or null, got "
                                   f"{type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            r.fail(f"{field}.{k}", f"not finite: {v}")


class _TooManyArrays(Exception):
    pass


def _expected_shapes(cls, cfg, limit):
    """{name: shape} the config gives; stops past ``limit`` arrays, so a hand-edited
    num_layers of 10**9 is not enumerated."""
    shapes = {}
    for name, shape in cls.parameter_shapes(**cfg):
        if len(shapes) == limit:
            raise _TooManyArrays
        shapes[name] = tuple(int(n) for n in shape)
    return shapes


def _check_shape_arguments(r, cls, cfg, field):
    """The arguments ``parameter_shapes`` reads are sizes (integers >= 0), or of the
    type of its default (a flag, a cell name; None where a size may be absent)."""
    for name, param in inspect.signature(cls.parameter_shapes).parameters.items():
        if param.kind is param.VAR_KEYWORD or name not in cfg:
            continue
        value, default = cfg[name], param.default
        if value is None:       # an absent size (one-hot inputs); parameter_shapes decides
            continue
        if isinstance(default, (bool, str)):
            if not isinstance(value, type(default)):
                r.fail(f"{field}.{name}", f"expected {_kind_names((type(default),))}, got "
                                          f"{value!r:.60}")
        elif isinstance(value, bool) or not isinstance(value, int):
            r.fail(f"{field}.{name}", f"expected an integer, got {value!r:.60}")
        elif value < 0:
            r.fail(f"{field}.{name}", f"expected an integer >= 0, got {value}")
    for name, choices in getattr(cls, "config_choices", {}).items():
        # type as well as value: 1 == True, but a cell is not a flag
        if name in cfg and not any(type(cfg[name]) is type(c) and cfg[name] == c
                                   for c in choices):
            r.fail(f"{field}.{name}", f"expected one of {', '.join(map(repr, choices))}, "
                                      f"got {cfg[name]!r:.60}")


def _fitting_choice(cls, cfg, own, limit):
    """(field, its value, another value) of a ``config_choices`` field whose other value
    gives exactly the arrays ``own`` holds (a hand-edited cell, say), or None."""
    defaults = inspect.signature(cls.parameter_shapes).parameters
    for name, choices in getattr(cls, "config_choices", {}).items():
        current = cfg.get(name, defaults[name].default if name in defaults else None)
        for value in choices:
            if value == current and type(value) is type(current):
                continue
            try:
                other = _expected_shapes(cls, {**cfg, name: value}, limit)
            except (_TooManyArrays, TypeError, ValueError):
                continue
            if other == {k: v.shape for k, v in own.items()}:
                return name, current, value
    return None


def _check_shapes(r, cls, cfg, field, prefix, own):
    """Compare the arrays with what the config implies, naming the config fields that
    decide a mismatching array (found by changing each integer field by one)."""
    dtype = cfg.get("dtype")
    if dtype is not None:
        if dtype not in ("float32", "float64"):
            r.fail(f"{field}.dtype", f"expected 'float32' or 'float64', got {dtype!r}")
        for name, value in own.items():
            if value.dtype != np.dtype(dtype):
                r.fail(f"{prefix}{name}", f"dtype {value.dtype}, the config's dtype is "
                                          f"{dtype}")
    if not hasattr(cls, "parameter_shapes"):
        return
    _check_shape_arguments(r, cls, cfg, field)
    ints = [k for k, v in cfg.items() if isinstance(v, int) and not isinstance(v, bool)]
    limit = len(own) + 1

    def deciding(changed):
        # A field decides if setting it to 1 or to one more changes the outcome.
        found = []
        for k in ints:
            for value in (1, cfg[k] + 1):
                try:
                    other = _expected_shapes(cls, {**cfg, k: value}, limit)
                except _TooManyArrays:
                    other = None
                except (TypeError, ValueError):
                    continue
                if changed(other):
                    found.append(f"{k}={cfg[k]}")
                    break
        return " and ".join(found) or "the config"

    def refuse_another_choice():
        # The arrays are another cell's (or direction count's): name that field, not
        # the sizes that the cell also happens to scale.
        fit = _fitting_choice(cls, cfg, own, limit)
        if fit is not None:
            name, current, value = fit
            r.fail(f"{field}.{name}", f"{current!r}, but the file holds the arrays of "
                                      f"{name}={value!r}")

    try:
        expected = _expected_shapes(cls, cfg, limit)
    except _TooManyArrays:
        refuse_another_choice()
        why = deciding(lambda other: other is not None)
        r.fail(field, f"{why} give{'s' * (' and ' not in why)} more than {len(own)} arrays, "
                      f"the number the file holds")
    except (TypeError, ValueError) as exc:
        r.fail(field, f"{cls.__name__}: {exc}")
    if expected != {k: v.shape for k, v in own.items()}:
        refuse_another_choice()
    missing = sorted(set(expected) - set(own))
    unexpected = sorted(set(own) - set(expected))
    if missing or unexpected:
        why = deciding(lambda other: other is not None and set(other) != set(expected))
        r.fail(field, f"{why} expect{'s' * (' and ' not in why)} arrays "
                      f"{sorted(expected)}; the file lacks {missing} and has extra "
                      f"{unexpected}")
    for name, shape in expected.items():
        if own[name].shape != shape:
            held = own[name].shape
            wrong = [a for a in range(len(shape)) if a >= len(held) or shape[a] != held[a]]

            def moves_a_wrong_axis(other):
                o = None if other is None else other.get(name)
                return o is not None and (len(o) != len(shape)
                                          or any(o[a] != shape[a] for a in wrong))
            why = deciding(moves_a_wrong_axis)
            r.fail(field, f"{why} give{'s' * (' and ' not in why)} {prefix}{name} the "
                          f"shape {shape}; the file holds {own[name].shape}")


def _load_optimizer(r, version, o, modules, arrays):
    name = r.get(o, "class", "optimizer", (str,))
    if name not in OPTIMIZERS:
        r.fail("optimizer.class", f"unknown optimizer {name!r} (known: "
                                  f"{', '.join(sorted(OPTIMIZERS))})")
    cls = OPTIMIZERS[name]
    defaults = dict(r.get(o, "defaults", "optimizer", (dict,)))
    accepted = inspect.signature(cls).parameters
    for k, v in defaults.items():
        if k not in accepted or k == "params":
            r.fail(f"optimizer.defaults.{k}", f"not an argument of {name}")
        if isinstance(v, float) and not math.isfinite(v):
            r.fail(f"optimizer.defaults.{k}", f"not finite: {v}")
    if "betas" in defaults:
        betas = defaults["betas"]
        if not (isinstance(betas, list) and len(betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                        for b in betas)):
            r.fail("optimizer.defaults.betas", f"expected two numbers, got {betas!r}")
        defaults["betas"] = tuple(betas)
    lr = r.get(o, "lr", "optimizer", (int, float))
    if not (math.isfinite(lr) and lr >= 0):
        r.fail("optimizer.lr", f"expected a finite number >= 0, got {lr!r}")
    step_count = r.get(o, "step_count", "optimizer", (int,))
    if step_count < 0:
        r.fail("optimizer.step_count", f"expected an integer >= 0, got {step_count}")
    named = {}
    for key, module in modules.items():
        for pname, p in module.named_parameters(include_frozen=True):
            named[(key, pname)] = p
    if version == 1:
        # Format 1: the optimizer ran over the single module's trainable parameters.
        n = r.get(o, "n_params", "optimizer", (int,))
        params = modules[None].parameters()
        if n != len(params):
            r.fail("optimizer.n_params", f"{n}, the model has {len(params)} trainable "
                                         f"parameters")
    else:
        entries = r.get(o, "params", "optimizer", (list,))
        if not entries:
            r.fail("optimizer.params", "empty")
        params = []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 2
                    and (entry[0] is None or isinstance(entry[0], str))
                    and isinstance(entry[1], str)):
                r.fail(f"optimizer.params[{i}]", f"expected [module, parameter name], got "
                                                 f"{entry!r}")
            key, pname = entry
            if (key, pname) not in named:
                r.fail(f"optimizer.params[{i}]", f"no parameter {_label(key, pname)} in "
                                                 f"the model")
            params.append(named[(key, pname)])
        if len({id(p) for p in params}) != len(params):
            r.fail("optimizer.params", "a parameter listed twice")
    state = [{} for _ in params]
    allowed = set(getattr(cls, "state_keys", ()))
    for k, v in arrays.items():
        if not k.startswith("optimizer/"):
            continue
        parts = k.split("/")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
            r.fail(k, f"not a state of one of the optimizer's {len(params)} parameters")
        if allowed and parts[2] not in allowed:
            r.fail(k, f"{name} keeps no state {parts[2]!r} (it keeps "
                      f"{', '.join(sorted(allowed))})")
        i = int(parts[1])
        if v.shape != params[i].data.shape:
            r.fail(k, f"shape {v.shape}, its parameter's is {params[i].data.shape}")
        state[i][parts[2]] = v
    for i, s in enumerate(state):
        if s and allowed and set(s) != allowed:
            r.fail(f"optimizer/{i}", f"{name} state {sorted(s)}; it needs all of "
                                     f"{sorted(allowed)} or none")
    try:
        optimizer = cls(params, **defaults)
        optimizer.load_state_dict({"lr": lr, "step_count": step_count, "state": state})
    except (TypeError, ValueError) as exc:
        r.fail("optimizer", f"{name} cannot be rebuilt: {exc}")
    return optimizer

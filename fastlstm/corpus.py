"""The built-in corpus: text taken at run time from the running Python's own standard
library (module and function docstrings), so the demo and the command line need no
download. About 70,000 characters on CPython 3.11; nothing is shipped with fastlstm."""

_MODULES = ("json", "textwrap", "collections", "functools", "itertools", "argparse",
            "string", "pathlib", "random", "statistics")


def stdlib_text():
    """Docstrings of a few standard-library modules and their public functions."""
    import importlib
    parts = []
    for name in _MODULES:
        mod = importlib.import_module(name)
        parts.append(mod.__doc__ or "")
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if not attr.startswith("_") and callable(obj) and obj.__doc__:
                parts.append(obj.__doc__)
    return "\n".join(parts)

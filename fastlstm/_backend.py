"""Which implementation runs: the compiled kernels, or the NumPy reference."""
import importlib.machinery
import os
import warnings


def _explain(exc):
    """Why the extensions did not load, in words a user can act on. A missing .so
    surfaces as "cannot import name '_lstm' from partially initialized module" (Python's
    circular-import guess), so look for the files first."""
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [f"fastlstm.{name}" for name in ("_lstm", "_rnn") if not any(
        os.path.exists(os.path.join(here, name + suffix))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES)]
    if missing:
        return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not built "
                f"for this Python (no such extension file in {here}: {exc}); install a "
                f"wheel, or build from source with 'pip install .' (or 'python setup.py "
                f"build_ext --inplace' in a checkout)")
    return f"fastlstm._lstm / fastlstm._rnn failed to load: {exc}"


try:
    from . import _runtime as runtime
    from . import _lstm as lstm_kernels
    from . import _rnn as rnn_kernels
    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only in broken installs
    runtime = lstm_kernels = rnn_kernels = None
    IMPORT_ERROR = ImportError(_explain(exc))
    IMPORT_ERROR.__cause__ = exc

_warned = False


def compiled_available():
    return lstm_kernels is not None


def use_compiled(backend):
    """True to run the compiled kernels for ``backend`` (already validated).

    ``"cython"`` without the extension is an error; ``"auto"`` warns once and falls
    back to the reference, so a broken build is never silently slow.
    """
    global _warned
    if backend == "numpy":
        return False
    if lstm_kernels is not None and rnn_kernels is not None:
        return True
    if backend == "cython":
        raise ImportError(f"backend='cython' needs the compiled kernels: {IMPORT_ERROR}") \
            from IMPORT_ERROR.__cause__
    if not _warned:
        warnings.warn(f"fastlstm's compiled kernels are unavailable ({IMPORT_ERROR}); "
                      f"falling back to the slow NumPy reference", RuntimeWarning,
                      stacklevel=3)
        _warned = True
    return False


def use_compiled_for(cache):
    """True to run the backward pass of ``cache`` on the compiled kernels. It runs on the
    backend that made the cache: the reference's cache never needs the kernels, and for
    any other their absence is an ImportError (never a silent fallback)."""
    if cache.backend == "numpy":
        return False
    return use_compiled("cython")

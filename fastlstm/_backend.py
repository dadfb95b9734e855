"""Which implementation runs: the compiled kernels, or the NumPy reference."""
import warnings

try:
    from . import _lstm as lstm_kernels
    from . import _rnn as rnn_kernels
    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only in broken installs
    lstm_kernels = rnn_kernels = None
    IMPORT_ERROR = exc

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
        raise ImportError(f"backend='cython' needs the compiled extensions fastlstm._lstm "
                          f"and fastlstm._rnn, "
                          f"which failed to import: {IMPORT_ERROR}. Reinstall fastlstm "
                          f"from a wheel or build it with a C compiler.")
    if not _warned:
        warnings.warn(f"fastlstm's compiled kernels are unavailable ({IMPORT_ERROR}); "
                      f"falling back to the slow NumPy reference", RuntimeWarning,
                      stacklevel=3)
        _warned = True
    return False

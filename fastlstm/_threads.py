"""Thread counts: what ``num_threads=None`` means and keeping BLAS from oversubscribing.

The compiled kernels split work between their own OpenMP threads and call BLAS from
each of them, so the BLAS thread pool must run single-threaded meanwhile. The pool is
found once (threadpoolctl) and switched per call, which costs a few microseconds.
"""
import os
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_blas_controllers = None


def usable_cores():
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_num_threads(num_threads):
    """``None`` -> all usable cores; an int is taken as given (validated elsewhere)."""
    return usable_cores() if num_threads is None else num_threads


def _blas_libraries():
    global _blas_controllers
    if _blas_controllers is None:
        with _lock:
            if _blas_controllers is None:
                from threadpoolctl import ThreadpoolController
                _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_controllers


def blas_info():
    """A list of dicts describing the BLAS libraries loaded in this process."""
    return [lib.info() for lib in _blas_libraries()]


@contextmanager
def blas_threads(n):
    """Run the body with every loaded BLAS limited to ``n`` threads, then restore."""
    libs = _blas_libraries()
    saved = [lib.num_threads for lib in libs]
    try:
        for lib, old in zip(libs, saved):
            if old != n:
                lib.set_num_threads(n)
        yield
    finally:
        for lib, old in zip(libs, saved):
            if old != n:
                lib.set_num_threads(old)

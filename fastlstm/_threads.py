"""Thread counts: what ``num_threads=None`` means and keeping BLAS from oversubscribing.

The compiled kernels split work between their own OpenMP threads and call BLAS from
each of them, so the BLAS thread pool must run single-threaded meanwhile. The pools are
found once (threadpoolctl) and switched around each call. For OpenBLAS the switch calls
its C functions directly: cheaper than threadpoolctl's path, and no interference with
threadpoolctl's bookkeeping of which Python thread controls the pool.
"""
import ctypes
import functools
import os
import threading

_lock = threading.Lock()
_pools = None


def usable_cores():
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_num_threads(num_threads):
    """``None`` -> all usable cores; an int is taken as given (validated elsewhere)."""
    return usable_cores() if num_threads is None else num_threads


class _BlasPool:
    """get()/set(n) for one BLAS library's thread pool."""

    def __init__(self, controller):
        self.controller = controller
        self.get = lambda: controller.num_threads
        self.set = controller.set_num_threads
        if controller.internal_api == "openblas" and controller.threading_layer != "openmp":
            for prefix in ("", "scipy_"):
                for suffix in ("", "64_", "_64"):
                    getter = getattr(controller.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
                    setter = getattr(controller.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
                    if getter is not None and setter is not None:
                        getter.restype = ctypes.c_int
                        setter.argtypes = [ctypes.c_int]
                        self.get, self.set = _fast_calls(getter, setter)
                        return


def _fast_calls(getter, setter):
    """get()/set(n) through fastlstm._runtime's C call helpers when it is built (a
    few times cheaper than ctypes), else the ctypes functions themselves."""
    try:
        from ._runtime import call_int_getter, call_int_setter
    except ImportError:
        return getter, setter
    get_address = ctypes.cast(getter, ctypes.c_void_p).value
    set_address = ctypes.cast(setter, ctypes.c_void_p).value
    return (functools.partial(call_int_getter, get_address),
            functools.partial(call_int_setter, set_address))


def _blas_pools():
    global _pools
    if _pools is None:
        with _lock:
            if _pools is None:
                from threadpoolctl import ThreadpoolController
                libs = ThreadpoolController().select(user_api="blas").lib_controllers
                _pools = [_BlasPool(lib) for lib in libs]
    return _pools


def blas_info():
    """A list of dicts describing the BLAS libraries loaded in this process."""
    return [pool.controller.info() for pool in _blas_pools()]


class _PoolState:
    """What every open ``blas_threads`` body shares (one per process)."""

    __slots__ = ("depth", "saved", "current")

    def __init__(self):
        self.depth = 0        # bodies under way, in all Python threads
        self.saved = None     # the counts before the first of them
        self.current = None   # the counts set since

    def limit(self, pools, n):
        """Set each pool not already at ``n`` to ``n`` (under ``_lock``)."""
        current = self.current
        for i, pool in enumerate(pools):
            if current[i] != n:
                pool.set(n)
                current[i] = n


class _Nesting(threading.local):
    """``.stack``: this thread's open bodies' counts, innermost last (each thread starts
    with its own empty one)."""

    def __init__(self):
        self.stack = []


_state = _PoolState()
_nesting = _Nesting()


class blas_threads:
    """``with blas_threads(n):`` runs the body with every loaded BLAS limited to ``n``
    threads, then restores the previous counts.

    The BLAS setting is process-wide, so overlapping bodies in several Python threads
    share one saved state: the first to enter saves it, the last to leave restores it
    (each restoring its own snapshot would leave the pool pinned at ``n`` when the
    bodies interleave). It wraps every kernel call, so it is kept cheap: a
    plain class rather than a generator context manager, and its shared state lives in
    an instance, since assigning class attributes would empty the type's attribute cache
    on every call.
    """

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        pools = _pools if _pools is not None else _blas_pools()
        n = self.n
        stack = _nesting.stack
        with _lock:
            state = _state
            if state.depth == 0:
                state.saved = [pool.get() for pool in pools]
                state.current = list(state.saved)
            state.depth += 1
            stack.append(n)
            state.limit(pools, n)
        return self

    def __exit__(self, *exc):
        pools = _pools
        stack = _nesting.stack
        with _lock:
            state = _state
            state.depth -= 1
            if stack:
                stack.pop()
            if state.depth == 0:
                for pool, old, now in zip(pools, state.saved, state.current):
                    if now != old:
                        pool.set(old)
            elif stack:
                # Leaving a body nested in another of this thread: back to the outer count.
                state.limit(pools, stack[-1])
        return False

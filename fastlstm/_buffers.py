"""Buffers the compiled kernels work in, shared by the LSTM and RNN wrappers."""
import itertools
import math

import numpy as np

# Backward runs its weight/input GEMMs over chunks of (step, sequence) rows: up to 256,
# enough for GEMM efficiency while a chunk of gate gradients of a mid-sized layer (256
# rows x 4H = 1024 floats: 1 MiB) still sits in L2 for those GEMMs (larger chunks ran
# slower); at least 64, so small problems are not cut into slivers; and otherwise an
# eighth of the sequence, so the gate-gradient buffer stays a small fraction of the cache.
BACKWARD_CHUNK_ROWS = 256
BACKWARD_CHUNK_MIN_ROWS = 64


_stagger = itertools.count()


def python_aligned_empty(shape, dtype):
    """np.empty starting on a 64-byte cache line, at a different line of the 4 KiB page
    for each buffer. NumPy's own allocations are only 16-byte aligned, so vector loads
    straddle lines; and large buffers all start at the same page offset, so the kernels'
    parallel streams (gates, states, gradients) would alias in the L1 by their low 12
    address bits."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize   # (np.prod's array set-up costs more)
    if nbytes < 1 << 16:   # small buffers live in cache anyway: keep the call cheap
        return np.empty(shape, dtype)
    stagger = 64 * (next(_stagger) * 7 % 64)
    raw = np.empty(nbytes + stagger + 64, np.uint8)
    start = -raw.ctypes.data % 64 + stagger
    return raw[start:start + nbytes].view(dtype).reshape(shape)


try:   # the same in C, several times cheaper (several buffers per kernel call)
    from ._runtime import aligned_empty
except ImportError:   # no compiled extensions
    aligned_empty = python_aligned_empty


def backward_chunk_steps(T, B):
    rows = min(BACKWARD_CHUNK_ROWS, max(BACKWARD_CHUNK_MIN_ROWS, T * B // 8))
    return min(T, max(1, -(-rows // B)))

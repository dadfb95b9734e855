"""The kernels' buffers: fastlstm._buffers.aligned_empty, in C and in Python."""
import sys

import numpy as np
import pytest

import fastlstm
from fastlstm import _buffers

SHAPES = [(), (0,), (3,), (0, 5), (25, 1, 400), (100, 400), (7, 1000, 13)]


IMPLS = {"python": _buffers.python_aligned_empty}
if fastlstm.config()["compiled"]:
    from fastlstm._runtime import aligned_empty as compiled_aligned_empty
    IMPLS["compiled"] = compiled_aligned_empty


def test_the_compiled_version_is_used_when_built():
    if "compiled" not in IMPLS:
        pytest.skip("compiled kernels not built")
    assert _buffers.aligned_empty is IMPLS["compiled"]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.intc])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shape_dtype_layout(impl, dtype, shape):
    a = IMPLS[impl](shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    a[...] = 3
    assert np.all(a == 3)
    if a.nbytes >= 1 << 16:
        assert a.ctypes.data % 64 == 0
        assert a.base is not None


@pytest.mark.parametrize("impl", list(IMPLS))
def test_large_buffers_start_at_different_page_offsets(impl):
    offsets = {IMPLS[impl]((100, 400), np.float32).ctypes.data % 4096 for _ in range(16)}
    assert len(offsets) > 4


@pytest.mark.parametrize("impl", list(IMPLS))
def test_the_buffer_lives_exactly_as_long_as_the_array(impl):
    a = IMPLS[impl]((200, 400), np.float32)
    base = a.base
    while getattr(base, "base", None) is not None:
        base = base.base
    assert sys.getrefcount(base) >= 2
    del a
    assert sys.getrefcount(base) == 2   # only `base` (and getrefcount's argument) left


def test_compiled_rejects_bad_shapes():
    if "compiled" not in IMPLS:
        pytest.skip("compiled kernels not built")
    with pytest.raises(ValueError, match="negative"):
        IMPLS["compiled"]((3, -1), np.float32)
    with pytest.raises(ValueError, match="32 dimensions"):
        IMPLS["compiled"]((1,) * 33, np.float32)

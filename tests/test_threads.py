"""blas_threads: the BLAS thread count inside a body, after it, and nested."""
import pytest

from fastlstm._threads import _blas_pools, blas_threads

pools = _blas_pools()
pytestmark = pytest.mark.skipif(not pools, reason="no BLAS whose threads can be set")


def counts():
    return [p.get() for p in pools]


def test_nested_bodies_restore_the_outer_count():
    before = counts()
    with blas_threads(2):
        assert counts() == [2] * len(pools)
        with blas_threads(1):      # e.g. a kernel call inside a training loop's body
            assert counts() == [1] * len(pools)
        assert counts() == [2] * len(pools)
        with blas_threads(1):
            with blas_threads(1):
                pass
            assert counts() == [1] * len(pools)
        assert counts() == [2] * len(pools)
    assert counts() == before

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The state every compiled kernel shares with the rest of the process: the instruction-set
level, the kernels' buffers, what OpenMP offers, and the calls that switch a BLAS thread
pool.

The kernel extensions (_lstm, _rnn, _dense) are separate shared objects, so a static in
a C header is one copy per extension; the level lives here once and each of them reads
it through a pointer (csrc/fastlstm_isa.h). The Python-level policy over this state is
in fastlstm._isa (which level), fastlstm._threads (how many BLAS threads),
fastlstm._buffers and fastlstm._schedule (how a call is shared out).
"""
cimport numpy as cnp
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
import numpy as np

cnp.import_array()

cdef extern from "fastlstm_isa.h" nogil:
    int fl_isa_best()

cdef extern from "fastlstm_kernels.h" nogil:
    int fl_openmp_enabled()
    int fl_max_threads()


# --- the instruction-set level ---------------------------------------------------------

# The CPU and the build do not change while the process runs: asked once.
cdef int _best_level = fl_isa_best()
cdef int _isa_level = _best_level
cdef list _readers = []


# The LSTM's and the GRU's backward pack W_h^T for their step products (the packed GEMM)
# from this many (step, row) products per thread; below, the NT kernel reads W_h in place.
cdef int _backward_pack_min_step_rows = 512


cdef bint backward_pack_pays(int T, int rows_per_thread) noexcept nogil:
    return rows_per_thread > 1 and <long>T * rows_per_thread >= _backward_pack_min_step_rows


def set_backward_pack_min_step_rows(int step_rows):
    """Pack W_h^T for the LSTM's and GRU's backward step products from ``step_rows``
    (step, row) products per thread (default 512; with more than one row a step);
    returns the previous setting. For tests and benchmarks."""
    global _backward_pack_min_step_rows
    previous = _backward_pack_min_step_rows
    _backward_pack_min_step_rows = step_rows
    return previous


cdef const int *isa_level_for(str module) except NULL:
    _readers.append(module)
    return &_isa_level


def isa_level():
    """The level every kernel runs at: 0 generic, 1 AVX2+FMA, 2 AVX-512."""
    return _isa_level


def best_isa_level():
    """The best level this CPU runs and this build has kernels for."""
    return _best_level


def set_isa_level(int level):
    """Run every kernel at ``level``, or at the CPU's best when that is lower; returns the
    level now in use. Only while no kernel runs (fastlstm._isa.set_isa)."""
    global _isa_level
    _isa_level = max(0, min(level, _best_level))
    return _isa_level


def isa_readers():
    """The extension modules whose kernels read this level, in the order they loaded."""
    return tuple(_readers)


# --- OpenMP ------------------------------------------------------------------------------

OPENMP_ENABLED = bool(fl_openmp_enabled())


def openmp_max_threads():
    """What ``omp_get_max_threads()`` says (1 without OpenMP)."""
    return fl_max_threads()


# --- BLAS thread-pool switches -----------------------------------------------------------

ctypedef int (*_int_getter)() noexcept nogil
ctypedef void (*_int_setter)(int) noexcept nogil


def call_int_getter(size_t address):
    """Call the C function ``int f(void)`` at ``address`` (a BLAS's get_num_threads):
    a few times cheaper than through ctypes, and it runs around every kernel call."""
    return (<_int_getter>address)()


def call_int_setter(size_t address, int value):
    """Call the C function ``void f(int)`` at ``address`` (a BLAS's set_num_threads)."""
    (<_int_setter>address)(value)


# --- the kernels' buffers ----------------------------------------------------------------

cdef Py_ssize_t _stagger_count = 0

cdef extern from "numpy/arrayobject.h":
    # (NumPy's .pxd leaves these out.) Both steal a reference to descr.
    # (descr is a PyArray_Descr *, declared void * so C converts it without a cast)
    object _array_empty "PyArray_Empty" (int nd, cnp.npy_intp *dims, void *descr,
                                         int fortran)
    object _array_from_descr "PyArray_NewFromDescr" (
        PyTypeObject *subtype, void *descr, int nd, cnp.npy_intp *dims,
        cnp.npy_intp *strides, void *data, int flags, PyObject *obj)
    PyTypeObject PyArray_Type


def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` starting on a 64-byte line, at a different line of the
    4 KiB page for each buffer of 64 KiB or more: fastlstm._buffers.python_aligned_empty
    in C, several times cheaper, since every kernel call allocates a few buffers."""
    global _stagger_count
    cdef cnp.dtype descr = np.dtype(dtype)
    cdef int nd = len(shape), i
    cdef cnp.npy_intp dims[32]
    cdef cnp.npy_intp n_items = 1, nbytes, raw_bytes
    cdef size_t start
    if nd > 32:
        raise ValueError(f"aligned_empty: at most 32 dimensions, got {nd}")
    for i in range(nd):
        dims[i] = shape[i]
        if dims[i] < 0:
            raise ValueError(f"aligned_empty: negative dimension in {shape}")
        n_items *= dims[i]
    nbytes = n_items * descr.itemsize
    if nbytes < 1 << 16:   # small buffers live in cache anyway
        Py_INCREF(descr)   # PyArray_Empty steals it
        return _array_empty(nd, dims, <void *>descr, 0)
    cdef cnp.npy_intp stagger = 64 * (_stagger_count * 7 % 64)
    _stagger_count += 1
    raw_bytes = nbytes + stagger + 64
    raw = cnp.PyArray_EMPTY(1, &raw_bytes, cnp.NPY_UINT8, 0)
    cdef char *data = <char *>cnp.PyArray_DATA(raw)
    start = (64 - <size_t>data % 64) % 64 + <size_t>stagger
    Py_INCREF(descr)   # PyArray_NewFromDescr steals it
    arr = _array_from_descr(&PyArray_Type, <void *>descr, nd, dims, NULL, data + start,
                            cnp.NPY_ARRAY_CARRAY, NULL)
    cnp.set_array_base(arr, raw)   # arr keeps raw alive
    return arr

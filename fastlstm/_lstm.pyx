# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled LSTM forward and backward: one source for float32 and float64 (fused type).

Each call runs one OpenMP parallel region. Whole-sequence GEMMs (the input projection,
dx, dW_x, dW_h) are shared out by rows or columns. The time recursion is shared out one
of two ways, chosen by the caller:

- by batch slices (``split_units=False``): the slices are independent, so the threads
  never wait for each other inside the recursion. Right when every thread gets enough
  rows for an efficient product.
- by hidden units (``split_units=True``): every thread runs all B rows for its own units
  (their four gate columns), which halves the weights each thread streams per step and
  keeps the products tall; the threads meet at one barrier per step. Right for small
  batches with large H.

Every BLAS call inside the region is single-threaded (the caller pins the BLAS thread
pool to one thread), so the cores are never oversubscribed. float32 recursions use
fastlstm's own small-M GEMM kernels (csrc/fastlstm_gemm.h) where the CPU has AVX2 or
AVX-512: the forward over W_h packed once per call, the backward over W_h^T packed once
per call (``set_backward_pack_min_step_rows``: from 512 (step, row) products per thread,
more than one row a step) or, below that, on the NT kernel reading W_h in place.

A lookup (``lstm_forward_lookup_kernel`` / ``lstm_backward_lookup_kernel``) takes ids and
a table of projected inputs in place of x and W_x: each step's projection is the table
row of its id, and the backward gathers the gate gradients by id into the table's
gradient instead of computing dx and dW_x.

``fastlstm.lstm`` allocates and validates every argument; the entry points check them
again (types, shapes, index ranges), so that no call from Python can crash.
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.string cimport memcpy

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from ._blas cimport gemm
from ._kernel_common cimport *
from ._runtime cimport fl_isa_bind, isa_level_for
from ._runtime import set_backward_pack_min_step_rows   # (a knob of this module's too)

cnp.import_array()
fl_isa_bind(isa_level_for(__name__))   # every kernel here runs at the process's one level


def packed_gemm_available():
    """True when float32 recursions run on fastlstm's own GEMM kernels (the AVX2+FMA or
    AVX-512 level); BLAS does the products otherwise."""
    return bool(fl_gemm_packed_available())


# Hidden units are shared out between threads in whole panels of this many.
UNIT_BLOCK = FL_NR
# ... or, where the weights are read in place, in whole cache lines of float32 units.
cdef enum:
    UNIT_ALIGN = 16
# One sequence split over threads: each thread copies its share of W_h (see
# _forward_one_sequence_split) for sequences of at least this many steps.
cdef int _copy_min_steps = 16


def set_one_sequence_copy_min_steps(int steps):
    """Copy W_h per thread in split single-sequence forwards of at least ``steps`` steps
    (default 16); returns the previous setting. For tests and benchmarks."""
    global _copy_min_steps
    previous = _copy_min_steps
    _copy_min_steps = steps
    return previous


def packed_size(int H, bint split_units):
    """Floats needed for the packed recurrent weights W_h (H x 4H) in either layout."""
    if split_units:   # each gate block packed on its own, so units split on panel edges
        return 4 * fl_packed_size(H, H)
    return fl_packed_size(H, 4 * H)


# --- helpers for the Python wrappers' per-call costs ----------------------------------

cdef inline bint _sampled(object obj):
    return cnp.PyArray_Check(obj) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj)


def sampled_bytes(tuple arrays, cnp.ndarray positions):
    """A few elements of each array, their bytes concatenated: what the caches record to
    notice arrays changed between a forward and its backward pass (fastlstm._containers;
    python_sampled_bytes there is the same in NumPy, many times slower per array, too
    slow for a check made on every call).

    ``positions``: float64 (k,) fractions in [0, 1). An array of n > k elements gives
    element ``min(int(f * n), n - 1)`` of its flat order for each fraction f; a smaller
    one gives all its elements; an object that is not a C-contiguous ndarray gives none.
    """
    if cnp.PyArray_TYPE(positions) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(
            positions):
        raise TypeError("positions must be a C-contiguous float64 array")
    cdef const double *at = <const double *>cnp.PyArray_DATA(positions)
    cdef Py_ssize_t k = cnp.PyArray_SIZE(positions)
    cdef Py_ssize_t total = 0, n, itemsize, i, index
    cdef const char *src
    cdef char *dst
    cdef cnp.ndarray a
    for obj in arrays:
        if _sampled(obj):
            a = <cnp.ndarray>obj
            total += min(cnp.PyArray_SIZE(a), k) * cnp.PyArray_ITEMSIZE(a)
    out = PyBytes_FromStringAndSize(NULL, total)
    dst = PyBytes_AS_STRING(out)
    for obj in arrays:
        if not _sampled(obj):
            continue
        a = <cnp.ndarray>obj
        n = cnp.PyArray_SIZE(a)
        itemsize = cnp.PyArray_ITEMSIZE(a)
        src = <const char *>cnp.PyArray_DATA(a)
        if n <= k:
            memcpy(dst, src, n * itemsize)
            dst += n * itemsize
            continue
        for i in range(k):
            index = <Py_ssize_t>(at[i] * <double>n)
            if index > n - 1:
                index = n - 1
            memcpy(dst, src + index * itemsize, itemsize)
            dst += itemsize
    return out


cdef inline void _cell_forward(int n_rows, int H, int u0, int nu, floating *gates,
                               const floating *c_prev, floating *c_next,
                               const floating *h_prev, floating *h_next, floating *hs,
                               const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_lstm_cell_forward_f32(n_rows, H, u0, nu, gates, c_prev, c_next, h_prev, h_next,
                                 hs, lengths, t)
    else:
        fl_lstm_cell_forward_f64(n_rows, H, u0, nu, gates, c_prev, c_next, h_prev, h_next,
                                 hs, lengths, t)


cdef inline void _cell_backward(int n_rows, int H, int u0, int nu, const floating *gates,
                                const floating *c_prev, const floating *c_cur,
                                const floating *dhs, const floating *dh, floating *dc,
                                floating *d_gates, const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_lstm_cell_backward_f32(n_rows, H, u0, nu, gates, c_prev, c_cur, dhs, dh, dc,
                                  d_gates, lengths, t)
    else:
        fl_lstm_cell_backward_f64(n_rows, H, u0, nu, gates, c_prev, c_cur, dhs, dh, dc,
                                  d_gates, lengths, t)


cdef inline void _forward_step_gemm(int M, int N, int K, const floating *h, int ldh,
                                    const floating *W_h, int ldw, const float *packed,
                                    floating *gates, int ldg, float *a_scratch,
                                    bint h_already_packed) noexcept nogil:
    """gates (M x N) += h (M x K) @ W_h (K x N columns): float32 through the pre-packed
    weights when the caller packed them, BLAS otherwise. ``h_already_packed``: the
    previous call packed this same h into a_scratch."""
    if floating is float:
        if M == 1 and fl_gemm_packed_available():   # one sequence: a GEMV, W_h in place
            fl_gemv_f32(K, N, h, W_h, ldw, gates, 1)
            return
        if packed != NULL and a_scratch != NULL:
            fl_gemm_packed_f32(M, N, K, NULL if h_already_packed else h, ldh, packed, gates,
                               ldg, 1, a_scratch)
            return
    gemm(False, False, M, N, K, <floating>1.0, h, ldh, W_h, ldw, <floating>1.0, gates, ldg)


cdef inline void _backward_step_gemm(int M, int N, int K, const floating *d_gates, int ldd,
                                     const floating *W_h, int ldw, floating *dh, int ldh,
                                     float *a_scratch) noexcept nogil:
    """dh (M x N) = d_gates (M x K) @ W_h^T (W_h rows are the N outputs): float32 as dot
    products over the rows of W_h (no packed copy needed) when scratch is given and M > 1,
    BLAS otherwise."""
    if floating is float:
        if M == 1 and fl_gemm_packed_available():   # one row: dot products, no scratch
            fl_dots_f32(N, K, d_gates, W_h, ldw, dh)
            return
        if a_scratch != NULL and _nt_pays(K):   # short rows: see _nt_pays
            fl_gemm_nt_f32(M, N, K, d_gates, ldd, W_h, ldw, dh, ldh, 0, a_scratch)
            return
    gemm(False, True, M, N, K, <floating>1.0, d_gates, ldd, W_h, ldw, <floating>0.0, dh, ldh)


# --- one call's arrays --------------------------------------------------------------
# An entry point checks its arrays and gathers them, with the sizes, in one struct; the
# pointers are untyped there, and each fused function below casts them once, to the
# specialisation its ``dtype_tag`` (a zero of the call's float type, given by the entry
# point after one dtype test) selects. Arrays are C-contiguous, of the call's float
# dtype unless said otherwise.

cdef struct _Forward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step (0 for a lookup)
    int H                   # hidden units; G = 4H gate columns
    bint split_units        # the recursion shared out by hidden units, not batch rows
    int n_threads
    const void *x           # (T, B, D) inputs, or NULL for a lookup
    const void *W_x         # (D, G) input weights, or NULL for a lookup
    const int *ids          # (T*B,) intc: step t of sequence b reads table row
                            # ids[t*B + b]; NULL unless a lookup
    const void *table       # (V, G) projected inputs, for a lookup; else NULL
    const void *W_h         # (H, G)
    const void *b           # (G,)
    void *gates             # (T, B, G) out: the activated gates i, f, g, o
    void *h_states          # (T+1, B, H) in: [0] = h0; out: [t+1] = state after step t
    void *c_states          # (T+1, B, H) the same for the cell state
    void *hs                # (T, B, H) out: outputs, 0 past a sequence's length
    const int *lengths      # (B,) intc, or NULL: every sequence runs T steps
    float *packed           # packed_size(H, split_units) floats for the packed float32
                            # recursion, or NULL: products on BLAS
    fl_step_barrier *step_barrier   # the unit split's per-step barrier


cdef void _forward_worker(const _Forward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                          float *a_scratch, float *w_local,
                          floating dtype_tag) noexcept nogil:
    cdef int T = a.T, B = a.B, D = a.D, H = a.H
    cdef bint split_units = a.split_units
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *b = <const floating *>a.b
    cdef floating *gates = <floating *>a.gates
    cdef floating *h_states = <floating *>a.h_states
    cdef floating *c_states = <floating *>a.c_states
    cdef floating *hs = <floating *>a.hs
    cdef const floating *table = <const floating *>a.table
    cdef const int *ids = a.ids
    cdef const int *lengths = a.lengths
    cdef float *packed = a.packed
    cdef Py_ssize_t G = 4 * H, BH = <Py_ssize_t>B * H, BG = <Py_ssize_t>B * G
    cdef Py_ssize_t r, r0, r1, b0, b1, u0 = 0, u1 = 0, p0, p1, t, at, nb, nu = 0, gate, j
    cdef Py_ssize_t block = 0
    cdef float *packed_gate = NULL
    cdef const floating *table_row

    # 1. Input projection of every step, gates = x W_x + b (for a lookup, the table row
    #    of each step's id + b), a block of rows per thread; meanwhile this thread's share
    #    of W_h is packed (float32 kernels only).
    _split(<Py_ssize_t>T * B, tid, n_threads, &r0, &r1)
    if ids != NULL:
        for r in range(r0, r1):
            table_row = table + <Py_ssize_t>ids[r] * G
            for j in range(G):
                gates[r * G + j] = b[j] + table_row[j]
    else:
        for r in range(r0, r1):
            memcpy(gates + r * G, b, G * sizeof(floating))
        gemm(False, False, <int>(r1 - r0), <int>G, D, <floating>1.0,
             <const floating *>a.x + r0 * D, D, <const floating *>a.W_x, <int>G,
             <floating>1.0, gates + r0 * G, <int>G)
    if split_units:
        # packed panels are FL_NR units wide; in place, whole cache lines of units
        _split_aligned(H, FL_NR if packed != NULL else UNIT_ALIGN, tid, n_threads, &u0, &u1)
        nu = u1 - u0
        block = fl_packed_size(H, H)
        if floating is float:
            if packed != NULL:
                for gate in range(4):   # the panels of this thread's units, per gate block
                    fl_pack_panels_f32(H, H, W_h + gate * H, <int>G, 0, packed + gate * block,
                                       <int>(u0 // FL_NR), <int>((u1 + FL_NR - 1) // FL_NR))
    else:
        if floating is float:
            if packed != NULL:
                _split((G + FL_NR - 1) // FL_NR, tid, n_threads, &p0, &p1)
                fl_pack_panels_f32(H, <int>G, W_h, <int>G, 0, packed, <int>p0, <int>p1)
    fl_barrier()

    # 2. The recursion.
    if floating is float:
        if split_units and w_local != NULL and B == 1 and nu > 0:
            _forward_one_sequence_split(T, H, <int>u0, <int>nu, W_h, gates, h_states,
                                        c_states, hs, lengths, w_local, a.step_barrier,
                                        <int>n_threads)
            return
    if split_units:
        for t in range(T):
            if nu > 0:
                for gate in range(4):
                    if floating is float:
                        if packed != NULL:
                            packed_gate = packed + gate * block + (u0 // FL_NR) * FL_NR * H
                    # h_{t-1} is packed for the kernel by the first gate's call only
                    _forward_step_gemm(B, <int>nu, H, h_states + t * BH, H,
                                       W_h + gate * H + u0, <int>G, packed_gate,
                                       gates + t * BG + gate * H + u0, <int>G, a_scratch,
                                       gate > 0)
                _cell_forward(B, H, <int>u0, <int>nu, gates + t * BG, c_states + t * BH,
                              c_states + (t + 1) * BH, h_states + t * BH,
                              h_states + (t + 1) * BH, hs + t * BH, lengths, <int>t)
            fl_step_barrier_wait(a.step_barrier, <int>n_threads)   # h_t is whole before use
        return

    _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    if nb == 0:
        return
    for t in range(T):
        at = t * B + b0
        _forward_step_gemm(<int>nb, <int>G, H, h_states + at * H, H, W_h, <int>G, packed,
                           gates + at * G, <int>G, a_scratch, False)
        _cell_forward(<int>nb, H, 0, H, gates + at * G, c_states + at * H,
                      c_states + (at + B) * H, h_states + at * H, h_states + (at + B) * H,
                      hs + at * H, lengths + b0 if lengths != NULL else NULL, <int>t)


cdef void _forward_one_sequence_split(int T, int H, int u0, int nu, const float *W_h,
                                      float *gates, float *h_states, float *c_states,
                                      float *hs, const int *lengths, float *w_local,
                                      fl_step_barrier *step_barrier,
                                      int n_threads) noexcept nogil:
    """The forward recursion of one sequence (B = 1) split over hidden units, float32:
    this thread's columns of W_h (units [u0, u0 + nu) of each gate) are first copied side
    by side into w_local (H x 4nu, then 4nu floats for the step's product), so each step
    is one GEMV over contiguous rows instead of four over nu-float slices of 4H-float
    rows, whose cache lines the two threads' slices share at their edges (the copy is
    one pass over the thread's share, repaid over the steps)."""
    cdef int G = 4 * H, N = 4 * nu, gate, j, k, t
    cdef float *y = w_local + <Py_ssize_t>H * N
    for k in range(H):
        for gate in range(4):
            memcpy(w_local + <Py_ssize_t>k * N + gate * nu,
                   W_h + <Py_ssize_t>k * G + gate * H + u0, nu * sizeof(float))
    for t in range(T):
        fl_gemv_f32(H, N, h_states + <Py_ssize_t>t * H, w_local, N, y, 0)
        for gate in range(4):
            for j in range(nu):
                gates[<Py_ssize_t>t * G + gate * H + u0 + j] += y[gate * nu + j]
        fl_lstm_cell_forward_f32(1, H, u0, nu, gates + <Py_ssize_t>t * G,
                                 c_states + <Py_ssize_t>t * H,
                                 c_states + <Py_ssize_t>(t + 1) * H,
                                 h_states + <Py_ssize_t>t * H,
                                 h_states + <Py_ssize_t>(t + 1) * H, hs + <Py_ssize_t>t * H,
                                 lengths, t)
        fl_step_barrier_wait(step_barrier, n_threads)   # h_t is whole before use


cdef int _forward_arrays(_Forward *a, W_h, b, gates, h_states, c_states, hs, lengths,
                         packed, bint split_units, int n_threads) except -1:
    """The arrays both forward entry points take: data pointers and sizes into ``a``
    (not yet checked against each other); returns the call's float type number."""
    cdef int typenum = _float_typenum(gates, "gates")
    a.T = <int>_dim(gates, 0)
    a.B = <int>_dim(gates, 1)
    a.H = <int>_dim(W_h, 0)
    a.split_units = split_units
    a.n_threads = n_threads
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.b = _data(b, typenum, 1, False, "b")
    a.gates = _data(gates, typenum, 3, True, "gates")
    a.h_states = _data(h_states, typenum, 3, True, "h_states")
    a.c_states = _data(c_states, typenum, 3, True, "c_states")
    a.hs = _data(hs, typenum, 3, True, "hs")
    a.packed = <float *>_data_or_null(packed, cnp.NPY_FLOAT, 1, True, "packed")
    return typenum


cdef int _check_forward_dims(const _Forward *a, W_h, b, h_states, c_states, hs, lengths,
                             packed) except -1:
    cdef int T = a.T, B = a.B, H = a.H
    _check_dims(W_h, "W_h", H, 4 * H)   # (H comes from W_h: its own shape first)
    _check_dims(b, "b", 4 * H)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(c_states, "c_states", T + 1, B, H)
    _check_dims(hs, "hs", T, B, H)
    _check_sequence_args(lengths, a.lengths, T, B, a.n_threads)
    if a.packed != NULL and _dim(packed, 0) < <cnp.npy_intp>packed_size(H, a.split_units):
        raise ValueError(f"kernel argument packed has {_dim(packed, 0)} floats, fewer than "
                         f"packed_size(H, split_units) = {packed_size(H, a.split_units)}")
    return 0


def lstm_forward_kernel(x, W_x, W_h, b, gates, h_states, c_states, hs, lengths, packed,
                        bint split_units, int n_threads):
    """Fill gates (T,B,4H), h_states and c_states (T+1,B,H; index 0 preset to h0, c0)
    and hs (T,B,H). All arrays C-contiguous, of one float dtype; lengths (B,) intc or None.

    ``packed`` (float32 only: packed_size(H, split_units) floats, or None) turns on the
    packed recurrent GEMM. ``split_units`` picks the recursion's partitioning (see the
    module docstring); ``n_threads`` is taken as given (the caller caps it).
    """
    cdef _Forward a
    _forward_run(&a, _forward_call(&a, x, W_x, W_h, b, gates, h_states, c_states, hs,
                                   lengths, packed, split_units, n_threads))


cdef int _forward_call(_Forward *a, x, W_x, W_h, b, gates, h_states, c_states, hs, lengths,
                       packed, bint split_units, int n_threads) except -1:
    """lstm_forward_kernel's arguments, checked, into ``a``; returns the float type."""
    cdef int typenum = _forward_arrays(a, W_h, b, gates, h_states, c_states, hs, lengths,
                                       packed, split_units, n_threads)
    a.D = <int>_dim(x, 2)
    a.x = _data(x, typenum, 3, False, "x")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.ids = NULL
    a.table = NULL
    _check_dims(x, "x", a.T, a.B, a.D)
    _check_forward_dims(a, W_h, b, h_states, c_states, hs, lengths, packed)
    _check_dims(W_x, "W_x", a.D, 4 * a.H)
    return typenum


def lstm_forward_pair_kernel(tuple first, tuple second):
    """Two lstm_forward_kernel calls, each given as the tuple of its arguments, in one
    parallel region of two threads, one call per thread: the two directions of a
    bidirectional layer, at once. Each call must be planned for one thread
    (``n_threads`` 1, no unit split) and both must have the same T, B, H and dtype (each
    thread passes the same barriers)."""
    cdef _Forward a[2]
    cdef int typenum = 0, k, k_type
    for k, call in enumerate((first, second)):
        if len(call) != 12:
            raise TypeError(f"a call of lstm_forward_pair_kernel has 12 arguments, got "
                            f"{len(call)}")
        k_type = _forward_call(&a[k], call[0], call[1], call[2], call[3], call[4], call[5],
                               call[6], call[7], call[8], call[9], call[10], call[11])
        if k == 0:
            typenum = k_type
        _check_pair_call(typenum, k_type, a[0].T, a[k].T, a[0].B, a[k].B, a[0].H, a[k].H,
                         a[k].n_threads, a[k].split_units)
    _forward_pair_run(a, typenum)


def lstm_forward_lookup_kernel(ids, table, W_h, b, gates, h_states, c_states, hs, lengths,
                               packed, bint split_units, int n_threads):
    """lstm_forward_kernel with each step's input projection looked up: step t of
    sequence b takes row ``ids[t*B + b]`` of ``table`` (V, 4H) where the other takes
    ``x[t, b] @ W_x``. ``ids`` (T*B,) intc in [0, V); the rest as there."""
    cdef _Forward a
    cdef int typenum = _forward_arrays(&a, W_h, b, gates, h_states, c_states, hs, lengths,
                                       packed, split_units, n_threads)
    a.D = 0
    a.x = NULL
    a.W_x = NULL
    a.ids = <const int *>_data(ids, cnp.NPY_INT, 1, False, "ids")
    a.table = _data(table, typenum, 2, False, "table")
    _check_forward_dims(&a, W_h, b, h_states, c_states, hs, lengths, packed)
    _check_dims(table, "table", _dim(table, 0), 4 * a.H)
    _check_ids(ids, a.ids, a.T, a.B, <int>_dim(table, 0))
    _forward_run(&a, typenum)


cdef void _forward_run(_Forward *a, int typenum) noexcept:
    cdef fl_step_barrier step_barrier
    fl_step_barrier_init(&step_barrier)
    a.step_barrier = &step_barrier
    if typenum != cnp.NPY_FLOAT or not fl_gemm_packed_available():
        a.packed = NULL
    if typenum == cnp.NPY_FLOAT:
        _forward_parallel(a, <float>0)
    else:
        _forward_parallel(a, <double>0)


cdef void _forward_pair_run(_Forward *a, int typenum) noexcept:
    cdef fl_step_barrier step_barrier[2]
    cdef int k
    for k in range(2):
        fl_step_barrier_init(&step_barrier[k])
        a[k].step_barrier = &step_barrier[k]
        if typenum != cnp.NPY_FLOAT or not fl_gemm_packed_available():
            a[k].packed = NULL
    if typenum == cnp.NPY_FLOAT:
        _forward_pair_parallel(a, <float>0)
    else:
        _forward_pair_parallel(a, <double>0)


cdef void _forward_pair_parallel(const _Forward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=2):
        # each thread runs a whole call, every row of it (split_units=True sizes for that)
        a_scratch = _thread_scratch(a[0].packed != NULL or a[1].packed != NULL, a[0].B,
                                    True, 1, a[0].H)
        try:
            if fl_num_threads() == 1:   # the runtime granted one thread: one after the other
                _forward_worker(&a[0], 0, 1, a_scratch, NULL, dtype_tag)
                _forward_worker(&a[1], 0, 1, a_scratch, NULL, dtype_tag)
            else:
                _forward_worker(&a[threadid()], 0, 1, a_scratch, NULL, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)


cdef void _forward_parallel(const _Forward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    cdef float *w_local = NULL
    cdef int H = a.H
    # the copy pays once it is reused over enough steps; for a few it only adds a pass
    cdef bint one_sequence = (floating is float and a.split_units and a.B == 1
                              and fl_gemm_packed_available() and a.T >= _copy_min_steps)
    cdef int nu_max, unit_align
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _thread_scratch(a.packed != NULL, a.B, a.split_units, 1, H)
        w_local = NULL
        if one_sequence:
            # the most units _forward_worker's split can give one thread
            unit_align = FL_NR if a.packed != NULL else UNIT_ALIGN
            nu_max = <int>min(H, ((H + unit_align - 1) // unit_align + fl_num_threads() - 1)
                              // fl_num_threads() * unit_align)
            w_local = <float *>fl_aligned_alloc(<size_t>(H + 1) * 4 * nu_max * sizeof(float))
        try:
            _forward_worker(a, threadid(), fl_num_threads(), a_scratch, w_local, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(w_local)


cdef struct _Backward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step (0 for a lookup)
    int H                   # hidden units; G = 4H gate columns
    int chunk_T             # steps per chunk of d_gates
    bint split_units        # the recursion shared out by hidden units, not batch rows
    bint use_kernel         # float32 step products on fastlstm's own kernels
    int n_threads
    const void *x           # (T, B, D) inputs, or NULL for a lookup
    const void *W_x         # (D, G) input weights, or NULL for a lookup
    const int *ids          # (T*B,) intc table rows of the steps, for a lookup; else NULL
    const void *W_h         # (H, G)
    const void *gates       # (T, B, G) the forward's activated gates
    const void *h_states    # (T+1, B, H) the forward's states
    const void *c_states    # (T+1, B, H)
    const void *dhs         # (T, B, H) output gradients, or NULL (zeros)
    const int *lengths      # (B,) intc, or NULL
    void *dh                # (B, H) in: dh_n; out: dh0
    void *dc                # (B, H) in: dc_n; out: dc0
    void *dh_scratch        # (B, H) scratch, used with lengths
    void *d_gates           # (chunk_T, B, G) scratch: one chunk's gate gradients
    void *dx                # (T, B, D) out, or NULL for a lookup
    void *dW_x              # (D, G) out, or NULL for a lookup
    void *d_table           # (V, G) for a lookup, zero on entry; out: the table's
                            # gradient (the sum of each id's gate gradients); else NULL
    void *dW_h              # (H, G) out
    double *db_acc          # (G,) float64, zero on entry; out: db
    int scratch_rows        # rows of dx's product per a_scratch block
    float *packed_t         # W_h^T packed for the step products (float32 kernels):
                            # G * (H + FL_NR * n_threads) floats, each thread's panels
                            # at G * (u0 + FL_NR * tid) in a unit split, all H units'
                            # from 0 in a batch split; or NULL (the NT kernel, or BLAS)
    fl_step_barrier *step_barrier   # the unit split's per-step barrier


cdef void _backward_worker(const _Backward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                           float *a_scratch, floating dtype_tag) noexcept nogil:
    cdef int T = a.T, B = a.B, D = a.D, H = a.H, chunk_T = a.chunk_T
    cdef bint split_units = a.split_units
    cdef const floating *x = <const floating *>a.x
    cdef const floating *W_x = <const floating *>a.W_x
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *gates = <const floating *>a.gates
    cdef const floating *h_states = <const floating *>a.h_states
    cdef const floating *c_states = <const floating *>a.c_states
    cdef const floating *dhs = <const floating *>a.dhs
    cdef const int *lengths = a.lengths
    cdef const int *ids = a.ids
    cdef floating *dh = <floating *>a.dh
    cdef floating *dc = <floating *>a.dc
    cdef floating *dh_scratch = <floating *>a.dh_scratch
    cdef floating *d_gates = <floating *>a.d_gates
    cdef floating *dx = <floating *>a.dx
    cdef floating *dW_x = <floating *>a.dW_x
    cdef floating *d_table = <floating *>a.d_table
    cdef floating *dW_h = <floating *>a.dW_h
    cdef double *db_acc = a.db_acc
    cdef Py_ssize_t G = 4 * H, BH = <Py_ssize_t>B * H
    cdef Py_ssize_t b0 = 0, b1 = B, u0 = 0, u1 = H, nb, nu, t, at, dt, rows, first
    cdef int t_start, t_stop = T
    cdef floating weight_beta = 0.0    # the first chunk writes dW_x, dW_h; later ones add
    cdef const int *slice_lengths
    cdef float *panels = NULL
    if split_units:
        _split_aligned(H, UNIT_ALIGN, tid, n_threads, &u0, &u1)
    else:
        _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    nu = u1 - u0
    slice_lengths = lengths + b0 if lengths != NULL else NULL
    if floating is float:
        if a.packed_t != NULL:
            panels = _pack_step_transpose(a.packed_t, W_h, <int>G, H, u0, nu,
                                          split_units, tid, n_threads)

    # Chunks of steps from the end: the recursion over the chunk, then the chunk's weight
    # and input gradients as GEMMs over chunk_T * B rows, shared out by rows (dx) and by
    # gate columns (dW_x, dW_h, db).
    while t_stop > 0:
        t_start = max(0, t_stop - chunk_T)
        for t in range(t_stop - 1, t_start - 1, -1):
            at = t * B + b0
            dt = (t - t_start) * <Py_ssize_t>B + b0
            if nb > 0 and nu > 0:
                _cell_backward(<int>nb, H, <int>u0, <int>nu, gates + at * G,
                               c_states + at * H, c_states + (at + B) * H,
                               dhs + at * H if dhs != NULL else NULL, dh + b0 * H,
                               dc + b0 * H, d_gates + dt * G, slice_lengths, <int>t)
            if split_units:
                fl_step_barrier_wait(a.step_barrier, <int>n_threads)   # d_gates_t is whole
            if nb == 0 or nu == 0:
                continue
            # dh_{t-1}[rows, units] = d_gates_t[rows, :] W_h[units, :]^T; frozen steps
            # (lengths) pass dh through, so their product goes to scratch first.
            if floating is float:
                if panels != NULL:
                    fl_gemm_packed_f32(<int>nb, <int>nu, <int>G, d_gates + dt * G, <int>G,
                                       panels,
                                       (dh if lengths == NULL else dh_scratch) + b0 * H + u0,
                                       H, 0, a_scratch)
            if panels == NULL:
                _backward_step_gemm(<int>nb, <int>nu, <int>G, d_gates + dt * G, <int>G,
                                    W_h + u0 * G, <int>G,
                                    (dh if lengths == NULL else dh_scratch) + b0 * H + u0,
                                    H, a_scratch)
            if lengths != NULL:
                _copy_valid_rows(<int>nb, H, <int>u0, <int>nu, dh_scratch + b0 * H,
                                 dh + b0 * H, slice_lengths, <int>t)
        fl_barrier()

        rows = (t_stop - t_start) * <Py_ssize_t>B
        first = t_start * <Py_ssize_t>B   # the chunk's first (step, sequence) row
        if ids != NULL:
            _chunk_lookup_gradients(tid, n_threads, rows, <int>G, H, d_gates, ids + first,
                                    h_states + t_start * BH, d_table, dW_h, db_acc,
                                    weight_beta)
        else:
            _chunk_gradients(tid, n_threads, rows, <int>G, D, H, d_gates, x + first * D,
                             h_states + t_start * BH, W_x, dx + first * D, dW_x, dW_h,
                             db_acc, weight_beta, a_scratch, a.scratch_rows)
        weight_beta = 1.0
        t_stop = t_start
        fl_barrier()   # d_gates is reused by the next chunk


cdef int _backward_arrays(_Backward *a, W_h, gates, h_states, c_states, dhs, lengths, dh,
                          dc, dh_scratch, d_gates, dW_h, db_acc, bint small_m_gemm,
                          bint split_units, int n_threads) except -1:
    """The arrays both backward entry points take: data pointers and sizes into ``a``
    (not yet checked against each other); returns the call's float type number."""
    cdef int typenum = _float_typenum(gates, "gates")
    a.T = <int>_dim(gates, 0)
    a.B = <int>_dim(gates, 1)
    a.H = <int>_dim(W_h, 0)
    a.chunk_T = <int>_dim(d_gates, 0)
    a.split_units = split_units
    a.use_kernel = (small_m_gemm and typenum == cnp.NPY_FLOAT
                    and fl_gemm_packed_available())
    a.n_threads = n_threads
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.dhs = _data_or_null(dhs, typenum, 3, False, "dhs")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.gates = _data(gates, typenum, 3, False, "gates")
    a.h_states = _data(h_states, typenum, 3, False, "h_states")
    a.c_states = _data(c_states, typenum, 3, False, "c_states")
    a.dh = _data(dh, typenum, 2, True, "dh")
    a.dc = _data(dc, typenum, 2, True, "dc")
    a.dh_scratch = _data(dh_scratch, typenum, 2, True, "dh_scratch")
    a.d_gates = _data(d_gates, typenum, 3, True, "d_gates")
    a.dW_h = _data(dW_h, typenum, 2, True, "dW_h")
    a.db_acc = <double *>_data(db_acc, cnp.NPY_DOUBLE, 1, True, "db_acc")
    a.packed_t = NULL   # _backward_run decides
    return typenum


cdef int _check_backward_dims(const _Backward *a, W_h, h_states, c_states, dhs, lengths,
                              dh, dc, dh_scratch, d_gates, dW_h, db_acc) except -1:
    cdef int T = a.T, B = a.B, H = a.H, G = 4 * a.H
    _check_dims(W_h, "W_h", H, G)
    _check_dims(dW_h, "dW_h", H, G)
    _check_dims(db_acc, "db_acc", G)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(c_states, "c_states", T + 1, B, H)
    _check_dims(dhs, "dhs", T, B, H)
    _check_dims(dh, "dh", B, H)
    _check_dims(dc, "dc", B, H)
    _check_dims(dh_scratch, "dh_scratch", B, H)
    if a.chunk_T < 1 or a.chunk_T > max(T, 1):
        raise ValueError(f"kernel argument d_gates must hold 1 to T={T} steps, "
                         f"got {a.chunk_T}")
    _check_dims(d_gates, "d_gates", a.chunk_T, B, G)
    _check_sequence_args(lengths, a.lengths, T, B, a.n_threads)
    return 0


def lstm_backward_kernel(x, W_x, W_h, gates, h_states, c_states, dhs, lengths, dh, dc,
                         dh_scratch, d_gates, dx, dW_x, dW_h, db_acc, bint small_m_gemm,
                         bint split_units, int n_threads):
    """Backpropagate through lstm_forward_kernel.

    dh, dc (B,H) hold dh_n, dc_n on entry and dh0, dc0 on return. d_gates is scratch of
    (chunk_T, B, 4H); dh_scratch (B,H) is used when lengths is given. dx, dW_x, dW_h are
    overwritten; db_acc (4H,) float64 must be zero and receives db. dhs may be None
    (zeros). ``small_m_gemm`` (float32, where packed_gemm_available()) runs the
    recursion's product on fastlstm's own kernel; ``split_units`` and ``n_threads`` as
    for the forward.
    """
    cdef _Backward a
    _backward_run(&a, _backward_call(&a, x, W_x, W_h, gates, h_states, c_states, dhs,
                                     lengths, dh, dc, dh_scratch, d_gates, dx, dW_x, dW_h,
                                     db_acc, small_m_gemm, split_units, n_threads))


cdef int _backward_call(_Backward *a, x, W_x, W_h, gates, h_states, c_states, dhs, lengths,
                        dh, dc, dh_scratch, d_gates, dx, dW_x, dW_h, db_acc,
                        bint small_m_gemm, bint split_units, int n_threads) except -1:
    """lstm_backward_kernel's arguments, checked, into ``a``; returns the float type."""
    cdef int typenum = _backward_arrays(a, W_h, gates, h_states, c_states, dhs, lengths,
                                        dh, dc, dh_scratch, d_gates, dW_h, db_acc,
                                        small_m_gemm, split_units, n_threads)
    a.D = <int>_dim(x, 2)
    a.x = _data(x, typenum, 3, False, "x")
    a.dx = _data(dx, typenum, 3, True, "dx")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.dW_x = _data(dW_x, typenum, 2, True, "dW_x")
    a.ids = NULL
    a.d_table = NULL
    _check_dims(x, "x", a.T, a.B, a.D)
    _check_dims(dx, "dx", a.T, a.B, a.D)
    _check_dims(W_x, "W_x", a.D, 4 * a.H)
    _check_dims(dW_x, "dW_x", a.D, 4 * a.H)
    _check_backward_dims(a, W_h, h_states, c_states, dhs, lengths, dh, dc, dh_scratch,
                         d_gates, dW_h, db_acc)
    return typenum


def lstm_backward_pair_kernel(tuple first, tuple second):
    """Two lstm_backward_kernel calls, each given as the tuple of its arguments, in one
    parallel region of two threads, one call per thread (as lstm_forward_pair_kernel;
    both calls must also have the same chunk of steps, d_gates' first size)."""
    cdef _Backward a[2]
    cdef int typenum = 0, k, k_type
    for k, call in enumerate((first, second)):
        if len(call) != 19:
            raise TypeError(f"a call of lstm_backward_pair_kernel has 19 arguments, got "
                            f"{len(call)}")
        k_type = _backward_call(&a[k], call[0], call[1], call[2], call[3], call[4], call[5],
                                call[6], call[7], call[8], call[9], call[10], call[11],
                                call[12], call[13], call[14], call[15], call[16], call[17],
                                call[18])
        if k == 0:
            typenum = k_type
        _check_pair_call(typenum, k_type, a[0].T, a[k].T, a[0].B, a[k].B, a[0].H, a[k].H,
                         a[k].n_threads, a[k].split_units)
        if a[k].chunk_T != a[0].chunk_T:
            raise ValueError(f"the calls of a pair need the same chunk of steps, got "
                             f"{a[0].chunk_T} and {a[k].chunk_T}")
    _backward_pair_run(a, typenum)


def lstm_backward_lookup_kernel(ids, table, W_h, gates, h_states, c_states, dhs, lengths,
                                dh, dc, dh_scratch, d_gates, d_table, dW_h, db_acc,
                                bint small_m_gemm, bint split_units, int n_threads):
    """Backpropagate through lstm_forward_lookup_kernel: as lstm_backward_kernel, with
    no dx, and ``d_table`` (V, 4H), zeroed by the caller, in place of dW_x: it receives
    the sum of each id's gate gradients. ``table`` itself is only checked (its number of
    rows bounds the ids); the backward does not read it."""
    cdef _Backward a
    cdef int typenum = _backward_arrays(&a, W_h, gates, h_states, c_states, dhs, lengths,
                                        dh, dc, dh_scratch, d_gates, dW_h, db_acc,
                                        small_m_gemm, split_units, n_threads)
    a.D = 0
    a.x = NULL
    a.dx = NULL
    a.W_x = NULL
    a.dW_x = NULL
    a.ids = <const int *>_data(ids, cnp.NPY_INT, 1, False, "ids")
    _data(table, typenum, 2, False, "table")
    a.d_table = _data(d_table, typenum, 2, True, "d_table")
    _check_dims(table, "table", _dim(table, 0), 4 * a.H)
    _check_dims(d_table, "d_table", _dim(table, 0), 4 * a.H)
    _check_backward_dims(&a, W_h, h_states, c_states, dhs, lengths, dh, dc, dh_scratch,
                         d_gates, dW_h, db_acc)
    _check_ids(ids, a.ids, a.T, a.B, <int>_dim(table, 0))
    _backward_run(&a, typenum)


cdef int _backward_run(_Backward *a, int typenum) except -1:
    cdef fl_step_barrier step_barrier
    fl_step_barrier_init(&step_barrier)
    a.step_barrier = &step_barrier
    a.scratch_rows = 64   # dx's product runs in blocks of (at least) this many rows
    a.packed_t = _step_transpose_buffer(typenum == cnp.NPY_FLOAT and a.use_kernel, a.T,
                                        a.B, a.H, 4 * a.H, a.split_units, a.n_threads)
    try:
        if typenum == cnp.NPY_FLOAT:
            _backward_parallel(a, <float>0)
        else:
            _backward_parallel(a, <double>0)
    finally:
        fl_aligned_free(a.packed_t)
        a.packed_t = NULL
    return 0


cdef void _backward_pair_run(_Backward *a, int typenum) noexcept:
    cdef fl_step_barrier step_barrier[2]
    cdef int k
    for k in range(2):
        fl_step_barrier_init(&step_barrier[k])
        a[k].step_barrier = &step_barrier[k]
        a[k].scratch_rows = 64
    if typenum == cnp.NPY_FLOAT:
        _backward_pair_parallel(a, <float>0)
    else:
        _backward_pair_parallel(a, <double>0)


cdef void _backward_pair_parallel(const _Backward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=2):
        a_scratch = _thread_scratch(a[0].use_kernel or a[1].use_kernel, a[0].B, True,
                                    a[0].scratch_rows, 4 * a[0].H)
        try:
            if fl_num_threads() == 1:
                _backward_worker(&a[0], 0, 1, a_scratch, dtype_tag)
                _backward_worker(&a[1], 0, 1, a_scratch, dtype_tag)
            else:
                _backward_worker(&a[threadid()], 0, 1, a_scratch, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)


cdef void _backward_parallel(const _Backward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _thread_scratch(a.use_kernel, a.B, a.split_units, a.scratch_rows, 4 * a.H)
        try:
            _backward_worker(a, threadid(), fl_num_threads(), a_scratch, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)

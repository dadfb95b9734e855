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
AVX-512.

The arguments are checked and allocated by ``fastlstm.lstm``; these functions trust them.
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.string cimport memcpy

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from ._blas cimport gemm
from ._kernel_common cimport *
from ._runtime cimport fl_isa_bind, isa_level_for

cnp.import_array()
fl_isa_bind(isa_level_for(__name__))   # every kernel here runs at the process's one level


def packed_gemm_available():
    """True when float32 recursions run on fastlstm's own GEMM kernels (the AVX2+FMA or
    AVX-512 level); BLAS does the products otherwise."""
    return bool(fl_gemm_packed_available())


# Hidden units are shared out between threads in whole panels of this many.
UNIT_BLOCK = FL_NR
# ... or, where the weights are read in place, in whole cache lines of float32 units.
DEF UNIT_ALIGN = 16
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
    python_sampled_bytes there is the same in NumPy, at ~2 us an array instead of
    ~0.06).

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


cdef void _forward_worker(Py_ssize_t tid, Py_ssize_t n_threads, bint split_units, int T,
                          int B, int D, int H, const floating *x, const floating *W_x,
                          const floating *W_h, const floating *b, floating *gates,
                          floating *h_states, floating *c_states, floating *hs,
                          const int *lengths, float *packed, float *a_scratch,
                          const floating *table, const int *ids,
                          fl_step_barrier *step_barrier, float *w_local) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, BH = <Py_ssize_t>B * H, BG = <Py_ssize_t>B * G
    cdef Py_ssize_t r, r0, r1, b0, b1, u0 = 0, u1 = 0, p0, p1, t, at, nb, nu = 0, gate, j
    cdef Py_ssize_t block = 0
    cdef float *packed_gate = NULL
    cdef const floating *table_row

    # 1. Input projection of every step, gates = x W_x + b (or, projected, the table row
    #    of each step's id + b), a block of rows per thread; meanwhile this thread's share
    #    of W_h is packed (float32 kernels only).
    _split(<Py_ssize_t>T * B, tid, n_threads, &r0, &r1)
    if table != NULL:
        for r in range(r0, r1):
            table_row = table + <Py_ssize_t>ids[r] * G
            for j in range(G):
                gates[r * G + j] = b[j] + table_row[j]
    else:
        for r in range(r0, r1):
            memcpy(gates + r * G, b, G * sizeof(floating))
        gemm(False, False, <int>(r1 - r0), <int>G, D, <floating>1.0, x + r0 * D, D, W_x,
             <int>G, <floating>1.0, gates + r0 * G, <int>G)
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
                                        c_states, hs, lengths, w_local, step_barrier,
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
            fl_step_barrier_wait(step_barrier, <int>n_threads)   # h_t is whole before use
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
    rows, whose cache lines the two threads' slices share at their edges (the copy, one
    pass over the thread's share, made a T100 forward on 2 threads 18% faster)."""
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


def lstm_forward_kernel(x, W_x, W_h, b, gates, h_states, c_states, hs, lengths, packed,
                        bint split_units, int n_threads, ids=None):
    """Fill gates (T,B,4H), h_states and c_states (T+1,B,H; index 0 preset to h0, c0)
    and hs (T,B,H). All arrays C-contiguous, of one float dtype; lengths (B,) intc or None.

    ``packed`` (float32 only: packed_size(H, split_units) floats, or None) turns on the
    packed recurrent GEMM. ``split_units`` picks the recursion's partitioning (see the
    module docstring); ``n_threads`` is taken as given (the caller caps it).

    Projected inputs: with ``ids`` (T*B,) intc, W_x is a table (V, 4H) and step t of
    sequence b takes ``W_x[ids[t*B + b]]`` in place of ``x[t, b] @ W_x`` (x is then an
    empty (0, 0, 0) array of the dtype): an embedding or one-hot layer folded into the
    projection.
    """
    cdef int typenum = _float_typenum(gates, "gates")
    cdef bint projected = ids is not None
    cdef int T = <int>_dim(gates, 0), B = <int>_dim(gates, 1)
    cdef int H = <int>_dim(W_h, 0)
    cdef int D = 0 if projected else <int>_dim(x, 2)
    cdef char *x_ptr = NULL if projected else _data(x, typenum, 3, False, "x")
    cdef char *W_x_ptr = _data(W_x, typenum, 2, False, "W_x")
    cdef char *table_ptr = W_x_ptr if projected else NULL
    cdef const int *ids_ptr = <int *>_data_or_null(ids, cnp.NPY_INT, 1, False, "ids")
    cdef const int *lengths_ptr = <int *>_data_or_null(lengths, cnp.NPY_INT, 1, False,
                                                       "lengths")
    cdef char *W_h_ptr = _data(W_h, typenum, 2, False, "W_h")
    cdef char *b_ptr = _data(b, typenum, 1, False, "b")
    cdef char *gates_ptr = _data(gates, typenum, 3, True, "gates")
    cdef char *h_ptr = _data(h_states, typenum, 3, True, "h_states")
    cdef char *c_ptr = _data(c_states, typenum, 3, True, "c_states")
    cdef char *hs_ptr = _data(hs, typenum, 3, True, "hs")
    cdef float *packed_ptr = <float *>_data_or_null(packed, cnp.NPY_FLOAT, 1, True, "packed")
    cdef int G = 4 * H
    if not projected:
        _check_dims(x, "x", T, B, D)
    _check_dims(W_h, "W_h", H, G)   # (H comes from W_h: its own shape first)
    _check_dims(W_x, "W_x", _dim(W_x, 0) if projected else D, G)
    _check_dims(b, "b", G)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(c_states, "c_states", T + 1, B, H)
    _check_dims(hs, "hs", T, B, H)
    _check_sequence_args(lengths, lengths_ptr, ids, ids_ptr, T, B, <int>_dim(W_x, 0),
                         n_threads)
    if packed_ptr != NULL and _dim(packed, 0) < <cnp.npy_intp>packed_size(H, split_units):
        raise ValueError(f"kernel argument packed has {_dim(packed, 0)} floats, fewer than "
                         f"packed_size(H, split_units) = {packed_size(H, split_units)}")
    if not fl_gemm_packed_available():
        packed_ptr = NULL
    if typenum == cnp.NPY_FLOAT:
        _forward_run(split_units, n_threads, T, B, D, H, <float *>x_ptr, <float *>W_x_ptr,
                     <float *>W_h_ptr, <float *>b_ptr, <float *>gates_ptr, <float *>h_ptr,
                     <float *>c_ptr, <float *>hs_ptr, lengths_ptr, packed_ptr,
                     <float *>table_ptr, ids_ptr)
    else:
        _forward_run(split_units, n_threads, T, B, D, H, <double *>x_ptr, <double *>W_x_ptr,
                     <double *>W_h_ptr, <double *>b_ptr, <double *>gates_ptr,
                     <double *>h_ptr, <double *>c_ptr, <double *>hs_ptr, lengths_ptr,
                     NULL, <double *>table_ptr, ids_ptr)


cdef void _forward_run(bint split_units, int n_threads, int T, int B, int D, int H,
                       const floating *x, const floating *W_x, const floating *W_h,
                       const floating *b, floating *gates, floating *h_states,
                       floating *c_states, floating *hs, const int *lengths,
                       float *packed, const floating *table, const int *ids) noexcept:
    cdef float *a_scratch = NULL
    cdef float *w_local = NULL
    cdef fl_step_barrier step_barrier
    # the copy pays once it is reused over enough steps; for a few it only adds a pass
    # (T1 H512: 65 -> 130 us)
    cdef bint one_sequence = (floating is float and split_units and B == 1
                              and fl_gemm_packed_available() and T >= _copy_min_steps)
    cdef int nu_max, unit_align
    fl_step_barrier_init(&step_barrier)
    with nogil, parallel(num_threads=n_threads):
        a_scratch = NULL
        w_local = NULL
        if packed != NULL:
            a_scratch = <float *>fl_aligned_alloc(_scratch_floats(B, split_units, 1, H)
                                                  * sizeof(float))
        if one_sequence:
            # the most units _forward_worker's split can give one thread
            unit_align = FL_NR if packed != NULL else UNIT_ALIGN
            nu_max = <int>min(H, ((H + unit_align - 1) // unit_align + fl_num_threads() - 1)
                              // fl_num_threads() * unit_align)
            w_local = <float *>fl_aligned_alloc(<size_t>(H + 1) * 4 * nu_max * sizeof(float))
        try:
            _forward_worker(threadid(), fl_num_threads(), split_units, T, B, D, H, x, W_x,
                            W_h, b, gates, h_states, c_states, hs, lengths, packed,
                            a_scratch, table, ids, &step_barrier, w_local)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(w_local)


cdef void _backward_worker(Py_ssize_t tid, Py_ssize_t n_threads, bint split_units, int T,
                           int B, int D, int H, int chunk_T, const floating *x,
                           const floating *W_x, const floating *W_h, const floating *gates,
                           const floating *h_states, const floating *c_states,
                           const floating *dhs, const int *lengths, floating *dh,
                           floating *dc, floating *dh_scratch, floating *d_gates,
                           floating *dx, floating *dW_x, floating *dW_h,
                           double *db_acc, float *a_scratch,
                           int scratch_rows, const int *ids,
                           fl_step_barrier *step_barrier) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, BH = <Py_ssize_t>B * H, BG = <Py_ssize_t>B * G
    cdef Py_ssize_t b0 = 0, b1 = B, u0 = 0, u1 = H, nb, nu, t, at, dt, rows
    cdef int t_start, t_stop = T
    cdef floating weight_beta = 0.0    # the first chunk writes dW_x, dW_h; later ones add
    cdef const int *slice_lengths
    if split_units:
        _split_aligned(H, UNIT_ALIGN, tid, n_threads, &u0, &u1)
    else:
        _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    nu = u1 - u0
    slice_lengths = lengths + b0 if lengths != NULL else NULL

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
                fl_step_barrier_wait(step_barrier, <int>n_threads)   # d_gates_t is whole
            if nb == 0 or nu == 0:
                continue
            # dh_{t-1}[rows, units] = d_gates_t[rows, :] W_h[units, :]^T; frozen steps
            # (lengths) pass dh through, so their product goes to scratch first.
            _backward_step_gemm(<int>nb, <int>nu, <int>G, d_gates + dt * G, <int>G,
                                W_h + u0 * G, <int>G,
                                (dh if lengths == NULL else dh_scratch) + b0 * H + u0, H,
                                a_scratch)
            if lengths != NULL:
                _copy_valid_rows(<int>nb, H, <int>u0, <int>nu, dh_scratch + b0 * H,
                                 dh + b0 * H, slice_lengths, <int>t)
        fl_barrier()

        rows = (t_stop - t_start) * <Py_ssize_t>B
        _chunk_gradients(tid, n_threads, rows, <int>G, D, H, d_gates,
                         x + t_start * <Py_ssize_t>B * D if x != NULL else NULL,
                         h_states + t_start * BH, W_x,
                         dx + t_start * <Py_ssize_t>B * D if dx != NULL else NULL, dW_x,
                         dW_h, db_acc, weight_beta, a_scratch, scratch_rows,
                         ids + t_start * <Py_ssize_t>B if ids != NULL else NULL)
        weight_beta = 1.0
        t_stop = t_start
        fl_barrier()   # d_gates is reused by the next chunk


def lstm_backward_kernel(x, W_x, W_h, gates, h_states, c_states, dhs, lengths, dh, dc,
                         dh_scratch, d_gates, dx, dW_x, dW_h, db_acc, bint small_m_gemm,
                         bint split_units, int n_threads, ids=None):
    """Backpropagate through lstm_forward_kernel.

    dh, dc (B,H) hold dh_n, dc_n on entry and dh0, dc0 on return. d_gates is scratch of
    (chunk_T, B, 4H); dh_scratch (B,H) is used when lengths is given. dx, dW_x, dW_h are
    overwritten; db_acc (4H,) float64 must be zero and receives db. dhs may be None
    (zeros). ``small_m_gemm`` (float32, where packed_gemm_available()) runs the
    recursion's product on fastlstm's own kernel; ``split_units`` and ``n_threads`` as
    for the forward.

    Projected inputs (``ids`` given; x and dx empty (0, 0, 0) arrays, W_x the table):
    dW_x is the table's gradient (V, 4H), zeroed by the caller, and receives the sum of
    each id's gate gradients.
    """
    cdef int typenum = _float_typenum(gates, "gates")
    cdef bint projected = ids is not None
    cdef int T = <int>_dim(gates, 0), B = <int>_dim(gates, 1)
    cdef int H = <int>_dim(W_h, 0)
    cdef int D = 4 * H if projected else <int>_dim(x, 2)
    cdef int chunk_T = <int>_dim(d_gates, 0)
    cdef char *x_ptr = NULL if projected else _data(x, typenum, 3, False, "x")
    cdef char *dx_ptr = NULL if projected else _data(dx, typenum, 3, True, "dx")
    cdef const int *ids_ptr = <int *>_data_or_null(ids, cnp.NPY_INT, 1, False, "ids")
    cdef const int *lengths_ptr = <int *>_data_or_null(lengths, cnp.NPY_INT, 1, False,
                                                       "lengths")
    cdef char *dhs_ptr = _data_or_null(dhs, typenum, 3, False, "dhs")
    cdef char *W_x_ptr = _data(W_x, typenum, 2, False, "W_x")
    cdef char *W_h_ptr = _data(W_h, typenum, 2, False, "W_h")
    cdef char *gates_ptr = _data(gates, typenum, 3, False, "gates")
    cdef char *h_ptr = _data(h_states, typenum, 3, False, "h_states")
    cdef char *c_ptr = _data(c_states, typenum, 3, False, "c_states")
    cdef char *dh_ptr = _data(dh, typenum, 2, True, "dh")
    cdef char *dc_ptr = _data(dc, typenum, 2, True, "dc")
    cdef char *dh_scratch_ptr = _data(dh_scratch, typenum, 2, True, "dh_scratch")
    cdef char *d_gates_ptr = _data(d_gates, typenum, 3, True, "d_gates")
    cdef char *dW_x_ptr = _data(dW_x, typenum, 2, True, "dW_x")
    cdef char *dW_h_ptr = _data(dW_h, typenum, 2, True, "dW_h")
    cdef double *db_ptr = <double *>_data(db_acc, cnp.NPY_DOUBLE, 1, True, "db_acc")
    cdef bint use_kernel = (small_m_gemm and typenum == cnp.NPY_FLOAT
                            and fl_gemm_packed_available())
    cdef int G = 4 * H
    if not projected:
        _check_dims(x, "x", T, B, D)
        _check_dims(dx, "dx", T, B, D)
    _check_dims(W_h, "W_h", H, G)
    _check_dims(W_x, "W_x", _dim(W_x, 0) if projected else D, G)
    _check_dims(dW_x, "dW_x", _dim(W_x, 0), G)
    _check_dims(dW_h, "dW_h", H, G)
    _check_dims(db_acc, "db_acc", G)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(c_states, "c_states", T + 1, B, H)
    _check_dims(dhs, "dhs", T, B, H)
    _check_dims(dh, "dh", B, H)
    _check_dims(dc, "dc", B, H)
    _check_dims(dh_scratch, "dh_scratch", B, H)
    if chunk_T < 1 or chunk_T > max(T, 1):
        raise ValueError(f"kernel argument d_gates must hold 1 to T={T} steps, got {chunk_T}")
    _check_dims(d_gates, "d_gates", chunk_T, B, G)
    _check_sequence_args(lengths, lengths_ptr, ids, ids_ptr, T, B, <int>_dim(W_x, 0),
                         n_threads)
    if typenum == cnp.NPY_FLOAT:
        _backward_run(use_kernel, split_units, n_threads, T, B, D, H, chunk_T,
                      <float *>x_ptr, <float *>W_x_ptr, <float *>W_h_ptr,
                      <float *>gates_ptr, <float *>h_ptr, <float *>c_ptr, <float *>dhs_ptr,
                      lengths_ptr, <float *>dh_ptr, <float *>dc_ptr,
                      <float *>dh_scratch_ptr, <float *>d_gates_ptr, <float *>dx_ptr,
                      <float *>dW_x_ptr, <float *>dW_h_ptr, db_ptr, ids_ptr)
    else:
        _backward_run(False, split_units, n_threads, T, B, D, H, chunk_T,
                      <double *>x_ptr, <double *>W_x_ptr, <double *>W_h_ptr,
                      <double *>gates_ptr, <double *>h_ptr, <double *>c_ptr,
                      <double *>dhs_ptr, lengths_ptr, <double *>dh_ptr, <double *>dc_ptr,
                      <double *>dh_scratch_ptr, <double *>d_gates_ptr, <double *>dx_ptr,
                      <double *>dW_x_ptr, <double *>dW_h_ptr, db_ptr, ids_ptr)


cdef void _backward_run(bint use_kernel, bint split_units, int n_threads, int T, int B,
                        int D, int H, int chunk_T, const floating *x, const floating *W_x,
                        const floating *W_h, const floating *gates,
                        const floating *h_states, const floating *c_states,
                        const floating *dhs, const int *lengths, floating *dh,
                        floating *dc, floating *dh_scratch, floating *d_gates,
                        floating *dx, floating *dW_x, floating *dW_h, double *db_acc,
                        const int *ids) noexcept:
    cdef float *a_scratch = NULL
    cdef int dx_block_rows = 64   # dx's product runs in blocks of (at least) this many rows
    cdef fl_step_barrier step_barrier
    fl_step_barrier_init(&step_barrier)
    with nogil, parallel(num_threads=n_threads):
        a_scratch = NULL
        if use_kernel:
            a_scratch = <float *>fl_aligned_alloc(
                _scratch_floats(B, split_units, dx_block_rows, 4 * H) * sizeof(float))
        try:
            _backward_worker(threadid(), fl_num_threads(), split_units, T, B, D, H, chunk_T,
                             x, W_x, W_h, gates, h_states, c_states, dhs, lengths, dh, dc,
                             dh_scratch, d_gates, dx, dW_x, dW_h, db_acc, a_scratch,
                             dx_block_rows, ids, &step_barrier)
        finally:
            fl_aligned_free(a_scratch)

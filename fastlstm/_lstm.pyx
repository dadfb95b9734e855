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

from ._blas cimport gemm
from ._kernel_common cimport *

OPENMP_ENABLED = bool(fl_openmp_enabled())
_ISA_NAMES = ("none (BLAS only)", "AVX2+FMA", "AVX-512F")


def packed_gemm_available():
    """True when float32 recursions run on fastlstm's own GEMM kernels (AVX2+FMA or
    AVX-512 CPUs); BLAS does the products otherwise."""
    return bool(fl_gemm_packed_available())


cdef int _isa_level = fl_gemm_limit_isa(2)   # at import: the best the CPU has


def gemm_isa():
    """Which of fastlstm's own GEMM kernels run here."""
    return _ISA_NAMES[_isa_level]


def limit_gemm_isa(int level):
    """Use at most kernel level ``level`` (0 BLAS only, 1 AVX2, 2 AVX-512), never more
    than the CPU has; returns the level now in use. For tests and benchmarks."""
    global _isa_level
    _isa_level = fl_gemm_limit_isa(level)
    return _isa_level
# Hidden units are shared out between threads in whole panels of this many.
UNIT_BLOCK = FL_NR
# ... or, where the weights are read in place, in whole cache lines of float32 units.
DEF UNIT_ALIGN = 16


def packed_size(int H, bint split_units):
    """Floats needed for the packed recurrent weights W_h (H x 4H) in either layout."""
    if split_units:   # each gate block packed on its own, so units split on panel edges
        return 4 * fl_packed_size(H, H)
    return fl_packed_size(H, 4 * H)


def openmp_max_threads():
    """What ``omp_get_max_threads()`` says (1 without OpenMP)."""
    return fl_max_threads()


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
            fl_gemm_nt_f32(M, N, K, d_gates, ldd, W_h, ldw, dh, ldh, 0, NULL)
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
                          fl_step_barrier *step_barrier) noexcept nogil:
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


def lstm_forward_kernel(const floating[:, :, ::1] x, const floating[:, ::1] W_x,
                        const floating[:, ::1] W_h, const floating[::1] b,
                        floating[:, :, ::1] gates, floating[:, :, ::1] h_states,
                        floating[:, :, ::1] c_states, floating[:, :, ::1] hs,
                        const int[::1] lengths, float[::1] packed, bint split_units,
                        int n_threads, const int[::1] ids=None):
    """Fill gates (T,B,4H), h_states and c_states (T+1,B,H; index 0 preset to h0, c0)
    and hs (T,B,H).

    ``packed`` (float32 only: packed_size(H, split_units) floats, or None) turns on the
    packed recurrent GEMM. ``split_units`` picks the recursion's partitioning (see the
    module docstring); ``n_threads`` is taken as given (the caller caps it).

    Projected inputs: with ``ids`` (T*B,), W_x is a table (V, 4H) and step t of
    sequence b takes ``W_x[ids[t*B + b]]`` in place of ``x[t, b] @ W_x`` (x is then an
    empty (0, 0, 0) array of the dtype): an embedding or one-hot layer folded into the
    projection.
    """
    cdef int T = gates.shape[0], B = gates.shape[1], H = W_h.shape[0]
    cdef bint projected = ids is not None
    cdef int D = 0 if projected else x.shape[2]
    cdef const floating *x_ptr = NULL if projected else &x[0, 0, 0]
    cdef const floating *table_ptr = &W_x[0, 0] if projected else NULL
    cdef const int *ids_ptr = &ids[0] if projected else NULL
    cdef const int *lengths_ptr = &lengths[0] if lengths is not None else NULL
    cdef float *packed_ptr = NULL
    cdef float *a_scratch = NULL
    cdef fl_step_barrier step_barrier
    fl_step_barrier_init(&step_barrier)
    if packed is not None and fl_gemm_packed_available():
        packed_ptr = &packed[0]
    with nogil, parallel(num_threads=n_threads):
        a_scratch = NULL
        if packed_ptr != NULL:
            a_scratch = <float *>fl_aligned_alloc(_scratch_floats(B, split_units, 1, H)
                                                  * sizeof(float))
        try:
            _forward_worker(threadid(), fl_num_threads(), split_units, T, B, D, H,
                            x_ptr, &W_x[0, 0], &W_h[0, 0], &b[0], &gates[0, 0, 0],
                            &h_states[0, 0, 0], &c_states[0, 0, 0], &hs[0, 0, 0],
                            lengths_ptr, packed_ptr, a_scratch, table_ptr, ids_ptr,
                            &step_barrier)
        finally:
            fl_aligned_free(a_scratch)


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


def lstm_backward_kernel(const floating[:, :, ::1] x, const floating[:, ::1] W_x,
                         const floating[:, ::1] W_h, const floating[:, :, ::1] gates,
                         const floating[:, :, ::1] h_states,
                         const floating[:, :, ::1] c_states, const floating[:, :, ::1] dhs,
                         const int[::1] lengths, floating[:, ::1] dh, floating[:, ::1] dc,
                         floating[:, ::1] dh_scratch, floating[:, :, ::1] d_gates,
                         floating[:, :, ::1] dx, floating[:, ::1] dW_x,
                         floating[:, ::1] dW_h, double[::1] db_acc, bint small_m_gemm,
                         bint split_units, int n_threads, const int[::1] ids=None):
    """Backpropagate through lstm_forward_kernel.

    dh, dc (B,H) hold dh_n, dc_n on entry and dh0, dc0 on return. d_gates is scratch of
    (chunk_T, B, 4H); dh_scratch (B,H) is used when lengths is given. dx, dW_x, dW_h are
    overwritten; db_acc (4H,) float64 must be zero and receives db. ``small_m_gemm``
    (float32, where packed_gemm_available()) runs the recursion's product on fastlstm's own
    kernel; ``split_units`` and ``n_threads`` as for the forward.

    Projected inputs (``ids`` given; x and dx empty (0, 0, 0) arrays, W_x the table):
    dW_x is the table's gradient (V, 4H), zeroed by the caller, and receives the sum of
    each id's gate gradients.
    """
    cdef int T = gates.shape[0], B = gates.shape[1], H = W_h.shape[0]
    cdef bint projected = ids is not None
    cdef int D = 4 * H if projected else x.shape[2]
    cdef const floating *x_ptr = NULL if projected else &x[0, 0, 0]
    cdef floating *dx_ptr = NULL if projected else &dx[0, 0, 0]
    cdef const int *ids_ptr = &ids[0] if projected else NULL
    cdef int chunk_T = d_gates.shape[0]
    cdef const int *lengths_ptr = &lengths[0] if lengths is not None else NULL
    cdef const floating *dhs_ptr = &dhs[0, 0, 0] if dhs is not None else NULL
    cdef float *a_scratch = NULL
    cdef bint use_kernel = small_m_gemm and floating is float and fl_gemm_packed_available()
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
                             x_ptr, &W_x[0, 0], &W_h[0, 0], &gates[0, 0, 0],
                             &h_states[0, 0, 0], &c_states[0, 0, 0], dhs_ptr, lengths_ptr,
                             &dh[0, 0], &dc[0, 0], &dh_scratch[0, 0], &d_gates[0, 0, 0],
                             dx_ptr, &dW_x[0, 0], &dW_h[0, 0], &db_acc[0], a_scratch,
                             dx_block_rows, ids_ptr, &step_barrier)
        finally:
            fl_aligned_free(a_scratch)

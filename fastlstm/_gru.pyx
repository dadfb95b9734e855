# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled GRU forward and backward, float32 and float64 through one fused type.

PyTorch's GRU, gate blocks r, z, n (see fastlstm.reference and csrc/fastlstm_gru.h):
``n = tanh(a_xn + r * (h W_hn + b_hn))`` keeps the recurrent product of the n block
apart from the input one, so unlike the LSTM the step product cannot be added onto the
input projection: each thread writes ``h_{t-1} W_h`` for its rows (or units) into a small
scratch of its own, reused every step, and the cell adds it, b_h and the projection.

As for the LSTM (see _lstm.pyx): one OpenMP region per call; the input projection
``x W_x + b_x`` (written into the gate rows, which the cell then overwrites with the
activated gates) and the weight/input gradients as GEMMs over many (step, sequence) rows;
the recursion shared out by batch slices, or for small batches of wide layers by hidden
units (one barrier per step); BLAS single-threaded inside the region; float32 step
products on fastlstm's own kernels (csrc/fastlstm_gemm.h) where the CPU has them.

The backward keeps, per chunk of steps, the gradients w.r.t. both pre-activations,
``d_gx`` (w.r.t. x W_x + b_x) and ``d_gh`` (w.r.t. h W_h + b_h), equal but for the n
block (``d_gh_n = d_gx_n * r``); per step ``dh_{t-1} = dh_t * z + d_gh W_h^T``, and per
chunk dx, dW_x, db_x from d_gx and dW_h, db_h from d_gh. dh lives in two (B, H) buffers
used in turn (the product of a step is added to the direct path ``dh * z``). As in the
LSTM's backward, the float32 step product runs on the packed GEMM over W_h^T packed once
per call when the call is long enough (``set_backward_pack_min_step_rows``), else on the
NT kernel over W_h in place.

A lookup (``gru_forward_lookup_kernel`` / ``gru_backward_lookup_kernel``) takes ids and a
table of projected inputs (rows of x W_x, without b_x) in place of x and W_x: each step's
projection is the table row of its id plus b_x, and the backward gathers d_gx by id into
the table's gradient instead of computing dx and dW_x.
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.string cimport memcpy

cimport numpy as cnp

from ._blas cimport gemm
from ._kernel_common cimport *
from ._runtime cimport fl_isa_bind, isa_level_for
from ._runtime import set_backward_pack_min_step_rows   # (a knob of this module's too)

cdef extern from "fastlstm_gru.h" nogil:
    void fl_gru_cell_forward_f32(int n_rows, int H, int u0, int nu, const float *gh,
                                 const float *b_h, float *gates, const float *h_prev,
                                 float *h_next, float *hs, const int *lengths, int t)
    void fl_gru_cell_forward_f64(int n_rows, int H, int u0, int nu, const double *gh,
                                 const double *b_h, double *gates, const double *h_prev,
                                 double *h_next, double *hs, const int *lengths, int t)
    void fl_gru_cell_backward_f32(int n_rows, int H, int u0, int nu, const float *gates,
                                  const float *h_prev, const float *dhs, const float *dh,
                                  float *dh_prev, float *d_gx, float *d_gh,
                                  const int *lengths, int t)
    void fl_gru_cell_backward_f64(int n_rows, int H, int u0, int nu, const double *gates,
                                  const double *h_prev, const double *dhs, const double *dh,
                                  double *dh_prev, double *d_gx, double *d_gh,
                                  const int *lengths, int t)
    void fl_gru_add_f32(int n, const float *v, float *y)
    void fl_gru_add_f64(int n, const double *v, double *y)

cnp.import_array()
fl_isa_bind(isa_level_for(__name__))   # every kernel here runs at the process's one level

# Hidden units are shared out between threads in whole panels of this many (packed
# weights), or in whole cache lines of float32 units (weights read in place).
UNIT_BLOCK = FL_NR
cdef enum:
    UNIT_ALIGN = 16


def packed_size(int H, bint split_units):
    """Floats needed for the packed recurrent weights W_h (H x 3H) in either layout."""
    if split_units:   # each gate block packed on its own, so units split on panel edges
        return 3 * fl_packed_size(H, H)
    return fl_packed_size(H, 3 * H)


cdef inline void _cell_forward(int n_rows, int H, int u0, int nu, const floating *gh,
                               const floating *b_h, floating *gates, const floating *h_prev,
                               floating *h_next, floating *hs, const int *lengths,
                               int t) noexcept nogil:
    if floating is float:
        fl_gru_cell_forward_f32(n_rows, H, u0, nu, gh, b_h, gates, h_prev, h_next, hs,
                                lengths, t)
    else:
        fl_gru_cell_forward_f64(n_rows, H, u0, nu, gh, b_h, gates, h_prev, h_next, hs,
                                lengths, t)


cdef inline void _cell_backward(int n_rows, int H, int u0, int nu, const floating *gates,
                                const floating *h_prev, const floating *dhs,
                                const floating *dh, floating *dh_prev, floating *d_gx,
                                floating *d_gh, const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_gru_cell_backward_f32(n_rows, H, u0, nu, gates, h_prev, dhs, dh, dh_prev, d_gx,
                                 d_gh, lengths, t)
    else:
        fl_gru_cell_backward_f64(n_rows, H, u0, nu, gates, h_prev, dhs, dh, dh_prev, d_gx,
                                 d_gh, lengths, t)


cdef inline void _forward_step_gemm(int M, int N, int K, const floating *h, int ldh,
                                    const floating *W_h, int ldw, const float *packed,
                                    floating *out, int ldo, float *a_scratch,
                                    bint h_already_packed) noexcept nogil:
    """out (M x N) = h (M x K) @ W_h (K x N columns), overwritten: float32 as a GEMV for
    one row, through the pre-packed weights when the caller packed them, BLAS otherwise.
    ``h_already_packed``: the previous call packed this same h into a_scratch."""
    if floating is float:
        if M == 1 and fl_gemm_packed_available():   # one sequence: a GEMV, W_h in place
            fl_gemv_f32(K, N, h, W_h, ldw, out, 0)
            return
        if packed != NULL and a_scratch != NULL:
            fl_gemm_packed_f32(M, N, K, NULL if h_already_packed else h, ldh, packed, out,
                               ldo, 0, a_scratch)
            return
    gemm(False, False, M, N, K, <floating>1.0, h, ldh, W_h, ldw, <floating>0.0, out, ldo)


cdef inline void _backward_step_gemm(int M, int N, int K, const floating *d_gh, int ldd,
                                     const floating *W_h, int ldw, floating *dh, int ldh,
                                     floating *row_tmp, float *a_scratch) noexcept nogil:
    """dh (M x N) += d_gh (M x K) @ W_h^T (the rows of W_h are the N outputs): float32 as
    dot products for one row (into row_tmp, then added), the NT kernel where it pays,
    BLAS otherwise."""
    if floating is float:
        if M == 1 and row_tmp != NULL and fl_gemm_packed_available():
            fl_dots_f32(N, K, d_gh, W_h, ldw, row_tmp)
            fl_gru_add_f32(N, row_tmp, dh)
            return
        if a_scratch != NULL and _nt_pays(K):
            fl_gemm_nt_f32(M, N, K, d_gh, ldd, W_h, ldw, dh, ldh, 1, a_scratch)
            return
    gemm(False, True, M, N, K, <floating>1.0, d_gh, ldd, W_h, ldw, <floating>1.0, dh, ldh)


# --- one call's arrays --------------------------------------------------------------
# As in _lstm.pyx: an entry point checks its arrays and gathers them, with the sizes, in
# one struct of untyped pointers; each fused function casts them once, to the
# specialisation its ``dtype_tag`` (a zero of the call's float type) selects. Arrays
# are C-contiguous, of the call's float dtype unless said otherwise.

cdef struct _Forward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step (0 for a lookup)
    int H                   # hidden units; 3H gate columns
    bint split_units        # the recursion shared out by hidden units, not batch rows
    int n_threads
    const void *x           # (T, B, D), or NULL for a lookup
    const void *W_x         # (D, 3H), or NULL for a lookup
    const int *ids          # (T*B,) intc: step t of sequence b reads table row
                            # ids[t*B + b]; NULL unless a lookup
    const void *table       # (V, 3H) projected inputs (x W_x), for a lookup; else NULL
    const void *W_h         # (H, 3H)
    const void *b_x         # (3H,)
    const void *b_h         # (3H,)
    void *gates             # (T, B, 4H) out: r, z, n, a_hn = h_{t-1} W_hn + b_hn (first
                            # x W_x + b_x in columns [0, 3H))
    void *h_states          # (T+1, B, H) in: [0] = h0; out: [t+1] = state after step t
    void *hs                # (T, B, H) out: outputs, 0 past a sequence's length
    const int *lengths      # (B,) intc, or NULL: every sequence runs T steps
    float *packed           # packed_size(H, split_units) floats for the packed float32
                            # recursion, or NULL: GEMV (one row) or BLAS
    fl_step_barrier *step_barrier   # the unit split's per-step barrier


cdef void _forward_worker(const _Forward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                          float *a_scratch, floating *gh) noexcept nogil:
    """``gh``: this thread's (rows, 3H) scratch for the step product h_{t-1} W_h, rows its
    share of the batch (all B rows in a unit split)."""
    cdef int T = a.T, B = a.B, D = a.D, H = a.H
    cdef bint split_units = a.split_units
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *b_x = <const floating *>a.b_x
    cdef const floating *b_h = <const floating *>a.b_h
    cdef floating *gates = <floating *>a.gates
    cdef floating *h_states = <floating *>a.h_states
    cdef floating *hs = <floating *>a.hs
    cdef const int *lengths = a.lengths
    cdef float *packed = a.packed
    cdef Py_ssize_t G3 = 3 * H, G4 = 4 * H, BH = <Py_ssize_t>B * H
    cdef Py_ssize_t r, r0, r1, p0, p1, b0, b1, u0 = 0, u1 = 0, nb, nu = 0, t, at, gate
    cdef Py_ssize_t block = 0, j
    cdef float *packed_gate = NULL
    cdef const floating *table = <const floating *>a.table
    cdef const floating *table_row
    cdef floating *gate_row

    # 1. The input projection of every step, x W_x + b_x (for a lookup, the table row of
    #    each step's id + b_x), into columns [0, 3H) of the gate rows, a block of rows per
    #    thread; meanwhile this thread's share of W_h is packed (float32 kernels only).
    _split(<Py_ssize_t>T * B, tid, n_threads, &r0, &r1)
    if a.ids != NULL:
        for r in range(r0, r1):
            table_row = table + <Py_ssize_t>a.ids[r] * G3
            gate_row = gates + r * G4
            for j in range(G3):
                gate_row[j] = b_x[j] + table_row[j]
    else:
        for r in range(r0, r1):
            memcpy(gates + r * G4, b_x, G3 * sizeof(floating))
        gemm(False, False, <int>(r1 - r0), <int>G3, D, <floating>1.0,
             <const floating *>a.x + r0 * D, D, <const floating *>a.W_x, <int>G3,
             <floating>1.0, gates + r0 * G4, <int>G4)
    if split_units:
        _split_aligned(H, FL_NR if packed != NULL else UNIT_ALIGN, tid, n_threads, &u0, &u1)
        nu = u1 - u0
        block = fl_packed_size(H, H)
        if floating is float:
            if packed != NULL:
                for gate in range(3):
                    fl_pack_panels_f32(H, H, W_h + gate * H, <int>G3, 0, packed + gate * block,
                                       <int>(u0 // FL_NR), <int>((u1 + FL_NR - 1) // FL_NR))
    else:
        if floating is float:
            if packed != NULL:
                _split((G3 + FL_NR - 1) // FL_NR, tid, n_threads, &p0, &p1)
                fl_pack_panels_f32(H, <int>G3, W_h, <int>G3, 0, packed, <int>p0, <int>p1)
    fl_barrier()

    # 2. The recursion.
    if split_units:
        for t in range(T):
            if nu > 0:
                for gate in range(3):
                    if floating is float:
                        if packed != NULL:
                            packed_gate = packed + gate * block + (u0 // FL_NR) * FL_NR * H
                    # h_{t-1} is packed for the kernel by the first gate's call only
                    _forward_step_gemm(B, <int>nu, H, h_states + t * BH, H,
                                       W_h + gate * H + u0, <int>G3, packed_gate,
                                       gh + gate * H + u0, <int>G3, a_scratch, gate > 0)
                _cell_forward(B, H, <int>u0, <int>nu, gh, b_h,
                              gates + t * B * G4, h_states + t * BH, h_states + (t + 1) * BH,
                              hs + t * BH, lengths, <int>t)
            fl_step_barrier_wait(a.step_barrier, <int>n_threads)   # h_t is whole before use
        return

    _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    if nb == 0:
        return
    for t in range(T):
        at = t * B + b0
        _forward_step_gemm(<int>nb, <int>G3, H, h_states + at * H, H, W_h, <int>G3, packed,
                           gh, <int>G3, a_scratch, False)
        _cell_forward(<int>nb, H, 0, H, gh, b_h, gates + at * G4,
                      h_states + at * H, h_states + (at + B) * H, hs + at * H,
                      lengths + b0 if lengths != NULL else NULL, <int>t)


def gru_forward_kernel(x, W_x, W_h, b_x, b_h, gates, h_states, hs, lengths, packed,
                       bint split_units, int n_threads):
    """Fill gates (T,B,4H), h_states (T+1,B,H; index 0 preset to h0) and hs (T,B,H).
    All arrays C-contiguous of one float dtype; lengths (B,) intc or None. ``packed``
    (float32 only: packed_size(H, split_units) floats, or None) turns on the packed
    recurrent GEMM; ``split_units`` shares the recursion out by hidden units instead of
    batch rows; ``n_threads`` is taken as given (the caller caps it)."""
    cdef _Forward a
    _forward_run(&a, _forward_call(&a, x, W_x, W_h, b_x, b_h, gates, h_states, hs, lengths,
                                   packed, split_units, n_threads))


cdef int _forward_call(_Forward *a, x, W_x, W_h, b_x, b_h, gates, h_states, hs, lengths,
                       packed, bint split_units, int n_threads) except -1:
    """gru_forward_kernel's arguments, checked, into ``a``; returns the float type."""
    cdef int typenum = _forward_arrays(a, W_h, b_x, b_h, gates, h_states, hs, lengths,
                                       packed, split_units, n_threads)
    a.x = _data(x, typenum, 3, False, "x")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.T = <int>_dim(x, 0)   # (the inputs set the sizes; the outputs are checked on them)
    a.B = <int>_dim(x, 1)
    a.D = <int>_dim(x, 2)
    a.ids = NULL
    a.table = NULL
    _check_forward_dims(a, W_h, b_x, b_h, gates, h_states, hs, lengths, packed)
    _check_dims(W_x, "W_x", a.D, 3 * a.H)
    return typenum


def gru_forward_pair_kernel(tuple first, tuple second):
    """Two gru_forward_kernel calls, each given as the tuple of its arguments, in one
    parallel region of two threads, one call per thread: the two directions of a
    bidirectional layer, at once. Each call must be planned for one thread
    (``n_threads`` 1, no unit split) and both must have the same T, B, H and dtype (each
    thread passes the same barriers)."""
    cdef _Forward a[2]
    cdef fl_step_barrier step_barrier[2]
    cdef int typenum = 0, k, k_type, alloc_failed
    for k, call in enumerate((first, second)):
        if len(call) != 12:
            raise TypeError(f"a call of gru_forward_pair_kernel has 12 arguments, got "
                            f"{len(call)}")
        k_type = _forward_call(&a[k], call[0], call[1], call[2], call[3], call[4], call[5],
                               call[6], call[7], call[8], call[9], call[10], call[11])
        if k == 0:
            typenum = k_type
        _check_pair_call(typenum, k_type, a[0].T, a[k].T, a[0].B, a[k].B, a[0].H, a[k].H,
                         a[k].n_threads, a[k].split_units)
    for k in range(2):
        if typenum != cnp.NPY_FLOAT or not fl_gemm_packed_available():
            a[k].packed = NULL
        fl_step_barrier_init(&step_barrier[k])
        a[k].step_barrier = &step_barrier[k]
    if typenum == cnp.NPY_FLOAT:
        alloc_failed = _forward_pair_parallel(a, <float *>NULL)
    else:
        alloc_failed = _forward_pair_parallel(a, <double *>NULL)
    if alloc_failed:
        raise MemoryError(f"no memory for the step products' scratch (rows x 3H="
                          f"{3 * a[0].H})")


cdef int _forward_pair_parallel(const _Forward *a, floating *gh) noexcept:
    """_forward_parallel for a pair: each thread runs a whole call, every row of it."""
    cdef float *a_scratch = NULL
    cdef int alloc_failed[1]
    alloc_failed[0] = 0
    with nogil, parallel(num_threads=2):
        a_scratch = _thread_scratch(a[0].packed != NULL or a[1].packed != NULL, a[0].B,
                                    True, 1, a[0].H)
        gh = <floating *>fl_aligned_alloc(<size_t>a[0].B * 3 * a[0].H * sizeof(floating))
        if gh == NULL:
            alloc_failed[0] = 1
        fl_barrier()   # every thread sees whether every allocation succeeded
        try:
            if not alloc_failed[0]:
                if fl_num_threads() == 1:   # one thread granted: one call after the other
                    _forward_worker(&a[0], 0, 1, a_scratch, gh)
                    _forward_worker(&a[1], 0, 1, a_scratch, gh)
                else:
                    _forward_worker(&a[threadid()], 0, 1, a_scratch, gh)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(gh)
    return alloc_failed[0]


def gru_forward_lookup_kernel(ids, table, W_h, b_x, b_h, gates, h_states, hs, lengths,
                              packed, bint split_units, int n_threads):
    """gru_forward_kernel with each step's input projection looked up: step t of
    sequence b takes row ``ids[t*B + b]`` of ``table`` (V, 3H) where the other takes
    ``x[t, b] @ W_x``. ``ids`` (T*B,) intc in [0, V); the rest as there."""
    cdef _Forward a
    cdef int typenum = _forward_arrays(&a, W_h, b_x, b_h, gates, h_states, hs, lengths,
                                       packed, split_units, n_threads)
    a.D = 0
    a.x = NULL
    a.W_x = NULL
    a.ids = <const int *>_data(ids, cnp.NPY_INT, 1, False, "ids")
    a.table = _data(table, typenum, 2, False, "table")
    _check_forward_dims(&a, W_h, b_x, b_h, gates, h_states, hs, lengths, packed)
    _check_dims(table, "table", _dim(table, 0), 3 * a.H)
    _check_ids(ids, a.ids, a.T, a.B, <int>_dim(table, 0))
    _forward_run(&a, typenum)


cdef int _forward_arrays(_Forward *a, W_h, b_x, b_h, gates, h_states, hs, lengths, packed,
                         bint split_units, int n_threads) except -1:
    """The arrays both forward entry points take: data pointers and sizes into ``a``
    (not yet checked against each other); returns the call's float type number."""
    cdef int typenum = _float_typenum(gates, "gates")
    a.gates = _data(gates, typenum, 3, True, "gates")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.b_x = _data(b_x, typenum, 1, False, "b_x")
    a.b_h = _data(b_h, typenum, 1, False, "b_h")
    a.h_states = _data(h_states, typenum, 3, True, "h_states")
    a.hs = _data(hs, typenum, 3, True, "hs")
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.packed = <float *>_data_or_null(packed, cnp.NPY_FLOAT, 1, True, "packed")
    a.T = <int>_dim(gates, 0)
    a.B = <int>_dim(gates, 1)
    a.H = <int>_dim(W_h, 0)
    a.split_units = split_units
    a.n_threads = n_threads
    return typenum


cdef int _check_forward_dims(const _Forward *a, W_h, b_x, b_h, gates, h_states, hs,
                             lengths, packed) except -1:
    cdef int T = a.T, B = a.B, H = a.H
    _check_dims(W_h, "W_h", H, 3 * H)   # (H comes from W_h: its own shape first)
    _check_dims(b_x, "b_x", 3 * H)
    _check_dims(b_h, "b_h", 3 * H)
    _check_dims(gates, "gates", T, B, 4 * H)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(hs, "hs", T, B, H)
    _check_sequence_args(lengths, a.lengths, T, B, a.n_threads)
    if a.packed != NULL and _dim(packed, 0) < <cnp.npy_intp>packed_size(H, a.split_units):
        raise ValueError(f"kernel argument packed has {_dim(packed, 0)} floats, fewer than "
                         f"packed_size(H, split_units) = {packed_size(H, a.split_units)}")
    return 0


cdef int _forward_run(_Forward *a, int typenum) except -1:
    cdef fl_step_barrier step_barrier
    cdef int alloc_failed
    if typenum != cnp.NPY_FLOAT or not fl_gemm_packed_available():
        a.packed = NULL
    fl_step_barrier_init(&step_barrier)
    a.step_barrier = &step_barrier
    if typenum == cnp.NPY_FLOAT:
        alloc_failed = _forward_parallel(a, <float *>NULL)
    else:
        alloc_failed = _forward_parallel(a, <double *>NULL)
    if alloc_failed:
        raise MemoryError(f"no memory for the step products' scratch (rows x 3H="
                          f"{3 * a.H})")
    return 0


cdef int _forward_parallel(const _Forward *a, floating *gh) noexcept:
    """Returns 1 if a thread's scratch could not be allocated (nothing ran). (``gh``
    comes in NULL, of the call's float type: each thread allocates its own.)"""
    cdef float *a_scratch = NULL
    cdef int rows
    cdef int alloc_failed[1]
    alloc_failed[0] = 0
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _thread_scratch(a.packed != NULL, a.B, a.split_units, 1, a.H)
        rows = a.B if a.split_units else (a.B + fl_num_threads() - 1) // fl_num_threads()
        gh = <floating *>fl_aligned_alloc(<size_t>rows * 3 * a.H * sizeof(floating))
        if gh == NULL:
            alloc_failed[0] = 1
        fl_barrier()   # every thread sees whether every allocation succeeded
        try:
            if not alloc_failed[0]:
                _forward_worker(a, threadid(), fl_num_threads(), a_scratch, gh)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(gh)
    return alloc_failed[0]


cdef struct _Backward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step (0 for a lookup)
    int H                   # hidden units; 3H gate columns
    int chunk_T             # steps per chunk of d_gx, d_gh
    bint split_units        # the recursion shared out by hidden units, not batch rows
    bint use_kernel         # float32 step products on fastlstm's own kernels
    int n_threads
    const void *x           # (T, B, D), or NULL for a lookup
    const void *W_x         # (D, 3H), or NULL for a lookup
    const int *ids          # (T*B,) intc table rows of the steps, for a lookup; else NULL
    const void *W_h         # (H, 3H)
    const void *gates       # (T, B, 4H) the forward's r, z, n, a_hn
    const void *h_states    # (T+1, B, H) the forward's states
    const void *dhs         # (T, B, H) output gradients, or NULL (zeros)
    const int *lengths      # (B,) intc, or NULL
    void *dh                # (B, H) in: dh_n; out: dh0
    void *dh_scratch        # (B, H) scratch: dh's other buffer
    void *d_gx              # (chunk_T, B, 3H) scratch: one chunk's d(x W_x + b_x)
    void *d_gh              # (chunk_T, B, 3H) scratch: one chunk's d(h W_h + b_h)
    void *dx                # (T, B, D) out, or NULL for a lookup
    void *dW_x              # (D, 3H) out, or NULL for a lookup
    void *d_table           # (V, 3H) for a lookup, zero on entry; out: the table's
                            # gradient (the sum of each id's d_gx rows); else NULL
    void *dW_h              # (H, 3H) out
    double *db_x_acc        # (3H,) float64, zero on entry; out: db_x
    double *db_h_acc        # (3H,) float64, zero on entry; out: db_h
    int scratch_rows        # rows of dx's product per a_scratch block
    float *packed_t         # W_h^T packed for the step products (float32 kernels), laid
                            # out as in _lstm.pyx (3H * (H + FL_NR * n_threads) floats),
                            # or NULL (the NT kernel, or BLAS)
    fl_step_barrier *step_barrier   # the unit split's per-step barrier


cdef inline void _chunk_gradients_gru(Py_ssize_t tid, Py_ssize_t n_threads, Py_ssize_t rows,
                                      int D, int H, const floating *d_gx,
                                      const floating *d_gh, const floating *x,
                                      const floating *h_prev, const floating *W_x,
                                      floating *dx, floating *dW_x, floating *dW_h,
                                      double *db_x_acc, double *db_h_acc,
                                      floating weight_beta, float *a_scratch,
                                      int scratch_rows) noexcept nogil:
    """The weight and input gradients of ``rows`` (step, sequence) rows at once:
    dx = d_gx W_x^T (shared out by rows); dW_x (+)= x^T d_gx, db_x += d_gx's column sums,
    dW_h (+)= h_prev^T d_gh, db_h += d_gh's column sums (shared out by columns)."""
    cdef int N = 3 * H
    cdef Py_ssize_t r, r0, r1, c0, c1, m
    _split(rows, tid, n_threads, &r0, &r1)
    # W_x (D x 3H) read in place by the NT kernel rather than repacked by BLAS per chunk
    if floating is float and a_scratch != NULL and _nt_pays(N):
        r = r0
        while r < r1:
            m = min(<Py_ssize_t>scratch_rows, r1 - r)
            fl_gemm_nt_f32(<int>m, D, N, d_gx + r * N, N, W_x, N, dx + r * D, D, 0,
                           a_scratch)
            r += m
    else:
        gemm(False, True, <int>(r1 - r0), D, N, <floating>1.0, d_gx + r0 * N, N, W_x, N,
             <floating>0.0, dx + r0 * D, D)
    _split_aligned(N, 16, tid, n_threads, &c0, &c1)
    if c1 > c0:
        gemm(True, False, D, <int>(c1 - c0), <int>rows, <floating>1.0, x, D, d_gx + c0, N,
             weight_beta, dW_x + c0, N)
        _add_column_sums(<int>rows, <int>(c1 - c0), d_gx + c0, N, db_x_acc + c0)
        _recurrent_gradients(c0, c1, rows, N, H, d_gh, h_prev, dW_h, db_h_acc, weight_beta)


cdef inline void _chunk_lookup_gradients_gru(Py_ssize_t tid, Py_ssize_t n_threads,
                                             Py_ssize_t rows, int H, const floating *d_gx,
                                             const floating *d_gh, const int *ids,
                                             const floating *h_prev, floating *d_table,
                                             floating *dW_h, double *db_x_acc,
                                             double *db_h_acc,
                                             floating weight_beta) noexcept nogil:
    """_chunk_gradients_gru for inputs looked up by ``ids``: no dx, and the table's
    gradient gathers d_gx's rows by id. Each thread owns a band of columns, so repeated
    ids never race."""
    cdef int N = 3 * H
    cdef Py_ssize_t r, c0, c1, c
    cdef floating *table_row
    cdef const floating *d_row
    _split_aligned(N, 16, tid, n_threads, &c0, &c1)
    if c1 > c0:
        for r in range(rows):
            table_row = d_table + <Py_ssize_t>ids[r] * N
            d_row = d_gx + r * N
            for c in range(c0, c1):
                table_row[c] += d_row[c]
        _add_column_sums(<int>rows, <int>(c1 - c0), d_gx + c0, N, db_x_acc + c0)
        _recurrent_gradients(c0, c1, rows, N, H, d_gh, h_prev, dW_h, db_h_acc, weight_beta)


cdef void _backward_worker(const _Backward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                           float *a_scratch, floating *row_tmp) noexcept nogil:
    """``row_tmp``: H floats of this thread's, for the single-row step product."""
    cdef int T = a.T, B = a.B, D = a.D, H = a.H, chunk_T = a.chunk_T
    cdef bint split_units = a.split_units
    cdef const floating *x = <const floating *>a.x
    cdef const floating *W_x = <const floating *>a.W_x
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *gates = <const floating *>a.gates
    cdef const floating *h_states = <const floating *>a.h_states
    cdef const floating *dhs = <const floating *>a.dhs
    cdef const int *lengths = a.lengths
    cdef floating *dh = <floating *>a.dh
    cdef floating *d_gx = <floating *>a.d_gx
    cdef floating *d_gh = <floating *>a.d_gh
    cdef floating *dx = <floating *>a.dx
    cdef floating *dW_x = <floating *>a.dW_x
    cdef floating *dW_h = <floating *>a.dW_h
    # dh_t comes in through dh_cur; the cell writes dh_t * z to dh_prev, the step product
    # adds d_gh W_h^T to it, and the two swap roles for the next step.
    cdef floating *dh_cur = dh
    cdef floating *dh_prev = <floating *>a.dh_scratch
    cdef floating *swap
    cdef Py_ssize_t G3 = 3 * H, G4 = 4 * H, BH = <Py_ssize_t>B * H
    cdef Py_ssize_t b0 = 0, b1 = B, u0 = 0, u1 = H, nb, nu, t, at, dt, rows, first, r
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
            panels = _pack_step_transpose(a.packed_t, W_h, <int>G3, H, u0, nu,
                                          split_units, tid, n_threads)

    while t_stop > 0:
        t_start = max(0, t_stop - chunk_T)
        for t in range(t_stop - 1, t_start - 1, -1):
            at = t * B + b0
            dt = (t - t_start) * <Py_ssize_t>B + b0
            if nb > 0 and nu > 0:
                _cell_backward(<int>nb, H, <int>u0, <int>nu, gates + at * G4,
                               h_states + at * H, dhs + at * H if dhs != NULL else NULL,
                               dh_cur + b0 * H, dh_prev + b0 * H, d_gx + dt * G3,
                               d_gh + dt * G3, slice_lengths, <int>t)
            if split_units:
                fl_step_barrier_wait(a.step_barrier, <int>n_threads)   # d_gh_t is whole
            if nb > 0 and nu > 0:
                # (frozen rows have d_gh = 0: the product leaves their dh as it is)
                if floating is float:
                    if panels != NULL:
                        fl_gemm_packed_f32(<int>nb, <int>nu, <int>G3, d_gh + dt * G3,
                                           <int>G3, panels, dh_prev + b0 * H + u0, H, 1,
                                           a_scratch)
                if panels == NULL:
                    _backward_step_gemm(<int>nb, <int>nu, <int>G3, d_gh + dt * G3, <int>G3,
                                        W_h + u0 * G3, <int>G3, dh_prev + b0 * H + u0, H,
                                        row_tmp, a_scratch)
            swap = dh_cur
            dh_cur = dh_prev
            dh_prev = swap
        fl_barrier()

        rows = (t_stop - t_start) * <Py_ssize_t>B
        first = t_start * <Py_ssize_t>B   # the chunk's first (step, sequence) row
        if a.ids != NULL:
            _chunk_lookup_gradients_gru(tid, n_threads, rows, H, d_gx, d_gh, a.ids + first,
                                        h_states + t_start * BH, <floating *>a.d_table, dW_h,
                                        a.db_x_acc, a.db_h_acc, weight_beta)
        else:
            _chunk_gradients_gru(tid, n_threads, rows, D, H, d_gx, d_gh, x + first * D,
                                 h_states + t_start * BH, W_x, dx + first * D, dW_x, dW_h,
                                 a.db_x_acc, a.db_h_acc, weight_beta, a_scratch,
                                 a.scratch_rows)
        weight_beta = 1.0
        t_stop = t_start
        fl_barrier()   # d_gx, d_gh are reused by the next chunk

    # dh0 of this thread's rows and units sits in dh_cur; the caller reads dh.
    if dh_cur != dh and nu > 0:
        for r in range(b0, b1):
            memcpy(dh + r * H + u0, dh_cur + r * H + u0, nu * sizeof(floating))


def gru_backward_kernel(x, W_x, W_h, gates, h_states, dhs, lengths, dh, dh_scratch, d_gx,
                        d_gh, dx, dW_x, dW_h, db_x_acc, db_h_acc, bint small_m_gemm,
                        bint split_units, int n_threads):
    """Backpropagate through gru_forward_kernel.

    dh (B,H) holds dh_n on entry and dh0 on return; dh_scratch (B,H) is its other buffer.
    d_gx, d_gh are scratch of (chunk_T, B, 3H). dx, dW_x, dW_h are overwritten; db_x_acc
    and db_h_acc (3H,) float64 must be zero and receive db_x, db_h. dhs may be None
    (zeros). ``small_m_gemm`` (float32, where packed_gemm_available()) runs the step
    product on fastlstm's own kernels; ``split_units`` and ``n_threads`` as for the
    forward.
    """
    cdef _Backward a
    _backward_run(&a, _backward_call(&a, x, W_x, W_h, gates, h_states, dhs, lengths, dh,
                                     dh_scratch, d_gx, d_gh, dx, dW_x, dW_h, db_x_acc,
                                     db_h_acc, small_m_gemm, split_units, n_threads))


def gru_backward_pair_kernel(tuple first, tuple second):
    """Two gru_backward_kernel calls, each given as the tuple of its arguments, in one
    parallel region of two threads, one call per thread (as gru_forward_pair_kernel;
    both calls must also have the same chunk of steps, d_gx's first size)."""
    cdef _Backward a[2]
    cdef fl_step_barrier step_barrier[2]
    cdef int typenum = 0, k, k_type
    for k, call in enumerate((first, second)):
        if len(call) != 19:
            raise TypeError(f"a call of gru_backward_pair_kernel has 19 arguments, got "
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
    for k in range(2):
        fl_step_barrier_init(&step_barrier[k])
        a[k].step_barrier = &step_barrier[k]
    if typenum == cnp.NPY_FLOAT:
        _backward_pair_parallel(a, <float *>NULL)
    else:
        _backward_pair_parallel(a, <double *>NULL)


cdef void _backward_pair_parallel(const _Backward *a, floating *row_tmp) noexcept:
    """_backward_parallel for a pair: each thread runs a whole call, every row of it."""
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=2):
        a_scratch = _thread_scratch(a[0].use_kernel or a[1].use_kernel, a[0].B, True,
                                    a[0].scratch_rows, 3 * a[0].H)
        row_tmp = <floating *>fl_aligned_alloc(<size_t>max(a[0].H, 1) * sizeof(floating))
        try:
            if fl_num_threads() == 1:
                _backward_worker(&a[0], 0, 1, a_scratch, row_tmp)
                _backward_worker(&a[1], 0, 1, a_scratch, row_tmp)
            else:
                _backward_worker(&a[threadid()], 0, 1, a_scratch, row_tmp)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(row_tmp)


cdef int _backward_call(_Backward *a, x, W_x, W_h, gates, h_states, dhs, lengths, dh,
                        dh_scratch, d_gx, d_gh, dx, dW_x, dW_h, db_x_acc, db_h_acc,
                        bint small_m_gemm, bint split_units, int n_threads) except -1:
    """gru_backward_kernel's arguments, checked, into ``a``; returns the float type."""
    cdef int typenum = _float_typenum(x, "x")
    a.x = _data(x, typenum, 3, False, "x")
    a.T = <int>_dim(x, 0)   # (the inputs set the sizes; the rest is checked on them)
    a.B = <int>_dim(x, 1)
    a.D = <int>_dim(x, 2)
    _backward_arrays(a, typenum, W_h, gates, h_states, dhs, lengths, dh, dh_scratch, d_gx,
                     d_gh, dW_h, db_x_acc, db_h_acc, small_m_gemm, split_units, n_threads)
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.dx = _data(dx, typenum, 3, True, "dx")
    a.dW_x = _data(dW_x, typenum, 2, True, "dW_x")
    a.ids = NULL
    a.d_table = NULL
    _check_dims(W_x, "W_x", a.D, 3 * a.H)
    _check_dims(dW_x, "dW_x", a.D, 3 * a.H)
    _check_dims(dx, "dx", a.T, a.B, a.D)
    _check_backward_dims(a, W_h, gates, h_states, dhs, lengths, dh, dh_scratch, d_gx, d_gh,
                         dW_h, db_x_acc, db_h_acc)
    return typenum


def gru_backward_lookup_kernel(ids, table, W_h, gates, h_states, dhs, lengths, dh,
                               dh_scratch, d_gx, d_gh, d_table, dW_h, db_x_acc, db_h_acc,
                               bint small_m_gemm, bint split_units, int n_threads):
    """Backpropagate through gru_forward_lookup_kernel: as gru_backward_kernel, with no
    dx, and ``d_table`` (V, 3H), zeroed by the caller, in place of dW_x: it receives the
    sum of each id's d_gx rows. ``table`` itself is only checked (its number of rows
    bounds the ids); the backward does not read it."""
    cdef _Backward a
    cdef int typenum = _float_typenum(gates, "gates")
    a.T = <int>_dim(gates, 0)
    a.B = <int>_dim(gates, 1)
    a.D = 0
    _backward_arrays(&a, typenum, W_h, gates, h_states, dhs, lengths, dh, dh_scratch, d_gx,
                     d_gh, dW_h, db_x_acc, db_h_acc, small_m_gemm, split_units, n_threads)
    a.x = NULL
    a.W_x = NULL
    a.dx = NULL
    a.dW_x = NULL
    a.ids = <const int *>_data(ids, cnp.NPY_INT, 1, False, "ids")
    _data(table, typenum, 2, False, "table")
    a.d_table = _data(d_table, typenum, 2, True, "d_table")
    _check_dims(table, "table", _dim(table, 0), 3 * a.H)
    _check_dims(d_table, "d_table", _dim(table, 0), 3 * a.H)
    _check_backward_dims(&a, W_h, gates, h_states, dhs, lengths, dh, dh_scratch, d_gx, d_gh,
                         dW_h, db_x_acc, db_h_acc)
    _check_ids(ids, a.ids, a.T, a.B, <int>_dim(table, 0))
    _backward_run(&a, typenum)


cdef int _backward_arrays(_Backward *a, int typenum, W_h, gates, h_states, dhs, lengths, dh,
                          dh_scratch, d_gx, d_gh, dW_h, db_x_acc, db_h_acc,
                          bint small_m_gemm, bint split_units, int n_threads) except -1:
    """The arrays both backward entry points take: data pointers and sizes into ``a``
    (not yet checked against each other)."""
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.gates = _data(gates, typenum, 3, False, "gates")
    a.h_states = _data(h_states, typenum, 3, False, "h_states")
    a.dhs = _data_or_null(dhs, typenum, 3, False, "dhs")
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.dh = _data(dh, typenum, 2, True, "dh")
    a.dh_scratch = _data(dh_scratch, typenum, 2, True, "dh_scratch")
    a.d_gx = _data(d_gx, typenum, 3, True, "d_gx")
    a.d_gh = _data(d_gh, typenum, 3, True, "d_gh")
    a.dW_h = _data(dW_h, typenum, 2, True, "dW_h")
    a.db_x_acc = <double *>_data(db_x_acc, cnp.NPY_DOUBLE, 1, True, "db_x_acc")
    a.db_h_acc = <double *>_data(db_h_acc, cnp.NPY_DOUBLE, 1, True, "db_h_acc")
    a.H = <int>_dim(W_h, 0)
    a.chunk_T = <int>_dim(d_gx, 0)
    a.split_units = split_units
    a.use_kernel = small_m_gemm and typenum == cnp.NPY_FLOAT and fl_gemm_packed_available()
    a.n_threads = n_threads
    a.scratch_rows = 64   # dx's product runs in blocks of (at least) this many rows
    a.packed_t = NULL     # _backward_run decides
    return 0


cdef int _check_backward_dims(const _Backward *a, W_h, gates, h_states, dhs, lengths, dh,
                              dh_scratch, d_gx, d_gh, dW_h, db_x_acc,
                              db_h_acc) except -1:
    cdef int T = a.T, B = a.B, H = a.H
    _check_dims(W_h, "W_h", H, 3 * H)
    _check_dims(dW_h, "dW_h", H, 3 * H)
    _check_dims(db_x_acc, "db_x_acc", 3 * H)
    _check_dims(db_h_acc, "db_h_acc", 3 * H)
    _check_dims(gates, "gates", T, B, 4 * H)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(dhs, "dhs", T, B, H)
    _check_dims(dh, "dh", B, H)
    _check_dims(dh_scratch, "dh_scratch", B, H)
    if a.chunk_T < 1 or a.chunk_T > max(T, 1):
        raise ValueError(f"kernel argument d_gx must hold 1 to T={T} steps, "
                         f"got {a.chunk_T}")
    _check_dims(d_gx, "d_gx", a.chunk_T, B, 3 * H)
    _check_dims(d_gh, "d_gh", a.chunk_T, B, 3 * H)
    if a.dh == a.dh_scratch:
        raise ValueError("kernel arguments dh and dh_scratch must be different arrays")
    _check_sequence_args(lengths, a.lengths, T, B, a.n_threads)
    return 0


cdef int _backward_run(_Backward *a, int typenum) except -1:
    cdef fl_step_barrier step_barrier
    fl_step_barrier_init(&step_barrier)
    a.step_barrier = &step_barrier
    a.packed_t = _step_transpose_buffer(typenum == cnp.NPY_FLOAT and a.use_kernel, a.T,
                                        a.B, a.H, 3 * a.H, a.split_units, a.n_threads)
    try:
        if typenum == cnp.NPY_FLOAT:
            _backward_parallel(a, <float *>NULL)
        else:
            _backward_parallel(a, <double *>NULL)
    finally:
        fl_aligned_free(a.packed_t)
        a.packed_t = NULL
    return 0


cdef void _backward_parallel(const _Backward *a, floating *row_tmp) noexcept:
    """(``row_tmp`` comes in NULL, of the call's float type: each thread allocates its
    own.)"""
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _thread_scratch(a.use_kernel, a.B, a.split_units, a.scratch_rows,
                                    3 * a.H)
        row_tmp = <floating *>fl_aligned_alloc(<size_t>max(a.H, 1) * sizeof(floating))
        try:
            _backward_worker(a, threadid(), fl_num_threads(), a_scratch, row_tmp)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(row_tmp)

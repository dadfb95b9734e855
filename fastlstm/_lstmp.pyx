# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled projected-LSTM (LSTMP, torch's ``proj_size``) forward and backward, float32
and float64 through one fused type:

    a_t = x_t W_x + h_{t-1} W_h + b;  c_t = f c_{t-1} + i g;  m_t = o tanh(c_t);
    h_t = m_t W_hr                    (W_x (D, 4H), W_h (P, 4H), W_hr (H, P))

As for the LSTM and the RNN (see _lstm.pyx, _rnn.pyx): one OpenMP parallel region per
call, the input projection and the weight/input gradients as GEMMs over many rows, the
recursion shared out by batch slices (which never wait for each other inside it), BLAS
single-threaded inside the region. Each step has two products per slice, h_{t-1} W_h
(K = P, N = 4H) and m_t W_hr (K = H, N = P) forward, d_proj W_hr^T and d_gates W_h^T
backward; float32 runs them on fastlstm's own kernels (csrc/fastlstm_gemm.h) where the
CPU has them: a GEMV / dot products with the weights read in place for a single row,
the packed small-M GEMM (each weight packed once per call, the transposes for the
backward) for more.

``fastlstm.lstmp`` allocates and validates every argument; the entry points check them
again (types, shapes, index ranges), so that no call from Python can crash.
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.string cimport memcpy

cimport numpy as cnp

from ._blas cimport gemm
from ._kernel_common cimport *
from ._runtime cimport fl_isa_bind, isa_level_for

cdef extern from "fastlstm_lstmp.h" nogil:
    void fl_lstmp_cell_forward_f32(int n_rows, int H, float *gates, const float *c_prev,
                                   float *c_next, float *m, const int *lengths, int t)
    void fl_lstmp_cell_forward_f64(int n_rows, int H, double *gates, const double *c_prev,
                                   double *c_next, double *m, const int *lengths, int t)
    void fl_lstmp_output_f32(int n_rows, int P, const float *h_prev, float *h_next,
                             float *hs, const int *lengths, int t)
    void fl_lstmp_output_f64(int n_rows, int P, const double *h_prev, double *h_next,
                             double *hs, const int *lengths, int t)
    void fl_lstmp_dh_total_f32(int n_rows, int P, const float *dh, const float *dhs,
                               float *d_proj, const int *lengths, int t)
    void fl_lstmp_dh_total_f64(int n_rows, int P, const double *dh, const double *dhs,
                               double *d_proj, const int *lengths, int t)

cnp.import_array()
fl_isa_bind(isa_level_for(__name__))   # every kernel here runs at the process's one level


def forward_packed_size(int H, int P):
    """Floats of the forward's packed weights: W_h (P x 4H), then W_hr (H x P)."""
    return fl_packed_size(P, 4 * H) + fl_packed_size(H, P)


def backward_packed_size(int H, int P):
    """Floats of the backward's packed weights: W_hr^T (P x H), then W_h^T (4H x P)."""
    return fl_packed_size(P, H) + fl_packed_size(4 * H, P)


# --- the per-step pieces, one dtype test each ---------------------------------------

cdef inline void _cell_forward(int n_rows, int H, floating *gates, const floating *c_prev,
                               floating *c_next, floating *m, const int *lengths,
                               int t) noexcept nogil:
    if floating is float:
        fl_lstmp_cell_forward_f32(n_rows, H, gates, c_prev, c_next, m, lengths, t)
    else:
        fl_lstmp_cell_forward_f64(n_rows, H, gates, c_prev, c_next, m, lengths, t)


cdef inline void _output(int n_rows, int P, const floating *h_prev, floating *h_next,
                         floating *hs, const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_lstmp_output_f32(n_rows, P, h_prev, h_next, hs, lengths, t)
    else:
        fl_lstmp_output_f64(n_rows, P, h_prev, h_next, hs, lengths, t)


cdef inline void _dh_total(int n_rows, int P, const floating *dh, const floating *dhs,
                           floating *d_proj, const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_lstmp_dh_total_f32(n_rows, P, dh, dhs, d_proj, lengths, t)
    else:
        fl_lstmp_dh_total_f64(n_rows, P, dh, dhs, d_proj, lengths, t)


cdef inline void _cell_backward(int n_rows, int H, const floating *gates,
                                const floating *c_prev, const floating *c_cur,
                                const floating *dm, floating *dc, floating *d_gates,
                                const int *lengths, int t) noexcept nogil:
    # The LSTM's cell backward with dm in the place of its dh (and no dhs): the same
    # equations from m_t = o tanh(c_t) on, frozen rows included.
    if floating is float:
        fl_lstm_cell_backward_f32(n_rows, H, 0, H, gates, c_prev, c_cur, NULL, dm, dc,
                                  d_gates, lengths, t)
    else:
        fl_lstm_cell_backward_f64(n_rows, H, 0, H, gates, c_prev, c_cur, NULL, dm, dc,
                                  d_gates, lengths, t)


cdef inline void _times(int M, int N, int K, const floating *A, int lda, const floating *W,
                        int ldw, const float *packed, floating *C, int ldc, bint accumulate,
                        float *a_scratch) noexcept nogil:
    """C (M x N) (+)= A (M x K) @ W (K x N): float32 one row as a GEMV over W in place,
    more rows on the packed kernel when the caller packed W; BLAS otherwise."""
    if floating is float:
        if M == 1 and fl_gemm_packed_available():
            fl_gemv_f32(K, N, A, W, ldw, C, accumulate)
            return
        if packed != NULL and a_scratch != NULL:
            fl_gemm_packed_f32(M, N, K, A, lda, packed, C, ldc, accumulate, a_scratch)
            return
    gemm(False, False, M, N, K, <floating>1.0, A, lda, W, ldw,
         <floating>(1.0 if accumulate else 0.0), C, ldc)


cdef inline void _times_T(int M, int N, int K, const floating *A, int lda, const floating *W,
                          int ldw, const float *packed_T, floating *C, int ldc,
                          float *a_scratch) noexcept nogil:
    """C (M x N) = A (M x K) @ W^T, W (N x K): float32 one row as dot products over the
    rows of W in place, more rows on the packed kernel over W^T when the caller packed
    it; BLAS otherwise."""
    if floating is float:
        if M == 1 and fl_gemm_packed_available():
            fl_dots_f32(N, K, A, W, ldw, C)
            return
        if packed_T != NULL and a_scratch != NULL:
            fl_gemm_packed_f32(M, N, K, A, lda, packed_T, C, ldc, 0, a_scratch)
            return
    gemm(False, True, M, N, K, <floating>1.0, A, lda, W, ldw, <floating>0.0, C, ldc)


cdef inline void _pack_share(Py_ssize_t tid, Py_ssize_t n_threads, int K1, int N1,
                             const float *W1, int ld1, int K2, int N2, const float *W2,
                             int ld2, bint trans, float *packed) noexcept nogil:
    """This thread's share of the panels of two matrices packed one after the other
    (op(W1), K1 x N1, then op(W2), K2 x N2; op = transpose when ``trans``)."""
    cdef Py_ssize_t n1 = (N1 + FL_NR - 1) // FL_NR, n2 = (N2 + FL_NR - 1) // FL_NR, q0, q1
    _split(n1 + n2, tid, n_threads, &q0, &q1)
    if q0 < n1:
        fl_pack_panels_f32(K1, N1, W1, ld1, trans, packed, <int>q0, <int>min(q1, n1))
    if q1 > n1:
        fl_pack_panels_f32(K2, N2, W2, ld2, trans, packed + fl_packed_size(K1, N1),
                           <int>(max(q0, n1) - n1), <int>(q1 - n1))


cdef inline float *_scratch(bint wanted, int B, int min_rows, int K) noexcept nogil:
    """This thread's scratch for the packed products' A (and the NT kernel's), or NULL:
    rows for its share of the batch as the OpenMP runtime actually shares it out (it may
    grant fewer threads than asked for), at least ``min_rows``, K floats each."""
    if not wanted:
        return NULL
    cdef int rows = (B + fl_num_threads() - 1) // fl_num_threads()
    return <float *>fl_aligned_alloc(fl_packed_a_size(max(rows, min_rows), K) * sizeof(float))


# --- forward ------------------------------------------------------------------------
# As in _lstm.pyx: an entry point checks its arrays and gathers them, with the sizes, in
# one struct of untyped pointers; each fused function casts them once, to the
# specialisation its ``dtype_tag`` (a zero of the call's float type) selects. Arrays
# are C-contiguous, of the call's float dtype unless said otherwise.

cdef struct _Forward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step
    int H                   # cell units; G = 4H gate columns
    int P                   # projected outputs
    int n_threads
    const void *x           # (T, B, D) inputs
    const void *W_x         # (D, G) input weights
    const void *W_h         # (P, G) recurrent weights
    const void *b           # (G,)
    const void *W_hr        # (H, P) projection
    void *gates             # (T, B, G) out: the activated gates i, f, g, o
    void *h_states          # (T+1, B, P) in: [0] = h0; out: [t+1] = h after step t
    void *c_states          # (T+1, B, H) in: [0] = c0; out: [t+1] = c after step t
    void *m_states          # (T, B, H) out: m_t = o tanh(c_t), 0 past a sequence's length
    void *hs                # (T, B, P) out: outputs, 0 past a sequence's length
    const int *lengths      # (B,) intc, or NULL: every sequence runs T steps
    float *packed           # forward_packed_size(H, P) floats: the float32 recursion on
                            # the packed kernel; or NULL: BLAS (and the GEMV at one row)


cdef void _forward_worker(const _Forward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                          float *a_scratch, floating dtype_tag) noexcept nogil:
    cdef int T = a.T, B = a.B, D = a.D, H = a.H, P = a.P, G = 4 * a.H
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *W_hr = <const floating *>a.W_hr
    cdef floating *gates = <floating *>a.gates
    cdef floating *h_states = <floating *>a.h_states
    cdef floating *c_states = <floating *>a.c_states
    cdef floating *m_states = <floating *>a.m_states
    cdef floating *hs = <floating *>a.hs
    cdef const int *lengths = NULL
    cdef float *packed_W_h = a.packed
    cdef float *packed_W_hr = NULL
    cdef Py_ssize_t r, r0, r1, b0, b1, nb, t, at

    # 1. gates = x W_x + b for every step at once, a block of rows per thread; meanwhile
    #    the thread's share of the weight panels is packed (float32 kernels only).
    _split(<Py_ssize_t>T * B, tid, n_threads, &r0, &r1)
    for r in range(r0, r1):
        memcpy(gates + r * G, a.b, G * sizeof(floating))
    gemm(False, False, <int>(r1 - r0), G, D, <floating>1.0, <const floating *>a.x + r0 * D,
         D, <const floating *>a.W_x, G, <floating>1.0, gates + r0 * G, G)
    if floating is float:
        if packed_W_h != NULL:
            _pack_share(tid, n_threads, P, G, W_h, G, H, P, W_hr, P, False, packed_W_h)
            packed_W_hr = packed_W_h + fl_packed_size(P, G)
    fl_barrier()

    # 2. The recursion, each thread its own slice of the batch.
    _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    if nb == 0:
        return
    if a.lengths != NULL:
        lengths = a.lengths + b0
    for t in range(T):
        at = t * B + b0
        _times(<int>nb, G, P, h_states + at * P, P, W_h, G, packed_W_h, gates + at * G, G,
               True, a_scratch)
        _cell_forward(<int>nb, H, gates + at * G, c_states + at * H,
                      c_states + (at + B) * H, m_states + at * H, lengths, <int>t)
        _times(<int>nb, P, H, m_states + at * H, H, W_hr, P, packed_W_hr,
               h_states + (at + B) * P, P, False, a_scratch)
        _output(<int>nb, P, h_states + at * P, h_states + (at + B) * P, hs + at * P,
                lengths, <int>t)


cdef int _check_projection(W_h, W_hr, int H, int P) except -1:
    """W_hr (H, P) sets the sizes; W_h must be (P, 4H) (a transposed W_hr shows here)."""
    if H < 1 or P < 1:
        raise ValueError(f"kernel argument W_hr must be (H, P) with H, P >= 1, got "
                         f"{W_hr.shape}")
    if _dim(W_h, 0) != P or _dim(W_h, 1) != 4 * H:
        raise ValueError(f"kernel arguments W_h {W_h.shape} and W_hr {W_hr.shape} disagree: "
                         f"W_h must be (P, 4H) = ({P}, {4 * H}) for W_hr (H, P)")
    return 0


def lstmp_forward_kernel(x, W_x, W_h, b, W_hr, gates, h_states, c_states, m_states, hs,
                         lengths, packed, int n_threads):
    """Fill gates (T,B,4H), h_states (T+1,B,P) and c_states (T+1,B,H) (index 0 preset
    to h0, c0), m_states (T,B,H) and hs (T,B,P). All arrays C-contiguous of one float
    dtype; W_x (D,4H), W_h (P,4H), b (4H,), W_hr (H,P); lengths (B,) intc or None.
    ``packed`` (float32 only: forward_packed_size(H, P) floats, or None) turns on the
    packed step products. ``n_threads`` is taken as given (the caller caps it at B).
    """
    cdef _Forward a
    cdef int typenum = _float_typenum(x, "x")
    a.x = _data(x, typenum, 3, False, "x")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.b = _data(b, typenum, 1, False, "b")
    a.W_hr = _data(W_hr, typenum, 2, False, "W_hr")
    a.gates = _data(gates, typenum, 3, True, "gates")
    a.h_states = _data(h_states, typenum, 3, True, "h_states")
    a.c_states = _data(c_states, typenum, 3, True, "c_states")
    a.m_states = _data(m_states, typenum, 3, True, "m_states")
    a.hs = _data(hs, typenum, 3, True, "hs")
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.packed = <float *>_data_or_null(packed, cnp.NPY_FLOAT, 1, True, "packed")
    a.T = <int>_dim(x, 0)
    a.B = <int>_dim(x, 1)
    a.D = <int>_dim(x, 2)
    a.H = <int>_dim(W_hr, 0)   # (H and P come from W_hr: its own shape first)
    a.P = <int>_dim(W_hr, 1)
    a.n_threads = n_threads
    cdef int T = a.T, B = a.B, H = a.H, P = a.P
    _check_projection(W_h, W_hr, H, P)
    _check_dims(W_x, "W_x", a.D, 4 * H)
    _check_dims(b, "b", 4 * H)
    _check_dims(gates, "gates", T, B, 4 * H)
    _check_dims(h_states, "h_states", T + 1, B, P)
    _check_dims(c_states, "c_states", T + 1, B, H)
    _check_dims(m_states, "m_states", T, B, H)
    _check_dims(hs, "hs", T, B, P)
    _check_sequence_args(lengths, a.lengths, T, B, n_threads)
    if a.packed != NULL and _dim(packed, 0) < <cnp.npy_intp>forward_packed_size(H, P):
        raise ValueError(f"kernel argument packed has {_dim(packed, 0)} floats, fewer than "
                         f"forward_packed_size(H, P) = {forward_packed_size(H, P)}")
    if typenum != cnp.NPY_FLOAT or not fl_gemm_packed_available():
        a.packed = NULL
    if typenum == cnp.NPY_FLOAT:
        _forward_parallel(&a, <float>0)
    else:
        _forward_parallel(&a, <double>0)


cdef void _forward_parallel(const _Forward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _scratch(a.packed != NULL, a.B, 1, max(a.H, a.P))
        try:
            _forward_worker(a, threadid(), fl_num_threads(), a_scratch, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)


# --- backward -----------------------------------------------------------------------

cdef struct _Backward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step
    int H                   # cell units; G = 4H gate columns
    int P                   # projected outputs
    int chunk_T             # steps per chunk of d_gates / d_proj
    bint use_nt             # float32 dx on fastlstm's NT kernel (see _chunk_gradients)
    int n_threads
    const void *x           # (T, B, D) inputs
    const void *W_x         # (D, G)
    const void *W_h         # (P, G)
    const void *W_hr        # (H, P)
    const void *gates       # (T, B, G) the forward's activated gates
    const void *h_states    # (T+1, B, P) the forward's projected states
    const void *c_states    # (T+1, B, H) the forward's cell states
    const void *m_states    # (T, B, H) the forward's m_t (0 past a sequence's length)
    const void *dhs         # (T, B, P) output gradients, or NULL (zeros)
    const int *lengths      # (B,) intc, or NULL
    void *dh                # (B, P) in: dh_n; out: dh0
    void *dc                # (B, H) in: dc_n; out: dc0
    void *dh_scratch        # (B, P) scratch, used with lengths
    void *dm                # (B, H) scratch: the step's gradient w.r.t. m_t
    void *d_gates           # (chunk_T, B, G) scratch: one chunk's gate gradients
    void *d_proj            # (chunk_T, B, P) scratch: one chunk's gradients w.r.t. h_t
                            # (0 past a sequence's length)
    void *dx                # (T, B, D) out
    void *dW_x              # (D, G) out
    void *dW_h              # (P, G) out
    void *dW_hr             # (H, P) out
    double *db_acc          # (G,) float64, zero on entry; out: db
    float *packed           # backward_packed_size(H, P) floats: the float32 step
                            # products on the packed kernel; or NULL: BLAS (and dot
                            # products at one row)
    int scratch_rows        # rows of dx's NT product per a_scratch block


cdef void _backward_worker(const _Backward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                           float *a_scratch, floating dtype_tag) noexcept nogil:
    cdef int T = a.T, B = a.B, D = a.D, H = a.H, P = a.P, G = 4 * a.H, chunk_T = a.chunk_T
    cdef const floating *x = <const floating *>a.x
    cdef const floating *W_x = <const floating *>a.W_x
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *W_hr = <const floating *>a.W_hr
    cdef const floating *gates = <const floating *>a.gates
    cdef const floating *h_states = <const floating *>a.h_states
    cdef const floating *c_states = <const floating *>a.c_states
    cdef const floating *m_states = <const floating *>a.m_states
    cdef const floating *dhs = <const floating *>a.dhs
    cdef floating *dh = <floating *>a.dh
    cdef floating *dc = <floating *>a.dc
    cdef floating *dh_scratch = <floating *>a.dh_scratch
    cdef floating *dm = <floating *>a.dm
    cdef floating *d_gates = <floating *>a.d_gates
    cdef floating *d_proj = <floating *>a.d_proj
    cdef floating *dW_hr = <floating *>a.dW_hr
    cdef const int *lengths = NULL
    cdef float *packed_W_hr_T = a.packed
    cdef float *packed_W_h_T = NULL
    cdef Py_ssize_t b0, b1, nb, t, at, dt, rows, first, u0, u1
    cdef int t_start, t_stop = T
    cdef floating weight_beta = 0.0   # the first chunk writes the weight gradients
    _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    if a.lengths != NULL:
        lengths = a.lengths + b0
    if floating is float:
        if packed_W_hr_T != NULL:
            _pack_share(tid, n_threads, P, H, W_hr, P, G, P, W_h, G, True, packed_W_hr_T)
            packed_W_h_T = packed_W_hr_T + fl_packed_size(P, H)
            fl_barrier()

    # Chunks of steps from the end: the recursion over the chunk, then its weight and
    # input gradients as GEMMs over chunk_T * B rows.
    while t_stop > 0:
        t_start = max(0, t_stop - chunk_T)
        for t in range(t_stop - 1, t_start - 1, -1):
            if nb == 0:
                break
            at = t * B + b0
            dt = (t - t_start) * <Py_ssize_t>B + b0
            _dh_total(<int>nb, P, dh + b0 * P, dhs + at * P if dhs != NULL else NULL,
                      d_proj + dt * P, lengths, <int>t)
            _times_T(<int>nb, H, P, d_proj + dt * P, P, W_hr, P, packed_W_hr_T,
                     dm + b0 * H, H, a_scratch)
            _cell_backward(<int>nb, H, gates + at * G, c_states + at * H,
                           c_states + (at + B) * H, dm + b0 * H, dc + b0 * H,
                           d_gates + dt * G, lengths, <int>t)
            # dh_{t-1} = d_gates_t W_h^T; rows past their length pass dh through, so
            # with lengths the product goes to scratch first.
            _times_T(<int>nb, P, G, d_gates + dt * G, G, W_h, G, packed_W_h_T,
                     (dh if lengths == NULL else dh_scratch) + b0 * P, P, a_scratch)
            if lengths != NULL:
                _copy_valid_rows(<int>nb, P, 0, P, dh_scratch + b0 * P, dh + b0 * P,
                                 lengths, <int>t)
        fl_barrier()

        rows = (t_stop - t_start) * <Py_ssize_t>B
        first = t_start * <Py_ssize_t>B   # the chunk's first (step, sequence) row
        # dx by rows, dW_x / dW_h / db by gate columns (the recurrent input is h, P wide)
        _chunk_gradients(tid, n_threads, rows, G, D, P, d_gates, x + first * D,
                         h_states + first * P, W_x, <floating *>a.dx + first * D,
                         <floating *>a.dW_x, <floating *>a.dW_h, a.db_acc, weight_beta,
                         a_scratch if a.use_nt else NULL, a.scratch_rows)
        # dW_hr (+)= m^T d_proj, by rows of dW_hr
        _split_aligned(H, 16, tid, n_threads, &u0, &u1)
        if u1 > u0:
            gemm(True, False, <int>(u1 - u0), P, <int>rows, <floating>1.0,
                 m_states + first * H + u0, H, d_proj, P, weight_beta, dW_hr + u0 * P, P)
        weight_beta = 1.0
        t_stop = t_start
        fl_barrier()   # d_gates and d_proj are reused by the next chunk


def lstmp_backward_kernel(x, W_x, W_h, W_hr, gates, h_states, c_states, m_states, dhs,
                          lengths, dh, dc, dh_scratch, dm, d_gates, d_proj, dx, dW_x, dW_h,
                          dW_hr, db_acc, packed, bint nt_dx, int n_threads):
    """Backpropagate through lstmp_forward_kernel.

    dh (B,P) and dc (B,H) hold dh_n, dc_n on entry and dh0, dc0 on return. Scratch:
    dh_scratch (B,P) (read only with lengths), dm (B,H), d_gates (chunk_T,B,4H) and
    d_proj (chunk_T,B,P) for 1 <= chunk_T <= T. dx, dW_x, dW_h, dW_hr are overwritten;
    db_acc (4H,) float64 must be zero and receives db. dhs may be None (zeros).
    ``packed`` (float32 only: backward_packed_size(H, P) floats, or None) turns on the
    packed step products; ``nt_dx`` (float32) computes dx on fastlstm's NT kernel.
    """
    cdef _Backward a
    cdef int typenum = _float_typenum(gates, "gates")
    a.x = _data(x, typenum, 3, False, "x")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.W_hr = _data(W_hr, typenum, 2, False, "W_hr")
    a.gates = _data(gates, typenum, 3, False, "gates")
    a.h_states = _data(h_states, typenum, 3, False, "h_states")
    a.c_states = _data(c_states, typenum, 3, False, "c_states")
    a.m_states = _data(m_states, typenum, 3, False, "m_states")
    a.dhs = _data_or_null(dhs, typenum, 3, False, "dhs")
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.dh = _data(dh, typenum, 2, True, "dh")
    a.dc = _data(dc, typenum, 2, True, "dc")
    a.dh_scratch = _data(dh_scratch, typenum, 2, True, "dh_scratch")
    a.dm = _data(dm, typenum, 2, True, "dm")
    a.d_gates = _data(d_gates, typenum, 3, True, "d_gates")
    a.d_proj = _data(d_proj, typenum, 3, True, "d_proj")
    a.dx = _data(dx, typenum, 3, True, "dx")
    a.dW_x = _data(dW_x, typenum, 2, True, "dW_x")
    a.dW_h = _data(dW_h, typenum, 2, True, "dW_h")
    a.dW_hr = _data(dW_hr, typenum, 2, True, "dW_hr")
    a.db_acc = <double *>_data(db_acc, cnp.NPY_DOUBLE, 1, True, "db_acc")
    a.packed = <float *>_data_or_null(packed, cnp.NPY_FLOAT, 1, True, "packed")
    a.T = <int>_dim(gates, 0)
    a.B = <int>_dim(gates, 1)
    a.D = <int>_dim(x, 2)
    a.H = <int>_dim(W_hr, 0)
    a.P = <int>_dim(W_hr, 1)
    a.chunk_T = <int>_dim(d_gates, 0)
    a.n_threads = n_threads
    a.scratch_rows = 64   # dx's NT product runs in blocks of (at least) this many rows
    cdef int T = a.T, B = a.B, D = a.D, H = a.H, P = a.P, G = 4 * a.H
    _check_projection(W_h, W_hr, H, P)
    _check_dims(x, "x", T, B, D)
    _check_dims(dx, "dx", T, B, D)
    _check_dims(W_x, "W_x", D, G)
    _check_dims(dW_x, "dW_x", D, G)
    _check_dims(dW_h, "dW_h", P, G)
    _check_dims(dW_hr, "dW_hr", H, P)
    _check_dims(db_acc, "db_acc", G)
    _check_dims(h_states, "h_states", T + 1, B, P)
    _check_dims(c_states, "c_states", T + 1, B, H)
    _check_dims(m_states, "m_states", T, B, H)
    _check_dims(dhs, "dhs", T, B, P)
    _check_dims(dh, "dh", B, P)
    _check_dims(dc, "dc", B, H)
    _check_dims(dh_scratch, "dh_scratch", B, P)
    _check_dims(dm, "dm", B, H)
    if a.chunk_T < 1 or a.chunk_T > max(T, 1):
        raise ValueError(f"kernel argument d_gates must hold 1 to T={T} steps, "
                         f"got {a.chunk_T}")
    _check_dims(d_gates, "d_gates", a.chunk_T, B, G)
    _check_dims(d_proj, "d_proj", a.chunk_T, B, P)
    _check_sequence_args(lengths, a.lengths, T, B, n_threads)
    if a.packed != NULL and _dim(packed, 0) < <cnp.npy_intp>backward_packed_size(H, P):
        raise ValueError(f"kernel argument packed has {_dim(packed, 0)} floats, fewer than "
                         f"backward_packed_size(H, P) = {backward_packed_size(H, P)}")
    cdef bint own_kernels = typenum == cnp.NPY_FLOAT and fl_gemm_packed_available()
    if not own_kernels:
        a.packed = NULL
    a.use_nt = nt_dx and own_kernels
    if typenum == cnp.NPY_FLOAT:
        _backward_parallel(&a, <float>0)
    else:
        _backward_parallel(&a, <double>0)


cdef void _backward_parallel(const _Backward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    # packed step products take (rows x K) of A, K up to max(4H, P); dx's NT product
    # takes (scratch_rows x 4H)
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _scratch(a.packed != NULL or a.use_nt, a.B,
                             a.scratch_rows if a.use_nt else 1, max(4 * a.H, a.P))
        try:
            _backward_worker(a, threadid(), fl_num_threads(), a_scratch, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)

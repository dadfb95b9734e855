# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled vanilla-RNN forward and backward, float32 and float64 through one fused type,
``h_t = act(x_t W_x + h_{t-1} W_h + b)`` with act = tanh or relu.

As for the LSTM (see _lstm.pyx): one OpenMP region per call, the input projection and
the weight/input gradients as GEMMs over many rows, the recursion split over batch
slices, BLAS single-threaded inside the region, fastlstm's own float32 kernels for the
per-step products.

Truncated BPTT (``k >= 0``) runs as one backward sweep that carries, for every row, the
k + 1 gradients still "in flight": slot j holds what the loss term j steps later sends to
the current step. Each step activates all slots at once, sums them into the step's
gradient, and moves slots 0..k-1 one step back with a single GEMM of k * rows rows (the
oldest slot has used up its window and is dropped). That is O(T) GEMMs of k-times-taller
matrices instead of O(T * k) small ones; the O(T * k * B * H^2) arithmetic is inherent to
the definition (every loss term has its own window).
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.string cimport memcpy, memset

cimport numpy as cnp

from ._blas cimport gemm
from ._kernel_common cimport *
from ._runtime cimport fl_isa_bind, isa_level_for

cnp.import_array()
fl_isa_bind(isa_level_for(__name__))   # every kernel here runs at the process's one level


def packed_size(int H):
    """Floats needed for the packed recurrent weights W_h (H x H)."""
    return fl_packed_size(H, H)


cdef inline void _cell_forward(int n_rows, int H, bint relu, const floating *h_prev,
                               floating *h_next, floating *hs, const int *lengths,
                               int t) noexcept nogil:
    if floating is float:
        fl_rnn_cell_forward_f32(n_rows, H, relu, h_prev, h_next, hs, lengths, t)
    else:
        fl_rnn_cell_forward_f64(n_rows, H, relu, h_prev, h_next, hs, lengths, t)


cdef inline void _cell_backward(int n_rows, int H, bint relu, const floating *h_cur,
                                const floating *dh, const floating *dhs, floating *d_pre,
                                const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_rnn_cell_backward_f32(n_rows, H, relu, h_cur, dh, dhs, d_pre, lengths, t)
    else:
        fl_rnn_cell_backward_f64(n_rows, H, relu, h_cur, dh, dhs, d_pre, lengths, t)


cdef inline void _times_W_h_T(int M, int H, const floating *A, const floating *W_h,
                              floating *C, float *a_scratch) noexcept nogil:
    """C (M x H) = A (M x H) @ W_h^T: the gradient one step further back."""
    if floating is float:
        if M == 1 and fl_gemm_packed_available():   # one row: dot products, W_h in place
            fl_dots_f32(H, H, A, W_h, H, C)
            return
        if a_scratch != NULL and _nt_pays(H):
            fl_gemm_nt_f32(M, H, H, A, H, W_h, H, C, H, 0, a_scratch)
            return
    gemm(False, True, M, H, H, <floating>1.0, A, H, W_h, H, <floating>0.0, C, H)


# --- one call's arrays --------------------------------------------------------------
# As in _lstm.pyx: an entry point checks its arrays and gathers them, with the sizes, in
# one struct of untyped pointers; each fused function casts them once, to the
# specialisation its ``dtype_tag`` (a zero of the call's float type) selects. Arrays
# are C-contiguous, of the call's float dtype unless said otherwise.

cdef struct _Forward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step
    int H                   # hidden units
    bint relu               # act = relu, else tanh
    int n_threads
    const void *x           # (T, B, D)
    const void *W_x         # (D, H)
    const void *W_h         # (H, H)
    const void *b           # (H,)
    void *h_states          # (T+1, B, H) in: [0] = h0; out: [t+1] = state after step t
    void *hs                # (T, B, H) out: outputs, 0 past a sequence's length
    const int *lengths      # (B,) intc, or NULL: every sequence runs T steps
    float *packed           # packed_size(H) floats for the packed float32 recursion, or
                            # NULL: products on BLAS


cdef void _forward_worker(const _Forward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                          float *a_scratch, floating dtype_tag) noexcept nogil:
    cdef int T = a.T, B = a.B, D = a.D, H = a.H
    cdef bint relu = a.relu
    cdef const floating *W_h = <const floating *>a.W_h
    cdef floating *h_states = <floating *>a.h_states
    cdef floating *hs = <floating *>a.hs
    cdef const int *lengths = a.lengths
    cdef float *packed = a.packed
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, r, r0, r1, p0, p1, b0, b1, nb, t, at
    cdef floating *pre = h_states + BH   # step t's pre-activations sit where h_t will
    _split(<Py_ssize_t>T * B, tid, n_threads, &r0, &r1)
    for r in range(r0, r1):
        memcpy(pre + r * H, a.b, H * sizeof(floating))
    gemm(False, False, <int>(r1 - r0), H, D, <floating>1.0, <const floating *>a.x + r0 * D,
         D, <const floating *>a.W_x, H, <floating>1.0, pre + r0 * H, H)
    if floating is float:
        if packed != NULL:
            _split((H + FL_NR - 1) // FL_NR, tid, n_threads, &p0, &p1)
            fl_pack_panels_f32(H, H, W_h, H, 0, packed, <int>p0, <int>p1)
    fl_barrier()

    _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    if nb == 0:
        return
    for t in range(T):
        at = t * B + b0
        if floating is float:
            if nb == 1 and fl_gemm_packed_available():   # one sequence: a GEMV in place
                fl_gemv_f32(H, H, h_states + at * H, W_h, H, h_states + (at + B) * H, 1)
            elif packed != NULL and a_scratch != NULL:
                fl_gemm_packed_f32(<int>nb, H, H, h_states + at * H, H, packed,
                                   h_states + (at + B) * H, H, 1, a_scratch)
            else:
                gemm(False, False, <int>nb, H, H, <floating>1.0, h_states + at * H, H, W_h,
                     H, <floating>1.0, h_states + (at + B) * H, H)
        else:
            gemm(False, False, <int>nb, H, H, <floating>1.0, h_states + at * H, H, W_h, H,
                 <floating>1.0, h_states + (at + B) * H, H)
        _cell_forward(<int>nb, H, relu, h_states + at * H, h_states + (at + B) * H,
                      hs + at * H, lengths + b0 if lengths != NULL else NULL, <int>t)


def rnn_forward_kernel(x, W_x, W_h, b, h_states, hs, lengths, packed, bint relu,
                       int n_threads):
    """Fill h_states (T+1,B,H; index 0 preset to h0) and hs (T,B,H). All arrays
    C-contiguous of one float dtype; lengths (B,) intc or None. ``packed`` (float32 only:
    packed_size(H) floats, or None) turns on the packed recurrent GEMM."""
    cdef _Forward a
    cdef int typenum = _forward_call(&a, x, W_x, W_h, b, h_states, hs, lengths, packed,
                                     relu, n_threads)
    if typenum == cnp.NPY_FLOAT:
        _forward_parallel(&a, <float>0)
    else:
        _forward_parallel(&a, <double>0)


def rnn_forward_pair_kernel(tuple first, tuple second):
    """Two rnn_forward_kernel calls, each given as the tuple of its arguments, in one
    parallel region of two threads, one call per thread: the two directions of a
    bidirectional layer, at once. Each call must have ``n_threads`` 1, and both the same
    T, B, H and dtype (each thread passes the same barriers)."""
    cdef _Forward a[2]
    cdef int typenum = 0, k, k_type
    for k, call in enumerate((first, second)):
        if len(call) != 10:
            raise TypeError(f"a call of rnn_forward_pair_kernel has 10 arguments, got "
                            f"{len(call)}")
        k_type = _forward_call(&a[k], call[0], call[1], call[2], call[3], call[4], call[5],
                               call[6], call[7], call[8], call[9])
        if k == 0:
            typenum = k_type
        _check_pair_call(typenum, k_type, a[0].T, a[k].T, a[0].B, a[k].B, a[0].H, a[k].H,
                         a[k].n_threads, False)
    if typenum == cnp.NPY_FLOAT:
        _forward_pair_parallel(a, <float>0)
    else:
        _forward_pair_parallel(a, <double>0)


cdef int _forward_call(_Forward *a, x, W_x, W_h, b, h_states, hs, lengths, packed,
                       bint relu, int n_threads) except -1:
    """rnn_forward_kernel's arguments, checked, into ``a``; returns the float type."""
    cdef int typenum = _float_typenum(x, "x")
    a.x = _data(x, typenum, 3, False, "x")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.b = _data(b, typenum, 1, False, "b")
    a.h_states = _data(h_states, typenum, 3, True, "h_states")
    a.hs = _data(hs, typenum, 3, True, "hs")
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.packed = <float *>_data_or_null(packed, cnp.NPY_FLOAT, 1, True, "packed")
    a.T = <int>_dim(x, 0)
    a.B = <int>_dim(x, 1)
    a.D = <int>_dim(x, 2)
    a.H = <int>_dim(W_h, 0)
    a.relu = relu
    a.n_threads = n_threads
    cdef int T = a.T, B = a.B, H = a.H
    _check_dims(W_h, "W_h", H, H)   # (H comes from W_h: its own shape first)
    _check_dims(W_x, "W_x", a.D, H)
    _check_dims(b, "b", H)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(hs, "hs", T, B, H)
    _check_sequence_args(lengths, a.lengths, T, B, n_threads)
    if a.packed != NULL and _dim(packed, 0) < <cnp.npy_intp>fl_packed_size(H, H):
        raise ValueError(f"kernel argument packed has {_dim(packed, 0)} floats, fewer than "
                         f"packed_size(H) = {fl_packed_size(H, H)}")
    if not fl_gemm_packed_available() or typenum != cnp.NPY_FLOAT:
        a.packed = NULL
    return typenum


cdef void _forward_pair_parallel(const _Forward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=2):
        # each thread runs a whole call, every row of it (split_units=True sizes for that)
        a_scratch = _thread_scratch(a[0].packed != NULL or a[1].packed != NULL, a[0].B,
                                    True, 1, a[0].H)
        try:
            if fl_num_threads() == 1:   # the runtime granted one thread: one after the other
                _forward_worker(&a[0], 0, 1, a_scratch, dtype_tag)
                _forward_worker(&a[1], 0, 1, a_scratch, dtype_tag)
            else:
                _forward_worker(&a[threadid()], 0, 1, a_scratch, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)


cdef void _forward_parallel(const _Forward *a, floating dtype_tag) noexcept:
    cdef float *a_scratch = NULL
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _thread_scratch(a.packed != NULL, a.B, False, 1, a.H)
        try:
            _forward_worker(a, threadid(), fl_num_threads(), a_scratch, dtype_tag)
        finally:
            fl_aligned_free(a_scratch)


cdef void _load_origin(int nb, int H, int t, const floating *dhs, const floating *dh_n,
                       const int *lengths, int T, floating *slot) noexcept nogil:
    """Slot 0 at step t: the loss term there (dhs, and dh_n at each row's last step);
    zero for rows already past their length."""
    cdef int r, j, length
    for r in range(nb):
        length = lengths[r] if lengths != NULL else T
        if t < length and dhs != NULL:
            memcpy(slot + r * H, dhs + r * H, H * sizeof(floating))
        else:
            memset(slot + r * H, 0, H * sizeof(floating))
        if dh_n != NULL and t == length - 1:
            for j in range(H):
                slot[r * H + j] += dh_n[r * H + j]


cdef struct _Backward:
    int T                   # steps
    int B                   # sequences
    int D                   # inputs per step
    int H                   # hidden units
    int chunk_T             # steps per chunk of d_pre
    bint relu               # act = relu, else tanh
    int k                   # truncated BPTT: each loss term reaches k steps back; -1: full
    bint use_kernel         # float32 step products on fastlstm's own kernels
    int n_threads
    const void *x           # (T, B, D)
    const void *W_x         # (D, H)
    const void *W_h         # (H, H)
    const void *h_states    # (T+1, B, H) the forward's states
    const void *dhs         # (T, B, H) output gradients, or NULL (zeros)
    const void *dh_n        # (B, H) truncated only: enters at each row's last step; or NULL
    const int *lengths      # (B,) intc, or NULL
    void *dh                # (B, H) in: dh_n (full BPTT; see rnn_backward_kernel); out: dh0
    void *dh_scratch        # (B, H) scratch
    void *d_pre             # (chunk_T, B, H) scratch: one chunk's pre-activation gradients
    void *dx                # (T, B, D) out
    void *dW_x              # (D, H) out
    void *dW_h              # (H, H) out
    double *db_acc          # (H,) float64, zero on entry; out: db
    int scratch_rows        # rows of dx's product per a_scratch block


cdef void _backward_worker(const _Backward *a, Py_ssize_t tid, Py_ssize_t n_threads,
                           float *a_scratch, floating *slots) noexcept nogil:
    """``slots``: this thread's 2 (k + 1) (rows, H) in-flight slots when truncating."""
    cdef int T = a.T, B = a.B, D = a.D, H = a.H, chunk_T = a.chunk_T, k = a.k
    cdef bint relu = a.relu
    cdef const floating *x = <const floating *>a.x
    cdef const floating *W_x = <const floating *>a.W_x
    cdef const floating *W_h = <const floating *>a.W_h
    cdef const floating *h_states = <const floating *>a.h_states
    cdef const floating *dhs = <const floating *>a.dhs
    cdef const floating *dh_n = <const floating *>a.dh_n
    cdef const int *lengths = a.lengths
    cdef floating *dh = <floating *>a.dh
    cdef floating *dh_scratch = <floating *>a.dh_scratch
    cdef floating *d_pre = <floating *>a.d_pre
    cdef floating *dx = <floating *>a.dx
    cdef floating *dW_x = <floating *>a.dW_x
    cdef floating *dW_h = <floating *>a.dW_h
    cdef double *db_acc = a.db_acc
    cdef Py_ssize_t BH = <Py_ssize_t>B * H, b0, b1, nb, t, at, dt, j, i, rows
    cdef Py_ssize_t slot_size
    cdef int t_start, t_stop = T
    cdef floating weight_beta = 0.0
    cdef const int *slice_lengths
    cdef floating *in_flight
    cdef floating *activated
    cdef floating *step_grad
    _split(B, tid, n_threads, &b0, &b1)
    nb = b1 - b0
    slot_size = nb * H
    slice_lengths = lengths + b0 if lengths != NULL else NULL
    # truncated: k + 1 in-flight slots, then k + 1 activated ones, this thread's rows only
    in_flight = slots
    activated = slots + (k + 1) * slot_size if k >= 0 else NULL
    if k >= 0 and nb > 0:
        memset(in_flight, 0, (k + 1) * slot_size * sizeof(floating))

    while t_stop > 0:
        t_start = max(0, t_stop - chunk_T)
        for t in range(t_stop - 1, t_start - 1, -1):
            if nb == 0:
                break
            at = t * B + b0
            dt = (t - t_start) * <Py_ssize_t>B + b0
            step_grad = d_pre + dt * H
            if k < 0:
                # Full BPTT: dh carries everything; frozen rows pass it through.
                _cell_backward(<int>nb, H, relu, h_states + (at + B) * H, dh + b0 * H,
                               dhs + at * H if dhs != NULL else NULL, step_grad,
                               slice_lengths, <int>t)
                _times_W_h_T(<int>nb, H, step_grad, W_h,
                             (dh if lengths == NULL else dh_scratch) + b0 * H, a_scratch)
                if lengths != NULL:
                    _copy_valid_rows(<int>nb, H, 0, H, dh_scratch + b0 * H, dh + b0 * H,
                                     slice_lengths, <int>t)
                continue
            # Truncated: activate every in-flight slot, sum, move slots 0..k-1 back.
            _load_origin(<int>nb, H, <int>t, dhs + at * H if dhs != NULL else NULL,
                         dh_n + b0 * H if dh_n != NULL else NULL, slice_lengths, T,
                         in_flight)
            for j in range(k + 1):
                _cell_backward(<int>nb, H, relu, h_states + (at + B) * H,
                               in_flight + j * slot_size, NULL,
                               activated + j * slot_size, slice_lengths, <int>t)
            memcpy(step_grad, activated, slot_size * sizeof(floating))
            for j in range(1, k + 1):
                for i in range(slot_size):
                    step_grad[i] += activated[j * slot_size + i]
            if t > 0 and k > 0:
                gemm(False, True, <int>(k * nb), H, H, <floating>1.0, activated, H, W_h, H,
                     <floating>0.0, in_flight + slot_size, H)
            elif t == 0:
                # Every window still in flight at step 0 reaches h0 (rows of length 0
                # keep the dh_n the caller put in dh).
                if slice_lengths == NULL:
                    _times_W_h_T(<int>nb, H, step_grad, W_h, dh + b0 * H, a_scratch)
                else:
                    _times_W_h_T(<int>nb, H, step_grad, W_h, dh_scratch + b0 * H,
                                 a_scratch)
                    _copy_valid_rows(<int>nb, H, 0, H, dh_scratch + b0 * H, dh + b0 * H,
                                     slice_lengths, 0)
        fl_barrier()
        rows = (t_stop - t_start) * <Py_ssize_t>B
        _chunk_gradients(tid, n_threads, rows, H, D, H, d_pre,
                         x + t_start * <Py_ssize_t>B * D, h_states + t_start * BH, W_x,
                         dx + t_start * <Py_ssize_t>B * D, dW_x, dW_h, db_acc, weight_beta,
                         a_scratch, a.scratch_rows)
        weight_beta = 1.0
        t_stop = t_start
        fl_barrier()   # d_pre is reused by the next chunk


def rnn_backward_kernel(x, W_x, W_h, h_states, dhs, dh_n, lengths, dh, dh_scratch, d_pre,
                        dx, dW_x, dW_h, db_acc, bint relu, int bptt_truncate,
                        bint small_m_gemm, int n_threads):
    """Backpropagate through rnn_forward_kernel.

    Full BPTT (bptt_truncate < 0): dh (B,H) holds dh_n on entry and dh0 on return.
    Truncated (k = bptt_truncate >= 0): dh must be dh_n for rows of length 0 and zero
    otherwise (dh_n then enters at each row's last step); it holds dh0 on return.
    d_pre is scratch of (chunk_T, B, H); dh_scratch (B,H) is used with lengths and when
    truncating. dx, dW_x, dW_h are overwritten; db_acc (H,) float64 must be zero. dhs and
    dh_n may be None (zeros).
    """
    cdef _Backward a
    cdef int alloc_failed
    cdef int typenum = _backward_call(&a, x, W_x, W_h, h_states, dhs, dh_n, lengths, dh,
                                      dh_scratch, d_pre, dx, dW_x, dW_h, db_acc, relu,
                                      bptt_truncate, small_m_gemm, n_threads)
    if typenum == cnp.NPY_FLOAT:
        alloc_failed = _backward_parallel(&a, <float *>NULL)
    else:
        alloc_failed = _backward_parallel(&a, <double *>NULL)
    if alloc_failed:
        _raise_no_slots(bptt_truncate, a.H)


def rnn_backward_pair_kernel(tuple first, tuple second):
    """Two rnn_backward_kernel calls, each given as the tuple of its arguments, in one
    parallel region of two threads, one call per thread (as rnn_forward_pair_kernel; both
    calls must also have the same chunk of steps and the same bptt_truncate)."""
    cdef _Backward a[2]
    cdef int typenum = 0, k, k_type, alloc_failed
    for k, call in enumerate((first, second)):
        if len(call) != 18:
            raise TypeError(f"a call of rnn_backward_pair_kernel has 18 arguments, got "
                            f"{len(call)}")
        k_type = _backward_call(&a[k], call[0], call[1], call[2], call[3], call[4], call[5],
                                call[6], call[7], call[8], call[9], call[10], call[11],
                                call[12], call[13], call[14], call[15], call[16], call[17])
        if k == 0:
            typenum = k_type
        _check_pair_call(typenum, k_type, a[0].T, a[k].T, a[0].B, a[k].B, a[0].H, a[k].H,
                         a[k].n_threads, False)
        if a[k].chunk_T != a[0].chunk_T or a[k].k != a[0].k:
            raise ValueError("the calls of a pair need the same chunk of steps and "
                             "bptt_truncate")
    if typenum == cnp.NPY_FLOAT:
        alloc_failed = _backward_pair_parallel(a, <float *>NULL)
    else:
        alloc_failed = _backward_pair_parallel(a, <double *>NULL)
    if alloc_failed:
        _raise_no_slots(a[0].k, a[0].H)


cdef int _raise_no_slots(int k, int H) except -1:
    raise MemoryError(f"bptt_truncate={k}: no memory for the {2 * (k + 1)} in-flight "
                      f"gradient slots of (rows, H={H}) per thread")


cdef int _backward_call(_Backward *a, x, W_x, W_h, h_states, dhs, dh_n, lengths, dh,
                        dh_scratch, d_pre, dx, dW_x, dW_h, db_acc, bint relu,
                        int bptt_truncate, bint small_m_gemm, int n_threads) except -1:
    """rnn_backward_kernel's arguments, checked, into ``a``; returns the float type."""
    cdef int typenum = _float_typenum(x, "x")
    a.x = _data(x, typenum, 3, False, "x")
    a.W_x = _data(W_x, typenum, 2, False, "W_x")
    a.W_h = _data(W_h, typenum, 2, False, "W_h")
    a.h_states = _data(h_states, typenum, 3, False, "h_states")
    a.dhs = _data_or_null(dhs, typenum, 3, False, "dhs")
    a.dh_n = _data_or_null(dh_n, typenum, 2, False, "dh_n")
    a.lengths = <const int *>_data_or_null(lengths, cnp.NPY_INT, 1, False, "lengths")
    a.dh = _data(dh, typenum, 2, True, "dh")
    a.dh_scratch = _data(dh_scratch, typenum, 2, True, "dh_scratch")
    a.d_pre = _data(d_pre, typenum, 3, True, "d_pre")
    a.dx = _data(dx, typenum, 3, True, "dx")
    a.dW_x = _data(dW_x, typenum, 2, True, "dW_x")
    a.dW_h = _data(dW_h, typenum, 2, True, "dW_h")
    a.db_acc = <double *>_data(db_acc, cnp.NPY_DOUBLE, 1, True, "db_acc")
    a.T = <int>_dim(x, 0)
    a.B = <int>_dim(x, 1)
    a.D = <int>_dim(x, 2)
    a.H = <int>_dim(W_h, 0)
    a.chunk_T = <int>_dim(d_pre, 0)
    a.relu = relu
    a.k = bptt_truncate
    a.use_kernel = small_m_gemm and typenum == cnp.NPY_FLOAT and fl_gemm_packed_available()
    a.n_threads = n_threads
    a.scratch_rows = 64   # dx's product runs in blocks of (at least) this many rows
    if a.k < 0:
        a.dh_n = NULL     # full BPTT: dh_n came in through dh
    cdef int T = a.T, B = a.B, D = a.D, H = a.H
    _check_dims(W_h, "W_h", H, H)
    _check_dims(W_x, "W_x", D, H)
    _check_dims(dW_x, "dW_x", D, H)
    _check_dims(dW_h, "dW_h", H, H)
    _check_dims(db_acc, "db_acc", H)
    _check_dims(h_states, "h_states", T + 1, B, H)
    _check_dims(dhs, "dhs", T, B, H)
    _check_dims(dh_n, "dh_n", B, H)
    _check_dims(dh, "dh", B, H)
    _check_dims(dh_scratch, "dh_scratch", B, H)
    _check_dims(dx, "dx", T, B, D)
    if a.chunk_T < 1 or a.chunk_T > max(T, 1):
        raise ValueError(f"kernel argument d_pre must hold 1 to T={T} steps, "
                         f"got {a.chunk_T}")
    _check_dims(d_pre, "d_pre", a.chunk_T, B, H)
    _check_sequence_args(lengths, a.lengths, T, B, n_threads)
    return typenum


cdef int _backward_pair_parallel(const _Backward *a, floating *slots) noexcept:
    """_backward_parallel for a pair: each thread runs a whole call, every row of it."""
    cdef float *a_scratch = NULL
    cdef int alloc_failed[1]
    alloc_failed[0] = 0
    with nogil, parallel(num_threads=2):
        a_scratch = _thread_scratch(a[0].use_kernel or a[1].use_kernel, a[0].B, True,
                                    a[0].scratch_rows, a[0].H)
        slots = NULL
        if a[0].k >= 0:
            slots = <floating *>fl_aligned_alloc(<size_t>(2 * (a[0].k + 1)) * a[0].B
                                                 * a[0].H * sizeof(floating))
            if slots == NULL:
                alloc_failed[0] = 1
        fl_barrier()   # every thread sees whether every allocation succeeded
        try:
            if not alloc_failed[0]:
                if fl_num_threads() == 1:
                    _backward_worker(&a[0], 0, 1, a_scratch, slots)
                    _backward_worker(&a[1], 0, 1, a_scratch, slots)
                else:
                    _backward_worker(&a[threadid()], 0, 1, a_scratch, slots)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(slots)
    return alloc_failed[0]


cdef int _backward_parallel(const _Backward *a, floating *slots) noexcept:
    """Returns 1 if the truncated sweep's slots could not be allocated (nothing ran).
    (``slots`` comes in NULL, of the call's float type: each thread allocates its own.)"""
    cdef float *a_scratch = NULL
    cdef size_t slot_floats
    cdef int alloc_failed[1]
    alloc_failed[0] = 0
    with nogil, parallel(num_threads=a.n_threads):
        a_scratch = _thread_scratch(a.use_kernel, a.B, False, a.scratch_rows, a.H)
        slots = NULL
        if a.k >= 0:
            slot_floats = <size_t>(2 * (a.k + 1)) * ((a.B + fl_num_threads() - 1)
                                                     // fl_num_threads()) * a.H
            slots = <floating *>fl_aligned_alloc(slot_floats * sizeof(floating))
            if slots == NULL:
                alloc_failed[0] = 1
        fl_barrier()   # every thread sees whether every allocation succeeded
        try:
            if not alloc_failed[0]:
                _backward_worker(a, threadid(), fl_num_threads(), a_scratch, slots)
        finally:
            fl_aligned_free(a_scratch)
            fl_aligned_free(slots)
    return alloc_failed[0]

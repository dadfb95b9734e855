# Shared by the compiled LSTM and RNN kernels: the C helpers' declarations, how work is
# cut between threads, and the per-chunk weight/input gradients of a backward pass.
from cython cimport floating

cimport numpy as cnp

from ._blas cimport gemm
from ._runtime cimport backward_pack_pays

cdef extern from "fastlstm_kernels.h" nogil:
    int fl_num_threads()
    void fl_barrier()
    ctypedef struct fl_step_barrier:
        pass
    void fl_step_barrier_init(fl_step_barrier *b)
    void fl_step_barrier_wait(fl_step_barrier *b, int n_threads)
    void *fl_aligned_alloc(size_t nbytes)
    void fl_aligned_free(void *p)
    void fl_lstm_cell_forward_f32(int n_rows, int H, int u0, int nu, float *gates,
                                  const float *c_prev, float *c_next, const float *h_prev,
                                  float *h_next, float *hs, const int *lengths, int t)
    void fl_lstm_cell_forward_f64(int n_rows, int H, int u0, int nu, double *gates,
                                  const double *c_prev, double *c_next, const double *h_prev,
                                  double *h_next, double *hs, const int *lengths, int t)
    void fl_lstm_cell_backward_f32(int n_rows, int H, int u0, int nu, const float *gates,
                                   const float *c_prev, const float *c_cur, const float *dhs,
                                   const float *dh, float *dc, float *d_gates,
                                   const int *lengths, int t)
    void fl_lstm_cell_backward_f64(int n_rows, int H, int u0, int nu, const double *gates,
                                   const double *c_prev, const double *c_cur,
                                   const double *dhs, const double *dh, double *dc,
                                   double *d_gates, const int *lengths, int t)
    void fl_rnn_cell_forward_f32(int n_rows, int H, int relu, const float *h_prev,
                                 float *h_next, float *hs, const int *lengths, int t)
    void fl_rnn_cell_forward_f64(int n_rows, int H, int relu, const double *h_prev,
                                 double *h_next, double *hs, const int *lengths, int t)
    void fl_rnn_cell_backward_f32(int n_rows, int H, int relu, const float *h_cur,
                                  const float *dh, const float *dhs, float *d_pre,
                                  const int *lengths, int t)
    void fl_rnn_cell_backward_f64(int n_rows, int H, int relu, const double *h_cur,
                                  const double *dh, const double *dhs, double *d_pre,
                                  const int *lengths, int t)
    void fl_copy_valid_rows_f32(int n_rows, int H, int u0, int nu, const float *src,
                                float *dst, const int *lengths, int t)
    void fl_copy_valid_rows_f64(int n_rows, int H, int u0, int nu, const double *src,
                                double *dst, const int *lengths, int t)
    void fl_add_column_sums_f32(int n_rows, int n_cols, const float *m, int ld, double *acc)
    void fl_add_column_sums_f64(int n_rows, int n_cols, const double *m, int ld, double *acc)

cdef extern from "fastlstm_gemm.h" nogil:
    int FL_NR
    int fl_gemm_packed_available()
    size_t fl_packed_size(int K, int N)
    size_t fl_packed_a_size(int M, int K)
    void fl_pack_panels_f32(int K, int N, const float *B, int ldb, int trans, float *packed,
                            int p0, int p1)
    void fl_gemm_packed_f32(int M, int N, int K, const float *A, int lda,
                            const float *packed, float *C, int ldc, int accumulate,
                            float *a_scratch)
    void fl_gemv_f32(int K, int N, const float *x, const float *W, int ldw, float *y,
                     int accumulate)
    void fl_dots_f32(int N, int K, const float *x, const float *W, int ldw, float *y)
    void fl_gemm_nt_f32(int M, int N, int K, const float *A, int lda, const float *W,
                        int ldw, float *C, int ldc, int accumulate, float *a_scratch)

cdef inline void _split(Py_ssize_t n, Py_ssize_t part, Py_ssize_t n_parts,
                        Py_ssize_t *start, Py_ssize_t *stop) noexcept nogil:
    """[start, stop): part ``part`` of ``n`` items cut into ``n_parts`` near-equal parts."""
    start[0] = n * part // n_parts
    stop[0] = n * (part + 1) // n_parts


cdef inline void _split_aligned(Py_ssize_t n, Py_ssize_t align, Py_ssize_t part,
                                Py_ssize_t n_parts, Py_ssize_t *start,
                                Py_ssize_t *stop) noexcept nogil:
    """Like _split, in whole blocks of ``align`` items (SIMD- or panel-aligned parts)."""
    _split((n + align - 1) // align, part, n_parts, start, stop)
    start[0] = min(start[0] * align, n)
    stop[0] = min(stop[0] * align, n)


cdef inline float *_step_transpose_buffer(bint wanted, int T, int B, int H, int G,
                                          bint split_units, int n_threads) except? NULL:
    """The buffer a float32 backward packs W_h^T (G x H) into for its step products, or
    NULL where packing does not pay (``backward_pack_pays``) or is not ``wanted``; release
    with fl_aligned_free. G * (H + FL_NR * n_threads) floats: room for every thread of a
    unit split to pack its own units' panels at G * (u0 + FL_NR * tid) (see
    _pack_step_transpose)."""
    cdef int rows = B if split_units else (B + n_threads - 1) // n_threads
    if not (wanted and backward_pack_pays(T, rows)):
        return NULL
    cdef float *packed_t = <float *>fl_aligned_alloc(
        fl_packed_size(G, H + FL_NR * n_threads) * sizeof(float))
    if packed_t == NULL:
        raise MemoryError("backward: no memory for the packed W_h^T")
    return packed_t


cdef inline float *_pack_step_transpose(float *packed_t, const float *W_h, int G, int H,
                                        Py_ssize_t u0, Py_ssize_t nu, bint split_units,
                                        Py_ssize_t tid, Py_ssize_t n_threads) noexcept nogil:
    """Pack this thread's panels of op(B) = W_h^T (G x H; W_h is (H, G)) into
    ``packed_t`` (from _step_transpose_buffer) and return where they start: in a unit
    split its own units [u0, u0 + nu); in a batch split its share of all H units', then a
    barrier, since every thread reads them all (all threads must call it then)."""
    cdef Py_ssize_t p0, p1
    cdef float *panels
    if split_units:
        panels = packed_t + G * (u0 + FL_NR * tid)
        if nu > 0:
            fl_pack_panels_f32(G, <int>nu, W_h + u0 * G, G, 1, panels, 0,
                               <int>((nu + FL_NR - 1) // FL_NR))
        return panels
    _split((H + FL_NR - 1) // FL_NR, tid, n_threads, &p0, &p1)
    fl_pack_panels_f32(G, H, W_h, G, 1, packed_t, <int>p0, <int>p1)
    fl_barrier()
    return packed_t


cdef inline float *_thread_scratch(bint wanted, int B, bint split_units, int min_rows,
                                   int K) noexcept nogil:
    """This thread's scratch for the packed recurrent products (NULL if not ``wanted``;
    release with fl_aligned_free), sized by the thread count the OpenMP runtime actually
    granted (it may give fewer threads than asked for, and each thread then takes more
    rows). Call inside the parallel region."""
    if not wanted:
        return NULL
    cdef int rows = B if split_units else (B + fl_num_threads() - 1) // fl_num_threads()
    return <float *>fl_aligned_alloc(fl_packed_a_size(max(rows, min_rows), K) * sizeof(float))


cdef inline void _copy_valid_rows(int n_rows, int H, int u0, int nu, const floating *src,
                                  floating *dst, const int *lengths, int t) noexcept nogil:
    if floating is float:
        fl_copy_valid_rows_f32(n_rows, H, u0, nu, src, dst, lengths, t)
    else:
        fl_copy_valid_rows_f64(n_rows, H, u0, nu, src, dst, lengths, t)


cdef inline void _add_column_sums(int n_rows, int n_cols, const floating *m, int ld,
                                  double *acc) noexcept nogil:
    if floating is float:
        fl_add_column_sums_f32(n_rows, n_cols, m, ld, acc)
    else:
        fl_add_column_sums_f64(n_rows, n_cols, m, ld, acc)



# fastlstm's NT kernel (dot products along k) pays when the dot products are long; for
# short ones its per-output reductions dominate and BLAS is faster.
cdef enum:
    NT_MIN_K = 256


cdef inline bint _nt_pays(int K) noexcept nogil:
    return K >= NT_MIN_K


cdef inline void _recurrent_gradients(Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t rows, int N,
                                      int H, const floating *d_pre,
                                      const floating *h_prev, floating *dW_h,
                                      double *db_acc, floating weight_beta) noexcept nogil:
    """Columns [c0, c1) of dW_h (+)= h_prev^T d_pre and of db += d_pre's column sums."""
    gemm(True, False, H, <int>(c1 - c0), <int>rows, <floating>1.0, h_prev, H, d_pre + c0, N,
         weight_beta, dW_h + c0, N)
    _add_column_sums(<int>rows, <int>(c1 - c0), d_pre + c0, N, db_acc + c0)


cdef inline void _chunk_gradients(Py_ssize_t tid, Py_ssize_t n_threads, Py_ssize_t rows,
                                  int N, int D, int H, const floating *d_pre,
                                  const floating *x, const floating *h_prev,
                                  const floating *W_x, floating *dx, floating *dW_x,
                                  floating *dW_h, double *db_acc, floating weight_beta,
                                  float *a_scratch, int scratch_rows) noexcept nogil:
    """The weight and input gradients of ``rows`` (step, sequence) rows at once:
    dx = d_pre W_x^T, dW_x (+)= x^T d_pre, dW_h (+)= h_prev^T d_pre, db += column sums.
    d_pre (rows x N) holds the gradients of the pre-activations (N = 4H for the LSTM, H
    for the RNN); dx is shared out by rows, the weight gradients by columns."""
    cdef Py_ssize_t r, r0, r1, c0, c1, m
    _split(rows, tid, n_threads, &r0, &r1)
    # dx = d_pre W_x^T: W_x (D x N) read in place by the NT kernel rather than repacked
    # by BLAS for every chunk.
    if floating is float and a_scratch != NULL and _nt_pays(N):
        r = r0
        while r < r1:
            m = min(<Py_ssize_t>scratch_rows, r1 - r)
            fl_gemm_nt_f32(<int>m, D, N, d_pre + r * N, N, W_x, N, dx + r * D, D, 0,
                           a_scratch)
            r += m
    else:
        gemm(False, True, <int>(r1 - r0), D, N, <floating>1.0, d_pre + r0 * N, N, W_x, N,
             <floating>0.0, dx + r0 * D, D)
    _split_aligned(N, 16, tid, n_threads, &c0, &c1)
    if c1 > c0:
        gemm(True, False, D, <int>(c1 - c0), <int>rows, <floating>1.0, x, D, d_pre + c0, N,
             weight_beta, dW_x + c0, N)
        _recurrent_gradients(c0, c1, rows, N, H, d_pre, h_prev, dW_h, db_acc, weight_beta)


cdef inline void _chunk_lookup_gradients(Py_ssize_t tid, Py_ssize_t n_threads,
                                         Py_ssize_t rows, int N, int H,
                                         const floating *d_pre, const int *ids,
                                         const floating *h_prev, floating *d_table,
                                         floating *dW_h, double *db_acc,
                                         floating weight_beta) noexcept nogil:
    """_chunk_gradients for inputs looked up by ``ids`` (rows of a table, see _lstm.pyx):
    no dx, and the table's gradient (zeroed by the caller) gathers d_pre's rows by id.
    Each thread owns a band of columns, so repeated ids never race."""
    cdef Py_ssize_t r, c0, c1, c
    cdef floating *table_row
    cdef const floating *d_row
    _split_aligned(N, 16, tid, n_threads, &c0, &c1)
    if c1 > c0:
        for r in range(rows):
            table_row = d_table + <Py_ssize_t>ids[r] * N
            d_row = d_pre + r * N
            for c in range(c0, c1):
                table_row[c] += d_row[c]
        _recurrent_gradients(c0, c1, rows, N, H, d_pre, h_prev, dW_h, db_acc, weight_beta)


# --- the kernel entry points' arguments ----------------------------------------------
# The entry points take ndarrays and use their data pointers: a typed memoryview costs
# several times more to acquire, and an LSTM forward/backward pair passes some 25 arrays,
# which matters at B = 1. The callers (fastlstm.lstm / fastlstm.rnn) allocate
# and validate every array; these checks keep a wrong type, dimensionality, layout or
# read-only output a TypeError instead of a crash.

cdef inline int _float_typenum(object a, str name) except -1:
    """NPY_FLOAT or NPY_DOUBLE: the element type of the float array ``a``."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"kernel argument {name} must be an ndarray, got {type(a).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise TypeError(f"kernel argument {name} must be float32 or float64, got "
                        f"{(<cnp.ndarray>a).dtype}")
    return typenum


cdef inline char *_data(object a, int typenum, int ndim, bint writable,
                        str name) except NULL:
    """The data of ``a``, checked to be a C-contiguous ``ndim``-d array of ``typenum``
    (and writable if asked). None is not accepted here (see _data_or_null)."""
    if (not cnp.PyArray_Check(a) or cnp.PyArray_TYPE(<cnp.ndarray>a) != typenum
            or cnp.PyArray_NDIM(<cnp.ndarray>a) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)):
        raise TypeError(f"kernel argument {name} must be a C-contiguous {ndim}-d array of "
                        f"{cnp.PyArray_DescrFromType(typenum)}")
    if writable and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a):
        raise TypeError(f"kernel argument {name} must be writable")
    return <char *>cnp.PyArray_DATA(<cnp.ndarray>a)   # never NULL, even for size 0


cdef inline char *_data_or_null(object a, int typenum, int ndim, bint writable,
                                str name) except? NULL:
    """As _data, with None giving NULL."""
    if a is None:
        return NULL
    return _data(a, typenum, ndim, writable, name)


cdef inline cnp.npy_intp _dim(object a, int i) noexcept:
    """Size i of ``a``, or -1 when ``a`` is not an array with that dimension: the entry
    points read their sizes before _data has checked every array's rank (a 0-d array
    has no dimensions to read), and the -1 never reaches a kernel, since those checks
    then fail."""
    if not cnp.PyArray_Check(a) or i >= cnp.PyArray_NDIM(<cnp.ndarray>a):
        return -1
    return cnp.PyArray_DIM(<cnp.ndarray>a, i)


cdef inline int _check_dims(object a, str name, cnp.npy_intp d0, cnp.npy_intp d1=-2,
                            cnp.npy_intp d2=-2) except -1:
    """The kernels index every array by sizes taken from a few of them: the others must
    agree, or a direct call of a private kernel could read or write outside a buffer.
    ``a`` (already checked by _data, or None) must have dimensions (d0[, d1[, d2]]);
    -2 marks an absent dimension."""
    if a is None:
        return 0
    cdef cnp.npy_intp expected[3]
    cdef int nd = cnp.PyArray_NDIM(<cnp.ndarray>a), i, j
    if nd > 3:
        raise ValueError(f"kernel argument {name} has {nd} dimensions, at most 3 expected")
    expected[0] = d0
    expected[1] = d1
    expected[2] = d2
    for i in range(nd):
        if cnp.PyArray_DIM(<cnp.ndarray>a, i) != expected[i]:
            raise ValueError(f"kernel argument {name} has shape {a.shape}, expected "
                             f"{tuple([expected[j] for j in range(nd)])}")
    return 0


cdef inline int _check_index_range(const int *values, Py_ssize_t n, int low, int high,
                                   str name) except -1:
    """Every value in [low, high]."""
    cdef Py_ssize_t i
    for i in range(n):
        if values[i] < low or values[i] > high:
            raise ValueError(f"kernel argument {name} has {values[i]} at {i}, outside "
                             f"[{low}, {high}]")
    return 0


cdef inline int _check_sequence_args(object lengths, const int *lengths_ptr, int T, int B,
                                     int n_threads) except -1:
    """The arguments every recursion kernel shares: ``lengths`` (B,) in [0, T] or None;
    ``n_threads`` >= 1."""
    _check_dims(lengths, "lengths", B)
    if lengths_ptr != NULL:
        _check_index_range(lengths_ptr, B, 0, T, "lengths")
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")
    return 0


cdef inline int _check_pair_call(int typenum, int k_typenum, int T0, int T, int B0, int B,
                                 int H0, int H, int n_threads, bint split_units) except -1:
    """One call of a pair (two calls run one per thread in one parallel region, each
    thread its whole call): the first call's float type and sizes, so that both threads
    pass the same barriers, and planned for one thread."""
    if k_typenum != typenum:
        raise TypeError("the calls of a pair must have one float dtype")
    if T != T0 or B != B0 or H != H0:
        raise ValueError(f"the calls of a pair need the same T, B, H, got ({T0}, {B0}, "
                         f"{H0}) and ({T}, {B}, {H})")
    if n_threads != 1 or split_units:
        raise ValueError("each call of a pair runs on one thread: n_threads 1, no unit "
                         "split")
    return 0


cdef inline int _check_ids(object ids, const int *ids_ptr, int T, int B,
                           int n_rows) except -1:
    """A lookup's ``ids``: (T*B,) rows of a table of ``n_rows``."""
    _check_dims(ids, "ids", <cnp.npy_intp>T * B)
    _check_index_range(ids_ptr, <Py_ssize_t>T * B, 0, n_rows - 1, "ids")
    return 0

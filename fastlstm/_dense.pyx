# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels for the dense parts of a training step: the output layer's products,
softmax cross-entropy and the optimizer updates.

They run in the same OpenMP thread pool as the recurrent kernels, with BLAS called
single-threaded from each OpenMP thread. Mixing the two pools costs far more than it
saves: with NumPy's multi-threaded OpenBLAS products between multi-threaded recurrent
kernels, each pool's idle threads spin on the cores the other one needs.

Callers (``fastlstm._dense``) validate shapes, dtypes and contiguity; ``n_threads`` is
taken as given.
"""
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.stdint cimport int64_t

from ._blas cimport gemm
from ._kernel_common cimport _split, _split_aligned, fl_num_threads
from ._runtime cimport fl_isa_bind, isa_level_for

cdef extern from "fastlstm_dense.h" nogil:
    double fl_softmax_xent_rows_f32(int n_rows, int V, const float *z, const int64_t *targets,
                                    int has_ignore, int64_t ignore, float scale, float *grad)
    double fl_softmax_xent_rows_f64(int n_rows, int V, const double *z,
                                    const int64_t *targets, int has_ignore, int64_t ignore,
                                    double scale, double *grad)
    void fl_adagrad_f32(size_t n, float *p, const float *g, float *s, float lr, float eps)
    void fl_adagrad_f64(size_t n, double *p, const double *g, double *s, double lr,
                        double eps)
    void fl_adam_f32(size_t n, float *p, const float *g, float *m, float *v, float b1,
                     float b2, float weight_decay, float step_size, float sqrt_bc2, float eps)
    void fl_adam_f64(size_t n, double *p, const double *g, double *m, double *v, double b1,
                     double b2, double weight_decay, double step_size, double sqrt_bc2,
                     double eps)

fl_isa_bind(isa_level_for(__name__))   # every kernel here runs at the process's one level


cdef enum:
    MAX_THREADS = 256   # the per-thread partial sums of the loss sit in a stack array


cdef void _matmul_part(Py_ssize_t tid, Py_ssize_t n_threads, bint trans_a, bint trans_b,
                       int M, int N, int K, const floating *A, int lda, const floating *B,
                       int ldb, floating beta, floating *C) noexcept nogil:
    """This thread's block of C = op(A) op(B) + beta C: a band of rows when C is taller
    than wide, else a band of (16-aligned) columns, so every thread reads one operand
    whole and its own slice of the other."""
    cdef Py_ssize_t p0, p1
    if M >= N:
        _split(M, tid, n_threads, &p0, &p1)
        if p1 > p0:
            # rows p0.. of op(A): rows of A, or columns of A when it is transposed
            gemm(trans_a, trans_b, <int>(p1 - p0), N, K, <floating>1.0,
                 A + (p0 if trans_a else p0 * lda), lda, B, ldb, beta, C + p0 * N, N)
    else:
        _split_aligned(N, 16, tid, n_threads, &p0, &p1)
        if p1 > p0:
            # columns p0.. of op(B): columns of B, or rows of B when it is transposed
            gemm(trans_a, trans_b, M, <int>(p1 - p0), K, <floating>1.0, A, lda,
                 B + (p0 * ldb if trans_b else p0), ldb, beta, C + p0, N)


def matmul(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
           bint trans_a, bint trans_b, floating beta, int n_threads):
    """C (M, N) = op(A) @ op(B) + beta * C, row-major, op = transpose when asked.

    A is (M, K), or (K, M) with ``trans_a``; B is (K, N), or (N, K) with ``trans_b``;
    K >= 1 (the caller handles K == 0).
    """
    cdef int M = C.shape[0], N = C.shape[1]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    cdef int lda = A.shape[1], ldb = B.shape[1]
    # (these kernels are reachable from Python: inconsistent shapes must not read or
    # write outside the buffers)
    if (A.shape[1] if trans_a else A.shape[0]) != M:
        raise ValueError(f"matmul: op(A) has {A.shape[1] if trans_a else A.shape[0]} rows, "
                         f"C has {M}")
    if (B.shape[1] if trans_b else B.shape[0]) != K or \
            (B.shape[0] if trans_b else B.shape[1]) != N:
        raise ValueError(f"matmul: op(B) must be ({K}, {N}) for op(A) ({M}, {K}) and "
                         f"C ({M}, {N}), got B ({B.shape[0]}, {B.shape[1]}) trans_b={trans_b}")
    if M == 0 or N == 0:
        return
    if n_threads <= 1:
        with nogil:
            _matmul_part(0, 1, trans_a, trans_b, M, N, K, &A[0, 0], lda, &B[0, 0], ldb,
                         beta, &C[0, 0])
        return
    with nogil, parallel(num_threads=n_threads):
        _matmul_part(threadid(), fl_num_threads(), trans_a, trans_b, M, N, K, &A[0, 0],
                     lda, &B[0, 0], ldb, beta, &C[0, 0])


def softmax_cross_entropy(const floating[:, ::1] logits, const int64_t[::1] targets,
                          floating[:, ::1] grad, bint has_ignore, int64_t ignore_index,
                          floating scale, int n_threads):
    """Sum over the kept rows of -log softmax(logits)[target] (a float, summed in double);
    fills grad (N, V) with scale * (softmax - onehot) on kept rows and 0 on ignored ones.
    Targets of kept rows must lie in [0, V) (checked by the caller)."""
    cdef int N = logits.shape[0], V = logits.shape[1]
    cdef double parts[MAX_THREADS]
    cdef Py_ssize_t k
    cdef double total = 0.0
    if targets.shape[0] != N or grad.shape[0] != N or grad.shape[1] != V:
        raise ValueError(f"softmax_cross_entropy: logits ({N}, {V}) needs targets ({N},) "
                         f"and grad ({N}, {V}), got ({targets.shape[0]},) and "
                         f"({grad.shape[0]}, {grad.shape[1]})")
    for k in range(N):
        if not (has_ignore and targets[k] == ignore_index) and \
                not (0 <= targets[k] < V):
            raise ValueError(f"softmax_cross_entropy: target {targets[k]} at row {k} "
                             f"outside [0, {V})")
    if N == 0 or V == 0:
        return 0.0
    n_threads = max(1, min(n_threads, MAX_THREADS, N))
    for k in range(MAX_THREADS):
        parts[k] = 0.0
    with nogil, parallel(num_threads=n_threads):
        _xent_part(threadid(), fl_num_threads(), N, V, &logits[0, 0], &targets[0],
                   has_ignore, ignore_index, scale, &grad[0, 0], parts)
    for k in range(n_threads):
        total += parts[k]
    return total


cdef void _xent_part(Py_ssize_t tid, Py_ssize_t n_threads, int N, int V,
                     const floating *logits, const int64_t *targets, bint has_ignore,
                     int64_t ignore_index, floating scale, floating *grad,
                     double *parts) noexcept nogil:
    cdef Py_ssize_t r0, r1
    _split(N, tid, n_threads, &r0, &r1)
    if r1 <= r0:
        return
    if floating is float:
        parts[tid] = fl_softmax_xent_rows_f32(<int>(r1 - r0), V, logits + r0 * V,
                                              targets + r0, has_ignore, ignore_index, scale,
                                              grad + r0 * V)
    else:
        parts[tid] = fl_softmax_xent_rows_f64(<int>(r1 - r0), V, logits + r0 * V,
                                              targets + r0, has_ignore, ignore_index, scale,
                                              grad + r0 * V)


def adagrad(floating[::1] p, const floating[::1] g, floating[::1] state_sum, floating lr,
            floating eps, int n_threads):
    """In place: state_sum += g^2; p -= lr * g / (sqrt(state_sum) + eps)."""
    cdef Py_ssize_t n = p.shape[0]
    if g.shape[0] != n or state_sum.shape[0] != n:
        raise ValueError(f"adagrad: p, g and state_sum must have one length, got {n}, "
                         f"{g.shape[0]}, {state_sum.shape[0]}")
    if n == 0:
        return
    if n_threads <= 1:
        with nogil:
            _adagrad_range(0, n, &p[0], &g[0], &state_sum[0], lr, eps)
        return
    with nogil, parallel(num_threads=n_threads):
        _adagrad_part(threadid(), fl_num_threads(), n, &p[0], &g[0], &state_sum[0], lr, eps)


cdef void _adagrad_part(Py_ssize_t tid, Py_ssize_t n_threads, Py_ssize_t n, floating *p,
                        const floating *g, floating *s, floating lr,
                        floating eps) noexcept nogil:
    cdef Py_ssize_t i0, i1
    _split_aligned(n, 16, tid, n_threads, &i0, &i1)
    _adagrad_range(i0, i1, p, g, s, lr, eps)


cdef inline void _adagrad_range(Py_ssize_t i0, Py_ssize_t i1, floating *p, const floating *g,
                                floating *s, floating lr, floating eps) noexcept nogil:
    if i1 <= i0:
        return
    if floating is float:
        fl_adagrad_f32(i1 - i0, p + i0, g + i0, s + i0, lr, eps)
    else:
        fl_adagrad_f64(i1 - i0, p + i0, g + i0, s + i0, lr, eps)


def adam(floating[::1] p, const floating[::1] g, floating[::1] exp_avg,
         floating[::1] exp_avg_sq, floating beta1, floating beta2, floating weight_decay,
         floating step_size, floating sqrt_bias_correction2, floating eps, int n_threads):
    """In place, PyTorch's Adam: g' = g + weight_decay p; m = b1 m + (1-b1) g';
    v = b2 v + (1-b2) g'^2; p -= step_size * m / (sqrt(v) / sqrt_bias_correction2 + eps)."""
    cdef Py_ssize_t n = p.shape[0]
    if g.shape[0] != n or exp_avg.shape[0] != n or exp_avg_sq.shape[0] != n:
        raise ValueError(f"adam: p, g, exp_avg and exp_avg_sq must have one length, got "
                         f"{n}, {g.shape[0]}, {exp_avg.shape[0]}, {exp_avg_sq.shape[0]}")
    if n == 0:
        return
    if n_threads <= 1:
        with nogil:
            _adam_range(0, n, &p[0], &g[0], &exp_avg[0], &exp_avg_sq[0], beta1, beta2,
                        weight_decay, step_size, sqrt_bias_correction2, eps)
        return
    with nogil, parallel(num_threads=n_threads):
        _adam_part(threadid(), fl_num_threads(), n, &p[0], &g[0], &exp_avg[0],
                   &exp_avg_sq[0], beta1, beta2, weight_decay, step_size,
                   sqrt_bias_correction2, eps)


cdef void _adam_part(Py_ssize_t tid, Py_ssize_t n_threads, Py_ssize_t n, floating *p,
                     const floating *g, floating *m, floating *v, floating b1, floating b2,
                     floating wd, floating step_size, floating sqrt_bc2,
                     floating eps) noexcept nogil:
    cdef Py_ssize_t i0, i1
    _split_aligned(n, 16, tid, n_threads, &i0, &i1)
    _adam_range(i0, i1, p, g, m, v, b1, b2, wd, step_size, sqrt_bc2, eps)


cdef inline void _adam_range(Py_ssize_t i0, Py_ssize_t i1, floating *p, const floating *g,
                             floating *m, floating *v, floating b1, floating b2,
                             floating wd, floating step_size, floating sqrt_bc2,
                             floating eps) noexcept nogil:
    if i1 <= i0:
        return
    if floating is float:
        fl_adam_f32(i1 - i0, p + i0, g + i0, m + i0, v + i0, b1, b2, wd, step_size,
                    sqrt_bc2, eps)
    else:
        fl_adam_f64(i1 - i0, p + i0, g + i0, m + i0, v + i0, b1, b2, wd, step_size,
                    sqrt_bc2, eps)

# Row-major GEMM/GEMV over scipy's column-major BLAS (scipy.linalg.cython_blas), in the
# manner of scikit-learn's _cython_blas: a row-major matrix is its column-major transpose,
# so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T with the operands swapped.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                      const floating *A, int lda, const floating *B, int ldb,
                      floating beta, floating *C, int ldc) noexcept nogil:
    """C (M x N) = alpha * op(A) (M x K) @ op(B) (K x N) + beta * C, all row-major.

    A single row (M == 1, no transpose of A) goes through GEMV, which OpenBLAS runs
    faster than a one-column GEMM (the B=1 decode and char-LM case).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef char tv = b'T' if trans_b else b'N'
    cdef int one = 1
    if M <= 0 or N <= 0:
        return
    if M == 1 and not trans_a and K > 0:
        # y (1 x N) = x (1 x K) op(B): with B row-major, column-major BLAS sees B^T.
        if trans_b:   # B is (N x K) row-major = (K x N) column-major: y = B_cm^T x
            if floating is float:
                sgemv(&tv, &K, &N, &alpha, <float *>B, &ldb, <float *>A, &one, &beta, C, &one)
            else:
                dgemv(&tv, &K, &N, &alpha, <double *>B, &ldb, <double *>A, &one, &beta, C, &one)
        else:         # B is (K x N) row-major = (N x K) column-major: y = B_cm x
            if floating is float:
                sgemv(&tv, &N, &K, &alpha, <float *>B, &ldb, <float *>A, &one, &beta, C, &one)
            else:
                dgemv(&tv, &N, &K, &alpha, <double *>B, &ldb, <double *>A, &one, &beta, C, &one)
        return
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float *>B, &ldb, <float *>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double *>B, &ldb, <double *>A, &lda,
              &beta, C, &ldc)

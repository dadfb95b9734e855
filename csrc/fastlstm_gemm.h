/* A small-M float32 GEMM against a pre-packed right-hand matrix, for the LSTM recursion.
 *
 * Every time step multiplies a few rows (the batch slice, M = 1..64) by the same weight
 * matrix (K x N, N = 4H forward or H backward). BLAS repacks the weights on every call
 * and its blocking is tuned for large M; here the weights are packed once per
 * forward/backward call into column panels of FL_NR (= 32) floats, [panel][k][0:32], zero-
 * padded past N, and a register-blocked kernel streams each panel once per step.
 *
 * Kernels exist for AVX-512F and for AVX2+FMA (GCC/Clang vector extensions, chosen at run
 * time); fl_gemm_packed_available() is 0 elsewhere and the caller uses BLAS instead.
 */
#ifndef FASTLSTM_GEMM_H
#define FASTLSTM_GEMM_H

#include <stddef.h>
#include <string.h>

#define FL_NR 32
#define FL_KC 512
#define FL_PREFETCH_K 24  /* panel rows ahead: covers memory latency on the first pass */   /* K-block: a 64 KiB panel slice stays in L2 across the row blocks */

static size_t fl_packed_size(int K, int N) {
    return (size_t)((N + FL_NR - 1) / FL_NR) * FL_NR * (size_t)K;
}

/* Pack panels [p0, p1) of op(B) (K x N). trans == 0: B is K x N row-major (ld ldb);
 * trans == 1: B is N x K row-major and op(B) = B^T. */
static void fl_pack_panels_f32(int K, int N, const float *B, int ldb, int trans,
                               float *packed, int p0, int p1) {
    if (!trans) {
        /* Row by row: B is read once in order, each panel gets 32 contiguous floats. */
        for (int k = 0; k < K; k++) {
            const float *src = B + (size_t)k * ldb;
            for (int p = p0; p < p1; p++) {
                float *d = packed + ((size_t)p * K + k) * FL_NR;
                int n0 = p * FL_NR;
                int nv = N - n0 < FL_NR ? N - n0 : FL_NR;
                if (nv == FL_NR) {
                    memcpy(d, src + n0, FL_NR * sizeof(float));
                } else {
                    for (int j = 0; j < nv; j++) d[j] = src[n0 + j];
                    for (int j = nv; j < FL_NR; j++) d[j] = 0.0f;
                }
            }
        }
        return;
    }
    /* Transposed: tiles of 32 rows x 32 columns of B so reads and writes stay in cache. */
    for (int p = p0; p < p1; p++) {
        float *dst = packed + (size_t)p * FL_NR * K;
        int n0 = p * FL_NR;
        int nv = N - n0 < FL_NR ? N - n0 : FL_NR;
        for (int k0 = 0; k0 < K; k0 += 32) {
            int kc = K - k0 < 32 ? K - k0 : 32;
            for (int j = 0; j < FL_NR; j++) {
                if (j < nv) {
                    const float *src = B + (size_t)(n0 + j) * ldb + k0;
                    for (int k = 0; k < kc; k++) dst[(size_t)(k0 + k) * FL_NR + j] = src[k];
                } else {
                    for (int k = 0; k < kc; k++) dst[(size_t)(k0 + k) * FL_NR + j] = 0.0f;
                }
            }
        }
    }
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) \
    && !defined(FASTLSTM_NO_PACKED_GEMM)
#define FL_HAVE_PACKED_KERNELS 1

typedef float fl_v16 __attribute__((vector_size(64), aligned(4)));
typedef float fl_v8 __attribute__((vector_size(32), aligned(4)));

/* C[0:MR, 0:nc] (+)= A[0:MR, 0:K] @ panel[0:K, 0:32], with A packed k-major (A[k*MR + m]);
 * the accumulators stay in registers. */
#define FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, MR)                                           \
__attribute__((target(TARGET)))                                                                \
static void NAME##_##MR(int K, const float *A, const float *P, float *C, int ldc,                \
                        int nc, int accumulate) {                                              \
    enum { NV = FL_NR / VLEN };                                                                \
    VEC acc[MR][NV];                                                                           \
    _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++)                                      \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[m][v] = (VEC){0};             \
    for (int k = 0; k < K; k++) {                                                              \
        VEC b[NV];                                                                             \
        __builtin_prefetch(P + (size_t)(k + FL_PREFETCH_K) * FL_NR);                           \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                   \
            memcpy(&b[v], P + (size_t)k * FL_NR + v * VLEN, sizeof(VEC));                      \
        _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++) {                                \
            VEC a = (VEC){0} + A[(size_t)k * MR + m];                                          \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[m][v] += a * b[v];        \
        }                                                                                      \
    }                                                                                          \
    if (nc == FL_NR) {                                                                         \
        _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++)                                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                             \
                float *c = C + (size_t)m * ldc + v * VLEN;                                     \
                VEC old;                                                                       \
                if (accumulate) { memcpy(&old, c, sizeof(VEC)); acc[m][v] += old; }            \
                memcpy(c, &acc[m][v], sizeof(VEC));                                            \
            }                                                                                  \
    } else {                                                                                   \
        for (int m = 0; m < MR; m++) {                                                         \
            float tmp[FL_NR];                                                                  \
            memcpy(tmp, acc[m], sizeof tmp);                                                   \
            float *c = C + (size_t)m * ldc;                                                    \
            for (int j = 0; j < nc; j++) c[j] = accumulate ? c[j] + tmp[j] : tmp[j];           \
        }                                                                                      \
    }                                                                                          \
}

#define FL_DEFINE_KERNELS(NAME, TARGET, VEC, VLEN)                                             \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 1)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 2)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 3)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 4)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 5)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 6)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 7)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 8)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 9)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 10)                                              \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 11)                                              \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, 12)                                              \
    typedef void (*NAME##_fn)(int, const float *, const float *, float *, int, int, int);      \
    static const NAME##_fn NAME##_table[13] = {                                                \
        NULL, NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6, NAME##_7,            \
        NAME##_8, NAME##_9, NAME##_10, NAME##_11, NAME##_12};

/* AVX-512: 12 rows x 2 zmm = 24 accumulators. AVX2: 6 rows x 4 ymm = 24 would spill
 * with 16 registers, so 3 rows x 4 ymm (12 accumulators + 4 panel registers). */
FL_DEFINE_KERNELS(fl_kernel_avx512, "avx512f,fma", fl_v16, 16)
FL_DEFINE_KERNELS(fl_kernel_avx2, "avx2,fma", fl_v8, 8)

static int fl_gemm_isa = -1;   /* 0: none, 1: AVX2+FMA, 2: AVX-512F */

static int fl_gemm_packed_available(void) {
    if (fl_gemm_isa < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            fl_gemm_isa = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            fl_gemm_isa = 1;
        else
            fl_gemm_isa = 0;
    }
    return fl_gemm_isa > 0;
}

static int fl_gemm_mr(void) { return fl_gemm_isa == 2 ? 12 : 3; }

/* Floats of scratch fl_gemm_packed_f32 needs for A (M x K). */
static size_t fl_packed_a_size(int M, int K) { return (size_t)M * K; }

/* C (M x N, ld ldc) = A (M x K, ld lda) @ op(B) + (accumulate ? C : 0), op(B) packed.
 * A is first copied k-major, block by block, into a_scratch (M*K floats): rows of A lie a
 * power-of-two stride apart when K is one, and broadcasting from a dozen such rows would
 * thrash one L1 set. Rows are cut into equal blocks (16 = 8 + 8, not 12 + 4) so no
 * block runs a thin, inefficient kernel. */
static void fl_gemm_packed_f32(int M, int N, int K, const float *A, int lda,
                               const float *packed, float *C, int ldc, int accumulate,
                               float *a_scratch) {
    const int mr_max = fl_gemm_mr();
    const fl_kernel_avx512_fn *table = fl_gemm_isa == 2 ? fl_kernel_avx512_table
                                                         : fl_kernel_avx2_table;
    const int n_blocks = (M + mr_max - 1) / mr_max;
    const int mr = (M + n_blocks - 1) / n_blocks;
    const int n_panels = (N + FL_NR - 1) / FL_NR;
    for (int m0 = 0; m0 < M; m0 += mr) {
        int rows = M - m0 < mr ? M - m0 : mr;
        float *ap = a_scratch + (size_t)m0 * K;
        for (int m = 0; m < rows; m++) {
            const float *src = A + (size_t)(m0 + m) * lda;
            for (int k = 0; k < K; k++) ap[(size_t)k * rows + m] = src[k];
        }
    }
    for (int p = 0; p < n_panels; p++) {
        int nc = N - p * FL_NR < FL_NR ? N - p * FL_NR : FL_NR;
        const float *panel = packed + (size_t)p * FL_NR * K;
        for (int k0 = 0; k0 < K; k0 += FL_KC) {
            int kc = K - k0 < FL_KC ? K - k0 : FL_KC;
            int acc = accumulate || k0 > 0;
            for (int m0 = 0; m0 < M; m0 += mr) {
                int rows = M - m0 < mr ? M - m0 : mr;
                table[rows](kc, a_scratch + (size_t)m0 * K + (size_t)k0 * rows,
                            panel + (size_t)k0 * FL_NR,
                            C + (size_t)m0 * ldc + (size_t)p * FL_NR, ldc, nc, acc);
            }
        }
    }
}

#else
#define FL_HAVE_PACKED_KERNELS 0
static int fl_gemm_packed_available(void) { return 0; }
static int fl_gemm_mr(void) { return 1; }
static size_t fl_packed_a_size(int M, int K) { (void)M; (void)K; return 1; }
static void fl_gemm_packed_f32(int M, int N, int K, const float *A, int lda,
                               const float *packed, float *C, int ldc, int accumulate,
                               float *a_scratch) {
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)packed; (void)C; (void)ldc;
    (void)accumulate; (void)a_scratch;
}
#endif

#endif

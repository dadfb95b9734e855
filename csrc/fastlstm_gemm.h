/* A small-M float32 GEMM against a pre-packed right-hand matrix, for the LSTM recursion.
 *
 * Every time step multiplies a few rows (the batch slice, M = 1..64) by the same weight
 * matrix (K x N, N = 4H forward or H backward). BLAS repacks the weights on every call
 * and its blocking is tuned for large M; here the weights are packed once per
 * forward/backward call into column panels of FL_NR (= 32) floats, [panel][k][0:32], zero-
 * padded past N, and a register-blocked kernel streams each panel once per step.
 *
 * Kernels exist for AVX-512F and for AVX2+FMA (GCC/Clang vector extensions), run at the
 * level fl_isa() says; fl_gemm_packed_available() is 0 at the generic level and the caller
 * uses BLAS instead.
 */
#ifndef FASTLSTM_GEMM_H
#define FASTLSTM_GEMM_H

#include <stddef.h>
#include <string.h>

#define FL_NR 32
#define FL_KC 512         /* K-block: a 64 KiB panel slice stays in L2 across the row blocks */
#define FL_PREFETCH_K 24  /* panel rows ahead: covers memory latency on the first pass */

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

#include "fastlstm_isa.h"

#if FL_HAVE_ISA_KERNELS && !defined(FASTLSTM_NO_PACKED_GEMM)
#define FL_HAVE_PACKED_KERNELS 1

#include <immintrin.h>

/* Unaligned, aliasing vector types: *(VEC *)p is a plain unaligned vector load/store. */
typedef float fl_v16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef float fl_v8 __attribute__((vector_size(32), aligned(4), may_alias));

/* C[0:MR, 0:nc] (+)= A[0:MR, 0:K] @ panel[0:K, 0:32], with A packed k-major (A[k*MR + m]);
 * the accumulators stay in registers. Meanwhile ``next_lines`` cache lines from ``next``
 * on are prefetched, spread over the k loop (the caller's share of the next panel slice). */
#define FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, MR)                                       \
__attribute__((target(TARGET)))                                                                \
static void NAME##_##MR(int K, const float *A, const float *P, float *C, int ldc,                \
                        int nc, int accumulate, const float *next, int next_lines) {           \
    enum { NCOL = NV * VLEN };                                                                 \
    VEC acc[MR][NV];                                                                           \
    const int rate = K > 0 ? (next_lines + K - 1) / K : 0;   /* lines per k step */            \
    _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++)                                      \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[m][v] = (VEC){0};             \
    /* C is usually cold (a step's gate rows were written by the input projection long         \
     * ago): fetch it during the k loop rather than stall on it at the end. */                 \
    _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++)                                      \
        _Pragma("GCC unroll 4") for (int v = 0; v < NCOL && v < nc; v += 16)                   \
            __builtin_prefetch(C + (size_t)m * ldc + v, 1);                                    \
    for (int k = 0; k < K; k++) {                                                              \
        VEC b[NV];                                                                             \
        __builtin_prefetch(P + (size_t)(k + FL_PREFETCH_K) * FL_NR);                           \
        for (int i = 0, l = k * rate; i < rate && l < next_lines; i++, l++)                    \
            __builtin_prefetch(next + (size_t)l * 16);                                         \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                   \
            b[v] = *(const VEC *)(P + (size_t)k * FL_NR + v * VLEN);                           \
        _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++) {                                \
            /* x - 0 is x for every float, so this is a plain broadcast load (0 + x is         \
             * not: -0 + 0 = +0, and it would cost an add and a shuffle per row). */           \
            VEC a = A[(size_t)k * MR + m] - (VEC){0};                                          \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[m][v] += a * b[v];        \
        }                                                                                      \
    }                                                                                          \
    if (nc == NCOL) {                                                                          \
        _Pragma("GCC unroll 16") for (int m = 0; m < MR; m++)                                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                             \
                float *c = C + (size_t)m * ldc + v * VLEN;                                     \
                if (accumulate) acc[m][v] += *(VEC *)c;                                        \
                *(VEC *)c = acc[m][v];                                                         \
            }                                                                                  \
    } else {                                                                                   \
        for (int m = 0; m < MR; m++) {                                                         \
            float tmp[NCOL];                                                                   \
            memcpy(tmp, acc[m], sizeof tmp);                                                   \
            float *c = C + (size_t)m * ldc;                                                    \
            for (int j = 0; j < nc; j++) c[j] = accumulate ? c[j] + tmp[j] : tmp[j];           \
        }                                                                                      \
    }                                                                                          \
}

#define FL_DEFINE_KERNELS(NAME, TARGET, VEC, VLEN, NV)                                         \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 1)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 2)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 3)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 4)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 5)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 6)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 7)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 8)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 9)                                               \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 10)                                              \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 11)                                              \
    FL_DEFINE_KERNEL(NAME, TARGET, VEC, VLEN, NV, 12)                                              \
    typedef void (*NAME##_fn)(int, const float *, const float *, float *, int, int, int,       \
                              const float *, int);                                             \
    static const NAME##_fn NAME##_table[13] = {                                                \
        NULL, NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6, NAME##_7,            \
        NAME##_8, NAME##_9, NAME##_10, NAME##_11, NAME##_12};

/* AVX-512: 12 rows x 2 zmm (a whole 32-column panel) = 24 accumulators. AVX2 has 16
 * registers: 6 rows x 2 ymm over one 16-column half of a panel at a time (12 accumulators,
 * 2 panel registers, 1 broadcast), the classic Haswell shape. */
FL_DEFINE_KERNELS(fl_kernel_avx512, "avx512f,fma", fl_v16, 16, 2)
FL_DEFINE_KERNELS(fl_kernel_avx2, "avx2,fma", fl_v8, 8, 2)

typedef float fl_v4 __attribute__((vector_size(16), aligned(4), may_alias));

/* A horizontal sum as a shuffle tree (a serial lane-by-lane sum is a 16-long dependency
 * chain), for the single-row dot-product kernel. */
/* Each carries its kernels' target: a vector argument wider than the base ISA's registers
 * is an ABI change outside such a function, which clang refuses. */
static inline __attribute__((always_inline, target("avx2,fma"))) float fl_hsum8(fl_v8 v) {
    fl_v4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    a = a + __builtin_shufflevector(a, a, 2, 3, 0, 1);
    return a[0] + a[1];
}

static inline __attribute__((always_inline, target("avx512f,fma"))) float fl_hsum16(fl_v16 v) {
    fl_v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
            + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    return fl_hsum8(a);
}

/* Sixteen (eight) horizontal sums at once: a tree of pairwise half-sums whose last level
 * leaves the sum of v[q] in lane q. About 3 operations a sum instead of the 9 of a
 * separate shuffle tree per vector, which matters when K is short (the NT kernel's 24
 * sums per call against K/16 steps of its loop). */
static inline __attribute__((always_inline, target("avx512f,fma")))
fl_v16 fl_hsums16(const fl_v16 *v) {
    fl_v16 u[8], w[4], x[2];
    _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
        u[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7,
                                       16, 17, 18, 19, 20, 21, 22, 23)
             + __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15,
                                       24, 25, 26, 27, 28, 29, 30, 31);
    _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
        w[i] = __builtin_shufflevector(u[2 * i], u[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11,
                                       16, 17, 18, 19, 24, 25, 26, 27)
             + __builtin_shufflevector(u[2 * i], u[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15,
                                       20, 21, 22, 23, 28, 29, 30, 31);
    _Pragma("GCC unroll 2") for (int i = 0; i < 2; i++)
        x[i] = __builtin_shufflevector(w[2 * i], w[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13,
                                       16, 17, 20, 21, 24, 25, 28, 29)
             + __builtin_shufflevector(w[2 * i], w[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15,
                                       18, 19, 22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(x[0], x[1], 0, 2, 4, 6, 8, 10, 12, 14,
                                   16, 18, 20, 22, 24, 26, 28, 30)
         + __builtin_shufflevector(x[0], x[1], 1, 3, 5, 7, 9, 11, 13, 15,
                                   17, 19, 21, 23, 25, 27, 29, 31);
}

static inline __attribute__((always_inline, target("avx2,fma")))
fl_v8 fl_hsums8(const fl_v8 *v) {
    fl_v8 u[4], w[2];
    _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
        u[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11)
             + __builtin_shufflevector(v[2 * i], v[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    _Pragma("GCC unroll 2") for (int i = 0; i < 2; i++)
        w[i] = __builtin_shufflevector(u[2 * i], u[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13)
             + __builtin_shufflevector(u[2 * i], u[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14)
         + __builtin_shufflevector(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

/* The "NT" product C (M x N) = A (M x K) @ W^T with W (N x K) row-major, as dot products
 * along k: the backward recursion dh_{t-1} = d_gates_t W_h^T reads W_h as it is, so it
 * needs no packed copy of the weights. A is interleaved per row block into chunks of
 * VLEN floats, [k / VLEN][m][VLEN]; the k % VLEN tail is added in scalar code. Meanwhile
 * ``next_lines`` cache lines from ``next`` on are prefetched, spread over the k loop. */
#define FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, NW)                            \
__attribute__((target(TARGET)))                                                                \
static void NAME##_##MR##_##NW(int K, const float *Ap, const float *A, int lda,                 \
                               const float *W, int ldw, float *C, int ldc, int accumulate,     \
                               const float *next, int next_lines) {                            \
    VEC acc[MR][NW];                                                                           \
    const int kv = K / VLEN;                                                                   \
    const int rate = kv > 0 ? (next_lines + kv - 1) / kv : 0;   /* lines per k step */         \
    _Pragma("GCC unroll 4") for (int m = 0; m < MR; m++)                                       \
        _Pragma("GCC unroll 6") for (int j = 0; j < NW; j++) acc[m][j] = (VEC){0};             \
    for (int kc = 0; kc < kv; kc++) {                                                          \
        VEC a[MR];                                                                             \
        for (int i = 0, l = kc * rate; i < rate && l < next_lines; i++, l++)                   \
            __builtin_prefetch(next + (size_t)l * 16);                                         \
        _Pragma("GCC unroll 4") for (int m = 0; m < MR; m++)                                   \
            a[m] = *(const VEC *)(Ap + ((size_t)kc * MR + m) * VLEN);                          \
        _Pragma("GCC unroll 6") for (int j = 0; j < NW; j++) {                                 \
            VEC w = *(const VEC *)(W + (size_t)j * ldw + (size_t)kc * VLEN);                   \
            _Pragma("GCC unroll 4") for (int m = 0; m < MR; m++) acc[m][j] += a[m] * w;        \
        }                                                                                      \
    }                                                                                          \
    enum { NOUT = MR * NW, NGROUP = (NOUT + VLEN - 1) / VLEN };                                \
    VEC flat[NGROUP * VLEN];                                                                   \
    float sums[NGROUP * VLEN];                                                                 \
    _Pragma("GCC unroll 32") for (int o = 0; o < NGROUP * VLEN; o++)                           \
        flat[o] = o < NOUT ? acc[o / NW][o % NW] : (VEC){0};                                   \
    _Pragma("GCC unroll 2") for (int g = 0; g < NGROUP; g++)                                   \
        *(VEC *)(sums + g * VLEN) = HSUMS(flat + g * VLEN);                                    \
    for (int m = 0; m < MR; m++)                                                               \
        for (int j = 0; j < NW; j++) {                                                         \
            float s = sums[m * NW + j];                                                        \
            for (int k = kv * VLEN; k < K; k++)                                                \
                s += A[(size_t)m * lda + k] * W[(size_t)j * ldw + k];                          \
            float *c = C + (size_t)m * ldc + j;                                                \
            *c = accumulate ? *c + s : s;                                                      \
        }                                                                                      \
}

#define FL_DEFINE_NT_ROW(NAME, TARGET, VEC, VLEN, HSUMS, MR)                                   \
    FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, 1)                                 \
    FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, 2)                                 \
    FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, 3)                                 \
    FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, 4)                                 \
    FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, 5)                                 \
    FL_DEFINE_NT_KERNEL(NAME, TARGET, VEC, VLEN, HSUMS, MR, 6)

typedef void (*fl_nt_fn)(int, const float *, const float *, int, const float *, int, float *,
                         int, int, const float *, int);

#define FL_DEFINE_NT_KERNELS(NAME, TARGET, VEC, VLEN, HSUMS)                                   \
    FL_DEFINE_NT_ROW(NAME, TARGET, VEC, VLEN, HSUMS, 1)                                        \
    FL_DEFINE_NT_ROW(NAME, TARGET, VEC, VLEN, HSUMS, 2)                                        \
    FL_DEFINE_NT_ROW(NAME, TARGET, VEC, VLEN, HSUMS, 3)                                        \
    FL_DEFINE_NT_ROW(NAME, TARGET, VEC, VLEN, HSUMS, 4)                                        \
    static const fl_nt_fn NAME##_table[5][7] = {                                               \
        {NULL},                                                                                \
        {NULL, NAME##_1_1, NAME##_1_2, NAME##_1_3, NAME##_1_4, NAME##_1_5, NAME##_1_6},        \
        {NULL, NAME##_2_1, NAME##_2_2, NAME##_2_3, NAME##_2_4, NAME##_2_5, NAME##_2_6},        \
        {NULL, NAME##_3_1, NAME##_3_2, NAME##_3_3, NAME##_3_4, NAME##_3_5, NAME##_3_6},        \
        {NULL, NAME##_4_1, NAME##_4_2, NAME##_4_3, NAME##_4_4, NAME##_4_5, NAME##_4_6}};

/* AVX-512: 4 rows x 6 weight rows = 24 zmm accumulators; AVX2: 3 x 3 in 16 ymm. */
FL_DEFINE_NT_KERNELS(fl_nt_avx512, "avx512f,fma", fl_v16, 16, fl_hsums16)
FL_DEFINE_NT_KERNELS(fl_nt_avx2, "avx2,fma", fl_v8, 8, fl_hsums8)

/* The single-row product y[0:N] (+)= x[0:K] @ W[0:K, 0:N], W row-major (ld ldw) and read
 * in place: the recursion of one sequence (B = 1, or one thread's share of it). Packing
 * does not pay here, since every weight is used once per step, and BLAS's GEMV costs a
 * call overhead comparable to the product itself at these sizes (which are bound by the
 * L2 bandwidth). Columns go in blocks of up to NV_MAX vectors, each block one
 * pass over the K rows with its accumulators in registers; the last vector of the row is
 * a masked load, so any N works. Narrow blocks (the per-gate column ranges of a hidden-unit
 * split) keep U independent partial sums per column, over alternate rows, so the chains
 * of dependent FMAs do not limit them. */
#define FL_DEFINE_GEMV(NAME, TARGET, VEC, VLEN, MASK_T, ZERO, LOAD, MLOAD, STORE, MSTORE,     \
                       FMA, ADD, SET1, NV)                                                    \
__attribute__((target(TARGET)))                                                               \
static void NAME##_##NV(int K, const float *x, const float *W, int ldw, float *y,             \
                        MASK_T last, int accumulate) {                                        \
    enum { U = NV <= 4 ? 4 : NV <= 8 ? 2 : 1 };                                               \
    VEC acc[U][NV];                                                                           \
    _Pragma("GCC unroll 4") for (int u = 0; u < U; u++)                                       \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++) acc[u][v] = ZERO;               \
    int k = 0;                                                                                \
    for (; k + U <= K; k += U) {                                                              \
        _Pragma("GCC unroll 4") for (int u = 0; u < U; u++) {                                 \
            const float *w = W + (size_t)(k + u) * ldw;                                       \
            VEC a = SET1(x[k + u]);                                                           \
            _Pragma("GCC unroll 16") for (int v = 0; v < NV - 1; v++)                         \
                acc[u][v] = FMA(a, LOAD(w + v * VLEN), acc[u][v]);                            \
            acc[u][NV - 1] = FMA(a, MLOAD(w + (NV - 1) * VLEN, last), acc[u][NV - 1]);        \
        }                                                                                     \
    }                                                                                         \
    for (; k < K; k++) {                                                                      \
        const float *w = W + (size_t)k * ldw;                                                 \
        VEC a = SET1(x[k]);                                                                   \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV - 1; v++)                             \
            acc[0][v] = FMA(a, LOAD(w + v * VLEN), acc[0][v]);                                \
        acc[0][NV - 1] = FMA(a, MLOAD(w + (NV - 1) * VLEN, last), acc[0][NV - 1]);            \
    }                                                                                         \
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++) {                                   \
        VEC s = acc[0][v];                                                                    \
        _Pragma("GCC unroll 4") for (int u = 1; u < U; u++) s = ADD(s, acc[u][v]);            \
        if (v < NV - 1) {                                                                     \
            if (accumulate) s = ADD(s, LOAD(y + v * VLEN));                                   \
            STORE(y + v * VLEN, s);                                                           \
        } else {                                                                              \
            if (accumulate) s = ADD(s, MLOAD(y + v * VLEN, last));                            \
            MSTORE(y + v * VLEN, last, s);                                                    \
        }                                                                                     \
    }                                                                                         \
}

#define FL_AVX512_MLOAD(p, m) _mm512_maskz_loadu_ps((m), (p))
#define FL_AVX512_MSTORE(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define FL_AVX2_MLOAD(p, m) _mm256_maskload_ps((p), (m))
#define FL_AVX2_MSTORE(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#define FL_GEMV_AVX512(NV)                                                                    \
    FL_DEFINE_GEMV(fl_gemv_avx512, "avx512f,fma", __m512, 16, __mmask16, _mm512_setzero_ps(), \
                   _mm512_loadu_ps, FL_AVX512_MLOAD, _mm512_storeu_ps, FL_AVX512_MSTORE,      \
                   _mm512_fmadd_ps, _mm512_add_ps, _mm512_set1_ps, NV)
#define FL_GEMV_AVX2(NV)                                                                      \
    FL_DEFINE_GEMV(fl_gemv_avx2, "avx2,fma", __m256, 8, __m256i, _mm256_setzero_ps(),         \
                   _mm256_loadu_ps, FL_AVX2_MLOAD, _mm256_storeu_ps, FL_AVX2_MSTORE,          \
                   _mm256_fmadd_ps, _mm256_add_ps, _mm256_set1_ps, NV)

/* AVX-512 blocks of up to 16 zmm accumulators (32 registers); AVX2 up to 12 of its 16. */
FL_GEMV_AVX512(1) FL_GEMV_AVX512(2) FL_GEMV_AVX512(3) FL_GEMV_AVX512(4) FL_GEMV_AVX512(5)
FL_GEMV_AVX512(6) FL_GEMV_AVX512(7) FL_GEMV_AVX512(8) FL_GEMV_AVX512(9) FL_GEMV_AVX512(10)
FL_GEMV_AVX512(11) FL_GEMV_AVX512(12) FL_GEMV_AVX512(13) FL_GEMV_AVX512(14)
FL_GEMV_AVX512(15) FL_GEMV_AVX512(16)
FL_GEMV_AVX2(1) FL_GEMV_AVX2(2) FL_GEMV_AVX2(3) FL_GEMV_AVX2(4) FL_GEMV_AVX2(5)
FL_GEMV_AVX2(6) FL_GEMV_AVX2(7) FL_GEMV_AVX2(8) FL_GEMV_AVX2(9) FL_GEMV_AVX2(10)
FL_GEMV_AVX2(11) FL_GEMV_AVX2(12)

typedef void (*fl_gemv_avx512_fn)(int, const float *, const float *, int, float *, __mmask16,
                                  int);
typedef void (*fl_gemv_avx2_fn)(int, const float *, const float *, int, float *, __m256i, int);
static const fl_gemv_avx512_fn fl_gemv_avx512_table[17] = {
    NULL, fl_gemv_avx512_1, fl_gemv_avx512_2, fl_gemv_avx512_3, fl_gemv_avx512_4,
    fl_gemv_avx512_5, fl_gemv_avx512_6, fl_gemv_avx512_7, fl_gemv_avx512_8, fl_gemv_avx512_9,
    fl_gemv_avx512_10, fl_gemv_avx512_11, fl_gemv_avx512_12, fl_gemv_avx512_13,
    fl_gemv_avx512_14, fl_gemv_avx512_15, fl_gemv_avx512_16};
static const fl_gemv_avx2_fn fl_gemv_avx2_table[13] = {
    NULL, fl_gemv_avx2_1, fl_gemv_avx2_2, fl_gemv_avx2_3, fl_gemv_avx2_4, fl_gemv_avx2_5,
    fl_gemv_avx2_6, fl_gemv_avx2_7, fl_gemv_avx2_8, fl_gemv_avx2_9, fl_gemv_avx2_10,
    fl_gemv_avx2_11, fl_gemv_avx2_12};

__attribute__((target("avx512f,fma")))
static void fl_gemv_run_avx512(int K, int N, const float *x, const float *W, int ldw,
                               float *y, int accumulate) {
    const int n_vec = (N + 15) / 16;
    const int n_blocks = (n_vec + 15) / 16;
    for (int b = 0, v0 = 0; b < n_blocks; b++) {   /* equal blocks: 25 = 13 + 12, not 16 + 9 */
        int v1 = (int)((long)n_vec * (b + 1) / n_blocks), nv = v1 - v0;
        int lanes = N - (v1 - 1) * 16 < 16 ? N - (v1 - 1) * 16 : 16;
        __mmask16 last = (__mmask16)((1u << lanes) - 1u);
        fl_gemv_avx512_table[nv](K, x, W + v0 * 16, ldw, y + v0 * 16, last, accumulate);
        v0 = v1;
    }
}

__attribute__((target("avx2,fma")))
static void fl_gemv_run_avx2(int K, int N, const float *x, const float *W, int ldw, float *y,
                             int accumulate) {
    const int n_vec = (N + 7) / 8;
    const int n_blocks = (n_vec + 11) / 12;
    for (int b = 0, v0 = 0; b < n_blocks; b++) {
        int v1 = (int)((long)n_vec * (b + 1) / n_blocks), nv = v1 - v0;
        int lanes = N - (v1 - 1) * 8 < 8 ? N - (v1 - 1) * 8 : 8;
        __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        fl_gemv_avx2_table[nv](K, x, W + v0 * 8, ldw, y + v0 * 8, last, accumulate);
        v0 = v1;
    }
}

/* The same product at the AVX2 level for all but small W: FL_GEMV_STREAM_R rows of W at
 * a time, each streamed whole and in order, y (N floats, in L1) read and written once
 * per band of rows. The blocked kernel above keeps y in registers but reads every row of
 * W in short slices per column block, a row ahead at every load, which the prefetchers of
 * AVX2 CPUs follow poorly once W is past the L1 (half of BLAS's GEMV speed from L3). */
#ifndef FL_GEMV_STREAM_R
#define FL_GEMV_STREAM_R 8
#endif
#define FL_GEMV_STREAM_ROWS(ROWS)                                                             \
    for (int v = 0; v < nv; v++) {                                                            \
        __m256 s = _mm256_loadu_ps(y + v * 8);                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                \
            s = _mm256_fmadd_ps(a[r], _mm256_loadu_ps(w[r] + v * 8), s);                      \
        _mm256_storeu_ps(y + v * 8, s);                                                       \
    }                                                                                         \
    if (tail) {                                                                               \
        __m256 s = _mm256_maskload_ps(y + nv * 8, last);                                      \
        _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; r++)                                \
            s = _mm256_fmadd_ps(a[r], _mm256_maskload_ps(w[r] + nv * 8, last), s);            \
        _mm256_maskstore_ps(y + nv * 8, last, s);                                             \
    }

__attribute__((target("avx2,fma")))
static void fl_gemv_stream_avx2(int K, int N, const float *x, const float *W, int ldw,
                                float *y, int accumulate) {
    const int nv = N / 8, tail = N - nv * 8;
    const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (!accumulate)
        memset(y, 0, (size_t)N * sizeof(float));
    int k = 0;
    for (; k + FL_GEMV_STREAM_R <= K; k += FL_GEMV_STREAM_R) {
        const float *w[FL_GEMV_STREAM_R];
        __m256 a[FL_GEMV_STREAM_R];
        for (int r = 0; r < FL_GEMV_STREAM_R; r++) {
            w[r] = W + (size_t)(k + r) * ldw;
            a[r] = _mm256_set1_ps(x[k + r]);
        }
        FL_GEMV_STREAM_ROWS(FL_GEMV_STREAM_R)
    }
    for (; k < K; k++) {
        const float *w[1] = {W + (size_t)k * ldw};
        __m256 a[1] = {_mm256_set1_ps(x[k])};
        FL_GEMV_STREAM_ROWS(1)
    }
}

/* Bytes of W from which the AVX2 GEMV streams W band by band (fl_gemv_stream_avx2). */
#ifndef FL_GEMV_STREAM_MIN_BYTES
#define FL_GEMV_STREAM_MIN_BYTES (64 * 1024)
#endif

/* The single-row "NT" product y[j] = x[0:K] . W[j, 0:K] for j < N (W row-major, ld ldw):
 * the backward step of one sequence, dh = d_gates W_h^T, with W_h read in place. R rows
 * of W at a time, each its own accumulator (R independent FMA chains), the k tail a
 * masked load; then one horizontal sum per row. Like the GEMV above, bound by the L2
 * bandwidth, and a little faster than the general NT kernel at M = 1, which interleaves
 * A and handles the k tail in scalar code. */
#define FL_DEFINE_DOTS(NAME, TARGET, VEC, VLEN, MASK_T, ZERO, LOAD, MLOAD, FMA, HSUM, R)      \
__attribute__((target(TARGET)))                                                               \
static void NAME##_##R(int K, const float *x, const float *W, int ldw, float *y,              \
                       MASK_T last, int kv) {                                                 \
    VEC acc[R];                                                                               \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[r] = ZERO;                        \
    int k = 0;                                                                                \
    for (int i = 0; i < kv; i++, k += VLEN) {                                                 \
        VEC a = LOAD(x + k);                                                                  \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                   \
            acc[r] = FMA(a, LOAD(W + (size_t)r * ldw + k), acc[r]);                           \
    }                                                                                         \
    if (k < K) {                                                                              \
        VEC a = MLOAD(x + k, last);                                                           \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                   \
            acc[r] = FMA(a, MLOAD(W + (size_t)r * ldw + k, last), acc[r]);                    \
    }                                                                                         \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) y[r] = HSUM(acc[r]);                  \
}

#define FL_DOTS_AVX512(R)                                                                     \
    FL_DEFINE_DOTS(fl_dots_avx512, "avx512f,fma", __m512, 16, __mmask16, _mm512_setzero_ps(), \
                   _mm512_loadu_ps, FL_AVX512_MLOAD, _mm512_fmadd_ps, fl_hsum16, R)
#define FL_DOTS_AVX2(R)                                                                       \
    FL_DEFINE_DOTS(fl_dots_avx2, "avx2,fma", __m256, 8, __m256i, _mm256_setzero_ps(),         \
                   _mm256_loadu_ps, FL_AVX2_MLOAD, _mm256_fmadd_ps, fl_hsum8, R)
FL_DOTS_AVX512(1) FL_DOTS_AVX512(4)
FL_DOTS_AVX2(1) FL_DOTS_AVX2(4)

__attribute__((target("avx512f,fma")))
static void fl_dots_run_avx512(int N, int K, const float *x, const float *W, int ldw,
                               float *y) {
    const int kv = K / 16, tail = K - kv * 16;
    __mmask16 last = (__mmask16)((1u << tail) - 1u);
    int j = 0;
    for (; j + 4 <= N; j += 4)
        fl_dots_avx512_4(K, x, W + (size_t)j * ldw, ldw, y + j, last, kv);
    for (; j < N; j++)
        fl_dots_avx512_1(K, x, W + (size_t)j * ldw, ldw, y + j, last, kv);
}

__attribute__((target("avx2,fma")))
static void fl_dots_run_avx2(int N, int K, const float *x, const float *W, int ldw, float *y) {
    const int kv = K / 8, tail = K - kv * 8;
    __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    int j = 0;
    for (; j + 4 <= N; j += 4)
        fl_dots_avx2_4(K, x, W + (size_t)j * ldw, ldw, y + j, last, kv);
    for (; j < N; j++)
        fl_dots_avx2_1(K, x, W + (size_t)j * ldw, ldw, y + j, last, kv);
}

static int fl_gemm_packed_available(void) { return fl_isa() > FL_ISA_GENERIC; }

static int fl_gemm_mr(void) { return fl_isa() == FL_ISA_AVX512 ? 12 : 6; }

/* Floats of scratch fl_gemm_packed_f32 needs for A (M x K). */
static size_t fl_packed_a_size(int M, int K) { return (size_t)M * K; }

/* C (M x N, ld ldc) = A (M x K, ld lda) @ op(B) + (accumulate ? C : 0), op(B) packed.
 * A == NULL reuses the A that the previous call (same M, K) left packed in a_scratch.
 * A is first copied k-major, block by block, into a_scratch (M*K floats): rows of A lie a
 * power-of-two stride apart when K is one, and broadcasting from a dozen such rows would
 * thrash one L1 set. Rows are cut into equal blocks (16 = 8 + 8, not 12 + 4) so no
 * block runs a thin, inefficient kernel. */
static void fl_gemm_packed_f32(int M, int N, int K, const float *A, int lda,
                               const float *packed, float *C, int ldc, int accumulate,
                               float *a_scratch) {
    const int mr_max = fl_gemm_mr();
    const int ncol = fl_isa() == FL_ISA_AVX512 ? 32 : 16;   /* columns one kernel call covers */
    const fl_kernel_avx512_fn *table = fl_isa() == FL_ISA_AVX512 ? fl_kernel_avx512_table
                                                         : fl_kernel_avx2_table;
    const int n_blocks = (M + mr_max - 1) / mr_max;
    const int mr = (M + n_blocks - 1) / n_blocks;
    const int n_panels = (N + FL_NR - 1) / FL_NR;
    for (int m0 = 0; A != NULL && m0 < M; m0 += mr) {
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
            /* Slices follow each other in memory ([panel][k][32]). Each of the passes
             * over this one (row blocks, halves) prefetches its share of the next, so
             * weights too large for the caches (16 MiB at H = 1024, evicted from L3 by
             * the gate rows between steps) stream from memory at an even rate instead
             * of stalling the first pass over every slice. */
            const float *next = panel + (size_t)(k0 + kc) * FL_NR;
            int next_k = k0 + kc < K ? K - k0 - kc : (p + 1 < n_panels ? K : 0);
            int lines = 2 * (next_k < FL_KC ? next_k : FL_KC);   /* 2 lines a panel row */
            int passes = n_blocks * ((nc + ncol - 1) / ncol), pass = 0;
            for (int m0 = 0; m0 < M; m0 += mr) {
                int rows = M - m0 < mr ? M - m0 : mr;
                for (int c0 = 0; c0 < nc; c0 += ncol, pass++) {   /* one pass, or halves */
                    int cols = nc - c0 < ncol ? nc - c0 : ncol;
                    int l0 = lines * pass / passes, l1 = lines * (pass + 1) / passes;
                    table[rows](kc, a_scratch + (size_t)m0 * K + (size_t)k0 * rows,
                                panel + (size_t)k0 * FL_NR + c0,
                                C + (size_t)m0 * ldc + (size_t)p * FL_NR + c0, ldc, cols, acc,
                                next + (size_t)l0 * 16, l1 - l0);
                }
            }
        }
    }
}

/* C (M x N, ld ldc) = A (M x K, ld lda) @ W^T (+ C), W (N x K) row-major, ld ldw.
 * a_scratch: fl_packed_a_size(M, K) floats. */
static void fl_gemm_nt_f32(int M, int N, int K, const float *A, int lda, const float *W,
                           int ldw, float *C, int ldc, int accumulate, float *a_scratch) {
    const int avx512 = fl_isa() == FL_ISA_AVX512;
    const int vlen = avx512 ? 16 : 8, mr_max = avx512 ? 4 : 3, nw_max = avx512 ? 6 : 3;
    const fl_nt_fn (*table)[7] = avx512 ? fl_nt_avx512_table : fl_nt_avx2_table;
    const int kv = K / vlen;
    const int n_blocks = (M + mr_max - 1) / mr_max;
    const int mr = (M + n_blocks - 1) / n_blocks;
    const float *a_packed = a_scratch;
    if (M == 1) {
        a_packed = A;   /* one row is already in the interleaved order */
    } else {
        for (int m0 = 0; m0 < M; m0 += mr) {
            int rows = M - m0 < mr ? M - m0 : mr;
            float *ap = a_scratch + (size_t)m0 * K;
            for (int kc = 0; kc < kv; kc++)
                for (int m = 0; m < rows; m++)
                    memcpy(ap + ((size_t)kc * rows + m) * vlen,
                           A + (size_t)(m0 + m) * lda + (size_t)kc * vlen,
                           vlen * sizeof(float));
        }
    }
    /* Weight rows outside, row blocks inside: each block of W rows is read from memory
     * once and reused from cache by every row block of A. The passes over one block
     * share out the prefetching of the next (as in fl_gemm_packed_f32), so weights
     * beyond the caches stream at an even rate. */
    for (int j0 = 0; j0 < N; j0 += nw_max) {
        int nw = N - j0 < nw_max ? N - j0 : nw_max;
        int next_rows = N - j0 - nw < nw_max ? N - j0 - nw : nw_max;
        const float *next = next_rows > 0 ? W + (size_t)(j0 + nw) * ldw : W;
        long long span = next_rows > 0 ? (long long)(next_rows - 1) * ldw + K : 0;
        int lines = (int)((span + 15) / 16);
        for (int m0 = 0, pass = 0; m0 < M; m0 += mr, pass++) {
            int rows = M - m0 < mr ? M - m0 : mr;
            int l0 = (int)((long long)lines * pass / n_blocks);
            int l1 = (int)((long long)lines * (pass + 1) / n_blocks);
            table[rows][nw](K, a_packed + (size_t)m0 * K, A + (size_t)m0 * lda, lda,
                            W + (size_t)j0 * ldw, ldw, C + (size_t)m0 * ldc + j0, ldc,
                            accumulate, next + (size_t)l0 * 16, l1 - l0);
        }
    }
}

/* y[j] = x[0:K] . W[j, 0:K] for j < N: one row times W^T, W row-major with ld ldw. */
static void fl_dots_f32(int N, int K, const float *x, const float *W, int ldw, float *y) {
    if (N <= 0)
        return;
    if (fl_isa() == FL_ISA_AVX512)
        fl_dots_run_avx512(N, K, x, W, ldw, y);
    else
        fl_dots_run_avx2(N, K, x, W, ldw, y);
}

/* y[0:N] = x[0:K] @ W[0:K, 0:N] (+ y when accumulate), W row-major with ld ldw. */
static void fl_gemv_f32(int K, int N, const float *x, const float *W, int ldw, float *y,
                        int accumulate) {
    if (N <= 0)
        return;
    if (fl_isa() == FL_ISA_AVX512)
        fl_gemv_run_avx512(K, N, x, W, ldw, y, accumulate);
    else if ((size_t)K * N * sizeof(float) >= FL_GEMV_STREAM_MIN_BYTES)
        fl_gemv_stream_avx2(K, N, x, W, ldw, y, accumulate);
    else
        fl_gemv_run_avx2(K, N, x, W, ldw, y, accumulate);
}

#else
#define FL_HAVE_PACKED_KERNELS 0
static int fl_gemm_packed_available(void) { return 0; }
static int fl_gemm_mr(void) { return 1; }
static void fl_gemm_nt_f32(int M, int N, int K, const float *A, int lda, const float *W,
                           int ldw, float *C, int ldc, int accumulate, float *a_scratch) {
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)W; (void)ldw; (void)C; (void)ldc;
    (void)accumulate; (void)a_scratch;
}
static size_t fl_packed_a_size(int M, int K) { (void)M; (void)K; return 1; }
static void fl_gemv_f32(int K, int N, const float *x, const float *W, int ldw, float *y,
                        int accumulate) {
    (void)K; (void)N; (void)x; (void)W; (void)ldw; (void)y; (void)accumulate;
}
static void fl_dots_f32(int N, int K, const float *x, const float *W, int ldw, float *y) {
    (void)N; (void)K; (void)x; (void)W; (void)ldw; (void)y;
}
static void fl_gemm_packed_f32(int M, int N, int K, const float *A, int lda,
                               const float *packed, float *C, int ldc, int accumulate,
                               float *a_scratch) {
    (void)M; (void)N; (void)K; (void)A; (void)lda; (void)packed; (void)C; (void)ldc;
    (void)accumulate; (void)a_scratch;
}
#endif

#endif

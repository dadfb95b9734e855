/* Plain C helpers for the fastlstm Cython kernels: the fused pointwise LSTM cell math
 * (forward and backward, float32 and float64) and thin OpenMP shims.
 *
 * The float32 cell uses its own exp (a Cephes-style polynomial) and tanh (a rational
 * minimax fit), both within a few ulp, so that the inner loops vectorise; the float64
 * cell uses Cephes' exp and tanh (about 2 ulp), vectorised the same way. With GCC on
 * x86-64 the row loops are compiled for AVX-512, AVX2+FMA and the baseline, and run at
 * the level fl_isa() says (csrc/fastlstm_isa.h: FASTLSTM_ISA, or the CPU's best).
 */
#ifndef FASTLSTM_KERNELS_H
#define FASTLSTM_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
static int fl_openmp_enabled(void) { return 1; }
static int fl_max_threads(void) { return omp_get_max_threads(); }
static int fl_num_threads(void) { return omp_get_num_threads(); }
/* An orphaned barrier: legal inside any parallel region, a no-op outside one. */
static void fl_barrier(void) {
#pragma omp barrier
}
#else
static int fl_openmp_enabled(void) { return 0; }
static int fl_max_threads(void) { return 1; }
static int fl_num_threads(void) { return 1; }
static void fl_barrier(void) {}
#endif

/* The barrier of the per-step recursions: the hidden-unit split meets once per time
 * step, and at B = 1 a step is so short that libgomp's barrier would be a large share of
 * it. A sense-reversing counter on one cache line costs
 * a line transfer or two. Its state belongs to one parallel region (the caller declares
 * it shared and initialises it before the region), so concurrent kernel calls from
 * several Python threads never share one. After many fruitless spins the waiters yield,
 * so an oversubscribed machine does not burn whole time slices. Without GCC/Clang atomics
 * it is the OpenMP barrier. */
typedef struct {
    int count;
    int generation;
    char pad[56];
} fl_step_barrier;

static void fl_step_barrier_init(fl_step_barrier *b) {
    b->count = 0;
    b->generation = 0;
}

#if defined(_OPENMP) && (defined(__GNUC__) || defined(__clang__))
#include <sched.h>
#define FL_SPINS_BEFORE_YIELD 20000
static inline void fl_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void fl_step_barrier_wait(fl_step_barrier *b, int n_threads) {
    if (n_threads <= 1)
        return;
    int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n_threads) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; spins++) {
        if (spins < FL_SPINS_BEFORE_YIELD)
            fl_cpu_relax();
        else
            sched_yield();
    }
}
#else
static void fl_step_barrier_wait(fl_step_barrier *b, int n_threads) {
    (void)b;
    (void)n_threads;
    fl_barrier();
}
#endif

/* Scratch aligned to a cache line, so vector loads never straddle two lines. */
#if defined(_MSC_VER)
#include <malloc.h>
static void *fl_aligned_alloc(size_t bytes) { return _aligned_malloc(bytes ? bytes : 64, 64); }
static void fl_aligned_free(void *p) { _aligned_free(p); }
#else
#include <stdlib.h>
static void *fl_aligned_alloc(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
}
static void fl_aligned_free(void *p) { free(p); }
#endif

#include "fastlstm_isa.h"

#if defined(__GNUC__) || defined(__clang__)
#define FL_RESTRICT __restrict__
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_RESTRICT __restrict
#define FL_INLINE static __forceinline
#endif

/* ---- float32 transcendental functions (branch-free, vectorisable) ---- */

FL_INLINE float fl_expf(float x) {
    /* exp(x) = 2^n * exp(r), r = x - n ln2 in [-ln2/2, ln2/2]; clamped so 2^n stays finite. */
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447504f ? -87.3365447504f : x;
    /* round to nearest by the 1.5*2^23 trick: vectorises on every target, unlike floorf */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    float y = p * r * r + r + 1.0f;
    int32_t e = (int32_t)n + 127;
    uint32_t bits = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

FL_INLINE float fl_sigmoidf(float x) { return 1.0f / (1.0f + fl_expf(-x)); }

FL_INLINE float fl_tanhf(float x) {
    /* A 13/6 odd rational approximation on [-7.9053, 7.9053] (the minimax fit Eigen uses),
     * clamped beyond, where tanh is within 3 ulp of +-1: one division, no exp, and full
     * relative accuracy near 0. */
    x = x > 7.90531110763549805f ? 7.90531110763549805f : x;
    x = x < -7.90531110763549805f ? -7.90531110763549805f : x;
    float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}

/* ---- float64: Cephes' exp and tanh (within about 2 ulp), branch-free so they vectorise;
 * libm's scalar calls made the float64 cell slower than NumPy's. ---- */
FL_INLINE double fl_exp(double x) {
    x = x > 709.0 ? 709.0 : x;
    x = x < -708.0 ? -708.0 : x;
    /* n = round(x / ln2) by the 1.5*2^52 trick; x - n ln2 in two parts for accuracy */
    double n = (x * 1.4426950408889634073599 + 6755399441055744.0) - 6755399441055744.0;
    double r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    double rr = r * r;
    double p = ((1.26177193074810590878E-4 * rr + 3.02994407707441961300E-2) * rr
                + 9.99999999999999999910E-1) * r;
    double q = ((3.00198505138664455042E-6 * rr + 2.52448340349684104192E-3) * rr
                + 2.27265548208155028766E-1) * rr + 2.00000000000000000009E0;
    double y = 1.0 + 2.0 * (p / (q - p));
    int64_t e = (int64_t)n + 1023;
    uint64_t bits = (uint64_t)e << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

FL_INLINE double fl_tanh(double x) {
    double ax = fabs(x);
    double z = x * x;
    /* |x| < 0.625: x + x z P(z) / Q(z); else 1 - 2 / (e^{2|x|} + 1) with x's sign */
    double p = (-9.64399179425052238628E-1 * z - 9.92877231001918586564E1) * z
               - 1.61468768441708447952E3;
    double q = ((z + 1.12811678491632931402E2) * z + 2.23548839060100448583E3) * z
               + 4.84406305325125486048E3;
    double small = x + x * z * (p / q);
    double large = 1.0 - 2.0 / (fl_exp(2.0 * ax) + 1.0);
    large = x < 0.0 ? -large : large;
    return ax < 0.625 ? small : large;
}

FL_INLINE double fl_sigmoid(double x) { return 1.0 / (1.0 + fl_exp(-x)); }

/* ---- the fused LSTM cell ----
 * One time step for n_rows sequences, hidden units [u0, u0+nu). gates rows hold 4H values
 * (blocks i, f, g, o); state rows hold H. lengths (or NULL) are the n_rows sequences' lengths: a row with
 * t >= lengths[r] carries its state and gets hs = 0 (forward) or zero gate gradients
 * with dh, dc passed through (backward).
 */
/* One row of the cell. Gate blocks come in as separate restrict pointers (they are
 * disjoint slices of one row) so the compiler vectorises without runtime alias checks. */
#define FL_DEFINE_CELL(SUFFIX, REAL, SIGMOID, TANH)                                              \
FL_INLINE void fl_cell_row_forward_##SUFFIX(                                                    \
    int H, REAL *FL_RESTRICT ai, REAL *FL_RESTRICT af, REAL *FL_RESTRICT ag,                    \
    REAL *FL_RESTRICT ao, const REAL *FL_RESTRICT cp, REAL *FL_RESTRICT cn,                     \
    REAL *FL_RESTRICT hn, REAL *FL_RESTRICT ho)                                                 \
{                                                                                               \
    for (int j = 0; j < H; j++) {                                                               \
        REAL i = SIGMOID(ai[j]);                                                                \
        REAL f = SIGMOID(af[j]);                                                                \
        REAL g = TANH(ag[j]);                                                                   \
        REAL o = SIGMOID(ao[j]);                                                                \
        REAL c = f * cp[j] + i * g;                                                             \
        REAL h = o * TANH(c);                                                                   \
        ai[j] = i;                                                                              \
        af[j] = f;                                                                              \
        ag[j] = g;                                                                              \
        ao[j] = o;                                                                              \
        cn[j] = c;                                                                              \
        hn[j] = h;                                                                              \
        ho[j] = h;                                                                              \
    }                                                                                           \
}                                                                                               \
                                                                                                \
FL_INLINE void fl_lstm_cell_forward_##SUFFIX##_body(                                           \
    int n_rows, int H, int u0, int nu, REAL *gates, const REAL *c_prev, REAL *c_next,           \
    const REAL *h_prev, REAL *h_next, REAL *hs, const int *lengths, int t)                      \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        REAL *a = gates + (size_t)r * 4 * H + u0;                                               \
        size_t off = (size_t)r * H + u0;                                                        \
        if (lengths && t >= lengths[r]) {                                                       \
            memcpy(c_next + off, c_prev + off, (size_t)nu * sizeof(REAL));                      \
            memcpy(h_next + off, h_prev + off, (size_t)nu * sizeof(REAL));                      \
            memset(hs + off, 0, (size_t)nu * sizeof(REAL));                                     \
            continue;                                                                           \
        }                                                                                       \
        fl_cell_row_forward_##SUFFIX(nu, a, a + H, a + 2 * H, a + 3 * H, c_prev + off,          \
                                     c_next + off, h_next + off, hs + off);                     \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_lstm_cell_forward_##SUFFIX,                                             \
    (int n_rows, int H, int u0, int nu, REAL *gates, const REAL *c_prev, REAL *c_next,          \
     const REAL *h_prev, REAL *h_next, REAL *hs, const int *lengths, int t),                    \
    (n_rows, H, u0, nu, gates, c_prev, c_next, h_prev, h_next, hs, lengths, t))                 \
                                                                                                \
/* d_h = dh (+ dhs when given) is the gradient reaching h_t; dc holds the gradient reaching \
 * c_t from step t+1 and leaves with the gradient w.r.t. c_{t-1}. */                        \
FL_INLINE void fl_cell_row_backward_##SUFFIX(                                                   \
    int H, const REAL *FL_RESTRICT ai, const REAL *FL_RESTRICT af, const REAL *FL_RESTRICT ag,  \
    const REAL *FL_RESTRICT ao, const REAL *FL_RESTRICT cp, const REAL *FL_RESTRICT cc,         \
    const REAL *FL_RESTRICT dh, const REAL *FL_RESTRICT dho, REAL *FL_RESTRICT dc,              \
    REAL *FL_RESTRICT dai, REAL *FL_RESTRICT daf, REAL *FL_RESTRICT dag,                        \
    REAL *FL_RESTRICT dao)                                                                      \
{                                                                                               \
    for (int j = 0; j < H; j++) {                                                               \
        REAL i = ai[j], f = af[j], g = ag[j], o = ao[j];                                        \
        REAL d_h = dho ? dh[j] + dho[j] : dh[j];                                                \
        REAL tc = TANH(cc[j]);                                                                  \
        REAL d_c = dc[j] + d_h * o * (1 - tc * tc);                                             \
        dai[j] = d_c * g * i * (1 - i);                                                         \
        daf[j] = d_c * cp[j] * f * (1 - f);                                                     \
        dag[j] = d_c * i * (1 - g * g);                                                         \
        dao[j] = d_h * tc * o * (1 - o);                                                        \
        dc[j] = d_c * f;                                                                        \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* dh is left for the caller's GEMM to overwrite with the gradient w.r.t. h_{t-1}. */        \
FL_INLINE void fl_lstm_cell_backward_##SUFFIX##_body(                                          \
    int n_rows, int H, int u0, int nu, const REAL *gates, const REAL *c_prev,                   \
    const REAL *c_cur, const REAL *dhs, const REAL *dh, REAL *dc, REAL *d_gates,                \
    const int *lengths, int t)                                                                  \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        const REAL *a = gates + (size_t)r * 4 * H + u0;                                         \
        REAL *da = d_gates + (size_t)r * 4 * H + u0;                                            \
        size_t off = (size_t)r * H + u0;                                                        \
        if (lengths && t >= lengths[r]) {                                                       \
            for (int gate = 0; gate < 4; gate++)                                                \
                memset(da + (size_t)gate * H, 0, (size_t)nu * sizeof(REAL));                   \
            continue;                                                                           \
        }                                                                                       \
        if (dhs)                                                                                \
            fl_cell_row_backward_##SUFFIX(nu, a, a + H, a + 2 * H, a + 3 * H, c_prev + off,     \
                                          c_cur + off, dh + off, dhs + off, dc + off, da,       \
                                          da + H, da + 2 * H, da + 3 * H);                      \
        else                                                                                    \
            fl_cell_row_backward_##SUFFIX(nu, a, a + H, a + 2 * H, a + 3 * H, c_prev + off,     \
                                          c_cur + off, dh + off, NULL, dc + off, da,            \
                                          da + H, da + 2 * H, da + 3 * H);                      \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_lstm_cell_backward_##SUFFIX,                                            \
    (int n_rows, int H, int u0, int nu, const REAL *gates, const REAL *c_prev,                  \
     const REAL *c_cur, const REAL *dhs, const REAL *dh, REAL *dc, REAL *d_gates,               \
     const int *lengths, int t),                                                                \
    (n_rows, H, u0, nu, gates, c_prev, c_cur, dhs, dh, dc, d_gates, lengths, t))

FL_DEFINE_CELL(f32, float, fl_sigmoidf, fl_tanhf)
FL_DEFINE_CELL(f64, double, fl_sigmoid, fl_tanh)


/* ---- the vanilla-RNN cell: h = act(a), act = tanh (relu == 0) or relu (relu == 1) ----
 * Forward: the pre-activations of a step sit in h_next; they are activated in place.
 * Backward: d_pre = (dh + dhs) * act'(a), with act' read off the output h. Rows past
 * their sequence's length carry the state (forward) or get zero gradients (backward). */
#define FL_DEFINE_RNN_CELL(SUFFIX, REAL, TANH)                                                  \
FL_INLINE void fl_rnn_cell_forward_##SUFFIX##_body(                                            \
    int n_rows, int H, int relu, const REAL *h_prev,                                           \
                                         REAL *h_next, REAL *hs, const int *lengths, int t)     \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        size_t off = (size_t)r * H;                                                             \
        REAL *FL_RESTRICT hn = h_next + off;                                                    \
        REAL *FL_RESTRICT ho = hs + off;                                                        \
        if (lengths && t >= lengths[r]) {                                                       \
            memcpy(hn, h_prev + off, (size_t)H * sizeof(REAL));                                 \
            memset(ho, 0, (size_t)H * sizeof(REAL));                                            \
        } else if (relu) {                                                                      \
            for (int j = 0; j < H; j++) { REAL h = hn[j] > 0 ? hn[j] : 0; hn[j] = h; ho[j] = h; } \
        } else {                                                                                \
            for (int j = 0; j < H; j++) { REAL h = TANH(hn[j]); hn[j] = h; ho[j] = h; }         \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_rnn_cell_forward_##SUFFIX,                                              \
    (int n_rows, int H, int relu, const REAL *h_prev,                                           \
     REAL *h_next, REAL *hs, const int *lengths, int t),                                        \
    (n_rows, H, relu, h_prev, h_next, hs, lengths, t))                                          \
                                                                                                \
FL_INLINE void fl_rnn_cell_backward_##SUFFIX##_body(                                           \
    int n_rows, int H, int relu, const REAL *h_cur,                                            \
                                          const REAL *dh, const REAL *dhs, REAL *d_pre,         \
                                          const int *lengths, int t)                            \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        size_t off = (size_t)r * H;                                                             \
        const REAL *FL_RESTRICT h = h_cur + off;                                                \
        const REAL *FL_RESTRICT g = dh + off;                                                   \
        REAL *FL_RESTRICT da = d_pre + off;                                                     \
        if (lengths && t >= lengths[r]) {                                                       \
            memset(da, 0, (size_t)H * sizeof(REAL));                                            \
            continue;                                                                           \
        }                                                                                       \
        if (dhs) {                                                                              \
            const REAL *FL_RESTRICT go = dhs + off;                                             \
            if (relu) for (int j = 0; j < H; j++) da[j] = h[j] > 0 ? g[j] + go[j] : 0;          \
            else for (int j = 0; j < H; j++) da[j] = (g[j] + go[j]) * (1 - h[j] * h[j]);        \
        } else {                                                                                \
            if (relu) for (int j = 0; j < H; j++) da[j] = h[j] > 0 ? g[j] : 0;                  \
            else for (int j = 0; j < H; j++) da[j] = g[j] * (1 - h[j] * h[j]);                  \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_rnn_cell_backward_##SUFFIX,                                             \
    (int n_rows, int H, int relu, const REAL *h_cur,                                            \
     const REAL *dh, const REAL *dhs, REAL *d_pre,                                              \
     const int *lengths, int t),                                                                \
    (n_rows, H, relu, h_cur, dh, dhs, d_pre, lengths, t))

FL_DEFINE_RNN_CELL(f32, float, fl_tanhf)
FL_DEFINE_RNN_CELL(f64, double, fl_tanh)

/* Columns [u0, u0+nu) of dst rows (row length H) take src's only where the row's step t
 * is a real step (t < lengths[r]). */
#define FL_DEFINE_COPY_VALID(SUFFIX, REAL)                                                       \
static void fl_copy_valid_rows_##SUFFIX(int n_rows, int H, int u0, int nu, const REAL *src,     \
                                        REAL *dst, const int *lengths, int t)                   \
{                                                                                               \
    for (int r = 0; r < n_rows; r++)                                                            \
        if (t < lengths[r])                                                                     \
            memcpy(dst + (size_t)r * H + u0, src + (size_t)r * H + u0,                          \
                   (size_t)nu * sizeof(REAL));                                                  \
}
FL_DEFINE_COPY_VALID(f32, float)
FL_DEFINE_COPY_VALID(f64, double)

/* acc[j] += sum_r m[r, j] for a column block of a row-major matrix, summed in double. */
#define FL_DEFINE_COLSUM(SUFFIX, REAL)                                                           \
FL_INLINE void fl_add_column_sums_##SUFFIX##_body(                                             \
    int n_rows, int n_cols, const REAL *FL_RESTRICT m,                                         \
                                        int ld, double *FL_RESTRICT acc)                        \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        const REAL *FL_RESTRICT row = m + (size_t)r * ld;                                       \
        for (int j = 0; j < n_cols; j++) acc[j] += (double)row[j];                              \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_add_column_sums_##SUFFIX,                                               \
    (int n_rows, int n_cols, const REAL *FL_RESTRICT m,                                         \
     int ld, double *FL_RESTRICT acc),                                                          \
    (n_rows, n_cols, m, ld, acc))
FL_DEFINE_COLSUM(f32, float)
FL_DEFINE_COLSUM(f64, double)

#endif

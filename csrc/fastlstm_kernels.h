/* Plain C helpers for the fastlstm Cython kernels: the fused pointwise LSTM cell math
 * (forward and backward, float32 and float64) and thin OpenMP shims.
 *
 * The float32 cell uses its own exp/tanh (Cephes-style polynomials, about 2 ulp) so that
 * the inner loops vectorise; the float64 cell calls libm so that it agrees with NumPy to
 * ~1e-15. On x86-64 Linux the row loops are compiled for AVX-512, AVX2+FMA and the
 * baseline, and the loader picks one for the running CPU (GCC target_clones).
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

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTLSTM_NO_TARGET_CLONES)
#define FL_TARGET_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FL_TARGET_CLONES
#endif

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
    /* Small |x|: odd polynomial (keeps the relative accuracy near 0); else 1 - 2/(e^{2x}+1). */
    float ax = fabsf(x);
    float z = x * x;
    float p = -5.70498872745E-3f;
    p = p * z + 2.06390887954E-2f;
    p = p * z - 5.37397155531E-2f;
    p = p * z + 1.33314422036E-1f;
    p = p * z - 3.33332819422E-1f;
    float small = p * z * x + x;
    float large = 1.0f - 2.0f / (fl_expf(2.0f * ax) + 1.0f);
    large = x < 0.0f ? -large : large;
    return ax < 0.625f ? small : large;
}

FL_INLINE double fl_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- the fused LSTM cell ----
 * One time step for n_rows sequences. gates rows hold 4H values (blocks i, f, g, o);
 * state rows hold H. lengths (or NULL) are the n_rows sequences' lengths: a row with
 * t >= lengths[r] carries its state and gets hs = 0 (forward) or zero gate gradients
 * with dh, dc passed through (backward).
 */
#define FL_CELL_BACKWARD_BODY(REAL, TANH, DH)                                                      \
{                                                                                               \
    REAL i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];                \
    REAL d_h = DH;                                                                  \
    REAL tc = TANH(cc[j]);                                                          \
    REAL d_c = dcr[j] + d_h * o * (1 - tc * tc);                                    \
    da[j] = d_c * g * i * (1 - i);                                                              \
    da[H + j] = d_c * cp[j] * f * (1 - f);                                                      \
    da[2 * H + j] = d_c * i * (1 - g * g);                                                      \
    da[3 * H + j] = d_h * tc * o * (1 - o);                                                     \
    dcr[j] = d_c * f;                                                                           \
}

#define FL_DEFINE_CELL(SUFFIX, REAL, SIGMOID, TANH)                                              \
FL_TARGET_CLONES                                                                                \
static void fl_lstm_cell_forward_##SUFFIX(                                                      \
    int n_rows, int H, REAL *FL_RESTRICT gates, const REAL *FL_RESTRICT c_prev,                 \
    REAL *FL_RESTRICT c_next, const REAL *FL_RESTRICT h_prev, REAL *FL_RESTRICT h_next,         \
    REAL *FL_RESTRICT hs, const int *FL_RESTRICT lengths, int t)                                \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        REAL *FL_RESTRICT a = gates + (size_t)r * 4 * H;                                        \
        const REAL *FL_RESTRICT cp = c_prev + (size_t)r * H;                                    \
        REAL *FL_RESTRICT cn = c_next + (size_t)r * H;                                          \
        REAL *FL_RESTRICT hn = h_next + (size_t)r * H;                                          \
        REAL *FL_RESTRICT ho = hs + (size_t)r * H;                                              \
        if (lengths && t >= lengths[r]) {                                                       \
            memcpy(cn, cp, (size_t)H * sizeof(REAL));                                           \
            memcpy(hn, h_prev + (size_t)r * H, (size_t)H * sizeof(REAL));                       \
            memset(ho, 0, (size_t)H * sizeof(REAL));                                            \
            continue;                                                                           \
        }                                                                                       \
        for (int j = 0; j < H; j++) {                                                           \
            REAL i = SIGMOID(a[j]);                                                             \
            REAL f = SIGMOID(a[H + j]);                                                         \
            REAL g = TANH(a[2 * H + j]);                                                        \
            REAL o = SIGMOID(a[3 * H + j]);                                                     \
            REAL c = f * cp[j] + i * g;                                                         \
            REAL h = o * TANH(c);                                                               \
            a[j] = i;                                                                           \
            a[H + j] = f;                                                                       \
            a[2 * H + j] = g;                                                                   \
            a[3 * H + j] = o;                                                                   \
            cn[j] = c;                                                                          \
            hn[j] = h;                                                                          \
            ho[j] = h;                                                                          \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* dh, dc: in, the gradients flowing into h_t, c_t from step t+1 (dhs[t] is added to dh  \
 * here when given); out, dc becomes the gradient w.r.t. c_{t-1}. dh is left for the     \
 * caller's GEMM to overwrite with the gradient w.r.t. h_{t-1}. */                        \
FL_TARGET_CLONES                                                                                \
static void fl_lstm_cell_backward_##SUFFIX(                                                     \
    int n_rows, int H, const REAL *FL_RESTRICT gates, const REAL *FL_RESTRICT c_prev,           \
    const REAL *FL_RESTRICT c_cur, const REAL *FL_RESTRICT dhs, const REAL *FL_RESTRICT dh,     \
    REAL *FL_RESTRICT dc, REAL *FL_RESTRICT d_gates, const int *FL_RESTRICT lengths, int t)     \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        const REAL *FL_RESTRICT a = gates + (size_t)r * 4 * H;                                  \
        const REAL *FL_RESTRICT cp = c_prev + (size_t)r * H;                                    \
        const REAL *FL_RESTRICT cc = c_cur + (size_t)r * H;                                     \
        const REAL *FL_RESTRICT dhr = dh + (size_t)r * H;                                       \
        REAL *FL_RESTRICT dcr = dc + (size_t)r * H;                                             \
        REAL *FL_RESTRICT da = d_gates + (size_t)r * 4 * H;                                     \
        if (lengths && t >= lengths[r]) {                                                       \
            memset(da, 0, (size_t)4 * H * sizeof(REAL));                                        \
            continue;                                                                           \
        }                                                                                       \
        if (dhs) {                                                                              \
            const REAL *FL_RESTRICT dho = dhs + (size_t)r * H;                                  \
            for (int j = 0; j < H; j++)                                                         \
                FL_CELL_BACKWARD_BODY(REAL, TANH, dhr[j] + dho[j])                                    \
        } else {                                                                                \
            for (int j = 0; j < H; j++)                                                         \
                FL_CELL_BACKWARD_BODY(REAL, TANH, dhr[j])                                             \
        }                                                                                       \
    }                                                                                           \
}

FL_DEFINE_CELL(f32, float, fl_sigmoidf, fl_tanhf)
FL_DEFINE_CELL(f64, double, fl_sigmoid, tanh)

/* dst rows take src rows only where the row's step t is a real step (t < lengths[r]). */
#define FL_DEFINE_COPY_VALID(SUFFIX, REAL)                                                       \
static void fl_copy_valid_rows_##SUFFIX(int n_rows, int H, const REAL *src, REAL *dst,          \
                                        const int *lengths, int t)                              \
{                                                                                               \
    for (int r = 0; r < n_rows; r++)                                                            \
        if (t < lengths[r])                                                                     \
            memcpy(dst + (size_t)r * H, src + (size_t)r * H, (size_t)H * sizeof(REAL));         \
}
FL_DEFINE_COPY_VALID(f32, float)
FL_DEFINE_COPY_VALID(f64, double)

/* acc[j] += sum_r m[r, j] for a column block of a row-major matrix, summed in double. */
#define FL_DEFINE_COLSUM(SUFFIX, REAL)                                                           \
FL_TARGET_CLONES                                                                                \
static void fl_add_column_sums_##SUFFIX(int n_rows, int n_cols, const REAL *FL_RESTRICT m,      \
                                        int ld, double *FL_RESTRICT acc)                        \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        const REAL *FL_RESTRICT row = m + (size_t)r * ld;                                       \
        for (int j = 0; j < n_cols; j++) acc[j] += (double)row[j];                              \
    }                                                                                           \
}
FL_DEFINE_COLSUM(f32, float)
FL_DEFINE_COLSUM(f64, double)

#endif

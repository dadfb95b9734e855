/* C helpers of the projected LSTM (fastlstm/_lstmp.pyx): the cell's pointwise math,
 * which differs from the LSTM's (fastlstm_kernels.h) in what it writes, and the two
 * per-row passes around the projection.
 *
 * The LSTM cell writes h = o * tanh(c) into h_next and hs and carries h through frozen
 * rows. Here that value is m, which the projection h = m W_hr reads and the backward's
 * dW_hr = m^T dh sums over every step: frozen rows get m = 0 (so those sums need no mask),
 * and the carried state is the projected h (of width P), handled by fl_lstmp_output_*.
 * The backward reuses fl_lstm_cell_backward_* as it is (dh = dm there).
 */
#ifndef FASTLSTM_LSTMP_H
#define FASTLSTM_LSTMP_H

#include "fastlstm_kernels.h"

#define FL_DEFINE_LSTMP(SUFFIX, REAL, SIGMOID, TANH)                                             \
FL_INLINE void fl_lstmp_row_forward_##SUFFIX(                                                   \
    int H, REAL *FL_RESTRICT ai, REAL *FL_RESTRICT af, REAL *FL_RESTRICT ag,                    \
    REAL *FL_RESTRICT ao, const REAL *FL_RESTRICT cp, REAL *FL_RESTRICT cn,                     \
    REAL *FL_RESTRICT m)                                                                        \
{                                                                                               \
    for (int j = 0; j < H; j++) {                                                               \
        REAL i = SIGMOID(ai[j]);                                                                \
        REAL f = SIGMOID(af[j]);                                                                \
        REAL g = TANH(ag[j]);                                                                   \
        REAL o = SIGMOID(ao[j]);                                                                \
        REAL c = f * cp[j] + i * g;                                                             \
        ai[j] = i;                                                                              \
        af[j] = f;                                                                              \
        ag[j] = g;                                                                              \
        ao[j] = o;                                                                              \
        cn[j] = c;                                                                              \
        m[j] = o * TANH(c);                                                                     \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* One step for n_rows sequences: gates (rows of 4H pre-activations, blocks i, f, g, o) are \
 * activated in place, c_next and m (rows of H) written. A row with t >= lengths[r] keeps   \
 * its cell state and gets m = 0 (its gates are left as they are). */                       \
FL_INLINE void fl_lstmp_cell_forward_##SUFFIX##_body(                                          \
    int n_rows, int H, REAL *gates, const REAL *c_prev, REAL *c_next, REAL *m,                 \
    const int *lengths, int t)                                                                  \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        REAL *a = gates + (size_t)r * 4 * H;                                                    \
        size_t off = (size_t)r * H;                                                             \
        if (lengths && t >= lengths[r]) {                                                       \
            memcpy(c_next + off, c_prev + off, (size_t)H * sizeof(REAL));                       \
            memset(m + off, 0, (size_t)H * sizeof(REAL));                                       \
            continue;                                                                           \
        }                                                                                       \
        fl_lstmp_row_forward_##SUFFIX(H, a, a + H, a + 2 * H, a + 3 * H, c_prev + off,          \
                                      c_next + off, m + off);                                   \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_lstmp_cell_forward_##SUFFIX,                                            \
    (int n_rows, int H, REAL *gates, const REAL *c_prev, REAL *c_next, REAL *m,                \
     const int *lengths, int t),                                                                \
    (n_rows, H, gates, c_prev, c_next, m, lengths, t))                                          \
                                                                                                \
/* After the projection wrote h_next = m W_hr (rows of P): real rows copy it to hs; rows   \
 * past their length carry h_prev instead and get hs = 0. */                                 \
static void fl_lstmp_output_##SUFFIX(int n_rows, int P, const REAL *h_prev, REAL *h_next,     \
                                     REAL *hs, const int *lengths, int t)                       \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        size_t off = (size_t)r * P;                                                             \
        if (lengths && t >= lengths[r]) {                                                       \
            memcpy(h_next + off, h_prev + off, (size_t)P * sizeof(REAL));                       \
            memset(hs + off, 0, (size_t)P * sizeof(REAL));                                      \
        } else {                                                                                \
            memcpy(hs + off, h_next + off, (size_t)P * sizeof(REAL));                           \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* The gradient reaching h_t = m_t W_hr at step t: d_proj = dh + dhs (dhs may be NULL) for  \
 * real rows, 0 for rows past their length (there h_t is h_{t-1} carried, and dh passes     \
 * through untouched by the caller). */                                                     \
static void fl_lstmp_dh_total_##SUFFIX(int n_rows, int P, const REAL *dh, const REAL *dhs,    \
                                       REAL *d_proj, const int *lengths, int t)                 \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        size_t off = (size_t)r * P;                                                             \
        REAL *FL_RESTRICT out = d_proj + off;                                                   \
        const REAL *FL_RESTRICT g = dh + off;                                                   \
        if (lengths && t >= lengths[r]) {                                                       \
            memset(out, 0, (size_t)P * sizeof(REAL));                                           \
        } else if (dhs) {                                                                       \
            const REAL *FL_RESTRICT go = dhs + off;                                             \
            for (int j = 0; j < P; j++) out[j] = g[j] + go[j];                                  \
        } else {                                                                                \
            memcpy(out, g, (size_t)P * sizeof(REAL));                                           \
        }                                                                                       \
    }                                                                                           \
}

FL_DEFINE_LSTMP(f32, float, fl_sigmoidf, fl_tanhf)
FL_DEFINE_LSTMP(f64, double, fl_sigmoid, fl_tanh)

#endif

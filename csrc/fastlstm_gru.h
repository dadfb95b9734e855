/* The fused GRU cell (PyTorch's formulation, gate blocks r, z, n), forward and backward,
 * float32 and float64, compiled per instruction-set level like the LSTM and RNN cells
 * (fastlstm_kernels.h: the same exp/tanh/sigmoid, the same multi-versioning).
 *
 *   r = sigmoid(a_xr + a_hr)   z = sigmoid(a_xz + a_hz)   n = tanh(a_xn + r * a_hn)
 *   h_t = (1 - z) * n + z * h_{t-1},   a_x = x W_x + b_x,   a_h = h_{t-1} W_h + b_h
 *
 * Layouts, per row (one sequence at one step):
 *   gates  4H  in (forward): columns [0, 3H) hold a_x, the input projection with b_x
 *              (computed for all steps up front); out: r, z, n and
 *              a_hn = h_{t-1} W_hn + b_hn (the backward's dr needs it)
 *   gh     3H  the step's product h_{t-1} W_h, without b_h (a thread's small scratch,
 *              reused every step)
 *   d_gx   3H  gradient w.r.t. a_x
 *   d_gh   3H  gradient w.r.t. a_h: d_gx but for the n block, d a_hn = d a_xn * r
 * A call covers hidden units [u0, u0 + nu) of n_rows rows (the unit split gives each
 * thread a share of the units). Rows with t >= lengths[r] are frozen: the forward carries
 * h and writes hs = 0, the backward passes dh through and writes zero gradients.
 */
#ifndef FASTLSTM_GRU_H
#define FASTLSTM_GRU_H

#include "fastlstm_kernels.h"

/* Gate blocks come in as separate restrict pointers (disjoint slices of one row) so that
 * the loops vectorise without run-time alias checks. */
#define FL_DEFINE_GRU_CELL(SUFFIX, REAL, SIGMOID, TANH)                                          \
FL_INLINE void fl_gru_row_forward_##SUFFIX(                                                     \
    int nu, const REAL *FL_RESTRICT hr, const REAL *FL_RESTRICT hz, const REAL *FL_RESTRICT hnp, \
    const REAL *FL_RESTRICT br, const REAL *FL_RESTRICT bz, const REAL *FL_RESTRICT bn,         \
    REAL *FL_RESTRICT gr, REAL *FL_RESTRICT gz, REAL *FL_RESTRICT gn, REAL *FL_RESTRICT ghn,    \
    const REAL *FL_RESTRICT hp, REAL *FL_RESTRICT hn, REAL *FL_RESTRICT ho)                     \
{                                                                                               \
    for (int j = 0; j < nu; j++) {                                                              \
        REAL r = SIGMOID(gr[j] + hr[j] + br[j]);                                                \
        REAL z = SIGMOID(gz[j] + hz[j] + bz[j]);                                                \
        REAL a_hn = hnp[j] + bn[j];                                                             \
        REAL n = TANH(gn[j] + r * a_hn);                                                        \
        REAL h = n + z * (hp[j] - n);                                                           \
        gr[j] = r;                                                                              \
        gz[j] = z;                                                                              \
        gn[j] = n;                                                                              \
        ghn[j] = a_hn;                                                                          \
        hn[j] = h;                                                                              \
        ho[j] = h;                                                                              \
    }                                                                                           \
}                                                                                               \
                                                                                                \
FL_INLINE void fl_gru_cell_forward_##SUFFIX##_body(                                            \
    int n_rows, int H, int u0, int nu, const REAL *gh, const REAL *b_h, REAL *gates,            \
    const REAL *h_prev, REAL *h_next, REAL *hs, const int *lengths, int t)                      \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        const REAL *ah = gh + (size_t)r * 3 * H + u0;                                           \
        REAL *g = gates + (size_t)r * 4 * H + u0;                                               \
        size_t off = (size_t)r * H + u0;                                                        \
        if (lengths && t >= lengths[r]) {                                                       \
            memcpy(h_next + off, h_prev + off, (size_t)nu * sizeof(REAL));                      \
            memset(hs + off, 0, (size_t)nu * sizeof(REAL));                                     \
            continue;                                                                           \
        }                                                                                       \
        fl_gru_row_forward_##SUFFIX(nu, ah, ah + H, ah + 2 * H, b_h + u0, b_h + H + u0,         \
                                    b_h + 2 * H + u0, g, g + H, g + 2 * H, g + 3 * H,           \
                                    h_prev + off, h_next + off, hs + off);                      \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_gru_cell_forward_##SUFFIX,                                              \
    (int n_rows, int H, int u0, int nu, const REAL *gh, const REAL *b_h, REAL *gates,           \
     const REAL *h_prev, REAL *h_next, REAL *hs, const int *lengths, int t),                    \
    (n_rows, H, u0, nu, gh, b_h, gates, h_prev, h_next, hs, lengths, t))                        \
                                                                                                \
/* g = dh (+ dhs) reaches h_t; dh_prev leaves with g * z, the direct path to h_{t-1}; the    \
 * caller adds d_gh W_h^T to it. */                                                            \
FL_INLINE void fl_gru_row_backward_##SUFFIX(                                                    \
    int nu, const REAL *FL_RESTRICT gr, const REAL *FL_RESTRICT gz, const REAL *FL_RESTRICT gn, \
    const REAL *FL_RESTRICT ghn, const REAL *FL_RESTRICT hp, const REAL *FL_RESTRICT dh,        \
    const REAL *FL_RESTRICT dho, REAL *FL_RESTRICT dh_prev, REAL *FL_RESTRICT dxr,              \
    REAL *FL_RESTRICT dxz, REAL *FL_RESTRICT dxn, REAL *FL_RESTRICT dhr,                        \
    REAL *FL_RESTRICT dhz, REAL *FL_RESTRICT dhn)                                               \
{                                                                                               \
    for (int j = 0; j < nu; j++) {                                                              \
        REAL r = gr[j], z = gz[j], n = gn[j];                                                   \
        REAL g = dho ? dh[j] + dho[j] : dh[j];                                                  \
        REAL d_n = g * (1 - z) * (1 - n * n);                                                   \
        REAL d_z = g * (hp[j] - n) * z * (1 - z);                                               \
        REAL d_r = d_n * ghn[j] * r * (1 - r);                                                  \
        dxr[j] = d_r;                                                                           \
        dxz[j] = d_z;                                                                           \
        dxn[j] = d_n;                                                                           \
        dhr[j] = d_r;                                                                           \
        dhz[j] = d_z;                                                                           \
        dhn[j] = d_n * r;                                                                       \
        dh_prev[j] = g * z;                                                                     \
    }                                                                                           \
}                                                                                               \
                                                                                                \
FL_INLINE void fl_gru_cell_backward_##SUFFIX##_body(                                           \
    int n_rows, int H, int u0, int nu, const REAL *gates, const REAL *h_prev,                   \
    const REAL *dhs, const REAL *dh, REAL *dh_prev, REAL *d_gx, REAL *d_gh,                     \
    const int *lengths, int t)                                                                  \
{                                                                                               \
    for (int r = 0; r < n_rows; r++) {                                                          \
        const REAL *g = gates + (size_t)r * 4 * H + u0;                                         \
        REAL *dx = d_gx + (size_t)r * 3 * H + u0;                                               \
        REAL *dg = d_gh + (size_t)r * 3 * H + u0;                                               \
        size_t off = (size_t)r * H + u0;                                                        \
        if (lengths && t >= lengths[r]) {                                                       \
            for (int gate = 0; gate < 3; gate++) {                                              \
                memset(dx + (size_t)gate * H, 0, (size_t)nu * sizeof(REAL));                    \
                memset(dg + (size_t)gate * H, 0, (size_t)nu * sizeof(REAL));                    \
            }                                                                                   \
            memcpy(dh_prev + off, dh + off, (size_t)nu * sizeof(REAL));                         \
            continue;                                                                           \
        }                                                                                       \
        if (dhs)                                                                                \
            fl_gru_row_backward_##SUFFIX(nu, g, g + H, g + 2 * H, g + 3 * H, h_prev + off,      \
                                         dh + off, dhs + off, dh_prev + off, dx, dx + H,        \
                                         dx + 2 * H, dg, dg + H, dg + 2 * H);                   \
        else                                                                                    \
            fl_gru_row_backward_##SUFFIX(nu, g, g + H, g + 2 * H, g + 3 * H, h_prev + off,      \
                                         dh + off, NULL, dh_prev + off, dx, dx + H,             \
                                         dx + 2 * H, dg, dg + H, dg + 2 * H);                   \
    }                                                                                           \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_gru_cell_backward_##SUFFIX,                                             \
    (int n_rows, int H, int u0, int nu, const REAL *gates, const REAL *h_prev,                  \
     const REAL *dhs, const REAL *dh, REAL *dh_prev, REAL *d_gx, REAL *d_gh,                    \
     const int *lengths, int t),                                                                \
    (n_rows, H, u0, nu, gates, h_prev, dhs, dh, dh_prev, d_gx, d_gh, lengths, t))

FL_DEFINE_GRU_CELL(f32, float, fl_sigmoidf, fl_tanhf)
FL_DEFINE_GRU_CELL(f64, double, fl_sigmoid, fl_tanh)

/* y[0:n] += v[0:n]: the backward's single-row step product (written apart by the dot
 * kernel, which cannot accumulate) joins the direct path g * z. */
#define FL_DEFINE_ADD(SUFFIX, REAL)                                                              \
FL_INLINE void fl_gru_add_##SUFFIX##_body(int n, const REAL *FL_RESTRICT v,                    \
                                          REAL *FL_RESTRICT y)                                  \
{                                                                                               \
    for (int j = 0; j < n; j++) y[j] += v[j];                                                   \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_gru_add_##SUFFIX, (int n, const REAL *FL_RESTRICT v,                    \
                                           REAL *FL_RESTRICT y), (n, v, y))
FL_DEFINE_ADD(f32, float)
FL_DEFINE_ADD(f64, double)

#endif

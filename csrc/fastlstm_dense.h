/* The dense parts of a training step around the recurrent kernels, one row range or one
 * element range per call (the callers cut the work between OpenMP threads):
 *   - softmax cross-entropy rows: the loss of each row and its gradient w.r.t. the logits,
 *     in two passes over the row (max, then exp and sum, then a scale);
 *   - the Adagrad and Adam parameter updates, fused into one pass over each parameter.
 * Reductions keep 16 partial sums/maxima so the loops vectorise without -ffast-math.
 */
#ifndef FASTLSTM_DENSE_H
#define FASTLSTM_DENSE_H

#include <math.h>
#include <stdint.h>

#include "fastlstm_kernels.h"

#define FL_LANES 16

#define FL_DEFINE_XENT(SUFFIX, REAL, EXP, SQRT)                                                \
/* Rows [0, n_rows) of logits z (ld V): returns the sum over the rows kept (target !=       \
 * ignore, or all when !has_ignore) of -log softmax(z)[target] (in double), and writes       \
 * grad = scale * (softmax(z) - onehot(target)) for kept rows, 0 for ignored ones. */         \
FL_INLINE double fl_softmax_xent_rows_##SUFFIX##_body(                                         \
    int n_rows, int V, const REAL *FL_RESTRICT z, const int64_t *targets, int has_ignore,      \
    int64_t ignore, REAL scale, REAL *FL_RESTRICT grad) {                                      \
    double loss = 0.0;                                                                        \
    for (int r = 0; r < n_rows; r++) {                                                        \
        const REAL *zr = z + (size_t)r * V;                                                   \
        REAL *gr = grad + (size_t)r * V;                                                      \
        int64_t t = targets[r];                                                               \
        if (has_ignore && t == ignore) {                                                      \
            for (int j = 0; j < V; j++) gr[j] = 0;                                            \
            continue;                                                                         \
        }                                                                                     \
        REAL lane[FL_LANES];                                                                  \
        for (int k = 0; k < FL_LANES; k++) lane[k] = zr[0];                                   \
        int j = 0;                                                                            \
        for (; j + FL_LANES <= V; j += FL_LANES)                                              \
            for (int k = 0; k < FL_LANES; k++)                                                \
                lane[k] = zr[j + k] > lane[k] ? zr[j + k] : lane[k];                          \
        REAL m = lane[0];                                                                     \
        for (int k = 1; k < FL_LANES; k++) m = lane[k] > m ? lane[k] : m;                     \
        for (; j < V; j++) m = zr[j] > m ? zr[j] : m;                                         \
        /* exp in its own loop so it vectorises like the cell's; then a lane-wise sum */ \
        for (j = 0; j < V; j++) gr[j] = EXP(zr[j] - m);                                       \
        for (int k = 0; k < FL_LANES; k++) lane[k] = 0;                                       \
        for (j = 0; j + FL_LANES <= V; j += FL_LANES)                                         \
            for (int k = 0; k < FL_LANES; k++) lane[k] += gr[j + k];                          \
        double sum = 0.0;                                                                     \
        for (; j < V; j++) sum += gr[j];                                                      \
        for (int k = 0; k < FL_LANES; k++) sum += lane[k];                                    \
        loss += log(sum) + (double)m - (double)zr[t];                                         \
        REAL inv = (REAL)(scale / sum);                                                       \
        for (j = 0; j < V; j++) gr[j] *= inv;                                                 \
        gr[t] -= scale;                                                                       \
    }                                                                                         \
    return loss;                                                                              \
}                                                                                             \
FL_ISA_VERSIONS(double, fl_softmax_xent_rows_##SUFFIX,                                          \
    (int n_rows, int V, const REAL *FL_RESTRICT z,                                              \
     const int64_t *targets, int has_ignore,                                                    \
     int64_t ignore, REAL scale,                                                                \
     REAL *FL_RESTRICT grad),                                                                   \
    (n_rows, V, z, targets, has_ignore, ignore, scale, grad))                                   \
                                                                                              \
/* Adagrad (PyTorch's rule): sum += g^2; p -= lr * g / (sqrt(sum) + eps). */                  \
FL_INLINE void fl_adagrad_##SUFFIX##_body(                                                     \
    size_t n, REAL *FL_RESTRICT p, const REAL *FL_RESTRICT g, REAL *FL_RESTRICT sum,           \
    REAL lr, REAL eps) {                                                                       \
    for (size_t i = 0; i < n; i++) {                                                          \
        REAL gi = g[i];                                                                       \
        REAL s = sum[i] + gi * gi;                                                            \
        sum[i] = s;                                                                           \
        p[i] -= (lr * gi) / (SQRT(s) + eps);                                                  \
    }                                                                                         \
}                                                                                             \
FL_ISA_VERSIONS_VOID(fl_adagrad_##SUFFIX,                                                       \
    (size_t n, REAL *FL_RESTRICT p, const REAL *FL_RESTRICT g,                                  \
     REAL *FL_RESTRICT sum, REAL lr, REAL eps),                                                 \
    (n, p, g, sum, lr, eps))                                                                    \
                                                                                              \
/* Adam (PyTorch's rule, weight decay folded into g unless decoupled, which the caller      \
 * applies to p first): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;                        \
 * p -= step_size * m / (sqrt(v) / sqrt_bc2 + eps). */                                        \
FL_INLINE void fl_adam_##SUFFIX##_body(                                                        \
    size_t n, REAL *FL_RESTRICT p, const REAL *FL_RESTRICT g, REAL *FL_RESTRICT m,             \
    REAL *FL_RESTRICT v, REAL b1, REAL b2, REAL weight_decay, REAL step_size,                  \
    REAL sqrt_bc2, REAL eps) {                                                                 \
    for (size_t i = 0; i < n; i++) {                                                          \
        REAL gi = g[i] + weight_decay * p[i];                                                 \
        REAL mi = b1 * m[i] + (1 - b1) * gi;                                                  \
        REAL vi = b2 * v[i] + (1 - b2) * gi * gi;                                             \
        m[i] = mi;                                                                            \
        v[i] = vi;                                                                            \
        p[i] -= step_size * mi / (SQRT(vi) / sqrt_bc2 + eps);                                 \
    }                                                                                         \
}                                                                                               \
FL_ISA_VERSIONS_VOID(fl_adam_##SUFFIX,                                                          \
    (size_t n, REAL *FL_RESTRICT p, const REAL *FL_RESTRICT g,                                  \
     REAL *FL_RESTRICT m, REAL *FL_RESTRICT v, REAL b1, REAL b2,                                \
     REAL weight_decay, REAL step_size, REAL sqrt_bc2, REAL eps),                               \
    (n, p, g, m, v, b1, b2, weight_decay, step_size, sqrt_bc2, eps))

FL_DEFINE_XENT(f32, float, fl_expf, sqrtf)
FL_DEFINE_XENT(f64, double, fl_exp, sqrt)

#endif

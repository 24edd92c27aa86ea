/* Inner loops of the direct convolution (_conv.pyx), in C so that `restrict` tells the compiler
 * the arrays do not overlap and it vectorizes them (MINIDL_SIMD_SUM lets it reorder the dot
 * products' additions); SIMD clones as described in _portable.h.
 */
#ifndef MINIDL_CONV_H
#define MINIDL_CONV_H

#include "_portable.h"

#define MINIDL_CONV_ROWS(SUFFIX, T)                                                         \
    /* y[k] += a * x[k] */                                                                  \
    MINIDL_CLONES static void minidl_axpy_##SUFFIX(T* restrict y,                           \
                                                   const T* restrict x, T a,                \
                                                   ptrdiff_t n) {                           \
        for (ptrdiff_t k = 0; k < n; k++) y[k] += a * x[k];                                 \
    }                                                                                       \
    /* sum of g[k] * x[k] in T, in SIMD-lane partial sums (one plane: ~1e3 terms) */        \
    MINIDL_CLONES static double minidl_dot_##SUFFIX(const T* restrict g,                    \
                                                    const T* restrict x,                    \
                                                    ptrdiff_t n) {                          \
        T s = 0;                                                                            \
        MINIDL_SIMD_SUM(s)                                                                  \
        for (ptrdiff_t k = 0; k < n; k++) s += g[k] * x[k];                                 \
        return (double)s;                                                                   \
    }                                                                                       \
    /* sum of x[k] in T, in SIMD-lane partial sums */                                       \
    MINIDL_CLONES static double minidl_sum_##SUFFIX(const T* restrict x,                    \
                                                    ptrdiff_t n) {                          \
        T s = 0;                                                                            \
        MINIDL_SIMD_SUM(s)                                                                  \
        for (ptrdiff_t k = 0; k < n; k++) s += x[k];                                        \
        return (double)s;                                                                   \
    }

/* y[k] += sum over the 3x3 taps (i, j) of w[3*i + j] * x[k + i*row + j]: all nine taps of a
   3x3 kernel in one pass, so y is loaded and stored once instead of nine times */
#define MINIDL_CONV_3X3(SUFFIX, T)                                                          \
    MINIDL_CLONES static void minidl_conv3x3_##SUFFIX(T* restrict y,                        \
                                                      const T* restrict x,                  \
                                                      const T* restrict w,                  \
                                                      ptrdiff_t row, ptrdiff_t n) {         \
        const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5];           \
        const T w6 = w[6], w7 = w[7], w8 = w[8];                                            \
        const T* restrict x1 = x + row;                                                     \
        const T* restrict x2 = x + 2 * row;                                                 \
        for (ptrdiff_t k = 0; k < n; k++) {                                                 \
            y[k] += w0 * x[k] + w1 * x[k + 1] + w2 * x[k + 2]                               \
                  + w3 * x1[k] + w4 * x1[k + 1] + w5 * x1[k + 2]                            \
                  + w6 * x2[k] + w7 * x2[k + 1] + w8 * x2[k + 2];                           \
        }                                                                                   \
    }

/* out[3*i + j] += sum_k g[k] * x[k + i*row + j] for the nine taps of a 3x3 kernel, in one pass
   over g (partial sums in T, in SIMD lanes) */
#define MINIDL_DOT_3X3(SUFFIX, T)                                                           \
    MINIDL_CLONES static void minidl_dot3x3_##SUFFIX(const T* restrict g,                   \
                                                     const T* restrict x,                   \
                                                     ptrdiff_t row, ptrdiff_t n,            \
                                                     double* restrict out) {                \
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;           \
        const T* restrict x1 = x + row;                                                     \
        const T* restrict x2 = x + 2 * row;                                                 \
        MINIDL_SIMD_SUM(s0, s1, s2, s3, s4, s5, s6, s7, s8)                                 \
        for (ptrdiff_t k = 0; k < n; k++) {                                                 \
            const T gk = g[k];                                                              \
            s0 += gk * x[k]; s1 += gk * x[k + 1]; s2 += gk * x[k + 2];                      \
            s3 += gk * x1[k]; s4 += gk * x1[k + 1]; s5 += gk * x1[k + 2];                   \
            s6 += gk * x2[k]; s7 += gk * x2[k + 1]; s8 += gk * x2[k + 2];                   \
        }                                                                                   \
        out[0] += s0; out[1] += s1; out[2] += s2; out[3] += s3; out[4] += s4;               \
        out[5] += s5; out[6] += s6; out[7] += s7; out[8] += s8;                             \
    }

/* One kernel row of KW = 2..MINIDL_CONV_ROW_MAX taps fused (KW a compile-time constant, so the
   taps stay in registers), for the kernels other than 3x3:
     minidl_conv_row<KW>: y[k] += sum_{j < KW} w[j] * x[k + j]              (forward)
     minidl_dot_row<KW>:  out[j] += sum_k g[k] * x[k + j] for j < KW         (weight gradient)
   y is loaded and stored once per kernel row instead of once per tap, and g read once per row;
   each row's sum is formed left to right (w[0] x[k] + w[1] x[k + 1] + ...), the dot products in
   SIMD-lane partial sums in T, like minidl_dot. */
#define MINIDL_CONV_ROW_MAX 8
#define MINIDL_CONV_ROW(SUFFIX, T, KW)                                                      \
    MINIDL_CLONES static void minidl_conv_row##KW##_##SUFFIX(T* restrict y,                 \
                                                             const T* restrict x,           \
                                                             const T* restrict w,           \
                                                             ptrdiff_t n) {                 \
        T v[KW];                                                                            \
        for (int j = 0; j < KW; j++) v[j] = w[j];                                           \
        for (ptrdiff_t k = 0; k < n; k++) {                                                 \
            T s = v[0] * x[k];                                                              \
            for (int j = 1; j < KW; j++) s += v[j] * x[k + j];                              \
            y[k] += s;                                                                      \
        }                                                                                   \
    }                                                                                       \
    MINIDL_CLONES static void minidl_dot_row##KW##_##SUFFIX(const T* restrict g,            \
                                                            const T* restrict x,            \
                                                            ptrdiff_t n,                    \
                                                            double* restrict out) {         \
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;                   \
        MINIDL_SIMD_SUM(s0, s1, s2, s3, s4, s5, s6, s7)                                     \
        for (ptrdiff_t k = 0; k < n; k++) {                                                 \
            const T gk = g[k];                                                              \
            s0 += gk * x[k]; s1 += gk * x[k + 1];                                           \
            if (KW > 2) s2 += gk * x[k + 2];                                                \
            if (KW > 3) s3 += gk * x[k + 3];                                                \
            if (KW > 4) s4 += gk * x[k + 4];                                                \
            if (KW > 5) s5 += gk * x[k + 5];                                                \
            if (KW > 6) s6 += gk * x[k + 6];                                                \
            if (KW > 7) s7 += gk * x[k + 7];                                                \
        }                                                                                   \
        const T s[8] = {s0, s1, s2, s3, s4, s5, s6, s7};                                    \
        for (int j = 0; j < KW; j++) out[j] += s[j];                                        \
    }

#define MINIDL_CONV_ROWS_2_TO_8(SUFFIX, T)                                                  \
    MINIDL_CONV_ROW(SUFFIX, T, 2) MINIDL_CONV_ROW(SUFFIX, T, 3)                             \
    MINIDL_CONV_ROW(SUFFIX, T, 4) MINIDL_CONV_ROW(SUFFIX, T, 5)                             \
    MINIDL_CONV_ROW(SUFFIX, T, 6) MINIDL_CONV_ROW(SUFFIX, T, 7)                             \
    MINIDL_CONV_ROW(SUFFIX, T, 8)                                                           \
    /* by the run-time KW (2..MINIDL_CONV_ROW_MAX; the caller checks) */                    \
    static void minidl_conv_row_##SUFFIX(T* y, const T* x, const T* w, ptrdiff_t kw,        \
                                         ptrdiff_t n) {                                     \
        switch (kw) {                                                                       \
            case 2: minidl_conv_row2_##SUFFIX(y, x, w, n); break;                           \
            case 3: minidl_conv_row3_##SUFFIX(y, x, w, n); break;                           \
            case 4: minidl_conv_row4_##SUFFIX(y, x, w, n); break;                           \
            case 5: minidl_conv_row5_##SUFFIX(y, x, w, n); break;                           \
            case 6: minidl_conv_row6_##SUFFIX(y, x, w, n); break;                           \
            case 7: minidl_conv_row7_##SUFFIX(y, x, w, n); break;                           \
            default: minidl_conv_row8_##SUFFIX(y, x, w, n); break;                          \
        }                                                                                   \
    }                                                                                       \
    static void minidl_dot_row_##SUFFIX(const T* g, const T* x, ptrdiff_t kw, ptrdiff_t n,  \
                                        double* out) {                                      \
        switch (kw) {                                                                       \
            case 2: minidl_dot_row2_##SUFFIX(g, x, n, out); break;                          \
            case 3: minidl_dot_row3_##SUFFIX(g, x, n, out); break;                          \
            case 4: minidl_dot_row4_##SUFFIX(g, x, n, out); break;                          \
            case 5: minidl_dot_row5_##SUFFIX(g, x, n, out); break;                          \
            case 6: minidl_dot_row6_##SUFFIX(g, x, n, out); break;                          \
            case 7: minidl_dot_row7_##SUFFIX(g, x, n, out); break;                          \
            default: minidl_dot_row8_##SUFFIX(g, x, n, out); break;                         \
        }                                                                                   \
    }

MINIDL_CONV_ROWS(f, float)
MINIDL_CONV_ROWS(d, double)
MINIDL_CONV_3X3(f, float)
MINIDL_CONV_3X3(d, double)
MINIDL_DOT_3X3(f, float)
MINIDL_DOT_3X3(d, double)
MINIDL_CONV_ROWS_2_TO_8(f, float)
MINIDL_CONV_ROWS_2_TO_8(d, double)

#endif

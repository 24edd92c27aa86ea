/* Inner loops of the normalization kernels (_batchnorm.pyx), written in C so that the compiler
 * can vectorize the float64 reductions: MINIDL_SIMD_SUM allows it to reorder the additions
 * (see _portable.h; without OpenMP the loops run in order, still correct). SIMD clones as
 * described in _portable.h.
 *
 * All statistics are accumulated in double whatever the data type (float or double).
 */
#ifndef MINIDL_BATCHNORM_H
#define MINIDL_BATCHNORM_H

#include "_portable.h"

/* s1 += sum(x - k), s2 += sum((x - k)^2) */
#define MINIDL_SHIFTED_SUMS(NAME, T)                                                        \
    MINIDL_CLONES static void NAME(const T* x, ptrdiff_t n, double k, double* s1,           \
                                   double* s2) {                                           \
        double a = 0.0, q = 0.0;                                                            \
        MINIDL_SIMD_SUM(a, q)                                                               \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            double d = (double)x[i] - k;                                                    \
            a += d;                                                                         \
            q += d * d;                                                                     \
        }                                                                                   \
        *s1 += a;                                                                           \
        *s2 += q;                                                                           \
    }

/* s_dy += sum(dy), s_dyx += sum(dy * (x - mean)) */
#define MINIDL_PRODUCT_SUMS(NAME, T)                                                        \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, ptrdiff_t n, double mean,       \
                                   double* s_dy, double* s_dyx) {                          \
        double a = 0.0, p = 0.0;                                                            \
        MINIDL_SIMD_SUM(a, p)                                                               \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            double g = (double)dy[i];                                                       \
            a += g;                                                                         \
            p += g * ((double)x[i] - mean);                                                 \
        }                                                                                   \
        *s_dy += a;                                                                         \
        *s_dyx += p;                                                                        \
    }

/* out = (x - mean) * scale + shift; subtracting first keeps a constant channel at shift */
#define MINIDL_AFFINE(NAME, T)                                                              \
    MINIDL_CLONES static void NAME(const T* x, T* out, ptrdiff_t n, double mean,            \
                                   double scale, double shift) {                           \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            out[i] = (T)(((double)x[i] - mean) * scale + shift);                            \
    }

/* dx = k * (dy - mean_dy - (x - mean) * proj) */
#define MINIDL_NORM_DX(NAME, T)                                                             \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, T* dx, ptrdiff_t n, double mean, \
                                   double k, double mean_dy, double proj) {                \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            dx[i] = (T)(k * ((double)dy[i] - mean_dy - ((double)x[i] - mean) * proj));      \
    }

MINIDL_SHIFTED_SUMS(minidl_shifted_sums_f, float)
MINIDL_SHIFTED_SUMS(minidl_shifted_sums_d, double)
MINIDL_PRODUCT_SUMS(minidl_product_sums_f, float)
MINIDL_PRODUCT_SUMS(minidl_product_sums_d, double)
MINIDL_AFFINE(minidl_affine_f, float)
MINIDL_AFFINE(minidl_affine_d, double)
MINIDL_NORM_DX(minidl_norm_dx_f, float)
MINIDL_NORM_DX(minidl_norm_dx_d, double)

#endif

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

/* The same followed by ReLU in the same pass: out = max(affine, 0) as _activation.h's ReLU
 * computes it on the rounded value (0 if v < 0 else v: a NaN stays NaN, -0.0 stays -0.0), so
 * the output is bit for bit that of BatchNorm then ReLU. */
#define MINIDL_AFFINE_RELU(NAME, T)                                                         \
    MINIDL_CLONES static void NAME(const T* x, T* out, ptrdiff_t n, double mean,            \
                                   double scale, double shift) {                           \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T v = (T)(((double)x[i] - mean) * scale + shift);                               \
            out[i] = v < 0 ? (T)0 : v;                                                      \
        }                                                                                   \
    }

/* dx = k * (dy - mean_dy - (x - mean) * proj) */
#define MINIDL_NORM_DX(NAME, T)                                                             \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, T* dx, ptrdiff_t n, double mean, \
                                   double k, double mean_dy, double proj) {                \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            dx[i] = (T)(k * ((double)dy[i] - mean_dy - ((double)x[i] - mean) * proj));      \
    }

/* The affine step of the norms whose parameters are not per view-channel (LayerNorm's
 * elementwise weight and bias, GroupNorm's per-channel ones over group statistics):
 * out = x * w + b with one (w, b) per position; out may be x itself. */
#define MINIDL_SCALE_SHIFT(NAME, T)                                                         \
    MINIDL_CLONES static void NAME(const T* x, T* out, ptrdiff_t n, const double* w,        \
                                   const double* b) {                                      \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            out[i] = (T)((double)x[i] * w[i] + b[i]);                                       \
    }

/* Its backward over n positions of one normalized segment with statistics (mean, invstd):
 * xhat = (x - mean) * invstd; dw += dy * xhat; db += dy; dxhat = dy * w (per position).
 * dxhat may be dy itself (each position is read before it is written). */
#define MINIDL_SCALE_SHIFT_GRAD(NAME, T)                                                    \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, T* dxhat, ptrdiff_t n,          \
                                   double mean, double invstd, const double* w, double* dw, \
                                   double* db) {                                           \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            double g = (double)dy[i];                                                       \
            dw[i] += g * (((double)x[i] - mean) * invstd);                                  \
            db[i] += g;                                                                     \
            dxhat[i] = (T)(g * w[i]);                                                       \
        }                                                                                   \
    }

/* Column variants, for the (A, C, 1) view (BatchNorm on (N, C), per-activation BatchNorm):
 * one row segment of n channels (columns), with per-column shifts and coefficients, so the
 * loops run along the contiguous row instead of making one call per value. */

/* s1[i] += x[i] - k[i], s2[i] += (x[i] - k[i])^2 */
#define MINIDL_COL_SHIFTED_SUMS(NAME, T)                                                    \
    MINIDL_CLONES static void NAME(const T* x, ptrdiff_t n, const double* k, double* s1,    \
                                   double* s2) {                                           \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            double d = (double)x[i] - k[i];                                                 \
            s1[i] += d;                                                                     \
            s2[i] += d * d;                                                                 \
        }                                                                                   \
    }

/* s_dy[i] += dy[i], s_dyx[i] += dy[i] * (x[i] - mean[i]) */
#define MINIDL_COL_PRODUCT_SUMS(NAME, T)                                                    \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, ptrdiff_t n, const double* mean, \
                                   double* s_dy, double* s_dyx) {                          \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            double g = (double)dy[i];                                                       \
            s_dy[i] += g;                                                                   \
            s_dyx[i] += g * ((double)x[i] - mean[i]);                                       \
        }                                                                                   \
    }

/* out[i] = (x[i] - mean[i]) * scale[i] + shift[i]; out may be x itself */
#define MINIDL_COL_AFFINE(NAME, T)                                                          \
    MINIDL_CLONES static void NAME(const T* x, T* out, ptrdiff_t n, const double* mean,     \
                                   const double* scale, const double* shift) {             \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            out[i] = (T)(((double)x[i] - mean[i]) * scale[i] + shift[i]);                   \
    }

/* the same followed by ReLU (as MINIDL_AFFINE_RELU) */
#define MINIDL_COL_AFFINE_RELU(NAME, T)                                                     \
    MINIDL_CLONES static void NAME(const T* x, T* out, ptrdiff_t n, const double* mean,     \
                                   const double* scale, const double* shift) {             \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T v = (T)(((double)x[i] - mean[i]) * scale[i] + shift[i]);                      \
            out[i] = v < 0 ? (T)0 : v;                                                      \
        }                                                                                   \
    }

/* dx[i] = k[i] * (dy[i] - mean_dy[i] - (x[i] - mean[i]) * proj[i]) */
#define MINIDL_COL_NORM_DX(NAME, T)                                                         \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, T* dx, ptrdiff_t n,             \
                                   const double* mean, const double* k,                    \
                                   const double* mean_dy, const double* proj) {            \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                   \
            dx[i] = (T)(k[i] * ((double)dy[i] - mean_dy[i] - ((double)x[i] - mean[i]) * proj[i])); \
    }

/* The gradient through a ReLU that followed the BatchNorm (BatchNorm._backward_relu): g = 0
 * where the ReLU's output y is <= 0, else dy -- exactly _activation.h's relu_grad (a NaN output
 * passes dy through). g may be dy itself. */
#define MINIDL_RELU_MASK(NAME, T)                                                           \
    MINIDL_CLONES static void NAME(const T* dy, const T* y, T* g, ptrdiff_t n) {            \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) g[i] = y[i] <= 0 ? (T)0 : dy[i];                  \
    }

/* The same mask without the ReLU's output: y is recomputed from the BatchNorm's input x as its
 * forward pass computed it, (T)((x - mean) * scale + shift) (MINIDL_AFFINE_RELU's value before
 * the max, whose sign decides the ReLU: y <= 0 exactly where this value is <= 0, NaN passes),
 * with the same scale = gamma * invstd and shift = beta. g may be dy itself. */
#define MINIDL_RELU_MASK_AFFINE(NAME, T)                                                    \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, T* g, ptrdiff_t n, double mean, \
                                   double scale, double shift) {                           \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T v = (T)(((double)x[i] - mean) * scale + shift);                               \
            g[i] = v <= 0 ? (T)0 : dy[i];                                                   \
        }                                                                                   \
    }

/* the same on a row segment of n channels with per-column coefficients (column kernels) */
#define MINIDL_COL_RELU_MASK_AFFINE(NAME, T)                                                \
    MINIDL_CLONES static void NAME(const T* dy, const T* x, T* g, ptrdiff_t n,              \
                                   const double* mean, const double* scale,                \
                                   const double* shift) {                                  \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            T v = (T)(((double)x[i] - mean[i]) * scale[i] + shift[i]);                      \
            g[i] = v <= 0 ? (T)0 : dy[i];                                                   \
        }                                                                                   \
    }

MINIDL_RELU_MASK(minidl_relu_mask_f, float)
MINIDL_RELU_MASK(minidl_relu_mask_d, double)
MINIDL_RELU_MASK_AFFINE(minidl_relu_mask_affine_f, float)
MINIDL_RELU_MASK_AFFINE(minidl_relu_mask_affine_d, double)
MINIDL_COL_RELU_MASK_AFFINE(minidl_col_relu_mask_affine_f, float)
MINIDL_COL_RELU_MASK_AFFINE(minidl_col_relu_mask_affine_d, double)
MINIDL_SHIFTED_SUMS(minidl_shifted_sums_f, float)
MINIDL_SHIFTED_SUMS(minidl_shifted_sums_d, double)
MINIDL_PRODUCT_SUMS(minidl_product_sums_f, float)
MINIDL_PRODUCT_SUMS(minidl_product_sums_d, double)
MINIDL_AFFINE(minidl_affine_f, float)
MINIDL_AFFINE(minidl_affine_d, double)
MINIDL_AFFINE_RELU(minidl_affine_relu_f, float)
MINIDL_AFFINE_RELU(minidl_affine_relu_d, double)
MINIDL_NORM_DX(minidl_norm_dx_f, float)
MINIDL_NORM_DX(minidl_norm_dx_d, double)
MINIDL_SCALE_SHIFT(minidl_scale_shift_f, float)
MINIDL_SCALE_SHIFT(minidl_scale_shift_d, double)
MINIDL_SCALE_SHIFT_GRAD(minidl_scale_shift_grad_f, float)
MINIDL_SCALE_SHIFT_GRAD(minidl_scale_shift_grad_d, double)
MINIDL_COL_SHIFTED_SUMS(minidl_col_shifted_sums_f, float)
MINIDL_COL_SHIFTED_SUMS(minidl_col_shifted_sums_d, double)
MINIDL_COL_PRODUCT_SUMS(minidl_col_product_sums_f, float)
MINIDL_COL_PRODUCT_SUMS(minidl_col_product_sums_d, double)
MINIDL_COL_AFFINE(minidl_col_affine_f, float)
MINIDL_COL_AFFINE(minidl_col_affine_d, double)
MINIDL_COL_AFFINE_RELU(minidl_col_affine_relu_f, float)
MINIDL_COL_AFFINE_RELU(minidl_col_affine_relu_d, double)
MINIDL_COL_NORM_DX(minidl_col_norm_dx_f, float)
MINIDL_COL_NORM_DX(minidl_col_norm_dx_d, double)

#endif

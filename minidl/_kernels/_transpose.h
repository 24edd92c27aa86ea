/* Transposing a block of a matrix, for the kernels that move data between NCHW and NHWC (the
 * Winograd convolution's gathers and scatters, _winograd.pyx; im2col's layout changes,
 * _conv.pyx) and for packing a transposed operand of a matrix product (_gemm.h):
 *
 *     dst[c*ds + r] = src[r*ss + c] (+ bias[c])      for r < rows, c < cols
 *
 * `ss` and `ds` are the row strides of src and dst in elements; src and dst never overlap.
 * `bias` (cols elements, one per row of dst) may be NULL.
 *
 * A transpose reads along one axis and writes along the other, so a plain loop does one
 * scalar load and one scalar store per element, half of them a cache line apart: 4x slower
 * than a copy (measured on a (128, 16, 1024) float32 batch, 1.6 vs 0.4 ms on one core). On
 * x86-64 with AVX2 the float version moves 8x8 blocks in registers instead: 8 row loads, 24
 * shuffles and 8 row stores per 64 elements (the classic unpack / shuffle / permute2f128
 * sequence). The remainders, doubles and every other target use the plain loops, which give
 * the same bits (a transpose computes nothing, and the bias is one addition either way).
 */
#ifndef MINIDL_TRANSPOSE_H
#define MINIDL_TRANSPOSE_H

#include "_portable.h"

#if defined(MINIDL_X86_DISPATCH)
#include <immintrin.h>
#endif

/* rows r0 .. r1-1, columns c0 .. c1-1 of the transpose, one element at a time */
#define MINIDL_TRANSPOSE_PLAIN(SUFFIX, T)                                                      \
static MINIDL_INLINE void minidl_transpose_part_##SUFFIX(                                     \
        const T* restrict src, ptrdiff_t ss, T* restrict dst, ptrdiff_t ds, ptrdiff_t r0,      \
        ptrdiff_t r1, ptrdiff_t c0, ptrdiff_t c1, const T* restrict bias) {                   \
    for (ptrdiff_t c = c0; c < c1; c++) {                                                      \
        T* restrict out = dst + c * ds;                                                        \
        if (bias) { /* (no "+ 0" without a bias: it would turn -0.0 into +0.0) */              \
            const T shift = bias[c];                                                           \
            for (ptrdiff_t r = r0; r < r1; r++) out[r] = src[r * ss + c] + shift;              \
        } else {                                                                               \
            for (ptrdiff_t r = r0; r < r1; r++) out[r] = src[r * ss + c];                      \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
static void minidl_transpose_plain_##SUFFIX(const T* restrict src, ptrdiff_t ss,              \
                                            T* restrict dst, ptrdiff_t ds, ptrdiff_t rows,    \
                                            ptrdiff_t cols, const T* restrict bias) {         \
    /* blocks of 8 rows: 8 sequential read streams, runs of 8 writes (see transpose_batched   \
       in _conv.pyx for why not larger square tiles) */                                      \
    for (ptrdiff_t r = 0; r < rows; r += 8)                                                    \
        minidl_transpose_part_##SUFFIX(src, ss, dst, ds, r, r + 8 < rows ? r + 8 : rows, 0,    \
                                       cols, bias);                                            \
}

MINIDL_TRANSPOSE_PLAIN(f, float)
MINIDL_TRANSPOSE_PLAIN(d, double)

#if defined(MINIDL_X86_DISPATCH)
/* Four rows x0..x3 of 8 floats regrouped by column: u[j] holds column j of the four rows in its
   low half and column j + 4 in its high half (the first two steps of the 8x8 transpose). */
MINIDL_TARGET("avx2") static MINIDL_INLINE void minidl_transpose_4x8_avx2(
        __m256 x0, __m256 x1, __m256 x2, __m256 x3, __m256 u[4]) {
    /* pairs of rows interleaved: t0 = x0[0] x1[0] x0[1] x1[1] | x0[4] x1[4] ... */
    const __m256 t0 = _mm256_unpacklo_ps(x0, x1), t1 = _mm256_unpackhi_ps(x0, x1);
    const __m256 t2 = _mm256_unpacklo_ps(x2, x3), t3 = _mm256_unpackhi_ps(x2, x3);
    u[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    u[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    u[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    u[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* float, AVX2: whole 8x8 blocks in registers, the rest by the plain loops */
MINIDL_TARGET("avx2") static void minidl_transpose_avx2_f(
        const float* restrict src, ptrdiff_t ss, float* restrict dst, ptrdiff_t ds,
        ptrdiff_t rows, ptrdiff_t cols, const float* restrict bias) {
    const ptrdiff_t rows8 = rows - rows % 8, cols8 = cols - cols % 8;
    for (ptrdiff_t r = 0; r < rows8; r += 8) {
        const float* s = src + r * ss;
        for (ptrdiff_t c = 0; c < cols8; c += 8) {
            /* x_i = src row r+i, columns c .. c+7 */
            const __m256 x0 = _mm256_loadu_ps(s + c), x1 = _mm256_loadu_ps(s + ss + c);
            const __m256 x2 = _mm256_loadu_ps(s + 2 * ss + c);
            const __m256 x3 = _mm256_loadu_ps(s + 3 * ss + c);
            const __m256 x4 = _mm256_loadu_ps(s + 4 * ss + c);
            const __m256 x5 = _mm256_loadu_ps(s + 5 * ss + c);
            const __m256 x6 = _mm256_loadu_ps(s + 6 * ss + c);
            const __m256 x7 = _mm256_loadu_ps(s + 7 * ss + c);
            /* lo[j], hi[j]: columns j and j + 4 of rows 0-3 and of rows 4-7 */
            __m256 lo[4], hi[4];
            minidl_transpose_4x8_avx2(x0, x1, x2, x3, lo);
            minidl_transpose_4x8_avx2(x4, x5, x6, x7, hi);
            /* y_j = column c+j of rows r .. r+7 */
            __m256 y[8];
            for (int j = 0; j < 4; j++) {
                y[j] = _mm256_permute2f128_ps(lo[j], hi[j], 0x20);
                y[j + 4] = _mm256_permute2f128_ps(lo[j], hi[j], 0x31);
            }
            for (int j = 0; j < 8; j++) {
                const __m256 out = bias ? _mm256_add_ps(y[j], _mm256_set1_ps(bias[c + j])) : y[j];
                _mm256_storeu_ps(dst + (c + j) * ds + r, out);
            }
        }
        minidl_transpose_part_f(src, ss, dst, ds, r, r + 8, cols8, cols, bias);
    }
    minidl_transpose_part_f(src, ss, dst, ds, rows8, rows, 0, cols, bias);
}
#endif

/* Six rows, for packing A in matrix products (_gemm.h, MR = 6): dst[c*6 + r] = rows[r][c]
 * for r < 6, c < cols; dst is cols x 6, contiguous. The rows may lie anywhere (the rows of a
 * strided matrix, or the receptive fields of six output positions in an image). */
#define MINIDL_TRANSPOSE6_PLAIN(SUFFIX, T)                                                     \
static MINIDL_INLINE void minidl_transpose6_plain_##SUFFIX(const T* const* rows,              \
                                                          T* restrict dst, ptrdiff_t cols) {  \
    const T* restrict s0 = rows[0], * restrict s1 = rows[1], * restrict s2 = rows[2];          \
    const T* restrict s3 = rows[3], * restrict s4 = rows[4], * restrict s5 = rows[5];          \
    for (ptrdiff_t c = 0; c < cols; c++) {                                                     \
        T* restrict out = dst + 6 * c;                                                         \
        out[0] = s0[c]; out[1] = s1[c]; out[2] = s2[c];                                        \
        out[3] = s3[c]; out[4] = s4[c]; out[5] = s5[c];                                        \
    }                                                                                          \
}

MINIDL_TRANSPOSE6_PLAIN(f, float)
MINIDL_TRANSPOSE6_PLAIN(d, double)

#if defined(MINIDL_X86_DISPATCH)
/* float, AVX2: 6 x 8 blocks through the 8x8 sequence above, rows 6 and 7 being copies of
   rows 4 and 5 that are never stored. Output row j (6 floats) is stored as 8, the 2 extra lanes
   landing where row j+1 is stored next; the last row of a block is stored as 4 + 2. Per 8
   columns: 6 loads, 24 shuffles, 9 stores, against 48 scalar loads and 48 scalar stores. */
MINIDL_TARGET("avx2") static void minidl_transpose6_avx2_f(
        const float* const* rows, float* restrict dst, ptrdiff_t cols) {
    const ptrdiff_t cols8 = cols - cols % 8;
    for (ptrdiff_t c = 0; c < cols8; c += 8) {
        const __m256 x0 = _mm256_loadu_ps(rows[0] + c), x1 = _mm256_loadu_ps(rows[1] + c);
        const __m256 x2 = _mm256_loadu_ps(rows[2] + c), x3 = _mm256_loadu_ps(rows[3] + c);
        const __m256 x4 = _mm256_loadu_ps(rows[4] + c), x5 = _mm256_loadu_ps(rows[5] + c);
        __m256 lo[4], hi[4]; /* as in minidl_transpose_avx2_f; rows 6, 7 are rows 4, 5 again */
        minidl_transpose_4x8_avx2(x0, x1, x2, x3, lo);
        minidl_transpose_4x8_avx2(x4, x5, x4, x5, hi);
        float* d = dst + 6 * c;
        for (int j = 0; j < 4; j++) /* column j, then column j + 4 (the last one below) */
            _mm256_storeu_ps(d + 6 * j, _mm256_permute2f128_ps(lo[j], hi[j], 0x20));
        for (int j = 0; j < 3; j++)
            _mm256_storeu_ps(d + 6 * (j + 4), _mm256_permute2f128_ps(lo[j], hi[j], 0x31));
        const __m256 last = _mm256_permute2f128_ps(lo[3], hi[3], 0x31);
        _mm_storeu_ps(d + 42, _mm256_castps256_ps128(last));
        _mm_storel_pi((__m64*)(d + 46), _mm256_extractf128_ps(last, 1));
    }
    const float* rest[6] = {rows[0] + cols8, rows[1] + cols8, rows[2] + cols8,
                            rows[3] + cols8, rows[4] + cols8, rows[5] + cols8};
    minidl_transpose6_plain_f(rest, dst + 6 * cols8, cols - cols8);
}
#endif

typedef void (*minidl_transpose_f_fn)(const float*, ptrdiff_t, float*, ptrdiff_t, ptrdiff_t,
                                      ptrdiff_t, const float*);
typedef void (*minidl_transpose6_f_fn)(const float* const*, float*, ptrdiff_t);
static minidl_transpose_f_fn minidl_transpose_f = minidl_transpose_plain_f;
static minidl_transpose6_f_fn minidl_transpose6_f = minidl_transpose6_plain_f;
#define minidl_transpose_d minidl_transpose_plain_d
#define minidl_transpose6_d minidl_transpose6_plain_d

/* Choose the float transpose for this CPU (once, at import, by the including module). */
static void minidl_transpose_init(void) {
#if defined(MINIDL_X86_DISPATCH)
    if (minidl_cpu_isa() >= MINIDL_ISA_AVX2) {
        minidl_transpose_f = minidl_transpose_avx2_f;
        minidl_transpose6_f = minidl_transpose6_avx2_f;
    }
#endif
}

#endif

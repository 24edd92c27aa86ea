/* Inner loops of the direct convolution (_conv.pyx). The gradients' loops are plain C, so that
 * `restrict` tells the compiler the arrays do not overlap and it vectorizes them
 * (MINIDL_SIMD_SUM lets it reorder the dot products' additions; SIMD clones as described in
 * _portable.h); the forward's kernel, at the end, keeps its sums in vector registers, compiled
 * for each instruction set and chosen at import like _gemm.h's micro-kernels.
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
   taps stay in registers), for the weight gradient of the kernels other than 3x3:
     minidl_dot_row<KW>:  out[j] += sum_k g[k] * x[k + j] for j < KW
   g is read once per kernel row instead of once per tap; the dot products are formed in
   SIMD-lane partial sums in T, like minidl_dot. */
#define MINIDL_CONV_ROW_MAX 8
#define MINIDL_CONV_ROW(SUFFIX, T, KW)                                                      \
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
MINIDL_DOT_3X3(f, float)
MINIDL_DOT_3X3(d, double)
MINIDL_CONV_ROWS_2_TO_8(f, float)
MINIDL_CONV_ROWS_2_TO_8(d, double)

/* out[oh*OW + ow] = y[oh*Wp + ow] + b for oh < OH, ow < OW: an output plane cropped out of the
   wide grid (b is 0 without a bias, as in the kernels' other sums) */
#define MINIDL_CONV_CROP(SUFFIX, T)                                                         \
    MINIDL_CLONES static void minidl_conv_crop_##SUFFIX(T* restrict out,                    \
                                                        const T* restrict y, ptrdiff_t OH,  \
                                                        ptrdiff_t OW, ptrdiff_t Wp, T b) {  \
        for (ptrdiff_t oh = 0; oh < OH; oh++)                                               \
            for (ptrdiff_t ow = 0; ow < OW; ow++) out[oh * OW + ow] = y[oh * Wp + ow] + b;  \
    }
MINIDL_CONV_CROP(f, float)
MINIDL_CONV_CROP(d, double)

/* ---- the direct forward, four output channels at a time ------------------------------------ */
/* y[r*L + m] = sum_k w[r*K + k] * x[off[k] + m] for r < 4, m < L: four output planes of a
 * stride-1 convolution on the wide grid (see _conv.pyx), with off[k] = (c*Hp + i)*Wp + j the
 * offset of tap k = (c, i, j). Each block of 2 SIMD vectors of positions keeps its 4 x 2 sums
 * in registers through all K taps: per tap, 2 vector loads of x, 4 weights broadcast, 8 fused
 * multiply-adds. (The axpy kernels above instead load and store an output plane once per
 * input channel, and read every input vector once per output channel: about a third of the
 * arithmetic rate on 3-channel images.) The last block ends at position L, overlapping the one
 * before (a scalar tail of up to 2 W - 1 positions took 40% of the time on 32x32 images); a
 * plane narrower than a block goes one position at a time. Every sum runs over k in
 * increasing order in either loop, so an output's bits do not depend on which computed it.
 * x[off[k] + m] never leaves the padded image for m < L. */
#if defined(MINIDL_VECTOR_EXT)
#define MINIDL_CONV_DIRECT4(NAME, T, ATTRIBUTES, VBYTES)                                    \
ATTRIBUTES static void NAME(const T* restrict x, const ptrdiff_t* restrict off, ptrdiff_t K, \
                            const T* restrict w, T* restrict y, ptrdiff_t L) {              \
    typedef T V __attribute__((vector_size(VBYTES), aligned(sizeof(T))));                   \
    enum { W = VBYTES / sizeof(T) };                                                        \
    const T *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;                         \
    ptrdiff_t m = 0;                                                                        \
    for (int last = 0; !last && 2 * W <= L; m += 2 * W) {                                   \
        if (m + 2 * W >= L) { /* the last block ends at L (it may overlap the one before,   \
                                 whose values it computes again, with the same bits) */    \
            m = L - 2 * W;                                                                  \
            last = 1;                                                                       \
        }                                                                                   \
        V c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0};                                       \
        V c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};                                       \
        for (ptrdiff_t k = 0; k < K; k++) {                                                 \
            const T* xk = x + off[k] + m;                                                   \
            const V b0 = *(const V*)xk, b1 = *(const V*)(xk + W);                           \
            c00 += w0[k] * b0; c01 += w0[k] * b1; c10 += w1[k] * b0; c11 += w1[k] * b1;     \
            c20 += w2[k] * b0; c21 += w2[k] * b1; c30 += w3[k] * b0; c31 += w3[k] * b1;     \
        }                                                                                   \
        *(V*)(y + m) = c00; *(V*)(y + m + W) = c01;                                         \
        *(V*)(y + L + m) = c10; *(V*)(y + L + m + W) = c11;                                 \
        *(V*)(y + 2 * L + m) = c20; *(V*)(y + 2 * L + m + W) = c21;                         \
        *(V*)(y + 3 * L + m) = c30; *(V*)(y + 3 * L + m + W) = c31;                         \
    }                                                                                       \
    MINIDL_CONV_DIRECT4_TAIL(T) /* (a plane narrower than a block: all of it) */            \
}
#else
#define MINIDL_CONV_DIRECT4(NAME, T)                                                        \
static void NAME(const T* restrict x, const ptrdiff_t* restrict off, ptrdiff_t K,           \
                 const T* restrict w, T* restrict y, ptrdiff_t L) {                         \
    ptrdiff_t m = 0;                                                                        \
    MINIDL_CONV_DIRECT4_TAIL(T)                                                             \
}
#endif
/* positions m .. L - 1, one at a time */
#define MINIDL_CONV_DIRECT4_TAIL(T)                                                         \
    for (; m < L; m++)                                                                      \
        for (int r = 0; r < 4; r++) {                                                       \
            T s = 0;                                                                        \
            for (ptrdiff_t k = 0; k < K; k++) s += w[r * K + k] * x[off[k] + m];            \
            y[r * L + m] = s;                                                               \
        }

#if defined(MINIDL_X86_DISPATCH)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_f_avx512, float, MINIDL_TARGET("avx512f"), 64)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_d_avx512, double, MINIDL_TARGET("avx512f"), 64)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_f_avx2, float, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_d_avx2, double, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_f_base, float, MINIDL_TARGET("sse2"), 16)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_d_base, double, MINIDL_TARGET("sse2"), 16)
#elif defined(MINIDL_VECTOR_EXT)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_f_base, float, , 16)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_d_base, double, , 16)
#else
MINIDL_CONV_DIRECT4(minidl_conv_direct4_f_base, float)
MINIDL_CONV_DIRECT4(minidl_conv_direct4_d_base, double)
#endif

typedef void (*minidl_conv_direct4_f_fn)(const float*, const ptrdiff_t*, ptrdiff_t,
                                         const float*, float*, ptrdiff_t);
typedef void (*minidl_conv_direct4_d_fn)(const double*, const ptrdiff_t*, ptrdiff_t,
                                         const double*, double*, ptrdiff_t);
static minidl_conv_direct4_f_fn minidl_conv_direct4_f = minidl_conv_direct4_f_base;
static minidl_conv_direct4_d_fn minidl_conv_direct4_d = minidl_conv_direct4_d_base;

/* Choose the direct forward's instruction set (once, at import); returns its name. */
static const char* minidl_conv_init(void) {
#if defined(MINIDL_X86_DISPATCH)
    const int isa = minidl_cpu_isa();
    if (isa == MINIDL_ISA_AVX512F) {
        minidl_conv_direct4_f = minidl_conv_direct4_f_avx512;
        minidl_conv_direct4_d = minidl_conv_direct4_d_avx512;
    } else if (isa == MINIDL_ISA_AVX2) {
        minidl_conv_direct4_f = minidl_conv_direct4_f_avx2;
        minidl_conv_direct4_d = minidl_conv_direct4_d_avx2;
    }
    return minidl_isa_name(isa);
#else
    return minidl_isa_name(MINIDL_ISA_BASELINE);
#endif
}

#endif

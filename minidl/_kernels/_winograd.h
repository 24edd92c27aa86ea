/* Inner loops of the Winograd convolution F(2x2, 3x3) (_winograd.pyx), in C:
 *
 * 1. the tile transforms, which the compiler vectorizes over the channel axis: every function
 *    works on C (or K) channels at once, reading and writing contiguous channel vectors
 *    (`restrict`: the arrays never overlap); SIMD clones as described in _portable.h;
 * 2. the small matrix products between them (end of the file).
 *
 * Lavin & Gray, 2016, "Fast Algorithms for Convolutional Neural Networks", section 4, with
 *
 *     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
 *           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
 *           [0 -1  1  0]         [1/2 -1/2  1/2]
 *           [0  1  0 -1]         [ 0    0    1 ]
 *
 * A 4x4 tile is stored as 16 channel vectors; element (a, b) of a transformed tile ("xi" =
 * 4*a + b) goes to its own plane, `plane` elements after element (a, b-1) resp. (a-1, b).
 * Tile element (i, j) of an image tile is read at `src + i*row + j*C`.
 */
#ifndef MINIDL_WINOGRAD_H
#define MINIDL_WINOGRAD_H

#include "_portable.h"

/* one row (or column) of B^T d: (d0 - d2, d1 + d2, d2 - d1, d1 - d3) */
#define MINIDL_WINO_BT(d0, d1, d2, d3, o0, o1, o2, o3)                                        \
    o0 = (d0) - (d2); o1 = (d1) + (d2); o2 = (d2) - (d1); o3 = (d1) - (d3);
/* one row (or column) of A^T m: (m0 + m1 + m2, m1 - m2 - m3) */
#define MINIDL_WINO_AT(m0, m1, m2, m3, o0, o1)                                                \
    o0 = (m0) + (m1) + (m2); o1 = (m1) - (m2) - (m3);
/* one row (or column) of A g: (g0, g0 + g1, g0 - g1, -g1) */
#define MINIDL_WINO_A(g0, g1, o0, o1, o2, o3)                                                 \
    o0 = (g0); o1 = (g0) + (g1); o2 = (g0) - (g1); o3 = -(g1);
/* one row (or column) of B e: (e0, e1 - e2 + e3, e1 + e2 - e0, -e3) */
#define MINIDL_WINO_B(e0, e1, e2, e3, o0, o1, o2, o3)                                         \
    o0 = (e0); o1 = (e1) - (e2) + (e3); o2 = (e1) + (e2) - (e0); o3 = -(e3);

/* The weight transforms, in float64 whatever the weight's dtype (as the NumPy reference, which
   does them as one product with G kron G; here G is applied to rows, then to columns, which
   rounds in another order: the results agree to float64 rounding):

     u = G g G^T        (4x4, from a 3x3 filter g; u[4a + b] = u[a][b])
     g' = G^T u' G      (3x3, from a 4x4 transformed gradient u') */
/* G and G^T on one column or row of a 3x3 filter (of a 4x4 transformed gradient), applied to
   16 filters at a time by MINIDL_WINO_FILTERS16 (below, with the 5x5 ones). */
static MINIDL_INLINE void minidl_wino_g(const double* s, ptrdiff_t step, double* o,
                                        ptrdiff_t ostep) { /* o = G s, s a 3-vector */
    o[0] = s[0];
    o[ostep] = 0.5 * (s[0] + s[step] + s[2 * step]);
    o[2 * ostep] = 0.5 * (s[0] - s[step] + s[2 * step]);
    o[3 * ostep] = s[2 * step];
}

static MINIDL_INLINE void minidl_wino_gt(const double* v, ptrdiff_t step, double* o,
                                         ptrdiff_t ostep) { /* o = G^T v, v a 4-vector */
    o[0] = v[0] + 0.5 * v[step] + 0.5 * v[2 * step];
    o[ostep] = 0.5 * v[step] - 0.5 * v[2 * step];
    o[2 * ostep] = 0.5 * v[step] + 0.5 * v[2 * step] + v[3 * step];
}

/* MINIDL_SIMD (`omp simd`): the channel loops have no loop-carried dependence; without it GCC
   gives up on them, as it cannot prove that the 16 planes (a run-time stride apart) do not
   overlap. */

#define MINIDL_WINO_KERNELS(SUFFIX, T)                                                        \
/* v = B^T d B for a 4x4 input tile d (rows `row` apart, columns C apart), C channels */      \
MINIDL_CLONES static void minidl_wino_input_tile_##SUFFIX(                                   \
        const T* restrict d, ptrdiff_t row, T* restrict v, ptrdiff_t plane, ptrdiff_t C) {   \
    const T* restrict d0 = d;                                                                \
    const T* restrict d1 = d + row;                                                          \
    const T* restrict d2 = d + 2 * row;                                                      \
    const T* restrict d3 = d + 3 * row;                                                      \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                      \
        T a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, e0, e1, e2, e3; /* B^T d, by column */\
        MINIDL_WINO_BT(d0[c], d1[c], d2[c], d3[c], a0, a1, a2, a3)                           \
        MINIDL_WINO_BT(d0[C + c], d1[C + c], d2[C + c], d3[C + c], b0, b1, b2, b3)           \
        MINIDL_WINO_BT(d0[2 * C + c], d1[2 * C + c], d2[2 * C + c], d3[2 * C + c],           \
                       c0, c1, c2, c3)                                                       \
        MINIDL_WINO_BT(d0[3 * C + c], d1[3 * C + c], d2[3 * C + c], d3[3 * C + c],           \
                       e0, e1, e2, e3)                                                       \
        T* restrict o = v + c;                                                               \
        MINIDL_WINO_BT(a0, b0, c0, e0, o[0], o[plane], o[2 * plane], o[3 * plane])           \
        MINIDL_WINO_BT(a1, b1, c1, e1, o[4 * plane], o[5 * plane], o[6 * plane],             \
                       o[7 * plane])                                                         \
        MINIDL_WINO_BT(a2, b2, c2, e2, o[8 * plane], o[9 * plane], o[10 * plane],            \
                       o[11 * plane])                                                        \
        MINIDL_WINO_BT(a3, b3, c3, e3, o[12 * plane], o[13 * plane], o[14 * plane],          \
                       o[15 * plane])                                                        \
    }                                                                                        \
}                                                                                            \
/* the 2x2 output tile A^T m A of 16 transformed planes m, K channels: row 0 of the tile to  \
   y0[0..K), y0[K..2K), row 1 to y1 */                                                       \
MINIDL_CLONES static void minidl_wino_output_tile_##SUFFIX(                                  \
        const T* restrict m, ptrdiff_t plane, T* restrict y0, T* restrict y1, ptrdiff_t K) {  \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t k = 0; k < K; k++) {                                                      \
        const T* restrict q = m + k;                                                         \
        T s00, s10, s01, s11, s02, s12, s03, s13; /* A^T m, by column */                     \
        MINIDL_WINO_AT(q[0], q[4 * plane], q[8 * plane], q[12 * plane], s00, s10)            \
        MINIDL_WINO_AT(q[plane], q[5 * plane], q[9 * plane], q[13 * plane], s01, s11)        \
        MINIDL_WINO_AT(q[2 * plane], q[6 * plane], q[10 * plane], q[14 * plane], s02, s12)   \
        MINIDL_WINO_AT(q[3 * plane], q[7 * plane], q[11 * plane], q[15 * plane], s03, s13)   \
        MINIDL_WINO_AT(s00, s01, s02, s03, y0[k], y0[K + k])                                 \
        MINIDL_WINO_AT(s10, s11, s12, s13, y1[k], y1[K + k])                                 \
    }                                                                                        \
}                                                                                            \
/* z = A g A^T for a 2x2 output-gradient tile g (rows `row` apart, columns K apart) */        \
MINIDL_CLONES static void minidl_wino_grad_tile_##SUFFIX(                                    \
        const T* restrict g, ptrdiff_t row, T* restrict z, ptrdiff_t plane, ptrdiff_t K) {   \
    const T* restrict g0 = g;                                                                \
    const T* restrict g1 = g + row;                                                          \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t k = 0; k < K; k++) {                                                      \
        T a0, a1, a2, a3, b0, b1, b2, b3; /* A g, by column */                               \
        MINIDL_WINO_A(g0[k], g1[k], a0, a1, a2, a3)                                          \
        MINIDL_WINO_A(g0[K + k], g1[K + k], b0, b1, b2, b3)                                  \
        T* restrict o = z + k;                                                               \
        MINIDL_WINO_A(a0, b0, o[0], o[plane], o[2 * plane], o[3 * plane])                    \
        MINIDL_WINO_A(a1, b1, o[4 * plane], o[5 * plane], o[6 * plane], o[7 * plane])        \
        MINIDL_WINO_A(a2, b2, o[8 * plane], o[9 * plane], o[10 * plane], o[11 * plane])      \
        MINIDL_WINO_A(a3, b3, o[12 * plane], o[13 * plane], o[14 * plane], o[15 * plane])    \
    }                                                                                        \
}                                                                                            \
/* d += B e B^T: the 4x4 input-gradient tile of 16 transformed planes e, added into an image  \
   tile (rows `row` apart, columns C apart), C channels */                                   \
MINIDL_CLONES static void minidl_wino_input_grad_tile_##SUFFIX(                              \
        const T* restrict e, ptrdiff_t plane, T* restrict d, ptrdiff_t row, ptrdiff_t C) {   \
    T* restrict d0 = d;                                                                      \
    T* restrict d1 = d + row;                                                                \
    T* restrict d2 = d + 2 * row;                                                            \
    T* restrict d3 = d + 3 * row;                                                            \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                      \
        const T* restrict q = e + c;                                                         \
        T a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, f0, f1, f2, f3; /* B e, by column */\
        MINIDL_WINO_B(q[0], q[4 * plane], q[8 * plane], q[12 * plane], a0, a1, a2, a3)       \
        MINIDL_WINO_B(q[plane], q[5 * plane], q[9 * plane], q[13 * plane], b0, b1, b2, b3)   \
        MINIDL_WINO_B(q[2 * plane], q[6 * plane], q[10 * plane], q[14 * plane],              \
                      c0, c1, c2, c3)                                                        \
        MINIDL_WINO_B(q[3 * plane], q[7 * plane], q[11 * plane], q[15 * plane],              \
                      f0, f1, f2, f3)                                                        \
        T r0, r1, r2, r3;                                                                    \
        MINIDL_WINO_B(a0, b0, c0, f0, r0, r1, r2, r3)                                        \
        d0[c] += r0; d0[C + c] += r1; d0[2 * C + c] += r2; d0[3 * C + c] += r3;              \
        MINIDL_WINO_B(a1, b1, c1, f1, r0, r1, r2, r3)                                        \
        d1[c] += r0; d1[C + c] += r1; d1[2 * C + c] += r2; d1[3 * C + c] += r3;              \
        MINIDL_WINO_B(a2, b2, c2, f2, r0, r1, r2, r3)                                        \
        d2[c] += r0; d2[C + c] += r1; d2[2 * C + c] += r2; d2[3 * C + c] += r3;              \
        MINIDL_WINO_B(a3, b3, c3, f3, r0, r1, r2, r3)                                        \
        d3[c] += r0; d3[C + c] += r1; d3[2 * C + c] += r2; d3[3 * C + c] += r3;              \
    }                                                                                        \
}

MINIDL_WINO_KERNELS(f, float)
MINIDL_WINO_KERNELS(d, double)

/* ---- F(2x2, 5x5): 6x6 tiles, 36 planes ------------------------------------------------------
 * The same three steps for a 5x5 kernel (Lavin & Gray 2016, section 4, with the points
 * 0, 1, -1, 2, -2 and infinity; minidl/reference/winograd.py, B_T5, G5, A_T5):
 *
 *     B^T = [4  0 -5  0  1  0]    A^T = [1  1  1  1  1  0]     (G: see the reference; the
 *           [0 -4 -4  1  1  0]          [0  1 -1  2 -2  1]      weight transforms are done in
 *           [0  4 -4 -1  1  0]                                  NumPy, in float64)
 *           [0 -2 -1  2  1  0]
 *           [0  2 -1 -2  1  0]
 *           [0  4  0 -5  0  1]
 *
 * Element (a, b) of a transformed tile ("xi" = 6*a + b) goes to its own plane, as above. */
/* one row (or column) of B^T d (d0 .. d5 -> o0 .. o5) */
#define MINIDL_WINO5_BT6(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5)                     \
    o0 = 4 * (d0) - 5 * (d2) + (d4);                                                         \
    o1 = (d3) + (d4) - 4 * ((d1) + (d2));                                                    \
    o2 = (d4) - (d3) + 4 * ((d1) - (d2));                                                    \
    o3 = (d4) - (d2) + 2 * ((d3) - (d1));                                                    \
    o4 = (d4) - (d2) + 2 * ((d1) - (d3));                                                    \
    o5 = 4 * (d1) - 5 * (d3) + (d5);
/* column j of B^T d, d's element (i, j) at q[i*row + j*C] */
#define MINIDL_WINO5_BT_COLUMN(q, row, j, C, o0, o1, o2, o3, o4, o5)                         \
    MINIDL_WINO5_BT6(q[(j) * (C)], q[row + (j) * (C)], q[2 * (row) + (j) * (C)],             \
                     q[3 * (row) + (j) * (C)], q[4 * (row) + (j) * (C)],                     \
                     q[5 * (row) + (j) * (C)], o0, o1, o2, o3, o4, o5)
/* row a of (B^T d) B from row a of B^T d (t0 .. t5), into planes 6a .. 6a + 5 of o */
#define MINIDL_WINO5_BT_ROW(o, plane, a, t0, t1, t2, t3, t4, t5)                             \
    MINIDL_WINO5_BT6(t0, t1, t2, t3, t4, t5, o[(6 * (a)) * (plane)],                         \
                     o[(6 * (a) + 1) * (plane)], o[(6 * (a) + 2) * (plane)],                 \
                     o[(6 * (a) + 3) * (plane)], o[(6 * (a) + 4) * (plane)],                 \
                     o[(6 * (a) + 5) * (plane)])
/* one row (or column) of A^T m: (m0 + m1 + m2 + m3 + m4, m1 - m2 + 2 (m3 - m4) + m5) */
#define MINIDL_WINO5_AT(m, o0, o1)                                                           \
    o0 = m[0] + m[1] + m[2] + m[3] + m[4]; o1 = m[1] - m[2] + 2 * (m[3] - m[4]) + m[5];
/* one row (or column) of A g: (g0, g0 + g1, g0 - g1, g0 + 2 g1, g0 - 2 g1, g1) */
#define MINIDL_WINO5_A(g0, g1, o0, o1, o2, o3, o4, o5)                                       \
    o0 = (g0); o1 = (g0) + (g1); o2 = (g0) - (g1); o3 = (g0) + 2 * (g1);                     \
    o4 = (g0) - 2 * (g1); o5 = (g1);
/* row i of (A g) A^T from row i of A g (g0, g1), into planes 6i .. 6i + 5 of o */
#define MINIDL_WINO5_A_ROW(o, plane, i, g0, g1)                                              \
    MINIDL_WINO5_A(g0, g1, o[(6 * (i)) * (plane)], o[(6 * (i) + 1) * (plane)],               \
                   o[(6 * (i) + 2) * (plane)], o[(6 * (i) + 3) * (plane)],                   \
                   o[(6 * (i) + 4) * (plane)], o[(6 * (i) + 5) * (plane)])

/* The weight transforms of F(2x2, 5x5), in float64 (as those of F(2x2, 3x3) above):

     u = G g G^T        (6x6, from a 5x5 filter g; u[6a + b] = u[a][b])
     g' = G^T u' G      (5x5, from a 6x6 transformed gradient u')

   with G's rows (1/4, 0, 0, 0, 0), -(1, 1, 1, 1, 1)/6, -(1, -1, 1, -1, 1)/6,
   (1/24, 1/12, 1/6, 1/3, 2/3), (1/24, -1/12, 1/6, -1/3, 2/3), (0, 0, 0, 0, 1): rows 1, 2 and
   3, 4 are sums and differences of the same even and odd parts (multiplied by the rounded
   fractions, as the reference's G5, not divided: divisions made the transform 6x slower). */
static MINIDL_INLINE void minidl_wino5_g(const double* s, ptrdiff_t step, double* o,
                                         ptrdiff_t ostep) { /* o = G s, s a 5-vector */
    const double even = s[0] + s[2 * step] + s[4 * step], odd = s[step] + s[3 * step];
    const double even2 = s[0] * (1.0 / 24) + s[2 * step] * (1.0 / 6) + s[4 * step] * (2.0 / 3);
    const double odd2 = s[step] * (1.0 / 12) + s[3 * step] * (1.0 / 3);
    o[0] = s[0] * (1.0 / 4);
    o[ostep] = -(even + odd) * (1.0 / 6);
    o[2 * ostep] = -(even - odd) * (1.0 / 6);
    o[3 * ostep] = even2 + odd2;
    o[4 * ostep] = even2 - odd2;
    o[5 * ostep] = s[4 * step];
}

static MINIDL_INLINE void minidl_wino5_gt(const double* v, ptrdiff_t step, double* o,
                                          ptrdiff_t ostep) { /* o = G^T v, v a 6-vector */
    const double p12 = v[step] + v[2 * step], m12 = v[2 * step] - v[step];
    const double p34 = v[3 * step] + v[4 * step], m34 = v[3 * step] - v[4 * step];
    o[0] = v[0] * (1.0 / 4) - p12 * (1.0 / 6) + p34 * (1.0 / 24);
    o[ostep] = m12 * (1.0 / 6) + m34 * (1.0 / 12);
    o[2 * ostep] = (p34 - p12) * (1.0 / 6);
    o[3 * ostep] = m12 * (1.0 / 6) + m34 * (1.0 / 3);
    o[4 * ostep] = -p12 * (1.0 / 6) + p34 * (2.0 / 3) + v[5 * step];
}

/* The weight transforms on 16 filters at a time, for an R x R kernel (R = 3 or 5; P = R + 1):
   lane l of g[(R i + j)*16 + l] (tap (i, j)) and u[(P a + b)*16 + l] (u[P a + b] = u[a][b]),
   G (or G^T) applied to the columns, then to the rows, by the one-vector functions GF and GTF
   (minidl_wino_g / minidl_wino5_g and their _gt): the compiler vectorizes the loops over the
   16 filters (one filter at a time, the 5x5 transforms of a 128 -> 256 layer took 2.7 ms and
   the 3x3 ones of a 256 -> 256 layer 1.3 ms). */
#define MINIDL_WINO_FILTERS16(NAME, GF, GTF, R)                                               \
MINIDL_CLONES static void NAME(const double* restrict g, double* restrict u) {               \
    double t[(R + 1) * R * 16]; /* G g: t[(R a + j)*16 + l] */                                \
    for (int j = 0; j < R; j++) {                                                            \
        MINIDL_SIMD                                                                          \
        for (int l = 0; l < 16; l++) GF(g + j * 16 + l, 16 * R, t + j * 16 + l, 16 * R);     \
    }                                                                                        \
    for (int a = 0; a < R + 1; a++) { /* (G g) G^T */                                        \
        MINIDL_SIMD                                                                          \
        for (int l = 0; l < 16; l++)                                                         \
            GF(t + 16 * R * a + l, 16, u + 16 * (R + 1) * a + l, 16);                        \
    }                                                                                        \
}                                                                                            \
MINIDL_CLONES static void NAME##_grad(const double* restrict u, double* restrict g) {       \
    double s[(R + 1) * R * 16]; /* G^T u': s[(P i + b)*16 + l] */                             \
    for (int b = 0; b < R + 1; b++) {                                                        \
        MINIDL_SIMD                                                                          \
        for (int l = 0; l < 16; l++)                                                         \
            GTF(u + b * 16 + l, 16 * (R + 1), s + b * 16 + l, 16 * (R + 1));                 \
    }                                                                                        \
    for (int i = 0; i < R; i++) { /* (G^T u') G */                                           \
        MINIDL_SIMD                                                                          \
        for (int l = 0; l < 16; l++)                                                         \
            GTF(s + 16 * (R + 1) * i + l, 16, g + 16 * R * i + l, 16);                       \
    }                                                                                        \
}

MINIDL_WINO_FILTERS16(minidl_wino_filters16, minidl_wino_g, minidl_wino_gt, 3)
MINIDL_WINO_FILTERS16(minidl_wino5_filters16, minidl_wino5_g, minidl_wino5_gt, 5)

#define MINIDL_WINO5_KERNELS(SUFFIX, T)                                                       \
/* v = B^T d B for a 6x6 input tile d (rows `row` apart, columns C apart), C channels (the 36 \
   values of a channel in named scalars: with arrays, GCC's vectorized loop ran 4x slower) */ \
MINIDL_CLONES static void minidl_wino5_input_tile_##SUFFIX(                                  \
        const T* restrict d, ptrdiff_t row, T* restrict v, ptrdiff_t plane, ptrdiff_t C) {   \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                      \
        const T* restrict q = d + c;                                                         \
        T* restrict o = v + c;                                                               \
        T t00, t01, t02, t03, t04, t05, t10, t11, t12, t13, t14, t15, t20, t21, t22, t23,    \
          t24, t25, t30, t31, t32, t33, t34, t35, t40, t41, t42, t43, t44, t45, t50, t51,    \
          t52, t53, t54, t55; /* tja = (B^T d)[a][j], column j of B^T d */                   \
        MINIDL_WINO5_BT_COLUMN(q, row, 0, C, t00, t01, t02, t03, t04, t05)                   \
        MINIDL_WINO5_BT_COLUMN(q, row, 1, C, t10, t11, t12, t13, t14, t15)                   \
        MINIDL_WINO5_BT_COLUMN(q, row, 2, C, t20, t21, t22, t23, t24, t25)                   \
        MINIDL_WINO5_BT_COLUMN(q, row, 3, C, t30, t31, t32, t33, t34, t35)                   \
        MINIDL_WINO5_BT_COLUMN(q, row, 4, C, t40, t41, t42, t43, t44, t45)                   \
        MINIDL_WINO5_BT_COLUMN(q, row, 5, C, t50, t51, t52, t53, t54, t55)                   \
        MINIDL_WINO5_BT_ROW(o, plane, 0, t00, t10, t20, t30, t40, t50)                        \
        MINIDL_WINO5_BT_ROW(o, plane, 1, t01, t11, t21, t31, t41, t51)                        \
        MINIDL_WINO5_BT_ROW(o, plane, 2, t02, t12, t22, t32, t42, t52)                        \
        MINIDL_WINO5_BT_ROW(o, plane, 3, t03, t13, t23, t33, t43, t53)                        \
        MINIDL_WINO5_BT_ROW(o, plane, 4, t04, t14, t24, t34, t44, t54)                        \
        MINIDL_WINO5_BT_ROW(o, plane, 5, t05, t15, t25, t35, t45, t55)                        \
    }                                                                                        \
}                                                                                            \
/* the 2x2 output tile A^T m A of 36 transformed planes m, K channels: row 0 of the tile to  \
   y0[0..K), y0[K..2K), row 1 to y1 */                                                       \
MINIDL_CLONES static void minidl_wino5_output_tile_##SUFFIX(                                 \
        const T* restrict m, ptrdiff_t plane, T* restrict y0, T* restrict y1, ptrdiff_t K) {  \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t k = 0; k < K; k++) {                                                      \
        T q[6], s0[6], s1[6]; /* A^T m, by column b: s0[b], s1[b] */                         \
        for (int b = 0; b < 6; b++) {                                                        \
            for (int a = 0; a < 6; a++) q[a] = m[(6 * a + b) * plane + k];                   \
            MINIDL_WINO5_AT(q, s0[b], s1[b])                                                 \
        }                                                                                    \
        MINIDL_WINO5_AT(s0, y0[k], y0[K + k])                                                \
        MINIDL_WINO5_AT(s1, y1[k], y1[K + k])                                                \
    }                                                                                        \
}                                                                                            \
/* z = A g A^T for a 2x2 output-gradient tile g (rows `row` apart, columns K apart) */        \
MINIDL_CLONES static void minidl_wino5_grad_tile_##SUFFIX(                                   \
        const T* restrict g, ptrdiff_t row, T* restrict z, ptrdiff_t plane, ptrdiff_t K) {   \
    MINIDL_SIMD                                                                              \
    for (ptrdiff_t k = 0; k < K; k++) {                                                      \
        T* restrict o = z + k;                                                               \
        T a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, b4, b5; /* A g: column 0 (a), 1 (b) */     \
        MINIDL_WINO5_A(g[k], g[row + k], a0, a1, a2, a3, a4, a5)                             \
        MINIDL_WINO5_A(g[K + k], g[row + K + k], b0, b1, b2, b3, b4, b5)                     \
        MINIDL_WINO5_A_ROW(o, plane, 0, a0, b0)                                              \
        MINIDL_WINO5_A_ROW(o, plane, 1, a1, b1)                                              \
        MINIDL_WINO5_A_ROW(o, plane, 2, a2, b2)                                              \
        MINIDL_WINO5_A_ROW(o, plane, 3, a3, b3)                                              \
        MINIDL_WINO5_A_ROW(o, plane, 4, a4, b4)                                              \
        MINIDL_WINO5_A_ROW(o, plane, 5, a5, b5)                                              \
    }                                                                                        \
}

MINIDL_WINO5_KERNELS(f, float)
MINIDL_WINO5_KERNELS(d, double)

/* ------------------------------------------------------------------------------------------
 * The 16 products of a block of tiles, computed in the cache by a small register-blocked
 * kernel (4 rows x 2 SIMD vectors of columns per step; measured 100-115 GFLOP/s per core on
 * AVX-512 and AVX2 for these shapes, where BLAS calls on such small matrices reach 45-75):
 *
 *     C (rows x cols) = A (rows x inner) @ B (inner x cols)        (acc == 0)
 *     C (rows x cols) += A (rows x inner) @ B (inner x cols)       (acc != 0)
 *
 * with A read as a(i, k) = A[i*rs + k*cs] (so A or its transpose), B and C row-major with
 * leading dimensions ldb, ldc. rows must be a multiple of 4 and cols of 16 (callers pad):
 * columns go in steps of 2 vectors, and a last step of one vector (AVX-512 floats: 16
 * columns), so that 16 channels are not padded to 32 (which doubled the products' work of
 * the 16-channel layers of a CIFAR ResNet).
 * With GCC/clang vector extensions (MINIDL_VECTOR_EXT): on x86-64 compiled for AVX-512,
 * AVX2+FMA and SSE2, and minidl_wino_init() picks one at run time; elsewhere (e.g. NEON) one
 * version with 16-byte vectors. Without them (MSVC, MINIDL_PORTABLE_C), the same blocking in
 * plain C, which compilers vectorize as they can.
 */
#if defined(MINIDL_VECTOR_EXT)

#define MINIDL_WINO_GEMM(NAME, T, ATTRIBUTES, VBYTES)                                        \
typedef T NAME##_vec __attribute__((vector_size(VBYTES), aligned(sizeof(T))));               \
ATTRIBUTES static void NAME(                                                                 \
        const T* restrict A, ptrdiff_t rs, ptrdiff_t cs, const T* restrict B, ptrdiff_t ldb, \
        T* restrict C, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t inner, ptrdiff_t cols,       \
        int acc) {                                                                           \
    typedef NAME##_vec V;                                                                    \
    const ptrdiff_t w = VBYTES / sizeof(T);                                                  \
    for (ptrdiff_t i = 0; i < rows; i += 4) {                                                \
        ptrdiff_t j = 0;                                                                     \
        for (; j + 2 * w <= cols; j += 2 * w) {                                              \
            V c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0};                                    \
            V c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};                                    \
            const T* a = A + i * rs;                                                         \
            const T* b = B + j;                                                              \
            for (ptrdiff_t k = 0; k < inner; k++) {                                          \
                const V b0 = *(const V*)(b + k * ldb), b1 = *(const V*)(b + k * ldb + w);    \
                const T* ak = a + k * cs;                                                    \
                const T a0 = ak[0], a1 = ak[rs], a2 = ak[2 * rs], a3 = ak[3 * rs];           \
                c00 += a0 * b0; c01 += a0 * b1; c10 += a1 * b0; c11 += a1 * b1;              \
                c20 += a2 * b0; c21 += a2 * b1; c30 += a3 * b0; c31 += a3 * b1;              \
            }                                                                                \
            T* c = C + i * ldc + j;                                                          \
            if (acc) {                                                                       \
                c00 += *(V*)c; c01 += *(V*)(c + w);                                          \
                c10 += *(V*)(c + ldc); c11 += *(V*)(c + ldc + w);                            \
                c20 += *(V*)(c + 2 * ldc); c21 += *(V*)(c + 2 * ldc + w);                    \
                c30 += *(V*)(c + 3 * ldc); c31 += *(V*)(c + 3 * ldc + w);                    \
            }                                                                                \
            *(V*)c = c00; *(V*)(c + w) = c01;                                                \
            *(V*)(c + ldc) = c10; *(V*)(c + ldc + w) = c11;                                  \
            *(V*)(c + 2 * ldc) = c20; *(V*)(c + 2 * ldc + w) = c21;                          \
            *(V*)(c + 3 * ldc) = c30; *(V*)(c + 3 * ldc + w) = c31;                          \
        }                                                                                    \
        for (; j < cols; j += w) { /* the last w columns when cols is an odd number of w */  \
            V c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};                                        \
            const T* a = A + i * rs;                                                         \
            for (ptrdiff_t k = 0; k < inner; k++) {                                          \
                const V b0 = *(const V*)(B + k * ldb + j);                                   \
                const T* ak = a + k * cs;                                                    \
                c0 += ak[0] * b0; c1 += ak[rs] * b0;                                         \
                c2 += ak[2 * rs] * b0; c3 += ak[3 * rs] * b0;                                \
            }                                                                                \
            T* c = C + i * ldc + j;                                                          \
            if (acc) {                                                                       \
                c0 += *(V*)c; c1 += *(V*)(c + ldc);                                          \
                c2 += *(V*)(c + 2 * ldc); c3 += *(V*)(c + 3 * ldc);                          \
            }                                                                                \
            *(V*)c = c0; *(V*)(c + ldc) = c1;                                                \
            *(V*)(c + 2 * ldc) = c2; *(V*)(c + 3 * ldc) = c3;                                \
        }                                                                                    \
    }                                                                                        \
}

#if defined(MINIDL_X86_DISPATCH)
MINIDL_WINO_GEMM(minidl_wino_gemm_f_avx512, float, MINIDL_TARGET("avx512f"), 64)
MINIDL_WINO_GEMM(minidl_wino_gemm_f_avx2, float, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_WINO_GEMM(minidl_wino_gemm_d_avx512, double, MINIDL_TARGET("avx512f"), 64)
MINIDL_WINO_GEMM(minidl_wino_gemm_d_avx2, double, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_WINO_GEMM(minidl_wino_gemm_f_base, float, MINIDL_TARGET("sse2"), 16)
MINIDL_WINO_GEMM(minidl_wino_gemm_d_base, double, MINIDL_TARGET("sse2"), 16)
#else
MINIDL_WINO_GEMM(minidl_wino_gemm_f_base, float, , 16)
MINIDL_WINO_GEMM(minidl_wino_gemm_d_base, double, , 16)
#endif

#else /* plain C: 4 rows x 8 columns of accumulators per step */

#define MINIDL_WINO_GEMM(NAME, T)                                                            \
static void NAME(                                                                            \
        const T* restrict A, ptrdiff_t rs, ptrdiff_t cs, const T* restrict B, ptrdiff_t ldb, \
        T* restrict C, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t inner, ptrdiff_t cols,       \
        int acc) {                                                                           \
    for (ptrdiff_t i = 0; i < rows; i += 4) {                                                \
        for (ptrdiff_t j = 0; j < cols; j += 8) {                                            \
            T s[4][8] = {{0}};                                                               \
            for (ptrdiff_t k = 0; k < inner; k++) {                                          \
                const T* ak = A + i * rs + k * cs;                                           \
                const T* bk = B + k * ldb + j;                                               \
                for (int r = 0; r < 4; r++) {                                                \
                    const T ar = ak[r * rs];                                                 \
                    for (int q = 0; q < 8; q++) s[r][q] += ar * bk[q];                       \
                }                                                                            \
            }                                                                                \
            for (int r = 0; r < 4; r++) {                                                    \
                T* cr = C + (i + r) * ldc + j;                                               \
                for (int q = 0; q < 8; q++) cr[q] = acc ? s[r][q] + cr[q] : s[r][q];         \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}

MINIDL_WINO_GEMM(minidl_wino_gemm_f_base, float)
MINIDL_WINO_GEMM(minidl_wino_gemm_d_base, double)

#endif

typedef void (*minidl_wino_gemm_f_fn)(const float*, ptrdiff_t, ptrdiff_t, const float*, ptrdiff_t,
                                      float*, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, int);
typedef void (*minidl_wino_gemm_d_fn)(const double*, ptrdiff_t, ptrdiff_t, const double*,
                                      ptrdiff_t, double*, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                                      ptrdiff_t, int);
static minidl_wino_gemm_f_fn minidl_wino_gemm_f = minidl_wino_gemm_f_base;
static minidl_wino_gemm_d_fn minidl_wino_gemm_d = minidl_wino_gemm_d_base;

/* Choose the products' instruction set (once, at import); returns its name. */
static const char* minidl_wino_init(void) {
#if defined(MINIDL_X86_DISPATCH)
    const int isa = minidl_cpu_isa();
    if (isa == MINIDL_ISA_AVX512F) {
        minidl_wino_gemm_f = minidl_wino_gemm_f_avx512;
        minidl_wino_gemm_d = minidl_wino_gemm_d_avx512;
    } else if (isa == MINIDL_ISA_AVX2) {
        minidl_wino_gemm_f = minidl_wino_gemm_f_avx2;
        minidl_wino_gemm_d = minidl_wino_gemm_d_avx2;
    }
    return minidl_isa_name(isa);
#else
    return minidl_isa_name(MINIDL_ISA_BASELINE);
#endif
}

#endif

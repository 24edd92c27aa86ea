/* Matrix products C = A B (+ C) on one thread, for one tile of C (_gemm.pyx runs the tiles of
 * a product in parallel on minidl's OpenMP team).
 *
 * The blocking of GotoBLAS and BLIS (Goto & van de Geijn, "Anatomy of High-Performance Matrix
 * Multiplication", ACM TOMS 34(3), 2008, section 4; Van Zee & van de Geijn, "BLIS: A Framework
 * for Rapidly Instantiating BLAS Functionality", ACM TOMS 41(3), 2015, figure 2). For a tile of
 * `rows x cols` elements of C (cols <= 512, any number of rows):
 *
 *     for each term t (a sum of products, sum_t A_t B_t; usually one term):
 *       for pc = 0, KC, 2 KC, ... < inner:                        inner dimension in KC steps
 *         Bp = pack B_t[pc : pc + KC, cols]   in strips of NR columns (the tile's whole width)
 *         for ic = 0, MC, 2 MC, ... < rows:
 *           Ap = pack A_t[ic : ic + MC, pc : pc + KC] in strips of MR rows  (stays in L2)
 *           for each NR strip of Bp:                                 (KC x NR: stays in L1)
 *             for each MR strip of Ap:
 *               C[MR x NR block] (+)= strip of Ap @ strip of Bp      the micro-kernel
 *
 * Packing copies each strip into the order the micro-kernel reads it (k-major: the MR values
 * of A and the NR values of B for one k are adjacent), zero-padded to whole strips, so the
 * micro-kernel only ever reads contiguous memory, whatever the strides of A and B (a transposed
 * operand is a matter of strides, never of a copy before the call). The last strip of A, when
 * `rows` is not a multiple of MR, goes to a micro-kernel of that many rows (there is one for each
 * R = 1..MR); a block narrower than NR at the right edge of C is computed into a small MR x NR
 * buffer and the valid part copied out. A gathered A (im2col's matrix, see "gathered operands")
 * is the exception: it is never packed, its micro-kernels read each strip's six rows in place.
 *
 * The micro-kernel keeps an MR x NR = 6 x (2 SIMD vectors) block of C in 12 vector registers
 * and adds one rank-1 update per k: 2 vector loads of B, 6 broadcasts of A, 12 fused
 * multiply-adds. Measured 101 GFLOP/s on one core of an AMD EPYC (Zen 3, AVX2; the peak is
 * about 102) on packed data in cache; on an AVX-512 Zen 4 core 112 (peak about 113). It
 * prefetches its block of C and, 16 steps of k ahead, its strip of A: +5-10% on products larger
 * than the caches (1024^3 at 1 thread: 89 -> 95-100 GFLOP/s). With GCC/clang vector extensions
 * it is compiled, on x86-64, for AVX-512 (NR = 32 floats / 16 doubles), AVX2+FMA (16 / 8) and
 * SSE2 (8 / 4), and minidl_gemm_init() picks one at run time; elsewhere (e.g. NEON) one version
 * with 16-byte vectors; without vector extensions (MSVC, MINIDL_PORTABLE_C) the same blocking
 * in plain C with NR = 8.
 *
 * Every element of C is the sum over k in increasing order, in KC-long partial sums (one per
 * SIMD lane, in registers) added to C one after the other. KC is fixed, so the result does not
 * depend on the tiling or the number of threads: the same inputs give the same bits.
 *
 * Products of at most DOT_ROWS rows (a Dense layer at batch 1-8) take another path,
 * minidl_gemm_dot_tile (described where it is defined): packing B would cost more than such a
 * product, which reads each element of B once for few rows, so B is read in place as dot
 * products, in an order fixed by k alone. Which path a product takes depends on M only.
 *
 * Strides (in elements): A_t(i, k) = A[t*sa + i*rsa + k*csa], B_t(k, j) = B[t*sb + k*rsb +
 * j*csb], C(i, j) = C[i*ldc + j].
 */
#ifndef MINIDL_GEMM_H
#define MINIDL_GEMM_H

#include "_portable.h"
#include "_transpose.h"

#define MINIDL_GEMM_MR 6   /* rows of C per micro-kernel call */
#if MINIDL_GEMM_MR != 6 /* packing A and the micro-kernels below are written for 6 rows */
#error "MINIDL_GEMM_MR must be 6"
#endif
#define MINIDL_GEMM_KC 256 /* inner dimension per packed block (fixed: see above) */
#define MINIDL_GEMM_MC 144 /* rows of A per packed block (a multiple of MR) */
#define MINIDL_GEMM_PAD 16 /* elements between two packed strips of B */
#define MINIDL_GEMM_DOT_ROWS 8 /* products of up to this many rows: dot products (below) */
#define MINIDL_GEMM_NR_MAX 64  /* no micro-kernel has more columns (AVX-512: 32 floats) */

/* ---- packing ------------------------------------------------------------------------------ */
#define MINIDL_GEMM_PACK(S, T)                                                               \
/* Ap[s*kc*MR + k*MR + r] = A(s*MR + r, k) for rows in strips of MR (zeros past `rows`) */   \
static void minidl_gemm_pack_a_##S(const T* restrict A, ptrdiff_t rsa, ptrdiff_t csa,        \
                                   ptrdiff_t rows, ptrdiff_t kc, T* restrict ap) {           \
    if (rsa == 1 && csa != 1) { /* A transposed: read each column's `rows` values at once */ \
        const ptrdiff_t whole = rows / MINIDL_GEMM_MR * MINIDL_GEMM_MR;                      \
        for (ptrdiff_t k = 0; k < kc; k++) {                                                 \
            const T* restrict a = A + k * csa;                                               \
            T* restrict out = ap + k * MINIDL_GEMM_MR;                                       \
            for (ptrdiff_t i0 = 0; i0 < whole; i0 += MINIDL_GEMM_MR) {                       \
                T* restrict o = out + i0 * kc;                                               \
                for (ptrdiff_t r = 0; r < MINIDL_GEMM_MR; r++) o[r] = a[i0 + r];             \
            }                                                                                \
            if (whole < rows) {                                                              \
                T* restrict o = out + whole * kc;                                            \
                for (ptrdiff_t r = 0; r < MINIDL_GEMM_MR; r++)                               \
                    o[r] = whole + r < rows ? a[whole + r] : 0;                              \
            }                                                                                \
        }                                                                                    \
        return;                                                                              \
    }                                                                                        \
    for (ptrdiff_t i0 = 0; i0 < rows; i0 += MINIDL_GEMM_MR, ap += kc * MINIDL_GEMM_MR) {     \
        const ptrdiff_t valid = rows - i0 < MINIDL_GEMM_MR ? rows - i0 : MINIDL_GEMM_MR;     \
        const T* restrict a = A + i0 * rsa;                                                  \
        if (valid == MINIDL_GEMM_MR && csa == 1) { /* a whole strip of contiguous rows */    \
            const T* rows6[6] = {a, a + rsa, a + 2 * rsa, a + 3 * rsa, a + 4 * rsa, a + 5 * rsa};\
            minidl_transpose6_##S(rows6, ap, kc); /* (_transpose.h; MR is 6) */              \
            continue;                                                                        \
        }                                                                                    \
        if (valid == MINIDL_GEMM_MR) { /* a whole strip: one k at a time, 6 values */        \
            for (ptrdiff_t k = 0; k < kc; k++) {                                             \
                const T* restrict ak = a + k * csa;                                          \
                T* restrict out = ap + k * MINIDL_GEMM_MR;                                   \
                out[0] = ak[0]; out[1] = ak[rsa]; out[2] = ak[2 * rsa];                      \
                out[3] = ak[3 * rsa]; out[4] = ak[4 * rsa]; out[5] = ak[5 * rsa];            \
            }                                                                                \
            continue;                                                                        \
        }                                                                                    \
        for (ptrdiff_t k = 0; k < kc; k++) {                                                 \
            for (ptrdiff_t r = 0; r < MINIDL_GEMM_MR; r++)                                   \
                ap[k * MINIDL_GEMM_MR + r] = r < valid ? a[r * rsa + k * csa] : 0;           \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
/* Bp[s*(kc*nr + PAD) + k*nr + q] = B(k, s*nr + q) for columns in strips of nr (zeros past   \
   `cols`); the PAD elements between strips keep the strips' rows out of one cache set */    \
static void minidl_gemm_pack_b_##S(const T* restrict B, ptrdiff_t rsb, ptrdiff_t csb,        \
                                   ptrdiff_t kc, ptrdiff_t cols, ptrdiff_t nr,               \
                                   T* restrict bp) {                                         \
    const ptrdiff_t strip = kc * nr + MINIDL_GEMM_PAD;                                       \
    if (rsb == 1 && csb != 1) { /* B transposed (x @ W.T): a strip is the transpose of nr    \
                                   rows of W, in 8x8 blocks in registers (_transpose.h) */   \
        for (ptrdiff_t j0 = 0; j0 < cols; j0 += nr, bp += strip) {                           \
            const ptrdiff_t valid = cols - j0 < nr ? cols - j0 : nr;                         \
            minidl_transpose_##S(B + j0 * csb, csb, bp, nr, valid, kc, NULL);                \
            for (ptrdiff_t k = 0; valid < nr && k < kc; k++)                                 \
                for (ptrdiff_t q = valid; q < nr; q++) bp[k * nr + q] = 0;                   \
        }                                                                                    \
        return;                                                                              \
    }                                                                                        \
    if (csb == 1) { /* rows of B are contiguous: read them one after the other */            \
        for (ptrdiff_t k = 0; k < kc; k++) {                                                 \
            const T* restrict b = B + k * rsb;                                               \
            for (ptrdiff_t j0 = 0; j0 < cols; j0 += nr) {                                    \
                const ptrdiff_t valid = cols - j0 < nr ? cols - j0 : nr;                     \
                T* restrict out = bp + (j0 / nr) * strip + k * nr;                           \
                for (ptrdiff_t q = 0; q < valid; q++) out[q] = b[j0 + q];                    \
                for (ptrdiff_t q = valid; q < nr; q++) out[q] = 0;                           \
            }                                                                                \
        }                                                                                    \
        return;                                                                              \
    }                                                                                        \
    for (ptrdiff_t j0 = 0; j0 < cols; j0 += nr, bp += strip) { /* read down each column */   \
        const ptrdiff_t valid = cols - j0 < nr ? cols - j0 : nr;                             \
        ptrdiff_t q = 0;                                                                     \
        for (; q + 4 <= valid; q += 4) { /* four columns at once: four adjacent stores */    \
            const T* restrict b0 = B + (j0 + q) * csb;                                       \
            const T* restrict b1 = b0 + csb;                                                 \
            const T* restrict b2 = b1 + csb;                                                 \
            const T* restrict b3 = b2 + csb;                                                 \
            for (ptrdiff_t k = 0; k < kc; k++) {                                             \
                T* restrict out = bp + k * nr + q;                                           \
                out[0] = b0[k * rsb]; out[1] = b1[k * rsb];                                  \
                out[2] = b2[k * rsb]; out[3] = b3[k * rsb];                                  \
            }                                                                                \
        }                                                                                    \
        for (; q < nr; q++) {                                                                \
            const T* restrict b = B + (j0 + q) * csb;                                        \
            if (q >= valid) {                                                                \
                for (ptrdiff_t k = 0; k < kc; k++) bp[k * nr + q] = 0;                       \
            } else {                                                                         \
                for (ptrdiff_t k = 0; k < kc; k++) bp[k * nr + q] = b[k * rsb];              \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}

MINIDL_GEMM_PACK(f, float)
MINIDL_GEMM_PACK(d, double)

/* ---- gathered operands: the im2col matrix without the matrix ------------------------------ */
/* An operand whose element (i, k) is base[rows[i] + cols[k]]: with base a zero-padded NHWC
 * image, rows[i] the start of output position i's receptive field and cols[k] the offset of
 * tap k = (i, j, c) in it, this is im2col's matrix (minidl/functional/conv_im2col.py), read
 * where it lies instead of copied out first. A gathered B is packed into exactly the values
 * its matrix would be packed into. A gathered A is not packed at all: the micro-kernels of
 * MINIDL_GEMM_MICRO_ROWS broadcast its elements straight from the image, six rows (six
 * receptive fields) at a time, in the order and with the arithmetic of the packed kernels. A
 * product gives the same bits either way. (Packing A cost 12-30% of the forward of an im2col
 * convolution with 64 output channels, where each packed element serves only 64 columns.) */
typedef struct { const float* base; const ptrdiff_t* rows; const ptrdiff_t* cols; }
    minidl_gemm_gather_f;
typedef struct { const double* base; const ptrdiff_t* rows; const ptrdiff_t* cols; }
    minidl_gemm_gather_d;

#define MINIDL_GEMM_PACK_GATHER(S, T)                                                        \
/* as minidl_gemm_pack_b, for B(k, j) = base[row[k] + col[j]]: each strip is cut into runs of \
   columns that lie side by side (a tap's channels, a kernel row's taps), each run copied     \
   row after row */                                                                          \
static void minidl_gemm_pack_b_gather_##S(const T* base, const ptrdiff_t* row,              \
                                          const ptrdiff_t* col, ptrdiff_t kc,                \
                                          ptrdiff_t cols, ptrdiff_t nr, T* restrict bp) {    \
    const ptrdiff_t strip = kc * nr + MINIDL_GEMM_PAD;                                       \
    ptrdiff_t ends[MINIDL_GEMM_NR_MAX]; /* run r: columns ends[r-1] (or 0) .. ends[r] - 1 */ \
    for (ptrdiff_t j0 = 0; j0 < cols; j0 += nr, bp += strip) {                               \
        const ptrdiff_t valid = cols - j0 < nr ? cols - j0 : nr;                             \
        const ptrdiff_t* c = col + j0;                                                       \
        ptrdiff_t runs = 0;                                                                  \
        for (ptrdiff_t q = 1; q <= valid; q++)                                               \
            if (q == valid || c[q] != c[q - 1] + 1) ends[runs++] = q;                        \
        for (ptrdiff_t k = 0; k < kc; k++) {                                                 \
            const T* restrict b = base + row[k];                                             \
            T* restrict out = bp + k * nr;                                                   \
            for (ptrdiff_t r = 0, q0 = 0; r < runs; q0 = ends[r++]) {                        \
                const T* restrict bq = b + c[q0] - q0;                                       \
                for (ptrdiff_t q = q0; q < ends[r]; q++) out[q] = bq[q];                     \
            }                                                                                \
            for (ptrdiff_t q = valid; q < nr; q++) out[q] = 0;                               \
        }                                                                                    \
    }                                                                                        \
}

MINIDL_GEMM_PACK_GATHER(f, float)
MINIDL_GEMM_PACK_GATHER(d, double)

/* ---- micro-kernels: C[R x NR] = (acc ? C : 0) + ap (kc x MR, k-major) @ B (kc x NR) ------- */
/* One kernel per row count R = 1..MR (the last strip of A, or a product of fewer rows, costs
   R rows of work, not MR); each row's arithmetic is the same in all of them, so a row of C has
   the same bits whatever R computed it. */
#define MINIDL_GEMM_MICRO_ARGS(T)                                                            \
    ptrdiff_t kc, const T* restrict ap, const T* restrict bp, T* restrict c, ptrdiff_t ldc,  \
    int acc
typedef void (*minidl_gemm_micro_float_fn)(MINIDL_GEMM_MICRO_ARGS(float));
typedef void (*minidl_gemm_micro_double_fn)(MINIDL_GEMM_MICRO_ARGS(double));
/* the kernels that read A unpacked, A(r, k) = arow[r][col[k]] (MINIDL_GEMM_MICRO_ROWS) */
#define MINIDL_GEMM_MICRO_ROWS_ARGS(T)                                                       \
    ptrdiff_t kc, const T* const* arow, const ptrdiff_t* restrict col, const T* restrict bp, \
    T* restrict c, ptrdiff_t ldc, int acc
typedef void (*minidl_gemm_micro_rows_float_fn)(MINIDL_GEMM_MICRO_ROWS_ARGS(float));
typedef void (*minidl_gemm_micro_rows_double_fn)(MINIDL_GEMM_MICRO_ROWS_ARGS(double));

/* NAME[R] for R = 1..MR (NAME[0] unused), of type FN, from the kernel template KERNEL */
#define MINIDL_GEMM_TABLE(NAME, T, FN, KERNEL, ...)                                          \
    KERNEL(NAME, T, 1, __VA_ARGS__) KERNEL(NAME, T, 2, __VA_ARGS__)                          \
    KERNEL(NAME, T, 3, __VA_ARGS__) KERNEL(NAME, T, 4, __VA_ARGS__)                          \
    KERNEL(NAME, T, 5, __VA_ARGS__) KERNEL(NAME, T, 6, __VA_ARGS__)                          \
    static const FN NAME[MINIDL_GEMM_MR + 1] = {                                             \
        0, NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6};
/* both kernels (packed A, and A read in place) for one instruction set */
#define MINIDL_GEMM_KERNELS(S, T, ISA, ...)                                                  \
    MINIDL_GEMM_TABLE(minidl_gemm_micro_##S##_##ISA, T, minidl_gemm_micro_##T##_fn,          \
                      MINIDL_GEMM_MICRO, __VA_ARGS__)                                        \
    MINIDL_GEMM_TABLE(minidl_gemm_micro_rows_##S##_##ISA, T, minidl_gemm_micro_rows_##T##_fn,\
                      MINIDL_GEMM_MICRO_ROWS, __VA_ARGS__)

#if defined(MINIDL_VECTOR_EXT)

/* one row of the block: c_i0, c_i1 (+)= C[i, 0:W], C[i, W:2W], then stored */
#define MINIDL_GEMM_STORE_ROW(V, c, ldc, W, i, lo, hi, acc)                                  \
    {                                                                                        \
        V* restrict row = (V*)((c) + (i) * (ldc));                                           \
        V* restrict row_hi = (V*)((c) + (i) * (ldc) + (W));                                  \
        if (acc) { lo += *row; hi += *row_hi; }                                              \
        *row = lo; *row_hi = hi;                                                             \
    }

/* one step of k for R rows: C[i, :] += A(i, k) * B(k, :) with A(i, k) given by A0 .. A5 (only
   A0 .. A(R-1) are evaluated: R is a constant, so the `if (R > i)` go at compile time) */
#define MINIDL_GEMM_RANK1(R, A0, A1, A2, A3, A4, A5)                                        \
    c00 += (A0) * b0; c01 += (A0) * b1;                                                      \
    if (R > 1) { c10 += (A1) * b0; c11 += (A1) * b1; }                                       \
    if (R > 2) { c20 += (A2) * b0; c21 += (A2) * b1; }                                       \
    if (R > 3) { c30 += (A3) * b0; c31 += (A3) * b1; }                                       \
    if (R > 4) { c40 += (A4) * b0; c41 += (A4) * b1; }                                       \
    if (R > 5) { c50 += (A5) * b0; c51 += (A5) * b1; }

/* the R x 2 vectors of sums: zeroed with C's block prefetched (it is read and written after
   the loop over k, and its rows are often in L3 or memory); then stored to C */
#define MINIDL_GEMM_BEGIN(T, R, VBYTES)                                                      \
    typedef T V __attribute__((vector_size(VBYTES), aligned(sizeof(T))));                    \
    enum { W = VBYTES / sizeof(T) };                                                         \
    V c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};                      \
    V c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};                      \
    for (int i = 0; i < R; i++) {                                                            \
        __builtin_prefetch(c + i * ldc, 1);                                                  \
        __builtin_prefetch(c + i * ldc + 2 * W - 1, 1);                                      \
    }
#define MINIDL_GEMM_END(R)                                                                   \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 0, c00, c01, acc)                                    \
    if (R > 1) MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 1, c10, c11, acc)                         \
    if (R > 2) MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 2, c20, c21, acc)                         \
    if (R > 3) MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 3, c30, c31, acc)                         \
    if (R > 4) MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 4, c40, c41, acc)                         \
    if (R > 5) MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 5, c50, c51, acc)

/* R rows x 2 vectors of C in 2R registers; per k: 2 vector loads of B, R broadcasts of A,
   2R fused multiply-adds */
#define MINIDL_GEMM_MICRO(NAME, T, R, ATTRIBUTES, VBYTES)                                    \
ATTRIBUTES static void NAME##_##R(MINIDL_GEMM_MICRO_ARGS(T)) {                               \
    MINIDL_GEMM_BEGIN(T, R, VBYTES)                                                          \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                     \
        const V b0 = *(const V*)(bp + 2 * W * k), b1 = *(const V*)(bp + 2 * W * k + W);      \
        const T* restrict a = ap + MINIDL_GEMM_MR * k;                                       \
        __builtin_prefetch(a + 96); /* the A strip, 16 steps of k ahead */                   \
        MINIDL_GEMM_RANK1(R, a[0], a[1], a[2], a[3], a[4], a[5])                             \
    }                                                                                        \
    MINIDL_GEMM_END(R)                                                                       \
}

/* The same product with A read where it lies, unpacked: A(r, k) = arow[r][col[k]] (a gathered
   operand's rows, see "gathered operands"). The arithmetic is the same, step for step, so the
   bits are those of the packed kernel. */
#define MINIDL_GEMM_MICRO_ROWS(NAME, T, R, ATTRIBUTES, VBYTES)                               \
ATTRIBUTES static void NAME##_##R(MINIDL_GEMM_MICRO_ROWS_ARGS(T)) {                          \
    MINIDL_GEMM_BEGIN(T, R, VBYTES)                                                          \
    const T* restrict a0 = arow[0];                                                          \
    const T* restrict a1 = arow[R > 1 ? 1 : 0];                                              \
    const T* restrict a2 = arow[R > 2 ? 2 : 0];                                              \
    const T* restrict a3 = arow[R > 3 ? 3 : 0];                                              \
    const T* restrict a4 = arow[R > 4 ? 4 : 0];                                              \
    const T* restrict a5 = arow[R > 5 ? 5 : 0];                                              \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                     \
        const V b0 = *(const V*)(bp + 2 * W * k), b1 = *(const V*)(bp + 2 * W * k + W);      \
        const ptrdiff_t o = col[k];                                                          \
        MINIDL_GEMM_RANK1(R, a0[o], a1[o], a2[o], a3[o], a4[o], a5[o])                       \
    }                                                                                        \
    MINIDL_GEMM_END(R)                                                                       \
}

#if defined(MINIDL_X86_DISPATCH)
MINIDL_GEMM_KERNELS(f, float, avx512, MINIDL_TARGET("avx512f"), 64)
MINIDL_GEMM_KERNELS(d, double, avx512, MINIDL_TARGET("avx512f"), 64)
MINIDL_GEMM_KERNELS(f, float, avx2, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_GEMM_KERNELS(d, double, avx2, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_GEMM_KERNELS(f, float, base, MINIDL_TARGET("sse2"), 16)
MINIDL_GEMM_KERNELS(d, double, base, MINIDL_TARGET("sse2"), 16)
#else
MINIDL_GEMM_KERNELS(f, float, base, , 16)
MINIDL_GEMM_KERNELS(d, double, base, , 16)
#endif
#define MINIDL_GEMM_NR_BASE(T) (2 * 16 / (ptrdiff_t)sizeof(T))

#else /* plain C: R x 8 accumulators */

#define MINIDL_GEMM_MICRO_PLAIN(NAME, T, R, ARGS, A)                                         \
static void NAME##_##R(ARGS(T)) {                                                            \
    T s[R][8] = {{0}};                                                                       \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                     \
        for (int r = 0; r < R; r++) {                                                        \
            const T a = A;                                                                   \
            for (int q = 0; q < 8; q++) s[r][q] += a * bp[8 * k + q];                        \
        }                                                                                    \
    }                                                                                        \
    for (int r = 0; r < R; r++) {                                                            \
        T* restrict row = c + r * ldc;                                                       \
        for (int q = 0; q < 8; q++) row[q] = acc ? s[r][q] + row[q] : s[r][q];               \
    }                                                                                        \
}
#define MINIDL_GEMM_MICRO(NAME, T, R, ...)                                                   \
    MINIDL_GEMM_MICRO_PLAIN(NAME, T, R, MINIDL_GEMM_MICRO_ARGS, ap[MINIDL_GEMM_MR * k + r])
#define MINIDL_GEMM_MICRO_ROWS(NAME, T, R, ...)                                              \
    MINIDL_GEMM_MICRO_PLAIN(NAME, T, R, MINIDL_GEMM_MICRO_ROWS_ARGS, arow[r][col[k]])

MINIDL_GEMM_KERNELS(f, float, base, )
MINIDL_GEMM_KERNELS(d, double, base, )
#define MINIDL_GEMM_NR_BASE(T) ((ptrdiff_t)8)

#endif

/* ---- few rows of C (M <= MINIDL_GEMM_DOT_ROWS): dot products, B never packed ------------- */
/* A product of a few rows (a Dense layer at batch 1-8) is nearly a matrix-vector product: each
 * element of B is used by few rows, so packing B would cost more than the product. Each element
 * of C is instead a dot product in MINIDL_GEMM_LANES partial sums: s_l = sum over k = l
 * (mod LANES), in increasing k, then C (+)= ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)).
 * The same order, hence the same bits, whatever B's layout:
 *   columns of B contiguous (rsb == 1, e.g. x @ W.T): LANES consecutive k in one vector, eight
 *       columns of B at a time, then four (as many independent sums), then the last ones one
 *       at a time, still a vector each;
 *   rows of B contiguous (csb == 1, e.g. dout @ W): LANES consecutive columns in one vector and
 *       one vector of partial sums per l (eight independent sums), B copied
 *       block by block (DOT_KB rows) to a buffer whose rows do not share cache sets;
 *   other strides, and the last columns of rows-contiguous B that do not fill a vector: one
 *       element at a time.
 * A's rows must be contiguous (csa == 1; minidl._blas copies A when they are not). Which
 * elements take this path depends on M only (the rows of the whole product, not of a tile),
 * never on the strides or on the threads. */
#define MINIDL_GEMM_LANES 8
#define MINIDL_GEMM_DOT_KB 64 /* rows of B per block when B's rows are contiguous */
#define MINIDL_GEMM_DOT_STREAM_ROWS 2 /* up to this many rows of A: B streamed, no blocks */
#define MINIDL_GEMM_DOT_STREAM_COLS 512 /* ... in blocks of this many columns (sums in L1) */
#define MINIDL_GEMM_COMBINE(s0, s1, s2, s3, s4, s5, s6, s7)                                  \
    (((s0) + (s4)) + ((s2) + (s6))) + (((s1) + (s5)) + ((s3) + (s7)))

/* C[i, j] (+)= A[i, :] . B[:, j], one element at a time (any stride of B) */
#define MINIDL_GEMM_DOT_ONE(NAME, T, ATTRIBUTES)                                             \
ATTRIBUTES static void NAME(const T* restrict a, const T* restrict b, ptrdiff_t rsb,         \
                            ptrdiff_t inner, T* restrict c, int add) {                       \
    T s[MINIDL_GEMM_LANES] = {0};                                                            \
    for (ptrdiff_t k = 0; k < inner; k++) s[k % MINIDL_GEMM_LANES] += a[k] * b[k * rsb];     \
    const T r = MINIDL_GEMM_COMBINE(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);         \
    *c = add ? r + *c : r;                                                                   \
}

/* C[rows x cols] (+)= A (rows x inner, rows contiguous) @ B (inner x cols, any strides) */
#define MINIDL_GEMM_DOT_ARGS(T)                                                              \
    const T* A, ptrdiff_t rsa, const T* B, ptrdiff_t rsb, ptrdiff_t csb, T* C,               \
    ptrdiff_t ldc,                                                                           \
    ptrdiff_t rows, ptrdiff_t inner, ptrdiff_t cols, int add, void* scratch
typedef void (*minidl_gemm_dot_float_fn)(MINIDL_GEMM_DOT_ARGS(float));
typedef void (*minidl_gemm_dot_double_fn)(MINIDL_GEMM_DOT_ARGS(double));

#if defined(MINIDL_VECTOR_EXT)

#define MINIDL_GEMM_DOT(NAME, T, ATTRIBUTES)                                                 \
MINIDL_GEMM_DOT_ONE(NAME##_one, T, ATTRIBUTES)                                               \
/* columns j0, j0 + width, ... of C while whole groups of `width` (a constant where it is       \
   called, so that the loops over q unroll) remain, B's columns contiguous: one vector of sums \
   per column; returns the first column left */                                              \
ATTRIBUTES __attribute__((always_inline)) static inline ptrdiff_t NAME##_columns(            \
        const T* A, ptrdiff_t rsa, const T* B, ptrdiff_t csb, T* C, ptrdiff_t ldc,           \
        ptrdiff_t rows, ptrdiff_t inner, ptrdiff_t cols, int add, ptrdiff_t j0, int width) { \
    typedef T V                                                                              \
        __attribute__((vector_size(MINIDL_GEMM_LANES * sizeof(T)), aligned(sizeof(T))));     \
    const ptrdiff_t whole = inner / MINIDL_GEMM_LANES * MINIDL_GEMM_LANES;                   \
    for (; j0 + width <= cols; j0 += width) {                                                \
        const T* b0 = B + j0 * csb;                                                          \
        for (ptrdiff_t i = 0; i < rows; i++) {                                               \
            const T* a = A + i * rsa;                                                        \
            V s[8] = {{0}};                                                                  \
            for (ptrdiff_t k = 0; k < whole; k += MINIDL_GEMM_LANES) {                       \
                const V av = *(const V*)(a + k);                                             \
                for (int q = 0; q < width; q++) s[q] += av * *(const V*)(b0 + q * csb + k);  \
            }                                                                                \
            for (ptrdiff_t k = whole; k < inner; k++)                                        \
                for (int q = 0; q < width; q++) s[q][k - whole] += a[k] * b0[q * csb + k];   \
            T* c = C + i * ldc + j0;                                                         \
            for (int q = 0; q < width; q++) {                                                \
                const T r = MINIDL_GEMM_COMBINE(s[q][0], s[q][1], s[q][2], s[q][3],          \
                                                s[q][4], s[q][5], s[q][6], s[q][7]);         \
                c[q] = add ? r + c[q] : r;                                                   \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    return j0;                                                                               \
}                                                                                            \
ATTRIBUTES static void NAME(MINIDL_GEMM_DOT_ARGS(T)) {                                       \
    typedef T V                                                                              \
        __attribute__((vector_size(MINIDL_GEMM_LANES * sizeof(T)), aligned(sizeof(T))));     \
    const ptrdiff_t whole = inner / MINIDL_GEMM_LANES * MINIDL_GEMM_LANES;                   \
    ptrdiff_t j0 = 0;                                                                        \
    if (rsb == 1) { /* columns of B contiguous: eight at a time (eight streams of B in      \
                       flight), then four, then one (a classifier's 10 outputs: 8 + 1 + 1) */\
        j0 = NAME##_columns(A, rsa, B, csb, C, ldc, rows, inner, cols, add, 0, 8);           \
        j0 = NAME##_columns(A, rsa, B, csb, C, ldc, rows, inner, cols, add, j0, 4);          \
        j0 = NAME##_columns(A, rsa, B, csb, C, ldc, rows, inner, cols, add, j0, 1);          \
    } else if (csb == 1 && rows <= MINIDL_GEMM_DOT_STREAM_ROWS) {                            \
        /* rows of B contiguous, one or two rows of A (a Dense layer's input gradient at      \
           batch 1-2): B streamed once, row after row, each row k added into the sums of its   \
           lane l = k % LANES in `sums` (rows x LANES x a block of up to 512 columns, in L1):  \
           the same terms in the same order as the blocks below, so the same bits, without   \
           their copy of B ((1, 1024) @ (1024, 784): 128 -> 77 us on 1 thread, 72 -> 37 on  \
           2; (1, 1000) @ (1000, 4096) 1.26 -> 0.77 ms and 0.47 -> 0.31) */                  \
        const ptrdiff_t whole_cols = cols / MINIDL_GEMM_LANES * MINIDL_GEMM_LANES;           \
        T* sums = (T*)scratch; /* sums[(i*LANES + l)*n + j]: a block of n columns */         \
        for (ptrdiff_t jb = 0; jb < whole_cols; jb += MINIDL_GEMM_DOT_STREAM_COLS) {         \
            const ptrdiff_t n = whole_cols - jb < MINIDL_GEMM_DOT_STREAM_COLS                \
                                ? whole_cols - jb : MINIDL_GEMM_DOT_STREAM_COLS;             \
            for (ptrdiff_t e = 0; e < rows * MINIDL_GEMM_LANES * n; e++) sums[e] = 0;        \
            for (ptrdiff_t k = 0; k < inner; k++) {                                          \
                const T* b = B + k * rsb + jb;                                               \
                for (ptrdiff_t i = 0; i < rows; i++) {                                       \
                    const T aik = A[i * rsa + k];                                            \
                    T* st = sums + (i * MINIDL_GEMM_LANES + k % MINIDL_GEMM_LANES) * n;      \
                    for (ptrdiff_t j = 0; j < n; j += MINIDL_GEMM_LANES)                     \
                        *(V*)(st + j) += aik * *(const V*)(b + j);                           \
                }                                                                            \
            }                                                                                \
            for (ptrdiff_t i = 0; i < rows; i++) {                                           \
                const T* st = sums + i * MINIDL_GEMM_LANES * n;                              \
                T* c = C + i * ldc + jb;                                                     \
                for (ptrdiff_t j = 0; j < n; j += MINIDL_GEMM_LANES) {                       \
                    const V r = MINIDL_GEMM_COMBINE(                                         \
                        *(const V*)(st + j), *(const V*)(st + n + j),                        \
                        *(const V*)(st + 2 * n + j), *(const V*)(st + 3 * n + j),            \
                        *(const V*)(st + 4 * n + j), *(const V*)(st + 5 * n + j),            \
                        *(const V*)(st + 6 * n + j), *(const V*)(st + 7 * n + j));           \
                    for (int q = 0; q < MINIDL_GEMM_LANES; q++)                              \
                        c[j + q] = add ? r[q] + c[j + q] : r[q];                             \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        j0 = whole_cols;                                                                     \
    } else if (csb == 1) { /* rows of B contiguous: LANES columns, LANES sums (one per l) */ \
        /* k in blocks of DOT_KB rows, each block swept across all the columns (B is read    \
           row after row, not down its columns); the sums wait in `state` between blocks */  \
        const ptrdiff_t vectors = cols / MINIDL_GEMM_LANES;                                  \
        V* state = (V*)scratch; /* rows x vectors x LANES */                                 \
        /* each block is first copied, row after row, to `copy` (rows of ld elements): its   \
           DOT_KB rows then fall in different cache sets whatever rsb is, and B is read in   \
           the order the prefetchers follow */                                               \
        const ptrdiff_t ld = vectors * MINIDL_GEMM_LANES + MINIDL_GEMM_PAD;                  \
        T* copy = (T*)(state + rows * vectors * MINIDL_GEMM_LANES);                          \
        for (ptrdiff_t kb = 0; kb < inner; kb += MINIDL_GEMM_DOT_KB) {                       \
            const ptrdiff_t next = kb + MINIDL_GEMM_DOT_KB;                                  \
            const ptrdiff_t kend = whole < next ? whole : next; /* whole groups of LANES */  \
            const ptrdiff_t klast = inner < next ? inner : next;                             \
            for (ptrdiff_t k = kb; k < klast; k++)                                           \
                for (ptrdiff_t j = 0; j < vectors * MINIDL_GEMM_LANES; j++)                  \
                    copy[(k - kb) * ld + j] = B[k * rsb + j];                                \
            for (ptrdiff_t v = 0; v < vectors; v++) {                                        \
                const T* b = copy + v * MINIDL_GEMM_LANES; /* B(k): b + (k - kb) * ld */     \
                for (ptrdiff_t i = 0; i < rows; i++) { /* this vector's block: in L1 */      \
                    const T* a = A + i * rsa;                                                \
                    V* st = state + (i * vectors + v) * MINIDL_GEMM_LANES;                   \
                    V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0};  \
                    V s7 = {0};                                                              \
                    if (kb > 0) {                                                            \
                        s0 = st[0]; s1 = st[1]; s2 = st[2]; s3 = st[3];                      \
                        s4 = st[4]; s5 = st[5]; s6 = st[6]; s7 = st[7];                      \
                    }                                                                        \
                    ptrdiff_t k = kb;                                                        \
                    for (; k < kend; k += MINIDL_GEMM_LANES) {                               \
                        const T* bk = b + (k - kb) * ld;                                     \
                        s0 += a[k] * *(const V*)bk; s1 += a[k + 1] * *(const V*)(bk + ld);   \
                        s2 += a[k + 2] * *(const V*)(bk + 2 * ld);                           \
                        s3 += a[k + 3] * *(const V*)(bk + 3 * ld);                           \
                        s4 += a[k + 4] * *(const V*)(bk + 4 * ld);                           \
                        s5 += a[k + 5] * *(const V*)(bk + 5 * ld);                           \
                        s6 += a[k + 6] * *(const V*)(bk + 6 * ld);                           \
                        s7 += a[k + 7] * *(const V*)(bk + 7 * ld);                           \
                    }                                                                        \
                    if (kb + MINIDL_GEMM_DOT_KB < inner) {                                   \
                        st[0] = s0; st[1] = s1; st[2] = s2; st[3] = s3;                      \
                        st[4] = s4; st[5] = s5; st[6] = s6; st[7] = s7;                      \
                        continue;                                                            \
                    }                                                                        \
                    const T* bk = b + (k - kb) * ld; /* the last inner % LANES terms */      \
                    switch (inner - whole) { /* go into s0, s1, ... */                       \
                        case 7: s6 += a[k + 6] * *(const V*)(bk + 6 * ld); /* fall through */\
                        case 6: s5 += a[k + 5] * *(const V*)(bk + 5 * ld); /* fall through */\
                        case 5: s4 += a[k + 4] * *(const V*)(bk + 4 * ld); /* fall through */\
                        case 4: s3 += a[k + 3] * *(const V*)(bk + 3 * ld); /* fall through */\
                        case 3: s2 += a[k + 2] * *(const V*)(bk + 2 * ld); /* fall through */\
                        case 2: s1 += a[k + 1] * *(const V*)(bk + ld); /* fall through */    \
                        case 1: s0 += a[k] * *(const V*)bk; /* fall through */               \
                        default: break;                                                      \
                    }                                                                        \
                    const V r = MINIDL_GEMM_COMBINE(s0, s1, s2, s3, s4, s5, s6, s7);         \
                    T* c = C + i * ldc + v * MINIDL_GEMM_LANES;                              \
                    for (int q = 0; q < MINIDL_GEMM_LANES; q++)                              \
                        c[q] = add ? r[q] + c[q] : r[q];                                     \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        j0 = vectors * MINIDL_GEMM_LANES;                                                    \
    }                                                                                        \
    for (; j0 < cols; j0++) /* other strides; the last columns */                            \
        for (ptrdiff_t i = 0; i < rows; i++)                                                 \
            NAME##_one(A + i * rsa, B + j0 * csb, rsb, inner, C + i * ldc + j0, add);        \
}

#if defined(MINIDL_X86_DISPATCH)
/* No AVX-512 version: the vectors are LANES wide (256 bits for float), and compiled for
   "avx512f" alone the scalar path (NAME_one) would fuse its multiply-adds (EVEX scalar FMA)
   while the 256-bit vectors could not (no AVX512VL, no FMA3), so the paths would disagree in
   the last bit. AVX-512 CPUs take the AVX2+FMA version, where every path fuses. */
MINIDL_GEMM_DOT(minidl_gemm_dot_f_avx2, float, MINIDL_TARGET("avx2,fma"))
MINIDL_GEMM_DOT(minidl_gemm_dot_d_avx2, double, MINIDL_TARGET("avx2,fma"))
MINIDL_GEMM_DOT(minidl_gemm_dot_f_base, float, MINIDL_TARGET("sse2"))
MINIDL_GEMM_DOT(minidl_gemm_dot_d_base, double, MINIDL_TARGET("sse2"))
#else
MINIDL_GEMM_DOT(minidl_gemm_dot_f_base, float, )
MINIDL_GEMM_DOT(minidl_gemm_dot_d_base, double, )
#endif

#else /* plain C: every element by MINIDL_GEMM_DOT_ONE */

#define MINIDL_GEMM_DOT(NAME, T)                                                             \
MINIDL_GEMM_DOT_ONE(NAME##_one, T, )                                                         \
static void NAME(MINIDL_GEMM_DOT_ARGS(T)) {                                                  \
    for (ptrdiff_t j = 0; j < cols; j++)                                                     \
        for (ptrdiff_t i = 0; i < rows; i++)                                                 \
            NAME##_one(A + i * rsa, B + j * csb, rsb, inner, C + i * ldc + j, add);          \
}

MINIDL_GEMM_DOT(minidl_gemm_dot_f_base, float)
MINIDL_GEMM_DOT(minidl_gemm_dot_d_base, double)

#endif

/* the kernels of this CPU, by row count */
static const minidl_gemm_micro_float_fn* minidl_gemm_micro_f = minidl_gemm_micro_f_base;
static const minidl_gemm_micro_double_fn* minidl_gemm_micro_d = minidl_gemm_micro_d_base;
static const minidl_gemm_micro_rows_float_fn* minidl_gemm_micro_rows_f =
    minidl_gemm_micro_rows_f_base;
static const minidl_gemm_micro_rows_double_fn* minidl_gemm_micro_rows_d =
    minidl_gemm_micro_rows_d_base;
/* NR: the columns of C per micro-kernel call (2 SIMD vectors) */
static ptrdiff_t minidl_gemm_nr_f = MINIDL_GEMM_NR_BASE(float);
static ptrdiff_t minidl_gemm_nr_d = MINIDL_GEMM_NR_BASE(double);
/* Kernels half as wide, for products whose N fits them with less padding (the caller decides,
   minidl._blas): with AVX-512 a product of N = 8 columns would fill a quarter of each 32-wide
   strip, half of a 16-wide one. On AVX-512 CPUs these are the AVX2+FMA kernels; every element
   is the same chain of fused multiply-adds in either, so the bits do not change. Elsewhere
   they are the main kernels. */
static const minidl_gemm_micro_float_fn* minidl_gemm_micro_narrow_f = minidl_gemm_micro_f_base;
static const minidl_gemm_micro_double_fn* minidl_gemm_micro_narrow_d = minidl_gemm_micro_d_base;
static const minidl_gemm_micro_rows_float_fn* minidl_gemm_micro_rows_narrow_f =
    minidl_gemm_micro_rows_f_base;
static const minidl_gemm_micro_rows_double_fn* minidl_gemm_micro_rows_narrow_d =
    minidl_gemm_micro_rows_d_base;
static ptrdiff_t minidl_gemm_nr_narrow_f = MINIDL_GEMM_NR_BASE(float);
static ptrdiff_t minidl_gemm_nr_narrow_d = MINIDL_GEMM_NR_BASE(double);
static minidl_gemm_dot_float_fn minidl_gemm_dot_f = minidl_gemm_dot_f_base;
static minidl_gemm_dot_double_fn minidl_gemm_dot_d = minidl_gemm_dot_d_base;

/* Choose the micro-kernels' instruction set (once, at import); returns its name. */
static const char* minidl_gemm_init(void) {
#if defined(MINIDL_X86_DISPATCH)
    const int isa = minidl_cpu_isa();
    if (isa == MINIDL_ISA_AVX512F) {
        minidl_gemm_micro_f = minidl_gemm_micro_f_avx512;
        minidl_gemm_micro_d = minidl_gemm_micro_d_avx512;
        minidl_gemm_micro_rows_f = minidl_gemm_micro_rows_f_avx512;
        minidl_gemm_micro_rows_d = minidl_gemm_micro_rows_d_avx512;
        minidl_gemm_dot_f = minidl_gemm_dot_f_avx2; /* (see MINIDL_GEMM_DOT's instances) */
        minidl_gemm_dot_d = minidl_gemm_dot_d_avx2;
        minidl_gemm_nr_f = 32;
        minidl_gemm_nr_d = 16;
        minidl_gemm_micro_narrow_f = minidl_gemm_micro_f_avx2;
        minidl_gemm_micro_narrow_d = minidl_gemm_micro_d_avx2;
        minidl_gemm_micro_rows_narrow_f = minidl_gemm_micro_rows_f_avx2;
        minidl_gemm_micro_rows_narrow_d = minidl_gemm_micro_rows_d_avx2;
        minidl_gemm_nr_narrow_f = 16;
        minidl_gemm_nr_narrow_d = 8;
    } else if (isa == MINIDL_ISA_AVX2) {
        minidl_gemm_micro_f = minidl_gemm_micro_f_avx2;
        minidl_gemm_micro_d = minidl_gemm_micro_d_avx2;
        minidl_gemm_micro_rows_f = minidl_gemm_micro_rows_f_avx2;
        minidl_gemm_micro_rows_d = minidl_gemm_micro_rows_d_avx2;
        minidl_gemm_dot_f = minidl_gemm_dot_f_avx2;
        minidl_gemm_dot_d = minidl_gemm_dot_d_avx2;
        minidl_gemm_nr_f = 16;
        minidl_gemm_nr_d = 8;
        minidl_gemm_micro_narrow_f = minidl_gemm_micro_f; /* no narrower kernel with FMA */
        minidl_gemm_micro_narrow_d = minidl_gemm_micro_d;
        minidl_gemm_micro_rows_narrow_f = minidl_gemm_micro_rows_f;
        minidl_gemm_micro_rows_narrow_d = minidl_gemm_micro_rows_d;
        minidl_gemm_nr_narrow_f = minidl_gemm_nr_f;
        minidl_gemm_nr_narrow_d = minidl_gemm_nr_d;
    }
    return minidl_isa_name(isa);
#else
    return minidl_isa_name(MINIDL_ISA_BASELINE);
#endif
}

/* ---- one tile: C[rows x cols] = (acc ? C : 0) + sum_{t < terms} A_t B_t ------------------ */
/* narrow: use the narrow kernels (minidl_gemm_micro_narrow_*, NR minidl_gemm_nr_narrow_*).
   scratch: minidl_gemm_scratch_size(cols, nr) elements for that NR, 64-byte aligned (it also
   holds the partial sums of minidl_gemm_dot_tile, DOT_ROWS x cols x LANES, and its copy of a
   block of B, DOT_KB x (cols + PAD)).
   ga, gb: NULL, or A (B) gathered (terms 1; A, B and their strides are then unused for that
   operand); i0, j0: the tile's first row and column in the whole product (where a gathered
   operand's rows, or columns, start). */
static MINIDL_INLINE ptrdiff_t minidl_gemm_scratch_size(ptrdiff_t cols, ptrdiff_t nr) {
    const ptrdiff_t strips = (cols + nr - 1) / nr;
    const ptrdiff_t gemm = MINIDL_GEMM_MC * MINIDL_GEMM_KC
                           + strips * (nr * MINIDL_GEMM_KC + MINIDL_GEMM_PAD) + MINIDL_GEMM_MR * nr;
    const ptrdiff_t dot = MINIDL_GEMM_DOT_ROWS * cols * MINIDL_GEMM_LANES
                          + MINIDL_GEMM_DOT_KB * (cols + MINIDL_GEMM_PAD);
    return gemm > dot ? gemm : dot;
}

#define MINIDL_GEMM_TILE(S, T)                                                               \
/* C[r x valid] (+)= the MR x NR `edge` block a micro-kernel computed for a strip of C narrower  \
   than NR (valid < NR) */                                                                   \
static void minidl_gemm_from_edge_##S(const T* edge, ptrdiff_t nr, ptrdiff_t r,              \
                                      ptrdiff_t valid, T* c, ptrdiff_t ldc, int add) {       \
    for (ptrdiff_t i = 0; i < r; i++)                                                        \
        for (ptrdiff_t j = 0; j < valid; j++)                                                \
            c[i * ldc + j] = add ? edge[i * nr + j] + c[i * ldc + j] : edge[i * nr + j];     \
}                                                                                            \
/* C[mc x valid] (+)= Ap (mc rows, packed) @ one packed strip of B (kc x NR):                \
   one micro-kernel call per strip of MR rows */                                             \
static void minidl_gemm_strip_##S(const minidl_gemm_micro_##T##_fn* micro, ptrdiff_t nr,   \
                                  ptrdiff_t kc, ptrdiff_t mc, const T* ap, const T* b,       \
                                  ptrdiff_t valid, T* C, ptrdiff_t ldc, int add, T* edge) {  \
    for (ptrdiff_t i0 = 0; i0 < mc; i0 += MINIDL_GEMM_MR) {                                  \
        const ptrdiff_t r = mc - i0 < MINIDL_GEMM_MR ? mc - i0 : MINIDL_GEMM_MR;             \
        const T* a = ap + i0 * kc;                                                           \
        T* c = C + i0 * ldc;                                                                 \
        if (valid == nr) {                                                                   \
            micro[r](kc, a, b, c, ldc, add);                                                 \
        } else {                                                                             \
            micro[r](kc, a, b, edge, nr, 0);                                                 \
            minidl_gemm_from_edge_##S(edge, nr, r, valid, c, ldc, add);                      \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
/* the same for a gathered A read in place: its rows row[0 .. mc - 1], columns col[0 .. kc - 1] \
   (MINIDL_GEMM_MICRO_ROWS) */                                                               \
static void minidl_gemm_strip_rows_##S(const minidl_gemm_micro_rows_##T##_fn* micro,        \
                                       ptrdiff_t nr, ptrdiff_t kc, ptrdiff_t mc, const T* base, \
                                       const ptrdiff_t* row, const ptrdiff_t* col,           \
                                       const T* b, ptrdiff_t valid, T* C, ptrdiff_t ldc,     \
                                       int add, T* edge) {                                   \
    for (ptrdiff_t i0 = 0; i0 < mc; i0 += MINIDL_GEMM_MR) {                                  \
        const ptrdiff_t r = mc - i0 < MINIDL_GEMM_MR ? mc - i0 : MINIDL_GEMM_MR;             \
        const T* arow[MINIDL_GEMM_MR];                                                       \
        for (ptrdiff_t q = 0; q < r; q++) arow[q] = base + row[i0 + q];                      \
        T* c = C + i0 * ldc;                                                                 \
        if (valid == nr) {                                                                   \
            micro[r](kc, arow, col, b, c, ldc, add);                                         \
        } else {                                                                             \
            micro[r](kc, arow, col, b, edge, nr, 0);                                         \
            minidl_gemm_from_edge_##S(edge, nr, r, valid, c, ldc, add);                      \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static void minidl_gemm_tile_##S(                                                            \
        const T* A, ptrdiff_t sa, ptrdiff_t rsa, ptrdiff_t csa,                              \
        const T* B, ptrdiff_t sb, ptrdiff_t rsb, ptrdiff_t csb,                              \
        T* C, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t inner, ptrdiff_t cols,                \
        ptrdiff_t terms, int acc, int narrow, T* scratch,                                    \
        const minidl_gemm_gather_##S* ga, const minidl_gemm_gather_##S* gb,                  \
        ptrdiff_t i0, ptrdiff_t j0) {                                                        \
    const ptrdiff_t nr = narrow ? minidl_gemm_nr_narrow_##S : minidl_gemm_nr_##S;            \
    const minidl_gemm_micro_##T##_fn* micro =                                                \
        narrow ? minidl_gemm_micro_narrow_##S : minidl_gemm_micro_##S;                       \
    const minidl_gemm_micro_rows_##T##_fn* micro_rows =                                      \
        narrow ? minidl_gemm_micro_rows_narrow_##S : minidl_gemm_micro_rows_##S;             \
    T* ap = scratch;                                                                         \
    T* bp = ap + MINIDL_GEMM_MC * MINIDL_GEMM_KC;                                            \
    T* edge = bp + (cols + nr - 1) / nr * (nr * MINIDL_GEMM_KC + MINIDL_GEMM_PAD); /* MR x nr */\
    for (ptrdiff_t t = 0; t < terms; t++) {                                                  \
        for (ptrdiff_t pc = 0; pc < inner; pc += MINIDL_GEMM_KC) {                           \
            const ptrdiff_t kc = inner - pc < MINIDL_GEMM_KC ? inner - pc : MINIDL_GEMM_KC;  \
            const int add = acc || t > 0 || pc > 0;                                          \
            const T* At = ga ? NULL : A + t * sa + pc * csa; /* (A is NULL when gathered) */ \
            const T* Bt = gb ? NULL : B + t * sb + pc * rsb;                                 \
            if (gb) /* B gathered: its rows pc.., columns j0.. (the tile's) */               \
                minidl_gemm_pack_b_gather_##S(gb->base, gb->rows + pc, gb->cols + j0, kc,    \
                                              cols, nr, bp);                                 \
            else                                                                             \
                minidl_gemm_pack_b_##S(Bt, rsb, csb, kc, cols, nr, bp);                      \
            for (ptrdiff_t ic = 0; ic < rows; ic += MINIDL_GEMM_MC) {                        \
                const ptrdiff_t mc = rows - ic < MINIDL_GEMM_MC ? rows - ic : MINIDL_GEMM_MC;\
                if (!ga) /* (a gathered A, rows i0 + ic.., columns pc.., is read in place) */\
                    minidl_gemm_pack_a_##S(At + ic * rsa, rsa, csa, mc, kc, ap);             \
                for (ptrdiff_t jr = 0; jr < cols; jr += nr) {                                \
                    const ptrdiff_t valid = cols - jr < nr ? cols - jr : nr;                 \
                    const T* b = bp + (jr / nr) * (kc * nr + MINIDL_GEMM_PAD);               \
                    if (ga)                                                                  \
                        minidl_gemm_strip_rows_##S(micro_rows, nr, kc, mc, ga->base,         \
                                                   ga->rows + i0 + ic, ga->cols + pc, b,     \
                                                   valid, C + ic * ldc + jr, ldc, add, edge);\
                    else                                                                     \
                        minidl_gemm_strip_##S(micro, nr, kc, mc, ap, b, valid,               \
                                              C + ic * ldc + jr, ldc, add, edge);            \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}

MINIDL_GEMM_TILE(f, float)
MINIDL_GEMM_TILE(d, double)

/* ---- B packed once for many products ------------------------------------------------------ */
/* Products that each take some rows of one B (the border classes of an im2col convolution
 * that skips its padded taps, each with its own valid taps) would each pack their block of B,
 * and with few rows of A per class that packing costs as much as the arithmetic (a 7x7 layer
 * on 8x8 maps packs 10 times its weight). Instead B is packed once, whole: strip s of nr
 * columns holds all `inner` rows, Bp[s*(inner*nr + PAD) + k*nr + q] = B(k, s*nr + q) (zeros
 * past `cols`), and a product reads runs of consecutive rows of it in place. */
#define MINIDL_GEMM_PACKED(S, T)                                                             \
static MINIDL_INLINE ptrdiff_t minidl_gemm_packed_stride_##S(ptrdiff_t inner, ptrdiff_t nr) {\
    return inner * nr + MINIDL_GEMM_PAD;                                                     \
}                                                                                            \
/* strip `strip` of B (inner x cols, strides rsb, csb) into bp (see above) */               \
static void minidl_gemm_pack_strip_##S(const T* B, ptrdiff_t rsb, ptrdiff_t csb,             \
                                       ptrdiff_t inner, ptrdiff_t cols, ptrdiff_t nr,        \
                                       ptrdiff_t strip, T* bp) {                             \
    const ptrdiff_t j0 = strip * nr;                                                         \
    minidl_gemm_pack_b_##S(B + j0 * csb, rsb, csb, inner, cols - j0 < nr ? cols - j0 : nr,  \
                           nr, bp + strip * minidl_gemm_packed_stride_##S(inner, nr));       \
}                                                                                            \
/* C[rows x cols] = sum over segments g of A_g @ B_g, A gathered (read in place: its rows     \
   ga->rows[i0 ..], columns ga->cols[seg a_col ..]) and B packed whole in bp (`inner` rows per \
   strip; the tile's columns j0 .. j0 + cols - 1, j0 a multiple of nr): segment g = seg[3g ..  \
   3g + 2] = (a_col, b_row, length) multiplies `length` columns of A from a_col by as many    \
   consecutive rows of B from b_row. Summed segment by segment, each in KC blocks, in order;   \
   nseg >= 1. scratch: MR x nr elements, 64-byte aligned. */                                 \
static void minidl_gemm_tile_packed_##S(const minidl_gemm_gather_##S* ga, ptrdiff_t i0,      \
                                        const T* bp, ptrdiff_t inner, ptrdiff_t j0,          \
                                        const ptrdiff_t* seg, ptrdiff_t nseg, T* C,          \
                                        ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t cols,       \
                                        int narrow, T* scratch) {                            \
    const ptrdiff_t nr = narrow ? minidl_gemm_nr_narrow_##S : minidl_gemm_nr_##S;            \
    const minidl_gemm_micro_rows_##T##_fn* micro_rows =                                      \
        narrow ? minidl_gemm_micro_rows_narrow_##S : minidl_gemm_micro_rows_##S;             \
    const ptrdiff_t stride = minidl_gemm_packed_stride_##S(inner, nr);                       \
    int add = 0;                                                                             \
    for (ptrdiff_t g = 0; g < nseg; g++) {                                                   \
        const ptrdiff_t a_col = seg[3 * g], b_row = seg[3 * g + 1], length = seg[3 * g + 2]; \
        for (ptrdiff_t pc = 0; pc < length; pc += MINIDL_GEMM_KC) {                          \
            const ptrdiff_t kc = length - pc < MINIDL_GEMM_KC ? length - pc : MINIDL_GEMM_KC;\
            for (ptrdiff_t ic = 0; ic < rows; ic += MINIDL_GEMM_MC) {                        \
                const ptrdiff_t mc = rows - ic < MINIDL_GEMM_MC ? rows - ic : MINIDL_GEMM_MC;\
                for (ptrdiff_t jr = 0; jr < cols; jr += nr) {                                \
                    const T* b = bp + (j0 + jr) / nr * stride + (b_row + pc) * nr;           \
                    minidl_gemm_strip_rows_##S(micro_rows, nr, kc, mc, ga->base,             \
                                               ga->rows + i0 + ic, ga->cols + a_col + pc, b, \
                                               cols - jr < nr ? cols - jr : nr,              \
                                               C + ic * ldc + jr, ldc, add, scratch);        \
                }                                                                            \
            }                                                                                \
            add = 1;                                                                         \
        }                                                                                    \
    }                                                                                        \
}

MINIDL_GEMM_PACKED(f, float)
MINIDL_GEMM_PACKED(d, double)

/* ---- one tile of a product of at most MINIDL_GEMM_DOT_ROWS rows (A's rows contiguous) ---- */
#define MINIDL_GEMM_DOT_TILE(S, T)                                                           \
static void minidl_gemm_dot_tile_##S(const T* A, ptrdiff_t sa, ptrdiff_t rsa,                \
                                     const T* B, ptrdiff_t sb, ptrdiff_t rsb, ptrdiff_t csb, \
                                     T* C, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t inner,   \
                                     ptrdiff_t cols, ptrdiff_t terms, int acc, T* scratch) { \
    for (ptrdiff_t t = 0; t < terms; t++)                                                    \
        minidl_gemm_dot_##S(A + t * sa, rsa, B + t * sb, rsb, csb, C, ldc, rows, inner, cols,\
                            acc || t > 0, scratch);                                          \
}

MINIDL_GEMM_DOT_TILE(f, float)
MINIDL_GEMM_DOT_TILE(d, double)

/* ---- the epilogue of a tile of C: a Dense layer's bias and the ReLU after it ----
 * row[j] += bias[j] (bias not NULL), then row[j] = 0 where row[j] < 0 (relu): the roundings of
 * NumPy's `out += bias` and of _activation.h's ReLU (a NaN stays NaN, -0.0 stays -0.0). The
 * ReLU is a select the compiler vectorizes, not a branch on each element's sign, which
 * mispredicts about half the time: a (512, 1024) float32 output took 2.3 ms more with the
 * branch, 0.1 with the select (one thread). */
#define MINIDL_GEMM_EPILOGUE(S, T)                                                           \
MINIDL_CLONES static void minidl_gemm_epilogue_##S(T* restrict row, const T* restrict bias,  \
                                                   ptrdiff_t cols, int relu) {               \
    if (bias != NULL && relu) {                                                              \
        for (ptrdiff_t j = 0; j < cols; j++) {                                               \
            const T v = row[j] + bias[j];                                                    \
            row[j] = v < 0 ? (T)0 : v;                                                       \
        }                                                                                    \
    } else if (bias != NULL) {                                                               \
        for (ptrdiff_t j = 0; j < cols; j++) row[j] = row[j] + bias[j];                      \
    } else if (relu) {                                                                       \
        for (ptrdiff_t j = 0; j < cols; j++) row[j] = row[j] < 0 ? (T)0 : row[j];            \
    }                                                                                        \
}

MINIDL_GEMM_EPILOGUE(f, float)
MINIDL_GEMM_EPILOGUE(d, double)

#endif

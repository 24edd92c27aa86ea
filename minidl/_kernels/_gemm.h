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
 * operand is a matter of strides, never of a copy before the call). A block at the edge of C is
 * computed into a small MR x NR buffer and the valid part copied out.
 *
 * The micro-kernel keeps an MR x NR = 6 x (2 SIMD vectors) block of C in 12 vector registers
 * and adds one rank-1 update per k: 2 vector loads of B, 6 broadcasts of A, 12 fused
 * multiply-adds. Measured 101 GFLOP/s on one core of an AMD EPYC (Zen 3, AVX2; the peak is
 * about 102) on packed data in cache. With GCC/clang vector extensions it is compiled, on
 * x86-64, for AVX-512 (NR = 32 floats / 16 doubles), AVX2+FMA (16 / 8) and SSE2 (8 / 4), and
 * minidl_gemm_init() picks one at run time; elsewhere (e.g. NEON) one version with 16-byte
 * vectors; without vector extensions (MSVC, MINIDL_PORTABLE_C) the same blocking in plain C
 * with NR = 8.
 *
 * Every element of C is the sum over k in increasing order, in KC-long partial sums (one per
 * SIMD lane, in registers) added to C one after the other. KC is fixed, so the result does not
 * depend on the tiling or the number of threads: the same inputs give the same bits.
 *
 * Strides (in elements): A_t(i, k) = A[t*sa + i*rsa + k*csa], B_t(k, j) = B[t*sb + k*rsb +
 * j*csb], C(i, j) = C[i*ldc + j].
 */
#ifndef MINIDL_GEMM_H
#define MINIDL_GEMM_H

#include "_portable.h"

#define MINIDL_GEMM_MR 6   /* rows of C per micro-kernel call */
#define MINIDL_GEMM_KC 256 /* inner dimension per packed block (fixed: see above) */
#define MINIDL_GEMM_MC 144 /* rows of A per packed block (a multiple of MR) */
#define MINIDL_GEMM_PAD 16 /* elements between two packed strips of B */

/* ---- packing ------------------------------------------------------------------------------ */
#define MINIDL_GEMM_PACK(S, T)                                                                \
/* Ap[s*kc*MR + k*MR + r] = A(s*MR + r, k) for rows in strips of MR (zeros past `rows`) */   \
static void minidl_gemm_pack_a_##S(const T* restrict A, ptrdiff_t rsa, ptrdiff_t csa,        \
                                   ptrdiff_t rows, ptrdiff_t kc, T* restrict ap) {            \
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
    for (ptrdiff_t i0 = 0; i0 < rows; i0 += MINIDL_GEMM_MR, ap += kc * MINIDL_GEMM_MR) {      \
        const ptrdiff_t valid = rows - i0 < MINIDL_GEMM_MR ? rows - i0 : MINIDL_GEMM_MR;      \
        const T* restrict a = A + i0 * rsa;                                                  \
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
/* Bp[s*(kc*nr + PAD) + k*nr + q] = B(k, s*nr + q) for columns in strips of nr (zeros past  \
   `cols`); the PAD elements between strips keep the strips' rows out of one cache set */    \
static void minidl_gemm_pack_b_##S(const T* restrict B, ptrdiff_t rsb, ptrdiff_t csb,        \
                                   ptrdiff_t kc, ptrdiff_t cols, ptrdiff_t nr,               \
                                   T* restrict bp) {                                         \
    const ptrdiff_t strip = kc * nr + MINIDL_GEMM_PAD;                                       \
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
        for (ptrdiff_t q = 0; q < nr; q++) {                                                 \
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

/* ---- micro-kernels: C[6 x NR] = (acc ? C : 0) + ap (kc x 6, k-major) @ bp (kc x NR) -------- */
#if defined(MINIDL_VECTOR_EXT)

/* one row of the block: c_i0, c_i1 (+)= C[i, 0:W], C[i, W:2W], then stored */
#define MINIDL_GEMM_STORE_ROW(V, c, ldc, W, i, lo, hi, acc)                                  \
    {                                                                                        \
        V* restrict row = (V*)((c) + (i) * (ldc));                                           \
        V* restrict row_hi = (V*)((c) + (i) * (ldc) + (W));                                  \
        if (acc) { lo += *row; hi += *row_hi; }                                              \
        *row = lo; *row_hi = hi;                                                             \
    }

#define MINIDL_GEMM_MICRO(NAME, T, ATTRIBUTES, VBYTES)                                       \
typedef T NAME##_vec __attribute__((vector_size(VBYTES), aligned(sizeof(T))));               \
ATTRIBUTES static void NAME(ptrdiff_t kc, const T* restrict ap, const T* restrict bp,        \
                            T* restrict c, ptrdiff_t ldc, int acc) {                         \
    typedef NAME##_vec V;                                                                    \
    enum { W = VBYTES / sizeof(T) };                                                         \
    V c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};                      \
    V c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};                      \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                     \
        const V b0 = *(const V*)(bp + 2 * W * k), b1 = *(const V*)(bp + 2 * W * k + W);      \
        const T* restrict a = ap + MINIDL_GEMM_MR * k;                                       \
        const T a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5];            \
        c00 += a0 * b0; c01 += a0 * b1; c10 += a1 * b0; c11 += a1 * b1;                      \
        c20 += a2 * b0; c21 += a2 * b1; c30 += a3 * b0; c31 += a3 * b1;                      \
        c40 += a4 * b0; c41 += a4 * b1; c50 += a5 * b0; c51 += a5 * b1;                      \
    }                                                                                        \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 0, c00, c01, acc)                                    \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 1, c10, c11, acc)                                    \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 2, c20, c21, acc)                                    \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 3, c30, c31, acc)                                    \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 4, c40, c41, acc)                                    \
    MINIDL_GEMM_STORE_ROW(V, c, ldc, W, 5, c50, c51, acc)                                    \
}

#if defined(MINIDL_X86_DISPATCH)
MINIDL_GEMM_MICRO(minidl_gemm_micro_f_avx512, float, MINIDL_TARGET("avx512f"), 64)
MINIDL_GEMM_MICRO(minidl_gemm_micro_d_avx512, double, MINIDL_TARGET("avx512f"), 64)
MINIDL_GEMM_MICRO(minidl_gemm_micro_f_avx2, float, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_GEMM_MICRO(minidl_gemm_micro_d_avx2, double, MINIDL_TARGET("avx2,fma"), 32)
MINIDL_GEMM_MICRO(minidl_gemm_micro_f_base, float, MINIDL_TARGET("sse2"), 16)
MINIDL_GEMM_MICRO(minidl_gemm_micro_d_base, double, MINIDL_TARGET("sse2"), 16)
#else
MINIDL_GEMM_MICRO(minidl_gemm_micro_f_base, float, , 16)
MINIDL_GEMM_MICRO(minidl_gemm_micro_d_base, double, , 16)
#endif
#define MINIDL_GEMM_NR_BASE(T) (2 * 16 / (ptrdiff_t)sizeof(T))

#else /* plain C: 6 x 8 accumulators */

#define MINIDL_GEMM_MICRO(NAME, T)                                                           \
static void NAME(ptrdiff_t kc, const T* restrict ap, const T* restrict bp, T* restrict c,    \
                 ptrdiff_t ldc, int acc) {                                                   \
    T s[MINIDL_GEMM_MR][8] = {{0}};                                                          \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                     \
        for (int r = 0; r < MINIDL_GEMM_MR; r++) {                                           \
            const T a = ap[MINIDL_GEMM_MR * k + r];                                          \
            for (int q = 0; q < 8; q++) s[r][q] += a * bp[8 * k + q];                        \
        }                                                                                    \
    }                                                                                        \
    for (int r = 0; r < MINIDL_GEMM_MR; r++) {                                               \
        T* restrict row = c + r * ldc;                                                       \
        for (int q = 0; q < 8; q++) row[q] = acc ? s[r][q] + row[q] : s[r][q];               \
    }                                                                                        \
}

MINIDL_GEMM_MICRO(minidl_gemm_micro_f_base, float)
MINIDL_GEMM_MICRO(minidl_gemm_micro_d_base, double)
#define MINIDL_GEMM_NR_BASE(T) ((ptrdiff_t)8)

#endif

typedef void (*minidl_gemm_micro_f_fn)(ptrdiff_t, const float*, const float*, float*, ptrdiff_t,
                                       int);
typedef void (*minidl_gemm_micro_d_fn)(ptrdiff_t, const double*, const double*, double*,
                                       ptrdiff_t, int);
static minidl_gemm_micro_f_fn minidl_gemm_micro_f = minidl_gemm_micro_f_base;
static minidl_gemm_micro_d_fn minidl_gemm_micro_d = minidl_gemm_micro_d_base;
/* NR: the columns of C per micro-kernel call (2 SIMD vectors) */
static ptrdiff_t minidl_gemm_nr_f = MINIDL_GEMM_NR_BASE(float);
static ptrdiff_t minidl_gemm_nr_d = MINIDL_GEMM_NR_BASE(double);

/* Choose the micro-kernels' instruction set (once, at import); returns its name. */
static const char* minidl_gemm_init(void) {
#if defined(MINIDL_X86_DISPATCH)
    const int isa = minidl_cpu_isa();
    if (isa == MINIDL_ISA_AVX512F) {
        minidl_gemm_micro_f = minidl_gemm_micro_f_avx512;
        minidl_gemm_micro_d = minidl_gemm_micro_d_avx512;
        minidl_gemm_nr_f = 32;
        minidl_gemm_nr_d = 16;
    } else if (isa == MINIDL_ISA_AVX2) {
        minidl_gemm_micro_f = minidl_gemm_micro_f_avx2;
        minidl_gemm_micro_d = minidl_gemm_micro_d_avx2;
        minidl_gemm_nr_f = 16;
        minidl_gemm_nr_d = 8;
    }
    return minidl_isa_name(isa);
#else
    return minidl_isa_name(MINIDL_ISA_BASELINE);
#endif
}

/* ---- one tile: C[rows x cols] = (acc ? C : 0) + sum_{t < terms} A_t B_t ------------------ */
/* scratch: minidl_gemm_scratch_size(cols, nr) elements, 64-byte aligned */
static MINIDL_INLINE ptrdiff_t minidl_gemm_scratch_size(ptrdiff_t cols, ptrdiff_t nr) {
    const ptrdiff_t strips = (cols + nr - 1) / nr;
    return MINIDL_GEMM_MC * MINIDL_GEMM_KC + strips * (nr * MINIDL_GEMM_KC + MINIDL_GEMM_PAD)
           + MINIDL_GEMM_MR * nr;
}

#define MINIDL_GEMM_TILE(S, T)                                                                \
static void minidl_gemm_tile_##S(                                                            \
        const T* A, ptrdiff_t sa, ptrdiff_t rsa, ptrdiff_t csa,                              \
        const T* B, ptrdiff_t sb, ptrdiff_t rsb, ptrdiff_t csb,                              \
        T* C, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t inner, ptrdiff_t cols,                \
        ptrdiff_t terms, int acc, T* scratch) {                                              \
    const ptrdiff_t nr = minidl_gemm_nr_##S;                                                 \
    T* ap = scratch;                                                                         \
    T* bp = ap + MINIDL_GEMM_MC * MINIDL_GEMM_KC;                                            \
    T* edge = bp + (cols + nr - 1) / nr * (nr * MINIDL_GEMM_KC + MINIDL_GEMM_PAD); /* MR x nr */\
    for (ptrdiff_t t = 0; t < terms; t++) {                                                  \
        for (ptrdiff_t pc = 0; pc < inner; pc += MINIDL_GEMM_KC) {                           \
            const ptrdiff_t kc = inner - pc < MINIDL_GEMM_KC ? inner - pc : MINIDL_GEMM_KC;  \
            const int add = acc || t > 0 || pc > 0;                                          \
            minidl_gemm_pack_b_##S(B + t * sb + pc * rsb, rsb, csb, kc, cols, nr, bp);       \
            for (ptrdiff_t ic = 0; ic < rows; ic += MINIDL_GEMM_MC) {                        \
                const ptrdiff_t mc = rows - ic < MINIDL_GEMM_MC ? rows - ic : MINIDL_GEMM_MC;\
                minidl_gemm_pack_a_##S(A + t * sa + ic * rsa + pc * csa, rsa, csa, mc, kc,   \
                                       ap);                                                  \
                for (ptrdiff_t j0 = 0; j0 < cols; j0 += nr) {                                \
                    const T* b = bp + (j0 / nr) * (kc * nr + MINIDL_GEMM_PAD);               \
                    for (ptrdiff_t i0 = 0; i0 < mc; i0 += MINIDL_GEMM_MR) {                  \
                        const T* a = ap + i0 * kc;                                           \
                        T* c = C + (ic + i0) * ldc + j0;                                     \
                        if (i0 + MINIDL_GEMM_MR <= mc && j0 + nr <= cols) {                  \
                            minidl_gemm_micro_##S(kc, a, b, c, ldc, add);                    \
                            continue;                                                        \
                        }                                                                    \
                        minidl_gemm_micro_##S(kc, a, b, edge, nr, 0);                        \
                        for (ptrdiff_t i = 0; i < MINIDL_GEMM_MR && i0 + i < mc; i++)        \
                            for (ptrdiff_t j = 0; j < nr && j0 + j < cols; j++)              \
                                c[i * ldc + j] = add ? edge[i * nr + j] + c[i * ldc + j]     \
                                                     : edge[i * nr + j];                     \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}

MINIDL_GEMM_TILE(f, float)
MINIDL_GEMM_TILE(d, double)

#endif

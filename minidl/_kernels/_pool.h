/* The per-plane loops of _pool.pyx: 2x2, stride-2 max-pooling of one plane of windows and its
 * gradient, written with selects instead of branches so that the compiler vectorizes over the
 * windows (MINIDL_SIMD); average pooling of one plane and its gradient (any window, stride and
 * padding). SIMD clones as described in _portable.h.
 */
#ifndef MINIDL_POOL_H
#define MINIDL_POOL_H

#include <string.h>
#include "_portable.h"

/* The rule of _pool_plane for the window a b / c d (row-major) whose top-left element is
   plane[i]: a later value wins if it is greater and no NaN was seen, or if it is a NaN;
   OUT gets the winning element itself (bit for bit), ARGMAX its index i + (0, 1, W or
   W + 1). The selects are done on the values' bits with masks, so that a scalar loop has
   no branches either (mispredicted ones made it 1.5x slower). */
#define MINIDL_POOL_SELECT(mask, yes, no) (((yes) & (mask)) | ((no) & ~(mask)))
#define MINIDL_POOL_STEP(T, U, x, at)                                                       \
    take = (U)0 - (U)((((x) > best) & !seen) | ((x) != (x)));                               \
    pick = (int64_t)0 - (int64_t)(take & 1);                                                \
    memcpy(&bits, &(x), sizeof(T));                                                         \
    value = MINIDL_POOL_SELECT(take, bits, value);                                          \
    offset = MINIDL_POOL_SELECT(pick, (int64_t)(at), offset);                               \
    seen |= (x) != (x); best = best > (x) ? best : (x);
#define MINIDL_POOL_WINDOW(T, U, plane, i, W, OUT, ARGMAX)                                  \
    {                                                                                       \
        const T a = plane[i], b = plane[(i) + 1];                                           \
        const T c = plane[(i) + W], d = plane[(i) + W + 1];                                 \
        U value, bits, take;                                                                \
        int64_t offset = 0, pick;                                                           \
        int seen = a != a;                                                                  \
        T best = a;                                                                         \
        memcpy(&value, &a, sizeof(T));                                                      \
        MINIDL_POOL_STEP(T, U, b, 1)                                                        \
        MINIDL_POOL_STEP(T, U, c, W)                                                        \
        MINIDL_POOL_STEP(T, U, d, W + 1)                                                    \
        memcpy(&(OUT), &value, sizeof(T));                                                  \
        ARGMAX = (i) + offset;                                                              \
    }
/* Two ways over the windows of one plane and back, picked by row length (see
   _POOL_GATHER_BELOW): along each row of windows, where the loads and stores are
   contiguous, or all windows in one loop through a table of their corners, which gathers
   but keeps full vectors when rows are short. */
#define MINIDL_POOL_2X2(SUFFIX, T, U)                                                       \
    MINIDL_CLONES static void minidl_pool2x2_rows_##SUFFIX(                                 \
            const T* restrict plane, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,               \
            T* restrict out, int64_t* restrict argmax) {                                    \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                             \
            MINIDL_SIMD                                                                     \
            for (ptrdiff_t ow = 0; ow < OW; ow++) {                                         \
                const ptrdiff_t i = 2 * oh * W + 2 * ow;                                    \
                MINIDL_POOL_WINDOW(T, U, plane, i, W, out[oh * OW + ow],                    \
                                   argmax[oh * OW + ow])                                    \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    MINIDL_CLONES static void minidl_pool2x2_table_##SUFFIX(                                \
            const T* restrict plane, ptrdiff_t W,                                           \
            const int32_t* restrict corner, ptrdiff_t count, T* restrict out,               \
            int64_t* restrict argmax) {                                                     \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t o = 0; o < count; o++) {                                             \
            const ptrdiff_t i = corner[o];                                                  \
            MINIDL_POOL_WINDOW(T, U, plane, i, W, out[o], argmax[o])                        \
        }                                                                                   \
    }                                                                                       \
    /* the same two ways for inference: the maxima only (the index arithmetic is dead code, \
       which the compiler removes) */                                                       \
    MINIDL_CLONES static void minidl_pool2x2_max_rows_##SUFFIX(                             \
            const T* restrict plane, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,               \
            T* restrict out) {                                                              \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                             \
            MINIDL_SIMD                                                                     \
            for (ptrdiff_t ow = 0; ow < OW; ow++) {                                         \
                const ptrdiff_t i = 2 * oh * W + 2 * ow;                                    \
                int64_t unused;                                                             \
                MINIDL_POOL_WINDOW(T, U, plane, i, W, out[oh * OW + ow], unused)            \
                (void)unused;                                                               \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    MINIDL_CLONES static void minidl_pool2x2_max_table_##SUFFIX(                            \
            const T* restrict plane, ptrdiff_t W,                                           \
            const int32_t* restrict corner, ptrdiff_t count, T* restrict out) {             \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t o = 0; o < count; o++) {                                             \
            const ptrdiff_t i = corner[o];                                                  \
            int64_t unused;                                                                 \
            MINIDL_POOL_WINDOW(T, U, plane, i, W, out[o], unused)                           \
            (void)unused;                                                                   \
        }                                                                                   \
    }                                                                                       \
    /* dx of one row of 2x2 windows: dout where the window's winner was, 0 elsewhere */     \
    MINIDL_CLONES static void minidl_pool2x2_grad_rows_##SUFFIX(                            \
            const T* restrict dout, const int64_t* restrict argmax,                         \
            ptrdiff_t W, int64_t base, T* restrict top, T* restrict bottom,                 \
            ptrdiff_t OW) {                                                                 \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t ow = 0; ow < OW; ow++) {                                             \
            const int64_t offset = argmax[ow] - base - 2 * ow;                              \
            const T g = dout[ow];                                                           \
            top[2 * ow] = offset == 0 ? g : (T)0;                                           \
            top[2 * ow + 1] = offset == 1 ? g : (T)0;                                       \
            bottom[2 * ow] = offset == W ? g : (T)0;                                        \
            bottom[2 * ow + 1] = offset == W + 1 ? g : (T)0;                                \
        }                                                                                   \
    }                                                                                       \
    /* dx of a whole plane, element by element: owner[p] is the window that covers p (0     \
       if none: no window's winner is an uncovered element) */                              \
    MINIDL_CLONES static void minidl_pool2x2_grad_table_##SUFFIX(                           \
            const T* restrict dout, const int64_t* restrict argmax,                         \
            const int32_t* restrict owner, ptrdiff_t count,                                 \
            T* restrict dx) {                                                               \
        MINIDL_SIMD                                                                         \
        for (ptrdiff_t p = 0; p < count; p++) {                                             \
            const int32_t o = owner[p];                                                     \
            const int64_t winner = argmax[o];   /* both loads unconditional: */             \
            const T g = dout[o];                /* GCC gathers only those */                \
            dx[p] = winner == p ? g : (T)0;                                                 \
        }                                                                                   \
    }
MINIDL_POOL_2X2(f, float, uint32_t)
MINIDL_POOL_2X2(d, double, uint64_t)

/* Average pooling (_pool.pyx) of one (H, W) plane with zero padding, and its gradient. The
   window of output (oh, ow) covers rows [oh*sH - pH, oh*sH - pH + kH) and columns
   [ow*sW - pW, ow*sW - pW + kW) of the zero-padded plane; the sum runs over its part inside
   the plane (the padding adds zeros) and is divided by kH*kW when count_include_pad (in
   floor mode no window reaches past the padding), else by the number of plane elements in the
   window (never 0: the caller keeps the padding at most half the window). Sums are
   accumulated in double. The gradient of output (oh, ow) is dout / divisor, added to every
   plane element of its window. */
/* The rows [*lo, *hi) of a plane of n rows that window o covers (likewise for columns): the
   window starts at o*s - p in the padded plane and is k long. */
static MINIDL_INLINE void minidl_avgpool_span(ptrdiff_t o, ptrdiff_t s, ptrdiff_t p, ptrdiff_t k,
                                              ptrdiff_t n, ptrdiff_t* lo, ptrdiff_t* hi) {
    const ptrdiff_t start = o * s - p;
    *lo = start > 0 ? start : 0;
    *hi = start + k < n ? start + k : n;
}

#define MINIDL_AVG_POOL(SUFFIX, T)                                                          \
    MINIDL_CLONES static void minidl_avgpool_plane_##SUFFIX(                                \
            const T* restrict plane, ptrdiff_t H, ptrdiff_t W, T* restrict out,             \
            ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t kH, ptrdiff_t kW, ptrdiff_t sH,           \
            ptrdiff_t sW, ptrdiff_t pH, ptrdiff_t pW, int count_include_pad) {              \
        ptrdiff_t h0, h1, w0, w1;                                                           \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                             \
            minidl_avgpool_span(oh, sH, pH, kH, H, &h0, &h1);                               \
            for (ptrdiff_t ow = 0; ow < OW; ow++) {                                         \
                minidl_avgpool_span(ow, sW, pW, kW, W, &w0, &w1);                           \
                double sum = 0.0;                                                           \
                for (ptrdiff_t h = h0; h < h1; h++)                                         \
                    for (ptrdiff_t w = w0; w < w1; w++)                                     \
                        sum += plane[h * W + w];                                            \
                const ptrdiff_t divisor =                                                   \
                    count_include_pad ? kH * kW : (h1 - h0) * (w1 - w0);                    \
                out[oh * OW + ow] = (T)(sum / (double)divisor);                             \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    MINIDL_CLONES static void minidl_avgpool_grad_plane_##SUFFIX(                           \
            const T* restrict dout, ptrdiff_t H, ptrdiff_t W, T* restrict dx,               \
            ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t kH, ptrdiff_t kW, ptrdiff_t sH,           \
            ptrdiff_t sW, ptrdiff_t pH, ptrdiff_t pW, int count_include_pad) {              \
        ptrdiff_t h0, h1, w0, w1;                                                           \
        for (ptrdiff_t p = 0; p < H * W; p++) dx[p] = (T)0;                                 \
        for (ptrdiff_t oh = 0; oh < OH; oh++) {                                             \
            minidl_avgpool_span(oh, sH, pH, kH, H, &h0, &h1);                               \
            for (ptrdiff_t ow = 0; ow < OW; ow++) {                                         \
                minidl_avgpool_span(ow, sW, pW, kW, W, &w0, &w1);                           \
                const ptrdiff_t divisor =                                                   \
                    count_include_pad ? kH * kW : (h1 - h0) * (w1 - w0);                    \
                const T g = dout[oh * OW + ow] / (T)divisor;                                \
                for (ptrdiff_t h = h0; h < h1; h++) {                                       \
                    MINIDL_SIMD                                                             \
                    for (ptrdiff_t w = w0; w < w1; w++) dx[h * W + w] += g;                 \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }
MINIDL_AVG_POOL(f, float)
MINIDL_AVG_POOL(d, double)

#endif

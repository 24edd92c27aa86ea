/* Inner loops of the ReLU kernels (_activation.pyx): one pass over memory each way, which the
 * compiler vectorizes; SIMD clones as described in _portable.h. `restrict`: the arrays do not
 * overlap, except x == y for an in-place forward, which restrict does not strictly allow but
 * which is safe for this loop (element i is read before it is written, by the same iteration;
 * without restrict the compiler would take its scalar loop for x == y).
 *
 *   forward   y  = 0 if x < 0 else x     (a NaN stays NaN, -0.0 stays -0.0, as in PyTorch)
 *   backward  dx = 0 if y <= 0 else dy   (PyTorch's threshold_backward: the subgradient at 0
 *                                         is 0; a NaN in y passes dy on)
 *   add       y  = a + b, or relu(a + b) (a residual connection's sum, and the ReLU after it)
 */
#ifndef MINIDL_ACTIVATION_H
#define MINIDL_ACTIVATION_H

#include "_portable.h"

#define MINIDL_RELU_LOOPS(SUFFIX, T)                                                        \
    MINIDL_CLONES static void minidl_relu_##SUFFIX(const T* restrict x,                     \
                                                   T* restrict y, ptrdiff_t n) {            \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] < 0 ? (T)0 : x[i];                    \
    }                                                                                       \
    MINIDL_CLONES static void minidl_relu_grad_##SUFFIX(const T* restrict dy,               \
                                                        const T* restrict y,                \
                                                        T* restrict dx,                     \
                                                        ptrdiff_t n) {                      \
        for (ptrdiff_t i = 0; i < n; i++) dx[i] = y[i] <= 0 ? (T)0 : dy[i];                 \
    }

#define MINIDL_ADD_LOOPS(SUFFIX, T)                                                         \
    MINIDL_CLONES static void minidl_add_##SUFFIX(const T* restrict a, const T* restrict b, \
                                                  T* restrict y, ptrdiff_t n) {             \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = a[i] + b[i];                               \
    }                                                                                       \
    MINIDL_CLONES static void minidl_add_relu_##SUFFIX(const T* restrict a,                 \
                                                       const T* restrict b,                 \
                                                       T* restrict y, ptrdiff_t n) {        \
        for (ptrdiff_t i = 0; i < n; i++) {                                                 \
            const T v = a[i] + b[i];                                                        \
            y[i] = v < 0 ? (T)0 : v;                                                        \
        }                                                                                   \
    }

MINIDL_RELU_LOOPS(f, float)
MINIDL_RELU_LOOPS(d, double)
MINIDL_ADD_LOOPS(f, float)
MINIDL_ADD_LOOPS(d, double)

#endif

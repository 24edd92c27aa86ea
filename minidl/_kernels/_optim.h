/* Inner loop of the fused SGD update (_optim.pyx): one pass over the parameter, its gradient
 * and its momentum buffer instead of the four NumPy passes of the readable version in
 * minidl/optim/sgd.py, with the same operations in the same order (so the same bits, except
 * on targets with fused multiply-add, where the compiler may fuse a product and a sum: the
 * AVX-512 clone; see "What is not promised" in the README). SIMD clones as in _portable.h.
 *
 * PyTorch's torch.optim.SGD (Sutskever et al. 2013 momentum as PyTorch defines it), per
 * element:
 *
 *     g   = grad + weight_decay * p                     (weight_decay != 0)
 *     buf = g                                           (momentum != 0, first step)
 *     buf = momentum * buf + (1 - dampening) * g        (momentum != 0, later steps)
 *     d   = g + momentum * buf  if nesterov  else buf   (momentum != 0; d = g otherwise)
 *     p   = p - lr * d
 *
 * `scale` is 1 - dampening (multiplied only when it is not 1, as the NumPy version does).
 */
#ifndef MINIDL_OPTIM_H
#define MINIDL_OPTIM_H

#include "_portable.h"

/* The loop, with the choices as arguments: the dispatcher below calls it with constants (and
   the weight-decay flag, which the compiler unswitches), so that each case is compiled as its
   own branch-free loop, which the compiler vectorizes (with every choice a run-time flag it
   did not: 169 instead of 98 us for 269K parameters). */
#define MINIDL_SGD_LOOP(SUFFIX, T)                                                          \
static MINIDL_INLINE void minidl_sgd_loop_##SUFFIX(                                         \
        T* restrict p, const T* restrict grad, T* restrict buf, ptrdiff_t n, T lr,          \
        T momentum, T scale, T weight_decay, const int decay, const int with_momentum,      \
        const int first, const int damp, const int nesterov) {                              \
    for (ptrdiff_t i = 0; i < n; i++) {                                                     \
        T g = grad[i];                                                                      \
        if (decay) {                                                                        \
            const T penalty = p[i] * weight_decay;                                          \
            g = g + penalty;                                                                \
        }                                                                                   \
        T d = g;                                                                            \
        if (with_momentum) {                                                                \
            T b;                                                                            \
            if (first) {                                                                    \
                b = g;                                                                      \
            } else {                                                                        \
                const T kept = buf[i] * momentum;                                           \
                b = kept + (damp ? g * scale : g);                                          \
            }                                                                               \
            buf[i] = b;                                                                     \
            if (nesterov) {                                                                 \
                const T ahead = b * momentum;                                               \
                d = g + ahead;                                                              \
            } else {                                                                        \
                d = b;                                                                      \
            }                                                                               \
        }                                                                                   \
        const T step = d * lr;                                                              \
        p[i] = p[i] - step;                                                                 \
    }                                                                                       \
}                                                                                           \
MINIDL_CLONES static void minidl_sgd_##SUFFIX(                                              \
        T* restrict p, const T* restrict grad, T* restrict buf, ptrdiff_t n, T lr,          \
        T momentum, T scale, T weight_decay, int nesterov, int first) {                     \
    const int decay = weight_decay != 0; /* (a run-time flag the compiler unswitches) */    \
    if (momentum == 0)                                                                      \
        minidl_sgd_loop_##SUFFIX(p, grad, buf, n, lr, momentum, scale, weight_decay, decay, \
                                 0, 0, 0, 0);                                               \
    else if (first)                                                                         \
        minidl_sgd_loop_##SUFFIX(p, grad, buf, n, lr, momentum, scale, weight_decay, decay, \
                                 1, 1, 0, nesterov);                                        \
    else if (nesterov) /* (no dampening with Nesterov momentum) */                          \
        minidl_sgd_loop_##SUFFIX(p, grad, buf, n, lr, momentum, scale, weight_decay, decay, \
                                 1, 0, 0, 1);                                               \
    else if (scale != 1)                                                                    \
        minidl_sgd_loop_##SUFFIX(p, grad, buf, n, lr, momentum, scale, weight_decay, decay, \
                                 1, 0, 1, 0);                                               \
    else                                                                                    \
        minidl_sgd_loop_##SUFFIX(p, grad, buf, n, lr, momentum, scale, weight_decay, decay, \
                                 1, 0, 0, 0);                                               \
}

MINIDL_SGD_LOOP(f, float)
MINIDL_SGD_LOOP(d, double)

#endif

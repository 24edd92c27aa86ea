"""Optimizer kernels: the fused SGD update, one pass over memory, split over OpenMP threads.

The math (PyTorch's ``torch.optim.SGD``) and the readable NumPy version are in
``minidl/optim/sgd.py``, which calls :func:`sgd_update` for float32/float64 C-contiguous
parameters on the compiled backend; the loop itself is C, in ``_optim.h``.

These kernels trust their inputs (checked by ``minidl.optim``): flat C-contiguous arrays of
one dtype and length, updated in place (OUT). Indices are ``Py_ssize_t``, bounded by the
arrays' length; ``num_threads`` is an ``int`` from 1 to 1024.
"""
from cython.parallel cimport prange

from ._common cimport build_facts, ceil_div, floating

cdef extern from "_optim.h" nogil:
    void minidl_sgd_f(float* p, const float* grad, float* buf, Py_ssize_t n, float lr,
                      float momentum, float scale, float weight_decay, int nesterov, int first)
    void minidl_sgd_d(double* p, const double* grad, double* buf, Py_ssize_t n, double lr,
                      double momentum, double scale, double weight_decay, int nesterov,
                      int first)

#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()

cdef enum:
    BLOCK = 1 << 14  # elements per task (64 KiB of float32 per array)


def sgd_update(floating[::1] p, const floating[::1] grad, floating[::1] buf, double lr,
               double momentum, double dampening, double weight_decay, bint nesterov,
               bint first, int num_threads=1):
    """One SGD step on a flat parameter, in place (see ``_optim.h`` for the formula).

    Args:
        p (OUT): the parameter, flat, float32 or float64; updated in place.
        grad (IN): its gradient, the same dtype and length.
        buf (OUT): the momentum buffer, the same dtype and length: overwritten on the first
            step (``first``), updated in place later; not touched when ``momentum == 0``.
        lr, momentum, dampening, weight_decay: the hyperparameters (cast to the dtype, as
            NumPy casts a Python float in an operation with a float32 array).
        nesterov: Nesterov momentum.
        first: the buffer does not exist yet (PyTorch's first step: ``buf = g``).
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): all three arrays C-contiguous, one dtype
    and length, sharing no memory with each other; ``num_threads >= 1``.
    """
    cdef Py_ssize_t n = p.shape[0], task, start, length
    cdef floating lr_t = <floating>lr, momentum_t = <floating>momentum
    cdef floating scale_t = <floating>(1.0 - dampening), decay_t = <floating>weight_decay
    if n == 0:
        return
    cdef floating* p0 = &p[0]
    cdef const floating* g0 = &grad[0]
    cdef floating* b0 = &buf[0]
    for task in prange(ceil_div(n, BLOCK), nogil=True, num_threads=num_threads,
                       schedule="static"):
        start = task * BLOCK
        length = n - start if n - start < BLOCK else BLOCK
        if floating is float:
            minidl_sgd_f(p0 + start, g0 + start, b0 + start, length, lr_t, momentum_t,
                         scale_t, decay_t, nesterov, first)
        else:
            minidl_sgd_d(p0 + start, g0 + start, b0 + start, length, lr_t, momentum_t,
                         scale_t, decay_t, nesterov, first)

"""ReLU kernels: one pass over memory each way, split over OpenMP threads.

    forward   y  = 0 if x < 0 else x        (a NaN stays NaN, -0.0 stays -0.0, as in PyTorch)
    backward  dx = 0 if y <= 0 else dy      (from the output, like PyTorch's threshold_backward:
                                             the subgradient at 0 is 0; a NaN passes dy on)
    add       y  = a + b, or relu(a + b)    (a residual connection's sum and the ReLU after it)

These kernels trust their inputs (checked by ``minidl.functional.activation``): flat
C-contiguous arrays of equal length, written into caller-allocated arrays (OUT). The inner loops
are C, in ``_activation.h``. Indices are ``Py_ssize_t``, bounded by the arrays' length;
``num_threads`` is an ``int`` from 1 to 1024.
"""
from cython.parallel cimport prange

from ._common cimport build_facts, ceil_div, floating

cdef extern from "_activation.h" nogil:
    void minidl_relu_f(const float* x, float* y, Py_ssize_t n)
    void minidl_relu_d(const double* x, double* y, Py_ssize_t n)
    void minidl_relu_grad_f(const float* dy, const float* y, float* dx, Py_ssize_t n)
    void minidl_relu_grad_d(const double* dy, const double* y, double* dx, Py_ssize_t n)
    void minidl_add_f(const float* a, const float* b, float* y, Py_ssize_t n)
    void minidl_add_d(const double* a, const double* b, double* y, Py_ssize_t n)
    void minidl_add_relu_f(const float* a, const float* b, float* y, Py_ssize_t n)
    void minidl_add_relu_d(const double* a, const double* b, double* y, Py_ssize_t n)

#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()

cdef enum:
    BLOCK = 1 << 14  # elements per task (64 KiB of float32)


def relu_forward(const floating[::1] x, floating[::1] out, int num_threads=1):
    """``out = max(x, 0)`` elementwise (NaN propagates).

    Args:
        x (IN): flat, float32 or float64.
        out (OUT): the same length and dtype; fully overwritten (may not overlap ``x`` unless
            it is ``x`` itself).
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): ``x`` and ``out`` C-contiguous, the same
    dtype and length; ``out`` is ``x`` itself or shares no memory with it (a shifted overlap
    would read elements already written); ``num_threads >= 1``.
    """
    cdef Py_ssize_t n = x.shape[0], task, start, length
    if n == 0:
        return
    for task in prange(ceil_div(n, BLOCK), nogil=True, num_threads=num_threads,
                       schedule="static"):
        start = task * BLOCK
        length = n - start if n - start < BLOCK else BLOCK
        if floating is float:
            minidl_relu_f(&x[start], &out[start], length)
        else:
            minidl_relu_d(&x[start], &out[start], length)


def relu_backward(const floating[::1] dout, const floating[::1] y, floating[::1] dx,
                  int num_threads=1):
    """``dx = 0 where y <= 0 else dout`` elementwise, for ``y`` the forward output.

    Args:
        dout (IN), y (IN): flat, float32 or float64, the same length.
        dx (OUT): the same length and dtype; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).

    Preconditions (checked by the caller, not here): the three arrays C-contiguous, the same
    dtype and length; ``dx`` is ``dout`` or ``y`` itself or shares no memory with them;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t n = y.shape[0], task, start, length
    if n == 0:
        return
    for task in prange(ceil_div(n, BLOCK), nogil=True, num_threads=num_threads,
                       schedule="static"):
        start = task * BLOCK
        length = n - start if n - start < BLOCK else BLOCK
        if floating is float:
            minidl_relu_grad_f(&dout[start], &y[start], &dx[start], length)
        else:
            minidl_relu_grad_d(&dout[start], &y[start], &dx[start], length)


def add(const floating[::1] a, const floating[::1] b, floating[::1] out, int num_threads=1,
        bint relu=False):
    """``out = a + b`` elementwise, or ``max(a + b, 0)`` (as :func:`relu_forward`) with
    ``relu``.

    Args:
        a (IN), b (IN): flat, float32 or float64, the same length.
        out (OUT): the same length and dtype; fully overwritten.
        num_threads: OpenMP threads (ignored in a serial build).
        relu: apply ReLU to the sum in the same pass.

    Preconditions (checked by the caller, not here): the three arrays C-contiguous, the same
    dtype and length; ``out`` is ``a`` or ``b`` itself or shares no memory with them;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t n = a.shape[0], task, start, length
    if n == 0:
        return
    for task in prange(ceil_div(n, BLOCK), nogil=True, num_threads=num_threads,
                       schedule="static"):
        start = task * BLOCK
        length = n - start if n - start < BLOCK else BLOCK
        if floating is float:
            if relu:
                minidl_add_relu_f(&a[start], &b[start], &out[start], length)
            else:
                minidl_add_f(&a[start], &b[start], &out[start], length)
        elif relu:
            minidl_add_relu_d(&a[start], &b[start], &out[start], length)
        else:
            minidl_add_d(&a[start], &b[start], &out[start], length)

# The block transpose of _transpose.h, shared by _conv.pyx, _winograd.pyx and _gemm.pyx
# (cimported; nothing here is compiled on its own). A module that cimports it calls
# transpose_init() once at import: each module has its own copy of the header's dispatch
# pointer.

from ._common cimport floating

cdef extern from "_transpose.h" nogil:
    void minidl_transpose_init()
    void minidl_transpose_f(const float* src, Py_ssize_t ss, float* dst, Py_ssize_t ds,
                            Py_ssize_t rows, Py_ssize_t cols, const float* bias)
    void minidl_transpose_d(const double* src, Py_ssize_t ss, double* dst, Py_ssize_t ds,
                            Py_ssize_t rows, Py_ssize_t cols, const double* bias)


cdef inline void transpose_init() noexcept nogil:
    """Pick the AVX2 transpose on CPUs that have it."""
    minidl_transpose_init()


cdef inline void transpose(const floating* src, Py_ssize_t ss, floating* dst, Py_ssize_t ds,
                           Py_ssize_t rows, Py_ssize_t cols, const floating* bias) noexcept nogil:
    """``dst[c*ds + r] = src[r*ss + c] (+ bias[c])`` for ``r < rows``, ``c < cols`` (see
    ``_transpose.h``: 8x8 blocks in AVX2 registers for float32; ``bias`` may be NULL)."""
    if floating is float:
        minidl_transpose_f(src, ss, dst, ds, rows, cols, bias)
    else:
        minidl_transpose_d(src, ss, dst, ds, rows, cols, bias)

"""Per-channel normalization kernels (shared by BatchNorm and, later, Layer/Group/InstanceNorm).

Every kernel sees its input as a C-contiguous 3-D array ``x`` of shape ``(A, C, B)`` and computes
one statistic per *channel* ``c`` over the ``A * B`` values ``x[:, c, :]``:

=============  ======================  ===========================================
norm           view of the input       channels
=============  ======================  ===========================================
BatchNorm      (N, C, H*W)             C
InstanceNorm   (1, N*C, H*W)           N*C
GroupNorm      (1, N*G, C/G*H*W)       N*G
LayerNorm      (1, N, C*H*W)           N
=============  ======================  ===========================================

All statistics and per-channel coefficients are float64; data is float32 or float64 (fused type).
The kernels trust their inputs (shapes, contiguity, dtypes are checked by ``minidl.functional``),
release the GIL and run channels (or rows ``(a, c)``) in parallel with OpenMP when it was compiled
in. The inner loops are C, in ``_batchnorm.h``.
Arguments are marked IN (read) or OUT (written).
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

from ._common cimport build_facts, floating

# A channel whose mean lies further than sqrt(CANCEL_RATIO) standard deviations from its first
# value gets a second pass centered on the first-pass mean: the shifted one-pass formula loses
# about log10(m^2 / var) digits. (A value is at most sqrt(n - 1) standard deviations from the
# mean, so this needs channels of more than CANCEL_RATIO values.)
cdef double CANCEL_RATIO = 1e6


cdef extern from "_batchnorm.h" nogil:
    void minidl_shifted_sums_f(const float* x, Py_ssize_t n, double k, double* s1, double* s2)
    void minidl_shifted_sums_d(const double* x, Py_ssize_t n, double k, double* s1, double* s2)
    void minidl_product_sums_f(const float* dy, const float* x, Py_ssize_t n, double mean,
                               double* s_dy, double* s_dyx)
    void minidl_product_sums_d(const double* dy, const double* x, Py_ssize_t n, double mean,
                               double* s_dy, double* s_dyx)
    void minidl_affine_f(const float* x, float* out, Py_ssize_t n, double mean, double scale,
                         double shift)
    void minidl_affine_d(const double* x, double* out, Py_ssize_t n, double mean, double scale,
                         double shift)
    void minidl_norm_dx_f(const float* dy, const float* x, float* dx, Py_ssize_t n, double mean,
                          double k, double mean_dy, double proj)
    void minidl_norm_dx_d(const double* dy, const double* x, double* dx, Py_ssize_t n,
                          double mean, double k, double mean_dy, double proj)

#: What this extension was compiled with (read by ``minidl.show_config()``).
BUILD = build_facts()


cdef inline void _shifted_sums(const floating* x, Py_ssize_t n, double k,
                               double* s1, double* s2) noexcept nogil:
    """s1 += sum(x - k), s2 += sum((x - k)^2) over n contiguous values (vectorized C)."""
    if floating is float:
        minidl_shifted_sums_f(x, n, k, s1, s2)
    else:
        minidl_shifted_sums_d(x, n, k, s1, s2)


cdef inline void _product_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                               double* s_dy, double* s_dyx) noexcept nogil:
    """s_dy += sum(dy), s_dyx += sum(dy * (x - mean)) over n contiguous values."""
    if floating is float:
        minidl_product_sums_f(dy, x, n, mean, s_dy, s_dyx)
    else:
        minidl_product_sums_d(dy, x, n, mean, s_dy, s_dyx)


cdef inline void _affine(const floating* x, floating* out, Py_ssize_t n, double mean,
                         double scale, double shift) noexcept nogil:
    """out = (x - mean) * scale + shift over n contiguous values, computed in float64."""
    if floating is float:
        minidl_affine_f(x, out, n, mean, scale, shift)
    else:
        minidl_affine_d(x, out, n, mean, scale, shift)


cdef inline void _norm_dx(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                          double mean, double k, double mean_dy, double proj) noexcept nogil:
    """dx = k * (dy - mean_dy - (x - mean) * proj) over n contiguous values, in float64."""
    if floating is float:
        minidl_norm_dx_f(dy, x, dx, n, mean, k, mean_dy, proj)
    else:
        minidl_norm_dx_d(dy, x, dx, n, mean, k, mean_dy, proj)


cdef void _channel_stats_one(const floating* x, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                             Py_ssize_t c, double* mean, double* var) noexcept nogil:
    """Mean and biased variance of channel c (shifted sums; exact second pass if needed)."""
    cdef double k = x[c * B]          # shift: the channel's first value
    cdef double n = <double>(A * B)
    cdef double s1 = 0, s2 = 0, m, v, d
    cdef Py_ssize_t a, i
    cdef const floating* row
    for a in range(A):
        _shifted_sums(x + (a * C + c) * B, B, k, &s1, &s2)
    m = s1 / n
    v = s2 / n - m * m
    if v < 0:
        v = 0
    if m != 0 and m * m > CANCEL_RATIO * v:
        # corrected two-pass algorithm (Chan, Golub & LeVeque 1983, eq. 1.7) around k + m
        k = k + m
        s1 = 0
        s2 = 0
        for a in range(A):
            row = x + (a * C + c) * B
            for i in range(B):
                d = row[i] - k
                s1 += d
                s2 += d * d
        m = s1 / n
        v = s2 / n - m * m
        if v < 0:
            v = 0
    mean[0] = k + m
    var[0] = v


def channel_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                  int num_threads=1):
    """Per-channel mean and biased variance of ``x`` viewed as ``(A, C, B)``.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    OUT mean: (C,) float64, the mean of x[:, c, :].
    OUT var: (C,) float64, the biased variance (divided by A*B).

    Uses shifted sums in float64 (shift = the channel's first value, so a constant channel gets
    exactly its value as mean and 0 as variance) and, when the mean is far from that shift
    compared with the spread, an exact centered second pass (no catastrophic cancellation).

    Preconditions (checked by the caller, not here): ``A, C, B >= 1`` (the first value of each
    channel is read as its shift); ``mean`` and ``var`` of length ``C``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], c
    cdef const floating* xp = &x[0, 0, 0]
    with nogil:
        for c in prange(C, num_threads=num_threads, schedule="static"):
            _channel_stats_one(xp, A, C, B, c, &mean[c], &var[c])


def normalize(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] scale,
              const double[::1] shift, floating[:, :, ::1] out, int num_threads=1):
    """out[a, c, b] = (x[a, c, b] - mean[c]) * scale[c] + shift[c], computed in float64.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    IN  mean, scale, shift: (C,) float64 (BatchNorm: scale = gamma / sqrt(var + eps), shift = beta).
    OUT out: (A, C, B), same dtype as x; may be x itself (in place).

    Subtracting the mean before scaling keeps a constant channel at exactly ``shift``.

    Preconditions (checked by the caller, not here): ``out`` has ``x``'s shape and is ``x``
    itself or shares no memory with it; ``mean``, ``scale``, ``shift`` of length ``C``;
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], r, c
    cdef double m, s, t
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* outp = &out[0, 0, 0]
    with nogil:
        for r in prange(A * C, num_threads=num_threads, schedule="static"):
            c = r % C
            m = mean[c]
            s = scale[c]
            t = shift[c]
            _affine(xp + r * B, outp + r * B, B, m, s, t)


cdef void _normalize_channel(const floating* x, floating* out, Py_ssize_t A, Py_ssize_t C,
                             Py_ssize_t B, Py_ssize_t c, double mean, double scale,
                             double shift) noexcept nogil:
    """out = (x - mean) * scale + shift over channel c (all A rows of B values)."""
    cdef Py_ssize_t a, off
    for a in range(A):
        off = (a * C + c) * B
        _affine(x + off, out + off, B, mean, scale, shift)


def forward_train(const floating[:, :, ::1] x, const double[::1] gamma, const double[::1] beta,
                  double eps, floating[:, :, ::1] out, double[::1] mean, double[::1] var,
                  int num_threads=1):
    """Fused training-mode forward: statistics, then normalization, channel by channel.

    IN  x: (A, C, B) float32/float64, C-contiguous.
    IN  gamma, beta: (C,) float64 (ones and zeros without affine parameters).
    IN  eps: added to the variance.
    OUT out: (A, C, B), x's dtype: gamma * (x - mean) / sqrt(var + eps) + beta.
    OUT mean, var: (C,) float64, the batch mean and biased variance (as :func:`channel_stats`).

    A channel is normalized right after its statistics are computed, while its values are still
    in the core's cache, so x is read from memory once instead of twice.

    Preconditions (checked by the caller, not here): ``A, C, B >= 1``; ``out`` has ``x``'s
    shape and is ``x`` itself or shares no memory with it; ``gamma``, ``beta``, ``mean``,
    ``var`` of length ``C``; ``eps >= 0`` (``var + eps == 0`` gives inf, not a crash);
    ``num_threads >= 1``.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], c
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* outp = &out[0, 0, 0]
    with nogil:
        for c in prange(C, num_threads=num_threads, schedule="static"):
            _channel_stats_one(xp, A, C, B, c, &mean[c], &var[c])
            _normalize_channel(xp, outp, A, C, B, c, mean[c],
                               gamma[c] * (1.0 / sqrt(var[c] + eps)), beta[c])


def backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const double[::1] mean,
             const double[::1] invstd, const double[::1] gamma, bint training,
             floating[:, :, ::1] dx, double[::1] sum_dy, double[::1] sum_dy_xmu,
             int num_threads=1):
    """Fused backward pass, channel by channel: the two reductions, then dx.

    IN  dy, x: (A, C, B) float32/float64, C-contiguous, same dtype.
    IN  mean, invstd: (C,) float64, the statistics the forward pass normalized with
        (invstd = 1 / sqrt(var + eps)).
    IN  gamma: (C,) float64 (ones without affine parameters).
    IN  training: whether mean/invstd were the batch's own statistics (then dx includes the
        paths through them) or constants (running statistics: dx = gamma * invstd * dy).
    OUT dx: (A, C, B), dy's dtype.
    OUT sum_dy: (C,) float64, sum of dy[:, c, :]            (= d loss / d beta).
    OUT sum_dy_xmu: (C,) float64, sum of dy * (x - mean[c])  (times invstd = d loss / d gamma).

    With k = gamma * invstd and m = A * B (Ioffe & Szegedy 2015, section 3):
    dx = k * (dy - sum_dy / m - (x - mean) * invstd^2 * sum_dy_xmu / m).

    Preconditions (checked by the caller, not here): ``dy``, ``x`` and ``dx`` of one shape
    ``(A, C, B)`` with ``A, C, B >= 1``, ``dx`` being ``dy`` or ``x`` itself or sharing no memory
    with them (a channel's sums are complete before its dx is written); ``mean``, ``invstd``,
    ``gamma``, ``sum_dy``, ``sum_dy_xmu`` of length ``C``; ``num_threads >= 1``.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2], a, c, off
    cdef const floating* dyp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef double n = <double>(A * B)
    cdef double s_dy, s_dyx, m, k, md, p
    with nogil:
        for c in prange(C, num_threads=num_threads, schedule="static"):
            s_dy = 0
            s_dyx = 0
            m = mean[c]
            for a in range(A):
                off = (a * C + c) * B
                _product_sums(dyp + off, xp + off, B, m, &s_dy, &s_dyx)
            sum_dy[c] = s_dy
            sum_dy_xmu[c] = s_dyx
            k = gamma[c] * invstd[c]
            md = 0
            p = 0
            if training:
                md = s_dy / n
                p = invstd[c] * invstd[c] * s_dyx / n
            for a in range(A):
                off = (a * C + c) * B
                _norm_dx(dyp + off, xp + off, dxp + off, B, m, k, md, p)

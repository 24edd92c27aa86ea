"""Cases and comparisons shared by the convolution tests (dispatcher, layer and one module per
algorithm: test_conv.py, test_conv_direct.py, test_conv_im2col.py, test_conv_winograd.py)."""
import numpy as np
import pytest

from minidl.reference import conv as ref

DTYPES = [np.float32, np.float64]
METHODS = ["direct", "im2col", "unfold", "winograd"]


def _supports(method, kernel, stride):
    """Whether ``method`` computes a convolution with this kernel size and stride."""
    stride_one = stride in (1, (1, 1))
    if method == "direct":
        return stride_one
    if method == "winograd":  # (the 5x5 cases' paddings are at most 4)
        return stride_one and kernel in (3, (3, 3), 5, (5, 5))
    return True


def _with_methods(cases, geometry_of, methods=METHODS, ids=None):
    """``(case, method)`` params for every method that supports the case;
    ``geometry_of(case)`` gives its ``(kernel_size, stride)``."""
    params = []
    for i, case in enumerate(cases):
        for method in methods:
            if not _supports(method, *geometry_of(case)):
                continue
            case_id = ids[i] if ids else str(i)
            params.append(pytest.param(case, method, id=f"{case_id}-{method}"))
    return params

# (N, C_in, H, W, kernel, stride, padding): odd and non-square sizes, strides that do not divide
# the input, padding larger than the kernel, 1x1 kernels and kernels as large as the input.
GEOMETRIES = [
    (2, 3, 7, 7, (3, 3), (1, 1), (1, 1)),
    (2, 3, 8, 6, (3, 3), (2, 2), (1, 1)),
    (1, 2, 9, 7, (2, 3), (2, 1), (0, 2)),
    (3, 1, 5, 5, (5, 5), (1, 1), (0, 0)),
    (2, 2, 4, 3, (1, 1), (1, 1), (0, 0)),
    (2, 3, 11, 10, (4, 3), (3, 2), (1, 0)),
    (1, 2, 3, 3, (2, 2), (1, 1), (3, 3)),
    (2, 2, 2, 1, (3, 3), (1, 2), (1, 1)),
    (2, 4, 6, 13, (1, 5), (1, 3), (0, 2)),
    (2, 3, 6, 7, (5, 5), (1, 1), (2, 2)),
    (2, 2, 4, 3, (5, 5), (1, 1), (4, 3)),
]
GEOMETRY_IDS = [f"x{g[:4]}-k{g[4]}-s{g[5]}-p{g[6]}".replace(" ", "") for g in GEOMETRIES]


def out_size(h, w, kernel, stride, padding):
    return (ref.output_size(h, kernel[0], stride[0], padding[0]),
            ref.output_size(w, kernel[1], stride[1], padding[1]))


def tolerances(dtype):
    """(rtol, atol scale) for comparing two summation orders in ``dtype``."""
    return (2e-5, 1e-5) if dtype == np.float32 else (1e-12, 1e-12)


def assert_close(actual, expected, dtype, what=""):
    rtol, scale = tolerances(dtype)
    atol = scale * max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def non_contiguous(array):
    """A copy of ``array`` with the same values but exotic strides (transposed, then sliced)."""
    n, c, h, w = array.shape
    base = np.zeros((n, 2 * c, w, h), dtype=array.dtype)
    base[:, ::2] = array.transpose(0, 1, 3, 2)
    view = base[:, ::2].transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous and np.array_equal(view, array)
    return view


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


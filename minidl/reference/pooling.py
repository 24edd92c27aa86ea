"""Pure-NumPy reference of 2-D max pooling: the readable spec and the test oracle.

Definition (``torch.nn.MaxPool2d`` without padding or dilation, floor mode), for ``x`` of shape
``(N, C, H, W)``, window ``(kH, kW)`` and stride ``(sH, sW)``::

    out[n, c, oh, ow] = max over 0 <= i < kH, 0 <= j < kW of x[n, c, oh*sH + i, ow*sW + j]

    OH = (H - kH) // sH + 1,   OW = (W - kW) // sW + 1

``argmax[n, c, oh, ow]`` is the flat index ``h*W + w`` of the maximum inside its ``(H, W)``
plane; ties go to the first maximum in row-major window order (``i`` then ``j``), as in PyTorch.
The backward pass sends ``dout[n, c, oh, ow]`` to that element; overlapping windows add up.
Nothing here validates its inputs; ``kernel_size`` and ``stride`` are pairs of ints. NaN inputs
are outside this reference's scope.
"""
import numpy as np

__all__ = ["max_pool2d_forward", "max_pool2d_backward"]


def _windows(x, kernel_size, stride):
    """Stack the kernel taps: ``(kH*kW, N, C, OH, OW)``, tap ``i*kW + j`` at index ``i*kW + j``."""
    kh, kw = kernel_size
    sh, sw = stride
    oh = (x.shape[2] - kh) // sh + 1
    ow = (x.shape[3] - kw) // sw + 1
    taps = [
        x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps)


def max_pool2d_forward(x, kernel_size, stride):
    """Max pooling by its definition.

    Args:
        x (np.ndarray): ``(N, C, H, W)``.
        kernel_size, stride: pairs ``(kH, kW)``, ``(sH, sW)``.
    Returns:
        (out, argmax): ``out`` of shape ``(N, C, OH, OW)`` in the dtype of ``x``; ``argmax``
        int64 of the same shape, flat indices into each ``(H, W)`` plane.
    """
    kw = kernel_size[1]
    sh, sw = stride
    windows = _windows(x, kernel_size, stride)
    tap = np.argmax(windows, axis=0)  # np.argmax returns the first maximum
    out = np.take_along_axis(windows, tap[None], axis=0)[0]
    _, _, oh, ow = out.shape
    row = np.arange(oh).reshape(oh, 1) * sh + tap // kw
    col = np.arange(ow).reshape(1, ow) * sw + tap % kw
    argmax = (row * x.shape[3] + col).astype(np.int64)
    return out, argmax


def max_pool2d_backward(dout, argmax, x_shape):
    """Scatter ``dout`` to the winning inputs recorded in ``argmax``.

    Args:
        dout (np.ndarray): ``(N, C, OH, OW)``.
        argmax (np.ndarray): int64 ``(N, C, OH, OW)`` from :func:`max_pool2d_forward`.
        x_shape (tuple): ``(N, C, H, W)``.
    Returns:
        np.ndarray: ``dx`` of shape ``x_shape`` in the dtype of ``dout``.
    """
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dout.dtype)
    planes = np.arange(n * c).reshape(n * c, 1)
    # np.add.at adds repeated (plane, index) pairs instead of keeping only the last one
    np.add.at(dx, (planes, argmax.reshape(n * c, -1)), dout.reshape(n * c, -1))
    return dx.reshape(x_shape)

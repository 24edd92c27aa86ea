"""Fully connected (dense) layer as a stateless forward/backward pair.

out = x @ weight.T + bias, with ``weight`` in PyTorch's ``(out_features, in_features)`` layout.
The matrix products run on minidl's OpenMP team (:func:`minidl._blas.matmul`, which reads the
transposes through strides, without copies).

Under ``with minidl.backend("reference"):`` the validated arguments go instead to
:mod:`minidl.reference.functional.linear`, and a cache that it made sends the backward pass
there too (the ``if`` statements marked "reference backend").
"""
import numpy as np

from .. import _blas
from .._backend import get_backend
from .._checks import check_bool, check_float_array, check_grad, check_input
from ..reference.functional import linear as reference

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, weight, bias=None, layer="linear", relu=False):
    """Affine map of a batch of vectors.

    Args:
        x (np.ndarray): ``(N, in_features)``, float32 or float64.
        weight (np.ndarray): ``(out_features, in_features)``, cast to x's dtype if it differs.
        bias (np.ndarray or None): ``(out_features,)``.
        relu (bool): return ``relu(x W^T + b)`` instead, the ReLU applied by the product's
            own call as each tile of the output is finished (the same bits as
            :func:`~minidl.functional.activation.relu_forward` after this function, without a
            second output array or pass). The cache is the same; for the
            backward pass, take ``dout`` through ``relu_backward`` with ``ReluCache(out)``
            first. Default False.
    Returns:
        (out, cache): ``out`` is ``(N, out_features)`` in x's dtype.
    Raises:
        TypeError: a non-float input, weight or bias; a non-bool ``relu``.
        ValueError: ``weight`` is not 2-D, ``x`` is not ``(N, in_features)``, ``bias`` is not
            ``(out_features,)``.
    """
    check_float_array(layer, weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"{layer}: expected weight of shape (out_features, in_features), got "
                         f"shape {weight.shape}")
    out_features, in_features = weight.shape
    check_input(layer, x, "NF", {"F": in_features})
    if bias is not None:
        check_float_array(layer, bias, "bias")
        if bias.shape != (out_features,):
            raise ValueError(f"{layer}: expected bias of shape ({out_features},), got shape "
                             f"{bias.shape}")
    relu = check_bool(layer, "relu", relu)
    if get_backend() == "reference":  # reference backend: y = x W^T + b in NumPy
        with _blas.one_thread():
            return reference.linear_forward(x, weight, bias, layer, relu)
    w = weight.astype(x.dtype, copy=False)
    # the bias and the ReLU are applied by the product's call, tile by tile (the same bits as
    # ``out += bias`` and relu_forward after it)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    out = _blas.matmul(x, w.T, layer=layer, bias=b, relu=relu)
    return out, (x, w, bias is not None)


def linear_backward(dout, cache, layer="linear", input_grad=True):
    """Gradients of :func:`linear_forward`.

    Args:
        dout (np.ndarray): ``(N, out_features)``, the dtype of the forward output.
        input_grad (bool): compute ``dx`` (default); None is returned for it otherwise.
    Returns:
        (dx, dweight, dbias): ``(N, in_features)``, ``(out_features, in_features)`` and
        ``(out_features,)`` (None without bias), all in x's dtype.
    Raises:
        ValueError/TypeError: ``dout`` does not match the forward output.
    """
    if not (isinstance(cache, tuple) and len(cache) == 3 and all(
            isinstance(a, np.ndarray) for a in cache[:2])):
        raise TypeError(f"{layer}: expected the cache returned by linear_forward, got "
                        f"{type(cache).__name__}")
    x, w, has_bias = cache
    check_grad(layer, dout, (x.shape[0], w.shape[0]), x.dtype)
    if isinstance(cache, reference.LinearCache):  # reference backend: made by its forward
        with _blas.one_thread():
            return reference.linear_backward(dout, cache, layer, input_grad)
    dx = _blas.matmul(dout, w, layer=layer) if input_grad else None
    dweight = _blas.matmul(dout.T, x, layer=layer)
    dbias = dout.sum(axis=0) if has_bias else None
    return dx, dweight, dbias

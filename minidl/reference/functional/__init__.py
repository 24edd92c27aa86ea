"""The NumPy references of :mod:`minidl.functional`: same functions, same signatures, same
results (up to rounding), written as the textbook writes them.

Under ``with minidl.backend("reference"):`` every public op of :mod:`minidl.functional` runs the
function of the same name here, after its own input validation (these functions validate
nothing), with NumPy's BLAS on one thread for the matrix products of ``conv2d_*`` and
``linear_*`` (as the compiled ops). Module by module, and what each follows:

* :mod:`.conv` — ``conv2d_forward``/``conv2d_backward``: the convolution sum (Goodfellow,
  Bengio & Courville 2016, "Deep Learning", eqs. 9.8, 9.11 and 9.13).
* :mod:`.normalization` — ``batch_norm_forward``/``batch_norm_backward``: Ioffe & Szegedy
  2015, Algorithm 1 and the backprop equations of section 3; ``layer_norm_*`` (Ba et al. 2016,
  eqs. 3-4), ``group_norm_*`` (Wu & He 2018, eqs. 1-2, section 3.2), ``instance_norm_*``
  (Ulyanov et al. 2016, eq. 2).
* :mod:`.pooling` — ``max_pool2d_forward``/``max_pool2d_backward``: the max over windows
  (the same book, section 9.3), with PyTorch's rule for ties.
  ``avg_pool2d_*`` and ``global_avg_pool2d_*``: window sums over the zero-padded input
  divided by the window's size (the same section; Lin et al. 2014 for the global mean).
* :mod:`.dropout` — ``dropout_forward``/``dropout_backward``: Bernoulli masks (Srivastava et
  al. 2014, section 4), inverted as in PyTorch.
* :mod:`.activation` — ``relu_*`` (Nair & Hinton 2010) and ``softmax_*`` (Bridle 1990).
  (``sigmoid_*`` and ``tanh_*`` have no twin: their compiled versions are already plain NumPy
  formulas, which both backends run.)
* :mod:`.linear` — ``linear_forward``/``linear_backward``: ``y = x W^T + b`` and its chain rule.

Each ``*_forward`` returns ``(out, cache)``; its cache is a small immutable NamedTuple of this
package (``Conv2dCache``, ``BatchNormCache``, ...) with at least ``out_shape`` and ``dtype``,
so ``minidl.functional`` can tell a reference cache from a compiled one and send a backward
pass to the implementation that ran its forward pass.
"""
from .activation import (ReluCache, SoftmaxCache, relu_backward, relu_forward, softmax_backward,
                         softmax_forward)
from .conv import Conv2dCache, conv2d_backward, conv2d_forward
from .linear import LinearCache, linear_backward, linear_forward
from .normalization import (BatchNormCache, SampleNormCache, batch_norm_backward,
                            batch_norm_forward, group_norm_backward, group_norm_forward,
                            instance_norm_backward, instance_norm_forward, layer_norm_backward,
                            layer_norm_forward)
from .pooling import MaxPool2dCache, max_pool2d_backward, max_pool2d_forward
from .pooling import (AvgPool2dCache, avg_pool2d_backward, avg_pool2d_forward,
                      global_avg_pool2d_backward, global_avg_pool2d_forward)
from .dropout import DropoutCache, dropout_backward, dropout_forward

__all__ = [
    "relu_forward", "relu_backward", "softmax_forward", "softmax_backward",
    "conv2d_forward", "conv2d_backward", "linear_forward", "linear_backward",
    "batch_norm_forward", "batch_norm_backward", "max_pool2d_forward", "max_pool2d_backward",
    "ReluCache", "SoftmaxCache", "Conv2dCache", "LinearCache", "BatchNormCache",
    "MaxPool2dCache", "CACHE_TYPES",
    "layer_norm_forward", "layer_norm_backward", "group_norm_forward", "group_norm_backward",
    "instance_norm_forward", "instance_norm_backward", "SampleNormCache",
    "avg_pool2d_forward", "avg_pool2d_backward", "global_avg_pool2d_forward",
    "global_avg_pool2d_backward", "AvgPool2dCache", "dropout_forward", "dropout_backward",
    "DropoutCache",
]

CACHE_TYPES = (ReluCache, SoftmaxCache, Conv2dCache, LinearCache, BatchNormCache, MaxPool2dCache,
               SampleNormCache, AvgPool2dCache, DropoutCache)
"""Every cache type a reference ``*_forward`` returns."""

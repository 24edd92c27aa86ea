"""Stateless forward/backward pairs (CS231n style: ``*_forward`` returns ``(out, cache)``,
``*_backward(dout, cache)`` returns the gradients). Inputs are validated here; the Cython
kernels behind them trust their inputs."""
from .activation import relu_backward, relu_forward, softmax_backward, softmax_forward
from .linear import linear_backward, linear_forward
from .normalization import batch_norm_backward, batch_norm_forward, channel_stats

__all__ = [
    "relu_forward", "relu_backward", "softmax_forward", "softmax_backward",
    "linear_forward", "linear_backward",
    "batch_norm_forward", "batch_norm_backward", "channel_stats",
]

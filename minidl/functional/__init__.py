"""Stateless forward/backward pairs (CS231n style: ``*_forward`` returns ``(out, cache)``,
``*_backward(dout, cache)`` returns the gradients). Inputs are validated here; the Cython
kernels behind them trust their inputs."""
from .activation import (add, relu_backward, relu_forward, sigmoid_backward, sigmoid_forward,
                         softmax_backward, softmax_forward, tanh_backward, tanh_forward)
from .conv import conv2d_backward, conv2d_forward, conv2d_output_size
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .normalization import (batch_norm_backward, batch_norm_forward, batch_norm_grad_sums,
                            batch_norm_input_grad, batch_norm_output, batch_norm_stats, channel_stats,
                            combine_batch_norm_stats, group_norm_backward, group_norm_forward,
                            instance_norm_backward, instance_norm_forward, layer_norm_backward,
                            layer_norm_forward, sync_batch_norm_backward, sync_batch_norm_forward)
from .pooling import max_pool2d_backward, max_pool2d_forward
from .pooling import (avg_pool2d_backward, avg_pool2d_forward, global_avg_pool2d_backward,
                      global_avg_pool2d_forward)

__all__ = [
    "relu_forward", "relu_backward", "softmax_forward", "softmax_backward", "add",
    "conv2d_forward", "conv2d_backward", "conv2d_output_size",
    "linear_forward", "linear_backward",
    "batch_norm_forward", "batch_norm_backward", "batch_norm_output", "channel_stats",
    "max_pool2d_forward", "max_pool2d_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "layer_norm_forward", "layer_norm_backward", "group_norm_forward", "group_norm_backward",
    "instance_norm_forward", "instance_norm_backward",
    "batch_norm_stats", "combine_batch_norm_stats", "batch_norm_grad_sums", "batch_norm_input_grad",
    "sync_batch_norm_forward", "sync_batch_norm_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "global_avg_pool2d_forward", "global_avg_pool2d_backward",
    "dropout_forward", "dropout_backward",
]

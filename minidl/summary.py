"""A table of a model's layers: output shapes, parameters, buffers, FLOPs, memory.

Like Keras' ``model.summary()`` and torchinfo's ``summary``: one forward pass on zeros, recorded
by forward hooks, gives every layer's output shape; the FLOPs of a layer come from the formula
for its type below (or from its own ``flops(input_shape, output_shape)`` method).

FLOP convention: floating-point operations of one forward pass over the whole batch of
``input_shape``, a multiply-add counted as 2 (so a Dense layer costs ``2 * N * in * out``, plus
``N * out`` for the bias); a comparison, an ``exp`` or a division each count 1. BatchNorm is
counted in eval mode, where it is one multiply-add per element with the per-channel scale and
shift folded (``gamma / sqrt(var + eps)`` and ``beta - mean * scale``); so are
PerActivationBatchNorm and an InstanceNorm with running estimates. The norms that compute their
statistics in every pass (LayerNorm, GroupNorm, InstanceNorm without running estimates) count 3
per element for them (an add for the sum, a multiply-add for the sum of squares), 2 to normalize
(``(x - mean) * invstd``) and 2 for the affine step when they have one. Sigmoid counts 4 per
element (``|x|``, exp, add, divide), Tanh 1 (one tanh, counted like an exp).
"""
import math
from dataclasses import dataclass

import numpy as np

from ._snapshot import Snapshot
from .layers.activation import ReLU, Sigmoid, Softmax, Tanh
from .layers.conv import Conv2D
from .layers.dense import Dense
from .layers.dropout import Dropout
from .layers.module import Module
from .layers.normalization import (BatchNorm, GroupNorm, InstanceNorm, LayerNorm,
                                   PerActivationBatchNorm)
from .layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .layers.residual import Identity, Residual
from .layers.shape import Flatten

__all__ = ["summary", "ModelSummary", "SummaryRow", "FLOP_FORMULAS"]


def _conv2d_flops(layer, input_shape, output_shape):
    taps = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    outputs = math.prod(output_shape)
    return 2 * taps * outputs + (outputs if layer.bias is not None else 0)


def _dense_flops(layer, input_shape, output_shape):
    outputs = math.prod(output_shape)
    return 2 * layer.in_features * outputs + (outputs if layer.bias is not None else 0)


def _max_pool_flops(layer, input_shape, output_shape):
    window = layer.kernel_size[0] * layer.kernel_size[1]
    return (window - 1) * math.prod(output_shape)  # comparisons


def _sample_norm_flops(layer, input_shape, output_shape):
    """Statistics (3) and normalization (2) per element, plus 2 for the affine step; an
    InstanceNorm with running estimates is counted as BatchNorm (2, folded)."""
    if getattr(layer, "track_running_stats", False):
        return 2 * math.prod(output_shape)
    affine = getattr(layer, "weight", None) is not None or getattr(layer, "bias", None) is not None
    return (5 + (2 if affine else 0)) * math.prod(output_shape)


def _avg_pool_flops(layer, input_shape, output_shape):
    window = layer.kernel_size[0] * layer.kernel_size[1]
    return window * math.prod(output_shape)  # window - 1 additions and a division per output


def _global_avg_pool_flops(layer, input_shape, output_shape):
    return math.prod(input_shape)  # H*W - 1 additions and a division per output


def _per_element(count):
    def flops(layer, input_shape, output_shape):
        return count * math.prod(output_shape)
    return flops


# Forward FLOPs per layer type: formula(layer, input_shape, output_shape) -> int. A subclass uses
# its nearest base's entry; a layer's own ``flops(input_shape, output_shape)`` method wins.
FLOP_FORMULAS = {
    Conv2D: _conv2d_flops,
    Dense: _dense_flops,
    BatchNorm: _per_element(2),  # eval: x * scale + shift
    ReLU: _per_element(1),  # max(x, 0)
    Softmax: _per_element(5),  # max, subtract, exp, sum, divide
    MaxPool2D: _max_pool_flops,
    Flatten: _per_element(0),
    PerActivationBatchNorm: _per_element(2),  # eval: x * scale + shift, per position
    InstanceNorm: _sample_norm_flops,
    LayerNorm: _sample_norm_flops,
    GroupNorm: _sample_norm_flops,
    Sigmoid: _per_element(4),  # |x|, exp, add, divide
    Tanh: _per_element(1),
    AvgPool2D: _avg_pool_flops,
    GlobalAvgPool2D: _global_avg_pool_flops,
    Dropout: _per_element(0),  # eval: the identity
    Identity: _per_element(0),
    Residual: _per_element(1),  # its own work, the addition (the children have their rows)
}


def _flops(module, input_shape, output_shape):
    """The layer's FLOPs, or None when unknown."""
    own = getattr(module, "flops", None)
    if callable(own):
        return int(own(input_shape, output_shape))
    for cls in type(module).__mro__:
        if cls in FLOP_FORMULAS:
            return int(FLOP_FORMULAS[cls](module, input_shape, output_shape))
    return None


@dataclass
class SummaryRow:
    """One module of the table.

    Attributes:
        name (str): the qualified name (``""`` for the model itself, ``"0"``, ``"1.conv"``, ...).
        type (str): the class name.
        depth (int): nesting level (0 for the model).
        output_shape (tuple or None): None when the module did not run.
        trainable (int): the module's own parameter entries (not its children's).
        buffers (int): the module's own buffer entries (running statistics, counters).
        flops (int or None): forward FLOPs (None: unknown, or a container without a formula).
        output_bytes (int or None): bytes of its output array.
        is_container (bool): the module has children.
        is_view (bool): the output shares memory with the input (Flatten's reshape).
    """

    name: str
    type: str
    depth: int
    output_shape: tuple
    trainable: int
    buffers: int
    flops: int
    output_bytes: int
    is_container: bool
    is_view: bool


class ModelSummary:
    """What :func:`summary` returns; ``str(summary)`` is the table it prints.

    Attributes:
        rows (list of SummaryRow): one per module, depth first.
        input_shape (tuple), dtype (np.dtype): the input used.
        output_shape (tuple): the model's output shape.
        trainable_params (int): entries of all distinct parameters.
        buffer_elements (int): entries of all buffers (non-trainable state).
        total_flops (int): the sum over layers with a known count.
        param_bytes (int), buffer_bytes (int): their memory.
        activation_bytes (int): the sum of the outputs of the layers without children, except
            outputs that are views of the input (no new memory).
        unknown (list of str): layers without children and without a FLOP count.
    """

    def __init__(self, rows, input_shape, dtype, output_shape, model):
        self.rows = rows
        self.input_shape, self.dtype, self.output_shape = input_shape, dtype, output_shape
        params = {id(p): p for p in model.parameters()}.values()
        buffers = {id(b): b for _, b in model.named_buffers() if isinstance(b, np.ndarray)}.values()
        self.trainable_params = sum(p.data.size for p in params)
        self.param_bytes = sum(p.data.nbytes for p in params)
        self.buffer_elements = sum(b.size for b in buffers)
        self.buffer_bytes = sum(b.nbytes for b in buffers)
        self.total_flops = sum(r.flops for r in rows if r.flops is not None)
        self.activation_bytes = sum(r.output_bytes for r in rows if not r.is_container
                                    and not r.is_view and r.output_bytes is not None)
        self.unknown = [r.name or r.type for r in rows if r.flops is None and not r.is_container]

    def __str__(self):
        header = ("Layer (type)", "Output shape", "Params", "Buffers", "FLOPs", "Output bytes")
        table = [header]
        for r in self.rows:
            label = "  " * r.depth + (f"{r.name}: {r.type}" if r.name else r.type)
            empty = r.is_container and r.trainable == 0 and r.buffers == 0
            table.append((
                label,
                "-" if r.output_shape is None else str(r.output_shape),
                "-" if empty else f"{r.trainable:,}",
                "-" if empty else f"{r.buffers:,}",
                "-" if r.flops is None else f"{r.flops:,}",
                "-" if r.output_bytes is None else f"{r.output_bytes:,}",
            ))
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]

        def line(row):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
            return "  ".join(cells)

        rule = "=" * len(line(header))
        lines = [rule, line(header), rule] + [line(row) for row in table[1:]] + [rule]
        lines += [
            f"Input: {self.input_shape} {self.dtype}, one forward pass in eval mode; "
            f"output {self.output_shape}",
            f"Trainable parameters: {self.trainable_params:,} ({_bytes(self.param_bytes)})",
            f"Buffers (non-trainable): {self.buffer_elements:,} ({_bytes(self.buffer_bytes)})",
            f"Forward FLOPs: {self.total_flops:,} ({self.total_flops / 1e9:.3g} GFLOP; "
            "a multiply-add counts 2)",
            f"Layer outputs: {_bytes(self.activation_bytes)} (layers without children; "
            "views of the input not counted)",
        ]
        if self.unknown:
            lines.append(f"No FLOP count (shown as -, not in the total): {', '.join(self.unknown)}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"ModelSummary({len(self.rows)} modules, {self.trainable_params:,} trainable "
                f"parameters, {self.total_flops:,} FLOPs)")


def _bytes(count):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count:,} bytes = {count / size:.2f} {unit}"
    return f"{count:,} bytes"


def summary(model, input_shape, dtype=np.float32, verbose=True):
    """Print and return a table of the model's layers, like Keras' ``model.summary()``.

    One forward pass on zeros of ``input_shape`` in eval mode, recorded by forward hooks, gives
    each module's output shape; afterwards the model's modes, buffers and random generators are
    as they were (what the layers cached for a backward pass is replaced, so do not call it
    between a forward and its backward). Rows come depth first with nested modules indented;
    columns: output shape, the module's own trainable parameter and buffer entries, forward
    FLOPs (see :data:`FLOP_FORMULAS`; a layer may define ``flops(input_shape, output_shape)``;
    unknown layers show ``-``) and the bytes of its output. Totals: trainable parameters,
    buffers, FLOPs, parameter memory.

    Args:
        model (Module): the model.
        input_shape (tuple of int): the input's shape *including the batch axis*, e.g.
            ``(1, 1, 28, 28)`` for one MNIST image (FLOPs and output bytes scale with it).
        dtype: the input's dtype, float32 (default) or float64.
        verbose (bool): print the table (default True).

    Returns:
        ModelSummary: ``str()`` gives the table; attributes give the numbers.

    Raises:
        TypeError: ``model`` is not a Module; ``dtype`` is not float32/float64.
        ValueError: ``input_shape`` is not a tuple of positive integers; the model rejects the
            input (its own error, raised from the forward pass).

    Example:
        >>> minidl.summary(minidl.models.mnist_cnn(), (1, 1, 28, 28))
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: expected a Module, got {type(model).__name__}")
    try:
        shape = tuple(input_shape)
        ok = len(shape) > 0 and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                    and s > 0 for s in shape)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"summary: expected input_shape to be a tuple of positive integers "
                         f"(with the batch axis), got {input_shape!r}")
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"summary: expected dtype float32 or float64, got {dtype}")

    records = {}

    def record(module, inputs, output):
        first = inputs[0] if inputs else None
        is_view = (isinstance(first, np.ndarray) and isinstance(output, np.ndarray)
                   and np.may_share_memory(first, output))
        records[id(module)] = (getattr(first, "shape", None), output, is_view)

    named = list(model.named_modules())
    distinct = {id(m): m for _, m in named}.values()  # a module listed twice gets one hook
    handles = [m.register_forward_hook(record) for m in distinct]
    saved = Snapshot(model)
    try:
        model.eval()
        output = model(np.zeros(shape, dtype))
    finally:
        for handle in handles:
            handle.remove()
        saved.restore()

    rows = []
    for name, module in named:
        in_shape, out, is_view = records.get(id(module), (None, None, False))
        out_shape = tuple(out.shape) if isinstance(out, np.ndarray) else None
        has_children = bool(module._modules)
        flops = None
        if out_shape is not None and in_shape is not None:
            flops = _flops(module, tuple(in_shape), out_shape)  # None for a plain container
        rows.append(SummaryRow(
            name=name, type=type(module).__name__, depth=name.count(".") + 1 if name else 0,
            output_shape=out_shape,
            trainable=sum(p.data.size for p in module._parameters.values() if p is not None),
            buffers=sum(v.size for _, v in module._buffer_items() if isinstance(v, np.ndarray)),
            flops=flops, output_bytes=out.nbytes if isinstance(out, np.ndarray) else None,
            is_container=has_children, is_view=is_view,
        ))
    result = ModelSummary(rows, shape, dtype, getattr(output, "shape", None), model)
    if verbose:
        print(result)
    return result

"""im2col in the weight's order (minidl.functional.conv_unfold): the unfold and fold kernels
against PyTorch's unfold and as each other's adjoint, the layer against PyTorch at batch 1-2,
thread-count independence, the cache checks and the dispatcher's choice. (The shared
convolution tests of test_conv.py and test_fuzz_conv.py run this method too.)"""
import numpy as np
import pytest

import minidl
from conv_helpers import DTYPES, assert_close
from minidl.functional.conv import (UNFOLD_MAX_POSITIONS, UnfoldCache, choose_method,
                                    conv2d_backward, conv2d_forward)
from minidl.layers import Conv2D
from minidl._kernels import _conv as kernel

# (x shape, C_out, kernel, stride, padding): batch 1 and 2, 1x1 to 5x5 kernels, strides 1-3,
# paddings wider than half the kernel, non-square everything, one output position
CASES = [
    ((1, 3, 5, 6), 4, (3, 2), (1, 1), (1, 1)),
    ((2, 5, 7, 7), 6, (5, 5), (2, 2), (2, 2)),
    ((1, 8, 4, 4), 16, (3, 3), (3, 2), (2, 0)),
    ((1, 4, 3, 3), 7, (3, 3), (1, 1), (0, 0)),
    ((2, 6, 6, 5), 3, (1, 1), (2, 2), (0, 1)),
    ((1, 96, 6, 6), 64, (5, 5), (2, 2), (2, 2)),
]
IDS = [f"x{c[0]}-o{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}".replace(" ", "") for c in CASES]


def _output_size(x_shape, kernel, stride, padding):
    return tuple((size + 2 * p - k) // s + 1
                 for size, k, s, p in zip(x_shape[2:], kernel, stride, padding))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unfold_kernel_is_torch_unfold_transposed(case, torch, rng):
    x_shape, _, kernel_size, stride, padding = case
    x = rng.standard_normal(x_shape)
    out_h, out_w = _output_size(x_shape, kernel_size, stride, padding)
    taps = x_shape[1] * kernel_size[0] * kernel_size[1]
    cols = np.full((x_shape[0] * out_h * out_w, taps), np.nan)
    kernel.unfold(x, cols, *kernel_size, *stride, *padding, 2)
    theirs = torch.nn.functional.unfold(torch.tensor(x), kernel_size, padding=padding,
                                        stride=stride)  # (N, C*kH*kW, OH*OW)
    np.testing.assert_array_equal(cols, theirs.transpose(1, 2).reshape(-1, taps).numpy())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fold_kernel_is_the_adjoint_of_unfold(case, rng):
    """<unfold(x), d> = <x, fold(d)>, and fold overwrites whatever dx held."""
    x_shape, _, kernel_size, stride, padding = case
    out_h, out_w = _output_size(x_shape, kernel_size, stride, padding)
    x = rng.standard_normal(x_shape)
    cols = np.empty((x_shape[0] * out_h * out_w, x_shape[1] * kernel_size[0] * kernel_size[1]))
    kernel.unfold(x, cols, *kernel_size, *stride, *padding, 1)
    d = rng.standard_normal(cols.shape)
    dx = np.full(x_shape, np.nan)
    kernel.fold(d, dx, *kernel_size, *stride, *padding, 3)
    np.testing.assert_allclose(np.vdot(cols, d), np.vdot(x, dx), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unfold_layer_matches_torch(case, dtype, torch, rng):
    x_shape, out_channels, kernel_size, stride, padding = case
    layer = Conv2D(x_shape[1], out_channels, kernel_size, stride=stride, padding=padding,
                   dtype=dtype, method="unfold", rng=rng)
    x = rng.standard_normal(x_shape).astype(dtype)
    out = layer(x)
    assert isinstance(layer._cache, UnfoldCache) and layer._cache.method == "unfold"
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.weight.data, requires_grad=True)
    bt = torch.tensor(layer.bias.data, requires_grad=True)
    outt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    outt.backward(torch.tensor(dout))
    for ours, theirs, what in ((out, outt, "out"), (dx, xt.grad, "dx"),
                               (layer.weight.grad, wt.grad, "dweight"),
                               (layer.bias.grad, bt.grad, "dbias")):
        assert ours.dtype == dtype
        assert_close(ours, theirs.detach().numpy(), dtype, what)


def test_unfold_same_bits_for_any_thread_count(rng):
    """Each element is summed by one thread in a fixed order: no dependence on threads."""
    x = rng.standard_normal((2, 64, 6, 6)).astype(np.float32)
    weight = rng.standard_normal((96, 64, 5, 5)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    dout = rng.standard_normal((2, 96, 3, 3)).astype(np.float32)
    results = []
    before = minidl.get_num_threads()
    try:
        for threads in (1, 2, 3):
            minidl.set_num_threads(threads)
            out, cache = conv2d_forward(x, weight, bias, 2, 2, method="unfold")
            results.append((out,) + conv2d_backward(dout, cache))
    finally:
        minidl.set_num_threads(before)
    for other in results[1:]:
        for first, second in zip(results[0], other):
            np.testing.assert_array_equal(first, second)


def test_unfold_cache_that_was_changed_is_refused(rng):
    x = rng.standard_normal((1, 4, 5, 5))
    out, cache = conv2d_forward(x, rng.standard_normal((3, 4, 3, 3)), method="unfold")
    dout = np.ones_like(out)
    with pytest.raises(ValueError, match=r"conv2d.*cols"):
        conv2d_backward(dout, cache._replace(cols=cache.cols[:, :-1]))
    with pytest.raises(ValueError, match=r"conv2d.*weight"):
        conv2d_backward(dout, cache._replace(weight=cache.weight[:2]))
    with pytest.raises(ValueError, match=r"conv2d.*geometry"):
        conv2d_backward(dout, cache._replace(stride=(2, 2)))


def test_auto_picks_unfold_for_few_output_positions(rng):
    def auto(taps, out_size, out_channels, batch, kernel_size=(3, 3), stride=(1, 1)):
        return choose_method("auto", taps, kernel_size=kernel_size, stride=stride,
                             padding=(1, 1), out_size=out_size, out_channels=out_channels,
                             batch=batch)
    assert auto(2400, (3, 3), 512, 1, (5, 5), (2, 2)) == "unfold"
    assert auto(4608, (7, 7), 512, 1) == "unfold"
    edge = int(UNFOLD_MAX_POSITIONS ** 0.5)
    assert auto(2304, (edge, edge), 2 * edge * edge, 1) == "unfold"
    assert auto(2304, (edge + 1, edge + 1), 512, 1) != "unfold"  # too many positions
    assert auto(576, (8, 8), 64, 1) != "unfold"  # a weight no larger than the matrix
    assert auto(576, (4, 4), 32, 1) == "unfold"  # 2 * 16 <= 32
    assert auto(2304, (4, 4), 256, 64) != "unfold"  # a batch: the other methods
    assert auto(2304, (4, 4), 256, None) != "unfold"  # batch unknown
    assert auto(2304, (4, 4), None, 1) != "unfold"  # output channels unknown
    assert auto(9, (3, 3), 64, 1) == "direct"  # few taps: the direct kernels
    _, cache = conv2d_forward(rng.standard_normal((1, 64, 4, 4)),
                              rng.standard_normal((128, 64, 3, 3)), padding=1)
    assert isinstance(cache, UnfoldCache)

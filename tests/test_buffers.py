"""The pool of reusable output arrays: reuse only what nobody refers to."""
import numpy as np

from minidl import _buffers

SHAPE = (64, 1024)  # 256 KiB of float32: pooled


def _address(array):
    return array.__array_interface__["data"][0]


def test_an_array_nobody_holds_is_reused():
    address = _address(_buffers.empty(SHAPE, np.float32))
    again = _buffers.empty(SHAPE, np.float32)
    assert _address(again) == address
    assert again.shape == SHAPE and again.dtype == np.float32 and again.flags.c_contiguous


def test_held_arrays_and_views_are_not_handed_out():
    a = _buffers.empty(SHAPE, np.float32)
    view = _buffers.empty(SHAPE, np.float32)[:1]
    c = _buffers.empty(SHAPE, np.float32)
    assert len({_address(a), _address(view), _address(c)}) == 3
    del a
    assert _address(_buffers.empty(SHAPE, np.float32)) not in {_address(view), _address(c)}


def test_other_shapes_dtypes_and_small_arrays_are_separate():
    a = _buffers.empty(SHAPE, np.float32)
    b = _buffers.empty(SHAPE, np.float64)
    c = _buffers.empty((32, 2048), np.float32)
    assert not np.shares_memory(a, b) and not np.shares_memory(a, c)
    small = _buffers.empty((4,), np.float32)
    assert _buffers.empty((4,), np.float32) is not small


def test_pool_is_bounded_and_can_be_cleared():
    _buffers.clear()
    kept = [_buffers.empty(SHAPE, np.float32) for _ in range(_buffers.MAX_PER_KEY + 5)]
    assert _buffers.pooled_bytes() == _buffers.MAX_PER_KEY * kept[0].nbytes
    _buffers.clear()
    assert _buffers.pooled_bytes() == 0

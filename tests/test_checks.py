"""minidl._checks: the shared validation rules (aliasing, allocation sizes, geometry, numbers,
dtypes) and the fingerprint of arrays kept for a backward pass (issue 10)."""
import math
import re

import numpy as np
import pytest

from minidl import _checks
from minidl._checks import (MAX_SIZE, Fingerprint, check_allocation, check_kept, check_no_overlap,
                            check_number, check_pool_padding, data_address, float_dtype, overlaps,
                            pair, watch_kept)


# ------------------------------------------------------------------------------------ overlap
def test_overlaps_is_exact_for_interleaved_views():
    base = np.zeros((4, 8))
    assert not overlaps(base[:, ::2], base[:, 1::2])  # bounds overlap, elements do not
    assert overlaps(base[:, ::2], base[:, 2::4])
    assert overlaps(base, base[1:2, 3:4])
    assert not overlaps(base, np.zeros(3))
    assert not overlaps(base[:2], base[2:])


def test_overlaps_counts_a_too_hard_case_as_overlapping(monkeypatch):
    base = np.zeros((64, 64))
    a, b = base[::3, ::5], base[1::7, 2::3]
    assert overlaps(a, b) == np.shares_memory(a, b)  # decided exactly within the bound

    def too_hard(*args, **kwargs):
        raise np.exceptions.TooHardError("Exceeded max_work")

    monkeypatch.setattr(np, "shares_memory", too_hard)
    assert overlaps(base[:, ::2], base[:, 1::2])  # undecided: refused, never assumed apart
    assert not overlaps(base[:32], base[32:])  # the bounds test alone decides this one


def test_check_no_overlap_names_the_function_and_both_arguments():
    x = np.zeros((3, 4))
    check_no_overlap("op", "out", np.zeros((3, 4)), input=x, weight=None, bias=3)
    with pytest.raises(ValueError, match=r"^op: out must not overlap input \(they share memory\)"):
        check_no_overlap("op", "out", x.T, input=x)


# ------------------------------------------------------------------------- allocation sizes
def test_check_allocation_refuses_more_than_the_machine_before_allocating(monkeypatch):
    monkeypatch.setitem(_checks._MEMORY, "physical", 1 << 30)
    check_allocation("Layer", "output", (256, 1024, 1024), np.float32)  # exactly 1 GiB
    with pytest.raises(MemoryError, match=r"^Layer: the output of shape \(257, 1024, 1024\) "
                                          r"\(float32\) would need 1\.004 GiB, more than this "
                                          r"machine's 1 GiB of memory"):
        check_allocation("Layer", "output", (257, 1024, 1024), np.float32)


def test_check_allocation_multiplies_in_python_ints():
    with pytest.raises(MemoryError, match="would need"):
        check_allocation("Layer", "weight", (2 ** 40, 2 ** 40, 2 ** 40), np.float64)


def test_check_allocation_without_a_known_memory_size_still_bounds_the_bytes(monkeypatch):
    monkeypatch.setitem(_checks._MEMORY, "physical", None)
    check_allocation("Layer", "output", (1 << 40,), np.float32)
    with pytest.raises(MemoryError, match="what a process can address"):
        check_allocation("Layer", "output", (1 << 62,), np.float32)


# ------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("value, expected", [(3, (3, 3)), ((2, 5), (2, 5)),
                                             (np.int64(4), (4, 4)), ([1, 2], (1, 2)),
                                             (np.array([2, 3]), (2, 3)), (MAX_SIZE, (MAX_SIZE,) * 2)])
def test_pair_accepts_ints_and_pairs_of_ints(value, expected):
    assert pair(value, "kernel_size", "L", minimum=1) == expected
    assert all(type(v) is int for v in pair(value, "kernel_size", "L", minimum=1))


@pytest.mark.parametrize("value", [0, -1, True, (True, 2), 2.0, (2.0, 2), float("nan"), "33", "3",
                                   (1, 2, 3), (1,), None, MAX_SIZE + 1, (1, 2 ** 70), 2 ** 70,
                                   np.float64(2), [[1, 2]], (0, 3), (3, -1), (MAX_SIZE + 1, 1),
                                   (np.int64(2), True)])
def test_pair_refuses_everything_else_with_the_layer_and_value(value):
    with pytest.raises(ValueError, match=re.escape(
            f"L: kernel_size must be an int or a pair of ints from 1 to {MAX_SIZE}, got {value!r}")):
        pair(value, "kernel_size", "L", minimum=1)


def test_pair_returns_a_normalized_pair_unchanged():
    value = (2, 5)
    assert pair(value, "stride", "L", minimum=1) is value  # no new tuple on the hot path
    assert pair(0, "padding", "L") == (0, 0)


# ------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("value, low, high, inclusive", [
    (0.1, 0.0, 1.0, True), (1, 0.0, 1.0, True), (0.0, 0.0, None, True), (1e-5, -math.inf, None,
                                                                         True),
    (np.float32(0.5), 0.0, 1.0, True), (np.array(0.25), 0.0, 1.0, True), (np.int64(3), 0.0, None,
                                                                          True),
])
def test_check_number_accepts_real_numbers_in_range_as_floats(value, low, high, inclusive):
    number = check_number("SGD", "lr", value, low=low, high=high, high_inclusive=inclusive)
    assert type(number) is float and number == float(value)


@pytest.mark.parametrize("value, low, high, inclusive, error, message", [
    (1.0, 0.0, 1.0, False, ValueError, r"expected lr in \[0, 1\), got 1.0"),
    (1.5, 0.0, 1.0, True, ValueError, r"expected lr in \[0, 1\], got 1.5"),
    (-1, 0.0, None, True, ValueError, r"expected lr >= 0, got -1"),
    (math.inf, -math.inf, None, True, ValueError, r"expected lr to be a finite number, got inf"),
    (-math.inf, -math.inf, None, True, ValueError, r"expected lr to be a finite number, got -inf"),
    (math.nan, 0.0, None, True, ValueError, r"expected lr to be a finite number, got nan"),
    (True, 0.0, None, True, TypeError, r"expected lr to be a real number, got True"),
    ("0.1", 0.0, None, True, TypeError, r"expected lr to be a real number, got '0.1'"),
])
def test_check_number_refuses_the_rest_naming_the_owner(value, low, high, inclusive, error,
                                                        message):
    with pytest.raises(error, match=r"^SGD: " + message):
        check_number("SGD", "lr", value, low=low, high=high, high_inclusive=inclusive)


def test_pool_padding_is_at_most_half_the_window_as_in_pytorch():
    assert check_pool_padding((1, 2), (2, 5), "AvgPool2D") == (1, 2)
    with pytest.raises(ValueError, match=r"AvgPool2D: padding must be at most half of "
                                         r"kernel_size \(as in PyTorch\), got padding \(2, 0\)"):
        check_pool_padding((2, 0), (3, 3), "AvgPool2D")


@pytest.mark.parametrize("dtype", [np.float32, "float64", np.dtype(np.float32), float])
def test_float_dtype_accepts_the_two_float_types(dtype):
    assert float_dtype("L", dtype) in (np.float32, np.float64)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "foo", None, bool, object, "f2"])
def test_float_dtype_refuses_other_types(dtype):
    with pytest.raises(TypeError, match=r"^L: dtype must be float32 or float64, got "):
        float_dtype("L", dtype)


@pytest.mark.parametrize("array, hint", [
    (np.zeros(3, np.float16), "convert it with .astype(np.float32)"),
    (np.zeros(3, ">f4"), "non-native byte order: convert it with .astype(np.float32)"),
    (np.zeros(3, ">f8"), "non-native byte order: convert it with .astype(np.float64)"),
    (np.zeros(3, np.int64), "convert it with .astype(np.float32)"),
    (np.zeros(3, bool), "convert it with .astype(np.float32)"),
    (np.zeros(3, object), "got object"),
    (np.zeros(3, complex), "got complex128"),
])
def test_check_float_array_says_what_to_do_with_other_dtypes(array, hint):
    with pytest.raises(TypeError, match=r"^L: expected input dtype float32 or float64") as info:
        _checks.check_float_array("L", array)
    assert hint in str(info.value)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
@pytest.mark.parametrize("kind", ["masked", "matrix"])
def test_check_float_array_refuses_masked_arrays_and_matrices(kind):
    array = (np.ma.array([1.0, 2.0], mask=[0, 1]) if kind == "masked"
             else np.asmatrix(np.zeros((2, 2))))
    with pytest.raises(TypeError, match=r"L: expected input to be a plain numpy.ndarray"):
        _checks.check_float_array("L", array)


def test_check_float_array_accepts_memmaps(tmp_path):
    array = np.memmap(tmp_path / "x.bin", np.float32, "w+", shape=(3,))
    assert _checks.check_float_array("L", array) is array


# ---------------------------------------------------------------------------- fingerprints
@pytest.mark.parametrize("shape", [(5,), (64, 32, 28, 28)])
@pytest.mark.parametrize("modify", [
    lambda x: x.__imul__(2), lambda x: x.__iadd__(1), lambda x: x.fill(0),
    lambda x: np.copyto(x, x[::-1].copy()), lambda x: x.reshape(-1)[::7].__isub__(1),
])
def test_fingerprint_sees_whole_array_and_spread_changes(shape, modify):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fingerprint = Fingerprint(x)
    assert not fingerprint.changed()
    modify(x)
    assert fingerprint.changed()


def test_fingerprint_sees_one_changed_image_or_channel_of_a_batch():
    x = np.random.default_rng(0).standard_normal((64, 32, 28, 28)).astype(np.float32)
    for part in (x[17], x[:, 5], x[:, :, 3]):
        fingerprint = Fingerprint(x)
        part *= 3  # a 1/64, 1/32 or 1/28 of the elements (the sample misses it with p < 2e-4)
        assert fingerprint.changed()


def test_fingerprint_is_exact_for_small_arrays_and_nan_safe():
    w = np.full((3, 4), np.nan, np.float32)
    fingerprint = Fingerprint(w)
    assert not fingerprint.changed()  # NaN compares by bits, not by ==
    w[2, 3] = 1.0
    assert fingerprint.changed()


def test_fingerprint_sees_a_resize_and_works_on_non_contiguous_arrays():
    x = np.arange(24.0).reshape(4, 6)
    view = x[:, ::2].T
    fingerprint = Fingerprint(view)
    assert not fingerprint.changed()
    x[1, 2] = -1
    assert fingerprint.changed()
    y = np.zeros(8)
    fingerprint = Fingerprint(y)
    y.resize(4, refcheck=False)
    assert fingerprint.changed()


def test_data_address_is_the_array_interface_address():
    x = np.zeros((4, 6), np.float32)
    for array in (x, x[1:, 2:], x.T, x[::2, ::-1]):
        assert data_address(array) == array.__array_interface__["data"][0]
    with pytest.raises(TypeError):
        data_address([1.0])


def test_watch_kept_watches_only_arrays_the_cache_refers_to():
    x, w = np.zeros((4, 3)), np.ones((2, 3))
    watched = watch_kept((x, w.copy(), True), input=x, weight=w, bias=None)
    assert [name for name, _ in watched] == ["input"]
    assert watch_kept("not a tuple", input=x) == ()
    check_kept("Dense", watched)
    w *= 2  # a copy was kept: no error
    check_kept("Dense", watched)
    x[0, 0] = 5
    with pytest.raises(RuntimeError, match=r"^Dense: the input of the last forward pass was "
                                           r"modified in place before backward"):
        check_kept("Dense", watched)

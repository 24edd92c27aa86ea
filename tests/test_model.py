"""minidl.model.Sequential: gradients through every layer kind, construction and indexing errors,
the empty model."""
import numpy as np
import pytest

from minidl.layers.activation import ReLU, Softmax
from minidl.layers.dense import Dense
from minidl.layers.normalization import BatchNorm
from minidl.layers.shape import Flatten
from minidl.model import Sequential

from helpers import check_module_gradients


def test_sequential_gradients_through_all_layer_kinds(rng):
    model = Sequential(Flatten(), Dense(12, 6, rng=rng), BatchNorm(6), ReLU(), Dense(6, 4, rng=rng),
                       Softmax()).astype(np.float64)
    x = rng.standard_normal((5, 3, 2, 2))
    check_module_gradients(model, x, rng)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential: argument 1 is a int"):
        Sequential(ReLU(), 3)


def test_sequential_indexing_errors_name_the_model():
    model = Sequential(ReLU(), Flatten())
    assert isinstance(model[-1], Flatten) and len(model[:1]) == 1
    with pytest.raises(IndexError, match="^Sequential: index 3 is out of range for 2 layers"):
        model[3]
    with pytest.raises(TypeError, match="^Sequential: expected an int or a slice index, got str"):
        model["0"]


def test_an_empty_sequential_is_the_identity_both_ways(rng):
    model = Sequential()
    x = rng.standard_normal((2, 3))
    assert model(x) is x
    assert model.backward(x) is x
    assert model.backward(x, input_grad=False) is None

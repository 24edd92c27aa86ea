"""minidl._random: the global generator behind initialization and shuffling."""
import numpy as np
import pytest

import minidl
from minidl import _random, layers


@pytest.fixture(autouse=True)
def keep_global_generator(monkeypatch):
    """Every test here may reseed; the suite's global generator is restored afterwards."""
    monkeypatch.setitem(_random._state, "rng", _random._state["rng"])


def test_manual_seed_returns_the_new_global_generator():
    rng = minidl.manual_seed(5)
    assert isinstance(rng, np.random.Generator)
    assert _random.get_rng() is rng


def test_the_same_seed_gives_the_same_initialization():
    minidl.manual_seed(3)
    first = layers.Conv2D(2, 4, kernel_size=3).weight.data.copy()
    minidl.manual_seed(3)
    again = layers.Conv2D(2, 4, kernel_size=3).weight.data
    minidl.manual_seed(4)
    other = layers.Conv2D(2, 4, kernel_size=3).weight.data
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_get_rng_passes_a_generator_through_and_seeds_from_an_int():
    mine = np.random.default_rng(9)
    assert _random.get_rng(mine) is mine
    from_int = _random.get_rng(9)
    assert from_int is not _random.get_rng()
    assert from_int.integers(1 << 30) == np.random.default_rng(9).integers(1 << 30)


def test_an_explicit_rng_leaves_the_global_generator_alone():
    before = _random.get_rng().bit_generator.state
    layers.Dense(3, 2, rng=np.random.default_rng(0))
    assert _random.get_rng().bit_generator.state == before

"""minidl._random: the global generator (manual_seed) and the rng arguments of layers."""
import numpy as np
import pytest

import minidl
from minidl import _random, layers
from minidl._random import get_rng


@pytest.fixture(autouse=True)
def keep_global_generator(monkeypatch):
    """Every test here may reseed; the suite's global generator is restored afterwards."""
    monkeypatch.setitem(_random._state, "rng", _random._state["rng"])


def test_manual_seed_makes_initialization_reproducible():
    minidl.manual_seed(3)
    a = minidl.layers.Dense(4, 2).weight.data
    minidl.manual_seed(np.int64(3))
    np.testing.assert_array_equal(minidl.layers.Dense(4, 2).weight.data, a)


@pytest.mark.parametrize("seed, error", [("a", TypeError), (1.5, TypeError), (True, TypeError),
                                         (None, TypeError), (-1, ValueError)])
def test_manual_seed_refuses_what_is_not_an_int_seed(seed, error):
    with pytest.raises(error, match=f"^minidl.manual_seed: expected seed to be an int >= 0, "
                                    f"got {seed!r}"):
        minidl.manual_seed(seed)


def test_get_rng_takes_generators_and_seeds_and_names_anything_else():
    generator = np.random.default_rng(0)
    assert get_rng(generator) is generator
    assert get_rng(5).integers(100) == np.random.default_rng(5).integers(100)
    assert get_rng(np.random.SeedSequence(5)).integers(100) == \
        np.random.default_rng(np.random.SeedSequence(5)).integers(100)
    for bad, error in (("seed", TypeError), (2.0, TypeError), (False, TypeError),
                       (-3, ValueError), ([1, -2], ValueError)):
        with pytest.raises(error, match="^rng: expected a numpy Generator or an int seed >= 0"):
            get_rng(bad)


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


def test_an_explicit_rng_leaves_the_global_generator_alone():
    before = _random.get_rng().bit_generator.state
    layers.Dense(3, 2, rng=np.random.default_rng(0))
    assert _random.get_rng().bit_generator.state == before

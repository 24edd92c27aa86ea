"""minidl._random: the global generator (manual_seed) and the rng arguments of layers."""
import numpy as np
import pytest

import minidl
from minidl._random import get_rng


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

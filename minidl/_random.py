"""The global random generator used for parameter initialization and shuffling."""
import numpy as np

_state = {"rng": np.random.default_rng()}


def _seed(value, owner, name):
    """``value`` as an int >= 0, or a TypeError/ValueError naming ``owner`` and ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: expected {name} to be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{owner}: expected {name} to be an int >= 0, got {value!r}")
    return int(value)


def manual_seed(seed):
    """Seed minidl's global generator (like ``torch.manual_seed``) and return it.

    Args:
        seed (int): any non-negative integer.
    Returns:
        np.random.Generator: the new global generator.
    Raises:
        TypeError: ``seed`` is not an int. ValueError: ``seed`` is negative.
    """
    _state["rng"] = np.random.default_rng(_seed(seed, "minidl.manual_seed", "seed"))
    return _state["rng"]


def get_rng(rng=None):
    """Return ``rng`` if given (a Generator, or a seed for one: an int >= 0, a SeedSequence or
    anything else ``np.random.default_rng`` takes), else the global generator.

    Raises:
        TypeError: ``rng`` is none of these (a bool, a float, a string...).
        ValueError: a negative seed.
    """
    if rng is None:
        return _state["rng"]
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (bool, np.bool_, float, str, bytes)):
        raise TypeError(f"rng: expected a numpy Generator or an int seed >= 0, got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as error:
        raise type(error)(f"rng: expected a numpy Generator or an int seed >= 0, got {rng!r} "
                          f"({error})") from None

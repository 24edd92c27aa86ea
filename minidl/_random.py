"""The global random generator used for parameter initialization and shuffling."""
import numpy as np

_state = {"rng": np.random.default_rng()}


def manual_seed(seed):
    """Seed minidl's global generator (like ``torch.manual_seed``) and return it.

    Args:
        seed (int): any non-negative integer.
    Returns:
        np.random.Generator: the new global generator.
    """
    _state["rng"] = np.random.default_rng(seed)
    return _state["rng"]


def get_rng(rng=None):
    """Return ``rng`` if given (a Generator or an int seed), else the global generator."""
    if rng is None:
        return _state["rng"]
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)

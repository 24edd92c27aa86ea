"""Process-wide settings: how many threads the Cython kernels use."""
import os

_state = {"num_threads": None}


def _default_num_threads():
    env = os.environ.get("MINIDL_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Set the number of OpenMP threads minidl's kernels use (like ``torch.set_num_threads``).

    Args:
        n (int): >= 1. The default is ``$MINIDL_NUM_THREADS`` or the CPUs this process may use.
            NumPy's BLAS (used for matrix products) has its own setting: ``OMP_NUM_THREADS`` /
            ``OPENBLAS_NUM_THREADS`` before start-up.
    Raises:
        ValueError: ``n`` is not an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected an integer >= 1, got {n!r}")
    _state["num_threads"] = n


def get_num_threads():
    """The number of threads minidl's kernels use."""
    if _state["num_threads"] is None:
        _state["num_threads"] = _default_num_threads()
    return _state["num_threads"]


# Below this many elements a kernel runs on one thread: starting and joining an OpenMP team
# costs more than it saves (and far more when other processes compete for the cores).
PARALLEL_MIN_ELEMENTS = 1 << 16


def threads_for(size):
    """OpenMP threads for a kernel call that touches ``size`` elements.

    Returns 1 below ``PARALLEL_MIN_ELEMENTS``, else :func:`get_num_threads`.
    """
    return 1 if size < PARALLEL_MIN_ELEMENTS else get_num_threads()

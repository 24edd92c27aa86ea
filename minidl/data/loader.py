"""DataLoader: mini-batches of NumPy arrays, cut from a dataset's arrays without per-sample loops."""
import numpy as np

from .._random import get_rng


def _dataset_arrays(dataset):
    """Return ``dataset.arrays()`` as a tuple of ndarrays after checking the protocol."""
    arrays_fn = getattr(dataset, "arrays", None)
    if not callable(arrays_fn):
        raise TypeError(f"DataLoader: the dataset must have an arrays() method returning a tuple of "
                        f"equal-length arrays (wrap NumPy arrays in ArrayDataset(x, y)); got "
                        f"{type(dataset).__name__}")
    arrays = tuple(arrays_fn())
    if not arrays or not all(isinstance(a, np.ndarray) and a.ndim >= 1 for a in arrays):
        raise ValueError("DataLoader: dataset.arrays() must return a non-empty tuple of NumPy arrays "
                         "with at least one dimension")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"DataLoader: dataset arrays differ in length: {[len(a) for a in arrays]}")
    return arrays


class DataLoader:
    """Iterate over a dataset in mini-batches of NumPy arrays.

    Every batch is a tuple with one array per dataset array, e.g. ``(x, y)`` for an image
    dataset: ``x`` float32 ``(B, C, H, W)`` and ``y`` int64 ``(B,)``. Batches are cut by slicing
    (``shuffle=False``) or fancy indexing (``shuffle=True``) along axis 0 -- no per-sample Python
    loop -- and are always fresh copies, so modifying a batch never changes the dataset.

    Shuffling draws a new permutation at every ``iter()`` (every epoch) from one Generator:
    ``np.random.default_rng(seed)`` created once in the constructor when ``seed`` is given (two
    loaders with the same seed give the same sequence of epochs), otherwise minidl's global
    generator (``minidl.manual_seed``), looked up at each ``iter()``.

    Args:
        dataset: an object with ``arrays()`` returning a tuple of equal-length NumPy arrays, e.g.
            :class:`MNIST` or :class:`ArrayDataset`. The arrays are read at each ``iter()``.
        batch_size (int): samples per batch, >= 1. Default 64.
        shuffle (bool): reshuffle at every epoch. Default False.
        seed (int or np.random.Generator, optional): seed (>= 0) or Generator for shuffling.
        drop_last (bool): drop the last batch when it has fewer than ``batch_size`` samples.

    ``len(loader)`` is the number of batches per epoch: ``ceil(N / batch_size)``, or
    ``N // batch_size`` with ``drop_last``.

    Raises:
        TypeError: ``dataset`` has no ``arrays()`` method.
        ValueError: arrays of different lengths, ``batch_size`` not an int >= 1, ``shuffle`` or
            ``drop_last`` not a bool, ``seed`` not None, an int >= 0 or a Generator.

    Example:
        >>> loader = DataLoader(MNIST(train=False), batch_size=128, shuffle=True, seed=0)
        >>> for x, y in loader:
        ...     pass  # x: float32 (128, 1, 28, 28), y: int64 (128,)
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, seed=None, drop_last=False):
        _dataset_arrays(dataset)
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {batch_size!r}")
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"DataLoader: {name} must be True or False, got {value!r}")
        if seed is None or isinstance(seed, np.random.Generator):
            rng = seed
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)) and seed >= 0:
            rng = np.random.default_rng(int(seed))
        else:
            raise ValueError(f"DataLoader: seed must be None, an int >= 0 or a numpy Generator, got {seed!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self._rng = rng

    def __len__(self):
        n = len(_dataset_arrays(self.dataset)[0])
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self):
        arrays = _dataset_arrays(self.dataset)
        n = len(arrays[0])
        order = None
        if self.shuffle:  # drawn now, so each iter() is one epoch with its own permutation
            order = (self._rng if self._rng is not None else get_rng()).permutation(n)
        return self._batches(arrays, n, order)

    def _batches(self, arrays, n, order):
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, n)
            if order is None:
                yield tuple(a[start:end].copy() for a in arrays)
            else:
                index = order[start:end]
                yield tuple(a[index] for a in arrays)

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, batches={len(self)})")

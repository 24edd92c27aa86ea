"""Batch transforms: data augmentation and normalization for image batches ``(N, C, H, W)``.

Every transform is a callable ``t(x, rng=None) -> array`` on a whole batch, vectorized (no
per-sample Python loop), drawing its randomness from the NumPy Generator ``rng``. A
:class:`~minidl.data.DataLoader` built with ``transform=t`` calls it on each batch's images with a
generator derived from (base seed, epoch, batch index), so a seeded run is reproducible and a
resumed one continues identically. Called by hand without ``rng``, a transform uses minidl's
global generator (``minidl.manual_seed``). Transforms never modify their input.

The semantics follow torchvision's transforms of the same names (``RandomCrop``,
``RandomHorizontalFlip``, ``Normalize``, ``Compose``), applied to each sample of the batch
independently.

Example (the usual CIFAR-10 augmentation, He et al. 2016, section 4.2)::

    train = data.CIFAR10(train=True)
    augment = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.Normalize.from_dataset(train),   # constants from the training set
    ])
    loader = data.DataLoader(train, 128, shuffle=True, seed=0, transform=augment)
"""
import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._random import get_rng

_CHUNK_BYTES = 8 << 20
"""Size of the float64 blocks :func:`channel_mean_std` converts at a time."""


def _check_images(owner, x):
    """Check that ``x`` is an image batch ``(N, C, H, W)`` of a real dtype; return it."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{owner}: expected a batch of images as a numpy.ndarray of shape (N, C, H, W), "
                        f"got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{owner}: expected a batch of images of shape (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{owner}: expected a real-valued image batch, got dtype {x.dtype}")
    return x


def _generator(owner, rng):
    """``rng`` as a Generator: itself, a new one seeded by an int, or minidl's global one for None."""
    if rng is None or isinstance(rng, np.random.Generator) or (_is_int(rng) and rng >= 0):
        return get_rng(rng)
    raise TypeError(f"{owner}: rng must be a numpy Generator, an int seed >= 0 or None, got {rng!r:.60}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class Transform:
    """Base of the batch transforms: ``t(x, rng=None)`` returns a new array, ``x`` is unchanged."""

    def __call__(self, x, rng=None):
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms one after another, all drawing from the same generator (torchvision's ``Compose``).

    Args:
        transforms (list): callables ``t(x, rng)``, applied in order.

    Raises:
        TypeError: ``transforms`` is not a list or tuple of callables.
    """

    def __init__(self, transforms):
        if not isinstance(transforms, (list, tuple)) or not all(callable(t) for t in transforms):
            raise TypeError(f"Compose: expected a list of callables t(x, rng), got {transforms!r:.120}")
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        rng = _generator("Compose", rng)
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class RandomCrop(Transform):
    """Crop each image at a random place, after zero padding (torchvision's ``RandomCrop``).

    Each image is padded with ``padding`` zeros on all four sides and cut to ``size`` at an offset
    drawn uniformly and independently per image: the top row in ``[0, H + 2*padding - h]`` and the
    left column in ``[0, W + 2*padding - w]`` (both ``[0, 2*padding]`` when the size is kept, as
    in the standard CIFAR augmentation ``RandomCrop(32, padding=4)``). Draws, per batch: ``N``
    tops, then ``N`` lefts, with ``rng.integers``.

    Args:
        size (int or (int, int)): output ``(h, w)``; an int gives a square crop.
        padding (int): zeros added on each side, >= 0. Default 0.

    Shape:
        ``(N, C, H, W) -> (N, C, h, w)``, same dtype, C-contiguous.

    Raises:
        ValueError: ``size`` not a positive int or pair, ``padding`` not an int >= 0; at call
            time, a batch that is not 4-D or smaller than the crop even after padding.
        TypeError: the batch is not a real-valued ndarray.
    """

    def __init__(self, size, padding=0):
        pair = (size, size) if _is_int(size) else size
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(s) and s >= 1 for s in pair)):
            raise ValueError(f"RandomCrop: size must be an int >= 1 or a pair of them, got {size!r}")
        if not _is_int(padding) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        self.size = (int(pair[0]), int(pair[1]))
        self.padding = int(padding)

    def __call__(self, x, rng=None):
        _check_images("RandomCrop", x)
        rng = _generator("RandomCrop", rng)
        n, c, height, width = x.shape
        h, w = self.size
        p = self.padding
        if height + 2 * p < h or width + 2 * p < w:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the padded images "
                             f"({height + 2 * p}, {width + 2 * p}) (input {x.shape}, padding {p})")
        if p:
            padded = np.zeros((n, c, height + 2 * p, width + 2 * p), dtype=x.dtype)
            padded[:, :, p:p + height, p:p + width] = x
        else:
            padded = x
        top = rng.integers(0, height + 2 * p - h + 1, size=n)
        left = rng.integers(0, width + 2 * p - w + 1, size=n)
        # windows[i, :, t, l] is the (C, h, w) crop of image i at offset (t, l); a view, no copy.
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))
        return np.ascontiguousarray(windows[np.arange(n), :, top, left])

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p`` (torchvision's ``RandomHorizontalFlip``).

    Draws, per batch: ``N`` uniform numbers ``u`` with ``rng.random``; image ``i`` is flipped
    (its last axis reversed) when ``u[i] < p``.

    Args:
        p (float): probability of flipping each image, in [0, 1]. Default 0.5.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``, same dtype.

    Raises:
        ValueError: ``p`` not a number in [0, 1]; at call time, a batch that is not 4-D.
        TypeError: the batch is not a real-valued ndarray.
    """

    def __init__(self, p=0.5):
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x, rng=None):
        _check_images("RandomHorizontalFlip", x)
        flip = _generator("RandomHorizontalFlip", rng).random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize(Transform):
    """Standardize each channel: ``(x[:, c] - mean[c]) / std[c]`` (torchvision's ``Normalize``).

    Computed in the batch's floating dtype; draws no random numbers. Use :meth:`from_dataset` to
    take the constants from the training set instead of typing them in.

    Args:
        mean (sequence of float): per-channel means, length C.
        std (sequence of float): per-channel standard deviations, length C, all > 0.

    Shape:
        ``(N, C, ...) -> (N, C, ...)``, same float dtype.

    Raises:
        ValueError: ``mean``/``std`` not 1-D sequences of equal length with finite values and
            ``std > 0``; at call time, a batch with fewer than 2 axes or another number of channels.
        TypeError: the batch is not a float32/float64 ndarray.
    """

    def __init__(self, mean, std):
        try:
            mean = np.array(mean, dtype=np.float64)
            std = np.array(std, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"Normalize: mean and std must be sequences of numbers, got {mean!r:.80} "
                             f"and {std!r:.80}") from None
        if mean.ndim != 1 or std.shape != mean.shape or mean.size == 0:
            raise ValueError(f"Normalize: mean and std must be 1-D with one value per channel and the same "
                             f"length, got shapes {mean.shape} and {std.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError(f"Normalize: mean must be finite and std finite and > 0, got mean {mean.tolist()} "
                             f"and std {std.tolist()}")
        self.mean, self.std = mean, std

    @classmethod
    def from_dataset(cls, dataset):
        """Build a Normalize from the per-channel mean and std of ``dataset``'s images.

        Args:
            dataset: a dataset (its ``arrays()[0]``, e.g. :class:`CIFAR10` training images) or an
                array ``(N, C, ...)``; see :func:`channel_mean_std`.
        Returns:
            Normalize: with ``mean, std = channel_mean_std(dataset)``.
        Raises:
            ValueError: as :func:`channel_mean_std`, or a channel with zero std (a constant channel).
        """
        return cls(*channel_mean_std(dataset))

    def __call__(self, x, rng=None):
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            raise TypeError(f"Normalize: expected a float32 or float64 numpy.ndarray, got {got}")
        if x.ndim < 2 or x.shape[1] != self.mean.size:
            raise ValueError(f"Normalize: expected a batch of shape (N, {self.mean.size}, ...) "
                             f"({self.mean.size} channels), got shape {x.shape}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = self.mean.astype(x.dtype).reshape(shape)
        std = self.std.astype(x.dtype).reshape(shape)
        return (x - mean) / std

    def __repr__(self):
        fmt = lambda v: "(" + ", ".join(f"{a:.4f}" for a in v) + ")"  # noqa: E731
        return f"Normalize(mean={fmt(self.mean)}, std={fmt(self.std)})"


def channel_mean_std(dataset):
    """Per-channel mean and standard deviation of a dataset's images, in float64.

    Statistics over all samples and pixels of each channel (axis 1): the mean, and the
    population standard deviation (divided by the count, as the usual normalization constants
    are, e.g. CIFAR-10's ``(0.4914, 0.4822, 0.4465)`` / ``(0.2470, 0.2435, 0.2616)``). Two
    passes over blocks of about 8 MB converted to float64 -- the mean, then the squared
    deviations from it -- so the whole set is never copied and a channel with a large mean and a
    small spread keeps its precision.

    Args:
        dataset: an object with ``arrays()`` whose first array is the images ``(N, C, ...)``
            (e.g. :class:`CIFAR10`), or such an array itself. Any real dtype.
    Returns:
        tuple: ``(mean, std)``, float64 arrays of shape ``(C,)``.
    Raises:
        TypeError: no ``arrays()`` method and not an ndarray, or a non-real dtype.
        ValueError: fewer than 2 axes, no samples or no pixels, or non-finite values.
    """
    images = dataset if isinstance(dataset, np.ndarray) else None
    if images is None:
        arrays_fn = getattr(dataset, "arrays", None)
        if not callable(arrays_fn):
            raise TypeError(f"channel_mean_std: expected a dataset with arrays() or a numpy.ndarray, "
                            f"got {type(dataset).__name__}")
        arrays = tuple(arrays_fn())
        if not arrays:
            raise ValueError("channel_mean_std: the dataset's arrays() is empty; expected (images, ...)")
        images = arrays[0]
    if not isinstance(images, np.ndarray) or images.dtype.kind not in "fiub":
        got = f"dtype {images.dtype}" if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"channel_mean_std: expected real-valued images, got {got}")
    if images.ndim < 2 or images.size == 0:
        raise ValueError(f"channel_mean_std: expected non-empty images of shape (N, C, ...), got shape "
                         f"{images.shape}")
    axes = (0,) + tuple(range(2, images.ndim))
    count = images.size // images.shape[1]
    rows = max(1, _CHUNK_BYTES // (8 * (images.size // len(images))))
    chunks = [slice(i, i + rows) for i in range(0, len(images), rows)]
    total = sum(images[s].sum(axis=axes, dtype=np.float64) for s in chunks)
    mean = total / count
    shape = (1, -1) + (1,) * (images.ndim - 2)
    squares = sum(np.square(images[s].astype(np.float64) - mean.reshape(shape)).sum(axis=axes) for s in chunks)
    std = np.sqrt(squares / count)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise ValueError(f"channel_mean_std: the images hold non-finite values (mean {mean.tolist()}, "
                         f"std {std.tolist()})")
    return mean, std

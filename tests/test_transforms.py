"""Tests for minidl.data.transforms: RandomCrop, RandomHorizontalFlip, Normalize, Compose and
channel_mean_std -- semantics against their definitions (PyTorch for padding and flipping),
distributions, reproducibility with seeds and inside the DataLoader, and errors."""
import json
import tracemalloc

import numpy as np
import pytest
import torch

from minidl import _random, data
from minidl.data import transforms as T


def _images(n=8, c=3, h=6, w=5, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


# --------------------------------------------------------------------------------------------
# RandomCrop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, padding", [(5, 0), ((6, 5), 0), ((4, 3), 0), ((6, 5), 2), (3, 1), ((8, 9), 2)])
def test_random_crop_matches_pad_then_crop(size, padding):
    x = _images()
    before = x.copy()
    out = T.RandomCrop(size, padding)(x, np.random.default_rng(5))
    h, w = (size, size) if isinstance(size, int) else size
    assert out.shape == (8, 3, h, w) and out.dtype == x.dtype and out.flags.c_contiguous
    assert np.array_equal(x, before)  # the input is unchanged
    # The documented draws: N tops, then N lefts, uniform over every valid offset.
    rng = np.random.default_rng(5)
    top = rng.integers(0, 6 + 2 * padding - h + 1, size=8)
    left = rng.integers(0, 5 + 2 * padding - w + 1, size=8)
    padded = torch.nn.functional.pad(torch.from_numpy(x), (padding,) * 4)  # zeros, as torchvision
    for i in range(8):
        expected = padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w].numpy()
        assert np.array_equal(out[i], expected)


def test_random_crop_offsets_are_uniform():
    n, size, p = 5000, 6, 2
    x = np.zeros((n, 1, size, size), np.float32)
    x[:, 0] = 1 + np.arange(size * size).reshape(size, size)  # each pixel knows where it was
    out = T.RandomCrop(size, padding=p)(x, np.random.default_rng(0))
    # Output pixel (p, p) is input pixel (top, left) for every offset in [0, 2p].
    code = out[:, 0, p, p].astype(int) - 1
    top, left = code // size, code % size
    counts = np.bincount(top * (2 * p + 1) + left, minlength=(2 * p + 1) ** 2)
    assert counts.size == 25 and counts.min() > 0  # every offset appears, nothing outside [0, 2p]
    expected = n / 25
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # Where the window leaves the image, the padding is zeros.
    assert np.all(out[top == 0][:, 0, :p, :] == 0) and np.all(out[left == 2 * p][:, 0, :, -p:] == 0)


def test_random_crop_keeps_integer_images():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    out = T.RandomCrop(4, padding=1)(x, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == x.shape


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, "size must be an int >= 1 or a pair of them, got 0"),
    ({"size": (3,)}, "size"),
    ({"size": 2.5}, "size"),
    ({"size": (3, True)}, "size"),
    ({"size": 4, "padding": -1}, "padding must be an int >= 0, got -1"),
    ({"size": 4, "padding": 1.5}, "padding"),
])
def test_random_crop_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match="RandomCrop: " + match):
        T.RandomCrop(**kwargs)


def test_random_crop_bad_batches():
    crop = T.RandomCrop(4, padding=1)
    with pytest.raises(ValueError, match=r"RandomCrop: expected a batch of images of shape \(N, C, H, W\), "
                                         r"got shape \(3, 32, 32\)"):
        crop(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="RandomCrop: .*got list"):
        crop([[[[0.0]]]])
    with pytest.raises(TypeError, match="RandomCrop: expected a real-valued image batch, got dtype complex64"):
        crop(np.zeros((1, 1, 4, 4), np.complex64))
    with pytest.raises(ValueError, match=r"RandomCrop: crop size \(4, 4\) is larger than the padded images \(3, 3\)"):
        crop(np.zeros((2, 1, 1, 1), np.float32))


# --------------------------------------------------------------------------------------------
# RandomHorizontalFlip
# --------------------------------------------------------------------------------------------


def test_flip_matches_torch_flip_and_rate():
    x = _images(n=20000, c=2, h=2, w=3)
    out = T.RandomHorizontalFlip(p=0.3)(x, np.random.default_rng(2))
    flipped = torch.flip(torch.from_numpy(x), dims=[3]).numpy()
    is_flipped = np.all(out == flipped, axis=(1, 2, 3))
    is_same = np.all(out == x, axis=(1, 2, 3))
    assert np.all(is_flipped ^ is_same)  # each image either mirrored or untouched
    mask = np.random.default_rng(2).random(20000) < 0.3  # the documented draw
    assert np.array_equal(is_flipped, mask)
    assert abs(is_flipped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)
    assert np.array_equal(T.RandomHorizontalFlip(p=0.0)(x, np.random.default_rng(0)), x)
    assert np.array_equal(T.RandomHorizontalFlip(p=1.0)(x, np.random.default_rng(0)), flipped)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True, None, float("nan")])
def test_flip_bad_p(p):
    with pytest.raises(ValueError, match="RandomHorizontalFlip: p must be a probability in \\[0, 1\\]"):
        T.RandomHorizontalFlip(p)


def test_flip_bad_batch():
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip: .*got shape \(4, 3\)"):
        T.RandomHorizontalFlip()(np.zeros((4, 3), np.float32))


# --------------------------------------------------------------------------------------------
# Normalize and channel_mean_std
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_matches_definition(dtype):
    x = _images(dtype=dtype)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    out = T.Normalize(mean, std)(x)
    t = torch.from_numpy(x)
    m = torch.tensor(mean, dtype=t.dtype)[:, None, None]
    s = torch.tensor(std, dtype=t.dtype)[:, None, None]
    assert out.dtype == dtype and np.array_equal(out, ((t - m) / s).numpy())
    flat = T.Normalize([1.0, 2.0], [2.0, 4.0])(np.ones((3, 2), dtype))  # (N, C) works too
    assert np.array_equal(flat, np.array([[0.0, -0.25]] * 3, dtype))


def test_normalize_from_dataset_standardizes_it():
    rng = np.random.default_rng(3)
    x = (rng.random((500, 3, 4, 4)) * [[[[1]], [[10]], [[0.1]]]] + [[[[5]], [[-2]], [[0]]]]).astype(np.float32)
    ds = data.ArrayDataset(x, np.zeros(500, np.int64))
    norm = T.Normalize.from_dataset(ds)
    out = norm(x).astype(np.float64)
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    assert repr(norm).startswith("Normalize(mean=(")


@pytest.mark.parametrize("mean, std, match", [
    ([0.5, 0.5], [0.2], "one value per channel and the same length"),
    ([], [], "one value per channel"),
    ([[0.5]], [[0.2]], "1-D"),
    ([0.5], [0.0], "std finite and > 0"),
    ([0.5], [-1.0], "std finite and > 0"),
    ([float("nan")], [1.0], "mean must be finite"),
    (["a"], [1.0], "mean and std must be sequences of numbers"),
])
def test_normalize_bad_arguments(mean, std, match):
    with pytest.raises(ValueError, match="Normalize: .*" + match):
        T.Normalize(mean, std)


def test_normalize_bad_batches():
    norm = T.Normalize([0.5] * 3, [0.2] * 3)
    with pytest.raises(ValueError, match=r"Normalize: expected a batch of shape \(N, 3, \.\.\.\) \(3 channels\), "
                                         r"got shape \(2, 1, 4, 4\)"):
        norm(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Normalize: .*got shape \\(3,\\)"):
        norm(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="Normalize: expected a float32 or float64 numpy.ndarray, got dtype uint8"):
        norm(np.zeros((2, 3, 4, 4), np.uint8))


def test_channel_mean_std_matches_numpy(monkeypatch):
    x = _images(n=37, c=4, h=3, w=2, seed=4)
    mean, std = data.channel_mean_std(x)
    x64 = x.astype(np.float64)
    assert mean.dtype == np.float64 and mean.shape == (4,)
    assert np.allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-13)
    assert np.allclose(std, x64.std(axis=(0, 2, 3)), rtol=1e-12)
    monkeypatch.setattr(T, "_CHUNK_BYTES", 100)  # one sample per chunk: the same result
    mean1, std1 = data.channel_mean_std(data.ArrayDataset(x, np.zeros(37)))
    assert np.allclose(mean1, mean, rtol=1e-13) and np.allclose(std1, std, rtol=1e-12)
    u8 = (x * 255).astype(np.uint8)
    assert np.allclose(data.channel_mean_std(u8)[0], u8.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-13)


def test_channel_mean_std_large_mean_small_spread():
    rng = np.random.default_rng(6)
    x = (1e4 + 1e-2 * rng.standard_normal((2000, 1, 8, 8))).astype(np.float32)
    _, std = data.channel_mean_std(x)
    assert np.isclose(std[0], x.astype(np.float64).std(), rtol=1e-9)


def test_channel_mean_std_does_not_copy_the_set():
    x = np.ones((2000, 3, 32, 32), np.float32)  # 24.6 MB; a float64 copy would be 49 MB
    tracemalloc.start()
    try:
        data.channel_mean_std(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * T._CHUNK_BYTES


@pytest.mark.parametrize("arg, error, match", [
    (np.zeros((0, 3, 2, 2)), ValueError, "non-empty images"),
    (np.zeros(5), ValueError, r"shape \(N, C, \.\.\.\), got shape \(5,\)"),
    ([1, 2, 3], TypeError, "expected a dataset with arrays\\(\\) or a numpy.ndarray, got list"),
    (np.zeros((2, 2), np.complex64), TypeError, "real-valued images, got dtype complex64"),
    (np.array([[np.nan, 1.0]]), ValueError, "non-finite"),
])
def test_channel_mean_std_errors(arg, error, match):
    with pytest.raises(error, match="channel_mean_std: .*" + match):
        data.channel_mean_std(arg)


def test_constant_channel_cannot_be_normalized():
    with pytest.raises(ValueError, match="Normalize: .*std finite and > 0"):
        T.Normalize.from_dataset(np.ones((4, 2, 3, 3), np.float32))


# --------------------------------------------------------------------------------------------
# Compose, seeds and the DataLoader
# --------------------------------------------------------------------------------------------


def _augment():
    return T.Compose([T.RandomCrop(6, padding=2), T.RandomHorizontalFlip(), T.Normalize([0.5] * 3, [0.25] * 3)])


def test_compose_applies_in_order_with_one_generator():
    x = _images(h=6, w=6)
    out = _augment()(x, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    step = T.RandomCrop(6, padding=2)(x, rng)
    step = T.RandomHorizontalFlip()(step, rng)
    assert np.array_equal(out, (step - np.float32(0.5)) / np.float32(0.25))
    assert repr(_augment()) == ("Compose([RandomCrop(size=(6, 6), padding=2), RandomHorizontalFlip(p=0.5), "
                                "Normalize(mean=(0.5000, 0.5000, 0.5000), std=(0.2500, 0.2500, 0.2500))])")
    with pytest.raises(TypeError, match="Compose: expected a list of callables"):
        T.Compose([T.RandomHorizontalFlip(), "crop"])
    with pytest.raises(TypeError, match="Compose"):
        T.Compose(T.RandomHorizontalFlip())


@pytest.mark.parametrize("transform, name", [(T.RandomCrop(4), "RandomCrop"),
                                             (T.RandomHorizontalFlip(), "RandomHorizontalFlip"),
                                             (T.Compose([]), "Compose")])
def test_bad_rng(transform, name):
    with pytest.raises(TypeError, match=f"{name}: rng must be a numpy Generator, an int seed >= 0 or None, got 'a'"):
        transform(_images(h=4, w=4), "a")
    assert transform(_images(h=4, w=4), 3).shape == (8, 3, 4, 4)  # an int seeds a new generator


def test_same_seed_same_result_and_global_generator():
    x = _images(n=64, h=6, w=6)
    a = _augment()(x, np.random.default_rng(1))
    assert np.array_equal(a, _augment()(x, np.random.default_rng(1)))
    assert not np.array_equal(a, _augment()(x, np.random.default_rng(2)))
    _random.manual_seed(3)
    b = _augment()(x)  # no rng: minidl's global generator
    _random.manual_seed(3)
    assert np.array_equal(b, _augment()(x)) and not np.array_equal(a, b)


def test_loader_with_augmentation_is_reproducible_and_resumable():
    x = _images(n=30, h=6, w=6, seed=7)
    ds = data.ArrayDataset(x, np.arange(30))

    def make():
        return data.DataLoader(ds, batch_size=8, shuffle=True, seed=0, transform=_augment())

    full = list(make_epochs(make(), 2))
    again = list(make_epochs(make(), 2))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(full, again))
    assert full[0][0].shape == (8, 3, 6, 6) and full[0][0].dtype == np.float32
    for k in (1, 4, 5, 7):  # inside the first epoch, at its end, inside the second
        first = make()
        head = list(make_epochs(first, 2, stop_after=k))
        resumed = make()
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        tail = list(make_epochs(resumed, 2))
        assert len(head) + len(tail) == len(full)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(head + tail, full))


def make_epochs(loader, epochs, stop_after=None):
    """Yield the batches of ``epochs`` epochs (from ``loader.epoch`` on); stop after ``stop_after``."""
    count = 0
    for _ in range(loader.epoch, epochs):
        for batch in loader:
            yield batch
            count += 1
            if count == stop_after:
                return


def test_channel_mean_std_of_a_dataset_without_arrays():
    class Empty(data.Dataset):
        def arrays(self):
            return ()

    with pytest.raises(ValueError, match="channel_mean_std: the dataset's arrays\\(\\) is empty"):
        data.channel_mean_std(Empty())

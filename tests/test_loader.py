"""Tests for minidl.data.DataLoader: batching, seeds, epochs, resuming and sharding."""
import itertools
import json

import numpy as np
import pytest

from minidl import _random, data


def _toy(n=10):
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3)
    y = np.arange(n, dtype=np.int64)
    return data.ArrayDataset(x, y)


def _noise(x, rng):
    """A transform that uses its generator: a different result for every batch and seed."""
    return x + rng.standard_normal(x.shape).astype(x.dtype)


def _labels(loader):
    return np.concatenate([y for _, y in loader])


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size, drop_last, sizes", [
    (10, 3, False, [3, 3, 3, 1]),
    (10, 3, True, [3, 3, 3]),
    (9, 3, False, [3, 3, 3]),
    (9, 3, True, [3, 3, 3]),
    (2, 5, False, [2]),
    (2, 5, True, []),
])
def test_batch_count(n, batch_size, drop_last, sizes):
    for shuffle in (False, True):
        loader = data.DataLoader(_toy(n), batch_size=batch_size, shuffle=shuffle, seed=0, drop_last=drop_last)
        assert len(loader) == len(sizes)
        assert [len(y) for _, y in loader] == sizes


def test_batches_in_order_and_copied():
    ds = _toy(10)
    batches = list(data.DataLoader(ds, batch_size=4))
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (4, 1, 2, 3) and y.dtype == np.int64
    x[...] = -1  # a batch is a copy: the dataset is untouched
    assert ds.arrays()[0].min() == 0


def test_shuffle_epochs():
    ds = _toy(50)
    loader = data.DataLoader(ds, batch_size=8, shuffle=True, seed=123)
    epochs = []
    for _ in range(3):
        xs, ys = zip(*loader)
        y, x = np.concatenate(ys), np.concatenate(xs)
        assert sorted(y.tolist()) == list(range(50))  # every sample exactly once
        assert np.array_equal(x, ds.arrays()[0][y])  # x and y stay paired
        epochs.append(y)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(50))
    again = data.DataLoader(ds, batch_size=8, shuffle=True, seed=123)
    for expected in epochs:  # same seed: the same sequence of epochs
        assert np.array_equal(_labels(again), expected)
    other = data.DataLoader(ds, batch_size=8, shuffle=True, seed=124)
    assert not np.array_equal(_labels(other), epochs[0])


def test_epoch_order_is_a_function_of_seed_and_epoch():
    ds = _toy(40)
    loader = data.DataLoader(ds, batch_size=16, shuffle=True, seed=5)
    seen = [_labels(loader) for _ in range(4)]
    for epoch in (3, 0, 2):  # any epoch, in any order, from a fresh loader
        fresh = data.DataLoader(ds, batch_size=16, shuffle=True, seed=5)
        fresh.set_epoch(epoch)
        assert np.array_equal(_labels(fresh), seen[epoch])
    expected = np.random.default_rng(np.random.SeedSequence([5, 2])).permutation(40)
    assert np.array_equal(seen[2], expected)  # the documented derivation


def test_epoch_counter():
    loader = data.DataLoader(_toy(10), batch_size=4, shuffle=True, seed=0)
    assert loader.epoch == 0
    it = iter(loader)
    assert loader.epoch == 1  # advances when the iteration starts
    next(it)
    list(loader)
    assert loader.epoch == 2
    loader.set_epoch(7)
    assert loader.epoch == 7
    with pytest.raises(ValueError, match="set_epoch.*int >= 0.*-1"):
        loader.set_epoch(-1)
    with pytest.raises(ValueError, match="set_epoch"):
        loader.set_epoch(1.0)


def test_without_seed_draws_base_seed_once_from_global_rng(monkeypatch):
    ds = _toy(40)
    monkeypatch.setitem(_random._state, "rng", np.random.default_rng(7))
    loader = data.DataLoader(ds, batch_size=16, shuffle=True)
    assert loader.state_dict()["base_seed"] is None  # not drawn before the first iter()
    first = _labels(loader)
    base_seed = loader.state_dict()["base_seed"]
    assert isinstance(base_seed, int)
    _random.manual_seed(7)
    again = data.DataLoader(ds, batch_size=16, shuffle=True)
    assert np.array_equal(_labels(again), first)  # the same global seed: the same epochs
    _random.manual_seed(99)  # drawn once: reseeding later does not change the loader
    assert loader.state_dict()["base_seed"] == base_seed
    assert np.array_equal(_labels(loader), _labels(again))
    fixed = data.DataLoader(ds, batch_size=16, shuffle=True, seed=base_seed)
    assert np.array_equal(_labels(fixed), first)


def test_unshuffled_loader_leaves_global_rng_alone(monkeypatch):
    monkeypatch.setitem(_random._state, "rng", np.random.default_rng(3))
    before = _random.get_rng().bit_generator.state
    list(data.DataLoader(_toy(10), batch_size=3))
    assert _random.get_rng().bit_generator.state == before


def test_generator_seed():
    ds = _toy(30)
    a = data.DataLoader(ds, batch_size=7, shuffle=True, seed=np.random.default_rng(11))
    b = data.DataLoader(ds, batch_size=7, shuffle=True, seed=np.random.default_rng(11))
    assert np.array_equal(_labels(a), _labels(b))
    assert np.array_equal(_labels(a), _labels(b))


# --------------------------------------------------------------------------------------------
# Transforms inside the loader
# --------------------------------------------------------------------------------------------


def test_transform_is_applied_with_per_batch_generators():
    ds = _toy(20)
    loader = data.DataLoader(ds, batch_size=6, shuffle=True, seed=1, transform=_noise)
    batches = list(loader)
    for b, (x, y) in enumerate(batches):
        rng = np.random.default_rng(np.random.SeedSequence([1, 0], spawn_key=(0, b)))
        expected = ds.arrays()[0][y] + rng.standard_normal(x.shape).astype(np.float32)
        assert np.array_equal(x, expected)
    again = data.DataLoader(ds, batch_size=6, shuffle=True, seed=1, transform=_noise)
    for (x1, y1), (x2, y2) in zip(batches, again):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    second_epoch = [x for x, _ in loader]
    assert not np.array_equal(second_epoch[0], batches[0][0])


def test_transform_without_seed_is_reproducible_via_manual_seed():
    ds = _toy(12)
    _random.manual_seed(4)
    first = [x for x, _ in data.DataLoader(ds, batch_size=5, transform=_noise)]
    _random.manual_seed(4)
    second = [x for x, _ in data.DataLoader(ds, batch_size=5, transform=_noise)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_transform_errors():
    with pytest.raises(TypeError, match="DataLoader: transform must be a callable"):
        data.DataLoader(_toy(), transform="crop")
    loader = data.DataLoader(_toy(), batch_size=4, transform=lambda x, rng: x[:2])
    with pytest.raises(ValueError, match="DataLoader: transform must return .* 4 samples.*shape \\(2, 1, 2, 3\\)"):
        next(iter(loader))
    loader = data.DataLoader(_toy(), batch_size=4, transform=lambda x, rng: list(x))
    with pytest.raises(ValueError, match="transform must return a NumPy array.*got list"):
        next(iter(loader))


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------


def _run(loader, epochs, stop_after=None):
    """Batches of ``epochs`` epochs the way a training loop takes them; stop after ``stop_after``."""
    out = []
    for _ in range(loader.epoch, epochs):
        for batch in loader:
            out.append(batch)
            if stop_after is not None and len(out) == stop_after:
                return out
    return out


@pytest.mark.parametrize("seed", [17, None])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_at_every_batch_equals_uninterrupted(seed, drop_last):
    ds, epochs = _toy(23), 3

    def make():
        return data.DataLoader(ds, batch_size=5, shuffle=True, seed=seed, drop_last=drop_last, transform=_noise)

    _random.manual_seed(0)
    full = _run(make(), epochs)
    assert len(full) == epochs * len(make())
    for k in range(len(full) + 1):  # every position, including epoch boundaries and the end
        _random.manual_seed(0)
        first = make()
        head = _run(first, epochs, stop_after=k) if k else []
        state = json.loads(json.dumps(first.state_dict()))  # JSON-serializable
        # A resumed process starts from another global state, unless the base seed was not drawn
        # yet (nothing iterated): then the checkpoint must restore the global generator as well.
        _random.manual_seed(0 if state["base_seed"] is None else 12345)
        resumed = make()
        resumed.load_state_dict(state)
        tail = _run(resumed, epochs)
        assert len(head) + len(tail) == len(full)
        for (x, y), (xf, yf) in zip(head + tail, full):
            assert np.array_equal(y, yf) and np.array_equal(x, xf)


def test_resume_is_kept_by_set_epoch_of_the_same_epoch():
    ds = _toy(20)
    make = lambda: data.DataLoader(ds, batch_size=3, shuffle=True, seed=2, transform=_noise)  # noqa: E731
    loader = make()
    list(loader)
    it = iter(loader)  # epoch 1
    next(it), next(it)
    state = loader.state_dict()
    assert (state["epoch"], state["batches_yielded"]) == (1, 2)
    rest = list(it)
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    resumed.set_epoch(1)  # the DistributedSampler habit before each epoch keeps the position
    got = list(resumed)
    assert len(got) == len(rest) and all(np.array_equal(a[0], b[0]) for a, b in zip(got, rest))
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # another epoch starts at its first batch
    assert len(list(resumed)) == len(resumed)


def test_finished_epoch_is_saved_as_start_of_next():
    loader = data.DataLoader(_toy(10), batch_size=4, shuffle=True, seed=0)
    taken = list(itertools.islice(iter(loader), len(loader)))  # all batches, iterator not exhausted
    assert len(taken) == 3
    state = loader.state_dict()
    assert (state["epoch"], state["batches_yielded"]) == (1, 0)
    fresh = data.DataLoader(_toy(10), batch_size=4, shuffle=True, seed=0)
    fresh.load_state_dict(dict(state, epoch=0, batches_yielded=3))  # the same position, spelled out
    assert fresh.epoch == 1 and len(list(fresh)) == 3


def test_state_dict_contents():
    loader = data.DataLoader(_toy(10), batch_size=4, shuffle=True, seed=9, num_shards=2, shard_index=1)
    assert loader.state_dict() == {"base_seed": 9, "epoch": 0, "batches_yielded": 0, "batch_size": 4,
                                   "num_samples": 10, "num_shards": 2, "shuffle": True, "drop_last": False}
    it = iter(loader)
    next(it)
    assert loader.state_dict()["batches_yielded"] == 1 and loader.state_dict()["epoch"] == 0
    other_rank = data.DataLoader(_toy(10), batch_size=4, shuffle=True, seed=9, num_shards=2, shard_index=0)
    next(iter(other_rank))
    assert other_rank.state_dict() == loader.state_dict()  # the same state on every shard


@pytest.mark.parametrize("change, match", [
    ({"epoch": -1}, "epoch must be an int >= 0, got -1"),
    ({"epoch": 1.5}, "epoch must be an int >= 0"),
    ({"batches_yielded": 4}, r"batches_yielded must be in \[0, 3\].*got 4"),
    ({"base_seed": -2}, "base_seed must be None or an int >= 0"),
    ({"base_seed": "7"}, "base_seed must be None or an int >= 0"),
    ({"batch_size": 5}, "saved with batch_size=5 but this loader has batch_size=4"),
    ({"num_samples": 11}, "saved with num_samples=11 but this loader has num_samples=10"),
    ({"num_shards": 2}, "num_shards=2 but this loader has num_shards=1"),
    ({"shuffle": False}, "shuffle=False but this loader has shuffle=True"),
    ({"drop_last": 0}, "drop_last must be True or False"),
    ({"extra": 1}, r"unknown \['extra'\]"),
])
def test_load_state_dict_validates(change, match):
    loader = data.DataLoader(_toy(10), batch_size=4, shuffle=True, seed=0)
    list(loader)
    state = dict(loader.state_dict(), **change)
    before = loader.state_dict()
    with pytest.raises(ValueError, match="DataLoader.load_state_dict: .*" + match):
        loader.load_state_dict(state)
    assert loader.state_dict() == before  # unchanged on error


def test_load_state_dict_missing_key_and_type():
    loader = data.DataLoader(_toy(10), batch_size=4)
    state = loader.state_dict()
    del state["epoch"]
    with pytest.raises(ValueError, match=r"missing \['epoch'\]"):
        loader.load_state_dict(state)
    with pytest.raises(TypeError, match="DataLoader.load_state_dict: expected a dict.*got list"):
        loader.load_state_dict([])


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 12, 13, 24])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_split_each_epoch(n, num_shards, drop_last):
    batch_size = 2
    ds = _toy(n)
    loaders = [data.DataLoader(ds, batch_size=batch_size, shuffle=True, seed=3, drop_last=drop_last,
                               num_shards=num_shards, shard_index=r) for r in range(num_shards)]
    per_shard = n // num_shards if drop_last else -(-n // num_shards)
    batches = (per_shard // batch_size) if drop_last else -(-per_shard // batch_size)
    for loader in loaders:
        assert len(loader) == batches
    for epoch in range(2):
        parts = [[y for _, y in loader] for loader in loaders]
        assert all(len(p) == batches for p in parts)  # every rank yields the same number of batches
        labels = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
        everything = np.concatenate(labels)
        counts = np.bincount(everything, minlength=n)
        if drop_last:
            assert counts.max(initial=0) <= 1  # disjoint
            assert n - len(everything) < num_shards * (batch_size + 1)  # all but a remainder
        else:
            assert set(everything.tolist()) == set(range(n))  # the union is the whole epoch
            assert len(everything) == num_shards * per_shard  # padded with repeats of the order's start
            if n % num_shards == 0:
                assert counts.max() == 1  # no padding needed: disjoint
        order = np.random.default_rng(np.random.SeedSequence([3, epoch])).permutation(n)
        for r, lab in enumerate(labels):  # rank r takes positions r, r + W, ... of the epoch's order
            padded = np.resize(order, num_shards * per_shard)
            assert np.array_equal(lab, padded[r::num_shards][:len(lab)])


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_together_make_the_big_batches(num_shards):
    n, batch_size = 36, 2
    ds = _toy(n)
    single = data.DataLoader(ds, batch_size=batch_size * num_shards, shuffle=True, seed=8)
    ranks = [data.DataLoader(ds, batch_size=batch_size, shuffle=True, seed=8, num_shards=num_shards,
                             shard_index=r) for r in range(num_shards)]
    for big, *small in zip(single, *ranks):
        assert sorted(np.concatenate([y for _, y in small]).tolist()) == sorted(big[1].tolist())


def test_sharded_resume_and_unshuffled_shards():
    ds = _toy(11)
    loaders = [data.DataLoader(ds, batch_size=2, num_shards=3, shard_index=r) for r in range(3)]
    assert [_labels(l).tolist() for l in loaders] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 0]]
    make = lambda: data.DataLoader(ds, batch_size=2, shuffle=True, seed=4, transform=_noise,  # noqa: E731
                                   num_shards=3, shard_index=2)
    full = _run(make(), 2)
    first = make()
    _run(first, 2, stop_after=3)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    tail = _run(resumed, 2)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(full[3:], tail)) and len(tail) == len(full) - 3
    x1, y1 = next(iter(data.DataLoader(ds, batch_size=2, shuffle=True, seed=4, transform=_noise,
                                        num_shards=3, shard_index=1)))
    x2, y2 = full[0]
    noise1, noise2 = x1 - ds.arrays()[0][y1], x2 - ds.arrays()[0][y2]
    assert not np.allclose(noise1, noise2)  # each shard draws its own transform randomness


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": -3}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
    ({"batch_size": "8"}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"shuffle": "yes"}, "shuffle must be True or False, got 'yes'"),
    ({"shuffle": 1}, "shuffle"),
    ({"drop_last": None}, "drop_last"),
    ({"seed": -1}, "seed must be None, an int >= 0 or a numpy Generator, got -1"),
    ({"seed": 1.5}, "seed"),
    ({"seed": "0"}, "seed"),
    ({"num_shards": 0}, "num_shards must be an integer >= 1, got 0"),
    ({"num_shards": 2, "shard_index": 2}, r"shard_index must be an int in \[0, num_shards\) = \[0, 2\), got 2"),
    ({"shard_index": -1}, "shard_index"),
    ({"shard_index": 0.0}, "shard_index"),
    ({"num_shards": 2, "shuffle": True}, "num_shards=2 with shuffle=True needs an int seed"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match="DataLoader: " + match):
        data.DataLoader(_toy(), **kwargs)


def test_bad_dataset():
    with pytest.raises(TypeError, match="DataLoader.*arrays"):
        data.DataLoader([1, 2, 3])

    class Uneven:
        def arrays(self):
            return np.zeros(3), np.zeros(4)

    with pytest.raises(ValueError, match="DataLoader: dataset arrays differ in length: \\[3, 4\\]"):
        data.DataLoader(Uneven())
    with pytest.raises(ValueError, match="DataLoader: the dataset is empty"):
        data.DataLoader(data.ArrayDataset(np.zeros((0, 3)), np.zeros(0)))


def test_repr():
    loader = data.DataLoader(_toy(10), batch_size=4, num_shards=2, shard_index=1)
    assert repr(loader) == ("DataLoader(ArrayDataset, batch_size=4, shuffle=False, drop_last=False, "
                            "shard 1 of 2, batches=2, epoch=0)")

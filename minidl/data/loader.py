"""DataLoader: mini-batches of NumPy arrays, with seeded, resumable and shardable epochs.

Every random choice the loader makes is a pure function of three numbers, so a run can be
repeated, resumed in the middle of an epoch, or split across processes:

- the **base seed** (``seed``, or one number drawn from minidl's global generator),
- the **epoch** (counted by the loader; ``set_epoch`` / ``load_state_dict`` move it),
- the **batch index** within the epoch (of this shard).

Epoch ``e`` shuffles with ``np.random.default_rng(np.random.SeedSequence([base_seed, e]))``;
batch ``b`` of shard ``r`` is transformed with a Generator seeded by the same SeedSequence's
child ``spawn_key=(r, b)`` (what ``SeedSequence.spawn`` would give), so its randomness does not
depend on which batches were produced before it.
"""
import numpy as np

from .._checks import positive_int
from .._random import get_rng

_SEED_BOUND = 2 ** 63
"""Base seeds drawn from a generator lie in ``[0, 2**63)`` (exact in JSON and in int64)."""

_STATE_KEYS = ("base_seed", "epoch", "batches_yielded",
               "batch_size", "num_samples", "num_shards", "shuffle", "drop_last")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"DataLoader: dataset arrays differ in length: {lengths}")
    if lengths[0] == 0:
        raise ValueError(f"DataLoader: the dataset is empty (0 samples; array shapes "
                         f"{[a.shape for a in arrays]}); a loader needs at least one sample")
    return arrays


class DataLoader:
    """Iterate over a dataset in mini-batches of NumPy arrays; seeded, resumable and shardable.

    Every batch is a tuple with one array per dataset array, e.g. ``(x, y)`` for an image
    dataset: ``x`` float32 ``(B, C, H, W)`` and ``y`` int64 ``(B,)``. Batches are cut by slicing
    or fancy indexing along axis 0 -- no per-sample Python loop -- and are always fresh copies,
    so modifying a batch never changes the dataset.

    **Epochs and seeds.** Each ``iter()`` produces one epoch, number ``loader.epoch``, and then
    advances ``loader.epoch`` by one (``set_epoch(e)`` chooses the next one, as PyTorch's
    ``DistributedSampler.set_epoch`` does). Epoch ``e`` is shuffled with
    ``np.random.default_rng(np.random.SeedSequence([base_seed, e]))``, and batch ``b`` of the
    epoch is transformed with a Generator seeded by that SeedSequence's child ``(shard_index, b)``.
    The base seed is ``seed`` when it is an int; with ``seed=None`` (or a Generator) one number is
    drawn from minidl's global generator (``minidl.manual_seed``; or from the given Generator) at
    the first ``iter()`` that needs randomness (``shuffle=True`` or a ``transform``), and kept.
    So two loaders with the same seed give the same sequence of epochs, and any batch can be
    recomputed from (base seed, epoch, batch index) alone.

    **Resuming.** ``state_dict()`` returns a small JSON-serializable dict: the base seed, the
    epoch in progress, the number of batches of it already yielded, and the settings that give
    those numbers their meaning. After ``load_state_dict(state)`` the next ``iter()`` continues
    that epoch with the next batch, yielding exactly the batches (after ``transform``) the
    uninterrupted run would have yielded. A finished epoch is saved as the start of the next one.

    **Sharding** (data-parallel training, one loader per process): with ``num_shards=W`` and
    ``shard_index=r`` every rank shuffles the whole dataset identically (same base seed and
    epoch) and takes the positions ``r, r + W, r + 2W, ...`` of the epoch's order, as PyTorch's
    ``DistributedSampler`` does; so W ranks with batch size B/W together see the batches of one
    process with batch size B. When ``W`` does not divide ``N``, the remainder is handled the way
    ``DistributedSampler`` handles it:

    - ``drop_last=False``: the order is padded by repeating its first ``W*ceil(N/W) - N``
      entries, so every rank gets ``ceil(N/W)`` samples and the union of the ranks is the whole
      dataset (up to ``W - 1`` samples are seen twice per epoch, each by a different rank);
    - ``drop_last=True``: the last ``N mod W`` entries of the order are dropped, every rank gets
      ``N // W`` samples, the ranks are disjoint, and each rank then drops its incomplete last batch.

    Either way every rank yields the same number of batches per epoch, ``len(loader)``. All ranks
    must use the same base seed: pass an int ``seed`` when ``shuffle=True`` and ``num_shards > 1``.

    Args:
        dataset: an object with ``arrays()`` returning a tuple of equal-length NumPy arrays, e.g.
            :class:`MNIST`, :class:`CIFAR10` or :class:`ArrayDataset`. The arrays are read at
            each ``iter()``.
        batch_size (int): samples per batch (per shard), >= 1. Default 64.
        shuffle (bool): a new order at every epoch. Default False.
        seed (int or np.random.Generator, optional): base seed (an int >= 0), or a Generator to
            draw it from; None draws it from minidl's global generator. Default None.
        drop_last (bool): drop the last batch when it has fewer than ``batch_size`` samples (and,
            when sharded, the samples that do not divide evenly among the shards). Default False.
        transform (callable, optional): ``transform(x, rng) -> x`` applied to the first array of
            every batch (the images) with the batch's own ``np.random.Generator``, e.g.
            ``transforms.Compose([...])``. It must return an array with the same number of samples.
        num_shards (int): number of shards (data-parallel processes), >= 1. Default 1.
        shard_index (int): this process's shard, ``0 <= shard_index < num_shards``. Default 0.

    Attributes:
        epoch (int): the epoch the next ``iter()`` produces (starts at 0).

    ``len(loader)`` is the number of batches per epoch of this shard: with ``n`` samples per
    shard (``N`` unsharded, see above otherwise), ``ceil(n / batch_size)``, or
    ``n // batch_size`` with ``drop_last``.

    Raises:
        TypeError: ``dataset`` has no ``arrays()`` method, or ``transform`` is not callable.
        ValueError: the dataset is empty or its arrays differ in length; ``batch_size`` or
            ``num_shards`` not an int >= 1; ``shard_index`` not an int in ``[0, num_shards)``;
            ``shuffle`` or ``drop_last`` not a bool; ``seed`` not None, an int >= 0 or a
            Generator; ``num_shards > 1`` with ``shuffle=True`` and no int ``seed``.

    Example:
        >>> loader = DataLoader(MNIST(train=False), batch_size=128, shuffle=True, seed=0)
        >>> for x, y in loader:
        ...     pass  # x: float32 (128, 1, 28, 28), y: int64 (128,)
        >>> state = loader.state_dict()   # save it with the model; later:
        >>> loader.load_state_dict(state)  # the next iter() continues where the run was
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, seed=None, drop_last=False,
                 transform=None, num_shards=1, shard_index=0):
        _dataset_arrays(dataset)
        batch_size = positive_int(batch_size, "batch_size", "DataLoader")
        num_shards = positive_int(num_shards, "num_shards", "DataLoader")
        if not _is_int(shard_index) or not 0 <= shard_index < num_shards:
            raise ValueError(f"DataLoader: shard_index must be an int in [0, num_shards) = "
                             f"[0, {num_shards}), got {shard_index!r}")
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"DataLoader: {name} must be True or False, got {value!r}")
        if _is_int(seed) and seed >= 0:
            base_seed = int(seed)
        elif seed is None or isinstance(seed, np.random.Generator):
            base_seed = None
        else:
            raise ValueError(f"DataLoader: seed must be None, an int >= 0 or a numpy Generator, got {seed!r}")
        if num_shards > 1 and shuffle and base_seed is None:
            raise ValueError(f"DataLoader: num_shards={num_shards} with shuffle=True needs an int seed, the "
                             f"same on every shard, so that all shards shuffle alike; got seed={seed!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be a callable transform(x, rng) or None, "
                            f"got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.transform = transform
        self.num_shards = num_shards
        self.shard_index = int(shard_index)
        self.epoch = 0
        self._seed_given = base_seed  # None: draw at the first iter() that needs randomness
        self._base_seed = base_seed
        self._start_batch = 0  # first batch of the next iter() (set by load_state_dict)
        self._progress = None  # [iterator token, epoch, batches yielded] of the latest iter()

    # ---------------------------------------------------------------------------------------
    # Sizes

    def _samples_per_shard(self, n):
        if self.num_shards == 1:
            return n
        return n // self.num_shards if self.drop_last else -(-n // self.num_shards)

    def _num_batches(self, n):
        per_shard = self._samples_per_shard(n)
        return per_shard // self.batch_size if self.drop_last else -(-per_shard // self.batch_size)

    def __len__(self):
        return self._num_batches(len(_dataset_arrays(self.dataset)[0]))

    # ---------------------------------------------------------------------------------------
    # Randomness: pure functions of (base seed, epoch, batch index)

    def _needs_seed(self):
        return self.shuffle or self.transform is not None

    def _ensure_base_seed(self):
        if self._base_seed is None and self._needs_seed():
            source = self.seed if isinstance(self.seed, np.random.Generator) else get_rng()
            self._base_seed = int(source.integers(_SEED_BOUND))
        return self._base_seed

    def _epoch_indices(self, n, epoch):
        """This shard's sample indices for ``epoch``, in order; None means ``0 .. n-1`` unchanged."""
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self._base_seed, epoch])).permutation(n)
        elif self.num_shards == 1:
            return None
        else:
            order = np.arange(n)
        if self.num_shards > 1:
            total = self._samples_per_shard(n) * self.num_shards
            # drop_last: cut the tail; otherwise pad by repeating the order from its start.
            order = order[:total] if self.drop_last else np.resize(order, total)
            order = order[self.shard_index::self.num_shards]
        return order

    def _batch_rng(self, epoch, batch):
        sequence = np.random.SeedSequence([self._base_seed, epoch], spawn_key=(self.shard_index, batch))
        return np.random.default_rng(sequence)

    # ---------------------------------------------------------------------------------------
    # Iteration

    def __iter__(self):
        arrays = _dataset_arrays(self.dataset)
        n = len(arrays[0])
        epoch, start = self.epoch, self._start_batch
        self._ensure_base_seed()
        indices = self._epoch_indices(n, epoch)
        self.epoch, self._start_batch = epoch + 1, 0
        token = object()
        self._progress = [token, epoch, start]
        return self._batches(arrays, indices, epoch, start, self._num_batches(n), token)

    def _batches(self, arrays, indices, epoch, start, num_batches, token):
        size = self.batch_size
        for b in range(start, num_batches):
            if indices is None:
                batch = tuple(a[b * size:(b + 1) * size].copy() for a in arrays)
            else:
                index = indices[b * size:(b + 1) * size]
                batch = tuple(a[index] for a in arrays)
            if self.transform is not None:
                batch = (self._apply_transform(batch[0], epoch, b),) + batch[1:]
            if self._progress is not None and self._progress[0] is token:
                self._progress[2] = b + 1
            yield batch

    def _apply_transform(self, x, epoch, batch):
        out = self.transform(x, self._batch_rng(epoch, batch))
        if not isinstance(out, np.ndarray) or out.ndim < 1 or len(out) != len(x):
            got = f"shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"DataLoader: transform must return a NumPy array with the batch's {len(x)} "
                             f"samples along axis 0, got {got}")
        return out

    # ---------------------------------------------------------------------------------------
    # Epochs and state

    def set_epoch(self, epoch):
        """Choose the epoch the next ``iter()`` produces (like ``DistributedSampler.set_epoch``).

        A position loaded with :meth:`load_state_dict` is kept when ``epoch`` is its epoch (so the
        usual ``set_epoch(e)`` before each epoch does not undo a resume); any other epoch starts
        at its first batch.

        Args:
            epoch (int): the epoch number, >= 0.
        Raises:
            ValueError: ``epoch`` is not an int >= 0.
        """
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        if int(epoch) != self.epoch:
            self._start_batch = 0
        self.epoch = int(epoch)
        self._progress = None

    def state_dict(self):
        """Return where the loader is, as a small JSON-serializable dict.

        Keys: ``"base_seed"`` (int, or None if not drawn yet: then it is drawn from minidl's
        global generator at the next ``iter()``, so a checkpoint taken before the first batch
        must restore that generator too), ``"epoch"`` (the epoch in
        progress, or the next one when none is), ``"batches_yielded"`` (batches of that epoch
        already yielded by the latest ``iter()``), and the settings the position depends on:
        ``"batch_size"``, ``"num_samples"``, ``"num_shards"``, ``"shuffle"``, ``"drop_last"``.
        The dict is the same on every shard. A caller that did not use the last yielded batch
        (e.g. an interrupted step) may lower ``"batches_yielded"`` by one before saving.

        Returns:
            dict: the state, for :meth:`load_state_dict`.
        """
        n = len(_dataset_arrays(self.dataset)[0])
        if self._progress is not None:
            _, epoch, done = self._progress
        else:
            epoch, done = self.epoch, self._start_batch
        if done >= self._num_batches(n):  # a finished epoch: save the start of the next
            epoch, done = epoch + 1, 0
        return {"base_seed": self._base_seed, "epoch": int(epoch), "batches_yielded": int(done),
                "batch_size": self.batch_size, "num_samples": int(n), "num_shards": self.num_shards,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state):
        """Continue from a :meth:`state_dict`: the next ``iter()`` resumes that epoch at that batch.

        The loaded base seed replaces this loader's (a ``None`` one means "not drawn yet": this
        loader's int ``seed`` or, without one, a fresh draw at the next ``iter()``).

        Args:
            state (dict): as returned by :meth:`state_dict` (e.g. after a JSON round trip).
        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: missing or unknown keys, a value of the wrong type or range, or settings
                (``batch_size``, ``num_samples``, ``num_shards``, ``shuffle``, ``drop_last``) that
                differ from this loader's, with which the saved position would mean other batches.
                The loader is unchanged on error.
        """
        where = "DataLoader.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{where}: expected a dict from DataLoader.state_dict(), got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        unknown = sorted(str(k) for k in state if k not in _STATE_KEYS)
        if missing or unknown:
            raise ValueError(f"{where}: expected the keys {list(_STATE_KEYS)}; missing {missing}, unknown {unknown}")
        seed = state["base_seed"]
        if seed is not None and not (_is_int(seed) and 0 <= seed):
            raise ValueError(f"{where}: base_seed must be None or an int >= 0, got {seed!r}")
        for key in ("epoch", "batches_yielded", "num_samples", "batch_size", "num_shards"):
            if not _is_int(state[key]) or state[key] < 0:
                raise ValueError(f"{where}: {key} must be an int >= 0, got {state[key]!r}")
        for key in ("shuffle", "drop_last"):
            if not isinstance(state[key], (bool, np.bool_)):
                raise ValueError(f"{where}: {key} must be True or False, got {state[key]!r}")
        n = len(_dataset_arrays(self.dataset)[0])
        ours = {"batch_size": self.batch_size, "num_samples": n, "num_shards": self.num_shards,
                "shuffle": self.shuffle, "drop_last": self.drop_last}
        for key, value in ours.items():
            if state[key] != value:
                raise ValueError(f"{where}: the state was saved with {key}={state[key]!r} but this loader has "
                                 f"{key}={value!r}; the saved position only means the same batches with the "
                                 f"same settings")
        epoch, done, num_batches = int(state["epoch"]), int(state["batches_yielded"]), self._num_batches(n)
        if done > num_batches:
            raise ValueError(f"{where}: batches_yielded must be in [0, {num_batches}] (batches per epoch), "
                             f"got {done}")
        if done == num_batches:
            epoch, done = epoch + 1, 0
        self._base_seed = self._seed_given if seed is None else int(seed)
        self.epoch, self._start_batch, self._progress = epoch, done, None

    def __repr__(self):
        shards = f", shard {self.shard_index} of {self.num_shards}" if self.num_shards > 1 else ""
        return (f"DataLoader({type(self.dataset).__name__}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}{shards}, batches={len(self)}, "
                f"epoch={self.epoch})")

"""DistributedDataParallel: the same model on every rank, gradients averaged after backward."""
import contextlib
import hashlib

import numpy as np

from .._checks import positive_int
from ..layers.module import Module
from ..model import Sequential
from .collectives import ProcessGroup, all_gather, all_reduce, broadcast, init

__all__ = ["DistributedDataParallel"]

DEFAULT_BUCKET_BYTES = 25 * 2 ** 20
"""PyTorch's default bucket size (``bucket_cap_mb=25``)."""


def plan_buckets(arrays, bucket_bytes):
    """Split ``arrays`` (kept in order) into runs of one dtype holding at most ``bucket_bytes``.

    An array larger than ``bucket_bytes`` gets a bucket of its own.

    Returns:
        list[list[int]]: the indices of the arrays in each bucket.
    """
    buckets, current, size = [], [], 0
    for i, a in enumerate(arrays):
        if current and (a.dtype != arrays[current[0]].dtype or size + a.nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += a.nbytes
    if current:
        buckets.append(current)
    return buckets


class _Bucket:
    """One flat buffer that the arrays at ``indices`` are copied into and back out of."""

    def __init__(self, indices, arrays):
        self.indices = indices
        self.flat = np.empty(sum(arrays[i].size for i in indices), arrays[indices[0]].dtype)

    def pack(self, arrays):
        np.concatenate([arrays[i].reshape(-1) for i in self.indices], out=self.flat)

    def unpack(self, arrays, scale=None):
        offset = 0
        for i in self.indices:
            a = arrays[i]
            piece = self.flat[offset:offset + a.size].reshape(a.shape)
            if scale is None:
                np.copyto(a, piece)
            else:
                np.multiply(piece, scale, out=a)
            offset += a.size


class _Coalescer:
    """The buckets of a list of arrays, re-planned only when their dtypes or sizes change."""

    def __init__(self, bucket_bytes):
        self.bucket_bytes = bucket_bytes
        self._signature = None
        self._buckets = []

    def buckets(self, arrays):
        signature = tuple((a.dtype.str, a.size) for a in arrays)
        if signature != self._signature:
            plan = plan_buckets(arrays, self.bucket_bytes)
            self._buckets = [_Bucket(indices, arrays) for indices in plan]
            self._signature = signature
        return self._buckets


class DistributedDataParallel(Module):
    """Data-parallel training: each rank runs ``module`` on its part of the batch and the
    gradients are averaged over the ranks after the backward pass (PyTorch's
    ``torch.nn.parallel.DistributedDataParallel``).

    Construction broadcasts rank 0's parameters and buffers to every rank, so all ranks start
    from the same model. :meth:`backward` runs ``module.backward`` and then all-reduces the
    gradients with op ``"sum"`` and divides them by the world size: with a loss that is a mean
    over the batch and equal per-rank batches, every rank then holds the gradient of one
    process with the whole batch, and identical optimizer steps keep the replicas identical.
    Gradients travel in a few large messages: they are copied, in reverse layer order (the
    order in which backward produces them), into flat buckets of at most ``bucket_bytes`` of
    one dtype, and each bucket is one ``all_reduce``.

    The wrapper is a :class:`~minidl.layers.Module` whose only child is ``module``, so
    :class:`~minidl.Trainer`, ``parameters()``, ``train()``/``eval()`` and ``state_dict()``
    work on it unchanged. As in PyTorch, ``state_dict()`` keys get the prefix ``"module."``
    (``"module.1.running_mean"``); save ``ddp.module.state_dict()`` for a checkpoint that loads
    into the bare model.

    BatchNorm layers inside still normalize with each rank's own batch; convert them with
    :meth:`minidl.layers.SyncBatchNorm.convert_sync_batchnorm` for statistics over the union
    of the ranks' batches. With ``broadcast_buffers`` (PyTorch's default) rank 0's buffers
    (running statistics) are copied to all ranks before every forward in training mode.

    In a single process (world size 1) no communication happens and the wrapper computes
    exactly what ``module`` computes.

    Args:
        module (Module): the model, built identically on every rank.
        bucket_bytes (int): the largest bucket, in bytes. Default 25 MiB (PyTorch's
            ``bucket_cap_mb=25``).
        overlap (bool): start each bucket's all-reduce (non-blocking) as soon as the backward
            has produced its gradients, while the remaining layers run; ``module`` must be a
            :class:`~minidl.Sequential`. Default False: on the measured machine it did not
            help (see the README's distributed section).
        broadcast_buffers (bool): copy rank 0's buffers to every rank before each training
            forward. Default True.
        group (ProcessGroup or None): the ranks to average over; default the world
            (:func:`~minidl.distributed.init` is called if needed).

    Raises:
        TypeError: ``module`` is not a Module, or ``group`` not a ProcessGroup.
        ValueError: ``bucket_bytes`` not an int >= 1; ``overlap`` with a model that is not a
            Sequential; the ranks built different models (parameter/buffer shapes or dtypes
            differ; every rank raises).

    Example:
        >>> dist.init()
        >>> model = DistributedDataParallel(mnist_cnn())
        >>> loader = DataLoader(train, 32, shuffle=True, seed=0,
        ...                     num_shards=dist.get_world_size(), shard_index=dist.get_rank())
        >>> Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.05)).fit(loader)
    """

    def __init__(self, module, bucket_bytes=DEFAULT_BUCKET_BYTES, overlap=False,
                 broadcast_buffers=True, group=None):
        super().__init__()
        name = type(self).__name__
        if not isinstance(module, Module):
            raise TypeError(f"{name}: module must be a minidl Module, got {type(module).__name__}")
        if group is not None and not isinstance(group, ProcessGroup):
            raise TypeError(f"{name}: group must be a ProcessGroup or None, got {type(group).__name__}")
        self.bucket_bytes = positive_int(bucket_bytes, "bucket_bytes", name)
        if overlap and not isinstance(module, Sequential):
            raise ValueError(f"{name}: overlap=True needs a Sequential model (its layers are walked "
                             f"in reverse), got {type(module).__name__}")
        self.module = module
        self.overlap = bool(overlap)
        self.broadcast_buffers = bool(broadcast_buffers)
        self.group = group if group is not None else init()
        self._require_sync = True
        self._grad_buckets = _Coalescer(self.bucket_bytes)
        self._state_buckets = _Coalescer(self.bucket_bytes)
        if self.group.size > 1:
            self._check_same_model()
            self._broadcast([p.data for p in self._unique_parameters()] + self._buffer_arrays())

    # ------------------------------------------------------------------------------- state
    def _unique_parameters(self):
        seen, params = set(), []
        for p in self.module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return params

    def _buffer_arrays(self):
        """The module's buffers grouped by dtype (stable), so that the float running statistics
        travel in one bucket and the int64 counters in another: 2 messages instead of 2 per
        BatchNorm layer (buckets hold one dtype)."""
        arrays = [b for _, b in self.module.named_buffers() if isinstance(b, np.ndarray)]
        return sorted(arrays, key=lambda a: a.dtype.str)

    def _check_same_model(self):
        """Raise ValueError on every rank unless all ranks hold models of the same layout."""
        layout = [(name, p.shape, p.dtype.str) for name, p in self.module.named_parameters()]
        layout += [(name, b.shape, b.dtype.str) for name, b in self.module.named_buffers()]
        digest = hashlib.sha256(repr(layout).encode()).digest()
        mine = np.array([len(layout), int.from_bytes(digest[:7], "little")], np.int64)
        everyone = all_gather(mine, self.group)
        if not (everyone == mine).all():
            raise ValueError(f"{type(self).__name__}: the ranks built different models (the names, "
                             f"shapes or dtypes of their parameters and buffers differ); rank "
                             f"{self.group.rank} has {len(layout)} arrays: {layout}")

    def _broadcast(self, arrays):
        """Copy rank 0's ``arrays`` into every rank's, a bucket per message."""
        root = self.group.rank == 0
        for bucket in self._state_buckets.buckets(arrays):
            if root:
                bucket.pack(arrays)
            broadcast(bucket.flat, 0, self.group)
            if not root:
                bucket.unpack(arrays)

    # ---------------------------------------------------------------------- forward/backward
    def forward(self, x):
        """Run ``module`` on this rank's batch (after syncing buffers, see the class)."""
        if self.training and self.broadcast_buffers and self.group.size > 1:
            self._broadcast(self._buffer_arrays())
        return self.module(x)

    def backward(self, dout, input_grad=True):
        """Backpropagate through ``module``, then average the gradients over the ranks.

        Args:
            dout (np.ndarray): d loss / d output of this rank's forward.
            input_grad (bool): as for :meth:`minidl.Sequential.backward`.
        Returns:
            d loss / d input of this rank's batch (not averaged), or None when ``input_grad``
            is False.
        Inside :meth:`no_sync` the gradients are only accumulated locally.
        """
        sync = self._require_sync and self.group.size > 1
        if sync and self.overlap:
            return self._backward_overlapped(dout, input_grad)
        dx = self.module.backward(dout) if input_grad else self.module.backward(dout, input_grad=False)
        if sync:
            grads = [p.grad for p in reversed(self._unique_parameters())]
            scale = 1.0 / self.group.size
            for bucket in self._grad_buckets.buckets(grads):
                bucket.pack(grads)
                all_reduce(bucket.flat, "sum", self.group)
                bucket.unpack(grads, scale)
        return dx

    def _backward_overlapped(self, dout, input_grad):
        """Walk the Sequential's layers in reverse, launching each bucket once it is complete."""
        params = list(reversed(self._unique_parameters()))
        index = {id(p): i for i, p in enumerate(params)}
        grads = [p.grad for p in params]
        buckets = self._grad_buckets.buckets(grads)
        layers = list(self.module)
        # a gradient is final after the backward of the first layer (in forward order) that has it
        first_owner = {}
        for position, layer in enumerate(layers):
            for p in layer.parameters():
                first_owner.setdefault(index[id(p)], position)
        missing = [len(b.indices) for b in buckets]
        bucket_of = {i: k for k, b in enumerate(buckets) for i in b.indices}
        works = []
        for position in range(len(layers) - 1, -1, -1):
            if position == 0 and not input_grad:
                dout = layers[0].backward(dout, input_grad=False)
            else:
                dout = layers[position].backward(dout)
            for i, owner in first_owner.items():
                if owner == position:
                    missing[bucket_of[i]] -= 1
            while len(works) < len(buckets) and missing[len(works)] == 0:
                bucket = buckets[len(works)]
                bucket.pack(grads)
                works.append(all_reduce(bucket.flat, "sum", self.group, async_op=True))
            for work in works:
                work.is_completed()  # lets MPI progress the messages already started
        for bucket in buckets[len(works):]:  # only if a parameter belongs to no layer
            bucket.pack(grads)
            works.append(all_reduce(bucket.flat, "sum", self.group, async_op=True))
        scale = 1.0 / self.group.size
        for bucket, work in zip(buckets, works):
            work.wait()
            bucket.unpack(grads, scale)
        return dout

    @contextlib.contextmanager
    def no_sync(self):
        """Context in which :meth:`backward` skips the all-reduce (gradient accumulation).

        The gradients accumulated inside are averaged by the first backward after it.
        """
        previous, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = previous

    def bucket_sizes(self):
        """The byte sizes of the gradient buckets, in the order they are all-reduced."""
        grads = [p.grad for p in reversed(self._unique_parameters())]
        return [b.flat.nbytes for b in self._grad_buckets.buckets(grads)]

    def extra_repr(self):
        return (f"world_size={self.group.size}, bucket_bytes={self.bucket_bytes}, "
                f"overlap={self.overlap}, broadcast_buffers={self.broadcast_buffers}")

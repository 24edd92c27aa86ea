"""Data-parallel training over MPI (mpi4py), with PyTorch's names::

    import minidl.distributed as dist
    dist.init()                                   # MPI under mpiexec, else one process
    model = layers.SyncBatchNorm.convert_sync_batchnorm(model)   # optional: BatchNorm
                                                  # statistics over every rank's batch
    model = dist.DistributedDataParallel(model)   # same start everywhere, averaged gradients

Run with ``mpiexec -n 2 python train.py``. mpi4py is an optional dependency
(``pip install "minidl[mpi]"``) imported only by :func:`init` when MPI is used; importing
minidl or this package never imports it. See :mod:`minidl.distributed.collectives` for the
failure handling (an uncaught exception on one rank aborts every rank).
"""
from .collectives import (ProcessGroup, Work, all_gather, all_reduce, barrier, broadcast,
                          destroy_process_group, get_rank, get_world_size, init, is_initialized,
                          is_main_process, new_group, reduce_metrics)
from .ddp import DistributedDataParallel

__all__ = [
    "init", "is_initialized", "destroy_process_group", "new_group", "ProcessGroup", "Work",
    "get_rank", "get_world_size", "is_main_process",
    "all_reduce", "broadcast", "all_gather", "barrier", "reduce_metrics",
    "DistributedDataParallel",
]

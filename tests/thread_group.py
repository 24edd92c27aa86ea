"""W "ranks" as W threads of the test process, for testing synchronized layers without MPI.

``ThreadGroup`` is a :class:`minidl.distributed.ProcessGroup` whose collectives exchange arrays
between threads: every rank puts its array in a shared slot, waits for the others at a barrier,
reads all slots in rank order and waits again (so no slot is overwritten before everyone has
read it). Sums add the rows in rank order, as a deterministic MPI reduction would. The real
thing is tested under ``mpiexec`` (tests/mpi_worker.py); this one makes the in-process tests
(gradient checks across ranks, uneven and empty batches) fast.
"""
import threading

import numpy as np

from minidl.distributed import ProcessGroup

_REDUCE = {"sum": np.sum, "mean": np.sum, "max": np.max, "min": np.min}


class _Exchange:
    def __init__(self, size, timeout):
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)

    def all(self, rank, array):
        """Every rank's ``array``, in rank order."""
        self.slots[rank] = np.array(array, copy=True)
        self.barrier.wait()
        rows = list(self.slots)
        self.barrier.wait()
        return rows


class ThreadGroup(ProcessGroup):
    """One rank of a group whose ranks are threads (see the module docstring)."""

    backend = "threads"

    def __init__(self, rank, exchange):
        super().__init__()
        self.rank = rank
        self.size = len(exchange.slots)
        self._exchange = exchange
        self.calls = []  # the collectives this rank ran, by name

    def _start_all_gather(self, array, out, blocking):
        self.calls.append("all_gather")
        out[...] = np.stack(self._exchange.all(self.rank, array))

    def _start_all_reduce(self, array, op, blocking):
        self.calls.append("all_reduce")
        array[...] = _REDUCE[op](np.stack(self._exchange.all(self.rank, array)), axis=0)

    def _start_broadcast(self, array, root, blocking):
        self.calls.append("broadcast")
        array[...] = self._exchange.all(self.rank, array)[root]

    def _start_barrier(self, blocking):
        self.calls.append("barrier")
        self._exchange.all(self.rank, np.zeros(0))


def thread_groups(size, timeout=30.0):
    """``size`` ThreadGroups, one per rank, sharing one exchange."""
    exchange = _Exchange(size, timeout)
    return [ThreadGroup(rank, exchange) for rank in range(size)]


def run_ranks(groups, function):
    """Run ``function(group)`` for every group on its own thread; return the results in rank
    order. An exception on one rank breaks the barrier for the others (no hang) and is raised
    here (the lowest failing rank's); ``BrokenBarrierError`` of the ranks left waiting is not."""
    results, errors = [None] * len(groups), [None] * len(groups)

    def run(group):
        try:
            results[group.rank] = function(group)
        except BaseException as error:  # noqa: B902 -- handed to the caller
            errors[group.rank] = error
            group._exchange.barrier.abort()

    threads = [threading.Thread(target=run, args=(group,)) for group in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
                 next((e for e in errors if e is not None), None))
    if first is not None:
        raise first
    return results

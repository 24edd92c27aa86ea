"""minidl.distributed: the single-process default in this process, MPI jobs under mpiexec.

The MPI tests start ``mpiexec -n 2 --oversubscribe`` on tests/mpi_worker.py (each start-up
costs about a second, so each run checks many things) with a timeout, so a hang fails the test
instead of blocking the suite (tests/mpi_helpers.py). Open MPI refuses to run as root unless
told; the variables that allow it are set there, in the tests' environment, never by minidl.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl
import minidl.distributed as dist
from minidl import layers, losses, optim
from minidl.data import ArrayDataset, DataLoader
from minidl.distributed.collectives import LAUNCHER_VARIABLES
from minidl.distributed.ddp import plan_buckets

from mpi_helpers import REPO, run_mpi
from thread_group import run_ranks, thread_groups


@pytest.fixture
def fresh():
    """No process group before and after the test (init() is global state)."""
    dist.destroy_process_group()
    yield
    dist.destroy_process_group()


@pytest.fixture
def single(fresh):
    return dist.init()


# ------------------------------------------------------------------------ single process
def test_importing_minidl_does_not_import_mpi4py():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import sys, numpy as np, minidl, minidl.distributed as dist; "
            "assert 'mpi4py' not in sys.modules; g = dist.init(); "
            "dist.DistributedDataParallel(minidl.layers.Dense(2, 2)); "
            "assert 'mpi4py' not in sys.modules and g.backend == 'single', sys.modules.keys()")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_before_init_a_single_process_is_assumed_but_collectives_refuse(fresh):
    assert not dist.is_initialized()
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main_process()
    assert dist.reduce_metrics({"n": 3, "loss": 1.5}) == {"loss": 1.5, "n": 3.0}
    with pytest.raises(RuntimeError, match=r"all_reduce: call minidl.distributed.init\(\) first"):
        dist.all_reduce(np.ones(2))
    with pytest.raises(RuntimeError, match="init"):
        dist.barrier()


def test_init_single_is_the_default_and_idempotent(single):
    assert single.backend == "single" and single.rank == 0 and single.size == 1
    assert dist.init() is single and dist.init("single") is single and dist.is_initialized()
    with pytest.raises(ValueError, match="already initialized with backend='single'"):
        dist.init("mpi")
    with pytest.raises(ValueError, match="already initialized"):
        dist.init(timeout=5)
    dist.destroy_process_group()
    assert not dist.is_initialized() and dist.init(timeout=5).timeout == 5


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "nccl"}, "backend must be one of"),
    ({"timeout": 0}, "timeout must be None or a number of seconds > 0"),
    ({"timeout": True}, "timeout must be None"),
    ({"timeout": "10"}, "timeout must be None"),
])
def test_init_rejects_bad_arguments(fresh, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dist.init(**kwargs)
    assert not dist.is_initialized()


def test_init_without_mpi4py_says_what_to_install(fresh, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r"backend='mpi' was requested.*pip install \"minidl\[mpi\]\""):
        dist.init("mpi")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(ImportError, match="started by an MPI launcher"):
        dist.init()  # auto: under a launcher, silently running alone would be wrong
    assert not dist.is_initialized()


def test_single_process_collectives_are_the_identity(single):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for op in ("sum", "mean", "max", "min"):
        assert dist.all_reduce(a, op) is a and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    work = dist.all_reduce(a, async_op=True)
    assert work.is_completed() and work.wait() is a
    b = np.array([7, 8], np.int64)
    assert dist.broadcast(b, root=0) is b and b.tolist() == [7, 8]
    gathered = dist.all_gather(b)
    assert gathered.shape == (1, 2) and gathered.tolist() == [[7, 8]]
    out = np.zeros((1, 2), np.int64)
    assert dist.all_gather(b, out=out) is out and out.tolist() == [[7, 8]]
    dist.barrier()
    group = dist.new_group([0])
    assert group.size == 1 and group is not single and dist.get_rank(group) == 0
    assert dist.reduce_metrics({"a": 2}) == {"a": 2.0}


def read_only(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("call, error, match", [
    (lambda: dist.all_reduce([1.0, 2.0]), TypeError, "expected a numpy.ndarray, got list"),
    (lambda: dist.all_reduce(np.ones(2, np.float16)), TypeError, "expected dtype float32 or float64 or int32 or int64, got float16"),
    (lambda: dist.all_reduce(np.ones(2, bool)), TypeError, "got bool"),
    (lambda: dist.all_reduce(np.ones(2, np.int64), "mean"), TypeError, "all_reduce: expected dtype float32 or float64, got int64"),
    (lambda: dist.all_reduce(np.ones(2), "avg"), ValueError, r"op must be one of \('sum', 'mean', 'max', 'min'\), got 'avg'"),
    (lambda: dist.all_reduce(np.ones((3, 4))[:, ::2]), ValueError, "must be C-contiguous"),
    (lambda: dist.all_reduce(read_only(np.ones(3))), ValueError, "the array is read-only"),
    (lambda: dist.broadcast(np.ones(2), root=1), ValueError, r"root must be an int in \[0, 1\), got 1"),
    (lambda: dist.broadcast(np.ones(2), root=True), ValueError, "root must be an int"),
    (lambda: dist.all_gather(np.ones(2), out=np.ones((2, 2))), ValueError, r"out must have shape \(1, 2\) and dtype float64"),
    (lambda: dist.all_reduce(np.ones(2), group="world"), TypeError, "group must be a ProcessGroup or None, got str"),
    (lambda: dist.new_group([0, 0]), ValueError, r"ranks must be distinct ints in \[0, 1\)"),
    (lambda: dist.new_group([1]), ValueError, "ranks must be distinct ints"),
    (lambda: dist.new_group([]), ValueError, "ranks must be distinct ints"),
])
def test_collectives_reject_bad_input(single, call, error, match):
    with pytest.raises(error, match=match):
        call()


# -------------------------------------------------------------------------------- buckets
def test_plan_buckets_keeps_order_splits_by_dtype_and_size():
    arrays = [np.zeros(10, np.float32), np.zeros(10, np.float32), np.zeros(100, np.float32),
              np.zeros(5, np.float64), np.zeros(5, np.float64), np.zeros(1, np.float32)]
    # bytes: 40, 40, 400, 40, 40, 4 with a cap of 100 bytes
    assert plan_buckets(arrays, 100) == [[0, 1], [2], [3, 4], [5]]
    assert plan_buckets(arrays, 10 ** 6) == [[0, 1, 2], [3, 4], [5]]
    assert plan_buckets(arrays, 1) == [[0], [1], [2], [3], [4], [5]]
    assert plan_buckets([], 100) == []


# --------------------------------------------------------------------- DDP, one process
def small_cnn(seed):
    rng = np.random.default_rng(seed)
    return minidl.Sequential(
        layers.Conv2D(1, 4, kernel_size=3, padding=1, bias=False, rng=rng), layers.BatchNorm(4),
        layers.ReLU(), layers.MaxPool2D(2), layers.Flatten(), layers.Dense(4 * 4 * 4, 3, rng=rng))


def test_ddp_in_one_process_equals_the_model(single, rng):
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((6, 3)).astype(np.float32)
    plain, wrapped = small_cnn(0), dist.DistributedDataParallel(small_cnn(0), bucket_bytes=64)
    results = [(model(x), model.backward(dout)) for model in (plain, wrapped)]
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    for p, q in zip(wrapped.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    assert len(wrapped.bucket_sizes()) > 1
    assert "world_size=1" in repr(wrapped)


def test_ddp_state_dict_keys_are_prefixed_like_pytorch(single):
    wrapped = dist.DistributedDataParallel(small_cnn(0))
    state = wrapped.state_dict()
    assert list(state) == ["module." + key for key in wrapped.module.state_dict()]
    other = dist.DistributedDataParallel(small_cnn(1))
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    with pytest.raises(KeyError, match="missing keys"):
        other.load_state_dict(wrapped.module.state_dict())


def test_ddp_runs_under_the_trainer(single):
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(rng.standard_normal((24, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 24))
    model = dist.DistributedDataParallel(small_cnn(0))
    trainer = minidl.Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
                             progress=False)
    history = trainer.fit(DataLoader(dataset, 8, shuffle=True, seed=0), epochs=2)
    assert trainer.global_step == 6 and len(history.step_loss) == 6
    assert model.training and 0.0 <= trainer.evaluate(DataLoader(dataset, 8))["accuracy"] <= 1.0


def test_ddp_broadcasts_buffers_in_one_message_per_dtype(rng):
    """Before a training forward rank 0's running statistics (float32) and batch counters
    (int64) reach every rank in two messages, not two per BatchNorm (ranks as threads)."""
    groups = thread_groups(2)
    x = rng.standard_normal((2, 4, 1, 8, 8)).astype(np.float32)

    def rank(group):
        model = minidl.Sequential(layers.Conv2D(1, 4, 3, padding=1, bias=False), layers.BatchNorm(4),
                                  layers.Conv2D(4, 4, 3, padding=1, bias=False), layers.BatchNorm(4))
        ddp = dist.DistributedDataParallel(model, group=group)
        ddp(x[group.rank])  # each rank's BatchNorms update their running statistics differently
        before = [b.copy() for _, b in ddp.named_buffers()]
        group.calls.clear()
        received = []
        model.register_forward_pre_hook(lambda m, inputs: received.extend(b.copy() for _, b in m.named_buffers()))
        ddp(x[group.rank])
        return group.calls, before, received

    (calls0, before0, received0), (calls1, before1, received1) = run_ranks(groups, rank)
    assert calls0 == calls1 == ["broadcast", "broadcast"]
    assert not np.array_equal(before0[0], before1[0])
    for a, b in zip(received1, before0):
        np.testing.assert_array_equal(a, b)  # rank 1 got rank 0's buffers before its forward
    assert before0[1].dtype == np.float32 and before0[2].dtype == np.int64


def test_ddp_initializes_the_default_group(fresh):
    dist.DistributedDataParallel(small_cnn(0))
    assert dist.is_initialized() and dist.get_world_size() == 1


@pytest.mark.parametrize("kwargs, error, match", [
    ({"module": "model"}, TypeError, "module must be a minidl Module, got str"),
    ({"bucket_bytes": 0}, ValueError, "bucket_bytes must be an integer >= 1, got 0"),
    ({"group": 3}, TypeError, "group must be a ProcessGroup or None, got int"),
    ({"module": layers.Dense(2, 2), "overlap": True}, ValueError, "overlap=True needs a Sequential model"),
])
def test_ddp_rejects_bad_arguments(single, kwargs, error, match):
    kwargs = {"module": small_cnn(0), **kwargs}
    with pytest.raises(error, match=match):
        dist.DistributedDataParallel(**kwargs)


# -------------------------------------------------------------------- MPI jobs (mpiexec -n 2)
def test_mpi_collectives_and_ddp_average_to_the_full_batch_gradient():
    proc = run_mpi("collectives,ddp")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        assert f"rank {rank}: collectives,ddp ok" in proc.stdout


def test_mpi_sync_batchnorm_reproduces_one_process_and_the_trainer_runs_on_two_ranks(tmp_path):
    """tests/mpi_worker.py, programs sync_batchnorm and trainer:

    * 2 ranks with batch 4 each and SyncBatchNorm (DDP) reproduce 1 process with batch 8 over 5
      SGD steps, float64: gradients at every step, parameters and running statistics to 1e-10;
    * with ordinary BatchNorm they do not, and the difference is the statistics: each rank's
      BatchNorm input is the full batch's rows, its output is BatchNorm of its own half;
    * uneven batches (3 and 5) and a rank without samples give the full batch's results;
    * the Trainer on DDP + SyncBatchNorm: only rank 0 prints and writes (checkpoint,
      ModelCheckpoint, CSVLogger), History and evaluations equal on both ranks and equal to the
      single-process figures (a sharded loader's padding counted twice, as documented), resume
      reads rank 0's checkpoint on both ranks and ends bit-identical to a straight run, and a
      checkpoint visible to one rank only is an error on both.
    """
    proc = run_mpi("sync_batchnorm,trainer", env={"MPI_WORKER_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        assert f"rank {rank}: sync_batchnorm,trainer ok" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["rank0", "shared"]  # rank 1 never wrote a file


def test_mpi_a_raising_rank_ends_every_rank_with_an_error():
    proc = run_mpi("raising_rank", timeout=60)  # without the abort hook this hangs until the timeout
    assert proc.returncode != 0
    assert "RuntimeError: deliberate failure on rank 1" in proc.stderr
    assert "rank 1 of 2 raised RuntimeError; calling MPI_Abort" in proc.stderr
    assert "passed a collective" not in proc.stdout and " ok" not in proc.stdout


def test_mpi_timeout_ends_a_job_whose_rank_is_stuck():
    proc = run_mpi("stuck_rank", "1.0", timeout=60)  # rank 1 sleeps for 120 s
    assert proc.returncode != 0
    assert "TimeoutError: minidl.distributed: all_reduce(sum) of (3,) float64 on rank 0 of 2 did not " \
           "finish within timeout=1.0 s" in proc.stderr
    assert "calling MPI_Abort" in proc.stderr

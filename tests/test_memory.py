"""minidl._memory: the caching allocator (NEP 49 handler) behind minidl's own arrays."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import minidl
from minidl import _memory

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import get_handler_name

LARGE = (64, 1024)  # 256 KiB of float32: cached
SMALL = (4, 100)    # 1.6 KiB: straight to malloc/free


def address(array):
    return array.__array_interface__["data"][0]


@pytest.fixture
def cache():
    """An empty cache with the default limit, restored afterwards."""
    limit = _memory.get_cache_limit()
    _memory.empty_cache()
    yield _memory
    _memory.set_cache_limit(limit)
    _memory.empty_cache()


def test_blocks_are_64_byte_aligned(cache):
    for size in (1, 3, 63, 100, 4095, 65535, 65536, 65537, 300001, 1 << 21):
        array = cache.empty((size,), np.uint8)
        assert address(array) % 64 == 0, size
        assert get_handler_name(array) == "minidl_caching"
        array[...] = 7  # every byte is writable
        assert array.sum() == 7 * size


def test_a_freed_block_is_reused_by_the_next_allocation_of_its_size(cache):
    first = cache.empty(LARGE, np.float32)
    where = address(first)
    del first
    assert cache.memory_stats()["cached_bytes"] == 256 << 10
    hits = cache.memory_stats()["hits"]
    again = cache.empty((256, 256), np.float32)  # another shape, the same bytes
    assert address(again) == where and cache.memory_stats()["hits"] == hits + 1
    assert again.shape == (256, 256) and again.dtype == np.float32 and again.flags.c_contiguous
    del again
    # sizes are rounded up to 4 KiB: 65537 and 69632 bytes share a block size
    odd = cache.empty((65537,), np.uint8)
    where = address(odd)
    del odd
    assert address(cache.empty((69632,), np.uint8)) == where


def test_a_smaller_allocation_takes_the_smallest_free_block_of_up_to_twice_its_size(cache):
    """Exact sizes first; else the smallest free block no more than twice as large (it keeps
    its capacity); never a block more than twice as large."""
    blocks = {n: cache.empty((n << 10,), np.uint8) for n in (128, 160, 300, 600)}  # KiB
    where = {n: address(a) for n, a in blocks.items()}
    del blocks
    hits, misses = cache.memory_stats()["hits"], cache.memory_stats()["misses"]
    exact = cache.empty((160 << 10,), np.uint8)
    assert address(exact) == where[160]
    smaller = cache.empty((100 << 10,), np.uint8)  # 128 KiB is the smallest that fits
    assert address(smaller) == where[128]
    assert cache.memory_stats()["allocated_bytes"] >= (160 + 128) << 10  # the whole blocks
    middle = cache.empty((290 << 10,), np.uint8)  # 300 fits; 600 too, but it is larger
    assert address(middle) == where[300]
    tiny = cache.empty((200 << 10,), np.uint8)  # only 600 KiB is left: more than twice
    assert address(tiny) != where[600]
    stats = cache.memory_stats()
    assert (stats["hits"], stats["misses"]) == (hits + 3, misses + 1)
    assert stats["cached_bytes"] == 600 << 10
    smaller[...] = 1  # the block serves its whole request
    assert smaller.sum() == 100 << 10


def test_an_array_in_use_is_never_handed_out(cache):
    kept = cache.empty(LARGE, np.float32)
    view = cache.empty(LARGE, np.float32)[:1]  # the view keeps its base alive
    kept[...] = 1.0
    others = [cache.empty(LARGE, np.float32) for _ in range(4)]
    addresses = {address(kept), address(view)} | {address(a) for a in others}
    assert len(addresses) == 6
    for other in others:
        other[...] = 2.0
    assert np.all(kept == 1.0)


def test_small_blocks_are_not_cached(cache):
    before = cache.memory_stats()
    small = cache.empty(SMALL, np.float32)
    assert cache.memory_stats()["allocated_bytes"] == before["allocated_bytes"] + small.nbytes
    del small
    after = cache.memory_stats()
    assert after["cached_bytes"] == 0 and after["allocated_bytes"] == before["allocated_bytes"]
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_user_arrays_keep_numpy_allocator(cache):
    ours = cache.empty(LARGE, np.float32)
    theirs = np.empty(LARGE, np.float32)
    assert get_handler_name(ours) == "minidl_caching"
    assert get_handler_name(theirs) != "minidl_caching"
    assert get_handler_name() != "minidl_caching"  # the current handler was put back
    assert get_handler_name(ours + 1) != "minidl_caching"  # NumPy's results are NumPy's
    assert get_handler_name(cache.zeros(LARGE, np.float32)) == "minidl_caching"


def test_memory_stats_count_live_and_cached_bytes(cache):
    base = cache.memory_stats()
    assert set(base) == {"allocated_bytes", "cached_bytes", "cached_blocks", "peak_bytes",
                         "hits", "misses", "releases", "cache_limit"}
    arrays = [cache.empty(LARGE, np.float32) for _ in range(3)]
    stats = cache.memory_stats()
    assert stats["allocated_bytes"] == base["allocated_bytes"] + 3 * (256 << 10)
    assert stats["misses"] == base["misses"] + 3
    assert stats["peak_bytes"] >= stats["allocated_bytes"]
    del arrays
    stats = cache.memory_stats()
    assert stats["allocated_bytes"] == base["allocated_bytes"]
    assert stats["cached_bytes"] == 3 * (256 << 10) and stats["cached_blocks"] == 3
    assert stats["peak_bytes"] >= base["allocated_bytes"] + 3 * (256 << 10)
    cache.empty_cache()
    cache.reset_peak_memory_stats()
    assert cache.memory_stats()["peak_bytes"] == base["allocated_bytes"]


def test_cache_limit_evicts_least_recently_freed(cache):
    block = 256 << 10
    cache.set_cache_limit(3 * block)
    assert cache.get_cache_limit() == 3 * block
    arrays = [cache.empty(LARGE, np.float32) for _ in range(5)]
    addresses = [address(a) for a in arrays]
    releases = cache.memory_stats()["releases"]
    for i in range(5):
        arrays[i] = None  # freed in order: 0 is the least recently freed
    stats = cache.memory_stats()
    assert stats["cached_bytes"] == 3 * block and stats["releases"] == releases + 2
    again = [cache.empty(LARGE, np.float32) for _ in range(3)]
    assert {address(a) for a in again} == set(addresses[2:])
    cache.set_cache_limit(block)  # lowering the limit releases at once
    assert cache.memory_stats()["cached_bytes"] <= block


def test_a_block_larger_than_the_limit_is_not_kept(cache):
    cache.set_cache_limit(100 << 10)
    array = cache.empty(LARGE, np.float32)
    del array
    assert cache.memory_stats()["cached_bytes"] == 0


def test_limit_zero_turns_caching_off(cache):
    cache.set_cache_limit(0)
    for _ in range(3):
        array = cache.empty(LARGE, np.float32)
        del array
        assert cache.memory_stats()["cached_bytes"] == 0


def test_idle_blocks_are_released_after_idle_allocations(cache):
    old = cache.empty((1 << 20,), np.uint8)  # one block of a size nothing else uses
    del old
    releases = cache.memory_stats()["releases"]
    for _ in range(cache.IDLE_ALLOCATIONS):  # other sizes, reused from the cache
        other = cache.empty(LARGE, np.float32)
        del other
    stats = cache.memory_stats()
    assert stats["cached_bytes"] == (1 << 20) + (256 << 10) and stats["releases"] == releases
    other = cache.empty(LARGE, np.float32)
    stats = cache.memory_stats()
    assert stats["cached_bytes"] == 0 and stats["releases"] == releases + 1


def test_a_block_in_steady_use_is_not_released(cache):
    first = address(cache.empty(LARGE, np.float32))
    for _ in range(3 * cache.IDLE_ALLOCATIONS):
        array = cache.empty(LARGE, np.float32)
        assert address(array) == first
        del array


def test_empty_cache_returns_every_free_block(cache):
    arrays = [cache.empty((n, 1024), np.float32) for n in (64, 65, 66)]
    kept = arrays.pop()
    del arrays
    releases = cache.memory_stats()["releases"]
    assert cache.memory_stats()["cached_blocks"] == 2
    minidl.empty_cache()
    stats = cache.memory_stats()
    assert stats["cached_bytes"] == 0 and stats["cached_blocks"] == 0
    assert stats["releases"] == releases + 2
    kept[...] = 3.0  # a live array is untouched
    assert np.all(kept == 3.0)


@pytest.mark.parametrize("old, new", [(1000, 100000), (100000, 1000), (100000, 200000),
                                      (200000, 100000), (70000, 70001), (10, 20)])
def test_resize_reallocates_and_keeps_the_data(cache, old, new):
    """ndarray.resize on an array that owns allocator memory goes through its realloc."""
    array = cache.empty((old,), np.float64)
    array[...] = np.arange(old)
    before = cache.memory_stats()["allocated_bytes"]
    array.resize((new,), refcheck=False)
    assert get_handler_name(array) == "minidl_caching" and address(array) % 64 == 0
    kept = min(old, new)
    np.testing.assert_array_equal(array[:kept], np.arange(kept))
    if new > old:
        assert not np.any(array[old:])  # NumPy zero-fills what resize adds
    capacity = (lambda n: n if n < 65536 else -(-n // 4096) * 4096)
    assert (cache.memory_stats()["allocated_bytes"] - before
            == capacity(8 * new) - capacity(8 * old))


def test_zeros_are_zero_even_from_a_reused_block(cache):
    dirty = cache.empty(LARGE, np.float32)
    dirty[...] = np.nan
    where = address(dirty)
    del dirty
    clean = cache.zeros(LARGE, np.float32)
    assert address(clean) == where and not np.any(clean)
    fresh = cache.zeros((3, 1 << 20), np.float32)  # a miss: the system's zeroed memory
    assert not np.any(fresh)


def test_allocation_failure_raises_memory_error(cache):
    with pytest.raises(MemoryError):
        cache.empty((1 << 60,), np.uint8)
    array = cache.empty(LARGE, np.float32)
    array[...] = 5.0
    with pytest.raises(MemoryError):  # a failed realloc leaves the old block valid
        array.resize((1 << 60,), refcheck=False)
    assert array.shape == LARGE and np.all(array == 5.0)


def test_threads_share_the_cache_safely(cache):
    errors = []
    base = cache.memory_stats()["allocated_bytes"]

    def work(seed):
        try:
            for i in range(300):
                shape = (64 + (i + seed) % 3, 1024)
                array = cache.empty(shape, np.float32)
                array[...] = seed
                keep = cache.zeros((seed + 1, 4096), np.float64)
                array.resize((shape[0] + 1, 1024), refcheck=False)
                if not (np.all(array[:shape[0]] == seed) and not np.any(keep)):
                    errors.append(seed)
                del array, keep
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.memory_stats()["allocated_bytes"] == base


def test_output_validates_a_callers_array(cache):
    out = np.zeros((2, 3), np.float32)
    assert cache.output("layer", out, (2, 3), np.float32) is out
    new = cache.output("layer", None, (2, 3), np.float32)
    assert new.shape == (2, 3) and get_handler_name(new) == "minidl_caching"
    bad = [np.zeros((3, 2), np.float32), np.zeros((2, 3)), np.zeros((3, 2), np.float32).T,
           [[0.0] * 3] * 2]
    readonly = np.zeros((2, 3), np.float32)
    readonly.flags.writeable = False
    for array in bad + [readonly]:
        with pytest.raises(ValueError, match=r"layer: expected out to be a writable "
                                             r"C-contiguous float32 array of shape \(2, 3\)"):
            cache.output("layer", array, (2, 3), np.float32)


@pytest.mark.parametrize("value", [-1, 1.5, "1G", True, None])
def test_set_cache_limit_rejects_bad_values(value):
    with pytest.raises(ValueError, match="set_cache_limit"):
        minidl.set_cache_limit(value)


def test_cache_limit_from_the_environment():
    code = "import minidl; print(minidl.memory_stats()['cache_limit'])"
    env = dict(os.environ, MINIDL_CACHE_LIMIT="3M")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert int(result.stdout) == 3 << 20
    env["MINIDL_CACHE_LIMIT"] = "lots"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "MINIDL_CACHE_LIMIT" in result.stderr and "'lots'" in result.stderr
    del env["MINIDL_CACHE_LIMIT"]
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert int(result.stdout) == _memory.DEFAULT_CACHE_LIMIT == 512 << 20


def test_an_evaluation_reuses_its_blocks_from_layer_to_layer(cache):
    """Under no_grad the MNIST CNN holds at most two activations at once (a layer's input and
    output); the later, smaller ones take the earlier layers' blocks, so the allocator's peak
    stays near two of the largest (1.15x; 1.72x when blocks served only their own size)."""
    import minidl.models
    minidl.manual_seed(0)
    model = minidl.models.mnist_cnn(norm="batch").eval()
    x = np.random.default_rng(0).random((100, 1, 28, 28), dtype=np.float32)
    cache.reset_peak_memory_stats()
    base = cache.memory_stats()["peak_bytes"]
    with minidl.no_grad():
        for _ in range(2):
            model(x)
    largest = x.shape[0] * 32 * 28 * 28 * 4  # the first convolution's output
    assert cache.memory_stats()["peak_bytes"] - base <= 1.3 * 2 * largest

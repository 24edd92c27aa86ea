/* minidl's caching allocator for NumPy array data (NEP 49 memory handler), in C.
 *
 * NumPy calls these four functions for the data of every array created while the handler is
 * installed (minidl installs it only around its own allocations; see _memory.pyx), and the
 * array remembers the handler, so its data comes back through minidl_cache_free however long it
 * lives. Touching freshly mapped memory costs one page fault per 4 KiB page (about 7 ms per
 * 32 MiB on a 2-core machine), a large part of a memory-bound layer such as BatchNorm; a freed
 * block kept here and handed out again for the next allocation of the same size is already
 * mapped.
 *
 * Every block starts on a 64-byte boundary (a cache line, the widest SIMD load) and is preceded
 * by a header that records its capacity, so realloc and free need no size from the caller.
 * Blocks of at least MINIDL_CACHE_MIN_BYTES have their capacity rounded up to 4 KiB and are
 * kept after free in a list ordered by the time they were freed (oldest first):
 *
 *   - an allocation takes the most recently freed block of exactly its capacity (a "hit"), else
 *     the smallest free block of up to twice its capacity (also a hit: the block keeps its
 *     capacity, the tail is unused), else asks the system (a "miss"; if the system refuses,
 *     the cache is emptied and it asks again). Taking a larger block lets a pass whose arrays
 *     shrink from layer to layer (an evaluation at batch 1000: 100 MB, then 50 MB, then 25 MB
 *     per array) reuse the blocks of the earlier layers instead of mapping new ones;
 *   - the free blocks are at most `limit` bytes: a free that goes over it returns the oldest
 *     free blocks to the system;
 *   - a free block that has not been taken during the next `idle_allocations` cacheable
 *     allocations is returned to the system (so the blocks of a batch size no longer used go
 *     back while training goes on with another).
 *
 * Smaller blocks go straight to malloc/free. All the bookkeeping is under one lock, so the
 * handler may be called from any thread; the system's malloc/free run outside it.
 */
#ifndef MINIDL_MEMORY_H
#define MINIDL_MEMORY_H

#include <Python.h>
#include <pythread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MINIDL_CACHE_ALIGN 64
#define MINIDL_CACHE_PAGE 4096
#define MINIDL_CACHE_MIN_BYTES ((size_t)1 << 16)

/* Stored just before every block's data. `prev`/`next`/`freed_at` are used while it is cached. */
typedef struct minidl_block {
    void *raw;                  /* what malloc/calloc returned */
    size_t capacity;            /* usable bytes from the data pointer on */
    uint64_t freed_at;          /* the allocation clock when it was freed */
    struct minidl_block *prev;  /* older free block */
    struct minidl_block *next;  /* newer free block */
} minidl_block;

typedef struct {
    PyThread_type_lock lock;
    minidl_block *oldest;       /* the free blocks, oldest first */
    minidl_block *newest;
    size_t limit;               /* at most this many bytes in free blocks */
    uint64_t idle_allocations;  /* a free block not taken during this many allocations goes */
    uint64_t clock;             /* cacheable allocations so far */
    size_t cached_bytes, cached_blocks, allocated_bytes, peak_bytes;
    uint64_t hits, misses, releases;
} minidl_cache;

static size_t minidl_round_up(size_t value, size_t step)
{
    return (value + step - 1) / step * step;
}

/* The capacity a request of `size` bytes gets: whole pages if the block is cacheable; 0 if the
 * request is too large to be served at all. */
static size_t minidl_capacity(size_t size)
{
    if (size == 0) size = 1;
    if (size > SIZE_MAX / 2) return 0;
    return size < MINIDL_CACHE_MIN_BYTES ? size : minidl_round_up(size, MINIDL_CACHE_PAGE);
}

static void *minidl_data(minidl_block *block) { return (char *)block + sizeof(minidl_block); }

static minidl_block *minidl_header(void *data)
{
    return (minidl_block *)((char *)data - sizeof(minidl_block));
}

/* A new block from the system (zeroed if `zero`), or NULL. */
static minidl_block *minidl_system_block(size_t capacity, int zero)
{
    const size_t extra = sizeof(minidl_block) + MINIDL_CACHE_ALIGN - 1;
    if (capacity > SIZE_MAX - extra) return NULL;
    void *raw = zero ? calloc(1, capacity + extra) : malloc(capacity + extra);
    if (raw == NULL) return NULL;
    uintptr_t data = ((uintptr_t)raw + sizeof(minidl_block) + MINIDL_CACHE_ALIGN - 1)
                     & ~(uintptr_t)(MINIDL_CACHE_ALIGN - 1);
    minidl_block *block = minidl_header((void *)data);
    block->raw = raw;
    block->capacity = capacity;
    return block;
}

/* Free a chain of blocks linked by `next` (taken out of the cache under the lock). */
static void minidl_release_chain(minidl_block *chain)
{
    while (chain != NULL) {
        minidl_block *next = chain->next;
        free(chain->raw);
        chain = next;
    }
}

/* Under the lock: take `block` out of the cache. */
static void minidl_unlink(minidl_cache *cache, minidl_block *block)
{
    if (block->prev) block->prev->next = block->next; else cache->oldest = block->next;
    if (block->next) block->next->prev = block->prev; else cache->newest = block->prev;
    cache->cached_bytes -= block->capacity;
    cache->cached_blocks -= 1;
}

/* Under the lock: move the oldest free block onto `*chain` (to be freed after unlocking). */
static void minidl_evict_oldest(minidl_cache *cache, minidl_block **chain)
{
    minidl_block *block = cache->oldest;
    minidl_unlink(cache, block);
    block->next = *chain;
    *chain = block;
    cache->releases += 1;
}

/* Under the lock: evict while the free blocks are over `limit` or too long unused. */
static void minidl_trim(minidl_cache *cache, minidl_block **chain)
{
    while (cache->oldest != NULL
           && (cache->cached_bytes > cache->limit
               || cache->clock - cache->oldest->freed_at > cache->idle_allocations)) {
        minidl_evict_oldest(cache, chain);
    }
}

static void minidl_note_peak(minidl_cache *cache)
{
    size_t held = cache->allocated_bytes + cache->cached_bytes;
    if (held > cache->peak_bytes) cache->peak_bytes = held;
}

static void minidl_lock(minidl_cache *cache) { PyThread_acquire_lock(cache->lock, WAIT_LOCK); }
static void minidl_unlock(minidl_cache *cache) { PyThread_release_lock(cache->lock); }

/* Return every free block to the system. */
static void minidl_cache_empty(minidl_cache *cache)
{
    minidl_block *chain = NULL;
    minidl_lock(cache);
    while (cache->oldest != NULL) minidl_evict_oldest(cache, &chain);
    minidl_unlock(cache);
    minidl_release_chain(chain);
}

/* Set the byte limit on free blocks (evicting the oldest ones above it). */
static void minidl_cache_set_limit(minidl_cache *cache, size_t limit)
{
    minidl_block *chain = NULL;
    minidl_lock(cache);
    cache->limit = limit;
    minidl_trim(cache, &chain);
    minidl_unlock(cache);
    minidl_release_chain(chain);
}

static void *minidl_cache_alloc(minidl_cache *cache, size_t size, int zero)
{
    size_t capacity = minidl_capacity(size);
    minidl_block *block = NULL, *chain = NULL;
    int cacheable = capacity >= MINIDL_CACHE_MIN_BYTES;
    if (capacity == 0) return NULL;
    if (cacheable) {
        minidl_lock(cache);
        cache->clock += 1;
        minidl_block *larger = NULL;  /* the smallest free block of up to twice `capacity` */
        for (block = cache->newest; block != NULL; block = block->prev) {
            if (block->capacity == capacity) break;
            if (block->capacity > capacity && block->capacity / 2 <= capacity
                && (larger == NULL || block->capacity < larger->capacity)) {
                larger = block;
            }
        }
        if (block == NULL) block = larger;
        if (block != NULL) {
            minidl_unlink(cache, block);
            cache->hits += 1;
            cache->allocated_bytes += block->capacity;
        }
        minidl_trim(cache, &chain);
        minidl_unlock(cache);
        minidl_release_chain(chain);
        if (block != NULL) {
            if (zero) memset(minidl_data(block), 0, size);
            return minidl_data(block);
        }
    }
    block = minidl_system_block(capacity, zero);
    if (block == NULL && cacheable) {  /* the system refused: give back what we keep, retry */
        minidl_cache_empty(cache);
        block = minidl_system_block(capacity, zero);
    }
    if (block == NULL) return NULL;
    minidl_lock(cache);
    cache->misses += cacheable;
    cache->allocated_bytes += capacity;
    minidl_note_peak(cache);
    minidl_unlock(cache);
    return minidl_data(block);
}

static void minidl_cache_release(minidl_cache *cache, void *data)
{
    if (data == NULL) return;
    minidl_block *block = minidl_header(data), *chain = NULL;
    minidl_lock(cache);
    cache->allocated_bytes -= block->capacity;
    if (block->capacity < MINIDL_CACHE_MIN_BYTES) {
        block->next = NULL;
        chain = block;
    } else {
        block->freed_at = cache->clock;
        block->prev = cache->newest;
        block->next = NULL;
        if (cache->newest) cache->newest->next = block; else cache->oldest = block;
        cache->newest = block;
        cache->cached_bytes += block->capacity;
        cache->cached_blocks += 1;
        minidl_trim(cache, &chain);
    }
    minidl_unlock(cache);
    minidl_release_chain(chain);
}

/* ------------------------------------------------------------------ the NEP 49 handler */
static void *minidl_handler_malloc(void *ctx, size_t size)
{
    return minidl_cache_alloc((minidl_cache *)ctx, size, 0);
}

static void *minidl_handler_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize != 0 && nelem > SIZE_MAX / elsize) return NULL;
    return minidl_cache_alloc((minidl_cache *)ctx, nelem * elsize, 1);
}

static void *minidl_handler_realloc(void *ctx, void *data, size_t new_size)
{
    minidl_cache *cache = (minidl_cache *)ctx;
    if (data == NULL) return minidl_cache_alloc(cache, new_size, 0);
    minidl_block *block = minidl_header(data);
    size_t capacity = minidl_capacity(new_size);
    if (capacity == 0) return NULL;  /* too large; the old block stays valid */
    if (capacity == block->capacity) return data;
    void *moved = minidl_cache_alloc(cache, new_size, 0);
    if (moved == NULL) return NULL;  /* the old block stays valid, as realloc's contract says */
    memcpy(moved, data, block->capacity < new_size ? block->capacity : new_size);
    minidl_cache_release(cache, data);
    return moved;
}

static void minidl_handler_free(void *ctx, void *data, size_t size)
{
    (void)size;  /* the header knows the block's capacity */
    minidl_cache_release((minidl_cache *)ctx, data);
}

static minidl_cache minidl_cache_state;

static PyDataMem_Handler minidl_handler = {
    "minidl_caching",
    1,
    {&minidl_cache_state, minidl_handler_malloc, minidl_handler_calloc, minidl_handler_realloc,
     minidl_handler_free},
};

/* Called once at import, with the GIL held; 0 on success, -1 (MemoryError set) on failure. */
static int minidl_cache_init(size_t limit, uint64_t idle_allocations)
{
    minidl_cache_state.lock = PyThread_allocate_lock();
    if (minidl_cache_state.lock == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    minidl_cache_state.limit = limit;
    minidl_cache_state.idle_allocations = idle_allocations;
    return 0;
}

#endif /* MINIDL_MEMORY_H */

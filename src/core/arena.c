/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexArena: chained blocks with bump allocation and per-size free lists.
 *
 * Invariants:
 * - The arena struct and its first block are one allocation; later blocks
 *   are pushed on `blocks` (newest first) and end at `first`, the block that
 *   reset keeps.
 * - `current` is the regular block being bumped. An oversize request gets a
 *   block of its own that never becomes `current`, so the bump block keeps
 *   its free space.
 * - Every chunk is at least sizeof(void *) bytes, so a freed chunk can hold
 *   the link to the next free chunk (written with memcpy: a chunk may be
 *   unaligned when its allocation asked for alignment 1).
 * - Free lists are keyed by that chunk size: size classes live in a small
 *   hash of buckets, each class node allocated in the arena itself.
 * - bytes_used is the sum of the bumped bytes (alignment padding included);
 *   freeing a chunk does not lower it and reusing one does not raise it.
 */
#include <errno.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/plex_internal.h"

#define ARENA_MAX_ALIGNMENT 4096u
#define ARENA_BUCKETS 16u
#define ARENA_MAX_GROWN_BLOCK (1u << 20)

typedef struct ArenaBlock {
    struct ArenaBlock *next; /* older block */
    unsigned char *data;     /* first usable byte */
    size_t capacity;         /* bytes at data */
    size_t used;             /* bytes bumped */
} ArenaBlock;

typedef struct ArenaSizeClass {
    struct ArenaSizeClass *next; /* next class in the bucket */
    size_t size;                 /* chunk size of this class */
    unsigned char *free_chunks;  /* first free chunk, NULL when none */
} ArenaSizeClass;

struct PlexArena {
    PlexAllocator allocator;                /* copy of the creator's */
    size_t block_size;                      /* capacity of the first block */
    size_t next_block_size;                 /* capacity of the next regular block */
    ArenaBlock *current;                    /* block being bumped */
    ArenaBlock *blocks;                     /* every block, newest first */
    ArenaBlock first;                       /* data follows this struct */
    ArenaSizeClass *buckets[ARENA_BUCKETS]; /* free lists by chunk size */
};

static size_t chunk_size(size_t size)
{
    return size < sizeof(void *) ? sizeof(void *) : size;
}

static size_t bucket_of(size_t size)
{
    return (size_t)(((uint64_t)size * UINT64_C(0x9E3779B97F4A7C15)) >> 60) % ARENA_BUCKETS;
}

static unsigned char *chunk_next(const unsigned char *chunk)
{
    unsigned char *next;

    memcpy(&next, chunk, sizeof(next));
    return next;
}

PlexArena *plex_arena_create(const PlexAllocator *allocator, size_t block_size)
{
    PlexArena *arena;

    if (block_size == 0)
        block_size = PLEX_ARENA_DEFAULT_BLOCK;
    if (block_size > SIZE_MAX - sizeof(PlexArena)) {
        errno = ENOMEM;
        return NULL;
    }
    arena = plex_mem_alloc(allocator, sizeof(PlexArena) + block_size);
    if (!arena)
        return NULL;
    memset(arena, 0, sizeof(*arena));
    if (allocator)
        arena->allocator = *allocator;
    arena->block_size = block_size;
    arena->next_block_size = block_size;
    arena->first.data = (unsigned char *)(arena + 1);
    arena->first.capacity = block_size;
    arena->current = &arena->first;
    arena->blocks = &arena->first;
    return arena;
}

/* Frees every block pushed after the first one. */
static void free_later_blocks(PlexArena *arena)
{
    ArenaBlock *block = arena->blocks;

    while (block != &arena->first) {
        ArenaBlock *next = block->next;
        plex_mem_free(&arena->allocator, block);
        block = next;
    }
    arena->blocks = &arena->first;
}

void plex_arena_destroy(PlexArena *arena)
{
    PlexAllocator allocator;

    if (!arena)
        return;
    allocator = arena->allocator;
    free_later_blocks(arena);
    plex_mem_free(&allocator, arena);
}

/* Bumps `size` bytes aligned to `alignment` out of `block`, or NULL. */
static void *block_bump(ArenaBlock *block, size_t size, size_t alignment)
{
    uintptr_t base = (uintptr_t)block->data;
    uintptr_t start = (base + block->used + (alignment - 1)) & ~(uintptr_t)(alignment - 1);
    size_t offset = (size_t)(start - base);

    if (offset > block->capacity || size > block->capacity - offset)
        return NULL;
    block->used = offset + size;
    return block->data + offset;
}

/* Allocates a block that surely fits `size` at `alignment`. An oversize one
 * goes behind `current`; a regular one becomes `current`. */
static void *bump_new_block(PlexArena *arena, size_t size, size_t alignment)
{
    size_t needed = size + alignment - 1;
    bool regular = needed <= arena->next_block_size;
    size_t capacity = regular ? arena->next_block_size : needed;
    ArenaBlock *block = plex_mem_alloc(&arena->allocator, sizeof(ArenaBlock) + capacity);

    if (!block)
        return NULL;
    plex_mem_prefault(block, sizeof(ArenaBlock) + capacity);
    /* Regular blocks double up to a cap, so a flow that allocates a lot
     * (a million timers) makes few calls to the allocator. */
    if (regular && arena->next_block_size < ARENA_MAX_GROWN_BLOCK)
        arena->next_block_size *= 2;
    block->data = (unsigned char *)(block + 1);
    block->capacity = capacity;
    block->used = 0;
    block->next = arena->blocks;
    arena->blocks = block;
    if (regular)
        arena->current = block;
    return block_bump(block, size, alignment);
}

/* Pops a free chunk of exactly `size` bytes when the head of its list is
 * aligned well enough; NULL otherwise. */
static void *reuse_chunk(PlexArena *arena, size_t size, size_t alignment)
{
    ArenaSizeClass *class = arena->buckets[bucket_of(size)];

    while (class && class->size != size)
        class = class->next;
    if (!class || !class->free_chunks)
        return NULL;
    if (((uintptr_t) class->free_chunks & (alignment - 1)) != 0)
        return NULL;
    unsigned char *chunk = class->free_chunks;
    class->free_chunks = chunk_next(chunk);
    return chunk;
}

void *plex_arena_alloc(PlexArena *arena, size_t size, size_t alignment)
{
    void *pointer;

    if (alignment == 0)
        alignment = alignof(max_align_t);
    if (!arena || size == 0 || alignment > ARENA_MAX_ALIGNMENT ||
        (alignment & (alignment - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    if (size > SIZE_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    size = chunk_size(size);
    pointer = reuse_chunk(arena, size, alignment);
    if (!pointer)
        pointer = block_bump(arena->current, size, alignment);
    if (!pointer)
        pointer = bump_new_block(arena, size, alignment);
    return pointer;
}

void *plex_arena_calloc(PlexArena *arena, size_t size)
{
    void *pointer = plex_arena_alloc(arena, size, 0);

    if (pointer)
        memset(pointer, 0, size);
    return pointer;
}

char *plex_arena_strdup(PlexArena *arena, const char *string)
{
    size_t length;
    char *copy;

    if (!arena || !string) {
        errno = EINVAL;
        return NULL;
    }
    length = strlen(string) + 1;
    copy = plex_arena_alloc(arena, length, 1);
    if (copy)
        memcpy(copy, string, length);
    return copy;
}

/* The class for `size`, created in the arena when missing; NULL on ENOMEM. */
static ArenaSizeClass *size_class(PlexArena *arena, size_t size)
{
    size_t bucket = bucket_of(size);
    ArenaSizeClass *class = arena->buckets[bucket];

    while (class && class->size != size)
        class = class->next;
    if (class)
        return class;
    class = plex_arena_alloc(arena, sizeof(*class), alignof(ArenaSizeClass));
    if (!class)
        return NULL;
    class->size = size;
    class->free_chunks = NULL;
    class->next = arena->buckets[bucket];
    arena->buckets[bucket] = class;
    return class;
}

/* Returns 0, or -EINVAL when arena or pointer is NULL or size is 0 (no chunk
 * has size 0). When no class node can be allocated the chunk simply stays
 * unused until reset or destroy. */
int plex_arena_free(PlexArena *arena, void *pointer, size_t size)
{
    ArenaSizeClass *class;

    if (!arena || !pointer || size == 0)
        return -EINVAL;
    size = chunk_size(size);
    class = size_class(arena, size);
    if (!class)
        return 0;
    memcpy(pointer, &class->free_chunks, sizeof(class->free_chunks));
    class->free_chunks = pointer;
    return 0;
}

void plex_arena_reset(PlexArena *arena)
{
    if (!arena)
        return;
    free_later_blocks(arena);
    arena->first.used = 0;
    arena->current = &arena->first;
    arena->next_block_size = arena->block_size;
    memset(arena->buckets, 0, sizeof(arena->buckets));
}

size_t plex_arena_bytes_used(const PlexArena *arena)
{
    size_t used = 0;

    if (!arena)
        return 0;
    for (const ArenaBlock *block = arena->blocks; block; block = block->next)
        used += block->used;
    return used;
}

size_t plex_arena_bytes_reserved(const PlexArena *arena)
{
    size_t reserved = 0;

    if (!arena)
        return 0;
    for (const ArenaBlock *block = arena->blocks; block; block = block->next)
        reserved += block->capacity;
    return reserved;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexHeap: the timer priority queue (a 4-ary min-heap in an array).
 *
 * Invariants:
 * - Ordered by (key, seq): smallest key first, and among equal keys the one
 *   pushed first (seq is a counter the heap stamps on push), so ties are
 *   first-in first-out.
 * - Entries hold key and seq inline, so sifting compares without touching
 *   the nodes; each node records its position so removal is O(log n).
 * - A node not in the heap has index PLEX_HEAP_NOT_QUEUED.
 * - The array grows by doubling through the allocator and never shrinks
 *   below what it reached (no allocation in steady state).
 */
#ifndef SAMPLEX_HEAP_H
#define SAMPLEX_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <samplex/plex_arena.h>

#define PLEX_HEAP_NOT_QUEUED SIZE_MAX

typedef struct PlexHeapNode {
    size_t index; /* position in the heap, or PLEX_HEAP_NOT_QUEUED */
} PlexHeapNode;

typedef struct PlexHeapEntry {
    uint64_t key;
    uint64_t seq;
    PlexHeapNode *node;
} PlexHeapEntry;

typedef struct PlexHeap {
    PlexHeapEntry *entries;
    size_t count;
    size_t capacity;
    uint64_t next_seq;
    const PlexAllocator *allocator; /* borrowed; NULL means libc */
} PlexHeap;

void plex_heap_init(PlexHeap *heap, const PlexAllocator *allocator);
void plex_heap_fini(PlexHeap *heap);
static inline void plex_heap_node_init(PlexHeapNode *node) { node->index = PLEX_HEAP_NOT_QUEUED; }
static inline bool plex_heap_node_queued(const PlexHeapNode *node)
{
    return node->index != PLEX_HEAP_NOT_QUEUED;
}
/* Ensures room for `capacity` entries. 0 or -ENOMEM. */
int plex_heap_reserve(PlexHeap *heap, size_t capacity);
/* Queues `node` with `key`. 0, -EALREADY (queued), -ENOMEM. */
int plex_heap_push(PlexHeap *heap, PlexHeapNode *node, uint64_t key);
/* The smallest entry, or NULL when empty. */
static inline const PlexHeapEntry *plex_heap_top(const PlexHeap *heap)
{
    return heap->count ? &heap->entries[0] : NULL;
}
/* Removes and returns the smallest node, or NULL when empty. */
PlexHeapNode *plex_heap_pop(PlexHeap *heap);
/* Removes a queued node. 0 or -ENOENT. */
int plex_heap_remove(PlexHeap *heap, PlexHeapNode *node);

#endif

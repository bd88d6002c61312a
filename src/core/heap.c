/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexHeap: a 4-ary min-heap of (key, seq, node) entries stored inline.
 *
 * Invariants (beyond heap.h):
 * - For every i > 0: entries[(i - 1) / 4] is not greater than entries[i] in
 *   (key, seq) order.
 * - entries[i].node->index == i for every i < count.
 * - Sifting moves a hole instead of swapping, and writes each moved entry's
 *   node index once; no function pointers, so it stays fast at a million
 *   entries.
 */
#include <errno.h>
#include <string.h>

#include "core/heap.h"
#include "core/plex_internal.h"

#define HEAP_MIN_CAPACITY 64u

static inline bool entry_less(const PlexHeapEntry *a, const PlexHeapEntry *b)
{
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

static inline void heap_place(PlexHeapEntry *entries, size_t index, const PlexHeapEntry *entry)
{
    entries[index] = *entry;
    entry->node->index = index;
}

/* Moves the hole at `index` up until `entry` fits, then places it there. */
static void sift_up(PlexHeap *heap, size_t index, const PlexHeapEntry *entry)
{
    PlexHeapEntry *entries = heap->entries;

    while (index > 0) {
        size_t parent = (index - 1) / 4;
        if (!entry_less(entry, &entries[parent]))
            break;
        heap_place(entries, index, &entries[parent]);
        index = parent;
    }
    heap_place(entries, index, entry);
}

/* The smallest of the children starting at `first` (there are `count`). */
static inline size_t smallest_child(const PlexHeapEntry *entries, size_t first, size_t count)
{
    size_t best = first;

    for (size_t child = first + 1; child < first + count; child++)
        if (entry_less(&entries[child], &entries[best]))
            best = child;
    return best;
}

/* Moves the hole at `index` down until `entry` fits, then places it there. */
static void sift_down(PlexHeap *heap, size_t index, const PlexHeapEntry *entry)
{
    PlexHeapEntry *entries = heap->entries;
    size_t count = heap->count;

    for (;;) {
        size_t first = index * 4 + 1;
        if (first >= count)
            break;
        size_t children = count - first < 4 ? count - first : 4;
        size_t best = smallest_child(entries, first, children);
        if (!entry_less(&entries[best], entry))
            break;
        heap_place(entries, index, &entries[best]);
        index = best;
    }
    heap_place(entries, index, entry);
}

void plex_heap_init(PlexHeap *heap, const PlexAllocator *allocator)
{
    if (!heap)
        return;
    memset(heap, 0, sizeof(*heap));
    heap->allocator = allocator;
}

/* Frees the array; nodes still queued are marked not queued. */
void plex_heap_fini(PlexHeap *heap)
{
    if (!heap)
        return;
    for (size_t i = 0; i < heap->count; i++)
        heap->entries[i].node->index = PLEX_HEAP_NOT_QUEUED;
    plex_mem_free(heap->allocator, heap->entries);
    heap->entries = NULL;
    heap->count = 0;
    heap->capacity = 0;
}

int plex_heap_reserve(PlexHeap *heap, size_t capacity)
{
    size_t grown;
    PlexHeapEntry *entries;

    if (!heap)
        return -EINVAL;
    if (capacity <= heap->capacity)
        return 0;
    grown = heap->capacity ? heap->capacity : HEAP_MIN_CAPACITY;
    while (grown < capacity && grown <= SIZE_MAX / 2 / sizeof(PlexHeapEntry))
        grown *= 2;
    if (grown < capacity)
        return -ENOMEM;
    entries = plex_mem_alloc(heap->allocator, grown * sizeof(PlexHeapEntry));
    if (!entries)
        return -ENOMEM;
    plex_mem_prefault(entries, grown * sizeof(PlexHeapEntry));
    if (heap->count)
        memcpy(entries, heap->entries, heap->count * sizeof(PlexHeapEntry));
    plex_mem_free(heap->allocator, heap->entries);
    heap->entries = entries;
    heap->capacity = grown;
    return 0;
}

int plex_heap_push(PlexHeap *heap, PlexHeapNode *node, uint64_t key)
{
    PlexHeapEntry entry;

    if (!heap || !node)
        return -EINVAL;
    if (node->index != PLEX_HEAP_NOT_QUEUED)
        return -EALREADY;
    if (heap->count == heap->capacity) {
        int result = plex_heap_reserve(heap, heap->count + 1);
        if (result < 0)
            return result;
    }
    entry.key = key;
    entry.seq = heap->next_seq++;
    entry.node = node;
    sift_up(heap, heap->count++, &entry);
    return 0;
}

PlexHeapNode *plex_heap_pop(PlexHeap *heap)
{
    PlexHeapNode *top;

    if (!heap || heap->count == 0)
        return NULL;
    top = heap->entries[0].node;
    heap->count--;
    if (heap->count > 0) {
        PlexHeapEntry last = heap->entries[heap->count];
        sift_down(heap, 0, &last);
    }
    top->index = PLEX_HEAP_NOT_QUEUED;
    return top;
}

int plex_heap_remove(PlexHeap *heap, PlexHeapNode *node)
{
    size_t index;
    PlexHeapEntry last;

    if (!heap || !node)
        return -ENOENT;
    index = node->index;
    if (index >= heap->count || heap->entries[index].node != node)
        return -ENOENT;
    node->index = PLEX_HEAP_NOT_QUEUED;
    heap->count--;
    if (index == heap->count)
        return 0;
    last = heap->entries[heap->count];
    if (index > 0 && entry_less(&last, &heap->entries[(index - 1) / 4]))
        sift_up(heap, index, &last);
    else
        sift_down(heap, index, &last);
    return 0;
}

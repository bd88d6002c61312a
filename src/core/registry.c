/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexRegistry: id -> Plex, thread-safe.
 *
 * Invariants:
 * - Ids come from an atomic counter starting at 1 and are never reused; 0
 *   marks an empty slot.
 * - The map is open addressing with linear probing over a power-of-two table
 *   that is at most half full; it doubles when an insert would pass that.
 *   Removal shifts the rest of the probe run back (no tombstones), so every
 *   entry stays reachable from its home slot without crossing an empty one.
 * - A read-write lock guards the table: lookup and count read it; insert,
 *   remove and growth write it. Flows' handlers never run under the lock.
 * - Every allocation goes through `allocator`, a copy of the creator's.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "core/plex_internal.h"
#include "core/registry.h"

#define REGISTRY_INITIAL_CAPACITY 16u

typedef struct RegistrySlot {
    uint64_t id; /* 0: empty */
    Plex *plex;
} RegistrySlot;

struct PlexRegistry {
    PlexAllocator allocator;  /* copy of the creator's; zero means libc */
    pthread_rwlock_t lock;    /* guards slots, capacity, count */
    RegistrySlot *slots;      /* capacity entries */
    size_t capacity;          /* a power of two */
    size_t count;             /* live flows */
    _Atomic uint64_t next_id; /* the next id to hand out */
};

static size_t slot_home(uint64_t id, size_t capacity)
{
    /* Fibonacci hashing spreads consecutive ids over the table. */
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (capacity - 1);
}

PlexRegistry *plex_registry_create(void)
{
    return plex_registry_create_with_allocator(NULL);
}

PlexRegistry *plex_registry_create_with_allocator(const PlexAllocator *allocator)
{
    PlexRegistry *registry = plex_mem_calloc(allocator, sizeof(*registry));
    int result;

    if (!registry)
        return NULL;
    if (allocator)
        registry->allocator = *allocator;
    registry->capacity = REGISTRY_INITIAL_CAPACITY;
    registry->slots = plex_mem_calloc(allocator, registry->capacity * sizeof(RegistrySlot));
    if (!registry->slots)
        goto fail;
    result = pthread_rwlock_init(&registry->lock, NULL);
    if (result != 0) {
        plex_mem_free(allocator, registry->slots);
        plex_mem_free(allocator, registry);
        errno = result;
        return NULL;
    }
    atomic_init(&registry->next_id, 1);
    return registry;
fail:
    plex_mem_free(allocator, registry);
    errno = ENOMEM;
    return NULL;
}

/* Some live flow, searched from *cursor on; NULL when there is none. Taking
 * up where the last search stopped keeps destroying n flows O(n). */
static Plex *registry_any(PlexRegistry *registry, size_t *cursor)
{
    Plex *found = NULL;

    pthread_rwlock_rdlock(&registry->lock);
    for (size_t step = 0; registry->count > 0 && step < registry->capacity; step++) {
        size_t index = (*cursor + step) & (registry->capacity - 1);
        if (registry->slots[index].id != 0) {
            found = registry->slots[index].plex;
            *cursor = index;
            break;
        }
    }
    pthread_rwlock_unlock(&registry->lock);
    return found;
}

void plex_registry_destroy(PlexRegistry *registry)
{
    PlexAllocator allocator;
    size_t cursor = 0;
    Plex *plex;

    if (!registry)
        return;
    /* Ending a flow removes it from the map; its handlers may even create
     * new flows, which are ended in turn. */
    while ((plex = registry_any(registry, &cursor)) != NULL)
        plex_destroy(plex);
    allocator = registry->allocator;
    pthread_rwlock_destroy(&registry->lock);
    plex_mem_free(&allocator, registry->slots);
    plex_mem_free(&allocator, registry);
}

/* The slot holding `id`, or the empty slot ending its probe run. */
static size_t slot_find(const RegistrySlot *slots, size_t capacity, uint64_t id)
{
    size_t index = slot_home(id, capacity);

    while (slots[index].id != 0 && slots[index].id != id)
        index = (index + 1) & (capacity - 1);
    return index;
}

Plex *plex_registry_lookup(PlexRegistry *registry, uint64_t id)
{
    Plex *plex;

    if (!registry || id == 0)
        return NULL;
    pthread_rwlock_rdlock(&registry->lock);
    plex = registry->slots[slot_find(registry->slots, registry->capacity, id)].plex;
    pthread_rwlock_unlock(&registry->lock);
    return plex;
}

size_t plex_registry_count(PlexRegistry *registry)
{
    size_t count;

    if (!registry)
        return 0;
    pthread_rwlock_rdlock(&registry->lock);
    count = registry->count;
    pthread_rwlock_unlock(&registry->lock);
    return count;
}

const PlexAllocator *plex_registry_allocator(const PlexRegistry *registry)
{
    return registry ? &registry->allocator : NULL;
}

uint64_t plex_registry_next_id(PlexRegistry *registry)
{
    return atomic_fetch_add_explicit(&registry->next_id, 1, memory_order_relaxed);
}

/* Doubles the table. Called with the write lock held. 0 or -ENOMEM. */
static int registry_grow(PlexRegistry *registry)
{
    size_t capacity = registry->capacity * 2;
    RegistrySlot *slots;

    if (capacity > SIZE_MAX / sizeof(RegistrySlot))
        return -ENOMEM;
    slots = plex_mem_calloc(&registry->allocator, capacity * sizeof(RegistrySlot));
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < registry->capacity; i++) {
        if (registry->slots[i].id != 0)
            slots[slot_find(slots, capacity, registry->slots[i].id)] = registry->slots[i];
    }
    plex_mem_free(&registry->allocator, registry->slots);
    registry->slots = slots;
    registry->capacity = capacity;
    return 0;
}

int plex_registry_insert(PlexRegistry *registry, uint64_t id, Plex *plex)
{
    int result = 0;
    size_t index;

    if (!registry || id == 0 || !plex)
        return -EINVAL;
    pthread_rwlock_wrlock(&registry->lock);
    if ((registry->count + 1) * 2 > registry->capacity)
        result = registry_grow(registry);
    if (result == 0) {
        index = slot_find(registry->slots, registry->capacity, id);
        registry->slots[index].id = id;
        registry->slots[index].plex = plex;
        registry->count++;
    }
    pthread_rwlock_unlock(&registry->lock);
    return result;
}

/* Whether `home` lies in the cyclic range (hole, index]: then the entry at
 * `index` may not move back into `hole`. */
static bool home_between(size_t hole, size_t home, size_t index)
{
    if (hole <= index)
        return hole < home && home <= index;
    return hole < home || home <= index;
}

/* Empties slot `hole` and shifts the rest of its probe run back. */
static void slot_erase(RegistrySlot *slots, size_t capacity, size_t hole)
{
    size_t index = hole;

    for (;;) {
        index = (index + 1) & (capacity - 1);
        if (slots[index].id == 0)
            break;
        if (home_between(hole, slot_home(slots[index].id, capacity), index))
            continue;
        slots[hole] = slots[index];
        hole = index;
    }
    slots[hole].id = 0;
    slots[hole].plex = NULL;
}

void plex_registry_remove(PlexRegistry *registry, uint64_t id)
{
    size_t index;

    if (!registry || id == 0)
        return;
    pthread_rwlock_wrlock(&registry->lock);
    index = slot_find(registry->slots, registry->capacity, id);
    if (registry->slots[index].id == id) {
        slot_erase(registry->slots, registry->capacity, index);
        registry->count--;
    }
    pthread_rwlock_unlock(&registry->lock);
}

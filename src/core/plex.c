/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Plex (a flow) and PlexItem (a step): the chain, the handlers, the timing,
 * and the end of a flow.
 *
 * Invariants:
 * - A Plex and its arena live while `pins` > 0. The flow holds one pin from
 *   plex_create until its end sequence is over; each operation in flight
 *   (plex_item_op_begin) holds one more. The unpin that reaches 0 on an
 *   ended flow frees arena and struct, with the flow's own allocator copy,
 *   so the registry may be gone by then.
 * - `alive` turns false once, at the start of the end sequence. From then
 *   on: the id looks up as NULL, no item or flow handler runs again, no item
 *   can be created or removed, no resource attached and no bind made.
 * - The end sequence: end handler once; every item's on_cleanup once, in
 *   chain order; every resource detached then released, newest first; the
 *   flow's own pin dropped last, so handlers may end or unpin anything.
 * - Items live in the flow's arena, in chain order on `items`. A removed
 *   item has had its cleanup and is handed back to the arena.
 */
#include <assert.h>
#include <errno.h>
#include <stdalign.h>
#include <string.h>
#include <time.h>

#include "core/plex_internal.h"
#include "core/registry.h"

struct PlexItem {
    PlexLink chain;          /* in the flow's items, chain order */
    Plex *plex;              /* owner */
    const char *description; /* in the arena; "" when none */
    PlexHandler on_success;  /* result >= 0 */
    PlexHandler on_error;    /* result < 0; NULL: the flow's error path */
    PlexCleanupHandler on_cleanup;
    void *user_data;
    unsigned in_flight;    /* operations begun and not ended */
    PlexItemTiming timing; /* of its operations */
};

struct Plex {
    uint64_t id;             /* never 0 */
    PlexRegistry *registry;  /* not used after the flow ended */
    PlexAllocator allocator; /* copy of the registry's */
    PlexArena *arena;        /* items, descriptions, adapters' memory */
    const char *description; /* in the arena; "" when none */
    void *user_data;
    PlexHandler on_error; /* errors of items without on_error */
    PlexEndHandler on_end;
    PlexLink items; /* PlexItem.chain */
    size_t item_count;
    PlexLink resources; /* PlexResource.link, attach order */
    PlexLink bind_link; /* in the owner's list while bound and alive */
    void *bound_owner;  /* kept after the end, for the adapters */
    unsigned pins;      /* see the invariants */
    bool alive;
    uint64_t completed; /* operations that ended with result >= 0 */
    uint64_t failed;    /* operations that ended with result < 0 */
    uint64_t total_ns;  /* their summed duration */
    uint64_t start_ns;  /* plex_start; 0 when not started */
    uint64_t stop_ns;   /* end time; 0 while alive */
};

uint64_t plex_now_ns(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * UINT64_C(1000000000) + (uint64_t)now.tv_nsec;
}

/* Item timing's clock (plex_timing_clock_set): PLEX_TIMING_CLOCK_OFF,
 * PLEX_TIMING_CLOCK_STALE, or the time read at its first use since the loop
 * woke. One per thread: a loop runs on one thread. */
static _Thread_local uint64_t timing_clock_ns;

uint64_t plex_timing_clock_set(uint64_t state)
{
    uint64_t previous = timing_clock_ns;
    timing_clock_ns = state;
    return previous;
}

static uint64_t timing_now(void)
{
    if (timing_clock_ns == PLEX_TIMING_CLOCK_OFF)
        return plex_now_ns();
    if (timing_clock_ns == PLEX_TIMING_CLOCK_STALE)
        timing_clock_ns = plex_now_ns();
    return timing_clock_ns;
}

/* ---- Creation and memory ---------------------------------------------- */

static Plex *plex_alloc(PlexRegistry *registry, const char *description)
{
    const PlexAllocator *allocator = plex_registry_allocator(registry);
    Plex *plex = plex_mem_calloc(allocator, sizeof(*plex));

    if (!plex)
        return NULL;
    plex->allocator = *allocator;
    plex->registry = registry;
    plex->arena = plex_arena_create(allocator, 0);
    if (!plex->arena)
        goto fail;
    plex->description = description ? plex_arena_strdup(plex->arena, description) : "";
    if (!plex->description)
        goto fail;
    plex_link_init(&plex->items);
    plex_link_init(&plex->resources);
    plex_link_init(&plex->bind_link);
    plex->pins = 1;
    plex->alive = true;
    return plex;
fail:
    plex_arena_destroy(plex->arena);
    plex_mem_free(allocator, plex);
    errno = ENOMEM;
    return NULL;
}

Plex *plex_create(PlexRegistry *registry, const char *description)
{
    Plex *plex;

    if (!registry) {
        errno = EINVAL;
        return NULL;
    }
    plex = plex_alloc(registry, description);
    if (!plex)
        return NULL;
    plex->id = plex_registry_next_id(registry);
    if (plex_registry_insert(registry, plex->id, plex) < 0) {
        plex_arena_destroy(plex->arena);
        plex_mem_free(&plex->allocator, plex);
        errno = ENOMEM;
        return NULL;
    }
    return plex;
}

void plex_pin(Plex *plex)
{
    if (plex)
        plex->pins++;
}

void plex_unpin(Plex *plex)
{
    PlexAllocator allocator;

    if (!plex)
        return;
    assert(plex->pins > 0);
    if (--plex->pins > 0 || plex->alive)
        return;
    allocator = plex->allocator;
    plex_arena_destroy(plex->arena);
    plex_mem_free(&allocator, plex);
}

/* ---- The end of a flow ------------------------------------------------ */

static void run_item_cleanups(Plex *plex)
{
    /* Items cannot be created or removed once the flow is dead, so the
     * chain is stable while the cleanups run. */
    for (PlexLink *link = plex->items.next; link != &plex->items; link = link->next) {
        PlexItem *item = PLEX_CONTAINER_OF(link, PlexItem, chain);
        if (item->on_cleanup)
            item->on_cleanup(plex, item);
    }
}

static void release_resources(Plex *plex)
{
    /* A release may detach others or attach elsewhere: re-read each time. */
    while (!plex_link_empty(&plex->resources)) {
        PlexResource *resource = PLEX_CONTAINER_OF(plex->resources.prev, PlexResource, link);
        plex_resource_detach(resource);
        resource->release(resource);
    }
}

static int plex_end(Plex *plex, int status)
{
    if (!plex)
        return -EINVAL;
    if (!plex->alive)
        return -EALREADY;
    plex->alive = false;
    plex_registry_remove(plex->registry, plex->id);
    plex->stop_ns = plex_now_ns();
    if (!plex_link_empty(&plex->bind_link))
        plex_link_remove(&plex->bind_link);
    if (plex->on_end)
        plex->on_end(plex, status);
    run_item_cleanups(plex);
    release_resources(plex);
    plex_unpin(plex);
    return 0;
}

int plex_destroy(Plex *plex)
{
    return plex_end(plex, -ECANCELED);
}

int plex_finish(Plex *plex)
{
    return plex_end(plex, 0);
}

int plex_fail(Plex *plex, int status)
{
    if (status >= 0)
        return -EINVAL;
    return plex_end(plex, status);
}

int plex_start(Plex *plex)
{
    if (!plex)
        return -EINVAL;
    if (!plex->alive || plex->start_ns != 0)
        return -EALREADY;
    plex->start_ns = plex_now_ns();
    return 0;
}

/* ---- Flow accessors --------------------------------------------------- */

int plex_set_error_handler(Plex *plex, PlexHandler on_error)
{
    if (!plex)
        return -EINVAL;
    plex->on_error = on_error;
    return 0;
}

int plex_set_end_handler(Plex *plex, PlexEndHandler on_end)
{
    if (!plex)
        return -EINVAL;
    plex->on_end = on_end;
    return 0;
}

uint64_t plex_id(const Plex *plex)
{
    return plex ? plex->id : 0;
}

const char *plex_description(const Plex *plex)
{
    return plex ? plex->description : "";
}

void *plex_user_data(const Plex *plex)
{
    return plex ? plex->user_data : NULL;
}

void plex_set_user_data(Plex *plex, void *user_data)
{
    if (plex)
        plex->user_data = user_data;
}

PlexArena *plex_arena(Plex *plex)
{
    return plex ? plex->arena : NULL;
}

PlexRegistry *plex_registry(const Plex *plex)
{
    return plex ? plex->registry : NULL;
}

bool plex_is_alive(const Plex *plex)
{
    return plex ? plex->alive : false;
}

const PlexAllocator *plex_allocator(const Plex *plex)
{
    return plex ? &plex->allocator : NULL;
}

int plex_stats(const Plex *plex, PlexStats *stats)
{
    uint64_t operations;

    if (!plex || !stats)
        return -EINVAL;
    operations = plex->completed + plex->failed;
    stats->items = plex->item_count;
    stats->completed = plex->completed;
    stats->failed = plex->failed;
    stats->total_ns = plex->total_ns;
    stats->average_ns = operations ? plex->total_ns / operations : 0;
    stats->start_ns = plex->start_ns;
    stats->stop_ns = plex->stop_ns;
    return 0;
}

/* ---- Items ------------------------------------------------------------ */

PlexItem *plex_item_create(Plex *plex, const char *description, PlexHandler on_success,
                           PlexHandler on_error, PlexCleanupHandler on_cleanup, void *user_data)
{
    PlexItem *item;

    if (!plex || !plex->alive) {
        errno = EINVAL;
        return NULL;
    }
    item = plex_arena_alloc(plex->arena, sizeof(*item), alignof(PlexItem));
    if (!item)
        return NULL;
    memset(item, 0, sizeof(*item));
    item->description = description ? plex_arena_strdup(plex->arena, description) : "";
    if (!item->description) {
        plex_arena_free(plex->arena, item, sizeof(*item));
        return NULL;
    }
    item->plex = plex;
    item->on_success = on_success;
    item->on_error = on_error;
    item->on_cleanup = on_cleanup;
    item->user_data = user_data;
    plex_link_insert_tail(&plex->items, &item->chain);
    plex->item_count++;
    return item;
}

/* Hands a removed item's memory back to the arena for the next item. */
static void item_recycle(Plex *plex, PlexItem *item)
{
    if (item->description[0] != '\0')
        plex_arena_free(plex->arena, (void *)item->description, strlen(item->description) + 1);
    plex_arena_free(plex->arena, item, sizeof(*item));
}

/* Returns -EINVAL as well for a flow that has ended: its cleanups have run. */
int plex_item_remove(Plex *plex, PlexItem *item)
{
    if (!plex || !item || !plex->alive)
        return -EINVAL;
    if (item->plex != plex || plex_link_empty(&item->chain))
        return -ENOENT;
    if (item->in_flight > 0)
        return -EBUSY;
    plex_link_remove(&item->chain);
    plex->item_count--;
    /* The cleanup may end the flow: the pin keeps the arena for recycling. */
    plex_pin(plex);
    if (item->on_cleanup)
        item->on_cleanup(plex, item);
    item_recycle(plex, item);
    plex_unpin(plex);
    return 0;
}

PlexItem *plex_item_first(const Plex *plex)
{
    if (!plex || plex_link_empty(&plex->items))
        return NULL;
    return PLEX_CONTAINER_OF(plex->items.next, PlexItem, chain);
}

PlexItem *plex_item_next(const PlexItem *item)
{
    if (!item || plex_link_empty(&item->chain) || item->chain.next == &item->plex->items)
        return NULL;
    return PLEX_CONTAINER_OF(item->chain.next, PlexItem, chain);
}

PlexItem *plex_item_find(const Plex *plex, const char *description)
{
    if (!plex || !description)
        return NULL;
    for (PlexItem *item = plex_item_first(plex); item; item = plex_item_next(item)) {
        if (strcmp(item->description, description) == 0)
            return item;
    }
    return NULL;
}

Plex *plex_item_plex(const PlexItem *item)
{
    return item ? item->plex : NULL;
}

const char *plex_item_description(const PlexItem *item)
{
    return item ? item->description : "";
}

void *plex_item_user_data(const PlexItem *item)
{
    return item ? item->user_data : NULL;
}

void plex_item_set_user_data(PlexItem *item, void *user_data)
{
    if (item)
        item->user_data = user_data;
}

unsigned plex_item_in_flight(const PlexItem *item)
{
    return item ? item->in_flight : 0;
}

int plex_item_timing(const PlexItem *item, PlexItemTiming *timing)
{
    if (!item || !timing)
        return -EINVAL;
    *timing = item->timing;
    return 0;
}

/* ---- Operations on items ---------------------------------------------- */

void plex_item_op_begin(PlexItem *item)
{
    if (!item)
        return;
    item->in_flight++;
    item->timing.start_ns = timing_now();
    item->timing.stop_ns = 0;
    plex_pin(item->plex);
}

void plex_item_op_end_silent(PlexItem *item)
{
    if (!item)
        return;
    assert(item->in_flight > 0);
    item->in_flight--;
    plex_unpin(item->plex);
}

/* Timing of the item and statistics of the flow for one completion. */
static void record_completion(PlexItem *item, int result, bool last)
{
    uint64_t now = timing_now();
    uint64_t duration = now > item->timing.start_ns ? now - item->timing.start_ns : 0;
    Plex *plex = item->plex;

    item->timing.stop_ns = now;
    item->timing.runs++;
    item->timing.total_ns += duration;
    if (!last)
        item->timing.start_ns = now;
    if (result >= 0)
        plex->completed++;
    else
        plex->failed++;
    plex->total_ns += duration;
}

static void dispatch(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    if (event->result >= 0) {
        if (item->on_success)
            item->on_success(plex, item, event);
    } else if (item->on_error) {
        item->on_error(plex, item, event);
    } else if (plex->on_error) {
        plex->on_error(plex, item, event);
    } else {
        plex_fail(plex, event->result);
    }
}

void plex_item_deliver(PlexItem *item, const PlexEvent *event, bool last)
{
    Plex *plex;

    if (!item || !event)
        return;
    plex = item->plex;
    record_completion(item, event->result, last);
    /* The operation is over before its last handler runs, so the handler
     * may start it again or remove the item; the item is not touched after
     * the handler, and the operation's pin keeps the flow until then. */
    if (last) {
        assert(item->in_flight > 0);
        item->in_flight--;
    }
    if (plex->alive)
        dispatch(plex, item, event);
    if (last)
        plex_unpin(plex);
}

/* ---- Resources and binding -------------------------------------------- */

/* `resource` must be detached (or zeroed); attaching it again to the same
 * flow is a no-op. Returns 0, -EINVAL (NULL argument), -ESTALE (ended). */
int plex_resource_attach(Plex *plex, PlexResource *resource, void (*release)(PlexResource *))
{
    if (!plex || !resource || !release)
        return -EINVAL;
    if (!plex->alive)
        return -ESTALE;
    if (resource->plex == plex)
        return 0;
    resource->release = release;
    resource->plex = plex;
    plex_link_insert_tail(&plex->resources, &resource->link);
    return 0;
}

void plex_resource_detach(PlexResource *resource)
{
    if (!resource || !resource->plex)
        return;
    plex_link_remove(&resource->link);
    resource->plex = NULL;
}

int plex_bind(Plex *plex, void *owner, PlexLink *owner_list)
{
    if (!plex || !owner || !owner_list)
        return -EINVAL;
    if (!plex->alive)
        return -ESTALE;
    if (plex->bound_owner == owner)
        return 0;
    if (plex->bound_owner)
        return -EXDEV;
    plex->bound_owner = owner;
    plex_link_insert_tail(owner_list, &plex->bind_link);
    return 0;
}

void *plex_bound_owner(const Plex *plex)
{
    return plex ? plex->bound_owner : NULL;
}

Plex *plex_from_bind_link(PlexLink *link)
{
    return link ? PLEX_CONTAINER_OF(link, Plex, bind_link) : NULL;
}

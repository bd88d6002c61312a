/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the adapters (loop, timers, network, postgres) may do to a flow
 * beyond the public API. Never installed.
 *
 * Invariants:
 * - A Plex's memory (struct and arena) lives while it is pinned. The flow
 *   holds one pin for its life; every operation in flight holds one. The
 *   last unpin of an ended flow frees it. So whatever the kernel points into
 *   (in the arena, or reached through the Plex) outlives the kernel's use.
 * - Resources a flow owns (connections, timers, Postgres connections) embed
 *   a PlexResource; when the flow ends, each one's release runs once, after
 *   the items' cleanups, in reverse order of attachment.
 * - A flow may be bound to one loop (plex_bind); the loop keeps them on a
 *   list so that destroying the loop ends them.
 */
#ifndef SAMPLEX_PLEX_INTERNAL_H
#define SAMPLEX_PLEX_INTERNAL_H

#include <samplex/plex.h>

/* Intrusive circular doubly linked list. An unlinked node points to itself. */
typedef struct PlexLink {
    struct PlexLink *prev;
    struct PlexLink *next;
} PlexLink;

static inline void plex_link_init(PlexLink *link) { link->prev = link->next = link; }
static inline int plex_link_empty(const PlexLink *link) { return link->next == link; }
static inline void plex_link_insert_tail(PlexLink *head, PlexLink *link)
{
    link->prev = head->prev;
    link->next = head;
    head->prev->next = link;
    head->prev = link;
}
static inline void plex_link_remove(PlexLink *link)
{
    link->prev->next = link->next;
    link->next->prev = link->prev;
    plex_link_init(link);
}

#define PLEX_CONTAINER_OF(pointer, type, member) \
    ((type *)(void *)((char *)(pointer) - offsetof(type, member)))

typedef struct PlexResource PlexResource;
struct PlexResource {
    void (*release)(PlexResource *resource); /* runs once when the flow ends */
    PlexLink link;                           /* in the flow's resource list */
    Plex *plex;                              /* owner; NULL when detached */
};

/* Makes `resource` owned by `plex`. Returns 0, -EINVAL, -ESTALE (flow ended). */
int plex_resource_attach(Plex *plex, PlexResource *resource, void (*release)(PlexResource *));
/* Takes it back without calling release. Safe on a detached resource. */
void plex_resource_detach(PlexResource *resource);

/* Memory pins (see the invariants). */
void plex_pin(Plex *plex);
void plex_unpin(Plex *plex);

/* Binds the flow to a loop's list. Returns 0 (also when already bound to the
 * same owner), -EXDEV when bound to another owner, -ESTALE when ended. */
int plex_bind(Plex *plex, void *owner, PlexLink *owner_list);
void *plex_bound_owner(const Plex *plex);
Plex *plex_from_bind_link(PlexLink *link);

/* Operation bookkeeping on an item, used by every adapter:
 * - begin: the operation was started; pins the flow, counts it in flight,
 *   stamps the start time.
 * - deliver: a completion. Updates timing and stats, then calls on_success
 *   (result >= 0) or the error path (item's on_error, else the flow's error
 *   handler, else plex_fail) unless the flow has ended. When `last` is true
 *   the operation is over: it leaves the in-flight count and its pin is
 *   dropped after the handler returns.
 * - end_silent: the operation is over without a handler (a cancelled timer,
 *   or anything whose flow has ended). Drops the pin. */
void plex_item_op_begin(PlexItem *item);

/* Item timing's clock (PlexItemTiming), per thread. A loop sets it STALE
 * each time it wakes, before it runs handlers: the first operation that
 * needs the time reads the clock, the others of that wake-up reuse it. It
 * restores the state returned when its iteration ends (OFF outside any
 * loop: the clock is read per call). */
#define PLEX_TIMING_CLOCK_OFF UINT64_C(0)
#define PLEX_TIMING_CLOCK_STALE UINT64_MAX
uint64_t plex_timing_clock_set(uint64_t state);
void plex_item_deliver(PlexItem *item, const PlexEvent *event, bool last);
void plex_item_op_end_silent(PlexItem *item);

/* The flow's allocator (its registry's). */
const PlexAllocator *plex_allocator(const Plex *plex);

/* Allocator helpers: NULL-safe, libc when the allocator's function is NULL. */
void *plex_mem_alloc(const PlexAllocator *allocator, size_t size);
void *plex_mem_calloc(const PlexAllocator *allocator, size_t size);
void plex_mem_free(const PlexAllocator *allocator, void *pointer);
/* Pre-faults a freshly allocated block of at least PLEX_PREFAULT_MIN bytes
 * (smaller ones are left alone). Never fails. */
#define PLEX_PREFAULT_MIN (256u * 1024u)
void plex_mem_prefault(void *pointer, size_t size);

#endif

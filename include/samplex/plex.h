/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The core of samplex: PlexRegistry, Plex (a flow) and PlexItem (a step).
 *
 * Invariants:
 * - A Plex is a chain of PlexItems. Each item names what happens when the
 *   asynchronous operation started on its behalf ends: `on_success` (result
 *   >= 0), `on_error` (result < 0), and `on_cleanup` when the flow ends.
 * - Exactly once: an operation that was started (its start function returned
 *   >= 0) ends in exactly one call of on_success or on_error, or, for a
 *   multishot operation, one call per completion with the last one saying
 *   so (PLEX_EVENT_MORE clear). A start that fails (< 0) calls neither.
 * - An item without on_error hands its errors to the flow's error handler
 *   (plex_set_error_handler); a flow without one fails with that error.
 * - Cleanup exactly once: every item's on_cleanup runs exactly once, when its
 *   flow ends (finish, fail, destroy, or its loop or registry destroyed), or
 *   when the item is removed from the chain.
 * - No handler runs for a dead flow. Once a flow has ended, its id looks up
 *   as NULL and none of its handlers is called again; its memory is freed
 *   only after every operation the kernel still holds for it has completed.
 * - Handlers may do anything, including ending their own flow.
 * - A Plex belongs to the thread of the loop that runs its operations. The
 *   registry is thread-safe; a Plex is not: from another thread, reach a
 *   flow by posting to its loop (plex_event_loop_post).
 */
#ifndef SAMPLEX_PLEX_H
#define SAMPLEX_PLEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plex_arena.h"
#include "plex_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PlexRegistry PlexRegistry;
typedef struct Plex Plex;
typedef struct PlexItem PlexItem;
typedef struct PlexEventLoop PlexEventLoop;
typedef struct PlexTimer PlexTimer;
typedef struct PlexListener PlexListener;
typedef struct PlexConnection PlexConnection;
typedef struct PlexPostgres PlexPostgres;
struct pg_result; /* libpq's PGresult */

/* PlexEvent.flags */
#define PLEX_EVENT_MORE 0x1u /* multishot: more completions of this operation follow */

/* What a handler learns about the operation that ended. Only the fields of
 * the operation's kind are set; the rest are zero. Borrowed: valid until the
 * handler returns. */
typedef struct PlexEvent {
    int result;                   /* >= 0: kind-specific count; < 0: negative errno / PLEX_E* */
    uint32_t flags;               /* PLEX_EVENT_* */
    const void *data;             /* read: the bytes received */
    size_t length;                /* read: how many */
    PlexConnection *connection;   /* accept: the new connection; else the connection acted on */
    PlexListener *listener;       /* accept: the listener */
    PlexTimer *timer;             /* timer: the timer that fired */
    uint64_t overruns;            /* timer: ticks skipped because a handler overran */
    PlexPostgres *postgres;       /* postgres: the connection */
    struct pg_result *pg_result;  /* postgres: the result (see plex_postgres.h for ownership) */
    int64_t lateness_ns;          /* timer: how long after its target it fired */
} PlexEvent;

typedef void (*PlexHandler)(Plex *plex, PlexItem *item, const PlexEvent *event);
typedef void (*PlexCleanupHandler)(Plex *plex, PlexItem *item);
/* Runs once when a flow ends: status 0 finished, < 0 failed or destroyed. */
typedef void (*PlexEndHandler)(Plex *plex, int status);

/* ---- Registry ---------------------------------------------------------- */

/* Creates a registry. `allocator` may be NULL (libc); it is copied and used
 * for every allocation of the flows and loops created under this registry.
 * Returns NULL and sets errno on failure. */
PlexRegistry *plex_registry_create(void);
PlexRegistry *plex_registry_create_with_allocator(const PlexAllocator *allocator);

/* Destroys every flow still registered (their cleanups run) and the
 * registry. Destroy the loops first. NULL is a no-op. */
void plex_registry_destroy(PlexRegistry *registry);

/* Finds a live flow by id; NULL when there is none (never created, or ended).
 * Thread-safe; the pointer may only be used on the flow's own loop thread. */
Plex *plex_registry_lookup(PlexRegistry *registry, uint64_t id);

/* Number of live flows; 0 for NULL. Thread-safe. */
size_t plex_registry_count(PlexRegistry *registry);

/* The allocator the registry was created with (never NULL for a registry). */
const PlexAllocator *plex_registry_allocator(const PlexRegistry *registry);

/* ---- Plex: a flow ------------------------------------------------------ */

/* Creates a flow with its own arena and a fresh id (64-bit, never reused).
 * `description` is copied; it may be NULL. Returns NULL and sets errno to
 * EINVAL (NULL registry) or ENOMEM. Thread-safe. */
Plex *plex_create(PlexRegistry *registry, const char *description);

/* Ends the flow as cancelled: the end handler runs with -ECANCELED, then
 * every item's cleanup once, then the cleanups of resources it owns (its
 * connections, timers, Postgres connections: their operations are cancelled).
 * Its memory is freed once the kernel has given back all of it. Safe from
 * inside the flow's own handlers. Returns 0, -EINVAL for NULL, -EALREADY if
 * the flow has already ended. */
int plex_destroy(Plex *plex);

/* Records the start time (monotonic ns). Returns 0, -EINVAL, -EALREADY. */
int plex_start(Plex *plex);

/* Ends the flow successfully (status 0) or as failed (status < 0; a status
 * >= 0 is -EINVAL). Same teardown as plex_destroy, with that status. */
int plex_finish(Plex *plex);
int plex_fail(Plex *plex, int status);

/* Handler for errors of items without their own on_error. Returns 0/-EINVAL. */
int plex_set_error_handler(Plex *plex, PlexHandler on_error);
/* Handler run once when the flow ends. Returns 0 / -EINVAL. */
int plex_set_end_handler(Plex *plex, PlexEndHandler on_end);

uint64_t plex_id(const Plex *plex);                 /* 0 for NULL */
const char *plex_description(const Plex *plex);     /* "" when none */
void *plex_user_data(const Plex *plex);
void plex_set_user_data(Plex *plex, void *user_data);
PlexArena *plex_arena(Plex *plex);
PlexRegistry *plex_registry(const Plex *plex);
/* True until the flow has ended (finish, fail, destroy). */
bool plex_is_alive(const Plex *plex);

typedef struct PlexStats {
    size_t items;            /* items in the chain */
    uint64_t completed;      /* operations that ended in on_success */
    uint64_t failed;         /* operations that ended in an error */
    uint64_t total_ns;       /* summed duration of those operations */
    uint64_t average_ns;     /* total_ns / (completed + failed), 0 if none */
    uint64_t start_ns;       /* plex_start time, 0 if not started */
    uint64_t stop_ns;        /* end time, 0 while alive */
} PlexStats;

/* Fills *stats. Returns 0 or -EINVAL. */
int plex_stats(const Plex *plex, PlexStats *stats);

/* ---- PlexItem: a step -------------------------------------------------- */

/* Creates a step and appends it to the chain. Any handler may be NULL.
 * `description` is copied. Memory is the flow's. Returns NULL and sets errno
 * to EINVAL (NULL or dead plex) or ENOMEM. */
PlexItem *plex_item_create(Plex *plex, const char *description, PlexHandler on_success,
                           PlexHandler on_error, PlexCleanupHandler on_cleanup, void *user_data);

/* Takes an item out of the chain and runs its cleanup now. Returns 0,
 * -EINVAL, -ENOENT (not in this plex), -EBUSY (an operation is in flight). */
int plex_item_remove(Plex *plex, PlexItem *item);

PlexItem *plex_item_first(const Plex *plex);        /* NULL when empty */
PlexItem *plex_item_next(const PlexItem *item);     /* NULL at the end */
/* First item with that description, or NULL. */
PlexItem *plex_item_find(const Plex *plex, const char *description);

Plex *plex_item_plex(const PlexItem *item);
const char *plex_item_description(const PlexItem *item);
void *plex_item_user_data(const PlexItem *item);
void plex_item_set_user_data(PlexItem *item, void *user_data);
/* Operations started on this item that have not ended yet. */
unsigned plex_item_in_flight(const PlexItem *item);

/* Timing of a step's operations. Each completion counts as a run: for a
 * one-shot operation, from its start to its completion; for a multishot one
 * (accept, read, recurring timer), from the previous completion (or the
 * start) to this one, so a read's runs measure how long the peer took to
 * send, not how long the engine took. Inside a running loop the times are
 * the loop's clock, read once when it wakes (as libuv's uv_now): exact to
 * the length of one loop iteration, and free per operation; outside a loop
 * the clock is read each time. */
typedef struct PlexItemTiming {
    uint64_t start_ns;  /* when its latest operation (or interval) started (monotonic) */
    uint64_t stop_ns;   /* when its latest completion came, 0 if running */
    uint64_t runs;      /* completions */
    uint64_t total_ns;  /* their summed duration */
} PlexItemTiming;

/* Fills *timing. Returns 0 or -EINVAL. */
int plex_item_timing(const PlexItem *item, PlexItemTiming *timing);

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC). */
uint64_t plex_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif

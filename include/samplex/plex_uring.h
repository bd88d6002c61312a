/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexEventLoop: one io_uring, run by one thread.
 *
 * Invariants:
 * - Operations started on behalf of a step are queued, then submitted
 *   together with a single io_uring_enter per loop iteration, which also
 *   waits; every ready completion is reaped in the same iteration.
 * - Operation records come from a per-loop pool: steady state allocates
 *   nothing.
 * - A loop is not thread-safe except for plex_event_loop_stop() (any thread,
 *   signal handlers too) and plex_event_loop_post() (any thread).
 * - A loop is run, and its flows driven, on the thread that created it (the
 *   ring is set up with IORING_SETUP_SINGLE_ISSUER where the kernel has it).
 *   For several cores, create one loop per thread, inside that thread.
 */
#ifndef SAMPLEX_PLEX_URING_H
#define SAMPLEX_PLEX_URING_H

#include "plex.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PlexEventLoopConfig {
    unsigned queue_depth;     /* submission queue entries (at least 2); 0: 256 */
    unsigned buffer_count;    /* provided receive buffers (power of two); 0: 256 */
    unsigned buffer_size;     /* bytes per receive buffer; 0: 4096 */
    int64_t timer_slack_ns;   /* how much after its target a timer may fire so that
                                 nearby timers share one wake-up; 0: 50 us (Linux's
                                 default timer slack); < 0: none. Never early. */
} PlexEventLoopConfig;

/* Creates a loop with the default configuration. Probes the kernel's
 * features. Returns NULL and sets errno: EINVAL (NULL registry), ENOMEM,
 * ENOSYS or EPERM when io_uring is unavailable (plex_strerror(PLEX_EURING)
 * says how to fix it; plex_event_loop_last_error() is not needed: errno
 * holds the cause). */
PlexEventLoop *plex_event_loop_create(PlexRegistry *registry);

/* As plex_event_loop_create, with a configuration (NULL: defaults). */
PlexEventLoop *plex_event_loop_create_with(PlexRegistry *registry,
                                           const PlexEventLoopConfig *config);

/* Ends every flow that has operations, timers or resources on this loop
 * (their end handlers and cleanups run; no success or error handler does),
 * cancels what is in flight, waits for the kernel to give back every
 * buffer, and frees the loop. Must not be called from a handler. NULL is a
 * no-op. */
void plex_event_loop_destroy(PlexEventLoop *loop);

/* Runs until plex_event_loop_stop() is called or nothing is left to do (no
 * operation in flight, no timer armed, no post pending). Returns 0 in both
 * cases, -EINVAL for NULL, -EBUSY when called from inside its own handler,
 * or a negative errno if the ring itself fails. A stop requested before run
 * makes run return at once; the request is consumed. */
int plex_event_loop_run(PlexEventLoop *loop);

/* Runs one iteration: submits, waits at most `timeout_ns` (0: do not wait,
 * < 0: wait for at least one completion), dispatches. Returns the number of
 * completions handled, or a negative errno. */
int plex_event_loop_run_once(PlexEventLoop *loop, int64_t timeout_ns);

/* Asks the loop to return from run after the current iteration. Safe from
 * any thread and from a signal handler; wakes a loop sleeping in the
 * kernel. NULL is a no-op. The caller must know the loop still exists: never
 * let a stop race with plex_event_loop_destroy (stop the loops, then wait
 * for their threads to return from run, then destroy). */
void plex_event_loop_stop(PlexEventLoop *loop);

typedef void (*PlexPostHandler)(PlexEventLoop *loop, void *argument);

/* Makes `handler(loop, argument)` run on the loop's thread during a later
 * iteration (in posting order). Thread-safe. To act on a flow, post its id
 * and look it up in the handler: it may have ended meanwhile. Returns 0,
 * -EINVAL, -ENOMEM, or -ESHUTDOWN if the loop is being destroyed (the
 * handler will not run). Posts still pending at destroy are dropped. */
int plex_event_loop_post(PlexEventLoop *loop, PlexPostHandler handler, void *argument);

PlexRegistry *plex_event_loop_registry(const PlexEventLoop *loop);

/* Operations in flight (including internal ones) and timers armed. */
typedef struct PlexEventLoopStats {
    uint64_t iterations;      /* times the loop entered the kernel */
    uint64_t completions;     /* completions reaped */
    uint64_t submissions;     /* SQEs submitted */
    unsigned operations;      /* operation records in use */
    unsigned timers;          /* timers armed */
    uint32_t ring_features;   /* IORING_FEAT_* the kernel reported */
    uint32_t setup_flags;     /* IORING_SETUP_* the ring was created with */
} PlexEventLoopStats;

int plex_event_loop_stats(const PlexEventLoop *loop, PlexEventLoopStats *stats);

#ifdef __cplusplus
}
#endif
#endif

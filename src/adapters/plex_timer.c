/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexTimer: timers on the loop's heap, and the one kernel timeout.
 *
 * Invariants:
 * - An armed timer is in its loop's heap, keyed by its absolute target
 *   (CLOCK_MONOTONIC ns), and holds one operation on its item (begun at
 *   add; ended by the last firing or silently by cancel).
 * - At most one IORING_OP_TIMEOUT is in flight per loop. It is armed
 *   (absolute) for the earliest target plus the loop's timer slack; when an
 *   earlier target appears it is moved with IORING_TIMEOUT_UPDATE. A timer
 *   never fires before its target, and at most the slack after it unless the
 *   loop is busy. When the earliest timer is cancelled
 *   the kernel timeout is left alone: it fires early, finds nothing due and
 *   is re-armed. That costs one wake-up instead of a cancel per change.
 * - A recurring timer is re-queued at previous target + interval before its
 *   handler runs, so the handler may cancel or destroy it.
 */
#include <errno.h>

#include <samplex/plex_timer.h>

#include "adapters/loop.h"

struct PlexTimer {
    PlexHeapNode node;         /* in loop->timers.heap while armed */
    PlexResource resource;     /* owned by the flow */
    PlexEventLoop *loop;       /* while armed */
    PlexItem *item;
    uint64_t interval_ns;      /* delay, and period when recurring */
    uint64_t target_ns;        /* current absolute target */
    uint64_t fired;
    uint64_t overruns;
    void *user_data;
    bool recurring;
};

static PlexTimer *timer_of_node(PlexHeapNode *node)
{
    return PLEX_CONTAINER_OF(node, PlexTimer, node);
}

/* ---- The queue --------------------------------------------------------- */

void plex_timers_init(PlexEventLoop *loop)
{
    plex_heap_init(&loop->timers.heap, loop->allocator);
    loop->timers.timeout_op = NULL;
    loop->timers.armed_deadline_ns = 0;
}

void plex_timers_fini(PlexEventLoop *loop)
{
    /* Flows have ended by now, so their timers are gone; the kernel timeout
     * (if any) is cancelled by the loop's drain. */
    plex_heap_fini(&loop->timers.heap);
}

static void timeout_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)cqe;
    if (loop->timers.timeout_op == op)
        loop->timers.timeout_op = NULL;
    plex_loop_op_put(loop, op);
}

static void to_timespec(uint64_t ns, struct __kernel_timespec *timespec)
{
    timespec->tv_sec = (long long)(ns / 1000000000u);
    timespec->tv_nsec = (long long)(ns % 1000000000u);
}

static void timeout_start(PlexEventLoop *loop, uint64_t deadline_ns)
{
    PlexOp *op = plex_loop_op_get(loop, timeout_complete, NULL, NULL);
    if (!op)
        return; /* Retried on the next iteration. */
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, op);
    if (!sqe) {
        plex_loop_op_put(loop, op);
        return;
    }
    to_timespec(deadline_ns, &op->storage.timespec);
    io_uring_prep_timeout(sqe, &op->storage.timespec, 0, IORING_TIMEOUT_ABS);
    loop->timers.timeout_op = op;
    loop->timers.armed_deadline_ns = deadline_ns;
}

static void timeout_move(PlexEventLoop *loop, uint64_t deadline_ns)
{
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, NULL);
    if (!sqe)
        return;
    /* The kernel copies the timespec when it takes the SQE. */
    to_timespec(deadline_ns, &loop->timers.update_timespec);
    io_uring_prep_timeout_update(sqe, &loop->timers.update_timespec,
                                 (uint64_t)(uintptr_t)loop->timers.timeout_op, IORING_TIMEOUT_ABS);
    loop->timers.armed_deadline_ns = deadline_ns;
}

int64_t plex_timers_arm(PlexEventLoop *loop)
{
    const PlexHeapEntry *top = plex_heap_top(&loop->timers.heap);
    if (!top || loop->destroying)
        return -1;
    /* Wake at the latest moment the earliest timer allows (its target plus
     * the slack): every timer due by then fires in the same wake-up. */
    uint64_t latest_ns = top->key + (uint64_t)loop->config.timer_slack_ns;
    if (!loop->timers.timeout_op)
        timeout_start(loop, latest_ns);
    else if (latest_ns < loop->timers.armed_deadline_ns)
        timeout_move(loop, latest_ns);
    if (loop->timers.timeout_op)
        return -1;
    /* No record for the kernel timeout (out of memory): the loop must not
     * sleep past the timer, or it would fire only when other work wakes it. */
    uint64_t now_ns = plex_now_ns();
    return latest_ns > now_ns ? (int64_t)(latest_ns - now_ns) : 0;
}

static void reschedule(PlexTimer *timer, uint64_t now_ns, uint64_t *skipped)
{
    uint64_t next = timer->target_ns + timer->interval_ns;
    *skipped = 0;
    if (next <= now_ns) {
        /* The handler (or the loop) overran: skip the ticks already past. */
        *skipped = (now_ns - next) / timer->interval_ns + 1;
        next += *skipped * timer->interval_ns;
    }
    timer->target_ns = next;
    timer->overruns += *skipped;
}

static void fire(PlexEventLoop *loop, PlexTimer *timer, uint64_t now_ns)
{
    PlexEvent event = {.timer = timer, .lateness_ns = (int64_t)(now_ns - timer->target_ns)};
    PlexItem *item = timer->item;
    timer->fired++;
    if (timer->recurring) {
        uint64_t skipped;
        reschedule(timer, now_ns, &skipped);
        event.overruns = skipped;
        event.flags = PLEX_EVENT_MORE;
        /* Re-queue first: the handler may cancel. Reserved room means no
         * allocation can fail here. */
        plex_heap_push(&loop->timers.heap, &timer->node, timer->target_ns);
        plex_loop_deliver(item, &event, false);
        return;
    }
    timer->loop = NULL;
    plex_loop_deliver(item, &event, true);
}

unsigned plex_timers_run(PlexEventLoop *loop)
{
    PlexHeap *heap = &loop->timers.heap;
    if (!heap->count)
        return 0;
    unsigned fired = 0;
    uint64_t now_ns = plex_now_ns();
    /* Only timers due at entry fire in this pass; a recurring timer whose
     * next target is already due waits for the next pass, so one handler
     * cannot starve the ring. */
    uint64_t horizon_ns = now_ns;
    const PlexHeapEntry *top;
    while ((top = plex_heap_top(heap)) && top->key <= horizon_ns) {
        PlexTimer *timer = timer_of_node(plex_heap_pop(heap));
        fire(loop, timer, now_ns);
        fired++;
        if ((fired & 63) == 0)
            now_ns = plex_now_ns();
    }
    return fired;
}

/* ---- The public API ---------------------------------------------------- */

static void timer_disarm(PlexTimer *timer)
{
    PlexEventLoop *loop = timer->loop;
    if (!loop)
        return;
    if (plex_heap_node_queued(&timer->node))
        plex_heap_remove(&loop->timers.heap, &timer->node);
    timer->loop = NULL;
    plex_item_op_end_silent(timer->item);
}

static void timer_release(PlexResource *resource)
{
    /* The flow ended: disarm. Its arena frees the memory. */
    timer_disarm(PLEX_CONTAINER_OF(resource, PlexTimer, resource));
}

PlexTimer *plex_timer_create(Plex *plex, PlexItem *item, int64_t delay_ns, bool recurring)
{
    if (!plex || !item || plex_item_plex(item) != plex || delay_ns < 0 ||
        (recurring && delay_ns == 0)) {
        errno = EINVAL;
        return NULL;
    }
    PlexTimer *timer = plex_arena_alloc(plex_arena(plex), sizeof(*timer), 0);
    if (!timer)
        return NULL; /* errno set by the arena */
    *timer = (PlexTimer){.item = item, .interval_ns = (uint64_t)delay_ns, .recurring = recurring};
    plex_heap_node_init(&timer->node);
    plex_link_init(&timer->resource.link);
    int rc = plex_resource_attach(plex, &timer->resource, timer_release);
    if (rc < 0) {
        plex_arena_free(plex_arena(plex), timer, sizeof(*timer));
        errno = -rc;
        return NULL;
    }
    return timer;
}

int plex_timer_destroy(PlexTimer *timer)
{
    if (!timer)
        return -EINVAL;
    Plex *plex = timer->resource.plex;
    timer_disarm(timer);
    plex_resource_detach(&timer->resource);
    if (plex)
        plex_arena_free(plex_arena(plex), timer, sizeof(*timer));
    return 0;
}

int plex_timer_add(PlexEventLoop *loop, PlexTimer *timer)
{
    if (!timer)
        return -EINVAL;
    return plex_timer_add_at(loop, timer, plex_now_ns() + timer->interval_ns);
}

int plex_timer_add_at(PlexEventLoop *loop, PlexTimer *timer, uint64_t target_ns)
{
    if (!loop || !timer)
        return -EINVAL;
    if (timer->loop)
        return -EALREADY;
    Plex *plex = timer->resource.plex;
    if (!plex || !plex_is_alive(plex))
        return -ESTALE;
    if (loop->destroying)
        return -ESHUTDOWN;
    int rc = plex_loop_bind(loop, plex);
    if (rc < 0)
        return rc;
    /* Keep one spare slot so a recurring timer can always be re-queued. */
    rc = plex_heap_reserve(&loop->timers.heap, loop->timers.heap.count + 2);
    if (rc < 0)
        return rc;
    timer->target_ns = target_ns;
    plex_heap_push(&loop->timers.heap, &timer->node, timer->target_ns);
    timer->loop = loop;
    plex_item_op_begin(timer->item);
    return 0;
}

int plex_timer_cancel(PlexTimer *timer)
{
    if (!timer)
        return -EINVAL;
    if (!timer->loop)
        return -ENOENT;
    timer_disarm(timer);
    return 0;
}

int plex_timer_set_delay(PlexTimer *timer, int64_t delay_ns)
{
    if (!timer || delay_ns < 0 || (timer->recurring && delay_ns == 0))
        return -EINVAL;
    timer->interval_ns = (uint64_t)delay_ns;
    return 0;
}

bool plex_timer_is_armed(const PlexTimer *timer) { return timer && timer->loop; }
uint64_t plex_timer_overruns(const PlexTimer *timer) { return timer ? timer->overruns : 0; }
uint64_t plex_timer_fired(const PlexTimer *timer) { return timer ? timer->fired : 0; }
PlexItem *plex_timer_item(const PlexTimer *timer) { return timer ? timer->item : NULL; }
void *plex_timer_user_data(const PlexTimer *timer) { return timer ? timer->user_data : NULL; }

void plex_timer_set_user_data(PlexTimer *timer, void *user_data)
{
    if (timer)
        timer->user_data = user_data;
}

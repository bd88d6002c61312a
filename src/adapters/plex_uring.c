/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexEventLoop: the ring, the operation pool, submit/complete and dispatch.
 *
 * Invariants:
 * - One iteration: fire due timers, arm the kernel timeout, submit every
 *   queued SQE and wait in a single io_uring_enter, reap every ready
 *   completion, run posts. Handlers only queue SQEs; nothing is submitted
 *   behind the loop's back unless the SQ ring is full.
 * - Each completion's user_data is a PlexOp (or 0: ignored). The op's
 *   adapter decides what it means; the loop only routes.
 * - The loop is alive while a step's operation is in flight, a timer is
 *   armed or a post is pending. Internal ops (the wake-up read, the timer
 *   timeout) do not count.
 * - Destroy ends the bound flows, cancels everything in flight and reaps
 *   until no op is in use; only then is memory freed and the ring closed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "adapters/loop.h"

#define PLEX_DEFAULT_QUEUE_DEPTH 256u
#define PLEX_MIN_QUEUE_DEPTH 2u /* the longest linked chain: connect + timeout, shutdown + close */
#define PLEX_DEFAULT_BUFFER_COUNT 256u
#define PLEX_DEFAULT_BUFFER_SIZE 4096u
#define PLEX_DEFAULT_TIMER_SLACK_NS 50000
#define PLEX_OP_SLAB_COUNT 256u
#define PLEX_BUFFER_GROUP 1

struct PlexPost {
    PlexPost *next;
    PlexPostHandler handler;
    void *argument;
};

typedef struct PlexOpSlab {
    struct PlexOpSlab *next;
    max_align_t ops[]; /* PLEX_OP_SLAB_COUNT ops of one size */
} PlexOpSlab;

/* ---- Operation pools: small ops, and large ones for sends -------------- */

static int op_pool_grow(PlexEventLoop *loop, size_t op_size, PlexLink *free_list)
{
    PlexOpSlab *slab = plex_mem_alloc(loop->allocator,
                                      sizeof(*slab) + (size_t)PLEX_OP_SLAB_COUNT * op_size);
    if (!slab)
        return -ENOMEM;
    slab->next = loop->op_slabs;
    loop->op_slabs = slab;
    for (unsigned i = 0; i < PLEX_OP_SLAB_COUNT; i++) {
        PlexOp *op = (PlexOp *)(void *)((char *)slab->ops + (size_t)i * op_size);
        plex_link_insert_tail(free_list, &op->link);
    }
    return 0;
}

static PlexOp *op_take(PlexEventLoop *loop, bool large)
{
    PlexLink *free_list = large ? &loop->ops_free_large : &loop->ops_free;
    size_t op_size = large ? sizeof(PlexOpLarge) : sizeof(PlexOp);
    if (plex_link_empty(free_list) && op_pool_grow(loop, op_size, free_list) < 0) {
        errno = ENOMEM;
        return NULL;
    }
    PlexLink *link = free_list->next;
    plex_link_remove(link);
    plex_link_insert_tail(&loop->ops_in_use, link);
    loop->ops_in_use_count++;
    return PLEX_CONTAINER_OF(link, PlexOp, link);
}

static PlexOp *op_get(PlexEventLoop *loop, PlexOpComplete complete, PlexItem *item, void *owner,
                      bool large)
{
    if (item) {
        int rc = plex_loop_bind(loop, plex_item_plex(item));
        if (rc < 0) {
            errno = -rc;
            return NULL;
        }
    }
    PlexOp *op = op_take(loop, large);
    if (!op)
        return NULL;
    op->complete = complete;
    op->item = item;
    op->owner = owner;
    op->flags = (item ? 0 : PLEX_OP_INTERNAL) | (large ? PLEX_OP_LARGE : 0);
    op->tag = 0;
    if (item) {
        plex_item_op_begin(item);
        loop->ops_alive++;
    }
    return op;
}

PlexOp *plex_loop_op_get(PlexEventLoop *loop, PlexOpComplete complete, PlexItem *item,
                         void *owner)
{
    return op_get(loop, complete, item, owner, false);
}

PlexOp *plex_loop_op_get_large(PlexEventLoop *loop, PlexOpComplete complete, PlexItem *item,
                               void *owner)
{
    return op_get(loop, complete, item, owner, true);
}

static void op_release(PlexEventLoop *loop, PlexOp *op)
{
    if (!(op->flags & PLEX_OP_INTERNAL))
        loop->ops_alive--;
    plex_link_remove(&op->link);
    plex_link_insert_tail(op->flags & PLEX_OP_LARGE ? &loop->ops_free_large : &loop->ops_free,
                          &op->link);
    loop->ops_in_use_count--;
    op->item = NULL;
    op->owner = NULL;
}

void plex_loop_op_put(PlexEventLoop *loop, PlexOp *op)
{
    PlexItem *item = op->item;
    op_release(loop, op);
    if (item)
        plex_item_op_end_silent(item);
}

void plex_loop_op_put_delivered(PlexEventLoop *loop, PlexOp *op) { op_release(loop, op); }

/* ---- Submission -------------------------------------------------------- */

struct io_uring_sqe *plex_loop_sqe(PlexEventLoop *loop, PlexOp *op)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    if (!sqe) {
        /* The SQ ring is full: submit what is queued to make room. */
        int rc = io_uring_submit(&loop->ring);
        if (rc > 0)
            loop->stats.submissions += (uint64_t)rc;
        sqe = io_uring_get_sqe(&loop->ring);
        if (!sqe)
            return NULL;
    }
    io_uring_sqe_set_data(sqe, op);
    return sqe;
}

int plex_loop_sq_reserve(PlexEventLoop *loop, unsigned count)
{
    if (io_uring_sq_space_left(&loop->ring) >= count)
        return 0;
    int rc = io_uring_submit(&loop->ring);
    if (rc > 0)
        loop->stats.submissions += (uint64_t)rc;
    if (io_uring_sq_space_left(&loop->ring) < count)
        return rc < 0 ? rc : -EBUSY;
    return 0;
}

void plex_loop_cancel(PlexEventLoop *loop, PlexOp *op)
{
    if (op->flags & PLEX_OP_CANCELLING)
        return;
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, NULL);
    if (!sqe)
        return;
    op->flags |= PLEX_OP_CANCELLING;
    io_uring_prep_cancel(sqe, op, 0);
}

void plex_loop_deliver(PlexItem *item, const PlexEvent *event, bool last)
{
    Plex *plex = plex_item_plex(item);
    plex_pin(plex);
    plex_item_deliver(item, event, last);
    plex_unpin(plex);
}

int plex_loop_bind(PlexEventLoop *loop, Plex *plex)
{
    return plex_bind(plex, loop, &loop->flows);
}

/* ---- Provided buffers -------------------------------------------------- */

int plex_loop_buffers_ensure(PlexEventLoop *loop)
{
    PlexBufferRing *buffers = &loop->buffers;
    if (buffers->ring)
        return 0;
    if (!loop->has_buf_ring)
        return -ENOTSUP;
    unsigned count = loop->config.buffer_count;
    size_t ring_bytes = count * sizeof(struct io_uring_buf);
    void *ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (ring == MAP_FAILED)
        return -errno;
    unsigned char *memory = plex_mem_alloc(loop->allocator, (size_t)count * loop->config.buffer_size);
    if (!memory) {
        munmap(ring, ring_bytes);
        return -ENOMEM;
    }
    struct io_uring_buf_reg registration = {
        .ring_addr = (uint64_t)(uintptr_t)ring, .ring_entries = count, .bgid = PLEX_BUFFER_GROUP};
    int rc = io_uring_register_buf_ring(&loop->ring, &registration, 0);
    if (rc < 0) {
        munmap(ring, ring_bytes);
        plex_mem_free(loop->allocator, memory);
        return rc;
    }
    buffers->ring = ring;
    buffers->memory = memory;
    buffers->count = count;
    buffers->size = loop->config.buffer_size;
    buffers->group_id = PLEX_BUFFER_GROUP;
    io_uring_buf_ring_init(buffers->ring);
    for (unsigned id = 0; id < count; id++)
        io_uring_buf_ring_add(buffers->ring, plex_loop_buffer(loop, id), buffers->size, (uint16_t)id,
                              io_uring_buf_ring_mask(count), (int)id);
    io_uring_buf_ring_advance(buffers->ring, (int)count);
    return 0;
}

void plex_loop_buffer_recycle(PlexEventLoop *loop, unsigned buffer_id)
{
    PlexBufferRing *buffers = &loop->buffers;
    io_uring_buf_ring_add(buffers->ring, plex_loop_buffer(loop, buffer_id), buffers->size,
                          (uint16_t)buffer_id, io_uring_buf_ring_mask(buffers->count), 0);
    io_uring_buf_ring_advance(buffers->ring, 1);
}

static void buffers_fini(PlexEventLoop *loop)
{
    PlexBufferRing *buffers = &loop->buffers;
    if (!buffers->ring)
        return;
    io_uring_unregister_buf_ring(&loop->ring, buffers->group_id);
    munmap(buffers->ring, buffers->count * sizeof(struct io_uring_buf));
    plex_mem_free(loop->allocator, buffers->memory);
    buffers->ring = NULL;
}

/* ---- Waking: an eventfd read that is always armed ---------------------- */

static void wake_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);

static void wake_arm(PlexEventLoop *loop)
{
    if (loop->destroying)
        return;
    PlexOp *op = plex_loop_op_get(loop, wake_complete, NULL, NULL);
    if (!op)
        return; /* Out of memory: stop still sets the flag; posts run next wake. */
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, op);
    if (!sqe) {
        plex_loop_op_put(loop, op);
        return;
    }
    io_uring_prep_read(sqe, loop->wake_fd, &op->storage.counter, sizeof(op->storage.counter), 0);
    loop->wake_op = op;
}

static void wake_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)cqe;
    loop->wake_op = NULL;
    plex_loop_op_put(loop, op);
    atomic_store(&loop->wake_pending, false);
    wake_arm(loop);
}

static void wake_up(PlexEventLoop *loop)
{
    /* One write is enough to wake; skip the syscall if one is pending. */
    if (atomic_exchange(&loop->wake_pending, true))
        return;
    uint64_t one = 1;
    ssize_t written = write(loop->wake_fd, &one, sizeof(one));
    (void)written; /* Only fails if the counter would overflow: awake anyway. */
}

/* ---- Posts ------------------------------------------------------------- */

int plex_event_loop_post(PlexEventLoop *loop, PlexPostHandler handler, void *argument)
{
    if (!loop || !handler)
        return -EINVAL;
    PlexPost *post = plex_mem_alloc(loop->allocator, sizeof(*post));
    if (!post)
        return -ENOMEM;
    *post = (PlexPost){.handler = handler, .argument = argument};
    pthread_mutex_lock(&loop->post_lock);
    if (loop->destroying) {
        pthread_mutex_unlock(&loop->post_lock);
        plex_mem_free(loop->allocator, post);
        return -ESHUTDOWN;
    }
    if (loop->post_tail)
        loop->post_tail->next = post;
    else
        loop->post_head = post;
    loop->post_tail = post;
    atomic_fetch_add(&loop->posts_pending, 1);
    pthread_mutex_unlock(&loop->post_lock);
    wake_up(loop);
    return 0;
}

static PlexPost *posts_take(PlexEventLoop *loop)
{
    if (atomic_load(&loop->posts_pending) == 0)
        return NULL;
    pthread_mutex_lock(&loop->post_lock);
    PlexPost *head = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_lock);
    return head;
}

static void posts_run(PlexEventLoop *loop)
{
    PlexPost *post = posts_take(loop);
    while (post) {
        PlexPost *next = post->next;
        PlexPostHandler handler = post->handler;
        void *argument = post->argument;
        plex_mem_free(loop->allocator, post);
        atomic_fetch_sub(&loop->posts_pending, 1);
        handler(loop, argument);
        post = next;
    }
}

static void posts_drop(PlexEventLoop *loop)
{
    PlexPost *post = posts_take(loop);
    while (post) {
        PlexPost *next = post->next;
        plex_mem_free(loop->allocator, post);
        atomic_fetch_sub(&loop->posts_pending, 1);
        post = next;
    }
}

/* ---- Create ------------------------------------------------------------ */

static int ring_setup(PlexEventLoop *loop)
{
    /* Best flags first; older kernels reject what they don't know. */
    static const uint32_t attempts[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
        struct io_uring_params params = {
            .flags = attempts[i] | IORING_SETUP_CQSIZE,
            .cq_entries = loop->queue_depth * 4,
        };
        rc = io_uring_queue_init_params(loop->queue_depth, &loop->ring, &params);
        if (rc == 0) {
            loop->setup_flags = params.flags;
            loop->stats.ring_features = params.features;
            /* Saves an fd lookup per io_uring_enter; optional (5.18+). */
            io_uring_register_ring_fd(&loop->ring);
            return 0;
        }
        if (rc != -EINVAL)
            break; /* ENOSYS, EPERM, ENOMEM: no point in trying other flags. */
    }
    return rc;
}

static void ring_probe(PlexEventLoop *loop)
{
    struct io_uring_probe *probe = io_uring_get_probe_ring(&loop->ring);
    if (!probe)
        return;
    /* Multishot accept and receive, and buffer rings, arrived with 5.19 and
     * 6.0; IORING_OP_SOCKET (5.19) is a fair marker for the former and
     * IORING_OP_SEND_ZC (6.0) for multishot receive. */
    loop->has_accept_multishot = io_uring_opcode_supported(probe, IORING_OP_SOCKET);
    loop->has_buf_ring = loop->has_accept_multishot;
    loop->has_recv_multishot = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
    io_uring_free_probe(probe);
}

static void config_apply(PlexEventLoop *loop, const PlexEventLoopConfig *config)
{
    PlexEventLoopConfig defaults = {0};
    loop->config = config ? *config : defaults;
    if (!loop->config.queue_depth)
        loop->config.queue_depth = PLEX_DEFAULT_QUEUE_DEPTH;
    else if (loop->config.queue_depth < PLEX_MIN_QUEUE_DEPTH)
        loop->config.queue_depth = PLEX_MIN_QUEUE_DEPTH;
    if (!loop->config.buffer_count)
        loop->config.buffer_count = PLEX_DEFAULT_BUFFER_COUNT;
    if (!loop->config.buffer_size)
        loop->config.buffer_size = PLEX_DEFAULT_BUFFER_SIZE;
    if (loop->config.timer_slack_ns == 0)
        loop->config.timer_slack_ns = PLEX_DEFAULT_TIMER_SLACK_NS;
    else if (loop->config.timer_slack_ns < 0)
        loop->config.timer_slack_ns = 0;
    loop->queue_depth = loop->config.queue_depth;
}

static bool config_valid(const PlexEventLoopConfig *config)
{
    if (!config)
        return true;
    unsigned count = config->buffer_count;
    if (count && ((count & (count - 1)) || count > 32768))
        return false;
    return config->queue_depth <= 32768 && config->buffer_size <= (1u << 20);
}

PlexEventLoop *plex_event_loop_create_with(PlexRegistry *registry,
                                           const PlexEventLoopConfig *config)
{
    if (!registry || !config_valid(config)) {
        errno = EINVAL;
        return NULL;
    }
    const PlexAllocator *allocator = plex_registry_allocator(registry);
    PlexEventLoop *loop = plex_mem_calloc(allocator, sizeof(*loop));
    if (!loop) {
        errno = ENOMEM;
        return NULL;
    }
    loop->registry = registry;
    loop->allocator = allocator;
    loop->wake_fd = -1;
    plex_link_init(&loop->flows);
    plex_link_init(&loop->ops_in_use);
    plex_link_init(&loop->ops_free);
    plex_link_init(&loop->ops_free_large);
    config_apply(loop, config);
    int rc = ring_setup(loop);
    if (rc < 0)
        goto fail_free;
    ring_probe(loop);
    loop->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (loop->wake_fd < 0) {
        rc = -errno;
        goto fail_ring;
    }
    if (pthread_mutex_init(&loop->post_lock, NULL) != 0) {
        rc = -ENOMEM;
        goto fail_fd;
    }
    plex_timers_init(loop);
    if (op_pool_grow(loop, sizeof(PlexOp), &loop->ops_free) < 0) {
        rc = -ENOMEM;
        goto fail_mutex;
    }
    wake_arm(loop);
    return loop;
fail_mutex:
    plex_timers_fini(loop);
    pthread_mutex_destroy(&loop->post_lock);
fail_fd:
    close(loop->wake_fd);
fail_ring:
    io_uring_queue_exit(&loop->ring);
fail_free:
    plex_mem_free(allocator, loop);
    errno = -rc;
    return NULL;
}

PlexEventLoop *plex_event_loop_create(PlexRegistry *registry)
{
    return plex_event_loop_create_with(registry, NULL);
}

/* ---- Run --------------------------------------------------------------- */

static bool loop_alive(const PlexEventLoop *loop)
{
    return loop->ops_alive > 0 || loop->timers.heap.count > 0 ||
           atomic_load(&loop->posts_pending) > 0;
}

static unsigned reap(PlexEventLoop *loop)
{
    unsigned handled = 0;
    struct io_uring_cqe *cqe;
    loop->wake_batch = io_uring_cq_ready(&loop->ring);
    /* Handlers only queue SQEs, so the CQ is ours while we walk it; advance
     * in one step at the end. Loop again for completions that arrived (or
     * were flushed from the overflow list) meanwhile. */
    for (;;) {
        unsigned head, count = 0;
        io_uring_for_each_cqe(&loop->ring, head, cqe) {
            PlexOp *op = io_uring_cqe_get_data(cqe);
            if (op)
                op->complete(loop, op, cqe);
            count++;
        }
        if (!count)
            break;
        io_uring_cq_advance(&loop->ring, count);
        handled += count;
        if (IO_URING_READ_ONCE(*loop->ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW)
            io_uring_get_events(&loop->ring);
    }
    loop->stats.completions += handled;
    return handled;
}

static int submit_and_wait(PlexEventLoop *loop, int64_t timeout_ns)
{
    int rc;
    if (timeout_ns == 0) {
        /* Submit and run completions without waiting (with DEFER_TASKRUN,
         * completions are only posted when we enter with GETEVENTS). */
        rc = io_uring_submit_and_get_events(&loop->ring);
    } else if (timeout_ns < 0) {
        rc = io_uring_submit_and_wait(&loop->ring, 1);
    } else {
        struct __kernel_timespec timeout = {.tv_sec = timeout_ns / 1000000000,
                                            .tv_nsec = timeout_ns % 1000000000};
        struct io_uring_cqe *cqe = NULL;
        rc = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, &timeout, NULL);
    }
    loop->stats.iterations++;
    if (rc > 0)
        loop->stats.submissions += (uint64_t)rc;
    /* A signal, an expired wait or a busy CQ: reap and go around again. */
    if (rc == -EINTR || rc == -ETIME || rc == -EBUSY || rc == -EAGAIN)
        return 0;
    return rc < 0 ? rc : 0;
}

static void modules_flush(PlexEventLoop *loop)
{
    for (int id = 0; id < PLEX_MODULE_COUNT; id++)
        if (loop->modules[id].flush)
            loop->modules[id].flush(loop, loop->modules[id].state);
}

static int iterate(PlexEventLoop *loop, int64_t timeout_ns)
{
    loop->dispatching = true;
    /* Item timing reads the clock once per wake-up, not per operation. */
    uint64_t outer_clock = plex_timing_clock_set(PLEX_TIMING_CLOCK_STALE);
    unsigned handled = plex_timers_run(loop);
    /* Adapters batch what this iteration's handlers queued (before the
     * timers are armed: a flush may run handlers that add timers). */
    modules_flush(loop);
    int64_t sleep_limit_ns = plex_timers_arm(loop);
    /* Don't sleep if a timer handler just made more work due now, nor past
     * a timer whose kernel timeout could not be armed. */
    if (handled)
        timeout_ns = 0;
    else if (sleep_limit_ns >= 0 && (timeout_ns < 0 || sleep_limit_ns < timeout_ns))
        timeout_ns = sleep_limit_ns;
    int rc = submit_and_wait(loop, timeout_ns);
    if (rc == 0) {
        plex_timing_clock_set(PLEX_TIMING_CLOCK_STALE);
        handled += reap(loop);
        posts_run(loop);
        handled += plex_timers_run(loop);
    }
    plex_timing_clock_set(outer_clock);
    loop->dispatching = false;
    return rc < 0 ? rc : (int)handled;
}

int plex_event_loop_run_once(PlexEventLoop *loop, int64_t timeout_ns)
{
    if (!loop)
        return -EINVAL;
    if (loop->dispatching)
        return -EBUSY;
    return iterate(loop, timeout_ns);
}

int plex_event_loop_run(PlexEventLoop *loop)
{
    if (!loop)
        return -EINVAL;
    if (loop->running || loop->dispatching)
        return -EBUSY;
    loop->running = true;
    int rc = 0;
    while (!atomic_exchange(&loop->stop_requested, false) && loop_alive(loop)) {
        rc = iterate(loop, -1);
        if (rc < 0)
            break;
        rc = 0;
    }
    loop->running = false;
    return rc;
}

void plex_event_loop_stop(PlexEventLoop *loop)
{
    if (!loop)
        return;
    atomic_store(&loop->stop_requested, true);
    /* write(2) is async-signal-safe; the eventfd read wakes the ring. */
    uint64_t one = 1;
    ssize_t written = write(loop->wake_fd, &one, sizeof(one));
    (void)written;
}

/* ---- Destroy ----------------------------------------------------------- */

static void cancel_all(PlexEventLoop *loop)
{
    for (PlexLink *link = loop->ops_in_use.next; link != &loop->ops_in_use; link = link->next)
        plex_loop_cancel(loop, PLEX_CONTAINER_OF(link, PlexOp, link));
}

static void drain(PlexEventLoop *loop)
{
    /* Every op in use has had a cancel sent; wait for the kernel to hand
     * back each one. Adapters may start follow-ups (a close after a
     * cancelled receive); cancel those too as they appear. */
    while (loop->ops_in_use_count > 0) {
        cancel_all(loop);
        int rc = submit_and_wait(loop, 100000000);
        if (rc < 0)
            break;
        reap(loop);
    }
}

void plex_event_loop_destroy(PlexEventLoop *loop)
{
    if (!loop || loop->dispatching)
        return;
    pthread_mutex_lock(&loop->post_lock);
    loop->destroying = true;
    pthread_mutex_unlock(&loop->post_lock);
    posts_drop(loop);
    /* End every flow on this loop: handlers stop, cleanups run, resources
     * cancel their operations. */
    while (!plex_link_empty(&loop->flows))
        plex_destroy(plex_from_bind_link(loop->flows.next));
    plex_timers_fini(loop);
    drain(loop);
    for (int id = 0; id < PLEX_MODULE_COUNT; id++)
        if (loop->modules[id].fini)
            loop->modules[id].fini(loop, loop->modules[id].state);
    buffers_fini(loop);
    io_uring_queue_exit(&loop->ring);
    close(loop->wake_fd);
    pthread_mutex_destroy(&loop->post_lock);
    while (loop->op_slabs) {
        PlexOpSlab *slab = loop->op_slabs;
        loop->op_slabs = slab->next;
        plex_mem_free(loop->allocator, slab);
    }
    plex_mem_free(loop->allocator, loop);
}

/* ---- Accessors --------------------------------------------------------- */

PlexRegistry *plex_event_loop_registry(const PlexEventLoop *loop)
{
    return loop ? loop->registry : NULL;
}

int plex_event_loop_stats(const PlexEventLoop *loop, PlexEventLoopStats *stats)
{
    if (!loop || !stats)
        return -EINVAL;
    *stats = loop->stats;
    stats->operations = loop->ops_in_use_count;
    stats->timers = (unsigned)loop->timers.heap.count;
    stats->setup_flags = loop->setup_flags;
    return 0;
}

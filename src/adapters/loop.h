/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one internal interface between the loop and its adapters (timers,
 * network, postgres). Adapters never talk to each other, only to this.
 *
 * Invariants:
 * - Every SQE's user_data is a PlexOp from the loop's pool, or 0 for
 *   fire-and-forget internal requests (cancels, timeout updates) whose
 *   completions are ignored.
 * - An op is in use from plex_loop_op_get() until the adapter calls
 *   plex_loop_op_put() from its completion function, after the kernel's last
 *   completion for it (for multishot: the one without IORING_CQE_F_MORE).
 *   Whatever the kernel points into (the op's storage, buffers of the owner)
 *   must stay valid until then.
 * - Ops with an item pin its flow (plex_item_op_begin) and keep the loop
 *   alive; internal ops (item NULL, PLEX_OP_INTERNAL) do neither.
 * - plex_loop_deliver() is how an adapter calls a step's handlers: it pins
 *   the flow around the call, so a handler may end its own flow.
 */
#ifndef SAMPLEX_LOOP_H
#define SAMPLEX_LOOP_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include <samplex/plex_uring.h>

#include "core/heap.h"
#include "core/plex_internal.h"

typedef struct PlexOp PlexOp;
typedef void (*PlexOpComplete)(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);

#define PLEX_OP_INTERNAL 0x1u   /* does not keep the loop alive */
#define PLEX_OP_CANCELLING 0x2u /* an ASYNC_CANCEL was sent for it */
#define PLEX_OP_LARGE 0x4u      /* a PlexOpLarge, from the large pool */

struct PlexOp {
    PlexOpComplete complete; /* the adapter's completion function */
    PlexItem *item;          /* the step it runs for; NULL for internal ops */
    void *owner;             /* the adapter's object (connection, listener, ...) */
    PlexLink link;           /* in the loop's in-use list, or a free list */
    uint32_t flags;          /* PLEX_OP_* */
    uint32_t tag;            /* free for the adapter (e.g. which kind of op) */
    union {                  /* memory lent to the kernel for this op */
        struct __kernel_timespec timespec;
        uint64_t counter;
        struct {                 /* an adapter's own queue while the op is */
            PlexOp *next;        /* not lent to the kernel (network: writes */
            uint64_t offset;     /* waiting for the send in flight) */
            uint64_t length;
        } queued;
        struct { /* a list of ops kept out of the kernel (network: */
            PlexOp *next; /* receives waiting for buffers) */
            PlexOp *prev;
        } parked;
    } storage;
};

/* An op with room for a scatter/gather send, from a pool of its own
 * (plex_loop_op_get_large). Kept apart so that the ops an idle connection
 * holds (its multishot receive) stay small. */
#define PLEX_OP_SEND_IOVECS 4
typedef struct PlexOpLarge {
    PlexOp op;
    struct msghdr message;
    struct iovec iov[PLEX_OP_SEND_IOVECS];
} PlexOpLarge;

static inline PlexOpLarge *plex_op_large(PlexOp *op)
{
    return PLEX_CONTAINER_OF(op, PlexOpLarge, op);
}

/* The loop's provided-buffer ring for multishot receive, created on first
 * use and shared by all the loop's connections. */
typedef struct PlexBufferRing {
    struct io_uring_buf_ring *ring;
    unsigned char *memory;
    unsigned count;
    unsigned size;
    int group_id;
} PlexBufferRing;

/* Timers (plex_timer.c): the heap and the one kernel timeout. */
typedef struct PlexTimerQueue {
    PlexHeap heap;
    PlexOp *timeout_op;            /* the armed IORING_OP_TIMEOUT, or NULL */
    uint64_t armed_deadline_ns;    /* its deadline */
    struct __kernel_timespec update_timespec; /* for IORING_TIMEOUT_UPDATE */
} PlexTimerQueue;

typedef struct PlexPost PlexPost;

/* Per-loop state an adapter keeps (pools, buffers). The loop calls fini at
 * destroy, after every op has come back from the kernel. */
typedef enum PlexLoopModuleId {
    PLEX_MODULE_NETWORK,
    PLEX_MODULE_POSTGRES,
    PLEX_MODULE_COUNT
} PlexLoopModuleId;

typedef struct PlexLoopModule {
    void *state;
    void (*fini)(PlexEventLoop *loop, void *state);
    /* Called once per iteration right before the loop submits and waits, to
     * send in one batch what handlers queued during the iteration (postgres:
     * the pipeline Sync and PQflush). May run handlers. NULL: none. */
    void (*flush)(PlexEventLoop *loop, void *state);
} PlexLoopModule;

struct PlexEventLoop {
    struct io_uring ring;
    PlexRegistry *registry;
    const PlexAllocator *allocator;   /* the registry's */
    PlexLink flows;                   /* flows bound to this loop */
    PlexLink ops_in_use;              /* PlexOp.link */
    PlexLink ops_free;                /* PlexOp.link */
    PlexLink ops_free_large;          /* PlexOpLarge.op.link */
    void *op_slabs;                   /* chain of op slabs, freed at destroy */
    unsigned ops_in_use_count;
    unsigned ops_alive;               /* in-use ops that keep the loop alive */
    unsigned queue_depth;
    PlexTimerQueue timers;
    PlexBufferRing buffers;
    PlexEventLoopConfig config;
    PlexLoopModule modules[PLEX_MODULE_COUNT];
    /* Waking and stopping: an eventfd read kept armed. */
    int wake_fd;
    PlexOp *wake_op;
    atomic_bool stop_requested;
    atomic_bool wake_pending;
    /* Posts from other threads. */
    pthread_mutex_t post_lock;
    PlexPost *post_head;
    PlexPost *post_tail;
    atomic_uint posts_pending;
    unsigned wake_batch; /* completions waiting when the latest reap began */
    bool destroying;
    bool running;
    bool dispatching;
    bool has_recv_multishot;
    bool has_accept_multishot;
    bool has_buf_ring;
    uint32_t setup_flags;
    PlexEventLoopStats stats;
};

/* Takes an op record (NULL and errno ENOMEM when the pool cannot grow).
 * With an item, the op is a step's: the flow is pinned and bound to this
 * loop (fails with errno EXDEV if the flow lives on another loop, ESTALE if
 * it ended). */
PlexOp *plex_loop_op_get(PlexEventLoop *loop, PlexOpComplete complete, PlexItem *item,
                         void *owner);
/* As plex_loop_op_get, for an op that needs PlexOpLarge's room. */
PlexOp *plex_loop_op_get_large(PlexEventLoop *loop, PlexOpComplete complete, PlexItem *item,
                               void *owner);
/* Returns an op record whose operation is over. For an op with an item
 * that was not delivered with last=true, ends it silently. */
void plex_loop_op_put(PlexEventLoop *loop, PlexOp *op);
/* An op given back after plex_item_deliver(..., last=true) already ended it. */
void plex_loop_op_put_delivered(PlexEventLoop *loop, PlexOp *op);

/* An SQE to fill, with user_data set to `op` (0 when op is NULL). Submits
 * what is queued when the ring is full. NULL only if the ring is broken. */
struct io_uring_sqe *plex_loop_sqe(PlexEventLoop *loop, PlexOp *op);

/* Makes an internal op (item NULL) keep the loop alive like a step's op:
 * for work nobody waits on that must still finish (a fire-and-forget send,
 * a close). Undone by plex_loop_op_put. */
static inline void plex_loop_op_keep_alive(PlexEventLoop *loop, PlexOp *op)
{
    if (op->flags & PLEX_OP_INTERNAL) {
        op->flags &= ~PLEX_OP_INTERNAL;
        loop->ops_alive++;
    }
}

/* Makes room for `count` SQEs in a row, submitting what is queued if the SQ
 * ring is short, so a linked chain never straddles a submit. 0 or a negative
 * errno. */
int plex_loop_sq_reserve(PlexEventLoop *loop, unsigned count);

/* Keeps the loop running for work that has no op of its own (a Postgres
 * query waiting on its connection's shared poll). One unhold per hold. */
static inline void plex_loop_hold(PlexEventLoop *loop) { loop->ops_alive++; }
static inline void plex_loop_unhold(PlexEventLoop *loop) { loop->ops_alive--; }

/* Asks the kernel to cancel `op`; its completion still arrives (usually
 * -ECANCELED) and the adapter frees it then. Idempotent. */
void plex_loop_cancel(PlexEventLoop *loop, PlexOp *op);

/* Calls the step's handler for `event`, pinning the flow around the call.
 * `last` as in plex_item_deliver. */
void plex_loop_deliver(PlexItem *item, const PlexEvent *event, bool last);

/* Binds a flow to the loop (0, -EXDEV, -ESTALE). */
int plex_loop_bind(PlexEventLoop *loop, Plex *plex);

/* Provided buffers: ensure the ring exists (0 or negative errno), find a
 * buffer's memory, give a buffer back to the kernel. */
int plex_loop_buffers_ensure(PlexEventLoop *loop);
static inline void *plex_loop_buffer(PlexEventLoop *loop, unsigned buffer_id)
{
    return loop->buffers.memory + (size_t)buffer_id * loop->buffers.size;
}
void plex_loop_buffer_recycle(PlexEventLoop *loop, unsigned buffer_id);

/* Timer queue, implemented in plex_timer.c and driven by the loop. */
void plex_timers_init(PlexEventLoop *loop);
void plex_timers_fini(PlexEventLoop *loop);
/* Fires every timer due at the current time. Returns how many fired. */
unsigned plex_timers_run(PlexEventLoop *loop);
/* Makes the kernel timeout match the earliest deadline. Returns how long
 * the loop may sleep: -1 for no limit (no timer, or the kernel timeout will
 * wake it), else the ns until the earliest timer is due, when its timeout
 * could not be armed (no operation record: out of memory). */
int64_t plex_timers_arm(PlexEventLoop *loop);

#endif

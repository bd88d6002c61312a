/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexConnection reads (multishot receive into the loop's provided buffers)
 * and writes (a queue of chunks with one send in flight).
 *
 * Invariants:
 * - A read is one op from plex_connection_read to its last call, which is
 *   always on_error (PLEX_EEOF, -ECANCELED, the socket's error). The kernel
 *   may end the multishot receive early (no IORING_CQE_F_MORE: a full CQ,
 *   -ENOBUFS); the same op is then armed again. A buffer goes back to the
 *   ring as soon as its handler returns, so by the time the loop submits the
 *   re-armed receive, every buffer of the batch just reaped is back. After
 *   -ENOBUFS the op is parked (READ_TAG_PARKED) and the network flush
 *   re-arms at most the ring's buffer count of parked reads per iteration
 *   (network_internal.h): never a spin, and not a re-arm per starved
 *   connection per iteration either.
 * - Output is sent in order: chunks are sent from the head, the send covers
 *   at most NET_SEND_IOVECS chunks, a short send consumes what was sent and
 *   the next send starts from there. Write ops are queued in order with the
 *   stream offset their last byte reaches; each succeeds when bytes_sent
 *   passes it. While output is queued, a send op exists: scheduled for the
 *   flush (which prepares one send for all that the iteration wrote), armed
 *   in the kernel (a send, or a backoff timeout), or being completed. When
 *   the connection stops sending (error, abort) the remaining writes fail
 *   and the output is dropped.
 * - Connection sockets are non-blocking, so no kernel worker ever blocks on
 *   one: io_uring waits for room by polling, but a peer that half-closed
 *   keeps waking that poll (POLLRDHUP cannot be masked) with no room, and
 *   after 128 such wake-ups io_uring hands the send to an io-wq worker,
 *   which on a blocking socket would sleep until the peer reads, holding a
 *   kernel thread and escaping cancellation (a loop's destroy then waited
 *   forever). On a non-blocking socket that send ends with -EAGAIN instead,
 *   and we try again after a backoff (10 ms, doubling up to 1 s).
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "adapters/network_internal.h"

/* Valgrind cannot see the kernel fill a provided buffer (io_uring writes
 * it), so received bytes would look uninitialised to memcheck. Telling it
 * costs nothing outside valgrind, and nothing without its header. */
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#else
#define VALGRIND_MAKE_MEM_DEFINED(address, length) ((void)(address), (void)(length))
#endif

/* ---- Read -------------------------------------------------------------- */

static void read_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);

static int read_arm(PlexConnection *conn, PlexOp *op)
{
    PlexEventLoop *loop = conn->loop;
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, op);
    if (!sqe)
        return -EBUSY;
    /* Not on AF_UNIX: from Linux 6.17 a multishot receive there can miss
     * the end of stream when the peer closed before the last bytes were
     * read (the socket reports 0 bytes left, so io_uring waits for a wakeup
     * that already happened; "io_uring/poll: fix multishot recv missing EOF
     * on wakeup race", 2026). A one-shot receive polls afresh each time. */
    if (loop->has_recv_multishot && !(conn->flags & CONN_RECV_ONESHOT))
        io_uring_prep_recv_multishot(sqe, conn->fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, conn->fd, NULL, loop->buffers.size, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)loop->buffers.group_id;
    conn->flags |= CONN_READ_ARMED;
    return 0;
}

int plex_connection_read(PlexConnection *conn, PlexItem *item)
{
    if (!conn || !item)
        return -EINVAL;
    if (conn->state != CONN_OPEN)
        return -ENOTCONN;
    if (conn->read_op)
        return -EALREADY;
    int rc = plex_loop_buffers_ensure(conn->loop);
    if (rc < 0)
        return rc;
    PlexOp *op = plex_loop_op_get(conn->loop, read_complete, item, conn);
    if (!op)
        return -errno;
    rc = read_arm(conn, op);
    if (rc < 0) {
        plex_loop_op_put(conn->loop, op);
        return rc;
    }
    conn->read_op = op;
    return 0;
}

#define READ_TAG_RESTART 0x80000000u /* op->tag: cancelled to be armed afresh */
#define READ_TAG_PARKED 0x40000000u  /* op->tag: starved, on the loop's list */

/* The read's last call: the op is over. */
static void read_end(PlexConnection *conn, PlexOp *op, int outcome)
{
    conn->read_op = NULL;
    conn->flags &= (uint8_t)~CONN_READ_STOP;
    conn_deliver(conn, op->item, outcome, 0, true);
    plex_loop_op_put_delivered(conn->loop, op);
}

void conn_read_cancel(PlexConnection *conn)
{
    conn->flags |= CONN_READ_STOP;
    PlexOp *op = conn->read_op;
    if (conn->flags & CONN_READ_ARMED) {
        plex_loop_cancel(conn->loop, op);
        return;
    }
    if (!op || !(op->tag & READ_TAG_PARKED))
        return; /* its completion is running: that sees the stop */
    /* Parked, out of the kernel: end it through the kernel with a NOP, so
     * that its last call comes from the loop, not from inside this call. */
    net_read_unpark(conn->loop, op);
    op->tag = 0;
    struct io_uring_sqe *sqe = plex_loop_sqe(conn->loop, op);
    if (!sqe) {
        read_end(conn, op, -ECANCELED); /* the ring is broken */
        return;
    }
    io_uring_prep_nop(sqe);
    conn->flags |= CONN_READ_ARMED;
}

int plex_connection_read_stop(PlexConnection *conn)
{
    if (!conn)
        return -EINVAL;
    if (!conn->read_op)
        return -ENOENT;
    if (conn->flags & CONN_READ_STOP)
        return -EALREADY;
    conn_read_cancel(conn);
    return 0;
}

static void read_deliver(PlexConnection *conn, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexEventLoop *loop = conn->loop;
    unsigned buffer_id = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    PlexEvent event = {.result = cqe->res,
                       .flags = PLEX_EVENT_MORE, /* the last call is always an error */
                       .data = plex_loop_buffer(loop, buffer_id),
                       .length = (size_t)cqe->res,
                       .connection = conn};
    VALGRIND_MAKE_MEM_DEFINED(event.data, event.length);
    plex_loop_deliver(op->item, &event, false);
    plex_loop_buffer_recycle(loop, buffer_id);
}

/* What ends the read after a completion the kernel will not follow up:
 * 0 to arm it again, else the last call's result. */
static int read_outcome(const PlexConnection *conn, const PlexOp *op, int res)
{
    if (conn->state != CONN_OPEN || (conn->flags & CONN_READ_STOP) || conn->loop->destroying ||
        !plex_is_alive(plex_item_plex(op->item)))
        return -ECANCELED;
    if (res == 0)
        return PLEX_EEOF;
    if (res > 0 || res == -ENOBUFS || res == -EAGAIN)
        return 0; /* -EAGAIN: io_uring gave up polling (see the invariants) */
    return res;
}

#define READ_RESTART_RUN 32u /* io_uring's MULTISHOT_MAX_RETRY */

/* A multishot receive that read READ_RESTART_RUN buffers in a row (each
 * completion saying more was waiting) has been requeued by io_uring, and
 * from Linux 6.17 may then miss the wake-up of an end of stream or reset
 * that came before its last bytes were read: it never completes again
 * ("io_uring/poll: fix multishot recv missing EOF on wakeup race", 2026;
 * seen with a TCP reset after a burst). op->tag counts the run; when a long
 * run ends, the receive is cancelled and armed afresh, and a fresh receive
 * sees the socket as it is. */
static void read_watch_run(PlexConnection *conn, PlexOp *op, uint32_t cqe_flags)
{
    uint32_t run = op->tag & ~READ_TAG_RESTART;
    if (cqe_flags & IORING_CQE_F_SOCK_NONEMPTY) {
        if (run < READ_RESTART_RUN)
            op->tag++;
        return;
    }
    op->tag &= READ_TAG_RESTART;
    if (run >= READ_RESTART_RUN && !op->tag && !(conn->flags & CONN_READ_STOP)) {
        op->tag = READ_TAG_RESTART;
        plex_loop_cancel(conn->loop, op);
    }
}

static void read_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexConnection *conn = op->owner;
    conn_hold(conn);
    if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER))
        read_deliver(conn, op, cqe);
    if (cqe->flags & IORING_CQE_F_MORE) {
        /* Still armed; a flow that ended meanwhile stops reading. */
        if (!plex_is_alive(plex_item_plex(op->item)))
            conn_read_cancel(conn);
        else
            read_watch_run(conn, op, cqe->flags);
        conn_unhold(conn);
        return;
    }
    conn->flags &= (uint8_t)~CONN_READ_ARMED;
    bool restart = (op->tag & READ_TAG_RESTART) && cqe->res == -ECANCELED;
    op->tag = 0;
    int outcome = read_outcome(conn, op, restart ? -ENOBUFS : cqe->res);
    if (outcome == 0) {
        op->flags &= ~PLEX_OP_CANCELLING; /* armed again: a later stop cancels anew */
        if (cqe->res == -ENOBUFS && !restart) {
            op->tag = READ_TAG_PARKED; /* the flush re-arms it in its turn */
            net_read_park(loop, op);
        } else {
            outcome = read_arm(conn, op);
        }
    }
    if (outcome != 0)
        read_end(conn, op, outcome);
    conn_unhold(conn);
}

void conn_read_resume(PlexOp *op)
{
    PlexConnection *conn = op->owner;
    conn_hold(conn);
    op->tag = 0;
    int outcome = read_outcome(conn, op, -ENOBUFS);
    if (outcome == 0)
        outcome = read_arm(conn, op);
    if (outcome != 0)
        read_end(conn, op, outcome);
    conn_unhold(conn);
}

/* ---- Output queue ------------------------------------------------------ */

static size_t chunk_room(const NetChunk *chunk)
{
    return chunk ? NET_CHUNK_CAPACITY - chunk->end : 0;
}

/* Copies bytes into the tail chunk and new chunks. All or nothing. */
static int output_append(PlexConnection *conn, const unsigned char *bytes, size_t length)
{
    size_t room = chunk_room(conn->out_tail);
    NetChunk *first = NULL, *last = NULL;
    for (size_t needed = length > room ? length - room : 0; needed > 0;) {
        NetChunk *chunk = net_chunk_get(conn->loop);
        if (!chunk) {
            for (NetChunk *next; first; first = next) {
                next = first->next;
                net_chunk_put(conn->loop, first);
            }
            return -ENOMEM;
        }
        *(first ? &last->next : &first) = chunk;
        last = chunk;
        needed -= needed < NET_CHUNK_CAPACITY ? needed : NET_CHUNK_CAPACITY;
    }
    conn->queued_end += length;
    size_t part = length < room ? length : room;
    if (part) {
        memcpy(conn->out_tail->data + conn->out_tail->end, bytes, part);
        conn->out_tail->end += (uint32_t)part;
    }
    for (NetChunk *chunk = first; chunk; chunk = chunk->next) {
        bytes += part;
        length -= part;
        part = length < NET_CHUNK_CAPACITY ? length : NET_CHUNK_CAPACITY;
        memcpy(chunk->data, bytes, part);
        chunk->end = (uint32_t)part;
    }
    if (first) {
        *(conn->out_tail ? &conn->out_tail->next : &conn->out_head) = first;
        conn->out_tail = last;
    }
    return 0;
}

/* `sent` bytes left the queue: advance, freeing emptied chunks. */
static void output_consume(PlexConnection *conn, size_t sent)
{
    conn->bytes_sent += sent;
    while (sent > 0) {
        NetChunk *chunk = conn->out_head;
        size_t part = chunk->end - chunk->start;
        part = sent < part ? sent : part;
        chunk->start += (uint32_t)part;
        sent -= part;
        if (chunk->start == chunk->end) {
            conn->out_head = chunk->next;
            if (!conn->out_head)
                conn->out_tail = NULL;
            net_chunk_put(conn->loop, chunk);
        }
    }
}

void conn_output_drop(PlexConnection *conn)
{
    while (conn->out_head) {
        NetChunk *chunk = conn->out_head;
        conn->out_head = chunk->next;
        net_chunk_put(conn->loop, chunk);
    }
    conn->out_tail = NULL;
    conn->queued_end = conn->bytes_sent;
}

/* ---- Write ops --------------------------------------------------------- */

static void write_deliver(PlexConnection *conn, PlexOp *op, int result)
{
    PlexEvent event = {.result = result,
                       .length = result >= 0 ? (size_t)op->storage.queued.length : 0,
                       .connection = conn};
    plex_loop_deliver(op->item, &event, true);
    plex_loop_op_put_delivered(conn->loop, op);
}

static PlexOp *writes_pop(PlexConnection *conn)
{
    PlexOp *op = conn->writes_head;
    conn->writes_head = op->storage.queued.next;
    if (!conn->writes_head)
        conn->writes_tail = NULL;
    return op;
}

static void writes_push(PlexConnection *conn, PlexOp *op, size_t length)
{
    op->storage.queued.next = NULL;
    op->storage.queued.offset = conn->queued_end;
    op->storage.queued.length = length;
    *(conn->writes_tail ? &conn->writes_tail->storage.queued.next : &conn->writes_head) = op;
    conn->writes_tail = op;
}

/* Writes whose last byte is on the socket succeed, in order. A handler may
 * write more: that lands behind, with a larger offset. */
static void writes_succeed(PlexConnection *conn)
{
    while (conn->writes_head && conn->writes_head->storage.queued.offset <= conn->bytes_sent) {
        PlexOp *op = writes_pop(conn);
        write_deliver(conn, op, (int)op->storage.queued.length);
    }
}

static void writes_fail(PlexConnection *conn, int error)
{
    while (conn->writes_head)
        write_deliver(conn, writes_pop(conn), error);
}

/* ---- Send -------------------------------------------------------------- */

static void send_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);

static void send_prep(PlexConnection *conn, PlexOp *op, struct io_uring_sqe *sqe)
{
    NetChunk *chunk = conn->out_head;
    conn->flags |= CONN_SEND_ARMED;
    if (!chunk->next) {
        io_uring_prep_send(sqe, conn->fd, chunk->data + chunk->start, chunk->end - chunk->start,
                           MSG_NOSIGNAL);
        return;
    }
    PlexOpLarge *large = plex_op_large(op);
    unsigned count = 0;
    for (; chunk && count < NET_SEND_IOVECS; chunk = chunk->next, count++) {
        large->iov[count].iov_base = chunk->data + chunk->start;
        large->iov[count].iov_len = chunk->end - chunk->start;
    }
    large->message = (struct msghdr){.msg_iov = large->iov, .msg_iovlen = count};
    io_uring_prep_sendmsg(sqe, conn->fd, &large->message, MSG_NOSIGNAL);
}

static bool send_continues(const PlexConnection *conn)
{
    return conn->out_head && !conn->error && !conn->loop->destroying &&
           (conn->state == CONN_OPEN || conn->state == CONN_CLOSING);
}

/* The connection stops sending: the writes left fail, the output goes. */
static void send_finish(PlexConnection *conn)
{
    int error = conn->state == CONN_ABORTING || !conn->error ? -ECANCELED : conn->error;
    PlexOp *op = conn->send_op;
    conn->send_op = NULL;
    conn_output_drop(conn);
    plex_loop_op_put(conn->loop, op);
    writes_fail(conn, error);
}

void conn_send_flush(PlexConnection *conn)
{
    conn_hold(conn);
    struct io_uring_sqe *sqe =
        send_continues(conn) ? plex_loop_sqe(conn->loop, conn->send_op) : NULL;
    if (sqe)
        send_prep(conn, conn->send_op, sqe);
    else
        send_finish(conn);
    conn_unhold(conn);
}

#define SEND_BACKOFF_FIRST_MS 10u
#define SEND_BACKOFF_MAX_MS 1000u
#define SEND_TAG_BACKOFF 0x80000000u /* op->tag: a backoff timeout; low bits: its ms */

/* The kernel gave up waiting for room (see the invariants): arm a timeout
 * with the send op, after which the send is tried again. False when the
 * connection no longer sends (or the ring is broken). */
static bool send_backoff(PlexConnection *conn, PlexOp *op)
{
    uint32_t last_ms = op->tag & ~SEND_TAG_BACKOFF;
    uint32_t delay_ms = last_ms ? last_ms * 2 : SEND_BACKOFF_FIRST_MS;
    if (delay_ms > SEND_BACKOFF_MAX_MS)
        delay_ms = SEND_BACKOFF_MAX_MS;
    struct io_uring_sqe *sqe = send_continues(conn) ? plex_loop_sqe(conn->loop, op) : NULL;
    if (!sqe)
        return false;
    op->storage.timespec = (struct __kernel_timespec){
        .tv_sec = delay_ms / 1000, .tv_nsec = (long long)(delay_ms % 1000) * 1000000};
    io_uring_prep_timeout(sqe, &op->storage.timespec, 0, 0);
    op->tag = SEND_TAG_BACKOFF | delay_ms;
    conn->flags |= CONN_SEND_ARMED;
    return true;
}

static void send_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)loop;
    PlexConnection *conn = op->owner;
    conn_hold(conn);
    conn->flags &= (uint8_t)~CONN_SEND_ARMED;
    if (op->tag & SEND_TAG_BACKOFF) {
        /* The pause is over (-ETIME) or was cancelled (an abort: the state
         * says so): send again, or stop. */
        op->tag &= ~SEND_TAG_BACKOFF;
        if (send_continues(conn))
            net_flush_schedule(conn);
        else
            send_finish(conn);
        conn_unhold(conn);
        return;
    }
    if (cqe->res == -EAGAIN && send_backoff(conn, op)) {
        conn_unhold(conn);
        return;
    }
    if (cqe->res > 0) {
        op->tag = 0; /* room again: the next backoff starts short */
        output_consume(conn, (size_t)cqe->res);
    } else if (!conn->error)
        conn->error = cqe->res < 0 ? cqe->res : -EPIPE; /* 0 bytes, or the NOP of an abort */
    writes_succeed(conn);
    /* The rest leaves at the flush, with whatever handlers write meanwhile. */
    if (send_continues(conn))
        net_flush_schedule(conn);
    else
        send_finish(conn);
    conn_unhold(conn);
}

void conn_send_cancel(PlexConnection *conn)
{
    if (conn->flags & CONN_SEND_ARMED) {
        plex_loop_cancel(conn->loop, conn->send_op);
        return;
    }
    if (plex_link_empty(&conn->flush_link))
        return; /* its completion is running: that sees the abort */
    /* Scheduled for a flush that may never come (the loop being destroyed
     * runs none): send the op through the kernel as a no-op instead, so its
     * completion fails the writes from the loop, not from inside abort. */
    plex_link_remove(&conn->flush_link);
    struct io_uring_sqe *sqe = plex_loop_sqe(conn->loop, conn->send_op);
    if (!sqe) {
        send_finish(conn); /* the ring is broken */
        return;
    }
    io_uring_prep_nop(sqe);
    conn->flags |= CONN_SEND_ARMED;
}

static int write_check(const PlexConnection *conn, const void *data, size_t length)
{
    if (!data || length == 0 || length > INT_MAX)
        return -EINVAL;
    if (conn->state != CONN_OPEN)
        return -ENOTCONN;
    if (conn->error)
        return conn->error;
    if (plex_connection_bytes_queued(conn) + length > conn->write_cap)
        return -ENOBUFS;
    return 0;
}

int plex_connection_write(PlexConnection *conn, PlexItem *item, const void *data, size_t length)
{
    if (!conn)
        return -EINVAL;
    int rc = write_check(conn, data, length);
    if (rc < 0)
        return rc;
    /* Every record first, the bytes last: a failure leaves nothing behind. */
    PlexOp *write_op = NULL, *send_op = NULL;
    if (item && !(write_op = plex_loop_op_get(conn->loop, NULL, item, conn)))
        return -errno;
    if (!conn->send_op) {
        send_op = plex_loop_op_get_large(conn->loop, send_complete, NULL, conn);
        if (send_op)
            plex_loop_op_keep_alive(conn->loop, send_op);
        rc = send_op ? 0 : -ENOMEM;
    }
    if (rc == 0)
        rc = output_append(conn, data, length);
    if (rc < 0) {
        if (send_op)
            plex_loop_op_put(conn->loop, send_op);
        if (write_op)
            plex_loop_op_put(conn->loop, write_op);
        return rc;
    }
    if (write_op)
        writes_push(conn, write_op, length);
    if (send_op) {
        conn->send_op = send_op;
        net_flush_schedule(conn);
    }
    return 0;
}

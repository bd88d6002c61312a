/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexConnection life cycle: create, attach, connect, close, abort, destroy.
 * Reads and writes are in plex_connection_io.c.
 *
 * Invariants:
 * - States move forward only: IDLE -> CONNECTING -> OPEN (or FAILED) ->
 *   CLOSING or ABORTING -> CLOSED; an accepted connection starts OPEN.
 * - The socket is closed only when no read, send or connect of it is in the
 *   kernel: close and abort cancel those first, and conn_progress submits
 *   the close (shutdown + close for a graceful one) once they have all come
 *   back. A connection without a loop never had an op, so it is closed at
 *   once.
 * - A doomed connection (destroyed, flow ended, or left unattached by an
 *   accept handler) is aborted, then freed by conn_progress once it is
 *   closed, has no op and nothing holds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "adapters/network_internal.h"

static void conn_release(PlexResource *resource);

static void conn_init(PlexConnection *conn, int fd)
{
    plex_link_init(&conn->resource.link);
    plex_link_init(&conn->flush_link);
    conn->resource.plex = NULL;
    conn->fd = fd;
    conn->write_cap = (uint32_t)PLEX_CONNECTION_DEFAULT_WRITE_CAP;
}

PlexConnection *conn_accepted(PlexEventLoop *loop, int fd)
{
    PlexConnection *conn = net_connection_alloc(loop);
    if (!conn)
        return NULL;
    conn_init(conn, fd);
    conn->loop = loop;
    conn->state = CONN_OPEN;
    return conn;
}

static void conn_free(PlexConnection *conn)
{
    plex_resource_detach(&conn->resource);
    if (conn->flags & CONN_CLIENT) {
        ClientConnection *client = (ClientConnection *)conn;
        PlexAllocator allocator = client->allocator;
        plex_mem_free(&allocator, client);
    } else {
        net_connection_free(conn->loop, conn);
    }
}

void conn_deliver(PlexConnection *conn, PlexItem *item, int result, uint32_t flags, bool last)
{
    PlexEvent event = {.result = result, .flags = flags, .connection = conn};
    plex_loop_deliver(item, &event, last);
}

void conn_hold(PlexConnection *conn)
{
    conn->holds++;
}

void conn_unhold(PlexConnection *conn)
{
    if (--conn->holds == 0)
        conn_progress(conn);
}

/* ---- Closing the socket ------------------------------------------------ */

static void close_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);

/* Closes the socket now: only when nothing of it is in the kernel. */
static int close_now(PlexConnection *conn)
{
    int rc = close(conn->fd) < 0 ? -errno : 0;
    conn->fd = -1;
    conn->state = CONN_CLOSED;
    return rc;
}

/* The close op's end: tell its item (if any) and give the op back. */
static void close_finish(PlexConnection *conn, PlexOp *op, int result)
{
    conn->close_op = NULL;
    conn->flags &= (uint8_t)~CONN_CLOSE_SENT;
    if (op->item) {
        conn_deliver(conn, op->item, result, 0, true);
        plex_loop_op_put_delivered(conn->loop, op);
    } else {
        plex_loop_op_put(conn->loop, op);
    }
}

static void close_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)loop;
    PlexConnection *conn = op->owner;
    conn_hold(conn);
    int result = cqe->res;
    if (result == -ECANCELED) {
        result = close_now(conn); /* never ran (loop teardown): nothing else holds the fd */
    } else {
        conn->fd = -1;
        conn->state = CONN_CLOSED;
    }
    close_finish(conn, op, result);
    conn_unhold(conn);
}

static void close_submit(PlexConnection *conn)
{
    PlexEventLoop *loop = conn->loop;
    bool graceful = conn->state == CONN_CLOSING && !conn->error;
    if (!conn->close_op) {
        conn->close_op = plex_loop_op_get(loop, close_complete, NULL, conn);
        if (conn->close_op)
            plex_loop_op_keep_alive(loop, conn->close_op);
    }
    /* Out of op records or a broken ring: nothing is in flight, so a plain
     * close(2) keeps rule 3. */
    if (!conn->close_op || plex_loop_sq_reserve(loop, graceful ? 2 : 1) < 0) {
        int rc = close_now(conn);
        if (conn->close_op)
            close_finish(conn, conn->close_op, rc);
        return;
    }
    if (graceful) {
        /* Hard link: the close runs even if the shutdown fails (a reset
         * peer gives -ENOTCONN). */
        struct io_uring_sqe *sqe = plex_loop_sqe(loop, NULL);
        io_uring_prep_shutdown(sqe, conn->fd, SHUT_WR);
        sqe->flags |= IOSQE_IO_HARDLINK;
    }
    io_uring_prep_close(plex_loop_sqe(loop, conn->close_op), conn->fd);
    conn->flags |= CONN_CLOSE_SENT;
}

static bool conn_in_kernel(const PlexConnection *conn)
{
    return conn->read_op || conn->send_op || conn->connect_op;
}

void conn_progress(PlexConnection *conn)
{
    if (conn->holds)
        return;
    bool closing = conn->state == CONN_CLOSING || conn->state == CONN_ABORTING;
    if (closing && !(conn->flags & CONN_CLOSE_SENT) && !conn_in_kernel(conn)) {
        /* Held: without a ring, close_submit finishes at once and calls the
         * close handler, which may destroy the connection. */
        conn->holds++;
        close_submit(conn);
        conn->holds--;
    }
    if ((conn->flags & CONN_DOOMED) && conn->state == CONN_CLOSED && !conn_in_kernel(conn) &&
        !conn->close_op)
        conn_free(conn);
}

/* ---- Abort and destroy ------------------------------------------------- */

/* Starts the abort; conn_progress finishes it. */
static void abort_start(PlexConnection *conn)
{
    if (conn->state == CONN_CLOSED || conn->state == CONN_ABORTING)
        return;
    if (!conn->loop) {
        close_now(conn);
        return;
    }
    conn->state = CONN_ABORTING;
    if (conn->read_op)
        conn_read_cancel(conn);
    if (conn->connect_op)
        plex_loop_cancel(conn->loop, conn->connect_op);
    if (conn->send_op)
        conn_send_cancel(conn);
}

static void conn_doom(PlexConnection *conn)
{
    plex_resource_detach(&conn->resource);
    conn->flags |= CONN_DOOMED;
    abort_start(conn);
    conn_progress(conn);
}

static void conn_release(PlexResource *resource)
{
    /* The flow ended: its handlers are no longer called, so the ops that
     * abort cancels end silently. */
    conn_doom(PLEX_CONTAINER_OF(resource, PlexConnection, resource));
}

int plex_connection_abort(PlexConnection *conn)
{
    if (!conn)
        return -EINVAL;
    if (conn->state == CONN_CLOSED || conn->state == CONN_ABORTING)
        return -EALREADY;
    abort_start(conn);
    conn_progress(conn);
    return 0;
}

int plex_connection_destroy(PlexConnection *conn)
{
    if (!conn)
        return -EINVAL;
    if (conn->flags & CONN_DOOMED)
        return -EALREADY;
    conn_doom(conn);
    return 0;
}

/* ---- Create and attach ------------------------------------------------- */

PlexConnection *plex_connection_create(Plex *plex, const char *host, uint16_t port)
{
    if (!plex || !host || port == 0) {
        errno = EINVAL;
        return NULL;
    }
    if (!plex_is_alive(plex)) {
        errno = ESTALE;
        return NULL;
    }
    ClientConnection *client = plex_mem_calloc(plex_allocator(plex), sizeof(*client));
    if (!client) {
        errno = ENOMEM;
        return NULL;
    }
    client->allocator = *plex_allocator(plex);
    int rc = net_resolve(host, port, false, &client->target, &client->target_length);
    int fd = rc < 0 ? rc : net_socket(client->target.ss_family, SOCK_NONBLOCK);
    if (fd < 0) {
        plex_mem_free(plex_allocator(plex), client);
        errno = -fd;
        return NULL;
    }
    PlexConnection *conn = &client->conn;
    conn_init(conn, fd);
    conn->flags = CONN_CLIENT;
    conn->state = CONN_IDLE;
    plex_resource_attach(plex, &conn->resource, conn_release); /* cannot fail: checked */
    return conn;
}

/* A connected stream socket, or the negative errno that says why not.
 * Sets *unix_socket for AF_UNIX. */
static int check_stream_socket(int fd, bool *unix_socket)
{
    int type = 0, domain = 0;
    socklen_t length = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0)
        return -errno;
    length = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) < 0)
        return -errno;
    *unix_socket = domain == AF_UNIX;
    if (type != SOCK_STREAM)
        return -EPROTOTYPE;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0))
        return -errno; /* non-blocking like every connection: see plex_connection_io.c */
    return 0;
}

PlexConnection *plex_connection_create_from_fd(Plex *plex, PlexEventLoop *loop, int fd)
{
    bool unix_socket = false;
    int rc = !plex || !loop || fd < 0 ? -EINVAL : check_stream_socket(fd, &unix_socket);
    if (rc == 0 && !plex_is_alive(plex))
        rc = -ESTALE;
    if (rc == 0 && loop->destroying)
        rc = -ESHUTDOWN;
    if (rc == 0)
        rc = plex_loop_bind(loop, plex);
    PlexConnection *conn = rc == 0 ? conn_accepted(loop, fd) : NULL;
    if (!conn) {
        errno = rc < 0 ? -rc : ENOMEM;
        return NULL;
    }
    if (unix_socket)
        conn->flags |= CONN_RECV_ONESHOT;
    plex_resource_attach(plex, &conn->resource, conn_release); /* cannot fail: checked */
    return conn;
}

int plex_connection_attach(PlexConnection *conn, Plex *plex)
{
    if (!conn || !plex || (conn->flags & CONN_DOOMED))
        return -EINVAL;
    if (!plex_is_alive(plex))
        return -ESTALE;
    if (conn->resource.plex == plex)
        return 0;
    if (conn->loop) {
        /* Bound to the connection's loop, the flow ends when the loop is
         * destroyed, and with it the connection. */
        int rc = plex_loop_bind(conn->loop, plex);
        if (rc < 0)
            return rc;
    }
    plex_resource_detach(&conn->resource);
    return plex_resource_attach(plex, &conn->resource, conn_release);
}

/* ---- Connect ----------------------------------------------------------- */

static void connect_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexConnection *conn = op->owner;
    int result = cqe->res;
    /* The linked timeout cancels the connect; our own cancels are marked. */
    if (result == -ECANCELED && (conn->flags & CONN_TIMEOUT) && !(op->flags & PLEX_OP_CANCELLING))
        result = -ETIMEDOUT;
    conn_hold(conn);
    conn->connect_op = NULL;
    conn->flags &= (uint8_t)~CONN_TIMEOUT;
    if (conn->state == CONN_CONNECTING)
        conn->state = result == 0 ? CONN_OPEN : CONN_FAILED;
    else if (result == 0)
        result = -ECANCELED; /* connected just as it was closed: closed wins */
    conn_deliver(conn, op->item, result, 0, true);
    plex_loop_op_put_delivered(loop, op);
    conn_unhold(conn);
}

static int connect_check(const PlexConnection *conn)
{
    switch (conn->state) {
    case CONN_IDLE:
        return conn->resource.plex ? 0 : -EBADF;
    case CONN_CONNECTING:
        return -EALREADY;
    case CONN_OPEN:
        return -EISCONN;
    default:
        return -EBADF;
    }
}

static void connect_prep(PlexConnection *conn, PlexOp *op, int64_t timeout_ns)
{
    ClientConnection *client = (ClientConnection *)conn;
    struct io_uring_sqe *sqe = plex_loop_sqe(conn->loop, op);
    io_uring_prep_connect(sqe, conn->fd, (struct sockaddr *)&client->target,
                          client->target_length);
    if (timeout_ns > 0) {
        sqe->flags |= IOSQE_IO_LINK;
        client->deadline.tv_sec = timeout_ns / 1000000000;
        client->deadline.tv_nsec = timeout_ns % 1000000000;
        io_uring_prep_link_timeout(plex_loop_sqe(conn->loop, NULL), &client->deadline, 0);
        conn->flags |= CONN_TIMEOUT;
    }
}

int plex_connection_connect(PlexEventLoop *loop, PlexConnection *conn, PlexItem *item,
                            int64_t timeout_ns)
{
    if (!loop || !conn || !item || timeout_ns < 0)
        return -EINVAL;
    int rc = connect_check(conn);
    if (rc < 0)
        return rc;
    if (loop->destroying)
        return -ESHUTDOWN;
    rc = plex_loop_bind(loop, conn->resource.plex);
    if (rc == 0)
        rc = plex_loop_sq_reserve(loop, timeout_ns > 0 ? 2 : 1);
    if (rc < 0)
        return rc;
    PlexOp *op = plex_loop_op_get(loop, connect_complete, item, conn);
    if (!op)
        return -errno;
    conn->loop = loop;
    conn->connect_op = op;
    conn->state = CONN_CONNECTING;
    connect_prep(conn, op, timeout_ns);
    return 0;
}

/* ---- Close ------------------------------------------------------------- */

int plex_connection_close(PlexConnection *conn, PlexItem *item)
{
    if (!conn)
        return -EINVAL;
    if (conn->state >= CONN_CLOSING)
        return -EALREADY;
    if (!conn->loop) {
        if (item)
            return -ENOTCONN;
        close_now(conn);
        return 0;
    }
    PlexOp *op = plex_loop_op_get(conn->loop, close_complete, item, conn);
    if (!op)
        return -errno;
    if (!item)
        plex_loop_op_keep_alive(conn->loop, op);
    conn->close_op = op;
    conn->state = CONN_CLOSING;
    if (conn->read_op)
        conn_read_cancel(conn);
    if (conn->connect_op)
        plex_loop_cancel(conn->loop, conn->connect_op);
    conn_progress(conn);
    return 0;
}

/* ---- Accessors --------------------------------------------------------- */

int plex_connection_set_write_cap(PlexConnection *conn, size_t cap)
{
    if (!conn || cap == 0 || cap > PLEX_CONNECTION_MAX_WRITE_CAP)
        return -EINVAL;
    conn->write_cap = (uint32_t)cap;
    return 0;
}

size_t plex_connection_bytes_queued(const PlexConnection *conn)
{
    return conn ? (size_t)(conn->queued_end - conn->bytes_sent) : 0;
}

int plex_connection_fd(const PlexConnection *conn)
{
    if (!conn)
        return -EINVAL;
    return conn->fd >= 0 ? conn->fd : -EBADF;
}

int plex_connection_peer_address(const PlexConnection *conn, struct sockaddr_storage *address,
                                 socklen_t *length)
{
    if (!conn || !address || !length)
        return -EINVAL;
    if (conn->fd < 0)
        return -EBADF;
    *length = sizeof(*address);
    if (getpeername(conn->fd, (struct sockaddr *)address, length) == 0)
        return 0;
    if (errno != ENOTCONN || !(conn->flags & CONN_CLIENT))
        return -errno;
    const ClientConnection *client = (const ClientConnection *)conn;
    memcpy(address, &client->target, client->target_length);
    *length = client->target_length;
    return 0;
}

Plex *plex_connection_plex(const PlexConnection *conn)
{
    return conn ? conn->resource.plex : NULL;
}

PlexEventLoop *plex_connection_loop(const PlexConnection *conn)
{
    return conn ? conn->loop : NULL;
}

void *plex_connection_user_data(const PlexConnection *conn)
{
    return conn ? conn->user_data : NULL;
}

void plex_connection_set_user_data(PlexConnection *conn, void *user_data)
{
    if (conn)
        conn->user_data = user_data;
}

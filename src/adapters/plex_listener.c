/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexListener: a listening socket and its multishot accept.
 *
 * Invariants:
 * - An accept is one op from plex_listener_accept to its last call. While it
 *   lasts, either the kernel holds it (ACCEPT_ARMED), or a backoff timeout
 *   is in the kernel (descriptors ran out), or its completion function is
 *   running. When the kernel ends the multishot accept, it is armed again
 *   unless the listener is closing, the loop is being destroyed or the
 *   accept item's flow has ended; then the last call (-ECANCELED) is made.
 * - The socket is closed (plain close(2)) only once neither the accept nor
 *   the backoff is in the kernel (DESIGN rule 3).
 * - Memory is the adapter's (a copy of the flow's allocator); it is freed once the
 *   listener is doomed, closed, has no op and nothing holds it.
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "adapters/network_internal.h"

#define LISTENER_ACCEPT_ARMED 0x1u
#define LISTENER_CLOSING 0x2u
#define LISTENER_DOOMED 0x4u

#define BACKOFF_FIRST_MS 10u
#define BACKOFF_MAX_MS 1000u

struct PlexListener {
    PlexResource resource;   /* owned by its flow */
    PlexEventLoop *loop;     /* set by the first accept */
    PlexAllocator allocator; /* a copy: the flow (and its copy) may go first */
    PlexOp *accept_op;       /* the accept, until its last call */
    PlexOp *backoff_op;      /* the retry timeout while descriptors are short */
    uint32_t backoff_ms;     /* the last backoff; 0 after a success */
    int fd;
    uint16_t port;
    uint16_t holds; /* completion functions running for it */
    uint8_t flags;  /* LISTENER_* */
};

static void listener_progress(PlexListener *listener)
{
    if (listener->holds || listener->accept_op || listener->backoff_op)
        return;
    if ((listener->flags & LISTENER_CLOSING) && listener->fd >= 0) {
        close(listener->fd);
        listener->fd = -1;
    }
    if ((listener->flags & LISTENER_DOOMED) && listener->fd < 0) {
        PlexAllocator allocator = listener->allocator;
        plex_resource_detach(&listener->resource);
        plex_mem_free(&allocator, listener);
    }
}

static void listener_unhold(PlexListener *listener)
{
    if (--listener->holds == 0)
        listener_progress(listener);
}

/* ---- Accept ------------------------------------------------------------ */

static void accept_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);
static void backoff_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe);

static int accept_arm(PlexListener *listener)
{
    struct io_uring_sqe *sqe = plex_loop_sqe(listener->loop, listener->accept_op);
    if (!sqe)
        return -EBUSY;
    if (listener->loop->has_accept_multishot)
        io_uring_prep_multishot_accept(sqe, listener->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    else
        io_uring_prep_accept(sqe, listener->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    listener->flags |= LISTENER_ACCEPT_ARMED;
    return 0;
}

static bool accept_continues(const PlexListener *listener)
{
    return !(listener->flags & LISTENER_CLOSING) && !listener->loop->destroying &&
           plex_is_alive(plex_item_plex(listener->accept_op->item));
}

static void accept_finish(PlexListener *listener, int result)
{
    PlexOp *op = listener->accept_op;
    listener->accept_op = NULL;
    PlexEvent event = {.result = result, .listener = listener};
    plex_loop_deliver(op->item, &event, true);
    plex_loop_op_put_delivered(listener->loop, op);
}

/* Hands an accepted socket to the accept handler. A connection the handler
 * neither attached nor destroyed is closed: nobody owns it. So is one that
 * the kernel accepted after plex_listener_close (nothing else uses it yet,
 * so a plain close(2) is safe). */
static void accept_deliver(PlexListener *listener, int fd)
{
    listener->backoff_ms = 0;
    PlexConnection *conn = accept_continues(listener) ? conn_accepted(listener->loop, fd) : NULL;
    if (!conn) {
        close(fd); /* closing, or out of memory: drop this peer, serve the others */
        return;
    }
    PlexEvent event = {
        .result = fd, .flags = PLEX_EVENT_MORE, .connection = conn, .listener = listener};
    conn_hold(conn);
    plex_loop_deliver(listener->accept_op->item, &event, false);
    if (!conn->resource.plex && !(conn->flags & CONN_DOOMED))
        plex_connection_destroy(conn);
    conn_unhold(conn);
}

static bool descriptors_short(int error)
{
    return error == -EMFILE || error == -ENFILE || error == -ENOMEM || error == -ENOBUFS;
}

/* Errors about one peer that leave the listener sound. */
static bool accept_transient(int error)
{
    return error == -ECONNABORTED || error == -EINTR || error == -EAGAIN || error == -EPROTO ||
           error == -EPERM || error == -ETIMEDOUT;
}

static int backoff_start(PlexListener *listener)
{
    uint32_t delay_ms = listener->backoff_ms ? listener->backoff_ms * 2 : BACKOFF_FIRST_MS;
    if (delay_ms > BACKOFF_MAX_MS)
        delay_ms = BACKOFF_MAX_MS;
    PlexOp *op = plex_loop_op_get(listener->loop, backoff_complete, NULL, listener);
    if (!op)
        return -ENOMEM;
    struct io_uring_sqe *sqe = plex_loop_sqe(listener->loop, op);
    if (!sqe) {
        plex_loop_op_put(listener->loop, op);
        return -EBUSY;
    }
    op->storage.timespec.tv_sec = delay_ms / 1000;
    op->storage.timespec.tv_nsec = (long long)(delay_ms % 1000) * 1000000;
    io_uring_prep_timeout(sqe, &op->storage.timespec, 0, 0);
    listener->backoff_op = op;
    listener->backoff_ms = delay_ms;
    return 0;
}

/* The kernel let go of the accept (no IORING_CQE_F_MORE): arm it again,
 * back off, or make the last call. */
static void accept_rearm(PlexListener *listener, int res)
{
    int rc = -ECANCELED;
    if (!accept_continues(listener))
        rc = -ECANCELED;
    else if (res >= 0 || accept_transient(res))
        rc = accept_arm(listener);
    else if (descriptors_short(res))
        rc = backoff_start(listener);
    else
        rc = res;
    if (rc < 0)
        accept_finish(listener, rc);
}

static void accept_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)loop;
    PlexListener *listener = op->owner;
    listener->holds++;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        listener->flags &= (uint8_t)~LISTENER_ACCEPT_ARMED;
    if (cqe->res >= 0)
        accept_deliver(listener, cqe->res);
    if (!(cqe->flags & IORING_CQE_F_MORE))
        accept_rearm(listener, cqe->res);
    else if (!accept_continues(listener))
        plex_loop_cancel(listener->loop, op); /* the accept item's flow ended */
    listener_unhold(listener);
}

static void backoff_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)cqe; /* -ETIME when it fired, -ECANCELED when cancelled: the state decides */
    PlexListener *listener = op->owner;
    listener->holds++;
    listener->backoff_op = NULL;
    plex_loop_op_put(loop, op);
    int rc = accept_continues(listener) ? accept_arm(listener) : -ECANCELED;
    if (rc < 0)
        accept_finish(listener, rc);
    listener_unhold(listener);
}

int plex_listener_accept(PlexEventLoop *loop, PlexListener *listener, PlexItem *item)
{
    if (!loop || !listener || !item)
        return -EINVAL;
    if (listener->fd < 0 || (listener->flags & LISTENER_CLOSING))
        return -EBADF;
    if (listener->accept_op)
        return -EALREADY;
    if (listener->loop && listener->loop != loop)
        return -EXDEV;
    if (loop->destroying)
        return -ESHUTDOWN;
    /* Bound to the loop, the owning flow ends (and closes us) when the loop
     * is destroyed. */
    int rc = plex_loop_bind(loop, listener->resource.plex);
    if (rc < 0)
        return rc;
    PlexOp *op = plex_loop_op_get(loop, accept_complete, item, listener);
    if (!op)
        return -errno;
    listener->loop = loop;
    listener->accept_op = op;
    listener->backoff_ms = 0;
    rc = accept_arm(listener);
    if (rc < 0) {
        listener->accept_op = NULL;
        plex_loop_op_put(loop, op);
    }
    return rc;
}

/* ---- Create, close, destroy -------------------------------------------- */

static int listener_socket(const char *host, uint16_t port, const PlexListenerOptions *options,
                           uint16_t *bound_port)
{
    struct sockaddr_storage address;
    socklen_t length;
    int rc = net_resolve(host, port, true, &address, &length);
    int fd = rc < 0 ? rc : net_socket(address.ss_family, 0);
    if (fd < 0)
        return fd;
    int one = 1;
    int backlog = options && options->backlog > 0 ? options->backlog : SOMAXCONN;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (options && options->reuse_port &&
         setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, (struct sockaddr *)&address, length) < 0 || listen(fd, backlog) < 0 ||
        getsockname(fd, (struct sockaddr *)&address, &length) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    *bound_port = ntohs(address.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&address)->sin6_port
                                                      : ((struct sockaddr_in *)&address)->sin_port);
    return fd;
}

static void listener_release(PlexResource *resource)
{
    plex_listener_destroy(PLEX_CONTAINER_OF(resource, PlexListener, resource));
}

PlexListener *plex_listener_create(Plex *plex, const char *host, uint16_t port,
                                   const PlexListenerOptions *options)
{
    if (!plex || (options && options->backlog < 0)) {
        errno = EINVAL;
        return NULL;
    }
    if (!plex_is_alive(plex)) {
        errno = ESTALE;
        return NULL;
    }
    PlexListener *listener = plex_mem_calloc(plex_allocator(plex), sizeof(*listener));
    if (!listener) {
        errno = ENOMEM;
        return NULL;
    }
    listener->allocator = *plex_allocator(plex);
    listener->fd = listener_socket(host, port, options, &listener->port);
    if (listener->fd < 0) {
        errno = -listener->fd;
        plex_mem_free(plex_allocator(plex), listener);
        return NULL;
    }
    plex_link_init(&listener->resource.link);
    plex_resource_attach(plex, &listener->resource, listener_release); /* checked above */
    return listener;
}

int plex_listener_close(PlexListener *listener)
{
    if (!listener)
        return -EINVAL;
    if (listener->flags & LISTENER_CLOSING)
        return -EALREADY;
    listener->flags |= LISTENER_CLOSING;
    if (listener->flags & LISTENER_ACCEPT_ARMED)
        plex_loop_cancel(listener->loop, listener->accept_op);
    if (listener->backoff_op)
        plex_loop_cancel(listener->loop, listener->backoff_op);
    listener_progress(listener);
    return 0;
}

int plex_listener_destroy(PlexListener *listener)
{
    if (!listener)
        return -EINVAL;
    if (listener->flags & LISTENER_DOOMED)
        return -EALREADY;
    plex_resource_detach(&listener->resource);
    listener->flags |= LISTENER_DOOMED;
    if (!(listener->flags & LISTENER_CLOSING))
        plex_listener_close(listener);
    else
        listener_progress(listener);
    return 0;
}

int plex_listener_port(const PlexListener *listener)
{
    return listener ? listener->port : -EINVAL;
}

int plex_listener_fd(const PlexListener *listener)
{
    if (!listener)
        return -EINVAL;
    return listener->fd >= 0 ? listener->fd : -EBADF;
}

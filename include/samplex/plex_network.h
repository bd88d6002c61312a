/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexListener and PlexConnection: TCP over the loop's io_uring.
 *
 * Invariants:
 * - A listener or connection is owned by one flow (a PlexResource): when the
 *   flow ends, the listener stops accepting and the connection is aborted,
 *   and each is freed once the kernel has given back everything it lent
 *   (DESIGN rule 3). No handler of an ended flow is called.
 * - A connection lives on one loop: the loop that accepted it, or the one it
 *   was connected on. Its owning flow is bound to that loop, so destroying
 *   the loop ends the flow and frees the connection.
 * - Exactly once: each operation started with a successful return (>= 0)
 *   ends in exactly one call of its item's on_success or on_error; multishot
 *   operations (accept, read) call it per completion with PLEX_EVENT_MORE
 *   set on every call but the last. A start that fails (< 0) calls nothing.
 * - Bytes written reach the socket in the order of the write calls, whole:
 *   one send is in flight per connection, later writes queue behind it and
 *   are coalesced, a short send resumes with the rest.
 * - Bounded memory: an idle connection holds no receive buffer and no output
 *   chunk; queued output is capped per connection (write returns -ENOBUFS
 *   past the cap, see plex_connection_write).
 * - Reads share the loop's receive buffers (PlexEventLoopConfig
 *   buffer_count x buffer_size). When more peers send at once than there
 *   are buffers, the reads that found none wait their turn inside the
 *   engine (the handler sees nothing of it) and are re-armed, oldest first,
 *   at most buffer_count per loop iteration: no byte is lost, and a flood
 *   costs a bounded amount of work per iteration.
 * - No SIGPIPE ever (MSG_NOSIGNAL on every send); TCP_NODELAY is on.
 * - Sockets are never close()d while an operation on them is in flight:
 *   close and abort cancel first, wait for the completions, then close.
 */
#ifndef SAMPLEX_PLEX_NETWORK_H
#define SAMPLEX_PLEX_NETWORK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "plex.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Listener ---------------------------------------------------------- */

typedef struct PlexListenerOptions {
    int backlog;     /* listen(2) backlog; 0: SOMAXCONN */
    bool reuse_port; /* SO_REUSEPORT: several loops (threads) share the port */
} PlexListenerOptions;

/* Creates a TCP socket listening on `host` (an IPv4 or IPv6 literal or a
 * name, resolved now and blocking; NULL: "0.0.0.0") and `port` (0: the
 * kernel picks one, see plex_listener_port), with SO_REUSEADDR and
 * TCP_NODELAY (inherited by accepted sockets). `options` may be NULL.
 * The listener is owned by `plex`. Returns NULL and sets errno: EINVAL (NULL
 * plex, negative backlog), ESTALE (flow ended), ENOMEM, or the socket's own
 * error (EADDRINUSE, EADDRNOTAVAIL, EACCES...); a name that does not resolve
 * gives EHOSTUNREACH. */
PlexListener *plex_listener_create(Plex *plex, const char *host, uint16_t port,
                                   const PlexListenerOptions *options);

/* Starts accepting on `loop` (multishot accept, re-armed transparently).
 * Each accepted socket reaches item's on_success with event->connection (a
 * new PlexConnection on `loop`), event->listener, event->result = its fd and
 * PLEX_EVENT_MORE set. The handler must plex_connection_attach() the
 * connection to a flow or destroy it; one still unattached when the handler
 * returns is closed and freed by the adapter (no leak). A socket accepted
 * when samplex has no memory for its connection is closed at once, without
 * a call (its peer sees the connection closed); accepting goes on.
 * On EMFILE/ENFILE (or ENOMEM/ENOBUFS) accepting pauses and is retried after
 * 10 ms, doubling up to 1 s, while existing connections keep being served;
 * these errors never reach the handler. The last call is on_error with
 * -ECANCELED after plex_listener_close/destroy (or the flow's end), or with
 * the error that stopped accepting.
 * Returns 0, -EINVAL (NULL), -EALREADY (already accepting), -EBADF (closed),
 * -EXDEV (listener or item's flow on another loop), -ESTALE, -ENOMEM. */
int plex_listener_accept(PlexEventLoop *loop, PlexListener *listener, PlexItem *item);

/* The port the listener is bound to, or -EINVAL. */
int plex_listener_port(const PlexListener *listener);

/* The listening socket, or -EINVAL / -EBADF (closed). */
int plex_listener_fd(const PlexListener *listener);

/* Stops accepting (the accept item's last call is on_error -ECANCELED) and
 * closes the socket once the kernel has let go of it. The listener stays
 * allocated until destroyed or its flow ends. Returns 0, -EINVAL, -EALREADY. */
int plex_listener_close(PlexListener *listener);

/* Closes the listener (if open) and frees it after its completions. Do not
 * use it afterwards. Returns 0 or -EINVAL. */
int plex_listener_destroy(PlexListener *listener);

/* ---- Connection -------------------------------------------------------- */

#define PLEX_CONNECTION_DEFAULT_WRITE_CAP ((size_t)4 << 20) /* bytes queued */
#define PLEX_CONNECTION_MAX_WRITE_CAP ((size_t)1 << 30)

/* Creates a client connection to `host` (IPv4 or IPv6 literal or a name,
 * resolved now and blocking) and `port`, owned by `plex`. The socket is
 * created now (TCP_NODELAY); plex_connection_connect connects it. Returns
 * NULL and sets errno: EINVAL (NULL, port 0), ESTALE, ENOMEM, EHOSTUNREACH
 * (the name does not resolve), or socket(2)'s error. */
PlexConnection *plex_connection_create(Plex *plex, const char *host, uint16_t port);

/* Adopts `fd`, an open connected stream socket (TCP, or one end of a
 * socketpair), as a connection on `loop` owned by `plex`, in the state of an
 * accepted one: ready to read and write. The connection owns the socket from
 * then on and closes it; it is made non-blocking, like every connection's.
 * (On AF_UNIX, reads use one receive per chunk: a multishot receive there
 * can miss the end of stream on Linux 6.17+.) Returns NULL and sets errno, leaving `fd` to the
 * caller: EINVAL (NULL, negative fd), ENOTSOCK or EBADF (not a socket),
 * EPROTOTYPE (not a stream socket), ESTALE (flow ended), ESHUTDOWN (loop being
 * destroyed), EXDEV (the flow lives on another loop), ENOMEM. */
PlexConnection *plex_connection_create_from_fd(Plex *plex, PlexEventLoop *loop, int fd);

/* Aborts the connection (see plex_connection_abort) and frees it once the
 * kernel has returned everything it lent. Do not use it afterwards. Safe
 * from any handler, including one of its own. Returns 0, -EINVAL, or
 * -EALREADY (destroyed before, seen from a handler still running for it). */
int plex_connection_destroy(PlexConnection *conn);

/* Makes `plex` the owner of `conn` (taking it from its previous owner, if
 * any), and binds the flow to the connection's loop. An accept handler must
 * do this (or destroy the connection). Returns 0, -EINVAL (NULL, or the
 * connection is being destroyed), -ESTALE (flow ended), -EXDEV (the flow
 * lives on another loop). */
int plex_connection_attach(PlexConnection *conn, Plex *plex);

/* Connects a client connection on `loop` (IORING_OP_CONNECT). item's
 * on_success fires once connected (result 0); on_error with -ECONNREFUSED,
 * -ENETUNREACH, ..., -ETIMEDOUT when `timeout_ns` (> 0; 0: none) passes
 * first (a linked timeout), or -ECANCELED when closed or aborted meanwhile.
 * A connection whose connect failed can only be closed or destroyed.
 * Returns 0, -EINVAL (NULL, negative timeout), -EISCONN, -EALREADY
 * (connecting), -EBADF (closed or failed), -EXDEV, -ESTALE, -ENOMEM. */
int plex_connection_connect(PlexEventLoop *loop, PlexConnection *conn, PlexItem *item,
                            int64_t timeout_ns);

/* Starts reading (multishot receive into the loop's provided buffers). Each
 * chunk of bytes reaches item's on_success with event->data/event->length
 * (borrowed: valid until the handler returns; the buffer then goes back to
 * the ring), event->result = length and PLEX_EVENT_MORE set. The read goes
 * on until its last call, on_error with:
 *   PLEX_EEOF       the peer closed its side (it may still read what we write);
 *   -ECANCELED      plex_connection_read_stop, close, abort, or destroy;
 *   -ECONNRESET ... the socket's error.
 * Data already received when a stop is asked may still be delivered first.
 * Returns 0, -EINVAL, -ENOTCONN (not connected, or closing), -EALREADY
 * (a read is active), -EXDEV, -ESTALE, -ENOMEM. */
int plex_connection_read(PlexConnection *conn, PlexItem *item);

/* Stops the active read; its last call (on_error -ECANCELED) follows from
 * the loop. A new read may be started once that call has been made.
 * Returns 0, -EINVAL, -ENOENT (no read active), -EALREADY (stopping). */
int plex_connection_read_stop(PlexConnection *conn);

/* Queues a copy of `length` bytes (the caller's memory is free on return)
 * and sends them after everything queued before. item (NULL: nobody is told)
 * gets on_success once when all of these bytes are on the socket (result =
 * length), or on_error once with the send's error (-EPIPE, -ECONNRESET...)
 * or -ECANCELED (aborted, destroyed) — then nothing later is sent either.
 * Policy when the peer does not read: if the bytes already queued plus
 * `length` exceed the connection's write cap (plex_connection_set_write_cap,
 * default 4 MiB), nothing is queued and -ENOBUFS is returned; the caller
 * decides (stop reading until a write handler fires, or close).
 * Returns 0, -EINVAL (NULL conn, NULL data, length 0 or > INT_MAX),
 * -ENOTCONN (not connected, closing or closed), the connection's send error
 * (-EPIPE, -ECONNRESET) once one happened, -ENOBUFS, -EXDEV, -ESTALE,
 * -ENOMEM. */
int plex_connection_write(PlexConnection *conn, PlexItem *item, const void *data, size_t length);

/* Closes gracefully: stops the read (-ECANCELED), sends what is queued, then
 * shuts down the sending side and closes the socket (IORING_OP_SHUTDOWN and
 * IORING_OP_CLOSE). item (NULL: nobody is told) gets on_success (result 0)
 * once the socket is closed. TCP's own rule still applies: if the peer sent
 * bytes that were never read, closing makes the kernel reset the connection
 * and drop what the peer has not received yet; read to the end of the
 * stream first when every byte must arrive. A connection that never reached
 * a loop (a client never connected) is closed at once; item must then be
 * NULL.
 * The connection stays allocated until destroyed or its flow ends.
 * Returns 0, -EINVAL, -EALREADY (closing or closed), -ENOTCONN (no loop and
 * item given), -EXDEV, -ESTALE, -ENOMEM. */
int plex_connection_close(PlexConnection *conn, PlexItem *item);

/* Cancels everything in flight (each of those operations ends with one
 * on_error -ECANCELED, except writes whose bytes were already sent, which
 * succeed), drops queued output, then closes the socket. A pending graceful
 * close's item is still told when the socket is closed. Returns 0, -EINVAL,
 * -EALREADY (aborting or closed). */
int plex_connection_abort(PlexConnection *conn);

/* Sets the cap on queued output bytes (1 .. PLEX_CONNECTION_MAX_WRITE_CAP).
 * Bytes already queued are kept. Returns 0 or -EINVAL. */
int plex_connection_set_write_cap(PlexConnection *conn, size_t cap);

/* Bytes written but not yet on the socket; 0 for NULL. */
size_t plex_connection_bytes_queued(const PlexConnection *conn);

/* The socket, or -EINVAL (NULL) / -EBADF (closed). Do not close it. */
int plex_connection_fd(const PlexConnection *conn);

/* Copies the peer's address (the connected peer, or for a client not yet
 * connected the address it will connect to) into *address and its size into
 * *length. Returns 0, -EINVAL, -EBADF (closed), or getpeername's error. */
int plex_connection_peer_address(const PlexConnection *conn, struct sockaddr_storage *address,
                                 socklen_t *length);

/* The flow that owns the connection; NULL when unattached (or NULL conn). */
Plex *plex_connection_plex(const PlexConnection *conn);

/* The connection's loop (accepting or connecting loop), or NULL. */
PlexEventLoop *plex_connection_loop(const PlexConnection *conn);

/* A pointer for the user; NULL initially. NULL conn: returns NULL / no-op. */
void *plex_connection_user_data(const PlexConnection *conn);
void plex_connection_set_user_data(PlexConnection *conn, void *user_data);

#ifdef __cplusplus
}
#endif
#endif

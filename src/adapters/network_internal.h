/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internals shared by the network adapter's files: the per-loop pools
 * (plex_network.c), the listener (plex_listener.c), connection life cycle
 * (plex_connection.c) and its reads and writes (plex_connection_io.c).
 *
 * Invariants:
 * - Listener and connection memory belongs to the adapter, not to a flow's
 *   arena: the kernel may point into it after its flow ended. An object is
 *   freed when it is doomed (destroyed, its flow ended, or an accepted
 *   connection left unattached), its socket is closed, none of its ops is in
 *   use, and no completion function is running for it (holds == 0).
 * - Every op of a connection is in the kernel, except queued write ops
 *   (finished by their send), a close op waiting for the output to drain or
 *   for cancels (submitted once those complete), and a send op scheduled for
 *   the module's flush (on flush_pending). The loop's drain runs no flush,
 *   but it only follows an abort of every connection, and aborting turns a
 *   scheduled send into a NOP through the kernel. So the drain, which cancels
 *   what the kernel holds, always ends.
 * - Sends are prepared by the flush hook, right before the loop enters the
 *   kernel: everything written during an iteration leaves in one send.
 * - A read that ended with -ENOBUFS is parked (not in the kernel, on the
 *   module's starved list) and re-armed by a later flush, at most
 *   buffers.count of them per flush: a dry buffer ring costs a bounded
 *   number of re-arms per iteration, not one per starved connection.
 *   Every parked read has bytes waiting, so a re-armed one completes at
 *   once and the loop never sleeps while reads are parked. Stopping a
 *   parked read ends it through the kernel with a NOP, like a send.
 * - Output is a list of fixed-size chunks from a per-loop free list; an idle
 *   connection holds none. bytes_queued = queued_end - bytes_sent.
 */
#ifndef SAMPLEX_NETWORK_INTERNAL_H
#define SAMPLEX_NETWORK_INTERNAL_H

#include <samplex/plex_network.h>

#include "adapters/loop.h"

#define NET_CHUNK_BYTES 4096u
#define NET_SEND_IOVECS PLEX_OP_SEND_IOVECS

typedef struct NetChunk NetChunk;
struct NetChunk {
    NetChunk *next;
    uint32_t start; /* first byte not yet sent */
    uint32_t end;   /* one past the last byte queued */
    unsigned char data[];
};
#define NET_CHUNK_CAPACITY (NET_CHUNK_BYTES - (uint32_t)offsetof(NetChunk, data))

typedef enum ConnState {
    CONN_IDLE,       /* client socket, not connected yet */
    CONN_CONNECTING, /* connect in flight */
    CONN_OPEN,       /* connected or accepted */
    CONN_FAILED,     /* connect failed: only close or destroy */
    CONN_CLOSING,    /* close(): flushing, then shutdown + close */
    CONN_ABORTING,   /* abort(): cancelling, then close */
    CONN_CLOSED,     /* socket closed */
} ConnState;

#define CONN_DOOMED 0x1u      /* free once quiet */
#define CONN_CLIENT 0x2u      /* allocator memory with a target address */
#define CONN_READ_STOP 0x4u   /* the read is being stopped */
#define CONN_CLOSE_SENT 0x8u  /* the close SQE is in the kernel */
#define CONN_TIMEOUT 0x10u    /* the connect carries a linked timeout */
#define CONN_SEND_ARMED 0x20u /* the send op is in the kernel */
#define CONN_READ_ARMED 0x40u /* the read op is in the kernel */
#define CONN_RECV_ONESHOT 0x80u /* one receive per op, never multishot (see read_arm) */

struct PlexConnection {
    PlexResource resource; /* owned by its flow; plex NULL while unattached */
    PlexEventLoop *loop;   /* NULL until accepted or connected */
    PlexOp *read_op;       /* the multishot receive, while reading */
    PlexOp *send_op;       /* the one send, while output is queued */
    PlexOp *connect_op;    /* while connecting */
    PlexOp *close_op;      /* from close() or abort until the socket is closed */
    NetChunk *out_head;    /* output, oldest first */
    NetChunk *out_tail;
    PlexLink flush_link; /* on the module's flush_pending while a send waits */
    PlexOp *writes_head; /* write ops waiting for their bytes, in order */
    PlexOp *writes_tail;
    uint64_t queued_end; /* stream offset after the last byte queued */
    uint64_t bytes_sent; /* stream offset after the last byte sent */
    void *user_data;
    uint32_t write_cap;
    int fd;
    int error;      /* sticky send error, 0 if none */
    uint8_t state;  /* ConnState */
    uint8_t flags;  /* CONN_* */
    uint16_t holds; /* completion functions running for it */
};

/* A client connection carries the address it connects to and its connect
 * deadline; the kernel reads both from here (the connection outlives its
 * operations), so the connect op itself stays small. */
typedef struct ClientConnection {
    PlexConnection conn;
    PlexAllocator allocator; /* a copy: the flow (and its copy) may go first */
    struct sockaddr_storage target;
    socklen_t target_length;
    struct __kernel_timespec deadline; /* for the linked timeout */
} ClientConnection;

/* ---- plex_network.c: per-loop pools and socket helpers ----------------- */

/* Takes a chunk from the loop's pool (grows it); NULL when out of memory. */
NetChunk *net_chunk_get(PlexEventLoop *loop);
void net_chunk_put(PlexEventLoop *loop, NetChunk *chunk);
/* A zeroed connection from the loop's slab; NULL when out of memory. */
PlexConnection *net_connection_alloc(PlexEventLoop *loop);
void net_connection_free(PlexEventLoop *loop, PlexConnection *conn);

/* Has the connection's send prepared by the next flush (idempotent). */
void net_flush_schedule(PlexConnection *conn);

/* Receives starved of buffers (-ENOBUFS) wait in the loop's list, out of
 * the kernel; each flush re-arms at most the ring's buffer count of them,
 * oldest first (conn_read_resume). park appends, unpark removes. */
void net_read_park(PlexEventLoop *loop, PlexOp *op);
void net_read_unpark(PlexEventLoop *loop, PlexOp *op);

/* Resolves host:port (host NULL: "0.0.0.0"). 0, -EINVAL, -EHOSTUNREACH. */
int net_resolve(const char *host, uint16_t port, bool passive, struct sockaddr_storage *address,
                socklen_t *length);
/* A TCP socket (close-on-exec, plus `type_flags`: SOCK_NONBLOCK for a
 * connection, see plex_connection_io.c) with TCP_NODELAY. fd or negative
 * errno. */
int net_socket(int family, int type_flags);

/* ---- plex_connection.c: life cycle ------------------------------------- */

/* A connection for an accepted socket, unattached. NULL when out of memory
 * (the caller closes the socket). */
PlexConnection *conn_accepted(PlexEventLoop *loop, int fd);
/* Completion functions hold the connection so a handler may destroy it;
 * the last unhold moves it on (submits the close, frees it). */
void conn_hold(PlexConnection *conn);
void conn_unhold(PlexConnection *conn);
/* Moves a closing or doomed connection on when nothing holds it. */
void conn_progress(PlexConnection *conn);
/* Calls item's handler for an event about `conn`. */
void conn_deliver(PlexConnection *conn, PlexItem *item, int result, uint32_t flags, bool last);

/* ---- plex_connection_io.c: reads and writes ---------------------------- */

/* Asks the kernel to stop the read / the send (their completions follow). */
void conn_read_cancel(PlexConnection *conn);
/* A parked read's turn came (the flush): arm it again, or end it. */
void conn_read_resume(PlexOp *op);
void conn_send_cancel(PlexConnection *conn);
/* Drops queued output (freeing its chunks) after the send is over. */
void conn_output_drop(PlexConnection *conn);
/* The flush: submits the connection's scheduled send, or ends it. */
void conn_send_flush(PlexConnection *conn);

#endif

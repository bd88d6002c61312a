/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: a PlexConnection's read and write paths over a
 * socket pair. One end is adopted by a loop (plex_connection_create_from_fd);
 * the other is a raw peer the harness drives. The input is a script:
 *
 *   byte 0      the transport (a unix socketpair or a TCP pair on
 *               127.0.0.1), the loop's configuration (queue depth, receive
 *               buffers), small socket buffers, and how the script ends (a
 *               graceful settle, or the loop destroyed with everything in
 *               flight);
 *   then pairs  (operation, argument): write with or without an item, the
 *               peer writes / reads / half-closes / closes, read, read_stop,
 *               close with or without an item, abort, destroy the connection,
 *               end the flow, run the loop, set the write cap, and one-shot
 *               actions taken from inside the read and write handlers (stop,
 *               close, abort, destroy, end the flow, write more).
 *
 * A model of the connection predicts every return value, and the handlers
 * check what the engine promises (plex_network.h, DESIGN.md rules 1-5):
 * - each write with an item ends in exactly one call, in write order, a
 *   success with its length or an error, and no success after an error;
 * - a read delivers the peer's bytes in order, each call with
 *   PLEX_EVENT_MORE, then exactly one last call (PLEX_EEOF only after every
 *   byte, -ECANCELED after a stop, close or abort);
 * - a close with an item is told once, after the read and every write ended;
 * - the peer receives a prefix of the accepted bytes, in order, and all of
 *   them followed by end of stream after a graceful close;
 * - no handler runs once the flow has ended; every cleanup runs once; the
 *   loop gets every op back; no leak, no crash, no undefined behaviour.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <samplex/samplex.h>

#include "fuzz_check.h"

#define MAX_OUT_BYTES ((size_t)4 << 20) /* accepted output kept for checking */
#define MAX_WRITES 4096                 /* writes with an item in one script */
#define SETTLE_NS (5 * 1000000000ull)   /* a settle that takes longer is a hang */

enum { STATE_OPEN, STATE_CLOSING, STATE_ABORTED };

/* One-shot actions taken from inside a handler. */
enum {
    ACTION_NONE,
    ACTION_STOP,
    ACTION_CLOSE,
    ACTION_ABORT,
    ACTION_DESTROY_CONN,
    ACTION_END_FLOW,
    ACTION_WRITE,
    ACTION_ECHO, /* read handler: from now on, write back what arrives */
    ACTION_COUNT
};

typedef struct Write {
    size_t length;
} Write;

typedef struct Harness {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    Plex *flow;                /* NULL once the flow ended */
    PlexConnection *conn;      /* NULL once destroyed or its flow ended */
    PlexConnection *conn_seen; /* what handlers must see in event->connection */
    PlexItem *read_item, *write_item, *close_item;
    int peer; /* -1 once closed */
    bool tcp; /* a TCP pair on 127.0.0.1, else a unix socketpair */
    unsigned ops_baseline;

    /* The model of the engine's side. */
    int state;
    bool read_active;   /* from read() == 0 to its last call */
    bool read_stopping; /* stop, close or abort asked while active */
    bool close_pending; /* a close with an item not yet told */
    bool close_without_item;
    bool close_done;
    int sticky_error;  /* the send error write() reports, once known */
    bool write_failed; /* a write handler reported an error */
    size_t write_cap;
    bool flow_ending; /* plex_destroy called: no handler may run any more */

    /* Writes with an item, in order: the next to be told is at head. */
    Write writes[MAX_WRITES];
    unsigned writes_head, writes_tail;
    unsigned write_calls;

    /* Bytes the engine accepted, in order; how many the peer read. */
    unsigned char *out;
    size_t out_length;
    size_t peer_received;
    bool peer_eof;
    bool peer_reset;

    /* Bytes the peer sent; how many reached the read handler. */
    size_t peer_sent;
    bool peer_shut;
    size_t delivered;
    unsigned read_last_calls;
    int read_last_result;

    int read_action, write_action;
    bool echo;
    unsigned cleanups, ends;
} Harness;

static unsigned char peer_pattern(size_t offset)
{
    return (unsigned char)(offset * 7u + (offset >> 9) + 0x5A);
}

static unsigned char out_pattern(size_t offset)
{
    return (unsigned char)(offset * 131u + (offset >> 8));
}

static size_t length_from(uint8_t argument)
{
    return argument < 200 ? (size_t)argument + 1 : (size_t)(argument - 199) * 4096;
}

static bool conn_usable(const Harness *h)
{
    return h->conn != NULL && h->flow != NULL && !h->flow_ending;
}

/* ---- Engine calls, each checked against the model ---------------------- */

static void do_write(Harness *h, const void *bytes, size_t length, bool with_item)
{
    if (!conn_usable(h) || h->out_length + length > MAX_OUT_BYTES ||
        (with_item && h->writes_tail - h->writes_head == MAX_WRITES))
        return;
    size_t queued = plex_connection_bytes_queued(h->conn);
    int rc = plex_connection_write(h->conn, with_item ? h->write_item : NULL, bytes, length);
    if (h->state != STATE_OPEN) {
        CHECK(rc == -ENOTCONN);
        return;
    }
    if (h->sticky_error) {
        CHECK(rc == h->sticky_error);
        return;
    }
    if (rc == -EPIPE || rc == -ECONNRESET) {
        CHECK(h->peer < 0); /* a send fails only once the peer has gone */
        h->sticky_error = rc;
        return;
    }
    if (rc == -ENOBUFS) {
        CHECK(queued + length > h->write_cap);
        return;
    }
    CHECK(rc == 0);
    CHECK(queued + length <= h->write_cap);
    CHECK(plex_connection_bytes_queued(h->conn) == queued + length);
    memcpy(h->out + h->out_length, bytes, length);
    h->out_length += length;
    if (with_item)
        h->writes[h->writes_tail++ % MAX_WRITES].length = length;
}

static void do_pattern_write(Harness *h, size_t length, bool with_item)
{
    if (h->out_length + length > MAX_OUT_BYTES)
        return;
    unsigned char *bytes = malloc(length);
    CHECK(bytes != NULL);
    for (size_t i = 0; i < length; i++)
        bytes[i] = out_pattern(h->out_length + i);
    do_write(h, bytes, length, with_item);
    free(bytes);
}

static void do_read(Harness *h)
{
    if (!conn_usable(h))
        return;
    int rc = plex_connection_read(h->conn, h->read_item);
    if (h->state != STATE_OPEN) {
        CHECK(rc == -ENOTCONN);
    } else if (h->read_active) {
        CHECK(rc == -EALREADY);
    } else {
        CHECK(rc == 0);
        h->read_active = true;
        h->read_stopping = false;
    }
}

static void do_read_stop(Harness *h)
{
    if (!conn_usable(h))
        return;
    int rc = plex_connection_read_stop(h->conn);
    if (!h->read_active) {
        CHECK(rc == -ENOENT);
    } else if (h->read_stopping) {
        CHECK(rc == -EALREADY);
    } else {
        CHECK(rc == 0);
        h->read_stopping = true;
    }
}

static void do_close(Harness *h, bool with_item)
{
    if (!conn_usable(h))
        return;
    int rc = plex_connection_close(h->conn, with_item ? h->close_item : NULL);
    if (h->state != STATE_OPEN) {
        CHECK(rc == -EALREADY);
        return;
    }
    CHECK(rc == 0);
    h->state = STATE_CLOSING;
    h->close_pending = with_item;
    h->close_without_item = !with_item;
    if (h->read_active)
        h->read_stopping = true;
}

static void do_abort(Harness *h)
{
    if (!conn_usable(h))
        return;
    int rc = plex_connection_abort(h->conn);
    if (h->state == STATE_ABORTED || h->close_done) {
        CHECK(rc == -EALREADY);
        return;
    }
    if (h->state == STATE_CLOSING && h->close_without_item) {
        CHECK(rc == 0 || rc == -EALREADY); /* closed or not: nobody told us */
        if (rc == -EALREADY)
            return;
    } else {
        CHECK(rc == 0);
    }
    h->state = STATE_ABORTED;
    if (h->read_active)
        h->read_stopping = true;
}

static void do_destroy_conn(Harness *h)
{
    if (!conn_usable(h))
        return;
    CHECK(plex_connection_destroy(h->conn) == 0);
    h->conn = NULL; /* freed once quiet: never touched again */
    if (h->state != STATE_ABORTED && !h->close_done) {
        h->state = STATE_ABORTED;
        if (h->read_active)
            h->read_stopping = true;
    }
}

static void do_end_flow(Harness *h)
{
    if (!h->flow || h->flow_ending)
        return;
    h->flow_ending = true; /* from here no read, write or close handler runs */
    unsigned cleanups = h->cleanups;
    CHECK(plex_destroy(h->flow) == 0);
    CHECK(h->cleanups == cleanups + 3);
    CHECK(h->ends == 1);
    h->flow = NULL;
    h->conn = NULL; /* the flow's end dooms it */
}

static void do_set_cap(Harness *h, uint8_t argument)
{
    if (!conn_usable(h))
        return;
    size_t cap = argument < 128 ? ((size_t)argument + 1) * 64 : ((size_t)argument - 127) * 16384;
    CHECK(plex_connection_set_write_cap(h->conn, cap) == 0);
    h->write_cap = cap;
}

static void do_action(Harness *h, int action, const PlexEvent *event)
{
    switch (action) {
    case ACTION_STOP:
        do_read_stop(h);
        break;
    case ACTION_CLOSE:
        do_close(h, true);
        break;
    case ACTION_ABORT:
        do_abort(h);
        break;
    case ACTION_DESTROY_CONN:
        do_destroy_conn(h);
        break;
    case ACTION_END_FLOW:
        do_end_flow(h);
        break;
    case ACTION_WRITE:
        do_pattern_write(h, event && event->length ? event->length : 100, true);
        break;
    default:
        break;
    }
}

/* ---- Handlers ---------------------------------------------------------- */

static Harness *handler_harness(PlexItem *item, const PlexEvent *event)
{
    Harness *h = plex_item_user_data(item);
    CHECK(!h->flow_ending && h->flow != NULL); /* no handler for an ended flow */
    CHECK(event->connection == h->conn_seen);
    return h;
}

static void on_read_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Harness *h = handler_harness(item, event);
    CHECK(h->read_active);
    CHECK(event->flags & PLEX_EVENT_MORE);
    CHECK(event->result > 0 && (size_t)event->result == event->length);
    CHECK(h->delivered + event->length <= h->peer_sent);
    const unsigned char *bytes = event->data;
    for (size_t i = 0; i < event->length; i++)
        CHECK(bytes[i] == peer_pattern(h->delivered + i));
    h->delivered += event->length;
    if (h->echo)
        do_write(h, event->data, event->length, (event->length & 1) != 0);
    int action = h->read_action;
    h->read_action = ACTION_NONE;
    do_action(h, action, event);
}

static void on_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Harness *h = handler_harness(item, event);
    CHECK(h->read_active);
    CHECK(!(event->flags & PLEX_EVENT_MORE));
    CHECK(event->result < 0);
    if (h->read_stopping) {
        CHECK(event->result == -ECANCELED);
    } else if (event->result == PLEX_EEOF || event->result == -ECONNRESET) {
        /* The end of the stream comes after every byte of it, except on
         * TCP once the peer closed: our send then draws a reset, which
         * drops what was still on its way (and the error may go to the
         * send, leaving the read a plain end of stream). */
        CHECK(h->peer < 0 || (h->peer_shut && event->result == PLEX_EEOF));
        CHECK(h->delivered == h->peer_sent || (h->tcp && h->peer < 0));
    } else {
        CHECK(event->result != -ECANCELED); /* nobody stopped it */
    }
    h->read_active = false;
    h->read_stopping = false;
    h->read_last_calls++;
    h->read_last_result = event->result;
}

static void on_write(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Harness *h = handler_harness(item, event);
    CHECK(!(event->flags & PLEX_EVENT_MORE));
    CHECK(h->writes_head != h->writes_tail); /* exactly once: nothing extra */
    Write write = h->writes[h->writes_head++ % MAX_WRITES];
    h->write_calls++;
    if (event->result >= 0) {
        CHECK(!h->write_failed); /* nothing is sent after a failed write */
        CHECK((size_t)event->result == write.length);
        CHECK(event->length == write.length);
        int action = h->write_action;
        h->write_action = ACTION_NONE;
        do_action(h, action, NULL);
        return;
    }
    CHECK(event->result == -ECANCELED || event->result == -EPIPE || event->result == -ECONNRESET);
    if (event->result != -ECANCELED) {
        CHECK(h->peer < 0);
        CHECK(h->sticky_error == 0 || h->sticky_error == event->result);
        h->sticky_error = event->result;
    }
    h->write_failed = true;
}

static void on_close(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Harness *h = handler_harness(item, event);
    CHECK(h->close_pending);
    CHECK(event->result == 0);
    /* The socket closes only after the read and every send came back. */
    CHECK(!h->read_active);
    CHECK(h->writes_head == h->writes_tail);
    h->close_pending = false;
    h->close_done = true;
}

static void on_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    Harness *h = plex_item_user_data(item);
    h->cleanups++;
}

static void on_end(Plex *plex, int status)
{
    (void)status;
    Harness *h = plex_user_data(plex);
    h->ends++;
}

/* ---- The peer ---------------------------------------------------------- */

static void peer_write(Harness *h, size_t length)
{
    if (h->peer < 0 || h->peer_shut)
        return;
    unsigned char *bytes = malloc(length);
    CHECK(bytes != NULL);
    for (size_t i = 0; i < length; i++)
        bytes[i] = peer_pattern(h->peer_sent + i);
    ssize_t sent = send(h->peer, bytes, length, MSG_DONTWAIT | MSG_NOSIGNAL);
    free(bytes);
    if (sent > 0) {
        h->peer_sent += (size_t)sent;
        return;
    }
    CHECK(errno == EAGAIN || errno == EPIPE || errno == ECONNRESET);
    if (errno == ECONNRESET) {
        /* The engine's side closed with bytes unread and TCP reset the
         * connection; this send took the error, so a later recv sees only
         * the end of the stream. */
        CHECK(h->tcp);
        CHECK(h->state != STATE_OPEN || h->flow_ending || h->flow == NULL);
        h->peer_reset = true;
    }
}

/* Reads up to `length` bytes; false when nothing more can come now. */
static bool peer_read(Harness *h, size_t length)
{
    if (h->peer < 0 || h->peer_eof || h->peer_reset)
        return false;
    unsigned char buffer[65536];
    if (length > sizeof(buffer))
        length = sizeof(buffer);
    ssize_t got = recv(h->peer, buffer, length, MSG_DONTWAIT);
    if (got < 0) {
        CHECK(errno == EAGAIN || errno == ECONNRESET);
        if (errno == EAGAIN)
            return false;
        /* A reset only once the engine's side closed with bytes unread. */
        CHECK(h->state != STATE_OPEN || h->flow_ending || h->flow == NULL);
        h->peer_reset = true;
        return false;
    }
    if (got == 0) {
        /* End of stream only once the engine's side is closing. */
        CHECK(h->state != STATE_OPEN || h->flow_ending || h->flow == NULL);
        h->peer_eof = true;
        return false;
    }
    CHECK(h->peer_received + (size_t)got <= h->out_length);
    CHECK(memcmp(buffer, h->out + h->peer_received, (size_t)got) == 0);
    h->peer_received += (size_t)got;
    return true;
}

static void peer_close(Harness *h)
{
    if (h->peer < 0)
        return;
    close(h->peer);
    h->peer = -1;
}

/* ---- Running the loop -------------------------------------------------- */

static unsigned ops_in_use(Harness *h)
{
    PlexEventLoopStats stats;
    CHECK(plex_event_loop_stats(h->loop, &stats) == 0);
    return stats.operations;
}

static void run(Harness *h, int64_t timeout_ns)
{
    CHECK(plex_event_loop_run_once(h->loop, timeout_ns) >= 0);
}

/* Runs the loop and reads as the peer until `done` holds; a settle that
 * takes more than SETTLE_NS is a hang. */
static void dump(const Harness *h)
{
    fprintf(stderr,
            "model: state %d read_active %d stopping %d close_pending %d done %d sticky %d "
            "writes untold %u out %zu peer_received %zu peer_sent %zu delivered %zu "
            "peer %d eof %d reset %d shut %d queued %zu\n",
            h->state, h->read_active, h->read_stopping, h->close_pending, h->close_done,
            h->sticky_error, h->writes_tail - h->writes_head, h->out_length, h->peer_received,
            h->peer_sent, h->delivered, h->peer, h->peer_eof, h->peer_reset, h->peer_shut,
            conn_usable(h) ? plex_connection_bytes_queued(h->conn) : 0);
}

/* CHECK, printing the model first. */
#define CHECK_MODEL(h, condition) \
    do {                          \
        if (!(condition))         \
            dump(h);              \
        CHECK(condition);         \
    } while (0)

static void settle(Harness *h, bool (*done)(Harness *))
{
    uint64_t deadline = plex_now_ns() + SETTLE_NS;
    while (!done(h)) {
        CHECK_MODEL(h, plex_now_ns() < deadline);
        while (peer_read(h, 65536)) {
        }
        run(h, 1000000);
    }
}

/* Nothing more is told once the flow has ended: each of these is then over. */
static bool writes_told(Harness *h)
{
    return !h->flow || (h->writes_head == h->writes_tail &&
                        (!h->conn || !plex_connection_bytes_queued(h->conn)));
}

static bool closed_and_read_over(Harness *h)
{
    return !h->flow || (!h->close_pending && !h->read_active);
}

static bool peer_at_end(Harness *h)
{
    return h->peer_eof || h->peer_reset || h->peer < 0;
}

static bool ops_back(Harness *h)
{
    return ops_in_use(h) == h->ops_baseline;
}

/* Whether the connection may still end gracefully: nothing aborted it,
 * no send failed, the peer is there. (Handlers' one-shot actions may change
 * that while the harness settles.) */
static bool graceful(const Harness *h)
{
    return conn_usable(h) && h->state != STATE_ABORTED && !h->sticky_error && h->peer >= 0;
}

/* The graceful end: everything written is told, the close is told, the
 * peer reads every accepted byte then the end of the stream (a reset
 * instead, on a unix socket, when the engine closed with bytes unread), then
 * the flow ends and the loop gets every op back. */
static void finish_gracefully(Harness *h)
{
    if (graceful(h) && h->state == STATE_OPEN)
        settle(h, writes_told);
    if (graceful(h) && h->state == STATE_OPEN) {
        CHECK_MODEL(h, !h->write_failed);
        do_close(h, true);
    }
    settle(h, closed_and_read_over);
    if (graceful(h))
        settle(h, peer_at_end);
    if (graceful(h)) { /* still: no handler's action aborted it meanwhile */
        CHECK_MODEL(h, h->peer_eof || (h->peer_reset && h->delivered < h->peer_sent));
        /* A TCP reset drops what was still on its way; a unix socket's
         * bytes are all in the peer's queue already. */
        CHECK_MODEL(h, h->peer_received == h->out_length || (h->tcp && h->peer_reset));
        CHECK_MODEL(h, !h->write_failed);
    }
    do_end_flow(h);
    peer_close(h);
    settle(h, ops_back);
}

/* ---- The script -------------------------------------------------------- */

enum {
    OP_WRITE,
    OP_WRITE_NO_ITEM,
    OP_PEER_WRITE,
    OP_PEER_READ,
    OP_PEER_SHUT,
    OP_PEER_CLOSE,
    OP_READ,
    OP_READ_STOP,
    OP_CLOSE,
    OP_CLOSE_NO_ITEM,
    OP_ABORT,
    OP_DESTROY_CONN,
    OP_END_FLOW,
    OP_RUN,
    OP_RUN_WAIT,
    OP_SET_CAP,
    OP_READ_ACTION,
    OP_WRITE_ACTION,
    OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
    "write",    "write_no_item", "peer_write", "peer_read",     "peer_shut",   "peer_close",
    "read",     "read_stop",     "close",      "close_no_item", "abort",       "destroy_conn",
    "end_flow", "run",           "run_wait",   "set_cap",       "read_action", "write_action"};

static void step(Harness *h, uint8_t operation, uint8_t argument)
{
    static int trace = -1; /* FUZZ_TRACE=1: print each step and the model after it */
    if (trace < 0)
        trace = getenv("FUZZ_TRACE") != NULL;
    if (trace)
        fprintf(stderr, "step %s %u\n", op_names[operation % OP_COUNT], argument);
    switch (operation % OP_COUNT) {
    case OP_WRITE:
        do_pattern_write(h, length_from(argument), true);
        break;
    case OP_WRITE_NO_ITEM:
        do_pattern_write(h, length_from(argument), false);
        break;
    case OP_PEER_WRITE:
        peer_write(h, length_from(argument));
        break;
    case OP_PEER_READ:
        peer_read(h, length_from(argument));
        break;
    case OP_PEER_SHUT:
        if (h->peer >= 0 && !h->peer_shut) {
            /* A TCP peer already reset is no longer connected. */
            CHECK(shutdown(h->peer, SHUT_WR) == 0 || (h->tcp && errno == ENOTCONN));
            h->peer_shut = true;
        }
        break;
    case OP_PEER_CLOSE:
        peer_close(h);
        break;
    case OP_READ:
        do_read(h);
        break;
    case OP_READ_STOP:
        do_read_stop(h);
        break;
    case OP_CLOSE:
        do_close(h, true);
        break;
    case OP_CLOSE_NO_ITEM:
        do_close(h, false);
        break;
    case OP_ABORT:
        do_abort(h);
        break;
    case OP_DESTROY_CONN:
        do_destroy_conn(h);
        break;
    case OP_END_FLOW:
        do_end_flow(h);
        break;
    case OP_RUN:
        for (unsigned i = 0; i <= argument % 8u; i++)
            run(h, 0);
        break;
    case OP_RUN_WAIT:
        run(h, 1000000);
        break;
    case OP_SET_CAP:
        do_set_cap(h, argument);
        break;
    case OP_READ_ACTION:
        if (argument % ACTION_COUNT == ACTION_ECHO)
            h->echo = !h->echo;
        else
            h->read_action = argument % ACTION_COUNT;
        break;
    default:
        h->write_action = argument % ACTION_COUNT;
        break;
    }
    if (trace)
        dump(h);
}

/* A connected TCP pair on 127.0.0.1, through a listener kept for every run. */
static void tcp_pair(int ends[2])
{
    static int listener = -1;
    static struct sockaddr_in address;
    if (listener < 0) {
        listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(listener >= 0);
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof(address);
        CHECK(bind(listener, (struct sockaddr *)&address, sizeof(address)) == 0);
        CHECK(getsockname(listener, (struct sockaddr *)&address, &length) == 0);
        CHECK(listen(listener, 16) == 0);
    }
    ends[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(ends[1] >= 0);
    CHECK(connect(ends[1], (struct sockaddr *)&address, sizeof(address)) == 0);
    ends[0] = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    CHECK(ends[0] >= 0);
    int one = 1;
    CHECK(setsockopt(ends[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0);
}

static void harness_start(Harness *h, uint8_t config_byte)
{
    static const unsigned counts[] = {2, 8, 64, 256};
    static const unsigned sizes[] = {64, 512, 4096, 16384};
    PlexEventLoopConfig config = {.queue_depth = config_byte & 1 ? 256 : 4,
                                  .buffer_count = counts[(config_byte >> 2) & 3],
                                  .buffer_size = sizes[(config_byte >> 4) & 3]};
    h->registry = plex_registry_create();
    CHECK(h->registry != NULL);
    h->loop = plex_event_loop_create_with(h->registry, &config);
    CHECK(h->loop != NULL);
    h->ops_baseline = ops_in_use(h);
    int ends[2];
    h->tcp = (config_byte & 2) != 0;
    if (h->tcp)
        tcp_pair(ends);
    else
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) == 0);
    if (config_byte & 0x40) {
        /* Small socket buffers: short sends, stalls, -ENOBUFS re-arms. */
        int size = 4096;
        CHECK(setsockopt(ends[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)) == 0);
        CHECK(setsockopt(ends[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)) == 0);
    }
    h->flow = plex_create(h->registry, "fuzz");
    CHECK(h->flow != NULL);
    plex_set_user_data(h->flow, h);
    plex_set_end_handler(h->flow, on_end);
    h->read_item = plex_item_create(h->flow, "read", on_read_data, on_read_end, on_cleanup, h);
    h->write_item = plex_item_create(h->flow, "write", on_write, on_write, on_cleanup, h);
    h->close_item = plex_item_create(h->flow, "close", on_close, on_close, on_cleanup, h);
    CHECK(h->read_item && h->write_item && h->close_item);
    h->conn = plex_connection_create_from_fd(h->flow, h->loop, ends[0]);
    CHECK(h->conn != NULL);
    h->conn_seen = h->conn;
    h->peer = ends[1];
    h->write_cap = PLEX_CONNECTION_DEFAULT_WRITE_CAP;
    static unsigned char out[MAX_OUT_BYTES]; /* allocated once: a 4 MiB malloc per run is slow */
    h->out = out;
}

static void harness_stop(Harness *h, bool destroy_loop_now)
{
    if (destroy_loop_now) {
        h->flow_ending = true; /* the loop's destroy ends the flow */
        plex_event_loop_destroy(h->loop);
        h->flow = NULL;
        h->conn = NULL;
        peer_close(h);
    } else {
        finish_gracefully(h);
        plex_event_loop_destroy(h->loop);
    }
    CHECK(plex_registry_count(h->registry) == 0);
    plex_registry_destroy(h->registry);
    CHECK(h->cleanups == 3); /* each item's, once */
    CHECK(h->ends == 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static Harness harness;
    Harness *h = &harness;
    memset(h, 0, sizeof(*h));
    harness_start(h, data[0]);
    for (size_t i = 1; i + 1 < size; i += 2)
        step(h, data[i], data[i + 1]);
    harness_stop(h, (data[0] & 0x80) != 0);
    return 0;
}

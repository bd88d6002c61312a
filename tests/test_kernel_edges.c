/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Kernel edge cases of the loop's io_uring:
 * - a provided-buffer ring of two 64-byte buffers under 64 senders: the
 *   multishot receives end with -ENOBUFS and are re-armed, and every byte
 *   arrives, in order, on the right connection;
 * - a completion queue of 16 entries under bursts of hundreds of
 *   completions (accepts, then receives, then ends of stream): the overflow
 *   is flushed, no completion is lost, the multishot accept ends when the
 *   queue is full and is re-armed, the listener keeps accepting;
 * - cancellation racing completion, thousands of times, on default and on
 *   tiny queues: a handler destroys another flow, aborts, closes or stops
 *   reading its connection (or writes to it and aborts), in the iteration
 *   whose completions carry that flow's data too; every operation ends
 *   once, no handler runs for a dead flow, every cleanup and end once;
 * - a one-entry submission queue: linked pairs (connect and its deadline,
 *   shutdown and close) still fit;
 * - a loop destroyed with data and ends of stream waiting in its queue.
 * The multishot stop and re-arm is seen through the completions themselves:
 * a spy (white box) wraps the completion function of the accept and of the
 * receives and counts completions without IORING_CQE_F_MORE.
 */
#include <sys/resource.h>

#include "adapters/loop.h" /* white box: the completion spies */
#include "net_support.h"

/* ---- Completion spies -------------------------------------------------- */

typedef struct CqeSpy {
    PlexOpComplete original; /* the adapter's completion function */
    unsigned cqes;
    unsigned ended;      /* without IORING_CQE_F_MORE */
    unsigned enobufs;    /* -ENOBUFS: the buffer ring ran dry */
    unsigned data;       /* with bytes (receive) or a socket (accept) */
    unsigned data_ended; /* of those, without IORING_CQE_F_MORE: the kernel stopped */
    unsigned raced;      /* data for a flow that had already ended */
} CqeSpy;

static CqeSpy accept_spy, read_spy;

static void spy_count(CqeSpy *spy, const PlexOp *op, const struct io_uring_cqe *cqe)
{
    spy->cqes++;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        spy->ended++;
    if (cqe->res == -ENOBUFS)
        spy->enobufs++;
    if (cqe->res > 0) {
        spy->data++;
        if (!(cqe->flags & IORING_CQE_F_MORE))
            spy->data_ended++;
        /* The op pins its flow, so the flow may be asked even if it ended. */
        if (op->item && !plex_is_alive(plex_item_plex(op->item)))
            spy->raced++;
    }
}

static void spy_accept(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    spy_count(&accept_spy, op, cqe);
    accept_spy.original(loop, op, cqe);
}

static void spy_read(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    spy_count(&read_spy, op, cqe);
    read_spy.original(loop, op, cqe);
}

/* Wraps the completion function of the op `item` has in flight. A
 * multishot op is re-armed as the same op, so the spy stays. */
static void spy_install(PlexEventLoop *loop, PlexItem *item, CqeSpy *spy, PlexOpComplete wrapper)
{
    for (PlexLink *link = loop->ops_in_use.next; link != &loop->ops_in_use; link = link->next) {
        PlexOp *op = PLEX_CONTAINER_OF(link, PlexOp, link);
        if (op->item != item || op->complete == wrapper)
            continue;
        assert_true(spy->original == NULL || spy->original == op->complete);
        spy->original = op->complete;
        op->complete = wrapper;
        return;
    }
    fail_msg("no operation in flight for item %s", plex_item_description(item));
}

static void spies_reset(void)
{
    accept_spy = (CqeSpy){0};
    read_spy = (CqeSpy){0};
}

/* ---- Fixture ----------------------------------------------------------- */

typedef struct Fixture {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    struct rlimit saved;
} Fixture;

static int setup(void **state)
{
    Fixture *fixture = calloc(1, sizeof(*fixture));
    assert_non_null(fixture);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &fixture->saved), 0);
    struct rlimit raised = fixture->saved;
    raised.rlim_cur = raised.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &raised), 0);
    fixture->registry = plex_registry_create();
    assert_non_null(fixture->registry);
    spies_reset();
    *state = fixture;
    return 0;
}

static int teardown(void **state)
{
    Fixture *fixture = *state;
    plex_event_loop_destroy(fixture->loop);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
    plex_registry_destroy(fixture->registry);
    setrlimit(RLIMIT_NOFILE, &fixture->saved);
    free(fixture);
    return 0;
}

static PlexEventLoop *fixture_loop(Fixture *fixture, const PlexEventLoopConfig *config)
{
    fixture->loop = plex_event_loop_create_with(fixture->registry, config);
    assert_non_null(fixture->loop);
    return fixture->loop;
}

/* How many connections fit in the descriptor limit (two descriptors each). */
static int connections_allowed(int wanted)
{
    struct rlimit limit;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &limit), 0);
    rlim_t room = limit.rlim_cur > 128 ? (limit.rlim_cur - 128) / 2 : 0;
    return room < (rlim_t)wanted ? (int)room : wanted;
}

/* ---- Sessions: one flow per accepted connection ------------------------ */

/* The byte at offset i of sender `index`'s stream; its first 4 bytes are
 * the index itself, so the receiver knows whose stream it holds. */
static unsigned char stream_byte(uint32_t index, size_t i)
{
    if (i < sizeof(index))
        return (unsigned char)(index >> (8 * i));
    return (unsigned char)(net_pattern(i) ^ (index * 31u));
}

typedef struct Server Server;

typedef struct Session {
    Server *server;
    Plex *flow;
    PlexConnection *conn;
    PlexItem *read;
    unsigned char *received;
    size_t length;
    size_t largest_chunk;
    int data_calls;
    int last_calls;
    int last_result;
    int cleanups;
    int ends;
} Session;

struct Server {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    Plex *flow;
    PlexListener *listener;
    PlexItem *accept;
    uint16_t port;
    Session *sessions;
    int capacity;
    int accepted;
    size_t expected; /* bytes each session should receive */
    int ended;       /* sessions whose read made its last call */
};

static void session_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    assert_true(event->flags & PLEX_EVENT_MORE);
    assert_int_equal(session->last_calls, 0);
    assert_true(session->length + event->length <= session->server->expected);
    memcpy(session->received + session->length, event->data, event->length);
    session->length += event->length;
    session->data_calls++;
    if (event->length > session->largest_chunk)
        session->largest_chunk = event->length;
}

static void session_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    assert_false(event->flags & PLEX_EVENT_MORE);
    session->last_calls++;
    session->last_result = event->result;
    session->server->ended++;
}

static void session_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Session *)plex_item_user_data(item))->cleanups++;
}

static void session_end(Plex *plex, int status)
{
    (void)status;
    ((Session *)plex_user_data(plex))->ends++;
}

static void server_accepted(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Server *server = plex_item_user_data(item);
    assert_true(server->accepted < server->capacity);
    Session *session = &server->sessions[server->accepted++];
    *session = (Session){.server = server, .conn = event->connection};
    session->received = malloc(server->expected);
    assert_non_null(session->received);
    session->flow = plex_create(server->registry, "session");
    assert_non_null(session->flow);
    plex_set_user_data(session->flow, session);
    plex_set_end_handler(session->flow, session_end);
    session->read = plex_item_create(session->flow, "read", session_data, session_read_end,
                                     session_cleanup, session);
    assert_non_null(session->read);
    assert_int_equal(plex_connection_attach(event->connection, session->flow), 0);
    assert_int_equal(plex_connection_read(event->connection, session->read), 0);
    spy_install(server->loop, session->read, &read_spy, spy_read);
}

static void server_start(Server *server, PlexRegistry *registry, PlexEventLoop *loop, int capacity,
                         size_t expected)
{
    *server =
        (Server){.registry = registry, .loop = loop, .capacity = capacity, .expected = expected};
    server->sessions = calloc((size_t)capacity, sizeof(Session));
    assert_non_null(server->sessions);
    server->flow = plex_create(registry, "server");
    server->listener = plex_listener_create(server->flow, "127.0.0.1", 0, NULL);
    assert_non_null(server->listener);
    server->port = (uint16_t)plex_listener_port(server->listener);
    server->accept = plex_item_create(server->flow, "accept", server_accepted, NULL, NULL, server);
    assert_int_equal(plex_listener_accept(loop, server->listener, server->accept), 0);
    spy_install(loop, server->accept, &accept_spy, spy_accept);
}

/* Checks that session i received sender `index`'s whole stream, in order,
 * then the end of stream, each exactly once; then ends its flow. */
static void session_check(Session *session, size_t chunk_limit)
{
    assert_int_equal(session->length, session->server->expected);
    uint32_t index = 0;
    memcpy(&index, session->received, sizeof(index)); /* little-endian like stream_byte */
    for (size_t i = 0; i < session->length; i++)
        if (session->received[i] != stream_byte(index, i))
            fail_msg("stream %u: byte %zu is %u, not %u", index, i, session->received[i],
                     stream_byte(index, i));
    assert_true(session->largest_chunk <= chunk_limit);
    assert_int_equal(session->last_calls, 1);
    assert_int_equal(session->last_result, PLEX_EEOF);
    assert_int_equal(plex_destroy(session->flow), 0);
    assert_int_equal(session->cleanups, 1);
    assert_int_equal(session->ends, 1);
    free(session->received);
}

static void server_stop(Server *server)
{
    assert_int_equal(plex_destroy(server->flow), 0);
    free(server->sessions);
}

/* Every stream index seen once: no stream delivered to two sessions. */
static void streams_distinct(const Server *server, int senders)
{
    bool *seen = calloc((size_t)senders, sizeof(bool));
    assert_non_null(seen);
    for (int i = 0; i < server->accepted; i++) {
        uint32_t index;
        memcpy(&index, server->sessions[i].received, sizeof(index));
        assert_true(index < (uint32_t)senders);
        assert_false(seen[index]);
        seen[index] = true;
    }
    free(seen);
}

/* A raw client that sends sender `index`'s stream of `length` bytes and
 * half-closes (when `shut`). */
static int sender_start(uint16_t port, uint32_t index, size_t length, bool shut)
{
    int fd = raw_connect(port);
    unsigned char *bytes = malloc(length);
    assert_non_null(bytes);
    for (size_t i = 0; i < length; i++)
        bytes[i] = stream_byte(index, i);
    assert_int_equal(send(fd, bytes, length, 0), (ssize_t)length);
    free(bytes);
    if (shut)
        assert_int_equal(shutdown(fd, SHUT_WR), 0);
    return fd;
}

/* ---- A tiny buffer ring under many senders ----------------------------- */

#define RING_SENDERS 64
#define RING_STREAM 8192
#define RING_BUFFER 64

static void test_tiny_buffer_ring(void **state)
{
    Fixture *fixture = *state;
    PlexEventLoopConfig config = {.buffer_count = 2, .buffer_size = RING_BUFFER};
    PlexEventLoop *loop = fixture_loop(fixture, &config);
    Server server;
    server_start(&server, fixture->registry, loop, RING_SENDERS, RING_STREAM);
    int fds[RING_SENDERS];
    /* Every stream is in the kernel before the loop reads any of it. */
    for (int i = 0; i < RING_SENDERS; i++)
        fds[i] = sender_start(server.port, (uint32_t)i, RING_STREAM, true);
    NET_RUN_UNTIL(loop, server.ended == RING_SENDERS);
    assert_int_equal(server.accepted, RING_SENDERS);
    streams_distinct(&server, RING_SENDERS);
    for (int i = 0; i < RING_SENDERS; i++) {
        session_check(&server.sessions[i], RING_BUFFER);
        close(fds[i]);
    }
    server_stop(&server);
    /* The receives ran dry and were re-armed, many times over. */
    PlexEventLoopStats stats;
    assert_int_equal(plex_event_loop_stats(loop, &stats), 0);
    print_message("buffer ring: %u receive completions, %u -ENOBUFS, %u ended, %llu iterations\n",
                  read_spy.cqes, read_spy.enobufs, read_spy.ended,
                  (unsigned long long)stats.iterations);
    assert_true(read_spy.enobufs > RING_SENDERS);
    assert_true(read_spy.ended >= read_spy.enobufs + RING_SENDERS); /* and one end of stream each */
    /* Starved reads are parked and at most buffer_count (2) of them are
     * re-armed per iteration: each -ENOBUFS ends one arming, and there are
     * the RING_SENDERS first ones plus at most 2 per iteration (not one per
     * starved connection per iteration). */
    assert_true(read_spy.enobufs <= RING_SENDERS + 2 * stats.iterations);
}

/* ---- A tiny completion queue under bursts ------------------------------ */

#define BURST_WANTED 500
#define BURST_MESSAGE 100

static size_t sessions_received(const Server *server)
{
    size_t received = 0;
    for (int i = 0; i < server->accepted; i++)
        received += server->sessions[i].length;
    return received;
}

/* Runs until `condition`; `most` keeps the most completions one iteration
 * handled. */
#define RUN_COUNTING(loop, condition, most)                                   \
    do {                                                                      \
        uint64_t run_deadline_ = plex_now_ns() + NET_WAIT_NS;                 \
        while (!(condition)) {                                                \
            assert_true(plex_now_ns() < run_deadline_);                       \
            int run_handled_ = plex_event_loop_run_once((loop), 50 * NET_MS); \
            assert_true(run_handled_ >= 0);                                   \
            if (run_handled_ > (most))                                        \
                (most) = run_handled_;                                        \
        }                                                                     \
    } while (0)

static void test_tiny_completion_queue(void **state)
{
    Fixture *fixture = *state;
    int count = connections_allowed(BURST_WANTED);
    assert_true(count >= 100);
    /* 4 submission entries, 16 completion entries; buffers for everyone. */
    PlexEventLoopConfig config = {.queue_depth = 4, .buffer_count = 1024};
    PlexEventLoop *loop = fixture_loop(fixture, &config);
    int most = 0;
    unsigned cq_entries = loop->ring.cq.ring_entries;
    assert_int_equal(cq_entries, 16);
    Server server;
    server_start(&server, fixture->registry, loop, count, BURST_MESSAGE);
    /* Burst 1: every connection is in the backlog before the loop runs. */
    int *fds = malloc((size_t)count * sizeof(int));
    assert_non_null(fds);
    for (int i = 0; i < count; i++)
        fds[i] = raw_connect(server.port);
    RUN_COUNTING(loop, server.accepted == count, most);
    print_message("accepts: %u completions, the multishot accept ended %u times, most in one "
                  "iteration %d\n",
                  accept_spy.cqes, accept_spy.ended, most);
    assert_true(accept_spy.ended >= 1); /* the full queue stopped it; it was re-armed */
    assert_int_equal(accept_spy.data, (unsigned)count);
    /* Burst 2: a message on every connection at once. */
    most = 0;
    unsigned char message[BURST_MESSAGE];
    for (int i = 0; i < count; i++) {
        for (size_t b = 0; b < sizeof(message); b++)
            message[b] = stream_byte((uint32_t)i, b);
        assert_int_equal(send(fds[i], message, sizeof(message), 0), (ssize_t)sizeof(message));
    }
    RUN_COUNTING(loop, sessions_received(&server) == (size_t)count * BURST_MESSAGE, most);
    print_message("receives: most completions in one iteration %d (completion queue %u); %u "
                  "multishot receives stopped with their data\n",
                  most, cq_entries, read_spy.data_ended);
    assert_true(most > (int)cq_entries); /* the overflow was flushed and reaped */
    /* The full queue stopped receives; re-armed, they still see the ends of
     * stream below. */
    assert_true(read_spy.data_ended > 0);
    /* Burst 3: every peer closes at once. */
    most = 0;
    for (int i = 0; i < count; i++)
        close(fds[i]);
    RUN_COUNTING(loop, server.ended == count, most);
    assert_true(most > (int)cq_entries);
    streams_distinct(&server, count);
    for (int i = 0; i < count; i++)
        session_check(&server.sessions[i], BURST_MESSAGE);
    server_stop(&server);
    free(fds);
}

/* ---- A one-entry submission queue ---------------------------------------- */

/* The loop links two SQEs for a connect with a deadline (connect + linked
 * timeout) and for a graceful close (shutdown + close): both still work
 * when the configuration asks for a single submission entry. */
static void test_one_entry_submission_queue(void **state)
{
    Fixture *fixture = *state;
    PlexEventLoopConfig config = {.queue_depth = 1};
    PlexEventLoop *loop = fixture_loop(fixture, &config);
    EchoServer server = {0};
    echo_server_start(&server, fixture->registry, loop, NULL);
    Plex *flow = plex_create(fixture->registry, "client");
    PlexConnection *conn = plex_connection_create(flow, "127.0.0.1", server.port);
    assert_non_null(conn);
    Count connect = {0}, read = {0}, closed = {0};
    assert_int_equal(
        plex_connection_connect(loop, conn, counted_item(flow, "connect", &connect), 5000 * NET_MS),
        0);
    NET_RUN_UNTIL(loop, connect.last_calls == 1);
    assert_int_equal(connect.success, 1);
    assert_int_equal(plex_connection_read(conn, counted_item(flow, "read", &read)), 0);
    assert_int_equal(plex_connection_write(conn, NULL, "hello", 5), 0);
    NET_RUN_UNTIL(loop, read.bytes == 5);
    assert_memory_equal(read.data, "hello", 5);
    assert_int_equal(plex_connection_close(conn, counted_item(flow, "close", &closed)), 0);
    NET_RUN_UNTIL(loop, closed.last_calls == 1 && server.sessions_ended == 1);
    assert_int_equal(closed.result, 0);
    assert_int_equal(read.last_calls, 1);
    assert_int_equal(read.result, -ECANCELED);
    assert_int_equal(server.read_eofs, 1); /* the shutdown reached the server */
    assert_int_equal(plex_destroy(flow), 0);
    assert_int_equal(connect.cleanup + read.cleanup + closed.cleanup, 3);
    echo_server_stop(&server);
}

/* ---- Cancellation racing completion ------------------------------------ */

typedef enum RaceKind {
    RACE_DESTROY_OTHER,      /* the first handler destroys the other flow, then its own */
    RACE_DESTROY_SELF_FIRST, /* ... destroys its own flow, then the other */
    RACE_ABORT_OTHER,        /* ... aborts the other connection, ends its own flow */
    RACE_CLOSE_OTHER,        /* ... closes the other connection gracefully */
    RACE_STOP_OTHER,         /* ... stops the other connection's read */
    RACE_WRITE_ABORT_OTHER,  /* ... writes to the other connection, then aborts it */
    RACE_KINDS
} RaceKind;

#define RACE_WRITE ((size_t)65536)

typedef struct Race Race;

typedef struct Racer {
    Race *race;
    Plex *flow;
    PlexConnection *conn;
    PlexItem *close;
    PlexItem *write;
    size_t bytes;
    int data_calls;
    int last_calls;
    int last_result;
    int close_calls;
    int close_result;
    int write_calls;
    int write_result;
    int cleanups;
    int ends;
} Racer;

struct Race {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    RaceKind kind;
    size_t payload; /* bytes each peer sends */
    unsigned char *big;
    Racer racers[2];
    int accepted;
    Racer *winner;
};

static Racer *racer_other(Racer *racer)
{
    Race *race = racer->race;
    return racer == &race->racers[0] ? &race->racers[1] : &race->racers[0];
}

static void race_act(Race *race, Plex *plex, Racer *other)
{
    switch (race->kind) {
    case RACE_DESTROY_OTHER:
        assert_int_equal(plex_destroy(other->flow), 0);
        assert_int_equal(plex_destroy(plex), 0);
        return;
    case RACE_DESTROY_SELF_FIRST:
        assert_int_equal(plex_destroy(plex), 0);
        assert_int_equal(plex_destroy(other->flow), 0);
        return;
    case RACE_ABORT_OTHER:
        assert_int_equal(plex_connection_abort(other->conn), 0);
        break;
    case RACE_CLOSE_OTHER:
        assert_int_equal(plex_connection_close(other->conn, other->close), 0);
        break;
    case RACE_STOP_OTHER:
        assert_int_equal(plex_connection_read_stop(other->conn), 0);
        break;
    default:
        assert_int_equal(plex_connection_write(other->conn, other->write, race->big, RACE_WRITE),
                         0);
        assert_int_equal(plex_connection_abort(other->conn), 0);
        break;
    }
    assert_int_equal(plex_finish(plex), 0);
}

/* The first data handler of a round wins and acts on the other flow (or its
 * connection) in the same iteration whose completions may carry the other
 * flow's data too. */
static void racer_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Racer *racer = plex_item_user_data(item);
    Race *race = racer->race;
    assert_int_equal(racer->ends, 0); /* never a handler for an ended flow */
    assert_int_equal(racer->last_calls, 0);
    racer->bytes += event->length;
    assert_true(racer->bytes <= race->payload);
    racer->data_calls++;
    if (race->winner)
        return; /* a loser still alive: data already received may come first */
    race->winner = racer;
    race_act(race, plex, racer_other(racer));
}

static void racer_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Racer *racer = plex_item_user_data(item);
    assert_int_equal(racer->ends, 0);
    racer->last_calls++;
    racer->last_result = event->result;
}

static void racer_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Racer *racer = plex_item_user_data(item);
    assert_int_equal(racer->ends, 0);
    racer->close_calls++;
    racer->close_result = event->result;
}

static void racer_written(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Racer *racer = plex_item_user_data(item);
    assert_int_equal(racer->ends, 0);
    racer->write_calls++;
    racer->write_result = event->result;
}

static void racer_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Racer *)plex_item_user_data(item))->cleanups++;
}

static void racer_end(Plex *plex, int status)
{
    (void)status;
    ((Racer *)plex_user_data(plex))->ends++;
}

static void race_accepted(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Race *race = plex_item_user_data(item);
    assert_true(race->accepted < 2);
    Racer *racer = &race->racers[race->accepted++];
    *racer = (Racer){.race = race, .conn = event->connection};
    racer->flow = plex_create(race->registry, "racer");
    assert_non_null(racer->flow);
    plex_set_user_data(racer->flow, racer);
    plex_set_end_handler(racer->flow, racer_end);
    PlexItem *read =
        plex_item_create(racer->flow, "read", racer_data, racer_read_end, racer_cleanup, racer);
    racer->close =
        plex_item_create(racer->flow, "close", racer_closed, racer_closed, racer_cleanup, racer);
    racer->write =
        plex_item_create(racer->flow, "write", racer_written, racer_written, racer_cleanup, racer);
    assert_non_null(racer->write);
    assert_int_equal(plex_connection_attach(event->connection, racer->flow), 0);
    assert_int_equal(plex_connection_set_write_cap(event->connection, 2 * RACE_WRITE), 0);
    assert_int_equal(plex_connection_read(event->connection, read), 0);
    spy_install(race->loop, read, &read_spy, spy_read);
}

static bool race_settled(const Race *race)
{
    if (!race->winner)
        return false;
    const Racer *loser = race->winner == &race->racers[0] ? &race->racers[1] : &race->racers[0];
    if (race->winner->ends != 1)
        return false;
    switch (race->kind) {
    case RACE_DESTROY_OTHER:
    case RACE_DESTROY_SELF_FIRST:
        return loser->ends == 1;
    case RACE_CLOSE_OTHER:
        return loser->last_calls == 1 && loser->close_calls == 1;
    case RACE_WRITE_ABORT_OTHER:
        return loser->last_calls == 1 && loser->write_calls == 1;
    default:
        return loser->last_calls == 1;
    }
}

/* Exactly once for what the loser had started, never after its flow ended. */
static void race_check(Race *race)
{
    Racer *winner = race->winner;
    Racer *loser = racer_other(winner);
    assert_int_equal(winner->data_calls, 1);
    assert_int_equal(winner->last_calls, 0); /* its flow ended inside its handler */
    bool destroyed = race->kind == RACE_DESTROY_OTHER || race->kind == RACE_DESTROY_SELF_FIRST;
    if (destroyed) {
        assert_int_equal(loser->data_calls, 0);
        assert_int_equal(loser->last_calls, 0);
    } else {
        assert_int_equal(loser->last_calls, 1);
        assert_int_equal(loser->last_result, -ECANCELED);
    }
    if (race->kind == RACE_CLOSE_OTHER) {
        assert_int_equal(loser->close_calls, 1);
        assert_int_equal(loser->close_result, 0);
    }
    if (race->kind == RACE_WRITE_ABORT_OTHER) {
        assert_int_equal(loser->write_calls, 1);
        assert_true(loser->write_result == -ECANCELED || loser->write_result == (int)RACE_WRITE);
    }
    if (!destroyed)
        assert_int_equal(plex_destroy(loser->flow), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(race->racers[i].cleanups, 3);
        assert_int_equal(race->racers[i].ends, 1);
    }
}

/* `rounds` rounds over every kind: two fresh connections whose peers both
 * send `payload` bytes, then the first data handler acts on the other. */
static void race_run(Fixture *fixture, const PlexEventLoopConfig *config, size_t payload,
                     int rounds)
{
    PlexEventLoop *loop = fixture_loop(fixture, config);
    Race race = {.registry = fixture->registry, .loop = loop, .payload = payload};
    race.big = calloc(1, RACE_WRITE);
    unsigned char *message = calloc(1, payload);
    assert_non_null(message);
    Plex *server = plex_create(fixture->registry, "race server");
    PlexListener *listener = plex_listener_create(server, "127.0.0.1", 0, NULL);
    assert_non_null(listener);
    PlexItem *accept = plex_item_create(server, "accept", race_accepted, NULL, NULL, &race);
    assert_int_equal(plex_listener_accept(loop, listener, accept), 0);
    uint16_t port = (uint16_t)plex_listener_port(listener);
    int same_batch = 0;
    for (int round = 0; round < rounds; round++) {
        race.kind = (RaceKind)(round % RACE_KINDS);
        race.accepted = 0;
        race.winner = NULL;
        int peers[2] = {raw_connect(port), raw_connect(port)};
        NET_RUN_UNTIL(loop, race.accepted == 2);
        assert_int_equal(send(peers[0], message, payload, 0), (ssize_t)payload);
        assert_int_equal(send(peers[1], message, payload, 0), (ssize_t)payload);
        unsigned raced = read_spy.raced;
        NET_RUN_UNTIL(loop, race_settled(&race));
        same_batch += read_spy.raced > raced;
        race_check(&race);
        close(peers[0]);
        close(peers[1]);
    }
    print_message("%d rounds; in %d, data for a flow already ended was reaped\n", rounds,
                  same_batch);
    /* The race is real: the other flow's data is often already in the queue. */
    assert_true(same_batch >= rounds / 20);
    assert_int_equal(plex_destroy(server), 0);
    free(message);
    free(race.big);
}

static void test_cancel_races_completion(void **state)
{
    race_run(*state, NULL, 1, 3000);
}

/* The same on 16 completion entries and two 64-byte receive buffers, with
 * 200 bytes from each peer: overflow and -ENOBUFS mixed into the race. */
static void test_cancel_races_tiny_queues(void **state)
{
    PlexEventLoopConfig config = {.queue_depth = 4, .buffer_count = 2, .buffer_size = 64};
    race_run(*state, &config, 200, 1500);
}

/* ---- A loop destroyed with completions waiting ------------------------- */

#define DESTROY_ROUNDS 100

static void pending_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)item;
    (void)event;
    fail_msg("a handler ran while its loop was being destroyed");
}

static void pending_accepted(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Count *count = plex_item_user_data(item);
    Plex *flow = plex_create(plex_registry(plex), "pending");
    PlexItem *read =
        plex_item_create(flow, "read", pending_data, pending_data, count_cleanup, count);
    assert_int_equal(plex_connection_attach(event->connection, flow), 0);
    assert_int_equal(plex_connection_read(event->connection, read), 0);
    count->success++;
}

/* Data sits in the completion queue, unreaped, when the loop is destroyed:
 * no handler runs, every cleanup does, nothing leaks (ASan). */
static void test_destroy_with_completions_waiting(void **state)
{
    Fixture *fixture = *state;
    for (int round = 0; round < DESTROY_ROUNDS; round++) {
        PlexEventLoop *loop = plex_event_loop_create(fixture->registry);
        assert_non_null(loop);
        Count count = {0};
        Plex *server = plex_create(fixture->registry, "server");
        PlexListener *listener = plex_listener_create(server, "127.0.0.1", 0, NULL);
        PlexItem *accept = plex_item_create(server, "accept", pending_accepted, NULL, NULL, &count);
        assert_int_equal(plex_listener_accept(loop, listener, accept), 0);
        int peers[4];
        for (int i = 0; i < 4; i++)
            peers[i] = raw_connect((uint16_t)plex_listener_port(listener));
        NET_RUN_UNTIL(loop, count.success == 4);
        for (int i = 0; i < 4; i++)
            assert_int_equal(send(peers[i], "x", 1, 0), 1);
        /* Every other round, ends of stream wait behind the data. */
        for (int i = 0; round % 2 && i < 4; i++)
            assert_int_equal(shutdown(peers[i], SHUT_WR), 0);
        plex_event_loop_destroy(loop);
        assert_int_equal(count.cleanup, 4);
        assert_int_equal(plex_registry_count(fixture->registry), 0);
        for (int i = 0; i < 4; i++)
            close(peers[i]);
    }
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tiny_buffer_ring, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tiny_completion_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_entry_submission_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_races_completion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_races_tiny_queues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_completions_waiting, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

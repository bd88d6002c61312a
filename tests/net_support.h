/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers for the network tests (test_net_*.c). Header-only.
 *
 * - NET_RUN_UNTIL(loop, condition): runs loop iterations until the
 *   condition holds; fails the test after NET_WAIT_NS (no sleeps: it waits
 *   on the ring).
 * - EchoServer: a listener flow on 127.0.0.1:0 whose accept handler gives
 *   each connection a session flow (read -> write back; end of stream ->
 *   graceful close -> finish), counting every handler and cleanup.
 * - EchoClient: a client flow (connect -> write a pattern -> read it back
 *   and check it -> close -> finish), counting the same way.
 * - raw_*: plain blocking sockets for peers the engine must not control.
 */
#ifndef SAMPLEX_TESTS_NET_SUPPORT_H
#define SAMPLEX_TESTS_NET_SUPPORT_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <samplex/samplex.h>

#include "support.h"

#define NET_MS 1000000LL
#define NET_WAIT_NS (20 * 1000 * NET_MS)

#define NET_RUN_UNTIL(loop, condition)                                       \
    do {                                                                     \
        uint64_t net_deadline_ = plex_now_ns() + NET_WAIT_NS;                \
        while (!(condition)) {                                               \
            assert_true(plex_now_ns() < net_deadline_);                      \
            assert_true(plex_event_loop_run_once((loop), 50 * NET_MS) >= 0); \
        }                                                                    \
    } while (0)

/* The byte at stream offset i of every test payload. */
static inline unsigned char net_pattern(size_t i)
{
    return (unsigned char)((i * 7u) ^ (i >> 11));
}

static inline unsigned char *net_payload(size_t length)
{
    unsigned char *bytes = malloc(length);
    assert_non_null(bytes);
    for (size_t i = 0; i < length; i++)
        bytes[i] = net_pattern(i);
    return bytes;
}

/* Operation records in use (the loop keeps one for its own wake-up). */
static inline unsigned net_ops_in_use(PlexEventLoop *loop)
{
    PlexEventLoopStats stats;
    assert_int_equal(plex_event_loop_stats(loop, &stats), 0);
    return stats.operations;
}

/* ---- Echo server ------------------------------------------------------- */

typedef struct EchoServer {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    Plex *flow;
    PlexListener *listener;
    PlexItem *accept;
    uint16_t port;
    size_t write_cap; /* per session; 0: the default */
    int accepted;     /* accept on_success calls */
    int accept_ends;  /* accept last calls */
    int accept_end_result;
    int sessions_ended;   /* session end handlers */
    int session_cleanups; /* session item cleanups */
    int read_eofs;        /* session reads ended by PLEX_EEOF */
    int closes;           /* session close handlers */
} EchoServer;

typedef struct EchoSession {
    EchoServer *server;
    PlexConnection *conn;
    PlexItem *write;
    PlexItem *close;
} EchoSession;

static inline void echo_session_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoSession *session = plex_item_user_data(item);
    assert_true(event->flags & PLEX_EVENT_MORE);
    if (plex_connection_write(session->conn, session->write, event->data, event->length) < 0)
        plex_destroy(plex);
}

static inline void echo_session_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoSession *session = plex_item_user_data(item);
    assert_false(event->flags & PLEX_EVENT_MORE);
    if (event->result == PLEX_EEOF)
        session->server->read_eofs++;
    if (plex_connection_close(session->conn, session->close) < 0)
        plex_destroy(plex);
}

static inline void echo_session_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoSession *session = plex_item_user_data(item);
    (void)event;
    session->server->closes++;
    plex_finish(plex);
}

static inline void echo_session_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    EchoSession *session = plex_item_user_data(item);
    session->server->session_cleanups++;
}

static inline void echo_session_end(Plex *plex, int status)
{
    (void)status;
    EchoServer *server = plex_user_data(plex);
    server->sessions_ended++;
}

static inline void echo_server_accepted(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoServer *server = plex_item_user_data(item);
    (void)plex;
    assert_true(event->flags & PLEX_EVENT_MORE);
    assert_ptr_equal(event->listener, server->listener);
    assert_int_equal(plex_connection_fd(event->connection), event->result);
    server->accepted++;
    Plex *flow = plex_create(server->registry, "session");
    assert_non_null(flow);
    plex_set_user_data(flow, server);
    plex_set_end_handler(flow, echo_session_end);
    EchoSession *session = plex_arena_calloc(plex_arena(flow), sizeof(*session));
    assert_non_null(session);
    *session = (EchoSession){.server = server, .conn = event->connection};
    PlexItem *read = plex_item_create(flow, "read", echo_session_data, echo_session_read_end,
                                      echo_session_cleanup, session);
    session->write = plex_item_create(flow, "write", NULL, NULL, echo_session_cleanup, session);
    session->close = plex_item_create(flow, "close", echo_session_closed, echo_session_closed,
                                      echo_session_cleanup, session);
    assert_int_equal(plex_connection_attach(event->connection, flow), 0);
    if (server->write_cap)
        assert_int_equal(plex_connection_set_write_cap(event->connection, server->write_cap), 0);
    assert_int_equal(plex_connection_read(event->connection, read), 0);
}

static inline void echo_server_accept_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoServer *server = plex_item_user_data(item);
    (void)plex;
    assert_false(event->flags & PLEX_EVENT_MORE);
    server->accept_ends++;
    server->accept_end_result = event->result;
}

static inline void echo_server_start(EchoServer *server, PlexRegistry *registry,
                                     PlexEventLoop *loop, const PlexListenerOptions *options)
{
    server->registry = registry;
    server->loop = loop;
    server->flow = plex_create(registry, "echo server");
    assert_non_null(server->flow);
    server->listener = plex_listener_create(server->flow, "127.0.0.1", 0, options);
    assert_non_null(server->listener);
    server->port = (uint16_t)plex_listener_port(server->listener);
    assert_true(server->port > 0);
    server->accept = plex_item_create(server->flow, "accept", echo_server_accepted,
                                      echo_server_accept_end, NULL, server);
    assert_non_null(server->accept);
    assert_int_equal(plex_listener_accept(loop, server->listener, server->accept), 0);
}

/* Closes the listener and waits for the accept's last call. */
static inline void echo_server_stop(EchoServer *server)
{
    assert_int_equal(plex_listener_close(server->listener), 0);
    NET_RUN_UNTIL(server->loop, server->accept_ends == 1);
    assert_int_equal(server->accept_end_result, -ECANCELED);
    assert_int_equal(plex_destroy(server->flow), 0);
}

/* ---- Echo client ------------------------------------------------------- */

typedef struct EchoClient {
    PlexEventLoop *loop;
    Plex *flow;
    PlexConnection *conn;
    PlexItem *read;
    PlexItem *write;
    PlexItem *close;
    const unsigned char *payload; /* net_payload(length), shared */
    size_t length;
    size_t received;
    int connects;
    int connect_errors;
    int connect_result;
    int writes;
    int write_errors;
    int read_ends;
    int read_end_result;
    int closes;
    int cleanups;
    int ends;
    bool mismatch;
} EchoClient;

static inline void echo_client_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    EchoClient *client = plex_item_user_data(item);
    assert_true(event->flags & PLEX_EVENT_MORE);
    assert_true(client->received + event->length <= client->length);
    if (memcmp(event->data, client->payload + client->received, event->length) != 0)
        client->mismatch = true;
    client->received += event->length;
    if (client->received == client->length)
        assert_int_equal(plex_connection_close(client->conn, client->close), 0);
}

static inline void echo_client_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    EchoClient *client = plex_item_user_data(item);
    client->read_ends++;
    client->read_end_result = event->result;
}

static inline void echo_client_written(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    EchoClient *client = plex_item_user_data(item);
    if (event->result < 0) {
        client->write_errors++;
        return;
    }
    assert_int_equal((size_t)event->result, client->length);
    assert_int_equal(event->length, client->length);
    client->writes++;
}

static inline void echo_client_connected(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoClient *client = plex_item_user_data(item);
    client->connect_result = event->result;
    if (event->result < 0) {
        client->connect_errors++;
        plex_finish(plex);
        return;
    }
    client->connects++;
    assert_int_equal(plex_connection_read(client->conn, client->read), 0);
    assert_int_equal(plex_connection_set_write_cap(client->conn, client->length), 0);
    assert_int_equal(
        plex_connection_write(client->conn, client->write, client->payload, client->length), 0);
}

static inline void echo_client_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    EchoClient *client = plex_item_user_data(item);
    assert_int_equal(event->result, 0);
    client->closes++;
    plex_finish(plex);
}

static inline void echo_client_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((EchoClient *)plex_item_user_data(item))->cleanups++;
}

static inline void echo_client_end(Plex *plex, int status)
{
    (void)status;
    ((EchoClient *)plex_user_data(plex))->ends++;
}

static inline void echo_client_start(EchoClient *client, PlexRegistry *registry,
                                     PlexEventLoop *loop, uint16_t port)
{
    client->loop = loop;
    client->flow = plex_create(registry, "echo client");
    assert_non_null(client->flow);
    plex_set_user_data(client->flow, client);
    plex_set_end_handler(client->flow, echo_client_end);
    client->conn = plex_connection_create(client->flow, "127.0.0.1", port);
    assert_non_null(client->conn);
    PlexItem *connect = plex_item_create(client->flow, "connect", echo_client_connected,
                                         echo_client_connected, echo_client_cleanup, client);
    client->read = plex_item_create(client->flow, "read", echo_client_data, echo_client_read_end,
                                    echo_client_cleanup, client);
    client->write = plex_item_create(client->flow, "write", echo_client_written,
                                     echo_client_written, echo_client_cleanup, client);
    client->close = plex_item_create(client->flow, "close", echo_client_closed, echo_client_closed,
                                     echo_client_cleanup, client);
    assert_non_null(client->close);
    assert_int_equal(plex_connection_connect(loop, client->conn, connect, 0), 0);
}

/* Every handler of a client that echoed its payload ran exactly once. */
static inline void echo_client_check(const EchoClient *client)
{
    assert_int_equal(client->connects, 1);
    assert_int_equal(client->connect_errors, 0);
    assert_int_equal(client->writes, 1);
    assert_int_equal(client->write_errors, 0);
    assert_int_equal(client->received, client->length);
    assert_false(client->mismatch);
    assert_int_equal(client->read_ends, 1);
    assert_int_equal(client->read_end_result, -ECANCELED); /* stopped by our close */
    assert_int_equal(client->closes, 1);
    assert_int_equal(client->cleanups, 4);
    assert_int_equal(client->ends, 1);
}

/* ---- Raw peers --------------------------------------------------------- */

static inline int raw_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    return fd;
}

/* A port nobody listens on (bound, read back, released). */
static inline uint16_t raw_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = {.sin_family = AF_INET};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
    close(fd);
    return ntohs(address.sin_port);
}

/* Reads exactly `length` bytes from a raw socket while running the loop
 * (the engine side may need iterations to send them). Returns what was
 * read before end of stream. */
static inline size_t raw_read_running(PlexEventLoop *loop, int fd, void *buffer, size_t length)
{
    size_t got = 0;
    uint64_t deadline = plex_now_ns() + NET_WAIT_NS;
    while (got < length) {
        assert_true(plex_now_ns() < deadline);
        ssize_t n = recv(fd, (char *)buffer + got, length - got, MSG_DONTWAIT);
        if (n == 0)
            break;
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        assert_true(plex_event_loop_run_once(loop, 10 * NET_MS) >= 0);
    }
    return got;
}

/* Reads and drops what the peer receives until the engine's side is closed
 * (end of stream or reset), running the loop meanwhile. */
static inline void raw_drain_until_closed(PlexEventLoop *loop, int fd)
{
    static char sink[65536];
    uint64_t deadline = plex_now_ns() + NET_WAIT_NS;
    for (;;) {
        assert_true(plex_now_ns() < deadline);
        ssize_t n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return;
        if (n < 0)
            assert_true(plex_event_loop_run_once(loop, 10 * NET_MS) >= 0);
    }
}

/* ---- Counting items ---------------------------------------------------- */

/* What happened to one item: every call counted, the last result kept, the
 * bytes of read events collected (up to sizeof data). */
typedef struct Count {
    int success;
    int error;
    int last_calls; /* calls without PLEX_EVENT_MORE */
    int cleanup;
    int result;
    size_t bytes;
    char data[64];
} Count;

static inline void count_event(PlexItem *item, const PlexEvent *event, bool success)
{
    Count *count = plex_item_user_data(item);
    if (success)
        count->success++;
    else
        count->error++;
    if (!(event->flags & PLEX_EVENT_MORE))
        count->last_calls++;
    count->result = event->result;
    if (event->data && count->bytes < sizeof(count->data) - 1) {
        size_t room = sizeof(count->data) - 1 - count->bytes;
        memcpy(count->data + count->bytes, event->data,
               event->length < room ? event->length : room);
    }
    count->bytes += event->length;
}

static inline void count_success(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    count_event(item, event, true);
}

static inline void count_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    count_event(item, event, false);
}

static inline void count_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Count *)plex_item_user_data(item))->cleanup++;
}

static inline PlexItem *counted_item(Plex *plex, const char *name, Count *count)
{
    PlexItem *item = plex_item_create(plex, name, count_success, count_error, count_cleanup, count);
    assert_non_null(item);
    return item;
}

/* ---- An engine connection with a raw peer ------------------------------ */

/* `conn` (accepted on the loop, owned by `flow`) and `peer` (a raw blocking
 * socket) are the two ends of one TCP connection. */
typedef struct Pair {
    Plex *flow;
    PlexConnection *conn;
    int peer;
} Pair;

static inline void pair_accepted(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Pair *pair = plex_item_user_data(item);
    assert_int_equal(plex_connection_attach(event->connection, pair->flow), 0);
    assert_ptr_equal(plex_connection_plex(event->connection), pair->flow);
    pair->conn = event->connection;
}

static inline void pair_open(Pair *pair, PlexRegistry *registry, PlexEventLoop *loop)
{
    pair->flow = plex_create(registry, "pair");
    assert_non_null(pair->flow);
    pair->conn = NULL;
    Plex *listening = plex_create(registry, "pair listener");
    PlexListener *listener = plex_listener_create(listening, "127.0.0.1", 0, NULL);
    assert_non_null(listener);
    PlexItem *accept = plex_item_create(listening, "accept", pair_accepted, NULL, NULL, pair);
    assert_int_equal(plex_listener_accept(loop, listener, accept), 0);
    pair->peer = raw_connect((uint16_t)plex_listener_port(listener));
    NET_RUN_UNTIL(loop, pair->conn != NULL);
    assert_int_equal(plex_destroy(listening), 0);
}

/* Runs the loop until output stops draining: the peer is not reading and
 * the socket buffers are full. */
static inline void run_until_stalled(PlexEventLoop *loop, PlexConnection *conn)
{
    size_t before;
    do {
        before = plex_connection_bytes_queued(conn);
        assert_true(before > 0);
        assert_true(plex_event_loop_run_once(loop, 30 * NET_MS) >= 0);
        assert_true(plex_event_loop_run_once(loop, 30 * NET_MS) >= 0);
    } while (plex_connection_bytes_queued(conn) != before);
}

/* ---- The common fixture -------------------------------------------------- */

/* A registry and a loop per test; teardown waits until every op the test
 * started has come back (a test that destroyed the loop sets it NULL),
 * then checks that no flow is left. */
typedef struct NetFixture {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    unsigned ops_before;
} NetFixture;

static inline int net_fixture_setup(void **state)
{
    NetFixture *fixture = calloc(1, sizeof(*fixture));
    assert_non_null(fixture);
    fixture->registry = plex_registry_create();
    assert_non_null(fixture->registry);
    fixture->loop = plex_event_loop_create(fixture->registry);
    assert_non_null(fixture->loop);
    fixture->ops_before = net_ops_in_use(fixture->loop);
    *state = fixture;
    return 0;
}

static inline int net_fixture_teardown(void **state)
{
    NetFixture *fixture = *state;
    if (fixture->loop) {
        NET_RUN_UNTIL(fixture->loop, net_ops_in_use(fixture->loop) == fixture->ops_before);
        plex_event_loop_destroy(fixture->loop);
    }
    assert_int_equal(plex_registry_count(fixture->registry), 0);
    plex_registry_destroy(fixture->registry);
    free(fixture);
    return 0;
}

/* A cmocka test run with the common fixture. */
#define NET_TEST(test) \
    cmocka_unit_test_setup_teardown(test, net_fixture_setup, net_fixture_teardown)

#endif /* SAMPLEX_TESTS_NET_SUPPORT_H */

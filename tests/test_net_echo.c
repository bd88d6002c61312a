/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Round trips through an engine echo server and engine clients: 1 B, 1 KiB,
 * 16 MiB (content checked byte for byte), 1,000 concurrent clients, IPv6
 * and a resolved name, TCP_NODELAY, writes coalesced into one send, a
 * receive buffer ring too small for its connections (-ENOBUFS); every
 * handler and cleanup counted exactly once; the loop and registry end clean.
 */
#include <sys/resource.h>

#include "net_support.h"

typedef struct Fixture {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    EchoServer server;
} Fixture;

static int setup(void **state)
{
    Fixture *fixture = calloc(1, sizeof(*fixture));
    fixture->registry = plex_registry_create();
    assert_non_null(fixture->registry);
    fixture->loop = plex_event_loop_create(fixture->registry);
    assert_non_null(fixture->loop);
    *state = fixture;
    return 0;
}

static int teardown(void **state)
{
    Fixture *fixture = *state;
    plex_event_loop_destroy(fixture->loop);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
    plex_registry_destroy(fixture->registry);
    free(fixture);
    return 0;
}

static int clients_ended(const EchoClient *client, int clients)
{
    int ended = 0;
    for (int i = 0; i < clients; i++)
        ended += client[i].ends;
    return ended;
}

/* Echoes `clients` payloads of `length` bytes at once, then stops the
 * server; checks every count. */
static void round_trip(Fixture *fixture, size_t length, int clients)
{
    unsigned ops_before = net_ops_in_use(fixture->loop);
    fixture->server.write_cap = length > PLEX_CONNECTION_DEFAULT_WRITE_CAP ? 2 * length : 0;
    echo_server_start(&fixture->server, fixture->registry, fixture->loop, NULL);
    unsigned char *payload = net_payload(length);
    EchoClient *client = calloc((size_t)clients, sizeof(*client));
    for (int i = 0; i < clients; i++) {
        client[i].payload = payload;
        client[i].length = length;
        echo_client_start(&client[i], fixture->registry, fixture->loop, fixture->server.port);
    }
    NET_RUN_UNTIL(fixture->loop, fixture->server.sessions_ended == clients);
    NET_RUN_UNTIL(fixture->loop, clients_ended(client, clients) == clients);
    for (int i = 0; i < clients; i++)
        echo_client_check(&client[i]);
    EchoServer *server = &fixture->server;
    assert_int_equal(server->accepted, clients);
    assert_int_equal(server->read_eofs, clients);
    assert_int_equal(server->closes, clients);
    assert_int_equal(server->session_cleanups, 3 * clients);
    echo_server_stop(server);
    assert_int_equal(net_ops_in_use(fixture->loop), ops_before);
    free(client);
    free(payload);
}

static void test_one_byte(void **state)
{
    round_trip(*state, 1, 1);
}

static void test_one_kibibyte(void **state)
{
    round_trip(*state, 1024, 1);
}

static void test_sixteen_mebibytes(void **state)
{
    round_trip(*state, 16u << 20, 1);
}

static void raise_descriptor_limit(rlim_t wanted)
{
    struct rlimit limit;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &limit), 0);
    if (limit.rlim_cur >= wanted)
        return;
    if (limit.rlim_max < wanted) {
        print_message("skipping: RLIMIT_NOFILE hard limit %lu < %lu\n",
                      (unsigned long)limit.rlim_max, (unsigned long)wanted);
        skip();
    }
    limit.rlim_cur = wanted;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &limit), 0);
}

static void test_thousand_clients(void **state)
{
    raise_descriptor_limit(2200); /* both ends of 1,000 connections */
    round_trip(*state, 64, 1000);
}

/* An IPv6 literal listener and a client resolving "localhost". */
static void test_ipv6_and_names(void **state)
{
    Fixture *fixture = *state;
    Plex *flow = plex_create(fixture->registry, "v6");
    PlexListener *listener = plex_listener_create(flow, "::1", 0, NULL);
    if (!listener) {
        plex_destroy(flow);
        skip(); /* no IPv6 loopback here */
    }
    struct sockaddr_storage address;
    socklen_t length = sizeof(address);
    assert_int_equal(getsockname(plex_listener_fd(listener), (struct sockaddr *)&address, &length),
                     0);
    assert_int_equal(address.ss_family, AF_INET6);
    assert_int_equal(plex_destroy(flow), 0);

    echo_server_start(&fixture->server, fixture->registry, fixture->loop, NULL);
    Plex *client_flow = plex_create(fixture->registry, "named");
    PlexConnection *conn = plex_connection_create(client_flow, "localhost", fixture->server.port);
    assert_non_null(conn);
    assert_int_equal(plex_connection_peer_address(conn, &address, &length), 0);
    assert_true(address.ss_family == AF_INET || address.ss_family == AF_INET6);
    assert_int_equal(plex_destroy(client_flow), 0);
    errno = 0;
    assert_null(plex_connection_create(fixture->server.flow, "no-such-host.invalid", 80));
    assert_int_equal(errno, EHOSTUNREACH);
    echo_server_stop(&fixture->server);
}

/* TCP_NODELAY on client sockets and (inherited) on accepted ones. */
static void nodelay_accepted(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    int *accepted_nodelay = plex_item_user_data(item);
    int value = 0;
    socklen_t length = sizeof(value);
    assert_int_equal(getsockopt(plex_connection_fd(event->connection), IPPROTO_TCP, TCP_NODELAY,
                                &value, &length),
                     0);
    *accepted_nodelay = value;
    plex_finish(plex); /* ends the accept too; the connection is left unattached */
}

static void test_nodelay(void **state)
{
    Fixture *fixture = *state;
    Plex *flow = plex_create(fixture->registry, "nodelay");
    PlexListener *listener = plex_listener_create(flow, "127.0.0.1", 0, NULL);
    int accepted_nodelay = -1;
    PlexItem *accept =
        plex_item_create(flow, "accept", nodelay_accepted, NULL, NULL, &accepted_nodelay);
    assert_int_equal(plex_listener_accept(fixture->loop, listener, accept), 0);
    Plex *client_flow = plex_create(fixture->registry, "client");
    PlexConnection *conn =
        plex_connection_create(client_flow, "127.0.0.1", (uint16_t)plex_listener_port(listener));
    int value = 0;
    socklen_t length = sizeof(value);
    assert_int_equal(
        getsockopt(plex_connection_fd(conn), IPPROTO_TCP, TCP_NODELAY, &value, &length), 0);
    assert_true(value != 0);
    int peer = raw_connect((uint16_t)plex_listener_port(listener));
    NET_RUN_UNTIL(fixture->loop, accepted_nodelay != -1);
    assert_true(accepted_nodelay != 0);
    /* The unattached accepted connection was closed by the adapter. */
    char byte;
    NET_RUN_UNTIL(fixture->loop, recv(peer, &byte, 1, MSG_DONTWAIT) == 0);
    close(peer);
    assert_int_equal(plex_destroy(client_flow), 0);
    NET_RUN_UNTIL(fixture->loop, net_ops_in_use(fixture->loop) == 1);
}

/* Writes made in one iteration leave in one send, in order; each write's
 * handler fires once, in order. The writes are 3, 2 and 1 bytes long, so
 * the length tells which one a call is for. */
typedef struct WriteOrder {
    int calls;
    int seen[3]; /* the call number each write got */
} WriteOrder;

static void record_order(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    WriteOrder *order = plex_item_user_data(item);
    order->seen[3 - event->length] = ++order->calls;
}

static void test_writes_coalesce(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    WriteOrder order = {0};
    PlexItem *item = plex_item_create(pair.flow, "write", record_order, NULL, NULL, &order);
    /* Let the listener's teardown (a cancel) go first. */
    NET_RUN_UNTIL(fixture->loop, net_ops_in_use(fixture->loop) == 1);
    PlexEventLoopStats before, after;
    assert_int_equal(plex_event_loop_stats(fixture->loop, &before), 0);
    assert_int_equal(plex_connection_write(pair.conn, item, "abc", 3), 0);
    assert_int_equal(plex_connection_write(pair.conn, item, "de", 2), 0);
    assert_int_equal(plex_connection_write(pair.conn, item, "f", 1), 0);
    assert_int_equal(plex_connection_bytes_queued(pair.conn), 6);
    assert_true(plex_event_loop_run_once(fixture->loop, 0) >= 0);
    assert_int_equal(plex_event_loop_stats(fixture->loop, &after), 0);
    assert_int_equal(after.submissions - before.submissions, 1); /* one send, three writes */
    char buffer[8] = {0};
    assert_int_equal(raw_read_running(fixture->loop, pair.peer, buffer, 6), 6);
    assert_string_equal(buffer, "abcdef");
    NET_RUN_UNTIL(fixture->loop, order.calls == 3);
    assert_int_equal(order.seen[0], 1);
    assert_int_equal(order.seen[1], 2);
    assert_int_equal(order.seen[2], 3);
    assert_int_equal(plex_connection_bytes_queued(pair.conn), 0);
    close(pair.peer);
    assert_int_equal(plex_destroy(pair.flow), 0);
}

/* Eight peers sending at once through a ring of two 64-byte receive
 * buffers: the kernel runs out (-ENOBUFS ends the multishot receives) and
 * the reads are re-armed once buffers are back; every byte arrives, in
 * order, with no spin. */
typedef struct Collector {
    unsigned char received[4096];
    size_t length;
    int last_calls;
} Collector;

static void collect(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Collector *collector = plex_item_user_data(item);
    assert_true(event->length <= 64);
    assert_true(collector->length + event->length <= sizeof(collector->received));
    memcpy(collector->received + collector->length, event->data, event->length);
    collector->length += event->length;
}

static void collect_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Collector *collector = plex_item_user_data(item);
    assert_int_equal(event->result, PLEX_EEOF);
    collector->last_calls++;
}

static void test_few_receive_buffers(void **state)
{
    Fixture *fixture = *state;
    PlexEventLoopConfig config = {.buffer_count = 2, .buffer_size = 64};
    PlexEventLoop *loop = plex_event_loop_create_with(fixture->registry, &config);
    assert_non_null(loop);
    enum { PEERS = 8 };
    Pair pair[PEERS];
    Collector collector[PEERS];
    unsigned char *payload = net_payload(sizeof(collector[0].received));
    for (int i = 0; i < PEERS; i++) {
        pair_open(&pair[i], fixture->registry, loop);
        collector[i] = (Collector){0};
        PlexItem *item =
            plex_item_create(pair[i].flow, "read", collect, collect_end, NULL, &collector[i]);
        assert_int_equal(plex_connection_read(pair[i].conn, item), 0);
    }
    for (int i = 0; i < PEERS; i++) {
        size_t length = sizeof(collector[i].received);
        assert_int_equal(send(pair[i].peer, payload, length, 0), (ssize_t)length);
        close(pair[i].peer);
    }
    for (int i = 0; i < PEERS; i++) {
        NET_RUN_UNTIL(loop, collector[i].last_calls == 1);
        assert_int_equal(collector[i].length, sizeof(collector[i].received));
        assert_memory_equal(collector[i].received, payload, collector[i].length);
        assert_int_equal(plex_destroy(pair[i].flow), 0);
    }
    free(payload);
    plex_event_loop_destroy(loop);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_kibibyte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sixteen_mebibytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousand_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6_and_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nodelay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writes_coalesce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_few_receive_buffers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

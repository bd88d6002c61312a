/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Life cycle of listeners and connections: a flow destroyed with reads and
 * writes in flight (from outside and from its own handler) runs no handler
 * afterwards and every cleanup once; abort ends each operation once with
 * -ECANCELED; a read stops and starts again; destroying the loop with
 * everything in flight; listener close; connections moved between flows;
 * and a bad-argument check for every public function.
 */
#include "net_support.h"

typedef NetFixture Fixture;

/* A connection with a read and three large writes in the kernel (the peer
 * does not read, so the first send stalls). */
typedef struct Busy {
    Pair pair;
    Count read, write[3], end;
} Busy;

static void busy_end(Plex *plex, int status)
{
    Busy *busy = plex_user_data(plex);
    busy->end.error++;
    busy->end.result = status;
}

static void busy_open(Busy *busy, Fixture *fixture)
{
    memset(busy, 0, sizeof(*busy));
    pair_open(&busy->pair, fixture->registry, fixture->loop);
    plex_set_user_data(busy->pair.flow, busy);
    plex_set_end_handler(busy->pair.flow, busy_end);
    size_t length = 4u << 20;
    unsigned char *payload = net_payload(length);
    assert_int_equal(plex_connection_set_write_cap(busy->pair.conn, 3 * length), 0);
    assert_int_equal(
        plex_connection_read(busy->pair.conn, counted_item(busy->pair.flow, "read", &busy->read)),
        0);
    for (int i = 0; i < 3; i++) {
        PlexItem *item = counted_item(busy->pair.flow, "write", &busy->write[i]);
        assert_int_equal(plex_connection_write(busy->pair.conn, item, payload, length), 0);
    }
    free(payload);
    run_until_stalled(fixture->loop, busy->pair.conn);
}

static int busy_calls(const Busy *busy)
{
    int calls = busy->read.success + busy->read.error;
    for (int i = 0; i < 3; i++)
        calls += busy->write[i].success + busy->write[i].error;
    return calls;
}

static void busy_check_cleanups(const Busy *busy)
{
    assert_int_equal(busy->read.cleanup, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(busy->write[i].cleanup, 1);
    assert_int_equal(busy->end.error, 1);
}

static void test_flow_destroyed_in_flight(void **state)
{
    Fixture *fixture = *state;
    Busy busy;
    busy_open(&busy, fixture);
    int calls = busy_calls(&busy);
    assert_int_equal(plex_destroy(busy.pair.flow), 0);
    busy_check_cleanups(&busy);
    /* The kernel gives everything back; no handler runs. */
    NET_RUN_UNTIL(fixture->loop, net_ops_in_use(fixture->loop) == fixture->ops_before);
    assert_int_equal(busy_calls(&busy), calls);
    busy_check_cleanups(&busy);
    raw_drain_until_closed(fixture->loop, busy.pair.peer);
    close(busy.pair.peer);
}

/* The read handler writes, then destroys its own flow. */
static void destroy_from_handler(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Count *count = plex_item_user_data(item);
    count->success++;
    assert_int_equal(plex_connection_write(event->connection, NULL, "x", 1), 0);
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(plex_destroy(plex), -EALREADY);
}

static void test_flow_destroyed_from_handler(void **state)
{
    Fixture *fixture = *state;
    Busy busy;
    busy_open(&busy, fixture);
    Count own = {0};
    Pair *pair = &busy.pair;
    PlexItem *item = plex_item_create(pair->flow, "self", destroy_from_handler, count_error,
                                      count_cleanup, &own);
    /* One read per connection: stop the counted one first. */
    assert_int_equal(plex_connection_read_stop(pair->conn), 0);
    NET_RUN_UNTIL(fixture->loop, busy.read.last_calls == 1);
    assert_int_equal(busy.read.result, -ECANCELED);
    assert_int_equal(plex_connection_read(pair->conn, item), 0);
    int calls = busy_calls(&busy);
    assert_int_equal(send(pair->peer, "go", 2, 0), 2);
    NET_RUN_UNTIL(fixture->loop, own.cleanup == 1);
    NET_RUN_UNTIL(fixture->loop, net_ops_in_use(fixture->loop) == fixture->ops_before);
    assert_int_equal(own.success, 1);
    assert_int_equal(own.error, 0);
    assert_int_equal(busy_calls(&busy), calls);
    busy_check_cleanups(&busy);
    close(pair->peer);
}

static void test_abort(void **state)
{
    Fixture *fixture = *state;
    Busy busy;
    busy_open(&busy, fixture);
    /* The kernel may have taken the whole first write before stalling. */
    int sent_before[3];
    for (int i = 0; i < 3; i++)
        sent_before[i] = busy.write[i].success;
    assert_int_equal(sent_before[2], 0);
    assert_int_equal(plex_connection_abort(busy.pair.conn), 0);
    assert_int_equal(plex_connection_abort(busy.pair.conn), -EALREADY);
    NET_RUN_UNTIL(fixture->loop, plex_connection_fd(busy.pair.conn) == -EBADF);
    NET_RUN_UNTIL(fixture->loop, busy_calls(&busy) == 4);
    assert_int_equal(busy.read.error, 1);
    assert_int_equal(busy.read.result, -ECANCELED);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(busy.write[i].last_calls, 1);
        if (sent_before[i])
            continue;
        assert_int_equal(busy.write[i].error, 1);
        assert_int_equal(busy.write[i].result, -ECANCELED);
    }
    assert_int_equal(plex_connection_bytes_queued(busy.pair.conn), 0);
    assert_int_equal(plex_connection_write(busy.pair.conn, NULL, "x", 1), -ENOTCONN);
    assert_int_equal(plex_destroy(busy.pair.flow), 0);
    busy_check_cleanups(&busy);
    assert_int_equal(busy_calls(&busy), 4);
    close(busy.pair.peer);
}

/* Destroying the loop with everything in flight: no handler, every cleanup. */
static void test_loop_destroyed_in_flight(void **state)
{
    Fixture *fixture = *state;
    Busy busy;
    busy_open(&busy, fixture);
    int calls = busy_calls(&busy);
    plex_event_loop_destroy(fixture->loop);
    fixture->loop = NULL;
    assert_int_equal(busy_calls(&busy), calls);
    busy_check_cleanups(&busy);
    close(busy.pair.peer);
}

static void test_read_stop_and_restart(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    Count first = {0}, second = {0};
    PlexItem *first_item = counted_item(pair.flow, "first", &first);
    PlexItem *second_item = counted_item(pair.flow, "second", &second);
    assert_int_equal(plex_connection_read_stop(pair.conn), -ENOENT);
    assert_int_equal(plex_connection_read(pair.conn, first_item), 0);
    assert_int_equal(plex_connection_read(pair.conn, second_item), -EALREADY);
    assert_int_equal(send(pair.peer, "a", 1, 0), 1);
    NET_RUN_UNTIL(fixture->loop, first.success == 1);
    assert_int_equal(plex_connection_read_stop(pair.conn), 0);
    assert_int_equal(plex_connection_read_stop(pair.conn), -EALREADY);
    assert_int_equal(plex_connection_read(pair.conn, second_item), -EALREADY);
    NET_RUN_UNTIL(fixture->loop, first.last_calls == 1);
    assert_int_equal(first.error, 1);
    assert_int_equal(first.result, -ECANCELED);
    /* Nothing is lost across the stop: bytes sent now wait in the socket. */
    assert_int_equal(send(pair.peer, "b", 1, 0), 1);
    assert_int_equal(plex_connection_read(pair.conn, second_item), 0);
    NET_RUN_UNTIL(fixture->loop, second.success == 1);
    assert_string_equal(first.data, "a");
    assert_string_equal(second.data, "b");
    close(pair.peer);
    NET_RUN_UNTIL(fixture->loop, second.last_calls == 1);
    assert_int_equal(second.result, PLEX_EEOF);
    assert_int_equal(plex_destroy(pair.flow), 0);
    assert_int_equal(first.cleanup + second.cleanup, 2);
    assert_int_equal(first.success + first.error, 2);
}

/* Closing a listener ends its accept once with -ECANCELED and frees the
 * port at once when nothing was in flight. */
static void test_listener_close(void **state)
{
    Fixture *fixture = *state;
    Plex *flow = plex_create(fixture->registry, "listener");
    PlexListener *listener = plex_listener_create(flow, "127.0.0.1", 0, NULL);
    Count accept = {0};
    PlexItem *item = counted_item(flow, "accept", &accept);
    assert_int_equal(plex_listener_accept(fixture->loop, listener, item), 0);
    assert_int_equal(plex_listener_accept(fixture->loop, listener, item), -EALREADY);
    assert_true(plex_listener_fd(listener) >= 0);
    assert_int_equal(plex_listener_close(listener), 0);
    assert_int_equal(plex_listener_close(listener), -EALREADY);
    assert_int_equal(plex_listener_accept(fixture->loop, listener, item), -EBADF);
    NET_RUN_UNTIL(fixture->loop, accept.last_calls == 1);
    assert_int_equal(accept.error, 1);
    assert_int_equal(accept.result, -ECANCELED);
    assert_int_equal(plex_listener_fd(listener), -EBADF);
    assert_int_equal(plex_listener_destroy(listener), 0);
    /* A listener never accepting closes at once; its flow's end frees it. */
    PlexListener *idle = plex_listener_create(flow, "127.0.0.1", 0, NULL);
    assert_non_null(idle);
    assert_int_equal(plex_destroy(flow), 0);
    assert_int_equal(accept.cleanup, 1);
    assert_int_equal(accept.success + accept.error, 1);
}

static int dead_results;

static void try_to_own_when_dead(Plex *plex, int status)
{
    (void)status;
    errno = 0;
    dead_results += plex_connection_create(plex, "127.0.0.1", 1) == NULL && errno == ESTALE;
    errno = 0;
    dead_results += plex_listener_create(plex, "127.0.0.1", 0, NULL) == NULL && errno == ESTALE;
    Plex *alive = plex_create(plex_registry(plex), "alive");
    PlexConnection *conn = plex_connection_create(alive, "127.0.0.1", 1);
    dead_results += plex_connection_attach(conn, plex) == -ESTALE;
    plex_destroy(alive);
}

/* An accepted connection moves between flows; the last owner's end frees it. */
static void test_attach_moves(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    Plex *other = plex_create(fixture->registry, "other");
    assert_int_equal(plex_connection_attach(pair.conn, other), 0);
    assert_int_equal(plex_connection_attach(pair.conn, other), 0);
    assert_ptr_equal(plex_connection_plex(pair.conn), other);
    assert_ptr_equal(plex_connection_loop(pair.conn), fixture->loop);
    assert_int_equal(plex_destroy(pair.flow), 0); /* no longer the owner */
    assert_true(plex_connection_fd(pair.conn) >= 0);
    int marker = 7;
    plex_connection_set_user_data(pair.conn, &marker);
    assert_ptr_equal(plex_connection_user_data(pair.conn), &marker);
    struct sockaddr_storage address;
    socklen_t length;
    assert_int_equal(plex_connection_peer_address(pair.conn, &address, &length), 0);
    assert_int_equal(address.ss_family, AF_INET);
    assert_int_equal(plex_destroy(other), 0);
    raw_drain_until_closed(fixture->loop, pair.peer);
    close(pair.peer);
    /* An ended flow (still in memory during its end handler) owns nothing. */
    Plex *dead = plex_create(fixture->registry, "dead");
    plex_set_end_handler(dead, try_to_own_when_dead);
    assert_int_equal(plex_destroy(dead), 0);
    assert_int_equal(dead_results, 3);
}

/* A flow bound to another loop cannot own a connection of this one. */
static void test_cross_loop(void **state)
{
    Fixture *fixture = *state;
    PlexEventLoop *other_loop = plex_event_loop_create(fixture->registry);
    assert_non_null(other_loop);
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    Plex *elsewhere = plex_create(fixture->registry, "elsewhere");
    PlexConnection *client = plex_connection_create(elsewhere, "127.0.0.1", raw_free_port());
    Count connect = {0};
    assert_int_equal(
        plex_connection_connect(other_loop, client, counted_item(elsewhere, "c", &connect), 0), 0);
    assert_int_equal(plex_connection_attach(pair.conn, elsewhere), -EXDEV);
    assert_int_equal(plex_connection_read(pair.conn, counted_item(elsewhere, "r", &connect)),
                     -EXDEV);
    plex_event_loop_destroy(other_loop); /* ends `elsewhere` */
    assert_int_equal(connect.success + connect.error, 0);
    assert_int_equal(connect.cleanup, 2);
    close(pair.peer);
    assert_int_equal(plex_destroy(pair.flow), 0);
}

static void test_bad_arguments(void **state)
{
    Fixture *fixture = *state;
    PlexEventLoop *loop = fixture->loop;
    Plex *flow = plex_create(fixture->registry, "bad");
    Count count = {0};
    PlexItem *item = counted_item(flow, "item", &count);
    PlexListenerOptions bad_backlog = {.backlog = -1};
    struct sockaddr_storage address;
    socklen_t length = sizeof(address);

    errno = 0;
    assert_null(plex_listener_create(NULL, "127.0.0.1", 0, NULL));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_listener_create(flow, "127.0.0.1", 0, &bad_backlog));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_listener_create(flow, "not an address.invalid", 0, NULL));
    PlexListener *listener = plex_listener_create(flow, "127.0.0.1", 0, NULL);
    assert_null(
        plex_listener_create(flow, "127.0.0.1", (uint16_t)plex_listener_port(listener), NULL));
    assert_int_equal(errno, EADDRINUSE);
    assert_int_equal(plex_listener_accept(NULL, listener, item), -EINVAL);
    assert_int_equal(plex_listener_accept(loop, NULL, item), -EINVAL);
    assert_int_equal(plex_listener_accept(loop, listener, NULL), -EINVAL);
    assert_int_equal(plex_listener_port(NULL), -EINVAL);
    assert_int_equal(plex_listener_fd(NULL), -EINVAL);
    assert_int_equal(plex_listener_close(NULL), -EINVAL);
    assert_int_equal(plex_listener_destroy(NULL), -EINVAL);

    assert_null(plex_connection_create(NULL, "127.0.0.1", 1));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_connection_create(flow, NULL, 1));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_connection_create(flow, "127.0.0.1", 0));
    assert_int_equal(errno, EINVAL);
    PlexConnection *conn = plex_connection_create(flow, "127.0.0.1", 1);
    assert_non_null(conn);
    assert_int_equal(plex_connection_destroy(NULL), -EINVAL);
    assert_int_equal(plex_connection_attach(NULL, flow), -EINVAL);
    assert_int_equal(plex_connection_attach(conn, NULL), -EINVAL);
    assert_int_equal(plex_connection_connect(NULL, conn, item, 0), -EINVAL);
    assert_int_equal(plex_connection_connect(loop, NULL, item, 0), -EINVAL);
    assert_int_equal(plex_connection_connect(loop, conn, NULL, 0), -EINVAL);
    assert_int_equal(plex_connection_connect(loop, conn, item, -1), -EINVAL);
    assert_int_equal(plex_connection_read(NULL, item), -EINVAL);
    assert_int_equal(plex_connection_read(conn, NULL), -EINVAL);
    assert_int_equal(plex_connection_read_stop(NULL), -EINVAL);
    assert_int_equal(plex_connection_write(NULL, item, "x", 1), -EINVAL);
    assert_int_equal(plex_connection_write(conn, item, NULL, 1), -EINVAL);
    assert_int_equal(plex_connection_write(conn, item, "x", 0), -EINVAL);
    assert_int_equal(plex_connection_close(NULL, item), -EINVAL);
    assert_int_equal(plex_connection_abort(NULL), -EINVAL);
    assert_int_equal(plex_connection_set_write_cap(NULL, 1), -EINVAL);
    assert_int_equal(plex_connection_set_write_cap(conn, 0), -EINVAL);
    assert_int_equal(plex_connection_set_write_cap(conn, PLEX_CONNECTION_MAX_WRITE_CAP + 1),
                     -EINVAL);
    assert_int_equal(plex_connection_bytes_queued(NULL), 0);
    assert_int_equal(plex_connection_fd(NULL), -EINVAL);
    assert_int_equal(plex_connection_peer_address(NULL, &address, &length), -EINVAL);
    assert_int_equal(plex_connection_peer_address(conn, NULL, &length), -EINVAL);
    assert_int_equal(plex_connection_peer_address(conn, &address, NULL), -EINVAL);
    assert_null(plex_connection_plex(NULL));
    assert_null(plex_connection_loop(NULL));
    assert_null(plex_connection_user_data(NULL));
    plex_connection_set_user_data(NULL, &count);

    /* A client never connected: no loop, nothing in flight. */
    assert_int_equal(plex_connection_read(conn, item), -ENOTCONN);
    assert_int_equal(plex_connection_write(conn, item, "x", 1), -ENOTCONN);
    assert_int_equal(plex_connection_read_stop(conn), -ENOENT);
    assert_int_equal(plex_connection_close(conn, item), -ENOTCONN);
    assert_int_equal(plex_connection_peer_address(conn, &address, &length), 0);
    assert_int_equal(ntohs(((struct sockaddr_in *)&address)->sin_port), 1);
    assert_int_equal(plex_connection_close(conn, NULL), 0); /* closed at once */
    assert_int_equal(plex_connection_fd(conn), -EBADF);
    assert_int_equal(plex_connection_connect(loop, conn, item, 0), -EBADF);
    assert_int_equal(plex_connection_destroy(conn), 0);

    PlexConnection *second = plex_connection_create(flow, "127.0.0.1", 1);
    assert_int_equal(plex_connection_abort(second), 0); /* no loop: closed at once */
    assert_int_equal(plex_connection_abort(second), -EALREADY);
    assert_int_equal(plex_destroy(flow), 0); /* frees `second` and `listener` */
    assert_int_equal(count.success + count.error, 0);
    assert_int_equal(count.cleanup, 1);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        NET_TEST(test_flow_destroyed_in_flight),
        NET_TEST(test_flow_destroyed_from_handler),
        NET_TEST(test_abort),
        NET_TEST(test_loop_destroyed_in_flight),
        NET_TEST(test_read_stop_and_restart),
        NET_TEST(test_listener_close),
        NET_TEST(test_attach_moves),
        NET_TEST(test_cross_loop),
        NET_TEST(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

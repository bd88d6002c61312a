/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What goes wrong on the wire: connect refused, connect timeout, close while
 * connecting, a peer reset in the middle of a large write, a peer that
 * half-closes, writes after close, and a peer that never reads (the write
 * cap). Each handler and cleanup is counted; each test ends with no op left
 * and a clean loop and registry.
 */
#include <sys/time.h>

#include "net_support.h"

typedef NetFixture Fixture;

static void test_connect_refused(void **state)
{
    Fixture *fixture = *state;
    Plex *flow = plex_create(fixture->registry, "refused");
    PlexConnection *conn = plex_connection_create(flow, "127.0.0.1", raw_free_port());
    assert_non_null(conn);
    Count connect = {0};
    PlexItem *item = counted_item(flow, "connect", &connect);
    assert_int_equal(plex_connection_connect(fixture->loop, conn, item, 0), 0);
    assert_int_equal(plex_connection_connect(fixture->loop, conn, item, 0), -EALREADY);
    NET_RUN_UNTIL(fixture->loop, connect.last_calls == 1);
    assert_int_equal(connect.success, 0);
    assert_int_equal(connect.error, 1);
    assert_int_equal(connect.result, -ECONNREFUSED);
    /* A failed connection can only be closed or destroyed. */
    assert_int_equal(plex_connection_read(conn, item), -ENOTCONN);
    assert_int_equal(plex_connection_write(conn, NULL, "x", 1), -ENOTCONN);
    assert_int_equal(plex_connection_connect(fixture->loop, conn, item, 0), -EBADF);
    assert_int_equal(plex_destroy(flow), 0);
    assert_int_equal(connect.cleanup, 1);
    assert_int_equal(connect.error, 1);
}

/* A listener with backlog 0 whose queue is full drops SYNs (Linux, loopback
 * included): a connect to it stays pending. Returns the listening socket;
 * the sockets filling its queue go to fillers[]. */
static int full_listener(uint16_t *port, int fillers[8], int *filler_count)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = {.sin_family = AF_INET};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    assert_int_equal(listen(fd, 0), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
    *port = ntohs(address.sin_port);
    *filler_count = 0;
    for (;;) {
        assert_true(*filler_count < 8);
        int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct timeval timeout = {.tv_usec = 100000}; /* connect(2) honours SO_SNDTIMEO */
        setsockopt(filler, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
        fillers[(*filler_count)++] = filler;
        if (connect(filler, (struct sockaddr *)&address, sizeof(address)) < 0)
            return fd; /* this one's SYN was dropped: the queue is full */
    }
}

static void test_connect_timeout(void **state)
{
    Fixture *fixture = *state;
    uint16_t port;
    int fillers[8], filler_count;
    int listening = full_listener(&port, fillers, &filler_count);
    Plex *flow = plex_create(fixture->registry, "timeout");
    PlexConnection *conn = plex_connection_create(flow, "127.0.0.1", port);
    Count connect = {0};
    PlexItem *item = counted_item(flow, "connect", &connect);
    uint64_t start = plex_now_ns();
    assert_int_equal(plex_connection_connect(fixture->loop, conn, item, 200 * NET_MS), 0);
    NET_RUN_UNTIL(fixture->loop, connect.last_calls == 1);
    uint64_t elapsed = plex_now_ns() - start;
    assert_int_equal(connect.error, 1);
    assert_int_equal(connect.result, -ETIMEDOUT);
    assert_true(elapsed >= 200 * NET_MS);
    assert_true(elapsed < 5000 * NET_MS);
    assert_int_equal(plex_destroy(flow), 0);
    assert_int_equal(connect.cleanup, 1);
    for (int i = 0; i < filler_count; i++)
        close(fillers[i]);
    close(listening);
}

/* Closing while connecting: the connect ends with -ECANCELED, then the close
 * reports; each once. */
static void test_close_while_connecting(void **state)
{
    Fixture *fixture = *state;
    uint16_t port;
    int fillers[8], filler_count;
    int listening = full_listener(&port, fillers, &filler_count);
    Plex *flow = plex_create(fixture->registry, "close while connecting");
    PlexConnection *conn = plex_connection_create(flow, "127.0.0.1", port);
    Count connect = {0}, close_count = {0};
    PlexItem *item = counted_item(flow, "connect", &connect);
    assert_int_equal(plex_connection_connect(fixture->loop, conn, item, 0), 0);
    assert_true(plex_event_loop_run_once(fixture->loop, 0) >= 0); /* connect submitted */
    assert_int_equal(plex_connection_close(conn, counted_item(flow, "close", &close_count)), 0);
    NET_RUN_UNTIL(fixture->loop, close_count.last_calls == 1);
    assert_int_equal(connect.error, 1);
    assert_int_equal(connect.result, -ECANCELED);
    assert_int_equal(close_count.success, 1);
    assert_int_equal(close_count.result, 0);
    assert_int_equal(plex_connection_fd(conn), -EBADF);
    assert_int_equal(plex_destroy(flow), 0);
    assert_int_equal(connect.cleanup + close_count.cleanup, 2);
    for (int i = 0; i < filler_count; i++)
        close(fillers[i]);
    close(listening);
}

static void test_peer_reset_during_large_write(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    Count read = {0}, write = {0};
    size_t length = 32u << 20;
    unsigned char *payload = net_payload(length);
    assert_int_equal(plex_connection_set_write_cap(pair.conn, length), 0);
    assert_int_equal(plex_connection_read(pair.conn, counted_item(pair.flow, "read", &read)), 0);
    assert_int_equal(
        plex_connection_write(pair.conn, counted_item(pair.flow, "write", &write), payload, length),
        0);
    free(payload); /* the connection has its own copy */
    run_until_stalled(fixture->loop, pair.conn);
    assert_int_equal(write.success + write.error, 0);
    /* SO_LINGER 0: close sends a reset instead of a FIN. */
    struct linger linger = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(pair.peer, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger)), 0);
    close(pair.peer);
    NET_RUN_UNTIL(fixture->loop, write.last_calls == 1 && read.last_calls == 1);
    assert_int_equal(write.error, 1);
    assert_true(write.result == -ECONNRESET || write.result == -EPIPE);
    assert_int_equal(read.error, 1);
    assert_true(read.result == -ECONNRESET || read.result == PLEX_EEOF);
    assert_int_equal(plex_connection_bytes_queued(pair.conn), 0);
    /* The error sticks: later writes fail at once, and call nothing. */
    assert_true(plex_connection_write(pair.conn, NULL, "x", 1) < 0);
    assert_int_equal(plex_destroy(pair.flow), 0);
    assert_int_equal(write.cleanup, 1);
    assert_int_equal(read.cleanup, 1);
    assert_int_equal(write.error + write.success, 1);
}

static void test_half_close(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    Count read = {0}, write = {0}, closed = {0};
    assert_int_equal(plex_connection_read(pair.conn, counted_item(pair.flow, "read", &read)), 0);
    assert_int_equal(send(pair.peer, "ping", 4, 0), 4);
    assert_int_equal(shutdown(pair.peer, SHUT_WR), 0);
    NET_RUN_UNTIL(fixture->loop, read.last_calls == 1);
    assert_int_equal(read.success, 1);
    assert_string_equal(read.data, "ping");
    assert_int_equal(read.error, 1);
    assert_int_equal(read.result, PLEX_EEOF);
    /* Our side is still open for writing. */
    assert_int_equal(
        plex_connection_write(pair.conn, counted_item(pair.flow, "write", &write), "pong", 4), 0);
    char buffer[8] = {0};
    assert_int_equal(raw_read_running(fixture->loop, pair.peer, buffer, 4), 4);
    assert_string_equal(buffer, "pong");
    NET_RUN_UNTIL(fixture->loop, write.last_calls == 1);
    assert_int_equal(write.success, 1);
    assert_int_equal(write.result, 4);
    assert_int_equal(plex_connection_close(pair.conn, counted_item(pair.flow, "close", &closed)),
                     0);
    NET_RUN_UNTIL(fixture->loop, closed.last_calls == 1);
    assert_int_equal(closed.success, 1);
    assert_int_equal(raw_read_running(fixture->loop, pair.peer, buffer, 1), 0); /* FIN */
    close(pair.peer);
    assert_int_equal(plex_destroy(pair.flow), 0);
    assert_int_equal(read.cleanup + write.cleanup + closed.cleanup, 3);
}

static void test_write_after_close(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    Count write = {0}, closed = {0};
    PlexItem *write_item = counted_item(pair.flow, "write", &write);
    assert_int_equal(plex_connection_write(pair.conn, write_item, "bye", 3), 0);
    assert_int_equal(plex_connection_close(pair.conn, counted_item(pair.flow, "close", &closed)),
                     0);
    assert_int_equal(plex_connection_write(pair.conn, write_item, "late", 4), -ENOTCONN);
    assert_int_equal(plex_connection_read(pair.conn, write_item), -ENOTCONN);
    assert_int_equal(plex_connection_close(pair.conn, NULL), -EALREADY);
    NET_RUN_UNTIL(fixture->loop, closed.last_calls == 1);
    /* The queued write was flushed before the close. */
    assert_int_equal(write.success, 1);
    assert_int_equal(closed.success, 1);
    char buffer[8] = {0};
    assert_int_equal(raw_read_running(fixture->loop, pair.peer, buffer, sizeof(buffer)), 3);
    assert_string_equal(buffer, "bye");
    assert_int_equal(plex_connection_write(pair.conn, write_item, "late", 4), -ENOTCONN);
    assert_int_equal(plex_connection_abort(pair.conn), -EALREADY);
    assert_int_equal(plex_connection_fd(pair.conn), -EBADF);
    close(pair.peer);
    assert_int_equal(plex_destroy(pair.flow), 0);
    assert_int_equal(write.success + write.error, 1);
    assert_int_equal(write.cleanup + closed.cleanup, 2);
}

/* A peer that never reads: writes fill the kernel's buffers, then the queue
 * up to the cap, then fail with -ENOBUFS without queuing or calling. */
static void test_write_cap(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    const size_t cap = 256 * 1024, piece = 16 * 1024;
    assert_int_equal(plex_connection_set_write_cap(pair.conn, cap), 0);
    unsigned char *payload = net_payload(piece);
    Count write = {0};
    PlexItem *item = counted_item(pair.flow, "write", &write);
    int rc, accepted = 0, rounds = 0;
    size_t before;
    do {
        assert_true(++rounds < 10000);
        while ((rc = plex_connection_write(pair.conn, item, payload, piece)) == 0)
            accepted++;
        assert_int_equal(rc, -ENOBUFS);
        assert_true(plex_connection_bytes_queued(pair.conn) <= cap);
        before = plex_connection_bytes_queued(pair.conn);
        assert_true(plex_event_loop_run_once(fixture->loop, 30 * NET_MS) >= 0);
        assert_true(plex_event_loop_run_once(fixture->loop, 30 * NET_MS) >= 0);
    } while (plex_connection_bytes_queued(pair.conn) != before);
    assert_true(before > cap - piece);
    assert_int_equal(plex_connection_write(pair.conn, NULL, payload, piece), -ENOBUFS);
    assert_int_equal(write.error, 0);
    assert_int_equal(write.success, accepted - (int)((before + piece - 1) / piece));
    free(payload);
    close(pair.peer);
    assert_int_equal(plex_destroy(pair.flow), 0);
    assert_int_equal(write.cleanup, 1);
    assert_int_equal(write.error, 0); /* the flow ended: no handler ran */
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        NET_TEST(test_connect_refused),
        NET_TEST(test_connect_timeout),
        NET_TEST(test_close_while_connecting),
        NET_TEST(test_peer_reset_during_large_write),
        NET_TEST(test_half_close),
        NET_TEST(test_write_after_close),
        NET_TEST(test_write_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

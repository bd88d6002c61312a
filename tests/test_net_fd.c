/* SPDX-License-Identifier: Apache-2.0 */
/*
 * plex_connection_create_from_fd: a socket made elsewhere (one end of a
 * socketpair) becomes a connection like an accepted one: it reads, writes,
 * sees the peer's end of stream, closes gracefully, and owns its socket.
 * What it refuses (not a socket, not a stream, a dead flow) leaves the fd to
 * the caller. Each handler and cleanup is counted; each test ends with no
 * op left and a clean loop and registry.
 */
#include <dirent.h>
#include <fcntl.h>

#include "net_support.h"

typedef NetFixture Fixture;

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

static void test_socketpair_round_trip(void **state)
{
    Fixture *fixture = *state;
    int ends[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
    Plex *flow = plex_create(fixture->registry, "adopted");
    PlexConnection *conn = plex_connection_create_from_fd(flow, fixture->loop, ends[0]);
    assert_non_null(conn);
    assert_int_equal(plex_connection_fd(conn), ends[0]);
    assert_ptr_equal(plex_connection_plex(conn), flow);
    assert_ptr_equal(plex_connection_loop(conn), fixture->loop);
    Count read = {0}, write = {0}, close_count = {0};
    assert_int_equal(plex_connection_read(conn, counted_item(flow, "read", &read)), 0);
    assert_int_equal(plex_connection_write(conn, counted_item(flow, "write", &write), "ping", 4),
                     0);
    char got[4];
    assert_int_equal(raw_read_running(fixture->loop, ends[1], got, sizeof(got)), sizeof(got));
    assert_memory_equal(got, "ping", 4);
    NET_RUN_UNTIL(fixture->loop, write.last_calls == 1);
    assert_int_equal(write.success, 1);
    assert_int_equal(write.result, 4);

    assert_int_equal(send(ends[1], "pong", 4, MSG_NOSIGNAL), 4);
    assert_int_equal(shutdown(ends[1], SHUT_WR), 0);
    NET_RUN_UNTIL(fixture->loop, read.last_calls == 1);
    assert_int_equal(read.bytes, 4);
    assert_memory_equal(read.data, "pong", 4);
    assert_int_equal(read.error, 1);
    assert_int_equal(read.result, PLEX_EEOF);

    assert_int_equal(plex_connection_close(conn, counted_item(flow, "close", &close_count)), 0);
    NET_RUN_UNTIL(fixture->loop, close_count.last_calls == 1);
    assert_int_equal(close_count.success, 1);
    assert_int_equal(close_count.result, 0);
    char rest;
    assert_int_equal(recv(ends[1], &rest, 1, 0), 0); /* the graceful close's end of stream */
    assert_int_equal(plex_connection_fd(conn), -EBADF);
    assert_int_equal(plex_destroy(flow), 0);
    assert_int_equal(read.cleanup + write.cleanup + close_count.cleanup, 3);
    close(ends[1]);
}

/* The peer sends more than 32 buffers' worth and closes before the loop
 * reads any of it: every byte arrives, then the end of stream. (A multishot
 * receive on AF_UNIX never reported that end on Linux 6.17+; found by
 * fuzz_connection_io.) */
static void test_end_of_stream_after_a_burst(void **state)
{
    Fixture *fixture = *state;
    int ends[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
    const size_t length = 40 * 4096;
    unsigned char *payload = net_payload(length);
    assert_int_equal(send(ends[1], payload, length, MSG_NOSIGNAL), (ssize_t)length);
    close(ends[1]);
    Plex *flow = plex_create(fixture->registry, "burst");
    PlexConnection *conn = plex_connection_create_from_fd(flow, fixture->loop, ends[0]);
    assert_non_null(conn);
    Count read = {0};
    assert_int_equal(plex_connection_read(conn, counted_item(flow, "read", &read)), 0);
    NET_RUN_UNTIL(fixture->loop, read.last_calls == 1);
    assert_int_equal(read.bytes, length);
    assert_int_equal(read.result, PLEX_EEOF);
    assert_int_equal(read.error, 1);
    assert_int_equal(plex_destroy(flow), 0);
    free(payload);
}

/* io-wq workers of this process asleep in a socket send. */
static int workers_asleep_in_send(void)
{
    DIR *tasks = opendir("/proc/self/task");
    assert_non_null(tasks);
    int asleep = 0;
    for (struct dirent *entry; (entry = readdir(tasks));) {
        char path[300], comm[64] = "", wchan[128] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", entry->d_name);
        FILE *file = fopen(path, "r");
        if (!file)
            continue;
        bool worker = fgets(comm, sizeof(comm), file) && strncmp(comm, "iou-wrk", 7) == 0;
        fclose(file);
        snprintf(path, sizeof(path), "/proc/self/task/%s/wchan", entry->d_name);
        if (!worker || !(file = fopen(path, "r")))
            continue;
        /* TCP sleeps for room in wait_woken (from sk_stream_wait_memory),
         * a unix socket in sock_alloc_send_pskb. */
        if (fgets(wchan, sizeof(wchan), file) &&
            (strstr(wchan, "wait_woken") || strstr(wchan, "sk_stream_wait_memory") ||
             strstr(wchan, "sock_alloc_send")))
            asleep++;
        fclose(file);
    }
    closedir(tasks);
    return asleep;
}

/* A TCP peer that half-closes and reads nothing while we send: its end of
 * stream keeps waking io_uring's poll for room until io_uring gives the
 * send to an io-wq worker. That worker must not sleep in the send (it held
 * a kernel thread per such peer and could escape cancellation); the bytes
 * all arrive once the peer reads. */
static void test_half_closed_peer_that_reads_nothing(void **state)
{
    Fixture *fixture = *state;
    Pair pair;
    pair_open(&pair, fixture->registry, fixture->loop);
    assert_int_equal(shutdown(pair.peer, SHUT_WR), 0);
    const size_t length = 16u << 20;
    unsigned char *payload = net_payload(length);
    Count write = {0};
    assert_int_equal(plex_connection_set_write_cap(pair.conn, length), 0);
    assert_int_equal(
        plex_connection_write(pair.conn, counted_item(pair.flow, "write", &write), payload, length),
        0);
    run_until_stalled(fixture->loop, pair.conn);
    for (int i = 0; i < 10; i++)
        assert_true(plex_event_loop_run_once(fixture->loop, 20 * NET_MS) >= 0);
    assert_int_equal(workers_asleep_in_send(), 0);
    unsigned char *got = malloc(length);
    assert_non_null(got);
    assert_int_equal(raw_read_running(fixture->loop, pair.peer, got, length), length);
    assert_memory_equal(got, payload, length);
    NET_RUN_UNTIL(fixture->loop, write.last_calls == 1);
    assert_int_equal(write.success, 1);
    assert_int_equal(plex_destroy(pair.flow), 0);
    close(pair.peer);
    free(got);
    free(payload);
}

/* A TCP peer with our bytes unread sends a burst of many receive buffers
 * and closes (a reset) before the loop reads any of it: every byte arrives,
 * then the read ends. (After a long multishot run the kernel could miss
 * the reset's wake-up and the read never ended; found by
 * fuzz_connection_io.) */
static void test_reset_after_a_burst(void **state)
{
    Fixture *fixture = *state;
    PlexEventLoopConfig config = {.buffer_size = 512};
    PlexEventLoop *loop = plex_event_loop_create_with(fixture->registry, &config);
    assert_non_null(loop);
    Pair pair;
    pair_open(&pair, fixture->registry, loop);
    Count write = {0}, read = {0};
    assert_int_equal(
        plex_connection_write(pair.conn, counted_item(pair.flow, "write", &write), "abc", 3), 0);
    NET_RUN_UNTIL(loop, write.last_calls == 1);
    const size_t length = 64u << 10; /* 128 receive buffers */
    unsigned char *payload = net_payload(length);
    assert_int_equal(send(pair.peer, payload, length, MSG_NOSIGNAL), (ssize_t)length);
    close(pair.peer); /* "abc" unread: a reset */
    assert_int_equal(plex_connection_read(pair.conn, counted_item(pair.flow, "read", &read)), 0);
    NET_RUN_UNTIL(loop, read.last_calls == 1);
    assert_int_equal(read.bytes, length);
    assert_true(read.result == -ECONNRESET || read.result == PLEX_EEOF);
    assert_int_equal(plex_destroy(pair.flow), 0);
    NET_RUN_UNTIL(loop, net_ops_in_use(loop) == fixture->ops_before);
    plex_event_loop_destroy(loop);
    free(payload);
}

static void test_flow_end_closes_the_socket(void **state)
{
    Fixture *fixture = *state;
    int ends[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends), 0);
    Plex *flow = plex_create(fixture->registry, "adopted");
    PlexConnection *conn = plex_connection_create_from_fd(flow, fixture->loop, ends[0]);
    assert_non_null(conn);
    Count read = {0};
    assert_int_equal(plex_connection_read(conn, counted_item(flow, "read", &read)), 0);
    assert_true(plex_event_loop_run_once(fixture->loop, 0) >= 0);
    assert_int_equal(plex_destroy(flow), 0);
    raw_drain_until_closed(fixture->loop, ends[1]); /* returns once the engine closed its end */
    NET_RUN_UNTIL(fixture->loop, net_ops_in_use(fixture->loop) == fixture->ops_before);
    assert_int_equal(read.success + read.error, 0); /* the flow ended: no handler */
    assert_int_equal(read.cleanup, 1);
    close(ends[1]);
}

typedef struct EndProbe {
    PlexEventLoop *loop;
    int fd;
    int calls;
    int error;
} EndProbe;

static void end_probe(Plex *plex, int status)
{
    (void)status;
    EndProbe *probe = plex_user_data(plex);
    probe->calls++;
    errno = 0;
    if (plex_connection_create_from_fd(plex, probe->loop, probe->fd) == NULL)
        probe->error = errno;
}

static void test_refusals_leave_the_fd(void **state)
{
    Fixture *fixture = *state;
    Plex *flow = plex_create(fixture->registry, "refusals");
    int pipe_ends[2], datagram[2], stream[2];
    assert_int_equal(pipe2(pipe_ends, O_CLOEXEC), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, datagram), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, stream), 0);

    errno = 0;
    assert_null(plex_connection_create_from_fd(NULL, fixture->loop, stream[0]));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_connection_create_from_fd(flow, NULL, stream[0]));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_connection_create_from_fd(flow, fixture->loop, -1));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_connection_create_from_fd(flow, fixture->loop, pipe_ends[0]));
    assert_int_equal(errno, ENOTSOCK);
    assert_null(plex_connection_create_from_fd(flow, fixture->loop, datagram[0]));
    assert_int_equal(errno, EPROTOTYPE);
    /* A flow that has ended (seen from its end handler, where it still
     * exists) adopts nothing. */
    EndProbe probe = {.loop = fixture->loop, .fd = stream[0]};
    plex_set_user_data(flow, &probe);
    assert_int_equal(plex_set_end_handler(flow, end_probe), 0);
    assert_int_equal(plex_finish(flow), 0);
    assert_int_equal(probe.calls, 1);
    assert_int_equal(probe.error, ESTALE);

    for (int i = 0; i < 2; i++) {
        assert_true(fd_is_open(pipe_ends[i]));
        assert_true(fd_is_open(datagram[i]));
        assert_true(fd_is_open(stream[i]));
        close(pipe_ends[i]);
        close(datagram[i]);
        close(stream[i]);
    }
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(120);
    const struct CMUnitTest tests[] = {
        NET_TEST(test_socketpair_round_trip),
        NET_TEST(test_end_of_stream_after_a_burst),
        NET_TEST(test_half_closed_peer_that_reads_nothing),
        NET_TEST(test_reset_after_a_burst),
        NET_TEST(test_flow_end_closes_the_socket),
        NET_TEST(test_refusals_leave_the_fd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

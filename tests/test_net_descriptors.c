/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Descriptor exhaustion: with every descriptor of the process taken, the
 * listener's accept fails with EMFILE. The server must keep echoing on the
 * connection it has, retry accepting without spinning (CPU well under 20%
 * of the exhausted window), never bother the accept handler with it, and
 * accept the waiting client once descriptors are free again.
 */
#include <sys/resource.h>

#include "net_support.h"

#define MAX_FILLERS 4096

typedef struct Fixture {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    struct rlimit saved;
} Fixture;

static int setup(void **state)
{
    Fixture *fixture = calloc(1, sizeof(*fixture));
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &fixture->saved), 0);
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
    setrlimit(RLIMIT_NOFILE, &fixture->saved);
    plex_event_loop_destroy(fixture->loop);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
    plex_registry_destroy(fixture->registry);
    free(fixture);
    return 0;
}

static uint64_t cpu_ns(void)
{
    struct rusage usage;
    assert_int_equal(getrusage(RUSAGE_SELF, &usage), 0);
    return ((uint64_t)usage.ru_utime.tv_sec + (uint64_t)usage.ru_stime.tv_sec) * 1000000000u +
           ((uint64_t)usage.ru_utime.tv_usec + (uint64_t)usage.ru_stime.tv_usec) * 1000u;
}

static void echo_once(PlexEventLoop *loop, int fd, const char *text)
{
    size_t length = strlen(text);
    char buffer[16] = {0};
    assert_int_equal(send(fd, text, length, 0), (ssize_t)length);
    assert_int_equal(raw_read_running(loop, fd, buffer, length), length);
    assert_string_equal(buffer, text);
}

/* Takes every free descriptor. Returns how many. */
static int exhaust(int *fillers)
{
    int count = 0;
    for (;;) {
        int fd = dup(STDIN_FILENO);
        if (fd < 0) {
            assert_int_equal(errno, EMFILE);
            return count;
        }
        assert_true(count < MAX_FILLERS);
        fillers[count++] = fd;
    }
}

static void test_exhaustion_and_recovery(void **state)
{
    Fixture *fixture = *state;
    /* A low limit keeps the filling cheap. Set it before the accept is
     * armed: the kernel reads the limit when it takes the accept. */
    int probe = dup(STDIN_FILENO);
    struct rlimit low = fixture->saved;
    low.rlim_cur = (rlim_t)probe + 64;
    close(probe);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);

    EchoServer server = {0};
    echo_server_start(&server, fixture->registry, fixture->loop, NULL);
    int first = raw_connect(server.port);
    NET_RUN_UNTIL(fixture->loop, server.accepted == 1);
    echo_once(fixture->loop, first, "one");
    int second = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* before the exhaustion */
    assert_true(second >= 0);

    int *fillers = calloc(MAX_FILLERS, sizeof(*fillers));
    int filler_count = exhaust(fillers);
    assert_true(filler_count > 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(server.port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The handshake completes in the kernel's queue; accepting it needs a
     * descriptor we do not have. */
    assert_int_equal(connect(second, (struct sockaddr *)&address, sizeof(address)), 0);

    uint64_t wall_start = plex_now_ns(), cpu_start = cpu_ns();
    while (plex_now_ns() - wall_start < 800 * NET_MS) {
        assert_true(plex_event_loop_run_once(fixture->loop, 50 * NET_MS) >= 0);
        echo_once(fixture->loop, first, "still"); /* the existing client is served */
    }
    uint64_t wall = plex_now_ns() - wall_start, cpu = cpu_ns() - cpu_start;
    print_message("exhausted for %.0f ms: %.1f ms of CPU (%.1f%%)\n", (double)wall / 1e6,
                  (double)cpu / 1e6, 100.0 * (double)cpu / (double)wall);
    assert_true(cpu * 5 < wall); /* < 20% (measured: about 1%) */
    assert_int_equal(server.accepted, 1);
    assert_int_equal(server.accept_ends, 0); /* EMFILE never reaches the handler */

    for (int i = 0; i < filler_count; i++)
        close(fillers[i]);
    free(fillers);
    uint64_t freed = plex_now_ns();
    NET_RUN_UNTIL(fixture->loop, server.accepted == 2);
    assert_true(plex_now_ns() - freed < 3000 * NET_MS); /* backoff is capped at 1 s */
    echo_once(fixture->loop, second, "two");
    echo_once(fixture->loop, first, "one");

    close(first);
    close(second);
    NET_RUN_UNTIL(fixture->loop, server.sessions_ended == 2);
    assert_int_equal(server.session_cleanups, 6);
    echo_server_stop(&server);
    assert_int_equal(server.accept_ends, 1);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exhaustion_and_recovery, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

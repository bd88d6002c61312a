/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connecting: a wrong port and a wrong password give clear errors through
 * the error handler; a server that accepts the TCP connection but never
 * answers runs into samplex's own timeout (-ETIMEDOUT); queries queued on a
 * connect that fails fail once each; a connection destroyed while
 * connecting; connect in the wrong state.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "pg_support.h"

/* A TCP listener on 127.0.0.1 that never accepts nor speaks: the kernel
 * completes handshakes into its backlog, and then nothing happens. */
static int mute_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t length = sizeof(address);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
    *port = ntohs(address.sin_port);
    return fd;
}

/* A port nobody listens on (bound, read back, closed). */
static int closed_port(void)
{
    int port;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    socklen_t length = sizeof(address);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
    port = ntohs(address.sin_port);
    close(fd);
    return port;
}

typedef struct Attempt {
    Plex *plex;
    PlexPostgres *pg;
    PgCalls connect;
    PgCalls queued;
    uint64_t started_ns;
    uint64_t ended_ns;
} Attempt;

static void attempt_start(PgFixture *fixture, Attempt *attempt, const char *conninfo,
                          int64_t timeout_ns)
{
    attempt->plex = plex_create(fixture->registry, "attempt");
    assert_non_null(attempt->plex);
    attempt->pg = plex_postgres_create(attempt->plex, conninfo);
    assert_non_null(attempt->pg);
    PlexItem *item = pg_counting_item(attempt->plex, "connect", &attempt->connect);
    attempt->started_ns = plex_now_ns();
    assert_int_equal(plex_postgres_connect(fixture->loop, attempt->pg, item, timeout_ns), 0);
    /* Start returned 0: the outcome comes from the loop, never from here. */
    assert_int_equal(attempt->connect.last, 0);
}

static void attempt_wait(PgFixture *fixture, Attempt *attempt)
{
    PG_RUN_UNTIL(fixture->loop, attempt->connect.last == 1);
    attempt->ended_ns = plex_now_ns();
    assert_int_equal(attempt->connect.success, 0);
    assert_int_equal(attempt->connect.error, 1);
    assert_true(plex_postgres_is_broken(attempt->pg));
    assert_false(plex_postgres_is_connected(attempt->pg));
}

static void attempt_end(Attempt *attempt)
{
    assert_int_equal(plex_destroy(attempt->plex), 0);
    assert_int_equal(attempt->connect.cleanup, 1);
}

static void test_wrong_port(void **state)
{
    PgFixture *fixture = *state;
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d", closed_port());
    Attempt attempt = {0};
    attempt_start(fixture, &attempt, conninfo, PG_CONNECT_TIMEOUT_NS);
    attempt_wait(fixture, &attempt);
    assert_int_equal(attempt.connect.result, PLEX_EPGBROKEN);
    const char *message = plex_postgres_error_message(attempt.pg);
    print_message("wrong port: %s\n", message);
    if (!strstr(message, "refused"))
        fail_msg("unclear message: %s", message);
    attempt_end(&attempt);
}

static void test_wrong_password(void **state)
{
    PgFixture *fixture = *state;
    Attempt attempt = {0};
    /* The test server asks TCP clients for a SCRAM password. */
    attempt_start(fixture, &attempt, "password=not-the-password", PG_CONNECT_TIMEOUT_NS);
    attempt_wait(fixture, &attempt);
    assert_int_equal(attempt.connect.result, PLEX_EPGBROKEN);
    const char *message = plex_postgres_error_message(attempt.pg);
    print_message("wrong password: %s\n", message);
    if (!strstr(message, "password authentication failed"))
        fail_msg("unclear message: %s", message);
    attempt_end(&attempt);
}

static void test_timeout_against_mute_server(void **state)
{
    PgFixture *fixture = *state;
    int port;
    int listener = mute_listener(&port);
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d connect_timeout=1", port);
    Attempt attempt = {0};
    const int64_t timeout_ns = 300 * PG_MS;
    attempt_start(fixture, &attempt, conninfo, timeout_ns);
    /* A query queued on the doomed connect fails once too. */
    PlexItem *query = pg_counting_item(attempt.plex, "queued", &attempt.queued);
    assert_int_equal(plex_postgres_query(attempt.pg, query, "SELECT 1"), 0);
    attempt_wait(fixture, &attempt);
    assert_int_equal(attempt.connect.result, -ETIMEDOUT);
    uint64_t elapsed = attempt.ended_ns - attempt.started_ns;
    assert_true(elapsed >= (uint64_t)timeout_ns);
    assert_true(elapsed < (uint64_t)(5000 * PG_MS));
    print_message("mute server: %s\n", plex_postgres_error_message(attempt.pg));
    assert_non_null(strstr(plex_postgres_error_message(attempt.pg), "timed out"));
    PG_RUN_UNTIL(fixture->loop, attempt.queued.last == 1);
    assert_int_equal(attempt.queued.error, 1);
    assert_int_equal(attempt.queued.result, PLEX_EPGBROKEN);
    /* A broken connection refuses queries until reset. */
    assert_int_equal(plex_postgres_query(attempt.pg, query, "SELECT 1"), PLEX_EPGBROKEN);
    attempt_end(&attempt);
    assert_int_equal(attempt.queued.cleanup, 1);
    close(listener);
}

static void test_destroyed_while_connecting(void **state)
{
    PgFixture *fixture = *state;
    int port;
    int listener = mute_listener(&port);
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d", port);
    Plex *owner = plex_create(fixture->registry, "owner");
    Plex *waiter = plex_create(fixture->registry, "waiter");
    PlexPostgres *pg = plex_postgres_create(owner, conninfo);
    assert_non_null(pg);
    PgCalls connect = {0}, queued = {0};
    PlexItem *connect_item = pg_counting_item(waiter, "connect", &connect);
    PlexItem *queued_item = pg_counting_item(waiter, "queued", &queued);
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, connect_item, 0), 0);
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, connect_item, 0), -EALREADY);
    assert_int_equal(plex_postgres_query(pg, queued_item, "SELECT 1"), 0);
    assert_true(plex_event_loop_run_once(fixture->loop, 20 * PG_MS) >= 0);
    /* The owner ends: the connection goes; the waiter hears -ECANCELED,
     * later, once per step. */
    assert_int_equal(plex_destroy(owner), 0);
    assert_int_equal(connect.last + queued.last, 0);
    PG_RUN_UNTIL(fixture->loop, connect.last == 1 && queued.last == 1);
    assert_int_equal(connect.result, -ECANCELED);
    assert_int_equal(queued.result, -ECANCELED);
    assert_int_equal(connect.error + queued.error, 2);
    assert_int_equal(plex_destroy(waiter), 0);
    assert_int_equal(connect.cleanup + queued.cleanup, 2);
    close(listener);
}

static void test_connect_states(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PgCalls calls = {0};
    PlexPostgres *pg = pg_connect_now(fixture, &owner, &calls);
    PlexItem *item = plex_item_first(owner);
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, item, 0), -EISCONN);
    assert_int_equal(plex_postgres_reset(pg, item, 0), -EISCONN);
    /* Another loop cannot take it. */
    PlexEventLoop *other = plex_event_loop_create(fixture->registry);
    assert_non_null(other);
    assert_int_equal(plex_postgres_connect(other, pg, item, 0), -EISCONN);
    plex_event_loop_destroy(other);
    assert_non_null(plex_postgres_conn(pg));
    assert_true(PQbackendPID(plex_postgres_conn(pg)) > 0);
    assert_string_equal(plex_postgres_error_message(pg), "");
    assert_int_equal(plex_destroy(owner), 0);
    assert_int_equal(calls.success, 1);
    assert_int_equal(calls.cleanup, 1);
}

/* ---- Order around a connect ---------------------------------------------- */

typedef struct Sequence {
    PlexPostgres *pg;
    PlexItem *from_handler;
    char log[16];
    int length;
    int errors;
    int handler_rc; /* what the connect handler's query start returned */
} Sequence;

static void sequence_note(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Sequence *sequence = plex_user_data(plex);
    if (event->result < 0)
        sequence->errors++;
    const char *tag = plex_item_description(item);
    sequence->log[sequence->length++] = tag[0];
    if (tag[0] == 'C')
        sequence->handler_rc =
            plex_postgres_query(sequence->pg, sequence->from_handler, "SELECT 3");
}

static void order_around_connect(PgFixture *fixture, bool pipeline, bool close, bool queries)
{
    Sequence sequence = {0};
    Plex *plex = plex_create(fixture->registry, "sequence");
    plex_set_user_data(plex, &sequence);
    sequence.pg = plex_postgres_create(plex, fixture->conninfo);
    assert_int_equal(plex_postgres_set_pipeline(sequence.pg, pipeline), 0);
    PlexItem *connect = plex_item_create(plex, "C", sequence_note, sequence_note, NULL, NULL);
    PlexItem *first = plex_item_create(plex, "1", sequence_note, sequence_note, NULL, NULL);
    PlexItem *second = plex_item_create(plex, "2", sequence_note, sequence_note, NULL, NULL);
    sequence.from_handler = plex_item_create(plex, "H", sequence_note, sequence_note, NULL, NULL);
    assert_int_equal(
        plex_postgres_connect(fixture->loop, sequence.pg, connect, PG_CONNECT_TIMEOUT_NS), 0);
    if (queries) {
        assert_int_equal(plex_postgres_query(sequence.pg, first, "SELECT 1"), 0);
        assert_int_equal(plex_postgres_query(sequence.pg, second, "SELECT 2"), 0);
    }
    if (close) {
        PlexItem *closer = plex_item_create(plex, "X", sequence_note, sequence_note, NULL, NULL);
        assert_int_equal(plex_postgres_close(sequence.pg, closer), 0);
        PG_RUN_UNTIL(fixture->loop, sequence.length == (queries ? 4 : 2));
        assert_string_equal(sequence.log, queries ? "C12X" : "CX");
        /* The connect handler's query was refused: a close was queued. */
        assert_int_equal(sequence.handler_rc, -ESHUTDOWN);
        assert_false(plex_postgres_is_connected(sequence.pg));
    } else {
        PG_RUN_UNTIL(fixture->loop, sequence.length == 4);
        /* Connect first; queued queries before the handler's own. */
        assert_string_equal(sequence.log, "C12H");
        assert_int_equal(sequence.handler_rc, 0);
    }
    assert_int_equal(sequence.errors, 0);
    assert_int_equal(plex_destroy(plex), 0);
}

static void test_order_around_connect(void **state)
{
    PgFixture *fixture = *state;
    for (int pipeline = 0; pipeline < 2; pipeline++) {
        order_around_connect(fixture, pipeline, false, true);
        order_around_connect(fixture, pipeline, true, true);
        order_around_connect(fixture, pipeline, true, false);
    }
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_wrong_port, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_against_mute_server, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_destroyed_while_connecting, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_connect_states, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_order_around_connect, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

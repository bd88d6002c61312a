/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Read-ahead: outside pipeline mode, a connection alone in its loop's
 * wake-up reads once, right after a query goes out, before it arms the poll
 * (plex_pg_conn.c, pg_read_ahead). These tests make the server's answer be
 * there by then: each handler sends the next query and waits, with poll(2)
 * on the connection's socket, until the answer (or the server's hang-up)
 * has arrived. Then
 * - a closed loop of queries is served in far fewer loop iterations than
 *   queries (each iteration would otherwise wait for one poll), with every
 *   handler once, in order, with its own value;
 * - a backend that terminates itself is noticed by that read, inside the
 *   same loop iteration: the query's error handler runs once, the
 *   connection reports itself broken, and a reset brings it back.
 */
#include <poll.h>

#include "pg_support.h"

#define CHAIN_QUERIES 200

typedef struct Chain {
    PlexPostgres *pg;
    int limit;        /* queries to run */
    int sent;         /* queries started */
    int answered;     /* success handler calls */
    int failed;       /* error handler calls */
    int out_of_order; /* answers whose value was not the one sent */
    int cleanup;      /* cleanup calls */
} Chain;

static uint64_t loop_iterations(PlexEventLoop *loop)
{
    PlexEventLoopStats stats = {0};
    assert_int_equal(plex_event_loop_stats(loop, &stats), 0);
    return stats.iterations;
}

/* Blocks until the connection's socket shows `events` (5 s at most). */
static void wait_socket(PlexPostgres *pg, short events)
{
    PGconn *conn = plex_postgres_conn(pg);
    assert_non_null(conn);
    struct pollfd pfd = {.fd = PQsocket(conn), .events = events};
    assert_true(pfd.fd >= 0);
    assert_int_equal(poll(&pfd, 1, 5000), 1);
}

/* Sends "SELECT <n>" and waits until its answer is in the socket. */
static void chain_send(Chain *chain, PlexItem *item)
{
    char value[16];
    snprintf(value, sizeof(value), "%d", chain->sent);
    const char *values[] = {value};
    PlexPostgresParams params = {.count = 1, .values = values};
    assert_int_equal(plex_postgres_query_params(chain->pg, item, "SELECT $1::int", &params), 0);
    chain->sent++;
    wait_socket(chain->pg, POLLIN);
}

static void chain_success(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Chain *chain = plex_item_user_data(item);
    char expected[16];
    snprintf(expected, sizeof(expected), "%d", chain->answered);
    if (event->result != 1 || strcmp(PQgetvalue(event->pg_result, 0, 0), expected) != 0)
        chain->out_of_order++;
    chain->answered++;
    if (chain->sent < chain->limit)
        chain_send(chain, item);
}

static void chain_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    ((Chain *)plex_item_user_data(item))->failed++;
}

static void chain_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Chain *)plex_item_user_data(item))->cleanup++;
}

static PlexItem *chain_start(PgFixture *fixture, Chain *chain, Plex **plex_out)
{
    Plex *owner;
    chain->pg = pg_connect_now(fixture, &owner, NULL);
    Plex *player = plex_create(fixture->registry, "player");
    assert_non_null(player);
    PlexItem *item = plex_item_create(player, "chain", chain_success, chain_error, chain_cleanup,
                                      chain);
    assert_non_null(item);
    *plex_out = owner;
    chain_send(chain, item);
    return item;
}

static void test_waiting_answers_skip_the_kernel(void **state)
{
    PgFixture *fixture = *state;
    Chain chain = {.limit = CHAIN_QUERIES};
    Plex *owner;
    uint64_t before = loop_iterations(fixture->loop);
    PlexItem *item = chain_start(fixture, &chain, &owner);
    PG_RUN_UNTIL(fixture->loop, chain.answered + chain.failed == CHAIN_QUERIES);
    uint64_t iterations = loop_iterations(fixture->loop) - before;
    print_message("%d queries in %llu loop iterations\n", CHAIN_QUERIES,
                  (unsigned long long)iterations);
    assert_int_equal(chain.answered, CHAIN_QUERIES);
    assert_int_equal(chain.failed, 0);
    assert_int_equal(chain.out_of_order, 0);
    /* Without read-ahead each query costs at least one iteration (its poll);
     * with it, only the first few (while the hit rate builds up) do. */
    assert_true(iterations < CHAIN_QUERIES / 2);
    assert_int_equal(chain.cleanup, 0);
    assert_int_equal(plex_destroy(plex_item_plex(item)), 0);
    assert_int_equal(chain.cleanup, 1);
    assert_true(plex_postgres_is_connected(chain.pg));
    assert_int_equal(plex_destroy(owner), 0);
}

/* The listen step's handler: sends a query that terminates its own
 * backend and waits for the server's hang-up. */
typedef struct Terminate {
    PlexPostgres *pg;
    PlexEventLoop *loop;
    PlexItem *query;      /* the terminating query's step */
    int succeeded;        /* its success handler calls */
    int failed;           /* its error handler calls */
    int failure;          /* event->result of the error */
    int notified;         /* listen handler calls with a notification */
    int listen_errors;    /* listen handler calls without */
    uint64_t sent_in;     /* loop iterations when the query went */
    uint64_t failed_in;   /* loop iterations when its error handler ran */
} Terminate;

static void terminate_on_notify(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    Terminate *terminate = plex_item_user_data(item);
    terminate->notified++;
    terminate->sent_in = loop_iterations(terminate->loop);
    assert_int_equal(plex_postgres_query(terminate->pg, terminate->query,
                                         "SELECT pg_terminate_backend(pg_backend_pid())"),
                     0);
    wait_socket(terminate->pg, POLLRDHUP); /* the FATAL, then the end */
}

static void terminate_listen_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    ((Terminate *)plex_item_user_data(item))->listen_errors++;
}

static void terminate_query_success(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    ((Terminate *)plex_item_user_data(item))->succeeded++;
}

static void terminate_query_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Terminate *terminate = plex_item_user_data(item);
    terminate->failed++;
    terminate->failure = event->result;
    terminate->failed_in = loop_iterations(terminate->loop);
}

static void test_backend_gone_seen_by_read_ahead(void **state)
{
    PgFixture *fixture = *state;
    /* Reads ahead on every query from here on (the hit rate is high). */
    Chain chain = {.limit = CHAIN_QUERIES / 4};
    Plex *owner;
    PlexItem *item = chain_start(fixture, &chain, &owner);
    PG_RUN_UNTIL(fixture->loop, chain.answered == chain.limit);
    assert_int_equal(chain.out_of_order, 0);
    char channel[64], sql[128];
    pg_unique(channel, sizeof(channel), "read_ahead");
    PgCalls listen_query = {0};
    snprintf(sql, sizeof(sql), "LISTEN %s", channel);
    assert_int_equal(plex_postgres_query(chain.pg, pg_counting_item(owner, "listen", &listen_query),
                                         sql),
                     0);
    PG_RUN_UNTIL(fixture->loop, listen_query.last == 1);
    assert_int_equal(listen_query.success, 1);
    /* A notification wakes the loop with the connection alone in the
     * wake-up and no poll armed; its handler sends the query. */
    Terminate terminate = {.pg = chain.pg, .loop = fixture->loop};
    Plex *player = plex_item_plex(item);
    terminate.query = plex_item_create(player, "terminate", terminate_query_success,
                                       terminate_query_error, NULL, &terminate);
    assert_non_null(terminate.query);
    PlexItem *listen = plex_item_create(player, "listen", terminate_on_notify,
                                        terminate_listen_error, NULL, &terminate);
    assert_non_null(listen);
    assert_int_equal(plex_postgres_listen(chain.pg, listen), 0);
    PGconn *notifier = PQconnectdb(fixture->conninfo);
    assert_int_equal(PQstatus(notifier), CONNECTION_OK);
    snprintf(sql, sizeof(sql), "NOTIFY %s", channel);
    PGresult *notified = PQexec(notifier, sql);
    assert_int_equal(PQresultStatus(notified), PGRES_COMMAND_OK);
    PQclear(notified);
    PQfinish(notifier);
    PG_RUN_UNTIL(fixture->loop, terminate.succeeded + terminate.failed == 1);
    /* Noticed by the read right after the send, not by a later poll. */
    assert_int_equal(terminate.notified, 1);
    assert_true(terminate.failed_in == terminate.sent_in);
    assert_int_equal(terminate.failed, 1);
    assert_int_equal(terminate.succeeded, 0);
    assert_int_equal(terminate.failure, PLEX_EPGBROKEN);
    assert_int_equal(terminate.listen_errors, 1);
    assert_true(plex_postgres_is_broken(chain.pg));
    assert_non_null(strstr(plex_postgres_error_message(chain.pg), "terminating connection"));
    /* Nothing else runs, and a reset brings the connection back. */
    for (int i = 0; i < 3; i++)
        assert_true(plex_event_loop_run_once(fixture->loop, 10 * PG_MS) >= 0);
    assert_int_equal(terminate.succeeded + terminate.failed, 1);
    assert_int_equal(terminate.listen_errors, 1);
    PgCalls reset = {0}, again = {0};
    assert_int_equal(plex_postgres_reset(chain.pg, pg_counting_item(owner, "reset", &reset),
                                         PG_CONNECT_TIMEOUT_NS),
                     0);
    PG_RUN_UNTIL(fixture->loop, reset.last == 1);
    assert_int_equal(reset.success, 1);
    assert_int_equal(
        plex_postgres_query(chain.pg, pg_counting_item(owner, "again", &again), "SELECT 7"), 0);
    PG_RUN_UNTIL(fixture->loop, again.last == 1);
    assert_int_equal(again.success, 1);
    assert_string_equal(again.value, "7");
    assert_int_equal(plex_destroy(player), 0);
    assert_int_equal(chain.cleanup, 1);
    assert_int_equal(plex_destroy(owner), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_waiting_answers_skip_the_kernel, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_backend_gone_seen_by_read_ahead, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Losing the server: pg_terminate_backend in the middle of a pipeline, a
 * server restart and a server crash (pg.sh kill, then start) while queries
 * are in flight. Every pending query's error handler runs exactly once with
 * PLEX_EPGBROKEN (nothing is retried), the connections say they are broken
 * (even an idle one, on its own), plex_postgres_reset reconnects them, and a
 * pool reconnects by itself.
 *
 * The restart and the crash use $SAMPLEX_PG_CTL on $SAMPLEX_PG_DIR (see
 * scripts/pg.sh), so ctest runs this file alone (RUN_SERIAL: tests/
 * CMakeLists.txt serialises every test that mentions SAMPLEX_PG_CTL).
 * Without those variables those two tests skip, except under CI=true.
 */
#include "pg_support.h"

#define PIPELINE_DEPTH 100

typedef struct Victim {
    Plex *plex;
    PlexPostgres *pg;
    PgCalls calls[PIPELINE_DEPTH + 1];
    PgCalls listen;
    int count;
} Victim;

static void victim_connect(PgFixture *fixture, Victim *victim, bool pipeline)
{
    victim->pg = pg_connect_now(fixture, &victim->plex, NULL);
    assert_int_equal(plex_postgres_set_pipeline(victim->pg, pipeline), 0);
}

/* A long query first, then `count - 1` quick ones behind it. */
static void victim_load(PgFixture *fixture, Victim *victim, int count, const char *sleep_sql)
{
    char sql[64];
    victim->count = count;
    for (int i = 0; i < count; i++) {
        PlexItem *item = pg_counting_item(victim->plex, "query", &victim->calls[i]);
        snprintf(sql, sizeof(sql), "SELECT %d", i);
        assert_int_equal(plex_postgres_query(victim->pg, item, i == 0 ? sleep_sql : sql), 0);
    }
    /* Let them go out; the long one is running on the server. */
    for (int i = 0; i < 5; i++)
        assert_true(plex_event_loop_run_once(fixture->loop, 20 * PG_MS) >= 0);
    for (int i = 0; i < count; i++)
        assert_int_equal(victim->calls[i].last, 0);
}

static int victim_finished(const Victim *victim)
{
    int finished = 0;
    for (int i = 0; i < victim->count; i++)
        finished += victim->calls[i].last;
    return finished;
}

static void victim_check_broken(PgFixture *fixture, Victim *victim)
{
    PG_RUN_UNTIL(fixture->loop, victim_finished(victim) == victim->count);
    for (int i = 0; i < victim->count; i++) {
        PgCalls *calls = &victim->calls[i];
        assert_int_equal(calls->success, 0);
        assert_int_equal(calls->error, 1);
        assert_int_equal(calls->last, 1);
        assert_int_equal(calls->result, PLEX_EPGBROKEN);
    }
    assert_true(plex_postgres_is_broken(victim->pg));
    assert_false(plex_postgres_is_connected(victim->pg));
    assert_true(strlen(plex_postgres_error_message(victim->pg)) > 0);
    print_message("broken: %s\n", plex_postgres_error_message(victim->pg));
    PgCalls refused = {0};
    PlexItem *item = pg_counting_item(victim->plex, "refused", &refused);
    assert_int_equal(plex_postgres_query(victim->pg, item, "SELECT 1"), PLEX_EPGBROKEN);
    assert_int_equal(refused.success + refused.error, 0);
    assert_int_equal(plex_item_remove(victim->plex, item), 0);
    assert_int_equal(refused.cleanup, 1);
}

/* Explicit reconnect, then a query through the same PlexPostgres. */
static void victim_reset_and_query(PgFixture *fixture, Victim *victim)
{
    PgCalls reset = {0}, query = {0};
    PlexItem *reset_item = pg_counting_item(victim->plex, "reset", &reset);
    PlexItem *query_item = pg_counting_item(victim->plex, "after", &query);
    assert_int_equal(plex_postgres_reset(victim->pg, reset_item, PG_CONNECT_TIMEOUT_NS), 0);
    assert_int_equal(plex_postgres_query(victim->pg, query_item, "SELECT 'back'"), 0);
    PG_RUN_UNTIL(fixture->loop, query.last == 1);
    if (reset.success != 1)
        fail_msg("reset failed: %s", plex_postgres_error_message(victim->pg));
    assert_int_equal(query.success, 1);
    assert_string_equal(query.value, "back");
    assert_false(plex_postgres_is_broken(victim->pg));
    assert_int_equal(plex_item_remove(victim->plex, reset_item), 0);
    assert_int_equal(plex_item_remove(victim->plex, query_item), 0);
}

static void victim_end(Victim *victim)
{
    assert_int_equal(plex_destroy(victim->plex), 0);
    for (int i = 0; i < victim->count; i++)
        assert_int_equal(victim->calls[i].cleanup, 1);
}

static void run_query_now(PgFixture *fixture, PlexPostgres *pg, Plex *plex, const char *sql,
                          const PlexPostgresParams *params)
{
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(plex, "query", &calls);
    assert_int_equal(plex_postgres_query_params(pg, item, sql, params), 0);
    PG_RUN_UNTIL(fixture->loop, calls.last == 1);
    assert_int_equal(calls.success, 1);
    assert_int_equal(plex_item_remove(plex, item), 0);
}

/* ---- pg_terminate_backend ------------------------------------------------- */

static void test_terminate_backend_mid_pipeline(void **state)
{
    PgFixture *fixture = *state;
    Victim *victim = calloc(1, sizeof(*victim));
    Victim *idle = calloc(1, sizeof(*idle));
    victim_connect(fixture, victim, true);
    victim_connect(fixture, idle, false);
    PlexItem *listen = pg_counting_item(victim->plex, "listen", &victim->listen);
    assert_int_equal(plex_postgres_listen(victim->pg, listen), 0);
    victim_load(fixture, victim, PIPELINE_DEPTH + 1, "SELECT pg_sleep(10)");

    Plex *killer_flow;
    PlexPostgres *killer = pg_connect_now(fixture, &killer_flow, NULL);
    char pids[2][16];
    snprintf(pids[0], sizeof(pids[0]), "%d", PQbackendPID(plex_postgres_conn(victim->pg)));
    snprintf(pids[1], sizeof(pids[1]), "%d", PQbackendPID(plex_postgres_conn(idle->pg)));
    const char *values[2] = {pids[0], pids[1]};
    PlexPostgresParams params = {.count = 2, .values = values};
    run_query_now(fixture, killer, killer_flow,
                  "SELECT pg_terminate_backend($1), pg_terminate_backend($2)", &params);

    victim_check_broken(fixture, victim);
    /* The server said why: the head query carries its FATAL message. */
    assert_string_equal(victim->calls[0].sqlstate, "57P01");
    PG_RUN_UNTIL(fixture->loop, victim->listen.last == 1);
    assert_int_equal(victim->listen.error, 1);
    assert_int_equal(victim->listen.result, PLEX_EPGBROKEN);
    /* The idle connection noticed by itself: nothing was pending. */
    PG_RUN_UNTIL(fixture->loop, plex_postgres_is_broken(idle->pg));

    victim_reset_and_query(fixture, victim);
    victim_reset_and_query(fixture, idle);
    victim_end(victim);
    victim_end(idle);
    assert_int_equal(victim->listen.cleanup, 1);
    assert_int_equal(plex_destroy(killer_flow), 0);
    free(victim);
    free(idle);
}

/* ---- Reconnect from inside an error handler ----------------------------- */

typedef struct Phoenix {
    PlexPostgres *pg;
    PlexItem *reset;
    PlexItem *again;
    PgCalls doomed;
    PgCalls reset_calls;
    PgCalls again_calls;
} Phoenix;

static void phoenix_rise(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Phoenix *phoenix = plex_user_data(plex);
    pg_count_error(plex, item, event);
    assert_int_equal(event->result, PLEX_EPGBROKEN);
    assert_true(plex_postgres_is_broken(phoenix->pg));
    /* Reconnect and queue at once: what was pending was taken off first,
     * so this query is not failed along with it. */
    assert_int_equal(plex_postgres_reset(phoenix->pg, phoenix->reset, PG_CONNECT_TIMEOUT_NS), 0);
    assert_int_equal(plex_postgres_query(phoenix->pg, phoenix->again, "SELECT 'again'"), 0);
}

static void test_reset_from_error_handler(void **state)
{
    PgFixture *fixture = *state;
    Phoenix phoenix = {0};
    Plex *plex;
    phoenix.pg = pg_connect_now(fixture, &plex, NULL);
    plex_set_user_data(plex, &phoenix);
    phoenix.reset = pg_counting_item(plex, "reset", &phoenix.reset_calls);
    phoenix.again = pg_counting_item(plex, "again", &phoenix.again_calls);
    PlexItem *doomed = plex_item_create(plex, "doomed", pg_count_success, phoenix_rise,
                                        pg_count_cleanup, &phoenix.doomed);
    char sql[96];
    snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)",
             PQbackendPID(plex_postgres_conn(phoenix.pg)));
    assert_int_equal(plex_postgres_query(phoenix.pg, doomed, sql), 0);
    PG_RUN_UNTIL(fixture->loop, phoenix.again_calls.last == 1);
    assert_int_equal(phoenix.doomed.error, 1);
    assert_int_equal(phoenix.reset_calls.success, 1);
    assert_int_equal(phoenix.again_calls.success, 1);
    assert_string_equal(phoenix.again_calls.value, "again");
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(
        phoenix.doomed.cleanup + phoenix.reset_calls.cleanup + phoenix.again_calls.cleanup, 3);
}

/* ---- Restart and crash -------------------------------------------------- */

typedef struct Outage {
    Victim *pipelined;
    Victim *plain;
    Plex *pool_flow;
    PlexPostgresPool *pool;
} Outage;

static void outage_prepare(PgFixture *fixture, Outage *outage)
{
    outage->pipelined = calloc(1, sizeof(Victim));
    outage->plain = calloc(1, sizeof(Victim));
    victim_connect(fixture, outage->pipelined, true);
    victim_connect(fixture, outage->plain, false);
    outage->pool_flow = plex_create(fixture->registry, "pool owner");
    PlexPostgresPoolConfig config = {
        .connections = 2, .backoff_min_ns = 20 * PG_MS, .backoff_max_ns = 200 * PG_MS};
    outage->pool = plex_postgres_pool_create(outage->pool_flow, fixture->loop, "", &config);
    assert_non_null(outage->pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(outage->pool) == 2);
    victim_load(fixture, outage->pipelined, 51, "SELECT pg_sleep(30)");
    victim_load(fixture, outage->plain, 5, "SELECT pg_sleep(30)");
}

static void outage_recover(PgFixture *fixture, Outage *outage)
{
    victim_check_broken(fixture, outage->pipelined);
    victim_check_broken(fixture, outage->plain);
    victim_reset_and_query(fixture, outage->pipelined);
    victim_reset_and_query(fixture, outage->plain);
    /* The pool reconnects on its own, with backoff. */
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(outage->pool) == 2);
    PgCalls pooled = {0};
    PlexItem *item = pg_counting_item(outage->pool_flow, "pooled", &pooled);
    assert_int_equal(plex_postgres_pool_query(outage->pool, item, "SELECT 'pool'"), 0);
    PG_RUN_UNTIL(fixture->loop, pooled.last == 1);
    assert_int_equal(pooled.success, 1);
    victim_end(outage->pipelined);
    victim_end(outage->plain);
    assert_int_equal(plex_destroy(outage->pool_flow), 0);
    free(outage->pipelined);
    free(outage->plain);
}

static void test_server_restart_mid_pipeline(void **state)
{
    PgFixture *fixture = *state;
    if (!pg_ctl_or_skip())
        skip();
    Outage outage = {0};
    outage_prepare(fixture, &outage);
    pg_ctl("restart"); /* fast shutdown: backends are told, then the server is back */
    outage_recover(fixture, &outage);
}

static void test_server_crash_mid_pipeline(void **state)
{
    PgFixture *fixture = *state;
    if (!pg_ctl_or_skip())
        skip();
    Outage outage = {0};
    outage_prepare(fixture, &outage);
    pg_ctl("kill"); /* immediate shutdown: a crash */
    victim_check_broken(fixture, outage.pipelined);
    /* While the server is down, a reconnect fails cleanly. */
    PgCalls down = {0};
    PlexItem *down_item = pg_counting_item(outage.plain->plex, "down", &down);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_is_broken(outage.plain->pg));
    assert_int_equal(plex_postgres_reset(outage.plain->pg, down_item, PG_CONNECT_TIMEOUT_NS), 0);
    PG_RUN_UNTIL(fixture->loop, down.last == 1);
    assert_int_equal(down.error, 1);
    assert_int_equal(down.result, PLEX_EPGBROKEN);
    assert_int_equal(plex_postgres_pool_connected(outage.pool), 0);
    pg_ctl("start");
    outage_recover(fixture, &outage);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(280);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_terminate_backend_mid_pipeline, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reset_from_error_handler, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_server_restart_mid_pipeline, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_server_crash_mid_pipeline, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

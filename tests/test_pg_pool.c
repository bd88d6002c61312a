/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The pool: flows share N connections (queries queued before any is
 * connected wait for one), the cap on pending queries (-EAGAIN, no
 * handler), 1,000 flows over 8 pipelined connections, and a pool destroyed
 * with queries pending (-ECANCELED once each, later).
 */
#include "pg_support.h"

#define POOL_FLOWS 200
#define MANY_FLOWS 1000

typedef struct PoolRun {
    Plex *flows[MANY_FLOWS];
    PgCalls calls[MANY_FLOWS];
} PoolRun;

static int finished(const PoolRun *run, int count)
{
    int done = 0;
    for (int i = 0; i < count; i++)
        done += run->calls[i].last;
    return done;
}

static void run_flows(PgFixture *fixture, PlexPostgresPool *pool, PoolRun *run, int count)
{
    char sql[64];
    for (int i = 0; i < count; i++) {
        run->flows[i] = plex_create(fixture->registry, "player");
        assert_non_null(run->flows[i]);
        PlexItem *item = pg_counting_item(run->flows[i], "query", &run->calls[i]);
        snprintf(sql, sizeof(sql), "SELECT %d", i);
        assert_int_equal(plex_postgres_pool_query(pool, item, sql), 0);
    }
    PG_RUN_UNTIL(fixture->loop, finished(run, count) == count);
    for (int i = 0; i < count; i++) {
        assert_int_equal(run->calls[i].success, 1);
        assert_int_equal(run->calls[i].error, 0);
        assert_int_equal(atoi(run->calls[i].value), i);
        assert_int_equal(plex_destroy(run->flows[i]), 0);
        assert_int_equal(run->calls[i].cleanup, 1);
    }
}

static int connections_used(PlexPostgresPool *pool, const PoolRun *run, int count)
{
    int used = 0;
    for (unsigned index = 0; plex_postgres_pool_connection(pool, index); index++) {
        PlexPostgres *pg = plex_postgres_pool_connection(pool, index);
        for (int i = 0; i < count; i++)
            if (run->calls[i].postgres == pg) {
                used++;
                break;
            }
    }
    return used;
}

static void test_pool_shared(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner = plex_create(fixture->registry, "pool owner");
    PlexPostgresPoolConfig config = {.connections = 4};
    PlexPostgresPool *pool = plex_postgres_pool_create(owner, fixture->loop, "", &config);
    assert_non_null(pool);
    assert_null(plex_postgres_pool_connection(pool, 4));
    PoolRun *run = calloc(1, sizeof(*run));
    /* Issued before any connection is up: they wait on connecting ones. */
    assert_int_equal(plex_postgres_pool_connected(pool), 0);
    run_flows(fixture, pool, run, POOL_FLOWS);
    assert_true(connections_used(pool, run, POOL_FLOWS) > 1);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 4);
    assert_int_equal(plex_postgres_pool_queued(pool), 0);
    assert_int_equal(plex_destroy(owner), 0);
    free(run);
}

static void test_pool_cap(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner = plex_create(fixture->registry, "pool owner");
    PlexPostgresPoolConfig config = {.connections = 2, .max_queued = 8};
    PlexPostgresPool *pool = plex_postgres_pool_create(owner, fixture->loop, "", &config);
    assert_non_null(pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 2);
    PgCalls calls[9] = {{0}};
    for (int i = 0; i < 8; i++) {
        PlexItem *item = pg_counting_item(owner, "query", &calls[i]);
        assert_int_equal(plex_postgres_pool_query(pool, item, "SELECT pg_sleep(0.02)"), 0);
    }
    assert_int_equal(plex_postgres_pool_queued(pool), 8);
    PlexItem *refused = pg_counting_item(owner, "refused", &calls[8]);
    assert_int_equal(plex_postgres_pool_query(pool, refused, "SELECT 1"), -EAGAIN);
    const char *values[1] = {"1"};
    PlexPostgresParams params = {.count = 1, .values = values};
    assert_int_equal(plex_postgres_pool_query_params(pool, refused, "SELECT $1", &params), -EAGAIN);
    int done;
    do {
        assert_true(plex_event_loop_run_once(fixture->loop, 50 * PG_MS) >= 0);
        done = 0;
        for (int i = 0; i < 8; i++)
            done += calls[i].last;
    } while (done < 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(calls[i].success, 1);
    assert_int_equal(calls[8].success + calls[8].error, 0);
    /* Room again. */
    assert_int_equal(plex_postgres_pool_query_params(pool, refused, "SELECT $1", &params), 0);
    PG_RUN_UNTIL(fixture->loop, calls[8].last == 1);
    assert_string_equal(calls[8].value, "1");
    assert_int_equal(plex_destroy(owner), 0);
}

static void test_thousand_flows_over_eight_pipelined(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner = plex_create(fixture->registry, "pool owner");
    PlexPostgresPoolConfig config = {.connections = 8, .pipeline = true};
    PlexPostgresPool *pool = plex_postgres_pool_create(owner, fixture->loop, "", &config);
    assert_non_null(pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 8);
    PoolRun *run = calloc(1, sizeof(*run));
    run_flows(fixture, pool, run, MANY_FLOWS);
    assert_int_equal(connections_used(pool, run, MANY_FLOWS), 8);
    assert_int_equal(plex_destroy(owner), 0);
    free(run);
}

static void test_pool_destroyed_with_pending(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner = plex_create(fixture->registry, "pool owner");
    Plex *player = plex_create(fixture->registry, "player");
    PlexPostgresPool *pool = plex_postgres_pool_create(owner, fixture->loop, "", NULL);
    assert_non_null(pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 4);
    PgCalls calls[6] = {{0}};
    for (int i = 0; i < 6; i++) {
        PlexItem *item = pg_counting_item(player, "query", &calls[i]);
        assert_int_equal(plex_postgres_pool_query(pool, item, "SELECT pg_sleep(0.5)"), 0);
    }
    assert_true(plex_event_loop_run_once(fixture->loop, 10 * PG_MS) >= 0);
    assert_int_equal(plex_postgres_pool_destroy(pool), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(calls[i].last, 0);
    int done;
    do {
        assert_true(plex_event_loop_run_once(fixture->loop, 50 * PG_MS) >= 0);
        done = 0;
        for (int i = 0; i < 6; i++)
            done += calls[i].last;
    } while (done < 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(calls[i].error, 1);
        assert_int_equal(calls[i].result, -ECANCELED);
    }
    assert_int_equal(plex_destroy(player), 0);
    assert_int_equal(plex_destroy(owner), 0);
}

static void test_loop_destroyed_with_pool(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner = plex_create(fixture->registry, "pool owner");
    Plex *player = plex_create(fixture->registry, "player");
    PlexPostgresPoolConfig config = {.connections = 2, .pipeline = true};
    PlexPostgresPool *pool = plex_postgres_pool_create(owner, fixture->loop, "", &config);
    assert_non_null(pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 2);
    PgCalls calls[5] = {{0}};
    for (int i = 0; i < 5; i++) {
        PlexItem *item = pg_counting_item(player, "query", &calls[i]);
        assert_int_equal(plex_postgres_pool_query(pool, item, "SELECT pg_sleep(1)"), 0);
    }
    assert_true(plex_event_loop_run_once(fixture->loop, 10 * PG_MS) >= 0);
    /* The loop ends both flows: cleanups run, no handler does. */
    plex_event_loop_destroy(fixture->loop);
    fixture->loop = NULL;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(calls[i].success + calls[i].error, 0);
        assert_int_equal(calls[i].cleanup, 1);
    }
    assert_int_equal(plex_registry_count(fixture->registry), 0);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pool_shared, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_pool_cap, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_thousand_flows_over_eight_pipelined, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_pool_destroyed_with_pending, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_loop_destroyed_with_pool, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Pipeline mode: 1,000 queries in one pipeline with one failing in the
 * middle (every handler exactly once, exactly the rest of its sync group
 * aborted), sync groups per loop iteration, the queries of many flows
 * batched into one round trip, queries queued while connecting, and a flow
 * destroyed while its query is in the pipeline.
 */
#include "pg_support.h"

#define PIPELINE_COUNT 1000
#define PIPELINE_FAILING 500

typedef struct Batch {
    Plex *plex;
    PlexItem *items[PIPELINE_COUNT];
    PgCalls calls[PIPELINE_COUNT];
} Batch;

static Batch *batch_create(PgFixture *fixture, int count)
{
    Batch *batch = calloc(1, sizeof(*batch));
    assert_non_null(batch);
    batch->plex = plex_create(fixture->registry, "batch");
    assert_non_null(batch->plex);
    for (int i = 0; i < count; i++)
        batch->items[i] = pg_counting_item(batch->plex, "query", &batch->calls[i]);
    return batch;
}

static int batch_finished(const Batch *batch, int count)
{
    int finished = 0;
    for (int i = 0; i < count; i++)
        finished += batch->calls[i].last;
    return finished;
}

static void query_number(PlexPostgres *pg, PlexItem *item, int number, bool failing)
{
    char sql[64];
    if (failing)
        snprintf(sql, sizeof(sql), "SELECT %d / 0", number);
    else
        snprintf(sql, sizeof(sql), "SELECT %d", number);
    assert_int_equal(plex_postgres_query(pg, item, sql), 0);
}

static PlexPostgres *pipeline_connect(PgFixture *fixture, Plex **owner)
{
    PlexPostgres *pg = pg_connect_now(fixture, owner, NULL);
    assert_int_equal(plex_postgres_set_pipeline(pg, true), 0);
    return pg;
}

static void test_thousand_with_one_failing(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pipeline_connect(fixture, &owner);
    Batch *batch = batch_create(fixture, PIPELINE_COUNT);
    /* All in one loop iteration: one sync group. */
    for (int i = 0; i < PIPELINE_COUNT; i++)
        query_number(pg, batch->items[i], i, i == PIPELINE_FAILING);
    PG_RUN_UNTIL(fixture->loop, batch_finished(batch, PIPELINE_COUNT) == PIPELINE_COUNT);
    for (int i = 0; i < PIPELINE_COUNT; i++) {
        PgCalls *calls = &batch->calls[i];
        assert_int_equal(calls->success + calls->error, 1);
        assert_int_equal(calls->last, 1);
        assert_int_equal(calls->more, 0);
        if (i < PIPELINE_FAILING) {
            assert_int_equal(calls->success, 1);
            assert_int_equal(atoi(calls->value), i);
        } else if (i == PIPELINE_FAILING) {
            assert_int_equal(calls->result, PLEX_EPG);
            assert_string_equal(calls->sqlstate, "22012");
        } else {
            assert_int_equal(calls->result, PLEX_EPIPELINE);
        }
    }
    /* The connection carries on. */
    PgCalls after = {0};
    PlexItem *item = pg_counting_item(owner, "after", &after);
    query_number(pg, item, 77, false);
    PG_RUN_UNTIL(fixture->loop, after.last == 1);
    assert_string_equal(after.value, "77");
    assert_int_equal(plex_destroy(batch->plex), 0);
    for (int i = 0; i < PIPELINE_COUNT; i++)
        assert_int_equal(batch->calls[i].cleanup, 1);
    assert_int_equal(plex_destroy(owner), 0);
    free(batch);
}

static void test_error_aborts_only_its_sync_group(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pipeline_connect(fixture, &owner);
    Batch *batch = batch_create(fixture, 20);
    for (int i = 0; i < 10; i++)
        query_number(pg, batch->items[i], i, i == 3);
    /* The flush before the kernel closes the first group with a Sync. */
    assert_true(plex_event_loop_run_once(fixture->loop, 0) >= 0);
    for (int i = 10; i < 20; i++)
        query_number(pg, batch->items[i], i, false);
    PG_RUN_UNTIL(fixture->loop, batch_finished(batch, 20) == 20);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(batch->calls[i].last, 1);
        int expected = i < 3 || i >= 10 ? 1 : i == 3 ? PLEX_EPG : PLEX_EPIPELINE;
        if (expected == 1)
            assert_int_equal(batch->calls[i].success, 1);
        else
            assert_int_equal(batch->calls[i].result, expected);
    }
    assert_int_equal(plex_destroy(batch->plex), 0);
    assert_int_equal(plex_destroy(owner), 0);
    free(batch);
}

/* ---- Heavy both ways: no deadlock --------------------------------------- */

#define HEAVY_COUNT 2000
#define HEAVY_SIZE 8192

typedef struct Heavy {
    int done;
    int bad;
} Heavy;

static void heavy_result(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    Heavy *heavy = plex_user_data(plex);
    heavy->done++;
    if (event->result != 1 || PQgetlength(event->pg_result, 0, 0) != HEAVY_SIZE)
        heavy->bad++;
}

static void heavy_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    Heavy *heavy = plex_user_data(plex);
    heavy->done++;
    heavy->bad++;
}

static void test_heavy_both_ways(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pipeline_connect(fixture, &owner);
    Heavy heavy = {0};
    plex_set_user_data(owner, &heavy);
    PlexItem *item = plex_item_create(owner, "echo", heavy_result, heavy_error, NULL, NULL);
    static char payload[HEAVY_SIZE + 1];
    memset(payload, 'p', HEAVY_SIZE);
    const char *values[1] = {payload};
    PlexPostgresParams params = {.count = 1, .values = values};
    /* 16 MiB out and 16 MiB back in one pipeline: the socket buffers fill
     * both ways, so reading and writing must interleave. */
    for (int i = 0; i < HEAVY_COUNT; i++)
        assert_int_equal(plex_postgres_query_params(pg, item, "SELECT $1::text", &params), 0);
    PG_RUN_UNTIL(fixture->loop, heavy.done == HEAVY_COUNT);
    assert_int_equal(heavy.bad, 0);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- Many flows, one round trip ------------------------------------------- */

#define FLOW_COUNT 100

static void test_many_flows_batched(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pipeline_connect(fixture, &owner);
    Plex *flows[FLOW_COUNT];
    PgCalls calls[FLOW_COUNT] = {{0}};
    for (int i = 0; i < FLOW_COUNT; i++) {
        flows[i] = plex_create(fixture->registry, "player");
        assert_non_null(flows[i]);
        PlexItem *item = pg_counting_item(flows[i], "query", &calls[i]);
        /* One failure in the middle: if every flow's query went out in the
         * same sync group, exactly the ones after it are aborted. */
        query_number(pg, item, i, i == FLOW_COUNT / 2);
    }
    PlexEventLoopStats before, after;
    assert_int_equal(plex_event_loop_stats(fixture->loop, &before), 0);
    int finished;
    do {
        assert_true(plex_event_loop_run_once(fixture->loop, 50 * PG_MS) >= 0);
        finished = 0;
        for (int i = 0; i < FLOW_COUNT; i++)
            finished += calls[i].last;
    } while (finished < FLOW_COUNT);
    assert_int_equal(plex_event_loop_stats(fixture->loop, &after), 0);
    for (int i = 0; i < FLOW_COUNT; i++) {
        assert_int_equal(calls[i].success + calls[i].error, 1);
        if (i < FLOW_COUNT / 2)
            assert_int_equal(calls[i].success, 1);
        else if (i == FLOW_COUNT / 2)
            assert_int_equal(calls[i].result, PLEX_EPG);
        else
            assert_int_equal(calls[i].result, PLEX_EPIPELINE);
    }
    /* One round trip: a handful of wake-ups, not one per query. */
    assert_true(after.iterations - before.iterations < 20);
    for (int i = 0; i < FLOW_COUNT; i++) {
        assert_int_equal(plex_destroy(flows[i]), 0);
        assert_int_equal(calls[i].cleanup, 1);
    }
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- Queued while connecting ------------------------------------------- */

static void test_queued_while_connecting(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner = plex_create(fixture->registry, "owner");
    PlexPostgres *pg = plex_postgres_create(owner, fixture->conninfo);
    assert_non_null(pg);
    assert_int_equal(plex_postgres_set_pipeline(pg, true), 0);
    PgCalls connect = {0}, queries[5] = {{0}};
    PlexItem *connect_item = pg_counting_item(owner, "connect", &connect);
    assert_int_equal(plex_postgres_query(pg, connect_item, "SELECT 1"), -ENOTCONN);
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, connect_item, PG_CONNECT_TIMEOUT_NS),
                     0);
    for (int i = 0; i < 5; i++)
        query_number(pg, pg_counting_item(owner, "early", &queries[i]), i, false);
    PG_RUN_UNTIL(fixture->loop, queries[4].last == 1);
    assert_int_equal(connect.success, 1);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(queries[i].success, 1);
        assert_int_equal(atoi(queries[i].value), i);
    }
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- A flow destroyed while its query is in the pipeline ----------------- */

static void test_flow_destroyed_in_pipeline(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pipeline_connect(fixture, &owner);
    PgCalls before = {0}, victim = {0}, later = {0};
    Plex *victim_flow = plex_create(fixture->registry, "victim");
    PlexItem *before_item = pg_counting_item(owner, "before", &before);
    PlexItem *victim_item = pg_counting_item(victim_flow, "victim", &victim);
    PlexItem *later_item = pg_counting_item(owner, "later", &later);
    assert_int_equal(plex_postgres_query(pg, before_item, "SELECT pg_sleep(0.1), 1"), 0);
    assert_int_equal(plex_postgres_query(pg, victim_item, "SELECT 2"), 0);
    assert_int_equal(plex_postgres_query(pg, later_item, "SELECT 3"), 0);
    assert_true(plex_event_loop_run_once(fixture->loop, 0) >= 0); /* sent */
    assert_int_equal(plex_destroy(victim_flow), 0);
    assert_int_equal(victim.cleanup, 1);
    PG_RUN_UNTIL(fixture->loop, later.last == 1);
    assert_int_equal(before.success, 1);
    assert_int_equal(later.success, 1);
    assert_string_equal(later.value, "3");
    assert_int_equal(victim.success + victim.error, 0);
    assert_int_equal(victim.cleanup, 1);
    assert_int_equal(plex_destroy(owner), 0);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_thousand_with_one_failing, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_error_aborts_only_its_sync_group, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_heavy_both_ways, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_many_flows_batched, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_queued_while_connecting, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_flow_destroyed_in_pipeline, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

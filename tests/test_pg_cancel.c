/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ends that come early: a flow destroyed while its query runs (no handler,
 * cleanup once, the connection still serves others), a handler that ends
 * its own flow between the results of a multi-statement query, a handler
 * that destroys the connection under queued queries of other flows, the
 * connection's owner ending, and the loop destroyed with queries in flight.
 */
#include "pg_support.h"

static void test_flow_destroyed_mid_query(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls slow = {0}, next = {0};
    Plex *player = plex_create(fixture->registry, "player");
    Plex *other = plex_create(fixture->registry, "other");
    PlexItem *slow_item = pg_counting_item(player, "slow", &slow);
    PlexItem *next_item = pg_counting_item(other, "next", &next);
    assert_int_equal(plex_postgres_query(pg, slow_item, "SELECT pg_sleep(0.2), 1"), 0);
    assert_int_equal(plex_postgres_query(pg, next_item, "SELECT 5"), 0);
    for (int i = 0; i < 3; i++)
        assert_true(plex_event_loop_run_once(fixture->loop, 10 * PG_MS) >= 0);
    assert_int_equal(plex_item_in_flight(slow_item), 1);
    assert_int_equal(plex_destroy(player), 0);
    assert_int_equal(slow.cleanup, 1);
    PG_RUN_UNTIL(fixture->loop, next.last == 1);
    /* The slow result was read and thrown away; the next query is fine. */
    assert_int_equal(slow.success + slow.error, 0);
    assert_int_equal(slow.cleanup, 1);
    assert_int_equal(next.success, 1);
    assert_string_equal(next.value, "5");
    assert_int_equal(plex_postgres_queued(pg), 0);
    assert_int_equal(plex_destroy(other), 0);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- A handler ends its own flow between results ------------------------- */

static void end_own_flow(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    pg_count_success(plex, item, event);
    assert_true(event->flags & PLEX_EVENT_MORE);
    assert_int_equal(plex_destroy(plex), 0);
}

static void test_handler_ends_own_flow(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls multi = {0}, after = {0};
    Plex *player = plex_create(fixture->registry, "player");
    PlexItem *item =
        plex_item_create(player, "multi", end_own_flow, pg_count_error, pg_count_cleanup, &multi);
    PlexItem *after_item = pg_counting_item(owner, "after", &after);
    assert_int_equal(plex_postgres_query(pg, item, "SELECT 1; SELECT 2; SELECT 3"), 0);
    assert_int_equal(plex_postgres_query(pg, after_item, "SELECT 4"), 0);
    PG_RUN_UNTIL(fixture->loop, after.last == 1);
    assert_int_equal(multi.success, 1);
    assert_int_equal(multi.error, 0);
    assert_int_equal(multi.cleanup, 1);
    assert_string_equal(after.value, "4");
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- A handler destroys the connection ------------------------------------ */

typedef struct Doomed {
    PlexPostgres *pg;
    PgCalls first;
    PgCalls rest[3];
} Doomed;

static void destroy_connection(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Doomed *doomed = plex_user_data(plex);
    pg_count_success(plex, item, event);
    assert_int_equal(plex_postgres_destroy(doomed->pg), 0);
    /* Nothing was delivered from inside the destroy. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(doomed->rest[i].last, 0);
}

static void test_handler_destroys_connection(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    Doomed doomed = {0};
    doomed.pg = pg_connect_now(fixture, &owner, NULL);
    Plex *player = plex_create(fixture->registry, "player");
    plex_set_user_data(player, &doomed);
    PlexItem *first = plex_item_create(player, "first", destroy_connection, pg_count_error,
                                       pg_count_cleanup, &doomed.first);
    assert_int_equal(plex_postgres_query(doomed.pg, first, "SELECT 1"), 0);
    for (int i = 0; i < 3; i++) {
        PlexItem *item = pg_counting_item(player, "rest", &doomed.rest[i]);
        assert_int_equal(plex_postgres_query(doomed.pg, item, "SELECT pg_sleep(0.05)"), 0);
    }
    PG_RUN_UNTIL(fixture->loop,
                 doomed.rest[0].last + doomed.rest[1].last + doomed.rest[2].last == 3);
    assert_int_equal(doomed.first.success, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(doomed.rest[i].error, 1);
        assert_int_equal(doomed.rest[i].result, -ECANCELED);
    }
    assert_int_equal(plex_destroy(player), 0);
    assert_int_equal(doomed.first.cleanup, 1);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- The loop goes with queries in flight ------------------------------- */

static void test_loop_destroyed_in_flight(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls calls[4] = {{0}};
    Plex *player = plex_create(fixture->registry, "player");
    for (int i = 0; i < 4; i++) {
        PlexItem *item = pg_counting_item(i % 2 ? owner : player, "query", &calls[i]);
        assert_int_equal(plex_postgres_query(pg, item, "SELECT pg_sleep(0.5)"), 0);
    }
    assert_true(plex_event_loop_run_once(fixture->loop, 10 * PG_MS) >= 0);
    plex_event_loop_destroy(fixture->loop);
    fixture->loop = NULL;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(calls[i].success + calls[i].error, 0);
        assert_int_equal(calls[i].cleanup, 1);
    }
    assert_int_equal(plex_registry_count(fixture->registry), 0);
}

/* ---- Exactly-once holds for a flow destroyed from another's handler ------ */

typedef struct Killer {
    Plex *victim;
    PgCalls calls;
} Killer;

static void kill_victim(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Killer *killer = plex_user_data(plex);
    pg_count_success(plex, item, event);
    assert_int_equal(plex_destroy(killer->victim), 0);
}

static void test_flow_destroyed_by_another_handler(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    assert_int_equal(plex_postgres_set_pipeline(pg, true), 0);
    Killer killer = {0};
    PgCalls victim = {0}, last = {0};
    Plex *killer_flow = plex_create(fixture->registry, "killer");
    killer.victim = plex_create(fixture->registry, "victim");
    plex_set_user_data(killer_flow, &killer);
    PlexItem *kill_item = plex_item_create(killer_flow, "kill", kill_victim, pg_count_error,
                                           pg_count_cleanup, &killer.calls);
    PlexItem *victim_item = pg_counting_item(killer.victim, "victim", &victim);
    PlexItem *last_item = pg_counting_item(owner, "last", &last);
    /* Both results arrive in one read: the victim's must not be delivered
     * once the killer's handler has destroyed it. */
    assert_int_equal(plex_postgres_query(pg, kill_item, "SELECT 1"), 0);
    assert_int_equal(plex_postgres_query(pg, victim_item, "SELECT 2"), 0);
    assert_int_equal(plex_postgres_query(pg, last_item, "SELECT 3"), 0);
    PG_RUN_UNTIL(fixture->loop, last.last == 1);
    assert_int_equal(killer.calls.success, 1);
    assert_int_equal(victim.success + victim.error, 0);
    assert_int_equal(victim.cleanup, 1);
    assert_int_equal(last.success, 1);
    assert_int_equal(plex_destroy(killer_flow), 0);
    assert_int_equal(plex_destroy(owner), 0);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flow_destroyed_mid_query, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_handler_ends_own_flow, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_handler_destroys_connection, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_loop_destroyed_in_flight, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_flow_destroyed_by_another_handler, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

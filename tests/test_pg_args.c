/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Bad arguments: every public Postgres function answers -EINVAL (or NULL
 * with errno EINVAL) and calls no handler; calls in the wrong state answer
 * with their documented codes. Needs no server, except for the last test.
 */
#include "pg_support.h"

#include "core/plex_internal.h"

static void test_connection_arguments(void **state)
{
    (void)state;
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoop *loop = plex_event_loop_create(registry);
    Plex *plex = plex_create(registry, "args");
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(plex, "item", &calls);

    errno = 0;
    assert_null(plex_postgres_create(NULL, ""));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_create(plex, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_create(plex, "no_such_option=1"));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_create(plex, "postgresql://[broken"));
    assert_int_equal(errno, EINVAL);

    PlexPostgres *pg = plex_postgres_create(plex, "host=127.0.0.1");
    assert_non_null(pg);
    assert_int_equal(plex_postgres_destroy(NULL), -EINVAL);
    assert_int_equal(plex_postgres_connect(NULL, pg, item, 0), -EINVAL);
    assert_int_equal(plex_postgres_connect(loop, NULL, item, 0), -EINVAL);
    assert_int_equal(plex_postgres_connect(loop, pg, NULL, 0), -EINVAL);
    assert_int_equal(plex_postgres_connect(loop, pg, item, -1), -EINVAL);
    assert_int_equal(plex_postgres_reset(NULL, item, 0), -EINVAL);
    assert_int_equal(plex_postgres_reset(pg, NULL, 0), -EINVAL);
    assert_int_equal(plex_postgres_reset(pg, item, -1), -EINVAL);
    assert_int_equal(plex_postgres_reset(pg, item, 0), -ENOTCONN); /* never connected */
    assert_int_equal(plex_postgres_close(NULL, item), -EINVAL);
    assert_int_equal(plex_postgres_close(pg, NULL), -EINVAL);
    assert_int_equal(plex_postgres_close(pg, item), -ENOTCONN);
    assert_int_equal(plex_postgres_set_pipeline(NULL, true), -EINVAL);
    assert_int_equal(plex_postgres_set_max_queued(NULL, 1), -EINVAL);
    assert_false(plex_postgres_is_broken(NULL));
    assert_false(plex_postgres_is_connected(NULL));
    assert_false(plex_postgres_is_broken(pg));
    assert_false(plex_postgres_is_connected(pg));
    assert_int_equal(plex_postgres_queued(NULL), 0);
    assert_string_equal(plex_postgres_error_message(NULL), "");
    assert_null(plex_postgres_conn(NULL));
    assert_null(plex_postgres_conn(pg));

    /* A flow that ended (kept in memory by a pin) cannot own a connection. */
    Plex *dead = plex_create(registry, "dead");
    plex_pin(dead);
    assert_int_equal(plex_destroy(dead), 0);
    errno = 0;
    assert_null(plex_postgres_create(dead, ""));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(dead, loop, "", NULL));
    assert_int_equal(errno, EINVAL);
    plex_unpin(dead);

    assert_int_equal(plex_postgres_destroy(pg), 0);
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(calls.success + calls.error, 0);
    assert_int_equal(calls.cleanup, 1);
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
}

static void test_query_arguments(void **state)
{
    (void)state;
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoop *loop = plex_event_loop_create(registry);
    Plex *plex = plex_create(registry, "args");
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(plex, "item", &calls);
    PlexPostgres *pg = plex_postgres_create(plex, "");
    assert_non_null(pg);

    assert_int_equal(plex_postgres_query(NULL, item, "SELECT 1"), -EINVAL);
    assert_int_equal(plex_postgres_query(pg, NULL, "SELECT 1"), -EINVAL);
    assert_int_equal(plex_postgres_query(pg, item, NULL), -EINVAL);
    assert_int_equal(plex_postgres_query(pg, item, "SELECT 1"), -ENOTCONN);

    const char *values[2] = {"a", "b"};
    const int lengths[2] = {1, 1};
    const int binary[2] = {1, 1};
    const int bogus[2] = {0, 2};
    PlexPostgresParams negative = {.count = -1};
    PlexPostgresParams too_many = {.count = 65536, .values = values};
    PlexPostgresParams no_values = {.count = 2};
    PlexPostgresParams no_lengths = {.count = 2, .values = values, .formats = binary};
    PlexPostgresParams bad_format = {.count = 2, .values = values, .formats = bogus};
    PlexPostgresParams bad_result = {.count = 2, .values = values, .result_format = 2};
    PlexPostgresParams good = {.count = 2, .values = values, .lengths = lengths, .formats = binary};
    const PlexPostgresParams *bad[] = {&negative,   &too_many,   &no_values,
                                       &no_lengths, &bad_format, &bad_result};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(plex_postgres_query_params(pg, item, "SELECT $1", bad[i]), -EINVAL);
        assert_int_equal(plex_postgres_query_prepared(pg, item, "s", bad[i]), -EINVAL);
    }
    assert_int_equal(plex_postgres_query_params(NULL, item, "SELECT 1", &good), -EINVAL);
    assert_int_equal(plex_postgres_query_params(pg, NULL, "SELECT 1", &good), -EINVAL);
    assert_int_equal(plex_postgres_query_params(pg, item, NULL, &good), -EINVAL);
    assert_int_equal(plex_postgres_query_params(pg, item, "SELECT $1", &good), -ENOTCONN);
    assert_int_equal(plex_postgres_query_params(pg, item, "SELECT 1", NULL), -ENOTCONN);
    assert_int_equal(plex_postgres_prepare(NULL, item, "s", "SELECT 1", 0, NULL), -EINVAL);
    assert_int_equal(plex_postgres_prepare(pg, NULL, "s", "SELECT 1", 0, NULL), -EINVAL);
    assert_int_equal(plex_postgres_prepare(pg, item, NULL, "SELECT 1", 0, NULL), -EINVAL);
    assert_int_equal(plex_postgres_prepare(pg, item, "s", NULL, 0, NULL), -EINVAL);
    assert_int_equal(plex_postgres_prepare(pg, item, "s", "SELECT 1", -1, NULL), -EINVAL);
    assert_int_equal(plex_postgres_prepare(pg, item, "s", "SELECT 1", 0, NULL), -ENOTCONN);
    assert_int_equal(plex_postgres_query_prepared(NULL, item, "s", NULL), -EINVAL);
    assert_int_equal(plex_postgres_query_prepared(pg, NULL, "s", NULL), -EINVAL);
    assert_int_equal(plex_postgres_query_prepared(pg, item, NULL, NULL), -EINVAL);

    errno = 0;
    assert_null(plex_postgres_result_take(NULL));
    assert_int_equal(errno, EINVAL);
    PlexEvent empty = {0};
    errno = 0;
    assert_null(plex_postgres_result_take(&empty));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_postgres_sqlstate(NULL));
    assert_null(plex_postgres_sqlstate(&empty));
    assert_null(plex_postgres_notification(NULL));
    assert_null(plex_postgres_notification(&empty));

    assert_int_equal(plex_postgres_listen(NULL, item), -EINVAL);
    assert_int_equal(plex_postgres_listen(pg, NULL), -EINVAL);
    assert_int_equal(plex_postgres_listen(pg, item), -ENOTCONN);
    assert_int_equal(plex_postgres_unlisten(NULL), -EINVAL);
    assert_int_equal(plex_postgres_unlisten(pg), -ENOENT);

    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(calls.success + calls.error, 0);
    assert_int_equal(calls.cleanup, 1);
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
}

static void test_pool_arguments(void **state)
{
    (void)state;
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoop *loop = plex_event_loop_create(registry);
    Plex *plex = plex_create(registry, "args");
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(plex, "item", &calls);
    PlexPostgresPoolConfig too_many = {.connections = 65};
    PlexPostgresPoolConfig negative = {.connect_timeout_ns = -1};
    PlexPostgresPoolConfig negative_backoff = {.backoff_min_ns = -1};

    errno = 0;
    assert_null(plex_postgres_pool_create(NULL, loop, "", NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(plex, NULL, "", NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(plex, loop, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(plex, loop, "no_such_option=1", NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(plex, loop, "", &too_many));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(plex, loop, "", &negative));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_postgres_pool_create(plex, loop, "", &negative_backoff));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(plex_postgres_pool_destroy(NULL), -EINVAL);
    assert_int_equal(plex_postgres_pool_query(NULL, item, "SELECT 1"), -EINVAL);
    assert_int_equal(plex_postgres_pool_query_params(NULL, item, "SELECT 1", NULL), -EINVAL);
    assert_int_equal(plex_postgres_pool_connected(NULL), 0);
    assert_int_equal(plex_postgres_pool_queued(NULL), 0);
    assert_null(plex_postgres_pool_connection(NULL, 0));

    /* A pool on a port nobody serves: it exists, it is not connected. */
    PlexPostgresPoolConfig one = {.connections = 1};
    PlexPostgresPool *pool = plex_postgres_pool_create(plex, loop, "host=127.0.0.1 port=1", &one);
    assert_non_null(pool);
    assert_int_equal(plex_postgres_pool_query(pool, NULL, "SELECT 1"), -EINVAL);
    assert_int_equal(plex_postgres_pool_query(pool, item, NULL), -EINVAL);
    PlexPostgresParams negative_params = {.count = -1};
    assert_int_equal(plex_postgres_pool_query_params(pool, item, "SELECT 1", &negative_params),
                     -EINVAL);
    /* Its connections belong to it. */
    PlexPostgres *pooled = plex_postgres_pool_connection(pool, 0);
    assert_non_null(pooled);
    assert_int_equal(plex_postgres_destroy(pooled), -EINVAL);
    assert_int_equal(plex_postgres_close(pooled, item), -EINVAL);
    assert_int_equal(plex_postgres_connect(loop, pooled, item, 0), -EINVAL);
    assert_int_equal(plex_postgres_pool_destroy(pool), 0);

    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(calls.success + calls.error, 0);
    assert_int_equal(calls.cleanup, 1);
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
}

static void test_item_of_dead_flow(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    Plex *dead = plex_create(fixture->registry, "dead");
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(dead, "item", &calls);
    plex_pin(dead); /* keeps its memory, as an operation in flight would */
    assert_int_equal(plex_destroy(dead), 0);
    assert_int_equal(plex_postgres_query(pg, item, "SELECT 1"), -ESTALE);
    assert_int_equal(plex_postgres_listen(pg, item), -ESTALE);
    assert_int_equal(plex_postgres_close(pg, item), -ESTALE);
    assert_int_equal(calls.success + calls.error, 0);
    assert_int_equal(calls.cleanup, 1);
    plex_unpin(dead);
    /* A flow on another loop cannot use this connection. */
    PlexEventLoop *other = plex_event_loop_create(fixture->registry);
    Plex *stranger = plex_create(fixture->registry, "stranger");
    PgCalls timer_calls = {0};
    PlexItem *tick = pg_counting_item(stranger, "tick", &timer_calls);
    PlexTimer *timer = plex_timer_create(stranger, tick, 1000 * PG_MS, false);
    assert_int_equal(plex_timer_add(other, timer), 0);
    assert_int_equal(plex_postgres_query(pg, tick, "SELECT 1"), -EXDEV);
    plex_event_loop_destroy(other);
    assert_int_equal(timer_calls.cleanup, 1);
    assert_int_equal(plex_destroy(owner), 0);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_arguments),
        cmocka_unit_test(test_query_arguments),
        cmocka_unit_test(test_pool_arguments),
        cmocka_unit_test_setup_teardown(test_item_of_dead_flow, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Postgres queries against a real server: the connect -> query -> process
 * chain, multi-statement strings, parameters read back verbatim, SQL errors
 * with SQLSTATE, a 100,000-row result, prepared statements, queue order and
 * cap, result ownership, graceful close and reconnect, an idle connection
 * that does not spin. Every test counts handler and cleanup calls and ends
 * by destroying the loop and the registry.
 */
#include "pg_support.h"

/* ---- connect -> query -> process ---------------------------------------- */

typedef struct Chain {
    PlexPostgres *pg;
    PlexItem *query;
    int connected;
    int queried;
    int errors;
    int cleanups;
    int ended;
    int end_status;
    int value;
} Chain;

static void chain_connected(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    Chain *chain = plex_user_data(plex);
    chain->connected++;
    assert_int_equal(event->result, 0);
    assert_ptr_equal(event->postgres, chain->pg);
    assert_int_equal(plex_postgres_query(chain->pg, chain->query, "SELECT 1 + 1"), 0);
}

static void chain_process(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    Chain *chain = plex_user_data(plex);
    chain->queried++;
    assert_int_equal(event->flags, 0);
    assert_int_equal(event->result, 1); /* one row */
    assert_non_null(event->pg_result);
    assert_int_equal(PQresultStatus(event->pg_result), PGRES_TUPLES_OK);
    chain->value = atoi(PQgetvalue(event->pg_result, 0, 0));
    assert_int_equal(plex_finish(plex), 0);
}

static void chain_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Chain *chain = plex_user_data(plex);
    chain->errors++;
    fail_msg("%s failed: %s (%s)", plex_item_description(item), plex_error_name(event->result),
             plex_postgres_error_message(chain->pg));
}

static void chain_cleanup(Plex *plex, PlexItem *item)
{
    (void)item;
    ((Chain *)plex_user_data(plex))->cleanups++;
}

static void chain_end(Plex *plex, int status)
{
    Chain *chain = plex_user_data(plex);
    chain->ended++;
    chain->end_status = status;
}

static void test_select_one_plus_one_chain(void **state)
{
    PgFixture *fixture = *state;
    Chain chain = {0};
    Plex *plex = plex_create(fixture->registry, "select 1 + 1");
    assert_non_null(plex);
    plex_set_user_data(plex, &chain);
    plex_set_end_handler(plex, chain_end);
    chain.pg = plex_postgres_create(plex, fixture->conninfo);
    assert_non_null(chain.pg);
    PlexItem *connect =
        plex_item_create(plex, "connect", chain_connected, chain_error, chain_cleanup, NULL);
    chain.query = plex_item_create(plex, "query", chain_process, chain_error, chain_cleanup, NULL);
    assert_int_equal(plex_postgres_connect(fixture->loop, chain.pg, connect, PG_CONNECT_TIMEOUT_NS),
                     0);
    PG_RUN_UNTIL(fixture->loop, chain.ended == 1);
    assert_int_equal(chain.value, 2);
    assert_int_equal(chain.connected, 1);
    assert_int_equal(chain.queried, 1);
    assert_int_equal(chain.errors, 0);
    assert_int_equal(chain.cleanups, 2);
    assert_int_equal(chain.end_status, 0);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
}

/* ---- Several results from one query ----------------------------------- */

typedef struct Collected {
    int calls;
    int more;
    int errors;
    int cleanups;
    int results[8];
    char values[8][16];
    char sqlstate[8];
} Collected;

static void collect(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Collected *collected = plex_item_user_data(item);
    assert_true(collected->calls < 8);
    collected->results[collected->calls] = event->result;
    if (event->flags & PLEX_EVENT_MORE)
        collected->more++;
    if (event->result < 0)
        collected->errors++;
    const char *sqlstate = plex_postgres_sqlstate(event);
    if (sqlstate)
        snprintf(collected->sqlstate, sizeof(collected->sqlstate), "%s", sqlstate);
    PGresult *result = event->pg_result;
    if (result && PQntuples(result) > 0)
        snprintf(collected->values[collected->calls], 16, "%s", PQgetvalue(result, 0, 0));
    collected->calls++;
}

static void collect_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Collected *)plex_item_user_data(item))->cleanups++;
}

static void test_multi_statement(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    Collected all = {0}, failing = {0};
    PlexItem *item = plex_item_create(owner, "multi", collect, collect, collect_cleanup, &all);
    PlexItem *bad =
        plex_item_create(owner, "multi bad", collect, collect, collect_cleanup, &failing);
    assert_int_equal(plex_postgres_query(pg, item,
                                         "SELECT 'a'; SELECT 'b', 2;"
                                         "CREATE TEMP TABLE multi_t(x int); INSERT INTO multi_t "
                                         "SELECT generate_series(1, 7); SELECT 'e'"),
                     0);
    assert_int_equal(plex_postgres_query(pg, bad, "SELECT 1; SELECT 1 / 0; SELECT 3"), 0);
    PG_RUN_UNTIL(fixture->loop, all.calls - all.more == 1 && failing.calls - failing.more == 1);
    /* Five statements, five results, in order; only the last is final. */
    assert_int_equal(all.calls, 5);
    assert_int_equal(all.more, 4);
    assert_int_equal(all.errors, 0);
    assert_string_equal(all.values[0], "a");
    assert_string_equal(all.values[1], "b");
    assert_int_equal(all.results[2], 0); /* CREATE */
    assert_int_equal(all.results[3], 7); /* INSERT 0 7 */
    assert_string_equal(all.values[4], "e");
    /* The error stops the string: one result, then the error, final. */
    assert_int_equal(failing.calls, 2);
    assert_int_equal(failing.more, 1);
    assert_string_equal(failing.values[0], "1");
    assert_int_equal(failing.results[1], PLEX_EPG);
    assert_string_equal(failing.sqlstate, "22012"); /* division_by_zero */
    assert_int_equal(plex_destroy(owner), 0);
    assert_int_equal(all.cleanups, 1);
    assert_int_equal(failing.cleanups, 1);
}

/* ---- Parameters stored and read back verbatim -------------------------- */

static const char *const nasty_texts[] = {
    "O'Reilly",
    "it''s \"quoted\" and ''' unbalanced '",
    "back\\slash\\\\ \\x41 \\' \\0 end\\",
    "'); DROP TABLE params_victim; --",
    "Robert'); DROP TABLE students;--",
    "1 OR 1=1",
    "$1 $2 ::text E'\\n' %s %n",
    "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93",
    "",
    "tab\there\nnewline\r\n",
};
#define NASTY_COUNT (sizeof(nasty_texts) / sizeof(nasty_texts[0]))
#define JUNK_LENGTH 1021

typedef struct ParamsState {
    PgCalls create;
    PgCalls inserts;
    PgCalls select;
    PGresult *taken;
} ParamsState;

static void params_selected(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    ParamsState *params = plex_user_data(plex);
    pg_count_success(plex, item, event);
    params->taken = plex_postgres_result_take(event);
    assert_non_null(params->taken);
    /* Taken once only. */
    assert_null(plex_postgres_result_take(event));
}

static void junk_fill(unsigned char *junk, int seed)
{
    for (int i = 0; i < JUNK_LENGTH; i++)
        junk[i] = (unsigned char)(1 + (i * 37 + seed * 11) % 255); /* never 0 */
}

static void test_params_verbatim(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    ParamsState params = {0};
    plex_set_user_data(owner, &params);
    PlexItem *create = pg_counting_item(owner, "create", &params.create);
    PlexItem *insert = pg_counting_item(owner, "insert", &params.inserts);
    PlexItem *select = plex_item_create(owner, "select", params_selected, pg_count_error,
                                        pg_count_cleanup, &params.select);
    assert_int_equal(plex_postgres_query(pg, create,
                                         "CREATE TEMP TABLE params_t(id int, s text, b bytea);"
                                         "CREATE TEMP TABLE params_victim(x int)"),
                     0);
    /* Every insert is queued at once: they wait, packed, behind the create. */
    static unsigned char junk[NASTY_COUNT][JUNK_LENGTH];
    char ids[NASTY_COUNT][8];
    for (size_t i = 0; i < NASTY_COUNT; i++) {
        junk_fill(junk[i], (int)i);
        snprintf(ids[i], sizeof(ids[i]), "%zu", i);
        const char *values[3] = {ids[i], nasty_texts[i], (const char *)junk[i]};
        int lengths[3] = {0, 0, JUNK_LENGTH};
        int formats[3] = {0, 0, 1};
        PlexPostgresParams insert_params = {
            .count = 3, .values = values, .lengths = lengths, .formats = formats};
        assert_int_equal(plex_postgres_query_params(pg, insert,
                                                    "INSERT INTO params_t VALUES ($1, $2, $3)",
                                                    &insert_params),
                         0);
    }
    /* Text out, bytea out in binary. */
    PlexPostgresParams select_params = {.result_format = 1};
    assert_int_equal(
        plex_postgres_query_params(pg, select,
                                   "SELECT s, b, (SELECT count(*) FROM params_victim)::int4 "
                                   "FROM params_t ORDER BY id",
                                   &select_params),
        0);
    PG_RUN_UNTIL(fixture->loop, params.select.last == 1);
    assert_int_equal(params.create.success, 2); /* two statements */
    assert_int_equal(params.create.last, 1);
    assert_int_equal(params.inserts.success, (int)NASTY_COUNT);
    assert_int_equal(params.inserts.error, 0);
    assert_int_equal(params.select.success, 1);
    PGresult *result = params.taken;
    assert_int_equal(PQntuples(result), (int)NASTY_COUNT);
    for (int row = 0; row < (int)NASTY_COUNT; row++) {
        assert_int_equal(PQgetlength(result, row, 0), (int)strlen(nasty_texts[row]));
        assert_memory_equal(PQgetvalue(result, row, 0), nasty_texts[row], strlen(nasty_texts[row]));
        assert_int_equal(PQgetlength(result, row, 1), JUNK_LENGTH);
        assert_memory_equal(PQgetvalue(result, row, 1), junk[row], JUNK_LENGTH);
    }
    /* The injection attempts did nothing: the victim table still exists. */
    assert_int_equal(PQgetlength(result, 0, 2), 4);
    PQclear(result); /* ours: it was taken */
    assert_int_equal(plex_destroy(owner), 0);
    assert_int_equal(params.create.cleanup + params.inserts.cleanup + params.select.cleanup, 3);
}

/* ---- Errors -------------------------------------------------------------- */

static void test_syntax_error_sqlstate(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls bad = {0}, good = {0};
    PlexItem *bad_item = pg_counting_item(owner, "bad", &bad);
    PlexItem *good_item = pg_counting_item(owner, "good", &good);
    assert_int_equal(plex_postgres_query(pg, bad_item, "SELEC 1"), 0);
    assert_int_equal(plex_postgres_query(pg, good_item, "SELECT 42"), 0);
    PG_RUN_UNTIL(fixture->loop, good.last == 1);
    assert_int_equal(bad.error, 1);
    assert_int_equal(bad.success, 0);
    assert_int_equal(bad.result, PLEX_EPG);
    assert_string_equal(bad.sqlstate, "42601");
    /* The connection is fine after an SQL error. */
    assert_int_equal(good.success, 1);
    assert_string_equal(good.value, "42");
    assert_false(plex_postgres_is_broken(pg));
    assert_int_equal(plex_destroy(owner), 0);
    assert_int_equal(bad.cleanup, 1);
    assert_int_equal(good.cleanup, 1);
}

/* ---- A big result ----------------------------------------------------------- */

typedef struct BigState {
    int calls;
    int rows;
    long long sum;
    char last[16];
} BigState;

static void big_result(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    BigState *big = plex_user_data(plex);
    big->calls++;
    big->rows = event->result;
    PGresult *result = event->pg_result;
    assert_int_equal(PQntuples(result), 100000);
    for (int row = 0; row < PQntuples(result); row++)
        big->sum += atoll(PQgetvalue(result, row, 0));
    snprintf(big->last, sizeof(big->last), "%s", PQgetvalue(result, 99999, 1));
}

static void test_large_result(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    BigState big = {0};
    plex_set_user_data(owner, &big);
    PgCalls calls = {0};
    PlexItem *item =
        plex_item_create(owner, "big", big_result, pg_count_error, pg_count_cleanup, &calls);
    assert_int_equal(plex_postgres_query(pg, item,
                                         "SELECT g, 'row ' || g, repeat('x', 40) "
                                         "FROM generate_series(1, 100000) g"),
                     0);
    PG_RUN_UNTIL(fixture->loop, big.calls == 1 || calls.error > 0);
    assert_int_equal(calls.error, 0);
    assert_int_equal(big.rows, 100000);
    assert_true(big.sum == 100000LL * 100001LL / 2);
    assert_string_equal(big.last, "row 100000");
    assert_int_equal(plex_destroy(owner), 0);
    assert_int_equal(calls.cleanup, 1);
}

/* ---- Prepared statements ---------------------------------------------------- */

static void test_prepared(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls prepare = {0}, run = {0}, missing = {0};
    PlexItem *prepare_item = pg_counting_item(owner, "prepare", &prepare);
    PlexItem *run_item = pg_counting_item(owner, "run", &run);
    PlexItem *missing_item = pg_counting_item(owner, "missing", &missing);
    const unsigned int int4[2] = {23, 23};
    assert_int_equal(plex_postgres_prepare(pg, prepare_item, "spx_add", "SELECT $1 + $2", 2, int4),
                     0);
    const char *values[2] = {"40", "2"};
    PlexPostgresParams params = {.count = 2, .values = values};
    assert_int_equal(plex_postgres_query_prepared(pg, run_item, "spx_add", &params), 0);
    assert_int_equal(plex_postgres_query_prepared(pg, missing_item, "spx_nope", NULL), 0);
    PG_RUN_UNTIL(fixture->loop, missing.last == 1);
    assert_int_equal(prepare.success, 1);
    assert_int_equal(run.success, 1);
    assert_string_equal(run.value, "42");
    assert_int_equal(missing.error, 1);
    assert_int_equal(missing.result, PLEX_EPG);
    assert_string_equal(missing.sqlstate, "26000");
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- Order and cap ---------------------------------------------------------- */

#define ORDER_COUNT 200

typedef struct OrderState {
    int next;
    int seen[ORDER_COUNT];
    int errors;
} OrderState;

static void order_result(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    OrderState *order = plex_user_data(plex);
    assert_true(order->next < ORDER_COUNT);
    order->seen[order->next++] = atoi(PQgetvalue(event->pg_result, 0, 0));
}

static void order_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    ((OrderState *)plex_user_data(plex))->errors++;
}

static void test_queue_order_and_cap(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    OrderState order = {0};
    plex_set_user_data(owner, &order);
    PlexItem *item = plex_item_create(owner, "ordered", order_result, order_error, NULL, NULL);
    char sql[64];
    for (int i = 0; i < ORDER_COUNT; i++) {
        snprintf(sql, sizeof(sql), "SELECT %d", i);
        assert_int_equal(plex_postgres_query(pg, item, sql), 0);
    }
    assert_int_equal(plex_postgres_queued(pg), ORDER_COUNT);
    assert_int_equal(plex_item_in_flight(item), ORDER_COUNT);
    PG_RUN_UNTIL(fixture->loop, order.next == ORDER_COUNT);
    for (int i = 0; i < ORDER_COUNT; i++)
        assert_int_equal(order.seen[i], i);
    assert_int_equal(order.errors, 0);
    assert_int_equal(plex_item_in_flight(item), 0);
    /* A cap of 5: the sixth start fails and calls nothing. */
    assert_int_equal(plex_postgres_set_max_queued(pg, 5), 0);
    order.next = 0;
    for (int i = 0; i < 5; i++)
        assert_int_equal(plex_postgres_query(pg, item, "SELECT 7"), 0);
    assert_int_equal(plex_postgres_query(pg, item, "SELECT 8"), -EAGAIN);
    PG_RUN_UNTIL(fixture->loop, order.next == 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(order.seen[i], 7);
    assert_int_equal(plex_postgres_queued(pg), 0);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- Close, then connect again --------------------------------------------- */

static void test_close_and_reconnect(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls first = {0}, second = {0}, closed = {0}, again = {0}, after = {0};
    PlexItem *first_item = pg_counting_item(owner, "first", &first);
    PlexItem *second_item = pg_counting_item(owner, "second", &second);
    PlexItem *close_item = pg_counting_item(owner, "close", &closed);
    PlexItem *again_item = pg_counting_item(owner, "again", &again);
    PlexItem *after_item = pg_counting_item(owner, "after", &after);
    assert_int_equal(plex_postgres_query(pg, first_item, "SELECT pg_sleep(0.05), 1"), 0);
    assert_int_equal(plex_postgres_query(pg, second_item, "SELECT 2"), 0);
    /* Graceful: the queued queries run first. */
    assert_int_equal(plex_postgres_close(pg, close_item), 0);
    assert_int_equal(plex_postgres_close(pg, close_item), -EALREADY);
    assert_int_equal(plex_postgres_query(pg, after_item, "SELECT 3"), -ESHUTDOWN);
    PG_RUN_UNTIL(fixture->loop, closed.last == 1);
    assert_int_equal(first.success, 1);
    assert_int_equal(second.success, 1);
    assert_string_equal(second.value, "2");
    assert_int_equal(closed.success, 1);
    assert_int_equal(closed.result, 0);
    assert_false(plex_postgres_is_connected(pg));
    assert_false(plex_postgres_is_broken(pg));
    assert_int_equal(plex_postgres_query(pg, after_item, "SELECT 3"), -ENOTCONN);
    /* Closing an idle connection reports from the loop, not from the call. */
    assert_int_equal(plex_postgres_reset(pg, again_item, PG_CONNECT_TIMEOUT_NS), 0);
    PG_RUN_UNTIL(fixture->loop, again.last == 1);
    assert_int_equal(again.success, 1);
    assert_int_equal(plex_postgres_close(pg, close_item), 0);
    assert_int_equal(closed.last, 1);
    PG_RUN_UNTIL(fixture->loop, closed.last == 2);
    assert_int_equal(closed.success, 2);
    assert_int_equal(after.success + after.error, 0);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- An idle connection costs nothing ------------------------------------- */

static void test_idle_does_not_spin(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(owner, "query", &calls);
    assert_int_equal(plex_postgres_query(pg, item, "SELECT 1"), 0);
    PG_RUN_UNTIL(fixture->loop, calls.last == 1);
    PlexEventLoopStats before, after;
    assert_int_equal(plex_event_loop_stats(fixture->loop, &before), 0);
    for (int i = 0; i < 20; i++)
        assert_true(plex_event_loop_run_once(fixture->loop, 10 * PG_MS) >= 0);
    assert_int_equal(plex_event_loop_stats(fixture->loop, &after), 0);
    /* Only POLLIN is armed while idle: nothing completes. */
    assert_int_equal(after.completions - before.completions, 0);
    /* The idle connection does not keep plex_event_loop_run from returning. */
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- A big parameter: POLLOUT while libpq has unsent bytes ---------------- */

static void test_large_parameter(void **state)
{
    PgFixture *fixture = *state;
    Plex *owner;
    PlexPostgres *pg = pg_connect_now(fixture, &owner, NULL);
    const size_t size = 16u << 20; /* far more than a socket buffer */
    char *big = malloc(size + 1);
    assert_non_null(big);
    for (size_t i = 0; i < size; i++)
        big[i] = (char)('a' + i % 26);
    big[size] = '\0';
    const char *values[1] = {big};
    PlexPostgresParams params = {.count = 1, .values = values};
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(owner, "big", &calls);
    PlexEventLoopStats before, after;
    assert_int_equal(plex_event_loop_stats(fixture->loop, &before), 0);
    assert_int_equal(plex_postgres_query_params(pg, item, "SELECT length($1), md5($1)", &params),
                     0);
    memset(big, 0, size); /* sent or copied already: the call kept nothing */
    PG_RUN_UNTIL(fixture->loop, calls.last == 1);
    assert_int_equal(plex_event_loop_stats(fixture->loop, &after), 0);
    assert_int_equal(calls.success, 1);
    assert_int_equal(atoi(calls.value), (int)size);
    /* Each wake-up moved data: no spinning on a writable socket. */
    assert_true(after.iterations - before.iterations < 5000);
    free(big);
    assert_int_equal(plex_destroy(owner), 0);
}

/* ---- Rule 6: no allocation per query in steady state -------------------- */

typedef struct Counting {
    unsigned long allocations;
} Counting;

static void *counting_alloc(void *context, size_t size)
{
    ((Counting *)context)->allocations++;
    return malloc(size);
}

static void counting_free(void *context, void *pointer)
{
    (void)context;
    free(pointer);
}

typedef struct Pump {
    PlexPostgres *pg;
    int started;
    int finished;
    int errors;
    int target;
} Pump;

static void pump_next(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Pump *pump = plex_user_data(plex);
    if (event->result < 0)
        pump->errors++;
    pump->finished++;
    if (pump->started < pump->target) {
        pump->started++;
        assert_int_equal(plex_postgres_query(pump->pg, item, "SELECT 1"), 0);
    }
}

static void pump_run(PlexEventLoop *loop, Plex *plex, Pump *pump, int count)
{
    PlexItem *item = plex_item_first(plex);
    pump->target = pump->started + count;
    /* Ten in flight: outside pipeline mode nine of them wait, packed. */
    for (int i = 0; i < 10; i++) {
        pump->started++;
        assert_int_equal(plex_postgres_query(pump->pg, item, "SELECT 1"), 0);
    }
    PG_RUN_UNTIL(loop, pump->finished == pump->target);
}

static void steady_state(bool pipeline)
{
    const char *conninfo = plex_test_pg_conninfo_or_skip();
    Counting counting = {0};
    PlexAllocator allocator = {
        .alloc = counting_alloc, .free = counting_free, .context = &counting};
    PlexRegistry *registry = plex_registry_create_with_allocator(&allocator);
    PlexEventLoop *loop = plex_event_loop_create(registry);
    assert_non_null(loop);
    PgFixture fixture = {.registry = registry, .loop = loop, .conninfo = conninfo};
    Plex *plex;
    Pump pump = {0};
    pump.pg = pg_connect_now(&fixture, &plex, NULL);
    assert_int_equal(plex_postgres_set_pipeline(pump.pg, pipeline), 0);
    plex_set_user_data(plex, &pump);
    assert_int_equal(plex_item_remove(plex, plex_item_first(plex)), 0); /* the connect step */
    plex_item_create(plex, "pump", pump_next, pump_next, NULL, NULL);
    pump_run(loop, plex, &pump, 200); /* warm up: pools and buffers grow */
    unsigned long before = counting.allocations;
    assert_true(before > 0); /* the allocator is really in use */
    pump_run(loop, plex, &pump, 2000);
    assert_int_equal(counting.allocations - before, 0);
    assert_int_equal(pump.errors, 0);
    assert_int_equal(plex_destroy(plex), 0);
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
}

static void test_steady_state_allocates_nothing(void **state)
{
    (void)state;
    steady_state(false);
    steady_state(true);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_select_one_plus_one_chain, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_multi_statement, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_params_verbatim, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_syntax_error_sqlstate, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_large_result, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_large_parameter, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_prepared, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_queue_order_and_cap, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_close_and_reconnect, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_idle_does_not_spin, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test(test_steady_state_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

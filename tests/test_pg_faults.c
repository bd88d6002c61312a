/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Postgres faults:
 * - the server killed (pg.sh kill: pg_ctl stop -m immediate) while a
 *   pipelined pool carries queries from 48 flows, then started again: every
 *   query started ends in exactly one handler call, those in flight fail
 *   with PLEX_EPGBROKEN, the pool reconnects by itself and the flows'
 *   queries succeed again;
 * - a server that is unreachable at start (a port nobody listens on; the
 *   test server killed, then started): a single connection and a pool give
 *   a clear error, then recover once it is up;
 * - queries that run past their deadline (plex_postgres_set_query_timeout):
 *   -ETIMEDOUT exactly once, on time; the late result is thrown away; a
 *   query that timed out before it was sent is never sent; later queries
 *   on the connection work; the same in pipeline mode and through a pool.
 *
 * The kills use $SAMPLEX_PG_CTL on $SAMPLEX_PG_DIR (see scripts/pg.sh), so
 * ctest runs this file alone (tests/CMakeLists.txt serialises every test
 * that mentions SAMPLEX_PG_CTL). Without them those tests skip, except
 * under CI=true.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "pg_support.h"

/* ---- Helpers ------------------------------------------------------------ */

/* Runs the loop for `ns` (at least), whatever happens. */
static void run_for(PlexEventLoop *loop, int64_t ns)
{
    uint64_t until = plex_now_ns() + (uint64_t)ns;
    while (plex_now_ns() < until)
        assert_true(plex_event_loop_run_once(loop, 10 * PG_MS) >= 0);
}

static void query_now(PgFixture *fixture, PlexPostgres *pg, Plex *plex, const char *sql,
                      PgCalls *calls)
{
    memset(calls, 0, sizeof(*calls));
    PlexItem *item = pg_counting_item(plex, "query", calls);
    assert_int_equal(plex_postgres_query(pg, item, sql), 0);
    PG_RUN_UNTIL(fixture->loop, calls->last == 1);
    assert_int_equal(plex_item_remove(plex, item), 0);
}

/* ---- Server killed under a pipelined pool ------------------------------- */

#define CHAOS_FLOWS 48
#define CHAOS_SLEEPERS 4 /* flows whose first query sleeps: surely in flight at the kill */

typedef struct Chaos Chaos;

typedef struct Client {
    Chaos *chaos;
    Plex *plex;
    PlexItem *item;
    int index;
    bool in_flight; /* a query started and its handler has not run yet */
    bool waiting;   /* the last start failed: retry from the test loop */
    int started, ended, doubled, more;
    int success, broken, other;
    int first_result; /* the first query's outcome */
    int cleanup;
} Client;

struct Chaos {
    PlexPostgresPool *pool;
    PlexPostgresPool *sleeper_pool; /* one pipelined connection for the sleeps */
    Plex *pool_flow;
    bool stopping;
    Client clients[CHAOS_FLOWS];
    int start_errors; /* starts refused (-ENOTCONN, -EAGAIN, PLEX_EPGBROKEN) */
};

static void client_start(Client *client)
{
    /* The sleepers' first query blocks the sleeper pool's pipeline for 30 s
     * (the kill comes first); every other query is quick, on the main pool. */
    bool sleep = client->index < CHAOS_SLEEPERS && client->started == 0;
    Chaos *chaos = client->chaos;
    int rc = plex_postgres_pool_query(sleep ? chaos->sleeper_pool : chaos->pool, client->item,
                                      sleep ? "SELECT pg_sleep(30)" : "SELECT 1");
    if (rc == 0) {
        client->in_flight = true;
        client->waiting = false;
        client->started++;
        return;
    }
    if (rc != -ENOTCONN && rc != -EAGAIN && rc != PLEX_EPGBROKEN)
        fail_msg("pool query start: %s", plex_strerror(rc));
    client->chaos->start_errors++;
    client->waiting = true;
}

static void client_done(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Client *client = plex_item_user_data(item);
    if (event->flags & PLEX_EVENT_MORE)
        client->more++;
    if (!client->in_flight) {
        client->doubled++; /* a second call for one query */
        return;
    }
    client->in_flight = false;
    if (client->ended++ == 0)
        client->first_result = event->result;
    if (event->result >= 0)
        client->success++;
    else if (event->result == PLEX_EPGBROKEN)
        client->broken++;
    else
        client->other++;
    if (!client->chaos->stopping)
        client_start(client);
}

static void client_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Client *)plex_item_user_data(item))->cleanup++;
}

static int chaos_count(const Chaos *chaos, size_t offset)
{
    int total = 0;
    for (int i = 0; i < CHAOS_FLOWS; i++)
        total += *(const int *)(const void *)((const char *)&chaos->clients[i] + offset);
    return total;
}

#define CHAOS_SUM(chaos, field) chaos_count((chaos), offsetof(Client, field))

static void chaos_retry(Chaos *chaos)
{
    for (int i = 0; i < CHAOS_FLOWS && !chaos->stopping; i++)
        if (chaos->clients[i].waiting)
            client_start(&chaos->clients[i]);
}

/* Runs the loop (retrying refused starts) until `condition` holds. */
#define CHAOS_RUN_UNTIL(fixture, chaos, condition)                                  \
    do {                                                                            \
        uint64_t chaos_deadline_ = plex_now_ns() + PG_WAIT_NS;                      \
        while (!(condition)) {                                                      \
            assert_true(plex_now_ns() < chaos_deadline_);                           \
            assert_true(plex_event_loop_run_once((fixture)->loop, 5 * PG_MS) >= 0); \
            chaos_retry(chaos);                                                     \
        }                                                                           \
    } while (0)

static bool chaos_all_broken(const Chaos *chaos)
{
    for (int i = 0; i < CHAOS_SLEEPERS; i++)
        if (chaos->clients[i].ended == 0)
            return false;
    return plex_postgres_pool_connected(chaos->pool) == 0 &&
           plex_postgres_pool_connected(chaos->sleeper_pool) == 0;
}

static bool chaos_idle(const Chaos *chaos)
{
    for (int i = 0; i < CHAOS_FLOWS; i++)
        if (chaos->clients[i].in_flight)
            return false;
    return true;
}

static void chaos_setup(PgFixture *fixture, Chaos *chaos)
{
    chaos->pool_flow = plex_create(fixture->registry, "pool owner");
    assert_non_null(chaos->pool_flow);
    PlexPostgresPoolConfig config = {.connections = 4,
                                     .pipeline = true,
                                     .backoff_min_ns = 20 * PG_MS,
                                     .backoff_max_ns = 200 * PG_MS};
    chaos->pool = plex_postgres_pool_create(chaos->pool_flow, fixture->loop, "", &config);
    assert_non_null(chaos->pool);
    config.connections = 1;
    chaos->sleeper_pool = plex_postgres_pool_create(chaos->pool_flow, fixture->loop, "", &config);
    assert_non_null(chaos->sleeper_pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(chaos->pool) == 4 &&
                                    plex_postgres_pool_connected(chaos->sleeper_pool) == 1);
    for (int i = 0; i < CHAOS_FLOWS; i++) {
        Client *client = &chaos->clients[i];
        client->chaos = chaos;
        client->index = i;
        client->plex = plex_create(fixture->registry, "client");
        assert_non_null(client->plex);
        client->item = plex_item_create(client->plex, "query", client_done, client_done,
                                        client_cleanup, client);
        assert_non_null(client->item);
        client_start(client);
        assert_true(client->in_flight);
    }
}

static void chaos_teardown(PgFixture *fixture, Chaos *chaos)
{
    chaos->stopping = true;
    PG_RUN_UNTIL(fixture->loop, chaos_idle(chaos));
    for (int i = 0; i < CHAOS_FLOWS; i++) {
        Client *client = &chaos->clients[i];
        assert_int_equal(plex_destroy(client->plex), 0);
        assert_int_equal(client->cleanup, 1);
        assert_int_equal(client->doubled, 0);
        assert_int_equal(client->more, 0);
        assert_int_equal(client->other, 0);
        assert_int_equal(client->started, client->ended);
        if (i < CHAOS_SLEEPERS)
            assert_int_equal(client->first_result, PLEX_EPGBROKEN);
    }
    assert_int_equal(plex_destroy(chaos->pool_flow), 0);
    run_for(fixture->loop, 20 * PG_MS);
}

static void test_kill_under_pipelined_pool(void **state)
{
    PgFixture *fixture = *state;
    if (!pg_ctl_or_skip())
        skip();
    Chaos *chaos = calloc(1, sizeof(*chaos));
    assert_non_null(chaos);
    chaos_setup(fixture, chaos);

    /* Load flows; then the crash, with a pipeline on every connection. */
    CHAOS_RUN_UNTIL(fixture, chaos, CHAOS_SUM(chaos, success) >= 2000);
    int before = CHAOS_SUM(chaos, success);
    int in_flight = 0;
    for (int i = 0; i < CHAOS_FLOWS; i++)
        in_flight += chaos->clients[i].in_flight;
    assert_int_equal(in_flight, CHAOS_FLOWS);
    pg_ctl("kill");
    uint64_t down_ns = plex_now_ns();
    CHAOS_RUN_UNTIL(fixture, chaos, chaos_all_broken(chaos));
    /* While it is down, queries keep being refused or failing; none hangs. */
    run_for(fixture->loop, 300 * PG_MS);
    chaos_retry(chaos);
    int broken = CHAOS_SUM(chaos, broken);
    int refused = chaos->start_errors;
    assert_true(broken >= CHAOS_SLEEPERS);
    /* The backoff bounds the reconnects: each of the 5 connections tries at
     * most once per backoff_min_ns (20 ms; it doubles), and each failure
     * fails at most every flow's query. Reconnecting without the backoff
     * fails tens of thousands. */
    int64_t down_ms = (int64_t)(plex_now_ns() - down_ns) / PG_MS;
    int bound = CHAOS_FLOWS * 5 * (int)(2 + down_ms / 20);
    if (broken > bound)
        fail_msg("%d queries failed in %lld ms while the server was down (bound %d): "
                 "the pool reconnects without backing off",
                 broken, (long long)down_ms, bound);
    assert_int_equal(plex_postgres_pool_connected(chaos->pool), 0);

    pg_ctl("start");
    uint64_t up_ns = plex_now_ns();
    int down_success = CHAOS_SUM(chaos, success) - before;
    CHAOS_RUN_UNTIL(fixture, chaos,
                    plex_postgres_pool_connected(chaos->pool) == 4 &&
                        plex_postgres_pool_connected(chaos->sleeper_pool) == 1);
    int64_t reconnect_ms = (int64_t)(plex_now_ns() - up_ns) / PG_MS;
    int restarted = CHAOS_SUM(chaos, success);
    CHAOS_RUN_UNTIL(fixture, chaos, CHAOS_SUM(chaos, success) >= restarted + 2000);
    for (int i = 0; i < CHAOS_FLOWS; i++)
        assert_true(chaos->clients[i].success > 0);
    print_message("pool under a crash: %d queries answered before the kill (%d just after), "
                  "%d failed with PLEX_EPGBROKEN, %d starts refused while down; "
                  "reconnected %lld ms after the server was up, %d answered while the pools "
                  "filled, %d after; %d started, %d handler calls, 0 twice\n",
                  before, down_success, broken, refused, (long long)reconnect_ms,
                  restarted - before - down_success, CHAOS_SUM(chaos, success) - restarted,
                  CHAOS_SUM(chaos, started), CHAOS_SUM(chaos, ended));
    chaos_teardown(fixture, chaos);
    free(chaos);
}

/* ---- Server killed while a 64 MiB query is going out --------------------- */

static void test_kill_mid_send(void **state)
{
    PgFixture *fixture = *state;
    if (!pg_ctl_or_skip())
        skip();
    Plex *plex;
    PlexPostgres *pg = pg_connect_now(fixture, &plex, NULL);
    assert_int_equal(plex_postgres_set_pipeline(pg, true), 0);
    size_t size = (size_t)64 << 20;
    char *big = malloc(size + 1);
    assert_non_null(big);
    memset(big, 'b', size);
    big[size] = '\0';
    const char *values[1] = {big};
    PlexPostgresParams params = {.count = 1, .values = values};
    PgCalls calls[11];
    memset(calls, 0, sizeof(calls));
    PlexItem *item = pg_counting_item(plex, "big", &calls[0]);
    assert_int_equal(plex_postgres_query_params(pg, item, "SELECT length($1)", &params), 0);
    free(big); /* copied or sent by now */
    for (int i = 1; i < 11; i++) {
        item = pg_counting_item(plex, "behind", &calls[i]);
        assert_int_equal(plex_postgres_query(pg, item, "SELECT 1"), 0);
    }
    /* A few iterations: the query is on its way, not all of it sent. */
    for (int i = 0; i < 3; i++)
        assert_true(plex_event_loop_run_once(fixture->loop, 5 * PG_MS) >= 0);
    assert_int_equal(calls[0].last, 0);
    pg_ctl("kill");
    int finished = 0;
    uint64_t deadline = plex_now_ns() + PG_WAIT_NS;
    while (finished < 11) {
        assert_true(plex_now_ns() < deadline);
        assert_true(plex_event_loop_run_once(fixture->loop, 20 * PG_MS) >= 0);
        finished = 0;
        for (int i = 0; i < 11; i++)
            finished += calls[i].last;
    }
    run_for(fixture->loop, 20 * PG_MS);
    for (int i = 0; i < 11; i++) {
        assert_int_equal(calls[i].last, 1);
        assert_int_equal(calls[i].more, 0);
        assert_int_equal(calls[i].error, 1);
        assert_int_equal(calls[i].result, PLEX_EPGBROKEN);
    }
    assert_true(plex_postgres_is_broken(pg));
    pg_ctl("start");
    PgCalls reset = {0}, after;
    PlexItem *reset_item = pg_counting_item(plex, "reset", &reset);
    assert_int_equal(plex_postgres_reset(pg, reset_item, PG_CONNECT_TIMEOUT_NS), 0);
    PG_RUN_UNTIL(fixture->loop, reset.last == 1);
    assert_int_equal(reset.success, 1);
    query_now(fixture, pg, plex, "SELECT 'after'", &after);
    assert_int_equal(after.success, 1);
    assert_string_equal(after.value, "after");
    assert_int_equal(plex_destroy(plex), 0);
    for (int i = 0; i < 11; i++)
        assert_int_equal(calls[i].cleanup, 1);
}

/* ---- Unreachable at start ------------------------------------------------ */

/* A port on 127.0.0.1 that refuses connections: bound, never listening. */
static int refusing_port(int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    socklen_t length = sizeof(address);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
    *fd_out = fd;
    return ntohs(address.sin_port);
}

/* A connect that must fail: PLEX_EPGBROKEN once, with libpq's reason. */
static void connect_refused(PgFixture *fixture, Plex *plex, PlexPostgres *pg)
{
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(plex, "connect", &calls);
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, item, PG_CONNECT_TIMEOUT_NS), 0);
    PG_RUN_UNTIL(fixture->loop, calls.last == 1);
    run_for(fixture->loop, 20 * PG_MS); /* nothing more comes */
    assert_int_equal(calls.error, 1);
    assert_int_equal(calls.success, 0);
    assert_int_equal(calls.last, 1);
    assert_int_equal(calls.result, PLEX_EPGBROKEN);
    assert_true(plex_postgres_is_broken(pg));
    const char *message = plex_postgres_error_message(pg);
    print_message("connect refused: %s\n", message);
    if (!strstr(message, "refused"))
        fail_msg("unclear error: '%s'", message);
    PgCalls refused = {0};
    PlexItem *query = pg_counting_item(plex, "refused", &refused);
    assert_int_equal(plex_postgres_query(pg, query, "SELECT 1"), PLEX_EPGBROKEN);
    assert_int_equal(plex_item_remove(plex, query), 0);
    assert_int_equal(refused.success + refused.error, 0);
    assert_int_equal(plex_item_remove(plex, item), 0);
}

/* A pool that cannot connect: nothing connected, queries refused at once
 * (-ENOTCONN) or failed once (PLEX_EPGBROKEN, queued on a connection that
 * was trying again). */
static void pool_refused(PgFixture *fixture, Plex *plex, PlexPostgresPool *pool)
{
    run_for(fixture->loop, 150 * PG_MS);
    assert_int_equal(plex_postgres_pool_connected(pool), 0);
    for (int i = 0; i < 5; i++) {
        PgCalls calls = {0};
        PlexItem *item = pg_counting_item(plex, "pooled", &calls);
        int rc = plex_postgres_pool_query(pool, item, "SELECT 1");
        if (rc == 0) {
            PG_RUN_UNTIL(fixture->loop, calls.last == 1);
            assert_int_equal(calls.error, 1);
            assert_int_equal(calls.result, PLEX_EPGBROKEN);
        } else {
            assert_int_equal(rc, -ENOTCONN);
        }
        assert_int_equal(plex_item_remove(plex, item), 0);
        run_for(fixture->loop, 30 * PG_MS);
    }
    /* A connection trying again has cleared its message: wait for one that
     * failed. */
    PlexPostgres *first = plex_postgres_pool_connection(pool, 0);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_is_broken(first));
    const char *message = plex_postgres_error_message(first);
    if (!strstr(message, "refused"))
        fail_msg("unclear pool error: '%s'", message);
}

static void test_unreachable_port(void **state)
{
    PgFixture *fixture = *state;
    int fd;
    int port = refusing_port(&fd);
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d", port);
    Plex *plex = plex_create(fixture->registry, "owner");
    PlexPostgres *pg = plex_postgres_create(plex, conninfo);
    assert_non_null(pg);
    connect_refused(fixture, plex, pg);
    connect_refused(fixture, plex, pg); /* and again: same answer, nothing stuck */
    PlexPostgresPoolConfig config = {
        .connections = 2, .backoff_min_ns = 10 * PG_MS, .backoff_max_ns = 40 * PG_MS};
    PlexPostgresPool *pool = plex_postgres_pool_create(plex, fixture->loop, conninfo, &config);
    assert_non_null(pool);
    pool_refused(fixture, plex, pool);
    assert_int_equal(plex_destroy(plex), 0);
    run_for(fixture->loop, 20 * PG_MS);
    close(fd);
}

static void test_server_down_at_start_then_up(void **state)
{
    PgFixture *fixture = *state;
    if (!pg_ctl_or_skip())
        skip();
    pg_ctl("kill");
    Plex *plex = plex_create(fixture->registry, "owner");
    PlexPostgres *pg = plex_postgres_create(plex, "");
    assert_non_null(pg);
    connect_refused(fixture, plex, pg);
    PlexPostgresPoolConfig config = {
        .connections = 2, .backoff_min_ns = 20 * PG_MS, .backoff_max_ns = 100 * PG_MS};
    PlexPostgresPool *pool = plex_postgres_pool_create(plex, fixture->loop, "", &config);
    assert_non_null(pool);
    pool_refused(fixture, plex, pool);

    pg_ctl("start");
    /* The single connection: reconnected when asked. */
    PgCalls reset = {0}, calls;
    PlexItem *reset_item = pg_counting_item(plex, "reset", &reset);
    assert_int_equal(plex_postgres_reset(pg, reset_item, PG_CONNECT_TIMEOUT_NS), 0);
    PG_RUN_UNTIL(fixture->loop, reset.last == 1);
    if (reset.success != 1)
        fail_msg("reset failed: %s", plex_postgres_error_message(pg));
    query_now(fixture, pg, plex, "SELECT 'single'", &calls);
    assert_int_equal(calls.success, 1);
    assert_string_equal(calls.value, "single");
    /* The pool: by itself. */
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 2);
    PgCalls pooled = {0};
    PlexItem *item = pg_counting_item(plex, "pooled", &pooled);
    assert_int_equal(plex_postgres_pool_query(pool, item, "SELECT 'pool'"), 0);
    PG_RUN_UNTIL(fixture->loop, pooled.last == 1);
    assert_int_equal(pooled.success, 1);
    assert_string_equal(pooled.value, "pool");
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(reset.cleanup + pooled.cleanup, 2);
}

/* ---- Query deadlines ------------------------------------------------------ */

#define DEADLINE_NS (200 * PG_MS)

typedef struct Timed {
    PgCalls calls;
    uint64_t started_ns;
    uint64_t ended_ns; /* at the last call */
} Timed;

static void timed_handler(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Timed *timed = plex_item_user_data(item);
    if (event->result >= 0)
        timed->calls.success++;
    else
        timed->calls.error++;
    pg_record(item, event);
    if (!(event->flags & PLEX_EVENT_MORE))
        timed->ended_ns = plex_now_ns();
    (void)plex;
}

static void timed_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Timed *)plex_item_user_data(item))->calls.cleanup++;
}

static PlexItem *timed_query(PlexPostgres *pg, Plex *plex, Timed *timed, const char *sql)
{
    memset(timed, 0, sizeof(*timed));
    PlexItem *item =
        plex_item_create(plex, "timed", timed_handler, timed_handler, timed_cleanup, timed);
    assert_non_null(item);
    timed->started_ns = plex_now_ns();
    assert_int_equal(plex_postgres_query(pg, item, sql), 0);
    return item;
}

static int64_t timed_took_ms(const Timed *timed)
{
    return (int64_t)(timed->ended_ns - timed->started_ns) / PG_MS;
}

static void assert_timed_out(const Timed *timed, int64_t deadline_ns)
{
    assert_int_equal(timed->calls.last, 1);
    assert_int_equal(timed->calls.more, 0);
    assert_int_equal(timed->calls.error, 1);
    assert_int_equal(timed->calls.success, 0);
    assert_int_equal(timed->calls.result, -ETIMEDOUT);
    int64_t took_ns = (int64_t)(timed->ended_ns - timed->started_ns);
    if (took_ns < deadline_ns || took_ns > deadline_ns + 800 * PG_MS)
        fail_msg("timed out after %lld ms, deadline %lld ms", (long long)(took_ns / PG_MS),
                 (long long)(deadline_ns / PG_MS));
}

/* True when the session has temp table `name`: the query that creates it
 * ran. */
static bool table_exists(PgFixture *fixture, PlexPostgres *pg, Plex *plex, const char *name)
{
    char sql[128];
    PgCalls calls;
    snprintf(sql, sizeof(sql), "SELECT to_regclass('pg_temp.%s') IS NOT NULL", name);
    query_now(fixture, pg, plex, sql, &calls);
    assert_int_equal(calls.success, 1);
    return strcmp(calls.value, "t") == 0;
}

static void deadline_case(PgFixture *fixture, bool pipeline)
{
    Plex *plex;
    PlexPostgres *pg = pg_connect_now(fixture, &plex, NULL);
    assert_int_equal(plex_postgres_set_pipeline(pg, pipeline), 0);
    assert_int_equal(plex_postgres_set_query_timeout(pg, -1), -EINVAL);
    assert_int_equal(plex_postgres_set_query_timeout(pg, DEADLINE_NS), 0);

    /* A quick query well inside its deadline is answered as usual. */
    Timed quick, slow, behind, after;
    timed_query(pg, plex, &quick, "SELECT pg_sleep(0.02), 'quick'");
    PG_RUN_UNTIL(fixture->loop, quick.calls.last == 1);
    assert_int_equal(quick.calls.success, 1);

    /* pg_sleep(2) with 200 ms; behind it, one that would create a table. */
    PlexItem *slow_item = timed_query(pg, plex, &slow, "SELECT pg_sleep(2)");
    timed_query(pg, plex, &behind, "CREATE TEMP TABLE never_sent ()");
    PG_RUN_UNTIL(fixture->loop, slow.calls.last == 1 && behind.calls.last == 1);
    assert_timed_out(&slow, DEADLINE_NS);
    assert_timed_out(&behind, DEADLINE_NS);
    assert_true(plex_postgres_is_connected(pg));
    print_message("%s: pg_sleep(2) timed out after %lld ms (deadline 200 ms)\n",
                  pipeline ? "pipeline" : "plain", (long long)timed_took_ms(&slow));

    /* A later query, with room for the late one to finish first. */
    assert_int_equal(plex_postgres_set_query_timeout(pg, 5000 * PG_MS), 0);
    timed_query(pg, plex, &after, "SELECT 'after'");
    PG_RUN_UNTIL(fixture->loop, after.calls.last == 1);
    assert_int_equal(after.calls.success, 1);
    assert_string_equal(after.calls.value, "after");
    /* It waited for the late query (no cancel is sent): ~2 s from its start. */
    assert_true(after.ended_ns - slow.started_ns >= 1900 * PG_MS);
    /* The late result was thrown away: nothing more reached the slow step. */
    run_for(fixture->loop, 20 * PG_MS);
    assert_int_equal(slow.calls.last + slow.calls.more, 1);
    assert_int_equal(behind.calls.last + behind.calls.more, 1);
    assert_int_equal(plex_postgres_queued(pg), 0);
    /* In pipeline mode both went out together; otherwise the second never did. */
    assert_int_equal(table_exists(fixture, pg, plex, "never_sent"), pipeline);
    assert_int_equal(plex_item_remove(plex, slow_item), 0);
    assert_int_equal(slow.calls.cleanup, 1);
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(quick.calls.cleanup + behind.calls.cleanup + after.calls.cleanup, 3);
}

static void test_deadline_plain(void **state)
{
    deadline_case(*state, false);
}

static void test_deadline_pipeline(void **state)
{
    deadline_case(*state, true);
}

/* Deadlines out of order: a later-queued query with a shorter deadline
 * fires first (the timer is re-armed earlier), the longer one on time. */
static void test_deadline_order(void **state)
{
    PgFixture *fixture = *state;
    Plex *plex;
    PlexPostgres *pg = pg_connect_now(fixture, &plex, NULL);
    Timed first, second;
    assert_int_equal(plex_postgres_set_query_timeout(pg, 900 * PG_MS), 0);
    timed_query(pg, plex, &first, "SELECT pg_sleep(2)");
    assert_int_equal(plex_postgres_set_query_timeout(pg, DEADLINE_NS), 0);
    timed_query(pg, plex, &second, "SELECT 2");
    PG_RUN_UNTIL(fixture->loop, second.calls.last == 1);
    assert_timed_out(&second, DEADLINE_NS);
    assert_int_equal(first.calls.last, 0);
    PG_RUN_UNTIL(fixture->loop, first.calls.last == 1);
    assert_timed_out(&first, 900 * PG_MS);
    /* Its flow ends before the late result: nothing is called, nothing leaks. */
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(first.calls.cleanup + second.calls.cleanup, 2);
    run_for(fixture->loop, 50 * PG_MS);
    assert_int_equal(first.calls.last + second.calls.last, 2);
}

/* A handler that queues the next query from the -ETIMEDOUT call, and one
 * that destroys the connection from it: every other query still ends once. */
typedef struct Chain {
    PlexPostgres *pg;
    PlexItem *next_item;
    Timed next;
    bool destroy;
} Chain;

static void chain_timed_out(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Chain *chain = plex_user_data(plex);
    timed_handler(plex, item, event);
    if (chain->destroy) {
        assert_int_equal(plex_postgres_destroy(chain->pg), 0);
        return;
    }
    chain->next.started_ns = plex_now_ns();
    assert_int_equal(plex_postgres_query(chain->pg, chain->next_item, "SELECT 'next'"), 0);
}

static void test_deadline_handlers(void **state)
{
    PgFixture *fixture = *state;
    for (int round = 0; round < 2; round++) {
        Chain chain = {.destroy = round == 1};
        Plex *plex = plex_create(fixture->registry, "chain");
        plex_set_user_data(plex, &chain);
        chain.pg = plex_postgres_create(plex, fixture->conninfo);
        PgCalls connect = {0};
        PlexItem *connect_item = pg_counting_item(plex, "connect", &connect);
        assert_int_equal(plex_postgres_connect(fixture->loop, chain.pg, connect_item, 0), 0);
        PG_RUN_UNTIL(fixture->loop, connect.last == 1);
        assert_int_equal(connect.success, 1);
        assert_int_equal(plex_postgres_set_query_timeout(chain.pg, DEADLINE_NS), 0);
        Timed slow, queued;
        memset(&slow, 0, sizeof(slow));
        PlexItem *slow_item =
            plex_item_create(plex, "slow", timed_handler, chain_timed_out, timed_cleanup, &slow);
        chain.next_item = plex_item_create(plex, "next", timed_handler, timed_handler,
                                           timed_cleanup, &chain.next);
        slow.started_ns = plex_now_ns();
        assert_int_equal(plex_postgres_query(chain.pg, slow_item, "SELECT pg_sleep(1)"), 0);
        /* Queued behind, with a deadline far off (set after it started). */
        assert_int_equal(plex_postgres_set_query_timeout(chain.pg, 10000 * PG_MS), 0);
        timed_query(chain.pg, plex, &queued, "SELECT 'queued'");
        PG_RUN_UNTIL(fixture->loop, slow.calls.last == 1);
        assert_timed_out(&slow, DEADLINE_NS);
        if (chain.destroy) {
            PG_RUN_UNTIL(fixture->loop, queued.calls.last == 1);
            assert_int_equal(queued.calls.result, -ECANCELED);
            assert_int_equal(chain.next.calls.last, 0);
        } else {
            PG_RUN_UNTIL(fixture->loop, queued.calls.last == 1 && chain.next.calls.last == 1);
            assert_int_equal(queued.calls.success, 1);
            assert_string_equal(queued.calls.value, "queued");
            assert_int_equal(chain.next.calls.success, 1);
            assert_string_equal(chain.next.calls.value, "next");
        }
        run_for(fixture->loop, 20 * PG_MS);
        assert_int_equal(slow.calls.last + slow.calls.more, 1);
        assert_int_equal(queued.calls.last, 1);
        assert_int_equal(plex_destroy(plex), 0);
        assert_int_equal(slow.calls.cleanup + queued.calls.cleanup + chain.next.calls.cleanup, 3);
    }
}

/* Through a pool (query_timeout_ns in its config). */
static void test_deadline_pool(void **state)
{
    PgFixture *fixture = *state;
    Plex *plex = plex_create(fixture->registry, "pool owner");
    PlexPostgresPoolConfig config = {
        .connections = 2, .pipeline = true, .query_timeout_ns = DEADLINE_NS};
    PlexPostgresPool *pool = plex_postgres_pool_create(plex, fixture->loop, "", &config);
    assert_non_null(pool);
    PG_RUN_UNTIL(fixture->loop, plex_postgres_pool_connected(pool) == 2);
    Timed slow, quick;
    memset(&slow, 0, sizeof(slow));
    memset(&quick, 0, sizeof(quick));
    PlexItem *slow_item =
        plex_item_create(plex, "slow", timed_handler, timed_handler, timed_cleanup, &slow);
    PlexItem *quick_item =
        plex_item_create(plex, "quick", timed_handler, timed_handler, timed_cleanup, &quick);
    slow.started_ns = plex_now_ns();
    assert_int_equal(plex_postgres_pool_query(pool, slow_item, "SELECT pg_sleep(2)"), 0);
    PG_RUN_UNTIL(fixture->loop, slow.calls.last == 1);
    assert_timed_out(&slow, DEADLINE_NS);
    /* The other connection is free: a quick query goes there and is answered. */
    quick.started_ns = plex_now_ns();
    assert_int_equal(plex_postgres_pool_query(pool, quick_item, "SELECT 'quick'"), 0);
    PG_RUN_UNTIL(fixture->loop, quick.calls.last == 1);
    assert_int_equal(quick.calls.success, 1);
    assert_true(timed_took_ms(&quick) < 1000);
    assert_int_equal(plex_postgres_pool_queued(pool), 1); /* the late one, step-less */
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(slow.calls.cleanup + quick.calls.cleanup, 2);
    assert_int_equal(slow.calls.last, 1);
}

/* ---- A server that never answers ------------------------------------------ */

/* A server that accepts (the kernel's backlog does) and then says nothing:
 * only samplex's connect deadline ends the wait. */
static void test_unanswering_server(void **state)
{
    PgFixture *fixture = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    assert_int_equal(listen(fd, 16), 0); /* never accepted */
    assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
    char conninfo[128];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d", ntohs(address.sin_port));

    Plex *plex = plex_create(fixture->registry, "owner");
    PlexPostgres *pg = plex_postgres_create(plex, conninfo);
    assert_non_null(pg);
    Timed connect, queued;
    memset(&connect, 0, sizeof(connect));
    PlexItem *connect_item =
        plex_item_create(plex, "connect", timed_handler, timed_handler, timed_cleanup, &connect);
    connect.started_ns = plex_now_ns();
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, connect_item, 300 * PG_MS), 0);
    timed_query(pg, plex, &queued, "SELECT 1"); /* waits for the connect */
    PG_RUN_UNTIL(fixture->loop, connect.calls.last == 1 && queued.calls.last == 1);
    assert_timed_out(&connect, 300 * PG_MS);
    assert_int_equal(queued.calls.error, 1);
    assert_int_equal(queued.calls.result, PLEX_EPGBROKEN);
    print_message("unanswering server: %s\n", plex_postgres_error_message(pg));
    assert_non_null(strstr(plex_postgres_error_message(pg), "timed out"));

    /* A pool against it: nothing connected, starts refused or failed. */
    PlexPostgresPoolConfig config = {.connections = 2,
                                     .connect_timeout_ns = 100 * PG_MS,
                                     .backoff_min_ns = 10 * PG_MS,
                                     .backoff_max_ns = 20 * PG_MS};
    PlexPostgresPool *pool = plex_postgres_pool_create(plex, fixture->loop, conninfo, &config);
    assert_non_null(pool);
    run_for(fixture->loop, 400 * PG_MS);
    assert_int_equal(plex_postgres_pool_connected(pool), 0);
    PgCalls pooled = {0};
    PlexItem *item = pg_counting_item(plex, "pooled", &pooled);
    int rc = plex_postgres_pool_query(pool, item, "SELECT 1");
    if (rc == 0) {
        PG_RUN_UNTIL(fixture->loop, pooled.last == 1);
        assert_int_equal(pooled.result, PLEX_EPGBROKEN);
    } else {
        assert_int_equal(rc, -ENOTCONN);
    }
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(connect.calls.cleanup + queued.calls.cleanup + pooled.cleanup, 3);
    run_for(fixture->loop, 20 * PG_MS);
    close(fd);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(280);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_deadline_plain, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_pipeline, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_order, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_handlers, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_pool, pg_fixture_setup, pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unreachable_port, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unanswering_server, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_kill_under_pipelined_pool, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_server_down_at_start_then_up, pg_fixture_setup,
                                        pg_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_kill_mid_send, pg_fixture_setup, pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

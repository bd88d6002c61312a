/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers for the PostgreSQL tests (test_pg_*.c). Header-only.
 *
 * - PgFixture: a registry, a loop and the test server's conninfo (the test
 *   skips without a server, and fails under CI=true: support.h).
 * - PG_RUN_UNTIL(loop, condition): runs loop iterations until the
 *   condition holds; fails the test after PG_WAIT_NS. No sleeps: it waits
 *   on the ring.
 * - PgCalls: what a step's handlers saw; pg_count_* are handlers that fill
 *   the PgCalls in the item's user_data, so tests can assert "exactly once".
 * - pg_connect_now(): a connection owned by a fresh flow, connected.
 * - pg_unique(): a name (table, channel) no concurrent test uses.
 */
#ifndef SAMPLEX_TESTS_PG_SUPPORT_H
#define SAMPLEX_TESTS_PG_SUPPORT_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include <samplex/samplex.h>

#include "support.h"

#define PG_MS 1000000LL
#define PG_WAIT_NS (60 * 1000 * PG_MS)
#define PG_CONNECT_TIMEOUT_NS (10 * 1000 * PG_MS)

#define PG_RUN_UNTIL(loop, condition)                                       \
    do {                                                                    \
        uint64_t pg_deadline_ = plex_now_ns() + PG_WAIT_NS;                 \
        while (!(condition)) {                                              \
            assert_true(plex_now_ns() < pg_deadline_);                      \
            assert_true(plex_event_loop_run_once((loop), 50 * PG_MS) >= 0); \
        }                                                                   \
    } while (0)

typedef struct PgFixture {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    const char *conninfo;
} PgFixture;

typedef struct PgCalls {
    int success;            /* on_success calls */
    int error;              /* on_error calls */
    int cleanup;            /* on_cleanup calls */
    int last;               /* calls without PLEX_EVENT_MORE */
    int more;               /* calls with PLEX_EVENT_MORE */
    int result;             /* result of the latest call */
    int rows;               /* PQntuples of the latest result */
    char value[64];         /* first value of the latest result, if any */
    char sqlstate[8];       /* SQLSTATE of the latest result, if any */
    PlexPostgres *postgres; /* event->postgres of the latest call */
} PgCalls;

static inline int pg_fixture_setup(void **state)
{
    PgFixture *fixture = calloc(1, sizeof(*fixture));
    assert_non_null(fixture);
    fixture->conninfo = plex_test_pg_conninfo_or_skip();
    fixture->registry = plex_registry_create();
    assert_non_null(fixture->registry);
    fixture->loop = plex_event_loop_create(fixture->registry);
    assert_non_null(fixture->loop);
    *state = fixture;
    return 0;
}

static inline int pg_fixture_teardown(void **state)
{
    PgFixture *fixture = *state;
    plex_event_loop_destroy(fixture->loop);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
    plex_registry_destroy(fixture->registry);
    free(fixture);
    return 0;
}

static inline void pg_record(PlexItem *item, const PlexEvent *event)
{
    PgCalls *calls = plex_item_user_data(item);
    if (event->flags & PLEX_EVENT_MORE)
        calls->more++;
    else
        calls->last++;
    calls->result = event->result;
    calls->postgres = event->postgres;
    calls->rows = 0;
    calls->value[0] = '\0';
    calls->sqlstate[0] = '\0';
    if (event->pg_result) {
        PGresult *result = event->pg_result;
        calls->rows = PQntuples(result);
        if (calls->rows > 0 && PQnfields(result) > 0)
            snprintf(calls->value, sizeof(calls->value), "%s", PQgetvalue(result, 0, 0));
    }
    const char *sqlstate = plex_postgres_sqlstate(event);
    if (sqlstate)
        snprintf(calls->sqlstate, sizeof(calls->sqlstate), "%s", sqlstate);
}

static inline void pg_count_success(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    ((PgCalls *)plex_item_user_data(item))->success++;
    pg_record(item, event);
}

static inline void pg_count_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    ((PgCalls *)plex_item_user_data(item))->error++;
    pg_record(item, event);
}

static inline void pg_count_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((PgCalls *)plex_item_user_data(item))->cleanup++;
}

/* A step that counts into `calls`. */
static inline PlexItem *pg_counting_item(Plex *plex, const char *description, PgCalls *calls)
{
    PlexItem *item = plex_item_create(plex, description, pg_count_success, pg_count_error,
                                      pg_count_cleanup, calls);
    assert_non_null(item);
    return item;
}

/* A flow owning a connection to the test server, connected. `calls` (may
 * be NULL) counts the connect step. */
static inline PlexPostgres *pg_connect_now(PgFixture *fixture, Plex **plex_out, PgCalls *calls)
{
    static PgCalls spare;
    if (!calls) {
        memset(&spare, 0, sizeof(spare));
        calls = &spare;
    }
    Plex *plex = plex_create(fixture->registry, "pg owner");
    assert_non_null(plex);
    PlexPostgres *pg = plex_postgres_create(plex, fixture->conninfo);
    assert_non_null(pg);
    PlexItem *connect = pg_counting_item(plex, "connect", calls);
    assert_int_equal(plex_postgres_connect(fixture->loop, pg, connect, PG_CONNECT_TIMEOUT_NS), 0);
    PG_RUN_UNTIL(fixture->loop, calls->last == 1);
    if (calls->success != 1)
        fail_msg("connect failed: %s", plex_postgres_error_message(pg));
    assert_true(plex_postgres_is_connected(pg));
    if (plex_out)
        *plex_out = plex;
    return pg;
}

/* "<prefix>_<pid>": unique among concurrently running tests. */
static inline const char *pg_unique(char *buffer, size_t size, const char *prefix)
{
    snprintf(buffer, size, "%s_%ld", prefix, (long)getpid());
    return buffer;
}

/* The kills and restarts use scripts/pg.sh through $SAMPLEX_PG_CTL on
 * $SAMPLEX_PG_DIR. True when both are set; without them a test skips,
 * except under CI=true, where it fails. A test file that uses them must
 * mention SAMPLEX_PG_CTL itself: tests/CMakeLists.txt runs those serially. */
static inline bool pg_ctl_or_skip(void)
{
    const char *ctl = getenv("SAMPLEX_PG_CTL");
    const char *dir = getenv("SAMPLEX_PG_DIR");
    if (ctl && *ctl && dir && *dir)
        return true;
    if (plex_test_ci())
        fail_msg("CI=true but SAMPLEX_PG_CTL/SAMPLEX_PG_DIR are unset (run scripts/test.sh)");
    return false;
}

/* Runs `scripts/pg.sh COMMAND DIR` (start, kill, restart...); must succeed. */
static inline void pg_ctl(const char *command)
{
    char line[1024];
    snprintf(line, sizeof(line), "\"$SAMPLEX_PG_CTL\" %s \"$SAMPLEX_PG_DIR\" >/dev/null", command);
    assert_int_equal(system(line), 0);
}

#endif /* SAMPLEX_TESTS_PG_SUPPORT_H */

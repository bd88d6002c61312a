/* SPDX-License-Identifier: Apache-2.0 */
/*
 * LISTEN/NOTIFY: a listen step receives every notification (channel,
 * payload, sender pid) with PLEX_EVENT_MORE; unlisten ends it without a
 * handler call; a close ends it with -ECANCELED, once.
 */
#include "pg_support.h"

#define NOTE_MAX 8

typedef struct Notes {
    int count;
    int more;
    int errors;
    int last_result;
    int cleanups;
    char channels[NOTE_MAX][64];
    char payloads[NOTE_MAX][64];
    int pids[NOTE_MAX];
} Notes;

static void note_received(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Notes *notes = plex_item_user_data(item);
    const PGnotify *notify = plex_postgres_notification(event);
    assert_non_null(notify);
    assert_true(notes->count < NOTE_MAX);
    assert_true(event->flags & PLEX_EVENT_MORE);
    assert_int_equal(event->result, notify->be_pid);
    snprintf(notes->channels[notes->count], 64, "%s", notify->relname);
    snprintf(notes->payloads[notes->count], 64, "%s", notify->extra);
    notes->pids[notes->count] = notify->be_pid;
    notes->count++;
    notes->more++;
    /* Not a query result: nothing to take. */
    assert_null(plex_postgres_result_take(event));
}

static void note_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Notes *notes = plex_item_user_data(item);
    notes->errors++;
    notes->last_result = event->result;
    assert_int_equal(event->flags, 0);
}

static void note_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Notes *)plex_item_user_data(item))->cleanups++;
}

static void run_query(PgFixture *fixture, PlexPostgres *pg, Plex *plex, const char *sql,
                      const PlexPostgresParams *params)
{
    PgCalls calls = {0};
    PlexItem *item = pg_counting_item(plex, "query", &calls);
    assert_int_equal(plex_postgres_query_params(pg, item, sql, params), 0);
    PG_RUN_UNTIL(fixture->loop, calls.last == 1);
    assert_int_equal(calls.success, 1);
    assert_int_equal(plex_item_remove(plex, item), 0);
}

static void test_notify_received(void **state)
{
    PgFixture *fixture = *state;
    char channel[64];
    pg_unique(channel, sizeof(channel), "spx_channel");
    Plex *listener_flow, *sender_flow;
    PlexPostgres *listener = pg_connect_now(fixture, &listener_flow, NULL);
    PlexPostgres *sender = pg_connect_now(fixture, &sender_flow, NULL);
    Notes notes = {0};
    PlexItem *listen =
        plex_item_create(listener_flow, "listen", note_received, note_error, note_cleanup, &notes);
    char sql[128];
    snprintf(sql, sizeof(sql), "LISTEN %s", channel);
    run_query(fixture, listener, listener_flow, sql, NULL);
    assert_int_equal(plex_postgres_listen(listener, listen), 0);
    assert_int_equal(plex_postgres_listen(listener, listen), -EBUSY);
    snprintf(sql, sizeof(sql), "NOTIFY %s, 'one'", channel);
    run_query(fixture, sender, sender_flow, sql, NULL);
    const char *values[2] = {channel, "it's \"two\""};
    PlexPostgresParams params = {.count = 2, .values = values};
    run_query(fixture, sender, sender_flow, "SELECT pg_notify($1, $2)", &params);
    values[1] = "";
    run_query(fixture, sender, sender_flow, "SELECT pg_notify($1, $2)", &params);
    PG_RUN_UNTIL(fixture->loop, notes.count == 3);
    int sender_pid = PQbackendPID(plex_postgres_conn(sender));
    for (int i = 0; i < 3; i++) {
        assert_string_equal(notes.channels[i], channel);
        assert_int_equal(notes.pids[i], sender_pid);
    }
    assert_string_equal(notes.payloads[0], "one");
    assert_string_equal(notes.payloads[1], "it's \"two\"");
    assert_string_equal(notes.payloads[2], "");
    /* Unlisten: silent, and nothing more arrives. */
    assert_int_equal(plex_postgres_unlisten(listener), 0);
    assert_int_equal(plex_postgres_unlisten(listener), -ENOENT);
    assert_int_equal(plex_item_in_flight(listen), 0);
    snprintf(sql, sizeof(sql), "NOTIFY %s, 'late'", channel);
    run_query(fixture, sender, sender_flow, sql, NULL);
    /* Let the late notification reach the listener's socket and be read. */
    PgCalls ping = {0};
    PlexItem *ping_item = pg_counting_item(listener_flow, "ping", &ping);
    assert_int_equal(plex_postgres_query(listener, ping_item, "SELECT pg_sleep(0.05)"), 0);
    PG_RUN_UNTIL(fixture->loop, ping.last == 1);
    assert_int_equal(notes.count, 3);
    assert_int_equal(notes.errors, 0);
    /* Listen again; a close ends the step with -ECANCELED, once. */
    PgCalls closed = {0};
    assert_int_equal(plex_postgres_listen(listener, listen), 0);
    assert_int_equal(
        plex_postgres_close(listener, pg_counting_item(listener_flow, "close", &closed)), 0);
    PG_RUN_UNTIL(fixture->loop, closed.last == 1 && notes.errors == 1);
    assert_int_equal(notes.last_result, -ECANCELED);
    assert_int_equal(plex_postgres_listen(listener, listen), -ENOTCONN);
    assert_int_equal(plex_destroy(listener_flow), 0);
    assert_int_equal(plex_destroy(sender_flow), 0);
    assert_int_equal(notes.cleanups, 1);
    assert_int_equal(notes.errors, 1);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_notify_received, pg_fixture_setup,
                                        pg_fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

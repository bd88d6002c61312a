/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Everything the MUD asks Postgres. One connection, in pipeline mode, owned
 * by the world flow and shared by every flow: what the flows queue during
 * one loop iteration leaves together, so the 200 saves of an autosave (or
 * the whole startup) are one round trip.
 *
 * Invariants:
 * - Every value that comes from a player travels as a parameter ($1, $2),
 *   never inside the SQL text. The only SQL built at run time is CREATE
 *   SCHEMA with the operator's --schema, validated and quoted as an
 *   identifier by libpq.
 * - The schema (schema.sql, compiled in) is idempotent and run at every
 *   start.
 * - A query's handler belongs to the flow that queued it: if that flow ends
 *   first (a player vanishes mid-save), no handler runs, and the query still
 *   completes on the server.
 * - A lost connection (Postgres restarted) is noticed by the engine even
 *   while idle; the next query then reconnects first (at most once a second)
 *   and waits behind the reconnect. Queries that were in flight when it was
 *   lost fail and are not retried: the player is told.
 *
 * The flows here:
 *   startup     connect -> schema -> rooms -> exits, then the world starts
 *   autosave    one step, "save-batch", one query per player
 *   final-save  the same, at shutdown; when it ends, shutdown goes on
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mud.h"
#include "schema_sql.h" /* mud_schema_sql: schema.sql, embedded by CMake */

#define CONNECT_TIMEOUT_NS MS_TO_NS(10000)
#define RECONNECT_INTERVAL_NS MS_TO_NS(1000)

static const char load_player_sql[] =
    "INSERT INTO mud_players (name, room_id) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET logins = mud_players.logins + 1, seen_at = now() "
    "RETURNING room_id, logins";

static const char save_player_sql[] =
    "UPDATE mud_players SET room_id = $2, saved_at = now() WHERE name = $1";

static const char rooms_sql[] =
    "SELECT id, title, description, ambience FROM mud_rooms ORDER BY id";
static const char exits_sql[] = "SELECT room_id, direction, target_id FROM mud_exits";

/* Logs a failed query: the server's SQLSTATE and message when it sent one. */
static void log_query_error(const char *what, const PlexEvent *event)
{
    const char *sqlstate = plex_postgres_sqlstate(event);
    const char *message = event->pg_result ? PQresultErrorMessage(event->pg_result) : "";
    if (!*message && event->postgres)
        message = plex_postgres_error_message(event->postgres);
    mud_log("%s failed: %s%s%s %s", what, plex_error_name(event->result),
            sqlstate ? " SQLSTATE " : "", sqlstate ? sqlstate : "", message);
}

/* ---- Startup: connect -> schema -> rooms -> exits ----------------------- */

typedef struct Startup {
    Mud *mud;
    PlexItem *schema;
    PlexItem *rooms;
    PlexItem *exits;
    unsigned statements; /* schema statements queued */
} Startup;

/* Splits the embedded schema.sql into statements: each ends with ';' at the
 * end of a line (see schema.sql). Comment-only pieces are skipped. */
static char *next_statement(char **cursor)
{
    for (char *start = *cursor; *start;) {
        char *end = strstr(start, ";\n");
        if (!end)
            end = start + strlen(start); /* the tail: comments and blanks */
        bool last = *end == '\0';
        *end = '\0';
        *cursor = last ? end : end + 2;
        for (const char *line = start; *line;) {
            line += strspn(line, " \t\n");
            if (*line && strncmp(line, "--", 2) != 0)
                return start; /* has a line of SQL, not only comments */
            line += strcspn(line, "\n");
        }
        start = *cursor;
    }
    return NULL;
}

/* Sets the session's search_path to the private schema (--schema): at
 * start, and again after every reconnect (a new session forgets it). */
static int queue_search_path(Mud *mud, PlexItem *item)
{
    const char *values[] = {mud->schema_identifier};
    PlexPostgresParams params = {.count = 1, .values = values};
    return plex_postgres_query_params(mud->pg, item, "SELECT set_config('search_path', $1, false)",
                                      &params);
}

/* --schema NAME: a private schema, e.g. one per test run. */
static int queue_private_schema(Startup *startup, PlexPostgres *pg, const char *schema)
{
    Mud *mud = startup->mud;
    PGconn *conn = plex_postgres_conn(pg);
    char *identifier = conn ? PQescapeIdentifier(conn, schema, strlen(schema)) : NULL;
    if (!identifier)
        return -ENOMEM;
    snprintf(mud->schema_identifier, sizeof(mud->schema_identifier), "%s", identifier);
    PQfreemem(identifier);
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE SCHEMA IF NOT EXISTS %s", mud->schema_identifier);
    int rc = plex_postgres_query(pg, startup->schema, sql);
    if (rc == 0)
        rc = queue_search_path(mud, startup->schema);
    startup->statements += 2;
    return rc;
}

static int queue_schema(Startup *startup, Plex *plex)
{
    Mud *mud = startup->mud;
    int rc = mud->config.schema ? queue_private_schema(startup, mud->pg, mud->config.schema) : 0;
    /* Statements are split in place: work on a copy in the flow's arena. */
    char *sql = plex_arena_strdup(plex_arena(plex), mud_schema_sql);
    if (!sql)
        return -ENOMEM;
    for (char *cursor = sql, *statement; rc == 0 && (statement = next_statement(&cursor));) {
        rc = plex_postgres_query(mud->pg, startup->schema, statement);
        startup->statements++;
    }
    return rc;
}

static void on_connected(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)event;
    Startup *startup = plex_item_user_data(item);
    /* All of this is queued in one handler, so it leaves in one pipeline. */
    int rc = queue_schema(startup, plex);
    if (rc == 0)
        rc = plex_postgres_query(startup->mud->pg, startup->rooms, rooms_sql);
    if (rc == 0)
        rc = plex_postgres_query(startup->mud->pg, startup->exits, exits_sql);
    if (rc < 0) {
        mud_log("startup: cannot queue the schema: %s", plex_error_name(rc));
        plex_fail(plex, rc);
        return;
    }
    mud_log("startup: connected; %u schema statements and 2 queries sent in one pipeline",
            startup->statements);
}

static void on_connect_failed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Startup *startup = plex_item_user_data(item);
    mud_log("startup: cannot connect to PostgreSQL: %s %s", plex_error_name(event->result),
            plex_postgres_error_message(startup->mud->pg));
    plex_fail(plex, event->result);
}

static void on_schema(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    if (event->result < 0) {
        log_query_error("startup: schema", event);
        plex_fail(plex, event->result);
    }
}

static void on_rooms(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Startup *startup = plex_item_user_data(item);
    int rc = event->result;
    if (rc < 0)
        log_query_error("startup: loading rooms", event);
    else if ((rc = world_load_rooms(startup->mud, event->pg_result)) < 0)
        mud_log("startup: the rooms are unusable (no '%s'?): %s", MUD_START_ROOM,
                plex_error_name(rc));
    if (rc < 0)
        plex_fail(plex, rc);
}

static void on_exits(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Startup *startup = plex_item_user_data(item);
    int rc = event->result;
    if (rc < 0)
        log_query_error("startup: loading exits", event);
    else
        rc = world_load_exits(startup->mud, event->pg_result);
    if (rc < 0) {
        plex_fail(plex, rc);
        return;
    }
    mud_log("startup: %zu rooms loaded", startup->mud->room_count);
    plex_finish(plex); /* the last query of the pipeline: everything is in */
}

static void on_startup_end(Plex *plex, int status)
{
    Startup *startup = plex_user_data(plex);
    Mud *mud = startup->mud;
    mud_log_flow_ended(plex, status, NULL);
    if (mud->phase == MUD_TEARDOWN)
        return;
    if (status == 0 && mud_world_start(mud) == 0)
        return;
    mud->exit_status = 1;
    plex_event_loop_stop(mud->loop);
}

static Startup *startup_create(Mud *mud, Plex *plex)
{
    Startup *startup = plex_arena_calloc(plex_arena(plex), sizeof(*startup));
    if (!startup)
        return NULL;
    startup->mud = mud;
    PlexItem *connect =
        plex_item_create(plex, "connect", on_connected, on_connect_failed, NULL, startup);
    startup->schema = plex_item_create(plex, "schema", on_schema, on_schema, NULL, startup);
    startup->rooms = plex_item_create(plex, "rooms", on_rooms, on_rooms, NULL, startup);
    startup->exits = plex_item_create(plex, "exits", on_exits, on_exits, NULL, startup);
    if (!connect || !startup->schema || !startup->rooms || !startup->exits)
        return NULL;
    plex_set_user_data(plex, startup);
    plex_set_end_handler(plex, on_startup_end);
    return startup;
}

int storage_start(Mud *mud)
{
    /* The connection belongs to the world flow, which lives for the whole
     * run; the startup flow only borrows it. */
    mud->pg = plex_postgres_create(mud->world, mud->config.conninfo);
    if (!mud->pg) {
        int rc = -errno;
        /* Not printed: a connection string may hold a password. */
        mud_log("startup: libpq cannot use the connection string (--pg): %s", plex_strerror(rc));
        return rc;
    }
    int rc = plex_postgres_set_pipeline(mud->pg, true);
    Plex *plex = rc == 0 ? plex_create(mud->registry, "startup") : NULL;
    Startup *startup = plex ? startup_create(mud, plex) : NULL;
    if (!startup) {
        plex_destroy(plex);
        return rc < 0 ? rc : -ENOMEM;
    }
    plex_start(plex);
    mud_log_flow_started(plex);
    rc = plex_postgres_connect(mud->loop, mud->pg, plex_item_first(plex), CONNECT_TIMEOUT_NS);
    if (rc < 0)
        plex_destroy(plex); /* no handler was called: the end handler reports */
    return rc;
}

/* ---- Losing the connection, and finding it again ------------------------ */

/* Reconnects (at most once per RECONNECT_INTERVAL_NS). Queries queued from
 * now on wait for the connect, behind the search_path. 0 or < 0. */
static int reconnect(Mud *mud)
{
    uint64_t now = plex_now_ns();
    if (mud->phase != MUD_RUNNING ||
        (mud->pg_reset_ns && now - mud->pg_reset_ns < (uint64_t)RECONNECT_INTERVAL_NS))
        return -EAGAIN;
    mud->pg_reset_ns = now;
    mud_log("PostgreSQL: the connection was lost; reconnecting");
    int rc = plex_postgres_reset(mud->pg, mud->pg_reconnect, CONNECT_TIMEOUT_NS);
    if (rc == 0 && mud->schema_identifier[0])
        rc = queue_search_path(mud, mud->search_path);
    return rc;
}

/* Every query of the game goes through here. */
static int query(Mud *mud, PlexItem *item, const char *sql, const PlexPostgresParams *params)
{
    int rc = plex_postgres_query_params(mud->pg, item, sql, params);
    if (rc == PLEX_EPGBROKEN && reconnect(mud) == 0)
        rc = plex_postgres_query_params(mud->pg, item, sql, params);
    return rc;
}

void storage_on_reconnect(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Mud *mud = plex_item_user_data(item);
    if (event->result < 0)
        mud_log("PostgreSQL: reconnecting failed: %s %s", plex_error_name(event->result),
                plex_postgres_error_message(mud->pg));
    else
        mud_log("PostgreSQL: reconnected");
}

void storage_on_search_path(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)item;
    if (event->result < 0)
        log_query_error("setting the search_path", event);
}

/* ---- A player: load (create or restore) and save ------------------------ */

int storage_load_player(Session *session)
{
    /* A new name gets a row in the start room; a known one bumps its login
     * count. Either way the row's room comes back: one statement, no race. */
    const char *values[] = {session->name, MUD_START_ROOM};
    PlexPostgresParams params = {.count = 2, .values = values};
    return query(session->mud, session->load, load_player_sql, &params);
}

void storage_on_player_loaded(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    if (event->result < 0) {
        log_query_error("loading a player", event);
        session_load_failed(session, event->result);
    } else if (PQntuples(event->pg_result) != 1) {
        session_load_failed(session, -EPROTO);
    } else {
        long logins = strtol(PQgetvalue(event->pg_result, 0, 1), NULL, 10);
        session_loaded(session, PQgetvalue(event->pg_result, 0, 0), logins);
    }
}

static int queue_save(Mud *mud, PlexItem *item, const Session *session)
{
    const char *values[] = {session->name, session->position->id};
    PlexPostgresParams params = {.count = 2, .values = values};
    return query(mud, item, save_player_sql, &params);
}

int storage_save_player(Session *session)
{
    if (!session->position)
        return -EINVAL;
    return queue_save(session->mud, session->save, session);
}

void storage_on_player_saved(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    if (event->result < 0)
        log_query_error("saving a player", event);
    session_saved(session, event->result < 0 ? event->result : 0);
}

/* ---- Everyone at once: autosave and the final save ---------------------- */

typedef struct SaveBatch {
    Mud *mud;
    bool final;
    unsigned queued;
    unsigned pending;
    unsigned saved;
    unsigned failed;
} SaveBatch;

static void on_batch_result(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    SaveBatch *batch = plex_user_data(plex);
    if (event->result >= 0) {
        batch->saved++;
    } else {
        if (batch->failed == 0) /* in a pipeline, one failure takes the rest along */
            log_query_error(batch->final ? "final save" : "autosave", event);
        batch->failed++;
    }
    if (--batch->pending == 0)
        plex_finish(plex);
}

static void on_batch_end(Plex *plex, int status)
{
    SaveBatch *batch = plex_user_data(plex);
    Mud *mud = batch->mud;
    mud_log("%s: %u of %u players saved in one pipelined batch, %u failed",
            batch->final ? "final save" : "autosave", batch->saved, batch->queued, batch->failed);
    mud_log_flow_ended(plex, status, NULL);
    if (mud->phase == MUD_TEARDOWN)
        return;
    if (batch->final)
        mud_shutdown_saved(mud);
    else
        mud->autosave_running = false;
}

/* Queues one save per playing session on `item`; returns how many. */
static unsigned queue_saves(Mud *mud, PlexItem *item)
{
    unsigned queued = 0;
    for (MudLink *link = mud->sessions.next; link != &mud->sessions; link = link->next) {
        Session *session = MUD_CONTAINER_OF(link, Session, link);
        if (session->state == SESSION_PLAYING && queue_save(mud, item, session) == 0)
            queued++;
    }
    return queued;
}

int storage_save_all(Mud *mud, bool final)
{
    Plex *plex = plex_create(mud->registry, final ? "final-save" : "autosave");
    SaveBatch *batch = plex ? plex_arena_calloc(plex_arena(plex), sizeof(*batch)) : NULL;
    PlexItem *item =
        batch ? plex_item_create(plex, "save-batch", on_batch_result, on_batch_result, NULL, NULL)
              : NULL;
    if (!item) {
        plex_destroy(plex);
        return -ENOMEM;
    }
    *batch = (SaveBatch){.mud = mud, .final = final};
    plex_set_user_data(plex, batch);
    plex_start(plex);
    batch->queued = batch->pending = queue_saves(mud, item);
    if (batch->queued == 0) {
        plex_destroy(plex); /* nobody to save: no end handler set yet */
        return 0;
    }
    plex_set_end_handler(plex, on_batch_end);
    mud_log_flow_started(plex);
    return (int)batch->queued;
}

void storage_on_autosave(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    Mud *mud = plex_item_user_data(item);
    if (mud->autosave_running) {
        mud_log("autosave: the previous batch is still running; skipping this one");
        return;
    }
    mud->autosave_running = storage_save_all(mud, false) > 0;
}

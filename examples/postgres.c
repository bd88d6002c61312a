/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex-postgres: the smallest Postgres flow, connect -> query -> process.
 *
 *   build/bin/samplex-postgres [CONNINFO]    (default "": PGHOST, PGPORT, ...)
 *
 * Prints "1 + 1 = 2" and exits 0, or says which step failed and why.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>
#include <samplex/samplex.h>

static void on_connected(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    int rc = plex_postgres_query(event->postgres, plex_item_next(item), "SELECT 1 + 1");
    if (rc < 0)
        plex_fail(plex, rc); /* a start that fails calls no handler: end the flow here */
}

static void on_result(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    /* event->pg_result is borrowed: samplex PQclear()s it after we return. */
    printf("1 + 1 = %s\n", PQgetvalue(event->pg_result, 0, 0));
    plex_finish(plex);
}

static void on_failed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    fprintf(stderr, "%s failed: %s %s %s\n", plex_item_description(item),
            plex_strerror(event->result),
            event->result == PLEX_EPG ? plex_postgres_sqlstate(event) : "",
            event->postgres ? plex_postgres_error_message(event->postgres) : "");
    plex_fail(plex, event->result);
}

static void on_end(Plex *plex, int status)
{
    *(int *)plex_user_data(plex) = status;
}

int main(int argc, char **argv)
{
    const char *conninfo = argc > 1 ? argv[1] : "";
    int status = -EINPROGRESS;
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoop *loop = registry ? plex_event_loop_create(registry) : NULL;
    if (!loop) {
        fprintf(stderr, "cannot create the loop: %s\n", strerror(errno));
        plex_registry_destroy(registry);
        return 1;
    }
    Plex *flow = plex_create(registry, "sum");
    PlexItem *connect = plex_item_create(flow, "connect", on_connected, on_failed, NULL, NULL);
    PlexItem *query = plex_item_create(flow, "query", on_result, on_failed, NULL, NULL);
    PlexPostgres *pg = plex_postgres_create(flow, conninfo);
    plex_set_user_data(flow, &status);
    plex_set_end_handler(flow, on_end);
    int rc = connect && query && pg ? plex_postgres_connect(loop, pg, connect, 5000000000LL)
                                    : -ENOMEM;
    if (rc < 0)
        fprintf(stderr, "cannot start: %s\n", plex_strerror(rc));
    else
        plex_event_loop_run(loop); /* returns once the flow has ended */
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
    return rc == 0 && status == 0 ? 0 : 1;
}

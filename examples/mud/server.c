/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The world flow: it lives for the whole run and owns what the whole server
 * shares: the Postgres connection, the listener, the tick and the autosave.
 * Its steps:
 *
 *   accept        multishot accept: one session flow per connection
 *   tick          recurring timer: the world tick (world.c)
 *   autosave      recurring timer: every player saved in one batch (storage.c)
 *   deadline      one-shot timer: a shutdown that takes too long gives up
 *   pg-reconnect  reconnects Postgres when it was lost (storage.c), then
 *   search-path   puts the private schema (--schema) back on the path
 *   pg-close      the graceful close of the Postgres connection, last of all
 *
 * Shutdown (SIGINT/SIGTERM) is a sequence of continuations, each started by
 * the end of the previous one:
 *
 *   stop accepting and ticking, tell everyone
 *     -> "final-save" flow: every player in one batch     (mud_shutdown_saved)
 *     -> close every connection gracefully                (mud_session_ended)
 *     -> when the last session flow has ended, close Postgres
 *     -> the world flow finishes; its end handler stops the loop.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "mud.h"

#define SHUTDOWN_DEADLINE_NS MS_TO_NS(10000)

/* ---- The end -------------------------------------------------------------- */

static void on_world_end(Plex *plex, int status)
{
    Mud *mud = plex_user_data(plex);
    world_log_tick_summary(mud);
    mud_log_flow_ended(plex, status, NULL);
    if (mud->phase == MUD_SHUTTING_DOWN) {
        mud_log("shutdown complete");
        plex_event_loop_stop(mud->loop);
    }
}

static void on_pg_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    if (event->result < 0)
        mud_log("closing PostgreSQL: %s", plex_error_name(event->result));
    plex_finish(plex);
}

static void on_deadline(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    Mud *mud = plex_user_data(plex);
    mud_log("shutdown: still waiting after %d s (%zu sessions); giving up",
            (int)(SHUTDOWN_DEADLINE_NS / 1000000000), mud->session_count);
    mud->exit_status = 1;
    plex_event_loop_stop(mud->loop); /* main destroys the loop: that ends every flow */
}

/* Last step: every session flow has ended. Queries still queued (saves of
 * sessions that ended meanwhile) run before the close completes. */
static void close_storage(Mud *mud)
{
    if (mud->pg_closing)
        return;
    mud->pg_closing = true;
    if (plex_postgres_close(mud->pg, mud->pg_close) < 0)
        plex_finish(mud->world);
}

void mud_session_ended(Mud *mud)
{
    if (mud->phase == MUD_SHUTTING_DOWN && mud->final_save_done && mud_list_empty(&mud->sessions))
        close_storage(mud);
}

void mud_shutdown_saved(Mud *mud)
{
    mud->final_save_done = true;
    for (MudLink *link = mud->sessions.next; link != &mud->sessions;) {
        Session *session = MUD_CONTAINER_OF(link, Session, link);
        link = link->next; /* session_close may end this session right here */
        if (session->state == SESSION_PLAYING)
            session_printf(session, "Your progress is saved. Goodbye, %s!\n", session->name);
        session_close(session);
    }
    mud_session_ended(mud);
}

bool mud_shutdown_begin(Mud *mud)
{
    if (mud->phase != MUD_RUNNING)
        return false;
    mud->phase = MUD_SHUTTING_DOWN;
    mud_log("shutting down: %zu connections, %zu players", mud->session_count,
            players_count_playing(mud));
    plex_timer_cancel(mud->tick_timer);
    plex_timer_cancel(mud->autosave_timer);
    plex_listener_close(mud->listener);
    plex_timer_add(mud->loop, mud->deadline_timer);
    players_tell_all(mud, "\n*** The server is shutting down. Saving everyone... ***\n");
    int queued = storage_save_all(mud, true);
    if (queued < 0)
        mud_log("final save: cannot start: %s", plex_error_name(queued));
    if (queued <= 0)
        mud_shutdown_saved(mud);
    return true;
}

/* ---- The start ------------------------------------------------------------ */

int mud_world_start(Mud *mud)
{
    const MudConfig *config = &mud->config;
    mud->listener = plex_listener_create(mud->world, config->host, config->port, NULL);
    if (!mud->listener) {
        int rc = -errno;
        mud_log("cannot listen on %s:%u: %s", config->host, config->port, plex_strerror(rc));
        return rc;
    }
    int rc = plex_listener_accept(mud->loop, mud->listener, mud->accept);
    if (rc == 0)
        rc = plex_timer_add(mud->loop, mud->tick_timer);
    if (rc == 0)
        rc = plex_timer_add(mud->loop, mud->autosave_timer);
    if (rc < 0) {
        mud_log("cannot start the world: %s", plex_strerror(rc));
        return rc;
    }
    mud->phase = MUD_RUNNING;
    /* The line scripts and tests wait for; with --port 0 it has the port.
     * An IPv6 address is bracketed so that the port stays unambiguous. */
    bool ipv6 = strchr(config->host, ':') != NULL;
    printf("listening on %s%s%s:%d\n", ipv6 ? "[" : "", config->host, ipv6 ? "]" : "",
           plex_listener_port(mud->listener));
    fflush(stdout);
    return 0;
}

static int create_steps(Mud *mud, Plex *world)
{
    mud->accept =
        plex_item_create(world, "accept", session_on_accept, session_on_accept_end, NULL, mud);
    mud->tick = plex_item_create(world, "tick", world_on_tick, NULL, NULL, mud);
    mud->autosave = plex_item_create(world, "autosave", storage_on_autosave, NULL, NULL, mud);
    mud->deadline = plex_item_create(world, "deadline", on_deadline, NULL, NULL, mud);
    mud->pg_close = plex_item_create(world, "pg-close", on_pg_closed, on_pg_closed, NULL, mud);
    mud->pg_reconnect = plex_item_create(world, "pg-reconnect", storage_on_reconnect,
                                         storage_on_reconnect, NULL, mud);
    mud->search_path = plex_item_create(world, "search-path", storage_on_search_path,
                                        storage_on_search_path, NULL, mud);
    if (!mud->accept || !mud->tick || !mud->autosave || !mud->deadline || !mud->pg_close ||
        !mud->pg_reconnect || !mud->search_path)
        return -ENOMEM;
    mud->tick_timer = plex_timer_create(world, mud->tick, mud->config.tick_ns, true);
    mud->autosave_timer = plex_timer_create(world, mud->autosave, mud->config.autosave_ns, true);
    mud->deadline_timer = plex_timer_create(world, mud->deadline, SHUTDOWN_DEADLINE_NS, false);
    return mud->tick_timer && mud->autosave_timer && mud->deadline_timer ? 0 : -ENOMEM;
}

int mud_world_create(Mud *mud)
{
    Plex *world = plex_create(mud->registry, "world");
    if (!world)
        return -errno;
    mud->world = world;
    int rc = create_steps(mud, world);
    if (rc < 0)
        return rc; /* the registry's destroy ends the flow */
    plex_set_user_data(world, mud);
    plex_set_end_handler(world, on_world_end);
    plex_start(world);
    mud_log_flow_started(world);
    return 0;
}

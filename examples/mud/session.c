/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A session: the flow of one connection.
 *
 *   login -> load player -> command loop -> save -> goodbye
 *
 * Those are the session's phases (Session.state); its steps (PlexItems) are
 * the operations it runs on the way:
 *
 *   read    multishot receive, for the whole session: bytes go to telnet,
 *           lines come back to on_line; the last call says why it ended
 *   write   every send (its timing shows how fast output leaves)
 *   idle    a one-shot timer, re-armed by every line once logged in: a
 *           silent player is told goodbye politely, saved, and
 *           disconnected. At the login prompt it runs from the connect and
 *           lines do not re-arm it: it is the login deadline, so a peer
 *           that types bad names forever cannot keep a session. When
 *           closing, the close's deadline
 *   load    the query that creates or loads the player row
 *   save    the query that saves the player at the end
 *   close   the graceful close: queued output first, then FIN
 *
 * The flow finishes when its connection is closed; its end handler takes
 * the player out of the world and logs the steps' timings. If the flow is
 * destroyed instead (the loop is torn down), the same end handler runs and
 * the engine aborts the connection: nothing leaks either way.
 *
 * Invariants:
 * - Nothing here ends a session synchronously except from the session's own
 *   handlers (or the shutdown, outside any session's handler); another
 *   session is only ever aborted from a posted callback, so lists being
 *   walked never lose an element under the walker.
 * - Whatever a player types reaches this file already scrubbed (telnet_io).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "mud.h"

#define CLOSE_DEADLINE_NS MS_TO_NS(5000)

static const char banner[] = "\n"
                             "Welcome to the samplex MUD: a small world run by one io_uring loop.\n"
                             "\n"
                             "By what name are you known? ";

/* ---- Output ------------------------------------------------------------- */

/* Posted by on_telnet_send: aborts a session's connection from a fresh loop
 * iteration, never from inside the handler of another flow (a broadcast)
 * that is walking a list this session is in. The session may have ended
 * meanwhile: that is why we carry its flow's id, not a pointer. */
static void abort_later(PlexEventLoop *loop, void *argument)
{
    uint64_t id = (uint64_t)(uintptr_t)argument;
    Plex *plex = plex_registry_lookup(plex_event_loop_registry(loop), id);
    if (plex) {
        Session *session = plex_user_data(plex);
        plex_connection_abort(session->conn); /* the read ends: save, then end */
    }
}

/* telnet_io hands us encoded bytes: one write each, which the engine copies,
 * queues behind earlier ones and coalesces. */
static void on_telnet_send(void *context, const void *bytes, size_t length)
{
    Session *session = context;
    if (session->output_closed)
        return;
    int rc = plex_connection_write(session->conn, session->write, bytes, length);
    if (rc == 0)
        return;
    session->output_closed = true;
    if (rc == -ENOTCONN)
        return; /* already closing: the goodbye was the last word */
    /* -ENOBUFS: the player does not read what we send (past MUD_WRITE_CAP
     * queued); or the socket failed. Either way, let them go. */
    mud_log("session %s (%s): cannot send (%s): dropping the connection", session->peer,
            session->name, plex_error_name(rc));
    void *id = (void *)(uintptr_t)plex_id(session->plex); /* ids fit: 64-bit Linux */
    if (plex_event_loop_post(session->mud->loop, abort_later, id) < 0)
        plex_connection_abort(session->conn);
}

void session_print(Session *session, const char *text)
{
    telnet_io_print(session->telnet, text);
}

void session_printf(Session *session, const char *format, ...)
{
    char text[1024];
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(text, sizeof(text), format, arguments);
    va_end(arguments);
    if (length >= 0)
        telnet_io_print(session->telnet, text);
}

static void on_write_failed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    session->output_closed = true;
    if (event->result != -ECANCELED)
        plex_connection_abort(session->conn); /* the peer is gone; the read will say so */
}

/* ---- Leaving: save -> goodbye -> close ---------------------------------- */

void session_close(Session *session)
{
    if (session->state == SESSION_CLOSING)
        return;
    session->state = SESSION_CLOSING;
    world_leave(session);
    /* The idle timer becomes the close's deadline: a peer that reads
     * nothing cannot keep the close (which sends what is queued first)
     * waiting forever. */
    plex_timer_cancel(session->idle_timer);
    plex_timer_set_delay(session->idle_timer, CLOSE_DEADLINE_NS);
    plex_timer_add(session->mud->loop, session->idle_timer);
    /* Fails only if the connection was aborted (or closed) already: then
     * there is nothing left to wait for. */
    if (plex_connection_close(session->conn, session->close) < 0)
        plex_finish(session->plex);
}

static void on_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    plex_finish(plex); /* the end handler does the rest */
}

void session_saved(Session *session, int status)
{
    if (session->state != SESSION_SAVING)
        return; /* shutdown closed it meanwhile */
    if (status == 0) {
        session_printf(session, "Your progress is saved. Goodbye, %s!\n", session->name);
    } else {
        mud_log("session %s (%s): save failed: %s", session->peer, session->name,
                plex_error_name(status));
        session_print(session, "Sorry, your progress could not be saved. Goodbye!\n");
    }
    session_close(session);
}

static void session_save(Session *session)
{
    session->state = SESSION_SAVING;
    int rc = storage_save_player(session);
    if (rc < 0)
        session_saved(session, rc);
}

/* Takes the player out of their room, telling the others there. */
static void leave_world(Session *session, const char *format)
{
    Room *room = session->room;
    world_leave(session);
    if (room)
        world_broadcastf(room, session, format, session->name);
}

void session_quit(Session *session, const char *farewell)
{
    if (session->state != SESSION_PLAYING)
        return;
    session_print(session, farewell);
    leave_world(session, "%s leaves the game.\n");
    session_save(session);
}

/* The peer closed its side, or the connection failed. */
static void session_disconnected(Session *session)
{
    switch (session->state) {
    case SESSION_LOGIN:
        session_close(session);
        break;
    case SESSION_PLAYING:
        leave_world(session, "%s has lost the link and fades away.\n");
        session_save(session);
        break;
    default:
        break; /* LOADING: session_loaded sees it; SAVING, CLOSING: on the way out */
    }
}

/* ---- Logging in --------------------------------------------------------- */

static void session_touch(Session *session);

static void typeahead_push(Session *session, const char *line, size_t length)
{
    if (session->typeahead_length + length + 1 > sizeof(session->typeahead)) {
        session_print(session, "(One moment, please: that line was lost.)\n");
        return;
    }
    memcpy(session->typeahead + session->typeahead_length, line, length + 1);
    session->typeahead_length += length + 1;
}

/* Runs the lines typed while the player was loading, in order, until one of
 * them (quit) ends the command loop. */
static void typeahead_replay(Session *session)
{
    size_t used = session->typeahead_length;
    session->typeahead_length = 0;
    for (size_t at = 0; at < used && session->state == SESSION_PLAYING;) {
        const char *line = session->typeahead + at;
        at += strlen(line) + 1;
        commands_run(session, line);
    }
}

static void session_login(Session *session, const char *typed)
{
    const char *why = NULL;
    char name[MUD_NAME_MAX + 1];
    if (typed[0] == '\0')
        why = "Please type a name.";
    else if (players_canonical_name(typed, name, &why) == 0 && players_find(session->mud, name))
        why = "That player is already here (or just leaving: try again in a moment).";
    if (why) {
        session_printf(session, "%s\nBy what name are you known? ", why);
        return;
    }
    memcpy(session->name, name, sizeof(name));
    session->state = SESSION_LOADING;
    int rc = storage_load_player(session);
    if (rc < 0)
        session_load_failed(session, rc);
}

void session_load_failed(Session *session, int status)
{
    if (session->state != SESSION_LOADING)
        return; /* shutdown closed it meanwhile */
    mud_log("session %s (%s): loading the player failed: %s", session->peer, session->name,
            plex_error_name(status));
    session_print(session, "Sorry, the world's memory is not answering. Please try later.\n");
    session_close(session);
}

void session_loaded(Session *session, const char *room_id, long logins)
{
    Mud *mud = session->mud;
    if (session->state != SESSION_LOADING)
        return; /* shutdown closed it meanwhile */
    if (mud->phase != MUD_RUNNING) {
        session_close(session); /* shutting down: it said goodbye to everyone */
        return;
    }
    Room *room = world_find_room(mud, room_id);
    session->created = logins <= 1;
    session->state = SESSION_PLAYING;
    if (session->created)
        session_printf(session, "Welcome, %s! You are new here: type 'help' to begin.\n",
                       session->name);
    else
        session_printf(session, "Welcome back, %s. You are where you left off.\n", session->name);
    world_broadcastf(room ? room : mud->start_room, NULL, "%s appears out of thin air.\n",
                     session->name);
    world_enter(room ? room : mud->start_room, session);
    mud_log("session %s: %s %s, in %s", session->peer, session->name,
            session->created ? "created" : "restored", session->room->id);
    session_touch(session); /* the idle deadline starts again from here */
    commands_look(session);
    typeahead_replay(session);
    if (session->state == SESSION_PLAYING && !session->reading)
        session_disconnected(session); /* they left while we were loading */
}

/* ---- Reading ------------------------------------------------------------ */

static void session_touch(Session *session)
{
    plex_timer_cancel(session->idle_timer); /* -ENOENT when not armed: fine */
    plex_timer_add(session->mud->loop, session->idle_timer);
}

static void on_line(void *context, const char *line, size_t length)
{
    Session *session = context;
    switch (session->state) {
    case SESSION_LOGIN:
        session->spoke = true; /* no touch: the login deadline runs from the connect */
        session_login(session, line);
        break;
    case SESSION_LOADING:
        typeahead_push(session, line, length);
        break;
    case SESSION_PLAYING:
        session_touch(session);
        commands_run(session, line);
        break;
    default:
        break; /* on the way out: what they type now is ignored */
    }
}

static void on_overlong(void *context)
{
    Session *session = context;
    session_printf(session, "That line is too long (the limit is %d bytes); it was ignored.\n",
                   MUD_LINE_MAX);
}

/* The peer broke the telnet protocol: its input is ignored from now on, so
 * stop reading; the read's end treats it as gone (save, then close). */
static void on_refused(void *context, const char *reason)
{
    Session *session = context;
    mud_log("session %s (%s): refused: %s", session->peer, session->name, reason);
    plex_connection_read_stop(session->conn); /* -ENOENT if not reading: then it is over */
}

static void on_read(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    telnet_io_receive(session->telnet, event->data, event->length);
}

static void on_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Session *session = plex_item_user_data(item);
    session->reading = false;
    if (event->result != PLEX_EEOF && event->result != -ECANCELED)
        mud_log("session %s (%s): connection lost: %s", session->peer, session->name,
                plex_error_name(event->result));
    session_disconnected(session);
}

/* ---- Idle deadline ------------------------------------------------------ */

static void on_idle(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    Session *session = plex_item_user_data(item);
    double seconds = (double)session->mud->config.idle_ns / 1e9;
    if (session->state == SESSION_CLOSING) {
        mud_log("session %s (%s): the peer reads nothing; aborting the close", session->peer,
                session->name);
        plex_connection_abort(session->conn); /* the close step is still told */
    } else if (session->state == SESSION_LOGIN) {
        session_printf(session, "\nYou %s %g seconds. Come back when you are ready. Goodbye!\n",
                       session->spoke ? "did not give a name within" : "were silent for", seconds);
        session_close(session);
    } else if (session->state == SESSION_PLAYING) {
        mud_log("session %s: %s idle for %g s: disconnecting", session->peer, session->name,
                seconds);
        session_printf(session, "You have been idle for %g seconds, so we are letting you go.\n",
                       seconds);
        leave_world(session, "%s falls asleep and fades away.\n");
        session_save(session);
    }
}

/* ---- The flow ----------------------------------------------------------- */

static void session_on_end(Plex *plex, int status)
{
    Session *session = plex_user_data(plex);
    Mud *mud = session->mud;
    world_leave(session);
    mud_list_remove(&session->link);
    mud->session_count--;
    mud_log_flow_ended(plex, status, session->name);
    telnet_io_destroy(session->telnet);
    mud_session_ended(mud);
}

static void format_peer(PlexConnection *conn, char *peer, size_t size)
{
    struct sockaddr_storage address;
    socklen_t length = sizeof(address);
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (plex_connection_peer_address(conn, &address, &length) == 0) {
        if (address.ss_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&address;
            inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
            port = ntohs(in->sin_port);
        } else if (address.ss_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&address;
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
            port = ntohs(in6->sin6_port);
        }
    }
    snprintf(peer, size, "%s:%u", host, port);
}

/* Makes the steps; nothing is started yet. */
static Session *session_create(Mud *mud, Plex *plex, PlexConnection *conn)
{
    Session *session = plex_arena_calloc(plex_arena(plex), sizeof(*session));
    if (!session)
        return NULL;
    session->mud = mud;
    session->plex = plex;
    session->conn = conn;
    format_peer(conn, session->peer, sizeof(session->peer));
    mud_list_init(&session->room_link);
    session->read = plex_item_create(plex, "read", on_read, on_read_end, NULL, session);
    session->write = plex_item_create(plex, "write", NULL, on_write_failed, NULL, session);
    session->idle = plex_item_create(plex, "idle", on_idle, NULL, NULL, session);
    /* storage.c runs the queries; one handler each takes success and error. */
    session->load = plex_item_create(plex, "load", storage_on_player_loaded,
                                     storage_on_player_loaded, NULL, session);
    session->save = plex_item_create(plex, "save", storage_on_player_saved, storage_on_player_saved,
                                     NULL, session);
    session->close = plex_item_create(plex, "close", on_closed, on_closed, NULL, session);
    if (!session->read || !session->write || !session->idle || !session->load || !session->save ||
        !session->close)
        return NULL;
    session->idle_timer = plex_timer_create(plex, session->idle, mud->config.idle_ns, false);
    if (!session->idle_timer)
        return NULL;
    /* Last: libtelnet's state is the one thing that needs the end handler
     * (set by session_begin) to be freed. */
    static const TelnetIOHandlers handlers = {on_line, on_overlong, on_telnet_send, on_refused};
    session->telnet = telnet_io_create(plex_arena(plex), &handlers, session);
    if (!session->telnet)
        return NULL;
    plex_connection_set_write_cap(conn, MUD_WRITE_CAP);
    return session;
}

/* Greets the player and starts reading, with the idle deadline armed. */
static int session_begin(Session *session)
{
    Plex *plex = session->plex;
    plex_set_user_data(plex, session);
    mud_list_append(&session->mud->sessions, &session->link);
    session->mud->session_count++;
    plex_set_end_handler(plex, session_on_end);
    plex_start(plex);
    mud_log_flow_started(plex);
    session_print(session, banner);
    int rc = plex_connection_read(session->conn, session->read);
    if (rc < 0)
        return rc;
    session->reading = true;
    return plex_timer_add(session->mud->loop, session->idle_timer);
}

void session_on_accept(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Mud *mud = plex_item_user_data(item);
    if (mud->phase != MUD_RUNNING)
        return; /* shutting down: the adapter closes a connection nobody took */
    char description[96];
    char peer[64];
    format_peer(event->connection, peer, sizeof(peer));
    snprintf(description, sizeof(description), "session %s", peer);
    Plex *flow = plex_create(mud->registry, description);
    if (!flow)
        return;
    /* Attached first: from here on, ending the flow frees the connection. */
    Session *session = plex_connection_attach(event->connection, flow) == 0
                           ? session_create(mud, flow, event->connection)
                           : NULL;
    int rc = session ? session_begin(session) : -ENOMEM;
    if (rc < 0) {
        mud_log("cannot start a session for %s: %s", peer, plex_error_name(rc));
        plex_destroy(flow); /* session_begin set the end handler: it frees the rest */
    }
}

void session_on_accept_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)item;
    if (event->result != -ECANCELED)
        mud_log("accepting stopped: %s", plex_strerror(event->result));
}

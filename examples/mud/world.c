/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The world: rooms and exits (loaded from Postgres at start), who is where,
 * and the world tick.
 *
 * Invariants:
 * - Rooms are read once, by the startup flow, and never change afterwards;
 *   they belong to the Mud and are freed by world_free after the loop.
 * - A session is in exactly one room's occupant list while PLAYING, in none
 *   otherwise (world_enter / world_leave keep room_link and room together).
 * - The tick is a recurring PlexTimer: its targets are start + n * interval,
 *   so it does not drift however late one tick runs; how late each one was
 *   is logged ("tick N: late X ms") and summed up at exit.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mud.h"

static const char *const direction_names[DIRECTION_COUNT] = {"north", "south", "east",
                                                             "west",  "up",    "down"};
static const char *const direction_short[DIRECTION_COUNT] = {"n", "s", "e", "w", "u", "d"};

Direction world_parse_direction(const char *word)
{
    for (int i = 0; i < DIRECTION_COUNT; i++)
        if (strcmp(word, direction_names[i]) == 0 || strcmp(word, direction_short[i]) == 0)
            return (Direction)i;
    return DIRECTION_NONE;
}

const char *world_direction_name(Direction direction)
{
    return direction >= 0 && direction < DIRECTION_COUNT ? direction_names[direction] : "nowhere";
}

/* ---- Loading ------------------------------------------------------------ */

Room *world_find_room(Mud *mud, const char *id)
{
    for (size_t i = 0; i < mud->room_count; i++)
        if (strcmp(mud->rooms[i].id, id) == 0)
            return &mud->rooms[i];
    return NULL;
}

static char *copy_field(const PGresult *rows, int row, int column)
{
    return strdup(PQgetvalue(rows, row, column));
}

/* `rows`: SELECT id, title, description, ambience FROM mud_rooms. */
int world_load_rooms(Mud *mud, const struct pg_result *rows)
{
    int count = PQntuples(rows);
    if (count == 0 || PQnfields(rows) != 4)
        return -EINVAL;
    mud->rooms = calloc((size_t)count, sizeof(*mud->rooms));
    if (!mud->rooms)
        return -ENOMEM;
    for (int row = 0; row < count; row++) {
        Room *room = &mud->rooms[mud->room_count++];
        mud_list_init(&room->occupants);
        room->id = copy_field(rows, row, 0);
        room->title = copy_field(rows, row, 1);
        room->description = copy_field(rows, row, 2);
        room->ambience = copy_field(rows, row, 3);
        if (!room->id || !room->title || !room->description || !room->ambience)
            return -ENOMEM;
    }
    mud->start_room = world_find_room(mud, MUD_START_ROOM);
    return mud->start_room ? 0 : -ENOENT;
}

/* `rows`: SELECT room_id, direction, target_id FROM mud_exits. Exits that
 * name an unknown room or direction are skipped. */
int world_load_exits(Mud *mud, const struct pg_result *rows)
{
    int count = PQntuples(rows);
    if (PQnfields(rows) != 3)
        return -EINVAL;
    for (int row = 0; row < count; row++) {
        Room *from = world_find_room(mud, PQgetvalue(rows, row, 0));
        Direction direction = world_parse_direction(PQgetvalue(rows, row, 1));
        Room *to = world_find_room(mud, PQgetvalue(rows, row, 2));
        if (from && to && direction != DIRECTION_NONE)
            from->exits[direction] = to;
    }
    return 0;
}

void world_free(Mud *mud)
{
    for (size_t i = 0; i < mud->room_count; i++) {
        free(mud->rooms[i].id);
        free(mud->rooms[i].title);
        free(mud->rooms[i].description);
        free(mud->rooms[i].ambience);
    }
    free(mud->rooms);
    mud->rooms = NULL;
    mud->room_count = 0;
}

/* ---- Who is where ------------------------------------------------------- */

void world_enter(Room *room, Session *session)
{
    world_leave(session);
    session->room = room;
    session->position = room;
    mud_list_append(&room->occupants, &session->room_link);
    room->occupant_count++;
}

void world_leave(Session *session)
{
    if (!session->room)
        return;
    mud_list_remove(&session->room_link);
    session->room->occupant_count--;
    session->room = NULL;
}

void world_broadcast(Room *room, const Session *except, const char *text)
{
    for (MudLink *link = room->occupants.next; link != &room->occupants;) {
        Session *other = MUD_CONTAINER_OF(link, Session, room_link);
        /* Printing never ends a session synchronously, but step first
         * anyway: the list is only ours while we do not call out. */
        link = link->next;
        if (other != except)
            session_print(other, text);
    }
}

void world_broadcastf(Room *room, const Session *except, const char *format, ...)
{
    char text[1024];
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(text, sizeof(text), format, arguments);
    va_end(arguments);
    if (length >= 0)
        world_broadcast(room, except, text);
}

/* ---- The tick ----------------------------------------------------------- */

static void record_tick(TickStats *ticks, const PlexEvent *event)
{
    ticks->fired++;
    ticks->overruns += event->overruns;
    ticks->lateness_total_ns += event->lateness_ns;
    if (event->lateness_ns > ticks->lateness_max_ns)
        ticks->lateness_max_ns = event->lateness_ns;
}

/* Every tick, something happens in every room where someone is. */
void world_on_tick(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Mud *mud = plex_item_user_data(item);
    record_tick(&mud->ticks, event);
    size_t rooms_with_players = 0, players = 0;
    for (size_t i = 0; i < mud->room_count; i++) {
        Room *room = &mud->rooms[i];
        if (room->occupant_count == 0)
            continue;
        rooms_with_players++;
        players += room->occupant_count;
        world_broadcastf(room, NULL, "%s\n", room->ambience);
    }
    mud_log("tick %" PRIu64 ": late %.3f ms, skipped %" PRIu64 ", %zu players in %zu rooms",
            mud->ticks.fired, (double)event->lateness_ns / 1e6, event->overruns, players,
            rooms_with_players);
}

void world_log_tick_summary(const Mud *mud)
{
    const TickStats *ticks = &mud->ticks;
    double mean_ms =
        ticks->fired ? (double)ticks->lateness_total_ns / (double)ticks->fired / 1e6 : 0.0;
    mud_log("ticks: %" PRIu64 " fired, lateness mean %.3f ms, max %.3f ms, %" PRIu64 " skipped",
            ticks->fired, mean_ms, (double)ticks->lateness_max_ns / 1e6, ticks->overruns);
}

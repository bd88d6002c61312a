/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The commands a player can type. Plain game logic: no I/O of its own,
 * only session_print and world_broadcast (which queue writes).
 *
 * A line is "verb rest": the verb is matched case-insensitively against the
 * directions (north, n, ...) and the table below (full word or alias);
 * `'text` is say and `:text` is emote.
 * Lines reach us scrubbed (see telnet_io.c), so echoing them is safe.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "mud.h"

typedef struct Command {
    const char *name;
    const char *alias; /* NULL: none */
    void (*run)(Session *session, const char *rest);
    const char *help;
} Command;

/* ---- look --------------------------------------------------------------- */

static void print_exits(Session *session, const Room *room)
{
    char exits[128] = "";
    size_t used = 0;
    for (int i = 0; i < DIRECTION_COUNT; i++)
        if (room->exits[i])
            used += (size_t)snprintf(exits + used, sizeof(exits) - used, "%s%s", used ? ", " : "",
                                     world_direction_name((Direction)i));
    session_printf(session, "Exits: %s.\n", used ? exits : "none");
}

/* Names of the others here, a line at a time so that a crowd fits. */
static void print_others(Session *session, const Room *room)
{
    if (room->occupant_count <= 1)
        return;
    session_print(session, "Also here:");
    for (const MudLink *link = room->occupants.next; link != &room->occupants; link = link->next) {
        const Session *other = MUD_CONTAINER_OF(link, Session, room_link);
        if (other != session)
            session_printf(session, " %s", other->name);
    }
    session_print(session, ".\n");
}

void commands_look(Session *session)
{
    const Room *room = session->room;
    session_printf(session, "\n%s\n%s\n", room->title, room->description);
    print_exits(session, room);
    print_others(session, room);
}

static void command_look(Session *session, const char *rest)
{
    (void)rest;
    commands_look(session);
}

/* ---- say, emote, who ---------------------------------------------------- */

static void command_say(Session *session, const char *rest)
{
    if (!*rest) {
        session_print(session, "Say what?\n");
        return;
    }
    session_printf(session, "You say: %s\n", rest);
    world_broadcastf(session->room, session, "%s says: %s\n", session->name, rest);
}

static void command_emote(Session *session, const char *rest)
{
    if (!*rest) {
        session_print(session, "Emote what? (For example: emote waves.)\n");
        return;
    }
    world_broadcastf(session->room, NULL, "%s %s\n", session->name, rest);
}

static void command_who(Session *session, const char *rest)
{
    (void)rest;
    players_print_who(session->mud, session);
}

/* ---- moving ------------------------------------------------------------- */

static void move(Session *session, Direction direction)
{
    Room *from = session->room;
    Room *to = from->exits[direction];
    if (!to) {
        session_print(session, "You cannot go that way.\n");
        return;
    }
    world_leave(session);
    world_broadcastf(from, NULL, "%s leaves %s.\n", session->name, world_direction_name(direction));
    world_broadcastf(to, NULL, "%s arrives.\n", session->name);
    world_enter(to, session);
    commands_look(session);
}

static void command_go(Session *session, const char *rest)
{
    Direction direction = world_parse_direction(rest);
    if (direction == DIRECTION_NONE)
        session_print(session, "Go where? north, south, east, west, up or down.\n");
    else
        move(session, direction);
}

/* ---- help, quit --------------------------------------------------------- */

static void command_help(Session *session, const char *rest);

static void command_quit(Session *session, const char *rest)
{
    (void)rest;
    session_quit(session, "Saving your progress...\n");
}

static const Command commands[] = {
    {"look", "l", command_look, "look around"},
    {"say", "'", command_say, "say something to everyone in the room"},
    {"emote", ":", command_emote, "act something out: emote waves"},
    {"who", NULL, command_who, "list the players online"},
    {"go", NULL, command_go,
     "go north, or just: north, n, south, s, east, e, west, w, up, u, down, d"},
    {"help", "?", command_help, "this list"},
    {"quit", NULL, command_quit, "save and leave"},
};

static void command_help(Session *session, const char *rest)
{
    (void)rest;
    session_print(session, "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        session_printf(session, "  %-6s %-3s %s\n", commands[i].name,
                       commands[i].alias ? commands[i].alias : "", commands[i].help);
}

/* ---- Dispatch ----------------------------------------------------------- */

static const Command *find_command(const char *verb)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(verb, commands[i].name) == 0 ||
            (commands[i].alias && strcmp(verb, commands[i].alias) == 0))
            return &commands[i];
    return NULL;
}

/* Splits "  Verb   rest " into a lower-case verb and the rest without its
 * leading spaces. ' and : are verbs of one character. */
static const char *split_verb(const char *line, char *verb, size_t size)
{
    while (*line == ' ')
        line++;
    size_t length = 0;
    if (*line == '\'' || *line == ':') {
        verb[length++] = *line++;
    } else {
        while (*line && *line != ' ') {
            if (length + 1 < size) /* always: the verb fits a whole line */
                verb[length++] = (char)tolower((unsigned char)*line);
            line++;
        }
    }
    verb[length] = '\0';
    while (*line == ' ')
        line++;
    return line;
}

void commands_run(Session *session, const char *line)
{
    char verb[MUD_LINE_MAX + 1];
    const char *rest = split_verb(line, verb, sizeof(verb));
    if (!verb[0])
        return;                                        /* an empty line */
    Direction direction = world_parse_direction(verb); /* "north", "n"... */
    const Command *command = find_command(verb);
    if (direction != DIRECTION_NONE)
        move(session, direction);
    else if (command)
        command->run(session, rest);
    else
        session_printf(session, "Unknown command '%s'. Type 'help' for the list.\n", verb);
}

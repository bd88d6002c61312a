/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Players: names, and the list of who is online (every live session flow is
 * in mud->sessions).
 *
 * Invariants:
 * - A name is 2..20 ASCII letters and digits, starting with a letter, and
 *   is stored canonically: first letter upper case, the rest lower case. So
 *   "alice", "ALICE" and "Alice" are one player, and a name is always safe
 *   to print.
 * - At most one live session holds a name, from the moment it is typed
 *   (before the player row is loaded) until its flow ends.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "mud.h"

int players_canonical_name(const char *typed, char *name, const char **why)
{
    size_t length = strlen(typed);
    if (length < MUD_NAME_MIN || length > MUD_NAME_MAX) {
        *why = "A name has 2 to 20 letters or digits.";
        return -EINVAL;
    }
    if (!isalpha((unsigned char)typed[0])) {
        *why = "A name starts with a letter.";
        return -EINVAL;
    }
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)typed[i];
        /* isalnum in the "C" locale: ASCII only, which is what we want. */
        if (c >= 0x80 || !isalnum(c)) {
            *why = "A name has only letters (a-z) and digits.";
            return -EINVAL;
        }
        name[i] = (char)(i == 0 ? toupper(c) : tolower(c));
    }
    name[length] = '\0';
    return 0;
}

Session *players_find(Mud *mud, const char *name)
{
    for (MudLink *link = mud->sessions.next; link != &mud->sessions; link = link->next) {
        Session *session = MUD_CONTAINER_OF(link, Session, link);
        if (session->name[0] && strcmp(session->name, name) == 0)
            return session;
    }
    return NULL;
}

size_t players_count_playing(const Mud *mud)
{
    size_t count = 0;
    for (const MudLink *link = mud->sessions.next; link != &mud->sessions; link = link->next)
        if (MUD_CONTAINER_OF(link, Session, link)->state == SESSION_PLAYING)
            count++;
    return count;
}

/* The list can be long (hundreds of bots): it is printed a line at a time
 * rather than built into one buffer. */
void players_print_who(Mud *mud, Session *viewer)
{
    session_printf(viewer, "Players online: %zu\n", players_count_playing(mud));
    for (MudLink *link = mud->sessions.next; link != &mud->sessions; link = link->next) {
        Session *session = MUD_CONTAINER_OF(link, Session, link);
        if (session->state == SESSION_PLAYING)
            session_printf(viewer, "  %-20s %s\n", session->name, session->room->title);
    }
}

void players_tell_all(Mud *mud, const char *text)
{
    for (MudLink *link = mud->sessions.next; link != &mud->sessions; link = link->next)
        session_print(MUD_CONTAINER_OF(link, Session, link), text);
}

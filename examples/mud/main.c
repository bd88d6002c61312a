/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex-mud: a small MUD on one samplex loop, with its world in Postgres.
 *
 *   samplex-mud [--port 4000] [--host 0.0.0.0] [--pg CONNINFO] [--schema NAME]
 *               [--tick-ms 5000] [--autosave-ms 60000] [--idle-ms 300000]
 *
 * Without --pg, libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
 * Prints "listening on ADDR:PORT" once the world is loaded; connect with
 * `telnet 127.0.0.1 4000`. SIGINT or SIGTERM: players are told, saved, and
 * disconnected, then the program exits 0 with everything freed; a second
 * signal stops at once.
 *
 * Where to read on: mud.h (the flows), session.c (a connection's flow),
 * storage.c (Postgres), server.c (the world flow and the shutdown).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mud.h"

/* For the signal handler only: plex_event_loop_stop is async-signal-safe. */
static PlexEventLoop *signal_loop;
static volatile sig_atomic_t signals_received;

static void on_signal(int signal_number)
{
    (void)signal_number;
    signals_received++;
    plex_event_loop_stop(signal_loop);
}

static void install_signal_handlers(PlexEventLoop *loop)
{
    signal_loop = loop;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
}

/* ---- Arguments ------------------------------------------------------------ */

static const char usage[] =
    "usage: samplex-mud [--port N] [--host ADDR] [--pg CONNINFO] [--schema NAME]\n"
    "                   [--tick-ms MS] [--autosave-ms MS] [--idle-ms MS]\n"
    "  --port N         TCP port (default 4000; 0: any free port)\n"
    "  --host ADDR      address to listen on (default 0.0.0.0)\n"
    "  --pg CONNINFO    libpq connection string (default: PGHOST, PGPORT, ... )\n"
    "  --schema NAME    keep the tables in this schema (created if missing)\n"
    "  --tick-ms MS     world tick interval (default 5000)\n"
    "  --autosave-ms MS autosave interval (default 60000)\n"
    "  --idle-ms MS     disconnect a silent player after this, and a connection\n"
    "                   that has not logged in by then (default 300000)\n";

static bool parse_number(const char *text, long min, long max, long *value)
{
    char *end;
    errno = 0;
    long number = strtol(text, &end, 10);
    if (errno || end == text || *end || number < min || number > max)
        return false;
    *value = number;
    return true;
}

/* A schema name is used as an identifier: keep it to [a-z_][a-z0-9_]*. */
static bool valid_schema(const char *name)
{
    size_t length = strlen(name);
    if (length == 0 || length > 63 ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != length)
        return false;
    return !(name[0] >= '0' && name[0] <= '9');
}

static bool parse_option(MudConfig *config, const char *option, const char *value)
{
    long number;
    if (strcmp(option, "--port") == 0 && parse_number(value, 0, 65535, &number))
        config->port = (uint16_t)number;
    else if (strcmp(option, "--host") == 0)
        config->host = value;
    else if (strcmp(option, "--pg") == 0)
        config->conninfo = value;
    else if (strcmp(option, "--schema") == 0 && valid_schema(value))
        config->schema = value;
    else if (strcmp(option, "--tick-ms") == 0 && parse_number(value, 1, 86400000, &number))
        config->tick_ns = MS_TO_NS(number);
    else if (strcmp(option, "--autosave-ms") == 0 && parse_number(value, 1, 86400000, &number))
        config->autosave_ns = MS_TO_NS(number);
    else if (strcmp(option, "--idle-ms") == 0 && parse_number(value, 1, 86400000, &number))
        config->idle_ns = MS_TO_NS(number);
    else
        return false;
    return true;
}

static int parse_args(int argc, char **argv, MudConfig *config)
{
    *config = (MudConfig){
        .host = "0.0.0.0",
        .port = 4000,
        .conninfo = "",
        .tick_ns = MS_TO_NS(5000),
        .autosave_ns = MS_TO_NS(60000),
        .idle_ns = MS_TO_NS(300000),
    };
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 == argc || !parse_option(config, argv[i], argv[i + 1])) {
            fprintf(stderr, "samplex-mud: bad option '%s'\n%s", argv[i], usage);
            return -1;
        }
    }
    return 0;
}

/* ---- Running ---------------------------------------------------------------- */

/* Runs the loop; on the first signal, runs it again for the shutdown (which
 * stops the loop when it is done); a second signal cuts that short. */
static void serve(Mud *mud)
{
    int rc = plex_event_loop_run(mud->loop);
    sig_atomic_t seen = signals_received;
    if (rc == 0 && seen > 0 && mud_shutdown_begin(mud)) {
        rc = plex_event_loop_run(mud->loop);
        if (signals_received != seen) {
            mud_log("second signal: stopping without waiting");
            mud->exit_status = 1;
        }
    }
    if (rc < 0) {
        mud_log("the loop failed: %s", plex_strerror(rc));
        mud->exit_status = 1;
    }
}

static PlexEventLoop *create_loop(PlexRegistry *registry)
{
    PlexEventLoop *loop = plex_event_loop_create(registry);
    if (!loop)
        fprintf(stderr, "samplex-mud: cannot create the event loop: %s%s%s\n", strerror(errno),
                errno == ENOSYS || errno == EPERM ? "\n  " : "",
                errno == ENOSYS || errno == EPERM ? plex_strerror(PLEX_EURING) : "");
    return loop;
}

int main(int argc, char **argv)
{
    Mud mud = {0};
    if (parse_args(argc, argv, &mud.config) < 0)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0); /* the log is read live, line by line */
    mud_list_init(&mud.sessions);
    mud.registry = plex_registry_create();
    mud.loop = mud.registry ? create_loop(mud.registry) : NULL;
    if (!mud.loop) {
        plex_registry_destroy(mud.registry);
        return 1;
    }
    install_signal_handlers(mud.loop);
    int rc = mud_world_create(&mud);
    if (rc == 0)
        rc = storage_start(&mud);
    if (rc < 0) {
        mud_log("cannot start: %s", plex_strerror(rc));
        mud.exit_status = 1;
    } else {
        serve(&mud);
    }
    /* Whatever is still alive ends here: its end handlers and cleanups run,
     * its connections are aborted, and the kernel gives back every buffer. */
    mud.phase = MUD_TEARDOWN;
    plex_event_loop_destroy(mud.loop);
    plex_registry_destroy(mud.registry);
    world_free(&mud);
    mud_log("exit %d", mud.exit_status);
    return mud.exit_status;
}

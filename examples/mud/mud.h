/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex-mud: the types the demo's files share.
 *
 * The whole server is one loop, one thread, and these flows:
 *
 *   startup     connect to Postgres -> create the schema -> load rooms and
 *               exits; when it finishes, the world starts listening.
 *   world       lives for the whole run: owns the Postgres connection, the
 *               listener (one session flow per accepted connection), the
 *               world tick and the autosave timer.
 *   session     one per connection: login -> load player -> command loop ->
 *               save -> goodbye.
 *   autosave    one per autosave: every player's state in one pipelined
 *               batch; "final-save" does the same at shutdown.
 *
 * Invariants:
 * - Nothing here is shared between threads: every handler runs on the loop.
 * - A Session lives in its flow's arena; it is in mud->sessions from accept
 *   until its flow ends, and in its room's occupant list only while PLAYING.
 * - Rooms are allocated by the Mud (not by a flow), so they outlive every
 *   flow, whatever order the loop's teardown ends them in.
 */
#ifndef SAMPLEX_MUD_H
#define SAMPLEX_MUD_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <samplex/samplex.h>

#define MUD_LINE_MAX 512 /* bytes in one input line; longer ones are refused */
#define MUD_NAME_MIN 2
#define MUD_NAME_MAX 20
#define MUD_START_ROOM "square"
#define MUD_WRITE_CAP (256 * 1024) /* queued output per player before we give up on them */
#define MS_TO_NS(ms) ((int64_t)(ms)*1000000LL)

/* ---- A tiny intrusive list (the same idea as the engine's own) ---------- */

typedef struct MudLink {
    struct MudLink *prev;
    struct MudLink *next;
} MudLink;

static inline void mud_list_init(MudLink *head)
{
    head->prev = head->next = head;
}
static inline bool mud_list_empty(const MudLink *head)
{
    return head->next == head;
}
static inline void mud_list_append(MudLink *head, MudLink *link)
{
    link->prev = head->prev;
    link->next = head;
    head->prev->next = link;
    head->prev = link;
}
static inline void mud_list_remove(MudLink *link)
{
    link->prev->next = link->next;
    link->next->prev = link->prev;
    mud_list_init(link);
}
#define MUD_CONTAINER_OF(pointer, type, member) \
    ((type *)(void *)((char *)(pointer)-offsetof(type, member)))

/* ---- Configuration (main.c) --------------------------------------------- */

typedef struct MudConfig {
    const char *host;     /* address to listen on */
    uint16_t port;        /* 0: the kernel picks one (printed when listening) */
    const char *conninfo; /* libpq conninfo; "" reads PGHOST, PGPORT, ... */
    const char *schema;   /* NULL: the default search_path; else a private schema */
    int64_t tick_ns;      /* world tick interval */
    int64_t autosave_ns;  /* autosave interval */
    int64_t idle_ns;      /* a silent player is disconnected after this */
} MudConfig;

/* ---- The world (world.c) ------------------------------------------------ */

typedef enum Direction {
    DIRECTION_NORTH,
    DIRECTION_SOUTH,
    DIRECTION_EAST,
    DIRECTION_WEST,
    DIRECTION_UP,
    DIRECTION_DOWN,
    DIRECTION_COUNT,
    DIRECTION_NONE = -1
} Direction;

typedef struct Room {
    char *id; /* primary key in mud_rooms */
    char *title;
    char *description;
    char *ambience; /* what the world tick shows here */
    struct Room *exits[DIRECTION_COUNT];
    MudLink occupants; /* Session.room_link */
    unsigned occupant_count;
} Room;

typedef enum MudPhase {
    MUD_STARTING, /* the startup flow is running */
    MUD_RUNNING,  /* listening, ticking */
    MUD_SHUTTING_DOWN,
    MUD_TEARDOWN, /* the loop is being destroyed: no more continuations */
} MudPhase;

typedef struct TickStats {
    uint64_t fired;
    uint64_t overruns;
    int64_t lateness_total_ns;
    int64_t lateness_max_ns;
} TickStats;

/* The whole server. Lives in main()'s frame; the world flow's user data. */
typedef struct Mud {
    MudConfig config;
    PlexRegistry *registry;
    PlexEventLoop *loop;
    MudPhase phase;
    int exit_status;
    Plex *world;      /* the world flow */
    PlexPostgres *pg; /* owned by the world flow, used by every flow */
    PlexListener *listener;
    PlexItem *accept; /* world flow steps */
    PlexItem *tick;
    PlexItem *autosave;
    PlexItem *deadline;
    PlexItem *pg_close;
    PlexItem *pg_reconnect;
    PlexItem *search_path;
    PlexTimer *tick_timer;
    PlexTimer *autosave_timer;
    PlexTimer *deadline_timer;
    Room *rooms;
    size_t room_count;
    Room *start_room;
    MudLink sessions; /* Session.link: every live session flow */
    size_t session_count;
    bool autosave_running;       /* one autosave batch at a time */
    bool final_save_done;        /* shutdown: everyone's state is saved */
    bool pg_closing;             /* shutdown: the last step has begun */
    uint64_t pg_reset_ns;        /* when we last tried to reconnect */
    char schema_identifier[160]; /* --schema, quoted by libpq; "" without */
    TickStats ticks;
} Mud;

/* ---- A connection (session.c, players.c) -------------------------------- */

typedef struct TelnetIO TelnetIO;

typedef enum SessionState {
    SESSION_LOGIN,   /* waiting for a name */
    SESSION_LOADING, /* the player row is being loaded */
    SESSION_PLAYING, /* in a room, running commands */
    SESSION_SAVING,  /* out of the world, the final save is running */
    SESSION_CLOSING, /* the connection is closing; the flow ends when it has */
} SessionState;

#define SESSION_TYPEAHEAD 2048 /* bytes of lines typed while the player loads */

typedef struct Session {
    Mud *mud;
    Plex *plex;
    PlexConnection *conn;
    TelnetIO *telnet;
    PlexItem *read; /* the steps of the session flow */
    PlexItem *write;
    PlexItem *idle;
    PlexItem *load;
    PlexItem *save;
    PlexItem *close;
    PlexTimer *idle_timer;
    SessionState state;
    bool reading;                /* the multishot read has not made its last call */
    bool output_closed;          /* a write failed: send nothing more */
    bool created;                /* the player row was new */
    bool spoke;                  /* a line was typed at the login prompt */
    char name[MUD_NAME_MAX + 1]; /* "" until logged in */
    char peer[64];               /* "address:port", for the log */
    Room *room;                  /* while PLAYING */
    Room *position;              /* where the player is or was last: what is saved */
    MudLink link;                /* in mud->sessions */
    MudLink room_link;           /* in room->occupants */
    size_t typeahead_length;     /* lines typed during SESSION_LOADING, NUL-separated */
    char typeahead[SESSION_TYPEAHEAD];
} Session;

/* ---- log.c -------------------------------------------------------------- */

/* Prints one line to stdout with a time stamp; stdout is line buffered. */
void mud_log(const char *format, ...) __attribute__((format(printf, 1, 2)));
void mud_log_flow_started(Plex *plex);
/* Logs how a flow ended and each step's timing (plex_item_timing). */
void mud_log_flow_ended(Plex *plex, int status, const char *who);

/* ---- telnet_io.c -------------------------------------------------------- */

typedef struct TelnetIOHandlers {
    /* A complete line, scrubbed: printable ASCII and valid UTF-8 only,
     * NUL-terminated, without its end of line. */
    void (*line)(void *context, const char *line, size_t length);
    /* A line passed MUD_LINE_MAX bytes: the rest of it is being discarded. */
    void (*overlong)(void *context);
    /* Bytes for the socket (telnet-encoded). */
    void (*send)(void *context, const void *bytes, size_t length);
    /* The peer broke the protocol (`reason` says how): called once, after
     * which its input is ignored. Printing still works. */
    void (*refused)(void *context, const char *reason);
} TelnetIOHandlers;

TelnetIO *telnet_io_create(PlexArena *arena, const TelnetIOHandlers *handlers, void *context);
void telnet_io_destroy(TelnetIO *io);
void telnet_io_receive(TelnetIO *io, const void *data, size_t length);
/* Sends text ("\n" becomes CRLF, 0xFF is escaped): one socket write. */
void telnet_io_print(TelnetIO *io, const char *text);
/* Copies `input` to `output` (capacity >= length + 1) keeping only printable
 * ASCII and well-formed UTF-8 (no C1 controls); invalid bytes become '?',
 * backspace and DEL erase, other control bytes vanish. Returns the length. */
size_t telnet_io_scrub(const char *input, size_t length, char *output);

/* ---- world.c ------------------------------------------------------------ */

int world_load_rooms(Mud *mud, const struct pg_result *rows);
int world_load_exits(Mud *mud, const struct pg_result *rows);
void world_free(Mud *mud);
Room *world_find_room(Mud *mud, const char *id);
Direction world_parse_direction(const char *word);
const char *world_direction_name(Direction direction);
void world_enter(Room *room, Session *session);
void world_leave(Session *session);
/* Sends `text` to everyone in `room` but `except` (may be NULL). */
void world_broadcast(Room *room, const Session *except, const char *text);
void world_broadcastf(Room *room, const Session *except, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
/* The world flow's recurring tick step. */
void world_on_tick(Plex *plex, PlexItem *item, const PlexEvent *event);
void world_log_tick_summary(const Mud *mud);

/* ---- players.c ---------------------------------------------------------- */

/* Validates a typed name and writes its canonical form ("Alice"). Returns
 * 0, or -EINVAL with `why` set to a message for the player. */
int players_canonical_name(const char *typed, char *name, const char **why);
/* The live session using `name` (logging in or playing), or NULL. */
Session *players_find(Mud *mud, const char *name);
size_t players_count_playing(const Mud *mud);
/* Prints the "who" list to `viewer`. */
void players_print_who(Mud *mud, Session *viewer);
void players_tell_all(Mud *mud, const char *text);

/* ---- session.c ---------------------------------------------------------- */

/* The world flow's accept step: one session flow per connection. */
void session_on_accept(Plex *plex, PlexItem *item, const PlexEvent *event);
void session_on_accept_end(Plex *plex, PlexItem *item, const PlexEvent *event);
void session_print(Session *session, const char *text);
void session_printf(Session *session, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* The player asked to leave: save, then goodbye. */
void session_quit(Session *session, const char *farewell);
/* Closes the connection gracefully (queued output is sent first). */
void session_close(Session *session);
/* The player row arrived (storage.c calls it). */
void session_loaded(Session *session, const char *room_id, long logins);
void session_load_failed(Session *session, int status);
void session_saved(Session *session, int status);

/* ---- commands.c --------------------------------------------------------- */

void commands_run(Session *session, const char *line);
void commands_look(Session *session);

/* ---- storage.c ---------------------------------------------------------- */

/* Creates the startup flow: connect, schema, rooms, exits. When it ends,
 * `mud->phase` says how: MUD_RUNNING on success (the world is started). */
int storage_start(Mud *mud);
/* Queue the player's load (create or restore) / save on the session's
 * "load" / "save" step, whose handlers are these two. 0 or < 0. */
int storage_load_player(Session *session);
int storage_save_player(Session *session);
void storage_on_player_loaded(Plex *plex, PlexItem *item, const PlexEvent *event);
void storage_on_player_saved(Plex *plex, PlexItem *item, const PlexEvent *event);
/* Saves every playing session in one pipelined batch, in a flow of its own.
 * `final`: the shutdown's save; when it ends, shutdown goes on. Returns the
 * number of saves queued (0: nothing to save, no flow made), or < 0. */
int storage_save_all(Mud *mud, bool final);
/* The world flow's autosave step. */
void storage_on_autosave(Plex *plex, PlexItem *item, const PlexEvent *event);
/* The world flow's reconnect step and the search_path query after it. */
void storage_on_reconnect(Plex *plex, PlexItem *item, const PlexEvent *event);
void storage_on_search_path(Plex *plex, PlexItem *item, const PlexEvent *event);

/* ---- server.c: the world flow ------------------------------------------- */

/* Creates the world flow and its steps; starts nothing. 0 or < 0. */
int mud_world_create(Mud *mud);
/* The startup flow ended well: listen, tick, autosave. 0 or < 0. */
int mud_world_start(Mud *mud);
/* SIGINT/SIGTERM: tell everyone, save everyone, close everything; the loop
 * stops when that is done. Returns false if there is nothing to wait for. */
bool mud_shutdown_begin(Mud *mud);
/* Shutdown steps: the final save is done / a session flow ended. */
void mud_shutdown_saved(Mud *mud);
void mud_session_ended(Mud *mud);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internals of the Postgres adapter, shared by plex_postgres.c (the
 * connection object and its public API), plex_pg_conn.c (its socket on the
 * ring and the libpq state machine), plex_pg_request.c (request records,
 * queries, results, notifications) and plex_pg_pool.c. Never installed.
 *
 * Invariants:
 * - A PlexPostgres lives while `refs` > 0: one ref while not destroyed, one
 *   per op of its own in flight (poll, timeout, kick), one while its input
 *   is being processed. So a handler may destroy the connection it is being
 *   called for; processing notices (state is no longer PG_READY) and stops.
 * - `requests` is the FIFO of what was started on the connection and has
 *   not ended: queries (sent or, when they cannot go out yet, packed into
 *   their record), pipeline syncs, and a close. Results are matched to its
 *   head. Only the head may be in flight outside pipeline mode.
 * - A request with an item holds: a PlexResource on the item's flow (so the
 *   flow's end detaches it at once), one op on the item
 *   (plex_item_op_begin), and one hold on the loop. All three end together,
 *   either with the final handler call or silently when the flow ends; the
 *   record itself stays in the FIFO until the server is done with it.
 * - At most one poll is armed per connection (`poll_op`). A poll whose
 *   connection was dropped is orphaned: it carries the PGconn to PQfinish
 *   when its (cancelled) completion arrives, so libpq never closes a socket
 *   the kernel is still polling.
 */
#ifndef SAMPLEX_PG_INTERNAL_H
#define SAMPLEX_PG_INTERNAL_H

#include <stdint.h>

#include <libpq-fe.h>

#include <samplex/plex_postgres.h>

#include "adapters/loop.h"

typedef enum PgState {
    PG_IDLE,       /* never connected, or closed */
    PG_CONNECTING, /* PQconnectPoll in progress */
    PG_READY,      /* connected */
    PG_BROKEN,     /* connect failed or connection lost */
    PG_DEAD,       /* destroyed; waiting for refs to drop */
} PgState;

typedef enum PgRequestKind {
    PG_REQUEST_QUERY,
    PG_REQUEST_SYNC,    /* pipeline sync marker, no item */
    PG_REQUEST_CLOSE,   /* graceful close, after everything before it */
    PG_REQUEST_CONNECT, /* pg->connect, not in the FIFO */
    PG_REQUEST_LISTEN,  /* pg->listen, not in the FIFO */
} PgRequestKind;

typedef enum PgSendKind {
    PG_SEND_SIMPLE,   /* PQsendQuery (PQsendQueryParams in pipeline mode) */
    PG_SEND_PARAMS,   /* PQsendQueryParams */
    PG_SEND_PREPARE,  /* PQsendPrepare */
    PG_SEND_PREPARED, /* PQsendQueryPrepared */
} PgSendKind;

/* What to send. Borrowed from the caller, or pointing into a record's
 * storage once packed. */
typedef struct PgCommand {
    PgSendKind how;
    const char *text; /* SQL; PG_SEND_PREPARED: the statement name */
    const char *name; /* PG_SEND_PREPARE: the statement name */
    int count;
    const Oid *types;
    const char *const *values;
    const int *lengths;
    const int *formats;
    int result_format;
} PgCommand;

typedef struct PgRequest {
    PlexLink link;         /* in pg->requests, or the module's free list */
    PlexResource resource; /* on the item's flow while `item` is set */
    PlexPostgres *pg;
    PlexItem *item;    /* NULL: nobody waits (flow ended, or internal) */
    PGresult *held;    /* latest result, delivered when the next shows up */
    PgCommand command; /* valid while !sent (packed into storage) */
    char *storage;     /* kept across reuse; freed when large */
    size_t capacity;
    uint64_t deadline_ns; /* plex_now_ns() clock; 0: none */
    PgRequestKind kind;
    bool sent;
    bool copy_refused; /* it started a COPY; its error is -ENOTSUP */
} PgRequest;

/* Per-loop state: the record free list, the connections to flush before
 * the loop enters the kernel, and what the running handler was lent. */
typedef struct PgModule {
    PlexEventLoop *loop;
    PlexLink free_requests; /* PgRequest.link */
    void *slabs;            /* chain of record slabs */
    PlexLink dirty;         /* PlexPostgres.dirty_link */
    PGresult *lent_result;  /* the result of the running handler */
    const PGnotify *lent_notify;
    bool flushing; /* pg_module_flush is running: no read-ahead */
} PgModule;

struct PlexPostgres {
    PlexResource resource;   /* owned by a flow; detached when pool-owned */
    PlexAllocator allocator; /* a copy: the owner flow may end first */
    PlexEventLoop *loop;     /* set by the first connect */
    PgModule *module;
    PGconn *conn; /* NULL unless CONNECTING or READY */
    char *conninfo;
    PgState state;
    unsigned refs;
    PlexOp *poll_op;       /* the armed poll, or NULL */
    unsigned poll_mask;    /* what it waits for */
    unsigned connect_mask; /* what PQconnectPoll asked for */
    PlexOp *timeout_op;    /* connect deadline, or a pool's reconnect delay */
    PlexOp *kick_op;       /* a NOP: deferred work outside handlers */
    PlexOp *deadline_op;   /* armed for the earliest query deadline, or NULL */
    PlexLink requests;     /* PgRequest.link, FIFO */
    PlexLink dirty_link;   /* in module->dirty */
    PgRequest *connect;    /* the connect step, or NULL */
    PgRequest *listen;     /* the listen step, or NULL */
    PgRequest *close_done; /* a close to report from the next kick */
    unsigned queued;       /* queries in `requests` */
    unsigned max_queued;
    unsigned unsent;   /* queries in `requests` still packed, not sent */
    unsigned unsynced; /* pipeline: queries sent since the last sync */
    int connect_error; /* a connect failure to report from the kick */
    bool error_kept;   /* `error` is the best account (a FATAL notice...) */
    int64_t connect_timeout_ns;
    int64_t query_timeout_ns;   /* for the queries started from now; 0: none */
    uint64_t deadline_armed_ns; /* when deadline_op fires */
    bool pipeline;
    bool want_write;        /* PQflush returned 1 */
    unsigned sends;         /* queries handed to libpq, ever (wraps) */
    unsigned sends_read;    /* `sends` at the latest read */
    uint8_t early_rate;     /* read-ahead: recent hit rate, 0..255 */
    uint8_t early_skip;     /* read-ahead: chances to skip before a sample */
    bool closing;           /* a close is queued: no new queries */
    PlexPostgresPool *pool; /* NULL unless pooled */
    int64_t backoff_ns;     /* pool: next reconnect delay */
    bool retry_lost;        /* pool: that delay could not be armed (no memory) */
    char error[512];        /* saved libpq message once conn is gone */
};

/* ---- plex_postgres.c --------------------------------------------------- */

PgModule *pg_module_get(PlexEventLoop *loop);
void pg_ref(PlexPostgres *pg);
void pg_unref(PlexPostgres *pg);
/* Queues the connection for the flush before the loop enters the kernel. */
void pg_mark_dirty(PlexPostgres *pg);
/* True when libpq can parse `conninfo`. */
bool pg_conninfo_valid(const char *conninfo);
/* Creates a connection object (shared by the public create and the pool). */
PlexPostgres *pg_new(const PlexAllocator *allocator, const char *conninfo);
/* Ties the connection to `loop` (once) and binds its owner flow there. */
int pg_attach_loop(PlexPostgres *pg, PlexEventLoop *loop);
/* Starts a connect with no step (the pool's). 0 or a negative errno. */
int pg_connect_internal(PlexEventLoop *loop, PlexPostgres *pg, int64_t timeout_ns);
/* Destroys: fails what is pending (later, from a kick), drops the socket. */
void pg_kill(PlexPostgres *pg);
/* The deferred work a kick runs (see plex_postgres.c). */
void pg_settle(PlexPostgres *pg);
/* Keeps libpq's text (trailing newlines cut) for plex_postgres_error_message. */
void pg_save_error(PlexPostgres *pg, const char *message);
/* As pg_save_error, and no later libpq text replaces it until the next
 * connect: the server's FATAL notice, or samplex's own reason. */
void pg_keep_error(PlexPostgres *pg, const char *message);
/* PQerrorMessage of the live PGconn, or `fallback` when it has none. */
void pg_save_conn_error(PlexPostgres *pg, const char *fallback);

/* ---- plex_pg_conn.c ---------------------------------------------------- */

/* PQconnectStart and the first poll (plus the deadline when > 0). A failure
 * libpq reports at once is delivered from a kick. 0 or a negative errno
 * (nothing started). */
int pg_connect_begin(PlexPostgres *pg, int64_t timeout_ns);
/* Forgets the PGconn: PQfinish now, or once the armed poll is back. */
void pg_drop_conn(PlexPostgres *pg);
/* Cancels the connect deadline or the reconnect delay, if armed. */
void pg_timeout_cancel(PlexPostgres *pg);
/* Arms the pool's reconnect delay. */
int pg_schedule_retry(PlexPostgres *pg, int64_t delay_ns);
/* Makes sure the deadline timer fires by `deadline_ns`. 0 or a negative
 * errno (nothing changed). */
int pg_deadline_ensure(PlexPostgres *pg, uint64_t deadline_ns);
/* Disarms the deadline timer (its completion does nothing). */
void pg_deadline_cancel(PlexPostgres *pg);
/* Schedules pg_settle from a NOP completion. 0 or a negative errno. */
int pg_kick(PlexPostgres *pg);
/* Sends what is queued, reads what libpq has, delivers results, re-arms. */
void pg_process(PlexPostgres *pg);
/* The connection is lost: drops it, fails everything pending (the head
 * query with `head_code` and `result`, which it takes), tells the pool. */
void pg_break(PlexPostgres *pg, PGresult *result, int head_code);
/* The loop's flush hook: syncs and flushes the connections marked dirty. */
void pg_module_flush(PlexEventLoop *loop, void *state);

/* ---- plex_pg_request.c ------------------------------------------------- */

void pg_module_records_fini(PgModule *module);
/* A record for `item` (NULL: internal); attaches, begins, holds. */
int pg_request_begin(PlexPostgres *pg, PlexItem *item, PgRequestKind kind, PgRequest **out);
/* Undoes pg_request_begin for a start that failed: no handler runs. */
void pg_request_abort(PgRequest *request);
/* Delivers a handler call; `last` ends the request (not the record). */
void pg_request_deliver(PgRequest *request, const PlexEvent *event, bool last);
/* Delivers a final result code with no PGresult. */
void pg_request_fail(PgRequest *request, int code);
/* Returns a record to the free list (clears what it holds). */
void pg_request_put(PgRequest *request);
/* Sends a command now. 0, or -EIO / PLEX_EPGBROKEN (libpq refused). */
int pg_command_send(PlexPostgres *pg, const PgCommand *command);
/* Copies a command into the record so it can be sent later. */
int pg_command_pack(PgRequest *request, const PgCommand *command);
/* Delivers one result of the head query; holds back the latest. Returns
 * false when the connection broke (a FATAL error) and processing must stop. */
bool pg_result_take_in(PlexPostgres *pg, PgRequest *request, PGresult *result);
/* The head query has no more results: delivers the last one and frees it. */
void pg_request_finish(PlexPostgres *pg, PgRequest *request);
/* The connection broke under `request`: delivers `code` (with `result`,
 * lent, when the server said why) as its last call. */
void pg_request_broken(PlexPostgres *pg, PgRequest *request, PGresult *result, int code);
/* Fails the queries whose deadline has passed with -ETIMEDOUT (see
 * plex_pg_request.c), then re-arms the timer for the earliest left. */
void pg_deadlines_expire(PlexPostgres *pg);
/* Delivers every notification libpq holds (or drops them: no listener). */
void pg_notifications_deliver(PlexPostgres *pg);
/* Delivers `code` as the request's last call and frees the record (NULL
 * is a no-op): the connect step's outcome. */
void pg_request_report(PlexPostgres *pg, PgRequest *request, int code);

/* What was pending on a connection, taken off it in one go before any
 * handler runs, so handlers may queue on a fresh connection meanwhile. */
typedef struct PgTaken {
    PlexLink requests; /* the FIFO */
    PgRequest *listen;
} PgTaken;

void pg_requests_take(PlexPostgres *pg, PgTaken *taken);
/* The first taken request, when it is a query, or NULL (stays taken). */
PgRequest *pg_taken_head_query(PgTaken *taken);
/* Fails every taken request once with `code` (a close with 0). */
void pg_taken_fail(PlexPostgres *pg, PgTaken *taken, int code);
/* Take, then fail. */
void pg_requests_fail_all(PlexPostgres *pg, int code);
/* Copies validated parameters into a command: 0 or -EINVAL. */
int pg_params_apply(PgCommand *command, const PlexPostgresParams *params);
/* Starts a query-like command on `pg` for `item`. */
int pg_command_start(PlexPostgres *pg, PlexItem *item, const PgCommand *command);
/* The request at the head of the FIFO, or NULL. */
static inline PgRequest *pg_request_head(PlexPostgres *pg)
{
    if (plex_link_empty(&pg->requests))
        return NULL;
    return PLEX_CONTAINER_OF(pg->requests.next, PgRequest, link);
}

/* ---- plex_pg_pool.c ---------------------------------------------------- */

/* A pooled connection connected or broke. */
void pg_pool_on_state(PlexPostgres *pg);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexPostgres: asynchronous PostgreSQL (libpq) on the loop's ring.
 *
 * Invariants:
 * - A PlexPostgres is one libpq connection, owned by the flow that created
 *   it (it ends with the flow). It lives on the loop it was first connected
 *   on. Any flow of that loop may queue queries on it.
 * - The socket is watched with one one-shot IORING_OP_POLL_ADD at a time:
 *   while connecting, for exactly what PQconnectPoll asked; once connected,
 *   for POLLIN always (so a lost server is noticed even when idle) and for
 *   POLLOUT only while PQflush says libpq holds unsent data. The loop never
 *   spins on a writable socket. Before libpq may close the socket (PQfinish)
 *   the armed poll is cancelled and its completion awaited.
 * - Every operation started here (connect, query, prepare, close, listen)
 *   that returned 0 ends in exactly one final handler call (PLEX_EVENT_MORE
 *   clear); one that returned < 0 calls no handler. If the step's flow ends
 *   first, no handler runs, its pin is dropped at once, and the connection
 *   stays usable: whatever the server still sends for it is read and thrown
 *   away (no cancel request is sent).
 * - Queries on one connection run in the order they were queued. Pending
 *   queries are capped (plex_postgres_set_max_queued); past the cap a start
 *   fails with -EAGAIN.
 * - A lost connection (server restart, pg_terminate_backend, network) makes
 *   every pending query's error handler run once with PLEX_EPGBROKEN; no
 *   query is ever retried. The connection is then broken
 *   (plex_postgres_is_broken) until reconnected, which is explicit
 *   (plex_postgres_reset); pooled connections reconnect by themselves, with
 *   backoff.
 * - Steady state allocates nothing beyond what libpq does: request records
 *   come from a per-loop free list and keep their buffers.
 * - Nothing is printed: the server's NOTICE and WARNING messages are
 *   dropped (libpq would print them); a FATAL one becomes the connection's
 *   error message.
 *
 * Results. A query's handler gets event->postgres and event->pg_result (a
 * libpq PGresult). The result is BORROWED: samplex PQclear()s it after the
 * handler returns, unless the handler took it with plex_postgres_result_take,
 * which makes the caller the owner (free it with PQclear). A query that
 * yields several results (a multi-statement string such as "SELECT 1; SELECT
 * 2") calls its handler once per result, in order, with PLEX_EVENT_MORE set
 * on every call but the last. event->result is, on success, the number of
 * rows returned (SELECT) or affected (INSERT/UPDATE/DELETE...), clamped to
 * INT_MAX; on failure:
 *   PLEX_EPG        the server reported an error: SQLSTATE through
 *                   plex_postgres_sqlstate(event), the message through
 *                   PQresultErrorMessage(event->pg_result).
 *   PLEX_EPIPELINE  pipeline mode: an earlier query of the same sync group
 *                   failed, so the server skipped this one
 *                   (PGRES_PIPELINE_ABORTED).
 *   PLEX_EPGBROKEN  the connection was lost (event->pg_result is the
 *                   server's FATAL message when there was one, else NULL;
 *                   plex_postgres_error_message() has libpq's text).
 *   -ENOMEM         samplex ran out of memory while driving the connection,
 *                   which is then broken: the other pending queries fail
 *                   with PLEX_EPGBROKEN.
 *   -ECANCELED      the connection was destroyed (or its owner flow ended)
 *                   before the query finished.
 *   -ETIMEDOUT      the query's deadline passed first
 *                   (plex_postgres_set_query_timeout).
 *   -ENOTSUP        the query started a COPY, which samplex does not drive.
 *   -EIO            libpq refused to send a queued query (message in
 *                   plex_postgres_error_message()).
 *
 * Pipeline mode (plex_postgres_set_pipeline): queries are sent without
 * waiting for earlier results. Every query queued on the connection during
 * one loop iteration goes out together, followed by one Sync, right before
 * the loop enters the kernel, so the queries of many flows share one round
 * trip. A failing query aborts the rest of its own sync group only (they get
 * PLEX_EPIPELINE); later groups run normally. In pipeline mode a query is a
 * single statement (libpq sends it with the extended protocol).
 *
 * Everything returned or lent by this module follows libpq's types; this
 * header only forward-declares them (struct pg_result is PGresult, struct
 * pgNotify is PGnotify, Oid is unsigned int), so including it needs no libpq
 * headers. Include <libpq-fe.h> to read results.
 */
#ifndef SAMPLEX_PLEX_POSTGRES_H
#define SAMPLEX_PLEX_POSTGRES_H

#include "plex.h"

#ifdef __cplusplus
extern "C" {
#endif

struct pg_conn;  /* libpq's PGconn */
struct pgNotify; /* libpq's PGnotify */

typedef struct PlexPostgresPool PlexPostgresPool;

/* Default cap on pending queries per connection. */
#define PLEX_POSTGRES_DEFAULT_MAX_QUEUED 4096u

/* Parameters of plex_postgres_query_params / _query_prepared. Everything is
 * copied (or sent) before the call returns; nothing here is kept. */
typedef struct PlexPostgresParams {
    int count;                 /* number of parameters, 0..65535 */
    const unsigned int *types; /* Oids, or NULL: the server infers them */
    const char *const *values; /* count values; a NULL entry is SQL NULL */
    const int *lengths;        /* byte lengths of binary values; NULL if all text */
    const int *formats;        /* per value 0 text, 1 binary; NULL: all text */
    int result_format;         /* 0 text, 1 binary */
} PlexPostgresParams;

/* ---- Connection -------------------------------------------------------- */

/* Creates a connection object (not connected yet) owned by `plex`: when the
 * flow ends, the connection is closed and freed. `conninfo` is a libpq
 * connection string or URI, copied; "" means libpq's defaults and
 * environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, ...). Host
 * names are resolved by libpq synchronously: use hostaddr= (or an IP in
 * host=) to keep the loop from blocking on DNS. Returns NULL and sets errno:
 * EINVAL (NULL argument, dead flow, conninfo libpq cannot parse), ENOMEM. */
PlexPostgres *plex_postgres_create(Plex *plex, const char *conninfo);

/* Closes the connection at once and frees it (its memory once the kernel
 * has given back the cancelled poll). Every pending step (connect, queries,
 * listen) of other flows gets its error handler with -ECANCELED on a later
 * loop iteration, never inside this call. Returns 0 or -EINVAL. */
int plex_postgres_destroy(PlexPostgres *pg);

/* Starts connecting on `loop` (PQconnectStart/PQconnectPoll). The item's
 * on_success runs once connected (result 0), its on_error on failure:
 * -ETIMEDOUT when `timeout_ns` (> 0) passes first (0: no deadline of
 * samplex's own; libpq ignores connect_timeout in this mode), PLEX_EPGBROKEN
 * when libpq gives up (wrong port, wrong password, ...: the reason is in
 * plex_postgres_error_message(pg)), -ENOMEM when samplex ran out of memory
 * on the way, -ECANCELED if the connection is destroyed first. Queries may
 * be queued while connecting; they are sent once connected, and fail with
 * PLEX_EPGBROKEN if the connect fails.
 * Returns 0, -EINVAL (NULL, negative timeout, a pooled connection), -ESTALE
 * (the item's flow ended), -EXDEV (pg or the item's flow lives on another
 * loop), -EALREADY (connecting, or the outcome of an earlier connect or
 * close has not been reported yet: retry from that handler or later),
 * -EISCONN (connected), -ESHUTDOWN (loop being destroyed), -ENOMEM. */
int plex_postgres_connect(PlexEventLoop *loop, PlexPostgres *pg, PlexItem *item,
                          int64_t timeout_ns);

/* Reconnects a broken or closed connection on the loop it used before; the
 * same as plex_postgres_connect on that loop. Returns as connect, and
 * -ENOTCONN if it was never connected. */
int plex_postgres_reset(PlexPostgres *pg, PlexItem *item, int64_t timeout_ns);

/* Closes the connection gracefully: queries queued before the close run
 * (their handlers too); then the socket is closed and the item's on_success
 * runs with result 0. Queries started after the close fail with
 * -ESHUTDOWN. The connection may be connected again afterwards. Returns 0,
 * -EINVAL, -ENOTCONN (not connected or connecting), -EALREADY (closing). */
int plex_postgres_close(PlexPostgres *pg, PlexItem *item);

/* Turns pipeline mode on or off (see the header comment). Takes effect at
 * once when nothing is pending, else -EBUSY; before connecting it sets the
 * mode the connection will use. Returns 0, -EINVAL, -EBUSY, -EIO. */
int plex_postgres_set_pipeline(PlexPostgres *pg, bool enabled);

/* Caps pending queries (queued + in flight) on this connection; 0 restores
 * PLEX_POSTGRES_DEFAULT_MAX_QUEUED. Returns 0 or -EINVAL. */
int plex_postgres_set_max_queued(PlexPostgres *pg, unsigned max_queued);

/* Gives every query started on this connection from now on (query,
 * query_params, prepare, query_prepared, and the pool's) a deadline
 * `timeout_ns` after its start call; 0, the default, means none (only the
 * server's statement_timeout). Time spent queued behind earlier queries
 * counts. Queries already pending keep the deadline they started with.
 * Policy when a query's deadline passes before its last result:
 * - its step's on_error runs once with -ETIMEDOUT (event->pg_result NULL),
 *   and no handler of it runs again;
 * - the connection stays up and in order: samplex sends no cancel request,
 *   so the server runs the query to its end (bound that with
 *   statement_timeout); what it sends back for it is read and thrown away,
 *   and the queries queued behind it run after it, each with its own
 *   deadline. A query whose deadline passes before it was sent is never
 *   sent.
 * Returns 0 or -EINVAL (NULL, negative timeout). */
int plex_postgres_set_query_timeout(PlexPostgres *pg, int64_t timeout_ns);

/* True after a connection was lost or a connect failed, until the next
 * successful connect. False for NULL. */
bool plex_postgres_is_broken(const PlexPostgres *pg);

/* True while connected and usable. False for NULL. */
bool plex_postgres_is_connected(const PlexPostgres *pg);

/* Pending queries (queued and in flight). 0 for NULL. */
unsigned plex_postgres_queued(const PlexPostgres *pg);

/* libpq's last error message for this connection (why a connect failed, why
 * the connection broke), or "" when there is none. Never NULL; valid until
 * the next call on this connection. */
const char *plex_postgres_error_message(const PlexPostgres *pg);

/* The underlying PGconn while connected (NULL otherwise), for libpq helpers
 * such as PQescapeLiteral or PQserverVersion. Do not use it to send, read,
 * or close: samplex drives the connection. */
struct pg_conn *plex_postgres_conn(PlexPostgres *pg);

/* ---- Queries ----------------------------------------------------------- */

/* Queues `sql` (PQsendQuery; may hold several statements outside pipeline
 * mode). The item's handlers get the results as described above. `sql` is
 * copied or sent before the call returns. Returns 0, -EINVAL (NULL
 * argument), -ESTALE (the item's flow ended), -EXDEV (flow on another loop),
 * -ENOTCONN (never connected, or closed), PLEX_EPGBROKEN (broken: reset
 * first), -ESHUTDOWN (closing), -EAGAIN (cap reached), -ENOMEM, -EIO (libpq
 * refused to send; see plex_postgres_error_message). */
int plex_postgres_query(PlexPostgres *pg, PlexItem *item, const char *sql);

/* As plex_postgres_query with parameters $1..$n (PQsendQueryParams): values
 * travel apart from the SQL text, so they need no quoting. `params` may be
 * NULL (no parameters). Also -EINVAL for a bad `params` (count out of range,
 * values NULL with count > 0, a binary value without its length, a format
 * other than 0 or 1). */
int plex_postgres_query_params(PlexPostgres *pg, PlexItem *item, const char *sql,
                               const PlexPostgresParams *params);

/* Prepares statement `name` ("" is the unnamed statement) from `sql`
 * (PQsendPrepare). `param_types` may be NULL. The handler gets the
 * PGRES_COMMAND_OK result, or PLEX_EPG. Returns as plex_postgres_query. */
int plex_postgres_prepare(PlexPostgres *pg, PlexItem *item, const char *name, const char *sql,
                          int param_count, const unsigned int *param_types);

/* Runs a prepared statement (PQsendQueryPrepared); `params` as in
 * plex_postgres_query_params (its types are ignored). */
int plex_postgres_query_prepared(PlexPostgres *pg, PlexItem *item, const char *name,
                                 const PlexPostgresParams *params);

/* From inside a query handler: takes ownership of event->pg_result, so that
 * it outlives the handler; free it with PQclear. Returns NULL (errno EINVAL)
 * when the event has no result or it was already taken. */
struct pg_result *plex_postgres_result_take(const PlexEvent *event);

/* The SQLSTATE of a failed query's result ("42601"...), or NULL when the
 * event carries no result or the result has none. Borrowed like the
 * result. */
const char *plex_postgres_sqlstate(const PlexEvent *event);

/* ---- Notifications ----------------------------------------------------- */

/* Starts a step that receives notifications (LISTEN/NOTIFY) on this
 * connection: the item's on_success runs once per notification, with
 * PLEX_EVENT_MORE set and the notification available through
 * plex_postgres_notification(event); result is the notifying backend's pid.
 * Subscribe with a query ("LISTEN channel") as usual. The step lasts (and
 * keeps the loop running) until plex_postgres_unlisten, which ends it
 * without a handler call, or until the connection breaks (on_error,
 * PLEX_EPGBROKEN), closes or is destroyed (on_error, -ECANCELED): that call
 * is the last. Notifications arriving while no listen step is armed are
 * dropped. Returns 0, -EINVAL, -ESTALE, -EXDEV, -ENOTCONN, PLEX_EPGBROKEN,
 * -EBUSY (a listen step is already armed), -ENOMEM. */
int plex_postgres_listen(PlexPostgres *pg, PlexItem *item);

/* Ends the listen step silently (no handler call). Returns 0, -EINVAL,
 * -ENOENT (none armed). */
int plex_postgres_unlisten(PlexPostgres *pg);

/* From inside a listen handler: the notification (relname is the channel,
 * extra the payload, be_pid the sender), borrowed until the handler
 * returns. NULL for any other event. */
const struct pgNotify *plex_postgres_notification(const PlexEvent *event);

/* ---- Pool -------------------------------------------------------------- */

typedef struct PlexPostgresPoolConfig {
    unsigned connections;       /* 1..64; 0: 4 */
    unsigned max_queued;        /* cap on pending queries over the pool; 0: 4096 */
    bool pipeline;              /* run every connection in pipeline mode */
    int64_t connect_timeout_ns; /* per attempt; 0: 10 s */
    int64_t backoff_min_ns;     /* first delay before a reconnect; 0: 50 ms */
    int64_t backoff_max_ns;     /* the delay doubles up to this; 0: 5 s */
    int64_t query_timeout_ns;   /* every connection's plex_postgres_set_query_timeout; 0: none */
} PlexPostgresPoolConfig;

/* Creates a pool of connections on `loop`, owned by `plex`, and starts
 * connecting them all. A pooled connection that fails or breaks reconnects
 * by itself after a delay that doubles per failure (backoff_min_ns up to
 * backoff_max_ns) and resets once connected; its pending queries still fail
 * (PLEX_EPGBROKEN), never retried. `config` may be NULL (defaults). Returns
 * NULL and sets errno: EINVAL, EXDEV (flow on another loop), ENOMEM. */
PlexPostgresPool *plex_postgres_pool_create(Plex *plex, PlexEventLoop *loop, const char *conninfo,
                                            const PlexPostgresPoolConfig *config);

/* Closes every connection (pending queries of other flows fail with
 * -ECANCELED on a later iteration) and frees the pool. 0 or -EINVAL. */
int plex_postgres_pool_destroy(PlexPostgresPool *pool);

/* Queues a query on the least busy connected connection (or, while none is
 * connected yet, a connecting one); event->postgres says which one ran it.
 * Returns as plex_postgres_query / _query_params, with -EAGAIN when the
 * pool's cap on pending queries is reached and -ENOTCONN when no
 * connection is connected or connecting (all waiting to reconnect). */
int plex_postgres_pool_query(PlexPostgresPool *pool, PlexItem *item, const char *sql);
int plex_postgres_pool_query_params(PlexPostgresPool *pool, PlexItem *item, const char *sql,
                                    const PlexPostgresParams *params);

/* Connections currently connected; 0 for NULL. */
unsigned plex_postgres_pool_connected(const PlexPostgresPool *pool);

/* Pending queries over all connections; 0 for NULL. */
unsigned plex_postgres_pool_queued(const PlexPostgresPool *pool);

/* Connection `index` (0..connections-1), e.g. to watch its state; NULL when
 * out of range. It belongs to the pool: never destroy or close it. */
PlexPostgres *plex_postgres_pool_connection(PlexPostgresPool *pool, unsigned index);

#ifdef __cplusplus
}
#endif
#endif

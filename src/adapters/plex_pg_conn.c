/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A Postgres connection's socket on the ring, and the state machine that
 * drives libpq: connecting, sending, reading, delivering, breaking.
 *
 * Invariants (see also pg_internal.h):
 * - libpq is only called with its socket quiet in the kernel's eyes: either
 *   no poll is armed, or the one armed poll is left alone while libpq reads
 *   and writes. Dropping a connection orphans the armed poll (cancelled; it
 *   PQfinish()es the PGconn when its completion arrives) so the socket is
 *   never closed under a pending poll (DESIGN rule 3).
 * - While connecting, the poll waits for exactly what PQconnectPoll asked
 *   and PQsocket() is read again for every arm. Once connected it waits for
 *   POLLIN always and POLLOUT only while PQflush() returned 1.
 * - After a handler returns, nothing touches the PGconn unless the state is
 *   still PG_READY: a handler may have closed, broken or destroyed it.
 * - Outside pipeline mode, a query that went out since the last read may
 *   be followed by one plain read before the poll is armed (pg_read_ahead), while such
 *   reads keep finding the answer.
 * - The loop calls pg_module_flush right before it enters the kernel: there
 *   each connection touched during the iteration sends its pipeline Sync and
 *   flushes, so the queries of many flows share one round trip.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "adapters/pg_internal.h"

#define PG_TAG_CONNECT_DEADLINE 1u
#define PG_TAG_RETRY 2u
#define PG_PROCESS_PASSES 8
#define PG_EARLY_THRESHOLD 64 /* read ahead every time above a 1/4 hit rate */
#define PG_EARLY_SAMPLE 16    /* else once in this many chances */

/* ---- The poll ---------------------------------------------------------- */

static void poll_event(PlexPostgres *pg, int result);

static void poll_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexPostgres *pg = op->owner;
    PGconn *orphan = (PGconn *)(uintptr_t)op->storage.counter;
    bool current = !orphan && pg->poll_op == op;
    /* The record goes back first: re-arming the poll takes it again, so a
     * connection never needs a second one (none may be left). */
    plex_loop_op_put(loop, op);
    if (orphan) {
        /* The kernel has let go of the socket: libpq may close it now. */
        PQfinish(orphan);
    } else if (current) {
        pg->poll_op = NULL;
        pg->poll_mask = 0;
        poll_event(pg, cqe->res);
    }
    pg_unref(pg);
}

/* Arms the poll for `mask`, or widens the armed one. 0 or a negative errno. */
static int poll_arm(PlexPostgres *pg, unsigned mask)
{
    PlexEventLoop *loop = pg->loop;
    if (pg->poll_op) {
        if ((mask & ~pg->poll_mask) == 0)
            return 0;
        struct io_uring_sqe *sqe = plex_loop_sqe(loop, NULL);
        if (!sqe)
            return -EBUSY;
        /* The kernel refuses a new user_data without
         * IORING_POLL_UPDATE_USER_DATA: pass 0, the op stays the same. */
        uint64_t user_data = (uint64_t)(uintptr_t)pg->poll_op;
        pg->poll_mask |= mask;
        io_uring_prep_poll_update(sqe, user_data, 0, pg->poll_mask, IORING_POLL_UPDATE_EVENTS);
        return 0;
    }
    int fd = PQsocket(pg->conn);
    if (fd < 0)
        return -EBADF;
    PlexOp *op = plex_loop_op_get(loop, poll_complete, NULL, pg);
    if (!op)
        return -ENOMEM;
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, op);
    if (!sqe) {
        plex_loop_op_put(loop, op);
        return -EBUSY;
    }
    op->storage.counter = 0; /* set to the PGconn when orphaned */
    io_uring_prep_poll_add(sqe, fd, mask);
    pg->poll_op = op;
    pg->poll_mask = mask;
    pg_ref(pg);
    return 0;
}

void pg_drop_conn(PlexPostgres *pg)
{
    PGconn *conn = pg->conn;
    if (!conn)
        return;
    pg->conn = NULL;
    pg->want_write = false;
    pg->unsynced = 0;
    if (!plex_link_empty(&pg->dirty_link))
        plex_link_remove(&pg->dirty_link);
    PlexOp *op = pg->poll_op;
    if (!op) {
        PQfinish(conn);
        return;
    }
    pg->poll_op = NULL;
    op->storage.counter = (uint64_t)(uintptr_t)conn;
    plex_loop_cancel(pg->loop, op);
}

/* ---- Timeouts and kicks ------------------------------------------------ */

static void timeout_fired(PlexPostgres *pg, uint32_t tag);

static void timeout_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexPostgres *pg = op->owner;
    uint32_t tag = op->tag;
    bool fired = pg->timeout_op == op && cqe->res == -ETIME;
    if (pg->timeout_op == op)
        pg->timeout_op = NULL;
    plex_loop_op_put(loop, op); /* first: what the timeout starts may take it */
    if (fired)
        timeout_fired(pg, tag);
    pg_unref(pg);
}

/* Submits an absolute timeout at deadline_ns (plex_now_ns() clock) whose
 * completion runs `complete`; pg is held until then. NULL with *rc set to
 * -ENOMEM or -EBUSY. */
static PlexOp *pg_timeout_submit(PlexPostgres *pg, PlexOpComplete complete, uint64_t deadline_ns,
                                 int *rc)
{
    PlexEventLoop *loop = pg->loop;
    PlexOp *op = plex_loop_op_get(loop, complete, NULL, pg);
    if (!op) {
        *rc = -ENOMEM;
        return NULL;
    }
    struct io_uring_sqe *sqe = plex_loop_sqe(loop, op);
    if (!sqe) {
        plex_loop_op_put(loop, op);
        *rc = -EBUSY;
        return NULL;
    }
    op->storage.timespec.tv_sec = (long long)(deadline_ns / 1000000000u);
    op->storage.timespec.tv_nsec = (long long)(deadline_ns % 1000000000u);
    io_uring_prep_timeout(sqe, &op->storage.timespec, 0, IORING_TIMEOUT_ABS);
    pg_ref(pg);
    return op;
}

static int timeout_arm(PlexPostgres *pg, int64_t delay_ns, uint32_t tag)
{
    int rc = 0;
    PlexOp *op = pg_timeout_submit(pg, timeout_complete, plex_now_ns() + (uint64_t)delay_ns, &rc);
    if (!op)
        return rc;
    op->tag = tag;
    pg->timeout_op = op;
    return 0;
}

void pg_timeout_cancel(PlexPostgres *pg)
{
    if (!pg->timeout_op)
        return;
    /* Its completion finds timeout_op changed and does nothing. */
    plex_loop_cancel(pg->loop, pg->timeout_op);
    pg->timeout_op = NULL;
}

int pg_schedule_retry(PlexPostgres *pg, int64_t delay_ns)
{
    pg_timeout_cancel(pg);
    return timeout_arm(pg, delay_ns, PG_TAG_RETRY);
}

/* The query deadline timer: one per connection, armed for the earliest
 * deadline of the queries whose steps still wait (pg_deadlines_expire). */
static void deadline_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexPostgres *pg = op->owner;
    if (pg->deadline_op == op) {
        pg->deadline_op = NULL;
        if (cqe->res == -ETIME)
            pg_deadlines_expire(pg);
    }
    plex_loop_op_put(loop, op);
    pg_unref(pg);
}

int pg_deadline_ensure(PlexPostgres *pg, uint64_t deadline_ns)
{
    if (pg->deadline_op && pg->deadline_armed_ns <= deadline_ns)
        return 0;
    int rc = 0;
    PlexOp *op = pg_timeout_submit(pg, deadline_complete, deadline_ns, &rc);
    if (!op)
        return rc;
    pg_deadline_cancel(pg); /* armed for later than this one */
    pg->deadline_op = op;
    pg->deadline_armed_ns = deadline_ns;
    return 0;
}

void pg_deadline_cancel(PlexPostgres *pg)
{
    if (!pg->deadline_op)
        return;
    /* Its completion finds deadline_op changed and does nothing. */
    plex_loop_cancel(pg->loop, pg->deadline_op);
    pg->deadline_op = NULL;
}

static void kick_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    (void)cqe;
    PlexPostgres *pg = op->owner;
    pg->kick_op = NULL;
    plex_loop_op_put(loop, op); /* first: the work may kick or poll again */
    pg_settle(pg);
    pg_unref(pg);
}

int pg_kick(PlexPostgres *pg)
{
    if (pg->kick_op)
        return 0;
    PlexOp *op = plex_loop_op_get(pg->loop, kick_complete, NULL, pg);
    if (!op)
        return -ENOMEM;
    struct io_uring_sqe *sqe = plex_loop_sqe(pg->loop, op);
    if (!sqe) {
        plex_loop_op_put(pg->loop, op);
        return -EBUSY;
    }
    io_uring_prep_nop(sqe);
    pg->kick_op = op;
    pg_ref(pg);
    return 0;
}

/* ---- Connecting -------------------------------------------------------- */

static void pg_send_pending(PlexPostgres *pg);

static void connect_failed(PlexPostgres *pg, int code)
{
    if (code == -ETIMEDOUT)
        snprintf(pg->error, sizeof(pg->error),
                 "samplex: connection timed out after %" PRId64 " ms (server did not answer)",
                 pg->connect_timeout_ns / 1000000);
    else if (!pg->error_kept)
        pg_save_conn_error(pg, "connection failed");
    pg_drop_conn(pg);
    pg_timeout_cancel(pg);
    pg_deadline_cancel(pg); /* every query fails now */
    pg->state = PG_BROKEN;
    pg_ref(pg);
    /* Take everything first: the handlers may reconnect at once. */
    PgRequest *request = pg->connect;
    pg->connect = NULL;
    PgTaken taken;
    pg_requests_take(pg, &taken);
    pg_request_report(pg, request, code);
    pg_taken_fail(pg, &taken, PLEX_EPGBROKEN);
    if (pg->pool && pg->state == PG_BROKEN)
        pg_pool_on_state(pg);
    pg_unref(pg);
}

static void connect_succeeded(PlexPostgres *pg)
{
    pg_timeout_cancel(pg);
    if (PQsetnonblocking(pg->conn, 1) != 0 ||
        (pg->pipeline && PQenterPipelineMode(pg->conn) != 1)) {
        connect_failed(pg, PLEX_EPGBROKEN);
        return;
    }
    pg->state = PG_READY;
    pg->error[0] = '\0';
    pg->error_kept = false;
    pg_ref(pg);
    PgRequest *request = pg->connect;
    pg->connect = NULL;
    /* Pipeline mode: what was queued while connecting goes out before the
     * handler can queue more (outside pipeline mode the FIFO keeps order).
     * Then the step hears of it, and only then do results (or a queued
     * close) get delivered. */
    if (pg->pipeline)
        pg_send_pending(pg);
    pg_request_report(pg, request, pg->state == PG_READY ? 0 : PLEX_EPGBROKEN);
    if (pg->state == PG_READY)
        pg_process(pg);
    if (pg->pool && pg->state == PG_READY)
        pg_pool_on_state(pg);
    pg_unref(pg);
}

static void connect_step(PlexPostgres *pg)
{
    switch (PQconnectPoll(pg->conn)) {
    case PGRES_POLLING_READING:
        pg->connect_mask = POLLIN;
        break;
    case PGRES_POLLING_WRITING:
        pg->connect_mask = POLLOUT;
        break;
    case PGRES_POLLING_OK:
        connect_succeeded(pg);
        return;
    default:
        connect_failed(pg, PLEX_EPGBROKEN);
        return;
    }
    /* PQsocket() may have changed (next host or address): poll_arm reads
     * it again. */
    int rc = poll_arm(pg, pg->connect_mask);
    if (rc == -ENOMEM)
        pg_keep_error(pg, "samplex: out of memory");
    if (rc < 0)
        connect_failed(pg, rc == -ENOMEM ? -ENOMEM : PLEX_EPGBROKEN);
}

/* libpq prints notices to stderr by default; a library must not. A FATAL
 * one is the server saying why it is about to hang up: keep it for
 * plex_postgres_error_message. The rest (NOTICE, WARNING) are dropped. */
static void pg_notice(void *argument, const PGresult *result)
{
    PlexPostgres *pg = argument;
    const char *severity = PQresultErrorField(result, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0)) {
        pg_keep_error(pg, PQresultErrorMessage(result));
    }
}

/* Starts PQconnectStart. A failure libpq reports at once is delivered from
 * a kick, like any other. 0 or a negative errno (nothing started). */
int pg_connect_begin(PlexPostgres *pg, int64_t timeout_ns)
{
    PGconn *conn = PQconnectStart(pg->conninfo);
    if (!conn)
        return -ENOMEM;
    PQsetNoticeReceiver(conn, pg_notice, pg);
    pg->conn = conn;
    pg->error[0] = '\0';
    pg->error_kept = false;
    pg->closing = false;
    pg->want_write = false;
    pg->unsynced = 0;
    pg->connect_timeout_ns = timeout_ns;
    if (PQstatus(conn) == CONNECTION_BAD) {
        int rc = pg_kick(pg);
        if (rc < 0) {
            pg->conn = NULL;
            PQfinish(conn);
            return rc;
        }
        pg_save_conn_error(pg, "connection failed");
        pg_drop_conn(pg);
        pg->state = PG_BROKEN;
        pg->connect_error = PLEX_EPGBROKEN;
        return 0;
    }
    /* Before the first PQconnectPoll, libpq wants to be able to write. */
    pg->connect_mask = POLLOUT;
    int rc = poll_arm(pg, POLLOUT);
    if (rc == 0 && timeout_ns > 0) {
        rc = timeout_arm(pg, timeout_ns, PG_TAG_CONNECT_DEADLINE);
        if (rc < 0)
            pg_drop_conn(pg);
    } else if (rc < 0) {
        pg->conn = NULL;
        PQfinish(conn);
    }
    if (rc < 0)
        return rc;
    pg->state = PG_CONNECTING;
    return 0;
}

static void timeout_fired(PlexPostgres *pg, uint32_t tag)
{
    if (tag == PG_TAG_CONNECT_DEADLINE && pg->state == PG_CONNECTING) {
        connect_failed(pg, -ETIMEDOUT);
    } else if (tag == PG_TAG_RETRY && pg->state == PG_BROKEN && pg->pool) {
        if (pg_connect_internal(pg->loop, pg, pg->connect_timeout_ns) < 0)
            pg_pool_on_state(pg); /* try again later */
    }
}

/* ---- Connected: sending, reading, delivering --------------------------- */

/* Pipeline mode: sends the queries queued while connecting, in order. */
static void pg_send_pending(PlexPostgres *pg)
{
    if (pg->unsent == 0)
        return; /* the common case: no walk over what is in flight */
    PlexLink *link = pg->requests.next;
    while (pg->state == PG_READY && pg->unsent > 0 && link != &pg->requests) {
        PgRequest *request = PLEX_CONTAINER_OF(link, PgRequest, link);
        link = link->next;
        if (request->sent)
            continue;
        int rc = pg_command_send(pg, &request->command);
        if (rc == PLEX_EPGBROKEN) {
            pg_break(pg, NULL, PLEX_EPGBROKEN);
            return;
        }
        pg->unsent--;
        if (rc < 0) {
            plex_link_remove(&request->link);
            pg->queued--;
            pg_request_fail(request, rc);
            pg_request_put(request);
            link = pg->requests.next; /* the handler may have changed the FIFO */
            continue;
        }
        request->sent = true;
        pg->unsynced++;
        pg_mark_dirty(pg);
    }
}

/* Outside pipeline mode: sends the head once the previous query is done. */
static void pg_send_head(PlexPostgres *pg, PgRequest *head)
{
    int rc = pg_command_send(pg, &head->command);
    pg->unsent--;
    if (rc == 0) {
        head->sent = true;
        return;
    }
    if (rc == PLEX_EPGBROKEN) {
        pg_break(pg, NULL, PLEX_EPGBROKEN);
        return;
    }
    plex_link_remove(&head->link);
    pg->queued--;
    pg_request_fail(head, rc);
    pg_request_put(head);
}

/* The close at the head of the FIFO: everything before it is done. */
static void pg_close_now(PlexPostgres *pg, PgRequest *close)
{
    plex_link_remove(&close->link);
    pg_drop_conn(pg);
    pg->state = PG_IDLE;
    PgTaken taken;
    pg_requests_take(pg, &taken); /* the listen step: it ends here */
    pg_taken_fail(pg, &taken, -ECANCELED);
    pg_request_report(pg, close, 0);
}

static void pg_result_in(PlexPostgres *pg, PgRequest *head, PGresult *result)
{
    if (head->kind == PG_REQUEST_SYNC) {
        /* Only PGRES_PIPELINE_SYNC belongs to a sync marker. */
        if (PQresultStatus(result) == PGRES_PIPELINE_SYNC) {
            plex_link_remove(&head->link);
            pg_request_put(head);
        }
        PQclear(result);
        return;
    }
    pg_result_take_in(pg, head, result);
}

static bool pg_result_is_fatal(const PGresult *result)
{
    if (!result || PQresultStatus(result) != PGRES_FATAL_ERROR)
        return false;
    const char *severity = PQresultErrorField(result, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (!severity)
        severity = PQresultErrorField(result, PG_DIAG_SEVERITY);
    return severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0);
}

/* Reads every result libpq can give without waiting and hands each to the
 * head of the FIFO. Stops when libpq needs more input, or when a handler
 * closed, broke or destroyed the connection. */
static void pg_drain(PlexPostgres *pg)
{
    while (pg->state == PG_READY) {
        PgRequest *head = pg_request_head(pg);
        if (head && head->kind == PG_REQUEST_CLOSE) {
            pg_close_now(pg, head);
            return;
        }
        if (head && !head->sent) {
            pg_send_head(pg, head);
            continue;
        }
        if (PQisBusy(pg->conn))
            return;
        if (!head) {
            if (PQstatus(pg->conn) == CONNECTION_BAD)
                pg_break(pg, NULL, PLEX_EPGBROKEN);
            return;
        }
        PGresult *result = PQgetResult(pg->conn);
        if (PQstatus(pg->conn) == CONNECTION_BAD || pg_result_is_fatal(result)) {
            pg_break(pg, result, PLEX_EPGBROKEN);
            return;
        }
        if (result) {
            pg_result_in(pg, head, result);
        } else if (head->kind == PG_REQUEST_QUERY) {
            pg_request_finish(pg, head);
        } else {
            /* libpq is idle but a Sync is still expected: its queue and
             * ours disagree. Never seen; fail loudly rather than spin. */
            pg_keep_error(pg, "samplex: lost track of the pipeline");
            pg_break(pg, NULL, PLEX_EPGBROKEN);
            return;
        }
    }
}

/* True when libpq holds input the FIFO is waiting for. */
static bool pg_input_pending(PlexPostgres *pg)
{
    PgRequest *head = pg_request_head(pg);
    return pg->state == PG_READY && head && head->sent && head->kind != PG_REQUEST_CLOSE &&
           !PQisBusy(pg->conn);
}

/* Pipeline mode: queries not yet followed by a Sync wait for the one the
 * loop's flush hook adds before it enters the kernel (pg_flush), and go out
 * with it in one send(). Flushing them here would cost a second send() per
 * batch. */
static bool pg_sync_coming(const PlexPostgres *pg)
{
    return pg->pipeline && pg->unsynced > 0 && !plex_link_empty(&pg->dirty_link);
}

/* Reads what the server has sent, if anything, without waiting. */
static void pg_read(PlexPostgres *pg)
{
    pg->sends_read = pg->sends;
    if (!PQconsumeInput(pg->conn))
        pg_save_conn_error(pg, "connection lost");
}

/* Read-ahead. Outside pipeline mode, a query that went out since the
 * connection last read leaves it waiting. On a busy machine the server
 * has often answered by the time the loop would arm the poll and enter
 * the kernel: one plain read then finds the answer and saves that trip
 * through io_uring_enter.
 * - Only when the connection is alone: if the loop woke up with other
 *   completions in hand it enters the kernel again without sleeping, the
 *   poll's completion comes in that batch for free, and serving one
 *   connection's answers back to back would leave the other connections'
 *   servers idle (8 connections on one loop ran 5-8 % slower).
 * - A read that finds nothing costs a system call, so the connection keeps
 *   a running hit rate of its tries: it reads ahead every time while at
 *   least a quarter of them hit, else once in PG_EARLY_SAMPLE chances, to
 *   notice when that changes.
 * - Only while the loop dispatches completions, not from its flush hook:
 *   the hook runs until no connection is left dirty, and a chain of
 *   answers read ahead would hold the loop there. While dispatching, a
 *   connection reads ahead at most once per pass (PG_PROCESS_PASSES),
 *   then a kick takes it up in the next iteration.
 * - Only with no poll armed: libpq may close its socket on a failed read
 *   (DESIGN rule 3).
 * True when the read found a result. */
static bool pg_read_ahead(PlexPostgres *pg)
{
    if (pg->sends == pg->sends_read || pg->pipeline || pg->poll_op || pg->want_write ||
        pg->module->flushing || pg->loop->wake_batch > 1 || !PQisBusy(pg->conn))
        return false;
    if (pg->early_rate < PG_EARLY_THRESHOLD) {
        if (pg->early_skip > 0) {
            pg->early_skip--;
            return false;
        }
        pg->early_skip = PG_EARLY_SAMPLE - 1;
    }
    pg_read(pg);
    bool hit = pg_input_pending(pg);
    if (hit)
        pg->early_rate = (uint8_t)(pg->early_rate + (255 - pg->early_rate) / 8);
    else
        pg->early_rate = (uint8_t)(pg->early_rate - pg->early_rate / 8);
    return hit;
}

void pg_process(PlexPostgres *pg)
{
    pg_ref(pg);
    for (int pass = 0; pass < PG_PROCESS_PASSES && pg->state == PG_READY; pass++) {
        if (pg->pipeline)
            pg_send_pending(pg);
        pg_drain(pg);
        if (pg->state == PG_READY)
            pg_notifications_deliver(pg);
        if (pg->state != PG_READY)
            break;
        /* PQflush may read too (to avoid a deadlock with the server), so
         * look at the input again afterwards. */
        if (!pg_sync_coming(pg)) {
            int rc = PQflush(pg->conn);
            if (rc < 0) {
                pg_save_conn_error(pg, "could not send data to the server");
                pg_break(pg, NULL, PLEX_EPGBROKEN);
                break;
            }
            pg->want_write = rc == 1;
        }
        if (!pg_input_pending(pg) && !pg_read_ahead(pg))
            break;
    }
    if (pg->state == PG_READY) {
        /* Input left after the last pass, or a kick already coming: the
         * kick takes it up in the next iteration and arms the poll when
         * it is done (a poll armed now could only add a completion). */
        int rc = pg_input_pending(pg) || pg->kick_op
                     ? pg_kick(pg)
                     : poll_arm(pg, POLLIN | (pg->want_write ? POLLOUT : 0));
        if (rc < 0) {
            pg_keep_error(pg, rc == -ENOMEM ? "samplex: out of memory to watch the socket"
                                            : "samplex: cannot watch the socket");
            pg_break(pg, NULL, rc == -ENOMEM ? -ENOMEM : PLEX_EPGBROKEN);
        }
    }
    pg_unref(pg);
}

static void poll_event(PlexPostgres *pg, int result)
{
    if (pg->loop->destroying && result == -ECANCELED) {
        pg_drop_conn(pg);
        pg->state = PG_BROKEN;
        return;
    }
    if (pg->state == PG_CONNECTING) {
        connect_step(pg);
        return;
    }
    if (pg->state != PG_READY)
        return;
    pg_ref(pg);
    /* Errors and hang-ups show up as a failed read. */
    if (result < 0 || (result & (POLLIN | POLLERR | POLLHUP)))
        pg_read(pg);
    pg_process(pg);
    pg_unref(pg);
}

/* The connection is lost: every pending step fails once, the socket goes.
 * `result` (the server's FATAL message, or NULL) goes to the head query
 * with `head_code`. */
void pg_break(PlexPostgres *pg, PGresult *result, int head_code)
{
    /* The best account of why: the server's FATAL message, else libpq's. */
    if (result && pg_result_is_fatal(result))
        pg_save_error(pg, PQresultErrorMessage(result));
    else if (!pg->error_kept)
        pg_save_conn_error(pg, "connection lost");
    pg_drop_conn(pg);
    pg_timeout_cancel(pg);
    pg_deadline_cancel(pg); /* every query fails now */
    pg->state = PG_BROKEN;
    pg_ref(pg);
    PgTaken taken;
    pg_requests_take(pg, &taken);
    PgRequest *head = pg_taken_head_query(&taken);
    if (head) {
        plex_link_remove(&head->link);
        pg_request_broken(pg, head, result, head_code);
        pg_request_put(head);
    } else if (result) {
        PQclear(result);
    }
    pg_taken_fail(pg, &taken, PLEX_EPGBROKEN);
    if (pg->pool && pg->state == PG_BROKEN)
        pg_pool_on_state(pg);
    pg_unref(pg);
}

/* ---- Flush before the loop enters the kernel --------------------------- */

static void pg_flush(PlexPostgres *pg)
{
    if (pg->state != PG_READY)
        return;
    if (pg->pipeline && pg->unsynced > 0) {
        PgRequest *sync;
        if (pg_request_begin(pg, NULL, PG_REQUEST_SYNC, &sync) < 0) {
            pg_keep_error(pg, "samplex: out of memory for a pipeline sync");
            pg_break(pg, NULL, PLEX_EPGBROKEN);
            return;
        }
        if (PQpipelineSync(pg->conn) != 1) {
            pg_request_put(sync);
            pg_save_conn_error(pg, "PQpipelineSync failed");
            pg_break(pg, NULL, PLEX_EPGBROKEN);
            return;
        }
        sync->sent = true;
        plex_link_insert_tail(&pg->requests, &sync->link);
        pg->unsynced = 0;
    }
    pg_process(pg);
}

void pg_module_flush(PlexEventLoop *loop, void *state)
{
    (void)loop;
    PgModule *module = state;
    module->flushing = true;
    while (!plex_link_empty(&module->dirty)) {
        PlexPostgres *pg = PLEX_CONTAINER_OF(module->dirty.next, PlexPostgres, dirty_link);
        plex_link_remove(&pg->dirty_link);
        pg_ref(pg);
        pg_flush(pg);
        pg_unref(pg);
    }
    module->flushing = false;
}

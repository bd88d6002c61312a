/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexPostgres: the connection object, its life, and the public connection
 * API. The socket and the libpq state machine are in plex_pg_conn.c.
 *
 * Invariants (see also pg_internal.h):
 * - A connection is freed when its last ref goes: never while one of its
 *   ops is in the kernel or its input is being processed.
 * - Work that must not run inside the caller's function (reporting a failed
 *   connect start or an idle close, failing the steps of a destroyed
 *   connection) runs from a NOP's completion, the "kick" (pg_settle), so
 *   handlers never run inside an API call.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "adapters/pg_internal.h"

/* ---- Module (per loop) ------------------------------------------------- */

static void module_fini(PlexEventLoop *loop, void *state)
{
    PgModule *module = state;
    pg_module_records_fini(module);
    plex_mem_free(loop->allocator, module);
    loop->modules[PLEX_MODULE_POSTGRES] = (PlexLoopModule){0};
}

PgModule *pg_module_get(PlexEventLoop *loop)
{
    PlexLoopModule *slot = &loop->modules[PLEX_MODULE_POSTGRES];
    if (slot->state)
        return slot->state;
    PgModule *module = plex_mem_calloc(loop->allocator, sizeof(*module));
    if (!module)
        return NULL;
    module->loop = loop;
    plex_link_init(&module->free_requests);
    plex_link_init(&module->dirty);
    slot->state = module;
    slot->fini = module_fini;
    slot->flush = pg_module_flush;
    return module;
}

void pg_mark_dirty(PlexPostgres *pg)
{
    if (pg->module && plex_link_empty(&pg->dirty_link))
        plex_link_insert_tail(&pg->module->dirty, &pg->dirty_link);
}

/* ---- Life -------------------------------------------------------------- */

PlexPostgres *pg_new(const PlexAllocator *allocator, const char *conninfo)
{
    PlexPostgres *pg = plex_mem_calloc(allocator, sizeof(*pg));
    size_t length = strlen(conninfo) + 1;
    char *copy = plex_mem_alloc(allocator, length);
    if (!pg || !copy) {
        plex_mem_free(allocator, pg);
        plex_mem_free(allocator, copy);
        errno = ENOMEM;
        return NULL;
    }
    memcpy(copy, conninfo, length);
    if (allocator)
        pg->allocator = *allocator;
    pg->conninfo = copy;
    pg->refs = 1; /* alive */
    pg->max_queued = PLEX_POSTGRES_DEFAULT_MAX_QUEUED;
    plex_link_init(&pg->resource.link);
    plex_link_init(&pg->requests);
    plex_link_init(&pg->dirty_link);
    return pg;
}

void pg_ref(PlexPostgres *pg)
{
    pg->refs++;
}

static void pg_free(PlexPostgres *pg)
{
    /* Nothing is pending by now (kill kicked the requests out); be safe. */
    pg_requests_fail_all(pg, -ECANCELED);
    if (pg->conn)
        PQfinish(pg->conn); /* no poll is armed: its op would hold a ref */
    if (!plex_link_empty(&pg->dirty_link))
        plex_link_remove(&pg->dirty_link);
    PlexAllocator allocator = pg->allocator;
    plex_mem_free(&allocator, pg->conninfo);
    plex_mem_free(&allocator, pg);
}

void pg_unref(PlexPostgres *pg)
{
    if (--pg->refs == 0)
        pg_free(pg);
}

void pg_save_error(PlexPostgres *pg, const char *message)
{
    snprintf(pg->error, sizeof(pg->error), "%s", message ? message : "");
    size_t length = strlen(pg->error);
    while (length > 0 && (pg->error[length - 1] == '\n' || pg->error[length - 1] == ' '))
        pg->error[--length] = '\0';
}

void pg_keep_error(PlexPostgres *pg, const char *message)
{
    pg_save_error(pg, message);
    pg->error_kept = true;
}

void pg_save_conn_error(PlexPostgres *pg, const char *fallback)
{
    const char *message = pg->conn ? PQerrorMessage(pg->conn) : NULL;
    pg_save_error(pg, message && *message ? message : fallback);
}

/* ---- Deferred work ----------------------------------------------------- */

static void settle_close(PlexPostgres *pg)
{
    PgRequest *close = pg->close_done;
    pg->close_done = NULL;
    PgTaken taken;
    pg_requests_take(pg, &taken); /* the listen step ends with the close */
    pg_taken_fail(pg, &taken, -ECANCELED);
    pg_request_report(pg, close, 0);
}

static void settle_connect_error(PlexPostgres *pg)
{
    int code = pg->connect_error;
    pg->connect_error = 0;
    PgRequest *request = pg->connect;
    pg->connect = NULL;
    PgTaken taken;
    pg_requests_take(pg, &taken);
    pg_request_report(pg, request, code);
    pg_taken_fail(pg, &taken, PLEX_EPGBROKEN);
    if (pg->pool && pg->state == PG_BROKEN)
        pg_pool_on_state(pg);
}

static void settle_dead(PlexPostgres *pg)
{
    PgRequest *request = pg->connect;
    pg->connect = NULL;
    PgTaken taken;
    pg_requests_take(pg, &taken);
    pg_request_report(pg, request, -ECANCELED);
    pg_taken_fail(pg, &taken, -ECANCELED);
}

void pg_settle(PlexPostgres *pg)
{
    pg_ref(pg);
    if (pg->close_done)
        settle_close(pg);
    if (pg->connect_error && pg->state != PG_CONNECTING)
        settle_connect_error(pg);
    if (pg->state == PG_DEAD)
        settle_dead(pg);
    else if (pg->state == PG_READY && PQstatus(pg->conn) == CONNECTION_BAD)
        pg_break(pg, NULL, PLEX_EPGBROKEN);
    else if (pg->state == PG_READY)
        pg_process(pg);
    pg_unref(pg);
}

void pg_kill(PlexPostgres *pg)
{
    if (pg->state == PG_DEAD)
        return;
    pg->state = PG_DEAD;
    pg_drop_conn(pg);
    pg_timeout_cancel(pg);
    pg_deadline_cancel(pg);
    bool pending = pg->connect || pg->listen || pg->close_done || !plex_link_empty(&pg->requests);
    if (pending && pg_kick(pg) < 0)
        pg_settle(pg); /* out of memory: better now than never */
    pg_unref(pg);
}

static void pg_release(PlexResource *resource)
{
    pg_kill(PLEX_CONTAINER_OF(resource, PlexPostgres, resource));
}

/* ---- Loop ------------------------------------------------------------- */

int pg_attach_loop(PlexPostgres *pg, PlexEventLoop *loop)
{
    if (pg->loop)
        return pg->loop == loop ? 0 : -EXDEV;
    if (loop->destroying)
        return -ESHUTDOWN;
    PgModule *module = pg_module_get(loop);
    if (!module)
        return -ENOMEM;
    /* Bind the owner so destroying the loop ends it, and with it this. */
    if (pg->resource.plex) {
        int rc = plex_loop_bind(loop, pg->resource.plex);
        if (rc < 0)
            return rc;
    }
    pg->loop = loop;
    pg->module = module;
    return 0;
}

int pg_connect_internal(PlexEventLoop *loop, PlexPostgres *pg, int64_t timeout_ns)
{
    int rc = pg_attach_loop(pg, loop);
    if (rc < 0)
        return rc;
    return pg_connect_begin(pg, timeout_ns);
}

/* ---- Public: connection ------------------------------------------------ */

bool pg_conninfo_valid(const char *conninfo)
{
    char *message = NULL;
    PQconninfoOption *options = PQconninfoParse(conninfo, &message);
    if (message)
        PQfreemem(message);
    if (!options)
        return false;
    PQconninfoFree(options);
    return true;
}

PlexPostgres *plex_postgres_create(Plex *plex, const char *conninfo)
{
    if (!plex || !conninfo || !plex_is_alive(plex) || !pg_conninfo_valid(conninfo)) {
        errno = EINVAL;
        return NULL;
    }
    PlexPostgres *pg = pg_new(plex_allocator(plex), conninfo);
    if (!pg)
        return NULL;
    int rc = plex_resource_attach(plex, &pg->resource, pg_release);
    if (rc < 0) {
        pg_kill(pg);
        errno = -rc;
        return NULL;
    }
    return pg;
}

int plex_postgres_destroy(PlexPostgres *pg)
{
    if (!pg || pg->pool || pg->state == PG_DEAD)
        return -EINVAL;
    plex_resource_detach(&pg->resource);
    pg_kill(pg);
    return 0;
}

int plex_postgres_connect(PlexEventLoop *loop, PlexPostgres *pg, PlexItem *item, int64_t timeout_ns)
{
    if (!loop || !pg || !item || timeout_ns < 0 || pg->pool || pg->state == PG_DEAD)
        return -EINVAL;
    if (pg->state == PG_CONNECTING)
        return -EALREADY;
    if (pg->state == PG_READY)
        return -EISCONN;
    if (pg->connect_error || pg->close_done)
        return -EALREADY; /* an outcome is still to be reported */
    int rc = pg_attach_loop(pg, loop);
    if (rc < 0)
        return rc;
    PgRequest *request;
    rc = pg_request_begin(pg, item, PG_REQUEST_CONNECT, &request);
    if (rc < 0)
        return rc;
    rc = pg_connect_begin(pg, timeout_ns);
    if (rc < 0) {
        pg_request_abort(request);
        return rc;
    }
    pg->connect = request;
    return 0;
}

int plex_postgres_reset(PlexPostgres *pg, PlexItem *item, int64_t timeout_ns)
{
    if (!pg || !item || timeout_ns < 0 || pg->state == PG_DEAD)
        return -EINVAL;
    if (!pg->loop)
        return -ENOTCONN;
    return plex_postgres_connect(pg->loop, pg, item, timeout_ns);
}

int plex_postgres_close(PlexPostgres *pg, PlexItem *item)
{
    if (!pg || !item || pg->pool || pg->state == PG_DEAD)
        return -EINVAL;
    if (pg->state != PG_READY && pg->state != PG_CONNECTING)
        return -ENOTCONN;
    if (pg->closing || pg->close_done)
        return -EALREADY;
    PgRequest *close;
    int rc = pg_request_begin(pg, item, PG_REQUEST_CLOSE, &close);
    if (rc < 0)
        return rc;
    close->sent = true;
    if (pg->state == PG_READY && plex_link_empty(&pg->requests)) {
        /* Nothing to wait for: close now, report from a kick. */
        rc = pg_kick(pg);
        if (rc < 0) {
            pg_request_abort(close);
            return rc;
        }
        pg_drop_conn(pg);
        pg->state = PG_IDLE;
        pg->close_done = close;
        return 0;
    }
    plex_link_insert_tail(&pg->requests, &close->link);
    pg->closing = true;
    pg_mark_dirty(pg);
    return 0;
}

int plex_postgres_set_pipeline(PlexPostgres *pg, bool enabled)
{
    if (!pg || pg->state == PG_DEAD)
        return -EINVAL;
    if (pg->pipeline == enabled)
        return 0;
    if (!plex_link_empty(&pg->requests) || pg->unsynced)
        return -EBUSY;
    if (pg->state == PG_READY) {
        int ok = enabled ? PQenterPipelineMode(pg->conn) : PQexitPipelineMode(pg->conn);
        if (ok != 1)
            return -EIO;
    }
    pg->pipeline = enabled;
    return 0;
}

int plex_postgres_set_max_queued(PlexPostgres *pg, unsigned max_queued)
{
    if (!pg || pg->state == PG_DEAD)
        return -EINVAL;
    pg->max_queued = max_queued ? max_queued : PLEX_POSTGRES_DEFAULT_MAX_QUEUED;
    return 0;
}

int plex_postgres_set_query_timeout(PlexPostgres *pg, int64_t timeout_ns)
{
    if (!pg || pg->state == PG_DEAD || timeout_ns < 0)
        return -EINVAL;
    pg->query_timeout_ns = timeout_ns;
    return 0;
}

bool plex_postgres_is_broken(const PlexPostgres *pg)
{
    return pg && pg->state == PG_BROKEN;
}

bool plex_postgres_is_connected(const PlexPostgres *pg)
{
    return pg && pg->state == PG_READY;
}

unsigned plex_postgres_queued(const PlexPostgres *pg)
{
    return pg ? pg->queued : 0;
}

const char *plex_postgres_error_message(const PlexPostgres *pg)
{
    if (!pg)
        return "";
    return pg->error;
}

struct pg_conn *plex_postgres_conn(PlexPostgres *pg)
{
    return pg && pg->state == PG_READY ? pg->conn : NULL;
}

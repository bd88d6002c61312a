/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Postgres requests: the records, sending and packing commands, handing
 * results and notifications to the steps, and the public query API.
 *
 * Invariants:
 * - Records come from the loop's free list (slabs of PG_SLAB_COUNT, never
 *   freed before the loop) and keep their packing buffer when reused, so
 *   queueing queries allocates nothing in steady state. A buffer past
 *   PG_STORAGE_KEEP bytes is freed when its record is, so one huge query
 *   does not pin its memory forever.
 * - A query's results are delivered one behind: a result is held until the
 *   next result (PLEX_EVENT_MORE) or the end of the query (last) shows up.
 *   So every query's final call is known to be final.
 * - The result lent to a running handler is recorded in the module
 *   (lent_result); plex_postgres_result_take clears it, and the deliverer
 *   PQclear()s whatever is still recorded when the handler returns.
 */
#include <errno.h>
#include <limits.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/pg_internal.h"

#define PG_SLAB_COUNT 64u
#define PG_STORAGE_KEEP 65536u
#define PG_STORAGE_MIN 256u
#define PG_MAX_PARAMS 65535

typedef struct PgSlab {
    struct PgSlab *next;
    PgRequest records[PG_SLAB_COUNT];
} PgSlab;

/* ---- Records ----------------------------------------------------------- */

static const PlexAllocator *records_allocator(PgModule *module)
{
    return module->loop->allocator;
}

static int records_grow(PgModule *module)
{
    PgSlab *slab = plex_mem_calloc(records_allocator(module), sizeof(*slab));
    if (!slab)
        return -ENOMEM;
    slab->next = module->slabs;
    module->slabs = slab;
    for (unsigned i = 0; i < PG_SLAB_COUNT; i++)
        plex_link_insert_tail(&module->free_requests, &slab->records[i].link);
    return 0;
}

void pg_module_records_fini(PgModule *module)
{
    const PlexAllocator *allocator = records_allocator(module);
    while (module->slabs) {
        PgSlab *slab = module->slabs;
        module->slabs = slab->next;
        for (unsigned i = 0; i < PG_SLAB_COUNT; i++)
            plex_mem_free(allocator, slab->records[i].storage);
        plex_mem_free(allocator, slab);
    }
}

static PgRequest *record_take(PgModule *module)
{
    if (plex_link_empty(&module->free_requests) && records_grow(module) < 0)
        return NULL;
    PlexLink *link = module->free_requests.next;
    plex_link_remove(link);
    return PLEX_CONTAINER_OF(link, PgRequest, link);
}

void pg_request_put(PgRequest *request)
{
    PgModule *module = request->pg->module;
    if (request->held)
        PQclear(request->held);
    if (request->capacity > PG_STORAGE_KEEP) {
        plex_mem_free(records_allocator(module), request->storage);
        request->storage = NULL;
        request->capacity = 0;
    }
    request->held = NULL;
    request->item = NULL;
    request->pg = NULL;
    /* Most recently used first: its buffer is likely warm and big enough. */
    PlexLink *head = &module->free_requests;
    request->link.prev = head;
    request->link.next = head->next;
    head->next->prev = &request->link;
    head->next = &request->link;
}

static void request_release(PlexResource *resource)
{
    /* The step's flow ended: no handler will run; the record stays in the
     * FIFO until the server is done with it. */
    PgRequest *request = PLEX_CONTAINER_OF(resource, PgRequest, resource);
    PlexItem *item = request->item;
    request->item = NULL;
    plex_item_op_end_silent(item);
    plex_loop_unhold(request->pg->loop);
}

int pg_request_begin(PlexPostgres *pg, PlexItem *item, PgRequestKind kind, PgRequest **out)
{
    Plex *plex = NULL;
    if (item) {
        plex = plex_item_plex(item);
        if (!plex || !plex_is_alive(plex))
            return -ESTALE;
        int rc = plex_loop_bind(pg->loop, plex);
        if (rc < 0)
            return rc;
    }
    PgRequest *request = record_take(pg->module);
    if (!request)
        return -ENOMEM;
    request->pg = pg;
    request->kind = kind;
    request->item = NULL;
    request->held = NULL;
    request->sent = false;
    request->copy_refused = false;
    request->deadline_ns = 0;
    plex_link_init(&request->link);
    plex_link_init(&request->resource.link);
    request->resource.plex = NULL;
    if (item) {
        int rc = plex_resource_attach(plex, &request->resource, request_release);
        if (rc < 0) {
            pg_request_put(request);
            return rc;
        }
        plex_item_op_begin(item);
        plex_loop_hold(pg->loop);
        request->item = item;
    }
    *out = request;
    return 0;
}

void pg_request_abort(PgRequest *request)
{
    PlexItem *item = request->item;
    if (item) {
        request->item = NULL;
        plex_resource_detach(&request->resource);
        plex_item_op_end_silent(item);
        plex_loop_unhold(request->pg->loop);
    }
    pg_request_put(request);
}

void pg_request_deliver(PgRequest *request, const PlexEvent *event, bool last)
{
    PlexItem *item = request->item;
    if (!item)
        return;
    if (!last) {
        plex_loop_deliver(item, event, false);
        return;
    }
    /* The request is over before the handler runs: the handler may end its
     * flow, and that must not end the request a second time. */
    request->item = NULL;
    plex_resource_detach(&request->resource);
    plex_loop_unhold(request->pg->loop);
    plex_loop_deliver(item, event, true);
}

void pg_request_fail(PgRequest *request, int code)
{
    PlexEvent event = {.result = code, .postgres = request->pg};
    pg_request_deliver(request, &event, true);
}

void pg_request_report(PlexPostgres *pg, PgRequest *request, int code)
{
    if (!request)
        return;
    PlexEvent event = {.result = code, .postgres = pg};
    pg_request_deliver(request, &event, true);
    pg_request_put(request);
}

void pg_requests_take(PlexPostgres *pg, PgTaken *taken)
{
    plex_link_init(&taken->requests);
    if (!plex_link_empty(&pg->requests)) {
        taken->requests.next = pg->requests.next;
        taken->requests.prev = pg->requests.prev;
        taken->requests.next->prev = &taken->requests;
        taken->requests.prev->next = &taken->requests;
        plex_link_init(&pg->requests);
    }
    taken->listen = pg->listen;
    pg->listen = NULL;
    pg->queued = 0;
    pg->unsent = 0;
    pg->closing = false;
}

PgRequest *pg_taken_head_query(PgTaken *taken)
{
    if (plex_link_empty(&taken->requests))
        return NULL;
    PgRequest *head = PLEX_CONTAINER_OF(taken->requests.next, PgRequest, link);
    return head->kind == PG_REQUEST_QUERY ? head : NULL;
}

void pg_taken_fail(PlexPostgres *pg, PgTaken *taken, int code)
{
    while (!plex_link_empty(&taken->requests)) {
        PgRequest *request = PLEX_CONTAINER_OF(taken->requests.next, PgRequest, link);
        plex_link_remove(&request->link);
        if (request->kind == PG_REQUEST_QUERY)
            pg_request_fail(request, code);
        else if (request->kind == PG_REQUEST_CLOSE)
            pg_request_fail(request, 0); /* closed, one way or another */
        pg_request_put(request);
    }
    if (taken->listen) {
        PgRequest *listen = taken->listen;
        taken->listen = NULL;
        pg_request_report(pg, listen, code);
    }
}

void pg_requests_fail_all(PlexPostgres *pg, int code)
{
    PgTaken taken;
    pg_requests_take(pg, &taken);
    pg_taken_fail(pg, &taken, code);
}

/* ---- Commands ---------------------------------------------------------- */

int pg_command_send(PlexPostgres *pg, const PgCommand *c)
{
    PGconn *conn = pg->conn;
    int ok = 0;
    switch (c->how) {
    case PG_SEND_SIMPLE:
        /* libpq refuses PQsendQuery in pipeline mode. */
        ok = pg->pipeline ? PQsendQueryParams(conn, c->text, 0, NULL, NULL, NULL, NULL, 0)
                          : PQsendQuery(conn, c->text);
        break;
    case PG_SEND_PARAMS:
        ok = PQsendQueryParams(conn, c->text, c->count, c->types, c->values, c->lengths, c->formats,
                               c->result_format);
        break;
    case PG_SEND_PREPARE:
        ok = PQsendPrepare(conn, c->name, c->text, c->count, c->types);
        break;
    case PG_SEND_PREPARED:
        ok = PQsendQueryPrepared(conn, c->text, c->count, c->values, c->lengths, c->formats,
                                 c->result_format);
        break;
    }
    if (ok) {
        pg->sends++;
        return 0;
    }
    snprintf(pg->error, sizeof(pg->error), "%s", PQerrorMessage(conn));
    return PQstatus(conn) == CONNECTION_BAD ? PLEX_EPGBROKEN : -EIO;
}

static size_t value_size(const PgCommand *c, int index)
{
    if (!c->values[index])
        return 0;
    if (c->formats && c->formats[index] == 1)
        return (size_t)c->lengths[index];
    return strlen(c->values[index]) + 1;
}

static size_t command_size(const PgCommand *c)
{
    size_t count = (size_t)c->count;
    size_t size = strlen(c->text) + 1 + (c->name ? strlen(c->name) + 1 : 0);
    if (c->values) {
        size += count * sizeof(char *);
        for (int i = 0; i < c->count; i++)
            size += value_size(c, i);
    }
    size += (c->lengths ? count * sizeof(int) : 0) + (c->formats ? count * sizeof(int) : 0);
    return size + (c->types ? count * sizeof(Oid) : 0);
}

static int storage_reserve(PgRequest *request, size_t size)
{
    if (request->capacity >= size)
        return 0;
    const PlexAllocator *allocator = records_allocator(request->pg->module);
    size_t capacity = size < PG_STORAGE_MIN ? PG_STORAGE_MIN : size;
    char *storage = plex_mem_alloc(allocator, capacity);
    if (!storage)
        return -ENOMEM;
    plex_mem_free(allocator, request->storage);
    request->storage = storage;
    request->capacity = capacity;
    return 0;
}

static char *copy_in(char **cursor, const void *source, size_t size)
{
    char *target = *cursor;
    if (size)
        memcpy(target, source, size);
    *cursor += size;
    return target;
}

int pg_command_pack(PgRequest *request, const PgCommand *c)
{
    int rc = storage_reserve(request, command_size(c));
    if (rc < 0)
        return rc;
    /* Pointers first, then ints, then bytes: each part stays aligned. */
    size_t count = (size_t)c->count;
    char *cursor = request->storage;
    const char **values = NULL;
    PgCommand *packed = &request->command;
    *packed = *c;
    if (c->values) {
        values = (const char **)(void *)cursor;
        cursor += count * sizeof(char *);
    }
    if (c->lengths)
        packed->lengths = (const int *)(void *)copy_in(&cursor, c->lengths, count * sizeof(int));
    if (c->formats)
        packed->formats = (const int *)(void *)copy_in(&cursor, c->formats, count * sizeof(int));
    if (c->types)
        packed->types = (const Oid *)(void *)copy_in(&cursor, c->types, count * sizeof(Oid));
    packed->text = copy_in(&cursor, c->text, strlen(c->text) + 1);
    if (c->name)
        packed->name = copy_in(&cursor, c->name, strlen(c->name) + 1);
    for (int i = 0; values && i < c->count; i++)
        values[i] = c->values[i] ? copy_in(&cursor, c->values[i], value_size(c, i)) : NULL;
    packed->values = values;
    return 0;
}

static int pg_can_queue(const PlexPostgres *pg)
{
    switch (pg->state) {
    case PG_DEAD:
        return -EINVAL;
    case PG_IDLE:
        return -ENOTCONN;
    case PG_BROKEN:
        return PLEX_EPGBROKEN;
    default:
        break;
    }
    if (pg->closing)
        return -ESHUTDOWN;
    if (pg->queued >= pg->max_queued)
        return -EAGAIN;
    return 0;
}

int pg_command_start(PlexPostgres *pg, PlexItem *item, const PgCommand *command)
{
    int rc = pg_can_queue(pg);
    if (rc < 0)
        return rc;
    PgRequest *request;
    rc = pg_request_begin(pg, item, PG_REQUEST_QUERY, &request);
    if (rc < 0)
        return rc;
    if (pg->query_timeout_ns > 0) {
        /* A timer left armed by a start that fails below just finds
         * nothing to expire. */
        request->deadline_ns = plex_now_ns() + (uint64_t)pg->query_timeout_ns;
        rc = pg_deadline_ensure(pg, request->deadline_ns);
        if (rc < 0) {
            pg_request_abort(request);
            return rc;
        }
    }
    /* Outside pipeline mode libpq takes one query at a time: the others
     * wait, packed, in the FIFO. */
    bool now = pg->state == PG_READY && pg->unsent == 0 &&
               (pg->pipeline || plex_link_empty(&pg->requests));
    rc = now ? pg_command_send(pg, command) : pg_command_pack(request, command);
    if (rc < 0) {
        pg_request_abort(request);
        if (rc == PLEX_EPGBROKEN)
            pg_kick(pg); /* notice the break from the loop, not from here */
        return rc;
    }
    request->sent = now;
    if (now && pg->pipeline)
        pg->unsynced++;
    if (!now)
        pg->unsent++;
    plex_link_insert_tail(&pg->requests, &request->link);
    pg->queued++;
    pg_mark_dirty(pg);
    return 0;
}

/* ---- Results ----------------------------------------------------------- */

static int clamp_count(long long count)
{
    if (count < 0)
        return 0;
    return count > INT_MAX ? INT_MAX : (int)count;
}

static int result_code(const PgRequest *request, PGresult *result)
{
    switch (PQresultStatus(result)) {
    case PGRES_TUPLES_OK:
        return PQntuples(result);
    case PGRES_COMMAND_OK:
        return clamp_count(strtoll(PQcmdTuples(result), NULL, 10));
    case PGRES_EMPTY_QUERY:
        return 0;
    case PGRES_PIPELINE_ABORTED:
        return PLEX_EPIPELINE;
    default:
        return request->copy_refused ? -ENOTSUP : PLEX_EPG;
    }
}

/* Lends `result` to the step's handler, then frees it unless taken. */
static void deliver_result(PlexPostgres *pg, PgRequest *request, PGresult *result, int code,
                           bool last)
{
    PgModule *module = pg->module;
    PlexEvent event = {
        .result = code, .flags = last ? 0 : PLEX_EVENT_MORE, .postgres = pg, .pg_result = result};
    PGresult *saved = module->lent_result;
    module->lent_result = result;
    pg_request_deliver(request, &event, last);
    if (module->lent_result)
        PQclear(module->lent_result);
    module->lent_result = saved;
}

bool pg_result_take_in(PlexPostgres *pg, PgRequest *request, PGresult *result)
{
    ExecStatusType status = PQresultStatus(result);
    if (status == PGRES_COPY_IN) {
        /* Refuse the COPY: the server then ends the query with an error. */
        PQclear(result);
        request->copy_refused = true;
        if (PQputCopyEnd(pg->conn, "samplex does not drive COPY") != 1) {
            pg_break(pg, NULL, -ENOTSUP);
            return false;
        }
        return true;
    }
    if (status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH) {
        /* No way to skip the data but to read it: drop the connection. */
        pg_break(pg, result, -ENOTSUP);
        return false;
    }
    if (request->held) {
        PGresult *previous = request->held;
        request->held = NULL;
        deliver_result(pg, request, previous, result_code(request, previous), false);
    }
    request->held = result;
    return pg->state == PG_READY;
}

void pg_request_finish(PlexPostgres *pg, PgRequest *request)
{
    plex_link_remove(&request->link);
    pg->queued--;
    PGresult *result = request->held;
    request->held = NULL;
    if (result)
        deliver_result(pg, request, result, result_code(request, result), true);
    else
        pg_request_fail(request, -EPROTO); /* libpq ended it without a result */
    pg_request_put(request);
}

void pg_request_broken(PlexPostgres *pg, PgRequest *request, PGresult *result, int code)
{
    if (request->held) {
        PQclear(request->held);
        request->held = NULL;
    }
    if (result)
        deliver_result(pg, request, result, code, true);
    else
        pg_request_fail(request, code);
}

/* ---- Deadlines --------------------------------------------------------- */

/* A query past its deadline: its step hears -ETIMEDOUT, once. A record
 * already sent stays in the FIFO, step-less, until the server is done with
 * it (its results are thrown away, the FIFO stays in step with libpq's); one
 * still packed is never sent. */
static void deadline_expire(PlexPostgres *pg, PgRequest *request)
{
    if (request->sent) {
        pg_request_fail(request, -ETIMEDOUT);
        return;
    }
    plex_link_remove(&request->link);
    pg->queued--;
    pg->unsent--;
    pg_request_fail(request, -ETIMEDOUT);
    pg_request_put(request);
}

static bool deadline_pending(const PgRequest *request)
{
    return request->kind == PG_REQUEST_QUERY && request->item && request->deadline_ns;
}

void pg_deadlines_expire(PlexPostgres *pg)
{
    uint64_t now = plex_now_ns();
    pg_ref(pg);
    /* A handler only appends to the FIFO, unless it destroys or breaks the
     * connection (which takes the FIFO whole): the walk stops then. */
    PlexLink *link = pg->requests.next;
    while (link != &pg->requests) {
        PgRequest *request = PLEX_CONTAINER_OF(link, PgRequest, link);
        link = link->next;
        if (!deadline_pending(request) || request->deadline_ns > now)
            continue;
        deadline_expire(pg, request);
        if (pg->state != PG_READY && pg->state != PG_CONNECTING)
            break;
    }
    uint64_t earliest = 0;
    bool live = pg->state == PG_READY || pg->state == PG_CONNECTING;
    for (link = pg->requests.next; live && link != &pg->requests; link = link->next) {
        PgRequest *request = PLEX_CONTAINER_OF(link, PgRequest, link);
        if (deadline_pending(request) && (!earliest || request->deadline_ns < earliest))
            earliest = request->deadline_ns;
    }
    /* Without a timer (no memory), the late ones wait for their results. */
    if (earliest)
        (void)pg_deadline_ensure(pg, earliest);
    pg_unref(pg);
}

/* ---- Notifications ----------------------------------------------------- */

void pg_notifications_deliver(PlexPostgres *pg)
{
    PGnotify *notify;
    while (pg->state == PG_READY && (notify = PQnotifies(pg->conn)) != NULL) {
        PgRequest *listen = pg->listen;
        if (listen && !listen->item) {
            /* Its flow ended: forget the step. */
            pg->listen = NULL;
            pg_request_put(listen);
            listen = NULL;
        }
        if (!listen) {
            PQfreemem(notify);
            continue;
        }
        PlexEvent event = {.result = notify->be_pid,
                           .flags = PLEX_EVENT_MORE,
                           .postgres = pg,
                           .data = notify,
                           .length = sizeof(*notify)};
        PgModule *module = pg->module;
        const PGnotify *saved = module->lent_notify;
        module->lent_notify = notify;
        pg_request_deliver(listen, &event, false);
        module->lent_notify = saved;
        PQfreemem(notify);
    }
}

/* ---- Public: queries --------------------------------------------------- */

static int params_check(const PlexPostgresParams *params)
{
    if (!params)
        return 0;
    if (params->count < 0 || params->count > PG_MAX_PARAMS ||
        (params->count > 0 && !params->values) ||
        (params->result_format != 0 && params->result_format != 1))
        return -EINVAL;
    for (int i = 0; i < params->count; i++) {
        int format = params->formats ? params->formats[i] : 0;
        if (format != 0 && format != 1)
            return -EINVAL;
        if (format == 1 && params->values[i] && (!params->lengths || params->lengths[i] < 0))
            return -EINVAL;
    }
    return 0;
}

int pg_params_apply(PgCommand *command, const PlexPostgresParams *params)
{
    if (params_check(params) < 0)
        return -EINVAL;
    if (!params)
        return 0;
    command->count = params->count;
    command->types = params->types;
    command->values = params->values;
    command->lengths = params->lengths;
    command->formats = params->formats;
    command->result_format = params->result_format;
    return 0;
}

int plex_postgres_query(PlexPostgres *pg, PlexItem *item, const char *sql)
{
    if (!pg || !item || !sql)
        return -EINVAL;
    PgCommand command = {.how = PG_SEND_SIMPLE, .text = sql};
    return pg_command_start(pg, item, &command);
}

int plex_postgres_query_params(PlexPostgres *pg, PlexItem *item, const char *sql,
                               const PlexPostgresParams *params)
{
    PgCommand command = {.how = PG_SEND_PARAMS, .text = sql};
    if (!pg || !item || !sql || pg_params_apply(&command, params) < 0)
        return -EINVAL;
    return pg_command_start(pg, item, &command);
}

int plex_postgres_prepare(PlexPostgres *pg, PlexItem *item, const char *name, const char *sql,
                          int param_count, const unsigned int *param_types)
{
    if (!pg || !item || !name || !sql || param_count < 0 || param_count > PG_MAX_PARAMS)
        return -EINVAL;
    PgCommand command = {.how = PG_SEND_PREPARE,
                         .text = sql,
                         .name = name,
                         .count = param_count,
                         .types = param_types};
    return pg_command_start(pg, item, &command);
}

int plex_postgres_query_prepared(PlexPostgres *pg, PlexItem *item, const char *name,
                                 const PlexPostgresParams *params)
{
    PgCommand command = {.how = PG_SEND_PREPARED, .text = name};
    if (!pg || !item || !name || pg_params_apply(&command, params) < 0)
        return -EINVAL;
    command.types = NULL;
    return pg_command_start(pg, item, &command);
}

struct pg_result *plex_postgres_result_take(const PlexEvent *event)
{
    PgModule *module = event && event->postgres ? event->postgres->module : NULL;
    if (!module || !event->pg_result || module->lent_result != event->pg_result) {
        errno = EINVAL;
        return NULL;
    }
    module->lent_result = NULL;
    return event->pg_result;
}

const char *plex_postgres_sqlstate(const PlexEvent *event)
{
    if (!event || !event->pg_result)
        return NULL;
    return PQresultErrorField(event->pg_result, PG_DIAG_SQLSTATE);
}

/* ---- Public: notifications --------------------------------------------- */

int plex_postgres_listen(PlexPostgres *pg, PlexItem *item)
{
    if (!pg || !item || pg->state == PG_DEAD)
        return -EINVAL;
    if (pg->state == PG_IDLE)
        return -ENOTCONN;
    if (pg->state == PG_BROKEN)
        return PLEX_EPGBROKEN;
    if (pg->listen && pg->listen->item)
        return -EBUSY;
    if (pg->listen) {
        pg_request_put(pg->listen);
        pg->listen = NULL;
    }
    PgRequest *request;
    int rc = pg_request_begin(pg, item, PG_REQUEST_LISTEN, &request);
    if (rc < 0)
        return rc;
    pg->listen = request;
    pg_mark_dirty(pg); /* hand over what libpq already holds */
    return 0;
}

int plex_postgres_unlisten(PlexPostgres *pg)
{
    if (!pg)
        return -EINVAL;
    PgRequest *listen = pg->listen;
    if (!listen)
        return -ENOENT;
    pg->listen = NULL;
    bool armed = listen->item != NULL;
    pg_request_abort(listen);
    return armed ? 0 : -ENOENT;
}

const struct pgNotify *plex_postgres_notification(const PlexEvent *event)
{
    PgModule *module = event && event->postgres ? event->postgres->module : NULL;
    if (!module || !event->data || module->lent_notify != event->data)
        return NULL;
    return event->data;
}

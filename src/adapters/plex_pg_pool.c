/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexPostgresPool: N connections on one loop that flows share.
 *
 * Invariants:
 * - The pool owns its connections (they are attached to no flow; the pool
 *   is attached to its creator's flow, and ends with it).
 * - A connection that fails to connect or breaks is reconnected after its
 *   backoff delay, which doubles per failure up to backoff_max_ns and falls
 *   back to backoff_min_ns once connected (when that delay cannot be
 *   armed, for want of memory, the pool's next query reconnects it).
 *   Queries are never retried: the ones pending when it broke have failed
 *   with PLEX_EPGBROKEN.
 * - The pool's cap counts pending queries over every connection; each
 *   connection's own cap is the pool's, so the pool's check is the one that
 *   bites (-EAGAIN).
 */
#include <errno.h>

#include "adapters/pg_internal.h"

#define PG_POOL_MAX_CONNECTIONS 64u
#define PG_POOL_DEFAULT_CONNECTIONS 4u
#define PG_POOL_DEFAULT_TIMEOUT_NS 10000000000LL
#define PG_POOL_DEFAULT_BACKOFF_MIN_NS 50000000LL
#define PG_POOL_DEFAULT_BACKOFF_MAX_NS 5000000000LL

struct PlexPostgresPool {
    PlexResource resource;   /* owned by its creator's flow */
    PlexAllocator allocator; /* a copy: the flow may go first */
    PlexEventLoop *loop;
    PlexPostgresPoolConfig config; /* defaults filled in */
    unsigned count;
    PlexPostgres *connections[];
};

static bool config_resolve(const PlexPostgresPoolConfig *given, PlexPostgresPoolConfig *config)
{
    *config = given ? *given : (PlexPostgresPoolConfig){0};
    if (config->connections > PG_POOL_MAX_CONNECTIONS || config->connect_timeout_ns < 0 ||
        config->backoff_min_ns < 0 || config->backoff_max_ns < 0 || config->query_timeout_ns < 0)
        return false;
    if (!config->connections)
        config->connections = PG_POOL_DEFAULT_CONNECTIONS;
    if (!config->max_queued)
        config->max_queued = PLEX_POSTGRES_DEFAULT_MAX_QUEUED;
    if (!config->connect_timeout_ns)
        config->connect_timeout_ns = PG_POOL_DEFAULT_TIMEOUT_NS;
    if (!config->backoff_min_ns)
        config->backoff_min_ns = PG_POOL_DEFAULT_BACKOFF_MIN_NS;
    if (!config->backoff_max_ns)
        config->backoff_max_ns = PG_POOL_DEFAULT_BACKOFF_MAX_NS;
    if (config->backoff_max_ns < config->backoff_min_ns)
        config->backoff_max_ns = config->backoff_min_ns;
    return true;
}

void pg_pool_on_state(PlexPostgres *pg)
{
    PlexPostgresPool *pool = pg->pool;
    if (pg->state == PG_READY) {
        pg->backoff_ns = pool->config.backoff_min_ns;
        return;
    }
    if (pg->state != PG_BROKEN || pg->loop->destroying)
        return;
    int64_t delay_ns = pg->backoff_ns;
    pg->backoff_ns =
        delay_ns * 2 > pool->config.backoff_max_ns ? pool->config.backoff_max_ns : delay_ns * 2;
    /* Without memory for a timer, the connection stays broken until the
     * next query through the pool tries it again (pool_repair). */
    pg->retry_lost = pg_schedule_retry(pg, delay_ns) < 0;
}

static void pool_free(PlexPostgresPool *pool)
{
    for (unsigned i = 0; i < pool->count; i++) {
        PlexPostgres *pg = pool->connections[i];
        pg->pool = NULL;
        pg_kill(pg);
    }
    PlexAllocator allocator = pool->allocator;
    plex_mem_free(&allocator, pool);
}

static void pool_release(PlexResource *resource)
{
    pool_free(PLEX_CONTAINER_OF(resource, PlexPostgresPool, resource));
}

static int pool_add_connection(PlexPostgresPool *pool, const char *conninfo)
{
    PlexPostgres *pg = pg_new(&pool->allocator, conninfo);
    if (!pg)
        return -ENOMEM;
    pg->pool = pool;
    pg->pipeline = pool->config.pipeline;
    pg->max_queued = pool->config.max_queued;
    pg->query_timeout_ns = pool->config.query_timeout_ns;
    pg->backoff_ns = pool->config.backoff_min_ns;
    pool->connections[pool->count++] = pg;
    int rc = pg_connect_internal(pool->loop, pg, pool->config.connect_timeout_ns);
    if (rc == -ENOMEM || rc == -EBUSY) {
        /* Try again after the backoff, like a failed connect. */
        pg->state = PG_BROKEN;
        pg_pool_on_state(pg);
        return 0;
    }
    return rc;
}

PlexPostgresPool *plex_postgres_pool_create(Plex *plex, PlexEventLoop *loop, const char *conninfo,
                                            const PlexPostgresPoolConfig *config)
{
    PlexPostgresPoolConfig resolved;
    if (!plex || !loop || !conninfo || !plex_is_alive(plex) || !config_resolve(config, &resolved)) {
        errno = EINVAL;
        return NULL;
    }
    if (!pg_conninfo_valid(conninfo)) {
        errno = EINVAL;
        return NULL;
    }
    int rc = loop->destroying ? -ESHUTDOWN : plex_loop_bind(loop, plex);
    if (rc == 0 && !pg_module_get(loop))
        rc = -ENOMEM; /* up front: a connection then always gets its loop */
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    const PlexAllocator *allocator = plex_allocator(plex);
    size_t size = sizeof(PlexPostgresPool) + resolved.connections * sizeof(PlexPostgres *);
    PlexPostgresPool *pool = plex_mem_calloc(allocator, size);
    if (!pool) {
        errno = ENOMEM;
        return NULL;
    }
    pool->allocator = *allocator;
    pool->loop = loop;
    pool->config = resolved;
    plex_link_init(&pool->resource.link);
    for (unsigned i = 0; i < resolved.connections && rc == 0; i++)
        rc = pool_add_connection(pool, conninfo);
    if (rc == 0)
        rc = plex_resource_attach(plex, &pool->resource, pool_release);
    if (rc < 0) {
        pool_free(pool);
        errno = -rc;
        return NULL;
    }
    return pool;
}

int plex_postgres_pool_destroy(PlexPostgresPool *pool)
{
    if (!pool)
        return -EINVAL;
    plex_resource_detach(&pool->resource);
    pool_free(pool);
    return 0;
}

unsigned plex_postgres_pool_queued(const PlexPostgresPool *pool)
{
    unsigned queued = 0;
    for (unsigned i = 0; pool && i < pool->count; i++)
        queued += pool->connections[i]->queued;
    return queued;
}

unsigned plex_postgres_pool_connected(const PlexPostgresPool *pool)
{
    unsigned connected = 0;
    for (unsigned i = 0; pool && i < pool->count; i++)
        connected += pool->connections[i]->state == PG_READY;
    return connected;
}

PlexPostgres *plex_postgres_pool_connection(PlexPostgresPool *pool, unsigned index)
{
    return pool && index < pool->count ? pool->connections[index] : NULL;
}

/* The connected connection with the fewest pending queries; else a
 * connecting one (queries wait there for the connect). */
static PlexPostgres *pool_pick(PlexPostgresPool *pool)
{
    PlexPostgres *best = NULL;
    for (int pass = 0; pass < 2 && !best; pass++) {
        PgState wanted = pass == 0 ? PG_READY : PG_CONNECTING;
        for (unsigned i = 0; i < pool->count; i++) {
            PlexPostgres *pg = pool->connections[i];
            if (pg->state == wanted && !pg->closing && (!best || pg->queued < best->queued))
                best = pg;
        }
    }
    return best;
}

/* A broken connection whose reconnect could not be scheduled (no memory
 * then) is tried again now, so a passing shortage does not cost the pool
 * that connection for good. Only those: a connection that just broke is
 * broken without a retry armed while its failed queries' handlers run
 * (they may query the pool again), and reconnecting it then would skip the
 * backoff, a reconnect storm against a server that is down. */
static void pool_repair(PlexPostgresPool *pool)
{
    for (unsigned i = 0; i < pool->count && !pool->loop->destroying; i++) {
        PlexPostgres *pg = pool->connections[i];
        if (pg->state != PG_BROKEN || !pg->retry_lost || pg->kick_op || pg->connect_error)
            continue;
        pg->retry_lost = false;
        if (pg_connect_internal(pool->loop, pg, pool->config.connect_timeout_ns) < 0)
            pg_pool_on_state(pg);
    }
}

static int pool_start(PlexPostgresPool *pool, PlexItem *item, const PgCommand *command)
{
    if (plex_postgres_pool_queued(pool) >= pool->config.max_queued)
        return -EAGAIN;
    pool_repair(pool);
    PlexPostgres *pg = pool_pick(pool);
    if (!pg)
        return -ENOTCONN;
    return pg_command_start(pg, item, command);
}

int plex_postgres_pool_query(PlexPostgresPool *pool, PlexItem *item, const char *sql)
{
    if (!pool || !item || !sql)
        return -EINVAL;
    PgCommand command = {.how = PG_SEND_SIMPLE, .text = sql};
    return pool_start(pool, item, &command);
}

int plex_postgres_pool_query_params(PlexPostgresPool *pool, PlexItem *item, const char *sql,
                                    const PlexPostgresParams *params)
{
    PgCommand command = {.how = PG_SEND_PARAMS, .text = sql};
    if (!pool || !item || !sql || pg_params_apply(&command, params) < 0)
        return -EINVAL;
    return pool_start(pool, item, &command);
}

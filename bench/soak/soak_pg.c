/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-soak-pg: the query side of the soak (bench/soak/run.sh). Runs until
 * SIGINT or SIGTERM, at a steady rate, a mix of queries through a pipelined
 * pool, from flows that come and go:
 *
 *   - SELECT 1 (most);
 *   - 200 rows of generate_series with a parameter (a bigger result);
 *   - a division by zero (PLEX_EPG: the error path; the queries of other
 *     flows in its pipeline sync group get PLEX_EPIPELINE);
 *   - now and then pg_sleep(1) with the pool's 300 ms deadline: -ETIMEDOUT
 *     and a late result thrown away (the queries queued behind it on its
 *     connection time out too);
 *   - every 10 s, a connection of its own: connect, query, destroy.
 *
 *   bench-soak-pg [--flows N] [--rate QUERIES_PER_S] [--conninfo STR]
 *
 * Every 10 s it prints one line "soak-pg t=... ok=... pg_errors=...
 * aborted=... timeouts=... other=... flows=...". Any outcome other than
 * those expected counts in `other` (and the exit status is 1 when it is
 * not 0).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <samplex/samplex.h>

#define MS 1000000LL
#define QUERIES_PER_FLOW 200 /* a flow ends after this many; a new one replaces it */
#define REPORT_NS (10000 * MS)

typedef struct Soak {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    PlexPostgresPool *pool;
    const char *conninfo;
    unsigned flows;
    int64_t interval_ns; /* between two queries of one flow */
    uint64_t started_ns;
    uint64_t ok, pg_errors, aborted, timeouts, other, refused, flows_made, solo_runs;
    int last_other; /* the latest unexpected outcome */
} Soak;

typedef struct Client {
    Soak *soak;
    PlexItem *query;
    PlexTimer *pause;
    unsigned done;
    unsigned long long seed;
} Client;

static PlexEventLoop *signal_loop;

static void on_signal(int signal_number)
{
    (void)signal_number;
    plex_event_loop_stop(signal_loop);
}

static unsigned next_random(Client *client)
{
    client->seed = client->seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(client->seed >> 33);
}

static int client_spawn(Soak *soak);

/* ---- A client flow: query, pause, query, ... then end ------------------ */

static void client_send(Client *client)
{
    Soak *soak = client->soak;
    unsigned dice = next_random(client) % 1000;
    int rc;
    if (dice < 2) {
        rc = plex_postgres_pool_query(soak->pool, client->query, "SELECT pg_sleep(1)");
    } else if (dice < 50) {
        rc = plex_postgres_pool_query(soak->pool, client->query, "SELECT 1/0");
    } else if (dice < 150) {
        const char *values[1] = {"200"};
        PlexPostgresParams params = {.count = 1, .values = values};
        rc = plex_postgres_pool_query_params(soak->pool, client->query,
                                             "SELECT i, md5(i::text) FROM generate_series(1, $1) i",
                                             &params);
    } else {
        rc = plex_postgres_pool_query(soak->pool, client->query, "SELECT 1");
    }
    if (rc < 0) {
        soak->refused++;
        plex_timer_add(soak->loop, client->pause); /* try again after a pause */
    }
}

static void client_next(Plex *plex, Client *client)
{
    if (++client->done >= QUERIES_PER_FLOW) {
        plex_finish(plex); /* and a fresh flow takes its place */
        client_spawn(client->soak);
        return;
    }
    plex_timer_add(client->soak->loop, client->pause);
}

static void on_result(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Client *client = plex_item_user_data(item);
    if (event->flags & PLEX_EVENT_MORE)
        return;
    if (event->result == 1 || event->result == 200) {
        client->soak->ok++;
    } else {
        client->soak->other++;
        client->soak->last_other = event->result;
    }
    client_next(plex, client);
}

static void on_failure(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Client *client = plex_item_user_data(item);
    if (event->result == PLEX_EPG)
        client->soak->pg_errors++;
    else if (event->result == PLEX_EPIPELINE)
        client->soak->aborted++; /* behind a 1/0 in the same sync group */
    else if (event->result == -ETIMEDOUT)
        client->soak->timeouts++; /* a pg_sleep(1), or queued behind one */
    else {
        client->soak->other++;
        client->soak->last_other = event->result;
    }
    client_next(plex, client);
}

static void on_pause(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    client_send(plex_item_user_data(item));
}

static int client_spawn(Soak *soak)
{
    Plex *plex = plex_create(soak->registry, "soak client");
    if (!plex)
        return -errno;
    Client *client = plex_arena_calloc(plex_arena(plex), sizeof(*client));
    PlexItem *pause = client ? plex_item_create(plex, "pause", on_pause, NULL, NULL, client) : NULL;
    if (!pause) {
        plex_destroy(plex);
        return -ENOMEM;
    }
    client->soak = soak;
    client->seed = ++soak->flows_made;
    client->query = plex_item_create(plex, "query", on_result, on_failure, NULL, client);
    client->pause = plex_timer_create(plex, pause, soak->interval_ns, false);
    if (!client->query || !client->pause) {
        plex_destroy(plex);
        return -ENOMEM;
    }
    plex_start(plex);
    return plex_timer_add(soak->loop, client->pause);
}

/* ---- Solo: a connection of its own, connect -> query -> destroy --------- */

typedef struct Solo {
    Soak *soak;
    PlexPostgres *pg;
    PlexItem *query;
} Solo;

static void solo_end(Plex *plex, Solo *solo, bool ok)
{
    if (ok)
        solo->soak->solo_runs++;
    else
        solo->soak->other++;
    plex_finish(plex); /* destroys the connection */
}

static void on_solo_query(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Solo *solo = plex_item_user_data(item);
    solo_end(plex, solo, event->result == 1);
}

static void on_solo_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)event;
    solo_end(plex, plex_item_user_data(item), false);
}

static void on_solo_connected(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)event;
    Solo *solo = plex_item_user_data(item);
    if (plex_postgres_query(solo->pg, solo->query, "SELECT count(*) FROM pg_stat_activity") < 0)
        solo_end(plex, solo, false);
}

static void solo_run(Soak *soak)
{
    Plex *plex = plex_create(soak->registry, "soak solo");
    Solo *solo = plex ? plex_arena_calloc(plex_arena(plex), sizeof(*solo)) : NULL;
    if (!solo) {
        soak->other++;
        if (plex)
            plex_destroy(plex);
        return;
    }
    solo->soak = soak;
    solo->pg = plex_postgres_create(plex, soak->conninfo);
    PlexItem *connect =
        plex_item_create(plex, "connect", on_solo_connected, on_solo_error, NULL, solo);
    solo->query = plex_item_create(plex, "query", on_solo_query, on_solo_error, NULL, solo);
    if (!solo->pg || !connect || !solo->query ||
        plex_postgres_connect(soak->loop, solo->pg, connect, 5000 * MS) < 0) {
        soak->other++;
        plex_destroy(plex);
        return;
    }
    plex_start(plex);
}

/* ---- Report ------------------------------------------------------------- */

static void on_report(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    Soak *soak = plex_item_user_data(item);
    uint64_t seconds = (plex_now_ns() - soak->started_ns + MS) / 1000000000u;
    printf("soak-pg t=%" PRIu64 " ok=%" PRIu64 " pg_errors=%" PRIu64 " aborted=%" PRIu64
           " timeouts=%" PRIu64 " other=%" PRIu64 " (last %s) refused=%" PRIu64 " flows=%" PRIu64
           " solo=%" PRIu64 " live_flows=%zu\n",
           seconds, soak->ok, soak->pg_errors, soak->aborted, soak->timeouts, soak->other,
           soak->other ? plex_error_name(soak->last_other) : "-", soak->refused, soak->flows_made,
           soak->solo_runs, plex_registry_count(soak->registry));
    fflush(stdout);
    solo_run(soak);
}

static int parse_args(int argc, char **argv, Soak *soak)
{
    long rate = 2000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--flows") == 0)
            soak->flows = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--rate") == 0)
            rate = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--conninfo") == 0)
            soak->conninfo = argv[i + 1];
        else
            return -1;
    }
    if (argc % 2 == 0 || soak->flows < 1 || soak->flows > 10000 || rate < 1)
        return -1;
    soak->interval_ns = (int64_t)soak->flows * 1000000000LL / rate;
    return 0;
}

static int soak_start(Soak *soak, Plex *owner)
{
    PlexPostgresPoolConfig config = {
        .connections = 4, .pipeline = true, .query_timeout_ns = 300 * MS};
    soak->pool = plex_postgres_pool_create(owner, soak->loop, soak->conninfo, &config);
    PlexItem *report = plex_item_create(owner, "report", on_report, NULL, NULL, soak);
    PlexTimer *timer = report ? plex_timer_create(owner, report, REPORT_NS, true) : NULL;
    if (!soak->pool || !timer || plex_timer_add(soak->loop, timer) < 0)
        return -1;
    for (unsigned i = 0; i < soak->flows; i++)
        if (client_spawn(soak) < 0)
            return -1;
    return 0;
}

int main(int argc, char **argv)
{
    Soak soak = {.conninfo = "", .flows = 32};
    if (parse_args(argc, argv, &soak) < 0) {
        fprintf(stderr, "usage: bench-soak-pg [--flows N] [--rate Q/S] [--conninfo STR]\n");
        return 2;
    }
    soak.registry = plex_registry_create();
    soak.loop = soak.registry ? plex_event_loop_create(soak.registry) : NULL;
    if (!soak.loop) {
        fprintf(stderr, "bench-soak-pg: cannot create the loop: %s\n", strerror(errno));
        return 1;
    }
    signal_loop = soak.loop;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    soak.started_ns = plex_now_ns();
    Plex *owner = plex_create(soak.registry, "soak owner");
    int status = 0;
    if (!owner || soak_start(&soak, owner) < 0) {
        fprintf(stderr, "bench-soak-pg: cannot start\n");
        status = 1;
    } else {
        plex_event_loop_run(soak.loop);
    }
    plex_event_loop_destroy(soak.loop);
    plex_registry_destroy(soak.registry);
    printf("soak-pg done ok=%" PRIu64 " pg_errors=%" PRIu64 " aborted=%" PRIu64 " timeouts=%" PRIu64
           " other=%" PRIu64 "\n",
           soak.ok, soak.pg_errors, soak.aborted, soak.timeouts, soak.other);
    return status || soak.other ? 1 : 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-pg: `SELECT 1` queries per second through samplex's async Postgres.
 *
 *   bench-pg [--conninfo STR] [--connections N] [--pipeline DEPTH]
 *            [--pool-flows F] [--threads T] [--warmup S] [--duration S]
 *
 * Connection mode (the default): N connections, each owned by its own flow.
 * The statement "SELECT 1" is prepared once per connection
 * (plex_postgres_prepare), then every query runs it
 * (plex_postgres_query_prepared). Without --pipeline each connection has
 * exactly one query in flight and the next is sent from the handler of the
 * previous one: a closed loop, like pgbench's. With --pipeline DEPTH the
 * connection is in pipeline mode and DEPTH queries are in flight on it; each
 * handler sends one more, so DEPTH stay in flight.
 *
 * Pool mode (--pool-flows F): a pool of N connections in pipeline mode
 * (plex_postgres_pool_create) and F flows, each with one query in flight
 * over the pool, the next sent from the handler. The pool has no prepared
 * path: these queries go through plex_postgres_pool_query_params("SELECT 1",
 * no parameters), which libpq sends as Parse + Bind + Describe + Execute of
 * the unnamed statement.
 *
 * Threads (--threads T, default 1): T event loops, one per thread, as a
 * samplex server uses several cores; the connections (and the pool's
 * flows) are shared out between them, each loop driving its own.
 *
 * After --warmup seconds a window of --duration seconds is measured: the
 * queries whose handler ran inside it and the loop thread's own CPU time
 * (getrusage RUSAGE_THREAD: samplex + libpq, user + system) over it, both
 * read at the two edges of the window by a timer handler of that loop. The
 * figures of the T loops are summed (their windows open and close together
 * within a few milliseconds). Every result is checked (one row); any error
 * stops the run with exit status 1. One line "result key=value ..." goes to
 * stdout; total_queries counts every query of the run (warm-up and drain
 * too), for figures taken over the whole process.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <libpq-fe.h>

#include <samplex/samplex.h>

#define STATEMENT_NAME "select1"
#define STATEMENT_SQL "SELECT 1"
#define SETUP_TIMEOUT_NS (15 * 1000000000LL)
#define DRAIN_TIMEOUT_NS (10 * 1000000000LL)
#define MAX_CONNECTIONS 64u
#define MAX_THREADS 16u

typedef struct Options {
    const char *conninfo; /* libpq conninfo; "" = PG* environment */
    unsigned connections; /* connections (pool size in pool mode) */
    unsigned depth;       /* queries in flight per connection; > 1 only pipelined */
    bool pipeline;        /* connection mode: pipeline mode on */
    unsigned pool_flows;  /* 0: connection mode; else flows over the pool */
    unsigned threads;     /* event loops, one per thread */
    double warmup_s;      /* before the window */
    double duration_s;    /* the window */
} Options;

typedef struct Snapshot {
    uint64_t ns;         /* plex_now_ns() */
    uint64_t queries;    /* queries completed so far */
    uint64_t iterations; /* loop iterations so far */
    double user_s;       /* process user CPU */
    double system_s;     /* process system CPU */
} Snapshot;

typedef struct Bench {
    Options options;
    PlexRegistry *registry;
    PlexEventLoop *loop;
    Plex *owner;                                /* the window timer; the pool */
    PlexTimer *window;                          /* fires at the two window edges */
    PlexPostgresPool *pool;                     /* pool mode */
    PlexPostgres *connections[MAX_CONNECTIONS]; /* connection mode */
    unsigned connected;                         /* connects that succeeded */
    unsigned prepared;                          /* prepares that succeeded */
    uint64_t completed;                         /* queries answered with their row */
    uint64_t in_flight;                         /* queries started, handler not run yet */
    bool stopping;                              /* send no more queries */
    int edges;                                  /* window edges passed: 0, 1, 2 */
    int error;                                  /* first error, 0 if none */
    char message[512];                          /* what failed */
    Snapshot start, end;
} Bench;

/* ---- Errors and measurement ------------------------------------------------ */

static void bench_fail(Bench *bench, int code, const char *what, const char *detail)
{
    if (!bench->error) {
        bench->error = code < 0 ? code : -EPROTO;
        snprintf(bench->message, sizeof(bench->message), "%s: %s%s%s", what,
                 plex_strerror(bench->error), detail && *detail ? ": " : "", detail ? detail : "");
    }
    bench->stopping = true;
    plex_event_loop_stop(bench->loop);
}

static double seconds_of(struct timeval value)
{
    return (double)value.tv_sec + (double)value.tv_usec / 1e6;
}

static void snapshot_take(const Bench *bench, Snapshot *snapshot)
{
    struct rusage usage;
    PlexEventLoopStats stats = {0};
    getrusage(RUSAGE_THREAD, &usage);
    plex_event_loop_stats(bench->loop, &stats);
    snapshot->ns = plex_now_ns();
    snapshot->queries = bench->completed;
    snapshot->iterations = stats.iterations;
    snapshot->user_s = seconds_of(usage.ru_utime);
    snapshot->system_s = seconds_of(usage.ru_stime);
}

/* ---- The closed loop ------------------------------------------------------- */

/* Sends the next query of `item`: on `pg` (connection mode) or the pool. */
static void query_send(Bench *bench, PlexItem *item, PlexPostgres *pg)
{
    int rc = bench->pool ? plex_postgres_pool_query_params(bench->pool, item, STATEMENT_SQL, NULL)
                         : plex_postgres_query_prepared(pg, item, STATEMENT_NAME, NULL);
    if (rc < 0) {
        bench_fail(bench, rc, "sending a query", pg ? plex_postgres_error_message(pg) : NULL);
        return;
    }
    bench->in_flight++;
}

static void on_query(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Bench *bench = plex_item_user_data(item);
    bench->in_flight--;
    if (event->result != 1) {
        bench_fail(bench, -EPROTO, "SELECT 1 did not return one row", NULL);
        return;
    }
    bench->completed++;
    if (!bench->stopping)
        query_send(bench, item, event->postgres);
}

static void on_query_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Bench *bench = plex_item_user_data(item);
    bench->in_flight--;
    const char *detail = event->pg_result ? PQresultErrorMessage(event->pg_result)
                                          : plex_postgres_error_message(event->postgres);
    bench_fail(bench, event->result, "query", detail);
}

/* Starts `count` queries, each on an item of its own in `plex`. */
static int queries_start(Bench *bench, Plex *plex, PlexPostgres *pg, unsigned count)
{
    for (unsigned i = 0; i < count && !bench->error; i++) {
        PlexItem *item = plex_item_create(plex, "query", on_query, on_query_error, NULL, bench);
        if (!item)
            return -errno;
        query_send(bench, item, pg);
    }
    return bench->error;
}

/* The window timer: the first firing opens the measured window, the
 * second closes it and stops the loop. */
static void on_window_edge(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    Bench *bench = plex_item_user_data(item);
    if (bench->edges++ == 0) {
        snapshot_take(bench, &bench->start);
        uint64_t target = bench->start.ns + (uint64_t)(bench->options.duration_s * 1e9);
        int rc = plex_timer_add_at(bench->loop, bench->window, target);
        if (rc < 0)
            bench_fail(bench, rc, "arming the window timer", NULL);
        return;
    }
    snapshot_take(bench, &bench->end);
    bench->stopping = true;
    plex_event_loop_stop(bench->loop);
}

/* ---- Set-up ---------------------------------------------------------------- */

static void on_setup_step(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    unsigned *counter = plex_item_user_data(item);
    (*counter)++;
}

static void on_setup_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    const char *detail = event->pg_result ? PQresultErrorMessage(event->pg_result)
                                          : plex_postgres_error_message(event->postgres);
    fprintf(stderr, "bench-pg: %s failed: %s: %s\n", plex_item_description(item),
            plex_strerror(event->result), detail);
    exit(1);
}

/* Runs loop iterations until *counter reaches `target`. */
static int run_until(Bench *bench, const unsigned *counter, unsigned target)
{
    uint64_t deadline = plex_now_ns() + SETUP_TIMEOUT_NS;
    while (*counter < target) {
        if (plex_now_ns() > deadline)
            return -ETIMEDOUT;
        int rc = plex_event_loop_run_once(bench->loop, 50 * 1000000LL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Connection mode: connects every connection (each in a flow of its own),
 * prepares the statement on each. */
static int connections_open(Bench *bench)
{
    const Options *options = &bench->options;
    for (unsigned i = 0; i < options->connections; i++) {
        Plex *plex = plex_create(bench->registry, "connection");
        PlexPostgres *pg = plex ? plex_postgres_create(plex, options->conninfo) : NULL;
        if (!pg)
            return -errno;
        int rc = plex_postgres_set_pipeline(pg, options->pipeline);
        PlexItem *item = plex_item_create(plex, "connect", on_setup_step, on_setup_error, NULL,
                                          &bench->connected);
        if (rc < 0 || !item)
            return rc < 0 ? rc : -errno;
        rc = plex_postgres_connect(bench->loop, pg, item, SETUP_TIMEOUT_NS);
        if (rc < 0)
            return rc;
        bench->connections[i] = pg;
    }
    int rc = run_until(bench, &bench->connected, options->connections);
    for (unsigned i = 0; rc == 0 && i < options->connections; i++) {
        Plex *plex = plex_create(bench->registry, "prepare");
        PlexItem *item = plex ? plex_item_create(plex, "prepare", on_setup_step, on_setup_error,
                                                 NULL, &bench->prepared)
                              : NULL;
        if (!item)
            return -errno;
        rc = plex_postgres_prepare(bench->connections[i], item, STATEMENT_NAME, STATEMENT_SQL, 0,
                                   NULL);
    }
    return rc < 0 ? rc : run_until(bench, &bench->prepared, options->connections);
}

static int connections_start(Bench *bench)
{
    for (unsigned i = 0; i < bench->options.connections; i++) {
        Plex *plex = plex_create(bench->registry, "client");
        if (!plex)
            return -errno;
        int rc = queries_start(bench, plex, bench->connections[i], bench->options.depth);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Pool mode: a pipelined pool owned by the owner flow, every connection up. */
static int pool_open(Bench *bench)
{
    const Options *options = &bench->options;
    PlexPostgresPoolConfig config = {
        .connections = options->connections,
        .max_queued =
            options->pool_flows > PLEX_POSTGRES_DEFAULT_MAX_QUEUED ? options->pool_flows : 0,
        .pipeline = true,
    };
    bench->pool = plex_postgres_pool_create(bench->owner, bench->loop, options->conninfo, &config);
    if (!bench->pool)
        return -errno;
    uint64_t deadline = plex_now_ns() + SETUP_TIMEOUT_NS;
    while (plex_postgres_pool_connected(bench->pool) < options->connections) {
        if (plex_now_ns() > deadline) {
            PlexPostgres *first = plex_postgres_pool_connection(bench->pool, 0);
            fprintf(stderr, "bench-pg: pool did not connect: %s\n",
                    plex_postgres_error_message(first));
            return -ETIMEDOUT;
        }
        int rc = plex_event_loop_run_once(bench->loop, 50 * 1000000LL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int pool_start(Bench *bench)
{
    for (unsigned i = 0; i < bench->options.pool_flows; i++) {
        Plex *plex = plex_create(bench->registry, "player");
        if (!plex)
            return -errno;
        int rc = queries_start(bench, plex, NULL, 1);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- Run ------------------------------------------------------------------- */

static int bench_run(Bench *bench)
{
    bool pool_mode = bench->options.pool_flows > 0;
    int rc = pool_mode ? pool_open(bench) : connections_open(bench);
    if (rc < 0)
        return rc;
    PlexItem *edge = plex_item_create(bench->owner, "window", on_window_edge, NULL, NULL, bench);
    bench->window = edge ? plex_timer_create(bench->owner, edge, 0, false) : NULL;
    if (!bench->window)
        return -errno;
    uint64_t open_at = plex_now_ns() + (uint64_t)(bench->options.warmup_s * 1e9);
    rc = plex_timer_add_at(bench->loop, bench->window, open_at);
    if (rc < 0)
        return rc;
    rc = pool_mode ? pool_start(bench) : connections_start(bench);
    if (rc < 0)
        return rc;
    rc = plex_event_loop_run(bench->loop);
    if (rc < 0)
        return rc;
    /* Let the queries still in flight come back before tearing down. */
    uint64_t deadline = plex_now_ns() + DRAIN_TIMEOUT_NS;
    while (bench->in_flight > 0 && plex_now_ns() < deadline) {
        rc = plex_event_loop_run_once(bench->loop, 50 * 1000000LL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* One line for the T loops: their windows' figures summed. */
static void report(Bench *const *benches, unsigned count)
{
    const Options *options = &benches[0]->options;
    uint64_t queries = 0, iterations = 0, total = 0;
    double qps = 0, seconds = 0, user_s = 0, system_s = 0;
    unsigned connections = 0, flows = 0;
    for (unsigned i = 0; i < count; i++) {
        const Bench *bench = benches[i];
        const Snapshot *a = &bench->start, *b = &bench->end;
        double window_s = (double)(b->ns - a->ns) / 1e9;
        queries += b->queries - a->queries;
        qps += window_s > 0 ? (double)(b->queries - a->queries) / window_s : 0.0;
        seconds = window_s > seconds ? window_s : seconds;
        user_s += b->user_s - a->user_s;
        system_s += b->system_s - a->system_s;
        iterations += b->iterations - a->iterations;
        total += bench->completed;
        connections += bench->options.connections;
        flows += bench->options.pool_flows;
    }
    double cpu_s = user_s + system_s;
    const char *mode = options->pool_flows ? "pool" : options->pipeline ? "pipeline" : "single";
    printf("result mode=%s connections=%u depth=%u flows=%u threads=%u queries=%" PRIu64
           " seconds=%.3f qps=%.0f cpu_s=%.3f user_s=%.3f system_s=%.3f cpu_us_per_query=%.3f"
           " iterations=%" PRIu64 " queries_per_iteration=%.1f total_queries=%" PRIu64 "\n",
           mode, connections, options->depth, flows, count, queries, seconds, qps, cpu_s, user_s,
           system_s, queries ? cpu_s * 1e6 / (double)queries : 0.0, iterations,
           iterations ? (double)queries / (double)iterations : 0.0, total);
}

/* ---- Options --------------------------------------------------------------- */

static void usage(const char *program)
{
    fprintf(stderr,
            "usage: %s [--conninfo STR] [--connections N] [--pipeline DEPTH]\n"
            "          [--pool-flows F] [--threads T] [--warmup S] [--duration S]\n"
            "  --conninfo     libpq connection string (default \"\": PG* environment)\n"
            "  --connections  connections, or pool size with --pool-flows (1..%u, default 1)\n"
            "  --pipeline     pipeline mode, DEPTH queries in flight per connection\n"
            "  --pool-flows   F flows, one query in flight each, over a pipelined pool\n"
            "  --threads      event loops, one per thread, sharing the connections (default 1)\n"
            "  --warmup       seconds before the measured window (default 1)\n"
            "  --duration     seconds measured (default 5)\n",
            program, MAX_CONNECTIONS);
    exit(2);
}

static unsigned parse_count(const char *text, const char *program)
{
    char *end;
    unsigned long value = strtoul(text, &end, 10);
    if (*end || value == 0 || value > 1000000)
        usage(program);
    return (unsigned)value;
}

static double parse_seconds(const char *text, const char *program)
{
    char *end;
    double value = strtod(text, &end);
    if (*end || !(value > 0) || value > 3600)
        usage(program);
    return value;
}

static Options options_parse(int argc, char **argv)
{
    Options options = {
        .conninfo = "", .connections = 1, .depth = 1, .threads = 1, .warmup_s = 1, .duration_s = 5};
    static const struct option longs[] = {
        {"conninfo", required_argument, NULL, 'c'},
        {"connections", required_argument, NULL, 'n'},
        {"pipeline", required_argument, NULL, 'p'},
        {"pool-flows", required_argument, NULL, 'f'},
        {"threads", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'},
        {"duration", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    int option;
    while ((option = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (option) {
        case 'c':
            options.conninfo = optarg;
            break;
        case 'n':
            options.connections = parse_count(optarg, argv[0]);
            break;
        case 'p':
            options.pipeline = true;
            options.depth = parse_count(optarg, argv[0]);
            break;
        case 'f':
            options.pool_flows = parse_count(optarg, argv[0]);
            break;
        case 't':
            options.threads = parse_count(optarg, argv[0]);
            break;
        case 'w':
            options.warmup_s = parse_seconds(optarg, argv[0]);
            break;
        case 'd':
            options.duration_s = parse_seconds(optarg, argv[0]);
            break;
        default:
            usage(argv[0]);
        }
    }
    if (optind != argc || options.connections > MAX_CONNECTIONS ||
        (options.pool_flows && options.pipeline) || options.threads > MAX_THREADS ||
        options.threads > options.connections ||
        (options.pool_flows && options.threads > options.pool_flows))
        usage(argv[0]);
    return options;
}

/* One loop's run, in a thread of its own. */
static void *bench_thread(void *argument)
{
    Bench *bench = argument;
    bench->registry = plex_registry_create();
    bench->loop = bench->registry ? plex_event_loop_create(bench->registry) : NULL;
    bench->owner = bench->loop ? plex_create(bench->registry, "bench") : NULL;
    int rc = bench->owner ? bench_run(bench) : -errno;
    if (rc < 0 && !bench->error)
        bench_fail(bench, rc, "set-up", NULL);
    if (!bench->error && bench->edges < 2)
        bench_fail(bench, -EPROTO, "the measured window did not close", NULL);
    plex_event_loop_destroy(bench->loop);
    plex_registry_destroy(bench->registry);
    return NULL;
}

/* Loop i's share of `total` (the first ones take the remainder). */
static unsigned share_of(unsigned total, unsigned count, unsigned i)
{
    return total / count + (i < total % count ? 1 : 0);
}

int main(int argc, char **argv)
{
    Options options = options_parse(argc, argv);
    Bench *benches[MAX_THREADS] = {0};
    pthread_t threads[MAX_THREADS];
    unsigned started = 0;
    int status = 0;
    for (unsigned i = 0; i < options.threads; i++) {
        benches[i] = calloc(1, sizeof(*benches[i]));
        if (!benches[i]) {
            fprintf(stderr, "bench-pg: out of memory\n");
            return 1;
        }
        benches[i]->options = options;
        benches[i]->options.connections = share_of(options.connections, options.threads, i);
        benches[i]->options.pool_flows = share_of(options.pool_flows, options.threads, i);
    }
    for (; started < options.threads; started++) {
        int rc = pthread_create(&threads[started], NULL, bench_thread, benches[started]);
        if (rc != 0) {
            fprintf(stderr, "bench-pg: starting a loop thread: %s\n", strerror(rc));
            status = 1;
            break;
        }
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
        if (benches[i]->error) {
            fprintf(stderr, "bench-pg: loop %u: %s\n", i, benches[i]->message);
            status = 1;
        }
    }
    if (status == 0)
        report(benches, options.threads);
    for (unsigned i = 0; i < options.threads; i++)
        free(benches[i]);
    return status;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex-echo: a TCP echo server.
 *
 *   build/bin/samplex-echo --port N [--host ADDR] [--threads N]
 *
 * One "echo" flow per thread serves every connection of that thread (the
 * threads share the port with SO_REUSEPORT). Its steps are shared by all of
 * its connections, which keeps an idle connection at about 0.25 KiB:
 *
 *   accept -> on a connection: attach it to the flow, start reading
 *   read   -> on data: write it back (the write step), keep reading
 *   write  -> on success: resume reading if we had paused
 *   close  -> on closed: destroy the connection
 *
 * (A server with state per player gives each connection a flow of its own,
 * as the MUD demo does; that costs about 1.5 KiB more per connection.)
 *
 * If a client sends faster than it reads, its queued echo grows: past 64 KiB
 * the connection stops reading until the queue drains (backpressure), so one
 * slow client costs a bounded amount of memory.
 *
 * SIGINT or SIGTERM stops every loop; destroying a loop ends its flows,
 * which closes their connections and frees everything.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <samplex/samplex.h>

#define MAX_THREADS 64
#define PAUSE_ABOVE (64 * 1024) /* queued echo bytes that pause reading */

/* What the echo remembers per connection: two flags, kept in the
 * connection's user data so that a connection needs no memory of ours. */
enum {
    ECHO_READING = 1, /* a read is active (its last call has not come yet) */
    ECHO_PAUSED = 2,  /* we stopped reading until the echo drains */
};

/* The shared steps of a thread's echo flow. */
typedef struct EchoSteps {
    PlexItem *read;
    PlexItem *write;
    PlexItem *close;
} EchoSteps;

typedef struct Worker {
    pthread_t thread;
    PlexRegistry *registry;
    PlexListener *listener;
    PlexItem *accept;
    EchoSteps steps;
    PlexEventLoop *loop;
    int status; /* 0, or why this worker cannot serve */
} Worker;

/* ---- A connection: read -> write -> read -------------------------------- */

static unsigned flags_of(PlexConnection *conn)
{
    return (unsigned)(uintptr_t)plex_connection_user_data(conn);
}

static void set_flags(PlexConnection *conn, unsigned flags)
{
    plex_connection_set_user_data(conn, (void *)(uintptr_t)flags);
}

static void start_reading(PlexConnection *conn, const EchoSteps *steps)
{
    if (plex_connection_read(conn, steps->read) == 0)
        set_flags(conn, ECHO_READING);
    else
        plex_connection_destroy(conn);
}

static void on_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    const EchoSteps *steps = plex_item_user_data(item);
    PlexConnection *conn = event->connection;
    /* The bytes are copied: event->data is only ours until we return. */
    if (plex_connection_write(conn, steps->write, event->data, event->length) < 0) {
        plex_connection_destroy(conn); /* over the write cap or broken: drop the client */
        return;
    }
    unsigned flags = flags_of(conn);
    if (!(flags & ECHO_PAUSED) && plex_connection_bytes_queued(conn) > PAUSE_ABOVE) {
        set_flags(conn, flags | ECHO_PAUSED);
        plex_connection_read_stop(conn);
    }
}

static void on_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    const EchoSteps *steps = plex_item_user_data(item);
    PlexConnection *conn = event->connection;
    unsigned flags = flags_of(conn) & ~(unsigned)ECHO_READING;
    set_flags(conn, flags);
    if (event->result == -ECANCELED && (flags & ECHO_PAUSED)) {
        /* Our own stop. Resume now if the echo drained meanwhile. */
        if (plex_connection_bytes_queued(conn) == 0)
            start_reading(conn, steps);
        return;
    }
    /* End of stream or an error: send what is queued, then close. */
    if (plex_connection_close(conn, steps->close) < 0)
        plex_connection_destroy(conn);
}

static void on_written(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    const EchoSteps *steps = plex_item_user_data(item);
    PlexConnection *conn = event->connection;
    unsigned flags = flags_of(conn);
    if ((flags & ECHO_PAUSED) && !(flags & ECHO_READING) && plex_connection_bytes_queued(conn) == 0)
        start_reading(conn, steps);
}

static void on_write_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)item;
    plex_connection_destroy(event->connection); /* the peer is gone */
}

static void on_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)item;
    plex_connection_destroy(event->connection); /* its memory goes back to the loop */
}

/* ---- Accepting ------------------------------------------------------------ */

static void on_accept(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    const EchoSteps *steps = plex_item_user_data(item);
    /* Unattached connections are closed by the adapter when we return. */
    if (plex_connection_attach(event->connection, plex) == 0)
        start_reading(event->connection, steps);
}

static void on_accept_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)item;
    if (event->result != -ECANCELED)
        fprintf(stderr, "accept stopped: %s\n", plex_strerror(event->result));
}

static sigset_t stop_signals(void)
{
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    return signals;
}

/* ---- Loops, one per thread ---------------------------------------------- */

static Worker workers[MAX_THREADS];
static int worker_count;
static pthread_barrier_t all_ready;   /* every loop exists and accepts */
static pthread_barrier_t all_stopped; /* no loop runs: none is stopped any more */

static void on_signal(int signal_number)
{
    (void)signal_number;
    for (int i = 0; i < worker_count; i++)
        plex_event_loop_stop(workers[i].loop); /* safe in a signal handler */
}

/* A loop is created and run on the same thread (its ring has one issuer). */
static void worker_start(Worker *worker)
{
    worker->loop = plex_event_loop_create(worker->registry);
    worker->status = worker->loop
                         ? plex_listener_accept(worker->loop, worker->listener, worker->accept)
                         : -errno;
}

static void *worker_thread(void *argument)
{
    Worker *worker = argument;
    worker_start(worker);
    pthread_barrier_wait(&all_ready);
    if (worker->status == 0)
        plex_event_loop_run(worker->loop);
    pthread_barrier_wait(&all_stopped);
    plex_event_loop_destroy(worker->loop); /* ends its flows: closes every connection */
    return NULL;
}

static int worker_prepare(Worker *worker, const char *host, uint16_t port, bool reuse_port)
{
    Plex *flow = plex_create(worker->registry, "echo");
    PlexListenerOptions options = {.reuse_port = reuse_port};
    EchoSteps *steps = &worker->steps;
    worker->listener = flow ? plex_listener_create(flow, host, port, &options) : NULL;
    if (!worker->listener)
        return -errno;
    worker->accept = plex_item_create(flow, "accept", on_accept, on_accept_end, NULL, steps);
    steps->read = plex_item_create(flow, "read", on_data, on_read_end, NULL, steps);
    steps->write = plex_item_create(flow, "write", on_written, on_write_error, NULL, steps);
    steps->close = plex_item_create(flow, "close", on_closed, on_closed, NULL, steps);
    return worker->accept && steps->read && steps->write && steps->close ? 0 : -ENOMEM;
}

static int parse_args(int argc, char **argv, const char **host, long *port, long *threads)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            *port = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--host") == 0)
            *host = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            *threads = strtol(argv[i + 1], NULL, 10);
        else
            return -1;
    }
    return argc % 2 == 1 && *port >= 0 && *port <= 65535 && *threads >= 1 && *threads <= MAX_THREADS
               ? 0
               : -1;
}

/* The listeners are made first: the first learns the port (0: the kernel
 * picks), the others share it. Worker 0 runs on this thread. */
static int serve(PlexRegistry *registry, const char *host, uint16_t port, int threads)
{
    for (int i = 0; i < threads; i++) {
        workers[i] = (Worker){.registry = registry};
        int rc = worker_prepare(&workers[i], host, port, threads > 1);
        if (rc < 0) {
            fprintf(stderr, "cannot listen on %s:%u: %s\n", host, port, plex_strerror(rc));
            return 1; /* plex_registry_destroy ends the flows made so far */
        }
        port = (uint16_t)plex_listener_port(workers[i].listener);
    }
    pthread_barrier_init(&all_ready, NULL, (unsigned)threads);
    pthread_barrier_init(&all_stopped, NULL, (unsigned)threads);
    for (int i = 1; i < threads; i++)
        pthread_create(&workers[i].thread, NULL, worker_thread, &workers[i]);
    worker_start(&workers[0]);
    pthread_barrier_wait(&all_ready);
    worker_count = threads;
    int status = 0;
    for (int i = 0; i < threads; i++)
        if (workers[i].status < 0) {
            fprintf(stderr, "cannot serve: %s\n", plex_strerror(workers[i].status));
            status = 1;
        }
    sigset_t signals = stop_signals();
    if (status == 0) {
        printf("listening on %s:%u\n", host, port);
        fflush(stdout);
        /* Blocked so far: the handler needs every loop to exist. */
        pthread_sigmask(SIG_UNBLOCK, &signals, NULL);
        plex_event_loop_run(workers[0].loop);
        pthread_sigmask(SIG_BLOCK, &signals, NULL); /* no handler once loops go */
    }
    on_signal(0); /* stop the other loops too, before any is destroyed */
    pthread_barrier_wait(&all_stopped);
    plex_event_loop_destroy(workers[0].loop);
    for (int i = 1; i < threads; i++)
        pthread_join(workers[i].thread, NULL);
    pthread_barrier_destroy(&all_ready);
    pthread_barrier_destroy(&all_stopped);
    return status;
}

int main(int argc, char **argv)
{
    const char *host = "0.0.0.0";
    long port = -1, threads = 1;
    if (parse_args(argc, argv, &host, &port, &threads) < 0 || port < 0) {
        fprintf(stderr, "usage: %s --port N [--host ADDR] [--threads N]\n", argv[0]);
        return 2;
    }
    /* SIGINT and SIGTERM stop the loops. They stay blocked in the worker
     * threads (which inherit this mask), so the handler runs on this one. */
    sigset_t signals = stop_signals();
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    PlexRegistry *registry = plex_registry_create();
    if (!registry) {
        fprintf(stderr, "cannot create the registry: %s\n", strerror(errno));
        return 1;
    }
    int status = serve(registry, host, (uint16_t)port, (int)threads);
    plex_registry_destroy(registry);
    return status;
}

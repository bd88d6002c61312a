/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex-echo: a TCP echo server.
 *
 *   build/bin/samplex-echo --port N [--host ADDR] [--threads N]
 *
 * One "listener" flow per thread accepts connections (the threads share the
 * port with SO_REUSEPORT). Every connection gets a flow of its own, a
 * "session", whose steps are:
 *
 *   read   -> on data: write it back (the write step), keep reading
 *   write  -> on success: resume reading if we had paused
 *   close  -> on closed: the session is finished
 *
 * If a client sends faster than it reads, its queued echo grows: past 64 KiB
 * the session stops reading until the queue drains (backpressure), so one
 * slow client costs a bounded amount of memory.
 *
 * SIGINT or SIGTERM stops every loop; destroying a loop ends its flows,
 * which closes their connections and frees everything.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <samplex/samplex.h>

#define MAX_THREADS 64
#define PAUSE_ABOVE (64 * 1024) /* queued echo bytes that pause reading */

typedef struct Session {
    PlexConnection *conn;
    PlexItem *read;
    PlexItem *write;
    PlexItem *close;
    bool reading; /* a read is active (its last call has not come yet) */
    bool paused;  /* we stopped reading until the echo drains */
} Session;

typedef struct Worker {
    pthread_t thread;
    PlexRegistry *registry;
    PlexListener *listener;
    PlexItem *accept;
    PlexEventLoop *loop;
    int status; /* 0, or why this worker cannot serve */
} Worker;

/* ---- A session: read -> write -> read ----------------------------------- */

static void start_reading(Session *session)
{
    session->paused = false;
    session->reading = plex_connection_read(session->conn, session->read) == 0;
    if (!session->reading)
        plex_destroy(plex_item_plex(session->read));
}

static void on_data(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Session *session = plex_item_user_data(item);
    /* The bytes are copied: event->data is only ours until we return. */
    if (plex_connection_write(session->conn, session->write, event->data, event->length) < 0) {
        plex_destroy(plex); /* over the write cap or broken: drop the client */
        return;
    }
    if (!session->paused && plex_connection_bytes_queued(session->conn) > PAUSE_ABOVE) {
        session->paused = true;
        plex_connection_read_stop(session->conn);
    }
}

static void on_read_end(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Session *session = plex_item_user_data(item);
    session->reading = false;
    if (event->result == -ECANCELED && session->paused) {
        /* Our own stop. Resume now if the echo drained meanwhile. */
        if (plex_connection_bytes_queued(session->conn) == 0)
            start_reading(session);
        return;
    }
    /* End of stream or an error: send what is queued, then close. */
    if (plex_connection_close(session->conn, session->close) < 0)
        plex_destroy(plex);
}

static void on_written(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    Session *session = plex_item_user_data(item);
    if (session->paused && !session->reading && plex_connection_bytes_queued(session->conn) == 0)
        start_reading(session);
}

static void on_closed(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    plex_finish(plex); /* the connection is freed with its flow */
}

/* ---- Accepting: one session flow per connection ------------------------- */

static Session *session_create(Plex *plex, PlexConnection *conn)
{
    Session *session = plex_arena_calloc(plex_arena(plex), sizeof(*session));
    if (!session)
        return NULL;
    session->conn = conn;
    /* Write errors have no handler of their own: they fail the flow, which
     * aborts the connection. */
    session->read = plex_item_create(plex, "read", on_data, on_read_end, NULL, session);
    session->write = plex_item_create(plex, "write", on_written, NULL, NULL, session);
    session->close = plex_item_create(plex, "close", on_closed, on_closed, NULL, session);
    return session->read && session->write && session->close ? session : NULL;
}

static void on_accept(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    Plex *flow = plex_create(plex_registry(plex), "session");
    if (!flow)
        return; /* the adapter closes a connection nobody attached */
    Session *session = session_create(flow, event->connection);
    if (!session || plex_connection_attach(event->connection, flow) < 0) {
        plex_destroy(flow);
        return;
    }
    start_reading(session);
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
    Plex *flow = plex_create(worker->registry, "listener");
    PlexListenerOptions options = {.reuse_port = reuse_port};
    worker->listener = flow ? plex_listener_create(flow, host, port, &options) : NULL;
    worker->accept = worker->listener
                         ? plex_item_create(flow, "accept", on_accept, on_accept_end, NULL, NULL)
                         : NULL;
    return worker->accept ? 0 : -errno;
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

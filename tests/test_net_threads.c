/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Several loops, one per thread, each with its own listener on the same
 * port (SO_REUSEPORT), sharing one registry: every client is echoed, the
 * kernel spreads the connections over the loops, and each loop ends clean.
 */
#include <pthread.h>

#include "net_support.h"

#define THREADS 4
#define CLIENTS 64

typedef struct Worker {
    pthread_t thread;
    EchoServer server;
    pthread_barrier_t *ready;   /* every loop accepts */
    pthread_barrier_t *stopped; /* every loop is stopped: none is destroyed before */
    bool ended_clean;
} Worker;

static void *worker_run(void *argument)
{
    Worker *worker = argument;
    EchoServer *server = &worker->server;
    /* The loop is created on the thread that runs it (single issuer). */
    server->loop = plex_event_loop_create(server->registry);
    int rc =
        server->loop ? plex_listener_accept(server->loop, server->listener, server->accept) : -1;
    pthread_barrier_wait(worker->ready);
    if (rc == 0)
        plex_event_loop_run(server->loop);
    pthread_barrier_wait(worker->stopped);
    if (rc < 0) {
        plex_event_loop_destroy(server->loop);
        return NULL;
    }
    /* Stopped: let the sessions the clients closed finish, then the accept. */
    uint64_t deadline = plex_now_ns() + NET_WAIT_NS;
    while (server->sessions_ended < server->accepted && plex_now_ns() < deadline)
        plex_event_loop_run_once(server->loop, 50 * NET_MS);
    plex_listener_close(server->listener);
    while (server->accept_ends == 0 && plex_now_ns() < deadline)
        plex_event_loop_run_once(server->loop, 50 * NET_MS);
    worker->ended_clean = server->sessions_ended == server->accepted &&
                          server->session_cleanups == 3 * server->accepted &&
                          server->accept_ends == 1 && server->accept_end_result == -ECANCELED;
    plex_event_loop_destroy(server->loop); /* ends the listener flow */
    return NULL;
}

/* The listeners are made here: the first learns the port, the others
 * share it. The accept starts on each worker's own loop. */
static void worker_prepare(Worker *worker, PlexRegistry *registry, uint16_t port)
{
    EchoServer *server = &worker->server;
    server->registry = registry;
    server->flow = plex_create(registry, "listener");
    assert_non_null(server->flow);
    PlexListenerOptions options = {.reuse_port = true};
    server->listener = plex_listener_create(server->flow, "127.0.0.1", port, &options);
    assert_non_null(server->listener);
    server->port = (uint16_t)plex_listener_port(server->listener);
    server->accept = plex_item_create(server->flow, "accept", echo_server_accepted,
                                      echo_server_accept_end, NULL, server);
    assert_non_null(server->accept);
}

static void test_reuse_port_loops(void **state)
{
    (void)state;
    PlexRegistry *registry = plex_registry_create();
    static Worker workers[THREADS];
    pthread_barrier_t ready, stopped;
    pthread_barrier_init(&ready, NULL, THREADS + 1);
    pthread_barrier_init(&stopped, NULL, THREADS + 1);
    uint16_t port = 0;
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (Worker){.ready = &ready, .stopped = &stopped};
        worker_prepare(&workers[i], registry, port);
        port = workers[i].server.port;
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&workers[i].thread, NULL, worker_run, &workers[i]), 0);
    pthread_barrier_wait(&ready);

    int clients[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        clients[i] = raw_connect(port);
    for (int i = 0; i < CLIENTS; i++) {
        char message[16], reply[16] = {0};
        int length = snprintf(message, sizeof(message), "client %d", i);
        assert_int_equal(send(clients[i], message, (size_t)length, 0), length);
        assert_int_equal(recv(clients[i], reply, (size_t)length, MSG_WAITALL), length);
        assert_string_equal(reply, message);
    }
    for (int i = 0; i < CLIENTS; i++)
        close(clients[i]);
    for (int i = 0; i < THREADS; i++)
        plex_event_loop_stop(workers[i].server.loop);
    pthread_barrier_wait(&stopped);
    int accepted = 0, loops_used = 0;
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(workers[i].thread, NULL), 0);
        assert_true(workers[i].ended_clean);
        accepted += workers[i].server.accepted;
        loops_used += workers[i].server.accepted > 0;
    }
    assert_int_equal(accepted, CLIENTS);
    assert_true(loops_used > 1); /* 64 connections over 4 listeners: never all on one */
    pthread_barrier_destroy(&ready);
    pthread_barrier_destroy(&stopped);
    assert_int_equal(plex_registry_count(registry), 0);
    plex_registry_destroy(registry);
}

int main(void)
{
    PLEX_TEST_TIMEOUT_GUARD(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reuse_port_loops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The event loop: run/stop from a handler, another thread and SIGINT; posts
 * from other threads; batching of submissions; destroy with operations in
 * the kernel runs no handler and every cleanup once.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#include <samplex/samplex.h>

#include "adapters/loop.h"

#define MS 1000000LL

typedef struct Fixture {
    PlexRegistry *registry;
    PlexEventLoop *loop;
    Plex *plex;
    atomic_int ticks;
    int success;
    int error;
    int cleanup;
    int ends;
    int end_status;
    int stop_after;
    atomic_int posted;
    atomic_int post_failures;
} Fixture;

static int setup(void **state)
{
    Fixture *fixture = calloc(1, sizeof(*fixture));
    fixture->registry = plex_registry_create();
    assert_non_null(fixture->registry);
    fixture->loop = plex_event_loop_create(fixture->registry);
    assert_non_null(fixture->loop);
    fixture->plex = plex_create(fixture->registry, "loop-test");
    assert_non_null(fixture->plex);
    plex_set_user_data(fixture->plex, fixture);
    *state = fixture;
    return 0;
}

static int teardown(void **state)
{
    Fixture *fixture = *state;
    plex_event_loop_destroy(fixture->loop);
    plex_registry_destroy(fixture->registry);
    free(fixture);
    return 0;
}

static void on_tick(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    Fixture *fixture = plex_user_data(plex);
    int ticks = atomic_fetch_add(&fixture->ticks, 1) + 1;
    if (ticks == fixture->stop_after)
        plex_event_loop_stop(fixture->loop);
}

static void on_cleanup(Plex *plex, PlexItem *item)
{
    (void)item;
    ((Fixture *)plex_user_data(plex))->cleanup++;
}

static void on_end(Plex *plex, int status)
{
    Fixture *fixture = plex_user_data(plex);
    fixture->ends++;
    fixture->end_status = status;
}

static PlexTimer *start_ticker(Fixture *fixture, int64_t interval_ns)
{
    PlexItem *item = plex_item_create(fixture->plex, "tick", on_tick, NULL, on_cleanup, NULL);
    assert_non_null(item);
    PlexTimer *timer = plex_timer_create(fixture->plex, item, interval_ns, true);
    assert_non_null(timer);
    assert_int_equal(plex_timer_add(fixture->loop, timer), 0);
    return timer;
}

static void test_empty_loop_returns(void **state)
{
    Fixture *fixture = *state;
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(plex_event_loop_run_once(fixture->loop, 0), 0);
}

static void test_stop_from_handler(void **state)
{
    Fixture *fixture = *state;
    fixture->stop_after = 3;
    start_ticker(fixture, 1 * MS);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(atomic_load(&fixture->ticks), 3);
    /* The flow is untouched by a stop: running again continues ticking. */
    fixture->stop_after = 5;
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(atomic_load(&fixture->ticks), 5);
}

static void test_stop_before_run_is_consumed(void **state)
{
    Fixture *fixture = *state;
    fixture->stop_after = 2;
    start_ticker(fixture, 1 * MS);
    plex_event_loop_stop(fixture->loop);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(atomic_load(&fixture->ticks), 0);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(atomic_load(&fixture->ticks), 2);
}

static void *stopper_thread(void *argument)
{
    Fixture *fixture = argument;
    /* Wait until the loop is demonstrably running, then stop it. */
    while (atomic_load(&fixture->ticks) < 3)
        sched_yield();
    plex_event_loop_stop(fixture->loop);
    return NULL;
}

static void test_stop_from_another_thread(void **state)
{
    Fixture *fixture = *state;
    /* A slow ticker: the loop sleeps in the kernel most of the time, so
     * the stop has to wake it. */
    start_ticker(fixture, 1 * MS);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, stopper_thread, fixture), 0);
    uint64_t start = plex_now_ns();
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    pthread_join(thread, NULL);
    assert_true(atomic_load(&fixture->ticks) >= 3);
    assert_true(plex_now_ns() - start < 5000 * MS);
}

static void *wake_sleeping_loop(void *argument)
{
    Fixture *fixture = argument;
    while (atomic_load(&fixture->ticks) < 1)
        sched_yield();
    plex_event_loop_stop(fixture->loop);
    return NULL;
}

static void test_stop_wakes_a_sleeping_loop(void **state)
{
    Fixture *fixture = *state;
    /* After the first tick the next one is an hour away: only the stop can
     * end run in time. */
    PlexItem *item = plex_item_create(fixture->plex, "tick", on_tick, NULL, on_cleanup, NULL);
    PlexTimer *soon = plex_timer_create(fixture->plex, item, 1 * MS, false);
    PlexTimer *hour = plex_timer_create(fixture->plex, item, 3600000 * MS, false);
    assert_int_equal(plex_timer_add(fixture->loop, soon), 0);
    assert_int_equal(plex_timer_add(fixture->loop, hour), 0);
    fixture->stop_after = 1000000;
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, wake_sleeping_loop, fixture), 0);
    uint64_t start = plex_now_ns();
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    pthread_join(thread, NULL);
    assert_true(plex_now_ns() - start < 5000 * MS);
}

static PlexEventLoop *signal_loop;

static void on_sigint(int signal_number)
{
    (void)signal_number;
    plex_event_loop_stop(signal_loop);
}

typedef struct SignalTarget {
    Fixture *fixture;
    pthread_t target;
} SignalTarget;

static void *signal_thread(void *argument)
{
    SignalTarget *target = argument;
    while (atomic_load(&target->fixture->ticks) < 2)
        sched_yield();
    pthread_kill(target->target, SIGINT);
    return NULL;
}

static void test_stop_from_signal_handler(void **state)
{
    Fixture *fixture = *state;
    signal_loop = fixture->loop;
    struct sigaction action = {.sa_handler = on_sigint}, previous;
    sigemptyset(&action.sa_mask);
    assert_int_equal(sigaction(SIGINT, &action, &previous), 0);
    start_ticker(fixture, 2 * MS);
    SignalTarget target = {.fixture = fixture, .target = pthread_self()};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, signal_thread, &target), 0);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    pthread_join(thread, NULL);
    sigaction(SIGINT, &previous, NULL);
    assert_true(atomic_load(&fixture->ticks) >= 2);
}

enum { POST_THREADS = 4, POSTS_PER_THREAD = 1000 };

static void on_post(PlexEventLoop *loop, void *argument)
{
    Fixture *fixture = argument;
    assert_ptr_equal(loop, fixture->loop);
    if (atomic_fetch_add(&fixture->posted, 1) + 1 == POST_THREADS * POSTS_PER_THREAD)
        plex_event_loop_stop(loop);
}

static void *poster_thread(void *argument)
{
    Fixture *fixture = argument;
    /* No cmocka asserts off the main thread: count failures instead. */
    for (int i = 0; i < POSTS_PER_THREAD; i++)
        if (plex_event_loop_post(fixture->loop, on_post, fixture) != 0)
            atomic_fetch_add(&fixture->post_failures, 1);
    return NULL;
}

static void test_post_from_threads(void **state)
{
    Fixture *fixture = *state;
    fixture->stop_after = -1;
    start_ticker(fixture, 1000 * MS); /* keeps the loop alive between posts */
    pthread_t threads[POST_THREADS];
    for (int i = 0; i < POST_THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, poster_thread, fixture), 0);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    for (int i = 0; i < POST_THREADS; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(atomic_load(&fixture->post_failures), 0);
    assert_int_equal(atomic_load(&fixture->posted), POST_THREADS * POSTS_PER_THREAD);
    assert_int_equal(plex_event_loop_post(NULL, on_post, fixture), -EINVAL);
    assert_int_equal(plex_event_loop_post(fixture->loop, NULL, fixture), -EINVAL);
}

/* A raw kernel operation through the adapter interface: a poll on a pipe
 * that never becomes readable, exactly what an adapter would start. */
static void poll_complete(PlexEventLoop *loop, PlexOp *op, const struct io_uring_cqe *cqe)
{
    PlexEvent event = {.result = cqe->res};
    plex_loop_deliver(op->item, &event, true);
    plex_loop_op_put_delivered(loop, op);
}

static void on_poll_success(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    ((Fixture *)plex_user_data(plex))->success++;
}

static void on_poll_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    ((Fixture *)plex_user_data(plex))->error++;
}

static void start_poll(Fixture *fixture, PlexItem *item, int fd)
{
    PlexOp *op = plex_loop_op_get(fixture->loop, poll_complete, item, NULL);
    assert_non_null(op);
    struct io_uring_sqe *sqe = plex_loop_sqe(fixture->loop, op);
    assert_non_null(sqe);
    io_uring_prep_poll_add(sqe, fd, POLLIN);
}

static void test_destroy_with_operations_in_kernel(void **state)
{
    Fixture *fixture = *state;
    plex_set_end_handler(fixture->plex, on_end);
    int pipe_fds[2];
    assert_int_equal(pipe(pipe_fds), 0);
    enum { ITEMS = 5, POLLS = 20 };
    for (int i = 0; i < ITEMS; i++) {
        PlexItem *item = plex_item_create(fixture->plex, "poll", on_poll_success, on_poll_error,
                                          on_cleanup, NULL);
        for (int j = 0; j < POLLS; j++)
            start_poll(fixture, item, pipe_fds[0]);
    }
    start_ticker(fixture, 3600000 * MS);
    /* Submit them, without waiting: they are now in the kernel. */
    assert_int_equal(plex_event_loop_run_once(fixture->loop, 0), 0);
    PlexEventLoopStats stats;
    assert_int_equal(plex_event_loop_stats(fixture->loop, &stats), 0);
    assert_true(stats.operations >= ITEMS * POLLS);
    assert_int_equal(stats.iterations, 1); /* one io_uring_enter for all of them */
    assert_true(stats.submissions >= ITEMS * POLLS);
    plex_event_loop_destroy(fixture->loop);
    fixture->loop = NULL;
    assert_int_equal(fixture->success, 0);
    assert_int_equal(fixture->error, 0);
    assert_int_equal(fixture->cleanup, ITEMS + 1);
    assert_int_equal(fixture->ends, 1);
    assert_int_equal(fixture->end_status, -ECANCELED);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

static void test_operation_completes_once(void **state)
{
    Fixture *fixture = *state;
    int pipe_fds[2];
    assert_int_equal(pipe(pipe_fds), 0);
    PlexItem *item = plex_item_create(fixture->plex, "poll", on_poll_success, on_poll_error,
                                      on_cleanup, NULL);
    start_poll(fixture, item, pipe_fds[0]);
    assert_int_equal(plex_item_in_flight(item), 1);
    assert_int_equal(write(pipe_fds[1], "x", 1), 1);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(fixture->success, 1);
    assert_int_equal(fixture->error, 0);
    assert_int_equal(plex_item_in_flight(item), 0);
    PlexItemTiming timing;
    assert_int_equal(plex_item_timing(item, &timing), 0);
    assert_int_equal(timing.runs, 1);
    assert_true(timing.stop_ns >= timing.start_ns);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

/* Item timing inside a loop reads the clock once per wake-up: two steps
 * whose operations complete in the same wake-up stop at the same time, and
 * a run still measures the real wait (started outside the loop, where the
 * clock is read per call). */
static void test_item_timing_one_clock_per_wakeup(void **state)
{
    Fixture *fixture = *state;
    int first_fds[2], second_fds[2];
    assert_int_equal(pipe(first_fds), 0);
    assert_int_equal(pipe(second_fds), 0);
    PlexItem *first = plex_item_create(fixture->plex, "first", on_poll_success, on_poll_error,
                                       on_cleanup, NULL);
    PlexItem *second = plex_item_create(fixture->plex, "second", on_poll_success, on_poll_error,
                                        on_cleanup, NULL);
    start_poll(fixture, first, first_fds[0]);
    start_poll(fixture, second, second_fds[0]);
    usleep(20000);
    assert_int_equal(write(first_fds[1], "x", 1), 1);
    assert_int_equal(write(second_fds[1], "x", 1), 1);
    /* Both polls are submitted on a ready pipe: both complete at once. */
    assert_int_equal(plex_event_loop_run_once(fixture->loop, -1), 2);
    assert_int_equal(fixture->success, 2);
    PlexItemTiming first_timing, second_timing;
    assert_int_equal(plex_item_timing(first, &first_timing), 0);
    assert_int_equal(plex_item_timing(second, &second_timing), 0);
    assert_int_equal(first_timing.runs, 1);
    assert_int_equal(second_timing.runs, 1);
    assert_true(first_timing.stop_ns == second_timing.stop_ns);
    assert_true(first_timing.stop_ns - first_timing.start_ns >= 20 * MS);
    assert_true(first_timing.total_ns >= 20 * MS);
    close(first_fds[0]);
    close(first_fds[1]);
    close(second_fds[0]);
    close(second_fds[1]);
}

static void test_loop_bad_arguments(void **state)
{
    (void)state;
    errno = 0;
    assert_null(plex_event_loop_create(NULL));
    assert_int_equal(errno, EINVAL);
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoopConfig config = {.buffer_count = 3};
    assert_null(plex_event_loop_create_with(registry, &config));
    assert_int_equal(errno, EINVAL);
    plex_registry_destroy(registry);
    assert_int_equal(plex_event_loop_run(NULL), -EINVAL);
    assert_int_equal(plex_event_loop_run_once(NULL, 0), -EINVAL);
    assert_int_equal(plex_event_loop_stats(NULL, NULL), -EINVAL);
    assert_null(plex_event_loop_registry(NULL));
    plex_event_loop_stop(NULL);
    plex_event_loop_destroy(NULL);
}

static void on_nested_run(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    (void)event;
    Fixture *fixture = plex_user_data(plex);
    assert_int_equal(plex_event_loop_run(fixture->loop), -EBUSY);
    assert_int_equal(plex_event_loop_run_once(fixture->loop, 0), -EBUSY);
    fixture->success++;
}

static void test_run_from_handler_is_refused(void **state)
{
    Fixture *fixture = *state;
    PlexItem *item = plex_item_create(fixture->plex, "nested", on_nested_run, NULL, NULL, NULL);
    PlexTimer *timer = plex_timer_create(fixture->plex, item, 0, false);
    assert_int_equal(plex_timer_add(fixture->loop, timer), 0);
    assert_int_equal(plex_event_loop_run(fixture->loop), 0);
    assert_int_equal(fixture->success, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_loop_returns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_from_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_before_run_is_consumed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_from_another_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_wakes_a_sleeping_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_from_signal_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_from_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_operations_in_kernel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_operation_completes_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_timing_one_clock_per_wakeup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_from_handler_is_refused, setup, teardown),
    };
    return cmocka_run_group_tests_name("loop", tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-timers: N timers with random delays in [0, 1000) ms, scheduled and
 * fired by samplex and by libuv in the same run, with the same delays.
 *
 *   build/bin/bench-timers [--count N] [--rounds R] [--engine samplex|libuv|both]
 *
 * For each engine and each variant (all fire / half cancelled before the
 * loop runs) it reports CPU time per scheduled timer (getrusage over
 * schedule + cancel + run) and how late timers fire: lateness = fire time -
 * (time of the schedule call + delay), p50 / p99 / max. Engines alternate
 * round by round, so machine drift hits both alike.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <samplex/samplex.h>
#include <uv.h>

typedef struct Run {
    size_t count;
    const uint32_t *delays_ms;
    uint64_t *intended_ns; /* per timer: schedule time + delay */
    int64_t *lateness_ns;  /* per fired timer */
    size_t fired;
    bool cancel_half;
} Run;

typedef struct Result {
    double cpu_us_per_timer;
    double p50_ms, p99_ms, max_ms;
    size_t fired;
} Result;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
           (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

static void record(Run *run, size_t index)
{
    run->lateness_ns[run->fired++] = (int64_t)(now_ns() - run->intended_ns[index]);
}

/* ---- samplex ----------------------------------------------------------- */

static void samplex_fired(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    record(plex_user_data(plex), (size_t)(uintptr_t)plex_timer_user_data(event->timer));
}

static int run_samplex(Run *run)
{
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoop *loop = registry ? plex_event_loop_create(registry) : NULL;
    Plex *plex = loop ? plex_create(registry, "bench") : NULL;
    PlexItem *item = plex ? plex_item_create(plex, "fire", samplex_fired, NULL, NULL, NULL) : NULL;
    PlexTimer **timers = calloc(run->count, sizeof(*timers));
    int rc = item && timers ? 0 : -1;
    plex_set_user_data(plex, run);
    for (size_t i = 0; rc == 0 && i < run->count; i++) {
        timers[i] = plex_timer_create(plex, item, (int64_t)run->delays_ms[i] * 1000000, false);
        if (!timers[i])
            rc = -1;
        else {
            plex_timer_set_user_data(timers[i], (void *)(uintptr_t)i);
            run->intended_ns[i] = now_ns() + (uint64_t)run->delays_ms[i] * 1000000;
            rc = plex_timer_add(loop, timers[i]);
        }
    }
    for (size_t i = 0; rc == 0 && run->cancel_half && i < run->count; i += 2)
        rc = plex_timer_cancel(timers[i]);
    if (rc == 0)
        rc = plex_event_loop_run(loop);
    free(timers);
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
    return rc;
}

/* ---- libuv ------------------------------------------------------------- */

static void uv_fired(uv_timer_t *timer)
{
    uv_loop_t *loop = timer->loop;
    Run *run = loop->data;
    record(run, (size_t)(uintptr_t)timer->data);
}

static int run_libuv(Run *run)
{
    uv_loop_t loop;
    uv_timer_t *timers = calloc(run->count, sizeof(*timers));
    if (!timers || uv_loop_init(&loop) != 0)
        return -1;
    loop.data = run;
    for (size_t i = 0; i < run->count; i++) {
        uv_timer_init(&loop, &timers[i]);
        timers[i].data = (void *)(uintptr_t)i;
        run->intended_ns[i] = now_ns() + (uint64_t)run->delays_ms[i] * 1000000;
        uv_timer_start(&timers[i], uv_fired, run->delays_ms[i], 0);
    }
    for (size_t i = 0; run->cancel_half && i < run->count; i += 2)
        uv_timer_stop(&timers[i]);
    int rc = uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(timers);
    return rc;
}

/* ---- Measuring --------------------------------------------------------- */

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static Result measure(int (*engine)(Run *), Run *run)
{
    run->fired = 0;
    double cpu_start = cpu_seconds();
    if (engine(run) != 0) {
        fprintf(stderr, "engine failed\n");
        exit(1);
    }
    double cpu = cpu_seconds() - cpu_start;
    qsort(run->lateness_ns, run->fired, sizeof(int64_t), compare_int64);
    Result result = {.cpu_us_per_timer = cpu * 1e6 / (double)run->count, .fired = run->fired};
    if (run->fired) {
        result.p50_ms = (double)run->lateness_ns[run->fired / 2] / 1e6;
        result.p99_ms = (double)run->lateness_ns[run->fired * 99 / 100] / 1e6;
        result.max_ms = (double)run->lateness_ns[run->fired - 1] / 1e6;
    }
    return result;
}

static void add(Result *sum, Result r)
{
    sum->cpu_us_per_timer += r.cpu_us_per_timer;
    sum->p50_ms += r.p50_ms;
    sum->p99_ms += r.p99_ms;
    sum->max_ms += r.max_ms;
    sum->fired = r.fired;
}

static void print_row(const char *engine, const char *variant, size_t count, Result r, int rounds)
{
    printf("| %-7s | %-12s | %9zu | %9zu | %12.3f | %9.2f | %9.2f | %9.2f |\n", engine, variant,
           count, r.fired, r.cpu_us_per_timer / rounds, r.p50_ms / rounds, r.p99_ms / rounds,
           r.max_ms / rounds);
}

static void print_ratio(const char *variant, Result s, Result u)
{
    printf("| ratio   | %-12s | samplex/libuv | CPU %.2fx | p50 %.3fx | p99 %.3fx | max %.3fx |\n",
           variant, s.cpu_us_per_timer / u.cpu_us_per_timer, s.p50_ms / u.p50_ms,
           s.p99_ms / u.p99_ms, s.max_ms / u.max_ms);
}

int main(int argc, char **argv)
{
    size_t count = 1000000;
    int rounds = 1;
    const char *only = "both";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--count") == 0)
            count = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--engine") == 0)
            only = argv[i + 1];
    }
    if (count == 0 || rounds <= 0) {
        fprintf(stderr, "usage: %s [--count N] [--rounds R]\n", argv[0]);
        return 2;
    }
    uint32_t *delays = malloc(count * sizeof(*delays));
    Run run = {.count = count, .delays_ms = delays,
               .intended_ns = malloc(count * sizeof(uint64_t)),
               .lateness_ns = malloc(count * sizeof(int64_t))};
    srand(12345);
    for (size_t i = 0; i < count; i++)
        delays[i] = (uint32_t)(rand() % 1000);
    printf("| engine  | variant      |    timers |     fired | CPU us/timer |   p50 ms  |   p99 ms  |   max ms  |\n");
    printf("|---------|--------------|-----------|-----------|--------------|-----------|-----------|-----------|\n");
    int first_variant = 0, last_variant = 1;
    if (getenv("BENCH_VARIANT"))
        first_variant = last_variant = atoi(getenv("BENCH_VARIANT"));
    for (int variant = first_variant; variant <= last_variant; variant++) {
        run.cancel_half = variant == 1;
        const char *name = variant ? "cancel half" : "all fire";
        Result samplex = {0}, libuv = {0};
        for (int round = 0; round < rounds; round++) {
            if (strcmp(only, "samplex") != 0)
                add(&libuv, measure(run_libuv, &run));
            if (strcmp(only, "libuv") != 0)
                add(&samplex, measure(run_samplex, &run));
        }
        print_row("libuv", name, count, libuv, rounds);
        print_row("samplex", name, count, samplex, rounds);
        print_ratio(name, samplex, libuv);
    }
    free(delays);
    free(run.intended_ns);
    free(run.lateness_ns);
    return 0;
}

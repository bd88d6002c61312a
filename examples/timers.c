/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex-timers: a game tick and a few one-shot timers in one flow.
 *
 *   build/bin/samplex-timers [--ticks N] [--interval-ms MS]
 *
 * A "world" flow has two steps: "tick" (recurring) and "announce"
 * (one-shot timers at 250, 500 and 750 ms). After N ticks the tick handler
 * finishes the flow; the end handler prints the flow's timing stats, and
 * every step's cleanup runs once. Ctrl-C stops the loop early.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <samplex/samplex.h>

typedef struct World {
    PlexEventLoop *loop;
    unsigned ticks_wanted;
    unsigned ticks;
} World;

static PlexEventLoop *global_loop; /* for the signal handler only */

static void on_signal(int signal_number)
{
    (void)signal_number;
    plex_event_loop_stop(global_loop);
}

static void on_tick(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    World *world = plex_user_data(plex);
    world->ticks++;
    printf("tick %u (%.3f ms late, %" PRIu64 " skipped)\n", world->ticks,
           (double)event->lateness_ns / 1e6, event->overruns);
    if (world->ticks == world->ticks_wanted)
        plex_finish(plex); /* ends the flow from inside its own handler */
}

static void on_announce(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    printf("%s\n", (const char *)plex_item_user_data(item));
}

static void on_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    printf("cleanup: step '%s'\n", plex_item_description(item));
}

static void on_end(Plex *plex, int status)
{
    PlexStats stats;
    plex_stats(plex, &stats);
    printf("flow '%s' ended (%s): %" PRIu64 " operations, average %.3f ms, ran %.3f ms\n",
           plex_description(plex), plex_strerror(status), stats.completed + stats.failed,
           (double)stats.average_ns / 1e6, (double)(stats.stop_ns - stats.start_ns) / 1e6);
}

static int parse_args(int argc, char **argv, World *world, int64_t *interval_ns)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--ticks") == 0)
            world->ticks_wanted = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--interval-ms") == 0)
            *interval_ns = strtoll(argv[i + 1], NULL, 10) * 1000000;
        else
            return -1;
    }
    return world->ticks_wanted > 0 && *interval_ns > 0 ? 0 : -1;
}

static int start_world(PlexEventLoop *loop, Plex *plex, World *world, int64_t interval_ns)
{
    static const char *messages[] = {"a bird sings", "the wind rises", "a bell tolls"};
    PlexItem *tick = plex_item_create(plex, "tick", on_tick, NULL, on_cleanup, NULL);
    PlexItem *announce = plex_item_create(plex, "announce", on_announce, NULL, on_cleanup, NULL);
    if (!tick || !announce)
        return -1;
    plex_set_user_data(plex, world);
    plex_set_end_handler(plex, on_end);
    plex_start(plex);
    PlexTimer *tick_timer = plex_timer_create(plex, tick, interval_ns, true);
    if (!tick_timer || plex_timer_add(loop, tick_timer) < 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        /* Each one-shot timer needs its own step so it can carry its message. */
        PlexItem *step = i == 0 ? announce
                                : plex_item_create(plex, "announce", on_announce, NULL, on_cleanup,
                                                   NULL);
        if (!step)
            return -1;
        plex_item_set_user_data(step, (void *)messages[i]);
        PlexTimer *timer = plex_timer_create(plex, step, (i + 1) * 250 * 1000000LL, false);
        if (!timer || plex_timer_add(loop, timer) < 0)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    World world = {.ticks_wanted = 10};
    int64_t interval_ns = 100 * 1000000LL;
    if (parse_args(argc, argv, &world, &interval_ns) < 0) {
        fprintf(stderr, "usage: %s [--ticks N] [--interval-ms MS]\n", argv[0]);
        return 2;
    }
    PlexRegistry *registry = plex_registry_create();
    PlexEventLoop *loop = registry ? plex_event_loop_create(registry) : NULL;
    if (!loop) {
        fprintf(stderr, "cannot create the loop: %s\n", strerror(errno));
        plex_registry_destroy(registry);
        return 1;
    }
    global_loop = loop;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    Plex *plex = plex_create(registry, "world");
    world.loop = loop;
    int status = 0;
    if (!plex || start_world(loop, plex, &world, interval_ns) < 0) {
        fprintf(stderr, "cannot start the world flow\n");
        status = 1;
    } else {
        int rc = plex_event_loop_run(loop);
        if (rc < 0) {
            fprintf(stderr, "loop failed: %s\n", plex_strerror(rc));
            status = 1;
        }
    }
    plex_event_loop_destroy(loop); /* ends the flow if Ctrl-C stopped us early */
    plex_registry_destroy(registry);
    return status;
}

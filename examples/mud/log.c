/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The MUD's log: one line per event on stdout, time-stamped. Flows are
 * logged when they start and when they end, with each step's timing as the
 * engine measured it (plex_stats, plex_item_timing): this is how you watch
 * samplex work.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mud.h"

void mud_log(const char *format, ...)
{
    struct timespec now;
    struct tm local;
    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &local);
    printf("%02d:%02d:%02d.%03ld ", local.tm_hour, local.tm_min, local.tm_sec,
           now.tv_nsec / 1000000);
    va_list arguments;
    va_start(arguments, format);
    vprintf(format, arguments);
    va_end(arguments);
    putchar('\n');
}

void mud_log_flow_started(Plex *plex)
{
    mud_log("flow %" PRIu64 " '%s' started", plex_id(plex), plex_description(plex));
}

/* Appends " name N x avg ms" for a step that ran; the steps that never ran
 * are left out, so a short session's line stays short. */
static size_t format_step(char *out, size_t room, const PlexItem *item)
{
    PlexItemTiming timing;
    if (plex_item_timing(item, &timing) < 0 || timing.runs == 0 || room == 0)
        return 0;
    int written = snprintf(out, room, " %s %" PRIu64 "x %.3f ms", plex_item_description(item),
                           timing.runs, (double)timing.total_ns / (double)timing.runs / 1e6);
    if (written < 0)
        return 0;
    return (size_t)written < room ? (size_t)written : room - 1;
}

void mud_log_flow_ended(Plex *plex, int status, const char *who)
{
    char steps[512] = "";
    size_t used = 0;
    for (PlexItem *item = plex_item_first(plex); item; item = plex_item_next(item))
        used += format_step(steps + used, sizeof(steps) - used, item);
    PlexStats stats;
    plex_stats(plex, &stats);
    double lived_ms =
        stats.start_ns && stats.stop_ns ? (double)(stats.stop_ns - stats.start_ns) / 1e6 : 0.0;
    mud_log("flow %" PRIu64 " '%s'%s%s ended (%s) after %.3f ms; steps (runs, average):%s",
            plex_id(plex), plex_description(plex), who && *who ? " " : "", who ? who : "",
            status == 0 ? "ok" : plex_error_name(status), lived_ms, used ? steps : " none");
}

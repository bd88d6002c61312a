/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexTimer: one-shot and recurring timers on the loop's timer heap.
 *
 * Invariants:
 * - All timers of a loop live in one heap ordered by deadline, equal
 *   deadlines in the order they were added; one kernel timeout is armed for
 *   the earliest deadline. Clock: CLOCK_MONOTONIC.
 * - A fired timer calls its item's on_success with event->timer set,
 *   event->result = 0 and event->lateness_ns. A one-shot timer is then
 *   disarmed (plex_timer_add arms it again). A recurring timer's next target
 *   is its previous target plus the interval, never "now plus interval", so
 *   a tick does not drift. When a handler overruns so that targets have
 *   passed, the missed ticks are skipped, not run in a burst: the next
 *   target is the first one still ahead, and event->overruns (and
 *   plex_timer_overruns) counts what was skipped.
 * - A cancelled timer never fires; cancel is safe from any handler of the
 *   loop, including the timer's own.
 * - Timers are owned by their flow: when it ends, its timers are cancelled
 *   and freed.
 */
#ifndef SAMPLEX_PLEX_TIMER_H
#define SAMPLEX_PLEX_TIMER_H

#include "plex.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates a timer that fires `delay_ns` (>= 0) after it is added, for
 * `item` of `plex`; recurring timers fire every `delay_ns` (> 0). Memory is
 * the flow's. Returns NULL and sets errno: EINVAL (NULL, item of another
 * flow, negative delay, recurring with 0), ENOMEM. */
PlexTimer *plex_timer_create(Plex *plex, PlexItem *item, int64_t delay_ns, bool recurring);

/* Cancels the timer if armed and frees it. Returns 0 or -EINVAL. */
int plex_timer_destroy(PlexTimer *timer);

/* Arms the timer on `loop`: its first target is now + delay. Returns 0,
 * -EINVAL, -EALREADY (already armed), -ENOMEM, or -ESTALE (its flow ended). */
int plex_timer_add(PlexEventLoop *loop, PlexTimer *timer);

/* Arms the timer on `loop` for an absolute target (plex_now_ns() clock): a
 * target in the past fires on the next iteration. Timers with equal targets
 * fire in the order they were added. Same returns as plex_timer_add. */
int plex_timer_add_at(PlexEventLoop *loop, PlexTimer *timer, uint64_t target_ns);

/* Disarms the timer; it will not fire. Returns 0, -EINVAL, or -ENOENT when
 * it was not armed. The timer may be added again. */
int plex_timer_cancel(PlexTimer *timer);

/* Changes the delay / interval for the next add (or next recurrence).
 * Returns 0 or -EINVAL. */
int plex_timer_set_delay(PlexTimer *timer, int64_t delay_ns);

bool plex_timer_is_armed(const PlexTimer *timer);
uint64_t plex_timer_overruns(const PlexTimer *timer);   /* total ticks skipped */
uint64_t plex_timer_fired(const PlexTimer *timer);      /* times fired */
PlexItem *plex_timer_item(const PlexTimer *timer);
/* A pointer of the caller's, carried by the timer (NULL initially). */
void *plex_timer_user_data(const PlexTimer *timer);
void plex_timer_set_user_data(PlexTimer *timer, void *user_data);

#ifdef __cplusplus
}
#endif
#endif

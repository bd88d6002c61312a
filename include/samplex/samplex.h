/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samplex: an io_uring engine that runs flows.
 *
 * A flow (Plex) is a chain of steps (PlexItem). Each step starts one
 * asynchronous operation (a timer, an accept, a receive, a send, a connect,
 * a Postgres connect or query) and names what happens on success, on error,
 * and at cleanup. Include this header to get all of it.
 */
#ifndef SAMPLEX_SAMPLEX_H
#define SAMPLEX_SAMPLEX_H

#include "plex_error.h"
#include "plex_arena.h"
#include "plex.h"
#include "plex_uring.h"
#include "plex_timer.h"
#include "plex_network.h"
#include "plex_postgres.h"

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Error values of samplex.
 *
 * Every fallible function returns an int: >= 0 on success (or a count), and a
 * negative errno on failure (-EINVAL, -ENOMEM, -ETIMEDOUT, ...). Handlers get
 * the same negative values in PlexEvent.result. A few conditions have no
 * errno; they get the reserved values below, all under PLEX_ERROR_BASE so
 * they can never collide with a real errno. plex_strerror() names them all.
 */
#ifndef SAMPLEX_PLEX_ERROR_H
#define SAMPLEX_PLEX_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

#define PLEX_ERROR_BASE (-20000)

/* X(name, value, message): the library's own error codes. */
#define PLEX_ERROR_MAP(X)                                                                    \
    X(PLEX_EEOF, PLEX_ERROR_BASE - 1, "end of stream: the peer closed its side")             \
    X(PLEX_EPG, PLEX_ERROR_BASE - 2, "PostgreSQL reported an error (see SQLSTATE)")          \
    X(PLEX_EPGBROKEN, PLEX_ERROR_BASE - 3, "PostgreSQL connection is broken")                \
    X(PLEX_EPIPELINE, PLEX_ERROR_BASE - 4, "query skipped: an earlier query in its pipeline " \
                                           "sync group failed")                              \
    X(PLEX_EURING, PLEX_ERROR_BASE - 5,                                                      \
      "io_uring is unavailable: check kernel.io_uring_disabled (sysctl) "                    \
      "and the container's seccomp policy")

enum {
#define PLEX_ERROR_ENUM(name, value, message) name = (value),
    PLEX_ERROR_MAP(PLEX_ERROR_ENUM)
#undef PLEX_ERROR_ENUM
};

/* Returns a static, human-readable message for any value a samplex function
 * or handler can produce: a negative errno, a PLEX_E* code, or 0 ("success").
 * Never returns NULL. */
const char *plex_strerror(int code);

/* Returns the symbolic name of a code ("ECONNREFUSED", "PLEX_EPG", ...), or
 * "UNKNOWN" when the code is not one samplex knows. Never returns NULL. */
const char *plex_error_name(int code);

#ifdef __cplusplus
}
#endif
#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers shared by the C tests. Header-only.
 *
 * - plex_test_ci(): true when CI is "true" (or "1").
 * - plex_test_pg_conninfo_or_skip(): the conninfo for the test server. It is
 *   "" (libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, which
 *   scripts/test.sh exports) when PGHOST and PGPORT are set. Without them the
 *   test skips (exit 77), except under CI=true, where it fails (exit 1).
 * - PLEX_TEST_TIMEOUT_GUARD(seconds): a hung test prints a message and exits
 *   with 1 after `seconds` (SIGALRM), instead of waiting for ctest's timeout.
 *
 * A test that restarts the server runs `$SAMPLEX_PG_CTL restart
 * $SAMPLEX_PG_DIR` (or `kill`, then `start`); see scripts/pg.sh.
 */
#ifndef SAMPLEX_TESTS_SUPPORT_H
#define SAMPLEX_TESTS_SUPPORT_H

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLEX_TEST_EXIT_SKIP 77 /* ctest's SKIP_RETURN_CODE */

static inline bool plex_test_ci(void)
{
    const char *ci = getenv("CI");
    return ci != NULL && (strcmp(ci, "true") == 0 || strcmp(ci, "1") == 0);
}

static inline const char *plex_test_pg_conninfo_or_skip(void)
{
    const char *host = getenv("PGHOST");
    const char *port = getenv("PGPORT");
    if (host != NULL && *host != '\0' && port != NULL && *port != '\0')
        return "";
    if (plex_test_ci()) {
        fprintf(stderr, "FAIL: CI=true but no PostgreSQL (PGHOST/PGPORT unset): "
                        "run the tests through scripts/test.sh\n");
        exit(1);
    }
    printf("SKIP: no PostgreSQL (run scripts/test.sh)\n");
    fflush(stdout);
    exit(PLEX_TEST_EXIT_SKIP);
}

static inline void plex_test_on_timeout(int signal_number)
{
    static const char message[] = "FAIL: test timed out (PLEX_TEST_TIMEOUT_GUARD)\n";
    (void)signal_number;
    /* Only async-signal-safe calls here. */
    ssize_t written = write(STDERR_FILENO, message, sizeof(message) - 1);
    (void)written;
    _exit(1);
}

/* Arms alarm(seconds); SIGALRM then ends the test as failed. */
static inline void plex_test_timeout_guard(unsigned seconds)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = plex_test_on_timeout;
    sigemptyset(&action.sa_mask);
    sigaction(SIGALRM, &action, NULL);
    alarm(seconds);
}

#define PLEX_TEST_TIMEOUT_GUARD(seconds) plex_test_timeout_guard((unsigned)(seconds))

#endif /* SAMPLEX_TESTS_SUPPORT_H */

/* SPDX-License-Identifier: Apache-2.0 */
/* CHECK(condition) for the fuzz harnesses: a broken invariant prints where
 * and aborts, which libFuzzer reports as a crash and keeps the input. */
#ifndef SAMPLEX_FUZZ_CHECK_H
#define SAMPLEX_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(condition)                                  \
    do {                                                  \
        if (!(condition))                                 \
            check_failed(__FILE__, __LINE__, #condition); \
    } while (0)

static inline void check_failed(const char *file, int line, const char *expression)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", file, line, expression);
    abort();
}

#endif

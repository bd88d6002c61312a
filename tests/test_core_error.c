/* SPDX-License-Identifier: Apache-2.0 */
/* plex_strerror / plex_error_name: every PLEX_E* code, common errnos, 0, and
 * codes samplex does not know. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <samplex/plex_error.h>

static void test_plex_codes(void **state)
{
    (void)state;
#define CHECK_CODE(name, value, message)               \
    assert_int_equal(name, value);                     \
    assert_true(name < PLEX_ERROR_BASE);               \
    assert_string_equal(plex_error_name(name), #name); \
    assert_string_equal(plex_strerror(name), message);
    PLEX_ERROR_MAP(CHECK_CODE)
#undef CHECK_CODE
    assert_string_equal(plex_error_name(PLEX_EURING), "PLEX_EURING");
    assert_non_null(strstr(plex_strerror(PLEX_EURING), "io_uring_disabled"));
}

static void test_errnos(void **state)
{
    (void)state;
    assert_string_equal(plex_error_name(-EINVAL), "EINVAL");
    assert_string_equal(plex_strerror(-EINVAL), "invalid argument");
    assert_string_equal(plex_error_name(-ECONNREFUSED), "ECONNREFUSED");
    assert_string_equal(plex_error_name(-ETIMEDOUT), "ETIMEDOUT");
    assert_string_equal(plex_error_name(-ETIME), "ETIME");
    assert_string_equal(plex_error_name(-ECANCELED), "ECANCELED");
    assert_string_equal(plex_error_name(-ENOMEM), "ENOMEM");
    assert_string_equal(plex_error_name(-EAGAIN), "EAGAIN");
    assert_string_equal(plex_error_name(-ENOTSUP), "ENOTSUP");
    assert_string_equal(plex_error_name(-EISCONN), "EISCONN");
    assert_string_equal(plex_strerror(-ECONNRESET), "connection reset by peer");
    assert_string_not_equal(plex_strerror(-ENOBUFS), "unknown error");
}

static void test_required_errnos_known(void **state)
{
    static const int required[] = {
        EPERM,         EINTR,       EIO,          EBADF,       EACCES,       EFAULT,    EBUSY,
        EEXIST,        EXDEV,       ENODEV,       ENFILE,      EMFILE,       ENOSPC,    EPIPE,
        ERANGE,        ENOSYS,      EALREADY,     EINPROGRESS, ECONNABORTED, ENOTCONN,  EADDRINUSE,
        EADDRNOTAVAIL, ENETUNREACH, EHOSTUNREACH, ESHUTDOWN,   ESTALE,       EOVERFLOW, EMSGSIZE,
        EPROTO,        ENOTSOCK,    ENOENT,
    };
    (void)state;
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        assert_string_not_equal(plex_error_name(-required[i]), "UNKNOWN");
        assert_string_not_equal(plex_strerror(-required[i]), "unknown error");
    }
}

static void test_success_and_unknown(void **state)
{
    (void)state;
    assert_string_equal(plex_strerror(0), "success");
    assert_string_equal(plex_error_name(0), "OK");
    assert_string_equal(plex_error_name(-4095), "UNKNOWN");
    assert_string_equal(plex_strerror(-4095), "unknown error");
    assert_string_equal(plex_error_name(PLEX_ERROR_BASE), "UNKNOWN");
    assert_string_equal(plex_error_name(PLEX_ERROR_BASE - 100), "UNKNOWN");
    assert_string_equal(plex_error_name(INT32_MIN), "UNKNOWN");
    assert_string_equal(plex_strerror(INT32_MIN), "unknown error");
    assert_string_equal(plex_error_name(EINVAL), "UNKNOWN");
    assert_string_equal(plex_strerror(42), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plex_codes),
        cmocka_unit_test(test_errnos),
        cmocka_unit_test(test_required_errnos_known),
        cmocka_unit_test(test_success_and_unknown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

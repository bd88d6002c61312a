/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Names and messages of every code samplex returns: the PLEX_E* codes of
 * PLEX_ERROR_MAP and the negative errnos the library passes through.
 *
 * A static table instead of strerror(): the strings are constant, the
 * functions are reentrant and thread-safe, and a duplicate errno value in the
 * table is a compile error (a duplicate case label).
 */
#include <errno.h>
#include <stddef.h>

#include <samplex/plex_error.h>

/* X(name, message): the errnos samplex knows. Linux aliases (EWOULDBLOCK,
 * EOPNOTSUPP, EDEADLOCK) are left out: they share a value with an entry. */
#define PLEX_ERRNO_MAP(X)                                         \
    X(EPERM, "operation not permitted")                           \
    X(ENOENT, "no such file, directory or entry")                 \
    X(ESRCH, "no such process")                                   \
    X(EINTR, "interrupted system call")                           \
    X(EIO, "input/output error")                                  \
    X(ENXIO, "no such device or address")                         \
    X(E2BIG, "argument list too long")                            \
    X(EBADF, "bad file descriptor")                               \
    X(ECHILD, "no child processes")                               \
    X(EAGAIN, "resource temporarily unavailable")                 \
    X(ENOMEM, "out of memory")                                    \
    X(EACCES, "permission denied")                                \
    X(EFAULT, "bad address")                                      \
    X(EBUSY, "resource busy")                                     \
    X(EEXIST, "already exists")                                   \
    X(EXDEV, "cross-device link or owned by another owner")       \
    X(ENODEV, "no such device")                                   \
    X(ENOTDIR, "not a directory")                                 \
    X(EISDIR, "is a directory")                                   \
    X(EINVAL, "invalid argument")                                 \
    X(ENFILE, "too many open files in system")                    \
    X(EMFILE, "too many open files")                              \
    X(EFBIG, "file too large")                                    \
    X(ENOSPC, "no space left on device")                          \
    X(ESPIPE, "illegal seek")                                     \
    X(EROFS, "read-only file system")                             \
    X(EPIPE, "broken pipe")                                       \
    X(EDOM, "numerical argument out of domain")                   \
    X(ERANGE, "result out of range")                              \
    X(EDEADLK, "resource deadlock avoided")                       \
    X(ENAMETOOLONG, "name too long")                              \
    X(ENOSYS, "function not implemented")                         \
    X(ENOTEMPTY, "directory not empty")                           \
    X(ELOOP, "too many levels of symbolic links")                 \
    X(ENOTSUP, "operation not supported")                         \
    X(EALREADY, "operation already in progress or already done")  \
    X(EINPROGRESS, "operation now in progress")                   \
    X(ECANCELED, "operation canceled")                            \
    X(ETIMEDOUT, "connection or operation timed out")             \
    X(ETIME, "timer expired")                                     \
    X(ECONNREFUSED, "connection refused")                         \
    X(ECONNRESET, "connection reset by peer")                     \
    X(ECONNABORTED, "connection aborted")                         \
    X(ENOTCONN, "socket is not connected")                        \
    X(EISCONN, "socket is already connected")                     \
    X(EADDRINUSE, "address already in use")                       \
    X(EADDRNOTAVAIL, "address not available")                     \
    X(EAFNOSUPPORT, "address family not supported")               \
    X(EPROTONOSUPPORT, "protocol not supported")                  \
    X(ENOPROTOOPT, "protocol not available")                      \
    X(ENETDOWN, "network is down")                                \
    X(ENETUNREACH, "network is unreachable")                      \
    X(ENETRESET, "connection reset by network")                   \
    X(EHOSTDOWN, "host is down")                                  \
    X(EHOSTUNREACH, "host is unreachable")                        \
    X(ENOBUFS, "no buffer space available")                       \
    X(ESHUTDOWN, "cannot send after transport endpoint shutdown") \
    X(ESTALE, "stale handle: the object has ended")               \
    X(EOVERFLOW, "value too large for defined data type")         \
    X(EMSGSIZE, "message too long")                               \
    X(EPROTO, "protocol error")                                   \
    X(EDESTADDRREQ, "destination address required")               \
    X(ENOTSOCK, "socket operation on non-socket")                 \
    X(ENOMSG, "no message of desired type")                       \
    X(ETXTBSY, "text file busy")

static const char *errno_message(int error_number)
{
    switch (error_number) {
#define PLEX_ERRNO_CASE(name, message) \
    case name:                         \
        return message;
        PLEX_ERRNO_MAP(PLEX_ERRNO_CASE)
#undef PLEX_ERRNO_CASE
    default:
        return NULL;
    }
}

static const char *errno_name(int error_number)
{
    switch (error_number) {
#define PLEX_ERRNO_CASE(name, message) \
    case name:                         \
        return #name;
        PLEX_ERRNO_MAP(PLEX_ERRNO_CASE)
#undef PLEX_ERRNO_CASE
    default:
        return NULL;
    }
}

const char *plex_strerror(int code)
{
    const char *message = NULL;

    switch (code) {
    case 0:
        return "success";
#define PLEX_ERROR_CASE(name, value, text) \
    case name:                             \
        return text;
        PLEX_ERROR_MAP(PLEX_ERROR_CASE)
#undef PLEX_ERROR_CASE
    default:
        break;
    }
    /* -INT_MIN does not exist; every errno is far smaller anyway. */
    if (code < 0 && code > PLEX_ERROR_BASE)
        message = errno_message(-code);
    return message ? message : "unknown error";
}

const char *plex_error_name(int code)
{
    const char *name = NULL;

    switch (code) {
    case 0:
        return "OK";
#define PLEX_ERROR_CASE(symbol, value, text) \
    case symbol:                             \
        return #symbol;
        PLEX_ERROR_MAP(PLEX_ERROR_CASE)
#undef PLEX_ERROR_CASE
    default:
        break;
    }
    if (code < 0 && code > PLEX_ERROR_BASE)
        name = errno_name(-code);
    return name ? name : "UNKNOWN";
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-epoll-echo: a plain epoll echo server, the peer samplex-echo is
 * measured against.
 *
 *   bench-epoll-echo --port N [--host ADDR]
 *
 * One thread, level-triggered epoll, non-blocking sockets, TCP_NODELAY.
 * A readable connection gets one recv into a buffer shared by all (level
 * triggering calls again if more is there, so no recv ends in EAGAIN), and
 * the bytes are sent back at once. What the socket does not take goes to
 * the connection's pending buffer; while anything is pending the connection
 * waits for EPOLLOUT instead of EPOLLIN, so output stays in order and a
 * peer that does not read cannot grow the buffer past one read's worth.
 * An idle connection holds no buffer. SIGINT or SIGTERM (signalfd) closes
 * everything and exits 0.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BYTES (64 * 1024)
#define EVENTS_PER_WAIT 512

typedef struct Conn {
    int fd;
    char *pending; /* bytes the socket has not taken yet, or NULL */
    size_t pending_offset, pending_length;
} Conn;

typedef struct Server {
    int epoll_fd, listen_fd, signal_fd;
    Conn **conns; /* by descriptor */
    size_t conns_capacity;
    char buffer[READ_BYTES];
} Server;

static void conn_close(Server *server, Conn *conn)
{
    server->conns[conn->fd] = NULL;
    close(conn->fd); /* also leaves the epoll set */
    free(conn->pending);
    free(conn);
}

static void conn_watch(Server *server, Conn *conn, uint32_t events)
{
    struct epoll_event event = {.events = events, .data.ptr = conn};
    epoll_ctl(server->epoll_fd, EPOLL_CTL_MOD, conn->fd, &event);
}

/* Sends as much of 'data' as the socket takes; returns the count, or -1 if
 * the connection is broken. */
static ssize_t send_some(int fd, const char *data, size_t length)
{
    size_t sent = 0;
    while (sent < length) {
        ssize_t n = send(fd, data + sent, length - sent, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? (ssize_t)sent : -1;
    }
    return (ssize_t)sent;
}

static void conn_readable(Server *server, Conn *conn)
{
    ssize_t n = recv(conn->fd, server->buffer, READ_BYTES, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(server, conn);
        return;
    }
    ssize_t sent = send_some(conn->fd, server->buffer, (size_t)n);
    if (sent < 0) {
        conn_close(server, conn);
        return;
    }
    if (sent == n)
        return;
    /* Keep the rest and stop reading until it has gone. */
    conn->pending_length = (size_t)(n - sent);
    conn->pending_offset = 0;
    conn->pending = malloc(conn->pending_length);
    if (!conn->pending) {
        conn_close(server, conn);
        return;
    }
    memcpy(conn->pending, server->buffer + sent, conn->pending_length);
    conn_watch(server, conn, EPOLLOUT);
}

static void conn_writable(Server *server, Conn *conn)
{
    size_t left = conn->pending_length - conn->pending_offset;
    ssize_t sent = send_some(conn->fd, conn->pending + conn->pending_offset, left);
    if (sent < 0) {
        conn_close(server, conn);
        return;
    }
    conn->pending_offset += (size_t)sent;
    if (conn->pending_offset < conn->pending_length)
        return;
    free(conn->pending);
    conn->pending = NULL;
    conn_watch(server, conn, EPOLLIN);
}

static void accept_all(Server *server)
{
    for (;;) {
        int fd = accept4(server->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or out of descriptors: level triggering retries */
        Conn *conn = (size_t)fd < server->conns_capacity ? calloc(1, sizeof(*conn)) : NULL;
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = conn};
        if (!conn || epoll_ctl(server->epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0) {
            free(conn);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn->fd = fd;
        server->conns[fd] = conn;
    }
}

/* Serves until a stop signal arrives. */
static void serve(Server *server)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    for (;;) {
        int count = epoll_wait(server->epoll_fd, events, EVENTS_PER_WAIT, -1);
        for (int i = 0; i < count; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &server->signal_fd)
                return;
            if (tag == &server->listen_fd) {
                accept_all(server);
                continue;
            }
            Conn *conn = tag;
            if (conn->pending)
                conn_writable(server, conn);
            else
                conn_readable(server, conn);
        }
    }
}

static int listen_on(const char *host, int port)
{
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 || listen(fd, 4096) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int local_port(int fd)
{
    struct sockaddr_in address;
    socklen_t length = sizeof(address);
    getsockname(fd, (struct sockaddr *)&address, &length);
    return ntohs(address.sin_port);
}

static int watch(Server *server, int fd, void *tag)
{
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = tag};
    return epoll_ctl(server->epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

/* Signals, the listening socket and the descriptor table; -1 on failure. */
static int server_open(Server *server, const char *host, int port)
{
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
    server->conns_capacity = (size_t)limit.rlim_cur;
    server->conns = calloc(server->conns_capacity, sizeof(Conn *));

    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigprocmask(SIG_BLOCK, &signals, NULL);
    server->signal_fd = signalfd(-1, &signals, SFD_CLOEXEC);
    server->listen_fd = listen_on(host, port);
    server->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (!server->conns || server->signal_fd < 0 || server->listen_fd < 0 || server->epoll_fd < 0)
        return -1;
    if (watch(server, server->signal_fd, &server->signal_fd) < 0 ||
        watch(server, server->listen_fd, &server->listen_fd) < 0)
        return -1;
    return 0;
}

static void server_close(Server *server)
{
    for (size_t fd = 0; server->conns && fd < server->conns_capacity; fd++)
        if (server->conns[fd])
            conn_close(server, server->conns[fd]);
    free(server->conns);
    if (server->listen_fd >= 0)
        close(server->listen_fd);
    if (server->signal_fd >= 0)
        close(server->signal_fd);
    if (server->epoll_fd >= 0)
        close(server->epoll_fd);
    free(server);
}

int main(int argc, char **argv)
{
    const char *host = "0.0.0.0";
    int port = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--host") == 0)
            host = argv[i + 1];
    }
    if (argc % 2 == 0 || port < 0 || port > 65535) {
        fprintf(stderr, "usage: %s --port N [--host ADDR]\n", argv[0]);
        return 2;
    }
    Server *server = calloc(1, sizeof(*server));
    if (!server)
        return 1;
    server->epoll_fd = server->listen_fd = server->signal_fd = -1;
    if (server_open(server, host, port) < 0) {
        fprintf(stderr, "cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        server_close(server);
        return 1;
    }
    printf("listening on %s:%d\n", host, local_port(server->listen_fd));
    fflush(stdout);
    serve(server);
    server_close(server);
    return 0;
}

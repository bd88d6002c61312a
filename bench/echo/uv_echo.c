/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-uv-echo: a libuv echo server, the peer samplex-echo is measured
 * against, written the way a competent libuv user writes one.
 *
 *   bench-uv-echo --port N [--host ADDR]
 *
 * One loop. TCP_NODELAY on every connection. alloc_cb hands out one buffer
 * owned by the loop (the bytes are consumed before read_cb returns, so one
 * buffer serves every connection and an idle connection holds none).
 * read_cb tries uv_try_write first - the common case, one send(2), nothing
 * allocated - and queues only the remainder with uv_write, copied, since
 * the shared buffer is reused at the next read. While more than 64 KiB is
 * queued the connection stops reading until its writes drain. SIGINT or
 * SIGTERM closes every handle and exits 0.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <uv.h>

#define READ_BYTES (64 * 1024)
#define PAUSE_ABOVE (64 * 1024) /* queued bytes that pause reading */

typedef struct Server {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t sigint, sigterm;
    char buffer[READ_BYTES]; /* every connection reads here */
} Server;

typedef struct Client {
    uv_tcp_t handle;
    bool paused; /* reading stopped until the queued writes drain */
} Client;

typedef struct WriteRequest {
    uv_write_t request;
    char bytes[]; /* the copy of what uv_try_write left */
} WriteRequest;

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *handle, size_t suggested_size, uv_buf_t *buf)
{
    (void)suggested_size;
    Server *server = handle->loop->data;
    *buf = uv_buf_init(server->buffer, READ_BYTES);
}

static void on_client_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void on_written(uv_write_t *request, int status)
{
    uv_stream_t *stream = request->handle;
    Client *client = stream->data;
    free(request);
    if (status < 0) {
        if (!uv_is_closing((uv_handle_t *)stream))
            uv_close((uv_handle_t *)stream, on_client_closed);
        return;
    }
    if (client->paused && stream->write_queue_size == 0 &&
        uv_read_start(stream, on_alloc, on_read) == 0)
        client->paused = false;
}

/* Queues a copy of what the socket did not take. */
static int write_rest(uv_stream_t *stream, const char *bytes, size_t length)
{
    WriteRequest *write = malloc(sizeof(*write) + length);
    if (!write)
        return UV_ENOMEM;
    memcpy(write->bytes, bytes, length);
    uv_buf_t buf = uv_buf_init(write->bytes, (unsigned int)length);
    int rc = uv_write(&write->request, stream, &buf, 1, on_written);
    if (rc < 0)
        free(write);
    return rc;
}

static void echo(uv_stream_t *stream, const char *bytes, size_t length)
{
    Client *client = stream->data;
    uv_buf_t buf = uv_buf_init((char *)bytes, (unsigned int)length);
    int sent = uv_try_write(stream, &buf, 1);
    if (sent == UV_EAGAIN)
        sent = 0; /* a write is queued already, or the socket is full */
    if (sent < 0 ||
        ((size_t)sent < length && write_rest(stream, bytes + sent, length - (size_t)sent) < 0)) {
        uv_close((uv_handle_t *)stream, on_client_closed);
        return;
    }
    if (stream->write_queue_size > PAUSE_ABOVE) {
        uv_read_stop(stream);
        client->paused = true;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    if (nread > 0)
        echo(stream, buf->base, (size_t)nread);
    else if (nread < 0 && !uv_is_closing((uv_handle_t *)stream))
        uv_close((uv_handle_t *)stream, on_client_closed); /* UV_EOF or an error */
}

static void on_connection(uv_stream_t *listener, int status)
{
    if (status < 0)
        return;
    Client *client = calloc(1, sizeof(*client));
    if (!client)
        return;
    uv_tcp_init(listener->loop, &client->handle);
    client->handle.data = client;
    if (uv_accept(listener, (uv_stream_t *)&client->handle) < 0) {
        uv_close((uv_handle_t *)&client->handle, on_client_closed);
        return;
    }
    uv_tcp_nodelay(&client->handle, 1);
    if (uv_read_start((uv_stream_t *)&client->handle, on_alloc, on_read) < 0)
        uv_close((uv_handle_t *)&client->handle, on_client_closed);
}

static void close_handle(uv_handle_t *handle, void *argument)
{
    (void)argument;
    if (uv_is_closing(handle))
        return;
    /* Clients own their memory; the server's handles live in Server. */
    uv_close(handle, handle->type == UV_TCP && handle->data ? on_client_closed : NULL);
}

static void on_signal(uv_signal_t *signal, int signal_number)
{
    (void)signal_number;
    uv_walk(signal->loop, close_handle, NULL);
}

static int server_start(Server *server, const char *host, int port)
{
    struct sockaddr_in address;
    int rc = uv_loop_init(&server->loop);
    if (rc < 0)
        return rc;
    server->loop.data = server;
    uv_tcp_init(&server->loop, &server->listener);
    uv_signal_init(&server->loop, &server->sigint);
    uv_signal_init(&server->loop, &server->sigterm);
    if ((rc = uv_ip4_addr(host, port, &address)) < 0 ||
        (rc = uv_tcp_bind(&server->listener, (const struct sockaddr *)&address, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&server->listener, 4096, on_connection)) < 0 ||
        (rc = uv_signal_start(&server->sigint, on_signal, SIGINT)) < 0 ||
        (rc = uv_signal_start(&server->sigterm, on_signal, SIGTERM)) < 0)
        return rc;
    return 0;
}

static int local_port(const uv_tcp_t *listener)
{
    struct sockaddr_storage address;
    int length = sizeof(address);
    uv_tcp_getsockname(listener, (struct sockaddr *)&address, &length);
    return ntohs(((struct sockaddr_in *)&address)->sin_port);
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
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    static Server server;
    int rc = server_start(&server, host, port);
    if (rc < 0) {
        fprintf(stderr, "cannot listen on %s:%d: %s\n", host, port, uv_strerror(rc));
        return 1;
    }
    printf("listening on %s:%d\n", host, local_port(&server.listener));
    fflush(stdout);
    uv_run(&server.loop, UV_RUN_DEFAULT);
    uv_run(&server.loop, UV_RUN_DEFAULT); /* the close callbacks */
    return uv_loop_close(&server.loop) == 0 ? 0 : 1;
}

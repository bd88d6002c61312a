/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-loadgen: a closed-loop load generator for the echo servers.
 *
 *   bench-loadgen --port N [--host 127.0.0.1] [--connections N] [--size BYTES]
 *                 [--warmup S] [--duration S] [--server-pid PID] [--idle]
 *
 * Load (the default): N connections each send a message, wait for its whole
 * echo, check it byte for byte, record the round trip, and send the next.
 * After --warmup seconds a window of --duration seconds is measured: round
 * trips completed inside it, their latency, and - with --server-pid - the
 * server's utime+stime (/proc/PID/stat) read by this process at the exact
 * start and end of the window, so CPU and message counts cover the same
 * interval. One line "result key=value ..." goes to stdout.
 *
 * --idle: server memory per connection. One connection makes one round trip
 * and closes (so the server's one-time set-up is paid), the server's VmRSS
 * is read; then N connections are opened and the RSS is read once steady
 * (connected, never used); then each makes one round trip (so every one is
 * surely accepted, and has written once) and stays idle, and the RSS is read
 * again once steady. Prints "idle key=value ...".
 *
 * One thread, level-triggered epoll; a message costs the generator one
 * send and one recv. Message content depends on connection and sequence
 * number, so a misrouted, lost or duplicated byte shows up as a mismatch.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_BYTES (64 * 1024)
#define MAX_SIZE (32 * 1024)
#define EVENTS_PER_WAIT 1024

typedef struct Options {
    const char *host;
    int port;
    int connections;
    int size;
    double warmup_s;
    double duration_s;
    int server_pid; /* 0: no server CPU or memory figures */
    bool idle;
} Options;

typedef struct Conn {
    int fd;
    uint32_t id;
    uint32_t sequence;   /* of the message in flight */
    uint32_t sent;       /* bytes of it on the socket */
    uint32_t received;   /* bytes of its echo read */
    bool want_out;       /* EPOLLOUT armed: the message is partly sent */
    bool done;           /* idle mode: its one round trip is over */
    uint64_t sent_at_ns; /* when its first byte was sent */
    uint64_t in_window;  /* round trips completed in the measured window */
    unsigned char *tx;   /* the message in flight */
    unsigned char *rx;   /* its echo so far */
} Conn;

typedef struct Gen {
    Options options;
    int epoll_fd;
    Conn *conns;
    int connected;
    int connect_failures;
    unsigned char pattern[PATTERN_BYTES];
    bool measuring;
    uint64_t window_messages;
    uint64_t mismatches;
    uint64_t errors;      /* connections that broke (EOF, reset) */
    uint64_t round_trips; /* all, warm-up included */
    uint32_t *latency_ns; /* of the round trips in the window */
    size_t latency_count, latency_cap;
    int idle_pending; /* idle mode: round trips still to complete */
} Gen;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double process_cpu_s(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
           (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

/* ---- The server, seen through /proc ----------------------------------- */

/* utime+stime of every thread of 'pid', in microseconds; -1 if unreadable. */
static double server_cpu_us(int pid)
{
    char path[64], text[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return -1;
    size_t length = fread(text, 1, sizeof(text) - 1, file);
    fclose(file);
    text[length] = '\0';
    /* The command name may hold spaces: fields are counted after its ')'. */
    char *cursor = strrchr(text, ')');
    if (!cursor)
        return -1;
    unsigned long long utime = 0, stime = 0;
    if (sscanf(cursor + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    return (double)(utime + stime) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

/* The scheduler's run time of every thread of 'pid' (ns precision), as a
 * cross-check of the tick-granular /proc/PID/stat; -1 if unreadable. */
static double server_runtime_us(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *tasks = opendir(path);
    if (!tasks)
        return -1;
    double total_ns = 0;
    struct dirent *entry;
    while ((entry = readdir(tasks))) {
        if (entry->d_name[0] == '.')
            continue;
        char file_path[600];
        snprintf(file_path, sizeof(file_path), "%s/%s/schedstat", path, entry->d_name);
        FILE *file = fopen(file_path, "r");
        unsigned long long runtime_ns = 0;
        if (file && fscanf(file, "%llu", &runtime_ns) == 1)
            total_ns += (double)runtime_ns;
        if (file)
            fclose(file);
    }
    closedir(tasks);
    return total_ns / 1e3;
}

/* Busy time of CPUs 0 and 1 (the server's and ours), all processes, in
 * microseconds: what is left after the server and us is interference. */
static double machine_busy_us(void)
{
    FILE *file = fopen("/proc/stat", "r");
    if (!file)
        return -1;
    char line[256];
    double busy = 0;
    while (fgets(line, sizeof(line), file)) {
        unsigned long long user, nice, system, idle, iowait, irq, softirq, steal;
        int cpu;
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &user, &nice,
                   &system, &idle, &iowait, &irq, &softirq, &steal) == 9 &&
            (cpu == 0 || cpu == 1))
            busy += (double)(user + nice + system + irq + softirq + steal);
    }
    fclose(file);
    return busy * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS of 'pid' in KiB; -1 if unreadable. */
static long server_rss_kib(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return -1;
    long rss = -1;
    while (fgets(line, sizeof(line), file))
        if (sscanf(line, "VmRSS: %ld", &rss) == 1)
            break;
    fclose(file);
    return rss;
}

/* ---- Messages ----------------------------------------------------------- */

/* Fills 'conn->tx' with message 'conn->sequence' of connection 'conn->id':
 * a slice of the random pattern chosen by both, led by both numbers. */
static void message_build(const Gen *gen, Conn *conn)
{
    size_t size = (size_t)gen->options.size;
    size_t span = PATTERN_BYTES - size;
    size_t offset = ((size_t)conn->id * 2654435761u + (size_t)conn->sequence * 40503u) % span;
    memcpy(conn->tx, gen->pattern + offset, size);
    uint32_t header[2] = {conn->id, conn->sequence};
    memcpy(conn->tx, header, size < sizeof(header) ? size : sizeof(header));
}

static void pattern_fill(unsigned char *pattern)
{
    uint64_t state = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < PATTERN_BYTES; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pattern[i] = (unsigned char)state;
    }
}

static void conn_watch(Gen *gen, Conn *conn, bool want_out)
{
    struct epoll_event event = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = conn};
    epoll_ctl(gen->epoll_fd, EPOLL_CTL_MOD, conn->fd, &event);
    conn->want_out = want_out;
}

static void conn_fail(Gen *gen, Conn *conn)
{
    gen->errors++;
    epoll_ctl(gen->epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
    close(conn->fd);
    conn->fd = -1;
    if (gen->options.idle && !conn->done) {
        conn->done = true;
        gen->idle_pending--;
    }
}

/* Sends what is left of the message in flight; arms EPOLLOUT while a part
 * waits for room. */
static void conn_send(Gen *gen, Conn *conn)
{
    size_t size = (size_t)gen->options.size;
    while (conn->sent < size) {
        ssize_t n = send(conn->fd, conn->tx + conn->sent, size - conn->sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (!conn->want_out)
                conn_watch(gen, conn, true);
            return;
        }
        if (n < 0) {
            conn_fail(gen, conn);
            return;
        }
        conn->sent += (uint32_t)n;
    }
    if (conn->want_out)
        conn_watch(gen, conn, false);
}

static void conn_start_message(Gen *gen, Conn *conn)
{
    conn->sequence++;
    conn->sent = 0;
    conn->received = 0;
    message_build(gen, conn);
    conn->sent_at_ns = now_ns();
    conn_send(gen, conn);
}

static void latency_record(Gen *gen, uint64_t latency_ns)
{
    if (gen->latency_count == gen->latency_cap) {
        size_t cap = gen->latency_cap ? gen->latency_cap * 2 : 1 << 20;
        uint32_t *grown = realloc(gen->latency_ns, cap * sizeof(*grown));
        if (!grown)
            return;
        gen->latency_ns = grown;
        gen->latency_cap = cap;
    }
    gen->latency_ns[gen->latency_count++] =
        latency_ns > UINT32_MAX ? UINT32_MAX : (uint32_t)latency_ns;
}

/* The whole echo of the message in flight is in: check it, count it, send
 * the next (in idle mode: stop). */
static void conn_complete(Gen *gen, Conn *conn, uint64_t now)
{
    if (memcmp(conn->rx, conn->tx, (size_t)gen->options.size) != 0)
        gen->mismatches++;
    gen->round_trips++;
    if (gen->measuring) {
        gen->window_messages++;
        conn->in_window++;
        latency_record(gen, now - conn->sent_at_ns);
    }
    if (gen->options.idle) {
        conn->done = true;
        gen->idle_pending--;
        return;
    }
    conn_start_message(gen, conn);
}

static void conn_receive(Gen *gen, Conn *conn)
{
    size_t size = (size_t)gen->options.size;
    ssize_t n = recv(conn->fd, conn->rx + conn->received, size - conn->received, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_fail(gen, conn); /* end of stream or reset: the server dropped us */
        return;
    }
    conn->received += (uint32_t)n;
    if (conn->received == size && conn->sent == size)
        conn_complete(gen, conn, now_ns());
}

static void handle_event(Gen *gen, const struct epoll_event *event)
{
    Conn *conn = event->data.ptr;
    if ((event->events & EPOLLOUT) && conn->fd >= 0)
        conn_send(gen, conn);
    if ((event->events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && conn->fd >= 0)
        conn_receive(gen, conn);
}

/* Runs the event loop until 'deadline_ns' (or, in idle mode, until every
 * round trip is over). */
static void pump(Gen *gen, uint64_t deadline_ns)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline_ns || (gen->options.idle && gen->idle_pending == 0))
            return;
        int timeout_ms = (int)((deadline_ns - now) / 1000000u) + 1;
        if (timeout_ms > 100)
            timeout_ms = 100;
        int count = epoll_wait(gen->epoll_fd, events, EVENTS_PER_WAIT, timeout_ms);
        for (int i = 0; i < count; i++)
            handle_event(gen, &events[i]);
    }
}

/* ---- Connections ---------------------------------------------------------- */

static void raise_fd_limit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

/* A blocking connect (5 s at most), then non-blocking from there on. */
static int connect_one(const struct sockaddr_in *address)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval timeout = {.tv_sec = 5};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)address, sizeof(*address)) < 0 ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Opens 'count' connections starting at conns[first]; returns how many. */
static int connect_all(Gen *gen, int first, int count)
{
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)gen->options.port)};
    inet_pton(AF_INET, gen->options.host, &address.sin_addr);
    int opened = 0;
    for (int i = first; i < first + count; i++) {
        Conn *conn = &gen->conns[i];
        conn->fd = connect_one(&address);
        if (conn->fd < 0) {
            gen->connect_failures++;
            continue;
        }
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = conn};
        epoll_ctl(gen->epoll_fd, EPOLL_CTL_ADD, conn->fd, &event);
        opened++;
    }
    gen->connected += opened;
    return opened;
}

/* Closes with a reset: 10,000 connections closed the polite way would leave
 * 10,000 sockets in TIME_WAIT for a minute, on a machine others share. */
static void conns_close(Gen *gen, int first, int count)
{
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    for (int i = first; i < first + count; i++)
        if (gen->conns[i].fd >= 0) {
            setsockopt(gen->conns[i].fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
            close(gen->conns[i].fd);
            gen->conns[i].fd = -1;
        }
}

/* One round trip on each open connection in [first, first + count). */
static void round_trip_each(Gen *gen, int first, int count, double timeout_s)
{
    gen->idle_pending = 0;
    for (int i = first; i < first + count; i++) {
        Conn *conn = &gen->conns[i];
        conn->done = conn->fd < 0;
        if (conn->fd >= 0) {
            gen->idle_pending++;
            conn_start_message(gen, conn);
        }
    }
    pump(gen, now_ns() + (uint64_t)(timeout_s * 1e9));
}

/* ---- Reports ---------------------------------------------------------------- */

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(const Gen *gen, double fraction)
{
    if (gen->latency_count == 0)
        return 0;
    size_t index = (size_t)(fraction * (double)(gen->latency_count - 1) + 0.5);
    return (double)gen->latency_ns[index] / 1e3;
}

/* Connections with at least one round trip in the window, and the fewest
 * round trips any open connection made there. */
static void served_counts(const Gen *gen, int *served, uint64_t *fewest)
{
    *served = 0;
    *fewest = UINT64_MAX;
    for (int i = 0; i < gen->options.connections; i++) {
        *served += gen->conns[i].in_window > 0;
        if (gen->conns[i].in_window < *fewest)
            *fewest = gen->conns[i].in_window;
    }
}

/* ---- The two modes ----------------------------------------------------------- */

static int run_load(Gen *gen)
{
    const Options *o = &gen->options;
    connect_all(gen, 0, o->connections);
    uint64_t start = now_ns();
    for (int i = 0; i < o->connections; i++)
        if (gen->conns[i].fd >= 0)
            conn_start_message(gen, &gen->conns[i]);
    pump(gen, start + (uint64_t)(o->warmup_s * 1e9));

    /* The window: /proc is read right at its edges, by us. */
    double cpu_start = o->server_pid ? server_cpu_us(o->server_pid) : 0;
    double runtime_start = o->server_pid ? server_runtime_us(o->server_pid) : 0;
    double gen_cpu_start = process_cpu_s();
    double busy_start = machine_busy_us();
    uint64_t window_start = now_ns();
    gen->measuring = true;
    pump(gen, window_start + (uint64_t)(o->duration_s * 1e9));
    gen->measuring = false;
    uint64_t window_end = now_ns();
    double cpu_end = o->server_pid ? server_cpu_us(o->server_pid) : 0;
    double runtime_end = o->server_pid ? server_runtime_us(o->server_pid) : 0;
    double gen_cpu = process_cpu_s() - gen_cpu_start;
    double busy = machine_busy_us() - busy_start;

    double seconds = (double)(window_end - window_start) / 1e9;
    double messages = (double)gen->window_messages;
    int served;
    uint64_t fewest;
    served_counts(gen, &served, &fewest);
    qsort(gen->latency_ns, gen->latency_count, sizeof(uint32_t), compare_u32);
    printf("result connections=%d size=%d connected=%d connect_failures=%d served=%d "
           "fewest_per_conn=%" PRIu64 " messages=%" PRIu64 " seconds=%.3f msgs_per_s=%.0f "
           "p50_us=%.1f p99_us=%.1f mismatches=%" PRIu64 " errors=%" PRIu64
           " server_cpu_us=%.0f server_cpu_us_per_msg=%.3f server_runtime_us_per_msg=%.3f "
           "server_cpu_pct=%.1f gen_cpu_pct=%.1f other_cpu_pct=%.1f\n",
           o->connections, o->size, gen->connected, gen->connect_failures, served,
           fewest == UINT64_MAX ? 0 : fewest, gen->window_messages, seconds, messages / seconds,
           percentile_us(gen, 0.50), percentile_us(gen, 0.99), gen->mismatches, gen->errors,
           cpu_end - cpu_start, messages > 0 ? (cpu_end - cpu_start) / messages : 0,
           messages > 0 ? (runtime_end - runtime_start) / messages : 0,
           100.0 * (cpu_end - cpu_start) / 1e6 / seconds, 100.0 * gen_cpu / seconds,
           100.0 * ((busy - (cpu_end - cpu_start)) / 1e6 - gen_cpu) / seconds);
    conns_close(gen, 0, o->connections);
    return gen->mismatches == 0 && gen->errors == 0 && served == o->connections ? 0 : 1;
}

/* Reads the server's RSS once it has not moved for three reads 100 ms apart
 * (2 s at most). */
static long steady_rss_kib(int pid)
{
    long last = server_rss_kib(pid);
    int same = 0;
    for (int i = 0; i < 20 && same < 3; i++) {
        struct timespec pause = {.tv_nsec = 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        long rss = server_rss_kib(pid);
        same = rss == last ? same + 1 : 0;
        last = rss;
    }
    return last;
}

static int run_idle(Gen *gen)
{
    const Options *o = &gen->options;
    int n = o->connections;
    /* conns[n] is the warm-up connection. */
    connect_all(gen, n, 1);
    round_trip_each(gen, n, 1, 5);
    conns_close(gen, n, 1);
    gen->connected = 0;
    long rss_before = steady_rss_kib(o->server_pid);

    connect_all(gen, 0, n);
    long rss_connected = steady_rss_kib(o->server_pid);
    round_trip_each(gen, 0, n, 30);
    int served = 0;
    for (int i = 0; i < n; i++)
        served += gen->conns[i].fd >= 0 && gen->conns[i].done;
    long rss_after = steady_rss_kib(o->server_pid);
    double per_conn = (double)(rss_after - rss_before) * 1024.0 / n;
    double per_conn_unused = (double)(rss_connected - rss_before) * 1024.0 / n;
    printf("idle connections=%d size=%d connected=%d served=%d rss_before_kib=%ld "
           "rss_connected_kib=%ld rss_after_kib=%ld bytes_per_conn_unused=%.0f "
           "bytes_per_conn=%.0f mismatches=%" PRIu64 " errors=%" PRIu64 "\n",
           n, o->size, gen->connected, served, rss_before, rss_connected, rss_after,
           per_conn_unused, per_conn, gen->mismatches, gen->errors);
    conns_close(gen, 0, n);
    return gen->mismatches == 0 && served == n ? 0 : 1;
}

/* ---- Set-up ------------------------------------------------------------------- */

static int parse_args(int argc, char **argv, Options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        if (strcmp(name, "--idle") == 0) {
            o->idle = true;
            continue;
        }
        if (i + 1 >= argc)
            return -1;
        const char *value = argv[++i];
        if (strcmp(name, "--host") == 0)
            o->host = value;
        else if (strcmp(name, "--port") == 0)
            o->port = atoi(value);
        else if (strcmp(name, "--connections") == 0)
            o->connections = atoi(value);
        else if (strcmp(name, "--size") == 0)
            o->size = atoi(value);
        else if (strcmp(name, "--warmup") == 0)
            o->warmup_s = atof(value);
        else if (strcmp(name, "--duration") == 0)
            o->duration_s = atof(value);
        else if (strcmp(name, "--server-pid") == 0)
            o->server_pid = atoi(value);
        else
            return -1;
    }
    bool size_ok = o->size >= 1 && o->size <= MAX_SIZE;
    return o->port > 0 && o->port < 65536 && o->connections >= 1 && size_ok &&
                   (!o->idle || o->server_pid > 0)
               ? 0
               : -1;
}

static Gen *gen_create(const Options *options)
{
    Gen *gen = calloc(1, sizeof(*gen));
    if (!gen)
        return NULL;
    gen->options = *options;
    pattern_fill(gen->pattern);
    size_t count = (size_t)options->connections + 1; /* + the idle warm-up one */
    gen->conns = calloc(count, sizeof(Conn));
    unsigned char *buffers = malloc(count * 2 * (size_t)options->size);
    gen->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (!gen->conns || !buffers || gen->epoll_fd < 0) {
        free(buffers);
        free(gen->conns);
        free(gen);
        return NULL;
    }
    for (size_t i = 0; i < count; i++) {
        Conn *conn = &gen->conns[i];
        conn->fd = -1;
        conn->id = (uint32_t)i;
        conn->tx = buffers + i * 2 * (size_t)options->size;
        conn->rx = conn->tx + options->size;
    }
    return gen;
}

static void gen_destroy(Gen *gen)
{
    close(gen->epoll_fd);
    free(gen->conns[0].tx);
    free(gen->conns);
    free(gen->latency_ns);
    free(gen);
}

int main(int argc, char **argv)
{
    Options options = {
        .host = "127.0.0.1", .connections = 50, .size = 64, .warmup_s = 1, .duration_s = 3};
    if (parse_args(argc, argv, &options) < 0) {
        fprintf(stderr,
                "usage: %s --port N [--host ADDR] [--connections N] [--size BYTES]\n"
                "       [--warmup S] [--duration S] [--server-pid PID] [--idle]\n",
                argv[0]);
        return 2;
    }
    raise_fd_limit();
    Gen *gen = gen_create(&options);
    if (!gen) {
        perror("bench-loadgen");
        return 1;
    }
    int status = options.idle ? run_idle(gen) : run_load(gen);
    fflush(stdout);
    gen_destroy(gen);
    return status;
}

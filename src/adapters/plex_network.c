/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The network adapter's per-loop state: a slab of connection structs and a
 * free list of output chunks, plus address and socket helpers.
 *
 * Invariants:
 * - The state hangs off loop->modules[PLEX_MODULE_NETWORK], created on first
 *   use and freed by its fini after every op has come back from the kernel,
 *   when every connection of the loop has been freed (their flows are bound
 *   to the loop, so its destroy ended them).
 * - Connection slabs are never returned to the system before fini: a freed
 *   connection goes on the free list for the next accept (no allocation in
 *   steady state).
 * - flush_pending lists the connections whose send waits for the flush hook,
 *   which runs once per iteration right before the loop enters the kernel;
 *   starved_head lists the reads parked after -ENOBUFS (network_internal.h),
 *   re-armed by the same hook.
 * - At most NET_CHUNK_KEEP free chunks are kept; past that a chunk goes back
 *   to the allocator, so one burst does not pin its memory for good.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

#include "adapters/network_internal.h"

#define NET_SLAB_SLOTS 64u
#define NET_CHUNK_KEEP 256u

typedef union ConnSlot {
    PlexConnection conn;
    union ConnSlot *next_free;
} ConnSlot;

typedef struct ConnSlab {
    struct ConnSlab *next;
    ConnSlot slots[NET_SLAB_SLOTS];
} ConnSlab;

typedef struct NetModule {
    PlexLink flush_pending; /* PlexConnection.flush_link */
    PlexOp *starved_head;   /* parked reads (op->storage.parked), oldest first */
    PlexOp *starved_tail;
    NetChunk *free_chunks;
    unsigned free_chunk_count;
    ConnSlab *slabs;
    ConnSlot *free_slots;
} NetModule;

static void net_module_fini(PlexEventLoop *loop, void *state)
{
    NetModule *module = state;
    while (module->free_chunks) {
        NetChunk *chunk = module->free_chunks;
        module->free_chunks = chunk->next;
        plex_mem_free(loop->allocator, chunk);
    }
    while (module->slabs) {
        ConnSlab *slab = module->slabs;
        module->slabs = slab->next;
        plex_mem_free(loop->allocator, slab);
    }
    plex_mem_free(loop->allocator, module);
}

static void net_module_flush(PlexEventLoop *loop, void *state)
{
    NetModule *module = state;
    /* Starved reads first (ending one may run a handler that writes). */
    for (unsigned budget = loop->buffers.count; budget > 0 && module->starved_head; budget--) {
        PlexOp *op = module->starved_head;
        net_read_unpark(loop, op);
        conn_read_resume(op);
    }
    /* A flush may run write handlers that write again: loop until empty. */
    while (!plex_link_empty(&module->flush_pending)) {
        PlexLink *link = module->flush_pending.next;
        plex_link_remove(link);
        conn_send_flush(PLEX_CONTAINER_OF(link, PlexConnection, flush_link));
    }
}

static NetModule *net_module(PlexEventLoop *loop)
{
    PlexLoopModule *slot = &loop->modules[PLEX_MODULE_NETWORK];
    if (!slot->state) {
        NetModule *module = plex_mem_calloc(loop->allocator, sizeof(NetModule));
        if (!module)
            return NULL;
        plex_link_init(&module->flush_pending);
        slot->state = module;
        slot->fini = net_module_fini;
        slot->flush = net_module_flush;
    }
    return slot->state;
}

void net_flush_schedule(PlexConnection *conn)
{
    NetModule *module = conn->loop->modules[PLEX_MODULE_NETWORK].state;
    if (plex_link_empty(&conn->flush_link))
        plex_link_insert_tail(&module->flush_pending, &conn->flush_link);
}

void net_read_park(PlexEventLoop *loop, PlexOp *op)
{
    NetModule *module = loop->modules[PLEX_MODULE_NETWORK].state;
    op->storage.parked.next = NULL;
    op->storage.parked.prev = module->starved_tail;
    *(module->starved_tail ? &module->starved_tail->storage.parked.next : &module->starved_head) =
        op;
    module->starved_tail = op;
}

void net_read_unpark(PlexEventLoop *loop, PlexOp *op)
{
    NetModule *module = loop->modules[PLEX_MODULE_NETWORK].state;
    PlexOp *next = op->storage.parked.next, *prev = op->storage.parked.prev;
    *(prev ? &prev->storage.parked.next : &module->starved_head) = next;
    *(next ? &next->storage.parked.prev : &module->starved_tail) = prev;
    op->storage.parked.next = op->storage.parked.prev = NULL;
}

/* ---- Output chunks ----------------------------------------------------- */

NetChunk *net_chunk_get(PlexEventLoop *loop)
{
    NetModule *module = net_module(loop);
    if (!module)
        return NULL;
    NetChunk *chunk = module->free_chunks;
    if (chunk) {
        module->free_chunks = chunk->next;
        module->free_chunk_count--;
    } else {
        chunk = plex_mem_alloc(loop->allocator, NET_CHUNK_BYTES);
        if (!chunk)
            return NULL;
    }
    chunk->next = NULL;
    chunk->start = chunk->end = 0;
    return chunk;
}

void net_chunk_put(PlexEventLoop *loop, NetChunk *chunk)
{
    NetModule *module = loop->modules[PLEX_MODULE_NETWORK].state;
    if (module->free_chunk_count >= NET_CHUNK_KEEP) {
        plex_mem_free(loop->allocator, chunk);
        return;
    }
    chunk->next = module->free_chunks;
    module->free_chunks = chunk;
    module->free_chunk_count++;
}

/* ---- Connection slab --------------------------------------------------- */

static int slab_grow(PlexEventLoop *loop, NetModule *module)
{
    ConnSlab *slab = plex_mem_alloc(loop->allocator, sizeof(*slab));
    if (!slab)
        return -ENOMEM;
    slab->next = module->slabs;
    module->slabs = slab;
    for (unsigned i = 0; i < NET_SLAB_SLOTS; i++) {
        slab->slots[i].next_free = module->free_slots;
        module->free_slots = &slab->slots[i];
    }
    return 0;
}

PlexConnection *net_connection_alloc(PlexEventLoop *loop)
{
    NetModule *module = net_module(loop);
    if (!module || (!module->free_slots && slab_grow(loop, module) < 0))
        return NULL;
    ConnSlot *slot = module->free_slots;
    module->free_slots = slot->next_free;
    memset(&slot->conn, 0, sizeof(slot->conn));
    return &slot->conn;
}

void net_connection_free(PlexEventLoop *loop, PlexConnection *conn)
{
    NetModule *module = loop->modules[PLEX_MODULE_NETWORK].state;
    ConnSlot *slot = (ConnSlot *)(void *)conn;
    slot->next_free = module->free_slots;
    module->free_slots = slot;
}

/* ---- Addresses and sockets --------------------------------------------- */

static int resolve_literal(const char *host, uint16_t port, struct sockaddr_storage *address,
                           socklen_t *length)
{
    struct sockaddr_in *v4 = (struct sockaddr_in *)address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)address;
    memset(address, 0, sizeof(*address));
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        *length = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        *length = sizeof(*v6);
        return 0;
    }
    return -ENOENT;
}

static int resolve_error(int code)
{
    switch (code) {
    case EAI_MEMORY:
        return -ENOMEM;
    case EAI_SYSTEM:
        return errno ? -errno : -EHOSTUNREACH;
    default:
        return -EHOSTUNREACH;
    }
}

int net_resolve(const char *host, uint16_t port, bool passive, struct sockaddr_storage *address,
                socklen_t *length)
{
    if (!host)
        host = "0.0.0.0";
    if (resolve_literal(host, port, address, length) == 0)
        return 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    struct addrinfo *found = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &found);
    if (rc != 0)
        return resolve_error(rc);
    memcpy(address, found->ai_addr, found->ai_addrlen);
    *length = found->ai_addrlen;
    freeaddrinfo(found);
    if (address->ss_family == AF_INET)
        ((struct sockaddr_in *)address)->sin_port = htons(port);
    else if (address->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)address)->sin6_port = htons(port);
    else
        return -EAFNOSUPPORT;
    return 0;
}

int net_socket(int family, int type_flags)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | type_flags, IPPROTO_TCP);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

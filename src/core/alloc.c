/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The allocator helpers every part uses. A NULL allocator, or a NULL
 * function in it, means libc's. A failed allocation sets errno to ENOMEM.
 */
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "core/plex_internal.h"

void *plex_mem_alloc(const PlexAllocator *allocator, size_t size)
{
    void *pointer;

    if (allocator && allocator->alloc)
        pointer = allocator->alloc(allocator->context, size);
    else
        pointer = malloc(size);
    if (!pointer)
        errno = ENOMEM;
    return pointer;
}

void *plex_mem_calloc(const PlexAllocator *allocator, size_t size)
{
    void *pointer = plex_mem_alloc(allocator, size);

    if (pointer)
        memset(pointer, 0, size);
    return pointer;
}

void plex_mem_free(const PlexAllocator *allocator, void *pointer)
{
    if (!pointer)
        return;
    if (allocator && allocator->free)
        allocator->free(allocator->context, pointer);
    else
        free(pointer);
}

void plex_mem_prefault(void *pointer, size_t size)
{
    /* Faulting a large fresh block in one call costs far less than a page
     * fault per 4 KiB page later (notably in virtual machines). Only the
     * whole pages inside the block; failure (an old kernel) is harmless. */
    const uintptr_t page = 4096;
    if (!pointer || size < PLEX_PREFAULT_MIN)
        return;
    uintptr_t start = ((uintptr_t)pointer + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)pointer + size) & ~(page - 1);
    if (end > start)
        madvise((void *)start, end - start, MADV_POPULATE_WRITE);
}

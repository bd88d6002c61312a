/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The allocator helpers every part uses. A NULL allocator, or a NULL
 * function in it, means libc's. A failed allocation sets errno to ENOMEM.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

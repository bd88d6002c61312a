/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PlexArena: per-flow memory, freed in one go.
 *
 * Invariants:
 * - An arena is a chain of blocks; allocations bump a pointer in the newest
 *   block and never move. A request larger than the block size gets a block
 *   of its own.
 * - plex_arena_free() does not return memory to the system: it puts the chunk
 *   on a free list for its size, and the next allocation of that size reuses
 *   it. So a long-lived flow that creates and destroys objects repeatedly
 *   stays bounded.
 * - plex_arena_reset() forgets every allocation but keeps the first block;
 *   plex_arena_destroy() frees every block.
 * - All memory comes from the PlexAllocator given at creation (NULL: libc),
 *   so tests can make any allocation fail.
 */
#ifndef SAMPLEX_PLEX_ARENA_H
#define SAMPLEX_PLEX_ARENA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where samplex gets memory. Any function may be NULL, meaning libc's.
 * `alloc` returns NULL when it fails; samplex turns that into -ENOMEM.
 * A registry's allocator is called from every thread that uses it (each
 * loop's, and any thread that creates flows or posts to a loop), so it
 * must be thread-safe when there are several. */
typedef struct PlexAllocator {
    void *(*alloc)(void *context, size_t size);
    void (*free)(void *context, void *pointer);
    void *context;
} PlexAllocator;

typedef struct PlexArena PlexArena;

#define PLEX_ARENA_DEFAULT_BLOCK 1024

/* Creates an arena whose first block holds `block_size` bytes (0: the
 * default); each later block is twice the previous one, up to 1 MiB.
 * `allocator` may be NULL (libc); it is copied. Returns NULL and sets errno
 * to ENOMEM on failure. */
PlexArena *plex_arena_create(const PlexAllocator *allocator, size_t block_size);

/* Frees every block. NULL is a no-op. */
void plex_arena_destroy(PlexArena *arena);

/* Returns `size` bytes aligned to `alignment` (a power of two, at most 4096;
 * 0 means alignof(max_align_t)). Returns NULL and sets errno to EINVAL for a
 * bad argument (NULL arena, size 0, bad alignment) or ENOMEM. */
void *plex_arena_alloc(PlexArena *arena, size_t size, size_t alignment);

/* As plex_arena_alloc with the default alignment, zero-filled. */
void *plex_arena_calloc(PlexArena *arena, size_t size);

/* Copies a NUL-terminated string into the arena. NULL + errno on failure. */
char *plex_arena_strdup(PlexArena *arena, const char *string);

/* Hands back a chunk obtained with the same `size` for reuse by a later
 * allocation of that size. Returns 0, or -EINVAL if arena or pointer is NULL. */
int plex_arena_free(PlexArena *arena, void *pointer, size_t size);

/* Forgets every allocation (and the free lists); keeps the first block. */
void plex_arena_reset(PlexArena *arena);

/* Bytes handed out (including chunks on free lists) / bytes held in blocks. */
size_t plex_arena_bytes_used(const PlexArena *arena);
size_t plex_arena_bytes_reserved(const PlexArena *arena);

#ifdef __cplusplus
}
#endif
#endif

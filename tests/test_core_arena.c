/* SPDX-License-Identifier: Apache-2.0 */
/* PlexArena: alignment, oversize blocks, free-list reuse, reset, and every
 * allocation failing in turn without a leak. */
#include <errno.h>
#include <setjmp.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <samplex/plex_arena.h>

/* Counts allocations and frees; the `fail_at`-th allocation (1-based) fails. */
typedef struct CountingAllocator {
    size_t allocs;
    size_t frees;
    size_t calls;
    size_t fail_at; /* 0: never */
} CountingAllocator;

static void *counting_alloc(void *context, size_t size)
{
    CountingAllocator *counter = context;

    counter->calls++;
    if (counter->fail_at != 0 && counter->calls == counter->fail_at)
        return NULL;
    counter->allocs++;
    return malloc(size);
}

static void counting_free(void *context, void *pointer)
{
    CountingAllocator *counter = context;

    counter->frees++;
    free(pointer);
}

static PlexAllocator counting_allocator(CountingAllocator *counter)
{
    PlexAllocator allocator = {counting_alloc, counting_free, counter};
    return allocator;
}

static void test_alignment(void **state)
{
    PlexArena *arena = plex_arena_create(NULL, 0);
    (void)state;

    assert_non_null(arena);
    for (size_t alignment = 1; alignment <= 4096; alignment *= 2) {
        for (size_t size = 1; size < 100; size += 7) {
            unsigned char *pointer = plex_arena_alloc(arena, size, alignment);
            assert_non_null(pointer);
            assert_int_equal((uintptr_t)pointer % alignment, 0);
            memset(pointer, 0x5a, size);
        }
    }
    void *pointer = plex_arena_alloc(arena, 24, 0);
    assert_non_null(pointer);
    assert_int_equal((uintptr_t)pointer % alignof(max_align_t), 0);
    plex_arena_destroy(arena);
}

static void test_bad_arguments(void **state)
{
    PlexArena *arena = plex_arena_create(NULL, 0);
    (void)state;

    errno = 0;
    assert_null(plex_arena_alloc(arena, 16, 3));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_arena_alloc(arena, 16, 8192));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_arena_alloc(arena, 0, 8));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_arena_alloc(NULL, 8, 8));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_arena_strdup(arena, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(plex_arena_alloc(arena, SIZE_MAX - 8, 8));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(plex_arena_free(NULL, arena, 8), -EINVAL);
    assert_int_equal(plex_arena_free(arena, NULL, 8), -EINVAL);
    assert_int_equal(plex_arena_bytes_used(NULL), 0);
    assert_int_equal(plex_arena_bytes_reserved(NULL), 0);
    plex_arena_reset(NULL);
    plex_arena_destroy(NULL);
    plex_arena_destroy(arena);
}

static void test_oversize(void **state)
{
    PlexArena *arena = plex_arena_create(NULL, 256);
    (void)state;

    assert_non_null(arena);
    assert_int_equal(plex_arena_bytes_reserved(arena), 256);
    unsigned char *small = plex_arena_alloc(arena, 32, 0);
    assert_non_null(small);
    unsigned char *big = plex_arena_alloc(arena, 1000, 0);
    assert_non_null(big);
    memset(big, 1, 1000);
    size_t reserved = plex_arena_bytes_reserved(arena);
    assert_true(reserved >= 256 + 1000);
    /* The big block has a block of its own: the first block keeps serving. */
    unsigned char *next = plex_arena_alloc(arena, 32, 0);
    assert_non_null(next);
    assert_true(next > small && next < small + 256);
    assert_int_equal(plex_arena_bytes_reserved(arena), reserved);
    /* A request exactly the block size does not fit beside its padding. */
    assert_non_null(plex_arena_alloc(arena, 256, 1));
    plex_arena_destroy(arena);
}

static void test_new_block_when_full(void **state)
{
    PlexArena *arena = plex_arena_create(NULL, 128);
    (void)state;

    for (int i = 0; i < 100; i++)
        assert_non_null(plex_arena_alloc(arena, 40, 8));
    assert_true(plex_arena_bytes_reserved(arena) >= 100 * 40);
    assert_true(plex_arena_bytes_used(arena) >= 100 * 40);
    assert_true(plex_arena_bytes_used(arena) <= plex_arena_bytes_reserved(arena));
    plex_arena_destroy(arena);
}

static void test_free_list_reuse(void **state)
{
    PlexArena *arena = plex_arena_create(NULL, 0);
    (void)state;

    void *first = plex_arena_alloc(arena, 48, 0);
    void *second = plex_arena_alloc(arena, 48, 0);
    void *other = plex_arena_alloc(arena, 100, 0);
    assert_non_null(first);
    assert_non_null(second);
    assert_non_null(other);
    assert_int_equal(plex_arena_free(arena, first, 48), 0);
    assert_int_equal(plex_arena_free(arena, second, 48), 0);
    /* Another size does not take them. */
    void *different = plex_arena_alloc(arena, 64, 0);
    assert_ptr_not_equal(different, first);
    assert_ptr_not_equal(different, second);
    size_t used = plex_arena_bytes_used(arena);
    /* Last freed, first reused; reuse does not raise bytes_used. */
    assert_ptr_equal(plex_arena_alloc(arena, 48, 0), second);
    assert_ptr_equal(plex_arena_alloc(arena, 48, 0), first);
    assert_int_equal(plex_arena_bytes_used(arena), used);
    /* A long-lived create/destroy loop stays bounded. */
    size_t reserved = plex_arena_bytes_reserved(arena);
    for (int i = 0; i < 10000; i++) {
        void *pointer = plex_arena_alloc(arena, 200, 0);
        assert_non_null(pointer);
        assert_int_equal(plex_arena_free(arena, pointer, 200), 0);
    }
    assert_true(plex_arena_bytes_reserved(arena) <= reserved + PLEX_ARENA_DEFAULT_BLOCK);
    /* Tiny unaligned chunks can hold the free-list link too. */
    char *tiny = plex_arena_alloc(arena, 1, 1);
    assert_int_equal(plex_arena_free(arena, tiny, 1), 0);
    assert_ptr_equal(plex_arena_alloc(arena, 1, 1), tiny);
    plex_arena_destroy(arena);
}

static void test_calloc_zeroes_reused_chunk(void **state)
{
    PlexArena *arena = plex_arena_create(NULL, 0);
    (void)state;

    unsigned char *pointer = plex_arena_alloc(arena, 64, 0);
    memset(pointer, 0xab, 64);
    plex_arena_free(arena, pointer, 64);
    unsigned char *zeroed = plex_arena_calloc(arena, 64);
    assert_ptr_equal(zeroed, pointer);
    for (int i = 0; i < 64; i++)
        assert_int_equal(zeroed[i], 0);
    char *copy = plex_arena_strdup(arena, "hello, arena");
    assert_string_equal(copy, "hello, arena");
    plex_arena_destroy(arena);
}

static void test_reset(void **state)
{
    CountingAllocator counter = {0};
    PlexAllocator allocator = counting_allocator(&counter);
    PlexArena *arena = plex_arena_create(&allocator, 256);
    (void)state;

    for (int i = 0; i < 50; i++)
        assert_non_null(plex_arena_alloc(arena, 100, 0));
    void *chunk = plex_arena_alloc(arena, 32, 0);
    plex_arena_free(arena, chunk, 32);
    assert_true(counter.allocs > 1);
    plex_arena_reset(arena);
    assert_int_equal(plex_arena_bytes_used(arena), 0);
    assert_int_equal(plex_arena_bytes_reserved(arena), 256);
    assert_int_equal(counter.allocs - counter.frees, 1);
    unsigned char *again = plex_arena_alloc(arena, 200, 1);
    assert_non_null(again);
    memset(again, 7, 200);
    assert_int_equal(counter.allocs - counter.frees, 1);
    plex_arena_destroy(arena);
    assert_int_equal(counter.allocs, counter.frees);
}

/* A workload touching every allocation path; returns 0, or -errno at the
 * first failure. */
static int arena_workload(const PlexAllocator *allocator)
{
    PlexArena *arena = plex_arena_create(allocator, 128);
    int result = 0;

    if (!arena)
        return -errno;
    for (int i = 0; i < 40 && result == 0; i++) {
        size_t size = (size_t)(i % 5 == 0 ? 300 : 8 + i * 3);
        void *pointer = plex_arena_alloc(arena, size, (size_t)1 << (i % 8));
        if (!pointer) {
            result = -errno;
            break;
        }
        memset(pointer, i, size);
        if (i % 3 == 0 && plex_arena_free(arena, pointer, size) != 0)
            result = -EFAULT;
        if (i == 20)
            plex_arena_reset(arena);
    }
    plex_arena_destroy(arena);
    return result;
}

static void test_allocation_failure_walk(void **state)
{
    size_t failures = 0;
    (void)state;

    for (size_t fail_at = 1;; fail_at++) {
        CountingAllocator counter = {.fail_at = fail_at};
        PlexAllocator allocator = counting_allocator(&counter);
        int result = arena_workload(&allocator);
        assert_int_equal(counter.allocs, counter.frees);
        if (counter.calls < fail_at) {
            assert_int_equal(result, 0);
            break;
        }
        /* A failure inside plex_arena_free only costs the chunk's reuse. */
        if (result != 0) {
            assert_int_equal(result, -ENOMEM);
            failures++;
        }
        assert_true(fail_at < 1000);
    }
    assert_true(failures >= 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment),       cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_oversize),        cmocka_unit_test(test_new_block_when_full),
        cmocka_unit_test(test_free_list_reuse), cmocka_unit_test(test_calloc_zeroes_reused_chunk),
        cmocka_unit_test(test_reset),           cmocka_unit_test(test_allocation_failure_walk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

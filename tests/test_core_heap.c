/* SPDX-License-Identifier: Apache-2.0 */
/* PlexHeap: sorted output, FIFO ties, arbitrary removal, a million entries,
 * and growth through a failing allocator. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/heap.h"

typedef struct TestTimer {
    PlexHeapNode node; /* first: the test casts node pointers back */
    uint64_t key;
    size_t order; /* push order */
} TestTimer;

/* xorshift64: deterministic pseudo-random keys. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static TestTimer *make_timers(size_t count)
{
    TestTimer *timers = calloc(count, sizeof(*timers));
    assert_non_null(timers);
    for (size_t i = 0; i < count; i++) {
        plex_heap_node_init(&timers[i].node);
        timers[i].order = i;
    }
    return timers;
}

/* Pops everything; checks (key, push order) never goes down. Returns count. */
static size_t drain_sorted(PlexHeap *heap)
{
    uint64_t last_key = 0;
    size_t last_order = 0;
    size_t popped = 0;
    PlexHeapNode *node;

    while ((node = plex_heap_pop(heap)) != NULL) {
        TestTimer *timer = (TestTimer *)node;
        assert_false(plex_heap_node_queued(node));
        if (popped > 0) {
            assert_true(timer->key >= last_key);
            if (timer->key == last_key)
                assert_true(timer->order > last_order);
        }
        last_key = timer->key;
        last_order = timer->order;
        popped++;
    }
    assert_int_equal(heap->count, 0);
    return popped;
}

static void test_random_sorted(void **state)
{
    enum { COUNT = 5000 };
    TestTimer *timers = make_timers(COUNT);
    uint64_t seed = 88172645463325252u;
    PlexHeap heap;
    (void)state;

    plex_heap_init(&heap, NULL);
    assert_null(plex_heap_top(&heap));
    assert_null(plex_heap_pop(&heap));
    for (size_t i = 0; i < COUNT; i++) {
        timers[i].key = next_random(&seed) % 1000;
        assert_int_equal(plex_heap_push(&heap, &timers[i].node, timers[i].key), 0);
        assert_true(plex_heap_node_queued(&timers[i].node));
    }
    assert_int_equal(plex_heap_push(&heap, &timers[0].node, 1), -EALREADY);
    assert_int_equal(heap.count, COUNT);
    assert_int_equal(drain_sorted(&heap), COUNT);
    plex_heap_fini(&heap);
    free(timers);
}

static void test_ties_fifo(void **state)
{
    enum { COUNT = 100 };
    TestTimer *timers = make_timers(COUNT);
    PlexHeap heap;
    (void)state;

    plex_heap_init(&heap, NULL);
    for (size_t i = 0; i < COUNT; i++) {
        timers[i].key = 42;
        assert_int_equal(plex_heap_push(&heap, &timers[i].node, 42), 0);
    }
    for (size_t i = 0; i < COUNT; i++) {
        assert_int_equal(plex_heap_top(&heap)->key, 42);
        assert_ptr_equal(plex_heap_pop(&heap), &timers[i].node);
    }
    plex_heap_fini(&heap);
    free(timers);
}

static void test_interleaved_and_remove(void **state)
{
    enum { COUNT = 4000 };
    TestTimer *timers = make_timers(COUNT);
    uint64_t seed = 1234567u;
    size_t queued = 0;
    PlexHeap heap;
    (void)state;

    plex_heap_init(&heap, NULL);
    for (size_t i = 0; i < COUNT; i++) {
        timers[i].key = next_random(&seed) % 500;
        assert_int_equal(plex_heap_push(&heap, &timers[i].node, timers[i].key), 0);
        queued++;
    }
    /* Remove every third timer, from anywhere in the heap. */
    for (size_t i = 0; i < COUNT; i += 3) {
        assert_int_equal(plex_heap_remove(&heap, &timers[i].node), 0);
        assert_false(plex_heap_node_queued(&timers[i].node));
        assert_int_equal(plex_heap_remove(&heap, &timers[i].node), -ENOENT);
        queued--;
    }
    for (size_t i = 0; i < heap.count; i++)
        assert_int_equal(heap.entries[i].node->index, i);
    /* Re-push a few removed ones; they go behind older equal keys. */
    for (size_t i = 0; i < 300; i += 3) {
        timers[i].order = COUNT + i;
        assert_int_equal(plex_heap_push(&heap, &timers[i].node, timers[i].key), 0);
        queued++;
    }
    assert_int_equal(heap.count, queued);
    assert_int_equal(drain_sorted(&heap), queued);
    plex_heap_fini(&heap);
    free(timers);
}

static void test_million(void **state)
{
    enum { COUNT = 1000000 };
    TestTimer *timers = make_timers(COUNT);
    uint64_t seed = 42;
    PlexHeap heap;
    (void)state;

    plex_heap_init(&heap, NULL);
    assert_int_equal(plex_heap_reserve(&heap, 16), 0);
    for (size_t i = 0; i < COUNT; i++) {
        timers[i].key = next_random(&seed) % 100000;
        assert_int_equal(plex_heap_push(&heap, &timers[i].node, timers[i].key), 0);
    }
    for (size_t i = 0; i < COUNT; i += 10)
        assert_int_equal(plex_heap_remove(&heap, &timers[i].node), 0);
    assert_int_equal(drain_sorted(&heap), COUNT - COUNT / 10);
    plex_heap_fini(&heap);
    free(timers);
}

typedef struct FailingAllocator {
    size_t allocs;
    size_t frees;
    size_t budget; /* allocations allowed before failing */
} FailingAllocator;

static void *failing_alloc(void *context, size_t size)
{
    FailingAllocator *counter = context;

    if (counter->allocs == counter->budget)
        return NULL;
    counter->allocs++;
    return malloc(size);
}

static void failing_free(void *context, void *pointer)
{
    ((FailingAllocator *)context)->frees++;
    free(pointer);
}

static void test_growth_failure_and_fini(void **state)
{
    enum { COUNT = 200 };
    TestTimer *timers = make_timers(COUNT);
    FailingAllocator counter = {.budget = 2};
    PlexAllocator allocator = {failing_alloc, failing_free, &counter};
    PlexHeap heap;
    size_t pushed = 0;
    int result = 0;
    (void)state;

    plex_heap_init(&heap, &allocator);
    for (; pushed < COUNT; pushed++) {
        result = plex_heap_push(&heap, &timers[pushed].node, COUNT - pushed);
        if (result != 0)
            break;
    }
    assert_int_equal(result, -ENOMEM);
    assert_false(plex_heap_node_queued(&timers[pushed].node));
    assert_int_equal(heap.count, pushed);
    assert_int_equal(heap.capacity, pushed);
    /* What was queued is intact; fini unqueues the rest and frees. */
    assert_int_equal(plex_heap_top(&heap)->key, COUNT - pushed + 1);
    plex_heap_fini(&heap);
    assert_false(plex_heap_node_queued(&timers[0].node));
    assert_int_equal(counter.allocs, counter.frees);
    free(timers);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_sorted),           cmocka_unit_test(test_ties_fifo),
        cmocka_unit_test(test_interleaved_and_remove),  cmocka_unit_test(test_million),
        cmocka_unit_test(test_growth_failure_and_fini),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

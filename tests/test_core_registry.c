/* SPDX-License-Identifier: Apache-2.0 */
/* PlexRegistry: ids, lookup, count, four threads at once, destroying the
 * leftovers, and every allocation failing in turn without a leak. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <samplex/plex.h>

typedef struct Counts {
    int ends;
    int cleanups;
    int last_status;
} Counts;

static void count_end(Plex *plex, int status)
{
    Counts *counts = plex_user_data(plex);
    counts->ends++;
    counts->last_status = status;
}

static void count_cleanup(Plex *plex, PlexItem *item)
{
    Counts *counts = plex_user_data(plex);
    (void)item;
    counts->cleanups++;
}

static void test_ids_lookup_count(void **state)
{
    enum { COUNT = 100 };
    PlexRegistry *registry = plex_registry_create();
    Plex *flows[COUNT];
    (void)state;

    assert_non_null(registry);
    assert_non_null(plex_registry_allocator(registry));
    assert_int_equal(plex_registry_count(registry), 0);
    for (int i = 0; i < COUNT; i++) {
        flows[i] = plex_create(registry, i % 2 ? "odd" : NULL);
        assert_non_null(flows[i]);
        assert_int_equal(plex_id(flows[i]), (uint64_t)i + 1);
        assert_ptr_equal(plex_registry(flows[i]), registry);
    }
    assert_string_equal(plex_description(flows[1]), "odd");
    assert_string_equal(plex_description(flows[0]), "");
    assert_int_equal(plex_registry_count(registry), COUNT);
    for (int i = 0; i < COUNT; i++)
        assert_ptr_equal(plex_registry_lookup(registry, plex_id(flows[i])), flows[i]);
    for (int i = 0; i < COUNT; i += 2) {
        uint64_t id = plex_id(flows[i]);
        assert_int_equal(plex_destroy(flows[i]), 0);
        assert_null(plex_registry_lookup(registry, id));
    }
    assert_int_equal(plex_registry_count(registry), COUNT / 2);
    for (int i = 1; i < COUNT; i += 2)
        assert_ptr_equal(plex_registry_lookup(registry, plex_id(flows[i])), flows[i]);
    /* Ids are never reused. */
    Plex *later = plex_create(registry, "later");
    assert_int_equal(plex_id(later), COUNT + 1);
    assert_null(plex_registry_lookup(registry, 0));
    assert_null(plex_registry_lookup(registry, 1000000));
    plex_registry_destroy(registry);
}

static void test_null_arguments(void **state)
{
    (void)state;
    errno = 0;
    assert_null(plex_create(NULL, "x"));
    assert_int_equal(errno, EINVAL);
    assert_null(plex_registry_lookup(NULL, 1));
    assert_int_equal(plex_registry_count(NULL), 0);
    assert_null(plex_registry_allocator(NULL));
    plex_registry_destroy(NULL);
}

static void test_destroy_ends_leftovers(void **state)
{
    enum { COUNT = 50, ITEMS = 3, DESTROYED = 10 };
    PlexRegistry *registry = plex_registry_create();
    Counts counts[COUNT];
    (void)state;

    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < COUNT; i++) {
        Plex *plex = plex_create(registry, "leftover");
        plex_set_user_data(plex, &counts[i]);
        plex_set_end_handler(plex, count_end);
        for (int j = 0; j < ITEMS; j++)
            assert_non_null(plex_item_create(plex, "step", NULL, NULL, count_cleanup, NULL));
        if (i < DESTROYED)
            assert_int_equal(plex_finish(plex), 0);
    }
    for (int i = 0; i < DESTROYED; i++) {
        assert_int_equal(counts[i].ends, 1);
        assert_int_equal(counts[i].last_status, 0);
        assert_int_equal(counts[i].cleanups, ITEMS);
    }
    assert_int_equal(plex_registry_count(registry), COUNT - DESTROYED);
    plex_registry_destroy(registry);
    for (int i = 0; i < COUNT; i++) {
        assert_int_equal(counts[i].ends, 1);
        assert_int_equal(counts[i].cleanups, ITEMS);
        assert_int_equal(counts[i].last_status, i < DESTROYED ? 0 : -ECANCELED);
    }
}

/* An end handler that creates a flow while the registry is being destroyed:
 * the new flow is ended too. */
typedef struct Spawner {
    int ends;
    int spawned;
} Spawner;

static void spawn_on_end(Plex *plex, int status)
{
    Spawner *spawner = plex_user_data(plex);
    (void)status;
    spawner->ends++;
    if (spawner->spawned < 3) {
        Plex *child = plex_create(plex_registry(plex), "child");
        assert_non_null(child);
        plex_set_user_data(child, spawner);
        plex_set_end_handler(child, spawn_on_end);
        spawner->spawned++;
    }
}

static void test_destroy_while_spawning(void **state)
{
    PlexRegistry *registry = plex_registry_create();
    Spawner spawner = {0};
    (void)state;

    Plex *plex = plex_create(registry, "parent");
    plex_set_user_data(plex, &spawner);
    plex_set_end_handler(plex, spawn_on_end);
    plex_registry_destroy(registry);
    assert_int_equal(spawner.spawned, 3);
    assert_int_equal(spawner.ends, 4);
}

/* ---- Four threads ----------------------------------------------------- */

enum { THREADS = 4, ROUNDS = 20, PER_ROUND = 200 };

typedef struct Worker {
    PlexRegistry *registry;
    _Atomic uint64_t *highest_id; /* shared: the largest id seen so far */
    atomic_int *ends;             /* shared: end handler calls */
    atomic_int *cleanups;         /* shared: cleanup calls */
    uint64_t *ids;                /* every id this thread got */
    size_t id_count;
    int failures; /* anything unexpected */
} Worker;

static void worker_end(Plex *plex, int status)
{
    Worker *worker = plex_user_data(plex);
    if (status != -ECANCELED)
        worker->failures++;
    atomic_fetch_add(worker->ends, 1);
}

static void worker_cleanup(Plex *plex, PlexItem *item)
{
    Worker *worker = plex_user_data(plex);
    (void)item;
    atomic_fetch_add(worker->cleanups, 1);
}

static void worker_round(Worker *worker, uint64_t *random_state)
{
    Plex *flows[PER_ROUND];

    for (int i = 0; i < PER_ROUND; i++) {
        flows[i] = plex_create(worker->registry, "worker");
        uint64_t id = plex_id(flows[i]);
        if (!flows[i] || (worker->id_count && id <= worker->ids[worker->id_count - 1]))
            worker->failures++;
        worker->ids[worker->id_count++] = id;
        plex_set_user_data(flows[i], worker);
        plex_set_end_handler(flows[i], worker_end);
        plex_item_create(flows[i], "step", NULL, NULL, worker_cleanup, NULL);
        uint64_t seen = atomic_load(worker->highest_id);
        while (seen < id && !atomic_compare_exchange_weak(worker->highest_id, &seen, id)) {
        }
    }
    for (int i = 0; i < PER_ROUND; i++) {
        if (plex_registry_lookup(worker->registry, plex_id(flows[i])) != flows[i])
            worker->failures++;
        /* Others' ids: NULL or some flow; never dereferenced here. */
        *random_state ^= *random_state << 13;
        *random_state ^= *random_state >> 7;
        *random_state ^= *random_state << 17;
        uint64_t other = *random_state % (atomic_load(worker->highest_id) + 10);
        (void)plex_registry_lookup(worker->registry, other);
        (void)plex_registry_count(worker->registry);
    }
    for (int i = 0; i < PER_ROUND; i++) {
        uint64_t id = plex_id(flows[i]);
        if (plex_destroy(flows[i]) != 0 || plex_registry_lookup(worker->registry, id) != NULL)
            worker->failures++;
    }
}

static void *worker_main(void *argument)
{
    Worker *worker = argument;
    uint64_t random_state = 0x9E3779B97F4A7C15u ^ (uintptr_t)argument;

    for (int round = 0; round < ROUNDS; round++)
        worker_round(worker, &random_state);
    return NULL;
}

static int compare_ids(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void test_four_threads(void **state)
{
    PlexRegistry *registry = plex_registry_create();
    _Atomic uint64_t highest_id = 0;
    atomic_int ends = 0;
    atomic_int cleanups = 0;
    Worker workers[THREADS];
    pthread_t threads[THREADS];
    size_t total = (size_t)THREADS * ROUNDS * PER_ROUND;
    uint64_t *all_ids = calloc(total, sizeof(uint64_t));
    (void)state;

    for (int t = 0; t < THREADS; t++) {
        workers[t] = (Worker){registry, &highest_id, &ends, &cleanups, NULL, 0, 0};
        workers[t].ids = all_ids + (size_t)t * ROUNDS * PER_ROUND;
        assert_int_equal(pthread_create(&threads[t], NULL, worker_main, &workers[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(threads[t], NULL), 0);
        assert_int_equal(workers[t].failures, 0);
        assert_int_equal(workers[t].id_count, ROUNDS * PER_ROUND);
    }
    assert_int_equal(atomic_load(&ends), total);
    assert_int_equal(atomic_load(&cleanups), total);
    assert_int_equal(plex_registry_count(registry), 0);
    qsort(all_ids, total, sizeof(uint64_t), compare_ids);
    assert_int_equal(all_ids[0], 1);
    for (size_t i = 1; i < total; i++)
        assert_true(all_ids[i] > all_ids[i - 1]);
    assert_int_equal(all_ids[total - 1], total);
    free(all_ids);
    plex_registry_destroy(registry);
}

/* ---- Allocation failures ---------------------------------------------- */

typedef struct CountingAllocator {
    size_t allocs;
    size_t frees;
    size_t calls;
    size_t fail_at; /* 1-based; 0: never */
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
    ((CountingAllocator *)context)->frees++;
    free(pointer);
}

/* Creates flows and items until something fails; returns -errno of that
 * failure or 0. Counts items created in *items. */
static int registry_workload(PlexRegistry *registry, Counts *counts, int *items)
{
    static char long_description[6000];

    memset(long_description, 'd', sizeof(long_description) - 1);
    for (int i = 0; i < 40; i++) {
        Plex *plex = plex_create(registry, i % 7 == 3 ? long_description : "flow");
        if (!plex)
            return -errno;
        plex_set_user_data(plex, counts);
        plex_set_end_handler(plex, count_end);
        for (int j = 0; j < 4; j++) {
            const char *description = j == 2 ? long_description : "item";
            if (!plex_item_create(plex, description, NULL, NULL, count_cleanup, NULL))
                return -errno;
            (*items)++;
        }
        if (i % 5 == 0)
            plex_destroy(plex);
    }
    return 0;
}

static void test_allocation_failure_walk(void **state)
{
    int failures = 0;
    (void)state;

    for (size_t fail_at = 1;; fail_at++) {
        CountingAllocator counter = {.fail_at = fail_at};
        PlexAllocator allocator = {counting_alloc, counting_free, &counter};
        Counts counts = {0};
        int items = 0;
        int result = -ENOMEM;

        errno = 0;
        PlexRegistry *registry = plex_registry_create_with_allocator(&allocator);
        if (registry) {
            result = registry_workload(registry, &counts, &items);
            plex_registry_destroy(registry);
        } else {
            assert_int_equal(errno, ENOMEM);
        }
        assert_int_equal(counter.allocs, counter.frees);
        assert_int_equal(counts.cleanups, items);
        if (counter.calls < fail_at) {
            assert_int_equal(result, 0);
            assert_int_equal(counts.ends, 40);
            break;
        }
        assert_int_equal(result, -ENOMEM);
        failures++;
        assert_true(fail_at < 10000);
    }
    assert_true(failures > 40);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_lookup_count),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_destroy_ends_leftovers),
        cmocka_unit_test(test_destroy_while_spawning),
        cmocka_unit_test(test_four_threads),
        cmocka_unit_test(test_allocation_failure_walk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/* Plex and PlexItem: the chain, statistics, every way a flow ends (handlers
 * and cleanups exactly once), handlers ending their own flow, the error
 * path, resources, pins and binding. Run it under ASan too. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/plex_internal.h"

/* Everything a test counts; the flow's user data. */
typedef struct Counts {
    int successes;
    int errors;
    int flow_errors;
    int ends;
    int end_status;
    int cleanups;
    int last_result;
    char cleanup_order[16];
    size_t cleanup_count;
    int destroy_in_success; /* on_success destroys its own flow */
} Counts;

static Counts *counts_of(Plex *plex)
{
    return plex_user_data(plex);
}

static void on_success(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Counts *counts = counts_of(plex);
    (void)item;
    counts->successes++;
    counts->last_result = event->result;
    if (counts->destroy_in_success)
        assert_int_equal(plex_destroy(plex), 0);
}

static void on_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    counts_of(plex)->errors++;
    counts_of(plex)->last_result = event->result;
}

static void on_flow_error(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)item;
    counts_of(plex)->flow_errors++;
    counts_of(plex)->last_result = event->result;
}

static void on_end(Plex *plex, int status)
{
    Counts *counts = counts_of(plex);
    counts->ends++;
    counts->end_status = status;
    /* Ending again from the end handler is refused. */
    assert_int_equal(plex_destroy(plex), -EALREADY);
    assert_false(plex_is_alive(plex));
}

static void on_cleanup(Plex *plex, PlexItem *item)
{
    Counts *counts = counts_of(plex);
    const char *description = plex_item_description(item);
    counts->cleanups++;
    if (counts->cleanup_count < sizeof(counts->cleanup_order) - 1)
        counts->cleanup_order[counts->cleanup_count++] = description[0];
    /* A dead flow accepts no new items and no removals. */
    if (!plex_is_alive(plex)) {
        assert_null(plex_item_create(plex, "late", NULL, NULL, NULL, NULL));
        assert_int_equal(plex_item_remove(plex, item), -EINVAL);
    }
}

typedef struct Fixture {
    PlexRegistry *registry;
    Plex *plex;
    Counts counts;
} Fixture;

static int setup(void **state)
{
    Fixture *fixture = calloc(1, sizeof(*fixture));
    fixture->registry = plex_registry_create();
    fixture->plex = plex_create(fixture->registry, "flow");
    plex_set_user_data(fixture->plex, &fixture->counts);
    plex_set_end_handler(fixture->plex, on_end);
    *state = fixture;
    return fixture->plex ? 0 : -1;
}

static int teardown(void **state)
{
    Fixture *fixture = *state;
    plex_registry_destroy(fixture->registry);
    free(fixture);
    return 0;
}

static PlexItem *add_item(Plex *plex, const char *description)
{
    PlexItem *item = plex_item_create(plex, description, on_success, NULL, on_cleanup, NULL);
    assert_non_null(item);
    return item;
}

static void deliver(PlexItem *item, int result, bool last)
{
    PlexEvent event;
    memset(&event, 0, sizeof(event));
    event.result = result;
    event.flags = last ? 0 : PLEX_EVENT_MORE;
    plex_item_deliver(item, &event, last);
}

/* ---- Chain ------------------------------------------------------------ */

static void test_chain(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    Plex *other = plex_create(fixture->registry, "other");
    PlexStats stats;

    assert_null(plex_item_first(plex));
    PlexItem *a = add_item(plex, "a");
    PlexItem *b = add_item(plex, "b");
    PlexItem *c = add_item(plex, "c");
    PlexItem *foreign = plex_item_create(other, "a", NULL, NULL, NULL, NULL);
    assert_ptr_equal(plex_item_first(plex), a);
    assert_ptr_equal(plex_item_next(a), b);
    assert_ptr_equal(plex_item_next(b), c);
    assert_null(plex_item_next(c));
    assert_ptr_equal(plex_item_find(plex, "b"), b);
    assert_null(plex_item_find(plex, "z"));
    assert_ptr_equal(plex_item_plex(b), plex);
    assert_string_equal(plex_item_description(c), "c");
    assert_int_equal(plex_stats(plex, &stats), 0);
    assert_int_equal(stats.items, 3);

    assert_int_equal(plex_item_remove(plex, foreign), -ENOENT);
    assert_int_equal(plex_item_remove(plex, b), 0);
    assert_int_equal(fixture->counts.cleanups, 1);
    assert_ptr_equal(plex_item_next(a), c);
    assert_null(plex_item_find(plex, "b"));
    assert_int_equal(plex_stats(plex, &stats), 0);
    assert_int_equal(stats.items, 2);

    /* The recycled memory serves the next item. */
    PlexItem *d = add_item(plex, "d");
    assert_ptr_equal(d, b);
    assert_ptr_equal(plex_item_next(c), d);
    assert_int_equal(plex_item_remove(plex, a), 0);
    assert_int_equal(plex_item_remove(plex, a), -ENOENT);
    assert_ptr_equal(plex_item_first(plex), c);

    /* The flow's end cleans up only what is still in the chain. */
    assert_int_equal(plex_finish(plex), 0);
    assert_int_equal(fixture->counts.cleanups, 4);
    assert_string_equal(fixture->counts.cleanup_order, "bacd");
    assert_int_equal(plex_destroy(other), 0);
}

static void test_remove_busy(void **state)
{
    Fixture *fixture = *state;
    PlexItem *item = add_item(fixture->plex, "busy");

    plex_item_op_begin(item);
    assert_int_equal(plex_item_in_flight(item), 1);
    assert_int_equal(plex_item_remove(fixture->plex, item), -EBUSY);
    plex_item_op_end_silent(item);
    assert_int_equal(plex_item_in_flight(item), 0);
    assert_int_equal(fixture->counts.successes, 0);
    assert_int_equal(plex_item_remove(fixture->plex, item), 0);
    assert_int_equal(fixture->counts.cleanups, 1);
}

/* ---- Statistics ------------------------------------------------------- */

static void test_stats_and_timing(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    PlexItem *item = plex_item_create(plex, "io", on_success, on_error, on_cleanup, NULL);
    PlexItemTiming timing;
    PlexStats stats;

    assert_int_equal(plex_start(plex), 0);
    assert_int_equal(plex_start(plex), -EALREADY);
    plex_item_op_begin(item);
    assert_int_equal(plex_item_timing(item, &timing), 0);
    assert_true(timing.start_ns > 0);
    assert_int_equal(timing.stop_ns, 0);
    deliver(item, 17, true);
    assert_int_equal(fixture->counts.successes, 1);
    assert_int_equal(fixture->counts.last_result, 17);
    assert_int_equal(plex_item_in_flight(item), 0);

    plex_item_op_begin(item);
    deliver(item, -ECONNRESET, true);
    assert_int_equal(fixture->counts.errors, 1);
    assert_int_equal(fixture->counts.last_result, -ECONNRESET);

    /* Multishot: three completions, the last one ends it. */
    plex_item_op_begin(item);
    deliver(item, 1, false);
    assert_int_equal(plex_item_in_flight(item), 1);
    deliver(item, 2, false);
    deliver(item, 3, true);
    assert_int_equal(plex_item_in_flight(item), 0);
    assert_int_equal(fixture->counts.successes, 4);

    assert_int_equal(plex_item_timing(item, &timing), 0);
    assert_int_equal(timing.runs, 5);
    assert_true(timing.stop_ns >= timing.start_ns);
    assert_int_equal(plex_stats(plex, &stats), 0);
    assert_int_equal(stats.completed, 4);
    assert_int_equal(stats.failed, 1);
    assert_int_equal(stats.total_ns, timing.total_ns);
    assert_int_equal(stats.average_ns, stats.total_ns / 5);
    assert_true(stats.start_ns > 0);
    assert_int_equal(stats.stop_ns, 0);
    plex_pin(plex);
    assert_int_equal(plex_finish(plex), 0);
    assert_int_equal(plex_stats(plex, &stats), 0);
    assert_true(stats.stop_ns >= timing.stop_ns);
    plex_unpin(plex);
}

/* ---- Ending ----------------------------------------------------------- */

typedef enum EndWay { END_FINISH, END_FAIL, END_DESTROY, END_REGISTRY } EndWay;

static void end_one_way(EndWay way, int expected_status)
{
    PlexRegistry *registry = plex_registry_create();
    Counts counts = {0};
    Plex *plex = plex_create(registry, "ending");
    uint64_t id = plex_id(plex);

    plex_set_user_data(plex, &counts);
    plex_set_end_handler(plex, on_end);
    add_item(plex, "1");
    add_item(plex, "2");
    add_item(plex, "3");
    switch (way) {
    case END_FINISH:
        assert_int_equal(plex_finish(plex), 0);
        break;
    case END_FAIL:
        assert_int_equal(plex_fail(plex, 0), -EINVAL);
        assert_int_equal(plex_fail(plex, -EIO), 0);
        break;
    case END_DESTROY:
        assert_int_equal(plex_destroy(plex), 0);
        break;
    case END_REGISTRY:
        plex_registry_destroy(registry);
        registry = NULL;
        break;
    }
    assert_int_equal(counts.ends, 1);
    assert_int_equal(counts.end_status, expected_status);
    assert_int_equal(counts.cleanups, 3);
    assert_string_equal(counts.cleanup_order, "123");
    if (registry) {
        assert_null(plex_registry_lookup(registry, id));
        assert_int_equal(plex_registry_count(registry), 0);
        plex_registry_destroy(registry);
    }
    assert_int_equal(counts.ends, 1);
    assert_int_equal(counts.cleanups, 3);
}

static void test_end_paths(void **state)
{
    (void)state;
    end_one_way(END_FINISH, 0);
    end_one_way(END_FAIL, -EIO);
    end_one_way(END_DESTROY, -ECANCELED);
    end_one_way(END_REGISTRY, -ECANCELED);
}

static void test_end_twice(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;

    plex_pin(plex);
    assert_int_equal(plex_finish(plex), 0);
    assert_int_equal(plex_finish(plex), -EALREADY);
    assert_int_equal(plex_fail(plex, -EIO), -EALREADY);
    assert_int_equal(plex_destroy(plex), -EALREADY);
    assert_int_equal(plex_start(plex), -EALREADY);
    assert_int_equal(fixture->counts.ends, 1);
    assert_int_equal(fixture->counts.end_status, 0);
    errno = 0;
    assert_null(plex_item_create(plex, "late", NULL, NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    plex_unpin(plex);
}

static void test_deliver_to_dead_flow(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    PlexItem *item = plex_item_create(plex, "x", on_success, on_error, on_cleanup, NULL);
    PlexItem *other = add_item(plex, "y");

    plex_item_op_begin(item);
    plex_item_op_begin(other);
    assert_int_equal(plex_destroy(plex), 0);
    assert_int_equal(fixture->counts.cleanups, 2);
    /* The operations still pin the memory; no handler runs. */
    assert_false(plex_is_alive(plex));
    assert_string_equal(plex_description(plex), "flow");
    deliver(item, 5, false);
    deliver(item, -EIO, true);
    plex_item_op_end_silent(other);
    assert_int_equal(fixture->counts.successes, 0);
    assert_int_equal(fixture->counts.errors, 0);
    assert_int_equal(fixture->counts.ends, 1);
    assert_int_equal(fixture->counts.cleanups, 2);
}

static void test_destroy_inside_success(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    PlexItem *item = add_item(plex, "self");
    add_item(plex, "next");

    fixture->counts.destroy_in_success = 1;
    plex_item_op_begin(item);
    deliver(item, 1, true); /* frees the flow after the handler returns */
    assert_int_equal(fixture->counts.successes, 1);
    assert_int_equal(fixture->counts.ends, 1);
    assert_int_equal(fixture->counts.end_status, -ECANCELED);
    assert_int_equal(fixture->counts.cleanups, 2);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
}

static void test_destroy_inside_multishot(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    PlexItem *item = add_item(plex, "multi");

    fixture->counts.destroy_in_success = 1;
    plex_item_op_begin(item);
    deliver(item, 1, false);
    deliver(item, 2, false); /* dead: nothing runs */
    assert_int_equal(fixture->counts.successes, 1);
    deliver(item, 3, true);
    assert_int_equal(fixture->counts.successes, 1);
    assert_int_equal(fixture->counts.ends, 1);
    assert_int_equal(fixture->counts.cleanups, 1);
}

/* A cleanup that ends its flow while the item is being removed. */
static void destroying_cleanup(Plex *plex, PlexItem *item)
{
    on_cleanup(plex, item);
    if (plex_is_alive(plex))
        assert_int_equal(plex_destroy(plex), 0);
}

static void test_destroy_inside_remove_cleanup(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    PlexItem *item = plex_item_create(plex, "r", NULL, NULL, destroying_cleanup, NULL);
    add_item(plex, "s");

    assert_int_equal(plex_item_remove(plex, item), 0);
    assert_int_equal(fixture->counts.ends, 1);
    assert_int_equal(fixture->counts.cleanups, 2);
    assert_string_equal(fixture->counts.cleanup_order, "rs");
}

/* ---- Error path ------------------------------------------------------- */

static void test_error_path(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    Counts *counts = &fixture->counts;
    PlexItem *own = plex_item_create(plex, "own", on_success, on_error, on_cleanup, NULL);
    PlexItem *bare = add_item(plex, "bare");

    plex_item_op_begin(own);
    deliver(own, -EPIPE, true);
    assert_int_equal(counts->errors, 1);
    assert_int_equal(counts->flow_errors, 0);

    assert_int_equal(plex_set_error_handler(plex, on_flow_error), 0);
    plex_item_op_begin(bare);
    deliver(bare, PLEX_EEOF, true);
    assert_int_equal(counts->errors, 1);
    assert_int_equal(counts->flow_errors, 1);
    assert_int_equal(counts->last_result, PLEX_EEOF);
    assert_true(plex_is_alive(plex));

    assert_int_equal(plex_set_error_handler(plex, NULL), 0);
    plex_pin(plex); /* to look at the flow after it failed */
    plex_item_op_begin(bare);
    deliver(bare, -ETIMEDOUT, true);
    assert_false(plex_is_alive(plex));
    plex_unpin(plex);
    assert_int_equal(counts->ends, 1);
    assert_int_equal(counts->end_status, -ETIMEDOUT);
    assert_int_equal(counts->cleanups, 2);
    assert_int_equal(counts->successes, 0);
}

/* ---- Resources -------------------------------------------------------- */

typedef struct TestResource {
    PlexResource resource;
    char name;
    char *order; /* shared release log */
    size_t *logged;
    struct TestResource *detach_other; /* detached by this one's release */
    PlexItem *end_op;                  /* an operation ended by this release */
    int releases;
} TestResource;

static void release_resource(PlexResource *resource)
{
    TestResource *test = PLEX_CONTAINER_OF(resource, TestResource, resource);
    assert_null(resource->plex);
    test->releases++;
    test->order[(*test->logged)++] = test->name;
    if (test->detach_other)
        plex_resource_detach(&test->detach_other->resource);
    if (test->end_op)
        plex_item_op_end_silent(test->end_op);
}

static void test_resources(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    char order[8] = {0};
    size_t logged = 0;
    TestResource resources[5];
    PlexItem *item = add_item(plex, "op");

    memset(resources, 0, sizeof(resources));
    for (int i = 0; i < 5; i++) {
        resources[i].name = (char)('a' + i);
        resources[i].order = order;
        resources[i].logged = &logged;
        assert_int_equal(plex_resource_attach(plex, &resources[i].resource, release_resource), 0);
        assert_ptr_equal(resources[i].resource.plex, plex);
    }
    assert_int_equal(plex_resource_attach(plex, &resources[0].resource, release_resource), 0);
    assert_int_equal(plex_resource_attach(plex, NULL, release_resource), -EINVAL);
    assert_int_equal(plex_resource_attach(NULL, &resources[0].resource, release_resource), -EINVAL);
    /* 'b' detached by hand (twice: the second is a no-op), 'c' by 'd'. */
    plex_resource_detach(&resources[1].resource);
    plex_resource_detach(&resources[1].resource);
    plex_resource_detach(NULL);
    resources[3].detach_other = &resources[2];
    /* 'e' ends an operation that pinned the flow. */
    plex_item_op_begin(item);
    resources[4].end_op = item;

    assert_int_equal(plex_destroy(plex), 0);
    assert_string_equal(order, "eda");
    assert_int_equal(resources[0].releases, 1);
    assert_int_equal(resources[1].releases, 0);
    assert_int_equal(resources[2].releases, 0);
    assert_int_equal(resources[3].releases, 1);
    assert_int_equal(resources[4].releases, 1);
    assert_int_equal(fixture->counts.cleanups, 1);
}

static void test_attach_to_ended_flow(void **state)
{
    Fixture *fixture = *state;
    PlexResource resource;

    memset(&resource, 0, sizeof(resource));
    plex_pin(fixture->plex);
    assert_int_equal(plex_finish(fixture->plex), 0);
    assert_int_equal(plex_resource_attach(fixture->plex, &resource, release_resource), -ESTALE);
    assert_null(resource.plex);
    plex_unpin(fixture->plex);
}

/* ---- Pins ------------------------------------------------------------- */

static void test_pins_defer_free(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    char *memory = plex_arena_strdup(plex_arena(plex), "still here");

    plex_pin(plex);
    plex_pin(plex);
    assert_int_equal(plex_destroy(plex), 0);
    /* Ended but pinned: struct and arena stay valid. */
    assert_string_equal(memory, "still here");
    assert_string_equal(plex_description(plex), "flow");
    assert_non_null(plex_arena_alloc(plex_arena(plex), 64, 0));
    plex_unpin(plex);
    assert_string_equal(memory, "still here");
    plex_unpin(plex); /* the last pin frees (ASan would see a leak otherwise) */
    assert_int_equal(fixture->counts.ends, 1);
}

/* ---- Binding ---------------------------------------------------------- */

static void test_bind(void **state)
{
    Fixture *fixture = *state;
    Plex *plex = fixture->plex;
    Plex *second = plex_create(fixture->registry, "second");
    PlexLink list_a;
    PlexLink list_b;
    int owner_a;
    int owner_b;

    plex_link_init(&list_a);
    plex_link_init(&list_b);
    assert_int_equal(plex_bind(plex, &owner_a, &list_a), 0);
    assert_int_equal(plex_bind(plex, &owner_a, &list_a), 0);
    assert_int_equal(plex_bind(plex, &owner_b, &list_b), -EXDEV);
    assert_int_equal(plex_bind(NULL, &owner_a, &list_a), -EINVAL);
    assert_int_equal(plex_bind(second, &owner_a, &list_a), 0);
    assert_ptr_equal(plex_bound_owner(plex), &owner_a);
    assert_ptr_equal(plex_from_bind_link(list_a.next), plex);
    assert_ptr_equal(plex_from_bind_link(list_a.next->next), second);
    assert_true(plex_link_empty(&list_b));

    plex_pin(plex);
    assert_int_equal(plex_destroy(plex), 0);
    assert_ptr_equal(plex_from_bind_link(list_a.next), second);
    assert_ptr_equal(list_a.next->next, &list_a);
    assert_int_equal(plex_bind(plex, &owner_b, &list_b), -ESTALE);
    plex_unpin(plex);

    /* How a loop ends its flows: destroy until its list is empty. */
    while (!plex_link_empty(&list_a))
        assert_int_equal(plex_destroy(plex_from_bind_link(list_a.next)), 0);
    assert_int_equal(plex_registry_count(fixture->registry), 0);
}

/* ---- Arguments -------------------------------------------------------- */

static void test_null_arguments(void **state)
{
    PlexStats stats;
    PlexItemTiming timing;
    (void)state;

    assert_int_equal(plex_destroy(NULL), -EINVAL);
    assert_int_equal(plex_finish(NULL), -EINVAL);
    assert_int_equal(plex_fail(NULL, -EIO), -EINVAL);
    assert_int_equal(plex_start(NULL), -EINVAL);
    assert_int_equal(plex_set_error_handler(NULL, NULL), -EINVAL);
    assert_int_equal(plex_set_end_handler(NULL, NULL), -EINVAL);
    assert_int_equal(plex_stats(NULL, &stats), -EINVAL);
    assert_int_equal(plex_item_timing(NULL, &timing), -EINVAL);
    assert_int_equal(plex_item_remove(NULL, NULL), -EINVAL);
    assert_int_equal(plex_id(NULL), 0);
    assert_string_equal(plex_description(NULL), "");
    assert_string_equal(plex_item_description(NULL), "");
    assert_null(plex_user_data(NULL));
    assert_null(plex_arena(NULL));
    assert_null(plex_registry(NULL));
    assert_null(plex_allocator(NULL));
    assert_false(plex_is_alive(NULL));
    assert_null(plex_item_first(NULL));
    assert_null(plex_item_next(NULL));
    assert_null(plex_item_find(NULL, "x"));
    assert_null(plex_item_plex(NULL));
    assert_null(plex_item_user_data(NULL));
    assert_int_equal(plex_item_in_flight(NULL), 0);
    assert_null(plex_bound_owner(NULL));
    assert_null(plex_from_bind_link(NULL));
    errno = 0;
    assert_null(plex_item_create(NULL, "x", NULL, NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    plex_set_user_data(NULL, NULL);
    plex_item_set_user_data(NULL, NULL);
    plex_pin(NULL);
    plex_unpin(NULL);
    plex_item_op_begin(NULL);
    plex_item_op_end_silent(NULL);
    plex_item_deliver(NULL, NULL, true);
    assert_true(plex_now_ns() > 0);
}

static void test_user_data(void **state)
{
    Fixture *fixture = *state;
    int value = 7;
    PlexItem *item = plex_item_create(fixture->plex, NULL, NULL, NULL, NULL, &value);

    assert_ptr_equal(plex_item_user_data(item), &value);
    plex_item_set_user_data(item, NULL);
    assert_null(plex_item_user_data(item));
    assert_string_equal(plex_item_description(item), "");
    assert_null(plex_item_find(fixture->plex, NULL));
    /* A copy of the registry's allocator, so it outlives the registry. */
    assert_non_null(plex_allocator(fixture->plex));
    assert_memory_equal(plex_allocator(fixture->plex), plex_registry_allocator(fixture->registry),
                        sizeof(PlexAllocator));
    assert_int_equal(plex_id(fixture->plex), 1);
}

#define FIXTURE_TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        FIXTURE_TEST(test_chain),
        FIXTURE_TEST(test_remove_busy),
        FIXTURE_TEST(test_stats_and_timing),
        cmocka_unit_test(test_end_paths),
        FIXTURE_TEST(test_end_twice),
        FIXTURE_TEST(test_deliver_to_dead_flow),
        FIXTURE_TEST(test_destroy_inside_success),
        FIXTURE_TEST(test_destroy_inside_multishot),
        FIXTURE_TEST(test_destroy_inside_remove_cleanup),
        FIXTURE_TEST(test_error_path),
        FIXTURE_TEST(test_resources),
        FIXTURE_TEST(test_attach_to_ended_flow),
        FIXTURE_TEST(test_pins_defer_free),
        FIXTURE_TEST(test_bind),
        cmocka_unit_test(test_null_arguments),
        FIXTURE_TEST(test_user_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

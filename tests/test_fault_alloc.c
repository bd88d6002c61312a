/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Allocation failure injection. A counting allocator, given to the registry
 * (so every allocation of the library goes through it), makes the Nth
 * allocation fail. For N = 1, 2, ... until a run makes no allocation fail,
 * each test runs a whole scenario and checks that:
 * - the failure surfaces as -ENOMEM (a return value, NULL with errno, or a
 *   handler's event), or the engine absorbs it and the scenario completes;
 * - nothing crashes (run it under ASan) and nothing leaks: every allocation
 *   is freed once the loop and the registry are destroyed, and no file
 *   descriptor is left open;
 * - every operation started ends at most once (exactly once when the run
 *   completes), no handler runs for an ended flow, every cleanup and every
 *   end handler runs exactly once.
 * Walks: "single" fails only the Nth allocation and stops at the error;
 * "retry" makes a call that returned -ENOMEM once more (a failed call must
 * leave nothing behind, so the scenario then completes); "persistent"
 * fails the Nth and every later one (teardown must not need memory);
 * "starved" empties the loop's pool of operation records and fails every
 * allocation from loop iteration K on, K = 0, 1, ..., so the records the
 * engine takes for itself (a poll, a close, a kernel timeout) fail too.
 * Scenarios: a timer's life (and twelve short-lived flows), a connection's
 * life (listener, accept, read, write, close; an engine client and a raw
 * socket), a query's life (connect, queued and direct queries, results,
 * close; plain and pipelined) and a pool's life against the test server.
 * Two more tests hold the pool of records exhausted: a timer must still
 * fire on time, and a pool connection lost meanwhile must come back.
 * FAULT_TRACE=1 prints every allocation of the runs without failure.
 */
#include <dirent.h>
#include <inttypes.h>
#include <libpq-fe.h>

#include "adapters/loop.h" /* white box: the starvation walk empties the op pool */
#include "net_support.h"

#define FAULT_MS 1000000LL
#define FAULT_RUN_NS (15 * 1000 * FAULT_MS) /* a run that takes longer hangs */

/* ---- The counting allocator -------------------------------------------- */

typedef enum FaultMode {
    FAULT_SINGLE,     /* only allocation N fails; the scenario stops at the error */
    FAULT_RETRY,      /* only allocation N fails; a call that returns it is made again */
    FAULT_PERSISTENT, /* allocation N and every later one fail */
} FaultMode;

typedef struct Fault {
    PlexAllocator allocator;
    long calls;   /* alloc calls, failed ones included */
    long live;    /* allocations not freed yet */
    long fail_at; /* the call that fails (1-based); 0: none */
    FaultMode mode;
    long injected;  /* calls made to fail */
    long starve_at; /* starvation walk: the iteration that starves; -1: none */
    bool starved;   /* it has */
} Fault;

static bool fault_trace; /* FAULT_TRACE=1: print every allocation */

static void *fault_alloc(void *context, size_t size)
{
    Fault *fault = context;
    long call = ++fault->calls;
    if (fault_trace && fault->fail_at == 0)
        fprintf(stderr, "alloc %ld: %zu bytes\n", call, size);
    if (fault->fail_at > 0 &&
        (call == fault->fail_at || (fault->mode == FAULT_PERSISTENT && call > fault->fail_at))) {
        fault->injected++;
        return NULL;
    }
    void *pointer = malloc(size);
    if (pointer)
        fault->live++;
    return pointer;
}

static void fault_free(void *context, void *pointer)
{
    Fault *fault = context;
    fault->live--;
    free(pointer);
}

static void fault_init(Fault *fault, long fail_at, FaultMode mode)
{
    *fault = (Fault){.fail_at = fail_at, .mode = mode, .starve_at = -1};
    fault->allocator = (PlexAllocator){.alloc = fault_alloc, .free = fault_free, .context = fault};
}

static uint64_t ms_since(uint64_t began_ns)
{
    return (plex_now_ns() - began_ns) / UINT64_C(1000000);
}

static int fds_open(void)
{
    DIR *directory = opendir("/proc/self/fd");
    assert_non_null(directory);
    int count = 0;
    while (readdir(directory))
        count++;
    closedir(directory);
    return count;
}

/* ---- Runs, flows and steps --------------------------------------------- */

typedef struct Run Run;
typedef struct Step Step;
typedef void (*StepReact)(Run *run, Step *step, const PlexEvent *event);

typedef struct Flow {
    Run *run;
    Plex *plex;
    int ends;   /* end handler calls */
    int status; /* the end status */
} Flow;

struct Step {
    Run *run;
    Flow *flow;
    PlexItem *item;
    StepReact react; /* the scenario's reaction to a call; NULL: none */
    int started;     /* operations whose start returned >= 0 */
    int silent;      /* of those, ended without a call (a cancelled timer) */
    int calls;
    int last; /* calls without PLEX_EVENT_MORE */
    int cleanups;
};

#define RUN_FLOWS 24
#define RUN_STEPS 24

/* How a run went. */
typedef struct Verdict {
    bool completed; /* the scenario reached its end */
    int enomem;     /* -ENOMEM seen: returned, in errno, or by a handler */
    int unexpected; /* the first other error; 0 if none */
    bool dropped;   /* the server dropped a peer (accept out of memory) */
    int retries;    /* calls made again after -ENOMEM (FAULT_RETRY) */
} Verdict;

struct Run {
    Fault *fault;
    PlexRegistry *registry;
    PlexEventLoop *loop;
    Flow flows[RUN_FLOWS];
    unsigned flow_count;
    Step steps[RUN_STEPS];
    unsigned step_count;
    Verdict verdict;
    bool stop; /* give up and tear down */
    uint64_t deadline_ns;
    long iterations;
};

/* An error ends the run: the scenario stops and tears everything down. */
static void run_error(Run *run, int code)
{
    /* Errors that follow an -ENOMEM are its consequences (a Postgres
     * connection broken for want of memory fails its other queries). */
    if (code == -ENOMEM)
        run->verdict.enomem++;
    else if (!run->verdict.unexpected && !run->verdict.enomem)
        run->verdict.unexpected = code;
    run->stop = true;
}

static bool run_ok(Run *run, int rc)
{
    if (rc < 0)
        run_error(run, rc);
    return rc >= 0;
}

static void *run_ptr(Run *run, void *pointer)
{
    if (!pointer)
        run_error(run, errno ? -errno : -EIO);
    return pointer;
}

/* Whether a call that failed with ENOMEM is made once more (FAULT_RETRY):
 * a failed call must leave nothing behind, so the second one succeeds. */
static bool run_retry(Run *run)
{
    if (run->fault->mode != FAULT_RETRY)
        return false;
    run->verdict.retries++;
    return true;
}

/* rc = expression (an int result), made again after -ENOMEM in retry mode. */
#define RUN_INT(run, rc, expression)           \
    do {                                       \
        (rc) = (expression);                   \
        if ((rc) == -ENOMEM && run_retry(run)) \
            (rc) = (expression);               \
    } while (0)

/* pointer = expression (NULL and errno on failure), likewise. */
#define RUN_PTR(run, pointer, expression)                      \
    do {                                                       \
        errno = 0;                                             \
        (pointer) = (expression);                              \
        if (!(pointer) && errno == ENOMEM && run_retry(run)) { \
            errno = 0;                                         \
            (pointer) = (expression);                          \
        }                                                      \
        run_ptr((run), (pointer));                             \
    } while (0)

static void flow_end(Plex *plex, int status)
{
    Flow *flow = plex_user_data(plex);
    flow->ends++;
    flow->status = status;
}

static Flow *run_flow(Run *run, const char *name)
{
    assert_true(run->flow_count < RUN_FLOWS);
    Plex *plex;
    RUN_PTR(run, plex, plex_create(run->registry, name));
    if (!plex)
        return NULL;
    Flow *flow = &run->flows[run->flow_count++];
    *flow = (Flow){.run = run, .plex = plex};
    plex_set_user_data(plex, flow);
    plex_set_end_handler(plex, flow_end);
    return flow;
}

static void step_call(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    Step *step = plex_item_user_data(item);
    Flow *flow = plex_user_data(plex);
    if (flow->ends != 0)
        fail_msg("N=%ld: a handler ran for an ended flow", step->run->fault->fail_at);
    if (step->last + step->silent >= step->started)
        fail_msg("N=%ld: a call for an operation that has ended (%s)", step->run->fault->fail_at,
                 plex_item_description(item));
    step->calls++;
    if (!(event->flags & PLEX_EVENT_MORE))
        step->last++;
    if (event->result == -ENOMEM)
        run_error(step->run, -ENOMEM);
    if (step->react)
        step->react(step->run, step, event);
}

static void step_cleanup(Plex *plex, PlexItem *item)
{
    (void)plex;
    ((Step *)plex_item_user_data(item))->cleanups++;
}

static Step *run_step(Run *run, Flow *flow, const char *name, StepReact react)
{
    if (!flow)
        return NULL;
    assert_true(run->step_count < RUN_STEPS);
    Step *step = &run->steps[run->step_count];
    *step = (Step){.run = run, .flow = flow, .react = react};
    RUN_PTR(run, step->item,
            plex_item_create(flow->plex, name, step_call, step_call, step_cleanup, step));
    if (!step->item)
        return NULL;
    run->step_count++;
    return step;
}

/* Counts an operation started on `step` when `rc` says it was. */
static bool step_started(Step *step, int rc)
{
    if (rc >= 0)
        step->started++;
    return run_ok(step->run, rc);
}

/* Starts an operation on `step`: rc = expression, retried in retry mode. */
#define STEP_START(step, expression)                  \
    do {                                              \
        int step_rc_;                                 \
        RUN_INT((step)->run, step_rc_, (expression)); \
        step_started((step), step_rc_);               \
    } while (0)

/* From now on no operation record is left (the free lists are emptied;
 * records in use still come back to them) and every allocation fails. */
static void run_starve(Run *run)
{
    Fault *fault = run->fault;
    plex_link_init(&run->loop->ops_free);
    plex_link_init(&run->loop->ops_free_large);
    fault->mode = FAULT_PERSISTENT;
    fault->fail_at = fault->calls + 1;
    fault->starved = true;
}

static bool run_begin(Run *run, Fault *fault)
{
    *run = (Run){.fault = fault, .deadline_ns = plex_now_ns() + FAULT_RUN_NS};
    RUN_PTR(run, run->registry, plex_registry_create_with_allocator(&fault->allocator));
    if (!run->registry)
        return false;
    RUN_PTR(run, run->loop, plex_event_loop_create(run->registry));
    if (run->loop && fault->starve_at == 0)
        run_starve(run); /* before the scenario's first call */
    return run->loop != NULL;
}

static void run_iterate(Run *run)
{
    if (++run->iterations == run->fault->starve_at)
        run_starve(run);
    if (plex_now_ns() > run->deadline_ns)
        fail_msg("N=%ld: the scenario hung", run->fault->fail_at);
    int rc = plex_event_loop_run_once(run->loop, 5 * FAULT_MS);
    if (rc < 0)
        fail_msg("N=%ld: run_once returned %d", run->fault->fail_at, rc);
}

/* Tears down and checks what every flow and step went through. */
static Verdict run_end(Run *run)
{
    plex_event_loop_destroy(run->loop);
    plex_registry_destroy(run->registry);
    long n = run->fault->fail_at;
    for (unsigned i = 0; i < run->flow_count; i++)
        if (run->flows[i].ends != 1)
            fail_msg("N=%ld: flow %u ended %d times", n, i, run->flows[i].ends);
    for (unsigned i = 0; i < run->step_count; i++) {
        const Step *step = &run->steps[i];
        int ended = step->last + step->silent;
        if (step->cleanups != 1)
            fail_msg("N=%ld: step %u cleaned up %d times", n, i, step->cleanups);
        if (ended > step->started || (run->verdict.completed && ended != step->started))
            fail_msg("N=%ld: step %u started %d operations, %d ended", n, i, step->started, ended);
    }
    return run->verdict;
}

/* ---- The walk ---------------------------------------------------------- */

typedef Verdict (*Scenario)(Fault *fault, const void *options);

static const char *const mode_names[] = {"single", "retry", "persistent"};

typedef struct WalkTally {
    long allocations; /* in a run without failure */
    long runs;        /* runs with a failure injected */
    long enomem;      /* of those, ended by -ENOMEM */
    long absorbed;    /* of those, completed anyway */
    long dropped;     /* of those, ended with the server dropping a peer */
    long retries;     /* calls made again (retry mode) */
} WalkTally;

static void walk_check_clean(const char *name, const Fault *fault, int fds_before)
{
    if (fault->live != 0)
        fail_msg("%s N=%ld: %ld allocations not freed", name, fault->fail_at, fault->live);
    int fds = fds_open();
    if (fds != fds_before)
        fail_msg("%s N=%ld: %d descriptors open, %d before", name, fault->fail_at, fds, fds_before);
}

static void walk_count(const char *name, const Fault *fault, Verdict verdict, bool may_drop,
                       WalkTally *tally)
{
    long n = fault->fail_at;
    tally->runs++;
    tally->retries += verdict.retries;
    if (verdict.unexpected)
        fail_msg("%s N=%ld: unexpected error %s", name, n, plex_error_name(verdict.unexpected));
    if (verdict.dropped && !may_drop)
        fail_msg("%s N=%ld: a peer was dropped", name, n);
    if (verdict.completed)
        tally->absorbed++;
    else if (verdict.enomem > 0)
        tally->enomem++;
    else if (verdict.dropped)
        tally->dropped++;
    else
        fail_msg("%s N=%ld: stopped without -ENOMEM", name, n);
}

/* Runs `scenario` once without failure, then with allocation N failing for
 * N = 1, 2, ... until a run makes no allocation fail. */
static WalkTally walk(const char *name, Scenario scenario, const void *options, FaultMode mode,
                      bool may_drop)
{
    WalkTally tally = {0};
    uint64_t began_ns = plex_now_ns();
    int fds_before = fds_open();
    Fault fault;
    fault_init(&fault, 0, mode);
    Verdict verdict = scenario(&fault, options);
    if (!verdict.completed)
        fail_msg("%s: the scenario fails without injected failures (%s)", name,
                 plex_error_name(verdict.unexpected));
    walk_check_clean(name, &fault, fds_before);
    tally.allocations = fault.calls;
    for (long n = 1;; n++) {
        fault_init(&fault, n, mode);
        verdict = scenario(&fault, options);
        walk_check_clean(name, &fault, fds_before);
        if (fault.injected == 0) {
            if (!verdict.completed)
                fail_msg("%s N=%ld: no failure injected, yet it did not complete", name, n);
            break;
        }
        walk_count(name, &fault, verdict, may_drop, &tally);
        if (n > 4 * tally.allocations + 100)
            fail_msg("%s: the walk does not end (N=%ld)", name, n);
    }
    printf("%s (%s): %ld allocations; %ld runs with a failure injected: %ld -ENOMEM, "
           "%ld completed, %ld dropped a peer; %ld calls retried (%" PRIu64 " ms)\n",
           name, mode_names[mode], tally.allocations, tally.runs, tally.enomem, tally.absorbed,
           tally.dropped, tally.retries, ms_since(began_ns));
    assert_true(tally.runs >= tally.allocations);
    if (mode == FAULT_RETRY)
        assert_true(tally.retries > 0);
    else
        assert_true(tally.enomem > 0);
    return tally;
}

/* Runs `scenario` with the loop starved (run_starve) from iteration K on
 * (0: from its creation), for K = 0, 1, ... until the scenario completes
 * before K. */
static void walk_starved(const char *name, Scenario scenario, const void *options, bool may_drop)
{
    WalkTally tally = {0};
    uint64_t began_ns = plex_now_ns();
    int fds_before = fds_open();
    for (long k = 0;; k++) {
        Fault fault;
        fault_init(&fault, 0, FAULT_SINGLE);
        fault.starve_at = k;
        Verdict verdict = scenario(&fault, options);
        walk_check_clean(name, &fault, fds_before);
        if (!fault.starved) {
            if (!verdict.completed)
                fail_msg("%s K=%ld: not starved, yet it did not complete", name, k);
            break;
        }
        walk_count(name, &fault, verdict, may_drop, &tally);
        if (k > 100000)
            fail_msg("%s: the starvation walk does not end", name);
    }
    printf("%s (starved): %ld runs: %ld -ENOMEM, %ld completed, %ld dropped a peer (%" PRIu64
           " ms)\n",
           name, tally.runs, tally.enomem, tally.absorbed, tally.dropped, ms_since(began_ns));
    assert_true(tally.runs > 0);
}

#define WALK_EVERY 0xfu
#define WALK_STOPPING 0x5u /* single and persistent: the runs that stop early, cheap */

/* The walks `modes` selects (bit 1 << FaultMode; 0x8: starved), in turn. */
static void walk_modes(const char *name, Scenario scenario, const void *options, bool may_drop,
                       unsigned modes)
{
    for (FaultMode mode = FAULT_SINGLE; mode <= FAULT_PERSISTENT; mode++)
        if (modes & (1u << mode))
            walk(name, scenario, options, mode, may_drop);
    if (modes & 0x8u)
        walk_starved(name, scenario, options, may_drop);
}

/* ---- Scenario: a timer's life ------------------------------------------ */

#define TIMER_BURST 100 /* past the heap's first 64 slots and the first arena block */
#define TICKS 3

#define SHORT_FLOWS 12 /* with the others, past the registry's first table */

typedef struct TimerRun {
    Run run;
    Step *tick, *once, *burst;
    int posts;
    int short_lived; /* flows finished by their own timer */
} TimerRun;

static void short_react(Run *run, Step *step, const PlexEvent *event)
{
    (void)event;
    ((TimerRun *)run)->short_lived++;
    assert_int_equal(plex_finish(step->flow->plex), 0);
}

static void tick_react(Run *run, Step *step, const PlexEvent *event)
{
    assert_true(event->flags & PLEX_EVENT_MORE);
    if (step->calls == TICKS && run_ok(run, plex_timer_cancel(event->timer)))
        step->silent++;
}

static void never_react(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    (void)event;
    fail_msg("N=%ld: a timer of a destroyed flow fired", run->fault->fail_at);
}

static void count_post(PlexEventLoop *loop, void *argument)
{
    (void)loop;
    ((TimerRun *)argument)->posts++;
}

/* A timer on `step` after `delay_ms`, added; false on failure. */
static bool timer_start(Run *run, Step *step, int64_t delay_ms, bool recurring, PlexTimer **out)
{
    PlexTimer *timer;
    RUN_PTR(run, timer,
            plex_timer_create(step->flow->plex, step->item, delay_ms * FAULT_MS, recurring));
    if (out)
        *out = timer;
    if (timer)
        STEP_START(step, plex_timer_add(run->loop, timer));
    return !run->stop;
}

/* A flow destroyed with its timer armed: its handler never runs. */
static bool timers_doomed(Run *run)
{
    Flow *doomed = run_flow(run, "doomed");
    Step *never = run_step(run, doomed, "never", never_react);
    if (!never || !timer_start(run, never, 1, false, NULL))
        return false;
    assert_int_equal(plex_destroy(doomed->plex), 0);
    never->silent++; /* its operation ended with the flow, without a call */
    return true;
}

static void timers_start(TimerRun *t)
{
    Run *run = &t->run;
    if (!timers_doomed(run))
        return;
    Flow *flow = run_flow(run, "timers");
    t->tick = run_step(run, flow, "tick", tick_react);
    t->once = run_step(run, flow, "once", NULL);
    Step *idle = run_step(run, flow, "idle", NULL);
    t->burst = run_step(run, flow, "burst", NULL);
    if (!t->burst)
        return;
    PlexTimer *idle_timer;
    if (!timer_start(run, t->tick, 1, true, NULL) || !timer_start(run, t->once, 2, false, NULL) ||
        !timer_start(run, idle, 1000, false, &idle_timer))
        return;
    assert_int_equal(plex_timer_cancel(idle_timer), 0);
    idle->silent++;
    assert_int_equal(plex_timer_destroy(idle_timer), 0);
    for (int i = 0; i < TIMER_BURST; i++)
        if (!timer_start(run, t->burst, i % 4, false, NULL))
            return;
    int rc;
    RUN_INT(run, rc, plex_event_loop_post(run->loop, count_post, t));
    if (!run_ok(run, rc))
        return;
    for (int i = 0; i < SHORT_FLOWS; i++) {
        Step *step = run_step(run, run_flow(run, "short"), "end", short_react);
        if (!step || !timer_start(run, step, 0, false, NULL))
            return;
    }
}

static bool timers_done(const TimerRun *t)
{
    return t->tick && t->tick->calls == TICKS && t->once->last == 1 &&
           t->burst->last == TIMER_BURST && t->posts == 1 && t->short_lived == SHORT_FLOWS;
}

static Verdict scenario_timers(Fault *fault, const void *options)
{
    (void)options;
    TimerRun t = {0};
    Run *run = &t.run;
    if (run_begin(run, fault))
        timers_start(&t);
    while (!run->stop && !timers_done(&t))
        run_iterate(run);
    if (!run->stop) {
        assert_int_equal(plex_finish(t.tick->flow->plex), 0);
        run->verdict.completed = true;
    }
    return run_end(run);
}

static void test_timer_life(void **state)
{
    (void)state;
    walk_modes("timer", scenario_timers, NULL, false, WALK_EVERY);
}

/* ---- Scenario: a connection's life ------------------------------------- */

#define CLIENT_WRITES 300 /* one-byte writes in one go: more write ops than a slab holds */
#define SESSIONS 2        /* the engine client's and the raw client's */
static const char raw_message[] = "a raw client says hello";

typedef struct Session {
    struct NetRun *net;
    Flow *flow;
    PlexConnection *conn;
    Step *read, *write, *close;
} Session;

typedef struct NetRun {
    Run run;
    Flow *server;
    PlexListener *listener;
    Step *accept;
    bool listener_closing;
    Session sessions[SESSIONS];
    int session_count;
    Flow *client;
    PlexConnection *conn;
    Step *read, *write, *close;
    size_t client_received;
    bool client_closing;
    int raw_fd;
    size_t raw_received;
    bool raw_eof;
} NetRun;

static Session *session_of(Step *step)
{
    NetRun *net = (NetRun *)step->run;
    for (int i = 0; i < net->session_count; i++)
        if (net->sessions[i].flow == step->flow)
            return &net->sessions[i];
    fail_msg("no session for a step");
    return NULL;
}

/* The peer went away before the scenario ended: the server dropped it. */
static bool peer_lost(int result)
{
    return result == PLEX_EEOF || result == -ECONNRESET || result == -EPIPE;
}

static void session_read(Run *run, Step *step, const PlexEvent *event)
{
    Session *session = session_of(step);
    if (event->result > 0) {
        STEP_START(session->write, plex_connection_write(session->conn, session->write->item,
                                                         event->data, event->length));
    } else if (event->result == PLEX_EEOF) {
        STEP_START(session->close, plex_connection_close(session->conn, session->close->item));
    } else if (event->result != -ENOMEM) {
        run_error(run, event->result);
    }
}

static void session_written(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    if (event->result < 0 && !run->stop)
        run_error(run, event->result);
}

static void session_closed(Run *run, Step *step, const PlexEvent *event)
{
    if (run_ok(run, event->result))
        assert_int_equal(plex_finish(step->flow->plex), 0);
}

static void session_open(NetRun *net, PlexConnection *conn)
{
    Run *run = &net->run;
    assert_true(net->session_count < SESSIONS);
    Flow *flow = run_flow(run, "session");
    Session *session = &net->sessions[net->session_count];
    *session = (Session){.net = net, .flow = flow, .conn = conn};
    if (flow)
        net->session_count++;
    session->read = run_step(run, flow, "read", session_read);
    session->write = run_step(run, flow, "write", session_written);
    session->close = run_step(run, flow, "close", session_closed);
    if (!session->close)
        return; /* the connection stays unattached: the adapter closes it */
    int rc;
    RUN_INT(run, rc, plex_connection_attach(conn, flow->plex));
    if (run_ok(run, rc))
        STEP_START(session->read, plex_connection_read(conn, session->read->item));
}

static void accept_react(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    NetRun *net = (NetRun *)run;
    if (event->result >= 0 && !run->stop)
        session_open(net, event->connection);
    else if (event->result < 0 && !(net->listener_closing && event->result == -ECANCELED))
        run_error(run, event->result);
}

static void client_read(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    NetRun *net = (NetRun *)run;
    if (event->result > 0) {
        assert_true(net->client_received + event->length <= CLIENT_WRITES);
        for (size_t i = 0; i < event->length; i++)
            assert_int_equal(((const unsigned char *)event->data)[i],
                             net_pattern(net->client_received + i));
        net->client_received += event->length;
        if (net->client_received == CLIENT_WRITES) {
            net->client_closing = true;
            STEP_START(net->close, plex_connection_close(net->conn, net->close->item));
        }
    } else if (peer_lost(event->result)) {
        run->verdict.dropped = true;
        run->stop = true;
    } else if (!(net->client_closing && event->result == -ECANCELED)) {
        run_error(run, event->result);
    }
}

static void client_written(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    if (event->result >= 0 || run->stop)
        return;
    if (peer_lost(event->result)) {
        run->verdict.dropped = true;
        run->stop = true;
        return;
    }
    run_error(run, event->result);
}

static void client_connected(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    NetRun *net = (NetRun *)run;
    if (!run_ok(run, event->result))
        return;
    STEP_START(net->read, plex_connection_read(net->conn, net->read->item));
    for (size_t i = 0; i < CLIENT_WRITES && !run->stop; i++) {
        unsigned char byte = net_pattern(i);
        STEP_START(net->write, plex_connection_write(net->conn, net->write->item, &byte, 1));
    }
}

static void client_closed(Run *run, Step *step, const PlexEvent *event)
{
    if (run_ok(run, event->result))
        assert_int_equal(plex_finish(step->flow->plex), 0);
}

static bool net_server_start(NetRun *net)
{
    Run *run = &net->run;
    net->server = run_flow(run, "server");
    if (!net->server)
        return false;
    RUN_PTR(run, net->listener, plex_listener_create(net->server->plex, "127.0.0.1", 0, NULL));
    net->accept = run_step(run, net->server, "accept", accept_react);
    if (!net->listener || !net->accept)
        return false;
    STEP_START(net->accept, plex_listener_accept(run->loop, net->listener, net->accept->item));
    return !run->stop;
}

static void net_client_start(NetRun *net)
{
    Run *run = &net->run;
    uint16_t port = (uint16_t)plex_listener_port(net->listener);
    net->client = run_flow(run, "client");
    if (!net->client)
        return;
    RUN_PTR(run, net->conn, plex_connection_create(net->client->plex, "127.0.0.1", port));
    Step *connect = run_step(run, net->client, "connect", client_connected);
    net->read = run_step(run, net->client, "read", client_read);
    net->write = run_step(run, net->client, "write", client_written);
    net->close = run_step(run, net->client, "close", client_closed);
    if (net->conn && net->close)
        STEP_START(connect,
                   plex_connection_connect(run->loop, net->conn, connect->item, 5000 * FAULT_MS));
}

/* Reads the echo of the raw client's message; half-closes once it is all
 * back, then waits for the server's close. */
static void raw_pump(NetRun *net)
{
    char buffer[64];
    if (net->raw_fd < 0 || net->raw_eof)
        return;
    ssize_t n = recv(net->raw_fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n > 0) {
        assert_true(net->raw_received + (size_t)n < sizeof(raw_message));
        assert_memory_equal(buffer, raw_message + net->raw_received, (size_t)n);
        net->raw_received += (size_t)n;
        if (net->raw_received == sizeof(raw_message) - 1)
            assert_int_equal(shutdown(net->raw_fd, SHUT_WR), 0);
        return;
    }
    net->raw_eof = true;
    if (n < 0 || net->raw_received < sizeof(raw_message) - 1) {
        net->run.verdict.dropped = true;
        net->run.stop = true;
    }
}

static bool net_done(const NetRun *net)
{
    int sessions_ended = 0;
    for (int i = 0; i < net->session_count; i++)
        sessions_ended += net->sessions[i].flow->ends;
    return sessions_ended == SESSIONS && net->client && net->client->ends == 1 && net->raw_eof;
}

static void net_finish(NetRun *net)
{
    Run *run = &net->run;
    net->listener_closing = true;
    assert_int_equal(plex_listener_close(net->listener), 0);
    while (!run->stop && net->accept->last == 0)
        run_iterate(run);
    if (run->stop)
        return;
    assert_int_equal(plex_finish(net->server->plex), 0);
    run->verdict.completed = true;
}

static Verdict scenario_connection(Fault *fault, const void *options)
{
    (void)options;
    NetRun net = {.raw_fd = -1};
    Run *run = &net.run;
    if (run_begin(run, fault) && net_server_start(&net)) {
        net.raw_fd = raw_connect((uint16_t)plex_listener_port(net.listener));
        ssize_t sent = send(net.raw_fd, raw_message, sizeof(raw_message) - 1, 0);
        assert_int_equal(sent, (ssize_t)sizeof(raw_message) - 1);
        net_client_start(&net);
    }
    while (!run->stop && !net_done(&net)) {
        raw_pump(&net);
        run_iterate(run);
    }
    if (!run->stop)
        net_finish(&net);
    Verdict verdict = run_end(run);
    if (net.raw_fd >= 0)
        close(net.raw_fd);
    return verdict;
}

static void test_connection_life(void **state)
{
    (void)state;
    walk_modes("connection", scenario_connection, NULL, true, WALK_EVERY);
}

/* ---- Scenario: a query's life ------------------------------------------ */

typedef struct PgOptions {
    const char *conninfo;
    bool pipeline;
} PgOptions;

typedef struct PgRun {
    Run run;
    const PgOptions *options;
    Flow *flow;
    PlexPostgres *pg;
    Step *early, *late, *close;
    char early_value[16];
    char late_value[16];
} PgRun;

static void query_value(const PlexEvent *event, char *value, size_t size)
{
    assert_non_null(event->pg_result);
    assert_int_equal(PQntuples(event->pg_result), 1);
    snprintf(value, size, "%s", PQgetvalue(event->pg_result, 0, 0));
}

static void pg_maybe_close(PgRun *p)
{
    if (p->early->last == 1 && p->late->last == 1)
        STEP_START(p->close, plex_postgres_close(p->pg, p->close->item));
}

static void early_react(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    PgRun *p = (PgRun *)run;
    if (!run_ok(run, event->result))
        return;
    query_value(event, p->early_value, sizeof(p->early_value));
    pg_maybe_close(p);
}

static void late_react(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    PgRun *p = (PgRun *)run;
    if (!run_ok(run, event->result))
        return;
    query_value(event, p->late_value, sizeof(p->late_value));
    pg_maybe_close(p);
}

static void pg_connected(Run *run, Step *step, const PlexEvent *event)
{
    (void)step;
    PgRun *p = (PgRun *)run;
    if (run_ok(run, event->result))
        STEP_START(p->late, plex_postgres_query(p->pg, p->late->item, "SELECT 'late'"));
}

static void pg_closed(Run *run, Step *step, const PlexEvent *event)
{
    if (run_ok(run, event->result))
        assert_int_equal(plex_finish(step->flow->plex), 0);
}

static void pg_start(PgRun *p)
{
    Run *run = &p->run;
    p->flow = run_flow(run, "query");
    if (!p->flow)
        return;
    RUN_PTR(run, p->pg, plex_postgres_create(p->flow->plex, p->options->conninfo));
    Step *connect = run_step(run, p->flow, "connect", pg_connected);
    p->early = run_step(run, p->flow, "early", early_react);
    p->late = run_step(run, p->flow, "late", late_react);
    p->close = run_step(run, p->flow, "close", pg_closed);
    if (!p->pg || !p->close ||
        !run_ok(run, plex_postgres_set_pipeline(p->pg, p->options->pipeline)))
        return;
    STEP_START(connect, plex_postgres_connect(run->loop, p->pg, connect->item, 10000 * FAULT_MS));
    if (run->stop)
        return;
    /* Queued while connecting: packed into its record, sent once connected. */
    const char *values[] = {"41"};
    PlexPostgresParams params = {.count = 1, .values = values};
    STEP_START(p->early,
               plex_postgres_query_params(p->pg, p->early->item, "SELECT $1::int + 1", &params));
}

static Verdict scenario_query(Fault *fault, const void *options)
{
    PgRun p = {.options = options};
    Run *run = &p.run;
    if (run_begin(run, fault))
        pg_start(&p);
    while (!run->stop && !(p.flow && p.flow->ends == 1))
        run_iterate(run);
    if (!run->stop) {
        assert_string_equal(p.early_value, "42");
        assert_string_equal(p.late_value, "late");
        run->verdict.completed = true;
    }
    return run_end(run);
}

static void test_query_life(void **state)
{
    (void)state;
    PgOptions options = {.conninfo = plex_test_pg_conninfo_or_skip()};
    walk_modes("query", scenario_query, &options, false, WALK_EVERY);
}

static void test_pipelined_query_life(void **state)
{
    (void)state;
    PgOptions options = {.conninfo = plex_test_pg_conninfo_or_skip(), .pipeline = true};
    /* Every completed run costs a server connection (SCRAM, a backend):
     * the retry and starvation walks are the plain query's. */
    walk_modes("pipelined query", scenario_query, &options, false, WALK_STOPPING);
}

/* ---- Scenario: queries through a pool ----------------------------------- */

#define POOL_QUERIES 4
#define POOL_BURST 70 /* on one step: past the first slab of request records */

typedef struct PoolRun {
    Run run;
    const PgOptions *options;
    Flow *flow;
    PlexPostgresPool *pool;
    Step *queries[POOL_QUERIES];
    Step *burst;
    int answered;
} PoolRun;

static void pool_answer(Run *run, Step *step, const PlexEvent *event)
{
    PoolRun *p = (PoolRun *)run;
    if (!run_ok(run, event->result))
        return;
    char value[16], expected[16] = "7";
    query_value(event, value, sizeof(value));
    for (int i = 0; i < POOL_QUERIES; i++)
        if (p->queries[i] == step)
            snprintf(expected, sizeof(expected), "%d", i);
    assert_string_equal(value, expected);
    /* Connected by now: the burst is sent at once (packing each query
     * while connecting would cost an allocation per query). */
    for (int i = 0; p->answered == 0 && i < POOL_BURST && !run->stop; i++)
        STEP_START(p->burst, plex_postgres_pool_query(p->pool, p->burst->item, "SELECT 7"));
    if (++p->answered < POOL_QUERIES + POOL_BURST)
        return;
    assert_int_equal(plex_postgres_pool_destroy(p->pool), 0);
    assert_int_equal(plex_finish(step->flow->plex), 0);
}

static void pool_start(PoolRun *p)
{
    Run *run = &p->run;
    p->flow = run_flow(run, "pool");
    for (int i = 0; i < POOL_QUERIES; i++)
        if (!(p->queries[i] = run_step(run, p->flow, "query", pool_answer)))
            return;
    if (!(p->burst = run_step(run, p->flow, "burst", pool_answer)))
        return;
    /* Short backoffs: a connection that could not start retries soon. */
    PlexPostgresPoolConfig config = {.connections = 1,
                                     .pipeline = p->options->pipeline,
                                     .backoff_min_ns = FAULT_MS,
                                     .backoff_max_ns = 4 * FAULT_MS};
    RUN_PTR(run, p->pool,
            plex_postgres_pool_create(p->flow->plex, run->loop, p->options->conninfo, &config));
    for (int i = 0; i < POOL_QUERIES && p->pool && !run->stop; i++) {
        char sql[32];
        snprintf(sql, sizeof(sql), "SELECT %d", i);
        STEP_START(p->queries[i], plex_postgres_pool_query(p->pool, p->queries[i]->item, sql));
    }
}

static Verdict scenario_pool(Fault *fault, const void *options)
{
    PoolRun p = {.options = options};
    Run *run = &p.run;
    if (run_begin(run, fault))
        pool_start(&p);
    while (!run->stop && !(p.flow && p.flow->ends == 1))
        run_iterate(run);
    if (!run->stop)
        run->verdict.completed = true;
    return run_end(run);
}

static void test_pool_life(void **state)
{
    (void)state;
    PgOptions options = {.conninfo = plex_test_pg_conninfo_or_skip(), .pipeline = true};
    walk_modes("pool", scenario_pool, &options, false, WALK_STOPPING | 0x8u);
}

/* ---- The operation pool exhausted --------------------------------------- */

/* A connection whose peer does not read, with write ops queued on it until
 * the loop's pool of operation records is exactly full and cannot grow:
 * from then on every allocation fails. Operations the engine starts on its
 * own (a timer's kernel timeout, a close) then find no record. */
typedef struct Filler {
    Pair pair;
    Count writes; /* the queued one-byte writes */
    int queued;
    size_t bytes; /* everything written */
} Filler;

#define FILL_BULK ((size_t)8 << 20) /* more than the socket buffers hold */

static void filler_fill(Filler *filler, PlexRegistry *registry, PlexEventLoop *loop, Fault *fault)
{
    pair_open(&filler->pair, registry, loop);
    PlexConnection *conn = filler->pair.conn;
    assert_int_equal(plex_connection_set_write_cap(conn, PLEX_CONNECTION_MAX_WRITE_CAP), 0);
    unsigned char *bulk = calloc(1, FILL_BULK);
    assert_non_null(bulk);
    assert_int_equal(plex_connection_write(conn, NULL, bulk, FILL_BULK), 0);
    free(bulk);
    filler->bytes = FILL_BULK;
    run_until_stalled(loop, conn);
    PlexItem *item = counted_item(filler->pair.flow, "fill", &filler->writes);
    /* One write first, so the output's last chunk has room for the rest. */
    assert_int_equal(plex_connection_write(conn, item, "x", 1), 0);
    filler->queued = 1;
    fault->mode = FAULT_PERSISTENT;
    fault->fail_at = fault->calls + 1;
    int rc;
    while ((rc = plex_connection_write(conn, item, "x", 1)) == 0)
        assert_true(++filler->queued < 100000);
    assert_int_equal(rc, -ENOMEM);
    /* Bytes alone still fit: what failed was the write's operation record. */
    assert_int_equal(plex_connection_write(conn, NULL, "y", 1), 0);
    filler->bytes += (size_t)filler->queued + 1;
}

/* Lets allocations succeed again and the peer read everything: every
 * queued write succeeds, once. */
static void filler_drain(Filler *filler, PlexEventLoop *loop, Fault *fault)
{
    fault->fail_at = 0;
    char *sink = malloc(1 << 16);
    assert_non_null(sink);
    size_t received = 0;
    while (received < filler->bytes) {
        size_t want = filler->bytes - received;
        size_t got =
            raw_read_running(loop, filler->pair.peer, sink, want < (1 << 16) ? want : (1 << 16));
        assert_true(got > 0);
        received += got;
    }
    free(sink);
    NET_RUN_UNTIL(loop, filler->writes.success == filler->queued);
    assert_int_equal(filler->writes.error, 0);
    close(filler->pair.peer);
}

static void on_timer(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    (void)event;
    *(uint64_t *)plex_item_user_data(item) = plex_now_ns();
}

/* A timer added while no record is left for the kernel timeout still fires
 * on time: the loop never sleeps past a timer it could not arm. */
static void test_timer_without_op_record(void **state)
{
    (void)state;
    Fault fault;
    fault_init(&fault, 0, FAULT_SINGLE);
    PlexRegistry *registry = plex_registry_create_with_allocator(&fault.allocator);
    PlexEventLoop *loop = plex_event_loop_create(registry);
    assert_non_null(loop);
    Plex *flow = plex_create(registry, "timer");
    uint64_t fired_ns = 0;
    PlexItem *item = plex_item_create(flow, "fire", on_timer, NULL, NULL, &fired_ns);
    PlexTimer *timer = plex_timer_create(flow, item, 5 * FAULT_MS, false);
    assert_non_null(timer);
    /* Added and cancelled once: the timer heap has its room. */
    assert_int_equal(plex_timer_add(loop, timer), 0);
    assert_int_equal(plex_timer_cancel(timer), 0);
    Filler filler = {0};
    filler_fill(&filler, registry, loop, &fault);
    long injected = fault.injected;
    uint64_t added_ns = plex_now_ns();
    assert_int_equal(plex_timer_add(loop, timer), 0);
    while (fired_ns == 0 && plex_now_ns() - added_ns < 3000 * FAULT_MS)
        assert_true(plex_event_loop_run_once(loop, 2000 * FAULT_MS) >= 0);
    assert_true(fired_ns != 0);
    assert_true(fault.injected > injected); /* the kernel timeout found no record */
    uint64_t late_ms = (fired_ns - added_ns) / FAULT_MS;
    if (late_ms > 1000) /* the loop would sleep 2000 ms */
        fail_msg("the timer fired after %" PRIu64 " ms, due after 5 ms", late_ms);
    filler_drain(&filler, loop, &fault);
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
    assert_int_equal(fault.live, 0);
}

/* ---- A pool connection lost while nothing can be allocated -------------- */

static void starve_loop(PlexEventLoop *loop, Fault *fault)
{
    Run run = {.fault = fault, .loop = loop};
    run_starve(&run);
}

static void pool_answered(Plex *plex, PlexItem *item, const PlexEvent *event)
{
    (void)plex;
    Count *count = plex_item_user_data(item);
    count_event(item, event, event->result >= 0);
    if (event->result == 1)
        snprintf(count->data, sizeof(count->data), "%s", PQgetvalue(event->pg_result, 0, 0));
}

/* The server ends the pool's only connection while no operation record is
 * left and nothing can be allocated, so its reconnect cannot be scheduled.
 * Once memory is back, the pool's next query brings it back: a transient
 * shortage does not cost a pool its connections for good. */
static void test_pool_reconnects_after_starvation(void **state)
{
    (void)state;
    const char *conninfo = plex_test_pg_conninfo_or_skip();
    Fault fault;
    fault_init(&fault, 0, FAULT_SINGLE);
    PlexRegistry *registry = plex_registry_create_with_allocator(&fault.allocator);
    PlexEventLoop *loop = plex_event_loop_create(registry);
    assert_non_null(loop);
    Plex *flow = plex_create(registry, "pool");
    PlexPostgresPoolConfig config = {
        .connections = 1, .backoff_min_ns = FAULT_MS, .backoff_max_ns = 4 * FAULT_MS};
    PlexPostgresPool *pool = plex_postgres_pool_create(flow, loop, conninfo, &config);
    assert_non_null(pool);
    NET_RUN_UNTIL(loop, plex_postgres_pool_connected(pool) == 1);
    PlexPostgres *pg = plex_postgres_pool_connection(pool, 0);
    int pid = PQbackendPID(plex_postgres_conn(pg));
    /* The connect's deadline timer, cancelled, comes back to the pool. */
    for (int i = 0; i < 5; i++)
        assert_true(plex_event_loop_run_once(loop, FAULT_MS) >= 0);
    starve_loop(loop, &fault);
    PGconn *side = PQconnectdb(conninfo);
    assert_int_equal(PQstatus(side), CONNECTION_OK);
    char sql[64];
    snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", pid);
    PGresult *result = PQexec(side, sql);
    assert_int_equal(PQresultStatus(result), PGRES_TUPLES_OK);
    PQclear(result);
    PQfinish(side);
    NET_RUN_UNTIL(loop, plex_postgres_is_broken(pg));
    /* Long enough for a scheduled reconnect (1 ms backoff) to have run. */
    for (int i = 0; i < 10; i++)
        assert_true(plex_event_loop_run_once(loop, 5 * FAULT_MS) >= 0);
    assert_true(plex_postgres_is_broken(pg)); /* the reconnect found no memory */
    fault.fail_at = 0;                        /* memory is back */
    Count answer = {0};
    PlexItem *item = plex_item_create(flow, "query", pool_answered, pool_answered, NULL, &answer);
    assert_non_null(item);
    assert_int_equal(plex_postgres_pool_query(pool, item, "SELECT 'back'"), 0);
    NET_RUN_UNTIL(loop, answer.last_calls == 1);
    assert_int_equal(answer.success, 1);
    assert_string_equal(answer.data, "back");
    plex_event_loop_destroy(loop);
    plex_registry_destroy(registry);
    assert_int_equal(fault.live, 0);
}

int main(void)
{
    fault_trace = getenv("FAULT_TRACE") != NULL;
    PLEX_TEST_TIMEOUT_GUARD(240);
    const struct CMUnitTest engine_tests[] = {
        cmocka_unit_test(test_timer_life),
        cmocka_unit_test(test_connection_life),
        cmocka_unit_test(test_timer_without_op_record),
    };
    /* The query tests skip (exit 77) without a server: run them last, once
     * the others have passed. */
    const struct CMUnitTest postgres_tests[] = {
        cmocka_unit_test(test_query_life),
        cmocka_unit_test(test_pipelined_query_life),
        cmocka_unit_test(test_pool_life),
        cmocka_unit_test(test_pool_reconnects_after_starvation),
    };
    int failures = cmocka_run_group_tests(engine_tests, NULL, NULL);
    if (failures)
        return failures;
    return cmocka_run_group_tests(postgres_tests, NULL, NULL);
}

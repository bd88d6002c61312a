#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# bench/pg/run.sh: `SELECT 1` queries per second through samplex (bench-pg)
# against pgbench, on one private PostgreSQL server, interleaved row by row.
#
#   bench/pg/run.sh            (from the repository root, after a build)
#
# Environment: BUILD_DIR (build), ROUNDS (3), WARMUP (1 s, bench-pg only:
# pgbench has none), DURATION (4 s), DEPTH (100), FLOWS (1000), POOL (8),
# QUIET_MAX (3 s: how long to wait for other work to stop before each
# measurement), OTHER_MAX (25: a measurement where other work took more
# than this % of the machine is repeated, twice at most), BUDGET (240 s: no
# repeats and no waiting for quiet after that; the whole run takes about
# 4 minutes on a quiet machine, under 6 on a busy one), OUT (bench/pg/results.md), PGBENCH
# (/usr/lib/postgresql/15/bin/pgbench), BENCH_COMMIT (what the report names
# as the build's commit; default HEAD).
#
# Rows: 1 connection; POOL connections (one query in flight per connection,
# the next sent when the previous one's result is in: pgbench's closed loop)
# driven by a thread per connection (pgbench -j POOL, bench-pg --threads
# POOL: a loop per thread) and by one thread (-j 1, one loop); the same
# pipelined at depth DEPTH; and FLOWS flows over a pipelined pool of POOL
# connections in one loop, compared with pgbench on POOL connections
# unpipelined with a thread each.
# pgbench runs `-n -M prepared -j T -c C -T DURATION` with select1.sql
# (`SELECT 1;`) or a pipeline script (\startpipeline, DEPTH x `SELECT 1;`,
# \endpipeline: queries = transactions x DEPTH).
#
# Nothing is pinned: the server, pgbench and bench-pg all float over every
# CPU, so the server competes with whichever client runs, the same way for
# both. Client CPU: bench-pg reads its own getrusage at the edges of its
# measured window; pgbench's comes from wait4() (whole process, all its
# threads) minus the fixed cost of starting up, connecting (SCRAM) and
# exiting, measured with `-t 1` runs. Server CPU: the postmaster's own and
# reaped children's time plus its live children's, from /proc, around each
# run. Nothing is built here. The server is stopped and removed on exit.
set -euo pipefail

BUILD_DIR=${BUILD_DIR:-build}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
DURATION=${DURATION:-4}
DEPTH=${DEPTH:-100}
FLOWS=${FLOWS:-1000}
POOL=${POOL:-8}
QUIET_MAX=${QUIET_MAX:-3}
OTHER_MAX=${OTHER_MAX:-25}
BUDGET=${BUDGET:-240}
OUT=${OUT:-bench/pg/results.md}
PGBENCH=${PGBENCH:-/usr/lib/postgresql/15/bin/pgbench}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_PG=$BUILD_DIR/bin/bench-pg
[[ -x $BENCH_PG ]] || { echo "missing $BENCH_PG (build the bench-pg target)" >&2; exit 1; }
[[ -x $PGBENCH ]] || { echo "missing $PGBENCH (install postgresql)" >&2; exit 1; }

WORK=$(mktemp -d)
PG_DIR=$(mktemp -d /tmp/samplex-pgbench.XXXXXX)
RAW=$WORK/raw.txt
cleanup() {
    bash "$ROOT/scripts/pg.sh" stop "$PG_DIR" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR" "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$ROOT/scripts/pg.sh" start "$PG_DIR"
eval "$(bash "$ROOT/scripts/pg.sh" env "$PG_DIR")"
POSTMASTER=$(head -n 1 "$PG_DIR/data/postmaster.pid")
NCPU=$(nproc)

printf 'SELECT 1;\n' >"$WORK/select1.sql"
{
    printf '%s\n' '\startpipeline'
    for _ in $(seq "$DEPTH"); do echo 'SELECT 1;'; done
    printf '%s\n' '\endpipeline'
} >"$WORK/pipeline.sql"

# ---- Measuring ---------------------------------------------------------------

# Runs a command; after it exits prints "client_cpu_s=... wall_s=...
# status=..." (its rusage from wait4: user + system, every thread).
run_timed() {
    python3 -c '
import os, sys, time
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"client_cpu_s={usage.ru_utime + usage.ru_stime:.4f} wall_s={time.monotonic() - start:.3f}"
      f" status={os.waitstatus_to_exitcode(status)}")' "$@"
}

# CPU ticks (USER_HZ) in user, nice and system mode over every CPU.
busy_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat
}

# The server's CPU ticks so far: the postmaster's own and its reaped
# children's, plus its live children's.
server_ticks() {
    {
        awk '{ print $14 + $15 + $16 + $17 }' "/proc/$POSTMASTER/stat"
        for child in $(pgrep -P "$POSTMASTER"); do
            awk '{ print $14 + $15 }' "/proc/$child/stat" 2>/dev/null || true
        done
    } | awk '{ sum += $1 } END { print sum }'
}

server_children() { pgrep -c -P "$POSTMASTER" || true; }

# Waits (2 s at most) until the backends of the last run have exited and
# been reaped, so that server_ticks counts them once.
wait_backends_gone() {
    for _ in $(seq 40); do
        (($(server_children) <= BASE_CHILDREN)) && return 0
        sleep 0.05
    done
}

# Waits (QUIET_MAX seconds at most, none once past BUDGET) until the
# machine is under 15 % busy for a quarter second.
wait_for_quiet() {
    local deadline=$((SECONDS + QUIET_MAX)) before after
    ((SECONDS < BUDGET)) || deadline=$SECONDS
    while :; do
        before=$(busy_ticks)
        sleep 0.25
        after=$(busy_ticks)
        ((after - before <= 25 * NCPU * 15 / 100)) && return 0
        if ((SECONDS >= deadline)); then
            echo "note: the machine is busy with other work; measuring anyway" >&2
            return 0
        fi
    done
}

# Runs the command in the arguments once, quiet gate first; sets OUTPUT
# (its stdout plus run_timed's line) and SERVER_S, OTHER_PCT.
measure_once() {
    local busy_before busy_after server_before server_after wall client
    wait_for_quiet
    busy_before=$(busy_ticks)
    server_before=$(server_ticks)
    OUTPUT=$(run_timed timeout 120 "$@" 2>&1) || true
    wait_backends_gone
    server_after=$(server_ticks)
    busy_after=$(busy_ticks)
    [[ $OUTPUT =~ wall_s=([0-9.]+) ]] && wall=${BASH_REMATCH[1]}
    [[ $OUTPUT =~ client_cpu_s=([0-9.]+) ]] && client=${BASH_REMATCH[1]}
    SERVER_S=$(awk -v t=$((server_after - server_before)) 'BEGIN { printf "%.3f", t / 100 }')
    OTHER_PCT=$(awk -v busy=$((busy_after - busy_before)) -v server=$((server_after - server_before)) \
        -v client="$client" -v wall="$wall" -v n="$NCPU" \
        'BEGIN { o = (busy - server) / 100 - client; if (o < 0) o = 0;
                 printf "%.0f", 100 * o / (wall * n) }')
}

# The last value of key $1 in OUTPUT.
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$OUTPUT" | tail -n 1; }

# pgbench's fixed client cost (start, connect, exit) for $1 connections,
# $2 threads and script $3: the least CPU of three `-t 1` runs. Sets FIXED_S.
pgbench_fixed() {
    local best=
    for _ in 1 2 3; do
        OUTPUT=$(run_timed "$PGBENCH" -n -M prepared -f "$3" -c "$1" -j "$2" -t 1 2>&1)
        local cpu
        cpu=$(field client_cpu_s)
        if [[ -z $best ]] || awk -v a="$cpu" -v b="$best" 'BEGIN { exit !(a < b) }'; then
            best=$cpu
        fi
    done
    FIXED_S=$best
}

# Appends one raw line for pgbench on $1 connections with script $2 ($3
# queries per transaction) from OUTPUT.
pgbench_line() {
    local transactions tps fixed=$4 line
    transactions=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$OUTPUT")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$OUTPUT")
    if [[ -z $transactions || -z $tps || $(field status) != 0 ]] ||
        grep -q '^number of failed transactions: [1-9]' <<<"$OUTPUT"; then
        echo "pgbench failed: $OUTPUT" >&2
        exit 1
    fi
    line=$(awk -v n="$transactions" -v q="$3" -v tps="$tps" -v cpu="$(field client_cpu_s)" \
        -v fixed="$fixed" -v c="$1" -v server="$SERVER_S" 'BEGIN {
            queries = n * q
            printf "qps=%.0f queries=%d client_us_per_query=%.3f server_us_per_query=%.3f",
                tps * q, queries, (cpu - fixed) * 1e6 / (queries - c * q), server * 1e6 / queries }')
    echo "$line client_cpu_s=$(field client_cpu_s) fixed_cpu_s=$fixed"
}

samplex_line() {
    local queries
    queries=$(field queries)
    if [[ -z $queries || $(field status) != 0 ]]; then
        echo "bench-pg failed: $OUTPUT" >&2
        exit 1
    fi
    awk -v q="$queries" -v qps="$(field qps)" -v cpu="$(field cpu_us_per_query)" \
        -v total="$(field total_queries)" -v server="$SERVER_S" 'BEGIN {
        printf "qps=%s queries=%s client_us_per_query=%s server_us_per_query=%.3f", qps, q, cpu,
            server * 1e6 / total }'
    echo " queries_per_iteration=$(field queries_per_iteration)"
}

# measure ROUND ROW TOOL ARGS...: measures, repeats a disturbed window
# (twice at most, within BUDGET), keeps the least disturbed, appends to RAW.
measure() {
    local round=$1 row=$2 tool=$3 retried=0 best best_other best_server
    shift 3
    measure_once "$@"
    best=$OUTPUT best_other=$OTHER_PCT best_server=$SERVER_S
    while ((best_other > OTHER_MAX && retried < 2 && SECONDS < BUDGET)); do
        measure_once "$@"
        retried=$((retried + 1))
        if ((OTHER_PCT < best_other)); then
            best=$OUTPUT best_other=$OTHER_PCT best_server=$SERVER_S
        fi
    done
    OUTPUT=$best SERVER_S=$best_server
    MEASURED="round=$round row=$row tool=$tool other_pct=$best_other retried=$retried load1=$(cut -d' ' -f1 /proc/loadavg)"
}

# ---- The rows ------------------------------------------------------------------

# ROW_THREADS: pgbench's -j, and bench-pg's --threads (loops) where the
# row compares like with like; the pool row runs one loop against pgbench's
# best unpipelined configuration.
ROW_NAMES=(
    "1 connection"
    "$POOL connections, a thread per connection"
    "$POOL connections, one thread"
    "1 connection, pipelined (depth $DEPTH)"
    "$POOL connections, pipelined (depth $DEPTH), a thread per connection"
    "$POOL connections, pipelined (depth $DEPTH), one thread"
    "$FLOWS flows over $POOL pooled connections, one thread"
)
ROW_CONNECTIONS=(1 "$POOL" "$POOL" 1 "$POOL" "$POOL" "$POOL")
ROW_THREADS=(1 "$POOL" 1 1 "$POOL" 1 "$POOL")
ROW_SCRIPT=(select1 select1 select1 pipeline pipeline pipeline select1)
ROW_SAMPLEX=(
    "--connections 1"
    "--connections $POOL --threads $POOL"
    "--connections $POOL"
    "--connections 1 --pipeline $DEPTH"
    "--connections $POOL --pipeline $DEPTH --threads $POOL"
    "--connections $POOL --pipeline $DEPTH"
    "--connections $POOL --pool-flows $FLOWS"
)

wait_for_quiet
sleep 0.5
BASE_CHILDREN=$(server_children)
declare -A FIXED
for row in "${!ROW_NAMES[@]}"; do
    key=${ROW_CONNECTIONS[$row]},${ROW_THREADS[$row]},${ROW_SCRIPT[$row]}
    [[ -z ${FIXED[$key]:-} ]] || continue
    pgbench_fixed "${ROW_CONNECTIONS[$row]}" "${ROW_THREADS[$row]}" "$WORK/${ROW_SCRIPT[$row]}.sql"
    FIXED[$key]=$FIXED_S
    wait_backends_gone
done
echo "pgbench fixed cost in s (connections,threads,script=s): $(for k in "${!FIXED[@]}"; do printf '%s=%s ' "$k" "${FIXED[$k]}"; done)" |
    tee "$WORK/fixed.txt"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
started_at=$SECONDS
for round in $(seq "$ROUNDS"); do
    for row in "${!ROW_NAMES[@]}"; do
        connections=${ROW_CONNECTIONS[$row]}
        script=${ROW_SCRIPT[$row]}
        per_transaction=1
        [[ $script == pipeline ]] && per_transaction=$DEPTH
        tools=(pgbench samplex)
        ((round % 2 == 0)) && tools=(samplex pgbench)
        for tool in "${tools[@]}"; do
            if [[ $tool == pgbench ]]; then
                measure "$round" "$row" pgbench "$PGBENCH" -n -M prepared -f "$WORK/$script.sql" \
                    -c "$connections" -j "${ROW_THREADS[$row]}" -T "$DURATION"
                line=$(pgbench_line "$connections" "$script" "$per_transaction" \
                    "${FIXED[$connections,${ROW_THREADS[$row]},$script]}")
            else
                # shellcheck disable=SC2086 # the row's arguments split on purpose
                measure "$round" "$row" samplex "$BENCH_PG" ${ROW_SAMPLEX[$row]} \
                    --warmup "$WARMUP" --duration "$DURATION"
                line=$(samplex_line)
            fi
            echo "$MEASURED $line" | tee -a "$RAW"
        done
    done
done
elapsed=$((SECONDS - started_at))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

names=$(printf '%s\n' "${ROW_NAMES[@]}")
ELAPSED=$elapsed LOAD_BEFORE=$LOAD_BEFORE LOAD_AFTER=$LOAD_AFTER ROW_NAMES=$names DEPTH=$DEPTH \
    FLOWS=$FLOWS POOL=$POOL DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS OTHER_MAX=$OTHER_MAX \
    QUIET_MAX=$QUIET_MAX BUDGET=$BUDGET \
    FIXED="$(cat "$WORK/fixed.txt")" \
    python3 "$ROOT/bench/pg/report.py" "$RAW" >"$OUT"
cat "$OUT"

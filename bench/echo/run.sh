#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# bench/echo/run.sh: samplex-echo against a libuv and a plain epoll echo
# server, driven by the same load generator, interleaved case by case.
#
#   bench/echo/run.sh            (from the repository root, after a build)
#
# Environment: BUILD_DIR (build), ROUNDS (3), WARMUP (1 s), DURATION (3 s),
# CONNECTIONS ("1 50 1000 10000"), SIZES ("64 4096"), IDLE (10000 idle
# connections for the memory figure), QUIET_MAX (3 s: how long to wait for
# other work on CPUs 0-1 to stop before each measurement), BUDGET (540 s:
# waits for quiet and re-runs of disturbed windows only while the rest of
# the run still fits in it), PERF (0; 1 also
# profiles samplex-echo under 50 connections of 64 B), OUT (bench/echo: results.md,
# cpu_per_message.png, raw.txt, perf_samplex.txt), BENCH_COMMIT (what the
# report names as the build's commit; default: HEAD, marked if the engine's
# sources differ).
#
# Every server runs pinned to CPU 0, the generator to CPU 1, all on
# 127.0.0.1. Each measurement gets a fresh server. The generator reads the
# server's /proc/PID/stat itself at the edges of its measured window (see
# loadgen.c), so CPU time and message counts cover the same interval.
# Nothing is built here. Everything started is killed on exit.
set -euo pipefail

BUILD_DIR=${BUILD_DIR:-build}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
DURATION=${DURATION:-3}
CONNECTIONS=${CONNECTIONS:-"1 50 1000 10000"}
SIZES=${SIZES:-"64 4096"}
IDLE=${IDLE:-10000}
PERF=${PERF:-0}
QUIET_MAX=${QUIET_MAX:-3}
BUDGET=${BUDGET:-540}
OUT=${OUT:-bench/echo}
SERVERS="samplex libuv epoll"

BIN=$BUILD_DIR/bin
LOADGEN=$BIN/bench-loadgen
WORK=$(mktemp -d)
RAW=$WORK/raw.txt
STARTED=()

cleanup() {
    for pid in "${STARTED[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_binary() {
    case $1 in
    samplex) echo "$BIN/samplex-echo" ;;
    libuv) echo "$BIN/bench-uv-echo" ;;
    epoll) echo "$BIN/bench-epoll-echo" ;;
    esac
}

for name in $SERVERS; do
    [[ -x $(server_binary "$name") ]] || { echo "missing $(server_binary "$name")" >&2; exit 1; }
done
[[ -x $LOADGEN ]] || { echo "missing $LOADGEN" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

# Starts server $1 on CPU 0 and port 0; sets SERVER_PID and SERVER_PORT.
start_server() {
    local log=$WORK/server.out
    : >"$log"
    taskset -c 0 "$(server_binary "$1")" --port 0 --host 127.0.0.1 >"$log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    for _ in $(seq 100); do
        SERVER_PORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\)$/\1/p' "$log")
        [[ -n $SERVER_PORT ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "$1 did not start: $(cat "$log")" >&2
    exit 1
}

# SIGTERM, then up to 3 s for a clean exit; sets SERVER_EXIT to the status
# (or "killed").
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_EXIT=killed
    else
        SERVER_EXIT=0
        wait "$SERVER_PID" || SERVER_EXIT=$?
    fi
}

# Busy ticks (USER_HZ) of CPUs 0 and 1, every process.
busy_ticks() {
    awk '/^cpu[01] / { busy += $2 + $3 + $4 + $7 + $8 + $9 } END { print busy }' /proc/stat
}

# Seconds of BUDGET left once the measurements not yet made are paid for.
spare_seconds() {
    echo $((BUDGET - SECONDS - (MEASUREMENTS - MEASURED) * SECONDS_PER_MEASUREMENT))
}

# Waits (QUIET_MAX seconds at most, and only from spare time) until CPUs 0-1
# are under 15 % busy for a quarter second, so another job on the machine
# skews fewer measurements.
wait_for_quiet() {
    local most=$QUIET_MAX before after
    (($(spare_seconds) < most)) && most=$(spare_seconds)
    local deadline=$((SECONDS + most))
    while :; do
        before=$(busy_ticks)
        sleep 0.25
        after=$(busy_ticks)
        ((after - before <= 7)) && return 0
        if ((SECONDS >= deadline)); then
            echo "note: CPUs 0-1 busy with other work; measuring anyway" >&2
            return 0
        fi
    done
}

# One run of the generator against a fresh server $1; sets LINE.
measure_once() {
    local name=$1
    shift
    wait_for_quiet
    start_server "$name"
    LINE=$(timeout 120 taskset -c 1 "$LOADGEN" --port "$SERVER_PORT" --server-pid "$SERVER_PID" \
        "$@" | tail -n 1) || true
    [[ -n $LINE ]] || LINE="failed $*"
    stop_server
    LINE="$LINE exit=$SERVER_EXIT"
}

# Other work's share of CPUs 0-1 in the window of LINE, in percent (0 if
# the line does not say).
other_cpu() {
    [[ $LINE =~ other_cpu_pct=([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

# Measures server $1 in round $2 (the generator's arguments follow) and adds
# the line to RAW. A load window where other work took over 25 % of CPUs
# 0-1 is measured again (twice at most, and only from spare time); the
# least disturbed window is kept.
measure() {
    local name=$1 round=$2 retried=0 best best_other
    shift 2
    measure_once "$name" "$@"
    best=$LINE best_other=$(other_cpu)
    MEASURED=$((MEASURED + 1))
    while ((best_other > 25 && retried < 2 && $(spare_seconds) > SECONDS_PER_MEASUREMENT)); do
        measure_once "$name" "$@"
        retried=$((retried + 1))
        if (($(other_cpu) < best_other)); then
            best=$LINE best_other=$(other_cpu)
        fi
    done
    echo "round=$round server=$name $best retried=$retried" | tee -a "$RAW"
}

MEASUREMENTS=$((ROUNDS * ($(wc -w <<<"$CONNECTIONS") * $(wc -w <<<"$SIZES") + 1) * 3))
MEASURED=0
# A load window, its warm-up, and about a second of set-up and tear-down.
SECONDS_PER_MEASUREMENT=$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { print int(w + d + 1.99) }')
SECONDS=0
started_at=$(date +%s)
for round in $(seq "$ROUNDS"); do
    for connections in $CONNECTIONS; do
        for size in $SIZES; do
            for name in $SERVERS; do
                measure "$name" "$round" --connections "$connections" --size "$size" \
                    --warmup "$WARMUP" --duration "$DURATION"
            done
        done
    done
    for name in $SERVERS; do
        measure "$name" "$round" --idle --connections "$IDLE" --size 64
    done
done
elapsed=$(($(date +%s) - started_at))

if [[ $PERF == 1 ]]; then
    start_server samplex
    taskset -c 1 "$LOADGEN" --port "$SERVER_PORT" --connections 50 --size 64 --warmup 1 \
        --duration 5 >/dev/null &
    STARTED+=("$!")
    sleep 1.5
    perf record -q -g -o "$WORK/perf.data" -p "$SERVER_PID" -- sleep 4 >/dev/null 2>&1
    wait "$!" || true
    stop_server
    perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
        grep -E "^ +[0-9.]+%" | sed -n 1,15p >"$OUT/perf_samplex.txt"
fi

cp "$RAW" "$OUT/raw.txt"
python3 "$(dirname "$0")/report.py" "$RAW" "$WORK/chart.dat" "$elapsed" >"$OUT/results.md"
gnuplot -e "data='$WORK/chart.dat'; output='$OUT/cpu_per_message.png'" \
    "$(dirname "$0")/chart.gnuplot" 2>/dev/null || echo "note: gnuplot could not draw every panel" >&2
cat "$OUT/results.md"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-echo, samplex-timers and samplex-postgres under valgrind memcheck (--leak-check=full,
# definite leaks are errors): each starts, serves, and shuts down, and must
# exit 0 with no memory error and "definitely lost: 0 bytes" (or no leak at
# all). samplex-mud has its own (test_mud_valgrind).
#
#   echo     on port 0: clients echo 1 B .. 256 KiB, one half-closes, two stay
#            connected; SIGTERM; exit 0.
#   timers   runs its ticks to the end (its flow finishes); exit 0. Then a
#            long run stopped by SIGTERM mid-tick; exit 0.
#   postgres connect -> query -> process against scripts/test.sh's server
#            (prints 1 + 1 = 2, exit 0), and against a refused port (exit
#            1). Needs PGHOST: skipped without it, a failure under CI=true.
#
# Notes on valgrind 3.19 (Debian 12):
# - It runs one thread at a time and treats io_uring_enter as a call that
#   does not block, so a second loop thread would wait forever behind a loop
#   sleeping in the kernel: samplex-echo runs with one thread here.
# - It delivers a signal only once the program runs code again; an idle loop
#   sleeps in io_uring_enter, so after SIGTERM the test keeps a client
#   echoing until the server exits. (samplex-timers ticks by itself.)
# - It cannot read clang's DWARF 5, and does not mix with sanitizers: the
#   test skips for sanitizer builds and when valgrind cannot run the binary.
set -euo pipefail

bin_dir=${SAMPLEX_BIN_DIR:?SAMPLEX_BIN_DIR is not set}
echo_bin=$bin_dir/samplex-echo
timers_bin=$bin_dir/samplex-timers
postgres_bin=$bin_dir/samplex-postgres
[[ -x $echo_bin && -x $timers_bin && -x $postgres_bin ]] || { echo "SKIP: examples not built"; exit 77; }
command -v valgrind >/dev/null || { echo "SKIP: valgrind is not installed"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
if grep -Eq '^SAMPLEX_SANITIZE:[A-Z]+=.+' "${SAMPLEX_BUILD_DIR:-/nonexistent}/CMakeCache.txt" 2>/dev/null; then
    echo "SKIP: a sanitizer build: valgrind runs on the plain build"
    exit 77
fi
for binary in "$echo_bin" "$timers_bin"; do
    status=0
    probe=$(valgrind --error-exitcode=99 "$binary" --bad-option x 2>&1) || status=$?
    if ((status != 2)); then # both examples exit 2 for a bad option
        echo "SKIP: valgrind cannot run $(basename "$binary") here: $(tail -n 1 <<<"$probe")"
        exit 77
    fi
done

# shellcheck source=tests/echo_server.sh
source "$(dirname "${BASH_SOURCE[0]}")/echo_server.sh"

valgrind=(valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99)

# check_report NAME LOG: no error, nothing definitely lost.
check_report() {
    local name=$1 log=$2
    grep -q 'ERROR SUMMARY: 0 errors' "$log" || { cat "$log"; echo "FAIL: $name: memory errors"; exit 1; }
    if ! grep -q 'definitely lost: 0 bytes' "$log" && ! grep -q 'no leaks are possible' "$log"; then
        cat "$log"
        echo "FAIL: $name: memory definitely lost"
        exit 1
    fi
    echo "ok: $name: 0 errors, $(grep -oE '(definitely lost: 0 bytes|no leaks are possible)' "$log" | head -n 1)"
}

# wait_exit PID SECONDS: its exit status, or fails after SECONDS.
wait_exit() {
    local pid=$1 seconds=$2 status=0
    timeout "$seconds" tail --pid="$pid" -f /dev/null || { echo "FAIL: still running after $seconds s"; exit 1; }
    wait "$pid" || status=$?
    return "$status"
}

echo_case() {
    echo_start "$work/echo.out" "$work/echo.err" 600 "${valgrind[@]}" --log-file="$work/echo.vg" \
        "$echo_bin" --port 0 --host 127.0.0.1

    python3 - "$port" "$server_pid" <<'PY'
import os, signal, socket, sys, threading, time

port, pid = int(sys.argv[1]), int(sys.argv[2])

def echo(sock, data):
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("early end of stream")
        got += chunk
    sender.join()
    if bytes(got) != data:
        raise RuntimeError(f"echo mismatch at {len(data)} bytes")

with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    for size in (1, 100, 4096, 65536, 262144):
        echo(s, os.urandom(size))
with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    s.sendall(b"half-closed")
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
    if bytes(got) != b"half-closed":
        raise RuntimeError(f"half-close echo {bytes(got)!r}")
idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(2)]
for s in idle:
    echo(s, b"still here")

def alive():
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False

os.kill(pid, signal.SIGTERM)
deadline = time.monotonic() + 60
while alive() and time.monotonic() < deadline:
    try:  # run code in the server so valgrind delivers the signal
        with socket.create_connection(("127.0.0.1", port), timeout=5) as poke:
            poke.sendall(b"poke")
            poke.recv(4)
    except OSError:
        time.sleep(0.01)
for s in idle:  # closed by the server on its way out
    try:
        if s.recv(1) != b"":
            raise RuntimeError("a connected client got data after SIGTERM")
    except ConnectionResetError:
        pass
print("echoed 1 B .. 256 KiB, a half-close, two clients connected at SIGTERM")
PY
    local status=0
    wait_exit "$server_pid" 60 || status=$?
    server_pid=
    ((status == 0)) || { cat "$work/echo.err" "$work/echo.vg"; echo "FAIL: samplex-echo exit status $status"; exit 1; }
    check_report samplex-echo "$work/echo.vg"
}

timers_case() {
    local status=0
    "${valgrind[@]}" --log-file="$work/timers.vg" "$timers_bin" --ticks 20 --interval-ms 10 \
        >"$work/timers.out" 2>&1 || status=$?
    ((status == 0)) || { cat "$work/timers.out" "$work/timers.vg"; echo "FAIL: samplex-timers exit status $status"; exit 1; }
    grep -q "flow 'world' ended (success)" "$work/timers.out" || { cat "$work/timers.out"; echo "FAIL: the world flow did not finish"; exit 1; }
    [[ $(grep -c '^cleanup: ' "$work/timers.out") == 4 ]] || { cat "$work/timers.out"; echo "FAIL: not one cleanup per step"; exit 1; }
    check_report "samplex-timers (20 ticks)" "$work/timers.vg"

    # Stopped by SIGTERM in the middle: stdout line-buffered (stdbuf) so
    # the test sees the ticks, and the signal handler is in place by then.
    stdbuf -oL "${valgrind[@]}" --log-file="$work/stopped.vg" "$timers_bin" --ticks 1000000 \
        --interval-ms 5 >"$work/stopped.out" 2>&1 &
    server_pid=$!
    for _ in $(seq 600); do
        grep -q '^tick 3 ' "$work/stopped.out" && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/stopped.out"; echo "FAIL: timers exited early"; exit 1; }
        sleep 0.05
    done
    grep -q '^tick 3 ' "$work/stopped.out" || { echo "FAIL: samplex-timers did not tick"; exit 1; }
    kill -TERM "$server_pid"
    status=0
    wait_exit "$server_pid" 60 || status=$?
    server_pid=
    ((status == 0)) || { cat "$work/stopped.out" "$work/stopped.vg"; echo "FAIL: samplex-timers exit status $status after SIGTERM"; exit 1; }
    grep -q "flow 'world' ended" "$work/stopped.out" || { echo "FAIL: the world flow did not end"; exit 1; }
    check_report "samplex-timers (SIGTERM)" "$work/stopped.vg"
}

postgres_case() {
    if [[ -z ${PGHOST:-} ]]; then
        [[ ${CI:-} == true ]] && { echo "FAIL: CI=true but no PostgreSQL (PGHOST unset)"; exit 1; }
        echo "skipped: samplex-postgres needs PostgreSQL (run scripts/test.sh)"
        return 0
    fi
    local status=0
    "${valgrind[@]}" --log-file="$work/postgres.vg" "$postgres_bin" >"$work/postgres.out" 2>&1 || status=$?
    ((status == 0)) || { cat "$work/postgres.out" "$work/postgres.vg"; echo "FAIL: samplex-postgres exit status $status"; exit 1; }
    [[ $(cat "$work/postgres.out") == "1 + 1 = 2" ]] || { cat "$work/postgres.out"; echo "FAIL: samplex-postgres output"; exit 1; }
    check_report "samplex-postgres (1 + 1 = 2)" "$work/postgres.vg"

    status=0
    "${valgrind[@]}" --log-file="$work/refused.vg" "$postgres_bin" "host=127.0.0.1 port=1" \
        >"$work/refused.out" 2>&1 || status=$?
    ((status == 1)) || { cat "$work/refused.out" "$work/refused.vg"; echo "FAIL: samplex-postgres (refused) exit status $status"; exit 1; }
    check_report "samplex-postgres (refused)" "$work/refused.vg"
}

echo_case
timers_case
postgres_case
echo PASS

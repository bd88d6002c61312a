# SPDX-License-Identifier: Apache-2.0
# Sourced by the script tests that run samplex-echo: a scratch directory
# $work, removed on exit (with the server killed if it still runs), and
# echo_start.

work=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill -KILL "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# echo_start OUT ERR TRIES COMMAND...: runs COMMAND in the background
# (server_pid), stdout to OUT and stderr to ERR, and waits TRIES x 50 ms at
# most for its "listening on 127.0.0.1:PORT" line; sets port. Fails the
# test if the server exits first or never says it.
echo_start() {
    local out=$1 err=$2 tries=$3
    shift 3
    "$@" >"$out" 2>"$err" &
    server_pid=$!
    port=
    for _ in $(seq "$tries"); do
        port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]\+\)$/\1/p' "$out")
        [[ -n $port ]] && return 0
        kill -0 "$server_pid" 2>/dev/null || { cat "$err"; echo "FAIL: the server exited early"; exit 1; }
        sleep 0.05
    done
    echo "FAIL: no 'listening on' line from the server"
    exit 1
}

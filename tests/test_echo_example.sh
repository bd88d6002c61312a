#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-echo end to end: start it on port 0, read the port from its
# "listening on ADDR:PORT" line, echo through it from several clients at
# once (small and 1 MiB messages, a half-close), then SIGTERM with clients
# still connected: it must close them and exit 0 within 2 s. Once with one
# thread, once with two (SO_REUSEPORT).
set -euo pipefail

bin_dir=${SAMPLEX_BIN_DIR:?SAMPLEX_BIN_DIR is not set}
echo_bin=$bin_dir/samplex-echo
[[ -x $echo_bin ]] || { echo "SKIP: $echo_bin not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }

# shellcheck source=tests/echo_server.sh
source "$(dirname "${BASH_SOURCE[0]}")/echo_server.sh"

run_case() {
    local threads=$1
    echo_start "$work/out" "$work/err" 100 "$echo_bin" --port 0 --host 127.0.0.1 --threads "$threads"

    python3 - "$port" "$server_pid" <<'PY'
import os, signal, socket, sys, threading, time

port = int(sys.argv[1])
failures = []

def client(index):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            for size in (1, 64, 4096, 1 << 20):
                data = os.urandom(size)
                sender = threading.Thread(target=s.sendall, args=(data,))
                sender.start()
                got = bytearray()
                while len(got) < size:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("early end of stream")
                    got += chunk
                sender.join()
                if bytes(got) != data:
                    raise RuntimeError(f"mismatch at size {size}")
            # Half-close: the echo of the last bytes still comes, then EOF.
            s.sendall(b"last words")
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            if bytes(got) != b"last words":
                raise RuntimeError(f"half-close echo {bytes(got)!r}")
    except Exception as error:  # noqa: BLE001 - report any failure
        failures.append(f"client {index}: {error}")

threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
# Clients still connected at SIGTERM: the server must close them.
idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
for s in idle:
    s.sendall(b"x")
    if s.recv(1) != b"x":
        failures.append("idle client not echoed")
signalled = time.monotonic()
os.kill(int(sys.argv[2]), signal.SIGTERM)
for s in idle:
    try:
        if s.recv(1) != b"":
            failures.append("idle client got data after SIGTERM")
    except ConnectionResetError:
        pass
    except socket.timeout:
        failures.append("idle client not closed after SIGTERM")
if time.monotonic() - signalled > 2:
    failures.append("clients closed more than 2 s after SIGTERM")
if failures:
    print("\n".join(failures))
    sys.exit(1)
PY

    local start=$SECONDS
    local status=0
    timeout 2 tail --pid="$server_pid" -f /dev/null || { echo "FAIL: still running 2 s after SIGTERM"; exit 1; }
    wait "$server_pid" || status=$?
    server_pid=
    [[ $status -eq 0 ]] || { cat "$work/err"; echo "FAIL: exit status $status"; exit 1; }
    echo "threads=$threads: echoed, exited 0 in $((SECONDS - start)) s"
}

run_case 1
run_case 2
echo PASS

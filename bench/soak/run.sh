#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The soak: samplex-echo, samplex-mud and bench-soak-pg under mixed load
# (echo clients, MUD bots, queries) for 10 minutes, their resident memory
# sampled every 10 s; memory must flatten, not climb (bench/soak/soak.py
# says how that is judged). Not part of the tests (too long).
#
#   bench/soak/run.sh [--minutes N | --seconds N] [--build DIR | --bin-dir DIR]
#                     [--out FILE]
#
#   --minutes N   how long (default 10)
#   --seconds N   the same in seconds, for a quick try (at least 60 to judge)
#   --build DIR   the build directory to use (default build); the targets it
#                 needs are built there first
#   --bin-dir DIR   use the binaries in DIR as they are (no build)
#   --out FILE    write the report (Markdown) there, e.g.
#                 bench/soak/results.md
#
# Uses the PostgreSQL of PGHOST/PGPORT/... when PGHOST is set; otherwise
# starts a private one (scripts/pg.sh) in a temporary directory and stops it
# at the end. Exits 0 when every memory series is flat, the load saw no
# error and every server exited 0.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
seconds=600
build=$root/build
out=
bin_dir=
while (($#)); do
    case $1 in
        --minutes) seconds=$(($2 * 60)); shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --build) build=$(cd "$2" && pwd); shift 2 ;;
        --bin-dir) bin_dir=$(cd "$2" && pwd); shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--minutes N | --seconds N] [--build DIR | --bin-dir DIR] [--out FILE]" >&2
           exit 2 ;;
    esac
done

if [[ -z $bin_dir ]]; then
    [[ -f $build/CMakeCache.txt ]] || cmake -S "$root" -B "$build" >/dev/null
    cmake --build "$build" -j"$(nproc)" --target samplex-echo samplex-mud bench-soak-pg >/dev/null
    bin_dir=$build/bin
fi

pg_dir=
cleanup() {
    if [[ -n $pg_dir ]]; then
        bash "$root/scripts/pg.sh" stop "$pg_dir" || true
        rm -rf "$pg_dir"
    fi
}
trap cleanup EXIT
if [[ -z ${PGHOST:-} ]]; then
    pg_dir=$(mktemp -d /tmp/samplex-soak-pg.XXXXXX)
    bash "$root/scripts/pg.sh" start "$pg_dir"
    eval "$(bash "$root/scripts/pg.sh" env "$pg_dir")"
fi

args=(--bin-dir "$bin_dir" --seconds "$seconds")
[[ -n $out ]] && args+=(--out "$out")
python3 "$root/bench/soak/soak.py" "${args[@]}"

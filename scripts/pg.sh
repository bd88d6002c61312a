#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A private PostgreSQL server in DIR, for tests and the demo.
#
#   pg.sh start DIR     create the cluster on first use (role and database
#                       `samplex`, password `samplex`), start, wait until ready
#   pg.sh stop DIR      fast shutdown (no-op when not running)
#   pg.sh restart DIR   stop, then start on the same port; waits until ready
#   pg.sh kill DIR      immediate shutdown (a crash: the next start recovers)
#   pg.sh env DIR       print the export lines for clients:
#                       PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
#                       SAMPLEX_PG_DIR SAMPLEX_PG_CTL
#
# It listens on 127.0.0.1 (a free port) and DIR/sock, and never touches a
# system cluster. Calls on the same DIR are serialised.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 start|stop|restart|kill|env DIR" >&2; exit 2; }
(($# == 2)) || usage
command=$1
dir=$2
[[ $dir == /* ]] || dir=$PWD/$dir

if [[ $command == env ]]; then
    pg_env "$dir"
    exit 0
fi

_pg_check_dir "$dir"
case $command in
    start) mkdir -p "$dir" ;;
    stop | kill) [[ -d $dir ]] || exit 0 ;; # nothing runs there
    restart) [[ -d $dir ]] || die "pg: no such directory: $dir" ;;
    *) usage ;;
esac
exec 9>"$dir/lock"
flock 9

case $command in
    start) pg_start "$dir" ;;
    stop) pg_stop "$dir" fast ;;
    restart) pg_restart "$dir" ;;
    kill) pg_stop "$dir" immediate ;;
    *) usage ;;
esac

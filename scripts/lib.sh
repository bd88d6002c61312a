# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Shared shell functions for scripts/*.sh: installing what is missing and
# running a private PostgreSQL server.
#
# The private server lives entirely under one directory DIR:
#   DIR/data    the cluster (initdb)        DIR/sock   its unix socket
#   DIR/port    the TCP port it listens on   DIR/log    its log
#   DIR/lock    serialises pg.sh calls on the same DIR
# It listens on 127.0.0.1 and DIR/sock only. It never touches a system
# cluster (pg_ctlcluster, /var/lib/postgresql, port 5432 are never used).
# As root, the server runs as the `postgres` system user (Postgres refuses
# to run as root); otherwise as the calling user.

# Everything the build, the tests and the demo need (Debian 12 names).
# shellcheck disable=SC2034 # used by the scripts that source this file
# libclang-rt-14-dev: clang's sanitizer and libFuzzer runtimes (only recommended by clang).
SAMPLEX_PACKAGES=(build-essential cmake pkg-config clang libclang-rt-14-dev liburing-dev libpq-dev
                  postgresql libcmocka-dev libuv1-dev libtelnet-dev gnuplot-nox telnet valgrind
                  python3)
SAMPLEX_PG_BIN=${SAMPLEX_PG_BIN:-/usr/lib/postgresql/15/bin}
SAMPLEX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[samplex %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- Packages ---------------------------------------------------------------

package_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# install_packages PACKAGE...: installs those that are missing, running
# `apt-get update` first only when something is missing.
install_packages() {
    local missing=() package
    for package in "$@"; do
        package_installed "$package" || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "not root and no sudo; install: ${missing[*]}"
        sudo=(sudo)
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
    "${sudo[@]}" "${apt[@]}" update >/dev/null || die "apt-get update failed"
    "${sudo[@]}" "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed: ${missing[*]}"
}

# ---- Build ------------------------------------------------------------------

# configure_and_build BUILD_DIR [cmake args...]: configures (once) and builds
# everything, or only the targets listed in SAMPLEX_BUILD_TARGETS.
configure_and_build() {
    local build_dir=$1 targets=()
    shift
    mkdir -p "$build_dir"
    cmake -S "$SAMPLEX_ROOT" -B "$build_dir" -DSAMPLEX_WERROR=ON "$@" >"$build_dir/samplex-configure.log" 2>&1 \
        || { cat "$build_dir/samplex-configure.log" >&2; return 1; }
    read -r -a targets <<<"${SAMPLEX_BUILD_TARGETS:-}"
    cmake --build "$build_dir" -j"$(nproc)" ${targets[@]+--target "${targets[@]}"}
}

# ---- Private PostgreSQL -------------------------------------------------------

# Runs a Postgres binary as the server's owner, from a directory it may read,
# with no PG* variables of the caller leaking in.
_pg_as_owner() {
    (
        unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGDATA PGSERVICE \
              PGOPTIONS PGPASSFILE PGSSLMODE PGCONNECT_TIMEOUT PGTARGETSESSIONATTRS
        exec 9>&- # the pg.sh lock: a postmaster must not inherit it
        cd / || exit 1
        if ((EUID == 0)); then
            exec runuser -u postgres -- "$@"
        else
            exec "$@"
        fi
    )
}

# Ports in use (any state) according to the kernel, one per line, decimal.
_ports_in_use() {
    local file
    for file in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $file ]] || continue
        while read -r _ local_address _; do
            [[ $local_address == *:* ]] || continue
            echo $((16#${local_address##*:}))
        done <"$file"
    done
}

# Prints a TCP port that nothing uses, below the ephemeral range so that
# tests binding port 0 cannot be handed it.
_pg_pick_port() {
    local in_use port
    in_use=" $(_ports_in_use | sort -un | tr '\n' ' ') "
    for _ in $(seq 1 200); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        [[ $in_use == *" $port "* ]] || { echo "$port"; return 0; }
    done
    return 1
}

_pg_check_dir() {
    local dir=$1
    [[ -n $dir && $dir == /* ]] || die "pg: DIR must be an absolute path (got '$dir')"
    case $dir/ in
        /var/lib/postgresql/* | /etc/postgresql/* | /var/run/postgresql/* | /run/postgresql/*)
            die "pg: refusing to use a system Postgres directory: $dir" ;;
    esac
    # sun_path holds 107 bytes: DIR/sock/.s.PGSQL.NNNNN must fit.
    ((${#dir} <= 80)) || die "pg: DIR is too long for a unix socket path: $dir"
    [[ -x $SAMPLEX_PG_BIN/pg_ctl ]] || die "pg: no $SAMPLEX_PG_BIN/pg_ctl (install postgresql)"
}

_pg_running() {
    [[ -f $1/data/PG_VERSION ]] && _pg_as_owner "$SAMPLEX_PG_BIN/pg_ctl" status -D "$1/data" >/dev/null 2>&1
}

_pg_write_config() {
    local dir=$1 port=$2
    cat >"$dir/data/samplex.conf" <<EOF
# Written by scripts/pg.sh: a private, throwaway test server.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
max_connections = 200
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
logging_collector = off
EOF
    cat >"$dir/data/pg_hba.conf" <<EOF
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
EOF
    echo "$port" >"$dir/port"
    chown "$(_pg_owner)" "$dir/data/samplex.conf" "$dir/data/pg_hba.conf" "$dir/port"
}

_pg_owner() { if ((EUID == 0)); then echo postgres:postgres; else id -un; fi; }

_pg_initdb() {
    local dir=$1
    log "pg: initdb in $dir/data"
    mkdir -p "$dir/sock"
    chmod 755 "$dir"
    chown "$(_pg_owner)" "$dir" "$dir/sock"
    _pg_as_owner test -w "$dir" -a -x "$dir" \
        || die "pg: the server's user cannot write $dir (is a parent directory private?)"
    _pg_as_owner "$SAMPLEX_PG_BIN/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "pg: initdb failed"; }
    echo "include 'samplex.conf'" >>"$dir/data/postgresql.conf"
}

# Waits until the server accepts connections on its socket (up to 60 s).
_pg_wait_ready() {
    local dir=$1 port
    port=$(<"$dir/port")
    for _ in $(seq 1 600); do
        if _pg_as_owner "$SAMPLEX_PG_BIN/pg_isready" -q -h "$dir/sock" -p "$port" -d postgres; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$dir/log" >&2
    die "pg: server in $dir not ready after 60 s"
}

_pg_pg_ctl_start() {
    local dir=$1
    _pg_as_owner "$SAMPLEX_PG_BIN/pg_ctl" start -D "$dir/data" -l "$dir/log" -w -t 60 >/dev/null 2>&1
}

_pg_create_role() {
    local dir=$1
    _pg_as_owner "$SAMPLEX_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/sock" -p "$(<"$dir/port")" \
        -U postgres -d postgres >/dev/null <<'EOF' || die "pg: creating role samplex failed"
CREATE ROLE samplex LOGIN SUPERUSER PASSWORD 'samplex';
CREATE DATABASE samplex OWNER samplex;
EOF
    touch "$dir/initialised"
}

# pg_start DIR: creates the cluster on first use, starts it, waits until it
# is ready. A no-op when it is already running. The port chosen the first
# time is kept for every later start.
pg_start() {
    local dir=$1 port
    _pg_check_dir "$dir"
    mkdir -p "$dir"
    [[ -f $dir/data/PG_VERSION ]] || _pg_initdb "$dir"
    if _pg_running "$dir"; then
        _pg_wait_ready "$dir"
        return 0
    fi
    if [[ -f $dir/port ]]; then
        _pg_write_config "$dir" "$(<"$dir/port")"
        _pg_pg_ctl_start "$dir" || { tail -n 20 "$dir/log" >&2; die "pg: start failed"; }
    else
        # A port free a moment ago may be taken by now: try a few.
        for _ in 1 2 3 4 5; do
            port=$(_pg_pick_port) || die "pg: no free TCP port"
            : >"$dir/log" && chown "$(_pg_owner)" "$dir/log"
            _pg_write_config "$dir" "$port"
            _pg_pg_ctl_start "$dir" && break
            rm -f "$dir/port"
            grep -q 'already in use' "$dir/log" 2>/dev/null || break
            log "pg: port $port taken, trying another"
        done
        [[ -f $dir/port ]] || { tail -n 20 "$dir/log" >&2; die "pg: start failed"; }
    fi
    _pg_wait_ready "$dir"
    [[ -f $dir/initialised ]] || _pg_create_role "$dir"
}

# pg_stop DIR [MODE]: stops the server if it runs (MODE fast or immediate).
pg_stop() {
    local dir=$1 mode=${2:-fast}
    _pg_check_dir "$dir"
    _pg_running "$dir" || return 0
    _pg_as_owner "$SAMPLEX_PG_BIN/pg_ctl" stop -D "$dir/data" -m "$mode" -w -t 60 >/dev/null \
        || die "pg: stop -m $mode failed"
}

# pg_restart DIR: stops (fast) and starts on the same port; waits until ready.
pg_restart() {
    pg_stop "$1" fast
    pg_start "$1"
}

# pg_env DIR: prints the export lines a client of this server needs.
pg_env() {
    local dir=$1
    [[ -f $dir/port ]] || die "pg: no server in $dir (run: pg.sh start $dir)"
    cat <<EOF
export PGHOST=127.0.0.1
export PGPORT=$(<"$dir/port")
export PGUSER=samplex
export PGPASSWORD=samplex
export PGDATABASE=samplex
export SAMPLEX_PG_DIR=$(printf %q "$dir")
export SAMPLEX_PG_CTL=$(printf %q "$SAMPLEX_ROOT/scripts/pg.sh")
EOF
}

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the demo: installs what is missing, builds (build/), starts a private
# PostgreSQL in a temporary directory and runs the MUD on port 4000 (or,
# until the MUD exists, the timers example). Ctrl-C stops the demo; the
# server is stopped and its directory removed however the script exits.
# Extra arguments go to the demo program.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAMPLEX_ROOT"

pg_dir=""
cleanup() {
    local status=$?
    if [[ -n $pg_dir ]]; then
        log "stopping the private PostgreSQL"
        bash "$SAMPLEX_ROOT/scripts/pg.sh" stop "$pg_dir" || true
        rm -rf "$pg_dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

install_packages "${SAMPLEX_PACKAGES[@]}"
log "building (build/)"
configure_and_build build

pg_dir=$(mktemp -d /tmp/samplex-demo-pg.XXXXXX)
bash scripts/pg.sh start "$pg_dir"
eval "$(bash scripts/pg.sh env "$pg_dir")"
log "private PostgreSQL on 127.0.0.1:$PGPORT (database samplex, user samplex)"

if [[ -x build/bin/samplex-mud ]]; then
    cat <<'EOF'

  The samplex MUD is starting on 127.0.0.1:4000.
  Connect from another terminal with:

      telnet 127.0.0.1 4000

  or with a MUD client, e.g. tintin++: tt++, then #session mud 127.0.0.1 4000
  Type a name to log in, then 'help'. Press Ctrl-C here to stop it: the
  players are told and saved first.

EOF
    build/bin/samplex-mud --port 4000 "$@"
elif [[ -x build/bin/samplex-timers ]]; then
    log "no MUD yet (build/bin/samplex-mud); running the timers example instead"
    build/bin/samplex-timers "$@"
else
    log "no demo program built yet (build/bin/samplex-mud or build/bin/samplex-timers)"
fi

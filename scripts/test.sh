#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs every test: installs what is missing, builds with -Werror (build/),
# starts a private PostgreSQL in a temporary directory, runs ctest; then the
# same with AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/).
# Stops the server and removes its directory on exit, however it exits.
#
#   SAMPLEX_SKIP_ASAN=1   skip the sanitizer build (quick local runs)
#   CI=true               Postgres tests fail, rather than skip, without a server
#
# Exits non-zero if any step fails. Safe to run again.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAMPLEX_ROOT"

pg_dir=""
summary=()
failures=0
summary_printed=0
started=$SECONDS

cleanup() {
    local status=$?
    if ((!summary_printed && status != 0)); then
        summary+=("$(printf '%-14s (exit %d)' interrupted "$status")")
        failures=$((failures + 1))
        print_summary
    fi
    if [[ -n $pg_dir ]]; then
        bash "$SAMPLEX_ROOT/scripts/pg.sh" stop "$pg_dir" || true
        rm -rf "$pg_dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step NAME COMMAND...: runs a step, records how it went, never aborts.
step() {
    local name=$1 begun=$SECONDS status=0
    shift
    log "---- $name"
    "$@" || status=$?
    if ((status == 0)); then
        summary+=("$(printf '%-14s ok      %4ds' "$name" $((SECONDS - begun)))")
    else
        summary+=("$(printf '%-14s FAILED  %4ds  (exit %d)' "$name" $((SECONDS - begun)) "$status")")
        failures=$((failures + 1))
    fi
    return "$status"
}

# run_ctest BUILD_DIR: every test, two at a time; keeps ctest's verdict line.
run_ctest() {
    local build_dir=$1 status=0
    ctest --test-dir "$build_dir" --output-on-failure -j2 --no-tests=error \
        2>&1 | tee "$build_dir/samplex-ctest.log" || status=$?
    grep -E 'tests passed|No tests were found' "$build_dir/samplex-ctest.log" \
        | sed "s|^|  $build_dir: |" >"$build_dir/samplex-verdict" || true
    return "$status"
}

print_summary() {
    local line
    summary_printed=1
    echo
    echo "==================== samplex test summary ===================="
    for line in "${summary[@]}"; do echo "  $line"; done
    cat build/samplex-verdict build-asan/samplex-verdict 2>/dev/null || true
    if ((failures == 0)); then
        echo "  ALL OK in $((SECONDS - started)) s"
    else
        echo "  $failures step(s) FAILED in $((SECONDS - started)) s"
    fi
    echo "=============================================================="
}

rm -f build/samplex-verdict build-asan/samplex-verdict

step install install_packages "${SAMPLEX_PACKAGES[@]}" || { print_summary; exit 1; }

pg_dir=$(mktemp -d /tmp/samplex-pg.XXXXXX)
step postgres bash scripts/pg.sh start "$pg_dir" || { print_summary; exit 1; }
eval "$(bash scripts/pg.sh env "$pg_dir")"
log "private PostgreSQL on 127.0.0.1:$PGPORT (dir $pg_dir)"

if step build configure_and_build build; then
    step ctest run_ctest build || true
fi

if [[ ${SAMPLEX_SKIP_ASAN:-0} == 1 ]]; then
    summary+=("$(printf '%-14s skipped (SAMPLEX_SKIP_ASAN=1)' build-asan)")
else
    if step build-asan configure_and_build build-asan -DSAMPLEX_SANITIZE=address,undefined; then
        ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            step ctest-asan run_ctest build-asan || true
    fi
fi

print_summary
((failures == 0))

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs every test: installs what is missing, builds with -Werror (build/),
# starts a private PostgreSQL in a temporary directory, runs ctest; then the
# same with AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/);
# then the multi-thread tests (ctest -L threads) under ThreadSanitizer
# (build-tsan/, clang); then each libFuzzer harness of fuzz/ over its corpus
# for a short while (build-fuzz/, clang). Valgrind runs inside ctest
# (test_valgrind_examples, test_mud_valgrind).
# Stops the server and removes its directory on exit, however it exits.
#
#   SAMPLEX_SKIP_ASAN=1   skip the ASan+UBSan build (quick local runs)
#   SAMPLEX_SKIP_TSAN=1   skip the ThreadSanitizer build
#   SAMPLEX_SKIP_FUZZ=1   skip the fuzzers
#   SAMPLEX_FUZZ_SECONDS  how long each fuzzer runs (default 20)
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

# run_ctest BUILD_DIR [ctest args...]: every test (or those the arguments
# select), two at a time; keeps ctest's verdict line.
run_ctest() {
    local build_dir=$1 status=0
    shift
    ctest --test-dir "$build_dir" --output-on-failure -j2 --no-tests=error "$@" \
        2>&1 | tee "$build_dir/samplex-ctest.log" || status=$?
    grep -E 'tests passed|No tests were found' "$build_dir/samplex-ctest.log" \
        | sed "s|^|  $build_dir: |" >"$build_dir/samplex-verdict" || true
    return "$status"
}

# run_fuzzers BUILD_DIR: each harness for SAMPLEX_FUZZ_SECONDS over its seed
# corpus fuzz/corpus/<harness>/ (read only: new inputs go to a scratch
# directory); a crash, leak or hang fails the step and leaves its input in
# BUILD_DIR/fuzz-artifacts/. Prints how many inputs each one ran.
run_fuzzers() {
    local build_dir=$1 seconds=${SAMPLEX_FUZZ_SECONDS:-20} status=0 harness max_len scratch log
    local runs seeds
    mkdir -p "$build_dir/fuzz-artifacts"
    : >"$build_dir/samplex-verdict"
    for harness in fuzz_mud_input:4096 fuzz_connection_io:1024; do
        max_len=${harness#*:}
        harness=${harness%:*}
        scratch=$(mktemp -d)
        log=$build_dir/$harness.log
        local rc=0
        "$build_dir/bin/$harness" -max_total_time="$seconds" -runs=100000000 -timeout=30 \
            -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$build_dir/fuzz-artifacts/$harness-" \
            "$scratch" "$SAMPLEX_ROOT/fuzz/corpus/$harness" >"$log" 2>&1 || rc=$?
        rm -rf "$scratch"
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        seeds=$(find "$SAMPLEX_ROOT/fuzz/corpus/$harness" -type f | wc -l)
        if ((rc != 0)); then
            tail -n 60 "$log" >&2
            status=1
            printf '  %s: %s FAILED (exit %d) after %s inputs; see %s\n' "$build_dir" "$harness" \
                "$rc" "${runs:-?}" "$build_dir/fuzz-artifacts/" | tee -a "$build_dir/samplex-verdict"
        else
            printf '  %s: %s ran %s inputs in %d s (seed corpus: %d)\n' "$build_dir" "$harness" \
                "${runs:-?}" "$seconds" "$seeds" | tee -a "$build_dir/samplex-verdict"
        fi
    done
    return "$status"
}

print_summary() {
    local line
    summary_printed=1
    echo
    echo "==================== samplex test summary ===================="
    for line in "${summary[@]}"; do echo "  $line"; done
    cat build/samplex-verdict build-asan/samplex-verdict build-tsan/samplex-verdict \
        build-fuzz/samplex-verdict 2>/dev/null || true
    if ((failures == 0)); then
        echo "  ALL OK in $((SECONDS - started)) s"
    else
        echo "  $failures step(s) FAILED in $((SECONDS - started)) s"
    fi
    echo "=============================================================="
}

rm -f build/samplex-verdict build-asan/samplex-verdict build-tsan/samplex-verdict \
    build-fuzz/samplex-verdict

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

# ThreadSanitizer: only the multi-thread tests (label "threads") and what
# they run. halt_on_error: a report fails the test (exit 66).
if [[ ${SAMPLEX_SKIP_TSAN:-0} == 1 ]]; then
    summary+=("$(printf '%-14s skipped (SAMPLEX_SKIP_TSAN=1)' build-tsan)")
else
    if CC=clang SAMPLEX_BUILD_TARGETS="test_core_registry test_loop test_net_threads samplex-echo" \
        step build-tsan configure_and_build build-tsan -DSAMPLEX_SANITIZE=thread \
        -DSAMPLEX_BUILD_BENCH=OFF; then
        TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
            step ctest-tsan run_ctest build-tsan -L threads || true
    fi
fi

# libFuzzer harnesses (fuzz/): ASan+UBSan, a short run each.
if [[ ${SAMPLEX_SKIP_FUZZ:-0} == 1 ]]; then
    summary+=("$(printf '%-14s skipped (SAMPLEX_SKIP_FUZZ=1)' build-fuzz)")
else
    if CC=clang step build-fuzz configure_and_build build-fuzz -DSAMPLEX_BUILD_FUZZ=ON \
        -DSAMPLEX_SANITIZE=address,undefined -DSAMPLEX_BUILD_TESTS=OFF \
        -DSAMPLEX_BUILD_EXAMPLES=OFF -DSAMPLEX_BUILD_BENCH=OFF; then
        step fuzz run_fuzzers build-fuzz || true
    fi
fi

print_summary
((failures == 0))

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The small examples do what the README says: samplex-timers ticks, fires its
# one-shot timers and cleans up every step once; samplex-postgres prints
# 1 + 1 = 2 through connect -> query -> process, and fails clearly on a
# refused port. The Postgres part needs scripts/test.sh's server (PGHOST);
# without it that part skips, except under CI=true, where it fails.
set -u
bin=${SAMPLEX_BIN_DIR:?}
passed=0 failed=0
check() { # NAME CONDITION-RESULT DETAIL
    if [[ $2 == 0 ]]; then passed=$((passed + 1)); else
        failed=$((failed + 1)); echo "FAIL: $1: $3"; fi
}

out=$(timeout 10 "$bin/samplex-timers" --ticks 3 --interval-ms 300 2>&1); rc=$?
check "timers exit" $((rc != 0)) "exit $rc"
check "timers ticks" $(($(grep -c '^tick ' <<<"$out") != 3)) "$out"
check "timers announcements" $(($(grep -cE '^(a bird sings|the wind rises|a bell tolls)$' <<<"$out") != 3)) "$out"
check "timers cleanups" $(($(grep -c '^cleanup: ' <<<"$out") != 4)) "$out"
check "timers end" $(($(grep -c "^flow 'world' ended (success)" <<<"$out") != 1)) "$out"

if [[ -z ${PGHOST:-} ]]; then
    if [[ ${CI:-} == true ]]; then echo "FAIL: CI=true but no PostgreSQL (PGHOST unset)"; exit 1; fi
    echo "SKIP: samplex-postgres needs PostgreSQL (run scripts/test.sh)"
else
    out=$(timeout 10 "$bin/samplex-postgres" 2>&1); rc=$?
    check "postgres sum" $((rc != 0)) "exit $rc: $out"
    check "postgres output" "$([[ $out == "1 + 1 = 2" ]]; echo $?)" "$out"
    out=$(timeout 10 "$bin/samplex-postgres" "host=127.0.0.1 port=1" 2>&1); rc=$?
    check "postgres refused exit" $((rc != 1)) "exit $rc"
    check "postgres refused message" $(grep -q "connect failed: .*Connection refused" <<<"$out"; echo $?) "$out"
fi
echo "$passed passed, $failed failed"
((failed == 0))

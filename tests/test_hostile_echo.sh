#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-echo against hostile peers: resets, slow readers, 16 MiB messages,
# binary junk, half-closes, descriptor exhaustion, SIGTERM under load
# (tests/test_hostile_echo.py).
set -euo pipefail
bin_dir=${SAMPLEX_BIN_DIR:?SAMPLEX_BIN_DIR is not set}
[[ -x $bin_dir/samplex-echo ]] || { echo "SKIP: $bin_dir/samplex-echo not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
command -v prlimit >/dev/null || { echo "SKIP: prlimit missing"; exit 77; }
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_hostile_echo.py"

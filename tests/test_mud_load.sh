#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud: 200 bot players for 10 s; reports the tick's lateness (tests/test_mud_load.py).
# CPU-heavy, and it checks tick timing: ctest runs it alone (SAMPLEX_TEST_RUN_SERIAL).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_load.py"

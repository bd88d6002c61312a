#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud survives a PostgreSQL restart (tests/test_mud_pg_restart.py). It restarts the
# shared server with $SAMPLEX_PG_CTL, so ctest runs it alone (RUN_SERIAL).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_pg_restart.py"

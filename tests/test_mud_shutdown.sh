#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud: SIGTERM/SIGINT with players connected saves them all (tests/test_mud_shutdown.py).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_shutdown.py"

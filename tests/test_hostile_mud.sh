#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud against hostile peers: slowloris, endless lines, junk, resets
# mid-line (tests/test_hostile_mud.py).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_hostile_mud.py"

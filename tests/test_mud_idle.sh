#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud: the idle deadline kicks a silent player politely (tests/test_mud_idle.py).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_idle.py"

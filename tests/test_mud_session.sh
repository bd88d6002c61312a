#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud: two players log in, talk, move, quit, come back (tests/test_mud_session.py).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_session.py"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud: telnet negotiation, ends of line, overlong lines, hostile bytes (tests/test_mud_protocol.py).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_protocol.py"

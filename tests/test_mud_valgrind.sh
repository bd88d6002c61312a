#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# samplex-mud under valgrind --leak-check=full: no errors, nothing lost (tests/test_mud_valgrind.py).
set -euo pipefail
exec python3 "$(dirname "${BASH_SOURCE[0]}")/test_mud_valgrind.py"

# SPDX-License-Identifier: Apache-2.0
"""samplex-mud under valgrind --leak-check=full: a short life with players
(login, talk, move, hostile bytes, an overlong line, autosave, idle kick,
quit, a player vanishing), then SIGTERM with players connected. The MUD must
exit 0 with no memory error and nothing lost (definite, indirect, possible).

Skipped for sanitizer builds (valgrind and ASan do not mix), when valgrind
is not installed, and when it cannot read the binary (valgrind 3.19 and
clang's DWARF 5).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import (Mud, Player, check, mud_binary, psql, require_postgres,  # noqa: E402
                         unique_tag)


def skip(why):
    print(f"SKIP: {why}", flush=True)
    sys.exit(77)


def sanitized_build():
    cache = os.path.join(os.environ.get("SAMPLEX_BUILD_DIR", ""), "CMakeCache.txt")
    if not os.path.exists(cache):
        return False
    with open(cache) as text:
        return bool(re.search(r"^SAMPLEX_SANITIZE:\w+=\S", text.read(), re.M))


require_postgres()
if sanitized_build():
    skip("a sanitizer build: valgrind runs on the plain build")
if not shutil.which("valgrind"):
    skip("valgrind is not installed")
probe = subprocess.run(["valgrind", "--error-exitcode=99", mud_binary(), "--bad-option"],
                       capture_output=True, text=True, timeout=120)
if probe.returncode != 2:  # samplex-mud's exit status for a bad option
    skip(f"valgrind cannot run samplex-mud here: {probe.stderr.strip().splitlines()[-1:]}")

tag = unique_tag("V")
schema = f"mud_t{os.getpid()}_valgrind"
log = tempfile.NamedTemporaryFile(prefix="samplex-mud-valgrind.", suffix=".log", delete=False)
valgrind = ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect,possible",
            "--error-exitcode=99", f"--log-file={log.name}"]
mud = Mud(schema, "--tick-ms", "100", "--autosave-ms", "300", "--idle-ms", "1500",
          prefix=valgrind)
try:
    mud.start(timeout=120)
    alice = Player(mud.port).login(f"{tag}alice")
    bob = Player(mud.port).login(f"{tag}bob")
    carol = Player(mud.port).login(f"{tag}carol")
    nameless = Player(mud.port, "nameless")
    alice.line("say hello")
    bob.expect(r"says: hello")
    alice.send(b"say \xff\xff \xc3\x28 \x1b[1m" + b"x" * 700 + b"\r\n")
    alice.expect(r"That line is too long")
    alice.line("n")
    alice.expect(r"The Market")
    bob.line("who")
    bob.expect(r"Players online: 3")
    mud.wait_log(r"autosave: 3 of 3 players saved", timeout=30)
    nameless.expect(r"You were silent", timeout=30)  # the idle deadline
    nameless.expect_closed(timeout=30)
    carol.close()  # vanishes: saved and ended by the MUD
    mud.wait_log(rf"'session [^']*' {carol.name} ended", timeout=30)
    bob.line("quit")
    bob.expect_closed(timeout=30)
    status = mud.stop(timeout=120)
    alice.expect(r"Goodbye", timeout=30)
    alice.expect_closed(timeout=30)
    with open(log.name) as text:
        report = text.read()
    summary = re.search(r"ERROR SUMMARY: (\d+) errors", report)
    lost = re.findall(r"(definitely|indirectly|possibly) lost: ([\d,]+) bytes", report)
    if status != 0 or not summary or summary.group(1) != "0":
        print(report[-6000:])
    check(status == 0, f"samplex-mud under valgrind exited {status}")
    check(summary and summary.group(1) == "0", "valgrind reported errors")
    check(all(amount == "0" for _, amount in lost), f"memory lost: {lost}")
    reachable = re.search(r"still reachable: ([\d,]+) bytes in ([\d,]+) blocks", report)
    print(f"ok: valgrind: 0 errors, nothing lost; still reachable at exit: "
          f"{reachable.group(1) + ' bytes (libpq/GSSAPI one-time state)' if reachable else 'none'}")
finally:
    mud.kill()
    os.unlink(log.name)
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

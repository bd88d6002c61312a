# SPDX-License-Identifier: Apache-2.0
"""samplex-mud: the idle deadline (--idle-ms 800).

A silent player is told why, saved (where they stood) and disconnected, not
before the deadline and not much after it; the others in the room see them
go; a player who keeps typing is never kicked; someone who never even gives
a name is sent away too.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import Mud, Player, check, psql, require_postgres, unique_tag  # noqa: E402

IDLE_S = 0.8

require_postgres()
tag = unique_tag("I")
schema = f"mud_t{os.getpid()}_idle"
mud = Mud(schema, "--tick-ms", "60000", "--idle-ms", str(int(IDLE_S * 1000)))
try:
    mud.start()
    sleeper = Player(mud.port).login(f"{tag}sleeper")
    busy = Player(mud.port).login(f"{tag}busy")
    nameless = Player(mud.port, "nameless")
    last_word = time.monotonic()  # before the server re-arms the deadline: a lower bound
    sleeper.line("n")
    busy.line("n")
    sleeper.expect(r"The Market")
    busy.expect(r"The Market")

    # busy types every 100 ms; sleeper says nothing more, and we watch it.
    kicked_after = None
    while time.monotonic() - last_word < IDLE_S * 4:
        busy.line("look")
        busy.expect(r"Exits:")
        sleeper.drain(0.1)
        if "idle for" in sleeper.text:
            kicked_after = time.monotonic() - last_word
            break
    check(kicked_after is not None, f"not kicked within {IDLE_S * 4} s")
    sleeper.expect(r"You have been idle for 0\.8 seconds, so we are letting you go\.")
    sleeper.expect(rf"Your progress is saved\. Goodbye, {sleeper.name}!")
    sleeper.expect_closed()
    check(IDLE_S <= kicked_after <= IDLE_S + 1.0,
          f"kicked {kicked_after:.3f} s after the last line (deadline {IDLE_S} s)")
    busy.expect(rf"{sleeper.name} falls asleep and fades away\.")

    nameless.expect(r"You were silent for 0\.8 seconds\. Come back when you are ready\. Goodbye!",
                    timeout=5)
    nameless.expect_closed()

    # busy stayed connected throughout and still works.
    check(not busy.closed, "the busy player was disconnected")
    busy.line("who")
    busy.expect(r"Players online: 1\r\n")
    check(psql(f"SELECT room_id FROM {schema}.mud_players WHERE name = '{sleeper.name}'")
          == "market", "the idle player was not saved in the market")
    mud.wait_log(rf"{sleeper.name} idle for 0\.8 s: disconnecting")
    busy.line("quit")
    busy.expect_closed()
    check(mud.stop() == 0, "samplex-mud did not exit 0")
    print(f"ok: idle player kicked after {kicked_after:.3f} s (deadline {IDLE_S} s), "
          "busy player kept, nameless connection closed")
finally:
    mud.kill()
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

# SPDX-License-Identifier: Apache-2.0
"""samplex-mud: PostgreSQL restarts under a running MUD.

A player is in the market when the server restarts ($SAMPLEX_PG_CTL restart
$SAMPLEX_PG_DIR). The MUD notices the lost connection, and the next query
(the player's save at quit) reconnects first, puts the private schema back
on the search_path, and succeeds. A new player can log in afterwards, and the
rows are where they should be.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import Mud, Player, check, psql, require_postgres, unique_tag  # noqa: E402

require_postgres()
pg_ctl, pg_dir = os.environ.get("SAMPLEX_PG_CTL"), os.environ.get("SAMPLEX_PG_DIR")
if not pg_ctl or not pg_dir:
    print("SKIP: no SAMPLEX_PG_CTL/SAMPLEX_PG_DIR (run scripts/test.sh)", flush=True)
    sys.exit(77)

tag = unique_tag("R")
schema = f"mud_t{os.getpid()}_pgrestart"
mud = Mud(schema, "--tick-ms", "60000")
try:
    mud.start()
    alice = Player(mud.port).login(f"{tag}alice", new=True)
    alice.line("n")
    alice.expect(r"The Market")
    subprocess.run(["bash", pg_ctl, "restart", pg_dir], check=True, capture_output=True,
                   timeout=120)
    alice.line("e")  # no database needed to play on
    alice.expect(r"You cannot go that way\.")
    alice.line("quit")
    alice.expect(rf"Your progress is saved\. Goodbye, {alice.name}!", timeout=20)
    alice.expect_closed()
    mud.wait_log(r"PostgreSQL: the connection was lost; reconnecting")
    mud.wait_log(r"PostgreSQL: reconnected")
    bob = Player(mud.port).login(f"{tag}bob", new=True)
    bob.line("quit")
    bob.expect(r"Your progress is saved")
    check(psql(f"SELECT string_agg(room_id, ',' ORDER BY name) FROM {schema}.mud_players")
          == "market,square", "rows after the restart")
    check(mud.stop() == 0, "samplex-mud did not exit 0")
    print("ok: PostgreSQL restarted; the MUD reconnected and saved")
finally:
    mud.kill()
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

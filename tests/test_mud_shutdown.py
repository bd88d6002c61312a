# SPDX-License-Identifier: Apache-2.0
"""samplex-mud: SIGTERM (and SIGINT) with players connected.

Three players stand in three rooms, a fourth connection has not given a
name yet. On SIGTERM every one of them is told, the three are saved in one
batch ("final save: 3 of 3"), every connection is closed by the server, and
the MUD exits 0 (under ASan: with nothing leaked). After a restart the three
are where they stood. SIGINT does the same.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import Mud, Player, check, psql, require_postgres, unique_tag  # noqa: E402

ROUTES = {"a": (["n"], "The Market"), "b": (["e", "d"], "The Tavern Cellar"),
          "c": (["w", "u"], "The Belfry")}


def place_players(mud, tag):
    players = {}
    for key, (moves, title) in ROUTES.items():
        player = Player(mud.port).login(f"{tag}{key}")
        for move in moves:
            player.line(move)
        player.expect(title)
        players[key] = player
    return players


def expect_shutdown(mud, players, nameless, signal_number):
    begun = time.monotonic()
    status = mud.stop(signal_number)
    took = time.monotonic() - begun
    check(status == 0, f"samplex-mud exited {status} on signal {signal_number}")
    for player in players.values():
        player.expect(r"\*\*\* The server is shutting down\. Saving everyone\.\.\. \*\*\*")
        player.expect(rf"Your progress is saved\. Goodbye, {player.name}!")
        player.expect_closed()
    nameless.expect(r"The server is shutting down")
    nameless.expect_closed()
    mud.wait_log(r"final save: 3 of 3 players saved in one pipelined batch, 0 failed")
    mud.wait_log(r"shutdown complete")
    return took


require_postgres()
tag = unique_tag("D")
schema = f"mud_t{os.getpid()}_shutdown"
mud = Mud(schema, "--tick-ms", "60000")
try:
    mud.start()
    players = place_players(mud, tag)
    nameless = Player(mud.port, "nameless")
    nameless.expect(r"known\? ")
    took = expect_shutdown(mud, players, nameless, signal.SIGTERM)
    sessions = len(mud.log_matches(r"flow \d+ 'session [^']*'.* ended"))
    check(sessions == 4, f"{sessions} session flows ended, expected 4")

    mud.start()
    restored = {}
    for key, (_, title) in ROUTES.items():
        player = Player(mud.port).login(f"{tag}{key}", new=False)
        player.expect(rf"You are where you left off\.\r\n\r\n{title}")
        restored[key] = player
    # The same again with SIGINT (Ctrl-C), after one more move each.
    restored["a"].line("s")
    restored["a"].expect(r"The Town Square")
    nameless = Player(mud.port, "nameless")
    nameless.expect(r"known\? ")
    expect_shutdown(mud, restored, nameless, signal.SIGINT)
    rooms = psql(f"SELECT string_agg(room_id, ',' ORDER BY name) FROM {schema}.mud_players")
    check(rooms == "square,cellar,belfry", f"saved rooms: {rooms}")
    print(f"ok: SIGTERM and SIGINT saved 3 players in one batch and closed 4 connections; "
          f"shutdown took {took * 1000:.0f} ms")
finally:
    mud.kill()
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

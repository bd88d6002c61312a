# SPDX-License-Identifier: Apache-2.0
"""samplex-mud: scripted sessions of two players over real sockets.

Log in (new players), see each other arrive, say and emote and see it, who,
move (the other sees the leaving and arriving, and no longer hears what is
said in the old room), bad commands, a name already in use, quit (saved,
then disconnected), reconnect (restored where they left off), then restart
the MUD and find the players where they were: that can only come from
Postgres. Checks the table through psql too.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import Mud, Player, check, psql, require_postgres, unique_tag  # noqa: E402

require_postgres()
tag = unique_tag("S")
schema = f"mud_t{os.getpid()}_session"
alice_name, bob_name = f"{tag}alice", f"{tag}bob"
mud = Mud(schema, "--tick-ms", "60000")
try:
    mud.start()

    alice = Player(mud.port).login(alice_name, new=True)
    alice.expect(r"The Town Square")
    bob = Player(mud.port).login(bob_name.upper(), new=True)  # names are case-insensitive
    Alice, Bob = alice.name, bob.name
    check(Alice == alice_name.capitalize(), f"canonical name {Alice}")
    alice.expect(rf"{Bob} appears out of thin air\.")
    bob.expect(rf"Also here: {Alice}\.")

    # What one says or does in a room, the others there see.
    alice.line("say Hello, Bob!")
    alice.expect(r"You say: Hello, Bob!")
    bob.expect(rf"{Alice} says: Hello, Bob!")
    bob.line("'hi there")
    alice.expect(rf"{Bob} says: hi there")
    bob.line("emote waves.")
    alice.expect(rf"{Bob} waves\.")
    bob.expect(rf"{Bob} waves\.")
    alice.line("who")
    alice.expect(r"Players online: 2")
    alice.expect(rf"{Bob}\s+The Town Square")

    # Moving: the others see it; the old room's talk is no longer heard.
    alice.line("n")
    alice.expect(r"The Market")
    bob.expect(rf"{Alice} leaves north\.")
    bob.line("say secret of the square")
    bob.expect(r"You say: secret of the square")
    alice.line("look")
    alice.expect(r"The Market\r\nEmpty stalls")
    check("secret of the square" not in alice.text, "alice heard the square from the market")
    alice.line("go south")
    alice.expect(r"The Town Square")
    bob.expect(rf"{Alice} arrives\.")
    alice.line("e")
    alice.expect(r"The Sleeping Loop Tavern")
    alice.line("D")  # commands are case-insensitive too
    alice.expect(r"The Tavern Cellar")

    # Mistakes get polite answers.
    alice.line("dance")
    alice.expect(r"Unknown command 'dance'\. Type 'help'")
    alice.line("go sideways")
    alice.expect(r"Go where\?")
    alice.line("d")
    alice.expect(r"You cannot go that way\.")
    alice.line("help")
    alice.expect(r"Commands:(.|\n)*quit")

    # One session per name.
    third = Player(mud.port, "third")
    third.expect(r"known\? ")
    third.line(alice_name)
    third.expect(r"That player is already here")
    third.line("1bad")
    third.expect(r"A name starts with a letter\.")
    third.close()

    # Quit: saved, then disconnected. Reconnect: restored.
    alice.line("quit")
    alice.expect(r"Saving your progress\.\.\.")
    alice.expect(rf"Your progress is saved\. Goodbye, {Alice}!")
    alice.expect_closed()
    alice = Player(mud.port).login(alice_name, new=False)
    alice.expect(r"You are where you left off\.\r\n\r\nThe Tavern Cellar")
    check(psql(f"SELECT room_id FROM {schema}.mud_players WHERE name = '{Alice}'") == "cellar",
          "mud_players does not have alice in the cellar")

    # Restart the MUD: what it knows now comes from Postgres only.
    alice.line("u")
    alice.expect(r"The Sleeping Loop Tavern")
    bob.line("w")
    bob.expect(r"The Temple of the Ring")
    status = mud.stop()
    check(status == 0, f"samplex-mud exited {status} on SIGTERM")
    for player in (alice, bob):
        player.expect(r"Goodbye")
        player.expect_closed()
    mud.start()
    alice = Player(mud.port).login(alice_name, new=False)
    alice.expect(r"The Sleeping Loop Tavern")
    bob = Player(mud.port).login(bob_name, new=False)
    bob.expect(r"The Temple of the Ring")
    check(psql(f"SELECT logins FROM {schema}.mud_players WHERE name = '{Alice}'") == "3",
          "alice should have logged in 3 times")
    alice.line("quit")
    alice.expect_closed()
    bob.close()  # vanishing without quit: the MUD saves and ends the session
    mud.wait_log(rf"flow \d+ 'session [^']*' {Bob} ended")
    check(mud.stop() == 0, "samplex-mud did not exit 0")
    started = len(mud.log_matches(r"flow \d+ 'session [^']*' started"))
    ended = len(mud.log_matches(r"flow \d+ 'session [^']*'.* ended"))
    check(started == ended == 2, f"second run: {started} sessions started, {ended} ended")
    print(f"ok: two players, say/emote/who/move/quit, restored after a restart (schema {schema})")
finally:
    mud.kill()
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

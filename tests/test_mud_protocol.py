# SPDX-License-Identifier: Apache-2.0
"""samplex-mud: the telnet side, byte by byte.

- Option negotiation: IAC DO/DONT/WILL/WONT for options we refuse, accept
  or do not know get one well-formed reply each; subnegotiations and other
  commands in the middle of a line vanish from it.
- Ends of line: CR LF, LF, CR NUL, lone CR; a line split over many packets.
- An overlong line (over 512 bytes): one polite error, the rest of the line
  discarded (also 100 KB without any newline), the connection stays usable.
- Control bytes, an escaped IAC (0xFF as data) and invalid UTF-8 never reach
  the other player raw; valid UTF-8 arrives intact.
- A player who reads nothing while others talk is dropped once 256 KiB of
  output are queued for them (bounded memory per peer); the talker is fine.
- A peer that turns on compression itself (IAC SB COMPRESS2 IAC SE, which
  libtelnet would obey) is refused: nothing it sends after is parsed (the
  compressed line never arrives), it is saved and disconnected.
"""
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import (DO, DONT, IAC, NOP, SB, SE, WILL, WONT, Mud, Player,  # noqa: E402
                         check, psql, require_postgres, unique_tag)

ECHO, SGA, TTYPE, NAWS, LINEMODE, UNKNOWN = 1, 3, 24, 31, 34, 200
LINE_MAX = 512


def negotiation(mud, name):
    """Every request gets exactly one well-formed answer."""
    player = Player(mud.port, "negotiator")
    player.expect(r"known\? ")
    requests = bytes([IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, TTYPE, IAC, WILL, NAWS,
                      IAC, DO, UNKNOWN, IAC, WILL, LINEMODE, IAC, DONT, ECHO, IAC, WONT, SGA])
    player.send(requests)
    player.line(name)  # in the same stream: negotiation must not eat the name
    player.login_done = player.expect(r"Welcome")
    player.drain(0.3)
    expected = {(WONT, ECHO), (WONT, SGA), (DO, TTYPE), (DO, NAWS), (WONT, UNKNOWN),
                (DONT, LINEMODE)}
    got = [c for c in player.commands]
    check(sorted(got) == sorted(expected),
          f"negotiation replies {got}, expected each of {sorted(expected)} once")
    # Well-formed: every 0xFF in the raw stream starts a 3-byte negotiation
    # (the text itself has no 0xFF: it is all ASCII and UTF-8).
    raw = bytes(player.raw)
    i = 0
    while (i := raw.find(bytes([IAC]), i)) >= 0:
        check(i + 2 < len(raw) and raw[i + 1] in (WILL, WONT, DO, DONT),
              f"malformed IAC sequence at {i}: {raw[i:i + 3]!r}")
        i += 3
    # Once agreed, window size and terminal type subnegotiations are ignored.
    player.send(bytes([IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE]))
    player.send(bytes([IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE]))
    return player


def ends_of_line(speaker, listener):
    speaker.send(b"say one\r\nsay two\nsay three\r\x00say four\r")
    speaker.send(b"say five\r\n")
    for word in ("one", "two", "three", "four", "five"):
        listener.expect(rf"{speaker.name} says: {word}\r\n")
    for piece in (b"sa", b"y spl", b"it", b"\r", b"\n"):  # one line, five packets
        speaker.send(piece)
        time.sleep(0.02)
    listener.expect(rf"{speaker.name} says: split\r\n")
    # Telnet commands inside a line are taken out of it.
    speaker.send(b"say ab" + bytes([IAC, NOP]) + b"cd" + bytes([IAC, WILL, NAWS]) + b"ef\r\n")
    listener.expect(rf"{speaker.name} says: abcdef\r\n")


def overlong(player, listener):
    player.line(b"say " + b"x" * 600)
    player.expect(r"That line is too long \(the limit is 512 bytes\); it was ignored\.")
    player.line("say still here")
    listener.expect(rf"{player.name} says: still here\r\n")
    # 100 KB with no newline at all, in pieces: one error, bounded memory.
    for _ in range(25):
        player.send(b"y" * 4096)
    player.line(b"")
    player.expect(r"That line is too long")
    player.line("say after the flood")
    listener.expect(rf"{player.name} says: after the flood\r\n")
    player.expect(r"You say: after the flood")
    errors = player.text.count("That line is too long")
    check(errors == 2, f"{errors} overlong-line errors, expected 2 (one per long line)")
    check("xxx" not in listener.text and "yyy" not in listener.text,
          "the discarded part of a long line reached another player")
    # Exactly at the limit is fine.
    player.line(b"say " + b"z" * (LINE_MAX - 4))
    listener.expect(rf"{player.name} says: z{{{LINE_MAX - 4}}}\r\n")


def hostile_bytes(player, listener):
    start = len(listener.raw)
    player.line(b"say red:\x1b[31mRED\x1b[0m bell:\x07 nul:\x00 del:ab\x7fc tab:\t.")
    listener.expect(rf"{player.name} says: red:\[31mRED\[0m bell: nul: del:ac tab: \.\r\n")
    player.line(b"say ff:" + bytes([IAC, IAC]) + b": c1:\xc2\x9b: end")
    listener.expect(rf"{player.name} says: ff:\?: c1:: end\r\n")
    player.line("say valid: café ✓ 日本 🙂".encode())
    listener.expect(rf"{player.name} says: valid: café ✓ 日本 🙂\r\n")
    invalid = b"say bad: \xc3\x28 \xed\xa0\x80 \xc0\xaf \xf8\x88\x80\x80\x80 \xe2\x82 \xf4\x90\x80\x80 ok"
    player.line(invalid)
    listener.expect(rf"{player.name} says: bad: \?\( \?\?\? \?\? \?\?\?\?\? \?\? \?\?\?\? ok\r\n")
    received = bytes(listener.raw[start:])
    check(IAC not in received, "a 0xFF byte reached the other player")
    for control in (0x00, 0x07, 0x1B, 0x7F):
        check(bytes([control]) not in received, f"control byte {control:#x} reached the other player")
    received.decode("utf-8")  # strict: raises if anything invalid got through


def compression_refused(mud, listener, tag):
    COMPRESS2 = 86
    player = Player(mud.port).login(f"{tag}zipper")
    listener.expect(rf"{player.name} appears")
    player.line("say before")
    listener.expect(rf"{player.name} says: before\r\n")
    start = len(listener.raw)
    player.send(bytes([IAC, SB, COMPRESS2, IAC, SE]) + zlib.compress(b"say inflated\r\n" * 1000))
    mud.wait_log(rf"\({player.name}\): refused: it turned on compression")
    listener.expect(rf"{player.name} has lost the link")
    player.expect_closed()
    mud.wait_log(rf"'session [^']*' {player.name} ended")
    check(b"inflated" not in bytes(listener.raw[start:]), "a compressed line was inflated")
    print("ok: a peer that turned on compression was refused and disconnected")


def slow_reader(mud, talker, tag):
    reader = Player(mud.port, receive_buffer=4096).login(f"{tag}reader")
    talker.expect(rf"{reader.name} appears")
    # The reader may be dropped in the middle of a batch, so its "lost the
    # link" can reach the talker before the talker's own "end of" line:
    # look for it from here, not from wherever the batches left the cursor.
    mark = talker.cursor
    line = "say " + "w" * 400
    for batch in range(100):  # up to 4 MB for the reader, far over its cap
        talker.send((line + "\r\n").encode() * 99 + f"say end of {batch}\r\n".encode())
        # The talker reads every echo it caused, so that only the reader
        # falls behind (a talker that read for a fixed 10 ms fell behind too
        # on a loaded machine, and was dropped at its own cap).
        talker.expect(rf"You say: end of {batch}\r\n")
        if mud.log_matches(rf"\({reader.name}\): cannot send \(ENOBUFS\): dropping"):
            break
    mud.wait_log(rf"\({reader.name}\): cannot send \(ENOBUFS\): dropping the connection")
    mud.wait_log(rf"'session [^']*' {reader.name} ended")
    talker.cursor = mark
    talker.expect(rf"{reader.name} has lost the link")
    reader.sock.setblocking(True)
    while True:  # what was on its way still arrives; then the connection ends
        try:
            if not reader.sock.recv(1 << 20):
                break
        except ConnectionResetError:
            break
    talker.line("who")
    talker.expect(r"Players online: 2\r\n")
    print(f"ok: slow reader dropped after {batch + 1} x 100 lines of 400 bytes from the talker")


require_postgres()
tag = unique_tag("P")
schema = f"mud_t{os.getpid()}_protocol"
mud = Mud(schema, "--tick-ms", "60000")
try:
    mud.start()
    speaker = negotiation(mud, f"{tag}speaker")
    listener = Player(mud.port).login(f"{tag}listener")
    speaker.expect(rf"{listener.name} appears")
    speaker.name = speaker.text.split("Welcome, ")[1].split("!")[0]
    ends_of_line(speaker, listener)
    overlong(speaker, listener)
    hostile_bytes(speaker, listener)
    compression_refused(mud, listener, tag)
    slow_reader(mud, speaker, tag)
    speaker.line("who")  # still alive and well
    speaker.expect(r"Players online: 2")
    speaker.line("quit")
    speaker.expect_closed()
    listener.line("quit")
    listener.expect_closed()
    check(mud.stop() == 0, "samplex-mud did not exit 0")
    print("ok: negotiation answered, ends of line, overlong lines, hostile bytes scrubbed")
finally:
    mud.kill()
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

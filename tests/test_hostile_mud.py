# SPDX-License-Identifier: Apache-2.0
"""samplex-mud against hostile peers (--idle-ms 1500).

  slowloris   200 connections send one byte a second and never end a line,
              20 logged-in players do the same: the idle deadline sends each
              away politely (told why, saved when playing, then EOF) on
              time, while a real player's commands keep answering quickly;
              100 more type a bad name every 0.3 s at the login prompt: the
              login deadline sends them away
  long lines  a 1 MiB line with no end: told once that it is too long, the
              connection stays usable; a telnet subnegotiation that never
              ends (1 MiB): libtelnet gives up on it, the server's memory
              stays bounded
  junk        binary junk (every byte value, telnet commands, invalid UTF-8,
              NULs, escapes) at the login prompt and while playing: whatever
              the server answers is valid UTF-8, it never crashes
  resets      connections reset (SO_LINGER 0) mid-line at the prompt, right
              after typing a name (the player is loading from Postgres),
              mid-command while playing, and while the server is sending to
              them

After each: the descriptors the MUD holds fall back to where they were,
`who` counts only the players really there, and a fresh player can log in,
look around and quit with their progress saved. Last, SIGTERM while
players play, slowloris dribble and resets go on: everyone is saved, the
MUD exits 0 in time. Reports the numbers.
"""
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import (Mud, Player, check, fail, psql, require_postgres,  # noqa: E402
                         strip_telnet, unique_tag)

IDLE_S = 1.5
RSS_BOUND_KB = 64 * 1024


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    fail(f"no {field} for {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    return sock


class Harness:
    def __init__(self, mud, tag):
        self.mud = mud
        self.tag = tag
        self.fresh_count = 0
        self.base_fds = None
        self.base_rss = None

    @property
    def pid(self):
        return self.mud.process.pid

    def alive(self):
        return self.mud.process.poll() is None

    def login(self, suffix):
        return Player(self.mud.port).login(f"{self.tag}{suffix}")

    def fresh(self, scenario):
        """A well-behaved player: logs in, looks, asks who is on, quits saved."""
        check(self.alive(), f"after {scenario}: the MUD died")
        self.fresh_count += 1
        player = self.login(f"f{self.fresh_count}")
        player.line("look")
        player.expect(r"Exits: [a-z, ]+\.\r\n")
        player.line("who")
        online = int(player.expect(r"Players online: (\d+)\r\n").group(1))
        player.line("quit")
        player.expect(rf"Your progress is saved\. Goodbye, {player.name}!")
        player.expect_closed()
        return online

    def settle(self, scenario, detail):
        """Waits for the descriptors to fall back, checks a fresh player and
        the memory, prints a line."""
        deadline = time.monotonic() + 15
        while fd_count(self.pid) > self.base_fds:
            check(self.alive(), f"{scenario}: the MUD died")
            if time.monotonic() > deadline:
                self.mud.dump_log(30)
                fail(f"{scenario}: the MUD holds {fd_count(self.pid)} descriptors, "
                     f"not {self.base_fds}, 15 s later")
            time.sleep(0.05)
        online = self.fresh(scenario)
        check(online == 1, f"after {scenario}: `who` counts {online} players, not just us")
        rss = proc_status(self.pid, "VmRSS")
        print(f"{scenario:11s} {detail}; VmRSS {rss} KiB (+{rss - self.base_rss})", flush=True)
        check(rss - self.base_rss < RSS_BOUND_KB,
              f"after {scenario}: VmRSS {rss} KiB, {rss - self.base_rss} KiB over the baseline")


# ---- Slowloris --------------------------------------------------------------

class Loris:
    def __init__(self, sock, started):
        self.sock = sock
        self.started = started
        self.data = bytearray()
        self.closed_at = None

    def pump(self):
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed_at = time.monotonic()
                    return
                self.data += chunk
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.closed_at = time.monotonic()

    def text(self):
        text, _ = strip_telnet(bytes(self.data), {})
        return text.decode("utf-8")


def scenario_slowloris(harness):
    port = harness.mud.port
    playing = []
    for index in range(20):
        player = harness.login(f"s{index}")
        logged_in = time.monotonic()  # the idle deadline was re-armed just before
        player.drain(0.05)
        playing.append(Loris(player.sock, logged_in))
    lorises = [Loris(raw_connect(port), time.monotonic()) for _ in range(200)]
    everyone = lorises + playing
    # A real player, typing every 0.3 s throughout.
    real = harness.login("r")
    trips = []
    byte = 0
    next_byte = time.monotonic()
    deadline = time.monotonic() + IDLE_S + 6
    while time.monotonic() < deadline and any(l.closed_at is None for l in everyone):
        if time.monotonic() >= next_byte:
            for loris in everyone:
                if loris.closed_at is None:
                    try:
                        loris.sock.send(bytes([ord("a") + byte % 26]))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
            byte += 1
            next_byte += 1.0
        sent = time.monotonic()
        real.line("look")
        real.expect(r"Exits: [a-z, ]+\.\r\n", timeout=5)
        trips.append(time.monotonic() - sent)
        readable, _, _ = select.select([l.sock for l in everyone if l.closed_at is None], [], [],
                                       0.3)
        for loris in everyone:
            if loris.closed_at is None:
                loris.pump()
    still_open = sum(1 for l in everyone if l.closed_at is None)
    check(still_open == 0, f"{still_open} of {len(everyone)} slowloris connections still open")
    waited = [l.closed_at - l.started for l in lorises]
    for loris in lorises:
        text = loris.text()
        check(f"You were silent for {IDLE_S:g} seconds. Come back when you are ready. Goodbye!"
              in text, f"a slowloris was not told why: {text[-200:]!r}")
    for loris in playing:
        text = loris.text()
        check(f"You have been idle for {IDLE_S:g} seconds, so we are letting you go." in text and
              "Your progress is saved. Goodbye" in text,
              f"a slow player was not told why or not saved: {text[-300:]!r}")
    waited_playing = [l.closed_at - l.started for l in playing]
    check(min(waited + waited_playing) >= IDLE_S - 0.05,
          f"a slowloris was sent away after {min(waited):.2f} s, before the {IDLE_S} s deadline")
    check(max(waited + waited_playing) <= IDLE_S + 3,
          f"a slowloris lasted {max(waited):.2f} s (deadline {IDLE_S} s)")
    trips.sort()
    check(trips[-1] < 1.0, f"the real player waited {trips[-1]:.3f} s for a command")
    for loris in everyone:
        loris.sock.close()
    real.line("quit")
    real.expect(r"Goodbye")
    real.expect_closed()
    return (f"{len(lorises)} slowloris + {len(playing)} slow players sent away politely after "
            f"{min(waited + waited_playing):.2f}-{max(waited + waited_playing):.2f} s "
            f"({byte} bytes each at 1/s); a real player's {len(trips)} commands answered in "
            f"p50 {trips[len(trips) // 2] * 1000:.1f} ms, max {trips[-1] * 1000:.1f} ms")


def scenario_login_loris(harness):
    """100 connections that never log in but keep typing bad names, one
    short line every 0.3 s: the login deadline (the idle deadline, counted
    from the connect, not re-armed by lines at the prompt) sends them away."""
    lorises = [Loris(raw_connect(harness.mud.port), time.monotonic()) for _ in range(100)]
    lines = 0
    deadline = time.monotonic() + IDLE_S + 4
    next_line = time.monotonic()
    while time.monotonic() < deadline and any(l.closed_at is None for l in lorises):
        if time.monotonic() >= next_line:
            for loris in lorises:
                if loris.closed_at is None:
                    try:
                        loris.sock.send(b"x\r\n")
                        lines += 1
                    except (BrokenPipeError, ConnectionResetError):
                        pass
            next_line += 0.3
        select.select([l.sock for l in lorises if l.closed_at is None], [], [], 0.05)
        for loris in lorises:
            if loris.closed_at is None:
                loris.pump()
    still_open = sum(1 for l in lorises if l.closed_at is None)
    check(still_open == 0, f"{still_open} of {len(lorises)} connections typing bad names "
                           f"at the login prompt still open after {IDLE_S + 4} s")
    waited = [l.closed_at - l.started for l in lorises]
    for loris in lorises:
        text = loris.text()
        check(f"You did not give a name within {IDLE_S:g} seconds. Come back when you are ready. "
              "Goodbye!" in text, f"a login loris was not told why: {text[-200:]!r}")
        loris.sock.close()
    check(min(waited) >= IDLE_S - 0.05 and max(waited) <= IDLE_S + 3,
          f"login lorises sent away after {min(waited):.2f}-{max(waited):.2f} s "
          f"(deadline {IDLE_S} s)")
    return (f"{len(lorises)} connections typing a bad name every 0.3 s ({lines} lines) sent away "
            f"after {min(waited):.2f}-{max(waited):.2f} s")


# ---- Long lines ---------------------------------------------------------------

def scenario_long_lines(harness):
    player = Player(harness.mud.port, "long")
    player.expect(r"known\? ")
    chunk = b"x" * 65536
    for _ in range(16):  # 1 MiB, no end of line
        player.send(chunk)
    player.line("")
    player.expect(r"That line is too long \(the limit is 512 bytes\); it was ignored\.")
    player.line(f"{harness.tag}l1")
    player.expect(r"Welcome")
    player.line("look")
    player.expect(r"Exits:")
    check(player.text.count("too long") == 1, "told more than once about one long line")
    peak = proc_status(harness.pid, "VmRSS")
    player.line("quit")
    player.expect(r"Goodbye")
    player.expect_closed()

    # IAC SB NAWS, then 1 MiB that never reaches IAC SE.
    sub = Player(harness.mud.port, "subneg")
    sub.expect(r"known\? ")
    sub.send(bytes([255, 250, 31]))
    for _ in range(16):
        sub.send(b"\x01" * 65536)
    sub.send(bytes([255, 240]))  # IAC SE, finally
    sub.line("")
    sub.line(f"{harness.tag}l2")
    sub.expect(r"(Welcome|known\? )")
    peak = max(peak, proc_status(harness.pid, "VmRSS"))
    sub.close()
    check(peak - harness.base_rss < RSS_BOUND_KB, f"VmRSS peaked at {peak} KiB")
    return f"1 MiB line refused once, 1 MiB subnegotiation dropped, peak VmRSS {peak} KiB"


# ---- Junk -------------------------------------------------------------------------

def junk_bytes(rng, size):
    pieces = [bytes(range(256)), b"\x00" * 64, b"\xff\xfa\x18\x00", b"\xff\xfb\x01\xff\xfd\x03",
              b"\xff\xff\xff", b"\xc3\x28\xed\xa0\x80\xf4\x90\x80\x80\xc0\xaf",
              b"\x1b[2J\x1b]0;x\x07", b"\r\n", b"\r\x00", b"\n\r", b"say \x08\x08\x7f\x9b\r\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(pieces) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 300))
    return bytes(out[:size])


def scenario_junk(harness):
    import random
    rng = random.Random(5)
    sent = 0
    players = [harness.login(f"j{index}") for index in range(10)]
    strangers = [Player(harness.mud.port, f"stranger{i}") for i in range(30)]
    everyone = players + strangers
    # Junk for about a second: less than the idle deadline, though a line
    # of junk that is not a line (no end) leaves the deadline running.
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        for player in everyone:
            if player.closed:
                continue
            data = junk_bytes(rng, rng.randint(100, 8192))
            try:
                player.send(data)
                sent += len(data)
            except (BrokenPipeError, ConnectionResetError):
                player.closed = True
            player.drain(0.005)
    # The players can still play once they say something sensible.
    still_playing = 0
    for player in players:
        if not player.closed:
            player.line("")
            player.line("look")
            player.expect(r"Exits: [a-z, ]+\.\r\n")
            still_playing += 1
    reasons = {}
    for player in everyone:
        player.drain(0.05)
        # Whatever the MUD said is valid UTF-8 once telnet is taken out.
        text, _ = strip_telnet(bytes(player.raw), {})
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            fail(f"the MUD sent invalid UTF-8 to a junk sender: {error}")
        if player.closed:
            reason = "unexplained"
            for said, why in (("silent for", "silent"), ("idle for", "idle"),
                              ("did not give a name within", "no name in time")):
                if said in text:
                    reason = why
            check(reason != "unexplained", f"a junk sender was dropped without a word: "
                                           f"{text[-300:]!r}")
            reasons[reason] = reasons.get(reason, 0) + 1
        player.close()
    return (f"{sent} bytes of junk from {len(everyone)} connections; {still_playing} of "
            f"{len(players)} players played on; closed: {reasons or 'none'}")


# ---- Resets -------------------------------------------------------------------------

def scenario_resets(harness):
    port = harness.mud.port
    counts = {"prompt": 0, "loading": 0, "playing": 0, "sending": 0}
    for _ in range(200):  # mid-line at the prompt
        sock = raw_connect(port)
        sock.send(b"halfana")
        reset(sock)
        counts["prompt"] += 1
    for index in range(100):  # the name typed: the player is loading from Postgres
        sock = raw_connect(port)
        sock.send(f"{harness.tag}z{index}\r\nlook\r\nsay hi\r\n".encode())
        reset(sock)
        counts["loading"] += 1
    for index in range(30):  # playing, mid-command
        player = harness.login(f"p{index}")
        player.send(b"say this line will never en")
        reset(player.sock)
        counts["playing"] += 1
    for index in range(30):  # playing, the server busy answering
        player = harness.login(f"q{index}")
        player.send(b"look\r\nwho\r\n" * 200)
        reset(player.sock)
        counts["sending"] += 1
    return ", ".join(f"{count} reset {where}" for where, count in counts.items())


def scenario_sigterm(harness):
    """SIGTERM while 10 players play, 100 slowloris connections dribble and
    connections keep being opened and reset (some mid-login): every player
    is saved and told goodbye, the MUD exits 0 in time."""
    import threading
    port = harness.mud.port
    players = [harness.login(f"t{index}") for index in range(10)]
    lorises = [raw_connect(port) for _ in range(100)]
    for sock in lorises:
        sock.send(b"t")
    stop = threading.Event()
    resets = [0]

    def resetter():
        index = 0
        while not stop.is_set():
            try:
                sock = raw_connect(port)
                sock.send(f"{harness.tag}y{index % 50}\r\n".encode() if index % 2 else b"ha")
                reset(sock)
                resets[0] += 1
            except OSError:
                pass  # the listener is closed: the shutdown has begun
            index += 1
            time.sleep(0.002)
    thread = threading.Thread(target=resetter)
    thread.start()
    time.sleep(0.5)
    for player in players:
        player.line("look")
    begun = time.monotonic()
    status = harness.mud.stop()
    took = time.monotonic() - begun
    stop.set()
    thread.join()
    check(status == 0, f"samplex-mud exited {status} on SIGTERM under load")
    check(took < 8, f"the shutdown took {took:.2f} s")
    for player in players:
        player.expect(r"\*\*\* The server is shutting down\. Saving everyone\.\.\. \*\*\*")
        player.expect(rf"Your progress is saved\. Goodbye, {player.name}!")
        player.expect_closed()
    for sock in lorises:
        sock.close()
    return (f"exited 0 in {took:.2f} s with 10 players (all saved), 100 slowloris and "
            f"{resets[0]} connections reset around it")


def main():
    require_postgres()
    tag = unique_tag("H")
    schema = f"mud_t{os.getpid()}_hostile"
    mud = Mud(schema, "--tick-ms", "1000", "--autosave-ms", "60000",
              "--idle-ms", str(int(IDLE_S * 1000)))
    started = time.monotonic()
    try:
        mud.start()
        harness = Harness(mud, tag)
        harness.fresh("start")
        harness.base_fds = fd_count(harness.pid)
        harness.base_rss = proc_status(harness.pid, "VmRSS")
        print(f"baseline: {harness.base_fds} descriptors, VmRSS {harness.base_rss} KiB", flush=True)
        harness.settle("slowloris", scenario_slowloris(harness))
        harness.settle("login loris", scenario_login_loris(harness))
        harness.settle("long lines", scenario_long_lines(harness))
        harness.settle("junk", scenario_junk(harness))
        harness.settle("resets", scenario_resets(harness))
        trouble = mud.log_matches(r"cannot start a session|the loop failed|save failed|"
                                  r"loading the player failed")
        check(not trouble, f"errors in the log: {[m.string for m in trouble[:5]]}")
        print(f"{'sigterm':11s} {scenario_sigterm(harness)}", flush=True)
    finally:
        mud.kill()
        psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    print(f"PASS in {time.monotonic() - started:.1f} s")


main()

# SPDX-License-Identifier: Apache-2.0
"""samplex-mud: 200 bot players for 10 s (--tick-ms 100, --autosave-ms 2000).

Each bot logs in, then plays: say, emote, look, moves, sometimes who, and
waits for the answer to each command before the next. Then every bot quits
and must be told its progress is saved. Checks:
- every bot logged in, got every answer, quit cleanly; no errors in the log;
- bots heard each other (say/emote reach the others in the room);
- autosave saved all 200 in one batch, with no failure;
- the tick did not drift: over the run, first-to-last tick spans exactly
  (ticks - 1) intervals give or take the lateness; no tick was skipped;
- the MUD exits 0 on SIGTERM afterwards.
Reports the tick's lateness (mean, max) and command round trips.
"""
import asyncio
import os
import random
import re
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mud_support import Mud, check, fail, psql, require_postgres, unique_tag  # noqa: E402

BOTS = 200
PLAY_S = 10.0
TICK_MS = 100
COMMAND_TIMEOUT_S = 10.0


class Bot:
    def __init__(self, index, tag):
        self.index = index
        self.wanted_name = f"{tag}b{index}"
        self.name = None
        self.random = random.Random(index)
        self.text = ""
        self.cursor = 0
        self.commands = 0
        self.round_trips = []
        self.heard = 0

    async def expect(self, pattern):
        regex = re.compile(pattern)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            match = regex.search(self.text, self.cursor)
            if match:
                self.cursor = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"bot {self.index}: no {pattern!r}; got "
                                     f"{self.text[self.cursor:][-300:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise AssertionError(f"bot {self.index}: closed while waiting for {pattern!r}")
            self.text += chunk.decode("utf-8")  # strict: the MUD sends only valid UTF-8
            # Keep memory flat: drop what is behind the cursor.
            if self.cursor > 65536:
                self.heard += self.text.count(" says: ", 0, self.cursor)
                self.text = self.text[self.cursor:]
                self.cursor = 0

    def command(self, sequence):
        roll = self.random.random()
        token = f"t{self.index}x{sequence}"
        if roll < 0.25:
            return f"say {token}", rf"You say: {token}\r\n"
        if roll < 0.35:
            return f"emote nods {token}", rf"{self.name} nods {token}\r\n"
        if roll < 0.45:
            return "look", r"Exits: [a-z, ]+\.\r\n"
        if roll < 0.47:
            return "who", r"Players online: \d+\r\n"
        move = self.random.choice(["n", "s", "e", "w", "u", "d"])
        return move, r"(Exits: [a-z, ]+\.|You cannot go that way\.)\r\n"

    async def run(self, port, deadline):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        await self.expect(r"known\? ")
        self.writer.write(f"{self.wanted_name}\r\n".encode())
        self.name = (await self.expect(r"Welcome, (\w+)!")).group(1)
        sequence = 0
        while time.monotonic() < deadline:
            line, answer = self.command(sequence)
            sequence += 1
            sent = time.monotonic()
            self.writer.write(f"{line}\r\n".encode())
            await self.expect(answer)
            self.round_trips.append(time.monotonic() - sent)
            self.commands += 1
            await asyncio.sleep(self.random.uniform(0.5, 1.5))
        self.writer.write(b"quit\r\n")
        await self.expect(rf"Your progress is saved\. Goodbye, {self.name}!")
        rest = await asyncio.wait_for(self.reader.read(), COMMAND_TIMEOUT_S)  # to EOF
        self.heard += (self.text + rest.decode("utf-8")).count(" says: ")
        self.writer.close()


async def play(port, tag):
    bots = [Bot(i, tag) for i in range(BOTS)]
    deadline = time.monotonic() + PLAY_S
    results = await asyncio.gather(*(bot.run(port, deadline) for bot in bots),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    return bots, errors


def wall_seconds(stamp):
    t = datetime.strptime(stamp, "%H:%M:%S.%f")
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def tick_report(mud):
    ticks = [(int(m.group(2)), wall_seconds(m.group(1)), float(m.group(3)), int(m.group(4)))
             for m in mud.log_matches(r"^(\S+) tick (\d+): late ([\d.]+) ms, skipped (\d+)")]
    check(len(ticks) >= PLAY_S * 1000 / TICK_MS, f"only {len(ticks)} ticks logged")
    lateness = [late for _, _, late, _ in ticks]
    skipped = sum(s for _, _, _, s in ticks)
    first, last = ticks[0], ticks[-1]
    # No drift: targets are start + n * interval. A tick's target is when it
    # was logged minus its lateness (plus the little the handler took before
    # logging), so first and last targets are (n - 1) intervals apart. A
    # timer re-armed from "now" would be off by the sum of all lateness.
    span_ms = (last[1] - first[1]) * 1000 - (last[2] - first[2])
    ideal_ms = (last[0] - first[0] + skipped) * TICK_MS
    drift_ms = span_ms - ideal_ms
    check(abs(drift_ms) <= 20, f"tick drift: {len(ticks)} ticks: the targets spanned "
                               f"{span_ms:.1f} ms, ideal {ideal_ms} ms")
    check(skipped == 0, f"{skipped} ticks skipped (a handler overran a whole interval)")
    check(max(lateness) < TICK_MS, f"a tick was {max(lateness):.3f} ms late")
    return len(ticks), sum(lateness) / len(lateness), max(lateness), drift_ms


def check_log(mud):
    created = len(mud.log_matches(r"session \S+: \w+ created, in "))
    check(created == BOTS, f"{created} players created, expected {BOTS}")
    full = mud.log_matches(rf"autosave: {BOTS} of {BOTS} players saved in one pipelined batch, 0 failed")
    check(len(full) >= 2, f"{len(full)} autosaves of all {BOTS} players, expected >= 2")
    failed = mud.log_matches(r"(autosave|final save): \d+ of \d+ players saved .* ([1-9]\d*) failed")
    check(not failed, f"autosave failures: {[m.group(0) for m in failed]}")
    trouble = mud.log_matches(r"failed:|cannot |connection lost|dropping the connection|telnet error")
    check(not trouble, f"errors in the log: {[m.string for m in trouble[:5]]}")
    ended = mud.log_matches(r"flow \d+ 'session [^']*' \w+ ended \(ok\)")
    check(len(ended) == BOTS, f"{len(ended)} sessions ended ok, expected {BOTS}")


require_postgres()
tag = unique_tag("L")
schema = f"mud_t{os.getpid()}_load"
mud = Mud(schema, "--tick-ms", str(TICK_MS), "--autosave-ms", "2000", "--idle-ms", "60000")
try:
    mud.start()
    begun = time.monotonic()
    bots, errors = asyncio.run(play(mud.port, tag))
    took = time.monotonic() - begun
    if errors:
        mud.dump_log(20)
        fail(f"{len(errors)} bots failed; first: {errors[0]!r}")
    mud.wait_log(rf"flow \d+ 'session [^']*' {bots[-1].name} ended")
    ticks, mean_late, max_late, drift = tick_report(mud)
    cpu = mud.cpu_seconds()
    check(mud.stop() == 0, "samplex-mud did not exit 0")
    check_log(mud)
    commands = sum(b.commands for b in bots)
    heard = sum(b.heard for b in bots)
    check(all(b.commands >= 3 for b in bots), "a bot ran fewer than 3 commands")
    check(heard > commands * 0.25, f"bots heard only {heard} says from others")
    trips = sorted(t for b in bots for t in b.round_trips)
    p50, p99 = trips[len(trips) // 2] * 1000, trips[int(len(trips) * 0.99)] * 1000
    saved = psql(f"SELECT count(*) FROM {schema}.mud_players")
    check(saved == str(BOTS), f"{saved} player rows, expected {BOTS}")
    print(f"ok: {BOTS} bots for {took:.1f} s: {commands} commands (round trip p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms), {heard} says heard by others, no errors; "
          f"the MUD used {cpu[0]:.2f} s user + {cpu[1]:.2f} s system CPU")
    print(f"tick lateness: {ticks} ticks every {TICK_MS} ms, mean {mean_late:.3f} ms, "
          f"max {max_late:.3f} ms, 0 skipped, drift over the run {drift:+.1f} ms")
finally:
    mud.kill()
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

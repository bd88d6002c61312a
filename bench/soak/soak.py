# SPDX-License-Identifier: Apache-2.0
"""The soak (bench/soak/run.sh runs this): samplex-echo, samplex-mud and
bench-soak-pg under mixed load for a long while, their resident memory
(VmRSS) sampled every 10 s.

Load (one asyncio thread here, plus bench-soak-pg's own loop):
- echo: 16 clients; each connects, echoes 20 to 200 messages of 1 B to
  64 KiB (checked byte for byte) 10 to 50 ms apart, then closes (one time
  in four with a reset), and starts again;
- MUD: 32 bots; each logs in (the MUD loads or creates the player in
  Postgres), plays 10 to 60 commands (say, emote, look, moves, who) 0.2 to
  1 s apart, then quits (saved) or, one time in five, drops the link; and
  starts again. The MUD ticks every 100 ms and autosaves every 5 s;
- queries: bench-soak-pg at 1,000 queries/s through a pipelined pool (see
  its source), flows coming and going, a solo connection every 10 s.

Memory must flatten, not climb: after a warm-up (the first 10% of the run,
at least 30 s), the highest sample of the second half may exceed the
highest of the first half by at most 1 MiB. Writes the series and the
verdict as Markdown (--out) and exits 1 if anything climbed, any check of
the load failed, or a server did not exit 0 at the end.
"""
import argparse
import asyncio
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
from mud_support import Mud, psql  # noqa: E402

SAMPLE_S = 10
ECHO_CLIENTS = 16
MUD_BOTS = 32
PG_RATE = 1000
GROWTH_LIMIT_KB = 1024


class Counters:
    def __init__(self):
        self.echo_messages = 0
        self.echo_bytes = 0
        self.echo_connections = 0
        self.echo_errors = []
        self.mud_logins = 0
        self.mud_commands = 0
        self.mud_quits = 0
        self.mud_drops = 0
        self.mud_errors = []


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset_writer(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


# ---- Echo clients -------------------------------------------------------------

async def echo_client(index, port, stop, counters):
    rng = random.Random(index)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            counters.echo_connections += 1
            for _ in range(rng.randint(20, 200)):
                if stop.is_set():
                    break
                data = rng.randbytes(rng.choice((1, 100, 1000, 10000, 65536)))
                writer.write(data)
                got = await asyncio.wait_for(reader.readexactly(len(data)), 10)
                if got != data:
                    counters.echo_errors.append(f"client {index}: echo differs")
                counters.echo_messages += 1
                counters.echo_bytes += len(data)
                await asyncio.sleep(rng.uniform(0.01, 0.05))
            if rng.random() < 0.25:
                reset_writer(writer)
            else:
                writer.close()
                await writer.wait_closed()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
            counters.echo_errors.append(f"client {index}: {error!r}")
            await asyncio.sleep(1)


# ---- MUD bots -------------------------------------------------------------------

class Bot:
    def __init__(self, index, tag, port, counters):
        self.index = index
        self.name = f"{tag}b{index}"
        self.port = port
        self.counters = counters
        self.rng = random.Random(1000 + index)
        self.text = ""

    async def expect(self, pattern, timeout=15):
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text)
            if match:
                self.text = self.text[match.end():]
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern!r}; got {self.text[-200:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise ConnectionError(f"closed while waiting for {pattern!r}")
            self.text += chunk.decode("utf-8", "replace")
            self.text = self.text[-65536:]

    def command(self, sequence):
        roll = self.rng.random()
        token = f"s{self.index}x{sequence}"
        if roll < 0.25:
            return f"say {token}", rf"You say: {token}\r\n"
        if roll < 0.35:
            return f"emote waves {token}", rf"waves {token}\r\n"
        if roll < 0.5:
            return "look", r"Exits: [a-z, ]+\.\r\n"
        if roll < 0.55:
            return "who", r"Players online: \d+\r\n"
        move = self.rng.choice(["n", "s", "e", "w", "u", "d"])
        return move, r"(Exits: [a-z, ]+\.|You cannot go that way\.)\r\n"

    async def session(self, stop):
        self.text = ""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            await self.expect(r"known\? ")
            self.writer.write(f"{self.name}\r\n".encode())
            match = await self.expect(r"(Welcome(,| back,) \w+|already here)")
            if "already here" in match.group(1):
                await asyncio.sleep(0.5)  # our last session is still leaving
                self.writer.close()
                return
            self.counters.mud_logins += 1
            for sequence in range(self.rng.randint(10, 60)):
                if stop.is_set():
                    break
                line, answer = self.command(sequence)
                self.writer.write(f"{line}\r\n".encode())
                await self.expect(answer)
                self.counters.mud_commands += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            if self.rng.random() < 0.2:
                reset_writer(self.writer)
                self.counters.mud_drops += 1
                await asyncio.sleep(0.3)  # the MUD saves us before the next login
                return
            self.writer.write(b"quit\r\n")
            await self.expect(r"Your progress is saved\. Goodbye")
            self.counters.mud_quits += 1
        finally:
            self.writer.close()

    async def run(self, stop):
        while not stop.is_set():
            try:
                await self.session(stop)
            except (OSError, asyncio.TimeoutError, TimeoutError, ConnectionError) as error:
                self.counters.mud_errors.append(f"bot {self.index}: {error!r}")
                await asyncio.sleep(1)


# ---- Sampling ---------------------------------------------------------------------

async def sampler(processes, seconds, stop, counters, samples, pg_log):
    started = time.monotonic()
    next_at = started
    while True:
        next_at += SAMPLE_S
        await asyncio.sleep(max(0, next_at - time.monotonic()))
        elapsed = round(time.monotonic() - started)
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} during the soak")
        row = {"t": elapsed}
        for name, process in processes.items():
            row[name] = rss_kb(process.pid)
            row[name + "_fds"] = fds(process.pid)
        row["echo_messages"] = counters.echo_messages
        row["mud_commands"] = counters.mud_commands
        row["pg"] = last_pg_line(pg_log)
        samples.append(row)
        print(f"t={elapsed:4d}s  VmRSS KiB: echo {row['echo']:6d}  mud {row['mud']:6d}  "
              f"soak-pg {row['soak-pg']:6d}   echo msgs {counters.echo_messages}  "
              f"mud cmds {counters.mud_commands}  {row['pg']}", flush=True)
        if elapsed >= seconds:
            stop.set()
            return


def last_pg_line(path):
    with open(path) as log:
        lines = [line.strip() for line in log if line.startswith("soak-pg t=")]
    if not lines:
        return ""
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[-1]))
    return f"pg ok {fields.get('ok')} errors {fields.get('pg_errors')} " \
           f"timeouts {fields.get('timeouts')} other {fields.get('other')}"


async def load(ports, processes, seconds, tag, counters, samples, pg_log):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(echo_client(i, ports["echo"], stop, counters))
             for i in range(ECHO_CLIENTS)]
    tasks += [asyncio.create_task(Bot(i, tag, ports["mud"], counters).run(stop))
              for i in range(MUD_BOTS)]
    try:
        await sampler(processes, seconds, stop, counters, samples, pg_log)
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()


# ---- Verdict and report -------------------------------------------------------------

def verdict(samples, name, seconds):
    warm = max(30, seconds // 10)
    series = [(row["t"], row[name]) for row in samples if row["t"] > warm]
    if len(series) < 4:
        return None, "too short to judge"
    half = len(series) // 2
    first = max(value for _, value in series[:half])
    second = max(value for _, value in series[half:])
    growth = second - first
    # Least-squares slope over the second half, KiB per minute.
    points = series[half:]
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60 if spread else 0
    flat = growth <= GROWTH_LIMIT_KB
    text = (f"max {first} KiB over the first half, {second} KiB over the second "
            f"({growth:+d} KiB); second-half slope {slope:+.1f} KiB/min: "
            f"{'FLAT' if flat else 'CLIMBING'}")
    return flat, text


def write_report(path, seconds, samples, verdicts, counters, pg_final, statuses):
    names = ["echo", "mud", "soak-pg"]
    out = []
    out.append("# Soak: resident memory under mixed load\n")
    out.append(f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
               f"{seconds} s ({seconds / 60:.0f} min), by `bench/soak/run.sh`; kernel "
               f"{os.uname().release}, {os.cpu_count()} CPUs. VmRSS from /proc/PID/status "
               f"every {SAMPLE_S} s.\n")
    out.append("Load:\n\n" + __doc__.split("Load (", 1)[1].split("Memory must", 1)[0]
               .split("\n", 1)[1].strip() + "\n")
    out.append("## Verdict\n")
    out.append("Rule: after the warm-up (first 10% of the run, at least 30 s), the highest "
               f"sample of the second half exceeds the highest of the first half by at most "
               f"{GROWTH_LIMIT_KB} KiB.\n")
    for name in names:
        out.append(f"- **{name}**: {verdicts[name][1]}")
    out.append("")
    out.append("## Work done\n")
    out.append(f"- echo: {counters.echo_messages} messages ({counters.echo_bytes >> 20} MiB) "
               f"over {counters.echo_connections} connections, {len(counters.echo_errors)} "
               "errors")
    out.append(f"- MUD: {counters.mud_logins} logins, {counters.mud_commands} commands, "
               f"{counters.mud_quits} quits, {counters.mud_drops} dropped links, "
               f"{len(counters.mud_errors)} errors")
    out.append(f"- queries: {pg_final}")
    out.append(f"- exit statuses after SIGTERM: " +
               ", ".join(f"{name} {status}" for name, status in statuses.items()))
    for error in (counters.echo_errors + counters.mud_errors)[:10]:
        out.append(f"  - error: `{error}`")
    out.append("")
    out.append("## Series (VmRSS, KiB; descriptors in parentheses)\n")
    out.append("| t (s) | samplex-echo | samplex-mud | bench-soak-pg |")
    out.append("|---:|---:|---:|---:|")
    for row in samples:
        out.append(f"| {row['t']} | " + " | ".join(
            f"{row[name]} ({row[name + '_fds']})" for name in names) + " |")
    out.append("")
    with open(path, "w") as report:
        report.write("\n".join(out))


def start_echo(bin_dir):
    process = subprocess.Popen([os.path.join(bin_dir, "samplex-echo"), "--port", "0",
                                "--host", "127.0.0.1"], stdout=subprocess.PIPE)
    line = process.stdout.readline().decode()
    match = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not match:
        raise RuntimeError(f"samplex-echo: no 'listening on' line: {line!r}")
    return process, int(match.group(1))


def stop_process(process, timeout=30):
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return "killed"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ["SAMPLEX_BIN_DIR"] = args.bin_dir
    tag = f"K{os.getpid()}"
    schema = f"soak_{os.getpid()}"
    counters = Counters()
    samples = []
    pg_log = f"/tmp/samplex-soak-pg.{os.getpid()}.log"
    echo, echo_port = start_echo(args.bin_dir)
    mud = Mud(schema, "--tick-ms", "100", "--autosave-ms", "5000", "--idle-ms", "30000")
    pg = None
    statuses = {}
    try:
        mud.start()
        with open(pg_log, "w") as log:
            pg = subprocess.Popen([os.path.join(args.bin_dir, "bench-soak-pg"), "--rate",
                                   str(PG_RATE)], stdout=log, stderr=subprocess.STDOUT)
        processes = {"echo": echo, "mud": mud.process, "soak-pg": pg}
        print(f"soak for {args.seconds} s: echo :{echo_port}, mud :{mud.port}, "
              f"soak-pg pid {pg.pid}", flush=True)
        asyncio.run(load({"echo": echo_port, "mud": mud.port}, processes, args.seconds, tag,
                         counters, samples, pg_log))
    finally:
        statuses["echo"] = stop_process(echo)
        statuses["mud"] = mud.stop() if mud.process else "not started"
        statuses["soak-pg"] = stop_process(pg) if pg else "not started"
        try:
            psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except SystemExit:
            pass
    with open(pg_log) as log:
        finals = [line.strip() for line in log if line.startswith("soak-pg done")]
    os.unlink(pg_log)
    pg_final = finals[-1][len("soak-pg done "):] if finals else "no final line"
    verdicts = {name: verdict(samples, name, args.seconds) for name in ("echo", "mud", "soak-pg")}
    for name, (flat, text) in verdicts.items():
        print(f"{name}: {text}")
    print(f"echo: {counters.echo_messages} messages, {len(counters.echo_errors)} errors; "
          f"mud: {counters.mud_logins} logins, {counters.mud_commands} commands, "
          f"{len(counters.mud_errors)} errors; queries: {pg_final}; exit: {statuses}")
    if args.out:
        write_report(args.out, args.seconds, samples, verdicts, counters, pg_final, statuses)
        print(f"report: {args.out}")
    ok = all(flat is not False for flat, _ in verdicts.values()) and \
        not counters.echo_errors and not counters.mud_errors and \
        all(status == 0 for status in statuses.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


sys.exit(main())

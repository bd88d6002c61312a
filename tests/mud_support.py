# SPDX-License-Identifier: Apache-2.0
"""Helpers for the samplex-mud tests (tests/test_mud_*.py).

- require_postgres(): exit 77 (skip) without PGHOST/PGPORT, or fail under CI=true.
- Mud: runs build/bin/samplex-mud on 127.0.0.1 port 0 in a private schema,
  reads its log live, waits for log lines, stops it with a signal.
- Player: one telnet connection over a real socket; expect() waits for text.
- psql(): runs SQL against the test database (to check or clean up).

Every test uses its own schema (mud_t<pid>_<name>) and player names made
from its pid, so tests can run in parallel against the shared database.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

IAC, DONT, DO, WONT, WILL, SB, NOP, SE = 255, 254, 253, 252, 251, 250, 241, 240


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def require_postgres():
    if os.environ.get("PGHOST") and os.environ.get("PGPORT"):
        return
    if os.environ.get("CI") in ("true", "1"):
        fail("CI=true but no PostgreSQL (PGHOST/PGPORT unset): run scripts/test.sh")
    print("SKIP: no PostgreSQL (run scripts/test.sh)", flush=True)
    sys.exit(77)


def mud_binary():
    bin_dir = os.environ.get("SAMPLEX_BIN_DIR")
    if not bin_dir:
        here = os.path.dirname(os.path.abspath(__file__))
        bin_dir = os.path.join(here, "..", "build", "bin")
    path = os.path.join(bin_dir, "samplex-mud")
    check(os.access(path, os.X_OK), f"no samplex-mud at {path}")
    return path


def psql(sql):
    """Runs SQL with the PG* environment; returns stdout (unaligned, no headers)."""
    result = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                            capture_output=True, text=True, timeout=30)
    check(result.returncode == 0, f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


def unique_tag(name):
    """A short tag for names and schemas, unique per test process."""
    return f"{name}{os.getpid()}"


class Mud:
    """A samplex-mud process. Its log (stdout and stderr) is kept in .lines.

    The log goes to a file, not a pipe: a pipe that the test reads too slowly
    (busy with 200 bots) would block the MUD's loop on printf and make its
    tick late for a reason that is the test's, not the MUD's."""

    def __init__(self, schema, *options, prefix=()):
        self.schema = schema
        self.options = list(options)
        self.prefix = list(prefix)  # e.g. ["valgrind", ...]
        self.process = None
        self.port = None
        self.lines = []
        self.condition = threading.Condition()

    def start(self, timeout=60):
        command = self.prefix + [mud_binary(), "--port", "0", "--host", "127.0.0.1",
                                 "--schema", self.schema] + self.options
        self.lines = []
        self.log_file = tempfile.TemporaryFile(prefix="samplex-mud.", suffix=".log")
        self.process = subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()
        match = self.wait_log(r"^listening on [0-9.]+:(\d+)$", timeout)
        self.port = int(match.group(1))
        return self

    def _read_log(self):
        """Follows the log file until the process has exited and all is read."""
        with open(f"/proc/self/fd/{self.log_file.fileno()}", "rb") as log:
            partial = b""
            while True:
                exited = self.process.poll() is not None
                chunk = log.read()
                if chunk:
                    partial += chunk
                    *complete, partial = partial.split(b"\n")
                    self._add_lines(complete)
                elif exited:
                    break
                else:
                    time.sleep(0.02)
        with self.condition:
            self.condition.notify_all()

    def _add_lines(self, raw_lines):
        lines = [raw.decode("utf-8", "replace") for raw in raw_lines]
        if os.environ.get("MUD_TEST_VERBOSE"):
            for line in lines:
                print(f"  mud| {line}", flush=True)
        with self.condition:
            self.lines.extend(lines)
            self.condition.notify_all()

    def wait_log(self, pattern, timeout=10, start=0):
        """Waits for a log line matching `pattern` (from line `start` on)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self.reader.is_alive()):
                    self.dump_log()
                    fail(f"no log line matching {pattern!r} within {timeout} s")
                self.condition.wait(min(remaining, 0.2))

    def log_matches(self, pattern):
        regex = re.compile(pattern)
        with self.condition:
            return [m for m in (regex.search(line) for line in self.lines) if m]

    def stop(self, signal_number=signal.SIGTERM, timeout=30):
        """Signals the MUD and returns its exit status."""
        self.process.send_signal(signal_number)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.dump_log()
            fail(f"samplex-mud did not exit within {timeout} s of signal {signal_number}")
        self.reader.join(5)
        self.log_file.close()
        return status

    def cpu_seconds(self):
        """(user, system) CPU seconds the MUD has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def dump_log(self, last=60):
        with self.condition:
            lines = self.lines[-last:]
        print("---- samplex-mud log (last lines) ----")
        for line in lines:
            print(f"  {line}")
        print("--------------------------------------", flush=True)


def strip_telnet(data, state):
    """Removes telnet commands from server output. `state` is a dict kept
    across chunks; returns (text bytes, list of (command, option) seen)."""
    out = bytearray()
    commands = []
    pending = state.setdefault("pending", bytearray())
    pending.extend(data)
    i = 0
    while i < len(pending):
        byte = pending[i]
        if state.get("in_sb"):
            if byte == IAC and i + 1 < len(pending) and pending[i + 1] == SE:
                state["in_sb"] = False
                commands.append((SE, None))
                i += 2
                continue
            if byte == IAC and i + 1 >= len(pending):
                break
            i += 1
            continue
        if byte != IAC:
            out.append(byte)
            i += 1
            continue
        if i + 1 >= len(pending):
            break
        command = pending[i + 1]
        if command == IAC:
            out.append(IAC)
            i += 2
        elif command in (WILL, WONT, DO, DONT):
            if i + 2 >= len(pending):
                break
            commands.append((command, pending[i + 2]))
            i += 3
        elif command == SB:
            state["in_sb"] = True
            commands.append((SB, None))
            i += 2
        else:
            commands.append((command, None))
            i += 2
    del pending[:i]
    return bytes(out), commands


class Player:
    """A telnet player over a real socket. .text is everything received (telnet
    commands removed, UTF-8 decoded); expect() moves a cursor through it."""

    def __init__(self, port, name=None, receive_buffer=None):
        self.name = name
        if receive_buffer:  # a small window, set before connecting: a slow reader
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            self.sock.settimeout(10)
            self.sock.connect(("127.0.0.1", port))
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)
        self.raw = bytearray()       # every byte received, as received
        self.data = bytearray()      # without telnet commands
        self.commands = []           # telnet commands received
        self.telnet_state = {}
        self.cursor = 0
        self.closed = False

    @property
    def text(self):
        return self.data.decode("utf-8", "replace")

    def _receive(self, timeout):
        readable, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not readable:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return True
        self.raw.extend(chunk)
        text, commands = strip_telnet(chunk, self.telnet_state)
        self.data.extend(text)
        self.commands.extend(commands)
        return True

    def send(self, data):
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def line(self, text, end=b"\r\n"):
        self.send(text.encode("utf-8") + end if isinstance(text, str) else text + end)

    def expect(self, pattern, timeout=10):
        """Waits until `pattern` (a regex) appears after the cursor; moves the
        cursor past it and returns the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            match = regex.search(text, self.cursor)
            if match:
                self.cursor = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                tail = text[self.cursor:][-800:]
                fail(f"{self.name}: no {pattern!r} within {timeout} s "
                     f"({'closed' if self.closed else 'open'}); received after cursor:\n{tail}")
            self._receive(remaining)

    def expect_closed(self, timeout=10):
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            check(remaining > 0, f"{self.name}: connection still open after {timeout} s")
            self._receive(remaining)

    def drain(self, seconds=0.2):
        """Reads whatever arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while not self.closed and time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def login(self, name, new=None):
        """Logs in as `name`; `new` True/False checks created vs restored."""
        self.name = name
        self.expect(r"By what name are you known\? ")
        self.line(name)
        match = self.expect(r"Welcome(,| back,) (\w+)")
        check(match.group(2).lower() == name.lower(), f"logged in as {match.group(2)}, not {name}")
        if new is not None:
            check((match.group(1) == ",") == new,
                  f"{name}: expected a {'new' if new else 'restored'} player, got '{match.group(0)}'")
        self.name = match.group(2)
        return self

    def close(self):
        self.sock.close()

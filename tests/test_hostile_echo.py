# SPDX-License-Identifier: Apache-2.0
"""samplex-echo against hostile peers.

Scenarios, each followed by a fresh client that must be echoed correctly,
by a check that the server holds no more descriptors than before (every
hostile socket was closed) and by its resident memory (VmRSS):

  resets      2,000 connections reset (SO_LINGER 0) in the middle of
              messages: some mid-send, some while the server is echoing
              256 KiB back to them
  slow        32 readers with a tiny window send (up to 32 MiB each) and
              never read: the server pauses them (64 KiB of queued echo
              each), they block once the kernel's buffers are full (about
              8 MiB each), the server's memory stays bounded
  big         4 clients echo 16 MiB each at once, checked byte for byte
  junk        binary junk (every byte value, NULs, telnet IACs, invalid
              UTF-8) in random chunk sizes, echoed exactly
  half-close  clients send, shut their side, read the whole echo and EOF;
              one shuts down before reading 1 MiB of echo
  descriptors a second server under `prlimit --nofile=64` gets 200
              connections: it serves those it can accept without spinning,
              and serves again once they are gone
  sigterm     SIGTERM while 32 clients echo flat out and 8 slow readers
              wait: exit 0 within 2 s
  threads=2   resets and SIGTERM again against two loops sharing the port

Prints the numbers (connections survived, RSS before/after each scenario).
"""
import hashlib
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

BIN_DIR = os.environ.get("SAMPLEX_BIN_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "build", "bin")
ECHO = os.path.join(BIN_DIR, "samplex-echo")
RSS_BOUND_KB = 64 * 1024  # growth allowed over the baseline, whatever happens
SLOW_READERS = 32
SLOW_LIMIT = 32 << 20  # what a slow reader tries to send (the kernel holds ~8 MiB)


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


class Server:
    def __init__(self, prefix=(), threads=1):
        self.prefix = list(prefix)
        self.threads = threads
        self.process = None
        self.port = None

    def start(self):
        self.process = subprocess.Popen(
            self.prefix + [ECHO, "--port", "0", "--host", "127.0.0.1", "--threads",
                           str(self.threads)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.process.stdout.readline().decode()
        match = re.match(r"^listening on 127\.0\.0\.1:(\d+)$", line.strip())
        if not match:
            fail(f"no 'listening on' line: {line!r} {self.process.stderr.read()!r}")
        self.port = int(match.group(1))
        return self

    def status(self, field):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        fail(f"no {field} in /proc/{self.process.pid}/status")

    def rss_kb(self):
        return self.status("VmRSS")

    def fds(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def cpu_s(self):
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self):
        return self.process.poll() is None

    def wait_fds(self, wanted, timeout=10):
        """Waits until the server holds at most `wanted` descriptors."""
        deadline = time.monotonic() + timeout
        while self.fds() > wanted:
            check(self.alive(), "the server died")
            if time.monotonic() > deadline:
                fail(f"the server still holds {self.fds()} descriptors, not {wanted}, "
                     f"{timeout} s later: sockets leaked")
            time.sleep(0.02)

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def connect(port, timeout=10, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def reset(sock):
    """Closes with SO_LINGER 0: the kernel sends RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echo_exactly(sock, data, chunk_sizes=None, cut_ok=lambda: False):
    """Sends `data` (from a thread, in chunks) and reads back exactly as many
    bytes; returns what came back. A failed send is a failure, unless
    cut_ok() says the server may be closing us now (the echo then comes back
    short)."""
    def send():
        try:
            if chunk_sizes:
                at = 0
                for size in chunk_sizes:
                    sock.sendall(data[at:at + size])
                    at += size
                sock.sendall(data[at:])
            else:
                sock.sendall(data)
        except OSError as error:
            errors.append(error)
    errors = []
    sender = threading.Thread(target=send)
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    sender.join()
    check(not errors or (len(got) < len(data) and cut_ok()), f"send failed: {errors}")
    return bytes(got)


def fresh_client(server, scenario):
    """A well-behaved client after each scenario: small, medium and a 1 MiB
    message echoed byte for byte, then a clean close."""
    check(server.alive(), f"after {scenario}: the server died")
    rng = random.Random(scenario)
    with connect(server.port) as sock:
        for size in (1, 1000, 65536, 1 << 20):
            data = rng.randbytes(size)
            check(echo_exactly(sock, data) == data, f"after {scenario}: echo of {size} bytes wrong")
        sock.shutdown(socket.SHUT_WR)
        check(sock.recv(1) == b"", f"after {scenario}: no EOF after our FIN")


# ---- Scenarios -------------------------------------------------------------

def scenario_resets(server, waves=10):
    """2,000 connections in waves of 200, each reset in the middle of a
    message. Returns how many connected and how many got some echo first."""
    rng = random.Random(1)
    connected = echoed = 0
    for wave in range(waves):
        socks = []
        for _ in range(200):
            socks.append(connect(server.port))
            connected += 1
        for index, sock in enumerate(socks):
            kind = index % 4
            if kind == 0:
                pass  # reset before saying anything
            elif kind == 1:
                sock.sendall(rng.randbytes(rng.randint(1, 4096)))  # reset mid-message
            elif kind == 2:
                # The server is echoing 256 KiB back and we vanish.
                sock.setblocking(False)
                try:
                    sock.send(rng.randbytes(256 * 1024))
                except BlockingIOError:
                    pass
            else:
                sock.sendall(b"half a line with no end")
                if sock.recv(5):
                    echoed += 1
        for sock in socks:
            reset(sock)
    return connected, echoed


def scenario_slow_readers(server, baseline_kb):
    """32 clients with a 4 KiB window send up to 32 MiB each, never read."""
    socks = [connect(server.port, rcvbuf=4096) for _ in range(SLOW_READERS)]
    sent = [0] * len(socks)
    payload = b"s" * 65536
    for sock in socks:
        sock.setblocking(False)
    deadline = time.monotonic() + 10
    # Send until every socket blocks for good (the server stopped reading).
    stalled_since = None
    while time.monotonic() < deadline:
        progress = False
        for index, sock in enumerate(socks):
            if sent[index] >= SLOW_LIMIT:
                continue
            try:
                sent[index] += sock.send(payload)
                progress = True
            except BlockingIOError:
                pass
        if progress:
            stalled_since = None
        else:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                break
            time.sleep(0.02)
    peak_kb = server.rss_kb()
    total = sum(sent)
    blocked = sum(1 for count in sent if count < SLOW_LIMIT)
    for sock in socks:
        reset(sock)
    return total, blocked, peak_kb


def scenario_big(server):
    size = 16 << 20
    results = []

    def client(index):
        data = random.Random(100 + index).randbytes(size)
        with connect(server.port, timeout=30) as sock:
            got = echo_exactly(sock, data)
        results.append(hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
                       and len(got) == size)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(len(results) == 4 and all(results), f"16 MiB echoes wrong: {results}")
    return 4 * size


def scenario_junk(server):
    rng = random.Random(7)
    total = 0
    socks = [connect(server.port) for _ in range(20)]
    for index, sock in enumerate(socks):
        junk = bytes(range(256)) * 4 + b"\x00" * 100 + b"\xff\xfd\x18\xff\xfa" + \
            b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc" + rng.randbytes(rng.randint(1, 200000))
        sizes = [rng.randint(1, 3000) for _ in range(20)]
        got = echo_exactly(sock, junk, sizes)
        check(got == junk, f"junk client {index}: echo differs ({len(got)} of {len(junk)} bytes)")
        total += len(junk)
    for sock in socks:
        sock.close()
    return total


def scenario_half_close(server):
    rng = random.Random(9)
    count = 0
    for index in range(30):
        size = rng.choice((1, 100, 65536, 300000))
        data = rng.randbytes(size)
        with connect(server.port) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            got = bytearray()
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            check(bytes(got) == data, f"half-close {index}: {len(got)} of {size} bytes back")
            count += 1
    # Shut our side before the server can possibly have echoed 1 MiB: the
    # server must still send it all, then close.
    data = rng.randbytes(1 << 20)
    with connect(server.port) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        time.sleep(0.2)
        got = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join()
        check(bytes(got) == data, f"half-close 1 MiB: {len(got)} bytes back")
        count += 1
    # Both directions shut by the client at once, with data in flight.
    for _ in range(20):
        sock = connect(server.port)
        sock.sendall(rng.randbytes(50000))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        count += 1
    return count


def scenario_descriptors():
    """A second server with 64 descriptors gets 200 connections."""
    server = Server(prefix=["prlimit", "--nofile=64:64"]).start()
    try:
        base_fds = server.fds()
        socks = []
        for _ in range(200):
            socks.append(connect(server.port))  # the kernel's backlog takes them
        # Those the server could accept are echoed; the rest wait in the backlog.
        for sock in socks:
            sock.sendall(b"ping")
        served = 0
        waiting = set(socks)
        deadline = time.monotonic() + 3
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(list(waiting), [], [], 0.2)
            for sock in readable:
                waiting.discard(sock)
                served += sock.recv(4) == b"ping"
        check(20 <= served < 64, f"{served} of 200 served under a limit of 64 descriptors")
        # Descriptors are short: the accept must back off, not spin.
        cpu_before = server.cpu_s()
        time.sleep(2)
        cpu_spent = server.cpu_s() - cpu_before
        check(cpu_spent < 0.5, f"the server spun while out of descriptors: {cpu_spent:.2f} s CPU in 2 s")
        check(server.fds() <= 64, f"{server.fds()} descriptors open under a limit of 64")
        for sock in socks:
            reset(sock)
        # Once they are gone (backlog drained, sockets closed) it serves again.
        deadline = time.monotonic() + 15
        while True:
            try:
                fresh_client(server, "descriptors")
                break
            except (socket.timeout, ConnectionError) as error:
                check(time.monotonic() < deadline, f"not serving again after exhaustion: {error}")
        server.wait_fds(base_fds)
        check(server.alive(), "the limited server died")
        return served, cpu_spent
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            status = server.process.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            fail("the limited server did not exit on SIGTERM")
        check(status == 0, f"the limited server exited {status}")


def scenario_sigterm(server):
    # Paused slow readers too: the server holds their echo when told to stop.
    slow = [connect(server.port, rcvbuf=4096) for _ in range(8)]
    for sock in slow:
        sock.setblocking(False)
        try:
            while True:
                sock.send(b"z" * 65536)
        except BlockingIOError:
            pass
    stop = threading.Event()
    signalled = threading.Event()  # from here on the server may close us mid-echo
    echoed = [0] * 32
    closed = [False] * 32

    def client(index):
        rng = random.Random(200 + index)
        try:
            with connect(server.port, timeout=5) as sock:
                while not stop.is_set():
                    data = rng.randbytes(rng.randint(1, 65536))
                    if echo_exactly(sock, data, cut_ok=signalled.is_set) != data:
                        break  # cut short by the shutdown
                    echoed[index] += 1
                # The server closes us: read to EOF or reset.
                while sock.recv(65536):
                    pass
                closed[index] = True
        except (ConnectionError, socket.timeout, OSError):
            closed[index] = True
    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    check(all(echoed), f"not every client echoed before SIGTERM: {echoed}")
    signalled.set()
    signalled_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        status = server.process.wait(2)
    except subprocess.TimeoutExpired:
        fail("samplex-echo still running 2 s after SIGTERM under load")
    took = time.monotonic() - signalled_at
    stop.set()
    for t in threads:
        t.join(10)
    check(status == 0, f"exit status {status} after SIGTERM: {server.process.stderr.read()!r}")
    check(all(closed), "a client was not disconnected")
    for sock in slow:
        sock.close()
    return sum(echoed), took


def main():
    check(os.access(ECHO, os.X_OK), f"no samplex-echo at {ECHO}")
    started = time.monotonic()
    server = Server().start()
    try:
        fresh_client(server, "start")
        base_fds = server.fds()
        baseline_kb = server.rss_kb()
        print(f"baseline: {base_fds} descriptors, VmRSS {baseline_kb} KiB", flush=True)

        def after(name, detail):
            server.wait_fds(base_fds)
            fresh_client(server, name)
            rss = server.rss_kb()
            print(f"{name:12s} {detail}; VmRSS {rss} KiB (+{rss - baseline_kb})", flush=True)
            check(rss - baseline_kb < RSS_BOUND_KB,
                  f"after {name}: VmRSS {rss} KiB, {rss - baseline_kb} KiB over the baseline")

        connected, echoed = scenario_resets(server)
        check(connected == 2000, f"only {connected} of 2000 connected")
        after("resets", f"{connected} connections reset mid-message ({echoed} after an echo), "
                        "server survived")

        total, blocked, peak_kb = scenario_slow_readers(server, baseline_kb)
        check(blocked == SLOW_READERS,
              f"only {blocked} of {SLOW_READERS} slow readers were paused (sent {total} bytes)")
        check(peak_kb - baseline_kb < RSS_BOUND_KB,
              f"slow readers: VmRSS peaked at {peak_kb} KiB ({peak_kb - baseline_kb} KiB over)")
        after("slow", f"{SLOW_READERS} slow readers paused after {total >> 20} MiB in all, "
                      f"peak VmRSS {peak_kb} KiB (+{peak_kb - baseline_kb})")

        total = scenario_big(server)
        after("big", f"{total >> 20} MiB echoed in 16 MiB messages")

        total = scenario_junk(server)
        after("junk", f"{total} bytes of binary junk echoed exactly")

        count = scenario_half_close(server)
        after("half-close", f"{count} half-closed connections served")

        served, cpu = scenario_descriptors()
        print(f"descriptors  nofile=64: {served} of 200 served while short, {cpu:.2f} s CPU "
              "in 2 s of exhaustion, served again after", flush=True)

        messages, took = scenario_sigterm(server)
        print(f"sigterm      {messages} messages echoed by 32 clients (8 slow readers paused), "
              f"exited 0 in {took:.2f} s", flush=True)

        # Two threads (two loops sharing the port): resets, then SIGTERM.
        server = Server(threads=2).start()
        fresh_client(server, "threads=2 start")
        base_fds = server.fds()
        connected, _ = scenario_resets(server, waves=5)
        server.wait_fds(base_fds)
        fresh_client(server, "threads=2 resets")
        messages, took = scenario_sigterm(server)
        print(f"threads=2    {connected} connections reset, then {messages} messages and "
              f"SIGTERM: exited 0 in {took:.2f} s")
    finally:
        server.kill()
    print(f"PASS in {time.monotonic() - started:.1f} s")


main()

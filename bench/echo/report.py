# SPDX-License-Identifier: Apache-2.0
"""Turns run.sh's raw lines into results.md (stdout) and the chart's data.

    report.py RAW CHART_DATA ELAPSED_SECONDS

Every figure is the median over the rounds whose window other work left
alone (at most 25 % of CPUs 0-1), or over every round if none was; the CPU
column also shows the lowest and highest of those rounds. Ratios are samplex / the better of libuv and
epoll for that figure (lower CPU and latency, higher messages/s).
"""
import datetime
import os
import platform
import statistics
import subprocess
import sys

SERVERS = ["samplex", "libuv", "epoll"]
PEERS = ["libuv", "epoll"]


def parse(path):
    load, idle = [], []
    with open(path) as raw:
        for line in raw:
            fields = line.split()
            record = {}
            kind = None
            for field in fields:
                if "=" in field:
                    key, value = field.split("=", 1)
                    record[key] = value
                elif kind is None:
                    kind = field
            if kind == "result":
                load.append(record)
            elif kind == "idle":
                idle.append(record)
    return load, idle


def number(record, key):
    return float(record.get(key, "nan"))


def median(records, key):
    values = [number(r, key) for r in records]
    return statistics.median(values) if values else float("nan")


def git(*arguments):
    return subprocess.run(["git", *arguments], capture_output=True, text=True,
                          check=True).stdout.strip()


def git_commit():
    """BENCH_COMMIT if set (run.sh's caller knows what it built), else HEAD,
    marked when the engine's sources differ from it."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src", "include", "examples")
        return commit + (" (with uncommitted engine changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_model():
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def libuv_version():
    try:
        return subprocess.run(["pkg-config", "--modversion", "libuv"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def group_load(load):
    cases = {}
    for record in load:
        key = (int(record["connections"]), int(record["size"]))
        cases.setdefault(key, {}).setdefault(record["server"], []).append(record)
    return cases


def size_name(size):
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


QUIET_OTHER_PCT = 25


def summarise(all_runs):
    """Median figures of one server in one case, over its undisturbed rounds
    (every round if none was); counts of failures over every round."""
    quiet = [r for r in all_runs if number(r, "other_cpu_pct") <= QUIET_OTHER_PCT]
    runs = quiet or all_runs
    cpu = [number(r, "server_cpu_us_per_msg") for r in runs]
    return {
        "msgs": median(runs, "msgs_per_s"),
        "p50": median(runs, "p50_us"),
        "p99": median(runs, "p99_us"),
        "cpu": statistics.median(cpu),
        "cpu_min": min(cpu),
        "cpu_max": max(cpu),
        "cpu_pct": median(runs, "server_cpu_pct"),
        "gen_pct": median(runs, "gen_cpu_pct"),
        "other_pct": median(runs, "other_cpu_pct"),
        "used": f"{len(quiet)}/{len(all_runs)}" if quiet else f"0/{len(all_runs)}, all used",
        "quiet": bool(quiet),
        "served": min(int(r["served"]) for r in all_runs),
        "mismatches": sum(int(r["mismatches"]) for r in all_runs),
        "errors": sum(int(r["errors"]) for r in all_runs),
        "exits": ",".join(sorted({r.get("exit", "?") for r in all_runs})),
        "retried": sum(int(r.get("retried", "0")) for r in all_runs),
        "rounds": len(all_runs),
    }


def best_peer(figures, key, lower_is_better):
    peers = [(figures[p][key], p) for p in PEERS if p in figures]
    return (min if lower_is_better else max)(peers)


def load_table(cases):
    out = ["| connections | size | server | msgs/s | p50 us | p99 us "
           "| server CPU us/msg (min-max) | server CPU % | generator CPU % | other CPU % "
           "| quiet rounds | served | mismatches | errors | exit | re-run |",
           "|" + "---|" * 16]
    for (connections, size), by_server in sorted(cases.items()):
        for name in SERVERS:
            if name not in by_server:
                continue
            f = summarise(by_server[name])
            out.append(
                f"| {connections} | {size_name(size)} | {name} | {f['msgs']:,.0f} "
                f"| {f['p50']:,.0f} | {f['p99']:,.0f} "
                f"| **{f['cpu']:.2f}** ({f['cpu_min']:.2f}-{f['cpu_max']:.2f}) "
                f"| {f['cpu_pct']:.0f} | {f['gen_pct']:.0f} | {f['other_pct']:.0f} "
                f"| {f['used']} | {f['served']}/{connections} | {f['mismatches']} | {f['errors']} "
                f"| {f['exits']} | {f['retried']} |")
    return out


def ratio_rows(cases):
    rows = {}
    for key, by_server in sorted(cases.items()):
        if not all(name in by_server for name in SERVERS):
            continue
        figures = {name: summarise(by_server[name]) for name in SERVERS}
        s = figures["samplex"]
        cpu, cpu_peer = best_peer(figures, "cpu", True)
        msgs, msgs_peer = best_peer(figures, "msgs", False)
        p50, p50_peer = best_peer(figures, "p50", True)
        p99, p99_peer = best_peer(figures, "p99", True)
        rows[key] = {"cpu": (s["cpu"] / cpu, cpu_peer), "msgs": (s["msgs"] / msgs, msgs_peer),
                     "p50": (s["p50"] / p50, p50_peer), "p99": (s["p99"] / p99, p99_peer),
                     "served": s["served"],
                     "quiet": all(f["quiet"] for f in figures.values())}
    return rows


def ratio_table(rows):
    out = ["| connections | size | CPU/msg: samplex / best peer | msgs/s: samplex / best peer "
           "| p50: samplex / best peer | p99: samplex / best peer | windows |",
           "|---|---|---|---|---|---|---|"]
    for (connections, size), r in rows.items():
        cells = [f"{r[k][0]:.2f}x ({r[k][1]})" for k in ("cpu", "msgs", "p50", "p99")]
        windows = "quiet" if r["quiet"] else "**disturbed** (some server had no quiet round)"
        out.append(f"| {connections} | {size_name(size)} | **{cells[0]}** | " +
                   " | ".join(cells[1:]) + f" | {windows} |")
    return out


def memory_table(idle):
    by_server = {}
    for record in idle:
        by_server.setdefault(record["server"], []).append(record)
    figures = {}
    out = ["| server | idle connections | RSS with none (KiB) | RSS, connected, never used "
           "(KiB) | per connection, never used | RSS, idle after one echo (KiB) "
           "| per connection, idle after one echo | served |",
           "|---|---|---|---|---|---|---|---|"]
    for name in SERVERS:
        runs = by_server.get(name)
        if not runs:
            continue
        per_conn = median(runs, "bytes_per_conn")
        unused = median(runs, "bytes_per_conn_unused")
        figures[name] = (unused, per_conn)
        served = min(int(r["served"]) for r in runs)
        out.append(f"| {name} | {runs[0]['connections']} | {median(runs, 'rss_before_kib'):,.0f} "
                   f"| {median(runs, 'rss_connected_kib'):,.0f} "
                   f"| {unused:,.0f} B = **{unused / 1024:.3f} KiB** "
                   f"| {median(runs, 'rss_after_kib'):,.0f} "
                   f"| {per_conn:,.0f} B = **{per_conn / 1024:.3f} KiB** "
                   f"| {served}/{runs[0]['connections']} |")
    return out, figures


def goals_table(rows, memory, cases):
    def verdict(ok):
        return "met" if ok else "**not met**"

    out = ["| goal (issue 3) | measured | |", "|---|---|---|"]
    def disturbed(r):
        return "" if r["quiet"] else " (disturbed windows)"

    for connections in (50, 1000):
        for (c, size), r in rows.items():
            if c == connections:
                out.append(f"| CPU/msg <= 0.6x best peer, {c} connections, {size_name(size)} "
                           f"| {r['cpu'][0]:.2f}x{disturbed(r)} "
                           f"| {verdict(r['cpu'][0] <= 0.6)} |")
    for quiet in (True, False):
        subset = [item for item in rows.items() if item[1]["quiet"] == quiet]
        if not subset:
            continue
        (c, size), r = min(subset, key=lambda item: item[1]["msgs"][0])
        which = "cases with quiet windows" if quiet else "cases with disturbed windows"
        out.append(f"| msgs/s never below best peer: worst of the {which} "
                   f"| {r['msgs'][0]:.2f}x at {c} connections, {size_name(size)} "
                   f"| {verdict(r['msgs'][0] >= 1.0)} |")
    for (c, size), by_server in sorted(cases.items()):
        if c == 10000 and "samplex" in by_server:
            runs = by_server["samplex"]
            served = min(int(x["served"]) for x in runs)
            bad = sum(int(x["mismatches"]) + int(x["errors"]) for x in runs)
            out.append(f"| every connection served at 10,000, {size_name(size)} "
                       f"| {served}/{c} in every round, {bad} mismatches+errors "
                       f"| {verdict(served == c and bad == 0)} |")
    if "samplex" in memory:
        unused, used = (value / 1024 for value in memory["samplex"])
        out.append(f"| <= 0.25 KiB per idle connection, connected and never used "
                   f"| {unused:.3f} KiB | {verdict(unused <= 0.25)} |")
        out.append(f"| <= 0.25 KiB per idle connection, idle after one echo "
                   f"| {used:.3f} KiB | {verdict(used <= 0.25)} |")
    return out


def chart_data(cases, path):
    sizes = [64, 4096]  # the chart's two panels; a size not run is NaN
    with open(path, "w") as data:
        data.write("# connections " + " ".join(f"{n}_{s}" for s in sizes for n in SERVERS) + "\n")
        for connections in sorted({c for c, _ in cases}):
            values = []
            for size in sizes:
                for name in SERVERS:
                    runs = cases.get((connections, size), {}).get(name)
                    values.append(f"{summarise(runs)['cpu']:.3f}" if runs else "NaN")
            data.write(f"{connections} " + " ".join(values) + "\n")


def header(load, elapsed):
    rounds = max((int(r["round"]) for r in load), default=0)
    duration = load[0]["seconds"] if load else "?"
    return [
        "# Echo benchmark: samplex-echo vs libuv vs epoll",
        "",
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} at commit {git_commit()}, "
        f"{os.cpu_count()} x {cpu_model()}, Linux {platform.release()}, libuv {libuv_version()}; "
        f"{rounds} rounds, measured windows of {duration} s, whole run {elapsed} s. "
        "Produced by `bench/echo/run.sh`.",
        "",
        "Servers on CPU 0, the load generator (`bench-loadgen`, one thread, epoll, "
        "closed loop: each connection sends a message, waits for its whole echo, checks it, "
        "sends the next) on CPU 1, loopback only. Every measurement gets a fresh server; "
        "the three servers run case after case in turn (samplex, libuv, epoll), round after "
        "round. Figures are medians over the rounds whose window was not disturbed by "
        "other work (other CPU <= 25 %; **quiet rounds** says how many), or over all "
        "rounds when none was.",
        "",
        "- **server CPU us/msg**: the server's utime+stime (all its threads, "
        "`/proc/PID/stat`), read by the generator at the start and end of the measured "
        "window, divided by the round trips completed in it. Loopback TCP runs the "
        "receiver's protocol work in the sender's system call, so each side is also "
        "charged for part of the other's receive path, alike for every server.",
        "- **msgs/s, p50, p99**: round trips completed in the window; latency from the "
        "first byte sent to the last byte of the echo read. With two cores the generator "
        "(its CPU % is shown) is usually the limit, so msgs/s says more about it than "
        "about the server.",
        "- **other CPU %**: busy time of CPUs 0-1 (`/proc/stat`) not taken by the server "
        "or the generator: interference from the rest of the machine (tick-sampled, so "
        "only good to about 5 points; it can read slightly negative). Before each "
        "measurement the script waits (3 s at most) for CPUs 0-1 to be quiet; a window "
        "with more than 25 % other CPU is measured again (twice at most, within the "
        "run's time budget) and the least disturbed one kept (**re-run** counts the "
        "extra windows, summed over rounds).",
        "- **served**: connections with at least one round trip in the window (lowest "
        "round); **mismatches**: echoes that differ from what was sent (summed over "
        "rounds); **errors**: connections the server dropped; **exit**: the server's "
        "exit status after SIGTERM.",
        "- **memory**: a fresh server; one connection makes a round trip and closes (one-"
        "time set-up paid), VmRSS (`/proc/PID/status`) is read; the idle connections "
        "are opened and VmRSS is read once steady (*connected, never used*); then each "
        "makes one 64 B round trip and stays open without traffic, and VmRSS is read "
        "again once steady (*idle after one echo*). Per connection: (RSS - RSS with "
        "none) / connections.",
        "",
    ]


def main():
    raw, chart_path, elapsed = sys.argv[1], sys.argv[2], sys.argv[3]
    load, idle = parse(raw)
    cases = group_load(load)
    rows = ratio_rows(cases)
    memory_lines, memory = memory_table(idle)
    lines = header(load, elapsed)
    lines += ["## Goals", ""] + goals_table(rows, memory, cases) + [""]
    lines += ["## Ratios: samplex / best peer", "",
              "Below 1.00 is better for CPU and latency, above 1.00 for msgs/s.", ""]
    lines += ratio_table(rows) + [""]
    lines += ["## Absolute figures", ""] + load_table(cases) + [""]
    lines += ["## Memory per idle connection", ""] + memory_lines + [""]
    lines += ["![server CPU per message](cpu_per_message.png)", ""]
    print("\n".join(lines))
    chart_data(cases, chart_path)


if __name__ == "__main__":
    main()

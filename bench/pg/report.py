# SPDX-License-Identifier: Apache-2.0
"""Turns bench/pg/run.sh's raw lines into results.md (stdout).

    report.py RAW        (run.sh sets the environment it reads)

Every figure is the median over the rounds; the q/s columns also give the
lowest and highest round. The ratio is the median over the rounds of samplex's
q/s over pgbench's in that round (the two run back to back, so drift of the
machine between rounds cancels out); its range is the lowest and highest
round's ratio.
"""
import datetime
import os
import platform
import statistics
import subprocess
import sys


def parse(path):
    records = []
    with open(path) as raw:
        for line in raw:
            record = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "row" in record:
                records.append(record)
    return records


def values(records, row, tool, key):
    return [float(r[key]) for r in records if int(r["row"]) == row and r["tool"] == tool]


def median(records, row, tool, key):
    found = values(records, row, tool, key)
    return statistics.median(found) if found else float("nan")


def git_commit():
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True,
                                        check=True).stdout.strip()
        head = run("rev-parse", "--short", "HEAD")
        dirty = run("status", "--porcelain", "--", "src", "include")
        return head + (" (engine sources modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def round_ratios(records, row):
    """samplex q/s over pgbench q/s, per round where both ran."""
    found = []
    for rnd in sorted({r["round"] for r in records}, key=int):
        pair = {r["tool"]: float(r["qps"]) for r in records
                if int(r["row"]) == row and r["round"] == rnd}
        if pair.get("pgbench") and "samplex" in pair:
            found.append(pair["samplex"] / pair["pgbench"])
    return found


def qps_cell(records, row, tool):
    found = values(records, row, tool, "qps")
    if not found:
        return "-"
    return f"{statistics.median(found):,.0f} ({min(found):,.0f}-{max(found):,.0f})"


POOL_ROW = 6  # the flows over the pool; the rows are run.sh's ROW_NAMES
PARITY = 0.98  # a median this close under a goal, with rounds on both sides: parity


def main():
    records = parse(sys.argv[1])
    env = os.environ
    names = env["ROW_NAMES"].split("\n")
    depth, flows, pool = env["DEPTH"], env["FLOWS"], env["POOL"]
    out = []
    w = out.append
    w("# PostgreSQL benchmark: samplex against pgbench")
    w("")
    w(f"`SELECT 1` over TCP on 127.0.0.1 against one private PostgreSQL 15 server "
      f"(scripts/pg.sh: fsync off, SCRAM), {env['ROUNDS']} rounds, each row's two "
      f"measurements back to back (order alternating per round). Median of the rounds; "
      f"q/s in parentheses: lowest-highest round. Ratio: the median of the rounds' own "
      f"samplex/pgbench ratios (each pair ran back to back, so the machine's drift between "
      f"rounds cancels), lowest-highest in parentheses.")
    w("")
    w(f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; commit {git_commit()}; "
      f"run took {env['ELAPSED']} s of measuring")
    w(f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}; "
      f"load average before {env['LOAD_BEFORE']}, after {env['LOAD_AFTER']}")
    w("- Nothing pinned: server and client float over both CPUs, the same for both tools.")
    w("")
    w("| mode | pgbench q/s | samplex q/s | ratio (per round) | pgbench client CPU us/q "
      "| samplex CPU us/q |")
    w("| --- | ---: | ---: | ---: | ---: | ---: |")
    ratios, spreads = [], []
    for row, name in enumerate(names):
        found = round_ratios(records, row)
        ratio = statistics.median(found) if found else float("nan")
        ratio_cell = f"{ratio:.2f} ({min(found):.2f}-{max(found):.2f})" if found else "-"
        ratios.append(ratio)
        spreads.append(found)
        label = name
        if row == POOL_ROW:
            label += f" (pgbench: {pool} connections, a thread each, unpipelined)"
        w(f"| {label} | {qps_cell(records, row, 'pgbench')} | {qps_cell(records, row, 'samplex')} "
          f"| {ratio_cell} | {median(records, row, 'pgbench', 'client_us_per_query'):.2f} "
          f"| {median(records, row, 'samplex', 'client_us_per_query'):.2f} |")
    w("")
    w("Goals (issue 4):")
    w("")
    w("| goal | needed | measured | |")
    w("| --- | ---: | ---: | --- |")
    goals = [
        ("without pipelining, 1 connection: samplex >= pgbench", 0, 1.0),
        (f"without pipelining, {pool} connections, a thread per connection: samplex >= pgbench",
         1, 1.0),
        (f"without pipelining, {pool} connections, one thread: samplex >= pgbench", 2, 1.0),
        (f"pipelined (depth {depth}), 1 connection: samplex >= pgbench", 3, 1.0),
        (f"pipelined (depth {depth}), {pool} connections, a thread per connection: "
         "samplex >= pgbench", 4, 1.0),
        (f"pipelined (depth {depth}), {pool} connections, one thread: samplex >= pgbench", 5, 1.0),
        (f"{flows} flows over {pool} connections >= 5 x pgbench's unpipelined "
         f"{pool}-connection rate", POOL_ROW, 5.0),
    ]
    for text, row, needed in goals:
        found = spreads[row]
        if ratios[row] >= needed:
            met = "met"
        elif found and ratios[row] >= PARITY * needed and min(found) < needed <= max(found):
            met = f"at parity: the median is under it by {100 * (1 - ratios[row] / needed):.0f}%"\
                  f", rounds on both sides ({min(found):.2f}-{max(found):.2f})"
        else:
            met = "not met"
        w(f"| {text} | {needed:.1f}x | {ratios[row]:.2f}x | {met} |")
    w("")
    w(f"A goal whose median misses by less than {100 * (1 - PARITY):.0f}% while the rounds' "
      "own ratios fall on both sides of it is reported at parity: the measurement cannot tell "
      "the two apart, so it is not counted as met.")
    w("")
    w("Server CPU per query (all PostgreSQL processes over the whole run, "
      "connections included; us):")
    w("")
    w("| mode | pgbench | samplex |")
    w("| --- | ---: | ---: |")
    for row, name in enumerate(names):
        w(f"| {name} | {median(records, row, 'pgbench', 'server_us_per_query'):.2f} "
          f"| {median(records, row, 'samplex', 'server_us_per_query'):.2f} |")
    w("")
    w("How each figure is measured:")
    w("")
    w(f"- pgbench: `pgbench -n -M prepared -f SCRIPT -c C -j T -T {env['DURATION']}` (T: "
      f"the row's threads, {pool} for the pool row); "
      f"SCRIPT is `SELECT 1;`, or for the pipelined rows `\\startpipeline`, {depth} x "
      f"`SELECT 1;`, `\\endpipeline` (queries = transactions x {depth}). q/s: pgbench's "
      "tps (without initial connection time) x queries per transaction. Client CPU: "
      "user + system of the pgbench process and all its threads (wait4), minus its fixed "
      "cost of starting, connecting (SCRAM) and exiting, measured with `-t 1` runs "
      f"({env['FIXED']}), over the queries of the run.")
    w(f"- samplex: `bench-pg` (bench/pg/pg_bench.c): one loop, or with a thread per "
      f"connection `--threads {pool}`, {pool} loops each driving one connection (a samplex "
      "server's way to use several cores); "
      f"{env['WARMUP']} s warm-up, then a {env['DURATION']} s window: the queries whose handler "
      "ran in it, and each loop thread's getrusage (user + system: samplex + libpq) at its two "
      "edges, summed over the loops. Rows 1-6: "
      "the statement is prepared once per connection, every query is "
      "plex_postgres_query_prepared; unpipelined each connection has one query in flight, "
      f"the next sent from its handler; pipelined, {depth} in flight per connection, each "
      f"handler sending one more. Last row: {flows} flows, each with one query in flight, "
      f"over plex_postgres_pool_create({pool} connections, pipeline on); the pool has no "
      "prepared path, so these use plex_postgres_pool_query_params(\"SELECT 1\") (Parse + "
      "Bind + Describe + Execute of the unnamed statement per query: more server work than "
      "pgbench's prepared Bind + Execute).")
    w("- Other work: a quiet gate before each measurement (the machine under 15 % busy for "
      f"0.25 s, waiting {env['QUIET_MAX']} s at most); a measurement where other processes "
      f"took more than {env['OTHER_MAX']} % of the machine is repeated (twice at most, and "
      f"neither waiting nor repeating after {env['BUDGET']} s). other_pct in the raw lines is "
      "that share over the whole run of the tool (busy CPU time minus the server's and the "
      "client's, over wall time x CPUs); load1 is the 1-minute load average after it, which "
      "counts this run's own processes too (8 pgbench threads and 8 backends are up to 16 "
      "runnable), so other_pct, not the load, says whether others were busy.")
    w("")
    w("Raw measurements:")
    w("")
    w("```")
    with open(sys.argv[1]) as raw:
        for line in raw:
            w(line.rstrip())
    w("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Measures what one tsumugi controller spends per stage, for the 100-node plan.

Runs the real binary on generated projects (chains of trivial command stages) and prints
JSON that sim.py reads: the controller's own CPU per stage (its threads, not the stage
processes: sampled from /proc/PID/stat while it runs), wall per stage, the freshness
check per stage (a no-op run and `status`), the run database's commit latency (SQLite
WAL, synchronous=FULL, as runs/tsumugi.db is configured) and the cache's commit
throughput for one large output.

    python3 benches/scale/measure.py --tsumugi target/release/tsumugi [--stages 1000,4000] > scale.json
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def gen(root: Path, n: int, chains: int = 10):
    depth = n // chains
    lines = ["name: scale", "stages:"]
    for c in range(chains):
        for d in range(depth):
            name = f"s{c}_{d}"
            lines.append(f"  {name}:")
            if d == 0:
                lines.append(f"    cmd: echo {c} > out/{name}.txt")
            else:
                prev = f"s{c}_{d - 1}"
                lines.append(f"    cmd: cat out/{prev}.txt > out/{name}.txt")
                lines.append(f"    deps: [out/{prev}.txt]")
            lines.append(f"    outs: [out/{name}.txt]")
    (root / "p.yaml").write_text("\n".join(lines) + "\n")
    (root / "out").mkdir(exist_ok=True)


def run_sampled(args, cwd, env=None):
    """Wall seconds and the process's own CPU seconds (all its threads, no children)."""
    t0 = time.perf_counter()
    # stderr to a file: a pipe nobody reads until the end would fill and block the run.
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    cpu = 0.0
    stat = f"/proc/{p.pid}/stat"
    while p.poll() is None:
        try:
            f = open(stat).read().rsplit(")", 1)[1].split()
            cpu = (int(f[11]) + int(f[12])) / TICK  # utime, stime (fields 14, 15)
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        err.seek(0)
        sys.exit(f"{' '.join(args)} failed: {err.read().decode()[-2000:]}")
    return wall, cpu


def db_commit_latency(dir_: Path, n=200):
    con = sqlite3.connect(dir_ / "t.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (a TEXT, b TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t VALUES (?, ?)", (str(i), "x" * 200))
        con.execute("COMMIT")
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsumugi", required=True)
    ap.add_argument("--stages", default="1000,4000")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--big-mib", type=int, default=256)
    a = ap.parse_args()
    bin_ = str(Path(a.tsumugi).resolve())
    out = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "runs": []}
    # "fork": the launch before posix_spawn (TSUMUGI_SPAWN=fork), the peer in the same run.
    modes = {"spawn": dict(os.environ), "fork": dict(os.environ, TSUMUGI_SPAWN="fork")}
    for n in map(int, a.stages.split(",")):
        for mode, env in modes.items():
            with tempfile.TemporaryDirectory() as d:
                root = Path(d)
                gen(root, n)
                cold_wall, cold_cpu = run_sampled([bin_, "run", "p.yaml", "-j", str(a.jobs)], root, env)
                noop_wall, noop_cpu = run_sampled([bin_, "run", "p.yaml", "-j", str(a.jobs)], root)
                st_wall, _ = run_sampled([bin_, "status", "p.yaml"], root)
                out["runs"].append({
                    "stages": n,
                    "launch": mode,
                    "cold_wall_ms_per_stage": 1e3 * cold_wall / n,
                    "cold_controller_cpu_ms_per_stage": 1e3 * cold_cpu / n,
                    "noop_run_ms_per_stage": 1e3 * noop_wall / n,
                    "noop_controller_cpu_ms_per_stage": 1e3 * noop_cpu / n,
                    "status_ms_per_stage": 1e3 * st_wall / n,
                })
                print(json.dumps(out["runs"][-1]), file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        out["db_commit_ms"] = 1e3 * db_commit_latency(root)
        mib = a.big_mib
        (root / "p.yaml").write_text(
            "name: big\nstages:\n  big:\n"
            f"    cmd: head -c {mib}M /dev/urandom > out/big.bin\n    outs: [out/big.bin]\n")
        (root / "out").mkdir()
        t0 = time.perf_counter()
        subprocess.run(f"head -c {mib}M /dev/urandom > /dev/null", shell=True, check=True)
        cmd_only = time.perf_counter() - t0
        wall, _ = run_sampled([bin_, "run", "p.yaml"], root)
        out["commit_mib_per_s"] = mib / max(wall - cmd_only, 1e-3)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""tsumugi vs DVC 3.x on the same generated projects, side by side, in one run.

Each scenario generates one project holding both a `dvc.yaml` and an equivalent tsumugi
pipeline (`p.yaml`), brings both tools to the same state, then times the same operation
with each (median of --reps runs, after one warm-up). See README.md next to this file.

    python3 benches/dvc/bench.py --tsumugi target/release/tsumugi [--out results.json]
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_NOSCM="1")


def sh(args, cwd, check=True, quiet=True, env=None):
    r = subprocess.run(args, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE if quiet else None,
                       stderr=subprocess.PIPE if quiet else None, text=True, errors="replace")
    if check and r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(map(str, args))}\n{r.stdout}\n{r.stderr}")
    return r


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


LAST_CPU = {}


def timed(args, cwd, reps, setup=None, check=True, warmup=True):
    """Median wall time of `args` over `reps` runs (after one untimed warm-up). The median
    CPU time (user + sys of the command and its children) is left in LAST_CPU["median"]."""
    times, cpus = [], []
    first = 0 if warmup else 1
    for i in range(first, reps + 1):
        if setup:
            setup(i)
        c0 = child_cpu()
        t0 = time.perf_counter()
        sh(args, cwd, check=check)
        dt = time.perf_counter() - t0
        if i > 0:
            times.append(dt)
            cpus.append(child_cpu() - c0)
    LAST_CPU["median"] = statistics.median(cpus)
    return statistics.median(times), times


def dvc_init(root):
    sh(["dvc", "init", "--no-scm", "-q"], root)
    sh(["dvc", "config", "core.analytics", "false"], root)


def write_pipelines(root, name, stages):
    """stages: list of dicts {name, cmd, deps, outs}; writes dvc.yaml and p.yaml."""
    with open(root / "dvc.yaml", "w") as f:
        f.write("stages:\n")
        for s in stages:
            f.write(f"  {s['name']}:\n    cmd: {json.dumps(s['cmd'])}\n")
            if s["deps"]:
                f.write(f"    deps: {json.dumps(s['deps'])}\n")
            f.write(f"    outs: {json.dumps(s['outs'])}\n")
    with open(root / "p.yaml", "w") as f:
        f.write(f"name: {name}\nstages:\n")
        for s in stages:
            f.write(f"  {s['name']}:\n    cmd: {json.dumps(s['cmd'])}\n")
            if s["deps"]:
                f.write(f"    deps: {json.dumps(s['deps'])}\n")
            f.write(f"    outs: {json.dumps(s['outs'])}\n")


def scenario_many_stages(tsumugi, base, n, reps):
    root = base / "many-stages"
    root.mkdir()
    (root / "data").mkdir()
    (root / "out").mkdir()
    stages = []
    for i in range(n):
        (root / "data" / f"{i:05}.txt").write_text(f"input {i}\n")
        # The bytes `cp` would write: DVC records them with `dvc commit` (running 1,000
        # stages through `dvc repro` takes DVC most of an hour; only the no-op state matters).
        (root / "out" / f"{i:05}.txt").write_text(f"input {i}\n")
        stages.append({"name": f"s{i:05}", "cmd": f"cp data/{i:05}.txt out/{i:05}.txt",
                       "deps": [f"data/{i:05}.txt"], "outs": [f"out/{i:05}.txt"]})
    write_pipelines(root, "many", stages)
    dvc_init(root)
    t0 = time.perf_counter()
    sh(["dvc", "commit", "-f", "-q"], root)
    dvc_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    sh([tsumugi, "run", "p.yaml", "-q"], root)
    ts_first = time.perf_counter() - t0
    assert "up to date" in sh(["dvc", "status"], root).stdout
    dvc_status, _ = timed(["dvc", "status"], root, reps)
    ts_status, _ = timed([tsumugi, "status", "p.yaml"], root, reps)

    # Re-run after one input changes: exactly one stage is stale for both.
    k = n // 2
    counter = [0]

    def touch(_i):
        counter[0] += 1
        (root / "data" / f"{k:05}.txt").write_text(f"changed {counter[0]}\n")

    dvc_rerun, _ = timed(["dvc", "repro", "-q"], root, reps, setup=touch, warmup=False)
    ts_rerun, _ = timed([tsumugi, "run", "p.yaml", "-q"], root, reps, setup=touch, warmup=False)
    return {
        "stages": n,
        "setup_s": {"dvc commit -f": dvc_first, "tsumugi run": ts_first},
        "noop_status_s": {"dvc": dvc_status, "tsumugi": ts_status},
        "rerun_one_changed_s": {"dvc": dvc_rerun, "tsumugi": ts_rerun},
    }


def interleaved(cmds, cwd, reps):
    """Median wall time of each command in `cmds` ({name: (args, env)}), run in turn within
    each repetition (after one warm-up of each), so that a change of the machine's load hits
    all of them alike. Also returns every time and the load average around the runs."""
    times = {k: [] for k in cmds}
    load = [os.getloadavg()[0]]
    for i in range(reps + 1):
        for k, (args, env) in cmds.items():
            t0 = time.perf_counter()
            sh(args, cwd, env=env)
            if i > 0:
                times[k].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    return {k: statistics.median(v) for k, v in times.items()}, times, load


def scenario_many_files(tsumugi, base, nfiles, reps, fsmonitor=True):
    root = base / "many-files"
    d = root / "data" / "files"
    d.mkdir(parents=True)
    for i in range(nfiles):
        sub = d / f"{i // 1000:03}"
        if i % 1000 == 0:
            sub.mkdir()
        (sub / f"{i:06}.txt").write_text(f"file {i}\n")
    stages = [{"name": "count", "cmd": "find data/files -type f | wc -l > count.txt",
               "deps": ["data/files"], "outs": ["count.txt"]}]
    write_pipelines(root, "files", stages)
    (root / "count.txt").write_text(sh(["sh", "-c", "find data/files -type f | wc -l"], root).stdout)
    dvc_init(root)
    t0 = time.perf_counter()
    sh(["dvc", "commit", "-f", "-q"], root)
    dvc_first = time.perf_counter() - t0
    # Files must be older than tsumugi's racy-timestamp window (2 s) to be remembered by
    # its stat cache; DVC's state has the same kind of rule.
    time.sleep(2.5)
    t0 = time.perf_counter()
    sh([tsumugi, "run", "p.yaml", "-q"], root)
    ts_first = time.perf_counter() - t0
    assert "up to date" in sh(["dvc", "status"], root).stdout
    if not fsmonitor:
        dvc_status, _ = timed(["dvc", "status"], root, reps)
        ts_status, _ = timed([tsumugi, "status", "p.yaml"], root, reps)
        return {
            "files": nfiles,
            "setup_s": {"dvc commit -f": dvc_first, "tsumugi run": ts_first},
            "noop_status_s": {"dvc": dvc_status, "tsumugi": ts_status},
        }
    # With the file-system monitor (docs/fsmonitor.md): the daemon runs during all three
    # measurements, which take turns within each repetition; "tsumugi" is told not to use
    # it (TSUMUGI_FSMONITOR=0: the full stat pass), "tsumugi_fsmonitor" uses it.
    t0 = time.perf_counter()
    sh([tsumugi, "fsmonitor", "start"], root)
    daemon_start = time.perf_counter() - t0
    try:
        first = json.loads(sh([tsumugi, "status", "p.yaml", "--json"], root).stdout)["fsmonitor"]
        noop = json.loads(sh([tsumugi, "status", "p.yaml", "--json"], root).stdout)["fsmonitor"]
        assert noop["used"] and not noop["full_pass"] and noop["files_statted"] == 0, noop
        medians, times, load = interleaved({
            "dvc": (["dvc", "status"], ENV),
            "tsumugi": ([tsumugi, "status", "p.yaml"], dict(ENV, TSUMUGI_FSMONITOR="0")),
            "tsumugi_fsmonitor": ([tsumugi, "status", "p.yaml"], ENV),
        }, root, reps)
    finally:
        sh([tsumugi, "fsmonitor", "stop"], root, check=False)
    return {
        "files": nfiles,
        "setup_s": {"dvc commit -f": dvc_first, "tsumugi run": ts_first,
                    "tsumugi fsmonitor start": daemon_start},
        "noop_status_s": medians,
        "all_s": times,
        "loadavg_1min": load,
        "fsmonitor_first_status": first,
        "fsmonitor_noop_status": noop,
    }


def scenario_diamond(tsumugi, base, width, layers, sleep_s, reps):
    """root -> width parallel -> join -> width parallel -> join ... (`layers` fan-outs)."""
    root = base / "diamond"
    root.mkdir()
    stages = [{"name": "root", "cmd": f"sleep {sleep_s} && echo root > root.txt", "deps": [], "outs": ["root.txt"]}]
    prev = "root.txt"
    for l in range(layers):
        mids = []
        for w in range(width):
            out = f"l{l}_{w}.txt"
            stages.append({"name": f"l{l}_{w}", "cmd": f"sleep {sleep_s} && cat {prev} > {out} && echo {w} >> {out}",
                           "deps": [prev], "outs": [out]})
            mids.append(out)
        join = f"join{l}.txt"
        stages.append({"name": f"join{l}", "cmd": f"sleep {sleep_s} && cat {' '.join(mids)} > {join}",
                       "deps": mids, "outs": [join]})
        prev = join
    write_pipelines(root, "diamond", stages)
    dvc_init(root)
    critical = sleep_s * (1 + 2 * layers)

    def clean(_i):
        for p in list(root.glob("*.txt")):
            p.unlink()
        shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
        shutil.rmtree(root / "cache", ignore_errors=True)
        (root / "dvc.lock").unlink(missing_ok=True)

    ts_t, ts_all = timed([tsumugi, "run", "p.yaml", "-q", "-j", str(width)], root, reps, setup=clean)
    dvc_t, _ = timed(["dvc", "repro", "-q"], root, 1, setup=clean, warmup=False)
    return {
        "stages": len(stages), "width": width, "layers": layers, "sleep_s": sleep_s,
        "critical_path_s": critical,
        "wall_s": {"dvc": dvc_t, "tsumugi": ts_t},
        "tsumugi_runs_s": ts_all,
    }


def scenario_hashing(tsumugi, base, total_mib, reps):
    root = base / "hashing"
    d = root / "blobs"
    d.mkdir(parents=True)
    cores = os.cpu_count() or 1
    nfiles = max(cores * 2, 4)
    per = total_mib * 1024 * 1024 // nfiles
    block = os.urandom(1 << 20)
    for i in range(nfiles):
        with open(d / f"b{i}", "wb") as f:
            left = per
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))
    total = per * nfiles
    (root / "p.yaml").write_text(
        "name: hashing\nstages:\n  h:\n    cmd: ls blobs > list.txt\n    deps: [blobs]\n    outs: [list.txt]\n")
    # Warm the page cache so both sides measure hashing, not the disk.
    sh(["cat"] + [str(p) for p in d.iterdir()], root)

    def no_statcache(_i):
        (root / "cache" / "statcache.bin").unlink(missing_ok=True)

    ts_t, _ = timed([tsumugi, "status", "p.yaml"], root, reps, setup=no_statcache)
    ts_cpu = LAST_CPU["median"]
    one = str(d / "b0")
    sha_t, _ = timed(["sha256sum", one], root, reps)
    sha_cpu = LAST_CPU["median"]
    ossl = ossl_cpu = None
    if shutil.which("openssl"):
        ossl, _ = timed(["openssl", "dgst", "-sha256", one], root, reps)
        ossl_cpu = LAST_CPU["median"]
    mib = 2**20
    return {
        "bytes": total, "cores": cores,
        # Wall-clock throughput: what a user sees; on a shared machine it depends on load.
        "tsumugi_wall_s": ts_t,
        "tsumugi_mib_s": total / ts_t / mib,
        "tsumugi_mib_s_per_core": total / ts_t / mib / cores,
        "sha256sum_mib_s": per / sha_t / mib,
        "openssl_mib_s": (per / ossl / mib) if ossl else None,
        # CPU-time throughput (bytes per CPU-second): the per-core speed, independent of how
        # busy the machine is. tsumugi's includes start-up, walking and stat calls.
        "tsumugi_cpu_s": ts_cpu,
        "tsumugi_mib_per_cpu_s": total / ts_cpu / mib,
        "sha256sum_mib_per_cpu_s": per / sha_cpu / mib,
        "openssl_mib_per_cpu_s": (per / ossl_cpu / mib) if ossl_cpu else None,
        "load_avg_1m": os.getloadavg()[0],
    }


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dvc_v = sh(["dvc", "--version"], ".").stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "dvc": dvc_v, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsumugi", default="target/release/tsumugi")
    ap.add_argument("--stages", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--hash-mib", type=int, default=1024)
    ap.add_argument("--only", default="stages,files,diamond,hashing")
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write results JSON here")
    ap.add_argument("--no-fsmonitor", action="store_true",
                    help="files scenario: do not also measure status with `tsumugi fsmonitor` running")
    a = ap.parse_args()
    tsumugi = str(Path(a.tsumugi).resolve())
    if not shutil.which("dvc"):
        raise SystemExit("dvc not found: pip install 'dvc>=3,<4'")
    base = Path(tempfile.mkdtemp(prefix="tsumugi-bench-", dir=a.workdir))
    results = {"machine": machine()}
    only = set(a.only.split(","))
    try:
        if "stages" in only:
            print(f"[1/4] {a.stages} stages…", file=sys.stderr)
            results["many_stages"] = scenario_many_stages(tsumugi, base, a.stages, a.reps)
        if "files" in only:
            print(f"[2/4] {a.files} files…", file=sys.stderr)
            results["many_files"] = scenario_many_files(tsumugi, base, a.files, a.reps, not a.no_fsmonitor)
        if "diamond" in only:
            print(f"[3/4] diamond {a.width}×{a.layers}…", file=sys.stderr)
            results["diamond"] = scenario_diamond(tsumugi, base, a.width, a.layers, a.sleep, a.reps)
        if "hashing" in only:
            print(f"[4/4] hashing {a.hash_mib} MiB…", file=sys.stderr)
            results["hashing"] = scenario_hashing(tsumugi, base, a.hash_mib, a.reps)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out = json.dumps(results, indent=2)
    print(out)
    if a.out:
        Path(a.out).write_text(out + "\n")
    report(results)


def report(r):
    print("\n== summary ==", file=sys.stderr)
    if "many_stages" in r:
        m = r["many_stages"]
        s, q = m["noop_status_s"], m["rerun_one_changed_s"]
        print(f"no-op status, {m['stages']} stages: dvc {s['dvc']:.3f}s, tsumugi {s['tsumugi']:.3f}s → "
              f"{s['dvc'] / s['tsumugi']:.0f}× faster", file=sys.stderr)
        print(f"re-run after one change: dvc {q['dvc']:.3f}s, tsumugi {q['tsumugi']:.3f}s → "
              f"{q['dvc'] / q['tsumugi']:.0f}× faster", file=sys.stderr)
    if "many_files" in r:
        m = r["many_files"]
        s = m["noop_status_s"]
        print(f"no-op status, {m['files']} files: dvc {s['dvc']:.3f}s, tsumugi {s['tsumugi']:.3f}s → "
              f"{s['dvc'] / s['tsumugi']:.0f}× faster", file=sys.stderr)
        if "tsumugi_fsmonitor" in s:
            print(f"  with `tsumugi fsmonitor` running: tsumugi {s['tsumugi_fsmonitor']:.3f}s → "
                  f"{s['dvc'] / s['tsumugi_fsmonitor']:.0f}× faster than dvc "
                  f"(load average {min(m['loadavg_1min']):.1f}–{max(m['loadavg_1min']):.1f})", file=sys.stderr)
    if "diamond" in r:
        d = r["diamond"]
        w = d["wall_s"]
        print(f"diamond ({d['stages']} stages of {d['sleep_s']}s): critical path {d['critical_path_s']:.2f}s, "
              f"tsumugi {w['tsumugi']:.3f}s ({(w['tsumugi'] / d['critical_path_s'] - 1) * 100:+.1f}%), "
              f"dvc {w['dvc']:.2f}s", file=sys.stderr)
    if "hashing" in r:
        h = r["hashing"]
        best = max(h["sha256sum_mib_per_cpu_s"], h["openssl_mib_per_cpu_s"] or 0)
        print(f"hashing per core (CPU time): tsumugi {h['tsumugi_mib_per_cpu_s']:.0f} MiB/s, sha256sum "
              f"{h['sha256sum_mib_per_cpu_s']:.0f}, openssl {h['openssl_mib_per_cpu_s'] or 0:.0f} → "
              f"{h['tsumugi_mib_per_cpu_s'] / best:.0%} of the faster single-core tool", file=sys.stderr)
        print(f"hashing wall: tsumugi {h['tsumugi_mib_s']:.0f} MiB/s on {h['cores']} cores "
              f"({h['tsumugi_mib_s_per_core']:.0f}/core), sha256sum {h['sha256sum_mib_s']:.0f}, openssl "
              f"{h['openssl_mib_s'] or 0:.0f} (load average {h['load_avg_1m']:.1f})", file=sys.stderr)


if __name__ == "__main__":
    main()

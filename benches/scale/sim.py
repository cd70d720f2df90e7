#!/usr/bin/env python3
"""Discrete-event simulation of one tsumugi controller driving 10,000 stages on 100 Slurm nodes.

It answers the plan's question — where do the executor, the run database and the cache
become bottlenecks, and what changes then — with the per-operation costs measured on the
real components (measure.py for the controller, the run DB and the cache; the local Slurm
for sbatch/squeue), scaled by the knobs below. Every serial resource is a queue:

  controller  the run loop + commit threads of the one `tsumugi run` (ctl_cores cores):
              per stage a freshness check, a launch, and the commit (hash the outputs,
              store them in cache/, write the action entry) unless hashing moves to the node
  nfs         the controller's link to the shared file system: committing reads every
              output byte once (bytes / nfs_mib_s)
  slurmctld   one submission at a time (sbatch_ms each; an array of K items costs one)
  db          the run database's writer thread; group commit: one fsync (db_ms) takes
              everything queued, so it is busy at most 1/db_ms times a second
  nodes       nodes × slots_per_node job slots

Completion is noticed at the next poll (one squeue for all jobs of the run every poll_s),
each poll costs the controller poll_ms + poll_ms_per_job × jobs.

    python3 benches/scale/sim.py [--measured scale.json] [--table]
"""

import argparse
import heapq
import json
import random
from dataclasses import dataclass, replace


@dataclass
class Costs:
    fresh_ms: float = 0.3          # freshness decision per stage (measure.py: no-op run)
    launch_ms: float = 14.0        # controller CPU to start one stage (measure.py: cold run)
    commit_ms: float = 1.0         # fixed part of a commit (entry, rename, fsync)
    nfs_mib_s: float = 1000.0      # controller ↔ shared FS (10 GbE ≈ 1,100 MiB/s)
    hash_mib_s: float = 600.0      # SHA-256 + copy into cache/ on one core
    sbatch_ms: float = 30.0        # one submission through slurmctld
    start_s: float = 1.0           # submit → running (scheduler cycle) when a slot is free
    poll_s: float = 0.5           # TSUMUGI_SLURM_POLL_MS default
    poll_ms: float = 15.0
    poll_ms_per_job: float = 0.02
    db_ms: float = 4.0             # one WAL commit with synchronous=FULL
    ctl_cores: int = 8


@dataclass
class Plan:
    hash_on_node: bool = False     # the node's `tsumugi __stage-exec` hashes and stores outputs
    array: int = 1                 # sibling stages submitted as one job array of this size
    launch_ms: float | None = None  # controller CPU per launch, if not the measured one
    poll_s: float | None = None     # completion poll interval, if not the default
    free: bool = False              # every overhead zero: the schedule alone (reference)


def workload(kind, rnd):
    """(name, deps, seconds, output MiB) for 10,000 stages."""
    st = []
    if kind == "sweep":  # 1,000 experiments × a 10-stage chain; minutes per stage; 50 MiB outs
        for e in range(1000):
            for d in range(10):
                st.append((f"e{e}s{d}", [len(st) - 1] if d else [], rnd.lognormvariate(4.1, 0.5), 50))
    elif kind == "sweep-1g":  # the same with 1 GiB outputs (checkpoints, merged exports)
        for e in range(1000):
            for d in range(10):
                st.append((f"e{e}s{d}", [len(st) - 1] if d else [], rnd.lognormvariate(4.1, 0.5), 1024))
    elif kind == "items":  # one map over 9,999 images, 5 s each, 10 KiB out; one merge
        for i in range(9999):
            st.append((f"i{i}", [], rnd.lognormvariate(1.6, 0.3), 0.01))
        st.append(("merge", list(range(9999)), 10.0, 5))
    elif kind == "items-1s":  # the same map with 1 s items (OCR of small images)
        for i in range(9999):
            st.append((f"i{i}", [], rnd.lognormvariate(0.0, 0.3), 0.01))
        st.append(("merge", list(range(9999)), 10.0, 5))
    else:
        raise SystemExit(f"unknown workload {kind}")
    return st


class Res:
    """A FIFO server with `n` parallel units; returns when a job of `dur` seconds ends."""

    def __init__(self, n=1):
        self.free = [0.0] * n
        self.busy = 0.0

    def take(self, t, dur):
        heapq.heapify(self.free)
        start = max(t, heapq.heappop(self.free))
        heapq.heappush(self.free, start + dur)
        self.busy += dur
        return start + dur


def simulate(kind, nodes, slots, c: Costs, p: Plan, seed=1):
    rnd = random.Random(seed)
    st = workload(kind, rnd)
    n = len(st)
    ctl, nfs, ctld, db = Res(c.ctl_cores), Res(1), Res(1), Res(1)
    slots_free = [0.0] * (nodes * slots)
    waiting = [len(d) for _, d, _, _ in st]
    children = [[] for _ in range(n)]
    for i, (_, deps, _, _) in enumerate(st):
        for d in deps:
            children[d].append(i)
    done_at = [0.0] * n
    ready = [(0.0, i) for i in range(n) if waiting[i] == 0]
    heapq.heapify(ready)
    events = []  # (time, stage) completions as the controller learns of them
    if p.free:
        c = Costs(fresh_ms=0, launch_ms=0, commit_ms=0, nfs_mib_s=1e12, hash_mib_s=1e12,
                  sbatch_ms=0, start_s=0, poll_s=1e-6, poll_ms=0, poll_ms_per_job=0, db_ms=0)
    launch_ms = p.launch_ms if p.launch_ms is not None else c.launch_ms
    if p.poll_s is not None:
        c = replace(c, poll_s=p.poll_s)
    polls = 0
    db_commits = 0
    last_db = -1.0
    finished = 0
    critical = [0.0] * n
    pending_array = []

    def launch(t, i):
        nonlocal db_commits, last_db
        t = ctl.take(t, (c.fresh_ms + launch_ms) / 1e3)
        t = ctld.take(t, c.sbatch_ms / 1e3 / p.array)
        heapq.heapify(slots_free)
        s = heapq.heappop(slots_free)
        start = max(t + c.start_s, s)
        secs, mib = st[i][2], st[i][3]
        end = start + secs
        if p.hash_on_node:
            end += mib / c.hash_mib_s  # the node hashes its own outputs, in parallel
        heapq.heappush(slots_free, end)
        # noticed at the next poll tick after `end`
        tick = (int(end / c.poll_s) + 1) * c.poll_s
        heapq.heappush(events, (tick, i))

    while ready or events:
        if ready and (not events or ready[0][0] <= events[0][0]):
            t, i = heapq.heappop(ready)
            launch(t, i)
            continue
        t, i = heapq.heappop(events)
        mib = st[i][3]
        # commit: on the controller, or only the entry when the node did the hashing
        if p.hash_on_node:
            t = ctl.take(t, c.commit_ms / 1e3)
        else:
            t = nfs.take(t, mib / c.nfs_mib_s)
            t = ctl.take(t, c.commit_ms / 1e3 + mib / c.hash_mib_s)
        if t - last_db >= c.db_ms / 1e3:  # group commit: one fsync per db_ms at most
            db.take(t, c.db_ms / 1e3)
            db_commits += 1
            last_db = t
        done_at[i] = t
        finished += 1
        for ch in children[i]:
            waiting[ch] -= 1
            if waiting[ch] == 0:
                heapq.heappush(ready, (t, ch))
    makespan = max(done_at)
    # polls: one per interval over the makespan, each scanning the run's jobs
    polls = int(makespan / c.poll_s)
    poll_cpu = polls * (c.poll_ms + c.poll_ms_per_job * min(n, nodes * slots * 2)) / 1e3
    # ideal: the larger of the critical path and the work over all slots
    cp = [0.0] * n
    for i, (_, deps, secs, _) in enumerate(st):
        cp[i] = secs + max((cp[d] for d in deps), default=0.0)
    work = sum(s for _, _, s, _ in st)
    ideal = max(max(cp), work / (nodes * slots))
    return {
        "workload": kind, "stages": n, "nodes": nodes, "slots": nodes * slots,
        "makespan_s": round(makespan, 1), "ideal_s": round(ideal, 1),
        "efficiency": round(ideal / makespan, 3),  # against the lower bound
        "controller_util": round((ctl.busy + poll_cpu) / (c.ctl_cores * makespan), 3),
        "nfs_util": round(nfs.busy / makespan, 3),
        "slurmctld_util": round(ctld.busy / makespan, 3),
        "db_util": round(db.busy / makespan, 3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--measured", help="JSON from measure.py (per-stage controller costs)")
    ap.add_argument("--sbatch-ms", type=float, help="one sbatch, measured on the local Slurm")
    ap.add_argument("--start-s", type=float, help="submit → running on an idle node")
    ap.add_argument("--poll-ms", type=float, help="one squeue for the run's jobs")
    ap.add_argument("--poll-ms-per-job", type=float)
    ap.add_argument("--nfs-mib-s", type=float)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--ctl-cores", type=int)
    a = ap.parse_args()
    c = Costs()
    fork_ms = None
    if a.measured:
        m = json.load(open(a.measured))

        def biggest(launch):
            return max((r for r in m["runs"] if r.get("launch", "spawn") == launch),
                       key=lambda r: r["stages"], default=None)
        big, fork = biggest("spawn"), biggest("fork")
        fork_ms = fork and fork["cold_controller_cpu_ms_per_stage"]
        c = replace(c, fresh_ms=big["noop_controller_cpu_ms_per_stage"],
                    launch_ms=big["cold_controller_cpu_ms_per_stage"],
                    db_ms=m["db_commit_ms"], hash_mib_s=m["commit_mib_per_s"])
    for k in ("ctl_cores", "sbatch_ms", "start_s", "poll_ms", "poll_ms_per_job", "nfs_mib_s"):
        if getattr(a, k) is not None:
            c = replace(c, **{k: getattr(a, k)})
    plans = {"no overheads (reference)": Plan(free=True)}
    if fork_ms:
        plans["fork launch (before)"] = Plan(launch_ms=fork_ms)
    plans.update({
        "as built": Plan(),
        "hash on node": Plan(hash_on_node=True),
        "+ arrays of 100": Plan(hash_on_node=True, array=100),
    })
    print(f"costs: {c}")
    print("| workload | plan | makespan | ideal | efficiency | controller | NFS link | slurmctld | run DB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ["sweep", "sweep-1g", "items", "items-1s"]:
        for name, p in plans.items():
            r = simulate(kind, a.nodes, a.slots, c, p)
            print(f"| {kind} | {name} | {r['makespan_s']:.0f} s | {r['ideal_s']:.0f} s | "
                  f"{r['efficiency']:.2f} | {r['controller_util']:.0%} | {r['nfs_util']:.0%} | "
                  f"{r['slurmctld_util']:.0%} | {r['db_util']:.0%} |")


if __name__ == "__main__":
    main()

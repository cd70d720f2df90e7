#!/usr/bin/env python3
"""Remote-cache restore throughput on loopback: `tsumugi pull` from a moto S3 server and
from a local-directory remote, against a peer that moves the same bytes in the same run.

Peers (no verification, no checkout, so they are an upper bound for a plain download):
- S3: `aws s3 cp --recursive s3://bucket/PREFIX/objects DIR` (the AWS CLI, 10 parallel
  transfers by default) against the same moto server;
- directory: `cp -r REMOTE/objects DIR`.

`tsumugi pull` does more than either: it reads each action entry, downloads every object
the entries need into cache/objects (SHA-256 checked, renamed into place) and
then checks the outputs out into the workspace (a second copy of every byte). Two
payloads: many small objects (a directory output of N files) and a few large ones.

    python3 benches/remote/bench.py --tsumugi target/debug/tsumugi --reps 3

Needs `moto[server]` and `awscli` (pip) for the S3 half; without them it measures the
directory remote only.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PIPE = """
name: bench
stages:
  small:
    cmd: python3 gen.py small {n_small} {small_kib} out/small
    deps: [gen.py]
    outs: [out/small]
  large:
    cmd: python3 gen.py large {n_large} {large_mib} out/large
    deps: [gen.py]
    outs: [out/large]
"""

GEN = """
import os, sys, random
kind, n, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
unit = 1024 if kind == 'small' else 1 << 20
os.makedirs(out, exist_ok=True)
for i in range(n):
    with open(f'{out}/{kind}{i:05d}.bin', 'wb') as f:
        f.write(os.urandom(size * unit))
"""


def sh(cmd, cwd=None, env=None, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r


def timed(cmd, cwd=None, env=None):
    t0 = time.perf_counter()
    sh(cmd, cwd=cwd, env=env)
    return time.perf_counter() - t0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def have(mod_or_cmd, is_cmd=False):
    if is_cmd:
        return shutil.which(mod_or_cmd) is not None
    return sh([sys.executable, "-c", f"import {mod_or_cmd}"], check=False).returncode == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsumugi", default="target/debug/tsumugi")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small", type=int, default=2000, help="small objects")
    ap.add_argument("--small-kib", type=int, default=4)
    ap.add_argument("--large", type=int, default=4, help="large objects")
    ap.add_argument("--large-mib", type=int, default=32)
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    tsumugi = os.path.abspath(a.tsumugi)
    work = tempfile.mkdtemp(prefix="tsumugi-remote-bench-")
    env = dict(os.environ)
    moto = None
    backends = [("dir", os.path.join(work, "remote-dir"))]
    if have("moto.server") and have("aws", is_cmd=True):
        port = free_port()
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        sh(["aws", "s3", "mb", "s3://bench", "--endpoint-url", endpoint], env=env)
        backends.append(("s3", "s3://bench/cache"))
    else:
        print("moto[server] or awscli missing: directory remote only", file=sys.stderr)

    results = []
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        with open(os.path.join(src, "p.yaml"), "w") as f:
            f.write(
                PIPE.format(
                    n_small=a.small,
                    small_kib=a.small_kib,
                    n_large=a.large,
                    large_mib=a.large_mib,
                )
            )
        with open(os.path.join(src, "gen.py"), "w") as f:
            f.write(GEN)
        sh([tsumugi, "run", "p.yaml", "-q"], cwd=src, env=env)
        payloads = [
            ("small", a.small, a.small * a.small_kib * 1024),
            ("large", a.large, a.large * a.large_mib << 20),
        ]
        # One remote per payload and kind, so that the peer copies exactly that payload's
        # objects (plus one directory manifest).
        for stage, _, _ in payloads:
            for kind, base in backends:
                url = f"{base}-{stage}" if kind == "dir" else f"{base}/{stage}"
                sh([tsumugi, "remote", "add", f"{kind}-{stage}", url], cwd=src, env=env)
                sh([tsumugi, "push", "-r", f"{kind}-{stage}", "-q", "p.yaml", stage], cwd=src, env=env)
        for stage, n, size in payloads:
            for kind, base in backends:
                name = f"{kind}-{stage}"
                url = f"{base}-{stage}" if kind == "dir" else f"{base}/{stage}"
                ours, peer = [], []
                for rep in range(a.reps):
                    clone = os.path.join(work, f"clone-{name}-{rep}")
                    os.makedirs(clone)
                    for f in ["p.yaml", "gen.py"]:
                        shutil.copy(os.path.join(src, f), clone)
                    shutil.copytree(os.path.join(src, ".tsumugi"), os.path.join(clone, ".tsumugi"))
                    ours.append(timed([tsumugi, "pull", "-r", name, "-q", "p.yaml", stage], cwd=clone, env=env))
                    # The run after the pull must have nothing to do.
                    r = sh([tsumugi, "run", "p.yaml", stage, "--no-remote", "--json"], cwd=clone, env=env)
                    assert all(s["status"] == "cached" for s in json.loads(r.stdout)["stages"]), r.stdout
                    dest = os.path.join(work, f"peer-{name}-{rep}")
                    if kind == "dir":
                        peer.append(timed(["cp", "-r", os.path.join(url, "objects"), dest]))
                    else:
                        peer.append(
                            timed(
                                ["aws", "s3", "cp", "--recursive", "--quiet", f"{url}/objects", dest],
                                env=env,
                            )
                        )
                    shutil.rmtree(clone)
                    shutil.rmtree(dest)
                t, pt = statistics.median(ours), statistics.median(peer)
                results.append(
                    dict(
                        payload=stage,
                        remote=kind,
                        objects=n,
                        mib=size / (1 << 20),
                        tsumugi_s=t,
                        peer_s=pt,
                        mib_s=size / (1 << 20) / t,
                        objects_s=n / t,
                        peer_mib_s=size / (1 << 20) / pt,
                        peer_objects_s=n / pt,
                        peer_over_tsumugi=pt / t,
                    )
                )
        peer_name = {"dir": "cp -r", "s3": "aws s3 cp"}
        print("| payload | remote | tsumugi pull | MiB/s | objects/s | peer | peer time | peer MiB/s | peer objects/s | tsumugi speed / peer |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        for r in results:
            print(
                f"| {r['objects']} × {r['mib'] / r['objects']:.3g} MiB | {r['remote']} | {r['tsumugi_s']:.2f} s | {r['mib_s']:.1f} | {r['objects_s']:.0f} "
                f"| {peer_name[r['remote']]} | {r['peer_s']:.2f} s | {r['peer_mib_s']:.1f} | {r['peer_objects_s']:.0f} | {r['peer_over_tsumugi']:.2f} |"
            )
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        if moto:
            moto.terminate()
            moto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

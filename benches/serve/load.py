#!/usr/bin/env python3
"""Closed-loop load client (stdlib only, loopback): N threads each send `POST /predict`
with --pairs-per-request pairs from a JSONL file, back to back, for --seconds. Prints one
JSON line: requests, failures, pairs/s, p50/p99 latency (ms). With --swaps N, another
thread alternates `POST {prefix}/adapter/load` between --swap-paths N times while the load
runs (and the run lasts until the swaps are done), and reports the swap times.

    python3 benches/serve/load.py --url http://127.0.0.1:8080 --pairs pairs.jsonl -c 8
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("-c", "--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--pairs-per-request", type=int, default=4)
    ap.add_argument("--swaps", type=int, default=0)
    ap.add_argument("--swap-paths", default="a1,a2")
    ap.add_argument("--prefix", default="/nli")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    rows = [json.loads(l) for l in open(args.pairs)]
    pairs = [[r["text_a"], r["text_b"]] for r in rows]
    k = args.pairs_per_request
    bodies = [json.dumps({"pairs": pairs[i:i + k]}).encode() for i in range(0, len(pairs) - k + 1, k)]
    lat, fails, errors = [], [0], []
    lock = threading.Lock()
    stop = threading.Event()

    def client(cid):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        i = cid
        while not stop.is_set():
            body = bodies[i % len(bodies)]
            i += args.clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and len(json.loads(data)["results"]) == k
            except Exception as e:  # a failed request is counted, not fatal
                ok, data = False, str(e).encode()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            dt = time.perf_counter() - t
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    fails[0] += 1
                    errors.append(data[:200].decode(errors="replace"))

    swap_times = []

    def swapper():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        paths = args.swap_paths.split(",")
        for n in range(args.swaps):
            t = time.perf_counter()
            conn.request("POST", f"{args.prefix}/adapter/load", json.dumps({"path": paths[n % len(paths)]}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"swap {n}: HTTP {r.status}")
            swap_times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    if args.swaps:
        s = threading.Thread(target=swapper)
        s.start()
        s.join()
    else:
        time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    lat.sort()
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    out = {"clients": args.clients, "seconds": round(secs, 2), "requests": len(lat), "failed": fails[0],
           "pairs_per_s": round(len(lat) * k / secs, 1), "p50_ms": round(pct(0.5), 1), "p99_ms": round(pct(0.99), 1)}
    if swap_times:
        swap_times.sort()
        out.update(swaps=len(swap_times), swap_p50_ms=round(1000 * swap_times[len(swap_times) // 2], 1),
                   swap_max_ms=round(1000 * swap_times[-1], 1))
    if errors:
        out["first_error"] = errors[0]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

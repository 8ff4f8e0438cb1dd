#!/usr/bin/env python3
"""Soak run for raster-edge (called by benches/soak/run.sh). Standard library only.

Mixed traffic for --minutes (default 10): hits (a few hot reads), misses (reads over a large
query space, through a small cache so eviction churns), writes, 429s (an unknown key hammering
past its limit), purges every 5 s and a Redis restart halfway (rate-limit backend redis). RSS
of the gateway is sampled every 10 s from /proc. At the end it asserts: RSS never above the
startup RSS + cache.max_memory + SLACK_MIB; no unexpected status; no ERROR line in the
gateway's log. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

CACHE_MIB = 8
SLACK_MIB = 64  # allocator, runtimes, connection buffers, rate-limit tables, logs
ORG = "/organizations/monogram-labs"
BCN = f"{ORG}/libraries/barcelona"
VERSION = "2026-05-20"
# ERROR lines that are not failures, counted apart: pingora-core 0.9.1 logs this at ERROR when
# a pooled upstream connection is still referenced by its idle watcher (`Arc::try_unwrap` fails
# in `TransportConnector::reused_stream`); the request then opens a new upstream connection.
BENIGN = ["pingora_core::connectors: failed to acquire reusable stream"]
procs: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def start(cmd: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, **kw)
    procs.append(p)
    return p


def redis(port: int) -> subprocess.Popen:
    p = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_port(port)
    return p


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Worker(threading.Thread):
    """One keep-alive connection sending one kind of request in a loop."""

    def __init__(self, kind: str, port: int, until: float, stats: Counter, bad: list):
        super().__init__(daemon=True)
        self.kind, self.port, self.until, self.stats, self.bad = kind, port, until, stats, bad

    def request(self) -> tuple[str, str, str, dict, set[int]]:
        h = {"Authorization": "Bearer demo-read", "Api-Version": VERSION}
        if self.kind == "hit":
            return "GET", f"{BCN}/assets?pageSize={random.randint(1, 4)}", "", h, {200}
        if self.kind == "miss":
            q = f"pageSize=20&page=1&q={random.randrange(1_000_000)}"
            return "GET", f"{ORG}/search/assets?{q}", "", h, {200}
        if self.kind == "write":
            h = {**h, "Authorization": "Bearer demo-write", "Content-Type": "application/json"}
            body = json.dumps({"assetIds": ["bcn-0001"], "tags": ["soak"]})
            return "POST", f"{BCN}/assets/tag", body, h, {200}
        # An unknown key past its limit: the origin's 401 until the limit, then 429.
        return "GET", "/me", "", {**h, "Authorization": "Bearer soak-hammer"}, {401, 429}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while time.time() < self.until:
            method, path, body, headers, ok = self.request()
            try:
                conn.request(method, path, body or None, headers)
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                self.bad.append(f"{self.kind} {method} {path}: {e!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            self.stats[(self.kind, status)] += 1
            if status not in ok:
                self.bad.append(f"{self.kind} {method} {path}: {status}")
            if self.kind == "write":
                time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--bin-dir", default="target/release")
    a = ap.parse_args()
    bins = Path(a.bin_dir)
    work = Path(tempfile.mkdtemp(prefix="raster-soak-"))
    mock = start([str(bins / "raster-mock"), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                 text=True)
    mock_addr = mock.stdout.readline().strip().removeprefix("listening on ")
    rport = free_port()
    redis_proc = redis(rport)
    conf = work / "soak.toml"
    base = f"""
[server]
threads = 2
[edge]
key_id_secret = "soak-secret"
[cache]
max_memory = "{CACHE_MIB}MiB"
[rate_limit]
backend = "redis"
rate = 20
burst = 20
[redis]
url = "redis://127.0.0.1:{rport}"
[admin]
token = "soak-admin"
"""
    conf.write_text(base)
    ids = [subprocess.run([str(bins / "raster-edge"), "--config", str(conf), "key-id", k],
                          check=True, capture_output=True, text=True).stdout.strip()
           for k in ("demo-read", "demo-write")]
    conf.write_text(base + f"""
[[rate_limit.tiers]]
name = "soak"
rate = 1000000
burst = 1000000
key_ids = {json.dumps(ids)}
""")
    port, admin = free_port(), free_port()
    log = open(work / "edge.log", "w+")
    edge = start([str(bins / "raster-edge"), "--config", str(conf), "--listen",
                  f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--upstream",
                  f"http://{mock_addr}"], stderr=log, stdout=log,
                 env={"RASTER_EDGE_RUNTIME_DIR": str(work), "PATH": "/usr/bin:/bin"})
    wait_port(port)
    wait_port(admin)
    time.sleep(0.5)
    rss0 = rss_mib(edge.pid)
    duration = a.minutes * 60
    until = time.time() + duration
    stats: Counter = Counter()
    bad: list[str] = []
    workers = [Worker(k, port, until, stats, bad)
               for k in ["hit"] * 3 + ["miss"] * 2 + ["write", "hammer"]]
    for w in workers:
        w.start()
    samples, purges, restarted = [(0.0, rss0)], 0, False
    started = time.time()
    next_sample, next_purge = started + 10, started + 5
    while time.time() < until:
        now = time.time()
        if now >= next_purge:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            c.request("POST", "/admin/purge", json.dumps({"scope": BCN}),
                      {"Authorization": "Bearer soak-admin", "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                bad.append(f"purge: {r.status}")
            purges += 1
            next_purge = now + 5
        if now >= next_sample:
            samples.append((now - started, rss_mib(edge.pid)))
            print(f"t={now - started:6.0f}s rss={samples[-1][1]:7.1f} MiB "
                  f"requests={sum(stats.values())}", flush=True)
            next_sample = now + 10
        if not restarted and now - started > duration / 2:
            redis_proc.terminate()
            redis_proc.wait()
            time.sleep(2)
            redis_proc = redis(rport)
            restarted = True
        time.sleep(0.1)
    for w in workers:
        w.join()
    samples.append((time.time() - started, rss_mib(edge.pid)))
    edge.terminate()
    code = edge.wait(timeout=30)
    log.seek(0)
    errors = [l for l in log.read().splitlines() if " ERROR " in l or '"level":"ERROR"' in l]
    benign = [l for l in errors if any(b in l for b in BENIGN)]
    errors = [l for l in errors if l not in benign]
    bound = rss0 + CACHE_MIB + SLACK_MIB
    peak = max(r for _, r in samples)
    print(json.dumps({
        "minutes": a.minutes, "bin_dir": str(bins), "requests": sum(stats.values()),
        "by_kind_status": {f"{k} {s}": n for (k, s), n in sorted(stats.items())},
        "purges": purges, "redis_restarted": restarted,
        "rss_start_mib": round(rss0, 1), "rss_peak_mib": round(peak, 1),
        "rss_end_mib": round(samples[-1][1], 1), "rss_bound_mib": round(bound, 1),
        "unexpected": bad[:20], "unexpected_count": len(bad), "log_errors": errors[:20],
        "log_benign_errors": len(benign),
        "exit_code": code,
    }, indent=2))
    ok = peak <= bound and not bad and not errors and code == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

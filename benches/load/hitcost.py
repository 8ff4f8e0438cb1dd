#!/usr/bin/env python3
"""Cost of one fresh cache hit, raster-edge vs nginx proxy_cache, in one run (docs/BENCHMARKS.md,
"Cost per hit"): user-space instructions (valgrind callgrind) and system calls (strace -c).

    python3 benches/load/hitcost.py [--hits 2000] [--bin-dir target/release] [--targets ...]

For each target: start it (same configs as the load benchmark: benches/load/*.in), send one
request (a miss) and a warm-up of hits, then count over `--hits` sequential hits of the same
~1.3 KB asset list on ONE keep-alive connection:
  - callgrind: the server runs under `valgrind --tool=callgrind`; counters are zeroed
    (`callgrind_control -z`) after the warm-up and dumped (`callgrind_control -d`) after the hits;
    Ir (instructions executed, all threads) / hits. Instruction counts do not depend on machine
    load, which makes them the repeatable number on a shared machine.
  - strace: the server runs natively; `strace -c -f` is attached to every thread for the hits
    only; syscalls / hits, per syscall name (timer sleeps of background threads, which count
    by the second, reported per second instead).
Writes bench-results/hitcost-<timestamp>/{hitcost.json,hitcost.md} and the callgrind dumps
(`callgrind_annotate --inclusive=yes <file>` shows where the instructions go). Everything it
starts is stopped by PID. Needs valgrind, strace and nginx (Debian: apt-get install valgrind
strace nginx-light).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (benches/load/bench.py: process bookkeeping, config rendering)

PROCS = bench.PROCS
HOT = f"{bench.ASSETS}?pageSize=2"


class KeepAlive:
    """One keep-alive HTTP/1.1 connection sending the same GET again and again."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer demo-read\r\nApi-Version: {bench.API_VERSION}\r\n\r\n"
                    ).encode()
        self.buf = b""

    def get(self) -> tuple[int, dict, bytes]:
        self.sock.sendall(self.req)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before a response head")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed inside a body")
            self.buf += chunk
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def start_target(name: str, args, run_dir: Path, origin, shm: Path, prefix: list[str]):
    """Starts `name` with `prefix` (valgrind, or taskset) in front of its command line."""
    port = bench.free_port()
    log = run_dir / f"{name}-{prefix[0].rsplit('/', 1)[-1]}.log"
    if name == "raster-edge":
        admin = bench.free_port()
        (run_dir / "raster-edge-run").mkdir(exist_ok=True)
        cfg = bench.render("raster-edge.toml.in", run_dir / "raster-edge.toml",
                           {"PORT": port, "ADMIN_PORT": admin, "ORIGIN_PORT": origin.port,
                            "DIR": run_dir, "MAX_MEMORY_MB": 256})
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in args.edge_env)
        argv = prefix + [str(args.bin_dir / "raster-edge"), "--config", str(cfg)]
        p = PROCS.start(name, argv, log, env=env)
        ready = f"http://127.0.0.1:{admin}/readyz"
        bench.wait_http(ready, name, p, log, timeout=180, ok=lambda s: s == 200)
    else:
        cache_dir = shm / f"nginx-cache-{port}"
        cache_dir.mkdir(parents=True, exist_ok=True)
        for d in ("nginx-client-body", "nginx-proxy-temp"):
            (run_dir / d).mkdir(exist_ok=True)
        cfg = bench.render("nginx.conf.in", run_dir / f"nginx-{port}.conf",
                           {"PORT": port, "ORIGIN_PORT": origin.port, "DIR": run_dir,
                            "CACHE_DIR": cache_dir,
                            "USER_LINE": "user root;" if os.geteuid() == 0 else "",
                            "NGINX_MAX_SIZE_MB": 1024})
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        # master_process off: the one process that serves is the one measured.
        argv = prefix + [nginx, "-p", str(run_dir), "-e", str(run_dir / "nginx-error.log"),
                         "-c", str(cfg), "-g", "daemon off; master_process off;"]
        p = PROCS.start(name, argv, log)
        bench.wait_http(f"http://127.0.0.1:{port}/", name, p, log, timeout=180,
                        ok=lambda s: True)
    return port, p


def warm(port: int, n: int) -> KeepAlive:
    c = KeepAlive(port, HOT)
    for i in range(n):
        s, h, b = c.get()
        if s != 200:
            raise RuntimeError(f"warm-up request {i}: status {s}")
    if (h.get("x-cache") or "").upper() != "HIT":
        raise RuntimeError(f"not a hit after warm-up: X-Cache {h.get('x-cache')!r}")
    return c


def control(pid: int, flag: str, wake: KeepAlive) -> int:
    """Runs `callgrind_control FLAG PID`; valgrind reads commands only while the program runs,
    so one request is sent each 50 ms until it answers. Returns the requests sent."""
    cc = subprocess.Popen(["callgrind_control", flag, str(pid)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    sent = 0
    t0 = time.monotonic()
    while cc.poll() is None:
        if time.monotonic() - t0 > 120:
            cc.kill()
            raise RuntimeError(f"callgrind_control {flag} did not answer")
        wake.get()
        sent += 1
        time.sleep(0.05)
    return sent


def callgrind_total(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def top_inclusive(path: Path, n: int = 30) -> str:
    if not shutil.which("callgrind_annotate"):
        return ""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", f"--threshold=99",
                        str(path)], capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if re.match(r"^\s*[\d,]+ \(", ln)]
    return "\n".join(lines[:n])


def measure_callgrind(name: str, args, run_dir: Path, origin, shm: Path) -> dict:
    out = run_dir / f"callgrind.{name}.%p"
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    port, p = start_target(name, args, run_dir, origin, shm, prefix)
    try:
        c = warm(port, args.warmup)
        woke = control(p.pid, "-z", c)
        for _ in range(args.hits):
            c.get()
        before = set(run_dir.glob(f"callgrind.{name}.{p.pid}*"))
        woke_d = control(p.pid, "-d", c)
        dumps = sorted(set(run_dir.glob(f"callgrind.{name}.{p.pid}*")) - before)
        if not dumps:
            raise RuntimeError("callgrind_control -d wrote no dump")
        c.close()
        ir = sum(callgrind_total(d) for d in dumps)
        # The wake-up request that made callgrind read the dump command may or may not be in
        # the dump: at most `woke_d` requests of error, reported.
        return {"ir_total": ir, "hits": args.hits, "ir_per_hit": ir / args.hits,
                "wake_requests": woke_d, "dumps": [d.name for d in dumps],
                "top_inclusive": top_inclusive(dumps[-1])}
    finally:
        PROCS.stop(p, timeout=30)


def measure_strace(name: str, args, run_dir: Path, origin, shm: Path) -> dict:
    port, p = start_target(name, args, run_dir, origin, shm, ["taskset", "-c", bench.SERVER_CPU])
    try:
        c = warm(port, args.warmup)
        tids = [t for t in os.listdir(f"/proc/{p.pid}/task")]
        out = run_dir / f"strace.{name}.txt"
        # -f with the main thread's pid attaches every thread of the process
        argv = ["strace", "-c", "-f", "-o", str(out), "-p", str(p.pid)]
        errlog = open(run_dir / f"strace.{name}.stderr", "wb")
        st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errlog)
        # strace says "Process N attached" for each thread; wait until it has said so for all
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            text = (run_dir / f"strace.{name}.stderr").read_text(errors="replace")
            if "attached" in text or st.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        t_hits = time.monotonic()
        for _ in range(args.hits):
            c.get()
        t_hits = time.monotonic() - t_hits
        st.send_signal(signal.SIGINT)
        st.wait(timeout=30)
        errlog.close()
        c.close()
        calls = {}
        for line in out.read_text().splitlines():
            m = re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
        # Timer sleeps of background threads count by the second, not by the request.
        timed = {k: calls.pop(k) for k in ("clock_nanosleep", "restart_syscall") if k in calls}
        total = sum(calls.values())
        return {"hits": args.hits, "seconds": round(t_hits, 3),
                "timer_calls_per_second": {k: round(v / t_hits, 1) for k, v in timed.items()},
                "syscalls_total": total, "per_hit": total / args.hits,
                "by_name_per_hit": {k: round(v / args.hits, 3)
                                    for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}}
    finally:
        PROCS.stop(p, timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=50, help="requests before counting (1st: miss)")
    ap.add_argument("--targets", default="raster-edge,nginx")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--bin-dir", type=Path, default=bench.REPO / "target" / "release")
    ap.add_argument("--edge-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for raster-edge (RASTER_EDGE_… overrides)")
    ap.add_argument("--label", default="", help="free text stored in hitcost.json")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.origin_cpu = bench.CLIENT_CPU
    args.origin_threads = 1
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (args.out or bench.REPO / "bench-results" / f"hitcost-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") / f"raster-edge-hitcost-{stamp}-{os.getpid()}"
    shm.mkdir(parents=True)
    PROCS.cleanup_paths.append(shm)
    atexit.register(PROCS.stop_all)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, bench.on_signal)
    print(f"results: {run_dir}", flush=True)
    origin = bench.start_origin(args, run_dir)
    res = {"label": args.label, "hits": args.hits, "path": HOT, "edge_env": args.edge_env,
           "commit": subprocess.run(["git", "-C", str(bench.REPO), "rev-parse", "--short",
                                     "HEAD"], capture_output=True, text=True).stdout.strip(),
           "targets": {}}
    for name in [t for t in args.targets.split(",") if t]:
        r = res["targets"].setdefault(name, {})
        if not args.no_callgrind:
            r["callgrind"] = measure_callgrind(name, args, run_dir, origin, shm)
            print(f"{name}: {r['callgrind']['ir_per_hit']:,.0f} instructions per hit", flush=True)
        if not args.no_strace:
            r["strace"] = measure_strace(name, args, run_dir, origin, shm)
            print(f"{name}: {r['strace']['per_hit']:.2f} syscalls per hit "
                  f"{r['strace']['by_name_per_hit']}; timers "
                  f"{r['strace']['timer_calls_per_second']} per second", flush=True)
    (run_dir / "hitcost.json").write_text(json.dumps(res, indent=2))
    md = ["| target | instructions / hit | syscalls / hit | by syscall (per hit) | timer sleeps / s |",
          "|---|--:|--:|---|--:|"]
    for name, r in res["targets"].items():
        ir = r.get("callgrind", {}).get("ir_per_hit")
        sc = r.get("strace", {})
        by = ", ".join(f"{k} {v:g}" for k, v in sc.get("by_name_per_hit", {}).items() if v >= 0.01)
        timers = sum(sc.get("timer_calls_per_second", {}).values())
        irs = f"{ir:,.0f}" if ir else "–"
        md.append(f"| {name} | {irs} | {sc.get('per_hit', 0):.2f} | {by} | {timers:.0f} |")
    (run_dir / "hitcost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

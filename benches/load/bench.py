#!/usr/bin/env python3
"""Side-by-side load benchmark: raster-edge vs nginx proxy_cache vs Varnish, one origin.

Called by benches/load/run.sh (which installs packages and builds release). Standard library
only. Every process it starts is recorded and stopped by PID on exit, on Ctrl-C and on SIGTERM;
nothing else is touched. See docs/BENCHMARKS.md for the methodology.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(HERE))
import chart  # noqa: E402  (benches/load/chart.py)

API_VERSION = "2026-05-20"
ORG = "monogram-labs"
ASSETS = f"/organizations/{ORG}/libraries/barcelona/assets"
API_KEYS = ["demo-read", "demo-write", "demo-barcelona"]  # all three read barcelona
SERVER_CPU = "0"
CLIENT_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------------------------
# processes: started here, stopped here, by PID only


class Procs:
    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []
        self.cleanup_paths: list[Path] = []
        self.done = False

    def start(self, name: str, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        f = open(log, "ab")
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        f.close()
        self.started.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 8.0) -> None:
        if p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)  # the Popen object still owns the PID: no reuse race
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        if self.done:
            return
        self.done = True
        for name, p in reversed(self.started):
            try:
                self.stop(p)
            except Exception as e:  # keep going: every process must be stopped
                print(f"warning: stopping {name} (pid {p.pid}): {e}", file=sys.stderr)
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)


PROCS = Procs()


def on_signal(signum, _frame):
    print(f"\nsignal {signum}: stopping what this benchmark started", file=sys.stderr)
    PROCS.stop_all()
    sys.exit(128 + signum)


# --------------------------------------------------------------------------------------------
# /proc helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx workers, the cache manager, varnish's child)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_jiffies() -> dict[str, tuple[int, int]]:
    """{cpuN: (busy, total)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]  # idle + iowait
                total = sum(v[:8])  # user..steal (guest is inside user)
                out[name] = (total - idle, total)
    return out


def busy_fraction(a, b, cpu: str) -> float:
    db = b[cpu][0] - a[cpu][0]
    dt_ = b[cpu][1] - a[cpu][1]
    return db / dt_ if dt_ > 0 else 0.0


def wait_quiet(max_wait: float, threshold: float) -> tuple[bool, float, list[float]]:
    """Waits (bounded) until both benchmark CPUs are under `threshold` busy over 1 s."""
    t0 = time.monotonic()
    while True:
        a = cpu_jiffies()
        time.sleep(1.0)
        b = cpu_jiffies()
        busy = [busy_fraction(a, b, f"cpu{c}") for c in (SERVER_CPU, CLIENT_CPU)]
        waited = time.monotonic() - t0
        if max(busy) < threshold:
            return True, waited, busy
        if waited >= max_wait:
            return False, waited, busy


# --------------------------------------------------------------------------------------------
# HTTP helpers


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def http(method: str, url: str, headers: dict | None = None, body: bytes | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with NO_PROXY.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def api_get(base: str, path: str, key: str = "demo-read") -> tuple[int, dict, bytes]:
    return http("GET", base + path,
                {"Authorization": f"Bearer {key}", "Api-Version": API_VERSION})


def wait_http(url: str, what: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0,
              ok=lambda s: s < 500) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}; log {log}:\n{tail}")
        try:
            s, _, _ = http("GET", url, timeout=1.0)
            if ok(s):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout}s; see {log}")


def mock_requests(origin: str) -> int:
    _, _, b = http("GET", origin + "/__mock/stats")
    return int(json.loads(b)["data"]["requests"])


# --------------------------------------------------------------------------------------------
# targets


def render(template: str, out: Path, values: dict) -> Path:
    text = (HERE / template).read_text()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    out.write_text(text)
    return out


class Target:
    def __init__(self, name: str, port: int, proc: subprocess.Popen | None) -> None:
        self.name = name
        self.port = port
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.proc else []


def start_origin(args, run_dir: Path) -> Target:
    port = free_port()
    log = run_dir / "raster-mock.log"
    p = PROCS.start("raster-mock", ["taskset", "-c", args.origin_cpu, str(args.bin_dir / "raster-mock"),
                                    "--listen", f"127.0.0.1:{port}",
                                    "--threads", str(args.origin_threads)], log)
    t = Target("direct", port, p)
    wait_http(t.base + "/__mock/stats", "raster-mock", p, log, ok=lambda s: s == 200)
    return t


# raster-edge as users really run it, next to the like-for-like target: each variant is the
# benchmark config plus these environment overrides (docs/BENCHMARKS.md). The rate is far above
# what the benchmark sends, so every request is counted and none refused.
EDGE_VARIANTS = {
    "raster-edge": {},
    "raster-edge+ratelimit": {"RASTER_EDGE_RATE_LIMIT_ENABLED": "true",
                              "RASTER_EDGE_RATE_LIMIT_RATE": "10000000",
                              "RASTER_EDGE_RATE_LIMIT_BURST": "10000000",
                              "RASTER_EDGE_RATE_LIMIT_COUNT": "all"},
    "raster-edge+accesslog": {"RASTER_EDGE_LOG_ACCESS_LOG": "true",
                              "RASTER_EDGE_LOG_LEVEL": "info"},
}
# The variants run the scenarios where their cost shows (hits), not every scenario.
VARIANT_SCENARIOS = {"hot-1k", "hot-32k"}


def start_edge(args, run_dir: Path, origin: Target, name: str = "raster-edge") -> Target:
    port, admin = free_port(), free_port()
    suffix = "" if name == "raster-edge" else "-" + name.split("+", 1)[1]
    (run_dir / f"raster-edge-run{suffix}").mkdir(exist_ok=True)
    cfg = render("raster-edge.toml.in", run_dir / f"raster-edge{suffix}.toml",
                 {"PORT": port, "ADMIN_PORT": admin, "ORIGIN_PORT": origin.port,
                  "DIR": run_dir, "MAX_MEMORY_MB": args.max_memory_mb})
    cfg.write_text(cfg.read_text().replace(f"{run_dir}/raster-edge-run",
                                           f"{run_dir}/raster-edge-run{suffix}"))
    log = run_dir / f"raster-edge{suffix}.log"
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.edge_env)
    env.update(EDGE_VARIANTS[name])
    p = PROCS.start(name, ["taskset", "-c", SERVER_CPU, str(args.bin_dir / "raster-edge"),
                           "--config", str(cfg)], log, env=env)
    t = Target(name, port, p)
    t.config = {"file": cfg.name, "toml": cfg.read_text(),
                "env": {**dict(kv.split("=", 1) for kv in args.edge_env), **EDGE_VARIANTS[name]}}
    t.admin = f"http://127.0.0.1:{admin}"
    wait_http(t.admin + "/readyz", "raster-edge", p, log, ok=lambda s: s == 200)
    return t


def start_nginx(args, run_dir: Path, origin: Target, shm_dir: Path) -> Target:
    port = free_port()
    cache_dir = shm_dir / "nginx-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    for d in ("nginx-client-body", "nginx-proxy-temp"):
        (run_dir / d).mkdir(exist_ok=True)
    user_line = "user root;" if os.geteuid() == 0 else ""
    cfg = render("nginx.conf.in", run_dir / "nginx.conf",
                 {"PORT": port, "ORIGIN_PORT": origin.port, "DIR": run_dir,
                  "CACHE_DIR": cache_dir, "USER_LINE": user_line,
                  "NGINX_MAX_SIZE_MB": 4 * args.max_memory_mb})
    log = run_dir / "nginx.log"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = PROCS.start("nginx", ["taskset", "-c", SERVER_CPU, nginx, "-p", str(run_dir), "-e",
                              str(run_dir / "nginx-error.log"), "-c", str(cfg), "-g",
                              "daemon off;"], log)
    t = Target("nginx", port, p)
    t.cache_dir = cache_dir
    text = cfg.read_text()
    t.config = {"file": cfg.name, "conf": text,
                # what decides how nginx writes a cached 1 KB / 32 KB body (defaults unless set)
                "sendfile": "on" if "sendfile on" in text else "off (default)",
                "tcp_nopush": "on" if "tcp_nopush on" in text else "off (default)",
                "proxy_buffers": "default (8 × 4k|8k)" if "proxy_buffers" not in text else "set",
                "output_buffers": "default (2 × 32k)" if "output_buffers" not in text else "set"}
    wait_http(t.base + "/", "nginx", p, log, ok=lambda s: True)
    return t


def start_varnish(args, run_dir: Path, origin: Target, shm_dir: Path) -> Target:
    port = free_port()
    vcl = render("varnish.vcl.in", run_dir / "varnish.vcl", {"ORIGIN_PORT": origin.port})
    os.chmod(run_dir, 0o755)
    os.chmod(vcl, 0o644)
    log = run_dir / "varnish.log"
    varnishd = shutil.which("varnishd") or "/usr/sbin/varnishd"
    workdir = shm_dir / "varnish"
    p = PROCS.start("varnishd", ["taskset", "-c", SERVER_CPU, varnishd, "-F", "-n", str(workdir),
                                 "-a", f"127.0.0.1:{port}", "-T", "none", "-f", str(vcl),
                                 "-s", f"malloc,{args.max_memory_mb}m",
                                 "-p", "thread_pools=1"], log)
    t = Target("varnish", port, p)
    t.config = {"file": vcl.name, "vcl": vcl.read_text(),
                "args": f"-s malloc,{args.max_memory_mb}m -p thread_pools=1"}
    wait_http(t.base + "/", "varnish", p, log, ok=lambda s: True)
    return t


# --------------------------------------------------------------------------------------------
# wrk


def run_wrk(args, target_base: str, env: dict, duration: float, connections: int,
            hot_path: str | None, log: Path, done_file: Path | None = None) -> dict:
    """One wrk run on the client CPU; `done_file`: stop it (SIGINT) once the file appears."""
    argv = ["taskset", "-c", CLIENT_CPU, args.wrk, "-t1", f"-c{connections}",
            f"-d{max(1, int(round(duration)))}s", "--timeout", "10s", "-s", str(HERE / "wrk.lua")]
    url = target_base + "/"
    if hot_path is not None:
        argv += ["-H", "Authorization: Bearer demo-read", "-H", f"Api-Version: {API_VERSION}"]
        url = target_base + hot_path
    argv.append(url)
    e = dict(os.environ)
    e.update({k: str(v) for k, v in env.items()})
    e.setdefault("BENCH_APIVER", API_VERSION)
    if done_file is not None:
        e["BENCH_DONE_FILE"] = str(done_file)
        done_file.unlink(missing_ok=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if done_file is not None:
            deadline = time.monotonic() + duration + 5
            while p.poll() is None and time.monotonic() < deadline and not done_file.exists():
                time.sleep(0.05)
            if p.poll() is None:
                time.sleep(0.3)  # let the last requests of the pass come back
                p.send_signal(signal.SIGINT)  # wrk stops and still reports
        stdout, stderr = p.communicate(timeout=duration + 60)
    except BaseException:
        if p.poll() is None:
            p.kill()
            p.wait()
        raise
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as f:
        f.write(" ".join(argv) + "\n" + json.dumps(env) + "\n" + stdout + stderr + "\n")
    line = next((x for x in stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {stderr.strip()[-500:]}")
    out = json.loads(line[len("BENCHJSON "):])
    out["client_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return out


# --------------------------------------------------------------------------------------------
# scenarios


def pick_page_sizes(origin: Target) -> dict:
    """The barcelona asset-list pageSize whose body is closest to 1 KiB and to 32 KiB."""
    sizes = {}
    for n in range(1, 101):
        s, _, b = api_get(origin.base, f"{ASSETS}?pageSize={n}")
        if s != 200:
            raise RuntimeError(f"origin answered {s} for pageSize={n}: {b[:200]!r}")
        sizes[n] = len(b)
    pick = {}
    for label, want in (("1k", 1024), ("32k", 32 * 1024)):
        n = min(sizes, key=lambda k: abs(sizes[k] - want))
        pick[label] = {"page_size": n, "body_bytes": sizes[n],
                       "path": f"{ASSETS}?pageSize={n}"}
    return pick


def scenario_list(args, pages: dict) -> list[dict]:
    hot1 = pages["1k"]["path"]
    hot32 = pages["32k"]["path"]
    scen = [
        {"id": "hot-1k", "title": f"hot key, {pages['1k']['body_bytes']} B body",
         "kind": "wrk", "mode": "hot", "path": hot1, "conns": args.connections},
        {"id": "hot-32k", "title": f"hot key, {pages['32k']['body_bytes']} B body",
         "kind": "wrk", "mode": "hot", "path": hot32, "conns": args.connections},
        {"id": "keys-uniform", "title": f"{args.keys} keys, uniform", "kind": "wrk",
         "mode": "uniform", "path": hot1 + "&page=1", "conns": args.connections, "prewarm": True},
        {"id": "keys-zipf", "title": f"{args.keys} keys, Zipf s={args.zipf_s}", "kind": "wrk",
         "mode": "zipf", "path": hot1 + "&page=1", "conns": args.connections, "prewarm": True},
        {"id": "all-miss", "title": f"all misses, {args.miss_connections} conn", "kind": "wrk",
         "mode": "unique", "path": hot1, "conns": args.miss_connections, "direct": True},
        {"id": "stampede", "title": f"cold-key stampede, {args.stampede} concurrent, "
         f"origin {args.stampede_latency_ms} ms", "kind": "stampede", "path": hot1},
    ]
    if args.scenarios:
        want = set(args.scenarios.split(","))
        scen = [s for s in scen if s["id"] in want]
    return scen


def measure_wrk(args, sc: dict, t: Target, origin: Target, rep: int, log: Path) -> dict:
    path = sc["path"]
    if sc.get("prewarm"):
        # A fresh set of keys for every scenario and repeat: entries left by an earlier prewarm
        # would be hits during this prewarm (not refreshed) and could expire mid-run.
        path += f"&set={sc['id']}-{rep}"
    env = {"BENCH_MODE": sc["mode"], "BENCH_PATH": path, "BENCH_KEYS": args.keys,
           "BENCH_APIKEYS": ",".join(API_KEYS), "BENCH_ZIPF_S": args.zipf_s,
           "BENCH_NONCE": f"{args.stamp}-{t.name}-{rep}"}
    hot = sc["path"] if sc["mode"] == "hot" else None
    info: dict = {}
    if sc.get("prewarm"):
        # quiet check first, then prewarm, then measure at once: the 60 s TTL must outlive
        # prewarm (bounded by --prewarm-max) + the run
        quiet, waited, busy = wait_quiet(args.quiet_wait, args.quiet_threshold)
        t0 = time.monotonic()
        w = run_wrk(args, t.base, dict(env, BENCH_MODE="seq", BENCH_THREADS=1), args.prewarm_max,
                    64, None, log, done_file=args.run_dir / "prewarm.done")
        info["prewarm"] = {"requests": w["requests"], "seconds": round(time.monotonic() - t0, 1),
                           "errors": sum(w["errors"].values())}
        if w["requests"] < args.keys:
            info["prewarm"]["incomplete"] = True
    else:
        # a different nonce: the all-miss warm-up must not pre-fill the measured run's URLs
        run_wrk(args, t.base, dict(env, BENCH_NONCE=env["BENCH_NONCE"] + "-warmup"),
                args.warmup, sc["conns"], hot, log)
        quiet, waited, busy = wait_quiet(args.quiet_wait, args.quiet_threshold)
    pids = t.pids()
    all_ours = sorted(set(pids + origin.pids()))
    c0 = cpu_seconds(pids)
    o0 = cpu_seconds(origin.pids())
    ours0 = cpu_seconds(all_ours)
    j0 = cpu_jiffies()
    m0 = mock_requests(origin.base)
    w0 = time.monotonic()
    res = run_wrk(args, t.base, env, args.duration, sc["conns"], hot, log)
    wall = time.monotonic() - w0
    j1 = cpu_jiffies()
    pids_after = t.pids()
    c1 = cpu_seconds(pids_after)
    ours1 = cpu_seconds(sorted(set(pids_after + origin.pids())))
    o1 = cpu_seconds(origin.pids())
    m1 = mock_requests(origin.base)
    secs = res["duration_us"] / 1e6
    machine_busy = sum((j1[f"cpu{c}"][0] - j0[f"cpu{c}"][0]) for c in (SERVER_CPU, CLIENT_CPU)) / CLK_TCK
    foreign = max(0.0, machine_busy - (ours1 - ours0) - res["client_cpu_s"]) / wall
    errors = sum(res["errors"].values())
    noisy = []
    if not quiet:
        noisy.append(f"busy before run {max(busy):.0%}")
    if foreign > args.foreign_threshold:
        noisy.append(f"foreign CPU {foreign:.2f} cores")
    if info.get("prewarm", {}).get("incomplete"):
        noisy.append(f"prewarm incomplete ({info['prewarm']['requests']} of {args.keys} "
                     f"in {args.prewarm_max:g} s)")
    out = {
        "rps": res["requests"] / secs if secs else 0.0,
        "p50_us": res["p50_us"], "p90_us": res["p90_us"], "p99_us": res["p99_us"],
        "p999_us": res["p999_us"], "max_us": res["lat_max_us"], "requests": res["requests"],
        "bytes": res["bytes"], "errors": res["errors"], "error_count": errors,
        "seconds": secs,
        "server_cpu": (c1 - c0) / wall,  # cores (1.0 = one core fully busy)
        "server_rss": rss_bytes(pids_after),
        "origin_cpu": (o1 - o0) / wall,
        "client_cpu": res["client_cpu_s"] / wall,
        "origin_requests": m1 - m0,
        "foreign_cpu": foreign, "quiet_wait_s": round(waited, 1),
        "busy_before": [round(x, 3) for x in busy],
        "noisy": noisy,
        **info,
    }
    if getattr(t, "cache_dir", None):
        out["cache_dir_bytes"] = dir_bytes(t.cache_dir)
    return out


def dir_bytes(p: Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


async def _one_request(host: str, port: int, path: str, start: asyncio.Event) -> tuple[float, int]:
    reader, writer = await asyncio.open_connection(host, port)
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer demo-read\r\n"
           f"Api-Version: {API_VERSION}\r\nConnection: close\r\n\r\n").encode()
    await start.wait()
    t0 = time.perf_counter()
    writer.write(req)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    else:
        await reader.read()
    dt_ = time.perf_counter() - t0
    writer.close()
    return dt_, status


async def _stampede(port: int, path: str, n: int) -> list[tuple[float, int]]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one_request("127.0.0.1", port, path, start)) for _ in range(n)]
    await asyncio.sleep(0.3)  # let every connection open first
    start.set()
    return await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


def measure_stampede(args, sc: dict, t: Target, origin: Target, rep: int) -> dict:
    path = f"{sc['path']}&stampede={args.stamp}-{t.name}-{rep}"  # a key nobody asked for yet
    # reset first: it zeroes the request counter (and restores fixtures and runtime config)
    http("POST", origin.base + "/__mock/reset")
    http("PUT", origin.base + "/__mock/config", {"content-type": "application/json"},
         json.dumps({"latency_ms": args.stampede_latency_ms}).encode())
    try:
        w0 = time.monotonic()
        res = asyncio.run(_stampede(t.port, path, args.stampede))
        wall = time.monotonic() - w0
        upstream = mock_requests(origin.base)
    finally:
        http("PUT", origin.base + "/__mock/config", {"content-type": "application/json"},
             json.dumps({"latency_ms": 0}).encode())
    lat = sorted(x[0] for x in res)
    bad = sum(1 for x in res if x[1] != 200)
    return {"upstream_requests": upstream, "clients": args.stampede,
            "p50_us": int(lat[len(lat) // 2] * 1e6), "max_us": int(lat[-1] * 1e6),
            "wall_s": round(wall, 3), "non_200": bad, "noisy": []}


# --------------------------------------------------------------------------------------------
# summary


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(results: dict, scenarios: list[dict], targets: list[str]) -> dict:
    summary = {}
    for sc in scenarios:
        rows = {}
        names = targets + (["direct"] if sc.get("direct") else [])
        for name in names:
            runs = results.get(sc["id"], {}).get(name, [])
            if not runs:
                continue
            if sc["kind"] == "stampede":
                rows[name] = {
                    "upstream_requests": median([r["upstream_requests"] for r in runs]),
                    "upstream_requests_all": [r["upstream_requests"] for r in runs],
                    "clients": runs[0]["clients"],
                    "p50_us": median([r["p50_us"] for r in runs]),
                    "max_us": median([r["max_us"] for r in runs]),
                    "non_200": sum(r["non_200"] for r in runs), "runs": len(runs),
                    "noisy_runs": 0,
                }
                continue
            rows[name] = {
                "rps": median([r["rps"] for r in runs]),
                "p50_us": median([r["p50_us"] for r in runs]),
                "p99_us": median([r["p99_us"] for r in runs]),
                "p999_us": median([r["p999_us"] for r in runs]),
                "server_cpu": median([r["server_cpu"] for r in runs]),
                "server_rss": max(r["server_rss"] for r in runs),
                "origin_requests": median([r["origin_requests"] for r in runs]),
                "requests": median([r["requests"] for r in runs]),
                "errors": sum(r["error_count"] for r in runs),
                "runs": len(runs),
                "noisy_runs": sum(1 for r in runs if r["noisy"]),
                "rps_all": [round(r["rps"]) for r in runs],
            }
            if "cache_dir_bytes" in runs[-1]:
                rows[name]["cache_dir_bytes"] = runs[-1]["cache_dir_bytes"]
        for name, row in rows.items():
            if sc["kind"] == "stampede":
                continue
            for ref in ("nginx", "varnish"):
                if ref in rows and name != "direct" and rows[ref]["rps"]:
                    row[f"rps_vs_{ref}"] = row["rps"] / rows[ref]["rps"]
                    row[f"p99_vs_{ref}"] = row["p99_us"] / rows[ref]["p99_us"] if rows[ref]["p99_us"] else None
            if "direct" in rows and name != "direct":
                row["added_p50_us"] = row["p50_us"] - rows["direct"]["p50_us"]
        summary[sc["id"]] = {"title": sc["title"], "kind": sc["kind"], "rows": rows}
    return summary


def fmt_us(us) -> str:
    if us is None:
        return "-"
    if us >= 10_000:
        return f"{us / 1000:.0f} ms"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}×"


def markdown(summary: dict, meta: dict) -> str:
    out = []
    out.append("| scenario | target | req/s | p50 | p99 | p99.9 | server CPU | RSS | origin req | "
               "req/s vs nginx | req/s vs varnish | p99 vs nginx | p99 vs varnish | runs |")
    out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for sid, s in summary.items():
        if s["kind"] == "stampede":
            continue
        for name, r in s["rows"].items():
            rss = f"{r['server_rss'] / 2**20:.0f} MiB"
            if "cache_dir_bytes" in r:
                rss += f" (+{r['cache_dir_bytes'] / 2**20:.0f} tmpfs)"
            runs = f"{r['runs']}"
            if r["noisy_runs"]:
                runs += f" ({r['noisy_runs']} noisy)"
            if r["errors"]:
                runs += f" ({r['errors']} errors)"
            out.append(
                f"| {sid} | {name} | {r['rps']:,.0f} | {fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | "
                f"{fmt_us(r['p999_us'])} | {r['server_cpu'] * 100:.0f}% | {rss} | "
                f"{r['origin_requests']:,.0f} | {fmt_ratio(r.get('rps_vs_nginx'))} | "
                f"{fmt_ratio(r.get('rps_vs_varnish'))} | {fmt_ratio(r.get('p99_vs_nginx'))} | "
                f"{fmt_ratio(r.get('p99_vs_varnish'))} | {runs} |")
    miss = summary.get("all-miss")
    if miss and "direct" in miss["rows"]:
        out.append("")
        out.append("All misses, proxy overhead (median p50 minus the origin's own p50, same run):")
        out.append("")
        out.append("| target | p50 | direct p50 | added p50 |")
        out.append("|---|--:|--:|--:|")
        d = miss["rows"]["direct"]["p50_us"]
        for name, r in miss["rows"].items():
            if name == "direct":
                continue
            out.append(f"| {name} | {fmt_us(r['p50_us'])} | {fmt_us(d)} | {r['added_p50_us']:+.0f} µs |")
    st = summary.get("stampede")
    if st:
        out.append("")
        out.append("Cold-key stampede (origin requests for one cold key; 1 is perfect coalescing):")
        out.append("")
        out.append("| target | clients | upstream requests (median) | each run | p50 | slowest | non-200 |")
        out.append("|---|--:|--:|---|--:|--:|--:|")
        for name, r in st["rows"].items():
            out.append(f"| {name} | {r['clients']} | {r['upstream_requests']:.0f} | "
                       f"{r['upstream_requests_all']} | {fmt_us(r['p50_us'])} | "
                       f"{fmt_us(r['max_us'])} | {r['non_200']} |")
    goals = goal_check(summary, meta)
    if goals:
        out.append("")
        out.append("Targets (docs/BENCHMARKS.md):")
        out.append("")
        edge_check = " ".join(meta.get("checks", {}).get("raster-edge", []))
        if "BYPASS" in edge_check:
            out.append("**raster-edge answered `X-Cache: BYPASS` (it does not cache in this build): "
                       "its hit-scenario numbers are origin round trips and these checks say "
                       "nothing about its cache.**")
            out.append("")
        out.append("| target | measured | pass |")
        out.append("|---|---|---|")
        for g in goals:
            out.append(f"| {g['goal']} | {g['measured']} | {g['pass']} |")
    return "\n".join(out) + "\n"


def goal_check(summary: dict, meta: dict) -> list[dict]:
    goals = []

    def row(sid, name):
        return summary.get(sid, {}).get("rows", {}).get(name)

    e, n = row("hot-1k", "raster-edge"), row("hot-1k", "nginx")
    if e and n:
        ok = e["rps"] >= 1.25 * n["rps"] and e["p99_us"] <= n["p99_us"]
        goals.append({"goal": "hit 1 KB: req/s ≥ 1.25× nginx, p99 ≤ nginx",
                      "measured": f"{e['rps'] / n['rps']:.2f}×, p99 {fmt_us(e['p99_us'])} vs {fmt_us(n['p99_us'])}",
                      "pass": "yes" if ok else "no"})
    h = row("hot-1k", "raster-edge")
    for sid in ("keys-uniform", "keys-zipf"):
        k = row(sid, "raster-edge")
        if h and k:
            r = k["rps"] / h["rps"]
            goals.append({"goal": f"{sid}: req/s within 15% of hot key",
                          "measured": f"{r:.2f}× hot-1k", "pass": "yes" if r >= 0.85 else "no"})
    m = row("all-miss", "raster-edge")
    if m and "added_p50_us" in m:
        goals.append({"goal": "all-miss: added p50 over direct ≤ 150 µs",
                      "measured": f"{m['added_p50_us']:+.0f} µs",
                      "pass": "yes" if m["added_p50_us"] <= 150 else "no"})
    k = row("keys-uniform", "raster-edge")
    if k and meta.get("cached_bytes_estimate"):
        stored = meta.get("edge_cache_bytes") or meta["cached_bytes_estimate"]
        budget = 1.15 * stored + 30 * 2**20
        goals.append({"goal": "RSS ≤ 1.15 × cached bytes + 30 MiB (after the 100k-key runs)",
                      "measured": f"{k['server_rss'] / 2**20:.0f} MiB vs budget {budget / 2**20:.0f} MiB "
                                  f"({'metric' if meta.get('edge_cache_bytes') else 'estimated'} "
                                  f"cached bytes {stored / 2**20:.0f} MiB)",
                      "pass": "yes" if k["server_rss"] <= budget else "no"})
    return goals


def edge_cache_gauges(t: Target) -> dict:
    """raster_edge_cache_bytes / _entries from raster-edge's admin /metrics (absent: {})."""
    out = {}
    try:
        _, _, b = http("GET", t.admin + "/metrics")
    except OSError:
        return out
    for line in b.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("raster_edge_cache_bytes", "raster_edge_cache_entries"):
            try:
                out[parts[0]] = int(float(parts[1]))
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 short run each (smoke test)")
    ap.add_argument("--duration", type=float, help="seconds per measured run (default 10; quick 3)")
    ap.add_argument("--repeats", type=int, help="runs per target and scenario (default 3; quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds before each run (default 2; quick 1)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections for hit scenarios")
    ap.add_argument("--miss-connections", type=int, default=1,
                    help="wrk connections for the all-miss scenario (latency, not throughput)")
    ap.add_argument("--keys", type=int, help="distinct (API key, URL) combos (default 100000)")
    ap.add_argument("--zipf-s", type=float, default=0.99)
    ap.add_argument("--stampede", type=int, default=100, help="concurrent cold requests")
    ap.add_argument("--stampede-latency-ms", type=int, default=200)
    ap.add_argument("--targets", default="raster-edge,nginx,varnish",
                    help="comma list; also raster-edge+ratelimit, raster-edge+accesslog "
                         "(hot scenarios only)")
    ap.add_argument("--scenarios", help="comma list of scenario ids (default all)")
    ap.add_argument("--quiet-wait", type=float, help="max seconds to wait for a quiet machine")
    ap.add_argument("--quiet-threshold", type=float, default=0.15,
                    help="a CPU busier than this over 1 s is not quiet")
    ap.add_argument("--foreign-threshold", type=float, default=0.10,
                    help="CPU (cores) used by processes outside the benchmark that marks a run noisy")
    ap.add_argument("--prewarm-max", type=float, default=35,
                    help="bound on one prewarm pass (s); prewarm + run must fit in the 60 s TTL")
    ap.add_argument("--max-memory-mb", type=int, default=256, help="cache bound for every target")
    ap.add_argument("--origin-cpu", default=CLIENT_CPU, help="CPU list for raster-mock")
    ap.add_argument("--origin-threads", type=int, default=1)
    ap.add_argument("--edge-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for raster-edge (repeatable), e.g. RASTER_EDGE_… "
                         "overrides or LD_PRELOAD for an allocator experiment")
    ap.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release")
    ap.add_argument("--out", type=Path, help="results directory (default bench-results/<timestamp>)")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    args = ap.parse_args()
    q = args.quick
    args.duration = args.duration or (3 if q else 10)
    args.repeats = args.repeats or (1 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.keys = args.keys or 100_000
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (3 if q else 5)
    args.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (args.out or REPO / "bench-results" / args.stamp).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    args.run_dir = run_dir
    shm_dir = Path("/dev/shm") / f"raster-edge-bench-{args.stamp}-{os.getpid()}"
    shm_dir.mkdir(parents=True)
    PROCS.cleanup_paths.append(shm_dir)
    atexit.register(PROCS.stop_all)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; server and wrk will share one", file=sys.stderr)

    targets = [x for x in args.targets.split(",") if x]
    print(f"results: {run_dir}")
    origin = start_origin(args, run_dir)
    started: dict[str, Target] = {}
    for name in targets:
        if name in EDGE_VARIANTS:
            started[name] = start_edge(args, run_dir, origin, name)
        elif name == "nginx":
            started[name] = start_nginx(args, run_dir, origin, shm_dir)
        elif name == "varnish":
            started[name] = start_varnish(args, run_dir, origin, shm_dir)
        else:
            raise SystemExit(f"unknown target {name}")
    started["direct"] = origin
    pages = pick_page_sizes(origin)
    scenarios = scenario_list(args, pages)

    # sanity: every target answers the hot URL with 200 and the same body; report cache headers
    checks = {}
    _, _, want = api_get(origin.base, pages["1k"]["path"])
    for name, t in started.items():
        statuses = []
        for _ in range(2):
            s, h, b = api_get(t.base, pages["1k"]["path"])
            statuses.append(f"{s} X-Cache={h.get('x-cache', '-')}")
            if s != 200 or json.loads(b) != json.loads(want):
                raise RuntimeError(f"{name}: unexpected answer {s} {b[:200]!r}")
        checks[name] = statuses
        print(f"  {name:12s} {t.base}  pids {t.pids()}  second request: {statuses[-1]}")

    meta = {"started": args.stamp, "quick": q, "duration_s": args.duration,
            "repeats": args.repeats, "connections": args.connections,
            "miss_connections": args.miss_connections, "keys": args.keys,
            "zipf_s": args.zipf_s, "pages": pages, "checks": checks,
            "cpus": {"servers": SERVER_CPU, "wrk": CLIENT_CPU, "origin": args.origin_cpu},
            "versions": versions(args), "loadavg_start": os.getloadavg(),
            "configs": {n: getattr(t, "config", None) for n, t in started.items()}}
    wrk_log = run_dir / "wrk.log"
    results: dict = {}
    def runs_in(sc):
        return [n for n in targets
                if n not in EDGE_VARIANTS or n == "raster-edge" or sc["id"] in VARIANT_SCENARIOS]
    total = sum(args.repeats * (len(runs_in(sc)) + (1 if sc.get("direct") else 0))
                for sc in scenarios)
    done = 0
    t_start = time.monotonic()
    for sc in scenarios:
        for rep in range(args.repeats):
            # interleave targets, rotating the start so no target always runs first
            names = targets[rep % len(targets):] + targets[:rep % len(targets)]
            names = [n for n in names
                     if n not in EDGE_VARIANTS or n == "raster-edge" or sc["id"] in VARIANT_SCENARIOS]
            if sc.get("direct"):
                names = names + ["direct"]
            for name in names:
                t = started[name]
                done += 1
                if sc["kind"] == "stampede":
                    r = measure_stampede(args, sc, t, origin, rep)
                    line = (f"upstream {r['upstream_requests']} for {r['clients']} clients, "
                            f"p50 {fmt_us(r['p50_us'])}, slowest {fmt_us(r['max_us'])}")
                else:
                    r = measure_wrk(args, sc, t, origin, rep, wrk_log)
                    line = (f"{r['rps']:>9,.0f} req/s  p50 {fmt_us(r['p50_us'])}  p99 {fmt_us(r['p99_us'])}"
                            f"  cpu {r['server_cpu'] * 100:.0f}%  origin {r['origin_requests']}"
                            + (f"  errors {r['error_count']}" if r["error_count"] else "")
                            + (f"  NOISY: {', '.join(r['noisy'])}" if r["noisy"] else ""))
                    if sc["id"] == "keys-uniform" and name == "raster-edge":
                        g = edge_cache_gauges(t)
                        meta["edge_cache_gauges"] = g
                        if g.get("raster_edge_cache_bytes"):
                            meta["edge_cache_bytes"] = g["raster_edge_cache_bytes"]
                results.setdefault(sc["id"], {}).setdefault(name, []).append(r)
                print(f"[{done:3d}/{total}] {sc['id']:13s} rep {rep + 1} {name:12s} {line}", flush=True)
    body = pages["1k"]["body_bytes"] + 10  # &page=1&k=N adds nothing to the body; ~same size
    meta["cached_bytes_estimate"] = args.keys * body if any(s.get("prewarm") for s in scenarios) else None
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    summary = summarize(results, scenarios, targets)
    md = markdown(summary, meta)
    (run_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": results}, indent=1, default=str))
    header = (f"# raster-edge load benchmark {args.stamp}\n\n"
              f"{'quick, ' if q else ''}{args.repeats} run(s) × {args.duration:g} s per target and "
              f"scenario, medians; servers on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}, origin on "
              f"CPU {args.origin_cpu}. 1 KB key: `{pages['1k']['path']}` ({pages['1k']['body_bytes']} B), "
              f"32 KB key: `{pages['32k']['path']}` ({pages['32k']['body_bytes']} B).\n\n"
              f"Machine: {meta['versions'].get('cpu')}, {meta['versions'].get('cpus')} CPUs, Linux "
              f"{meta['versions'].get('kernel')}; commit {meta['versions'].get('git')}; "
              f"{meta['versions'].get('raster-edge')}, {meta['versions'].get('nginx')}, "
              f"{meta['versions'].get('varnish')}, {meta['versions'].get('wrk')}; load average "
              f"{meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end.\n\n")
    (run_dir / "results.md").write_text(header + md + "\n![chart](chart.svg)\n")
    chart.write_svg(summary, run_dir / "chart.svg", title=f"raster-edge load benchmark {args.stamp}")
    print()
    print(md)
    print(f"took {meta['elapsed_s']:.0f} s; results in {run_dir}/ "
          "(results.md, results.json, chart.svg, server configs and logs)")
    return 0


def versions(args) -> dict:
    v = {}
    for name, argv in (("nginx", ["nginx", "-v"]), ("varnish", ["varnishd", "-V"]),
                       ("wrk", [args.wrk, "-v"]),
                       ("raster-edge", [str(args.bin_dir / "raster-edge"), "--version"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            v[name] = (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            v[name] = "?"
    try:
        with open("/proc/cpuinfo") as f:
            v["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        v["cpu"] = "?"
    v["kernel"] = os.uname().release
    v["cpus"] = os.cpu_count()
    try:
        v["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return v


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        PROCS.stop_all()

#!/usr/bin/env python3
"""Fleet benchmark: origin requests per distinct key and req/s per instance for N instances,
with and without the shared tier, plus Redis CPU and memory (docs/FLEET.md).

Each run starts its own redis-server and raster-mock and N gateways on ephemeral loopback ports.
The client is one wrk per instance, all walking the same key sequence (the load balancer's
round robin sends every key to every instance); each wrk stops once it has had every key
answered once. Origin requests per distinct key = the mock's request count / keys.
"""
import argparse, json, os, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path
from urllib.request import urlopen, Request

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WRK_LUA = REPO / "benches" / "load" / "wrk.lua"
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(argv, **kw):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    PROCS.append(p)
    return p


def stop_all():
    while PROCS:
        p = PROCS.pop()
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing on port {port}")


def http_json(url):
    with urlopen(Request(url), timeout=10) as r:
        return json.loads(r.read())


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_info(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info"], capture_output=True, text=True).stdout
    info = dict(l.split(":", 1) for l in out.splitlines() if ":" in l and not l.startswith("#"))
    return info


def run(args, n, shared, out_dir):
    rport = free_port()
    redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"])
    wait_port(rport)
    mock = start([str(args.bin_dir / "raster-mock"), "--listen", "127.0.0.1:0"])
    line = mock.stdout.readline().decode()
    origin = "http://" + line.strip().split()[-1]
    edges = []
    for i in range(n):
        port, admin = free_port(), free_port()
        d = Path(tempfile.mkdtemp(dir=out_dir))
        cfg = d / "raster-edge.toml"
        cfg.write_text(f"""
[server]
threads = 1
[rate_limit]
enabled = false
[edge]
key_id_secret = "fleet-bench-secret-0123456789abcdef"
[cache]
max_memory = "1GiB"
[[cache.routes]]
name = "assets"
path = "/organizations/{{org}}/libraries/{{library}}/assets"
ttl = "600s"
[cache.shared]
enabled = {str(shared).lower()}
[redis]
url = "redis://127.0.0.1:{rport}"
invalidation = true
timeout = "50ms"
[log]
level = "warn"
access_log = false
""")
        p = start([str(args.bin_dir / "raster-edge"), "--config", str(cfg), "--listen",
                   f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--upstream", origin],
                  env={**os.environ, "RASTER_EDGE_RUNTIME_DIR": str(d)})
        wait_port(port)
        wait_port(admin)
        edges.append((port, admin, p))
    time.sleep(0.5)
    before = http_json(origin + "/__mock/stats")["data"]["requests"]
    r_cpu0 = cpu_seconds(redis.pid)
    wrks = []
    nonce = str(time.time_ns())
    for i, (port, _, _) in enumerate(edges):
        done = out_dir / f"done-{n}-{shared}-{i}"
        env = {**os.environ, "BENCH_MODE": "seq", "BENCH_KEYS": str(args.keys),
               "BENCH_PATH": f"/organizations/monogram-labs/libraries/barcelona/assets?pageSize=5&n={nonce}",
               "BENCH_THREADS": "1", "BENCH_DONE_FILE": str(done)}
        w = start(["wrk", "-t1", f"-c{args.connections}", f"-d{args.max_seconds}s", "-s", str(WRK_LUA),
                   f"http://127.0.0.1:{port}/"], env=env)
        wrks.append((w, done))
    t0 = time.time()
    while time.time() - t0 < args.max_seconds and not all(d.exists() for _, d in wrks):
        time.sleep(0.2)
    elapsed = time.time() - t0
    results = []
    for w, _ in wrks:
        w.send_signal(signal.SIGINT)
        out = w.communicate(timeout=30)[0].decode()
        PROCS.remove(w)
        j = next((json.loads(l.split(" ", 1)[1]) for l in out.splitlines() if l.startswith("BENCHJSON")), None)
        results.append(j)
    r_cpu = cpu_seconds(redis.pid) - r_cpu0
    info = redis_info(rport)
    after = http_json(origin + "/__mock/stats")["data"]["requests"]
    stop_all()
    reqs = [r["requests"] for r in results if r]
    rps = [r["requests"] / (r["duration_us"] / 1e6) for r in results if r]
    errors = sum(sum(r["errors"].values()) for r in results if r)
    return {
        "instances": n, "shared": shared, "keys": args.keys, "elapsed_s": round(elapsed, 1),
        "completed": all(d.exists() for _, d in wrks),
        "origin_requests": after - before,
        "origin_per_key": round((after - before) / args.keys, 3),
        "client_requests": sum(reqs), "errors": errors,
        "rps_per_instance": round(sum(rps) / max(len(rps), 1)),
        "redis_cpu_s": round(r_cpu, 2),
        "redis_cpu_per_1k_req_ms": round(1000 * r_cpu / max(sum(reqs), 1) * 1000, 2),
        "redis_used_memory_mb": round(int(info.get("used_memory", "0")) / 2**20, 1),
        "redis_keys": info.get("db0", ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--instances", default="1,2,4")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--max-seconds", type=int, default=300, help="bound per run")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = REPO / "bench-results" / f"fleet-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in [int(x) for x in args.instances.split(",")]:
            for shared in (False, True):
                row = run(args, n, shared, out_dir)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        stop_all()
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    md = ["| instances | shared tier | keys | origin req / key | req/s per instance | Redis CPU s | Redis CPU ms / 1k req | Redis memory MiB | complete |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['instances']} | {'on' if r['shared'] else 'off'} | {r['keys']} | {r['origin_per_key']} | "
                  f"{r['rps_per_instance']} | {r['redis_cpu_s']} | {r['redis_cpu_per_1k_req_ms']} | "
                  f"{r['redis_used_memory_mb']} | {r['completed']} |")
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"written to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    main()

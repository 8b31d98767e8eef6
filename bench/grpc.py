#!/usr/bin/env python3
"""gRPC benchmark (issue 5): Tollgate (`protocol = "grpc"` upstream) vs HAProxy and nginx (grpc_pass).

    bench/run.sh grpc            (= python3 bench/grpc.py) -> section "grpc" of bench/RESULTS.md
    QUICK=1 bench/run.sh grpc    short run (50k unary calls, 1k streams, 3 rounds), marked QUICK
    bench/run.sh grpc --profile  perf profile of Tollgate under the unary load (PROFILE_SCENARIO=stream for
                                 the server streams) -> bench/out/profile-grpc-SCENARIO/

Every proxy (one worker, core 0) forwards h2c gRPC to the same backend, `loadgen grpc-echo` on core 1
(hyper HTTP/2: any method answered with the request's message and `grpc-status: 0` in the trailers;
advertises GRPC_BACKEND_STREAMS = 100 concurrent streams per connection). Load: h2load on core 1 with
a gRPC request body (a 5-byte frame header + a 64-byte message):

  * unary:  h2load -c50 -m10 -n GRPC_UNARY_CALLS, POST /bench.Echo/Unary; CPU per call;
  * stream: h2load -c50 -m1 -n GRPC_STREAM_CALLS, POST /bench.Echo/ServerStream: each call is a server
    stream of GRPC_STREAM_MESSAGES (1000) 64-byte messages, one DATA frame each; messages/s and CPU per
    message (messages counted from the response DATA bytes h2load received).

*upstream conns* = TCP connections from the proxy to the backend still established right after the
measured run (`ss`). Environment as bench.py (QUICK, ROUNDS, PROXY_CPU, LOAD_CPU, TOLLGATE_BIN, KEEP,
NICE) plus LOADGEN_BIN and the GRPC_* settings above.
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench as B
import family as F

QUICK = B.QUICK
ROUNDS = int(os.environ.get("ROUNDS", "3" if QUICK else "5"))
CONNS, STREAMS = 50, 10
UNARY_CALLS = int(os.environ.get("GRPC_UNARY_CALLS", "50000" if QUICK else "200000"))
STREAM_CALLS = int(os.environ.get("GRPC_STREAM_CALLS", "1000" if QUICK else "5000"))
STREAM_MESSAGES = int(os.environ.get("GRPC_STREAM_MESSAGES", "1000"))
BACKEND_STREAMS = int(os.environ.get("GRPC_BACKEND_STREAMS", "100"))
MESSAGE = bytes(range(64))
FRAME = b"\x00" + struct.pack(">I", len(MESSAGE)) + MESSAGE  # gRPC length-prefixed message
REF = {"haproxy": 17.0, "nginx": 77.0, "caddy": 186.0}

SCENARIOS = [
    {"id": "unary", "path": "/bench.Echo/Unary", "m": STREAMS, "calls": UNARY_CALLS, "warmup": 5000,
     "messages": 1,
     "summary": lambda r: (f"{r['rps']:>8.0f} calls/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                           f"cpu {r['cpu_us']:.1f} us/call  upstream conns {r['upstream_conns']}  errors {r['errors']}")},
    {"id": "stream", "path": "/bench.Echo/ServerStream", "m": 1, "calls": STREAM_CALLS, "warmup": 200,
     "messages": STREAM_MESSAGES,
     "summary": lambda r: (f"{r['msgs_per_s']:>9.0f} msg/s ({r['rps']:.0f} streams/s)  "
                           f"cpu {r['cpu_us_per_msg']:.2f} us/msg  upstream conns {r['upstream_conns']}  "
                           f"errors {r['errors']}")},
]


# ---------------------------------------------------------------- configs

def tollgate_config(port, backend_port):
    return f"""# Tollgate: ONE runtime worker thread; a gRPC (h2c, multiplexed) upstream.
[runtime]
worker_threads = 1
shutdown_grace = "1s"

[log]
level = "warn"
access_log = false            # nginx and HAProxy log nothing either

[[listener]]
name = "grpc"                 # h2c with prior knowledge on the cleartext port
bind = "127.0.0.1:{port}"

[[upstream]]
name = "echo"
protocol = "grpc"
targets = ["127.0.0.1:{backend_port}"]

[[route]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
# X-Forwarded-For only, as the HAProxy and nginx configs below (the default adds five fields and X-Request-Id).
forward_headers = ["x-forwarded-for"]
request_id_header = false
"""


def nginx_config(prefix, port, backend_port):
    return f"""# nginx grpc_pass: master + ONE worker. nginx speaks HTTP/2 upstream one call per connection.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{B.nginx_temp_paths(prefix)}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream echo {{
        server 127.0.0.1:{backend_port};
        keepalive 1024;                 # idle upstream connections kept (one call each at a time)
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            grpc_pass grpc://echo;
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def haproxy_config(port, backend_port):
    return f"""# HAProxy gRPC: h2 both sides, multiplexed upstream connections (http-reuse always). ONE thread.
global
    nbthread 1
    maxconn 8000

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend echo

backend echo
    server echo 127.0.0.1:{backend_port} proto h2
"""


# ---------------------------------------------------------------- load

def h2load(url, calls, m, body, log_path=None, c=CONNS):
    cmd = B.pinned(B.LOAD_CPU) + ["h2load", "-t1", f"-c{c}", f"-m{m}", f"-n{calls}",
                                  "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body)]
    if log_path:
        cmd.append(f"--log-file={log_path}")
    out = B.run(cmd + [url]).stdout
    res = {"tool_output": out}
    res["rps"] = float(re.search(r"finished in ([\d.]+)(s|ms), ([\d.]+) req/s", out).group(3))
    m_ = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored, (\d+) timeout", out)
    total, _started, done, succeeded, failed, errored, timeout = map(int, m_.groups())
    ok = re.search(r"status codes: (\d+) 2xx", out)
    res["completed"] = succeeded
    res["errors"] = failed + errored + timeout + (total - done) + (succeeded - (int(ok.group(1)) if ok else 0))
    data = re.search(r"^traffic: .*\((\d+)\) data", out, re.M)
    res["data_bytes"] = int(data.group(1)) if data else 0
    if log_path:
        lat = sorted(int(line.split("\t")[2]) / 1000.0 for line in open(log_path) if line.count("\t") >= 2)
        res["p50_ms"], res["p99_ms"] = B.percentile(lat, 50), B.percentile(lat, 99)
        os.unlink(log_path)
    return res


class Bench:
    def __init__(self, tmp):
        F.check_tools(["nginx", "haproxy", "h2load", "nghttp", "taskset", "ss"])
        F.ensure_nofile(16384)
        self.tmp = tmp
        self.tollgate_bin = B.build_tollgate(tmp)
        self.loadgen = F.build_loadgen(tmp)
        self.body = tmp / "body.bin"
        self.body.write_bytes(FRAME)
        self.bport = B.free_ports(1)[0]
        bdir = tmp / "backend"
        bdir.mkdir()
        self.backend = F.Server("grpc-echo", bdir, [str(self.loadgen), "grpc-echo", str(self.bport), "--messages",
                                                    str(STREAM_MESSAGES), "--max-streams", str(BACKEND_STREAMS)],
                                [self.bport], B.LOAD_CPU).start()
        self.proxies = {}
        for name in F.SYSTEMS:
            d = tmp / name
            d.mkdir()
            port = B.free_ports(1)[0]
            if name == "tollgate":
                conf = d / "tollgate.toml"
                conf.write_text(tollgate_config(port, self.bport))
                cmd = [str(self.tollgate_bin), "--config", str(conf), "run"]
            elif name == "nginx":
                (d / "tmp").mkdir()
                conf = d / "nginx.conf"
                conf.write_text(nginx_config(d, port, self.bport))
                cmd = ["nginx", "-p", str(d), "-c", str(conf)]
            else:
                conf = d / "haproxy.cfg"
                conf.write_text(haproxy_config(port, self.bport))
                cmd = ["haproxy", "-f", str(conf), "-db"]
            self.proxies[name] = F.Server(name, d, cmd, [port])
            self.proxies[name].base = f"http://127.0.0.1:{port}"

    def check(self):
        """Each proxy must return the message and grpc-status 0 (nghttp shows the trailers)."""
        for name, proxy in self.proxies.items():
            proxy.start()
            out = subprocess.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers",
                                  "-d", str(self.body), proxy.base + "/bench.Echo/Unary"],
                                 capture_output=True).stdout.decode("latin-1")
            res = h2load(proxy.base + "/bench.Echo/ServerStream", 4, 1, self.body, c=1)
            proxy.stop()
            if "grpc-status: 0" not in out or ":status: 200" not in out or MESSAGE.decode("latin-1") not in out:
                F.die(f"{name}: gRPC echo through the proxy failed:\n{out[-2000:]}")
            if res["completed"] != 4 or res["data_bytes"] != 4 * STREAM_MESSAGES * len(FRAME):
                F.die(f"{name}: server stream through the proxy incomplete: {res['tool_output']}")
            B.log(f"{name}: port {proxy.ports[0]}, unary call and server stream ok")

    def measure(self, sc, name):
        proxy = self.proxies[name].start()
        url = proxy.base + sc["path"]
        try:
            h2load(url, sc["warmup"], sc["m"], self.body)
            win = F.Window(proxy.pids(), [self.backend.proc.pid])
            a, g0 = win.snap(), B.children_ticks()
            res = h2load(url, sc["calls"], sc["m"], self.body, self.tmp / "h2load.log")
            b, g1 = win.snap(), B.children_ticks()
            b["ours"] += g1 - g0  # h2load's CPU (a reaped child) is ours, not "other"
            res["upstream_conns"] = F.established_to(self.bport)
            res["rss_kb"] = B.vm_hwm_kb(proxy.pids())
        finally:
            proxy.stop()
        res.pop("tool_output")
        res.update(F.Window.diff(a, b, res["completed"]))
        res["messages"] = res["data_bytes"] // len(FRAME)
        res["msgs_per_s"] = res["rps"] * res["messages"] / max(res["completed"], 1)
        res["cpu_us_per_msg"] = res["cpu_ticks"] * 1e6 / B.CLK_TCK / max(res["messages"], 1)
        return res


# ---------------------------------------------------------------- report

def report(facts, runs):
    f1, f2, fr = (lambda v: f"{v:.1f}"), (lambda v: f"{v:.2f}"), (lambda v: f"{v:,.0f}")
    cmd = ("QUICK=1 " if QUICK else "") + ("" if ROUNDS == (3 if QUICK else 5) else f"ROUNDS={ROUNDS} ") \
        + "TOLLGATE_BIN=… bench/run.sh grpc"
    L = ["## gRPC (issue 5)\n",
         f"Generated by `bench/grpc.py` from the run of {facts['date']}"
         + (" — a **QUICK** run on a busy machine: read the ratios, not the absolute numbers" if QUICK else "")
         + ". Reproduce (from the repository root; needs Debian's `nginx haproxy nghttp2-client`, builds "
           "`bench/loadgen` with cargo; `TOLLGATE_BIN` skips building Tollgate):\n",
         f"```sh\n{cmd}\n```\n", "### Setup\n"]
    L += F.setup_lines(facts, [
        f"- **Backend**: `loadgen grpc-echo` (hyper HTTP/2, h2c): any method answered with the request's "
        f"message and `grpc-status: 0` in the trailers; a method ending in `ServerStream` answers with "
        f"{STREAM_MESSAGES} copies of the message, one DATA frame each. It advertises "
        f"SETTINGS_MAX_CONCURRENT_STREAMS = {BACKEND_STREAMS}.",
        "- **Proxies**: Tollgate `protocol = \"grpc\"` upstream (h2c, a fixed few multiplexed connections per "
        "target); HAProxy `proto h2` on both sides with `http-reuse always` (multiplexed, opens connections as "
        "the backend's stream limit requires); nginx `grpc_pass` with `keepalive 1024` (HTTP/2 upstream, but "
        "one call per connection at a time). Every proxy adds `X-Forwarded-For` and no other forwarding field (Tollgate's route: `forward_headers = [\"x-forwarded-for\"]`, `request_id_header = false`; its default of five fields and an `X-Request-Id` both ways costs 12 % more instructions per call, `bench/PROFILE.md`); logging off everywhere. "
        "Configs in `bench/grpc.py`.",
        f"- **Load**: h2load `-t1 -c{CONNS}` with `content-type: application/grpc`, `te: trailers` and a "
        f"{len(FRAME)}-byte body (5-byte gRPC frame header + {len(MESSAGE)}-byte message). *unary*: `-m{STREAMS} "
        f"-n{facts.get('unary_calls', UNARY_CALLS)}` after 5,000 warm-up calls; CPU per call. *stream*: `-m1 "
        f"-n{facts.get('stream_calls', STREAM_CALLS)}` server streams of {STREAM_MESSAGES} messages after 200 "
        f"warm-up streams; messages/s = streams/s × messages per stream (messages counted from the DATA bytes "
        f"h2load received); CPU per message. p50/p99 per call from h2load's `--log-file`.",
        "- *upstream conns*: TCP connections from the proxy to the backend still established right after the "
        "measured run (`ss`).",
    ])
    L.append("")
    m = {}
    for sc in SCENARIOS:
        rs_all = [r for r in runs if r["scenario"] == sc["id"]]
        if sc["id"] == "unary":
            L.append("### Unary calls\n")
            L.append("| proxy | calls/s | p50 ms | p99 ms | CPU µs/call | of which user | upstream conns | "
                     "peak RSS MiB | errors |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for name in F.SYSTEMS:
                rs = [r for r in rs_all if r["system"] == name]
                m[(sc["id"], name)] = F.med([r["cpu_us"] for r in rs])
                L.append(f"| {name} | {F.med_spread([r['rps'] for r in rs], fr)} "
                         f"| {F.med_spread([r['p50_ms'] for r in rs], f2)} | {F.med_spread([r['p99_ms'] for r in rs], f2)} "
                         f"| {F.med_spread([r['cpu_us'] for r in rs], f1)} | {F.med_spread([r['user_us'] for r in rs], f1)} "
                         f"| {F.med_spread([r['upstream_conns'] for r in rs], fr)} "
                         f"| {F.med_spread([r['rss_kb'] / 1024 for r in rs], f1)} | {sum(r['errors'] for r in rs)} |")
            L.append("")
            L += F.ratio_table(rs_all, "unary", [("rps", "calls/s"), ("p50_ms", "p50"), ("p99_ms", "p99"),
                                                 ("cpu_us", "CPU/call")],
                               {"rps": max, "p50_ms": min, "p99_ms": min, "cpu_us": min})
        else:
            L.append(f"### Server streaming ({STREAM_MESSAGES} messages per call)\n")
            L.append("| proxy | messages/s | streams/s | CPU µs/message | CPU µs/stream | upstream conns "
                     "| peak RSS MiB | errors |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
            for name in F.SYSTEMS:
                rs = [r for r in rs_all if r["system"] == name]
                m[(sc["id"], name)] = F.med([r["cpu_us_per_msg"] for r in rs])
                L.append(f"| {name} | {F.med_spread([r['msgs_per_s'] for r in rs], fr)} "
                         f"| {F.med_spread([r['rps'] for r in rs], fr)} "
                         f"| {F.med_spread([r['cpu_us_per_msg'] for r in rs], f2)} "
                         f"| {F.med_spread([r['cpu_us'] for r in rs], f1)} "
                         f"| {F.med_spread([r['upstream_conns'] for r in rs], fr)} "
                         f"| {F.med_spread([r['rss_kb'] / 1024 for r in rs], f1)} | {sum(r['errors'] for r in rs)} |")
            L.append("")
            L += F.ratio_table(rs_all, "stream", [("msgs_per_s", "messages/s"), ("cpu_us_per_msg", "CPU/message")],
                               {"msgs_per_s": max, "cpu_us_per_msg": min})
        L.append("")
    L.append("### Against the issue's target\n")
    unary = [r for r in runs if r["scenario"] == "unary"]
    r_h = F.per_round_ratios(unary, "unary", "cpu_us", "haproxy")
    ok = m[("unary", "tollgate")] <= m[("unary", "haproxy")]
    L.append("| target | Tollgate | HAProxy (this run) | reference (issue) | verdict |")
    L.append("|---|---:|---:|---:|---|")
    L.append(f"| unary CPU per call ≤ HAProxy's, with upstream multiplexing | {f1(m[('unary', 'tollgate')])} µs "
             f"| {f1(m[('unary', 'haproxy')])} µs | {REF['haproxy']:g} µs (5 upstream conns) "
             f"| {'met' if ok else '**not met**'} ({F.med(r_h):.2f}×; met in {sum(x <= 1 for x in r_h)}/{len(r_h)} "
             f"rounds) |")
    L.append("")
    L.append(f"Reference CPU per unary call from the issue (same kind of machine): HAProxy {REF['haproxy']:g} µs with "
             f"5 upstream connections, nginx {REF['nginx']:g} µs, Caddy {REF['caddy']:g} µs.\n")
    L.append("### Per-run data\n")
    L.append("| round | scenario | proxy (order) | calls/s | messages/s | p50 ms | p99 ms | CPU µs/call "
             "| CPU µs/msg | upstream conns | errors | other CPU % |")
    L.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        L.append(f"| {r['round']} | {r['scenario']} | {r['system']} ({r['order']}) | {fr(r['rps'])} "
                 f"| {fr(r['msgs_per_s'])} | {f2(r['p50_ms'])} | {f2(r['p99_ms'])} | {f1(r['cpu_us'])} "
                 f"| {f2(r['cpu_us_per_msg'])} | {r['upstream_conns']} | {r['errors']} | {r['other_cpu_pct']:.0f} |")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="file to write the `grpc` section into (default bench/RESULTS.md)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON", help="only rewrite the section from a results.json")
    ap.add_argument("--profile", action="store_true", help="perf profile of Tollgate under the unary load "
                    "(PROFILE_SCENARIO=stream for the streams) -> bench/out/profile-grpc-SCENARIO/")
    args = ap.parse_args()
    target = Path(args.out) if args.out else B.BENCH / "RESULTS.md"
    if args.report_from:
        data = json.loads(Path(args.report_from).read_text())
        F.write_section("grpc", report(data["facts"], data["runs"]), target)
        B.log(f"wrote section grpc of {target}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-grpc-"))

    def cleanup():
        B.stop_all()
        if B.KEEP:
            B.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(tmp)
    if args.profile:
        seconds = int(os.environ.get("PROFILE_SECONDS", "8"))
        sc = next(x for x in SCENARIOS if x["id"] == os.environ.get("PROFILE_SCENARIO", "unary"))
        proxy = bench.proxies["tollgate"]
        cmd = B.pinned(B.LOAD_CPU) + ["h2load", "-t1", f"-c{CONNS}", f"-m{sc['m']}", f"-D{seconds + 3}",
                                      "-H", "content-type: application/grpc", "-H", "te: trailers",
                                      "-d", str(bench.body), proxy.base + sc["path"]]

        def start():
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            B.STARTED.append(p)
            return p
        F.profile(proxy, start, B.OUT / f"profile-grpc-{sc['id']}", seconds)
        return
    bench.check()
    facts = F.facts()
    facts.update({"unary_calls": UNARY_CALLS, "stream_calls": STREAM_CALLS})
    t0 = time.time()
    runs, discarded = F.rounds(ROUNDS, SCENARIOS, bench.measure)
    facts.update({"duration_s": round(time.time() - t0), "loadavg_end": open("/proc/loadavg").read().split()[:3],
                  "discarded": len(discarded)})
    raw = B.OUT / ("grpc-" + time.strftime("%Y%m%d-%H%M%S"))
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps({"facts": facts, "runs": runs, "discarded": discarded}, indent=1))
    for name, p in bench.proxies.items():
        for f in p.dir.iterdir():
            if f.suffix in (".toml", ".conf", ".cfg"):
                shutil.copy2(f, raw / f"{name}-{f.name}")
    F.write_section("grpc", report(facts, runs), target)
    B.log(f"wrote section grpc of {target} (raw data in {raw})")


if __name__ == "__main__":
    main()

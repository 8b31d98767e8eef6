#!/usr/bin/env python3
"""WebSocket benchmark (issue 4): Tollgate's tunnel mode vs nginx and HAProxy WebSocket proxying.

    bench/run.sh ws              (= python3 bench/ws.py) -> section "ws" of bench/RESULTS.md
    QUICK=1 bench/run.sh ws      short run (3 s echo, 3 rounds); also written to RESULTS.md, marked QUICK
    bench/run.sh ws --profile    perf profile of Tollgate under the echo load -> bench/out/profile-ws/

Two measurements per proxy and round, each on a freshly started proxy (one worker, core 0) in front of
the same echo backend (`loadgen ws-echo`, core 1):

  * echo: `loadgen ws-load echo` opens WS_CONNS (50) connections through the proxy and each does
    sequential echo round-trips of a WS_SIZE-byte (64) text message; after WS_WARMUP s it prints `start`,
    after WS_SECONDS s `end`. Round-trips/s and latency come from the client, proxy CPU per round-trip
    from /proc between those two lines.
  * idle: `loadgen ws-load idle` opens WS_IDLE_CONNS (8000) connections (100 handshakes at a time, one
    echo round-trip each) and holds them idle; KiB per connection = (VmRSS of the proxy with them open,
    after WS_IDLE_SETTLE s, minus VmRSS before) ÷ connections. Before = after a warm-up of 50 connections
    opened and closed. Also: proxy CPU per connection opened (handshake + first round-trip).

Environment as bench.py (QUICK, ROUNDS, PROXY_CPU, LOAD_CPU, TOLLGATE_BIN, KEEP, NICE) plus LOADGEN_BIN
and the WS_* settings above. `--out FILE` writes the section elsewhere.
"""

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench as B
import family as F

QUICK = B.QUICK
ROUNDS = int(os.environ.get("ROUNDS", "3" if QUICK else "5"))
CONNS = int(os.environ.get("WS_CONNS", "50"))
SIZE = int(os.environ.get("WS_SIZE", "64"))
SECONDS = float(os.environ.get("WS_SECONDS", "3" if QUICK else "10"))
WARMUP = float(os.environ.get("WS_WARMUP", "1"))
IDLE_CONNS = int(os.environ.get("WS_IDLE_CONNS", "8000"))
IDLE_SETTLE = float(os.environ.get("WS_IDLE_SETTLE", "2"))
IDLE_CONCURRENCY = 100
REF = {"nginx": {"cpu_us": 17.6, "kib": 17.8}, "haproxy": {"cpu_us": 23.0, "kib": 4.7}}


# ---------------------------------------------------------------- configs

def tollgate_config(port, backend_port):
    return f"""# Tollgate: ONE runtime worker thread; a tunnel-mode WebSocket route to the echo backend.
[runtime]
worker_threads = 1
shutdown_grace = "1s"
{os.environ.get("TOLLGATE_RUNTIME_EXTRA", "")}

[log]
level = "warn"
access_log = false            # nginx and HAProxy log nothing either

[[listener]]
name = "ws"
bind = "127.0.0.1:{port}"

[[upstream]]
name = "echo"
targets = ["127.0.0.1:{backend_port}"]

[[route]]
name = "ws"
match = {{ path_prefix = "/" }}
upstream = "echo"
websocket = "tunnel"
websocket_idle_timeout = "5m"
"""


def nginx_worker_connections(conns):
    """Two per proxied WebSocket, and a sixteenth spare: with fewer than worker_connections / 16 free, nginx
    starts "reusing connections" (closing ones it considers idle, which fails handshakes in flight)."""
    return 2 * conns * 17 // 15 + 200


def fds_needed(conns):
    return nginx_worker_connections(conns) + 500


def nginx_config(prefix, port, backend_port, conns):
    return f"""# nginx WebSocket proxying: master + ONE worker.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fds_needed(conns)};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {nginx_worker_connections(conns)}; }}
http {{
    access_log off;
{B.nginx_temp_paths(prefix)}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream echo {{ server 127.0.0.1:{backend_port}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def haproxy_config(port, backend_port, conns):
    return f"""# HAProxy WebSocket proxying (HTTP mode, Upgrade handled natively): ONE thread.
global
    nbthread 1
    maxconn {conns + 500}

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout tunnel 300s

frontend ws
    bind 127.0.0.1:{port}
    default_backend echo

backend echo
    server echo 127.0.0.1:{backend_port}
"""


def make_proxies(tmp, tollgate_bin, backend_port, conns):
    proxies = {}
    for name in F.SYSTEMS:
        d = tmp / name
        d.mkdir()
        port = B.free_ports(1)[0]
        if name == "tollgate":
            conf = d / "tollgate.toml"
            conf.write_text(tollgate_config(port, backend_port))
            cmd = [str(tollgate_bin), "--config", str(conf), "run"]
        elif name == "nginx":
            (d / "tmp").mkdir()
            conf = d / "nginx.conf"
            conf.write_text(nginx_config(d, port, backend_port, conns))
            cmd = ["nginx", "-p", str(d), "-c", str(conf)]
        else:
            conf = d / "haproxy.cfg"
            conf.write_text(haproxy_config(port, backend_port, conns))
            cmd = ["haproxy", "-f", str(conf), "-db"]
        proxies[name] = F.Server(name, d, cmd, [port])
        proxies[name].url = f"ws://127.0.0.1:{port}/chat"
    return proxies


# ---------------------------------------------------------------- measurements

class Bench:
    def __init__(self, tmp):
        F.check_tools(["nginx", "haproxy", "taskset", "ss"])
        limit = self.nofile = F.ensure_nofile(fds_needed(IDLE_CONNS))
        self.idle_conns = IDLE_CONNS
        while fds_needed(self.idle_conns) > limit:
            self.idle_conns -= 100
        if self.idle_conns != IDLE_CONNS:
            B.log(f"fd limit {limit}: idle connections lowered to {self.idle_conns}")
        self.tollgate_bin = B.build_tollgate(tmp)
        self.loadgen = F.build_loadgen(tmp)
        bport = B.free_ports(1)[0]
        bdir = tmp / "backend"
        bdir.mkdir()
        self.backend = F.Server("ws-echo", bdir, [str(self.loadgen), "ws-echo", str(bport)], [bport], B.LOAD_CPU)
        self.backend.start()
        self.proxies = make_proxies(tmp, self.tollgate_bin, bport, self.idle_conns)
        self.tmp = tmp

    def load(self, args, stdin=subprocess.DEVNULL):
        err = open(self.tmp / "loadgen.err", "w+")
        p = subprocess.Popen(B.pinned(B.LOAD_CPU) + [str(self.loadgen), "ws-load"] + args, stdin=stdin,
                             stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=B.raise_nofile)
        p.err = err
        B.STARTED.append(p)
        return p

    def finish(self, p):
        """The rest of p's output (read through the same buffered file as any lines before), once it exits."""
        out = p.stdout.read()
        p.wait()
        B.STARTED.remove(p)
        p.err.seek(0)
        err = p.err.read()
        p.err.close()
        if p.returncode != 0:
            F.die(f"loadgen {' '.join(map(str, p.args[-8:]))} failed ({p.returncode}): {err.strip()}")
        return out

    def check(self):
        for name, proxy in self.proxies.items():
            proxy.start()
            p = self.load(["idle", proxy.url, "--conns", "5"])
            out = self.finish(p)
            proxy.stop()
            if not out.startswith("open 5 failed 0"):
                F.die(f"{name}: WebSocket through the proxy does not work: {out.strip()}")
            B.log(f"{name}: port {proxy.ports[0]}, WebSocket echo through it ok")

    def measure(self, sc, name):
        return self.echo(name) if sc["id"] == "echo" else self.idle(name)

    def echo(self, name):
        proxy = self.proxies[name].start()
        try:
            p = self.load(["echo", proxy.url, "--conns", str(CONNS), "--seconds", str(SECONDS),
                           "--warmup", str(WARMUP), "--size", str(SIZE)])
            dog = F.watchdog(p, WARMUP + SECONDS + 60)
            win = F.Window(proxy.pids(), [self.backend.proc.pid, p.pid])
            a = b = None
            for line in iter(p.stdout.readline, ""):
                if line.startswith("start"):
                    a = win.snap()
                elif line.startswith("end"):
                    b = win.snap()
                    break
            out = self.finish(p)
            dog.cancel()
            if a is None or b is None:
                F.die(f"{name}: echo load ended early: {out}")
            res = json.loads(out.strip().splitlines()[-1])
            res.update(F.Window.diff(a, b, res["round_trips"]))
            res["rss_kb"] = B.vm_hwm_kb(proxy.pids())
        finally:
            proxy.stop()
        return res

    def idle(self, name):
        proxy = self.proxies[name].start()
        try:
            self.finish(self.load(["idle", proxy.url, "--conns", "50"]))  # warm-up, closed at once
            time.sleep(0.5)
            pids = proxy.pids()
            rss0, fds0 = F.vm_rss_kb(pids), F.open_fds(pids)
            p = self.load(["idle", proxy.url, "--conns", str(self.idle_conns), "--concurrency",
                           str(IDLE_CONCURRENCY), "--size", str(SIZE)], stdin=subprocess.PIPE)
            dog = F.watchdog(p, 300)
            win = F.Window(pids, [self.backend.proc.pid, p.pid])
            a = win.snap()
            line = p.stdout.readline()
            b = win.snap()
            if not line.startswith("open "):
                p.stdin.close()
                F.die(f"{name}: idle load failed: {line} {self.finish(p)}")
            opened, failed = int(line.split()[1]), int(line.split()[3])
            time.sleep(IDLE_SETTLE)
            c = win.snap()
            rss1, fds1, hwm = F.vm_rss_kb(pids), F.open_fds(pids), B.vm_hwm_kb(pids)
            p.stdin.close()
            self.finish(p)
            dog.cancel()
        finally:
            proxy.stop()
        opening = F.Window.diff(a, b, opened)
        idle = F.Window.diff(b, c, 1)
        return {
            "opened": opened, "failed": failed, "rss0_kb": rss0, "rss1_kb": rss1, "rss_hwm_kb": hwm,
            "fds0": fds0, "fds1": fds1,
            "kib_per_conn": (rss1 - rss0) / max(opened, 1),
            "open_cpu_us": opening["cpu_us"], "open_s": opening["window_s"],
            "idle_cpu_ticks": idle["cpu_ticks"],
            "other_cpu_pct": opening["other_cpu_pct"],
        }


SCENARIOS = [
    {"id": "echo", "summary": lambda r: (f"{r['rps']:>8.0f} rt/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                                         f"cpu {r['cpu_us']:.1f} us/rt  errors {r['errors']}")},
    {"id": "idle", "summary": lambda r: (f"{r['opened']} open ({r['failed']} failed)  rss {r['rss0_kb'] / 1024:.1f} -> "
                                         f"{r['rss1_kb'] / 1024:.1f} MiB  {r['kib_per_conn']:.2f} KiB/conn  "
                                         f"fds {r['fds0']} -> {r['fds1']}  open cpu {r['open_cpu_us']:.0f} us/conn")},
]


# ---------------------------------------------------------------- report

def report(facts, runs):
    f1 = lambda v: f"{v:.1f}"
    f2 = lambda v: f"{v:.2f}"
    fr = lambda v: f"{v:,.0f}"
    cmd = ("QUICK=1 " if QUICK else "") + ("" if ROUNDS == (3 if QUICK else 5) else f"ROUNDS={ROUNDS} ") \
        + "TOLLGATE_BIN=… bench/run.sh ws"
    idle_n = max((r["opened"] for r in runs if r["scenario"] == "idle"), default=0)
    L = [f"## WebSocket tunnel (issue 4)\n",
         f"Generated by `bench/ws.py` from the run of {facts['date']}"
         + (" — a **QUICK** run on a busy machine: read the ratios, not the absolute numbers" if QUICK else "")
         + ". Reproduce (from the repository root; needs Debian's `nginx haproxy`, builds `bench/loadgen` with "
           "cargo; `TOLLGATE_BIN` skips building Tollgate):\n",
         f"```sh\n{cmd}\n```\n",
         "### Setup\n"]
    L += F.setup_lines(facts, [
        f"- **Backend**: `loadgen ws-echo` (tokio-tungstenite, echoes every text/binary message). **Proxies**: "
        f"Tollgate route `websocket = \"tunnel\"` (every frame parsed and validated, UTF-8 of text "
        f"checked, re-masked toward the backend; the loadgen peers negotiate no extension); nginx `proxy_http_version 1.1` + `Upgrade`/`Connection` headers; HAProxy `mode http` with "
        f"`timeout tunnel` (both splice bytes after the 101). Logging off everywhere. Configs in "
        f"`bench/ws.py`.",
        f"- **Echo**: `loadgen ws-load echo`: {CONNS} connections, each doing sequential round-trips of a "
        f"{SIZE}-byte text message (send, wait for the echo); {WARMUP:g} s warm-up, then {SECONDS:g} s measured. "
        f"CPU µs per round-trip = proxy CPU in the measured window ÷ round-trips completed in it.",
        f"- **Idle**: `loadgen ws-load idle`: {idle_n:,} connections opened through the proxy, "
        f"{IDLE_CONCURRENCY} handshakes at a time, one echo round-trip each, then left idle; after "
        f"{IDLE_SETTLE:g} s, KiB per connection = (VmRSS of the proxy's processes with them open − VmRSS "
        f"before) ÷ connections, where *before* is after a warm-up of 50 connections opened and closed. "
        f"Soft fd limit raised to the hard limit ({facts.get('nofile', '?')}). *open CPU* is the proxy's CPU "
        f"per connection while they were being opened (TCP accept + connect, both handshakes, one round-trip).",
    ])
    L.append("")
    L.append("### Echo round-trips\n")
    L.append("| proxy | round-trips/s | p50 ms | p99 ms | CPU µs/round-trip | of which user | peak RSS MiB | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    echo = [r for r in runs if r["scenario"] == "echo"]
    idle = [r for r in runs if r["scenario"] == "idle"]
    m = {}
    for name in F.SYSTEMS:
        rs = [r for r in echo if r["system"] == name]
        m[name] = {k: F.med([r[k] for r in rs]) for k in ("rps", "cpu_us")}
        L.append(f"| {name} | {F.med_spread([r['rps'] for r in rs], fr)} | {F.med_spread([r['p50_ms'] for r in rs], f2)} "
                 f"| {F.med_spread([r['p99_ms'] for r in rs], f2)} | {F.med_spread([r['cpu_us'] for r in rs], f1)} "
                 f"| {F.med_spread([r['user_us'] for r in rs], f1)} "
                 f"| {F.med_spread([r['rss_kb'] / 1024 for r in rs], f1)} | {sum(r['errors'] for r in rs)} |")
    L.append("")
    L += F.ratio_table(echo, "echo", [("rps", "round-trips/s"), ("p50_ms", "p50"), ("p99_ms", "p99"),
                                      ("cpu_us", "CPU/round-trip")],
                       {"rps": max, "p50_ms": min, "p99_ms": min, "cpu_us": min})
    L.append("")
    L.append("### Memory per idle connection\n")
    L.append("| proxy | connections | RSS before MiB | RSS with them MiB | KiB per connection | open CPU µs/conn "
             "| fds with them |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for name in F.SYSTEMS:
        rs = [r for r in idle if r["system"] == name]
        m[name]["kib"] = F.med([r["kib_per_conn"] for r in rs])
        L.append(f"| {name}{' (' + str(sum(r['failed'] for r in rs)) + ' failed)' if any(r['failed'] for r in rs) else ''} "
                 f"| {F.med_spread([r['opened'] for r in rs], fr)} "
                 f"| {F.med_spread([r['rss0_kb'] / 1024 for r in rs], f1)} "
                 f"| {F.med_spread([r['rss1_kb'] / 1024 for r in rs], f1)} "
                 f"| {F.med_spread([r['kib_per_conn'] for r in rs], f2)} "
                 f"| {F.med_spread([r['open_cpu_us'] for r in rs], f1)} "
                 f"| {F.med_spread([r['fds1'] for r in rs], fr)} |")
    L.append("")
    L += F.ratio_table(idle, "idle", [("kib_per_conn", "KiB/conn"), ("open_cpu_us", "open CPU/conn")],
                       {"kib_per_conn": min, "open_cpu_us": min})
    L.append("")
    L.append("### Against the issue's targets\n")
    cpu_r = F.per_round_ratios(echo, "echo", "cpu_us", "nginx")
    kib_r = F.per_round_ratios(idle, "idle", "kib_per_conn", "haproxy")
    cpu_ok = m["tollgate"]["cpu_us"] <= m["nginx"]["cpu_us"]
    kib_ok = m["tollgate"]["kib"] <= m["haproxy"]["kib"]
    L.append("| target | Tollgate | peer (this run) | reference (issue) | verdict |")
    L.append("|---|---:|---:|---:|---|")
    L.append(f"| CPU per round-trip ≤ nginx's | {f1(m['tollgate']['cpu_us'])} µs | {f1(m['nginx']['cpu_us'])} µs "
             f"| {REF['nginx']['cpu_us']} µs | {'met' if cpu_ok else '**not met**'} "
             f"({F.med(cpu_r):.2f}×; met in {sum(x <= 1 for x in cpu_r)}/{len(cpu_r)} rounds) |")
    L.append(f"| memory per idle connection ≤ HAProxy's | {f2(m['tollgate']['kib'])} KiB | {f2(m['haproxy']['kib'])} "
             f"KiB | {REF['haproxy']['kib']} KiB | {'met' if kib_ok else '**not met**'} "
             f"({F.med(kib_r):.2f}×; met in {sum(x <= 1 for x in kib_r)}/{len(kib_r)} rounds) |")
    L.append("")
    L.append(f"Reference from the issue (same kind of machine): nginx {REF['nginx']['cpu_us']} µs per round-trip and "
             f"{REF['nginx']['kib']} KiB per idle connection, HAProxy {REF['haproxy']['cpu_us']} µs and "
             f"{REF['haproxy']['kib']} KiB.\n")
    L.append("### Per-run data\n")
    L.append("| round | proxy (order) | round-trips/s | p50 ms | p99 ms | CPU µs/rt | other CPU % "
             "| idle conns | RSS before → with MiB | KiB/conn | open CPU µs/conn | other CPU % |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for rnd in sorted({r["round"] for r in runs}):
        for name in F.SYSTEMS:
            e = next((r for r in echo if r["round"] == rnd and r["system"] == name), None)
            i = next((r for r in idle if r["round"] == rnd and r["system"] == name), None)
            if not e or not i:
                continue
            L.append(f"| {rnd} | {name} ({e['order']}) | {fr(e['rps'])} | {f2(e['p50_ms'])} | {f2(e['p99_ms'])} "
                     f"| {f1(e['cpu_us'])} | {e['other_cpu_pct']:.0f} | {i['opened']:,} "
                     f"| {f1(i['rss0_kb'] / 1024)} → {f1(i['rss1_kb'] / 1024)} | {f2(i['kib_per_conn'])} "
                     f"| {f1(i['open_cpu_us'])} | {i['other_cpu_pct']:.0f} |")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="file to write the `ws` section into (default bench/RESULTS.md)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON", help="only rewrite the section from a results.json")
    ap.add_argument("--profile", action="store_true",
                    help="perf profile of Tollgate under the echo load -> bench/out/profile-ws/")
    args = ap.parse_args()
    target = Path(args.out) if args.out else B.BENCH / "RESULTS.md"
    if args.report_from:
        data = json.loads(Path(args.report_from).read_text())
        F.write_section("ws", report(data["facts"], data["runs"]), target)
        B.log(f"wrote section ws of {target}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-ws-"))

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
        proxy = bench.proxies["tollgate"]
        F.profile(proxy, lambda: bench.load(["echo", proxy.url, "--conns", str(CONNS), "--seconds", str(seconds + 2),
                                             "--warmup", "1", "--size", str(SIZE)]), B.OUT / "profile-ws", seconds)
        return
    bench.check()
    facts = F.facts()
    facts["nofile"] = bench.nofile
    t0 = time.time()
    runs, discarded = F.rounds(ROUNDS, SCENARIOS, bench.measure)
    facts.update({"duration_s": round(time.time() - t0), "loadavg_end": open("/proc/loadavg").read().split()[:3],
                  "discarded": len(discarded)})
    raw = B.OUT / ("ws-" + time.strftime("%Y%m%d-%H%M%S"))
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps({"facts": facts, "runs": runs, "discarded": discarded}, indent=1))
    for name, p in bench.proxies.items():
        for f in p.dir.iterdir():
            if f.suffix in (".toml", ".conf", ".cfg"):
                shutil.copy2(f, raw / f"{name}-{f.name}")
    F.write_section("ws", report(facts, runs), target)
    B.log(f"wrote section ws of {target} (raw data in {raw})")


if __name__ == "__main__":
    main()

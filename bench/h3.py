#!/usr/bin/env python3
"""HTTP/3 benchmark (issue 6): Tollgate's HTTP/3 listener vs Caddy's, in front of the same origin.

    python3 bench/h3.py              -> section "h3" of bench/RESULTS.md (5 rounds, 10 s per run)
    QUICK=1 python3 bench/h3.py      3 rounds, 5 s per run; also written to RESULTS.md, marked QUICK
    python3 bench/h3.py --profile [small|64k|big]
                                     perf profile of Tollgate under that load -> bench/out/profile-h3/
    python3 bench/h3.py --report-from bench/out/h3-<timestamp>/results.json   (rewrite the section only)

Debian's curl and h2load have no HTTP/3, so the load client is our own: bench/h3load (quinn + h3 +
rustls/ring, one thread), built with cargo outside the workspace. Per round and proxy, each on a
freshly started proxy (ONE worker: Tollgate `worker_threads = 1`, Caddy `GOMAXPROCS=1`; pinned to
PROXY_CPU, core 0) in front of one nginx origin (static files, pinned with the client to LOAD_CPU,
core 1):

  * small: GET /small (100 B), H3_CONNS (10) QUIC connections x H3_STREAMS (10) concurrent request
    streams each, H3_WARMUP (1) s warm-up, then H3_SECONDS (5 QUICK / 10) s measured;
  * 64k:   GET /64k (65,536 B), the same;
  * big:   GET /100m (H3_BIG_MIB = 100 MiB), one connection, one request at a time, H3_BIG_REPEAT (3)
           downloads one after the other (so the proxy's CPU, counted in 10 ms ticks, is read over a
           longer window); MiB/s = body bytes / time.

h3load prints `start` and `end` around its measured window; the harness reads utime+stime of the proxy
(/proc/PID/stat), of the client, of the origin and of the whole machine at those two lines. CPU per
request = proxy CPU in the window / responses completed in the window. Rounds rotate the order of the
two proxies; cells are median (min-max) over rounds; ratios Tollgate / Caddy are computed per round.

Environment: QUICK, ROUNDS, PROXY_CPU, LOAD_CPU, NICE, KEEP, QUIET_* and REDO_* as bench.py;
TOLLGATE_BIN=path (skips `cargo build --release`; otherwise built into $CARGO_TARGET_DIR or target/),
H3LOAD_BIN=path (skips building bench/h3load; otherwise built into $H3LOAD_TARGET_DIR, default
bench/out/h3load-target), CADDY=path (default caddy), H3_CONNS, H3_STREAMS, H3_SECONDS, H3_WARMUP,
H3_BIG_MIB, H3_BIG_REPEAT. `--out FILE` writes the section elsewhere.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench as B
import family

QUICK = B.QUICK
DEFAULT_ROUNDS = 3 if QUICK else 5
ROUNDS = int(os.environ.get("ROUNDS", str(DEFAULT_ROUNDS)))
CONNS = int(os.environ.get("H3_CONNS", "10"))
STREAMS = int(os.environ.get("H3_STREAMS", "10"))
SECONDS = float(os.environ.get("H3_SECONDS", "5" if QUICK else "10"))
WARMUP = float(os.environ.get("H3_WARMUP", "1"))
BIG_MIB = int(os.environ.get("H3_BIG_MIB", "100"))
BIG_REPEAT = int(os.environ.get("H3_BIG_REPEAT", "3"))  # downloads per measured run, one after another
CADDY = os.environ.get("CADDY", "caddy")
SYSTEMS = ["tollgate", "caddy"]
AUTOGROUP = [None]  # set by raise_autogroup_priority()
# Measured before on this kind of machine (issue 6): Caddy's CPU per request over HTTP/3.
REF = {"small": 240.0, "64k": 925.0}
TARGET_RATIO = 0.5  # Tollgate at most half of Caddy's CPU per request

SCENARIOS = [
    {"id": "small", "title": f"small response ({len(B.SMALL_BODY)} B)", "path": "/small", "size": len(B.SMALL_BODY)},
    {"id": "64k", "title": "64 KiB response", "path": "/64k", "size": B.LARGE_SIZE},
    {"id": "big", "title": f"one {BIG_MIB} MiB download", "path": f"/{BIG_MIB}m", "size": BIG_MIB << 20},
]
log, die = B.log, B.die


# ---------------------------------------------------------------- binaries

def build_tollgate(tmp):
    """Tollgate's release binary (TOLLGATE_BIN skips the build; CARGO_TARGET_DIR is honoured), copied into tmp
    so that concurrent builds can't swap it mid-run."""
    if os.environ.get("TOLLGATE_BIN"):
        src = Path(os.environ["TOLLGATE_BIN"]).resolve()
        log(f"using TOLLGATE_BIN={src} (no build)")
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", str(B.REPO / "target")))
        log(f"cargo build --release --bin tollgate (target dir {target}; may wait for its lock) ...")
        subprocess.run(["cargo", "build", "--release", "--bin", "tollgate"], cwd=B.REPO, check=True)
        src = target / "release" / "tollgate"
    dst = tmp / "tollgate-bin"
    shutil.copy2(src, dst)
    B.TOLLGATE_SHA[0] = hashlib.sha256(dst.read_bytes()).hexdigest()[:12]
    return dst


def build_h3load(tmp):
    if os.environ.get("H3LOAD_BIN"):
        src = Path(os.environ["H3LOAD_BIN"]).resolve()
        log(f"using H3LOAD_BIN={src} (no build)")
    else:
        target = Path(os.environ.get("H3LOAD_TARGET_DIR", str(B.OUT / "h3load-target")))
        log(f"cargo build --release --manifest-path bench/h3load/Cargo.toml (target dir {target}) ...")
        subprocess.run(["cargo", "build", "--release", "--manifest-path", str(B.BENCH / "h3load" / "Cargo.toml")],
                       cwd=B.REPO, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
        src = target / "release" / "h3load"
    dst = tmp / "h3load"
    shutil.copy2(src, dst)
    return dst


# ---------------------------------------------------------------- configs

def free_port():
    """A loopback port below the ephemeral range that is free for both TCP and UDP (HTTP/3 uses the
    TLS listener's port number over UDP)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        socks = []
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def tollgate_config(port, origin_port, cert, key):
    return f"""# Tollgate: ONE runtime worker thread; a TLS listener with HTTP/3 (QUIC on the same port over UDP).
[runtime]
worker_threads = 1
shutdown_grace = "1s"

[log]
level = "warn"
access_log = false            # Caddy logs no requests either (no `log` directive)

[[listener]]
name = "tls"
bind = "127.0.0.1:{port}"
tls = {{ cert = "{cert}", key = "{key}" }}
http3 = true

[[upstream]]
name = "origin"
protocol = "http1"
targets = ["127.0.0.1:{origin_port}"]
max_idle_per_target = 1024

[[route]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "origin"
"""


def caddy_config(port, origin_port, cert, key, data_dir):
    """Caddy's native JSON: h1 + h2 + h3 on one TLS server, no admin endpoint, no automatic HTTPS (so no
    redirect listener and no ACME), our certificate, reverse_proxy to the origin with a big idle pool."""
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": str(data_dir)},
        "apps": {
            "http": {"servers": {"bench": {
                "listen": [f"127.0.0.1:{port}"],
                "protocols": ["h1", "h2", "h3"],
                "automatic_https": {"disable": True},
                "tls_connection_policies": [{}],
                "routes": [{"handle": [{
                    "handler": "reverse_proxy",
                    # as Tollgate's max_idle_per_target = 1024 (Caddy's default keeps 32 idle per host)
                    "transport": {"protocol": "http", "keep_alive": {"max_idle_conns_per_host": 1024}},
                    "upstreams": [{"dial": f"127.0.0.1:{origin_port}"}],
                }]}],
            }}},
            "tls": {"certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]}},
        },
    }


class Proxy(family.Server):
    """One proxy under test; `start()` gives a fresh process for every measured run
    (family.Server waits for the TCP port; UDP is bound in the same start-up)."""

    def __init__(self, name, tmp, origin_port, cert, key, tollgate_bin):
        workdir = tmp / name
        workdir.mkdir()
        self.port = free_port()
        if name == "tollgate":
            conf = workdir / "tollgate.toml"
            conf.write_text(tollgate_config(self.port, origin_port, cert, key))
            cmd = [str(tollgate_bin), "--config", str(conf), "run"]
        else:
            conf = workdir / "caddy.json"
            conf.write_text(json.dumps(caddy_config(self.port, origin_port, cert, key, workdir / "data"), indent=1))
            # `env` execs, like taskset and nice, so the PID we hold is Caddy's own.
            cmd = ["env", "GOMAXPROCS=1", f"HOME={workdir}", f"XDG_DATA_HOME={workdir}/xdg-data",
                   f"XDG_CONFIG_HOME={workdir}/xdg-config", CADDY, "run", "--config", str(conf)]
        super().__init__(name, workdir, cmd, [self.port])
        self.conf = conf


# ---------------------------------------------------------------- measuring

def ticks(pid):
    try:
        return B.cpu_ticks([pid])
    except OSError:
        return 0


class Bench:
    def __init__(self, tmp):
        for tool in ("nginx", CADDY, "taskset", "openssl"):
            if not shutil.which(tool):
                die(f"`{tool}` not found (Debian: apt-get install -y nginx caddy util-linux openssl)")
        self.tmp = tmp
        self.tollgate_bin = build_tollgate(tmp)
        self.client_bin = build_h3load(tmp)
        cert, key, _ = B.make_tls(tmp)
        self.origin = B.Origin(tmp)
        big = self.origin.prefix / "html" / f"{BIG_MIB}m"
        with open(big, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(BIG_MIB):
                f.write(block)
        log(f"origin nginx on 127.0.0.1:{self.origin.port} (cpu {B.LOAD_CPU}): /small, /64k, /{BIG_MIB}m")
        self.proxies = {n: Proxy(n, tmp, self.origin.port, cert, key, self.tollgate_bin) for n in SYSTEMS}

    def h3load(self, proxy, sc, extra):
        cmd = B.pinned(B.LOAD_CPU) + [str(self.client_bin), f"127.0.0.1:{proxy.port}", sc["path"],
                                      "--expect-size", str(sc["size"])] + extra
        err = open(self.tmp / "h3load.err", "w+")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        p.err = err
        B.STARTED.append(p)
        return p

    def finish(self, p, what):
        out = p.stdout.read()
        p.wait()
        B.STARTED.remove(p)
        p.err.seek(0)
        err = p.err.read()
        p.err.close()
        if p.returncode != 0:
            die(f"h3load ({what}) failed with status {p.returncode}: {err.strip()}")
        return json.loads(out.strip().splitlines()[-1])

    def check(self, proxy, sc):
        """One request over HTTP/3; retried briefly while the UDP side comes up."""
        for attempt in range(20):
            p = self.h3load(proxy, sc, ["--conns", "1", "--streams", "1", "--requests", "1", "--warmup", "0",
                                        "--max-seconds", "30"])
            out = p.stdout.read()
            p.wait()
            B.STARTED.remove(p)
            p.err.close()
            if p.returncode == 0:
                res = json.loads(out.strip().splitlines()[-1])
                if res["completed"] == 1 and res["errors"] == 0 and res["alpn"] == "h3":
                    return res
            time.sleep(0.1)
        die(f"{proxy.name} does not answer GET {sc['path']} over HTTP/3 on udp/127.0.0.1:{proxy.port}: {out}")

    def measure(self, sc, name):
        proxy = self.proxies[name].start()
        try:
            first = self.check(proxy, sc)
            if sc["id"] == "big":
                extra = ["--conns", "1", "--streams", "1", "--requests", str(BIG_REPEAT), "--warmup", "0",
                         "--max-seconds", "300"]
            else:
                extra = ["--conns", str(CONNS), "--streams", str(STREAMS), "--seconds", str(SECONDS),
                         "--warmup", str(WARMUP)]
            p = self.h3load(proxy, sc, extra)
            dog = threading.Timer(WARMUP + SECONDS + 330, lambda: p.poll() is None and p.kill())
            dog.daemon = True
            dog.start()
            pids = proxy.pids()
            snaps = {}
            for line in iter(p.stdout.readline, ""):
                word = line.strip()
                if word in ("start", "end"):
                    u, s = B.user_sys_ticks(pids)
                    snaps[word] = {"u": u, "s": s, "client": ticks(p.pid), "origin": ticks(self.origin.proc.pid),
                                   "machine": B.machine_ticks()[0], "t": time.time()}
                    if word == "end":
                        break
            res = self.finish(p, f"{name} {sc['id']}")
            dog.cancel()
            if set(snaps) != {"start", "end"}:
                die(f"{name} {sc['id']}: h3load ended without its start/end lines: {res}")
            res["rss_kb"] = B.vm_hwm_kb(pids)
            res["first_response"] = first["first_response"]
        finally:
            proxy.stop()
        a, b = snaps["start"], snaps["end"]
        secs = max(b["t"] - a["t"], 1e-6)
        proxy_ticks = (b["u"] + b["s"]) - (a["u"] + a["s"])
        client, origin = b["client"] - a["client"], b["origin"] - a["origin"]
        n = max(res["completed"], 1)
        res.update({
            "window_s": secs,
            "cpu_ticks": proxy_ticks,
            "cpu_us_per_req": proxy_ticks * 1e6 / B.CLK_TCK / n,
            "user_us_per_req": (b["u"] - a["u"]) * 1e6 / B.CLK_TCK / n,
            "proxy_cpu_pct": proxy_ticks / B.CLK_TCK / secs * 100,
            "client_proc_cpu_pct": client / B.CLK_TCK / secs * 100,
            "origin_cpu_pct": origin / B.CLK_TCK / secs * 100,
            "core1_pct": (client + origin) / B.CLK_TCK / secs * 100,
            "other_cpu_pct": max(0.0, ((b["machine"] - a["machine"]) - proxy_ticks - client - origin)
                                 / B.CLK_TCK / secs * 100),
            "datagrams_per_req": (res["udp_rx_datagrams"] + res["udp_tx_datagrams"]) / n,
        })
        if sc["id"] == "big":
            res["cpu_ms_per_body"] = proxy_ticks * 1e3 / B.CLK_TCK / n
            res["s_per_body"] = secs / n
            res["cpu_us_per_mib"] = proxy_ticks * 1e6 / B.CLK_TCK / max(res["bytes"] / (1 << 20), 1e-9)
        return res


def summary(sc, r):
    if sc["id"] == "big":
        return (f"{r['mib_per_s']:7.1f} MiB/s  {r['s_per_body']:.2f} s  cpu {r['cpu_ms_per_body']:.0f} ms per download  "
                f"client {r['client_proc_cpu_pct']:.0f}%  errors {r['errors']}")
    return (f"{r['rps']:>8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
            f"cpu {r['cpu_us_per_req']:.1f} us/req ({r['proxy_cpu_pct']:.0f}% of core {B.PROXY_CPU})  "
            f"client {r['client_proc_cpu_pct']:.0f}%  core {B.LOAD_CPU} {r['core1_pct']:.0f}%  errors {r['errors']}")


def rounds(bench):
    """Each round: each scenario, each proxy, the order of the proxies alternating from round to round.
    A run during which other processes used >= REDO_OTHER_PCT % of a core is measured again (within
    bench.py's REDO_BUDGET)."""
    runs, discarded = [], []
    for rnd in range(ROUNDS):
        order = SYSTEMS[rnd % 2:] + SYSTEMS[:rnd % 2]
        for sc in SCENARIOS:
            for name in order:
                while True:
                    _busy, waited = B.wait_quiet()
                    res = bench.measure(sc, name)
                    res.update({"round": rnd + 1, "scenario": sc["id"], "system": name,
                                "order": order.index(name) + 1, "quiet_waited_s": waited})
                    if res["other_cpu_pct"] < B.REDO_OTHER_PCT or len(discarded) >= B.REDO_BUDGET:
                        break
                    discarded.append(res)
                    log(f"round {rnd + 1} {sc['id']} {name}: other processes used {res['other_cpu_pct']:.0f}% of a "
                        f"core: measuring again ({len(discarded)}/{B.REDO_BUDGET} re-runs used)")
                runs.append(res)
                log(f"round {rnd + 1}/{ROUNDS} {sc['id']:<5} {name:<8} {summary(sc, res)}  "
                    f"other cpu {res['other_cpu_pct']:.0f}%")
    return runs, discarded


# ---------------------------------------------------------------- report

def med(values):
    return statistics.median(values) if values else float("nan")


def cell(values, fmt):
    if not values:
        return "–"
    return f"{fmt(med(values))} ({fmt(min(values))}–{fmt(max(values))})"


def ratios(runs, scenario, key):
    """Tollgate ÷ Caddy per round."""
    out = []
    for rnd in sorted({r["round"] for r in runs}):
        t = [r[key] for r in runs if r["round"] == rnd and r["scenario"] == scenario and r["system"] == "tollgate"]
        c = [r[key] for r in runs if r["round"] == rnd and r["scenario"] == scenario and r["system"] == "caddy"]
        if t and c and c[0]:
            out.append(t[0] / c[0])
    return out


def report(facts, runs):
    f0 = lambda v: f"{v:,.0f}"
    f1 = lambda v: f"{v:,.1f}"
    f2 = lambda v: f"{v:.2f}"
    quick = facts["settings"]["QUICK"]
    rounds_n = facts["settings"]["ROUNDS"]
    s = facts["settings"]
    cmd = ("QUICK=1 " if quick else "") + ("" if rounds_n == (3 if quick else 5) else f"ROUNDS={rounds_n} ") \
        + "TOLLGATE_BIN=… python3 bench/h3.py"
    for r in runs:  # results.json of runs before H3_BIG_REPEAT existed
        if r["scenario"] == "big":
            r.setdefault("s_per_body", r["window_s"] / max(r["completed"], 1))
    by = lambda sc, name, key: [r[key] for r in runs if r["scenario"] == sc and r["system"] == name]
    L = ["## HTTP/3 vs Caddy (issue 6)\n"]
    L.append(f"Generated by `bench/h3.py` from the run of {facts['date']}"
             + (" — a **QUICK** run on a shared, busy machine: read the ratios, not the absolute numbers" if quick
                else "") + ". Reproduce (from the repository root; needs Debian's `nginx caddy`; builds "
             "`bench/h3load` with cargo; `TOLLGATE_BIN` skips building Tollgate, `H3LOAD_BIN` the client):\n")
    L.append(f"```sh\n{cmd}\n```\n")
    L.append("### Setup\n")
    L.append(f"- Machine: {facts['cpu']}, Linux {facts['kernel']}; load average at start "
             f"{' '.join(facts['loadavg_start'])}, at end {' '.join(facts['loadavg_end'])}; measured part took "
             f"{facts['duration_s']} s.")
    L.append(f"- Tollgate {facts['tollgate']} (release: fat LTO), {facts['rustc']}: quinn 0.11 + h3 0.0.8, "
             f"rustls 0.23 (ring). {facts['caddy']} (Debian; quic-go). {facts['nginx']} as the origin.")
    L.append(f"- **One worker each**, pinned with `taskset` to core {s['PROXY_CPU']}, alone: Tollgate "
             f"`[runtime] worker_threads = 1`, Caddy `GOMAXPROCS=1`. The origin (one nginx process, static files "
             f"`/small` {len(B.SMALL_BODY)} B, `/64k` 65,536 B, `/{s['BIG_MIB']}m` {s['BIG_MIB']} MiB, `sendfile`) "
             f"and the load client share core {s['LOAD_CPU']}"
             + (f"; everything at `nice -n {s['NICE']}`" if s["NICE"] != "0" else "")
             + (f", and the harness's session (autogroup) at nice {s['NICE']} too, since with the kernel's "
                f"autogroup scheduling a plain nice does not outrank builds started from other sessions"
                if s.get("AUTOGROUP") else "") + ".")
    L.append("- **Proxies**: one TLS listener with h1 + h2 + h3 on the same port number, the same self-signed ECDSA "
             "P-256 certificate (openssl), a catch-all route to the origin over pooled HTTP/1.1 keep-alive (Tollgate "
             "`max_idle_per_target = 1024`, Caddy `keep_alive.max_idle_conns_per_host = 1024`), no request logging "
             "(Tollgate `access_log = false`, Caddy no `log`), Caddy's admin endpoint and automatic HTTPS off. "
             "Both add X-Forwarded-* headers; Tollgate also `Forwarded`, `Via` and `X-Request-Id`. Configs in "
             "`bench/h3.py`.")
    L.append(f"- **Load client**: `bench/h3load` (our own: quinn 0.11 + h3 0.0.8 + rustls/ring, certificate not "
             f"verified but the handshake signature is; one thread, current-thread tokio runtime; 16 MiB stream "
             f"receive window). *small* and *64k*: {s['CONNS']} QUIC connections × {s['STREAMS']} concurrent "
             f"request streams (each stream: GET, read the whole body, next GET), {s['WARMUP']:g} s warm-up on the "
             f"same connections, then {s['SECONDS']:g} s measured. *big*: one connection, one GET of "
             f"`/{s['BIG_MIB']}m` at a time, {s.get('BIG_REPEAT', 1)} downloads one after another in the measured window "
             f"(the first request on a fresh proxy, the check, is not measured); MiB/s = body bytes ÷ window. Every "
             f"response is checked: status 200 and the exact body length, else it counts as an error.")
    L.append("- **Method**: a freshly started proxy for every measured run (after one checked request over HTTP/3 with "
             "ALPN `h3`); rounds alternate the order of the two proxies; cells are **median (min–max)** over the "
             "rounds; ratios are Tollgate ÷ Caddy computed within each round, then median (min–max). CPU = "
             "utime+stime from `/proc/PID/stat`, clock ticks of 1/100 s, read when h3load prints `start` and `end` "
             "around its measured window; CPU µs/req = proxy CPU in the window ÷ responses completed in it. "
             f"*client CPU* and *core {s['LOAD_CPU']} busy* are the client's and client + origin's CPU in the window, "
             "in % of one core. *datagrams/req* = UDP datagrams the client sent + received ÷ requests.")
    L.append(f"- **Noise**: shared 2-core VM, other engineers building and testing on it. Before each run the "
             f"harness waits (bounded) for a quiet machine, and measures a run again if other processes used ≥ "
             f"{s['REDO_OTHER_PCT']:g} % of a core during it (at most {s['REDO_BUDGET']}; {facts['discarded']} used). "
             f"*other CPU %* in the per-run table is everyone else's CPU during the window. Compare ratios within "
             f"the run, not absolute numbers across runs; CPU per request is the steadier figure (req/s depends on "
             f"core {s['LOAD_CPU']}, which the client and origin share).\n")

    L.append("### Requests\n")
    L.append(f"| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req | of which user | proxy CPU % | client CPU % "
             f"| core {s['LOAD_CPU']} busy % | datagrams/req | peak RSS MiB | errors |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in SCENARIOS[:2]:
        for name in SYSTEMS:
            g = lambda k: by(sc["id"], name, k)
            L.append(f"| {sc['id']} | {name} | {cell(g('rps'), f0)} | {cell(g('p50_ms'), f2)} | {cell(g('p99_ms'), f2)} "
                     f"| **{cell(g('cpu_us_per_req'), f1)}** | {cell(g('user_us_per_req'), f1)} "
                     f"| {cell(g('proxy_cpu_pct'), f0)} | {cell(g('client_proc_cpu_pct'), f0)} "
                     f"| {cell(g('core1_pct'), f0)} | {cell(g('datagrams_per_req'), f1)} "
                     f"| {cell([v / 1024 for v in g('rss_kb')], f1)} | {sum(g('errors'))} |")
    L.append("")
    L.append("| tollgate ÷ caddy | req/s | p50 | p99 | CPU/req |")
    L.append("|---|---:|---:|---:|---:|")
    for sc in SCENARIOS[:2]:
        L.append(f"| {sc['id']} | {cell(ratios(runs, sc['id'], 'rps'), f2)} | {cell(ratios(runs, sc['id'], 'p50_ms'), f2)} "
                 f"| {cell(ratios(runs, sc['id'], 'p99_ms'), f2)} | **{cell(ratios(runs, sc['id'], 'cpu_us_per_req'), f2)}** |")
    L.append("")

    big = SCENARIOS[2]
    L.append(f"### One {s['BIG_MIB']} MiB download\n")
    L.append(f"| proxy | MiB/s | seconds per download | proxy CPU ms per download | CPU µs per MiB | client CPU % | "
             f"core {s['LOAD_CPU']} busy % | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in SYSTEMS:
        g = lambda k: by("big", name, k)
        L.append(f"| {name} | **{cell(g('mib_per_s'), f1)}** | {cell(g('s_per_body'), f2)} | {cell(g('cpu_ms_per_body'), f0)} "
                 f"| {cell(g('cpu_us_per_mib'), f0)} | {cell(g('client_proc_cpu_pct'), f0)} | {cell(g('core1_pct'), f0)} "
                 f"| {sum(g('errors'))} |")
    L.append("")
    L.append(f"Tollgate ÷ Caddy: MiB/s {cell(ratios(runs, 'big', 'mib_per_s'), f2)}, CPU per download "
             f"{cell(ratios(runs, 'big', 'cpu_ms_per_body'), f2)}.\n")

    L.append(f"**Load client**: h3load's own CPU (from /proc, in the measured window) was at most "
             + ", ".join(f"{max(r['client_proc_cpu_pct'] for r in runs if r['scenario'] == sc['id']):.0f} % ({sc['id']})"
                         for sc in SCENARIOS)
             + f" of core {s['LOAD_CPU']}; client + origin at most "
             + ", ".join(f"{max(r['core1_pct'] for r in runs if r['scenario'] == sc['id']):.0f} %" for sc in SCENARIOS)
             + f". Core {s['LOAD_CPU']} is counted as saturated at ≥ 95 %: "
             + ("it never was, so the proxies' req/s were not capped by the client side."
                if max(r["core1_pct"] for r in runs) < 85 else
                "it never was, though it came close in some runs (see the per-run table)."
                if max(r["core1_pct"] for r in runs) < 95 else
                "it was in some runs (see the per-run table), so req/s there are capped by the client side; CPU per "
                "request is still comparable, both proxies facing the same client.") + "\n")
    L.append("### Against the issue's target\n")
    L.append("| target | Tollgate | Caddy (this run) | Caddy (reference, issue) | Tollgate ÷ Caddy | verdict |")
    L.append("|---|---:|---:|---:|---:|---|")
    for sc in SCENARIOS[:2]:
        t, c = med(by(sc["id"], "tollgate", "cpu_us_per_req")), med(by(sc["id"], "caddy", "cpu_us_per_req"))
        rr = ratios(runs, sc["id"], "cpu_us_per_req")
        met = sum(1 for v in rr if v <= TARGET_RATIO)
        verdict = "**met**" if med(rr) <= TARGET_RATIO else "**not met**"
        L.append(f"| {sc['id']}: CPU per request ≤ ½ Caddy's | {t:.1f} µs | {c:.1f} µs | {REF[sc['id']]:.0f} µs "
                 f"| {med(rr):.2f} | {verdict} (met in {met}/{len(rr)} rounds; ≤ ½ of the reference: "
                 f"{'yes' if t <= REF[sc['id']] * TARGET_RATIO else 'no'}) |")
    L.append("")
    if facts.get("notes"):
        L.append("### Notes\n")
        L.extend(f"- {n}" for n in facts["notes"])
        L.append("")

    L.append("### Per-run data\n")
    L.append("| round | scenario | proxy (order) | req/s | MiB/s | p50 ms | p99 ms | CPU µs/req | client CPU % "
             "| core 1 busy % | lost packets | errors | other CPU % |")
    L.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        big_run = r["scenario"] == "big"
        rps = "–" if big_run else f"{r['rps']:,.0f}"
        cpu = f"{r['cpu_ms_per_body']:,.0f} ms/download" if big_run else f"{r['cpu_us_per_req']:,.1f}"
        L.append(f"| {r['round']} | {r['scenario']} | {r['system']} ({r['order']}) | {rps} | "
                 f"{r['mib_per_s']:,.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {cpu} | "
                 f"{r['client_proc_cpu_pct']:.0f} | {r['core1_pct']:.0f} | {r['lost_packets']} | {r['errors']} | "
                 f"{r['other_cpu_pct']:.0f} |")
    return "\n".join(L) + "\n"


def write_section(name, text, target):
    """Replaces the `<!-- begin NAME -->` … `<!-- end NAME -->` block of target, or appends it at the end
    (bench.py keeps such blocks when it rewrites the file). Reads the file right before writing."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = target.read_text() if target.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = head + block + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    target.write_text(new)


# ---------------------------------------------------------------- profile

def profile(bench, which):
    """`perf record -g` (PERF_CALLGRAPH=dwarf: DWARF call graphs, which see through Rust code built without
    frame pointers) of Tollgate for PROFILE_SECONDS (8) under one scenario's load, then
    `perf report --no-children` (head) and a flat per-symbol list, into bench/out/profile-h3/."""
    if not shutil.which("perf"):
        die("perf not found (Debian: apt-get install -y linux-perf)")
    seconds = int(os.environ.get("PROFILE_SECONDS", "8"))
    sc = next(s for s in SCENARIOS if s["id"] == which)
    out_dir = B.OUT / "profile-h3"
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-dwarf" if os.environ.get("PERF_CALLGRAPH") == "dwarf" else ""
    which_file = which + suffix
    data = out_dir / f"perf-{which_file}.data"
    proxy = bench.proxies["tollgate"].start()
    try:
        bench.check(proxy, sc)
        if which == "big":
            extra = ["--conns", "1", "--streams", "1", "--seconds", str(seconds + 2), "--warmup", "1"]
        else:
            extra = ["--conns", str(CONNS), "--streams", str(STREAMS), "--seconds", str(seconds + 2), "--warmup", "1"]
        p = bench.h3load(proxy, sc, extra)
        time.sleep(1.5)
        graph = ["--call-graph", "dwarf,16384"] if os.environ.get("PERF_CALLGRAPH") == "dwarf" else ["-g"]
        cmd = B.pinned(B.LOAD_CPU) + ["perf", "record"] + graph + ["-F", "1999", "-p", str(proxy.proc.pid),
                                      "-o", str(data), "--", "sleep", str(seconds)]
        log(" ".join(cmd[cmd.index("perf"):]))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = bench.finish(p, "profile")
        (out_dir / f"load-{which_file}.json").write_text(json.dumps(res, indent=1))
    finally:
        proxy.stop()
    for fname, extra in {f"report-{which_file}.txt": ["--no-children"],
                         f"flat-{which_file}.txt": ["--no-children", "--sort", "dso,symbol", "-g", "none"],
                         f"inclusive-{which_file}.txt": ["--children", "--sort", "symbol", "-g", "none",
                                                         "--percent-limit", "1"]}.items():
        p = subprocess.run(["perf", "report", "-i", str(data), "--stdio"] + extra, capture_output=True, text=True)
        (out_dir / fname).write_text(p.stdout)
    log(f"profile of Tollgate under h3 {which}: {out_dir}/report-{which_file}.txt, flat-{which_file}.txt "
        f"(load: {res['rps']:.0f} req/s)")


# ---------------------------------------------------------------- main

def raise_autogroup_priority():
    """With CONFIG_SCHED_AUTOGROUP (kernel.sched_autogroup_enabled = 1), the scheduler first shares CPU
    fairly between sessions (autogroups) and only then by nice within a session: `nice -n -10` alone does
    not put the benchmark ahead of a build started from another terminal. So (as root) this session's
    autogroup gets the same nice for the duration of the run; restored at exit. Returns a note, or None."""
    path = Path("/proc/self/autogroup")
    if B.NICE == "0" or not path.exists():
        return None
    try:
        before = path.read_text().split()[-1]
        path.write_text(B.NICE)
    except (OSError, IndexError):
        return None
    atexit.register(lambda: path.write_text(before))
    return f"autogroup nice {B.NICE}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="file to write the `h3` section into (default bench/RESULTS.md)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON", help="only rewrite the section from a results.json")
    ap.add_argument("--profile", nargs="?", const="small", choices=[s["id"] for s in SCENARIOS],
                    help="perf profile of Tollgate under that load -> bench/out/profile-h3/")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's Notes (repeatable)")
    args = ap.parse_args()
    target = Path(args.out) if args.out else B.BENCH / "RESULTS.md"
    if args.report_from:
        data = json.loads(Path(args.report_from).read_text())
        data["facts"]["notes"] = data["facts"].get("notes", []) + args.note
        write_section("h3", report(data["facts"], data["runs"]), target)
        log(f"wrote section h3 of {target}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-h3-"))

    def cleanup():
        B.stop_all()
        if B.KEEP:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    AUTOGROUP[0] = raise_autogroup_priority()
    bench = Bench(tmp)
    if args.profile:
        profile(bench, args.profile)
        return
    for name, proxy in bench.proxies.items():
        proxy.start()
        try:
            for sc in SCENARIOS:
                r = bench.check(proxy, sc)
                log(f"{name}: udp/127.0.0.1:{proxy.port} GET {sc['path']} over HTTP/3 ok: {r['first_response']}")
        finally:
            proxy.stop()
    facts = B.machine_facts()
    facts["caddy"] = "Caddy " + B.version_of([CADDY, "version"])
    facts["tollgate"] = f"{os.environ.get('TOLLGATE_REV') or B.git_revision()}, binary sha256 {B.TOLLGATE_SHA[0]}…"
    facts["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    facts["settings"] = {"QUICK": QUICK, "ROUNDS": ROUNDS, "CONNS": CONNS, "STREAMS": STREAMS, "SECONDS": SECONDS,
                         "WARMUP": WARMUP, "BIG_MIB": BIG_MIB, "BIG_REPEAT": BIG_REPEAT, "PROXY_CPU": B.PROXY_CPU, "LOAD_CPU": B.LOAD_CPU,
                         "NICE": B.NICE, "AUTOGROUP": AUTOGROUP[0], "REDO_OTHER_PCT": B.REDO_OTHER_PCT, "REDO_BUDGET": B.REDO_BUDGET}
    facts["notes"] = args.note
    t0 = time.time()
    runs, discarded = rounds(bench)
    facts.update({"duration_s": round(time.time() - t0), "loadavg_end": open("/proc/loadavg").read().split()[:3],
                  "discarded": len(discarded)})
    raw = B.OUT / ("h3-" + time.strftime("%Y%m%d-%H%M%S"))
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps({"facts": facts, "runs": runs, "discarded": discarded}, indent=1))
    for name, p in bench.proxies.items():
        shutil.copy2(p.conf, raw / f"{name}-{p.conf.name}")
    write_section("h3", report(facts, runs), target)
    log(f"wrote section h3 of {target} (raw data in {raw})")


if __name__ == "__main__":
    main()

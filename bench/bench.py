#!/usr/bin/env python3
"""Benchmark Tollgate against nginx and HAProxy as reverse proxies.

One command (``bench/run.sh``) builds Tollgate, starts an nginx origin and the
three proxies on free loopback ports, drives them with wrk (HTTP/1.1) and
h2load (h2c, h2 over TLS), and writes medians and ratios to bench/RESULTS.md.

Method (see RESULTS.md for the write-up):
  * every proxy runs ONE worker (Tollgate `worker_threads = 1`, nginx
    `worker_processes 1`, HAProxy `nbthread 1`), pinned with taskset to
    PROXY_CPU (default core 0); the origin nginx and the load generator share
    LOAD_CPU (default core 1), so the proxy has a core to itself;
  * each (round, scenario, proxy) gets a freshly started proxy, a short
    warm-up, then the measured run; rounds rotate the order of the proxies;
  * CPU per request = delta of utime+stime (/proc/PID/stat fields 14 and 15,
    clock ticks) summed over the proxy's processes, divided by completed
    requests; peak RSS = sum of VmHWM over the proxy's processes;
  * wrk gives p50/p99 itself; for h2load, p50/p99 come from its per-request
    --log-file (exact nearest-rank percentiles over every request);
  * the machine is shared: everything we start runs at `nice -n -10`, each
    measured run waits (bounded) for a quiet machine, records how much CPU
    other processes used meanwhile, and is measured again (bounded) if that
    was a lot.

Other modes: `--profile` (perf profile of Tollgate under the h1-small load and
a system-call census of all three proxies, into bench/out/profile/), and
`--report-from bench/out/<timestamp>/results.json` (rewrite the report).

Python 3 standard library only.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"  # git-ignored: raw data, configs, quick results, profiles

QUICK = os.environ.get("QUICK") == "1"
DEFAULT_ROUNDS = 3 if QUICK else 5
ROUNDS = int(os.environ.get("ROUNDS", str(DEFAULT_ROUNDS)))
PROXY_CPU = os.environ.get("PROXY_CPU", "0")
LOAD_CPU = os.environ.get("LOAD_CPU", "1")
KEEP = os.environ.get("KEEP") == "1"
# Proxy, origin and load generator run at this nice level so that background builds on the same
# machine take less of their CPU (NICE=0 turns it off). Needs root for negative values.
NICE = os.environ.get("NICE", "-10" if os.geteuid() == 0 else "0")


def pinned(cpu):
    """Command prefix: nice (if any) and taskset; both exec, so a PID is the server's own."""
    return (["nice", "-n", NICE] if NICE != "0" else []) + ["taskset", "-c", cpu]

WRK_SECONDS = 3 if QUICK else 10
H2LOAD_REQUESTS = 20_000 if QUICK else 100_000
CONNECTIONS = 50
H2_STREAMS = 10  # h2load -m: concurrent streams per connection
WARMUP_WRK_SECONDS = 1
WARMUP_H2LOAD_REQUESTS = 5_000
# Other engineers build and test on this machine: before each measured run, wait (bounded) until
# the machine is quiet, and record how much CPU other processes used during the run.
QUIET_CORES = float(os.environ.get("QUIET_CORES", "0.10"))  # "quiet" = under this many cores busy
QUIET_MAX_WAIT = float(os.environ.get("QUIET_MAX_WAIT", "10"))  # seconds, per run
QUIET_BUDGET = float(os.environ.get("QUIET_BUDGET", "30" if QUICK else "60"))  # seconds, whole run
# A run during which other processes used at least REDO_OTHER_PCT % of a core is measured again
# (at most REDO_BUDGET times in the whole run); the discarded runs are kept in results.json.
REDO_OTHER_PCT = float(os.environ.get("REDO_OTHER_PCT", "25"))
REDO_BUDGET = int(os.environ.get("REDO_BUDGET", "3" if QUICK else "6"))

SMALL_BODY = (b"Tollgate benchmark: small response body, one hundred bytes long, served by the nginx origin........\n")
assert len(SMALL_BODY) == 100, len(SMALL_BODY)
LARGE_SIZE = 64 * 1024

CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = [
    {"id": "h1-small", "title": "HTTP/1.1 keep-alive, small body (100 B)", "tool": "wrk", "port": "h1",
     "scheme": "http", "path": "/small", "size": len(SMALL_BODY), "version": "1.1"},
    {"id": "h1-64k", "title": "HTTP/1.1 keep-alive, 64 KiB body", "tool": "wrk", "port": "h1",
     "scheme": "http", "path": "/64k", "size": LARGE_SIZE, "version": "1.1"},
    {"id": "h2c-small", "title": "HTTP/2 cleartext (h2c, prior knowledge), small body", "tool": "h2load",
     "port": "h2c", "scheme": "http", "path": "/small", "size": len(SMALL_BODY), "version": "2"},
    {"id": "h2-tls-small", "title": "HTTP/2 over TLS (h2 via ALPN), small body", "tool": "h2load",
     "port": "tls", "scheme": "https", "path": "/small", "size": len(SMALL_BODY), "version": "2"},
]
SYSTEMS = ["tollgate", "nginx", "haproxy"]
PEERS = ["nginx", "haproxy"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


# ---------------------------------------------------------------- processes

STARTED = []  # every Popen we started, stopped by PID at exit


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(cmd, cwd, stdout_path, cpu):
    """Starts cmd pinned to `cpu` (taskset execs, so the PID is the server's own)."""
    out = open(stdout_path, "ab")
    proc = subprocess.Popen(pinned(cpu) + cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)
    out.close()
    STARTED.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM, timeout=5.0):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all():
    for proc in list(STARTED):
        stop(proc, timeout=3.0)


def descendants(pid):
    """pid and every process below it (nginx master + worker)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            parents.setdefault(int(rest[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return sorted(out)


def cpu_ticks(pids):
    """utime + stime (fields 14 and 15 of /proc/PID/stat), summed, in clock ticks."""
    return sum(user_sys_ticks(pids))


def user_sys_ticks(pids):
    """(utime, stime) summed over pids, in clock ticks."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()  # rest[0] is field 3
        user += int(rest[11])
        system += int(rest[12])
    return user, system


def vm_hwm_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def machine_ticks():
    """(user+nice+system, all busy incl. irq/softirq/steal) ticks over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    return v[0] + v[1] + v[2], v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def children_ticks():
    """CPU of our reaped children (the load generators), in clock ticks."""
    t = os.times()
    return round((t.children_user + t.children_system) * CLK_TCK)


QUIET_SPENT = [0.0]


def wait_quiet():
    """Waits until the machine (minus our idle origin) is quiet; returns (cores busy, seconds waited)."""
    waited = 0.0
    while True:
        b0 = machine_ticks()[1]
        time.sleep(1.0)
        busy = (machine_ticks()[1] - b0) / CLK_TCK
        if busy < QUIET_CORES or waited >= QUIET_MAX_WAIT or QUIET_SPENT[0] >= QUIET_BUDGET:
            return busy, waited
        waited += 1.0
        QUIET_SPENT[0] += 1.0


def free_ports(n):
    """n free loopback ports below the ephemeral range (so no client socket can take one between runs)."""
    try:
        low, _ = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except OSError:
        low = 32768
    chosen, held = [], []
    rng = random.Random()
    while len(chosen) < n:
        port = rng.randrange(20000, min(low, 32768) - 1)
        if port in chosen:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        held.append(s)
        chosen.append(port)
    for s in held:
        s.close()
    return chosen


def wait_port(port, proc, what, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"{what} exited with status {proc.returncode} while starting; see its log in the temp dir")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    die(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def version_of(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


# ---------------------------------------------------------------- configs

def make_tls(tmp):
    """Self-signed ECDSA P-256 certificate shared by all three proxies."""
    cert, key, both = tmp / "cert.pem", tmp / "key.pem", tmp / "cert+key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    both.write_text(cert.read_text() + key.read_text())  # HAProxy wants cert and key in one PEM
    return cert, key, both


def nginx_temp_paths(prefix):
    # Debian's nginx has absolute temp paths under /var/lib/nginx compiled in.
    return "\n".join(f"    {k}_temp_path {prefix}/tmp/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def origin_config(prefix, port):
    return f"""# Origin: the one backend every proxy forwards to. Single process, pinned to LOAD_CPU.
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{nginx_temp_paths(prefix)}
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {prefix}/html;
        location = /__status {{ stub_status; }}
    }}
}}
"""


def nginx_proxy_config(prefix, ports, origin_port, cert, key):
    return f"""# nginx as the reverse proxy: master + ONE worker, pinned to PROXY_CPU.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{nginx_temp_paths(prefix)}
    # Downstream keep-alive: nginx closes a connection (HTTP/1.1 and HTTP/2) after
    # keepalive_requests requests, 1000 by default; the others never do.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 1024;                 # idle upstream connections kept per worker
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{ports['h1']} backlog=4096;
        listen 127.0.0.1:{ports['h2c']} http2 backlog=4096;
        listen 127.0.0.1:{ports['tls']} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # 64 KiB responses: never spill to temp files on disk.
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def haproxy_config(ports, origin_port, both):
    return f"""# HAProxy as the reverse proxy: one process, ONE thread, pinned to PROXY_CPU.
global
    nbthread 1
    maxconn 8000
    tune.ssl.default-dh-param 2048
    # Follow the client's cipher order like nginx and rustls do (HAProxy defaults to its own order,
    # which picks AES-256-GCM where the others negotiate h2load's first choice, AES-128-GCM).
    ssl-default-bind-options prefer-client-ciphers

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:{ports['h1']}
    bind 127.0.0.1:{ports['h2c']} proto h2
    bind 127.0.0.1:{ports['tls']} ssl crt {both} alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin_port}
"""


def tollgate_config(ports, origin_port, cert, key):
    return f"""# Tollgate as the reverse proxy: ONE runtime worker thread, pinned to PROXY_CPU.
[runtime]
worker_threads = 1
shutdown_grace = "1s"
{os.environ.get("TOLLGATE_RUNTIME_EXTRA", "")}

[log]
level = "warn"
access_log = false            # nginx and HAProxy log nothing either

[[listener]]
name = "cleartext"            # HTTP/1.1 and h2c (prior knowledge) on one port
bind = "127.0.0.1:{ports['h1']}"

[[listener]]
name = "tls"                  # h2 and http/1.1 by ALPN
bind = "127.0.0.1:{ports['tls']}"
tls = {{ cert = "{cert}", key = "{key}" }}

[[upstream]]
name = "origin"
protocol = "http1"
targets = ["127.0.0.1:{origin_port}"]
max_idle_per_target = 1024    # as nginx `keepalive 1024`

[[route]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "origin"
# The forwarding fields nginx and HAProxy add here, no more (the default adds five and X-Request-Id).
forward_headers = ["x-forwarded-for", "x-forwarded-proto"]
request_id_header = false
"""


# ---------------------------------------------------------------- servers

class Origin:
    def __init__(self, tmp):
        self.prefix = tmp / "origin"
        (self.prefix / "html").mkdir(parents=True)
        (self.prefix / "tmp").mkdir()
        (self.prefix / "html" / "small").write_bytes(SMALL_BODY)
        block = bytes(range(256)) * (LARGE_SIZE // 256)
        (self.prefix / "html" / "64k").write_bytes(block)
        self.port = free_ports(1)[0]
        conf = self.prefix / "nginx.conf"
        conf.write_text(origin_config(self.prefix, self.port))
        self.proc = spawn(["nginx", "-p", str(self.prefix), "-c", str(conf)], self.prefix,
                          self.prefix / "stdout.log", LOAD_CPU)
        wait_port(self.port, self.proc, "origin nginx")

    def status(self):
        """(accepted connections, requests) from stub_status, minus the status request itself."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__status", timeout=5) as r:
            text = r.read().decode()
        accepts, _handled, requests = map(int, text.splitlines()[2].split())
        return accepts, requests


class Proxy:
    """One proxy under test; `start()` gives a fresh process for every measured run."""

    def __init__(self, name, tmp, origin_port, tls, tollgate_bin):
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        cert, key, both = tls
        if name == "tollgate":
            p = free_ports(2)
            self.ports = {"h1": p[0], "h2c": p[0], "tls": p[1]}
            conf = self.dir / "tollgate.toml"
            conf.write_text(tollgate_config(self.ports, origin_port, cert, key))
            self.cmd = [str(tollgate_bin), "--config", str(conf), "run"]
        elif name == "nginx":
            p = free_ports(3)
            self.ports = {"h1": p[0], "h2c": p[1], "tls": p[2]}
            (self.dir / "tmp").mkdir()
            conf = self.dir / "nginx.conf"
            conf.write_text(nginx_proxy_config(self.dir, self.ports, origin_port, cert, key))
            self.cmd = ["nginx", "-p", str(self.dir), "-c", str(conf)]
        elif name == "haproxy":
            p = free_ports(3)
            self.ports = {"h1": p[0], "h2c": p[1], "tls": p[2]}
            conf = self.dir / "haproxy.cfg"
            conf.write_text(haproxy_config(self.ports, origin_port, both))
            self.cmd = ["haproxy", "-f", str(conf), "-db"]
        self.proc = None

    def start(self):
        self.proc = spawn(self.cmd, self.dir, self.dir / "output.log", PROXY_CPU)
        for port in sorted(set(self.ports.values())):
            wait_port(port, self.proc, self.name)
        # nginx: wait for the worker so CPU and RSS cover master + worker.
        deadline = time.time() + 5
        while self.name == "nginx" and len(descendants(self.proc.pid)) < 2:
            if time.time() > deadline:
                die("nginx worker did not start")
            time.sleep(0.02)

    def pids(self):
        return descendants(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is not None:
                die(f"{self.name} died during the run (status {self.proc.returncode}); see {self.dir}/output.log")
            stop(self.proc)
            self.proc = None

    def url(self, scenario):
        return f"{scenario['scheme']}://127.0.0.1:{self.ports[scenario['port']]}{scenario['path']}"


# ---------------------------------------------------------------- load generators

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def run_wrk(url, seconds):
    cmd = pinned(LOAD_CPU) + ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]
    out = run(cmd).stdout
    res = {"tool_output": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    res["completed"] = int(m.group(1))
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(map(int, m.groups()))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    res["protocol"] = "http/1.1"
    return res


def percentile(sorted_values, pct):
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-pct * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def run_h2load(url, requests, log_path=None):
    cmd = pinned(LOAD_CPU) + ["h2load", "-t1", f"-c{CONNECTIONS}", f"-m{H2_STREAMS}", f"-n{requests}"]
    if log_path:
        cmd.append(f"--log-file={log_path}")
    out = run(cmd + [url]).stdout
    res = {"tool_output": out}
    m = re.search(r"finished in ([\d.]+)(s|ms), ([\d.]+) req/s", out)
    res["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    total, _started, done, succeeded, failed, errored, timeout = map(int, m.groups())
    res["completed"] = succeeded
    m = re.search(r"status codes: (\d+) 2xx", out)
    ok = int(m.group(1)) if m else 0
    res["errors"] = failed + errored + timeout + (total - done) + (succeeded - ok)
    m = re.search(r"Application protocol: (\S+)", out)
    res["protocol"] = m.group(1) if m else "?"
    m = re.search(r"TLS Protocol: (\S+)\s+Cipher: (\S+)", out)
    if m:
        res["tls"] = f"{m.group(1)} {m.group(2)}"
    if log_path:
        lat = []
        with open(log_path) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3:
                    lat.append(int(cols[2]) / 1000.0)  # µs -> ms
        lat.sort()
        res["p50_ms"] = percentile(lat, 50)
        res["p99_ms"] = percentile(lat, 99)
        res["latency_samples"] = len(lat)
        os.unlink(log_path)
    return res


# ---------------------------------------------------------------- the run

def check_responses(proxy, tmp):
    """Every proxy must answer every scenario with 200, the right body size and protocol."""
    for sc in SCENARIOS:
        url = proxy.url(sc)
        flags = ["--http1.1"] if sc["version"] == "1.1" else (
            ["--http2-prior-knowledge"] if sc["scheme"] == "http" else ["--http2"])
        out = run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{http_version}"]
                  + flags + [url]).stdout.split()
        expect = ["200", str(sc["size"]), sc["version"]]
        if out != expect:
            die(f"{proxy.name} {sc['id']} {url}: got {out}, want {expect}")


def measure(proxy, scenario, origin, tmp):
    quiet_busy, quiet_waited = wait_quiet()
    proxy.start()
    url = proxy.url(scenario)
    try:
        if scenario["tool"] == "wrk":
            run_wrk(url, WARMUP_WRK_SECONDS)
        else:
            run_h2load(url, WARMUP_H2LOAD_REQUESTS)
        pids = proxy.pids()
        up_before = origin.status()
        o0, g0, m0, w0 = cpu_ticks([origin.proc.pid]), children_ticks(), machine_ticks()[0], time.time()
        u0, s0 = user_sys_ticks(pids)
        if scenario["tool"] == "wrk":
            res = run_wrk(url, WRK_SECONDS)
        else:
            res = run_h2load(url, H2LOAD_REQUESTS, tmp / "h2load.log")
        u1, s1 = user_sys_ticks(pids)
        t0, t1 = u0 + s0, u1 + s1
        o1, g1, m1, w1 = cpu_ticks([origin.proc.pid]), children_ticks(), machine_ticks()[0], time.time()
        up_after = origin.status()
        res["rss_kb"] = vm_hwm_kb(pids)
        res["processes"] = len(pids)
    finally:
        proxy.stop()
    res["cpu_ticks"] = t1 - t0
    res["origin_ticks"] = o1 - o0
    res["loadgen_ticks"] = g1 - g0
    # user+nice+system of the whole machine minus proxy, origin and load generator, as % of one core.
    res["other_cpu_pct"] = max(0.0, ((m1 - m0) - (t1 - t0) - (o1 - o0) - (g1 - g0)) / CLK_TCK / (w1 - w0) * 100)
    res["quiet_before_cores"] = quiet_busy
    res["quiet_waited_s"] = quiet_waited
    res["cpu_us_per_req"] = (t1 - t0) * 1e6 / CLK_TCK / max(res["completed"], 1)
    res["user_us_per_req"] = (u1 - u0) * 1e6 / CLK_TCK / max(res["completed"], 1)
    res["upstream_conns"] = up_after[0] - up_before[0] - 1  # minus the second status request's own
    res["upstream_reqs"] = up_after[1] - up_before[1] - 1
    return res


def build_tollgate(tmp):
    if os.environ.get("TOLLGATE_BIN"):
        src = Path(os.environ["TOLLGATE_BIN"]).resolve()
        log(f"using TOLLGATE_BIN={src} (no build)")
    else:
        log("cargo build --release (may wait for the build-directory lock) ...")
        subprocess.run(["cargo", "build", "--release", "--bin", "tollgate"], cwd=REPO, check=True)
        src = REPO / "target" / "release" / "tollgate"
    # A private copy: concurrent builds in the repo must not swap the binary mid-run.
    dst = tmp / "tollgate-bin"
    shutil.copy2(src, dst)
    TOLLGATE_SHA[0] = hashlib.sha256(dst.read_bytes()).hexdigest()[:12]
    return dst


TOLLGATE_SHA = ["?"]


def git_revision():
    try:
        rev = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "bridges"],
                    cwd=REPO).stdout.strip()
        return rev + (" + uncommitted changes in src/" if dirty else "")
    except (subprocess.CalledProcessError, OSError):
        return "?"


def machine_facts():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{os.cpu_count()} x {model}",
        "kernel": platform.release(),
        "nginx": version_of(["nginx", "-v"]),
        "haproxy": version_of(["haproxy", "-v"]),
        "wrk": version_of(["wrk", "--version"]),
        "h2load": version_of(["h2load", "--version"]),
        "openssl": version_of(["openssl", "version"]),
        "rustc": version_of(["rustc", "--version"]),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def setup(tmp):
    for tool in ("nginx", "haproxy", "wrk", "h2load", "taskset", "openssl", "curl"):
        if not shutil.which(tool):
            die(f"`{tool}` not found (Debian: apt-get install -y nginx haproxy wrk nghttp2-client util-linux "
                f"openssl curl)")
    if os.cpu_count() < 2:
        log("warning: fewer than 2 cores; proxy and load share a core")
    tollgate_bin = build_tollgate(tmp)
    tls = make_tls(tmp)
    origin = Origin(tmp)
    log(f"origin nginx on 127.0.0.1:{origin.port} (cpu {LOAD_CPU})")
    proxies = {name: Proxy(name, tmp, origin.port, tls, tollgate_bin) for name in SYSTEMS}
    return origin, proxies, tls


def bench(args, tmp):
    origin, proxies, _tls = setup(tmp)
    for p in proxies.values():
        p.start()
        check_responses(p, tmp)
        p.stop()
        log(f"{p.name}: ports {p.ports}, responses ok")

    facts = machine_facts()
    facts["tollgate"] = f"{git_revision()}, binary sha256 {TOLLGATE_SHA[0]}…"
    runs, discarded = [], []
    t_start = time.time()
    for rnd in range(ROUNDS):
        order = SYSTEMS[rnd % 3:] + SYSTEMS[:rnd % 3]
        for sc in SCENARIOS:
            for name in order:
                while True:
                    res = measure(proxies[name], sc, origin, tmp)
                    if res["other_cpu_pct"] < REDO_OTHER_PCT or len(discarded) >= REDO_BUDGET:
                        break
                    res.pop("tool_output")
                    res.update({"round": rnd + 1, "scenario": sc["id"], "system": name})
                    discarded.append(res)
                    log(f"round {rnd + 1}/{ROUNDS} {sc['id']:<13} {name:<8} other processes used "
                        f"{res['other_cpu_pct']:.0f}% of a core during the run: measuring again "
                        f"({len(discarded)}/{REDO_BUDGET} re-runs used)")
                out = res.pop("tool_output")
                if res["errors"]:
                    log(f"warning: {name} {sc['id']} round {rnd + 1}: {res['errors']} errors\n{out}")
                res.update({"round": rnd + 1, "scenario": sc["id"], "system": name, "order": order.index(name) + 1})
                runs.append(res)
                log(f"round {rnd + 1}/{ROUNDS} {sc['id']:<13} {name:<8} {res['rps']:>9.0f} req/s  "
                    f"p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
                    f"cpu {res['cpu_us_per_req']:.1f} us/req  rss {res['rss_kb'] / 1024:.1f} MiB  "
                    f"upstream conns {res['upstream_conns']}  other cpu {res['other_cpu_pct']:.0f}%"
                    f"{' (waited ' + str(int(res['quiet_waited_s'])) + ' s for quiet)' if res['quiet_waited_s'] else ''}"
                    f"  [{res['protocol']}{' ' + res['tls'] if 'tls' in res else ''}]")
    facts["duration_s"] = round(time.time() - t_start)
    facts["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    facts["settings"] = {k: globals()[k] for k in SETTINGS}
    facts["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    stop(origin.proc)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw_dir = OUT / stamp
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "results.json").write_text(json.dumps({"facts": facts, "runs": runs, "discarded": discarded},
                                                     indent=1))
    for name, p in proxies.items():
        for f in p.dir.iterdir():
            if f.suffix in (".toml", ".conf", ".cfg"):
                shutil.copy2(f, raw_dir / f"{name}-{f.name}")
    shutil.copy2(origin.prefix / "nginx.conf", raw_dir / "origin-nginx.conf")

    target = Path(args.out) if args.out else (OUT / "RESULTS.quick.md" if QUICK else BENCH / "RESULTS.md")
    facts["discarded"] = len(discarded)
    write_report(target, report(facts, runs, raw_dir))
    log(f"wrote {target} (raw data and configs in {raw_dir})")


# ---------------------------------------------------------------- report

def med_spread(values, fmt):
    values = sorted(values)
    return f"{fmt(statistics.median(values))} ({fmt(values[0])}–{fmt(values[-1])})"


def f_rps(v):
    return f"{v:,.0f}"


def f_ms(v):
    return f"{v:.2f}"


def f_cpu(v):
    return f"{v:.1f}"


def f_mib(v):
    return f"{v / 1024:.1f}"


def f_ratio(v):
    return f"{v:.2f}"


# Module settings a report depends on; stored in results.json so --report-from reproduces the text.
SETTINGS = ["QUICK", "ROUNDS", "DEFAULT_ROUNDS", "PROXY_CPU", "LOAD_CPU", "NICE", "WRK_SECONDS", "H2LOAD_REQUESTS",
            "CONNECTIONS", "H2_STREAMS", "WARMUP_WRK_SECONDS", "WARMUP_H2LOAD_REQUESTS", "QUIET_CORES",
            "QUIET_MAX_WAIT", "QUIET_BUDGET", "REDO_OTHER_PCT", "REDO_BUDGET", "CLK_TCK"]


def write_report(target, text):
    """Writes the report, keeping the sections other scripts put in the same file (bench/ws.py, bench/grpc.py,
    the pipeline summary): every `<!-- begin NAME -->` ... `<!-- end NAME -->` block of the old file, in order."""
    kept = []
    if target.exists():
        old = target.read_text()
        for m in re.finditer(r"^<!-- begin (\S+) -->\n.*?^<!-- end \1 -->\n", old, re.S | re.M):
            kept.append(m.group(0))
    target.write_text(text.rstrip("\n") + "\n" + "".join("\n" + k for k in kept))


def report_from(path, out):
    """Rewrites the Markdown report from a run's results.json (e.g. after improving the report code)."""
    path = Path(path)
    data = json.loads(path.read_text())
    facts = data["facts"]
    globals().update(facts.get("settings", {}))
    facts.setdefault("discarded", len(data.get("discarded", [])))
    if "date" not in facts:  # older files: the directory is named after the time of the run
        facts["date"] = datetime.datetime.strptime(path.parent.name, "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M")
    target = Path(out) if out else (OUT / "RESULTS.quick.md" if QUICK else BENCH / "RESULTS.md")
    write_report(target, report(facts, data["runs"], path.parent))
    log(f"wrote {target} from {path}")


def load_side_us(run):
    """CPU µs per request of the origin and the load generator (core 1, which they share)."""
    return (run["origin_ticks"] + run["loadgen_ticks"]) * 1e6 / CLK_TCK / max(run["completed"], 1)


def report(facts, runs, raw_dir):
    cmd = ("QUICK=1 " if QUICK else "") + ("" if ROUNDS == DEFAULT_ROUNDS else f"ROUNDS={ROUNDS} ") + "bench/run.sh"
    by = {}
    for r in runs:
        by.setdefault((r["scenario"], r["system"]), []).append(r)

    L = []
    L.append("# Tollgate vs nginx vs HAProxy — reverse-proxy benchmark\n")
    L.append(f"Generated by `bench/bench.py` from the run of {facts['date']}"
             f"{' (QUICK smoke run: numbers are not for comparison)' if QUICK else ''}.\n")
    L.append("**Reproduce** (from the repository root; builds Tollgate with `cargo build --release`, "
             "needs Debian's `nginx haproxy wrk nghttp2-client curl openssl`):\n")
    L.append(f"```sh\n{cmd}\n```\n")
    L.append(f"`QUICK=1 bench/run.sh` is a ~3 s / 20k-request smoke run written to `bench/out/RESULTS.quick.md`; "
             f"`ROUNDS=N` changes the number of rounds; `bench/run.sh --profile` records a perf profile "
             f"(see `bench/PROFILE.md`). Raw per-run data and the exact configs of this run are written to "
             f"`bench/out/<timestamp>/` (git-ignored). WebSocket and gRPC have their own harnesses, "
             f"`bench/run.sh ws` and `bench/run.sh grpc` (bench/ws.py, bench/grpc.py, peers in bench/loadgen), which "
             f"write their sections at the end of this file; this script keeps them when it rewrites the file.\n")

    L.append("## Setup\n")
    L.append(f"- Machine: {facts['cpu']}, Linux {facts['kernel']}; load average at start "
             f"{' '.join(facts['loadavg_start'])}, at end {' '.join(facts['loadavg_end'])}; "
             f"measured part took {facts['duration_s']} s.")
    L.append(f"- Tollgate {facts['tollgate']} (release profile: fat LTO, 1 codegen unit), {facts['rustc']}; "
             f"{facts['nginx']}; {facts['haproxy']}; {facts['wrk']}; {facts['h2load']}; {facts['openssl']}.")
    L.append(f"- **One worker each**: Tollgate `[runtime] worker_threads = 1` (plus the idle main thread), "
             f"nginx `worker_processes 1` (master + 1 worker), HAProxy `nbthread 1`.")
    L.append(f"- **CPU pinning**: the machine has 2 cores. Every proxy runs on core {PROXY_CPU} "
             f"(`taskset -c {PROXY_CPU}`), alone; the origin (a separate single-process nginx) and the load "
             f"generator share core {LOAD_CPU}. The proxy under test thus has a core to itself and its CPU "
             f"time is not inflated by contention with the load, while the origin + client core is the same "
             f"for all three proxies. Throughput is therefore bounded by core {LOAD_CPU} as well as by the "
             f"proxy; CPU µs per request is the fairer efficiency figure.")
    if NICE != "0":
        L.append(f"- **Priority**: proxy, origin and load generator run at `nice -n {NICE}` so that other "
                 f"engineers' builds on this machine take less CPU from them (`NICE=0` turns this off).")
    L.append("- **Origin**: nginx serving `/small` (100 bytes) and `/64k` (65536 bytes) from static files "
             "(`sendfile`, `open_file_cache`), `keepalive_requests 100000000`, access log off.")
    L.append("- **Upstream keep-alive** on every proxy: nginx `keepalive 1024; proxy_http_version 1.1; "
             "proxy_set_header Connection \"\";` (1024 rather than 64 so that h2load's 500 concurrent streams "
             "don't make nginx close and reopen upstream connections), HAProxy `http-reuse always`, "
             "Tollgate's pooled HTTP/1.1 client with `max_idle_per_target = 1024`. The *upstream conns* column "
             "counts TCP connections the origin accepted during the measured run (from its `stub_status`): "
             "≈0 means every request reused a warm connection. Up to ~50 after a wrk warm-up is expected: wrk "
             "drops its connections with requests in flight when the warm-up ends, and a proxy must close the "
             "upstream connections those requests were using.")
    L.append("- **Downstream**: nginx `keepalive_requests 100000000` (its default of 1000 would close client "
             "connections mid-run); HAProxy and Tollgate don't limit requests per connection.")
    L.append("- **Logging off everywhere**: Tollgate `[log] access_log = false`, `level = \"warn\"`; nginx "
             "`access_log off`; HAProxy has no `log` lines.")
    L.append("- **Headers**: every proxy adds `X-Forwarded-For` and `X-Forwarded-Proto` (a typical proxy "
             "config): nginx `proxy_set_header`, HAProxy `option forwardfor` and `set-header`, Tollgate "
             "`forward_headers = [\"x-forwarded-for\", \"x-forwarded-proto\"]` and `request_id_header = false` "
             "on its route. Tollgate's default (also `X-Forwarded-Host`, `Forwarded`, `Via` and an `X-Request-Id` "
             "both ways) costs about 7 % more instructions per HTTP/1.1 request (`bench/PROFILE.md`).")
    L.append("- **TLS**: one self-signed ECDSA P-256 certificate (openssl) for all three; nginx and HAProxy "
             "use OpenSSL, Tollgate rustls (ring). Negotiated: " + ", ".join(sorted({
                 f"{r['system']} {r['tls']}" for r in runs if r.get("tls")})) + ".")
    L.append(f"- **Load**: `wrk -t1 -c{CONNECTIONS} -d{WRK_SECONDS}s --latency` for HTTP/1.1; "
             f"`h2load -t1 -c{CONNECTIONS} -m{H2_STREAMS} -n{H2LOAD_REQUESTS}` for h2c (`http://`, prior "
             f"knowledge) and h2 (`https://`, ALPN). Tollgate serves HTTP/1.1 and h2c on one cleartext port; "
             f"nginx 1.22 and HAProxy need a separate `http2` / `proto h2` port for h2c.")
    L.append(f"- **Method**: {ROUNDS} rounds; in each round every scenario runs every proxy, the order of the "
             f"proxies rotating from round to round (tollgate→nginx→haproxy, nginx→haproxy→tollgate, …). Every "
             f"measured run gets a freshly started proxy and a warm-up ({WARMUP_WRK_SECONDS} s of wrk or "
             f"{WARMUP_H2LOAD_REQUESTS} h2load requests) that is not measured. Cells are **median (min–max)** "
             f"over the rounds.")
    L.append("- **Metrics**: req/s as reported by wrk / h2load. p50/p99 latency: wrk's `--latency` "
             "distribution; for h2load, which prints only min/max/mean/sd, exact nearest-rank percentiles over "
             "every request of its `--log-file` (time from request start to end of response, per stream). "
             f"CPU µs/req: utime+stime from `/proc/PID/stat` (fields 14+15, in clock ticks of 1/{CLK_TCK} s) "
             "summed over the proxy's processes (nginx master + worker), read right before and after the "
             "measured run, divided by completed requests; *of which user* is the utime part, the rest is kernel time "
             "(TCP/IP over loopback, including delivery to the receiving socket and waking its reader, and the "
             "system calls). *Load side*: the same for the origin and the load generator together, the two "
             "processes on core 1; that core runs at or near 100 % in the small-body scenarios, so there "
             "req/s follows the load side's CPU per request as much as the proxy's (behind Tollgate and HAProxy it "
             "does the same work for HTTP/1.1, see `bench/PROFILE.md`, stop 25). Peak RSS: `VmHWM` from "
             "`/proc/PID/status`, summed "
             "over the proxy's processes (nginx master + worker, so shared pages count twice for nginx), after "
             "the measured run.")
    L.append("- **Ratios** are tollgate ÷ peer, computed per round (same round, adjacent in time) and then "
             "summarised as median (min–max). req/s: >1 means Tollgate is faster; latency, CPU and RSS: <1 "
             "means Tollgate is better.")
    noisy = [r for r in runs if r["other_cpu_pct"] >= 10]
    waited = sum(r["quiet_waited_s"] for r in runs)
    L.append("- **Noise**: this is a shared 2-core VM and other engineers were building and testing in the same "
             "repository during the run, so absolute numbers, especially req/s and p99, carry noise; the min–max "
             "spread shows how much. CPU per request is the steadier figure. To limit the damage, before each "
             f"measured run the harness waits (at most {QUIET_MAX_WAIT:.0f} s per run, {QUIET_BUDGET:.0f} s in "
             f"all) until the machine uses less than {QUIET_CORES:.2f} of a core; it waited {waited:.0f} s in "
             "total. The per-run table's *other CPU %* column is the user+system time of everything else on the "
             "machine during the measured run (from `/proc/stat`, minus proxy, origin and load generator), in % "
             f"of one core: {len(noisy)} of {len(runs)} reported runs had ≥10 %. A run during which it reached "
             f"{REDO_OTHER_PCT:.0f} % was measured again (at most {REDO_BUDGET} re-runs per invocation; "
             f"{facts['discarded']} used, the discarded runs are in `results.json`).\n")

    verdicts = []
    L.append("## Results\n")
    for sc in SCENARIOS:
        L.append(f"### {sc['id']}: {sc['title']}\n")
        has_user = all("user_us_per_req" in r for r in runs)
        has_load = all("origin_ticks" in r and "loadgen_ticks" in r for r in runs)
        L.append("| proxy | req/s | p50 ms | p99 ms | CPU µs/req |" + (" of which user |" if has_user else "")
                 + (" load side µs/req |" if has_load else "") + " peak RSS MiB | upstream conns |")
        L.append("|---|---:|---:|---:|---:|" + ("---:|" if has_user else "") + ("---:|" if has_load else "")
                 + "---:|---:|")
        med = {}
        for name in SYSTEMS:
            rs = by[(sc["id"], name)]
            med[name] = {k: statistics.median(r[k] for r in rs)
                         for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_kb")}
            errs = sum(r["errors"] for r in rs)
            L.append(f"| {name}{f' ({errs} errors)' if errs else ''} | {med_spread([r['rps'] for r in rs], f_rps)} "
                     f"| {med_spread([r['p50_ms'] for r in rs], f_ms)} "
                     f"| {med_spread([r['p99_ms'] for r in rs], f_ms)} "
                     f"| {med_spread([r['cpu_us_per_req'] for r in rs], f_cpu)} "
                     + (f"| {med_spread([r['user_us_per_req'] for r in rs], f_cpu)} " if has_user else "")
                     + (f"| {med_spread([load_side_us(r) for r in rs], f_cpu)} " if has_load else "")
                     + f"| {med_spread([r['rss_kb'] for r in rs], f_mib)} "
                     f"| {med_spread([r['upstream_conns'] for r in rs], lambda v: f'{v:.0f}')} |")
        L.append("")
        L.append("| tollgate ÷ | req/s | p50 | p99 | CPU/req | peak RSS |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for peer in PEERS:
            cells = []
            for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_kb"):
                ratios = []
                for rnd in range(1, ROUNDS + 1):
                    t = [r[k] for r in by[(sc["id"], "tollgate")] if r["round"] == rnd]
                    p = [r[k] for r in by[(sc["id"], peer)] if r["round"] == rnd]
                    if t and p and p[0]:
                        ratios.append(t[0] / p[0])
                cells.append(med_spread(ratios, f_ratio))
            L.append(f"| {peer} | " + " | ".join(cells) + " |")
        L.append("")
        best_rps_peer = max(PEERS, key=lambda n: med[n]["rps"])
        best_cpu_peer = min(PEERS, key=lambda n: med[n]["cpu_us_per_req"])
        rps_ok = med["tollgate"]["rps"] >= med[best_rps_peer]["rps"]
        cpu_ok = med["tollgate"]["cpu_us_per_req"] <= med[best_cpu_peer]["cpu_us_per_req"]
        # Rounds in which Tollgate met the target against the better peer of that same round.
        rps_rounds = cpu_rounds = n_rounds = 0
        for rnd in range(1, ROUNDS + 1):
            r = {n: [x for x in by[(sc["id"], n)] if x["round"] == rnd] for n in SYSTEMS}
            if not all(r.values()):
                continue
            n_rounds += 1
            rps_rounds += r["tollgate"][0]["rps"] >= max(r[p][0]["rps"] for p in PEERS)
            cpu_rounds += r["tollgate"][0]["cpu_us_per_req"] <= min(r[p][0]["cpu_us_per_req"] for p in PEERS)
        verdicts.append((sc, best_rps_peer, best_cpu_peer, med, rps_ok, cpu_ok,
                         f"{rps_rounds}/{n_rounds}", f"{cpu_rounds}/{n_rounds}"))

    L.append("## Against the issue's targets\n")
    L.append("Target: in each scenario, Tollgate's throughput at least, and its CPU per request at most, the "
             "better of nginx and HAProxy. *met* / *not met* compares medians; *rounds* counts the rounds in which "
             "Tollgate met the target against the better peer of that same round, which shows whether a verdict "
             "holds up against the noise.\n")
    L.append("| scenario | Tollgate req/s | best peer req/s | throughput | Tollgate CPU µs/req | best peer CPU µs/req "
             "| CPU/req |")
    L.append("|---|---:|---:|:---:|---:|---:|:---:|")
    for sc, brp, bcp, med, rps_ok, cpu_ok, rps_rounds, cpu_rounds in verdicts:
        L.append(f"| {sc['id']} | {f_rps(med['tollgate']['rps'])} | {f_rps(med[brp]['rps'])} ({brp}) "
                 f"| {'met' if rps_ok else '**not met**'} ({med['tollgate']['rps'] / med[brp]['rps']:.2f}×; "
                 f"rounds {rps_rounds}) "
                 f"| {f_cpu(med['tollgate']['cpu_us_per_req'])} | {f_cpu(med[bcp]['cpu_us_per_req'])} ({bcp}) "
                 f"| {'met' if cpu_ok else '**not met**'} "
                 f"({med['tollgate']['cpu_us_per_req'] / med[bcp]['cpu_us_per_req']:.2f}×; rounds {cpu_rounds}) |")
    L.append("")
    L.append("Reference CPU µs/req measured earlier on this kind of machine (from the issue): HTTP/1.1 — nginx "
             "24.8, HAProxy 27.2; h2c — HAProxy 24.9, nginx 41.6; h2 TLS — HAProxy 31.5, nginx 36.1.\n")

    L.append("## Per-run data\n")
    L.append(f"Raw data: `bench/out/{Path(raw_dir).name}/results.json` on the machine that ran it (git-ignored); "
             "`python3 bench/bench.py --report-from bench/out/<timestamp>/results.json` rewrites this file from "
             "such a file. The *order* is the proxy's position in its round.\n")
    L.append("| round | scenario | proxy (order in round) | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB "
             "| completed | errors | upstream conns | other CPU % | protocol |")
    L.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        L.append(f"| {r['round']} | {r['scenario']} | {r['system']} ({r['order']}) | {f_rps(r['rps'])} "
                 f"| {f_ms(r['p50_ms'])} | {f_ms(r['p99_ms'])} | {f_cpu(r['cpu_us_per_req'])} "
                 f"| {f_mib(r['rss_kb'])} | {r['completed']:,} | {r['errors']} | {r['upstream_conns']} "
                 f"| {r['other_cpu_pct']:.0f} | {r['protocol']} |")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- profile

def profile(args, tmp):
    """perf profile of Tollgate under the h1-small load (PROFILE_SCENARIO=h2c-small etc. for another;
    PROFILE_PROXY=nginx or haproxy profiles that proxy instead, to compare where the kernel's share
    goes), raw reports into bench/out/profile/ (bench/out/profile-SCENARIO/ for another scenario,
    -PROXY appended for a peer), then a system-call census of all three proxies (h1-small and h2c-small;
    PROFILE_CENSUS=0 skips it)."""
    if not shutil.which("perf"):
        die("perf not found (Debian: apt-get install -y linux-perf)")
    seconds = int(os.environ.get("PROFILE_SECONDS", "8"))
    origin, proxies, _tls = setup(tmp)
    who = os.environ.get("PROFILE_PROXY", "tollgate")
    tg = proxies.get(who) or die(f"no proxy {who} (tollgate, nginx, haproxy)")
    tg.start()
    check_responses(tg, tmp)
    sid = os.environ.get("PROFILE_SCENARIO", "h1-small")
    sc = next((x for x in SCENARIOS if x["id"] == sid), None) or die(f"no scenario {sid}")
    url = tg.url(sc)
    out_dir = OUT / ("profile" if sid == "h1-small" else f"profile-{sid}")
    if who != "tollgate":
        out_dir = out_dir.with_name(f"{out_dir.name}-{who}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = tmp / "perf.data"
    if sc["tool"] == "wrk":
        run_wrk(url, WARMUP_WRK_SECONDS)
        load_cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds + 3}s", "--latency", url]
    else:
        run_h2load(url, WARMUP_H2LOAD_REQUESTS)
        load_cmd = ["h2load", "-t1", f"-c{CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{seconds + 3}", url]
    wrk = subprocess.Popen(pinned(LOAD_CPU) + load_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    STARTED.append(wrk)
    time.sleep(1)
    # Rust release builds have no frame pointers: unwind with DWARF (Cargo's release profile has debug = 1).
    # cpu-clock: hardware counters are not available in this VM.
    perf_cmd = pinned(LOAD_CPU) + ["perf", "record", "-e", "cpu-clock", "-F", "1999",
                "--call-graph", "dwarf,16384", "-p", ",".join(map(str, tg.pids())), "-o", str(data), "--", "sleep", str(seconds)]
    log(" ".join(perf_cmd[perf_cmd.index("perf"):]))
    subprocess.run(perf_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrk_out, _ = wrk.communicate()
    STARTED.remove(wrk)
    tg.stop()
    (out_dir / "load.txt").write_text(wrk_out)
    if os.environ.get("PROFILE_CENSUS", "1") != "0":
        (out_dir / "syscalls.txt").write_text(syscall_census(proxies, origin))
    stop(origin.proc)
    reports = {
        "report-head.txt": ["--no-children"],
        "flat-symbols.txt": ["--no-children", "--sort", "dso,symbol", "-g", "none"],
        "inclusive.txt": ["--children", "--sort", "symbol", "-g", "none", "--percent-limit", "2"],
        "by-dso.txt": ["--no-children", "--sort", "dso", "-g", "none"],
    }
    for fname, extra in reports.items():
        p = subprocess.run(["perf", "report", "-i", str(data), "--stdio"] + extra,
                           capture_output=True, text=True)
        text = p.stdout
        if fname == "report-head.txt":
            text = "\n".join(text.splitlines()[:80]) + "\n"
        (out_dir / fname).write_text(text)
    (out_dir / "buckets.txt").write_text(profile_buckets((out_dir / "flat-symbols.txt").read_text()))
    log(f"profile reports in {out_dir} ({', '.join(reports)}, buckets.txt); summarise them in bench/PROFILE.md")


SYSCALLS = ["writev", "write", "sendto", "sendmsg", "recvfrom", "read", "readv", "recvmsg",
            "epoll_wait", "epoll_ctl", "futex"]


def syscall_census(proxies, origin, seconds=3):
    """System calls per request of each proxy under h1-small and h2c-small load (perf syscall tracepoints)."""
    events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in SYSCALLS]
    cols = ["user µs", "sys µs", "all"] + SYSCALLS
    lines = [f"per proxied request: CPU (utime, stime from /proc) and system calls ({seconds} s of perf stat "
             f"-e syscalls:sys_enter_* -p PIDS under load; requests counted at the origin; the tracepoints add "
             f"some sys time)", "",
             f"{'scenario':<10} {'proxy':<9} " + " ".join(f"{c:>10}" for c in cols)]
    for sc in (SCENARIOS[0], SCENARIOS[2]):
        for name in SYSTEMS:
            proxy = proxies[name]
            proxy.start()
            url = proxy.url(sc)
            if sc["tool"] == "wrk":
                run_wrk(url, WARMUP_WRK_SECONDS)
                load_cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds + 2}s", url]
            else:
                run_h2load(url, WARMUP_H2LOAD_REQUESTS)
                load_cmd = ["h2load", "-t1", f"-c{CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{seconds + 2}", url]
            load = subprocess.Popen(pinned(LOAD_CPU) + load_cmd, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            STARTED.append(load)
            time.sleep(1)
            r0 = origin.status()[1]
            u0, s0 = user_sys_ticks(proxy.pids())
            p = subprocess.run(pinned(LOAD_CPU) + ["perf", "stat", "-x", ",", "-e", ",".join(events), "-p",
                               ",".join(map(str, proxy.pids())), "--", "sleep", str(seconds)],
                               capture_output=True, text=True)
            u1, s1 = user_sys_ticks(proxy.pids())
            requests = origin.status()[1] - r0 - 1
            load.wait()
            STARTED.remove(load)
            proxy.stop()
            counts = {}
            for row in p.stderr.splitlines():
                f = row.split(",")
                if len(f) > 2 and f[2] in events:
                    try:
                        counts[f[2]] = int(f[0])
                    except ValueError:
                        counts[f[2]] = 0
            per = [(u1 - u0) * 1e6 / CLK_TCK / max(requests, 1), (s1 - s0) * 1e6 / CLK_TCK / max(requests, 1)]
            per += [counts.get(e, 0) / max(requests, 1) for e in events]
            lines.append(f"{sc['id']:<10} {name:<9} " + " ".join(f"{v:>10.2f}" for v in per))
            log(f"syscalls {sc['id']} {name}: {per[2]:.2f} per request, user {per[0]:.1f} us, sys {per[1]:.1f} us "
                f"({requests} requests)")
    return "\n".join(lines) + "\n"


# Self time grouped by who spends it; first match wins.
BUCKETS = [
    ("kernel: TCP/IP, loopback delivery, syscalls, epoll", lambda d, s: d.startswith("[kernel")),
    ("vDSO clock_gettime (Instant::now / timers)", lambda d, s: d == "[vdso]"),
    ("libc memcpy/memmove", lambda d, s: "libc" in d and ("memmove" in s or "memcpy" in s)),
    ("libc malloc/free", lambda d, s: "libc" in d and re.search(r"malloc|free|_int_|tcache|consolidate", s)),
    ("libc other (syscall wrappers, pthread)", lambda d, s: "libc" in d),
    ("allocator (mimalloc)", lambda d, s: re.match(r"_?mi_|mi_", s)),
    ("HTTP/1 codec (hyper::proto::h1, httparse)", lambda d, s: "hyper::proto::h1" in s or "httparse" in s),
    ("HTTP/2 (h2, hyper::proto::h2)", lambda d, s: s.startswith("h2::") or "hyper::proto::h2" in s or "<h2::" in s),
    ("header maps (http::header)", lambda d, s: "http::header" in s),
    ("tokio mpsc / oneshot (hyper client dispatch)", lambda d, s: "tokio::sync" in s),
    ("tokio runtime, I/O driver, wakers, timers", lambda d, s: "tokio::" in s or "mio::" in s),
    ("bytes (Bytes/BytesMut refcounts)", lambda d, s: "bytes::" in s),
    ("TLS (rustls, ring)", lambda d, s: re.search(r"rustls|\bring::", s)),
    ("tollgate's own code", lambda d, s: "tollgate::" in s),
    ("hyper/hyper-util other", lambda d, s: "hyper" in s),
    ("tracing", lambda d, s: "tracing" in s),
    ("other", lambda d, s: True),
]


def profile_buckets(flat):
    totals = {name: 0.0 for name, _ in BUCKETS}
    top = {name: [] for name, _ in BUCKETS}
    for line in flat.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*(?:-\s+-\s*)?$", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        for name, match in BUCKETS:
            if match(dso, sym):
                totals[name] += pct
                top[name].append((pct, sym))
                break
    lines = ["self time by bucket (perf report --no-children --sort dso,symbol), % of Tollgate's samples", ""]
    for name, _ in sorted(BUCKETS, key=lambda b: -totals[b[0]]):
        if totals[name] < 0.05:
            continue
        lines.append(f"{totals[name]:6.2f}%  {name}")
        for pct, sym in top[name][:4]:
            lines.append(f"          {pct:5.2f}%  {sym[:110]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true", help="perf profile of Tollgate under h1-small load")
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="only rewrite the report from a earlier run's bench/out/<timestamp>/results.json")
    ap.add_argument("--out", help="where to write the results (default bench/RESULTS.md, "
                                  "or bench/out/RESULTS.quick.md with QUICK=1)")
    args = ap.parse_args()
    if ROUNDS < 1:
        die("ROUNDS must be >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))

    def cleanup():
        stop_all()
        if KEEP:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.report_from:
            report_from(args.report_from, args.out)
        elif args.profile:
            profile(args, tmp)
        else:
            bench(args, tmp)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

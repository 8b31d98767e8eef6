#!/usr/bin/env python3
"""Cost of the policy pipeline: the same Tollgate route with and without ip_filter + cors + jwt + rate_limit.

    python3 bench/pipeline.py            full run (5 rounds, wrk 10 s)  -> bench/PIPELINE.md
    QUICK=1 python3 bench/pipeline.py    smoke run (3 rounds, wrk 3 s)  -> bench/out/PIPELINE.quick.md

Environment: QUICK=1, ROUNDS=N, TOLLGATE_BIN=path (skips `cargo build --release --bin tollgate`),
PROXY_CPU=0, LOAD_CPU=1, NICE=-10 (0 turns it off), KEEP=1 (keep the temp dir with configs and logs).

Method (the same as bench/bench.py's h1-small scenario): an nginx origin (one process, a 100-byte file)
and wrk share LOAD_CPU; Tollgate (`worker_threads = 1`, no access log) has PROXY_CPU to itself. Two
configurations on separate ports: (a) `plain`, the route with no policies; (b) `pipeline`, the same route
with `policies = ["edge", "browser", "auth", "per-client"]`, and wrk sends a valid HS256 bearer token and an
allowed Origin. Each round measures (a) and (b), alternating which goes first, each on a freshly started
Tollgate after a 1 s warm-up: `wrk -t1 -c50 -d10s --latency`, and Tollgate's CPU per request from
utime+stime (/proc/PID/stat fields 14 and 15). Before each run the script waits (bounded) for a quiet
machine and records how much CPU other processes used during it.

Python 3 standard library only.
"""

import atexit, base64, datetime, hashlib, hmac, json, os, platform, random, re, resource, shutil, signal
import socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("QUICK") == "1"
ROUNDS = int(os.environ.get("ROUNDS", "3" if QUICK else "5"))
SECONDS = 3 if QUICK else 10
WARMUP = 1
CONNECTIONS = 50
PROXY_CPU = os.environ.get("PROXY_CPU", "0")
LOAD_CPU = os.environ.get("LOAD_CPU", "1")
NICE = os.environ.get("NICE", "-10" if os.geteuid() == 0 else "0")
CLK_TCK = int(subprocess.run(["getconf", "CLK_TCK"], capture_output=True, text=True).stdout.strip() or 100)
QUIET_CORES, QUIET_MAX_WAIT = 0.10, 10.0  # wait (at most 10 s) until under 0.1 core busy

BODY = b"Tollgate benchmark: small response body, one hundred bytes long, served by the nginx origin........\n"
ORIGIN_HDR = "https://app.example"
SECRET = "pipeline-bench-secret-0123456789abcdef"  # 38 bytes, enough for HS256
CONFIGS = ("plain", "pipeline")
STARTED = []


def log(msg):
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def pinned(cpu):
    return (["nice", "-n", NICE] if NICE != "0" else []) + ["taskset", "-c", cpu]


def spawn(cmd, cwd, out_path, cpu):
    """Starts cmd pinned to cpu; nice and taskset exec, so the PID is the server's own."""
    def nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    with open(out_path, "ab") as out:
        p = subprocess.Popen(pinned(cpu) + cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, preexec_fn=nofile)
    STARTED.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def free_ports(n):
    """n free loopback ports below the ephemeral range."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    chosen = []
    while len(chosen) < n:
        port = random.randrange(20000, min(low, 32768) - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in chosen:
            chosen.append(port)
    return chosen


def wait_port(port, proc, what):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"{what} exited with status {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    die(f"{what} did not listen on 127.0.0.1:{port}")


def ticks(pid):
    """(utime, stime) of pid in clock ticks: fields 14 and 15 of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()  # rest[0] is field 3
    return int(rest[11]), int(rest[12])


def machine_busy():
    """user+nice+system+irq+softirq+steal ticks over all CPUs."""
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def wait_quiet():
    waited = 0
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        if (machine_busy() - b0) / CLK_TCK < QUIET_CORES or waited >= QUIET_MAX_WAIT:
            return waited
        waited += 1


def jwt_token():
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": "bench", "iss": "https://issuer.example", "aud": "tollgate",
              "iat": int(time.time()), "exp": int(time.time()) + 10 * 365 * 86400}
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def origin_conf(prefix, port):
    temps = "\n".join(f"    {k}_temp_path {prefix}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temps}
    sendfile on;
    open_file_cache max=16 inactive=600s;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {prefix}/html;
    }}
}}
"""


def tollgate_conf(name, port, origin_port):
    """Both configurations define the same policies; only (b) attaches them to the route."""
    attach = '\npolicies = ["edge", "browser", "auth", "per-client"]' if name == "pipeline" else ""
    return f"""# ({'b' if name == 'pipeline' else 'a'}) {name}: one worker thread, pinned to PROXY_CPU
[runtime]
worker_threads = 1
shutdown_grace = "1s"

[log]
level = "warn"
access_log = false

[[listener]]
name = "cleartext"
bind = "127.0.0.1:{port}"

[[upstream]]
name = "origin"
protocol = "http1"
targets = ["127.0.0.1:{origin_port}"]
max_idle_per_target = 1024

[[route]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "origin"{attach}

[policy.edge]
kind = "ip_filter"
allow = ["127.0.0.0/8", "::1/128"]

[policy.browser]
kind = "cors"
allow_origins = ["{ORIGIN_HDR}"]

[policy.auth]
kind = "jwt"
secret = "{SECRET}"
algorithms = ["HS256"]
issuer = "https://issuer.example"
audience = "tollgate"

[policy.per-client]
kind = "rate_limit"
key = "client_ip"
rate = "1000000/s"
burst = 1000000
"""


def curl(url, headers=()):
    cmd = ["curl", "-s", "-D", "-", "-o", "/dev/null", "-w", "%{size_download}", "--http1.1", url]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    status = int(re.match(r"HTTP/\S+ (\d+)", out).group(1))
    hdrs = {k.strip().lower(): v.strip() for k, v in re.findall(r"^([\w-]+):(.*?)\r?$", out, re.M)}
    return status, hdrs, int(out.rsplit("\n", 1)[-1])


def wrk(url, seconds, headers):
    cmd = pinned(LOAD_CPU) + ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True, timeout=seconds + 30).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
    res = {"completed": int(re.search(r"(\d+) requests in", out).group(1)),
           "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "errors": 0}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(m.group(1)) * unit[m.group(2)]
    for pat in (r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", r"Non-2xx or 3xx responses: (\d+)"):
        m = re.search(pat, out)
        res["errors"] += sum(map(int, m.groups())) if m else 0
    return res, out


class Tollgate:
    def __init__(self, name, binary, tmp, origin_port, headers):
        self.name, self.headers = name, headers
        self.dir = tmp / name
        self.dir.mkdir()
        self.port = free_ports(1)[0]
        self.conf = self.dir / "tollgate.toml"
        self.conf.write_text(tollgate_conf(name, self.port, origin_port))
        self.cmd = [str(binary), "--config", str(self.conf), "run"]
        self.url = f"http://127.0.0.1:{self.port}/small"
        self.proc = None

    def start(self):
        self.proc = spawn(self.cmd, self.dir, self.dir / "output.log", PROXY_CPU)
        wait_port(self.port, self.proc, f"tollgate ({self.name})")

    def stop(self):
        if self.proc.poll() is not None:
            die(f"tollgate ({self.name}) died (status {self.proc.returncode}); see {self.dir}/output.log")
        stop(self.proc)


def check(plain, pipe):
    """(a) serves the file; (b) serves it with the policies' headers, and refuses a request without a token."""
    for t in (plain, pipe):
        t.start()
    try:
        st, _, size = curl(plain.url)
        if (st, size) != (200, len(BODY)):
            die(f"(a) plain: got {st} / {size} bytes, want 200 / {len(BODY)}")
        st, h, size = curl(pipe.url, pipe.headers)
        want = ("ratelimit-limit", "ratelimit-remaining", "access-control-allow-origin")
        if (st, size) != (200, len(BODY)) or any(k not in h for k in want):
            die(f"(b) pipeline with token: got {st} / {size} bytes, headers {sorted(h)}")
        st_none, h_none, _ = curl(pipe.url, [f"Origin: {ORIGIN_HDR}"])
        if st_none != 401:
            die(f"(b) pipeline without token: got {st_none}, want 401")
        seen = {k: h[k] for k in want}
        log(f"check: (a) 200; (b) 200 with {seen}; (b) without token {st_none} "
            f"({h_none.get('www-authenticate', '')})")
        return {"with_token": {"status": st, **seen}, "without_token": st_none,
                "www_authenticate": h_none.get("www-authenticate")}
    finally:
        for t in (plain, pipe):
            t.stop()


def measure(t):
    waited = wait_quiet()
    t.start()
    try:
        wrk(t.url, WARMUP, t.headers)
        u0, s0 = ticks(t.proc.pid)
        m0, c0, w0 = machine_busy(), os.times(), time.time()
        res, out = wrk(t.url, SECONDS, t.headers)
        u1, s1 = ticks(t.proc.pid)
        m1, c1, w1 = machine_busy(), os.times(), time.time()
    finally:
        t.stop()
    own = (u1 + s1) - (u0 + s0)
    wrk_ticks = ((c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)) * CLK_TCK
    # Everything but Tollgate and wrk, in % of one core (includes the origin nginx, ~20-30 %).
    res["others_pct"] = max(0.0, (m1 - m0 - own - wrk_ticks) / CLK_TCK / (w1 - w0) * 100)
    res["cpu_us_per_req"] = own * 1e6 / CLK_TCK / max(res["completed"], 1)
    res["quiet_waited_s"] = waited
    if res["errors"]:
        log(f"warning: {t.name}: {res['errors']} errors\n{out}")
    return res


def med(vals, fmt):
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"


def report(facts, runs, check_res, confs, out_dir):
    f_rps, f_ms, f_cpu, f_x = (lambda v: f"{v:,.0f}"), (lambda v: f"{v:.2f}"), (lambda v: f"{v:.1f}"), (lambda v: f"{v:.3f}")
    by = {c: [r for r in runs if r["config"] == c] for c in CONFIGS}
    rounds = sorted({r["round"] for r in runs})
    pair = {k: [next(r[k] for r in by["pipeline"] if r["round"] == n) / next(r[k] for r in by["plain"] if r["round"] == n)
                for n in rounds] for k in ("rps", "cpu_us_per_req", "p50_ms", "p99_ms")}
    m = {c: {k: statistics.median(r[k] for r in by[c]) for k in ("rps", "cpu_us_per_req")} for c in CONFIGS}
    rps_ratio = m["pipeline"]["rps"] / m["plain"]["rps"]
    cpu_ratio = m["pipeline"]["cpu_us_per_req"] / m["plain"]["cpu_us_per_req"]
    met = rps_ratio >= 0.85
    rounds_met = sum(x >= 0.85 for x in pair["rps"])
    L = ["# Policy pipeline cost (issue 3)", "",
         "The same Tollgate route, (a) with no policies and (b) with `ip_filter` + `cors` + `jwt` (HS256) + "
         "`rate_limit` (memory, keyed by client IP), HTTP/1.1 keep-alive, 100-byte body from an nginx origin. "
         "Target: the full pipeline costs at most 15% of throughput, i.e. (b)/(a) req/s ≥ 0.85.", "",
         f"**Result: throughput (b)/(a) = {rps_ratio:.3f} (cost {100 * (1 - rps_ratio):.1f}%) — target "
         f"{'met' if met else 'NOT met'}** (met in {rounds_met}/{len(rounds)} rounds); CPU per request "
         f"(b)/(a) = {cpu_ratio:.3f} (+{m['pipeline']['cpu_us_per_req'] - m['plain']['cpu_us_per_req']:.1f} µs).", "",
         f"Reproduce: `{facts['command']}` (about {max(1, round(facts['duration_s'] / 60))} min; "
         "`QUICK=1` for a 3 s smoke run into bench/out/). Raw data: "
         f"`bench/out/{out_dir.name}/` (git-ignored: results.json and the configs).", "",
         "## Medians (min–max) over rounds", "",
         f"{len(rounds)} rounds; each cell is the median with the min–max of the rounds.", "",
         "| configuration | req/s | p50 ms | p99 ms | Tollgate CPU µs/req | errors |", "|---|---:|---:|---:|---:|---:|"]
    for c, label in zip(CONFIGS, ("(a) no policies", "(b) ip_filter + cors + jwt + rate_limit")):
        rs = by[c]
        L.append(f"| {label} | {med([r['rps'] for r in rs], f_rps)} | {med([r['p50_ms'] for r in rs], f_ms)} "
                 f"| {med([r['p99_ms'] for r in rs], f_ms)} | {med([r['cpu_us_per_req'] for r in rs], f_cpu)} "
                 f"| {sum(r['errors'] for r in rs)} |")
    L += ["", "| (b) ÷ (a) | req/s | CPU/req | p50 | p99 |", "|---|---:|---:|---:|---:|",
          f"| ratio of the medians | {rps_ratio:.3f} | {cpu_ratio:.3f} "
          f"| {statistics.median(r['p50_ms'] for r in by['pipeline']) / statistics.median(r['p50_ms'] for r in by['plain']):.3f} "
          f"| {statistics.median(r['p99_ms'] for r in by['pipeline']) / statistics.median(r['p99_ms'] for r in by['plain']):.3f} |",
          f"| per-round ratios, median (min–max) | {med(pair['rps'], f_x)} | {med(pair['cpu_us_per_req'], f_x)} "
          f"| {med(pair['p50_ms'], f_x)} | {med(pair['p99_ms'], f_x)} |", "",
          "## Method", "",
          f"- Tollgate pinned with `taskset` to core {PROXY_CPU}, `[runtime] worker_threads = 1`, `[log] level = \"warn\"`, "
          f"`access_log = false`; the origin nginx (one process, `access_log off`, `keepalive_requests 100000000`) and "
          f"wrk share core {LOAD_CPU}" + (f"; all three at `nice -n {NICE}`." if NICE != "0" else "."),
          f"- Each round measures (a) and (b), alternating which goes first; every run is a freshly started Tollgate, "
          f"a {WARMUP} s wrk warm-up, then `wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --latency` (p50/p99 from wrk).",
          "- (b)'s wrk sends `-H 'Authorization: Bearer <HS256 token, exp in 10 years>' -H 'Origin: "
          f"{ORIGIN_HDR}'`; (a)'s sends no extra headers.",
          "- CPU per request: Tollgate's utime+stime (/proc/PID/stat fields 14+15, "
          f"`getconf CLK_TCK` = {CLK_TCK}) over the measured run ÷ completed requests.",
          f"- Before each run the script waits (at most {QUIET_MAX_WAIT:.0f} s) for the machine to be under "
          f"{QUIET_CORES} core busy; *others %* is the CPU used meanwhile by everything except Tollgate and wrk "
          "(so it includes the origin nginx, about 20–30% of a core by itself).",
          f"- Checked before measuring with curl: (a) 200 with the 100-byte body; (b) with the token and Origin 200 "
          f"carrying `RateLimit-Limit: {check_res['with_token']['ratelimit-limit']}`, `RateLimit-Remaining` and "
          f"`Access-Control-Allow-Origin: {check_res['with_token']['access-control-allow-origin']}`; (b) without the token "
          f"{check_res['without_token']} (`WWW-Authenticate: {check_res['www_authenticate']}`), so the policies are active.",
          "", "## Noise", "",
          "A shared 2-core VM: other engineers' builds, test suites and benchmarks run on it at the same time, and "
          "both cores are used by this benchmark, so any of them takes CPU from Tollgate or from the origin/wrk. The "
          "per-round ratios (the two runs of a round are seconds apart) are less exposed to slow drifts than the "
          "medians across rounds; the *others %* column shows how busy the rest of the machine was. Treat "
          "differences of a few percent as noise.", "",
          "## Machine", ""]
    for k, v in facts.items():
        if k != "command":
            L.append(f"- {k}: {v}")
    L += ["", "## Per-run data", "", "| round | config (order) | req/s | p50 ms | p99 ms | CPU µs/req | completed "
          "| errors | others % | waited s |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        L.append(f"| {r['round']} | {r['config']} ({r['order']}) | {f_rps(r['rps'])} | {f_ms(r['p50_ms'])} "
                 f"| {f_ms(r['p99_ms'])} | {f_cpu(r['cpu_us_per_req'])} | {r['completed']:,} | {r['errors']} "
                 f"| {r['others_pct']:.0f} | {r['quiet_waited_s']} |")
    L += ["", "## Configurations", "", "Both define the same four policies; only (b) attaches them to the route "
          "(ports differ).", ""]
    for c in CONFIGS:
        L += [f"`{c}`:", "", "```toml", confs[c].rstrip(), "```", ""]
    return "\n".join(L)


def version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def main():
    for tool in ("nginx", "wrk", "taskset", "curl"):
        if not shutil.which(tool):
            die(f"`{tool}` not found (Debian: apt-get install -y nginx wrk util-linux curl)")
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-pipeline-"))

    def cleanup():
        for p in list(STARTED):
            stop(p)
        if os.environ.get("KEEP") == "1":
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if os.environ.get("TOLLGATE_BIN"):
        src = Path(os.environ["TOLLGATE_BIN"]).resolve()
        log(f"using TOLLGATE_BIN={src} (no build)")
    else:
        log("cargo build --release --bin tollgate (may wait for the build-directory lock) ...")
        subprocess.run(["cargo", "build", "--release", "--bin", "tollgate"], cwd=REPO, check=True)
        src = REPO / "target" / "release" / "tollgate"
    binary = tmp / "tollgate-bin"  # a private copy: concurrent builds must not swap it mid-run
    shutil.copy2(src, binary)

    prefix = tmp / "origin"
    (prefix / "html").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    (prefix / "html" / "small").write_bytes(BODY)
    origin_port = free_ports(1)[0]
    (prefix / "nginx.conf").write_text(origin_conf(prefix, origin_port))
    origin = spawn(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], prefix, prefix / "out.log", LOAD_CPU)
    wait_port(origin_port, origin, "origin nginx")

    hdrs = [f"Authorization: Bearer {jwt_token()}", f"Origin: {ORIGIN_HDR}"]
    ts = {"plain": Tollgate("plain", binary, tmp, origin_port, []),
          "pipeline": Tollgate("pipeline", binary, tmp, origin_port, hdrs)}
    check_res = check(ts["plain"], ts["pipeline"])

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        rev, dirty = "?", ""
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    facts = {"command": ("QUICK=1 " if QUICK else "") + "python3 bench/pipeline.py",
             "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
             "cpu": f"{os.cpu_count()} x {model}", "kernel": platform.release(),
             "tollgate": f"{rev}{' + uncommitted changes in src/' if dirty else ''}, binary sha256 "
                         f"{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}…",
             "nginx": version(["nginx", "-v"]), "wrk": version(["wrk", "--version"]),
             "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3])}

    runs, t0 = [], time.time()
    for rnd in range(1, ROUNDS + 1):
        order = CONFIGS if rnd % 2 else CONFIGS[::-1]
        for i, c in enumerate(order):
            res = measure(ts[c])
            res.update(round=rnd, config=c, order=i + 1)
            runs.append(res)
            log(f"round {rnd}/{ROUNDS} {c:<8} {res['rps']:>8.0f} req/s  p50 {res['p50_ms']:.2f} ms  "
                f"p99 {res['p99_ms']:.2f} ms  cpu {res['cpu_us_per_req']:.1f} us/req  errors {res['errors']}  "
                f"others {res['others_pct']:.0f}%  waited {res['quiet_waited_s']} s")
    stop(origin)
    facts["duration_s"] = round(time.time() - t0)
    facts["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])

    out_dir = REPO / "bench" / "out" / ("pipeline-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    confs = {c: ts[c].conf.read_text() for c in CONFIGS}
    for c in CONFIGS:
        (out_dir / f"{c}.toml").write_text(confs[c])
    (out_dir / "origin-nginx.conf").write_text((prefix / "nginx.conf").read_text())
    (out_dir / "results.json").write_text(json.dumps({"facts": facts, "check": check_res, "runs": runs}, indent=1))
    target = REPO / "bench" / "out" / "PIPELINE.quick.md" if QUICK else REPO / "bench" / "PIPELINE.md"
    target.write_text(report(facts, runs, check_res, confs, out_dir) + "\n")
    log(f"wrote {target}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

"""What bench/ws.py and bench/grpc.py share on top of bench/bench.py's process and CPU helpers.

The method is bench.py's: ONE worker per proxy pinned to PROXY_CPU (core 0), backend and load client
on LOAD_CPU (core 1), a fresh proxy process for every measured run, rounds in rotating order, CPU from
/proc/PID/stat, medians (min–max) over rounds, ratios Tollgate ÷ peer computed per round.

Here: the bench-only peers in bench/loadgen (a Rust crate outside the workspace), a generic proxy
process, the round loop with bench.py's noise guard, report helpers, and writing a marked section
(`<!-- begin NAME -->` … `<!-- end NAME -->`) into bench/RESULTS.md, which bench.py keeps when it
rewrites the file.
"""

import datetime
import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import bench as B

REPO, BENCH, OUT = B.REPO, B.BENCH, B.OUT
SYSTEMS = ["tollgate", "nginx", "haproxy"]
PEERS = ["nginx", "haproxy"]
log, die = B.log, B.die


# ---------------------------------------------------------------- binaries

def build_loadgen(tmp):
    """bench/loadgen's `loadgen` binary (LOADGEN_BIN=path skips the build), copied into tmp."""
    if os.environ.get("LOADGEN_BIN"):
        src = Path(os.environ["LOADGEN_BIN"]).resolve()
        log(f"using LOADGEN_BIN={src} (no build)")
    else:
        target = Path(os.environ.get("LOADGEN_TARGET_DIR", str(OUT / "loadgen-target")))
        log(f"cargo build --release --manifest-path bench/loadgen/Cargo.toml (target dir {target}) ...")
        subprocess.run(["cargo", "build", "--release", "--manifest-path", str(BENCH / "loadgen" / "Cargo.toml")],
                       cwd=REPO, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
        src = target / "release" / "loadgen"
    dst = tmp / "loadgen"
    shutil.copy2(src, dst)
    return dst


def check_tools(tools):
    for tool in tools:
        if not shutil.which(tool):
            die(f"`{tool}` not found (Debian: apt-get install -y nginx haproxy nghttp2-client util-linux)")


def facts():
    f = B.machine_facts()
    # TOLLGATE_REV describes a TOLLGATE_BIN built elsewhere (e.g. "4820f1e (git archive)").
    f["tollgate"] = f"{os.environ.get('TOLLGATE_REV') or B.git_revision()}, binary sha256 {B.TOLLGATE_SHA[0]}…"
    f["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f


def ensure_nofile(needed):
    """Raises this process's soft fd limit to the hard one (and the hard one if root and short);
    children inherit it (bench.spawn also raises theirs). Returns the soft limit now in force."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------- processes

class Server:
    """A process started fresh for each measured run (a proxy on PROXY_CPU) or once (a backend)."""

    def __init__(self, name, workdir, cmd, ports, cpu=None):
        self.name, self.dir, self.cmd, self.ports = name, workdir, cmd, ports
        self.cpu = cpu if cpu is not None else B.PROXY_CPU
        self.proc = None

    def start(self):
        self.proc = B.spawn(self.cmd, self.dir, self.dir / "output.log", self.cpu)
        for port in sorted(set(self.ports)):
            B.wait_port(port, self.proc, self.name)
        deadline = time.time() + 5
        while self.name == "nginx" and len(B.descendants(self.proc.pid)) < 2:  # master + worker
            if time.time() > deadline:
                die("nginx worker did not start")
            time.sleep(0.02)
        return self

    def pids(self):
        return B.descendants(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is not None:
                die(f"{self.name} died during the run (status {self.proc.returncode}); see {self.dir}/output.log")
            B.stop(self.proc)
            self.proc = None


def vm_rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def open_fds(pids):
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def established_to(port):
    """TCP connections established to 127.0.0.1:port (the proxy's upstream connections)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


class Window:
    """CPU of the proxy and of everything else between two snapshots."""

    def __init__(self, proxy_pids, our_pids):
        self.proxy_pids, self.our_pids = proxy_pids, our_pids

    def snap(self):
        u, s = B.user_sys_ticks(self.proxy_pids)
        ours = 0
        for pid in self.our_pids:
            try:
                ours += B.cpu_ticks([pid])
            except OSError:
                pass
        return {"u": u, "s": s, "ours": ours, "machine": B.machine_ticks()[0], "t": time.time()}

    @staticmethod
    def diff(a, b, per):
        """CPU µs per `per` units of work; other_cpu_pct = everyone else's CPU in % of one core."""
        proxy = (b["u"] + b["s"]) - (a["u"] + a["s"])
        other = (b["machine"] - a["machine"]) - proxy - (b["ours"] - a["ours"])
        secs = max(b["t"] - a["t"], 1e-6)
        return {
            "cpu_ticks": proxy,
            "cpu_us": proxy * 1e6 / B.CLK_TCK / max(per, 1),
            "user_us": (b["u"] - a["u"]) * 1e6 / B.CLK_TCK / max(per, 1),
            # The load side's CPU (backend, load client) per unit: the same work whichever proxy is
            # in front, so it tracks how fast the shared machine ran during this run.
            "load_us": (b["ours"] - a["ours"]) * 1e6 / B.CLK_TCK / max(per, 1),
            "other_cpu_pct": max(0.0, other / B.CLK_TCK / secs * 100),
            "window_s": secs,
        }


def watchdog(proc, seconds):
    """Kills proc (by its PID) if it is still running after `seconds`."""
    t = threading.Timer(seconds, lambda: proc.poll() is None and proc.kill())
    t.daemon = True
    t.start()
    return t


# ---------------------------------------------------------------- rounds

def rounds(n_rounds, scenarios, measure):
    """For each round, each scenario, each proxy in rotating order: measure(scenario, name) -> dict with
    other_cpu_pct. A run during which other processes used >= REDO_OTHER_PCT % of a core is measured
    again (bench.py's budget). Returns (runs, discarded)."""
    runs, discarded = [], []
    for rnd in range(n_rounds):
        order = SYSTEMS[rnd % 3:] + SYSTEMS[:rnd % 3]
        for sc in scenarios:
            for name in order:
                while True:
                    busy, waited = B.wait_quiet()
                    res = measure(sc, name)
                    res.update({"round": rnd + 1, "scenario": sc["id"], "system": name,
                                "order": order.index(name) + 1, "quiet_waited_s": waited})
                    if res["other_cpu_pct"] < B.REDO_OTHER_PCT or len(discarded) >= B.REDO_BUDGET:
                        break
                    discarded.append(res)
                    log(f"round {rnd + 1} {sc['id']} {name}: other processes used {res['other_cpu_pct']:.0f}% "
                        f"of a core: measuring again ({len(discarded)}/{B.REDO_BUDGET} re-runs used)")
                runs.append(res)
                log(f"round {rnd + 1}/{n_rounds} {sc['id']:<12} {name:<8} " + sc["summary"](res)
                    + f"  other cpu {res['other_cpu_pct']:.0f}%"
                    + (f" (waited {waited:.0f} s for quiet)" if waited else ""))
    return runs, discarded


# ---------------------------------------------------------------- report

def med(values):
    return statistics.median(values) if values else float("nan")


def med_spread(values, fmt):
    values = sorted(v for v in values if v == v)
    if not values:
        return "–"
    return f"{fmt(statistics.median(values))} ({fmt(values[0])}–{fmt(values[-1])})"


def per_round_ratios(runs, scenario, key, peer_pick=None):
    """Tollgate ÷ peer for each round; peer is a name, or `peer_pick(list of (name, value))` chooses."""
    out = []
    rounds_seen = sorted({r["round"] for r in runs if r["scenario"] == scenario})
    for rnd in rounds_seen:
        vals = {r["system"]: r[key] for r in runs if r["scenario"] == scenario and r["round"] == rnd}
        if "tollgate" not in vals:
            continue
        if callable(peer_pick):
            peers = [(p, vals[p]) for p in PEERS if p in vals]
            if not peers:
                continue
            _, v = peer_pick(peers)
        else:
            if peer_pick not in vals:
                continue
            v = vals[peer_pick]
        if v:
            out.append(vals["tollgate"] / v)
    return out


def ratio_table(runs, scenario, cols, better):
    """Rows: each peer and the better peer of each round; cols: [(key, title)];
    better[key] is min or max (which peer value is the better one)."""
    L = ["| tollgate ÷ | " + " | ".join(t for _, t in cols) + " |",
         "|---|" + "---:|" * len(cols)]
    for peer in PEERS + ["better peer"]:
        cells = []
        for key, _ in cols:
            pick = peer if peer != "better peer" else (lambda ps, k=key: better[k](ps, key=lambda x: x[1]))
            cells.append(med_spread(per_round_ratios(runs, scenario, key, pick), lambda v: f"{v:.2f}"))
        L.append(f"| {peer} | " + " | ".join(cells) + " |")
    return L


def write_section(name, text, target):
    """Replaces the `<!-- begin NAME -->` … `<!-- end NAME -->` block of target (or appends it)."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = target.read_text() if target.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        tail = tail.lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    target.write_text(new)


def setup_lines(f, extra):
    return [
        f"- Machine: {f['cpu']}, Linux {f['kernel']}; load average at start {' '.join(f['loadavg_start'])}, "
        f"at end {' '.join(f['loadavg_end'])}; measured part took {f['duration_s']} s.",
        f"- Tollgate {f['tollgate']} (release: fat LTO), {f['rustc']}; {f['nginx']}; {f['haproxy']}.",
        f"- **One worker each**, pinned: the proxy alone on core {B.PROXY_CPU} (Tollgate `worker_threads = 1`, "
        f"nginx `worker_processes 1`, HAProxy `nbthread 1`); backend and load client (bench/loadgen, one "
        f"single-threaded tokio runtime each) share core {B.LOAD_CPU}"
        + (f"; everything at `nice -n {B.NICE}`" if B.NICE != "0" else "") + ".",
        "- **Method**: a freshly started proxy for every measured run; rounds rotate the order of the proxies; "
        "cells are **median (min–max)** over the rounds; ratios are Tollgate ÷ peer computed within each round, "
        "then median (min–max). CPU = utime+stime from `/proc/PID/stat` over the measured window, summed over "
        f"the proxy's processes (nginx master + worker), clock ticks of 1/{B.CLK_TCK} s.",
    ] + extra + [
        f"- **Noise**: shared 2-core VM with other engineers' builds running; before each run the harness waits "
        f"(bounded) for a quiet machine and re-measures a run during which other processes used ≥ "
        f"{B.REDO_OTHER_PCT:.0f} % of a core (at most {B.REDO_BUDGET}; {f['discarded']} used). *other CPU %* in "
        f"the per-run table is everyone else's CPU during the window. Compare ratios within the run, not "
        f"absolute numbers across runs.",
    ]


# ---------------------------------------------------------------- profile

def profile(proxy, start_load, out_dir, seconds=None):
    """perf profile of the proxy (bench.py --profile's method: cpu-clock at 1999 Hz, DWARF call graphs) while
    `start_load()` (returns a Popen that runs for seconds + 3 s) drives it; reports into out_dir."""
    if not shutil.which("perf"):
        die("perf not found (Debian: apt-get install -y linux-perf)")
    seconds = seconds or int(os.environ.get("PROFILE_SECONDS", "8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "perf.data"
    proxy.start()
    try:
        load = start_load()
        time.sleep(1.5)
        perf_cmd = B.pinned(B.LOAD_CPU) + ["perf", "record", "-e", "cpu-clock", "-F", "1999", "--call-graph",
                                           "dwarf,16384", "-p", str(proxy.proc.pid), "-o", str(data), "--",
                                           "sleep", str(seconds)]
        log(" ".join(perf_cmd[perf_cmd.index("perf"):]))
        subprocess.run(perf_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, _ = load.communicate()
        if load in B.STARTED:
            B.STARTED.remove(load)
        (out_dir / "load.txt").write_text(out if isinstance(out, str) else (out or b"").decode())
    finally:
        proxy.stop()
    reports = {
        "report-head.txt": ["--no-children"],
        "flat-symbols.txt": ["--no-children", "--sort", "dso,symbol", "-g", "none"],
        "inclusive.txt": ["--children", "--sort", "symbol", "-g", "none", "--percent-limit", "2"],
        "by-dso.txt": ["--no-children", "--sort", "dso", "-g", "none"],
    }
    for fname, extra in reports.items():
        p = subprocess.run(["perf", "report", "-i", str(data), "--stdio"] + extra, capture_output=True, text=True)
        text = p.stdout
        if fname == "report-head.txt":
            text = "\n".join(text.splitlines()[:120]) + "\n"
        (out_dir / fname).write_text(text)
    (out_dir / "buckets.txt").write_text(B.profile_buckets((out_dir / "flat-symbols.txt").read_text()))
    log(f"profile reports in {out_dir} ({', '.join(reports)}, buckets.txt); summarise them in bench/PROFILE.md")

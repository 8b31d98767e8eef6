#!/usr/bin/env python3
"""What each proxy puts on the wire, per request (h1) or per echo round-trip (ws).

    python3 bench/wire_census.py h1 [ROUNDS]   # wrk -c50 on /small: Tollgate, nginx, HAProxy in turn
    python3 bench/wire_census.py h2c [ROUNDS]  # h2load -c50 -m10 on /small (prior knowledge), all three in turn
    python3 bench/wire_census.py ws [ROUNDS]   # 50 WebSocket echo connections: Tollgate and nginx in turn

Same setup as bench/run.sh (proxy on core 0, origin and load on core 1; TOLLGATE_BIN and
LOADGEN_BIN skip the builds). Around each 4-second load it reads the kernel's TCP counters
(`nstat -az`: segments sent, bytes received, pure and delayed ACKs) and the proxy's voluntary
context switches, and prints them per unit of work with the proxy's CPU and the load side's CPU
(origin + wrk, or echo backend + load client): the load side does the same work whichever proxy
is in front, so its CPU per unit gauges how fast the shared machine ran during that run.
Loopback only; nothing else should use it meanwhile (the counters are machine-wide).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

SECONDS = 4


def nstat():
    counters = {}
    for line in subprocess.run(["nstat", "-az"], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def voluntary_switches(pids, field="voluntary_ctxt_switches"):
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/status") as status:
                    for line in status:
                        if line.startswith(field):
                            total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_switches():
    """Context switches on the whole machine (/proc/stat `ctxt`): with the proxy's own taken
    out, what the load side (origin and load client) pays for the way requests reach it."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("ctxt"):
                return int(line.split()[1])
    return 0


def line(name, units, cpu_ticks, load_ticks, n0, n1, v0, v1, extra=""):
    per = lambda key: (n1.get(key, 0) - n0.get(key, 0)) / units  # noqa: E731
    us = lambda ticks: ticks * 1e6 / B.CLK_TCK / units  # noqa: E731
    print(f"{name:9s} units {units:8d}  proxy cpu {us(cpu_ticks):5.1f} us  load cpu {us(load_ticks):5.1f} us  "
          f"segments {per('TcpOutSegs'):.2f}  bytes {per('IpExtInOctets'):.0f}  "
          f"pure acks {per('TcpExtTCPPureAcks'):.3f}  delayed acks {per('TcpExtDelayedACKs'):.3f}  "
          f"proxy switches {(v1 - v0) / units:.3f}{extra}", flush=True)


def census_h1(rounds, scenario_id="h1-small"):
    """HTTP load through each proxy: `wrk` for HTTP/1.1, `h2load` (a fixed request count sized
    to take about SECONDS) for h2c."""
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-census-"))
    origin, proxies, _ = B.setup(tmp)
    scenario = next(sc for sc in B.SCENARIOS if sc["id"] == scenario_id)
    if scenario["tool"] == "wrk":
        load = lambda url, seconds: B.run_wrk(url, seconds)  # noqa: E731
    else:
        load = lambda url, seconds: B.run_h2load(url, 60_000 * seconds)  # noqa: E731
    for _ in range(rounds):
        for name in B.SYSTEMS:
            proxy = proxies[name]
            proxy.start()
            url = proxy.url(scenario)
            load(url, 1)
            pids = proxy.pids()
            u0, s0 = B.user_sys_ticks(pids)
            o0, g0 = B.cpu_ticks([origin.proc.pid]), B.children_ticks()
            opid = [origin.proc.pid]
            n0, v0 = nstat(), voluntary_switches(pids)
            p0 = v0 + voluntary_switches(pids, "nonvoluntary_ctxt_switches")
            ov0, oi0 = voluntary_switches(opid), voluntary_switches(opid, "nonvoluntary_ctxt_switches")
            m0 = machine_switches()
            res = load(url, SECONDS)
            m1 = machine_switches()
            n1, v1 = nstat(), voluntary_switches(pids)
            p1 = v1 + voluntary_switches(pids, "nonvoluntary_ctxt_switches")
            ov1, oi1 = voluntary_switches(opid), voluntary_switches(opid, "nonvoluntary_ctxt_switches")
            u1, s1 = B.user_sys_ticks(pids)
            o1, g1 = B.cpu_ticks([origin.proc.pid]), B.children_ticks()
            proxy.stop()
            units = res["completed"]
            # The machine's switches, less the proxy's own and less the idle task's switch back
            # to the proxy after each of its voluntary sleeps (core 0 has nothing else to run):
            # what is left is the load side's (stop 25; before, those wake-ups were counted in).
            extra = (f"  origin switches {(ov1 - ov0) / units:.3f} vol {(oi1 - oi0) / units:.3f} invol"
                     f"  load-side switches {((m1 - m0) - (p1 - p0) - (v1 - v0)) / units:.3f}")
            line(name, units, u1 + s1 - u0 - s0, (o1 - o0) + (g1 - g0), n0, n1, v0, v1, extra)


def census_ws(rounds):
    os.environ["WS_SECONDS"] = str(SECONDS)
    import family as F
    import ws as W

    tmp = Path(tempfile.mkdtemp(prefix="tollgate-census-ws-"))
    bench = W.Bench(tmp)
    for _ in range(rounds):
        for name in ["tollgate", "nginx"]:
            proxy = bench.proxies[name].start()
            load = bench.load(["echo", proxy.url, "--conns", "50", "--seconds", str(SECONDS), "--warmup", "1",
                               "--size", "64"])
            window = F.Window(proxy.pids(), [bench.backend.proc.pid, load.pid])
            a = b = None
            for out in iter(load.stdout.readline, ""):
                if out.startswith("start"):
                    a, n0, v0 = window.snap(), nstat(), voluntary_switches(proxy.pids())
                elif out.startswith("end"):
                    b, n1, v1 = window.snap(), nstat(), voluntary_switches(proxy.pids())
                    break
            result = json.loads(bench.finish(load).strip().splitlines()[-1])
            proxy.stop()
            if a is None or b is None:
                B.die(f"{name}: the echo load ended early")
            cpu = (b["u"] + b["s"]) - (a["u"] + a["s"])
            line(name, result["round_trips"], cpu, b["ours"] - a["ours"], n0, n1, v0, v1)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "h1"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    try:
        if mode == "h1":
            census_h1(rounds)
        elif mode == "h2c":
            census_h1(rounds, "h2c-small")
        elif mode == "ws":
            census_ws(rounds)
        else:
            B.die(f"unknown mode {mode!r}: h1, h2c or ws")
    finally:
        B.stop_all()
        time.sleep(0.2)


if __name__ == "__main__":
    main()

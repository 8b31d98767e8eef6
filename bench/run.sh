#!/usr/bin/env bash
# Tollgate vs nginx vs HAProxy, one worker each, in front of the same origin.
#
#   bench/run.sh                 full run (5 rounds, wrk 10 s, h2load 100k requests) -> bench/RESULTS.md
#   QUICK=1 bench/run.sh         smoke run (wrk 3 s, h2load 20k requests)          -> bench/out/RESULTS.quick.md
#   bench/run.sh --profile       perf profile of Tollgate under the h1-small load  -> bench/out/profile/
#   bench/run.sh ws              WebSocket: echo round-trips + memory per idle connection (bench/ws.py)
#   bench/run.sh grpc            gRPC: unary calls + server streaming (bench/grpc.py)
#   bench/run.sh h3              HTTP/3 against Caddy: small, 64 KiB, 100 MiB download (bench/h3.py)
#                                (both write their own section of bench/RESULTS.md; QUICK=1 for short runs)
#
# Environment: QUICK=1, ROUNDS=N, PROXY_CPU=0, LOAD_CPU=1, TOLLGATE_BIN=path (skips
# `cargo build --release`), LOADGEN_BIN=path (skips building bench/loadgen), KEEP=1 (keep the
# temp dir with configs and logs), TOLLGATE_RUNTIME_EXTRA="gather_events = \"0us\"" (lines added to
# Tollgate's [runtime] table, for A/B runs of a setting). Everything else is in bench/bench.py, bench/ws.py,
# bench/grpc.py.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    ws) shift; exec python3 bench/ws.py "$@" ;;
    grpc) shift; exec python3 bench/grpc.py "$@" ;;
    h3) shift; exec python3 bench/h3.py "$@" ;;
    *) exec python3 bench/bench.py "$@" ;;
esac

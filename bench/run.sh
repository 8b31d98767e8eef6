#!/usr/bin/env bash
# Tollgate vs nginx vs HAProxy, one worker each, in front of the same origin.
#
#   bench/run.sh                 full run (5 rounds, wrk 10 s, h2load 100k requests) -> bench/RESULTS.md
#   QUICK=1 bench/run.sh         smoke run (wrk 3 s, h2load 20k requests)          -> bench/out/RESULTS.quick.md
#   bench/run.sh --profile       perf profile of Tollgate under the h1-small load  -> bench/out/profile/
#
# Environment: QUICK=1, ROUNDS=N, PROXY_CPU=0, LOAD_CPU=1, TOLLGATE_BIN=path (skips
# `cargo build --release`), KEEP=1 (keep the temp dir with configs and logs).
# Everything else is in bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/bench.py "$@"

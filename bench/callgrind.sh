#!/usr/bin/env bash
# Instructions Tollgate executes per proxied request, counted by callgrind: a
# deterministic measure of user-space work, unlike CPU time on a shared
# machine. Kernel work (system calls, TCP) is not counted.
#
#   bench/callgrind.sh BINARY [h1|h2c] [REQUESTS]
#
# Starts an nginx origin serving a 100-byte file, Tollgate (worker_threads = 1,
# no access log) under valgrind in front of it, warms up with 2,000 requests,
# zeroes the counters, sends REQUESTS (default 20,000) with h2load (50
# connections; HTTP/1.1 keep-alive, or h2c with 10 streams each), dumps, and
# prints instructions per request. The dump stays in the temp dir printed at
# the end for `callgrind_annotate`.
set -euo pipefail

BIN=${1:?usage: bench/callgrind.sh BINARY [h1|h2c] [REQUESTS]}
MODE=${2:-h1}
N=${3:-20000}
BIN=$(realpath "$BIN")
DIR=$(mktemp -d /tmp/tollgate-callgrind.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(free_port)
PROXY=$(free_port)

mkdir -p "$DIR/html" "$DIR/tmp"
head -c 100 /dev/zero | tr '\0' 'x' > "$DIR/html/small"
cat > "$DIR/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/tmp; proxy_temp_path $DIR/tmp; fastcgi_temp_path $DIR/tmp;
    uwsgi_temp_path $DIR/tmp; scgi_temp_path $DIR/tmp;
    keepalive_requests 100000000;
    server { listen 127.0.0.1:$ORIGIN; root $DIR/html; }
}
EOF
cat > "$DIR/tollgate.toml" <<EOF
[runtime]
worker_threads = 1
[log]
access_log = false
level = "warn"
[[listener]]
name = "bench"
bind = "127.0.0.1:$PROXY"
[[upstream]]
name = "origin"
targets = ["127.0.0.1:$ORIGIN"]
max_idle_per_target = 1024
[[route]]
name = "all"
upstream = "origin"
EOF

nginx -c "$DIR/nginx.conf" & NGINX=$!
valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" "$BIN" --config "$DIR/tollgate.toml" \
    > "$DIR/tollgate.log" 2>&1 & TOLLGATE=$!
trap 'kill $TOLLGATE $NGINX 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PROXY/small"
for _ in $(seq 100); do curl -s -o /dev/null "$URL" && break; sleep 0.2; done
case "$MODE" in
    h1) LOAD=(--h1 -c50 -m1) ;;
    h2c) LOAD=(-c50 -m10) ;;
    *) echo "mode is h1 or h2c" >&2; exit 2 ;;
esac
h2load "${LOAD[@]}" -n 2000 "$URL" > /dev/null
callgrind_control -z "$TOLLGATE" > /dev/null 2>&1
h2load "${LOAD[@]}" -n "$N" "$URL" | grep -E "^requests:"
callgrind_control -d "$TOLLGATE" > /dev/null 2>&1
sleep 1
TOTAL=$(callgrind_annotate "$DIR/callgrind.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$MODE: $((TOTAL / N)) instructions per request ($DIR/callgrind.out.1)"

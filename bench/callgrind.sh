#!/usr/bin/env bash
# Instructions Tollgate executes per proxied request, counted by callgrind: a
# deterministic measure of user-space work, unlike CPU time on a shared
# machine. Kernel work (system calls, TCP) is not counted.
#
#   bench/callgrind.sh BINARY [h1|h2c|grpc|ws] [REQUESTS]
#
# Starts an nginx origin serving a 100-byte file (for grpc: `loadgen
# grpc-echo`, LOADGEN_BIN or built from bench/loadgen), Tollgate
# (worker_threads = 1, no access log) under valgrind in front of it, warms up
# with 2,000 requests, zeroes the counters, sends REQUESTS (default 20,000)
# with h2load (50 connections; HTTP/1.1 keep-alive, or h2c with 10 streams
# each; grpc: unary calls with a 64-byte message, as bench/grpc.py), dumps,
# and prints instructions per request. ws: a tunnel route to `loadgen
# ws-echo`, 50 connections of 64-byte echo round-trips for 10 s (as
# bench/ws.py), counted between the load's `start` and `end` lines; prints
# instructions per round-trip. The dump stays in the temp dir printed at the
# end for `callgrind_annotate`. ROUTE_KEYS adds lines to the route, e.g.
# ROUTE_KEYS='forward_headers = ["x-forwarded-for"]' for the benchmark's
# header set (bench/grpc.py).
#
# PEER=haproxy counts HAProxy instead (one thread, the config of bench/grpc.py
# or bench/bench.py, h2 to the backend in grpc mode; BINARY is then ignored):
# the same load, so the two counts compare user-space work like for like.
# PEER=nginx does the same for nginx in h1 mode (one worker, upstream
# keep-alive and the X-Forwarded-* fields of bench/bench.py) and ws mode
# (the WebSocket proxying of bench/ws.py).
set -euo pipefail

BIN=${1:?usage: bench/callgrind.sh BINARY [h1|h2c|grpc|ws] [REQUESTS]}
MODE=${2:-h1}
N=${3:-20000}
BIN=$(realpath "$BIN" 2>/dev/null || echo "$BIN")
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
protocol = "$([ "$MODE" = grpc ] && echo grpc || echo http1)"
targets = ["127.0.0.1:$ORIGIN"]
max_idle_per_target = 1024
[[route]]
name = "all"
upstream = "origin"
$([ "$MODE" = ws ] && echo 'websocket = "tunnel"')
${ROUTE_KEYS:-}
EOF

if [ "$MODE" = grpc ] || [ "$MODE" = ws ]; then
    LOADGEN=${LOADGEN_BIN:-}
    if [ -z "$LOADGEN" ]; then
        cargo build -q --release --manifest-path "$(dirname "$0")/loadgen/Cargo.toml" --target-dir "$DIR/loadgen"
        LOADGEN="$DIR/loadgen/release/loadgen"
    fi
fi
if [ "$MODE" = ws ]; then
    "$LOADGEN" ws-echo "$ORIGIN" > "$DIR/backend.log" 2>&1 & NGINX=$!
elif [ "$MODE" = grpc ]; then
    "$LOADGEN" grpc-echo "$ORIGIN" --messages 10 --max-streams 100 > "$DIR/backend.log" 2>&1 & NGINX=$!
    python3 -c 'import struct,sys; m=b"x"*64; sys.stdout.buffer.write(b"\0"+struct.pack(">I",len(m))+m)' > "$DIR/grpc-body"
else
    nginx -c "$DIR/nginx.conf" & NGINX=$!
fi
if [ "${PEER:-}" = haproxy ]; then
    [ "$MODE" = ws ] && { echo "PEER=haproxy counts h1, h2c and grpc" >&2; exit 2; }
    cat > "$DIR/haproxy.cfg" <<EOF
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
frontend bench
    bind 127.0.0.1:$PROXY$([ "$MODE" = h1 ] || echo " proto h2")
    default_backend origin
backend origin
    server origin 127.0.0.1:$ORIGIN$([ "$MODE" = grpc ] && echo " proto h2")
EOF
    PROXY_CMD=(haproxy -f "$DIR/haproxy.cfg" -db)
elif [ "${PEER:-}" = nginx ]; then
    [ "$MODE" = h1 ] || [ "$MODE" = ws ] || { echo "PEER=nginx counts h1 and ws" >&2; exit 2; }
    if [ "$MODE" = ws ]; then
        # As bench/ws.py: the upgrade passed on, then bytes spliced both ways.
        NGINX_HEADERS='proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 300s;'
    else
        NGINX_HEADERS='proxy_set_header Connection ""; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;'
    fi
    mkdir -p "$DIR/proxy-tmp"
    cat > "$DIR/nginx-proxy.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $DIR/nginx-proxy.pid;
error_log $DIR/nginx-proxy-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/proxy-tmp; proxy_temp_path $DIR/proxy-tmp; fastcgi_temp_path $DIR/proxy-tmp;
    uwsgi_temp_path $DIR/proxy-tmp; scgi_temp_path $DIR/proxy-tmp;
    keepalive_requests 100000000;
    upstream origin { server 127.0.0.1:$ORIGIN; keepalive 1024; }
    server {
        listen 127.0.0.1:$PROXY;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            $NGINX_HEADERS
        }
    }
}
EOF
    PROXY_CMD=(nginx -c "$DIR/nginx-proxy.conf")
else
    PROXY_CMD=("$BIN" --config "$DIR/tollgate.toml")
fi
valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" "${PROXY_CMD[@]}" \
    > "$DIR/tollgate.log" 2>&1 & TOLLGATE=$!
trap 'kill $TOLLGATE $NGINX 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PROXY/small"
CURL_PROTO=$([ "$MODE" = h1 ] || [ "$MODE" = ws ] || echo --http2-prior-knowledge)
for _ in $(seq 100); do curl -s $CURL_PROTO -o /dev/null "$URL" && break; sleep 0.2; done
if [ "$MODE" = ws ]; then
    "$LOADGEN" ws-load echo "ws://127.0.0.1:$PROXY/chat" --conns 50 --seconds 10 --warmup 3 --size 64 \
        > "$DIR/load.out" 2> "$DIR/load.err" & LOAD=$!
    until grep -q '^start' "$DIR/load.out" 2>/dev/null; do sleep 0.05; done
    callgrind_control -z "$TOLLGATE" > /dev/null 2>&1
    until grep -q '^end' "$DIR/load.out" 2>/dev/null; do sleep 0.05; done
    callgrind_control -d "$TOLLGATE" > /dev/null 2>&1
    wait $LOAD
    sleep 1
    ROUND_TRIPS=$(tail -1 "$DIR/load.out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["round_trips"])')
    TOTAL=$(callgrind_annotate "$DIR/callgrind.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "ws: $ROUND_TRIPS round-trips, $((TOTAL / ROUND_TRIPS)) instructions per round-trip ($DIR/callgrind.out.1)"
    exit 0
fi
case "$MODE" in
    h1) LOAD=(--h1 -c50 -m1) ;;
    h2c) LOAD=(-c50 -m10) ;;
    grpc)
        GRPC=(-H "content-type: application/grpc" -H "te: trailers" -d "$DIR/grpc-body")
        LOAD=(-c50 -m10 "${GRPC[@]}")
        URL="http://127.0.0.1:$PROXY/bench.Echo/Unary"
        for _ in $(seq 100); do h2load -n1 -c1 "${GRPC[@]}" "$URL" 2>/dev/null | grep -q " 1 succeeded" && break; sleep 0.2; done
        ;;
    *) echo "mode is h1, h2c, grpc or ws" >&2; exit 2 ;;
esac
h2load "${LOAD[@]}" -n 2000 "$URL" > /dev/null
callgrind_control -z "$TOLLGATE" > /dev/null 2>&1
h2load "${LOAD[@]}" -n "$N" "$URL" | grep -E "^requests:"
callgrind_control -d "$TOLLGATE" > /dev/null 2>&1
sleep 1
TOTAL=$(callgrind_annotate "$DIR/callgrind.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$MODE: $((TOTAL / N)) instructions per request ($DIR/callgrind.out.1)"

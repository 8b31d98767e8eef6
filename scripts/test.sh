#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then
# runs it. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Real peers the integration tests drive: curl, nghttp/h2load, openssl s_client, kill, redis-server.
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v nghttp >/dev/null || need_apt+=(nghttp2-client)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v kill >/dev/null || need_apt+=(procps)
# Shared rate-limit counters: tests start their own redis-server on a free port.
command -v redis-server >/dev/null || need_apt+=(redis-server)
# HTTP/3 download client (ngtcp2's gtlsclient); aioquic (pip, below) is the other HTTP/3 peer.
command -v gtlsclient >/dev/null || need_apt+=(ngtcp2-client)
# Python test peers (grpcio client and server) run from a venv, which needs python3-venv.
{ command -v python3 >/dev/null && python3 -c 'import ensurepip' 2>/dev/null; } || need_apt+=(python3 python3-venv)
# Node test peers: gRPC-Web clients (connect-web, connect-node), the WebSocket `ws` client.
command -v npm >/dev/null || need_apt+=(nodejs npm)
# Headless browser for the gRPC-Web-from-a-page test (driven by playwright-core; never `npx playwright install`).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  # Keep apt from starting daemons it installs.
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# Python test peers: one pip line for every package the tests need (append
# yours here); pip leaves installed ones alone, so reruns are quick and offline.
# protobuf: the transcoding tests' catalog backend builds its messages from a descriptor set.
# h2 (hyper-h2): the HTTP/2 server tests' client for frames curl and nghttp never send.
PIP_PACKAGES=(grpcio protobuf websockets aioquic h2)
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
# Node test peer (WebSocket `ws` client), pinned by its lockfile.
[ -d tests/websocket_peers/node_modules/ws ] || npm ci --prefix tests/websocket_peers --no-audit --no-fund

# Node test peers (connect-web / connect-node gRPC-Web clients; playwright-core
# and esbuild for the browser test), pinned by their lockfile. Reinstalls when
# any of them is missing, e.g. after a package was added to the lockfile.
# playwright-core stays on 1.61, the last release that runs on Node 18 (Debian 12's nodejs).
node_peers=tests/peers/node/node_modules
{ [ -d $node_peers/@connectrpc/connect-node ] && [ -d $node_peers/@connectrpc/connect-web ] \
  && [ -d $node_peers/playwright-core ] && [ -d $node_peers/esbuild ]; } \
  || npm ci --prefix tests/peers/node --include=dev --no-audit --no-fund

cargo fmt --all -- --check
# One build for unit and integration tests (bridges included); integration tests start the real binary.
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"

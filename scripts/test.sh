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
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  # Keep apt from starting daemons it installs.
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

cargo fmt --all -- --check
# One build for unit and integration tests; integration tests start the real binary.
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}"

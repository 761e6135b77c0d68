#!/usr/bin/env bash
# The hub's status page and a browser WebSocket client in headless Chromium.
# Installs Debian's chromium when it is missing (as root, e.g. in CI) and playwright-core from
# npm (no browser download). Starts a release hub on free loopback ports.
#
#   scripts/browser-test.sh [SCREENSHOT]      default: docs/status-page.png
set -euo pipefail
cd "$(dirname "$0")/.."
SHOT=${1:-docs/status-page.png}

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: apt-get install chromium (as root)" >&2
    exit 1
  fi
fi
(cd integration-tests/browser && npm ci --no-audit --no-fund --silent)
cargo build --release -q -p ws-server

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); ADMIN=$(free_port)
WS_HOST=127.0.0.1 WS_PORT=$PORT WS_ADMIN_ADDR=127.0.0.1:$ADMIN RUST_LOG=warn target/release/ws-server &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait $HUB 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$ADMIN) 2>/dev/null && break; sleep 0.05; done
node integration-tests/browser/status_page.mjs "ws://127.0.0.1:$PORT" "http://127.0.0.1:$ADMIN/" "$SHOT"

#!/usr/bin/env bash
# The JavaScript client (clients/js) under Node's test runner against the release hub binary
# (each test starts its own hubs: a cut connection, a restart). Node >= 22 has WebSocket
# built in; Node 20.10+ gets it with --experimental-websocket, added when needed.
#   scripts/js-client-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ws-server
FLAGS=()
if [ "$(node -e 'process.stdout.write(typeof WebSocket)')" != "function" ]; then
  FLAGS+=(--experimental-websocket)
fi
cd clients/js
WS_SERVER_BIN="$PWD/../../target/release/ws-server" timeout 300 node "${FLAGS[@]}" --test test/

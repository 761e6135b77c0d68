#!/usr/bin/env bash
# The JavaScript client (clients/js) under Node's test runner against the release hub binary
# (each test starts its own hubs: a cut connection, a restart). Node >= 22 has WebSocket
# built in; Node 20.10+ gets it with --experimental-websocket, added when needed.
# Then TypeScript (installed from npm under target/, not a dependency of the client) checks
# client.d.ts with the README's example (clients/js/typecheck/example.ts, --strict).
#   scripts/js-client-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/target/js-tools"
cargo build --release -q -p ws-server
FLAGS=()
if [ "$(node -e 'process.stdout.write(typeof WebSocket)')" != "function" ]; then
  FLAGS+=(--experimental-websocket)
fi
cd clients/js
WS_SERVER_BIN="$PWD/../../target/release/ws-server" timeout 300 node "${FLAGS[@]}" --test test/
cd ../..
if [ ! -x "$TOOLS/node_modules/.bin/tsc" ]; then
  mkdir -p "$TOOLS"
  (cd "$TOOLS" && npm install --no-save --silent --no-audit --no-fund typescript@5 >/dev/null)
fi
"$TOOLS/node_modules/.bin/tsc" --strict --noEmit --target es2022 --module nodenext \
  --moduleResolution nodenext clients/js/typecheck/example.ts
echo "client.d.ts: the typed example checks under tsc --strict"

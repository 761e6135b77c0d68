#!/usr/bin/env bash
# Python against the hub: `websockets` and `msgpack` (installed in a virtualenv under target/)
# run integration-tests/python/hub_client.py, hub_client_msgpack.py and hub_client_deflate.py
# against a release hub on a free port; then pytest runs the resilient client's tests
# (clients/python/tests, each with its own hubs: restarts, cut connections).
#   scripts/python-client-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/python-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import websockets, msgpack, pytest' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q websockets msgpack pytest
fi
cargo build --release -q -p ws-server
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WS_HOST=127.0.0.1 WS_PORT=$PORT RUST_LOG=warn target/release/ws-server &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait $HUB 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
timeout 60 "$VENV/bin/python" integration-tests/python/hub_client.py "ws://127.0.0.1:$PORT"
timeout 60 "$VENV/bin/python" integration-tests/python/hub_client_msgpack.py "ws://127.0.0.1:$PORT"
timeout 60 "$VENV/bin/python" integration-tests/python/hub_client_deflate.py "ws://127.0.0.1:$PORT"
PYTHONDONTWRITEBYTECODE=1 WS_SERVER_BIN=target/release/ws-server PYTHONPATH=clients/python \
  timeout 300 "$VENV/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests

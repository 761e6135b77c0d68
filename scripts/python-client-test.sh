#!/usr/bin/env bash
# Python against the hub: `websockets` and `msgpack` (installed in a virtualenv under target/)
# run integration-tests/python/hub_client.py, hub_client_msgpack.py and hub_client_deflate.py
# against a release hub on a free port; then pytest runs the resilient client's tests
# (clients/python/tests, each with its own hubs: restarts, cut connections), after mypy
# --strict checks its types. The hub's HTTP publish API (admin address, and the public port
# with WS_API_KEY) is tried from Python's urllib and with the README's curl lines.
#   scripts/python-client-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/python-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import websockets, msgpack, pytest, mypy' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q websockets msgpack pytest mypy
fi
# The client's types (it ships py.typed): mypy --strict.
(cd clients/python && "../../$VENV/bin/mypy" --strict --cache-dir=/dev/null ws_toolkit)
cargo build --release -q -p ws-server
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); ADMIN=$(free_port)
API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
WS_HOST=127.0.0.1 WS_PORT=$PORT WS_ADMIN_ADDR=127.0.0.1:$ADMIN WS_API_KEY=$API_KEY RUST_LOG=warn \
  target/release/ws-server &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait $HUB 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$ADMIN) 2>/dev/null && break; sleep 0.05; done
timeout 60 "$VENV/bin/python" integration-tests/python/hub_client.py "ws://127.0.0.1:$PORT"
timeout 60 "$VENV/bin/python" integration-tests/python/hub_client_msgpack.py "ws://127.0.0.1:$PORT"
timeout 60 "$VENV/bin/python" integration-tests/python/hub_client_deflate.py "ws://127.0.0.1:$PORT"
timeout 60 "$VENV/bin/python" integration-tests/python/http_publish.py "ws://127.0.0.1:$PORT" "http://127.0.0.1:$ADMIN" "$API_KEY"
# The README's curl lines, as written there.
answer=$(curl -sS -X POST "http://127.0.0.1:$ADMIN/publish" -H 'Content-Type: application/json' \
  -d '{"channel":"prices:SOL-USDC","data":{"price":187.42}}')
[ "$answer" = '{"seq":1}' ] || { echo "curl POST /publish answered $answer" >&2; exit 1; }
answer=$(curl -sS -X POST "http://127.0.0.1:$ADMIN/publish" -H 'Content-Type: application/json' \
  -d '[{"channel":"prices:SOL-USDC","data":1},{"channel":"","data":2}]')
case "$answer" in '[{"seq":2},{"error":{"code":"invalid_channel"'*) ;; *) echo "curl batch answered $answer" >&2; exit 1 ;; esac
status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$ADMIN/publish" -d '{"channel":""}')
[ "$status" = 400 ] || { echo "curl bad request got $status" >&2; exit 1; }
# The public port, with the API key (the README's line) and without it.
answer=$(curl -sS -X POST "http://127.0.0.1:$PORT/publish" -H "Authorization: apikey $API_KEY" \
  -d '{"channel":"prices:SOL-USDC","data":{"price":187.43}}')
[ "$answer" = '{"seq":3}' ] || { echo "curl POST /publish on the public port answered $answer" >&2; exit 1; }
status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/publish" -d '{"channel":"a","data":1}')
[ "$status" = 401 ] || { echo "curl without the API key got $status" >&2; exit 1; }
echo "curl http publish: ok"
PYTHONDONTWRITEBYTECODE=1 WS_SERVER_BIN=target/release/ws-server PYTHONPATH=clients/python \
  timeout 300 "$VENV/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests

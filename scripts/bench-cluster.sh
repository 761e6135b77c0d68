#!/usr/bin/env bash
# Cross-hub fan-out (docs/SCALING.md): 1,000 subscribers, one publisher at max rate, 5 s.
#   scripts/bench-cluster.sh embedded|redis-one|redis-cross RUN   (HUB=path: another hub binary)
# embedded: one hub, no Redis; redis-one: one hub through Redis; redis-cross: publisher on
# hub A (core 1), subscribers on hub B (core 0), Redis between. Needs redis-server.
set -u
cd "$(dirname "$0")/.."
cargo build --release -q -p ws-server -p ws-bench
HUB=${HUB:-target/release/ws-server}; BENCH=target/release/ws-bench
# The hub's default configuration (WS_HOST only binds it to loopback).
ENVS="WS_HOST=127.0.0.1 RUST_LOG=warn"
mode=$1; run=$2; out=${OUT:-docs/bench/results}
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & R=$!
sleep 0.5
case $mode in
  embedded) env $ENVS WS_PORT=9400 taskset -c 0 $HUB >/dev/null 2>&1 & A=$!; B=$A; PUB=9400 ;;
  redis-one) env $ENVS WS_PORT=9400 WS_REDIS_URL=redis://127.0.0.1:6390 taskset -c 0 $HUB >/dev/null 2>&1 & A=$!; B=$A; PUB=9400 ;;
  redis-cross) env $ENVS WS_PORT=9400 WS_REDIS_URL=redis://127.0.0.1:6390 taskset -c 1 $HUB >/dev/null 2>&1 & A=$!
               env $ENVS WS_PORT=9401 WS_REDIS_URL=redis://127.0.0.1:6390 taskset -c 0 $HUB >/dev/null 2>&1 & B=$!; PUB=9400 ;;
esac
sleep 1
SUBPORT=$([ "$mode" = redis-cross ] && echo 9401 || echo 9400)
taskset -c 1 $BENCH load --url ws://127.0.0.1:$SUBPORT --publish-url ws://127.0.0.1:$PUB --subscribers 1000 \
  --duration 5 --server-pid $B --label "CLUSTER-$mode" --json $out/CLUSTER-$mode-hub-$run.json 2>/dev/null | tail -3
kill $A $B $R 2>/dev/null; wait 2>/dev/null

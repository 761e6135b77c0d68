#!/usr/bin/env bash
# Cross-hub fan-out (docs/SCALING.md): 1,000 subscribers, one publisher at max rate, 5 s.
#   scripts/bench-cluster.sh embedded|redis-one|redis-cross|cluster-cross RUN
# embedded: one hub, no Redis; redis-one: one hub through Redis; redis-cross: publisher on
# hub A (core 1), subscribers on hub B (core 0), Redis between; cluster-cross: the same
# through a 3-primary Redis Cluster (WS_REDIS_CLUSTER_NODES). Needs redis-server (and
# redis-cli for the cluster).
# Environment: HUB=path (another hub binary); COLD=N (hub B also follows N cold channels,
# one publication/s each, or COLD_RATE publications/s over them; the label and file name
# get -coldN, and -rateR with COLD_RATE); COLD_UNFOLLOWED=1: the cold channels are published
# on but nobody subscribes to them, so no hub follows them (label -unfollowed).
# Prints the Redis CPU (all its processes) per publication after the run.
set -u
cd "$(dirname "$0")/.."
cargo build --release -q -p ws-server -p ws-bench
HUB=${HUB:-target/release/ws-server}; BENCH=target/release/ws-bench
COLD=${COLD:-0}; COLD_RATE=${COLD_RATE:-}
# The hub's default configuration (WS_HOST only binds it to loopback).
ENVS="WS_HOST=127.0.0.1 RUST_LOG=warn"
mode=$1; run=$2; out=${OUT:-docs/bench/results}
label=CLUSTER-$mode; [ "$COLD" -gt 0 ] && label=$label-cold$COLD
[ -n "$COLD_RATE" ] && label=$label-rate$COLD_RATE
[ -n "${COLD_UNFOLLOWED:-}" ] && label=$label-unfollowed
work=$(mktemp -d)
REDIS_PIDS=""
if [ "$mode" = cluster-cross ]; then
  for port in 6391 6392 6393; do
    redis-server --port $port --bind 127.0.0.1 --dir "$work" --cluster-enabled yes \
      --cluster-config-file nodes-$port.conf --save "" --appendonly no >/dev/null 2>&1 & REDIS_PIDS="$REDIS_PIDS $!"
  done
  sleep 0.5
  redis-cli --cluster create 127.0.0.1:6391 127.0.0.1:6392 127.0.0.1:6393 --cluster-replicas 0 --cluster-yes >/dev/null
  until redis-cli -p 6391 cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  REDIS="WS_REDIS_CLUSTER_NODES=redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393"
else
  redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & REDIS_PIDS=$!
  sleep 0.5
  REDIS="WS_REDIS_URL=redis://127.0.0.1:6390"
fi
case $mode in
  embedded) env $ENVS WS_PORT=9400 taskset -c 0 $HUB >/dev/null 2>&1 & A=$!; B=$A; PUB=9400 ;;
  redis-one) env $ENVS WS_PORT=9400 $REDIS taskset -c 0 $HUB >/dev/null 2>&1 & A=$!; B=$A; PUB=9400 ;;
  redis-cross|cluster-cross)
    env $ENVS WS_PORT=9400 $REDIS taskset -c 1 $HUB >/dev/null 2>&1 & A=$!
    env $ENVS WS_PORT=9401 $REDIS taskset -c 0 $HUB >/dev/null 2>&1 & B=$!; PUB=9400 ;;
esac
sleep 1
# CPU ticks (user + system) of the Redis processes so far.
redis_ticks() { for p in $REDIS_PIDS; do awk '{print $14 + $15}' /proc/$p/stat; done | awk '{s += $1} END {print s}'; }
before=$(redis_ticks)
SUBPORT=$(case $mode in redis-cross|cluster-cross) echo 9401 ;; *) echo 9400 ;; esac)
taskset -c 1 $BENCH load --url ws://127.0.0.1:$SUBPORT --publish-url ws://127.0.0.1:$PUB --subscribers 1000 \
  --cold-channels "$COLD" ${COLD_RATE:+--cold-rate $COLD_RATE} ${COLD_UNFOLLOWED:+--cold-unfollowed} --duration 5 --server-pid $B --label "$label" --json $out/$label-hub-$run.json 2>/dev/null | tail -3
after=$(redis_ticks)
python3 - "$out/$label-hub-$run.json" "$before" "$after" "${COLD_RATE:-$COLD}" <<'PY'
import json, os, sys
report = json.load(open(sys.argv[1]))
ticks = float(sys.argv[3]) - float(sys.argv[2])
# The cold publications (argv[4] per second) ran for the whole run too.
seconds = report["connect_s"] + report["duration_s"] + report["drain_s"] + 0.5
publications = report["published"] + int(sys.argv[4]) * seconds
cpu_s = ticks / os.sysconf("SC_CLK_TCK")
print(f"Redis CPU {cpu_s:.2f} s for ~{publications:.0f} publications: {cpu_s / publications * 1e6:.1f} us each")
PY
kill $A $B $REDIS_PIDS 2>/dev/null; wait 2>/dev/null
rm -rf "$work"

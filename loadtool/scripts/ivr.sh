#!/usr/bin/env bash
# IVR media benchmark: start gatewayd with the ivr plugin in echo mode on a free port, then
# run `gatewayd-load ivr` against it (N concurrent calls, one 20 ms frame each way per call).
# Usage: loadtool/scripts/ivr.sh [steps, default 250,500,750,1000,1250,1500] [seconds per step, default 10]
# Knobs (docs/benchmarks.md, IVR): IVR_BENCH_RT (daemon [media] realtime_priority; default: the daemon's, 20),
# IVR_BENCH_MEDIA_THREADS ([media] threads; default: the daemon's), IVR_BENCH_NICE (nice value
# for the daemon), IVR_BENCH_DAEMON_CPUS / IVR_BENCH_LOAD_CPUS (taskset CPU lists),
# IVR_BENCH_LOAD_RT (SCHED_RR priority for the load tool), IVR_BENCH_COALESCE_US ([media]
# coalesce_us; default: the daemon's, 500).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release"
STEPS="${1:-250,500,750,1000,1250,1500}"
SECONDS_PER_STEP="${2:-10}"
ulimit -n 65536 2>/dev/null || true
DIR="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$DIR/gatewayd.toml" <<TOML
[daemon]
state_dir = "$DIR/state"
log_level = "info"
log_format = "json"
[media]
${IVR_BENCH_RT:+realtime_priority = $IVR_BENCH_RT}
${IVR_BENCH_MEDIA_THREADS:+threads = $IVR_BENCH_MEDIA_THREADS}
${IVR_BENCH_COALESCE_US:+coalesce_us = $IVR_BENCH_COALESCE_US}
[listeners.ivr]
address = "127.0.0.1:$PORT"
send_queue_frames = 1024
[[routes]]
listener = "ivr"
path = "/"
kind = "websocket"
plugin = "ivr"
auth = "none"
media = { codec = "l16", rate = 8000 }
[plugins.ivr]
file = "$PWD/build/plugins/ivr.wasm"
[plugins.ivr.config]
# Echo only: no DTMF or hangup while the benchmark streams.
dtmf_delay_ms = 3600000
TOML
${IVR_BENCH_DAEMON_CPUS:+taskset -c $IVR_BENCH_DAEMON_CPUS} ${IVR_BENCH_NICE:+nice -n $IVR_BENCH_NICE} "$BIN/gatewayd" run --config "$DIR/gatewayd.toml" 2> "$DIR/gatewayd.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
${IVR_BENCH_LOAD_CPUS:+taskset -c $IVR_BENCH_LOAD_CPUS} ${IVR_BENCH_LOAD_RT:+chrt -r $IVR_BENCH_LOAD_RT} "$BIN/gatewayd-load" ivr --url "ws://127.0.0.1:$PORT/" --pid "$PID" --steps "$STEPS" --seconds "$SECONDS_PER_STEP" --daemon-log "$DIR/gatewayd.log"

#!/usr/bin/env bash
# Twilio Media Streams benchmark: start gatewayd with CONFIG (a config whose twilio route echoes
# the caller's audio, e.g. the benchmark config of docs/benchmarks.md), then run
# `gatewayd-load twilio --calls N --secs S` against it: N concurrent simulated Twilio calls, each
# with a signed webhook and a Media Stream, 50 media messages a second each way; prints the
# gateway's frame jitter, gaps, losses, setup failures, and the daemon's CPU and memory.
# Usage: loadtool/scripts/twilio.sh CONFIG [calls, default 100] [seconds per call, default 10]
# Knobs: GATEWAYD_BIN (default: the release build), TWILIO_BENCH_BASE (the daemon's main
# listener, default http://127.0.0.1:8000; must match CONFIG), TWILIO_BENCH_PUBLIC_BASE_URL
# (CONFIG's [twilio] public_base_url, default TWILIO_BENCH_BASE), TWILIO_AUTH_TOKEN (CONFIG's
# token; default the development token), TWILIO_BENCH_TONE_HZ (the callers' tone, default 0:
# silence), TWILIO_BENCH_JSON=1 (one JSON object instead of lines), TWILIO_BENCH_DAEMON_CPUS /
# TWILIO_BENCH_LOAD_CPUS (taskset CPU lists).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release"
CONFIG="${1:?usage: loadtool/scripts/twilio.sh CONFIG [calls] [seconds]}"
CALLS="${2:-100}"
SECS="${3:-10}"
GATEWAYD_BIN="${GATEWAYD_BIN:-$BIN/gatewayd}"
BASE="${TWILIO_BENCH_BASE:-http://127.0.0.1:8000}"
HOSTPORT="${BASE#http://}"
HOST="${HOSTPORT%:*}"
PORT="${HOSTPORT##*:}"
ulimit -n 65536 2>/dev/null || true
DIR="$(mktemp -d)"
if (echo > "/dev/tcp/$HOST/$PORT") 2>/dev/null; then
    echo "something already listens on $HOST:$PORT; stop it or set TWILIO_BENCH_BASE" >&2
    exit 1
fi
${TWILIO_BENCH_DAEMON_CPUS:+taskset -c $TWILIO_BENCH_DAEMON_CPUS} "$GATEWAYD_BIN" run --config "$CONFIG" 2> "$DIR/gatewayd.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do (echo > "/dev/tcp/$HOST/$PORT") 2>/dev/null && break; sleep 0.1; done
if ! (echo > "/dev/tcp/$HOST/$PORT") 2>/dev/null; then
    echo "gatewayd did not listen on $HOST:$PORT within 10 s; its log:" >&2
    tail -20 "$DIR/gatewayd.log" >&2
    exit 1
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
${TWILIO_BENCH_LOAD_CPUS:+taskset -c $TWILIO_BENCH_LOAD_CPUS} "$BIN/gatewayd-load" twilio \
    --base "$BASE" ${TWILIO_BENCH_PUBLIC_BASE_URL:+--public-base-url "$TWILIO_BENCH_PUBLIC_BASE_URL"} \
    --calls "$CALLS" --secs "$SECS" --tone-hz "${TWILIO_BENCH_TONE_HZ:-0}" --pid "$PID" \
    ${TWILIO_BENCH_JSON:+--json}

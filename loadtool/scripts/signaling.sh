#!/usr/bin/env bash
# Signaling benchmarks (issue #2). Prints figures as `name: value unit` lines.
#   1. plugin dispatch cost per event (in-process, real runtime and plugin)
#   2. invite -> ring latency under open-loop load (default 5,000 invites/s over 500 pairs)
#   3. daemon resident memory per idle connection (default 10,000 connections)
# Usage: loadtool/scripts/signaling.sh   (after `make build`)
# Env: RATE, PAIRS, DURATION, IDLE_CONNECTIONS, PORT.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CARGO_TARGET_DIR:-target}/release
RATE=${RATE:-5000}; PAIRS=${PAIRS:-500}; DURATION=${DURATION:-10}
IDLE=${IDLE_CONNECTIONS:-10000}; PORT=${PORT:-18000}
SECRET=gatewayd-bench-secret-0123456789abcdef
pid=""
BUSINESS=bench-business
ulimit -n "$(ulimit -Hn)"  # 10,000 connections need as many descriptors on each side

work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; cp "$work/daemon.log" /tmp/gatewayd-bench-daemon.log 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/gatewayd.toml" <<TOML
[daemon]
state_dir = "$work/state"
log_level = "warn"
[[auth.keys]]
algorithm = "HS256"
secret = "$SECRET"
[listeners.main]
address = "127.0.0.1:$PORT"
[[routes]]
listener = "main"
path = "/ws/signaling/"
kind = "websocket"
plugin = "signaling"
[plugins.signaling]
file = "$PWD/build/plugins/signaling.wasm"
[plugins.signaling.capabilities]
store = "read"
TOML

# Tenants: one business, $PAIRS agents (user ids 100000..) with one membership each.
python3 - "$work/tenants.json" "$PAIRS" "$BUSINESS" <<'PY'
import json, sys
path, n, b = sys.argv[1], int(sys.argv[2]), sys.argv[3]
json.dump({
  "businesses": [{"id": b, "name": "Bench"}],
  "agents": [{"id": f"bench-agent-{i}", "user_id": str(100000 + i)} for i in range(n)],
  "memberships": [{"agent_id": f"bench-agent-{i}", "business_id": b} for i in range(n)],
}, open(path, "w"))
PY
"$BIN/gatewayd" --config "$work/gatewayd.toml" tenant import "$work/tenants.json"

start_daemon() {
  "$BIN/gatewayd" --config "$work/gatewayd.toml" run 2>>"$work/daemon.log" &
  pid=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
  echo "daemon did not start"; cat "$work/daemon.log"; exit 1
}

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%FT%TZ)"
echo "## dispatch"
"$BIN/gatewayd-load" dispatch --plugin build/plugins/signaling.wasm --events 200000

echo "## invites"
start_daemon
"$BIN/gatewayd-load" invites --url "ws://127.0.0.1:$PORT" --secret "$SECRET" --business "$BUSINESS" \
  --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION"
echo "daemon_cpu_seconds: $(ps -o times= -p $pid | tr -d ' ')"
kill $pid; wait $pid 2>/dev/null || true

echo "## idle"
start_daemon
"$BIN/gatewayd-load" idle --url "ws://127.0.0.1:$PORT" --pid "$pid" --connections "$IDLE" --business "$BUSINESS"
kill $pid; wait $pid 2>/dev/null || true

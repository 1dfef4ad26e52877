#!/usr/bin/env bash
# Chat fan-out benchmark (docs/benchmarks.md, "Chat"): starts the release daemon on a temporary
# SQLite (or $CHAT_BENCH_PG) database with the chat plugin, creates one business and one agent,
# and runs `gatewayd-load chat`. Usage: loadtool/scripts/chat.sh [sessions] [rate] [duration]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CARGO_TARGET_DIR:-target}/release
SESSIONS=${1:-1000}
RATE=${2:-10000}
DURATION=${3:-10}
PORT=${CHAT_BENCH_PORT:-18731}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
ulimit -n 65536 2>/dev/null || true
STORAGE=${CHAT_BENCH_PG:-sqlite://gatewayd.db}
cat > "$DIR/gatewayd.toml" <<TOML
[daemon]
state_dir = "$DIR/state"
log_level = "warn"
[storage]
url = "$STORAGE"
max_connections = ${CHAT_BENCH_POOL:-8}
[auth]
[[auth.keys]]
algorithm = "HS256"
secret = "gatewayd-development-secret-change-me"
[auth.signing]
algorithm = "HS256"
secret = "gatewayd-development-secret-change-me"
[listeners.main]
address = "127.0.0.1:$PORT"
send_queue_frames = 4096
[[routes]]
listener = "main"
path = "/chat/"
prefix = true
kind = "http"
plugin = "chat"
[[routes]]
listener = "main"
path = "/ws/visitor-chat/"
kind = "websocket"
plugin = "chat"
[plugins.chat]
file = "$PWD/build/plugins/chat.wasm"
[plugins.chat.limits]
event_timeout_ms = 2000
[plugins.chat.capabilities]
store = "read-write"
[plugins.chat.capabilities.files]
dir = "$DIR/media"
[plugins.chat.config]
# The benchmark's per-session rate (visitor and agent together) is above the default limit,
# and all its sessions start from one address.
rate_per_sec = 1000.0
rate_burst = 1000.0
max_starts_per_ip = 1000000
TOML
"$BIN/gatewayd" run --config "$DIR/gatewayd.toml" &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
B=b0000000-0000-4000-8000-00000000c4a7
"$BIN/gatewayd" --config "$DIR/gatewayd.toml" tenant add-business "$B" --name bench >/dev/null
"$BIN/gatewayd" --config "$DIR/gatewayd.toml" tenant add-agent a0000000-0000-4000-8000-00000000c4a7 --user-id 100000 >/dev/null
"$BIN/gatewayd" --config "$DIR/gatewayd.toml" tenant add-membership --agent a0000000-0000-4000-8000-00000000c4a7 --business "$B" >/dev/null
echo "storage: ${STORAGE%%:*}  sessions: $SESSIONS  rate: $RATE msg/s  duration: ${DURATION}s"
"$BIN/gatewayd-load" chat --addr "127.0.0.1:$PORT" --business "$B" --user-id 100000 \
  --sessions "$SESSIONS" --rate "$RATE" --duration "$DURATION" --pid "$PID"

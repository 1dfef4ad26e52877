#!/usr/bin/env bash
# Hot-reload benchmarks (issue #5): reload latency (file written -> first event served by the
# new version) against a running daemon, and dispatch cost before/during/after a reload.
# Usage: loadtool/scripts/reload.sh   (after `make build`)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CARGO_TARGET_DIR:-target}/release
PORT=${PORT:-18100}; ROUNDS=${ROUNDS:-10}
work=$(mktemp -d); pid=""
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
cp build/plugins/fault-test.wasm "$work/fault-test.wasm"
cat > "$work/gatewayd.toml" <<TOML
[daemon]
state_dir = "$work/state"
log_level = "warn"
[listeners.main]
address = "127.0.0.1:$PORT"
[[routes]]
listener = "main"
path = "/ws/faults/"
kind = "websocket"
plugin = "fault-test"
auth = "none"
[plugins.fault-test]
file = "$work/fault-test.wasm"
TOML
"$BIN/gatewayd" --config "$work/gatewayd.toml" run 2>>"$work/daemon.log" &
pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
echo "# machine: $(nproc) cores; $(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## reload latency"
"$BIN/gatewayd-load" reload-latency --url "ws://127.0.0.1:$PORT/ws/faults/" --file "$work/fault-test.wasm" --rounds "$ROUNDS"
echo "## dispatch around a reload"
"$BIN/gatewayd-load" reload-dispatch

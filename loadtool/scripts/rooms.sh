#!/usr/bin/env bash
# Rooms benchmark (docs/benchmarks.md, section Rooms): a fresh daemon with the default config on
# spare ports and a temporary SQLite state dir, then `gatewayd-load rooms` (500 rooms x 4
# participants relaying ICE candidates) closed loop and at fixed rates. Run after `make build`.
# The agents the clients join as are imported first (`gatewayd-load rooms --print-tenants`),
# and the per-connection message rate is lifted: this measures relaying, not the rate limit.
# ROOMS_BENCH_PG=postgres://postgres@127.0.0.1:5432/<db> runs on that (empty) PostgreSQL
# database instead of SQLite.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
sed -e "s#state_dir = \"../state\"#state_dir = \"$WORK/state\"#" \
    -e 's#127.0.0.1:8000#127.0.0.1:18700#' -e 's#127.0.0.1:3000#127.0.0.1:13700#' \
    -e "s#\.\./build/plugins#$PWD/build/plugins#" -e 's#log_level = "info"#log_level = "warn"#' \
    -e 's#^message_rate_per_sec = 20$#message_rate_per_sec = 1000000#' \
    config/gatewayd.toml > "$WORK/gatewayd.toml"
if [ -n "${ROOMS_BENCH_PG:-}" ]; then
  sed -i "s#^url = \"sqlite://gatewayd.db\"#url = \"$ROOMS_BENCH_PG\"#" "$WORK/gatewayd.toml"
fi
run() {
  "$BIN/gatewayd" run --config "$WORK/gatewayd.toml" 2>"$WORK/daemon.log" &
  PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:13700/healthz >/dev/null && break; sleep 0.1; done
  "$BIN/gatewayd-load" rooms --rooms 500 --participants 4 --print-tenants > "$WORK/tenants.json"
  "$BIN/gatewayd" --config "$WORK/gatewayd.toml" tenant import "$WORK/tenants.json" >/dev/null
  echo "== gatewayd-load rooms $*"
  "$BIN/gatewayd-load" rooms --addr 127.0.0.1:13700 --rooms 500 --participants 4 --duration 10 "$@"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  rm -rf "$WORK/state"
}
run
for rate in 1000 2000 4000; do run --rate "$rate"; done

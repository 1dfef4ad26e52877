#!/usr/bin/env bash
# Twilio Media Streams benchmark (docs/benchmarks.md, "Twilio Media Streams"): for each step of N
# calls, start a fresh server on a free loopback port, then run `gatewayd-load twilio --calls N
# --secs S` against it: N concurrent simulated Twilio calls, each with a signed webhook, the
# TwiML answer and a Media Stream sending 50 JSON media messages a second; the server echoes
# the caller's audio. Figures are measured at the client: inter-arrival jitter of the frames it
# receives, gaps, frames lost, setup failures; the server's CPU and memory from /proc.
#
# Usage: loadtool/scripts/twilio.sh [calls, default 100; a comma list runs one step each] [seconds per call, default 30]
#
# Servers (TWILIO_BENCH_TARGET):
#   gatewayd (default): the release daemon with a config written here: the twilio plugin's
#     routes, [twilio] with the development token, [plugins.twilio] echo = true,
#     transcribe = false, no welcome message, a business for default_business (added with
#     `gatewayd tenant add-business`), [media] as the default config.
#   python: loadtool/baselines/twilio_echo.py (aiohttp + Twilio's helper library), installed
#     into a virtualenv (TWILIO_BENCH_VENV, default /var/cache/gatewayd-ci/twilio-echo-venv)
#     from loadtool/baselines/twilio_echo.requirements.txt when missing or changed.
# Knobs: TWILIO_BENCH_PYTHON_PACE (arrival, default, or clock: the baseline's pacing),
# TWILIO_BENCH_PYTHON_UVLOOP=1 (the baseline on uvloop), TWILIO_BENCH_RT / TWILIO_BENCH_COALESCE_US
# ([media] realtime_priority / coalesce_us; default the default config's, 20 / 500),
# TWILIO_BENCH_MEDIA_THREADS ([media] threads; default the daemon's, half the CPUs),
# TWILIO_BENCH_TONE_HZ (the callers' tone, default 0: silence), TWILIO_BENCH_DAEMON_CPUS /
# TWILIO_BENCH_LOAD_CPUS (taskset CPU lists; default none, as the other benchmarks),
# TWILIO_BENCH_OUT (a directory to keep each step's JSON report and the server's log in),
# GATEWAYD_BIN (default: the release build).
# Speech on every call (gatewayd only): TWILIO_BENCH_STT=offline transcribes every call with the
# offline recogniser (PocketSphinx in Wasm, models from build/models as `make setup` installs
# them) and counts each call's stored final transcripts (phone_call_messages) after the step;
# TWILIO_BENCH_KEYTERMS (comma-separated phrases: the recogniser's grammar, as [plugins.twilio.config]
# keyterms); TWILIO_BENCH_WAV (the callers' audio, looped with TWILIO_BENCH_HOLD_SECS of silence,
# default 1.5, after each play; default with STT: a LibriVox excerpt of the PocketSphinx sources).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release"
STEPS="${1:-100}"
SECS="${2:-30}"
TARGET="${TWILIO_BENCH_TARGET:-gatewayd}"
GATEWAYD_BIN="${GATEWAYD_BIN:-$BIN/gatewayd}"
TOKEN="gatewayd-development-twilio-token"
BUSINESS="8c3d5e71-5d14-4f7b-a6f9-2c90b3c5b8e1"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
case "$TARGET" in
gatewayd) test -x "$GATEWAYD_BIN" && test -f build/plugins/twilio.wasm || { echo "build first: make build" >&2; exit 1; } ;;
python)
    VENV="${TWILIO_BENCH_VENV:-/var/cache/gatewayd-ci/twilio-echo-venv}"
    REQ=loadtool/baselines/twilio_echo.requirements.txt
    if ! { cmp -s "$REQ" "$VENV/requirements.txt" && test -x "$VENV/bin/python"; }; then
        echo "installing the baseline's packages into $VENV"
        rm -rf "$VENV" && python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
        cp "$REQ" "$VENV/requirements.txt"
    fi
    ;;
*) echo "TWILIO_BENCH_TARGET must be gatewayd or python" >&2; exit 1 ;;
esac
test -x "$BIN/gatewayd-load" || { echo "build first: make build" >&2; exit 1; }
STT="${TWILIO_BENCH_STT:-}"
case "$STT" in
"") SPEECH_TOML=""; TRANSCRIBE=false ;;
offline)
    test "$TARGET" = gatewayd || { echo "TWILIO_BENCH_STT is for gatewayd" >&2; exit 1; }
    SPEECH_TOML="$("$BIN/gatewayd-load" offline-providers-toml --plugins "$PWD/build/plugins" --models "$PWD/build/models")"
    TRANSCRIBE=true
    LIBRIVOX="${GATEWAYD_SPEECH_CACHE:-/var/cache/gatewayd-ci/speech}/pocketsphinx-5.1.1/test/data/librivox"
    TWILIO_BENCH_WAV="${TWILIO_BENCH_WAV:-$LIBRIVOX/sense_and_sensibility_01_austen_64kb-0930.wav}"
    ;;
*) echo "TWILIO_BENCH_STT must be offline (or unset)" >&2; exit 1 ;;
esac
KEYTERMS_TOML=""
if [ -n "${TWILIO_BENCH_KEYTERMS:-}" ]; then
    KEYTERMS_TOML="keyterms = $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1].split(",")))' "$TWILIO_BENCH_KEYTERMS")"
fi
AUDIO_ARGS=(--tone-hz "${TWILIO_BENCH_TONE_HZ:-0}")
if [ -n "${TWILIO_BENCH_WAV:-}" ]; then
    test -f "$TWILIO_BENCH_WAV" || { echo "$TWILIO_BENCH_WAV is missing (make setup installs the PocketSphinx sources)" >&2; exit 1; }
    AUDIO_ARGS=(--wav "$TWILIO_BENCH_WAV" --hold-secs "${TWILIO_BENCH_HOLD_SECS:-1.5}")
fi
DIR="$(mktemp -d)"
PID=
stop_server() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=
    fi
}
trap 'stop_server; rm -rf "$DIR"' EXIT
if [ -n "${TWILIO_BENCH_OUT:-}" ]; then mkdir -p "$TWILIO_BENCH_OUT"; fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
KNOBS="$(env | grep -E '^TWILIO_BENCH_[A-Z_]+=' | grep -v '^TWILIO_BENCH_OUT=' | sort | tr '\n' ' ' || true)"
echo "server: $TARGET${KNOBS:+ ($KNOBS)}"
IFS=',' read -ra NS <<< "$STEPS"
for N in "${NS[@]}"; do
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    BASE="http://127.0.0.1:$PORT"
    STEP="$DIR/step-$N"
    mkdir -p "$STEP"
    if [ "$TARGET" = gatewayd ]; then
        cat > "$STEP/gatewayd.toml" <<TOML
[daemon]
state_dir = "$STEP/state"
log_level = "info"
log_format = "json"
[media]
realtime_priority = ${TWILIO_BENCH_RT:-20}
coalesce_us = ${TWILIO_BENCH_COALESCE_US:-500}
${TWILIO_BENCH_MEDIA_THREADS:+threads = $TWILIO_BENCH_MEDIA_THREADS}
[listeners.main]
address = "127.0.0.1:$PORT"
# Every call is a Media Stream plus two webhooks, all from 127.0.0.1.
max_connections = 10000
max_connections_per_ip = 10000
send_queue_frames = 1024
[twilio]
auth_token = "$TOKEN"
public_base_url = "$BASE"
[[routes]]
name = "twilio-media"
listener = "main"
path = "/api/telephony/twilio/media-stream"
kind = "websocket"
plugin = "twilio"
auth = "none"
twilio_signature = true
media = { codec = "pcmu", rate = 8000, framing = "twilio" }
[[routes]]
name = "twilio-webhooks"
listener = "main"
path = "/api/telephony/twilio/"
prefix = true
kind = "http"
plugin = "twilio"
auth = "none"
twilio_signature = true
[plugins.twilio]
file = "$PWD/build/plugins/twilio.wasm"
fault_report = "none"
[plugins.twilio.limits]
event_timeout_ms = 1000
memory_mb = 64
max_instances = 64
[plugins.twilio.capabilities]
store = "read-write"
[plugins.twilio.config]
default_business = "$BUSINESS"
stream_path = "/api/telephony/twilio/media-stream"
welcome_message = ""
transcribe = $TRANSCRIBE
echo = true
$KEYTERMS_TOML
$SPEECH_TOML
TOML
        "$GATEWAYD_BIN" tenant --config "$STEP/gatewayd.toml" add-business "$BUSINESS" --name "Benchmark" > /dev/null
        ${TWILIO_BENCH_DAEMON_CPUS:+taskset -c $TWILIO_BENCH_DAEMON_CPUS} "$GATEWAYD_BIN" run --config "$STEP/gatewayd.toml" 2> "$STEP/server.log" &
        PID=$!
    else
        ${TWILIO_BENCH_DAEMON_CPUS:+taskset -c $TWILIO_BENCH_DAEMON_CPUS} "$VENV/bin/python" loadtool/baselines/twilio_echo.py \
            --port "$PORT" --public-base-url "$BASE" --auth-token "$TOKEN" --pace "${TWILIO_BENCH_PYTHON_PACE:-arrival}" \
            ${TWILIO_BENCH_PYTHON_UVLOOP:+--uvloop} 2> "$STEP/server.log" &
        PID=$!
    fi
    for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    if ! (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        echo "the $TARGET server did not listen on 127.0.0.1:$PORT within 10 s; its log:" >&2
        tail -20 "$STEP/server.log" >&2
        exit 1
    fi
    sleep 1
    echo "--- $N calls, $SECS s, $TARGET, $(date -u '+%Y-%m-%d %H:%M:%S') UTC, load average $(cut -d' ' -f1-3 /proc/loadavg) ---"
    ${TWILIO_BENCH_LOAD_CPUS:+taskset -c $TWILIO_BENCH_LOAD_CPUS} "$BIN/gatewayd-load" twilio \
        --base "$BASE" --auth-token "$TOKEN" --calls "$N" --secs "$SECS" \
        "${AUDIO_ARGS[@]}" --pid "$PID" --json > "$STEP/report.json"
    stop_server
    if [ -n "$STT" ]; then
        # Each call's final transcripts, as the twilio plugin stored them.
        python3 - "$STEP/state/gatewayd.db" "$N" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = dict(db.execute("SELECT call_id, COUNT(*) FROM phone_call_messages "
                       "WHERE sender_type = 'customer' AND is_final = 1 GROUP BY call_id"))
calls = [c for (c,) in db.execute("SELECT call_id FROM phone_calls")]
per_call = sorted(rows.get(c, 0) for c in calls)
print(f"final transcripts stored: {sum(per_call)} over {len(calls)} calls "
      f"(per call min {per_call[0] if per_call else 0}, median {per_call[len(per_call) // 2] if per_call else 0}, "
      f"max {per_call[-1] if per_call else 0})")
PY
    fi
    python3 - "$STEP/report.json" "$STEP/server.log" "$TARGET" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
j = r["inbound_jitter"]
ms = lambda us: f"{us / 1000:.1f} ms"
per_call = r["daemon_rss_kib_per_call"]
print(f"calls set up: {r['calls_set_up']} of {r['calls']} (setup failures {r['setup_failures']} {r['setup_errors'] or ''}, "
      f"setup {r['setup_secs']} s, webhook p99 {ms(r['setup_webhook']['p99_us'])}, upgrade p99 {ms(r['setup_upgrade']['p99_us'])})")
print(f"frames sent {r['frames_sent']}, received {r['frames_received']} (per call {r['frames_received_per_call_min']}-{r['frames_received_per_call_max']}), "
      f"missing {r['frames_missing']}, received before the first sent {r['frames_received_before_start']}")
print(f"frames received per second (expected {r['frames_expected_per_s']}): {r['frames_received_per_s']}")
print(f"inter-arrival jitter |gap - 20 ms| p50 / p90 / p99 / p99.9 / max: {ms(j['p50_us'])} / {ms(j['p90_us'])} / "
      f"{ms(j['p99_us'])} / {ms(j['p999_us'])} / {ms(j['max_us'])} ({j['count']} gaps)")
print(f"gaps >= 40 ms: {r['gaps_over_40ms']}, longest gap {r['max_gap_ms']:.1f} ms")
sl = r["send_lateness"]
print(f"simulator's own sends: late max {sl['max_us'] / 1000:.1f} ms, over 20 ms late {sl['over_one_frame']}")
print(f"streams closed early: {r['streams_closed_early']} {r['close_codes'] or ''}, status callback failures {r['status_callback_failures']}")
cpu = r["daemon_cpu_percent"]
print(f"server CPU {cpu:.1f} % of one core ({cpu / max(r['calls_set_up'], 1):.3f} % per call), "
      f"RSS {r['daemon_rss_kib']} KiB ({per_call:.1f} KiB per call over idle); load tool CPU {r['loadtool_cpu_percent']:.1f} %")
if sys.argv[3] == "gatewayd":
    # The daemon's own account of each call ("media call ended", one JSON log line per call).
    keys = ["frames_in", "frames_out", "late_frames", "skipped_slots", "dropped_frames", "rejected_frames"]
    tot = dict.fromkeys(keys, 0)
    calls, max_delay, warnings = 0, 0, 0
    for line in open(sys.argv[2]):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        f = e.get("fields", {})
        if e.get("level") in ("WARN", "ERROR"):
            warnings += 1
        if f.get("message") == "media call ended":
            calls += 1
            for k in keys:
                tot[k] += int(f.get(k, 0))
            max_delay = max(max_delay, int(f.get("max_delay_us", 0)))
    print(f"daemon's log: {calls} calls ended; " + ", ".join(f"{k} {v}" for k, v in tot.items())
          + f", max send delay {max_delay / 1000:.1f} ms; {warnings} warnings/errors")
else:
    for line in open(sys.argv[2]):
        if line.startswith("twilio_echo: streams"):
            print("server's count: " + line.strip()[len("twilio_echo: "):])
PY
    if [ -n "${TWILIO_BENCH_OUT:-}" ]; then
        cp "$STEP/report.json" "$TWILIO_BENCH_OUT/$TARGET-$N.json"
        cp "$STEP/server.log" "$TWILIO_BENCH_OUT/$TARGET-$N.log"
    fi
    rm -rf "$STEP"
done

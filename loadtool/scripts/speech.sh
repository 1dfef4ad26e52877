#!/usr/bin/env bash
# Speech benchmark (docs/benchmarks.md, Speech): `gatewayd-load speech` starts a fake Deepgram
# and a fake ElevenLabs in its own process, the daemon with the stt-deepgram, tts-elevenlabs
# and fault-test plugins, then runs N concurrent calls per step: each streams mu-law frames
# to be transcribed and is spoken to once.
# Usage: loadtool/scripts/speech.sh [steps, default 100,250,500] [seconds per step, default 10]
# Knobs: SPEECH_BENCH_CHUNK_MS (the Deepgram provider's chunk_ms, default 20: a message per
# frame); SPEECH_BENCH_TOML (appended to the daemon's config, e.g. "[media] threads = 2").
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release"
STEPS="${1:-100,250,500}"
SECONDS_PER_STEP="${2:-10}"
ulimit -n 65536 2>/dev/null || true
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$BIN/gatewayd-load" speech --gatewayd "$BIN/gatewayd" --plugins "$PWD/build/plugins" --steps "$STEPS" --seconds "$SECONDS_PER_STEP" --chunk-ms "${SPEECH_BENCH_CHUNK_MS:-20}" --extra-toml "${SPEECH_BENCH_TOML:-}"

#!/usr/bin/env bash
# Offline speech benchmark (docs/benchmarks.md, Offline speech): `gatewayd-load offline-speech`
# starts the daemon with the stt-pocketsphinx, tts-flite and fault-test plugins (models from
# build/models, as `make setup` installs them), then runs N concurrent calls per step, each
# saying a sentence (synthesised once by Flite) and 1.5 s of silence over and over, transcribed
# with PocketSphinx's full en-us language model; then N calls have Flite say it at once.
# Usage: loadtool/scripts/offline-speech.sh [steps, default 2,4,8,12,16] [seconds per step, default 30]
# Knobs: OFFLINE_BENCH_TOML (appended to the daemon's config); OFFLINE_BENCH_KEYTERMS
# (comma-separated phrases: transcribe with a grammar of them, as an IVR menu does).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/release"
STEPS="${1:-2,4,8,12,16}"
SECONDS_PER_STEP="${2:-30}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$BIN/gatewayd-load" offline-speech --gatewayd "$BIN/gatewayd" --plugins "$PWD/build/plugins" \
    --models "$PWD/build/models" --steps "$STEPS" --seconds "$SECONDS_PER_STEP" --extra-toml "${OFFLINE_BENCH_TOML:-}" \
    ${OFFLINE_BENCH_KEYTERMS:+--keyterms "$OFFLINE_BENCH_KEYTERMS"}

#!/bin/sh
# PocketSphinx 5.1.1 (BSD-2-Clause) for plugins/stt-pocketsphinx: fetches the PyPI source
# distribution into a cache outside the clone, unpacks it there (the C sources build.rs
# compiles, and the test recordings), and installs the US English model into a model directory.
#
#   scripts/speech/pocketsphinx.sh [MODEL_DIR]
#
# MODEL_DIR (default build/models/pocketsphinx under the repository root) receives `en-us/`
# (acoustic model), `en-us.lm.bin` (n-gram LM) and `cmudict-en-us.dict`: point the plugin's
# `[plugins.<name>.capabilities] data_dir` at it. The cache is $GATEWAYD_SPEECH_CACHE (default
# /var/cache/gatewayd-ci/speech); build.rs finds the sources at $POCKETSPHINX_SRC, default
# <cache>/pocketsphinx-5.1.1. Idempotent: nothing is downloaded or unpacked twice.
#
# Only the pocketsphinx sdist itself is taken from source: `--no-binary pocketsphinx` (not
# `:all:`) lets pip use wheels of the build backend it needs to read the sdist's metadata,
# where `:all:` would compile CMake from source first.
set -eu

VERSION=5.1.1
# sha256 of pocketsphinx-5.1.1.tar.gz on PyPI.
SHA256=675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${GATEWAYD_SPEECH_CACHE:-/var/cache/gatewayd-ci/speech}
SRC=$CACHE/pocketsphinx-$VERSION
TARBALL=$CACHE/pocketsphinx-$VERSION.tar.gz
MODEL_DIR=${1:-$ROOT/build/models/pocketsphinx}

mkdir -p "$CACHE"

# The files the build, the tests and the model install read: if all are there, the tree is
# intact (an interrupted unpack is redone).
intact() {
    for f in src/pocketsphinx.c src/lm/jsgf.c include/pocketsphinx.h test/data/goforward.raw \
        model/en-us/en-us.lm.bin model/en-us/cmudict-en-us.dict model/en-us/en-us/mdef \
        model/en-us/en-us/means model/en-us/en-us/sendump; do
        [ -s "$SRC/$f" ] || return 1
    done
    [ -f "$SRC/.unpacked" ]
}

if ! intact; then
    if [ ! -s "$TARBALL" ] || ! echo "$SHA256  $TARBALL" | sha256sum -c --status; then
        rm -f "$TARBALL"
        pip download --quiet --disable-pip-version-check --no-deps --no-binary pocketsphinx \
            "pocketsphinx==$VERSION" -d "$CACHE" >&2
    fi
    if ! echo "$SHA256  $TARBALL" | sha256sum -c --status; then
        echo "pocketsphinx.sh: $TARBALL does not have the expected sha256 $SHA256" >&2
        exit 1
    fi
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    tar -xzf "$TARBALL" -C "$SRC.tmp" --strip-components=1
    touch "$SRC.tmp/.unpacked"
    mv "$SRC.tmp" "$SRC"
    intact || { echo "pocketsphinx.sh: $SRC is incomplete after unpacking" >&2; exit 1; }
fi

# The model: copied (not linked) so the directory can be handed to the plugin as is.
mkdir -p "$MODEL_DIR"
copy() { cmp -s "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
mkdir -p "$MODEL_DIR/en-us"
for f in "$SRC"/model/en-us/en-us/*; do
    copy "$f" "$MODEL_DIR/en-us/$(basename "$f")"
done
copy "$SRC/model/en-us/en-us.lm.bin" "$MODEL_DIR/en-us.lm.bin"
copy "$SRC/model/en-us/cmudict-en-us.dict" "$MODEL_DIR/cmudict-en-us.dict"

echo "pocketsphinx $VERSION sources: $SRC (POCKETSPHINX_SRC)"
echo "pocketsphinx models: $MODEL_DIR (en-us/, en-us.lm.bin, cmudict-en-us.dict)"

#!/bin/sh
# Flite 2.2 for plugins/tts-flite: the C sources (compiled into the component by the crate's
# build.rs) and the voice files (read by the component at run time from its `/data` preopen).
#
#   scripts/speech/flite.sh [MODEL_DIR]      (default: build/models/flite under the repo root)
#
# 1. Fetches Debian bookworm's `flite_2.2.orig.tar.gz` (CMU's upstream tarball, BSD-style
#    licence) with `apt-get source --download-only`, using a deb-src list and apt state of its
#    own under the cache (the machine's apt configuration is not touched), checks its SHA-256
#    and unpacks it to $GATEWAYD_SPEECH_CACHE/flite-2.2 (the crate's default FLITE_SRC).
# 2. Dumps the clustergen voices named in FLITE_VOICES (default `slt`; `awb` and `rms` also
#    work) with Debian's native `flite -voice NAME -voicedump FILE` into MODEL_DIR as
#    cmu_us_NAME.flitevox, plus flite's COPYING (the voices' licence).
#
# Also runs scripts/speech/toolchain.sh (clang-16, wasi-libc, llvm-ar: the Wasm build's C
# toolchain) and installs Debian's `flite` package if missing. Idempotent: what is already there
# is kept.
#
# Then: cargo build --profile plugin --target wasm32-wasip2 -p gatewayd-tts-flite
#       cargo test -p gatewayd-tts-flite
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${GATEWAYD_SPEECH_CACHE:-/var/cache/gatewayd-ci/speech}
MODEL_DIR=${1:-$ROOT/build/models/flite}
VOICES=${FLITE_VOICES:-slt}
TARBALL=flite_2.2.orig.tar.gz
SHA256=ab1555fe5adc3f99f1d4a1a0eb1596d329fd6d74f1464a0097c81f53c0cf9e5c
SRC=$CACHE/flite-2.2

"$ROOT/scripts/speech/toolchain.sh"
mkdir -p "$CACHE" "$MODEL_DIR"
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)

# --- sources -----------------------------------------------------------------------------------
if [ ! -f "$SRC/.gatewayd-unpacked" ]; then
    DL=$CACHE/flite-download
    if ! echo "$SHA256  $DL/$TARBALL" | sha256sum -c --status 2>/dev/null; then
        # The mirror of the machine's own Debian sources (deb822 or one-line format).
        MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' |
            grep -v security | head -n 1 || true)
        [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' \
            /etc/apt/sources.list 2>/dev/null || true)
        [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
        APT=$DL/apt
        mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main" \
            >"$APT/sources.list"
        set -- -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=- \
            -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o APT::Sandbox::User=root
        apt-get "$@" update -qq
        # The orig tarball is all that is needed; the Debian diff may be gone from the mirror
        # (apt then fails after fetching the tarball), so success is judged by the checksum.
        (cd "$DL" && apt-get "$@" source --download-only -qq flite >/dev/null 2>&1) || true
        echo "$SHA256  $DL/$TARBALL" | sha256sum -c --status || {
            echo "flite.sh: could not fetch $TARBALL (SHA-256 $SHA256) from $MIRROR" >&2
            exit 1
        }
    fi
    rm -rf "$SRC"
    tar -xzf "$DL/$TARBALL" -C "$CACHE"
    touch "$SRC/.gatewayd-unpacked"
fi

# --- voices ------------------------------------------------------------------------------------
if ! command -v flite >/dev/null 2>&1; then
    echo "flite.sh: installing Debian's flite (to dump voices)" >&2
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends flite >/dev/null
fi
for v in $VOICES; do
    out=$MODEL_DIR/cmu_us_$v.flitevox
    [ -s "$out" ] && continue
    flite -voice "$v" -voicedump "$out.tmp" >/dev/null
    # A voice flite does not know falls back to its default without dumping anything.
    head -c 25 "$out.tmp" 2>/dev/null | grep -q '^CMU_FLITE_CG_VOXDATA' || {
        rm -f "$out.tmp"
        echo "flite.sh: flite could not dump voice '$v' (clustergen voices: slt awb rms)" >&2
        exit 1
    }
    mv "$out.tmp" "$out"
done
cp "$SRC/COPYING" "$MODEL_DIR/COPYING.flite"

echo "flite sources: $SRC (FLITE_SRC)"
echo "flite voices:  $MODEL_DIR"
ls -l "$MODEL_DIR" | awk 'NR > 1 {print "  " $5 "  " $9}'

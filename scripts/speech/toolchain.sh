#!/bin/sh
# The C toolchain for speech engines compiled to Wasm (plugins/stt-pocketsphinx, plugins/tts-flite):
# Debian's clang-16 and lld-16, wasi-libc (headers in /usr/include/wasm32-wasi, libraries in
# /usr/lib/wasm32-wasi), the wasm32 compiler runtime (libclang_rt.builtins-wasm32.a), and an
# llvm-ar that can index Wasm archives (llvm-16 unless one is on PATH already). Installs with apt
# only what is missing; prints nothing when everything is present. Idempotent; safe to run
# concurrently (apt's own lock is waited for).
set -eu

PACKAGES="clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
done
command -v llvm-ar-16 >/dev/null || command -v llvm-ar >/dev/null || command -v llvm-ar-14 >/dev/null ||
    missing="$missing llvm-16"
[ -z "$missing" ] && exit 0

echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
# shellcheck disable=SC2086 # one word per package
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null

#!/usr/bin/env bash
# What the SCTP stack's one-second minimum RTO costs on impaired paths: runs
# `cargo bench --bench paths` with webrtc's rtc-sctp as published, then with
# benches/rtc-sctp-rto-min.patch (RTO.min 1 s → 200 ms, Linux TCP's floor) applied to a
# copy of the same version. Not a shipped configuration: the patch is a measurement of
# what an upstream change would give. Arguments go to the bench (path names).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch -q
source=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d \
    -exec test -d '{}/rtc-sctp-0.21.1' ';' -print | head -1)/rtc-sctp-0.21.1
patched=$(mktemp -d)
trap 'rm -rf "$patched"' EXIT
cp -r "$source" "$patched/rtc-sctp"
patch -s -d "$patched/rtc-sctp" -p1 <benches/rtc-sctp-rto-min.patch

echo "== rtc-sctp 0.21.1 as published"
cargo bench -q --bench paths -- "$@"
echo "== rtc-sctp 0.21.1 with RTO.min = 200 ms"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/sctp-rto-min" \
    cargo bench -q --config "patch.crates-io.rtc-sctp.path=\"$patched/rtc-sctp\"" \
    --bench paths -- "$@"

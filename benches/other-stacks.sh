#!/usr/bin/env bash
# The page (headless Chromium, tests/web/drive.mjs) and the daemon, each beside a
# daemon-to-daemon transfer in the same run, over loopback (docs/PERFORMANCE.md, "Other
# stacks"). Needs a release build (cargo build --release), Node.js with tests/web's
# packages (npm ci there), Debian's chromium. Usage: benches/other-stacks.sh [MIB] [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
R=$root/target/release
mib=${1:-256}
runs=${2:-2}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
mkdir -p "$dir/a/dl" "$dir/b/dl" "$dir/recv"
"$R/p2pd" --socket "$dir/a/s" --download-dir "$dir/a/dl" --rendezvous-listen "127.0.0.1:$port" --ice-bind 127.0.0.1:0 2>/dev/null &
sleep 1
"$R/p2pd" --socket "$dir/b/s" --download-dir "$dir/b/dl" --rendezvous "ws://127.0.0.1:$port" --ice-bind 127.0.0.1:0 2>/dev/null &
sleep 1
head -c $((mib * 1024 * 1024)) /dev/urandom >"$dir/big.bin"
url=http://127.0.0.1:$port/
verdict() { tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); print('  page:', d['status'] or d['error'])"; }
code_of() { for _ in $(seq 50); do c=$(awk "/$1/{print \$2}" "$2" 2>/dev/null); [[ -n $c ]] && { echo "$c"; return; }; sleep 0.2; done; }
for run in $(seq "$runs"); do
    echo "== run $run"
    echo "daemon -> daemon"
    rm -f "$dir"/b/dl/*
    "$R/p2p" --socket "$dir/a/s" send "$dir/big.bin" >"$dir/ps.out" 2>&1 &
    code=$(code_of '^Code:' "$dir/ps.out")
    "$R/p2p" --socket "$dir/b/s" receive "$code" --yes -o "$dir/b/dl" 2>&1 | grep '^Received'; wait %3
    echo "page -> daemon"
    rm -f "$dir"/b/dl/*
    (cd "$root/tests/web" && node drive.mjs send "$url" "$dir/big.bin" >"$dir/bs.out" 2>/dev/null) &
    code=$(code_of '^code' "$dir/bs.out")
    "$R/p2p" --socket "$dir/b/s" receive "$code" --yes -o "$dir/b/dl" 2>&1 | grep '^Received'; wait %3
    verdict <"$dir/bs.out"
    echo "daemon -> page"
    rm -f "$dir"/recv/*
    "$R/p2p" --socket "$dir/a/s" send "$dir/big.bin" >"$dir/ps.out" 2>&1 &
    code=$(code_of '^Code:' "$dir/ps.out")
    (cd "$root/tests/web" && node drive.mjs receive "$url" "$code" "$dir/recv" 2>/dev/null) | verdict; wait %3
    cmp "$dir/big.bin" "$dir/recv/big.bin" && echo "  verified: same bytes"
done

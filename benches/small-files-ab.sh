#!/bin/bash
# A/B helper for the receiver's publish batching: 10 000 × 4 KiB through two release
# daemons, three runs, each into a fresh directory; FRESH=1 restarts the daemons per run.
# Usage: cargo build --release && benches/small-files-ab.sh
set -u
B=${B:-target/release}; R=${R:-/var/tmp/p2pd-small-ab}; FRESH=${FRESH:-0}
rm -rf "$R"; mkdir -p "$R/src"
python3 -c "
import os
for i in range(10000):
    open('$R/src/f%05d.bin' % i, 'wb').write(os.urandom(4096))
"
sync
start_daemons() {
  RUST_LOG=error,p2pd=info "$B/p2pd" --socket "$R/a.sock" --download-dir "$R/dla" --ice-bind 127.0.0.1:0 --rendezvous-listen 127.0.0.1:0 2> "$R/a.log" &
  until grep -q 'rendezvous=ws' "$R/a.log" 2>/dev/null; do sleep 0.05; done
  URL=$(grep -o 'rendezvous=ws://[0-9.:]*' "$R/a.log" | cut -d= -f2)
  RUST_LOG=error "$B/p2pd" --socket "$R/b.sock" --download-dir "$R/dlb" --ice-bind 127.0.0.1:0 --rendezvous "$URL" 2> "$R/b.log" &
  until [ -S "$R/b.sock" ]; do sleep 0.05; done
}
stop_daemons() { pkill -f "$R/a.sock"; pkill -f "$R/b.sock"; sleep 0.5; rm -f "$R/a.log"; }
start_daemons
for run in 1 2 3; do
  if [ "$FRESH" = 1 ] && [ "$run" != 1 ]; then stop_daemons; start_daemons; fi
  mkdir -p "$R/out$run"; begin=$(date +%s.%N)
  ("$B/p2p" --socket "$R/a.sock" send --json "$R"/src/* > "$R/send$run.out" 2>&1 &)
  until [ -s "$R/send$run.out" ]; do sleep 0.02; done
  code=$(head -1 "$R/send$run.out" | grep -o '"code":"[^"]*"' | cut -d'"' -f4)
  "$B/p2p" --socket "$R/b.sock" receive "$code" --yes --json -o "$R/out$run" > /dev/null
  end=$(date +%s.%N)
  echo "run $run: $(ls "$R/out$run" | wc -l) files, $(echo "10000 / ($end - $begin)" | bc) files/s"
  rm -rf "$R/out$run"; sync
done
stop_daemons

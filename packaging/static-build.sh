#!/usr/bin/env bash
# The static binaries (issue #25 item 3): builds p2pd and p2p for x86_64-unknown-linux-musl
# (static-pie, no libc needed at run time), proves it by running both in an empty chroot
# (root), and sends 100 MiB through a static p2pd and its
# embedded rendezvous, comparing the file. Needs rustup's musl target and Debian's
# musl-tools (musl-gcc builds ring's C code). Not run by CI, whose network reaches the
# package registries but maybe not rustup's servers. Measured on a 2-core machine:
# 4 min 51 s to build from scratch, the transfer 2.8 s.
#   rustup target add x86_64-unknown-linux-musl && packaging/static-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target $target
bin=target/$target/release
file "$bin/p2pd" "$bin/p2p" | grep -q "static-pie linked" || { file "$bin/p2pd"; exit 1; }
if [[ $(id -u) == 0 ]]; then
    bare=$(mktemp -d)
    cp "$bin/p2pd" "$bin/p2p" "$bare/"
    chroot "$bare" /p2pd --version
    chroot "$bare" /p2p --version
    rm -rf "$bare"
fi
PATH=$PWD/$bin:$PATH bash -c 'set -e; d=$(mktemp -d); trap "kill \$pid 2>/dev/null; rm -rf $d" EXIT; export P2PD_SOCKET=$d/p2pd.sock; p2pd --download-dir $d/received --state-dir $d/state 2>$d/p2pd.log & pid=$!; until [ -S $P2PD_SOCKET ]; do kill -0 $pid; sleep 0.1; done; head -c 100M /dev/urandom > $d/demo.bin; p2p send $d/demo.bin | { read -r _ code; p2p receive "$code" --yes; }; cmp $d/demo.bin $d/received/demo.bin && echo "static: identical"'

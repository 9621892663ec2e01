#!/usr/bin/env bash
# Builds the Debian packages p2pd and p2pd-rendezvous into target/debian/:
#   cargo install cargo-deb    # once
#   packaging/build-debs.sh
# The manual pages and shell completions are generated from the release binaries
# themselves (`p2p man`, `p2pd man`, `p2p completions`), so they always match the code.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
assets=target/debian-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/units"
target/release/p2p man "$assets/man"
target/release/p2pd man "$assets/man"
gzip -9n "$assets"/man/*.1
target/release/p2p completions bash >"$assets/completions/p2p"
target/release/p2p completions zsh >"$assets/completions/_p2p"
target/release/p2p completions fish >"$assets/completions/p2p.fish"
# The user units, pointing at the packaged binary instead of ~/.cargo/bin.
sed -e 's|%h/.cargo/bin/p2pd|/usr/bin/p2pd|g' \
    -e '/^#   install -Dm644/d' systemd/p2pd.service >"$assets/units/p2pd.service"
sed -e '/^#   install -Dm644/d' -e '/^#   systemctl --user/d' systemd/p2pd.socket >"$assets/units/p2pd.socket"

cargo deb --no-build --locked
cargo deb --no-build --locked --variant rendezvous
ls -l target/debian/*.deb

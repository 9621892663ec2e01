#!/usr/bin/env bash
# Issue #25's package test, as CI runs it (root, Debian): builds both packages, checks
# their file lists, installs them, uses what they installed, purges them and checks that
# nothing is left, and runs lintian (an error fails; warnings are printed).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

packaging/build-debs.sh
p2pd_deb=$(ls target/debian/p2pd_*.deb)
rendezvous_deb=$(ls target/debian/p2pd-rendezvous_*.deb)

fail() { echo "test-debs: $*" >&2; exit 1; }
contains() { # DEB PATH…: every PATH is in DEB's file list
    local deb=$1; shift
    local list; list=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
    for path in "$@"; do
        grep -qx -- "$path" <<<"$list" || fail "$(basename "$deb") lacks $path"
    done
}
contains "$p2pd_deb" /usr/bin/p2pd /usr/bin/p2p \
    /usr/lib/systemd/user/p2pd.service /usr/lib/systemd/user/p2pd.socket \
    /usr/lib/sysctl.d/p2pd.conf \
    /usr/share/man/man1/p2p.1.gz /usr/share/man/man1/p2p-send.1.gz \
    /usr/share/man/man1/p2p-receive.1.gz /usr/share/man/man1/p2pd.1.gz \
    /usr/share/man/man1/p2pd-rendezvous.1.gz \
    /usr/share/bash-completion/completions/p2p /usr/share/zsh/vendor-completions/_p2p \
    /usr/share/fish/vendor_completions.d/p2p.fish \
    /usr/share/doc/p2pd/copyright /usr/share/doc/p2pd/changelog.Debian.gz
contains "$rendezvous_deb" /usr/lib/systemd/system/p2pd-rendezvous.service \
    /usr/lib/systemd/system/p2pd-rendezvous.socket \
    /usr/lib/sysusers.d/p2pd-rendezvous.conf /etc/p2pd/rendezvous.toml \
    /usr/share/doc/p2pd-rendezvous/copyright
dpkg-deb -c "$rendezvous_deb" | grep -q ' \./usr/bin/' && fail "p2pd-rendezvous ships a binary of its own"
# Its Depends names p2pd's version by hand (Cargo.toml): it must be this build's.
version=$(dpkg-deb -f "$p2pd_deb" Version)
dpkg-deb -f "$rendezvous_deb" Depends | grep -qF "p2pd (= $version)" \
    || fail "p2pd-rendezvous depends on another p2pd than $version: update its depends in Cargo.toml"
dpkg-deb -f "$rendezvous_deb" Conffiles >/dev/null
dpkg-deb -I "$rendezvous_deb" conffiles | grep -qx /etc/p2pd/rendezvous.toml \
    || fail "rendezvous.toml is not a conffile"

# Nothing of ours before, so that "nothing left" below means something.
for path in /usr/bin/p2pd /usr/bin/p2p /etc/p2pd /usr/lib/systemd/user/p2pd.service; do
    [[ ! -e $path ]] || fail "$path exists before installing: run on a clean machine"
done
dpkg -i "$p2pd_deb" "$rendezvous_deb"
p2p --version
p2pd --version
man -w p2p >/dev/null || fail "man -w p2p finds no page"
man -w p2p-send >/dev/null || fail "man -w p2p-send finds no page"
getent passwd p2pd-rendezvous >/dev/null || fail "no p2pd-rendezvous user"
p2pd rendezvous --config /etc/p2pd/rendezvous.toml --check-config >/dev/null
systemd-analyze verify /usr/lib/systemd/system/p2pd-rendezvous.service \
    /usr/lib/systemd/system/p2pd-rendezvous.socket
# A user unit's %h and %t need a user manager: verified against a copy with them spelled out.
units=$(mktemp -d)
sed -e "s|%h|$HOME|g" -e "s|%t|/run/user/0|g" /usr/lib/systemd/user/p2pd.service >"$units/p2pd.service"
sed -e "s|%h|$HOME|g" -e "s|%t|/run/user/0|g" /usr/lib/systemd/user/p2pd.socket >"$units/p2pd.socket"
systemd-analyze verify "$units/p2pd.socket" "$units/p2pd.service"
rm -rf "$units"

dpkg --purge p2pd-rendezvous p2pd
for path in /usr/bin/p2pd /usr/bin/p2p /etc/p2pd /usr/lib/systemd/user/p2pd.service \
    /usr/lib/systemd/system/p2pd-rendezvous.service /usr/share/man/man1/p2p.1.gz \
    /usr/share/bash-completion/completions/p2p /usr/lib/sysusers.d/p2pd-rendezvous.conf; do
    [[ ! -e $path ]] || fail "$path is left after dpkg --purge"
done

if lintian --fail-on error "$p2pd_deb" "$rendezvous_deb"; then
    echo "lintian: no errors"
else
    fail "lintian reports errors"
fi
echo "test-debs: passed in $(( $(date +%s) - started )) s"

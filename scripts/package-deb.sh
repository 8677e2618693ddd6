#!/usr/bin/env bash
# Build the Debian package of anonnet (README.md, "Install"); its path is the last line
# printed, e.g. target/debian/anonnet_0.1.0-1_amd64.deb.
#
# The binaries are built by `cargo install --locked --path daemon|tray`, which compiles into
# the target dir (CARGO_TARGET_DIR, else ./target) exactly as a user's `cargo install`
# would; so one release build both checks that `cargo install` works and gives cargo-deb
# its files (`cargo deb --no-build`, packaging/ and [package.metadata.deb] in
# daemon/Cargo.toml). The man pages come from the installed binaries' clap definitions
# (`anonnet man DIR`, `anonnet-tray --man DIR`): generated here, not in build.rs, so that an
# ordinary build does no extra work.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev (dpkg-shlibdeps, for
# the package's Depends).
#
# ANONNET_DEB_PROFILE=dev packages the dev-profile binaries already in target/debug
# instead (no `cargo install`, no release build): .ci/run does this after `cargo test
# --workspace` has built them, which saves the ten minutes of a cold release build on a
# 2-core machine. Such a package is for checking the packaging, not for shipping.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package-deb: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
fi
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
profile=${ANONNET_DEB_PROFILE:-release}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

case "$profile" in
  release)
    out="$target/release"
    for crate in daemon tray; do
      echo "package-deb: cargo install --locked --path $crate" >&2
      cargo install --quiet --locked --no-track --path "$crate" --root "$stage"
    done
    bin="$stage/bin"
    ;;
  dev)
    out="$target/debug"
    bin="$out"
    for b in anonnet anonnet-tray; do
      test -x "$bin/$b" || {
        echo "package-deb: $bin/$b is missing: build it first (cargo build -p anonnet -p anonnet-tray)" >&2
        exit 1
      }
    done
    ;;
  *)
    echo "package-deb: ANONNET_DEB_PROFILE must be release or dev, not $profile" >&2
    exit 1
    ;;
esac
"$bin/anonnet" --version >&2
"$bin/anonnet-tray" --version >&2

man="$out/man"
rm -rf "$man"
"$bin/anonnet" man "$man"
"$bin/anonnet-tray" --man "$man"
# Debian policy wants man pages gzipped; cargo-deb compresses only the assets it did not
# find under target/release/. -n: no name or time stamp, so the package is reproducible.
gzip -9n "$man"/*.1

# --strip: the release profile keeps line tables (debug = 1) for backtraces in
# development; the package ships stripped binaries.
cargo deb --package anonnet --profile "$profile" --no-build --strip --locked | tail -n 1

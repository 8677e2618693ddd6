#!/usr/bin/env bash
# The Windows build (issue 17 item 6; README.md, "Windows"): cross-builds the daemon and CLI
# (`anonnet.exe`) and the tray (`anonnet-tray.exe`) for 64-bit Windows with Debian's
# mingw-w64, warnings denied, then smoke-tests both under Wine when Wine is installed.
#
#   scripts/windows-build.sh            # the CI build: profile windows-ci (unoptimised)
#   ANONNET_WIN_PROFILE=release scripts/windows-build.sh   # binaries to hand to people
#
# The smoke test runs what Debian 12's Wine 8 can run: `--version`, `--help`, and `status`
# without a config, which must name the Windows folder the `directories` crate gives
# (%APPDATA%\anonnet\anonnet\config\client.toml). It cannot run a testnet: Wine 8 refuses the
# socket option IP_RECVECN that quinn-udp sets on every UDP socket on Windows (WSAEOPNOTSUPP,
# "cannot bind UDP socket"), so no QUIC endpoint opens there. Real Windows has it.
#
# Prints "windows: skipped: REASON" and exits 0 only when the Rust target or the mingw-w64
# linker cannot be installed; every other failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-pc-windows-gnu
profile="${ANONNET_WIN_PROFILE:-windows-ci}"

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  if ! rustup target add "$target"; then
    echo "windows: skipped: rustup cannot install the $target target"
    exit 0
  fi
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  echo "windows: skipped: no mingw-w64 linker (Debian package gcc-mingw-w64-x86-64)"
  exit 0
fi

# RUSTFLAGS only reach the Windows crates (with --target, build scripts and proc macros are
# host artifacts), so the Linux build's cache is untouched.
RUSTFLAGS="-D warnings" cargo build --profile "$profile" --target "$target" \
  -p anonnet -p anonnet-tray
out="${CARGO_TARGET_DIR:-target}/$target/$profile"
for exe in anonnet.exe anonnet-tray.exe; do
  [ -s "$out/$exe" ] || { echo "windows: $out/$exe was not built" >&2; exit 1; }
  echo "windows: built $out/$exe ($(($(stat -c %s "$out/$exe") / 1024 / 1024)) MiB)"
done

wine=/usr/lib/wine/wine64
if [ ! -x "$wine" ]; then
  echo "windows: not smoke-tested: Wine is not installed (Debian package wine64)"
  exit 0
fi

work="$(mktemp -d -t anonnet-wine-XXXXXX)"
cleanup() {
  WINEPREFIX="$work/prefix" /usr/lib/wine/wineserver -k >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
# The binaries and the stand-in DLL (scripts/wine/bcryptprimitives.c) side by side: Windows
# loads a DLL from the executable's folder first.
cp "$out/anonnet.exe" "$out/anonnet-tray.exe" "$work/"
x86_64-w64-mingw32-gcc -shared -O2 -Wall -Werror -o "$work/bcryptprimitives.dll" \
  scripts/wine/bcryptprimitives.c -ladvapi32

fail() {
  echo "windows: smoke test failed: $1" >&2
  exit 1
}

version="$(timeout 120 "$wine" "$work/anonnet.exe" --version 2>/dev/null | tr -d '\r')"
want="anonnet $(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "anonnet"))')"
[ "$version" = "$want" ] || fail "anonnet.exe --version printed '$version', not '$want'"
echo "windows: under Wine, anonnet.exe --version: $version"

timeout 60 "$wine" "$work/anonnet-tray.exe" --help 2>/dev/null | tr -d '\r' > "$work/tray-help.txt" \
  || fail "anonnet-tray.exe --help exited with an error"
grep -q '^Usage: anonnet-tray' "$work/tray-help.txt" \
  || fail "anonnet-tray.exe --help printed no usage line"
echo "windows: under Wine, anonnet-tray.exe --help prints its usage"

# No config anywhere: the error names the per-user Windows config folder.
if timeout 60 "$wine" "$work/anonnet.exe" status > "$work/status.txt" 2>&1; then
  fail "anonnet.exe status succeeded without a config"
fi
tr -d '\r' < "$work/status.txt" | grep -q 'AppData\\Roaming\\anonnet\\anonnet\\config\\client.toml' \
  || fail "anonnet.exe status did not name the Windows config folder: $(cat "$work/status.txt")"
echo "windows: under Wine, anonnet.exe looks for its config under %APPDATA%\\anonnet\\anonnet\\config"

#!/usr/bin/env bash
# The package checks of issue 17 item 5, run by .ci/run: build the Debian package
# (scripts/package-deb.sh, which also checks `cargo install`), install it with dpkg -i,
# run the installed `anonnet --version` and `anonnet-tray --help`, validate the systemd
# user unit (systemd-analyze verify) and the desktop entries (desktop-file-validate),
# then remove and purge it. Needs root (dpkg, apt-get for missing tools). A package
# named anonnet that is already installed is left alone: the check stops instead.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v desktop-file-validate >/dev/null 2>&1 || need+=(desktop-file-utils)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
# systemd-analyze verify looks the unit's Documentation=man:… pages up with man.
command -v man >/dev/null 2>&1 || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi

if dpkg-query -W -f '${Status}' anonnet 2>/dev/null | grep -q installed; then
  echo "check-deb: a package named anonnet is already installed; not replacing it" >&2
  exit 1
fi

deb=$(scripts/package-deb.sh | tail -n 1)
echo "check-deb: built $deb ($(du -k "$deb" | cut -f1) KiB)"
dpkg-deb --field "$deb" Package Version Architecture Depends Installed-Size

trap 'dpkg --purge anonnet >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb"

/usr/bin/anonnet --version
/usr/bin/anonnet-tray --help >/dev/null
/usr/bin/anonnet-tray --version
for page in anonnet anonnet-run anonnet-status anonnet-service-publish anonnet-tray; do
  test -s "/usr/share/man/man1/$page.1.gz" || {
    echo "check-deb: man page $page.1.gz is missing" >&2
    exit 1
  }
done
test -s /usr/share/doc/anonnet/examples/client.toml

unit=/usr/lib/systemd/user/anonnet.service
# `verify` exits 0 after an unknown key or a bad value ("…, ignoring"), so anything it
# prints fails the check. A user manager needs a runtime directory; a scratch one will do.
runtime=$(mktemp -d)
verify=$(XDG_RUNTIME_DIR=$runtime systemd-analyze --user verify "$unit" 2>&1) || {
  echo "$verify" >&2
  exit 1
}
rm -rf "$runtime"
if [ -n "$verify" ]; then
  echo "check-deb: systemd-analyze verify $unit:" >&2
  echo "$verify" >&2
  exit 1
fi
# Warnings and hints count too (it exits 0 after them).
for entry in /usr/share/applications/anonnet-tray.desktop /etc/xdg/autostart/anonnet-tray.desktop; do
  validate=$(desktop-file-validate "$entry" 2>&1) && [ -z "$validate" ] || {
    echo "check-deb: desktop-file-validate $entry:" >&2
    echo "$validate" >&2
    exit 1
  }
done

dpkg -r anonnet
test ! -e /usr/bin/anonnet && test ! -e "$unit"
# /etc/xdg/autostart/anonnet-tray.desktop is a conffile: kept by -r, gone after --purge.
dpkg --purge anonnet
test ! -e /etc/xdg/autostart/anonnet-tray.desktop
trap - EXIT
echo "check-deb: package built, installed, checked and purged in $((SECONDS - start)) s"

#!/usr/bin/env bash
# Render the tray icons: assets/<state>.svg → assets/png/<state>-<size>.png for every size
# trays use. Needs rsvg-convert (Debian: librsvg2-bin, installed when missing).
# The PNGs are committed; run this again after changing an SVG.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v rsvg-convert >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends librsvg2-bin
fi
mkdir -p png
for state in off bootstrapping on error; do
  for size in 16 22 24 32 48 64; do
    rsvg-convert --width "$size" --height "$size" --format png \
      --output "png/$state-$size.png" "$state.svg"
  done
done
ls png

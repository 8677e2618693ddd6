#!/usr/bin/env bash
# Screenshots of the real anonnet-tray as a person sees it: a testnet, Xvfb, a private
# D-Bus session bus, a StatusNotifierItem tray host from Debian's packages
# (status-notifier-watcher + gtk-sni-tray-standalone), and the tray. Saves
#   docs/tray-icon.png   the tray bar with the icon (daemon on)
#   docs/tray-menu.png   the menu opened by a right click, after a local web server was
#                        published from it ("Publish localhost:PORT"), with Hidden
#                        services ▸ the service open
# Everything it starts is stopped at the end (also on failure).
#
# Usage: tray/screenshot.sh            (from anywhere; builds anonnet and anonnet-tray)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# --- what it needs (Debian packages, installed when missing; ~140 MB, mostly Haskell) ---
need=()
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
command -v xauth >/dev/null 2>&1 || need+=(xauth)
# ImageMagick's `import` grabs the screen (a plain `convert` stand-in is not enough).
command -v import >/dev/null 2>&1 || need+=(imagemagick)
command -v xdotool >/dev/null 2>&1 || need+=(xdotool)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus)
command -v gtk-sni-tray-standalone >/dev/null 2>&1 || need+=(haskell-gtk-sni-tray-utils)
command -v status-notifier-watcher >/dev/null 2>&1 || need+=(haskell-status-notifier-item-utils)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# One package at a time: built together, their features unify and everything rebuilds.
cargo build -q -p anonnet
cargo build -q -p anonnet-tray
BIN=$ROOT/target/debug

WORK=$(mktemp -d /tmp/anonnet-tray-shot.XXXXXX)
pids=()
bus_pid=
cleanup() {
  # Newest first: tray, host, watcher, web server, Xvfb, testnet; then the bus.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  [ -n "$bus_pid" ] && kill -TERM "$bus_pid" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Wait (bounded) until a command succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "screenshot.sh: timed out waiting for $what" >&2
  return 1
}

# --- a testnet: its client daemon is what the tray shows ---------------------------------
"$BIN/anonnet" testnet --relays 3 --socks auto --http auto --dir "$WORK/net" \
  >"$WORK/net.out" 2>"$WORK/net.err" &
pids+=($!)
wait_for "the testnet" 60 grep -q "HTTP proxy ready" "$WORK/net.out"

# --- a local web server, so the menu offers "Publish localhost:PORT" ---------------------
python3 -c '
import http.server, socketserver, sys
s = socketserver.TCPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
print(s.server_address[1], flush=True)
s.serve_forever()' >"$WORK/web.port" 2>/dev/null &
pids+=($!)
wait_for "the web server" 10 test -s "$WORK/web.port"

# --- a private X display ----------------------------------------------------------------
n=77
while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do n=$((n + 1)); done
Xvfb ":$n" -screen 0 1920x720x24 -nolisten tcp >"$WORK/xvfb.log" 2>&1 &
pids+=($!)
export DISPLAY=":$n"
wait_for "Xvfb" 10 xdotool getdisplaygeometry

# --- a private session bus, a watcher and a tray host -----------------------------------
bus=$(dbus-daemon --session --fork --print-address=1 --print-pid=1)
export DBUS_SESSION_BUS_ADDRESS=$(echo "$bus" | sed -n 1p)
bus_pid=$(echo "$bus" | sed -n 2p)
status-notifier-watcher >"$WORK/watcher.log" 2>&1 &
pids+=($!)
wait_for "the watcher" 10 busctl --user status org.kde.StatusNotifierWatcher
# A light grey bar at the top, 32 px high, icons from the left.
gtk-sni-tray-standalone --top --beginning --size 32 --color '#dcdcdc' -m 0 \
  >"$WORK/host.log" 2>&1 &
pids+=($!)
sleep 1

# --- the tray --------------------------------------------------------------------------
"$BIN/anonnet-tray" --config "$WORK/net/client/client.toml" >"$WORK/tray.log" 2>&1 &
pids+=($!)
item() { busctl --user list --no-pager | grep -o 'org.kde.StatusNotifierItem-[0-9]*-1' | head -1; }
# menu_query LABEL [toggled]: print the dbusmenu id of the item labelled LABEL (a prefix
# ending in '*' matches the start); with "toggled", only if its checkbox is ticked.
menu_query() {
  busctl --user call --json=short "$(item)" /MenuBar com.canonical.dbusmenu GetLayout iias -- 0 -1 0 |
    python3 -c '
import json, sys
want, toggled = sys.argv[1], len(sys.argv) > 2
def walk(node):
    i, props, children = node
    label = props.get("label", {}).get("data", "")
    hit = label.startswith(want[:-1]) if want.endswith("*") else label == want
    if hit and (not toggled or props.get("toggle-state", {}).get("data") == 1):
        print(i); sys.exit(0)
    for c in children:
        walk(c["data"])
walk(json.load(sys.stdin)["data"][1])
sys.exit(1)' "$@"
}
click() {
  busctl --user call "$(item)" /MenuBar com.canonical.dbusmenu Event isvu -- "$(menu_query "$1")" clicked s "" 0
}
wait_for "the tray to show 'On'" 30 menu_query "On: *"

# Publish the web server from the menu, as a person would, and wait until it is up.
web_port=$(cat "$WORK/web.port")
click "Publish localhost:$web_port"
wait_for "the service's address" 30 menu_query "Published *"
wait_for "the descriptor to be stored" 60 menu_query "Published" toggled
sleep 2 # let the host draw the icon

mkdir -p docs
import -window root -crop 160x40+0+0 +repage docs/tray-icon.png
# Right-click the icon (the first one in the bar) to open its menu, then walk the keyboard
# to Hidden services ▸ the service ▸ (the third clickable entry, then right, right). The
# menu is live: if it changed under the walk (a port opened or closed on this machine),
# close it and try again.
IM_CONVERT=$(command -v convert-im6.q16 || echo /usr/bin/convert)
for attempt in 1 2 3 4 5; do
  xdotool mousemove 16 16 click 3
  sleep 2
  for key in Down Down Down Right Right; do
    xdotool key "$key"
    sleep 0.7
  done
  sleep 1
  import -window root -crop 1500x350+0+0 +repage "$WORK/menu.png"
  # The service's submenu covers the black root window right of the menu.
  pixel=$("$IM_CONVERT" "$WORK/menu.png" -format '%[pixel:p{1000,150}]' info:)
  if [ "$pixel" != "black" ] && [ "$pixel" != "srgb(0,0,0)" ]; then
    break
  fi
  echo "screenshot.sh: submenu not open (attempt $attempt), again" >&2
  xdotool key Escape Escape Escape
  sleep 1
done
cp "$WORK/menu.png" docs/tray-menu.png
echo "saved docs/tray-icon.png and docs/tray-menu.png"

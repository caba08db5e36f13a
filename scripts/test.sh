#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need when it is missing (Debian's
# Chromium, Node and playwright-core from npm for the browser test; Python's websockets for the
# terminal client's test; prlimit and setpriv for the store's disk-full and unwritable-directory
# tests; redis-server for the cluster tests, which start their own on a free port), then runs
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -q; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Chromium for the browser test"
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing Node.js for the browser test"
  apt_install nodejs npm
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
  echo "== installing playwright-core"
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
if [ ! -x /usr/bin/redis-server ]; then
  echo "== installing redis-server for the cluster tests (each test starts its own)"
  apt_install redis-server
fi
if ! command -v prlimit >/dev/null || ! command -v setpriv >/dev/null; then
  echo "== installing util-linux (prlimit, setpriv) for the store's failure tests"
  apt_install util-linux
fi
if ! python3 -c 'import websockets' 2>/dev/null; then
  echo "== installing Python websockets for the terminal client test"
  python3 -m pip install --quiet websockets || python3 -m pip install --quiet --break-system-packages websockets
fi
exec cargo test "$@"

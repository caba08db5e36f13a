#!/usr/bin/env bash
# Soak: hold 10,000 connections for ten minutes with traffic, joins, leaves and deaths
# mid-frame, against a release build; report server RSS (start, after ramp-up, peak, end),
# messages lost by healthy clients (must be 0) and errors. Exits non-zero on any loss or error.
#
#   scripts/soak.sh [--clients N] [--duration-secs S] [other loadgen soak options]
#
# Clients come from 200 loopback addresses (127.0.1.x, 127.0.2.x) so the default per-address
# cap of 64 holds. Needs openssl; everything else is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

cargo build --release --locked --workspace
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
make_test_ca "$WORK"
# The defaults, except the caps a 10,000-connection test needs.
load_config "$WORK" '["soak0", "soak1", "soak2", "soak3", "soak4", "soak5", "soak6", "soak7", "soak8", "soak9"]' \
  2000 "handshakes_per_minute_per_ip = 600"
start_server target/release/wss-chat "$WORK/config.toml" "$WORK/server.log"
echo "server pid $SERVER_PID on port $SERVER_PORT"
status=0
target/release/loadgen --addr "127.0.0.1:$SERVER_PORT" --ca "$WORK/ca.pem" \
  --secret-file "$WORK/jwt-secret" --server-pid "$SERVER_PID" --source-ips 200 \
  soak "$@" || status=$?
kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died:"; tail -n 20 "$WORK/server.log"; status=1; }
echo "server log lines with panic or error: $(grep -ciE 'panic|error' "$WORK/server.log" || true)"
exit $status

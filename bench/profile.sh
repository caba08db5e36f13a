#!/usr/bin/env bash
# Profile the server under one benchmark shape: the bench config, the server pinned to CPU 0
# and the load generator to CPU 1 (as bench/run.sh), `perf record` on the server while the
# load runs, and a flame graph (inferno) written to OUT (default docs/flame-MODE.svg).
#
#   bench/profile.sh broadcast                  # 1,000 clients, 100 msg/s (RATE=50: 50)
#   OUT=docs/flame-before.svg bench/profile.sh broadcast
#   bench/profile.sh handshakes-x25519
#   FOLDED=/tmp/f.folded bench/profile.sh broadcast; python3 bench/stacks.py /tmp/f.folded  # shares
#
# Needs perf (Debian linux-perf) and inferno (cargo install inferno); installs both if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
MODE=${1:-broadcast}
OUT=${OUT:-docs/flame-$MODE.svg}
SECS=${SECS:-8}
command -v perf >/dev/null || { apt-get update -q && apt-get install -y -q linux-perf; }
command -v inferno-collapse-perf >/dev/null || cargo install inferno
command -v taskset >/dev/null || { apt-get update -q && apt-get install -y -q util-linux; }
cargo build --profile profiling --locked --workspace
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
make_test_ca "$WORK"
ROOMS=$(python3 -c "print('[' + ', '.join(['\"bench\"'] + ['\"dm%d\"' % i for i in range(5000)]) + ']')")
load_config "$WORK" "$ROOMS" 20000 "messages_per_second = 1000000
burst = 1000000
handshakes_per_minute_per_ip = 1000000" 5100
start_server "taskset -c 0 target/profiling/wss-chat" "$WORK/config.toml" "$WORK/server.log"
case $MODE in
  broadcast) args=(broadcast --clients 1000 --senders 10 --size 128 --rate ${RATE:-100} --duration-secs $((SECS + 6))) ;;
  idle) args=(idle --clients 5000) ;;
  handshakes) args=(handshakes --duration-secs $((SECS + 4))) ;;
  handshakes-x25519) args=(--classic-kx handshakes --duration-secs $((SECS + 4))) ;;
  direct) args=(direct --pairs 5000 --rate 2000 --duration-secs $((SECS + 6))) ;;
  churn) args=(churn --clients 1000 --senders 10 --size 128 --rate 100 --joins-per-sec 50 --duration-secs $((SECS + 6))) ;;
  *) echo "unknown mode $MODE"; exit 2 ;;
esac
taskset -c 1 target/profiling/loadgen --addr "127.0.0.1:$SERVER_PORT" --ca "$WORK/ca.pem" \
  --server-pid "$SERVER_PID" --source-ips 400 --secret-file "$WORK/jwt-secret" "${args[@]}" \
  > "$WORK/load.log" 2>&1 &
LOAD=$!
# Record once the clients are connected (the load generator says so) and the warm-up is over.
# (handshakes runs from its first second and reports only at the end.)
for _ in $(seq 1 600); do
  case $MODE in handshakes*) break ;; esac
  grep -qE '^(broadcast|direct|churn|saturation|idle)' "$WORK/load.log" && break
  sleep 0.5
done
sleep "${DELAY:-3}"
# WHO=loadgen records the load generator instead: its own CPU is printed with every step, and
# near a full core its queueing is in every latency it reports.
WHO_PID=$SERVER_PID
[ "${WHO:-server}" = loadgen ] && WHO_PID=$LOAD
perf record -F 997 -g --call-graph dwarf,16384 -p "$WHO_PID" -o "$WORK/perf.data" -- sleep "$SECS" 2> "$WORK/perf.log"
wait $LOAD || true
sed 's/^/   /' "$WORK/load.log"
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf > "$WORK/folded"
[ -n "${FOLDED:-}" ] && cp "$WORK/folded" "$FOLDED"
mkdir -p "$(dirname "$OUT")"
inferno-flamegraph --title "wss-chat $MODE ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD))" \
  < "$WORK/folded" > "$OUT"
# The heaviest frames by self time, for the commit message.
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -v '^#' | grep '%' | head -${TOP:-25}
echo "flame graph: $OUT"

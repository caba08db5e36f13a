#!/usr/bin/env bash
# The README's broadcast shape (1,000 clients in one room, 10 senders, 128-byte messages,
# 100 msg/s) spread over two nodes sharing one Redis, for comparison with one node and SQLite
# (bench/run.sh). Nodes and Redis share CPU 0, the load generator has CPU 1, as in bench/run.sh.
#
#   REPEATS=3 scripts/bench-cluster.sh
#   WSS_CHAT=/tmp/old REPEATS=3 scripts/bench-cluster.sh   # another build of the server
#   RATE=50 REPEATS=3 scripts/bench-cluster.sh            # messages per second (default 100)
#
# Besides the load generator's figures it prints the CPU the two nodes and Redis used over the
# whole run (connecting included) per delivery, from /proc: for A/B comparisons of one change.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

REPEATS=${REPEATS:-3}
WSS_CHAT=${WSS_CHAT:-target/release/wss-chat}
# CPU ticks (1/100 s) used so far by the processes given.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cut -d')' -f2 "/proc/$p/stat" | awk '{print $12 + $13}'))); done; echo "$t"; }
cluster_prologue
for r in $(seq 1 "$REPEATS"); do
  REDIS_PORT=$(free_port)
  rm -rf "$WORK/appendonlydir"
  start_redis "$WORK" "$REDIS_PORT" 0
  load_config "$WORK" '["bench"]' 6000 "messages_per_second = 1000000
burst = 1000000
handshakes_per_minute_per_ip = 1000000"
  printf '[history]\nstore = "redis"\n[redis]\nurl = "redis://127.0.0.1:%s"\npassword_file = "redis-password"\n' "$REDIS_PORT" >> "$WORK/config.toml"
  PORTS=()
  for n in 0 1; do
    taskset -c 0 "$WSS_CHAT" serve --config "$WORK/config.toml" > "$WORK/node$n.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do grep -q "listening on" "$WORK/node$n.log" && break; sleep 0.1; done
    PORTS+=("$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/node$n.log" | head -n1)")
  done
  echo "== run $r/$REPEATS: 2 nodes on ${PORTS[*]}, Redis on $REDIS_PORT"
  taskset -c 1 target/release/loadgen --addr "127.0.0.1:${PORTS[0]}" --also "127.0.0.1:${PORTS[1]}" \
    --ca "$WORK/ca.pem" --secret-file "$WORK/jwt-secret" --source-ips 100 \
    broadcast --clients 1000 --senders 10 --size 128 --rate "${RATE:-100}" > "$WORK/out" 2>&1 &
  LOADGEN=$!
  before=$(ticks "${PIDS[@]}")
  wait "$LOADGEN" || true
  after=$(ticks "${PIDS[@]}")
  grep -v '^RESULT' "$WORK/out" | sed 's/^/   /'
  delivered=$(sed -n 's/^RESULT .*"delivered":\([0-9]*\).*/\1/p' "$WORK/out" | tail -n1)
  python3 -c "import sys; t, d = int(sys.argv[1]), int(sys.argv[2] or 0); print(f'   nodes and Redis: {t / 100:.2f} CPU-s over the run, {t * 1e4 / d:.2f} CPU-us per delivery' if d else '   nodes and Redis: nothing delivered')" "$((after - before))" "${delivered:-0}"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
done

#!/usr/bin/env bash
# Scale figure: NODES nodes (default 5) on one Redis, each holding CLIENTS idle connections
# (default 19,000: the open-file limit here is 20,000 per process, so one process per 19,000)
# spread over ROOMS rooms (default 1,000) with presence on, all held at once; reports each
# node's RSS per connection, Redis memory and the presence entries it holds.
#
#   NODES=5 CLIENTS=19000 ROOMS=1000 scripts/scale-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

NODES=${NODES:-5}
CLIENTS=${CLIENTS:-19000}
ROOMS=${ROOMS:-1000}
cluster_prologue
REDIS_PORT=$(free_port)
start_redis "$WORK" "$REDIS_PORT"
redis_before=$(redis-cli -p "$REDIS_PORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')

load_config "$WORK" '[]' 20000 "handshakes_per_minute_per_ip = 1000000" 5000
sed -i 's/^max_members = .*/&\nauto_create = true/' "$WORK/config.toml"
cat >> "$WORK/config.toml" <<CONF
[history]
store = "redis"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
password_file = "redis-password"
CONF
NODE_PIDS=()
PORTS=()
for n in $(seq 0 $((NODES - 1))); do
  sed 's/^max_connections = .*/max_connections = 19500\nmax_connections_per_ip = 100/' "$WORK/config.toml" > "$WORK/node$n.toml"
  target/release/wss-chat serve --config "$WORK/node$n.toml" > "$WORK/node$n.log" 2>&1 &
  NODE_PIDS+=($!)
  PIDS+=($!)
  for _ in $(seq 1 100); do grep -q "listening on" "$WORK/node$n.log" && break; sleep 0.1; done
  PORTS+=("$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/node$n.log" | head -n1)")
done
echo "redis on $REDIS_PORT; nodes on ${PORTS[*]}"
start=$(date +%s)
for n in $(seq 0 $((NODES - 1))); do
  target/release/loadgen --addr "127.0.0.1:${PORTS[$n]}" --ca "$WORK/ca.pem" \
    --secret-file "$WORK/jwt-secret" --server-pid "${NODE_PIDS[$n]}" --source-ips 250 \
    idle --clients "$CLIENTS" --room scale --rooms "$ROOMS" --hold-secs 3600 > "$WORK/load$n.log" 2>&1 &
  PIDS+=($!)
done
# Wait until every loadgen holds its connections.
while [ "$(cat "$WORK"/load*.log | grep -c '^RESULT')" -lt "$NODES" ]; do
  sleep 5
  [ $(( $(date +%s) - start )) -lt 1800 ] || { echo "timed out"; tail -n 3 "$WORK"/load*.log; exit 1; }
done
sleep 5
total=0
for n in $(seq 0 $((NODES - 1))); do
  line=$(grep '^RESULT' "$WORK/load$n.log")
  echo "node $n: $line"
  total=$((total + $(echo "$line" | sed -n 's/.*"connections":\([0-9]*\).*/\1/p')))
done
presence_entries() {
  local e=0
  for k in $(redis-cli -p "$REDIS_PORT" --scan --pattern 'wss-chat:*:presence'); do
    e=$((e + $(redis-cli -p "$REDIS_PORT" zcard "$k")))
  done
  echo "$e"
}
# Arrivals are counted in Redis by each node's Redis thread, a little after the joins.
for _ in $(seq 1 30); do
  entries=$(presence_entries)
  [ "$entries" -ge "$total" ] && break
  sleep 2
done
redis_after=$(redis-cli -p "$REDIS_PORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
echo "held together: $total connections on $NODES nodes after $(( $(date +%s) - start )) s"
echo "redis: used_memory $redis_before -> $redis_after bytes ($(( (redis_after - redis_before) / (total > 0 ? total : 1) )) bytes per connection), presence entries $entries"

#!/usr/bin/env bash
# Cluster soak: three nodes on one Redis (appendonly, appendfsync always, a password), thousands
# of clients spread over them with churn for ten minutes (default); at a third of the run node 2
# is killed (kill -9) and started again 5 s later, at two thirds Redis is killed and started
# again with its data. Reports acked, delivered, lost and duplicated messages (both must be 0)
# and p99; exits non-zero otherwise.
#
#   scripts/soak-cluster.sh [--duration-secs S] [--watchers N] [other loadgen cluster-soak options]
#
# Needs redis-server (apt-get install redis-server) and openssl; everything else is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DURATION=600
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --duration-secs ] && DURATION=${args[$((i + 1))]}
done
cluster_prologue
REDIS_PORT=$(free_port)
start_redis "$WORK" "$REDIS_PORT"

load_config "$WORK" '["soak0"]' 20000 "handshakes_per_minute_per_ip = 100000
messages_per_second = 1000
burst = 1000"
cat >> "$WORK/config.toml" <<CONF
[history]
store = "redis"
[presence]
ttl_s = 10
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
password_file = "redis-password"
CONF
PORTS=()
start_node() {
  local n=$1
  sed "s/^listen = .*/listen = \"127.0.0.1:${PORTS[$n]}\"/" "$WORK/config.toml" > "$WORK/node$n.toml"
  target/release/wss-chat serve --config "$WORK/node$n.toml" >> "$WORK/node$n.log" 2>&1 &
  PIDS[$n]=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$WORK/node$n.log" && return 0; sleep 0.1; done
  echo "node $n did not start"; tail "$WORK/node$n.log"; return 1
}
for n in 0 1 2; do PORTS[$n]=$(free_port); start_node "$n"; done
echo "redis on $REDIS_PORT, nodes on ${PORTS[*]}"

(
  sleep $((DURATION / 3))
  echo "== $(date -u +%T) kill -9 node 1"
  kill -9 "${PIDS[1]}"
  sleep 5
  start_node 1 && echo "== $(date -u +%T) node 1 back" && echo "${PIDS[1]}" > "$WORK/node1.pid"
  sleep $((DURATION / 3 - 5))
  echo "== $(date -u +%T) kill -9 Redis"
  kill -9 "$REDIS_PID"
  sleep 3
  start_redis "$WORK" "$REDIS_PORT" && echo "$REDIS_PID" > "$WORK/redis.pid" \
    && echo "== $(date -u +%T) Redis back with its data"
) &
CHAOS=$!

status=0
target/release/loadgen --addr "127.0.0.1:${PORTS[0]}" --ca "$WORK/ca.pem" \
  --secret-file "$WORK/jwt-secret" --source-ips 200 \
  cluster-soak --nodes "$(IFS=,; echo "${PORTS[*]}")" "$@" || status=$?
wait "$CHAOS" || true
[ -f "$WORK/node1.pid" ] && PIDS[1]=$(cat "$WORK/node1.pid")
for n in 0 1 2; do
  echo "node $n: log lines with panic: $(grep -ci panic "$WORK/node$n.log" || true), RSS $(grep VmRSS /proc/"${PIDS[$n]}"/status 2>/dev/null | awk '{print $2}') KiB"
done
echo "redis: $(redis-cli -p "$REDIS_PORT" info memory | grep used_memory_human)"
exit $status

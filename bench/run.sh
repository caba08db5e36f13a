#!/usr/bin/env bash
# Side-by-side benchmark: wss-chat against uWebSockets.js, Node ws and Go gorilla/websocket,
# each doing the same job over TLS on loopback (check Origin and token, sanitise, broadcast to
# the room except the sender). The server runs pinned to CPU 0, the load generator to CPU 1.
# Each server is restarted for each mode; the whole set repeats REPEATS times and the table
# shows medians and the ratio of wss-chat to each peer.
#
#   bench/run.sh                     # REPEATS=3, all servers, all modes
#   REPEATS=1 SERVERS="wss-chat uws" MODES="broadcast saturate" bench/run.sh
#   REPEATS=3 SERVERS="wss-chat wss-chat-off" MODES="broadcast saturate" bench/run.sh  # history on vs off
#   cp target/release/wss-chat /tmp/old; ...change...; BEFORE=/tmp/old SERVERS="wss-chat wss-chat-before" bench/run.sh
#                                    # a change on the hot path, before and after, in one run
#   BEFORE=/tmp/old SERVERS="wss-chat-off wss-chat-off-before" bench/run.sh  # the same, history off
#   LOADGEN=/tmp/loadgen-old bench/run.sh   # another load generator binary (to compare its own cost)
#   KEEP_LOGS=/tmp/logs bench/run.sh      # keep each step's server log (the work dir goes at exit)
#   QUIET_RETRIES=0 bench/run.sh          # every step once, however much the host steals (default 2 retries)
#   QUIET_WAIT=0 bench/run.sh             # start each step at once (default: wait up to 60 s for a quiet host)
#
# After a wss-chat step, "server: ..." lines name any handshakes it refused (by reason) and any
# slow consumers it closed, from its metrics: a step that could not fill its room says why.
# Another counts the history store's commits (each an fsync, with "full" durability).
#
# Installs its peers: npm packages into bench/peers/node_modules, Go and gorilla/websocket from
# Debian (apt-get; needs root), and builds everything in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

REPEATS=${REPEATS:-3}
SERVERS=${SERVERS:-"wss-chat uws node-ws gorilla wss-chat-2core"}
MODES=${MODES:-"broadcast saturate idle handshakes handshakes-x25519 handshakes-browser direct bigroom churn"}
CLIENTS=${CLIENTS:-1000}
SENDERS=${SENDERS:-10}
SIZE=${SIZE:-128}
# Messages per second into the room in broadcast and churn. Issue 14's figures are at 100; on
# this 2-core machine that fills the load generator's core too (see README), so a lower RATE
# shows the servers with the client out of the way.
RATE=${RATE:-100}
# A step the host took more than 5 % of the CPU from (steal: no process is charged for it, and
# it moves every figure by tens of percent) runs again, up to this many times; the table keeps
# the last attempt. The discarded attempts are printed. 0: every step once.
QUIET_RETRIES=${QUIET_RETRIES:-2}
# Steal comes in spells of seconds to minutes: before each attempt, wait up to this many seconds
# for a second in which the host took at most 2 % of the CPUs, rather than start inside a spell
# and spend a retry on it.
QUIET_WAIT=${QUIET_WAIT:-60}

# steal_1s: the host's share of this VM's CPU time over the next second, in percent (/proc/stat).
steal_1s() {
  local a b
  a=$(head -n1 /proc/stat); sleep 1; b=$(head -n1 /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {
    n = split(a, x); split(b, y); total = 0
    for (i = 2; i <= n; i++) total += y[i] - x[i]
    printf "%.1f", (total > 0 ? 100 * (y[9] - x[9]) / total : 0) }'
}

# wait_quiet: return once a second goes by with steal at most 2 %, or after QUIET_WAIT seconds.
wait_quiet() {
  local waited=0 s=
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  while [ "$waited" -lt "$QUIET_WAIT" ]; do
    s=$(steal_1s)
    awk -v s="$s" 'BEGIN { exit !(s <= 2) }' && return 0
    waited=$((waited + 1))
  done
  echo "   host steal still $s % after ${QUIET_WAIT} s of waiting: measuring anyway"
}

echo "== installing peers"
command -v taskset >/dev/null || { apt-get update -q && apt-get install -y -q util-linux; }
command -v node >/dev/null || { apt-get update -q && apt-get install -y -q nodejs npm; }
(cd bench/peers && npm install --ignore-scripts --no-audit --no-fund --silent)
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-github-gorilla-websocket-dev
fi
mkdir -p target
(cd bench/peers/gorilla && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=/tmp/go-cache go build -o ../../../target/bench-gorilla .)
cargo build --release --locked --workspace
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
make_test_ca "$WORK"
TOKEN=bench-token-0123456789
# The bench config: shipped defaults, with the rate limits and caps raised past what the load
# itself needs (a benchmark measures the server, not its limiter). Sanitising stays on.
# Rooms: "bench" for the broadcast shapes, and bench0..bench189 for idle: 19,000 connections
# (the open-file limit here is 20,000 per process) in rooms of 100, so presence is on but no
# one room of 19,000 tells every join to everyone (that is the big-room shape).
IDLE_CLIENTS=${IDLE_CLIENTS:-19000}
IDLE_ROOMS=$(( (IDLE_CLIENTS + 99) / 100 ))
# And dm0..dm4999 for the direct-message shape (rooms of two).
PAIRS=${PAIRS:-5000}
ROOMS=$(python3 -c "import sys; n, p = int(sys.argv[1]), int(sys.argv[2]); print('[' + ', '.join(['\"bench\"'] + ['\"bench%d\"' % i for i in range(n)] + ['\"dm%d\"' % i for i in range(p)]) + ']')" "$IDLE_ROOMS" "$PAIRS")
load_config "$WORK" "$ROOMS" 16000 "messages_per_second = 1000000
burst = 1000000
handshakes_per_minute_per_ip = 1000000" $((IDLE_ROOMS + PAIRS + 10))
# Metrics on an ephemeral loopback port (the server logs it), read after each step so a step
# that lost clients says why (handshakes refused by reason, slow consumers closed).
printf '[metrics]\nlisten = "127.0.0.1:0"\n' >> "$WORK/config.toml"
# wss-chat-off: the same with history off (a relay), to price the store.
mkdir -p "$WORK/off"
cp "$WORK/config.toml" "$WORK/jwt-secret" "$WORK/cert.pem" "$WORK/key.pem" "$WORK/off/"
printf '[history]\nstore = "off"\n' >> "$WORK/off/config.toml"


# start NAME: the server pinned as asked; sets SERVER_PID, SERVER_PORT and AUTH (loadgen flags).
start() {
  local name=$1 cpus=0
  [ "$name" = wss-chat-2core ] && cpus=0,1
  case $name in
    wss-chat|wss-chat-2core|wss-chat-off|wss-chat-before|wss-chat-off-before)
      local conf=$WORK/config.toml bin=target/release/wss-chat
      case $name in wss-chat-off*) conf=$WORK/off/config.toml ;; esac
      case $name in *-before) bin=${BEFORE:?BEFORE=path of the binary to compare with} ;; esac
      # Every run starts from an empty store: no backlog sent to the clients as they join.
      rm -rf "$WORK/data"
      start_server "taskset -c $cpus $bin" "$conf" "$WORK/server.log"
      AUTH=(--secret-file "$WORK/jwt-secret") ;;
    *)
      SERVER_PORT=$(free_port)
      local cmd
      case $name in
        uws) cmd=(node bench/peers/uws.js) ;;
        node-ws) cmd=(node bench/peers/node-ws.js) ;;
        gorilla) cmd=(env GOMAXPROCS=1 target/bench-gorilla) ;;
      esac
      PORT=$SERVER_PORT CERT="$WORK/cert.pem" KEY="$WORK/key.pem" TOKEN=$TOKEN ORIGIN=https://localhost \
        taskset -c $cpus "${cmd[@]}" > "$WORK/server.log" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 1 100); do grep -q listening "$WORK/server.log" && break; sleep 0.1; done
      grep -q listening "$WORK/server.log" || { cat "$WORK/server.log"; return 1; }
      AUTH=(--token "$TOKEN") ;;
  esac
}

loadgen() {
  taskset -c 1 "${LOADGEN:-target/release/loadgen}" --addr "127.0.0.1:$SERVER_PORT" --ca "$WORK/ca.pem" \
    --server-pid "$SERVER_PID" --source-ips 400 "${AUTH[@]}" "$@"
}

# refusals: for wss-chat, the handshakes it refused (by reason) and the slow consumers it
# closed during the step, when there were any, and its history store's group commits (from
# its metrics).
refusals() {
  local url
  url=$(sed -n 's/.*serving metrics at \(http:[^ ]*\).*/\1/p' "$WORK/server.log" | head -n1)
  [ -n "$url" ] || return 0
  curl -s --max-time 5 "$url" | awk '
    /^wss_chat_(handshakes_refused|slow_consumers_closed)_total/ && $NF > 0 { printf "   server: %s\n", $0 }
    /^wss_chat_store_batch_size_sum/ { stored = $NF }
    /^wss_chat_store_batch_size_count/ { commits = $NF }
    END { if (commits > 0) printf "   server: history store: %d messages in %d commits (%.1f per commit: one fsync each)\n", stored, commits, stored / commits }' || true
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
for r in $(seq 1 "$REPEATS"); do
  for name in $SERVERS; do
    for mode in $MODES; do
      # The 2-core run is about throughput only.
      [ "$name" = wss-chat-2core ] && [ "$mode" != saturate ] && continue
      case $mode in
        broadcast) args=(broadcast --clients "$CLIENTS" --senders "$SENDERS" --size "$SIZE" --rate "$RATE") ;;
        saturate) args=(saturate --clients "$CLIENTS" --senders "$SENDERS" --size "$SIZE" --duration-secs 5 --warmup-secs 1) ;;
        idle) args=(idle --clients "$IDLE_CLIENTS" --rooms "$IDLE_ROOMS") ;;
        handshakes) args=(handshakes --duration-secs 5) ;;
        handshakes-x25519) args=(--classic-kx handshakes --duration-secs 5) ;;
        # The same with browsers' suite order (AES-128-GCM/SHA-256 first; rustls offers
        # AES-256-GCM/SHA-384 first, whose key schedule costs more).
        handshakes-browser) args=(--classic-kx --browser-suites handshakes --duration-secs 5) ;;
        # Issue 14's shapes: direct messages, one big room, presence churn.
        direct) args=(direct --pairs "$PAIRS" --rate 2000) ;;
        bigroom) args=(broadcast --clients 15000 --senders 2 --size "$SIZE" --rate 2 --duration-secs 10) ;;
        churn) args=(churn --clients "$CLIENTS" --senders "$SENDERS" --size "$SIZE" --rate "$RATE" --joins-per-sec 50) ;;
      esac
      tries=0
      while :; do
        echo "== run $r/$REPEATS: $name $mode"
        wait_quiet
        start "$name"
        out=$(loadgen "${args[@]}" 2>&1) || true
        refused=$(refusals)
        stop_server
        steal=$(echo "$out" | sed -n 's/^RESULT .*"steal_pct":\([0-9.]*\).*/\1/p' | head -n1)
        if [ -n "$steal" ] && [ "$tries" -lt "$QUIET_RETRIES" ] && awk -v s="$steal" 'BEGIN { exit !(s > 5) }'; then
          tries=$((tries + 1))
          echo "$out" | grep -v '^RESULT' | sed 's/^/   /'
          echo "   host steal $steal % (above 5): this step again, $tries of $QUIET_RETRIES"
          continue
        fi
        break
      done
      # The work dir goes at exit; KEEP_LOGS=DIR keeps each step's server log (a step that
      # failed, such as a big room the server stopped filling, is explained there).
      [ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp "$WORK/server.log" "$KEEP_LOGS/$r-$name-$mode.log" 2>/dev/null
      echo "$out" | grep -v '^RESULT' | sed 's/^/   /'
      [ -z "$refused" ] || echo "$refused"
      echo "$out" | sed -n "s/^RESULT /$name $mode /p" >> "$RESULTS"
    done
  done
done

echo
echo "== $(date -u +%Y-%m-%d) bench/run.sh: REPEATS=$REPEATS, RATE=$RATE, $CLIENTS clients, $SENDERS senders, $SIZE B messages, server on CPU 0, load generator on CPU 1"
python3 - "$RESULTS" "$RATE" <<'PY'
import json, statistics, sys
rate = sys.argv[2]
rows = {}
for line in open(sys.argv[1]):
    name, mode, js = line.split(" ", 2)
    rows.setdefault((name, mode), []).append(json.loads(js))
metrics = [
    ("saturation deliveries/s (higher is better)", "saturate", "deliveries_per_sec", True),
    (f"CPU-us per delivery at {rate} msg/s (lower)", "broadcast", "cpu_us_per_delivery", False),
    ("  of which in the kernel (the write; on loopback also the receiver's TCP)", "broadcast", "sys_us_per_delivery", False),
    (f"p99 latency ms at {rate} msg/s (lower)", "broadcast", "p99_ms", False),
    (f"deliveries/s at {rate} msg/s", "broadcast", "deliveries_per_sec", True),
    ("idle KiB per connection (lower)", "idle", "kib_per_connection", False),
    ("handshakes/s (higher)", "handshakes", "handshakes_per_sec", True),
    ("CPU-us per handshake (lower)", "handshakes", "cpu_us_per_handshake", False),
    ("handshakes/s, client offers X25519 only", "handshakes-x25519", "handshakes_per_sec", True),
    ("CPU-us per handshake, X25519 only", "handshakes-x25519", "cpu_us_per_handshake", False),
    ("CPU-us per handshake, X25519 only, browsers' suite order", "handshakes-browser", "cpu_us_per_handshake", False),
    ("direct: p99 ms, 5,000 rooms of 2 at 2,000 msg/s", "direct", "p99_ms", False),
    ("direct: CPU-us per delivery", "direct", "cpu_us_per_delivery", False),
    ("big room: p99 ms, 15,000 members at 2 msg/s", "bigroom", "p99_ms", False),
    ("big room: last delivery ms (max)", "bigroom", "max_ms", False),
    ("big room: CPU-us per delivery", "bigroom", "cpu_us_per_delivery", False),
    (f"churn: p99 ms at {rate} msg/s, 50 joins+leaves/s", "churn", "p99_ms", False),
    # Not the server's figures: how much the host and the client took from the run.
    ("host steal % over the broadcast step (a quiet host: under 5)", "broadcast", "steal_pct", None),
    ("load generator's CPU, % of its core, broadcast", "broadcast", "loadgen_pct", None),
    ("load generator's CPU-us per delivery, broadcast", "broadcast", "loadgen_us_per_delivery", None),
    ("load generator's CPU, % of its core, churn", "churn", "loadgen_pct", None),
]
servers = [s for s in ["wss-chat", "wss-chat-off", "wss-chat-before", "wss-chat-off-before", "uws", "node-ws", "gorilla", "wss-chat-2core"] if any(k[0] == s for k in rows)]
peers = [s for s in servers if s not in ("wss-chat", "wss-chat-2core")]
def med(name, mode, key):
    vals = [r[key] for r in rows.get((name, mode), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None
fmt = lambda v: "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")
print("| metric | " + " | ".join(servers) + " | " + " | ".join(f"wss-chat / {p}" for p in peers) + " |")
print("|---" * (1 + len(servers) + len(peers)) + "|")
for label, mode, key, better in metrics:
    vals = {s: med(s, mode, key) for s in servers}
    ratios = []
    for p in peers:
        a, b = vals.get("wss-chat"), vals.get(p)
        ratios.append("-" if not a or not b or better is None else f"{a / b:.2f}x")
    print(f"| {label} | " + " | ".join(fmt(vals[s]) for s in servers) + " | " + " | ".join(ratios) + " |")
steal = [(r["steal_pct"], name, mode) for (name, mode), rs in rows.items() for r in rs if r.get("steal_pct") is not None]
if steal:
    worst = max(steal)
    over = sum(1 for v, _, _ in steal if v > 5)
    print(f"\nHost steal over the measured steps: median {statistics.median(v for v, _, _ in steal):.1f} %, "
          f"at most {worst[0]:.1f} % ({worst[1]} {worst[2]}); {over} of {len(steal)} steps above 5 %"
          + (": the host slowed those, so compare ratios within this run, not figures across runs." if over else "."))
PY

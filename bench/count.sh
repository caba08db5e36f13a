#!/usr/bin/env bash
# Instructions per delivery in user space, counted by callgrind: a figure the host's steal and
# the other tenants' caches cannot move, for before/after pairs on a busy machine (bench/run.sh
# prints the steal; above ~5 % its CPU figures move by tens of percent). It counts
# instructions, not time: cache misses and the kernel's part (the write, over half of a
# delivery's CPU) are not in it, so a change that saves instructions must still show in
# bench/run.sh on a quiet host before it is called faster.
#
#   bench/count.sh                          # the server, broadcast: 200 clients, 10 msg/s, 10 s
#   WHO=loadgen bench/count.sh              # the load generator's own instructions instead
#   BIN=/tmp/wss-chat-before bench/count.sh # another server build (LOADGEN=... for the client)
#   ANNOTATE=1 bench/count.sh               # and the top functions (callgrind_annotate)
#   CG_OUT=/tmp/cg.out bench/count.sh       # and keep callgrind's dump (callgrind_annotate --tree=caller)
#   MODE=handshakes bench/count.sh          # instructions per full handshake (X25519 only, as
#                                           # bench/run.sh's handshakes-x25519), SECS of them
#
# Under valgrind aws-lc takes its AVX2 code paths (valgrind has no AVX-512), so the crypto's
# share differs from the real machine's. Needs valgrind (Debian; installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v valgrind >/dev/null || { apt-get update -q && apt-get install -y -q valgrind; }
command -v taskset >/dev/null || { apt-get update -q && apt-get install -y -q util-linux; }
WHO=${WHO:-server}
MODE=${MODE:-broadcast}
case $MODE in broadcast|handshakes) ;; *) echo "MODE is broadcast or handshakes"; exit 2 ;; esac
CLIENTS=${CLIENTS:-200}
RATE=${RATE:-10}
SECS=${SECS:-10}
[ -n "${BIN:-}" ] && [ -n "${LOADGEN:-}" ] || cargo build --profile profiling --locked --workspace
BIN=${BIN:-target/profiling/wss-chat}
LOADGEN=${LOADGEN:-target/profiling/loadgen}
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
make_test_ca "$WORK"
load_config "$WORK" '["bench"]' 20000 "messages_per_second = 1000000
burst = 1000000
handshakes_per_minute_per_ip = 1000000" 10
CG="valgrind --tool=callgrind --callgrind-out-file=$WORK/cg.out"
SERVER_CMD="taskset -c 0 $BIN"
LOAD_CMD="taskset -c 1 $LOADGEN"
if [ "$WHO" = loadgen ]; then LOAD_CMD="taskset -c 1 $CG $LOADGEN"; else SERVER_CMD="taskset -c 0 $CG $BIN"; fi
start_server "$SERVER_CMD" "$WORK/config.toml" "$WORK/server.log"
LOAD_ARGS=(--addr "127.0.0.1:$SERVER_PORT" --ca "$WORK/ca.pem" --server-pid "$SERVER_PID"
  --source-ips 10 --secret-file "$WORK/jwt-secret")
# valgrind execs the program, so its pid is the counted process's: callgrind_control finds it.
COUNTED=$SERVER_PID
if [ "$MODE" = handshakes ]; then
  # The window is the load itself: counted from zero before the first handshake to the dump
  # after the last, so every handshake the load generator reports is inside it. Few at a time:
  # under valgrind the server is ~50x slower and must stay inside its handshake deadline.
  [ "$WHO" = server ] || { echo "MODE=handshakes counts the server only"; exit 2; }
  callgrind_control -z "$COUNTED" >/dev/null
  T0=$(date +%s.%N)
  $LOAD_CMD "${LOAD_ARGS[@]}" --classic-kx handshakes --concurrency 4 --duration-secs "$SECS" \
    > "$WORK/load.log" 2>&1 || true
  callgrind_control -d "$COUNTED" >/dev/null
  T1=$(date +%s.%N)
else
  $LOAD_CMD "${LOAD_ARGS[@]}" broadcast --clients "$CLIENTS" \
    --senders 10 --size 128 --rate "$RATE" --duration-secs $((SECS + 6)) --warmup-secs 2 \
    > "$WORK/load.log" 2>&1 &
  LOAD=$!
  [ "$WHO" = loadgen ] && COUNTED=$LOAD
  for _ in $(seq 1 1200); do grep -q '^broadcast' "$WORK/load.log" && break; sleep 0.5; done
  sleep 3
  callgrind_control -z "$COUNTED" >/dev/null
  T0=$(date +%s.%N)
  sleep "$SECS"
  callgrind_control -d "$COUNTED" >/dev/null
  T1=$(date +%s.%N)
  wait $LOAD || true
fi
sed 's/^/   /' "$WORK/load.log"
DUMP=$WORK/cg.out.1  # the one dump asked for above
[ -n "${CG_OUT:-}" ] && cp "$DUMP" "$CG_OUT"
python3 - "$DUMP" "$CLIENTS" "$RATE" "$T0" "$T1" "$WHO" "$MODE" "$WORK/load.log" <<'PY'
import re, sys
dump, clients, rate, t0, t1, who, mode, load = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8]
ir = next(int(m.group(1)) for l in open(dump) if (m := re.match(r"^summary:\s+(\d+)", l)))
if mode == "handshakes":
    n = next(int(m.group(1)) for l in open(load) if (m := re.match(r"^handshakes: (\d+) in", l)))
    print(f"{who}: {ir:,} instructions in {t1 - t0:.1f} s, {n:,} handshakes: {ir / max(n, 1):,.0f} instructions per handshake")
    sys.exit(0)
# Every message goes to every client but its sender; the window is timed outside the process,
# so the count of deliveries in it is the rate's, within a message or two.
deliveries = rate * (clients - 1) * (t1 - t0)
print(f"{who}: {ir:,} instructions in {t1 - t0:.1f} s, ~{deliveries:,.0f} deliveries: {ir / deliveries:,.0f} instructions per delivery")
PY
if [ -n "${ANNOTATE:-}" ]; then
  callgrind_annotate --inclusive=no --threshold=100 "$DUMP" 2>/dev/null | grep -E '^\s*[0-9,]+ \(' | head -40
fi

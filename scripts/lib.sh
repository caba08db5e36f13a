# Shared by the yardstick scripts: a test CA, and starting the server on a free port.
# Source it; it defines functions only.

# make_test_ca DIR: DIR/ca.pem, and a leaf DIR/cert.pem + DIR/key.pem (ECDSA P-256, CA:FALSE,
# serverAuth, SAN localhost and 127.0.0.1, 90 days: what sslyze's Mozilla checks expect).
make_test_ca() {
  local d=$1
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca-key.pem" 2>/dev/null
  openssl req -x509 -new -key "$d/ca-key.pem" -sha256 -days 90 -subj "/CN=wss-chat test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$d/ca.pem" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/leaf-key.pem" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$d/leaf-key.pem" -out "$d/key.pem"
  openssl req -new -key "$d/key.pem" -subj "/CN=localhost" -out "$d/leaf.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" > "$d/leaf.ext"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" -CAcreateserial \
    -days 90 -sha256 -extfile "$d/leaf.ext" -out "$d/cert.pem" 2>/dev/null
  chmod 600 "$d/key.pem" "$d/ca-key.pem"
}

# start_server BIN CONFIG LOG: starts it in the background, sets SERVER_PID and SERVER_PORT.
start_server() {
  local bin=$1 config=$2 log=$3
  $bin serve --config "$config" > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    SERVER_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n1)
    [ -n "$SERVER_PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "server did not start:"; cat "$log"; return 1
}

# A server that dies of the signal (Node, Go) reports 143; that is the expected end here.
stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}

# server_config DIR EXTRA: a config for a yardstick run in DIR (CA from make_test_ca), with
# the demo user "yardstick" whose token is $YARDSTICK_TOKEN. EXTRA is appended to [server].
YARDSTICK_TOKEN=yardstick-token-0123456789
server_config() {
  local d=$1 extra=${2:-} hash
  hash=$(printf '%s' "$YARDSTICK_TOKEN" | sha256sum | cut -d' ' -f1)
  cat > "$d/config.toml" <<CONF
[server]
listen = "127.0.0.1:0"
$extra
[tls]
cert = "cert.pem"
key = "key.pem"
${TLS_EXTRA:-}
[origins]
allowed = ["https://localhost"]
[auth]
allow_query_token = true
[[auth.users]]
name = "yardstick"
token_sha256 = "$hash"
[rooms]
names = ["echo"]
[limits]
messages_per_second = 1000000
burst = 1000000
handshakes_per_minute_per_ip = 100000
outbound_queue_bytes = 67108864
CONF
}

# load_config DIR ROOMS MAX_MEMBERS LIMITS: the config the soak and the benchmark share (signed
# tokens from DIR/jwt-secret, made here; caps for 20,000 connections; quiet per-connection
# logs), with their own rooms (a TOML array), room size and [limits] lines; MAX_ROOMS (the
# default 100 when unset) for shapes with many rooms.
load_config() {
  local d=$1 rooms=$2 max_members=$3 limits=$4 max_rooms=${5:-100}
  head -c 48 /dev/urandom | base64 > "$d/jwt-secret"
  cat > "$d/config.toml" <<CONF
[server]
listen = "127.0.0.1:0"
max_connections = 20000
[tls]
cert = "cert.pem"
key = "key.pem"
[origins]
allowed = ["https://localhost"]
[auth]
jwt_secret_file = "jwt-secret"
[rooms]
names = $rooms
max_members = $max_members
max_rooms = $max_rooms
[limits]
$limits
[log]
level = "warn,wss_chat=info,wss_chat::session=warn,wss_chat::http=warn"
CONF
}

# free_port: a free loopback port (bound and released).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# need_redis: install Debian's redis-server when missing (the cluster scripts start their own).
need_redis() {
  [ -x /usr/bin/redis-server ] || { apt-get update -q && apt-get install -y -q redis-server; }
}

# start_redis DIR PORT [CPUS]: redis-server on 127.0.0.1:PORT, its password in DIR/redis-password
# (made if missing) and its data in DIR, every write in the append-only file before it is
# answered, as README advises; pinned to CPUS when given. Sets REDIS_PID (also added to PIDS,
# so with_work stops it) and exports REDISCLI_AUTH for redis-cli.
start_redis() {
  local d=$1 port=$2 cpus=${3:-}
  [ -f "$d/redis-password" ] || head -c 24 /dev/urandom | base64 > "$d/redis-password"
  export REDISCLI_AUTH
  REDISCLI_AUTH=$(cat "$d/redis-password")
  ${cpus:+taskset -c "$cpus"} /usr/bin/redis-server --port "$port" --bind 127.0.0.1 \
    --requirepass "$REDISCLI_AUTH" --dir "$d" --save "" --appendonly yes --appendfsync always \
    --maxmemory-policy noeviction > "$d/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis-server did not start:"; cat "$d/redis.log"; return 1
}

# with_work: a temp dir in WORK and a list PIDS of processes started in it; at exit (also on
# Ctrl-C or TERM) every process in PIDS or in a WORK/*.pid file (written by subshells) gets
# TERM, then KILL if it is still there after 5 s (a hung server must not outlive the run), and
# WORK is removed.
with_work() {
  WORK=$(mktemp -d)
  PIDS=()
  trap cleanup_work EXIT
  trap 'exit 130' INT TERM
}
# cluster_prologue: what every cluster script does first: redis-server installed, a release
# build, the open-file limit raised, a WORK dir (with_work) holding a test CA.
cluster_prologue() {
  need_redis
  cargo build --release --locked --workspace
  ulimit -n "$(ulimit -Hn)"
  with_work
  make_test_ca "$WORK"
}

cleanup_work() {
  local p all
  all="${PIDS[*]} $(cat "$WORK"/*.pid 2>/dev/null || true)"
  for p in $all; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=
    for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || break
    sleep 0.1
  done
  for p in $all; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

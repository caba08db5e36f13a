#!/usr/bin/env bash
# Autobahn|Testsuite fuzzingclient against wss-chat's test-only echo mode, over wss with the
# Origin and token the config asks for. Fails unless every case in sections 1-11 is OK,
# NON-STRICT or INFORMATIONAL and every case in 12-13 (permessage-deflate, which we never
# negotiate) is UNIMPLEMENTED. Prints a summary (docs/autobahn-summary.txt keeps the latest).
#
#   scripts/autobahn.sh [path/to/wss-chat]     (default: target/debug/wss-chat, built if missing)
#
# Needs Python 2.7 (pyenv provides one here) and openssl; installs autobahntestsuite into
# a virtualenv under target/autobahn-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

BIN=${1:-target/debug/wss-chat}
[ -x "$BIN" ] || cargo build --locked
PY2=${PY2:-$(ls -d /root/.pyenv/versions/2.7*/bin/python2.7 2>/dev/null | head -n1)}
if [ -z "$PY2" ] || ! "$PY2" -c 'import sys' 2>/dev/null; then
  echo "Autobahn needs Python 2.7: install it with 'pyenv install 2.7.18' (or set PY2=/path/to/python2.7)"
  exit 1
fi
command -v openssl >/dev/null || { echo "openssl missing: apt-get install -y openssl"; exit 1; }

VENV=target/autobahn-venv
if [ ! -x "$VENV/bin/wstest" ]; then
  echo "== installing autobahntestsuite into $VENV"
  rm -rf "$VENV" target/autobahn-vt
  "$PY2" -m pip install -q --disable-pip-version-check --target target/autobahn-vt 'virtualenv<20.22' 2>&1 | grep -v DEPRECATION || true
  PYTHONPATH=target/autobahn-vt "$PY2" -m virtualenv -q "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check autobahntestsuite 2>&1 | grep -v DEPRECATION || true
  [ -x "$VENV/bin/wstest" ] || { echo "autobahntestsuite did not install"; exit 1; }
fi

WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
make_test_ca "$WORK"
server_config "$WORK" "echo_mode = true"
start_server "$BIN" "$WORK/config.toml" "$WORK/server.log"

cat > "$WORK/spec.json" <<SPEC
{
  "outdir": "$WORK/reports",
  "servers": [{
    "agent": "wss-chat",
    "url": "wss://localhost:$SERVER_PORT/rooms/echo?token=$YARDSTICK_TOKEN",
    "origin": "https://localhost",
    "hostname": "localhost"
  }],
  "cases": ["*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
SPEC
echo "== wstest -m fuzzingclient against wss://localhost:$SERVER_PORT (echo mode)"
start=$(date +%s)
(cd "$WORK" && SSL_CERT_FILE="$WORK/ca.pem" "$OLDPWD/$VENV/bin/wstest" -m fuzzingclient -s spec.json > wstest.log 2>&1) || {
  echo "wstest failed:"; tail -n 30 "$WORK/wstest.log"; exit 1; }
echo "wstest took $(( $(date +%s) - start )) s"
# Kept for reading after a failure (each case's JSON says what the client saw).
rm -rf target/autobahn-reports && cp -r "$WORK/reports" target/autobahn-reports

python3 - "$WORK/reports/index.json" <<'PY'
import collections, json, sys
results = json.load(open(sys.argv[1]))["wss-chat"]
ok_main = {"OK", "NON-STRICT", "INFORMATIONAL"}
by_section = collections.defaultdict(collections.Counter)
bad = []
for case, r in results.items():
    section = int(case.split(".")[0])
    b, bc = r["behavior"], r["behaviorClose"]
    by_section[section][b] += 1
    want = {"UNIMPLEMENTED"} if section in (12, 13) else ok_main
    if b not in want or (section not in (12, 13) and bc not in ok_main):
        bad.append(f"{case}: behavior={b} close={bc}")
print(f"Autobahn|Testsuite fuzzingclient, {len(results)} cases")
for s in sorted(by_section):
    print(f"  section {s:>2}: " + ", ".join(f"{k} {v}" for k, v in sorted(by_section[s].items())))
if bad:
    print(f"FAILED ({len(bad)}):"); print("\n".join("  " + x for x in sorted(bad)))
    sys.exit(1)
print("PASS: sections 1-11 all OK/NON-STRICT/INFORMATIONAL, 12-13 UNIMPLEMENTED")
PY

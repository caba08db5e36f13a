#!/usr/bin/env bash
# sslyze against the running server with a test CA: Mozilla "intermediate" with the default
# tls.profile, then Mozilla "modern" with tls.profile = "modern". Exits non-zero unless both
# are compliant. Prints sslyze's compliance lines (docs/tls-audit-summary.txt keeps the latest).
#
#   scripts/tls-audit.sh [path/to/wss-chat]    (default: target/debug/wss-chat, built if missing)
#
# Installs sslyze (PyPI) into a virtualenv under target/sslyze-venv; needs python3 and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

BIN=${1:-target/debug/wss-chat}
[ -x "$BIN" ] || cargo build --locked
command -v openssl >/dev/null || { echo "openssl missing: apt-get install -y openssl"; exit 1; }
command -v python3 >/dev/null || { echo "python3 missing: apt-get install -y python3 python3-venv"; exit 1; }

VENV=target/sslyze-venv
if [ ! -x "$VENV/bin/sslyze" ]; then
  echo "== installing sslyze into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check sslyze
fi

WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
make_test_ca "$WORK"

status=0
for profile in intermediate modern; do
  TLS_EXTRA="profile = \"$profile\"" server_config "$WORK"
  start_server "$BIN" "$WORK/config.toml" "$WORK/server-$profile.log"
  echo "== sslyze --mozilla_config=$profile (tls.profile = \"$profile\")"
  if "$VENV/bin/sslyze" --mozilla_config="$profile" --certinfo_ca_file="$WORK/ca.pem" \
      "localhost:$SERVER_PORT" > "$WORK/sslyze-$profile.txt" 2>&1; then
    result=compliant
  else
    result="NOT compliant"; status=1
    cat "$WORK/sslyze-$profile.txt"
  fi
  # One line per protocol version (what was accepted), the groups, and the verdict.
  awk '/^ \* (SSL|TLS) [0-9.]+ Cipher Suites:/ { v = $2 " " $3; next }
       v && /rejected all|accepted the following/ { sub(/^ +/, ""); print "  " v ": " $0; v = "" }
       /Supported curves:/ { sub(/^ +/, ""); print "  " $0 }
       /Compliant|compliant/ { sub(/^ +/, ""); print "  " $0 }' "$WORK/sslyze-$profile.txt"
  echo "  => $profile: $result"
  stop_server
done
exit $status

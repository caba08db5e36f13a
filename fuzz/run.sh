#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 1200), one after another, then merge what
# each found into its committed corpus, keeping only inputs that add coverage.
# Needs nightly and cargo-fuzz: `cargo install cargo-fuzz`. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1200}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_frame sanitizer origin token upgrade_path config)
work=${FUZZ_WORK:-target/fuzz-work}
mkdir -p "$work"
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  echo "== $t for ${secs}s"
  # New inputs go to the work dir; the committed corpus is read as seeds.
  cargo +nightly fuzz run -O "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "$work/$t.log" | grep -E '^#[0-9]+ +(INITED|DONE)|stat::|SUMMARY|ERROR' || true
  # Keep in the committed corpus only what adds coverage to it.
  cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "$work/$t" -- -merge=1 >/dev/null 2>&1 || true
done

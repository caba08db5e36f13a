#!/usr/bin/env bash
# Run fuzz targets for SECONDS each (default 1200), one after another, and print each run's
# executions, coverage and findings. New inputs go to a work directory (FUZZ_WORK, default
# target/fuzz-work), never into fuzz/corpus: only the seeds (fuzz/seeds.py) and the inputs of
# fixed findings are committed, each finding beside a regular test that guards it.
# A crash stops that target's run and leaves the input under fuzz/artifacts/<target>/.
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). Run it from a clean checkout (a
# git worktree): cargo fuzz rebuilds from the working tree before every target.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
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
  cargo +nightly fuzz run -O "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "$work/$t.log" | grep -E '^#[0-9]+ +(INITED|DONE)|stat::|SUMMARY|ERROR' || true
done

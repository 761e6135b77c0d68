#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time on the kept corpus (fuzz/corpus/TARGET),
# then minimizes the corpus. Needs the nightly toolchain; installs cargo-fuzz when missing.
# A crash is written to fuzz/artifacts/TARGET/: fix it, and copy the input into
# ws-server/tests/fuzz_regressions/ (channels) or add it to a unit test, so that every
# `cargo test` replays it.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]        default 60
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in protocol_decode channels config; do
  echo "== $target ($SECONDS_PER_TARGET s)"
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 2>&1 | grep -E '^Done|crash-|panicked' || true
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "$target crashed: see fuzz/artifacts/$target" >&2
    exit 1
  fi
  cargo +nightly fuzz cmin "$target" "corpus/$target" >/dev/null 2>&1
done
echo "fuzzing found nothing"

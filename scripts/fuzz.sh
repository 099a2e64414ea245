#!/usr/bin/env bash
# Fuzzes the Kafka request decoder (net/fuzz, libFuzzer via cargo-fuzz) for
# SECONDS (default 20). The stable toolchain runs it with RUSTC_BOOTSTRAP=1.
# New corpus entries go to target/fuzz-corpus; the seeds in
# net/fuzz/corpus/decode_request (frames captured from real clients) are read.
#
#   scripts/fuzz.sh [SECONDS]      # CI runs 20 s; run longer on demand
set -euo pipefail
seconds=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
mkdir -p "$root/target/fuzz-corpus"
cd "$root/net"
RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$root/target/fuzz" decode_request \
  "$root/target/fuzz-corpus" fuzz/corpus/decode_request -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512

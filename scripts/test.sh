#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs formatting,
# lints and every test of the workspace. `.ci/run` calls exactly this.
#
# Storage tests write with O_DIRECT and need a real filesystem; they create
# their directories under target/tmp (override with KAFKI_TEST_DIR) and
# refuse tmpfs. The model-based test runs fixed seeds here; for a longer run:
#   KAFKI_MODEL_SEEDS=300 KAFKI_MODEL_OPS=1500 cargo test -p kafki-storage --release --test model
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n=== %s ===\n' "$*"; }

section "toolchain"
cargo --version
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  # Only possible where the Rust distribution server is reachable.
  rustup component add rustfmt clippy
fi

section "format"
cargo fmt --all -- --check

section "lints"
cargo clippy --workspace --all-targets -- -D warnings

section "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"

# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"

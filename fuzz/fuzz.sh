#!/usr/bin/env bash
# Builds and runs the fuzz targets with libFuzzer on the stable toolchain (no sanitizer; Rust's
# own checks, debug assertions and overflow checks find the bugs). Usage:
#   fuzz/fuzz.sh build
#   fuzz/fuzz.sh run TARGET [SECONDS] [extra libFuzzer flags...]
#   fuzz/fuzz.sh repro TARGET FILE...
# Targets: race_file cache_entry ws_input window. Findings land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
bin() { echo "target/$triple/release/$1"; }
case "${1:-}" in
  build)
    # --target keeps the instrumentation off build scripts and proc macros.
    cargo build --locked --release --target "$triple" --bins
    ;;
  run)
    target=${2:?target}; seconds=${3:-600}; shift $(( $# < 3 ? $# : 3 ))
    mkdir -p "corpus/$target" "seeds/$target" "artifacts/$target"
    # corpus/ (grown by the run, not committed) first: new inputs are written there.
    "$(bin "$target")" "corpus/$target" "seeds/$target" \
      -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=262144 -timeout=10 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 "$@"
    ;;
  repro)
    target=${2:?target}; shift 2
    "$(bin "$target")" "$@"
    ;;
  *)
    sed -n '2,7p' "$0"; exit 2
    ;;
esac

#!/usr/bin/env bash
# Many look-ahead viewers of one session on this machine: the hub (release build) plays its demo
# session, and the load tool opens VIEWERS viewers with compact windows, spread over SOURCES
# loopback source addresses. Prints the load tool's report and the hub's memory per viewer.
# Environment: VIEWERS (20000), SECONDS_PER_RUN (20), SOURCES (8), ENC (qdelta1), OUT
# (/tmp/replay-hub-scale: the JSON report and logs), NO_BUILD=1 to use the release binaries as they
# are. The load tool is replay-hub-bench's `loadtest` (BENCHMARKS.md, "Tools").
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${VIEWERS:-20000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
SOURCES=${SOURCES:-8}
ENC=${ENC:-qdelta1}
OUT=${OUT:-/tmp/replay-hub-scale}
BIN=${CARGO_TARGET_DIR:-target}/release/replay-hub
LOADTEST=${CARGO_TARGET_DIR:-target}/release/loadtest
# One descriptor per viewer on each side, and some to spare (raising the hard limit needs root).
FDS=$((VIEWERS + 1000))
if ! ulimit -Hn "$FDS" 2>/dev/null; then
  FDS=$(ulimit -Hn)
  echo "warning: the hard open-file limit is $FDS here: each side can hold fewer than $FDS viewers" >&2
fi
ulimit -n "$FDS" || { echo "cannot raise the open-file limit to $FDS" >&2; exit 1; }
[[ ${NO_BUILD:-0} == 1 ]] ||
  cargo build --release --locked -p replay-hub -p replay-hub-bench --bin replay-hub --bin loadtest >&2
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/replay-hub-scale.XXXX)
"$BIN" --bind 127.0.0.1:0 --data-dir "$WORK/data" --cache none \
  --max-viewers-per-session "$VIEWERS" --max-connections-per-ip 0 >"$WORK/hub.out" 2>"$OUT/hub.log" &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 600); do grep -q '^viewer URL' "$WORK/hub.out" 2>/dev/null && break; sleep 0.1; done
VIEW=$(sed -n 's/^viewer URL: *//p' "$WORK/hub.out")
sleep 2
BEFORE=$(awk '/^VmRSS/ {print $2}' /proc/$HUB/status)
"$LOADTEST" --url "$VIEW" --viewers "$VIEWERS" --seconds "$SECONDS_PER_RUN" --mode lookahead \
  --enc "$ENC" --source-addrs "$SOURCES" --server-pid "$HUB" --json "$OUT/report.json"
jq -r --argjson before "$BEFORE" '
  "hub RSS before any viewer \($before / 1024 * 10 | round / 10) MiB, with \(.connected) viewers \(.server_rss_end_kib / 1024 * 10 | round / 10) MiB: \((.server_rss_end_kib - $before) / .connected * 10 | round / 10) KiB per viewer"' \
  "$OUT/report.json"

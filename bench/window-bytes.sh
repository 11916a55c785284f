#!/usr/bin/env bash
# Bytes on the wire per frame of content, by delivery and window encoding, at 1×, 4× and 16×:
# one hub (release build), a few viewers of its demo session per case, measured by the load tool.
# Environment: SPEEDS ("1 4 16"), SECONDS_PER_RUN (10), VIEWERS (20), NO_BUILD=1 to use the
# release binaries as they are. The load tool is replay-hub-bench's `loadtest` (BENCHMARKS.md,
# "Tools"). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
SPEEDS=${SPEEDS:-1 4 16}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
VIEWERS=${VIEWERS:-20}
BIN=${CARGO_TARGET_DIR:-target}/release/replay-hub
LOADTEST=${CARGO_TARGET_DIR:-target}/release/loadtest
[[ ${NO_BUILD:-0} == 1 ]] ||
  cargo build --release --locked -p replay-hub -p replay-hub-bench --bin replay-hub --bin loadtest >&2
WORK=$(mktemp -d /tmp/replay-hub-bytes.XXXX)
"$BIN" --bind 127.0.0.1:0 --data-dir "$WORK/data" --cache none >"$WORK/hub.out" 2>"$WORK/hub.log" &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 600); do grep -q '^control URL' "$WORK/hub.out" 2>/dev/null && break; sleep 0.1; done
CONTROL=$(sed -n 's/^control URL: *//p' "$WORK/hub.out")
VIEW=$(sed -n 's/^viewer URL: *//p' "$WORK/hub.out")
control() { node --experimental-websocket --no-warnings bench/control.mjs "$CONTROL" "$1" >/dev/null; }
# Into the race, away from the grid, where every car moves.
control '{"cmd":"seek","frame":2500}'
echo "| delivery | encoding | speed | B per frame of content | KB/s per viewer |"
echo "|---|---|---:|---:|---:|"
for speed in $SPEEDS; do
  control "{\"cmd\":\"speed\",\"value\":$speed}"
  for mode in "push -" "lookahead msgpack" "lookahead qdelta1"; do
    read -r m enc <<<"$mode"
    args=(--mode "$m")
    [[ $enc != - ]] && args+=(--enc "$enc")
    "$LOADTEST" --url "$VIEW" --viewers "$VIEWERS" --seconds "$SECONDS_PER_RUN" \
      --json "$WORK/r.json" "${args[@]}" >/dev/null 2>"$WORK/lt.log" || { cat "$WORK/lt.log" >&2; exit 1; }
    jq -r --arg m "$m" --arg e "$enc" --arg s "$speed" \
      '"| \($m) | \($e) | \($s)× | \(.bytes_per_frame | round) | \(.bytes_per_second / .connected / 1000 * 100 | round / 100) |"' "$WORK/r.json"
  done
done

#!/usr/bin/env bash
# The hub's resident memory per look-ahead viewer (compact windows), for one or more builds or
# environments side by side: for each count in COUNTS and each variant, a fresh hub plays its demo
# session, the load tool opens that many viewers and holds them for SECONDS_PER_RUN, and the hub's
# RSS with them (VmRSS at the end of the measurement) is set against its RSS before any viewer.
# Environment: COUNTS ("2000 5000"), SECONDS_PER_RUN (5), SOURCES (8), VARIANTS (one per line,
# "label;binary;VAR=value ...", default: the release build as it is), NO_BUILD=1 to use the
# release binary as it is. Prints a Markdown table (with the hub's CPU per frame of content
# delivered, for a memory saving that costs CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${COUNTS:-2000 5000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
SOURCES=${SOURCES:-8}
BIN=${CARGO_TARGET_DIR:-target}/release/replay-hub
LOADTEST=${CARGO_TARGET_DIR:-target}/release/loadtest
VARIANTS=${VARIANTS:-"release;$BIN;"}
[[ ${NO_BUILD:-0} == 1 ]] ||
  cargo build --release --locked -p replay-hub -p replay-hub-bench --bin replay-hub --bin loadtest >&2
MAX=$(tr ' ' '\n' <<<"$COUNTS" | sort -n | tail -1)
ulimit -n "$((MAX + 1000))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/replay-hub-memory.XXXX)
HUB=
trap '[[ -n $HUB ]] && kill $HUB 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "| variant | viewers | hub RSS before MiB | with viewers MiB | KiB per viewer | anonymous KiB per viewer | hub µs CPU per frame |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for n in $COUNTS; do
  while IFS=';' read -r label bin envs; do
    [[ -z $label ]] && continue
    rm -rf "$WORK/data" "$WORK/hub.out"
    # shellcheck disable=SC2086 # envs is a list of VAR=value words
    env $envs "$bin" --bind 127.0.0.1:0 --data-dir "$WORK/data" --cache none \
      --max-viewers-per-session "$n" --max-connections-per-ip 0 >"$WORK/hub.out" 2>"$WORK/hub.log" &
    HUB=$!
    for _ in $(seq 600); do grep -q '^viewer URL' "$WORK/hub.out" 2>/dev/null && break; sleep 0.1; done
    VIEW=$(sed -n 's/^viewer URL: *//p' "$WORK/hub.out")
    sleep 2
    before=$(rss $HUB)
    anon_before=$(awk '/^Anonymous:/ {print $2}' "/proc/$HUB/smaps_rollup")
    rm -f "$WORK/done" "$WORK/anon"
    # The hub's largest anonymous memory while the load tool runs (sampled each second).
    ( max=0; while kill -0 $HUB 2>/dev/null && [[ ! -e $WORK/done ]]; do
        a=$(awk '/^Anonymous:/ {print $2}' "/proc/$HUB/smaps_rollup" 2>/dev/null || echo 0)
        (( a > max )) && max=$a; echo $max >"$WORK/anon"; sleep 1
      done ) &
    SAMPLER=$!
    "$LOADTEST" --url "$VIEW" --viewers "$n" --seconds "$SECONDS_PER_RUN" --mode lookahead \
      --enc qdelta1 --source-addrs "$SOURCES" --server-pid "$HUB" --json "$WORK/r.json" \
      >/dev/null 2>"$WORK/lt.log" || { cat "$WORK/lt.log" >&2; exit 1; }
    touch "$WORK/done"
    wait $SAMPLER 2>/dev/null || true
    anon=$(cat "$WORK/anon" 2>/dev/null || echo 0)
    jq -r --arg l "$label" --argjson b "$before" --argjson ab "$anon_before" --argjson a "$anon" '
      "| \($l) | \(.connected) | \($b / 1024 * 10 | round / 10) | \(.server_rss_end_kib / 1024 * 10 | round / 10) | \((.server_rss_end_kib - $b) / .connected * 10 | round / 10) | \(if $a > 0 then (($a - $ab) / .connected * 10 | round / 10) else "-" end) | \(.server_cpu_us_per_frame * 100 | round / 100) |"' \
      "$WORK/r.json"
    kill $HUB 2>/dev/null || true
    wait $HUB 2>/dev/null || true
    HUB=
  done <<<"$VARIANTS"
done

#!/usr/bin/env bash
# Importing a full-length OpenF1 session (57 laps, 20 cars) from the local fixture server:
# wall time and peak RSS of `replay-hub import openf1` with a cold download cache and with a
# warm one, then the race file's size and frames and the hub's create -> first frame over it.
# Each measurement waits for a 1-minute load below 2.5 (at most 10 minutes) and prints `uptime`.
# Environment: RUNS (3), PORT (8999), QUIET_TRIES (20 checks 30 s apart before each run),
# NO_BUILD=1 to use the release binaries as they are.
# Prints one line per run; BENCHMARKS.md has the table.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
PORT=${PORT:-8999}
T=${CARGO_TARGET_DIR:-target}/release
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --release --locked -p replay-hub -p replay-hub-bench \
  --bin replay-hub --bin openf1_server --bin first_frame >&2
WORK=$(mktemp -d /tmp/replay-hub-openf1.XXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

quiet() { # waits for the 1-minute load to drop below 2.5, for at most QUIET_TRIES x 30 s
  for _ in $(seq "${QUIET_TRIES:-20}"); do
    awk '{exit !($1 < 2.5)}' /proc/loadavg && return
    sleep 30
  done
}

"$T/openf1_server" 57 20 "$PORT" >"$WORK/url" 2>"$WORK/fixture.log" &
PIDS+=($!)
for _ in $(seq 1200); do [[ -s $WORK/url ]] && break; sleep 0.1; done
URL=$(cat "$WORK/url")
echo "fixture: $(cat "$WORK/fixture.log") at $URL"

import() { # args: label; times one import into $WORK/data
  quiet
  echo "$1: $(uptime)"
  /usr/bin/time -v "$T/replay-hub" import openf1 --session-key 9590 --api-url "$URL" \
    --data-dir "$WORK/data" --requests-per-second 1000 --quiet --cache none \
    >"$WORK/import.out" 2>"$WORK/time.txt"
  local wall rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/time.txt")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time.txt")
  echo "$1: wall $wall, max RSS $((rss / 1024)) MiB, user $(sed -n 's/.*User time (seconds): //p' "$WORK/time.txt") s"
  sed -n 's/^ *\(race\|downloads\):/  \1:/p' "$WORK/import.out"
}

for run in $(seq "$RUNS"); do
  rm -rf "$WORK/data"
  import "cold $run"
done
for run in $(seq "$RUNS"); do
  rm -f "$WORK/data"/*.race
  import "warm $run"
done

RACE=$WORK/data/monza-2024.race
echo "race file: $(stat -c %s "$RACE") bytes"
for run in $(seq "$RUNS"); do
  quiet
  echo "load $run: $(uptime)"
  # A fresh hub over a fresh data directory each run (a hub resumes the sessions it finds in
  # one, loading their races before it listens), so it parses, validates and encodes the race.
  rm -rf "$WORK/hub"; mkdir "$WORK/hub"; cp "$RACE" "$WORK/hub/"
  "$T/replay-hub" serve --bind 127.0.0.1:18101 --data-dir "$WORK/hub" --admin-token bench \
    --demo-session "" --cache none >/dev/null 2>"$WORK/hub.log" &
  HUB=$!
  PIDS+=($HUB)
  for _ in $(seq 100); do curl -sf localhost:18101/healthz >/dev/null && break; sleep 0.05; done
  # create -> 201 and create -> first frame, in ms
  echo "load $run: $("$T/first_frame" http://127.0.0.1:18101 bench monza-2024)"
  kill "$HUB"; wait "$HUB" 2>/dev/null || true
done

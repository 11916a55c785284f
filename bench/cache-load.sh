#!/usr/bin/env bash
# Session create -> first frame for a 57-lap race, from the race file, the disk cache, Redis and
# memory, with and without chunk compression; and Redis memory per race.
# Needs redis-server. Uses ports 18100 (hub) and 16390 (a private Redis). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p replay-hub -p replay-hub-bench --bin replay-hub --bin first_frame
BIN=target/release/replay-hub
FF=target/release/first_frame
WORK=$(mktemp -d /tmp/rh-bench.XXXX)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  redis-cli -p 16390 shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
redis-cli -p 16390 shutdown nosave >/dev/null 2>&1 || true
mkdir -p "$WORK/races"
$BIN generate --laps 57 --drivers 20 --seed 7 --out "$WORK/races/gp57.race" --quiet
redis-server --port 16390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile "$WORK/redis.log"
sleep 0.5

hub() { # args: cache spec, compression
  $BIN serve --bind 127.0.0.1:18100 --data-dir "$WORK/races" --admin-token bench \
    --demo-session "" --cache "$1" --cache-compression "$2" --cache-prefix "bench-$2" \
    >/dev/null 2>"$WORK/hub.log" &
  HUB=$!
  for _ in $(seq 100); do curl -sf localhost:18100/healthz >/dev/null && return; sleep 0.05; done
  echo "hub did not start" >&2; exit 1
}
stop() { kill "$HUB"; wait "$HUB" 2>/dev/null || true; }
first() { $FF http://127.0.0.1:18100 bench gp57 | awk '{print $2}'; }
wait_written() { # grep the hub log for the write-back
  for _ in $(seq 600); do grep -q "race written to the cache" "$WORK/hub.log" && return; sleep 0.05; done
  echo "no write-back" >&2; exit 1
}

echo "| source | compression | create -> first frame (ms) |"
echo "|---|---|---|"
hub none none; echo "| race file (parse + encode) | - | $(first) |"
echo "| memory (second session) | - | $(first) |"; stop

for c in none zstd; do
  rm -rf "$WORK/dircache"
  hub "dir:$WORK/dircache" $c; first >/dev/null; wait_written; stop
  hub "dir:$WORK/dircache" $c; echo "| disk cache | $c | $(first) |"; stop

  before=$(redis-cli -p 16390 info memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
  hub redis://127.0.0.1:16390/0 $c; first >/dev/null; wait_written; stop
  after=$(redis-cli -p 16390 info memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
  hub redis://127.0.0.1:16390/0 $c; echo "| Redis | $c | $(first) |"; stop
  echo "| (Redis memory for the race, $c: $(( (after - before) / 1048576 )) MiB) | | |"
done

#!/usr/bin/env bash
# Chaos benchmark: two replicas (`replay-hub serve --broker --cache` on a private redis-server)
# serving one session to steady viewers while
#   (a) Redis is SIGKILLed and restarted empty (no persistence) at REDIS_KILL_AT for REDIS_DOWN s,
#   (b) replica B is SIGKILLed at REPLICA_KILL_AT; its viewers fail over to replica A,
#   (c) CHURN clients a second connect to a second session as controllers, seek, disconnect,
#       half on each replica (all on A once B is gone), the whole run.
# Viewers: STEADY on A through the load tool (replay-hub-bench's `loadtest`); MOVING through
# bench/chaos (replay-hub-bench's `chaos`), which start on B, fail over to A and report outages,
# seconds to resume and frames skipped. RSS of each replica is sampled every 5 s; the logs are
# searched for panics.
#
# Environment: DURATION (600 s), STEADY (500), MOVING (500), CHURN (200), REDIS_KILL_AT (120),
# REDIS_DOWN (10), REPLICA_KILL_AT (300), LAPS (10: the race must outlast the run), OUT
# (target/chaos). Honours CARGO_TARGET_DIR. Every process it starts is stopped on exit, and the
# whole run is bounded by DURATION + 180 s.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-600}
STEADY=${STEADY:-500}
MOVING=${MOVING:-500}
CHURN=${CHURN:-200}
REDIS_KILL_AT=${REDIS_KILL_AT:-120}
REDIS_DOWN=${REDIS_DOWN:-10}
REPLICA_KILL_AT=${REPLICA_KILL_AT:-300}
LAPS=${LAPS:-10}
OUT=${OUT:-target/chaos}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/replay-hub
CHAOS=$TARGET_DIR/release/chaos
LOADTEST=$TARGET_DIR/release/loadtest
TOKEN=chaos-admin

ulimit -n 20000 || { echo "cannot raise the open-file limit to 20000" >&2; exit 1; }
cargo build --release --locked -p replay-hub -p replay-hub-bench --bin replay-hub --bin loadtest --bin chaos

rm -rf "$OUT"
mkdir -p "$OUT/logs" "$OUT/a" "$OUT/b"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Hard bound on the whole run, whatever hangs: this shell is ended, and the trap stops the rest.
( sleep $((DURATION + 180)); echo "chaos: over time, stopping" >&2; kill -TERM $$ ) &
PIDS+=($!)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
REDIS=redis://127.0.0.1:$REDIS_PORT

start_redis() {
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    >>"$OUT/logs/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "redis-server did not start; see $OUT/logs/redis.log" >&2
  exit 1
}

# Waits for `listening on ADDR` in a log written by process $1; prints host:port.
listening() { # pid log
  for _ in $(seq 1200); do
    local line
    line=$(grep -m1 -o 'listening on [^ ]*' "$2" 2>/dev/null || true)
    if [[ -n $line ]]; then line=${line#listening on }; echo "${line#http://}"; return; fi
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  echo "process $1 did not start; see $2" >&2
  exit 1
}

start_replica() { # name
  "$BIN" serve --bind 127.0.0.1:0 --data-dir "$OUT/$1" --broker "$REDIS" --cache "$REDIS/0" \
    --cache-prefix chaos --admin-token "$TOKEN" --demo-session '' \
    --max-connections-per-ip 0 --max-viewers-per-session 100000 \
    >"$OUT/logs/$1.out" 2>"$OUT/logs/$1.log" &
  local pid=$!
  PIDS+=("$pid")
  local addr
  addr=$(listening "$pid" "$OUT/logs/$1.out")
  for _ in $(seq 600); do
    curl -sf "http://$addr/readyz" >/dev/null && break
    sleep 0.1
  done
  eval "PID_$1=$pid ADDR_$1=$addr"
}

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo -; }

echo "chaos: race of $LAPS laps, redis on :$REDIS_PORT" >&2
"$BIN" generate --laps "$LAPS" --seed 3 --id chaos --name "Chaos GP" --out "$OUT/a/chaos.race" --quiet
ln "$OUT/a/chaos.race" "$OUT/b/chaos.race"
start_redis
start_replica a
start_replica b
create() { # session id -> control token
  curl -sf -X POST "http://$ADDR_a/api/sessions" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"race\":\"chaos\",\"id\":\"$1\",\"autoplay\":true}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["control_token"])'
}
create main >/dev/null
CHURN_TOKEN=$(create churn)
RSS_A0=$(rss "$PID_a"); RSS_B0=$(rss "$PID_b")
echo "chaos: replicas a=$ADDR_a (pid $PID_a) b=$ADDR_b (pid $PID_b)" >&2

T0=$(date +%s.%N)
at() { python3 -c "import time; print(f'{time.time() - $T0:.1f}')"; }
"$LOADTEST" --url "ws://$ADDR_a/ws/sessions/main" --viewers "$STEADY" --seconds "$DURATION" \
  --server-pid "$PID_a" --json "$OUT/loadtest.json" >"$OUT/logs/loadtest.log" 2>&1 &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
"$CHAOS" --urls "ws://$ADDR_b/ws/sessions/main,ws://$ADDR_a/ws/sessions/main" \
  --viewers "$MOVING" --seconds "$DURATION" --churn-per-second "$CHURN" \
  --churn-urls "ws://$ADDR_a/ws/sessions/churn?token=$CHURN_TOKEN,ws://$ADDR_b/ws/sessions/churn?token=$CHURN_TOKEN" \
  --json "$OUT/chaos.json" >"$OUT/logs/chaos.log" 2>&1 &
CHAOS_PID=$!
PIDS+=("$CHAOS_PID")

# RSS of both replicas every 5 s: seconds, a KiB, b KiB.
( while sleep 5; do echo "$(at) $(rss "$PID_a") $(rss "$PID_b")"; done ) >"$OUT/rss.txt" &
PIDS+=($!)

wait_until() { # seconds into the run
  local now; now=$(at)
  python3 -c "import sys; sys.exit(0 if $now < $1 else 1)" && sleep "$(python3 -c "print($1 - $now)")"
  return 0
}
wait_until "$REDIS_KILL_AT"
echo "$(at) redis SIGKILL" | tee -a "$OUT/events.txt" >&2
kill -9 "$REDIS_PID"
sleep "$REDIS_DOWN"
start_redis
echo "$(at) redis restarted (empty)" | tee -a "$OUT/events.txt" >&2
wait_until "$REPLICA_KILL_AT"
RSS_B1=$(rss "$PID_b")
echo "$(at) replica b SIGKILL (rss $RSS_B1 KiB)" | tee -a "$OUT/events.txt" >&2
kill -9 "$PID_b"

wait "$CHAOS_PID" || echo "chaos client failed; see $OUT/logs/chaos.log" >&2
wait "$LOAD_PID" || echo "load tool exited non-zero; see $OUT/logs/loadtest.log" >&2
RSS_A1=$(rss "$PID_a")
echo "$(at) clients done" | tee -a "$OUT/events.txt" >&2

panics=$(cat "$OUT"/logs/a.log "$OUT"/logs/b.log | grep -ci 'panic' || true)
echo
echo "events:"; cat "$OUT/events.txt"
echo "replica a RSS: $RSS_A0 → $RSS_A1 KiB; replica b RSS: $RSS_B0 → $RSS_B1 KiB (at its kill)"
echo "panics in replica logs: $panics"
echo "moving viewers and churn:"; tail -1 "$OUT/logs/chaos.log"
echo "steady viewers (loadtest on a):"
python3 - "$OUT/loadtest.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["viewers", "connected", "seconds", "fps_p50", "fps_min", "gap_p99_ms", "gap_max_ms",
        "frames_received", "out_of_order", "warnings"]
print({k: r.get(k) for k in keys})
expected = r["viewers"] * r["seconds"] * 25
print(f"frames skipped (expected {expected:.0f} - received): {expected - r['frames_received']:.0f}")
PY

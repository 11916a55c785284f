#!/usr/bin/env bash
# replay-hub against two reference broadcasters, measured by its own load tool in one run:
#   hub-push       the hub, default (push) viewers
#   hub-lookahead  the hub, viewers in lookahead mode (msgpack windows)
#   hub-compact    the hub, viewers in lookahead mode with compact windows (enc=qdelta1)
#   floor          bench/peers/floor: one pre-framed write per viewer per frame (the lower bound)
#   node           bench/peers/node: Node.js + ws, the everyday way to write this
# Both peers serve the hub's own frame bytes at 25 FPS, so every target sends identical messages.
# Each (target, viewers) run gets a freshly started server, so its CPU and memory figures are its
# own and the hub's demo session is playing from its start (it pauses at the race's end, far
# beyond one run). Peers take their frames from a hub that is stopped before they are measured.
#
# Environment: TARGETS (default "hub-push hub-lookahead hub-compact floor node"), VIEWERS (default
# "100 1000 2000 5000"), SECONDS_PER_RUN (20), OUT (/tmp/replay-hub-peers), FROM (5000) and
# FRAMES (3000): the slice of the demo race the peers serve, SOURCES (4): loopback source addresses
# for the load tool, NO_BUILD=1 to use the release binaries as they are. Honours CARGO_TARGET_DIR.
# Prints a Markdown table; each run's JSON report and logs are kept in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGETS=${TARGETS:-hub-push hub-lookahead hub-compact floor node}
VIEWERS=${VIEWERS:-100 1000 2000 5000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
OUT=${OUT:-/tmp/replay-hub-peers}
FROM=${FROM:-5000}
FRAMES=${FRAMES:-3000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/replay-hub
FLOOR=$TARGET_DIR/release/floor
LOADTEST=$TARGET_DIR/release/loadtest

# 5000 viewers are 5000 sockets on each side; children inherit the limit.
ulimit -n 20000 || { echo "cannot raise the open-file limit to 20000" >&2; exit 1; }
# The load tool spreads its sockets over loopback source addresses (ephemeral ports).
SOURCES=${SOURCES:-4}

[[ ${NO_BUILD:-0} == 1 ]] ||
  cargo build --release --locked -p replay-hub -p replay-hub-bench --bin replay-hub --bin loadtest --bin floor

if [[ " $TARGETS " == *" node "* ]] && [[ ! -d bench/peers/node/node_modules ]]; then
  (cd bench/peers/node && npm ci --no-audit --no-fund) >&2
fi

mkdir -p "$OUT/logs"
WORK=$(mktemp -d /tmp/replay-hub-peers.XXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# Waits for `listening on ADDR` in a log written by process $1; prints ADDR.
listening() { # pid log
  for _ in $(seq 1200); do
    local line
    line=$(grep -m1 -o 'listening on [^ ]*' "$2" 2>/dev/null || true)
    if [[ -n $line ]]; then echo "${line#listening on }"; return; fi
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  echo "process $1 did not start; see $2" >&2
  exit 1
}

# Starts a hub on a free port; sets HUB_PID and HUB_ADDR (host:port). The first start generates
# the demo race into the data directory; later ones load it.
start_hub() { # log name
  # Every viewer comes from 127.0.0.1 here: lift the per-address connection limit.
  "$BIN" --bind 127.0.0.1:0 --data-dir "$WORK/data" --cache none --max-connections-per-ip 0 \
    >"$WORK/hub.out" 2>"$OUT/logs/$1-hub.log" &
  HUB_PID=$!
  PIDS+=("$HUB_PID")
  HUB_ADDR=$(listening "$HUB_PID" "$WORK/hub.out")
  HUB_ADDR=${HUB_ADDR#http://}
  for _ in $(seq 600); do
    curl -sf "http://$HUB_ADDR/readyz" >/dev/null && return
    sleep 0.1
  done
  echo "hub not ready; see $OUT/logs/$1-hub.log" >&2
  exit 1
}

# Starts a peer over a hub's frames, then stops the hub; sets PEER_PID and PEER_ADDR.
start_peer() { # target log-name
  start_hub "$2"
  local hub=http://$HUB_ADDR
  case $1 in
    floor) "$FLOOR" --hub "$hub" --race demo --from "$FROM" --frames "$FRAMES" \
             --bind 127.0.0.1:0 >"$WORK/peer.out" 2>"$OUT/logs/$2.log" & ;;
    node) node bench/peers/node/server.mjs --hub "$hub" --race demo --from "$FROM" \
             --frames "$FRAMES" --port 0 >"$WORK/peer.out" 2>"$OUT/logs/$2.log" & ;;
  esac
  PEER_PID=$!
  PIDS+=("$PEER_PID")
  PEER_ADDR=$(listening "$PEER_PID" "$WORK/peer.out")
  stop "$HUB_PID"
}

RUNS=()
for n in $VIEWERS; do
  for target in $TARGETS; do
    name=$target-$n
    extra=()
    case $target in
      hub-push | hub-lookahead | hub-compact)
        start_hub "$name"
        pid=$HUB_PID
        url=ws://$HUB_ADDR/ws/sessions/demo
        if [[ $target == hub-lookahead ]]; then
          extra=(--mode lookahead)
        elif [[ $target == hub-compact ]]; then
          extra=(--mode lookahead --enc qdelta1)
        fi
        ;;
      floor | node)
        start_peer "$target" "$name"
        pid=$PEER_PID
        url=ws://$PEER_ADDR/
        ;;
      *) echo "unknown target $target" >&2; exit 1 ;;
    esac
    echo "== $target, $n viewers, ${SECONDS_PER_RUN} s: $url" >&2
    rm -f "$OUT/$name.json"
    "$LOADTEST" --url "$url" --viewers "$n" --seconds "$SECONDS_PER_RUN" --server-pid "$pid" \
      --source-addrs "$SOURCES" --json "$OUT/$name.json" "${extra[@]}" >"$OUT/logs/$name-loadtest.log" 2>&1 ||
      echo "   load tool failed; see $OUT/logs/$name-loadtest.log" >&2
    stop "$pid"
    RUNS+=("$target $n")
  done
done

# One table row from a JSON report; null or missing figures print as "–".
if command -v jq >/dev/null; then
  row() { # target viewers file
    jq -r --arg t "$1" '
      def d1: if . == null then "–" else (. * 10 | round) as $x | "\($x / 10 | floor).\($x % 10)" end;
      def mib: if . == null then null else . / 1024 end | d1;
      [ $t,
        (if .connected < .viewers then "\(.connected)/\(.viewers)" else "\(.viewers)" end),
        (.fps_p50 | d1), (.fps_min | d1), (.gap_p99_ms | d1), (.sync_spread_p99_ms | d1),
        (.server_cpu_us_per_frame | d1), (.bytes_per_frame | round | tostring),
        "\(.server_rss_start_kib | mib) → \(.server_rss_end_kib | mib)" ]
      | "| " + join(" | ") + " |"' "$3"
  }
else
  row() { # target viewers file
    python3 - "$@" <<'EOF'
import json, sys
t, _, path = sys.argv[1:]
r = json.load(open(path))
d1 = lambda v: "–" if v is None else f"{v:.1f}"
mib = lambda v: d1(None if v is None else v / 1024)
seen = str(r["viewers"]) if r["connected"] >= r["viewers"] else f'{r["connected"]}/{r["viewers"]}'
cells = [t, seen, d1(r.get("fps_p50")), d1(r.get("fps_min")), d1(r.get("gap_p99_ms")),
         d1(r.get("sync_spread_p99_ms")), d1(r.get("server_cpu_us_per_frame")),
         str(round(r.get("bytes_per_frame") or 0)),
         f'{mib(r.get("server_rss_start_kib"))} → {mib(r.get("server_rss_end_kib"))}']
print("| " + " | ".join(cells) + " |")
EOF
  }
fi

echo
echo "| target | viewers | FPS p50 | FPS min | gap p99 ms | sync spread p99 ms | server µs CPU/frame | B/frame | server RSS start→end MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
for run in "${RUNS[@]}"; do
  read -r target n <<<"$run"
  if [[ -s $OUT/$target-$n.json ]]; then
    row "$target" "$n" "$OUT/$target-$n.json"
  else
    echo "| $target | $n | failed | – | – | – | – | – | – |"
  fi
done

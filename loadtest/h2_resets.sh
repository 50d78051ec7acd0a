#!/usr/bin/env bash
# What 10,000 reset HTTP/2 streams on one connection cost the service (examples/h2_resets.rs):
# builds release, starts its own redis-server and a fresh SQLite database with one link, then for
# L1 on (the link cached) and L1_CAPACITY=0 (every lookup goes to Redis) runs each mode of the
# example against the service: `answered` (N plain requests 2 ms apart, the comparison), `rapid`
# (each stream reset right behind its HEADERS), `quick` (reset 0.3 ms later) and `spaced` (2 ms
# later). Then once more with Redis stalled (SIGSTOP, REDIS_TIMEOUT_MS=1000, L1_CAPACITY=0), so
# that every handler is still waiting on its lookup when the `spaced` reset lands. One result
# line per run on stdout: streams opened, the GOAWAY's reason if one came, the service's CPU time.
#
#   loadtest/h2_resets.sh            # N=10000
#   N=2000 loadtest/h2_resets.sh
#   RUNS=stalled loadtest/h2_resets.sh   # only the stalled-Redis run (RUNS default: "10000 0 stalled")
set -euo pipefail
LT=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$LT")
LOG_TAG=h2_resets
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LT/common.sh"
N=${N:-10000}
RUNS=${RUNS:-"10000 0 stalled"}

command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"
log "building release"
(cd "$ROOT" && cargo build --release --bin shortener --example h2_resets)
BIN="$ROOT/target/release/shortener"
CLIENT="$ROOT/target/release/examples/h2_resets"

SVC_PID="" REDIS_PID=""
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shortener-h2resets.XXXXXX")
cleanup() {
  stop_pid "$SVC_PID"
  stop_pid "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK" # no .env here

port() { python3 "$LT/lt.py" freeport; }
REDIS_PORT=$(port)
SVC_PORT=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" &
REDIS_PID=$!
for ((i = 0; i < 100; i++)); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

export DATABASE_URL="sqlite://$WORK/db.sqlite" REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export LISTEN_ADDR="127.0.0.1:$SVC_PORT" LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}
printf 'code,url\nh2reset,https://example.com/h2reset\n' >"$WORK/links.csv"
"$BIN" links import "$WORK/links.csv" >/dev/null 2>"$WORK/import.log" || die "import failed"

start_service() {
  "$BIN" serve >>"$WORK/service.log" 2>&1 &
  SVC_PID=$!
  for ((i = 0; i < 300; i++)); do
    curl -fso /dev/null "http://$LISTEN_ADDR/health" && break
    sleep 0.1
  done
  curl -so /dev/null "http://$LISTEN_ADDR/h2reset" # cache it
}

for run in $RUNS; do
  if [[ "$run" == stalled ]]; then
    L1_CAPACITY=0 REDIS_TIMEOUT_MS=1000 start_service
    kill -STOP "$REDIS_PID"
    echo "l1_capacity=0 redis=stalled $("$CLIENT" "$LISTEN_ADDR" "$SVC_PID" "$N" spaced /h2reset)"
    kill -CONT "$REDIS_PID"
  else
    L1_CAPACITY=$run start_service
    for mode in answered rapid quick spaced; do
      echo "l1_capacity=$run $("$CLIENT" "$LISTEN_ADDR" "$SVC_PID" "$N" "$mode" /h2reset)"
    done
  fi
  stop_pid "$SVC_PID"
  SVC_PID=""
done

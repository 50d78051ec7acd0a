#!/usr/bin/env bash
# The Redis-only scenario (L1 off, Redis warm, every request a Redis hit) against one
# redis-server and against a Redis Cluster (three masters with a replica each, on this host),
# measured in the same invocation: CPU per request of the service plus every redis-server, and
# the cluster's figure as a multiple of the single node's. See loadtest/README.md.
#
# Knobs: LINKS (10000), C (1000), DURATION (10s), SKIP_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT="$ROOT/loadtest"
LINKS=${LINKS:-10000}
C=${C:-1000}
DURATION=${DURATION:-10s}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

LOG_TAG=topology DIE_STATUS=1
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LT/common.sh"

SVC_PID="" WORK="" REDIS_PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  stop_pid "$SVC_PID"
  for p in "${REDIS_PIDS[@]}"; do stop_pid "$p"; done
  remove_work "$rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building release"
  (cd "$ROOT" && cargo build --release --bin shortener)
fi
BIN="$TARGET_DIR/release/shortener"
[[ -x "$BIN" ]] || die "release binary missing under $TARGET_DIR/release"
find_oha install
raise_fd_limit

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shortener-topology.XXXXXX")
cd "$WORK"
python3 "$LT/lt.py" gen --links "$LINKS" --cold 0 --out "$WORK" >/dev/null
SVC_PORT=$(python3 "$LT/lt.py" freeport)
python3 "$LT/lt.py" urls --codes "$WORK/hot.codes" --base "http://127.0.0.1:$SVC_PORT" --out "$WORK/hot.urls"

# A port whose cluster bus port (+10000) is free too, below the ephemeral range.
bus_port() {
  local p
  while :; do
    p=$(python3 "$LT/lt.py" freeport --below-ephemeral)
    ((p <= 55535)) && python3 -c "import socket,sys; socket.socket().bind(('127.0.0.1', $p + 10000))" 2>/dev/null && {
      echo "$p"
      return
    }
  done
}

# Starts one redis-server (its own copy of the production file, its own dir) with extra args.
start_node() {
  local port=$1 dir="$WORK/redis-$1" i
  shift
  mkdir -p "$dir"
  cp "$ROOT/deploy/redis-shortener.conf" "$dir/redis.conf"
  redis-server "$dir/redis.conf" --port "$port" --bind 127.0.0.1 --daemonize no --dir "$dir" \
    --logfile "$dir/log" "$@" &
  REDIS_PIDS+=($!)
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  die "redis-server on $port did not start (see $dir/log)"
}

stop_redis() {
  local p
  for p in "${REDIS_PIDS[@]}"; do stop_pid "$p"; done
  REDIS_PIDS=()
}

# CPU ticks (user + system) of the service and every redis-server so far.
ticks() {
  python3 - "$SVC_PID" "${REDIS_PIDS[@]}" <<'EOF'
import sys
total = 0
for pid in sys.argv[1:]:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    total += int(fields[11]) + int(fields[12])
print(total)
EOF
}

# Runs the service against the Redis in the environment, warms it, measures; prints
# "requests cpu_us_per_request".
measure() {
  local name=$1 t0 t1 n
  rm -f "$WORK/db.sqlite"*
  export DATABASE_URL="sqlite://$WORK/db.sqlite" LISTEN_ADDR="127.0.0.1:$SVC_PORT" L1_CAPACITY=0 RUST_LOG=warn
  "$BIN" links import "$WORK/links.csv" >/dev/null 2>"$WORK/import.$name.log" || die "import failed"
  "$BIN" serve >"$WORK/svc.$name.log" 2>&1 &
  SVC_PID=$!
  for ((i = 0; i < 100; i++)); do
    curl -fs "http://127.0.0.1:$SVC_PORT/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  python3 "$LT/lt.py" warm --urls "$WORK/hot.urls" >/dev/null || die "warm failed"
  sleep 1
  t0=$(ticks)
  "$OHA" -z "$DURATION" -c "$C" --no-tui --redirect 0 --output-format json \
    --urls-from-file "$WORK/hot.urls" >"$WORK/oha.$name.json"
  t1=$(ticks)
  n=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['statusCodeDistribution'].get('302', 0))" "$WORK/oha.$name.json")
  curl -fs "http://127.0.0.1:$SVC_PORT/health/cache" >"$WORK/cache.$name.json" || true
  stop_pid "$SVC_PID"
  SVC_PID=""
  local hits
  hits=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('redis_hit_ratio'))" "$WORK/cache.$name.json")
  local tck
  tck=$(getconf CLK_TCK)
  python3 -c "import sys; n,t,k=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]); print(n, round(t/k*1e6/max(n,1),1))" \
    "$n" "$((t1 - t0))" "$tck"
  log "$name: $n redirects, redis hit ratio $hits"
}

log "one node"
p=$(bus_port)
start_node "$p"
unset REDIS_CLUSTER_NODES
export REDIS_URL="redis://127.0.0.1:$p"
read -r n1 cpu1 < <(measure single)
stop_redis

log "cluster: three masters with a replica each"
ports=()
for _ in 1 2 3 4 5 6; do
  p=$(bus_port)
  start_node "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000
  ports+=("127.0.0.1:$p")
done
redis-cli --cluster create "${ports[@]}" --cluster-replicas 1 --cluster-yes >"$WORK/create.log" || die "cluster create failed"
for ((i = 0; i < 100; i++)); do
  redis-cli -p "${ports[0]##*:}" cluster info | grep -q "cluster_state:ok" && break
  sleep 0.1
done
unset REDIS_URL
REDIS_CLUSTER_NODES=$(
  IFS=,
  echo "${ports[*]}"
)
export REDIS_CLUSTER_NODES
read -r n2 cpu2 < <(measure cluster)
stop_redis

ratio=$(python3 -c "import sys; print(round(float(sys.argv[2]) / float(sys.argv[1]), 2))" "$cpu1" "$cpu2")
printf 'redis-only, L1 off, c=%s, %s\n' "$C" "$DURATION"
printf '%-8s %10s %24s\n' topology redirects "CPU us/request (all)"
printf '%-8s %10s %24s\n' single "$n1" "$cpu1" cluster "$n2" "$cpu2"
printf 'cluster / single: %sx (target: at most 2x)\n' "$ratio"

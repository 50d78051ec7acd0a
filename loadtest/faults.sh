#!/usr/bin/env bash
# Fault tolerance under load: oha against the release build while Redis is killed, then paused.
#
# Builds release, starts its own redis-server (deploy/redis-shortener.conf: 200 MB, allkeys-lru,
# no persistence) on a free port and a fresh SQLite database, imports LINKS links, and for each
# run starts the service afresh (L1 off by default, so Redis really matters), warms Redis with
# every code once, and drives oha at c=CONC over random codes for DURATION seconds in three
# phases:
#
#   before  Redis healthy
#   during  FAULT_DELAY s in: run "kill" sends SIGKILL to Redis, run "stop" sends SIGSTOP
#   after   FAULT_DELAY s in: "kill" restarts Redis (same port and flags), "stop" sends SIGCONT
#
# The faults are applied a moment into a phase so that they land under full load, not in the
# gap between two oha invocations. For every phase it records rps, p50/p99/max, non-3xx
# answers, client errors (connect errors, timeouts, resets), the service's /health/cache and
# /health/redis figures at the start and end, and (from oha --db-url) per-second figures around
# each fault. The Markdown table goes to stdout and to loadtest/results/faults-<UTC timestamp>.md;
# raw oha JSON, snapshots, timelines and the service's logs go to
# loadtest/results/faults-<timestamp>/raw/ (git-ignored). Ports are picked below the ephemeral
# range so that no outgoing connection can take Redis's port while it is down.
#
# Exit status: 0 when every phase had 0 non-3xx answers and 0 client errors (the target), 1 when
# not (the report says where, with the service's log lines around it), 2 when the setup failed.
#
# Knobs (environment): LINKS=100000 DURATION=60 (seconds per run) CONC=1000 RUNS="kill stop"
# FAULT_DELAY=1 REQ_TIMEOUT=5s L1_CAPACITY=0 REDIS_TIMEOUT_MS=25 SKIP_BUILD=0 KEEP_WORK=0
# RUST_LOG (default: warnings, plus the Redis breaker's transitions).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT="$ROOT/loadtest"
HELPER="$LT/faults_report.py"

LINKS=${LINKS:-100000}
DURATION=${DURATION:-60}
DURATION=${DURATION%s}
CONC=${CONC:-1000}
RUNS=${RUNS:-kill stop}
FAULT_DELAY=${FAULT_DELAY:-1}
REQ_TIMEOUT=${REQ_TIMEOUT:-5s}
L1=${L1_CAPACITY:-0}
REDIS_TIMEOUT_MS=${REDIS_TIMEOUT_MS:-25}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
SERVICE_RUST_LOG=${RUST_LOG:-warn,shortener::cache::redis=info}

LOG_TAG=faults DIE_STATUS=2
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LT/common.sh"

# --- processes we start, and their cleanup ------------------------------------------------------
OHA_PID="" SVC_PID="" REDIS_PID="" WORK=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$OHA_PID"
  stop_pid "$SVC_PID"
  stop_pid "$REDIS_PID"
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ "$KEEP_WORK" == 1 ]]; then
      log "work directory kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || ((DURATION < 6)); then die "DURATION must be whole seconds, at least 6"; fi
if ! [[ "$LINKS" =~ ^[0-9]+$ && "$CONC" =~ ^[0-9]+$ ]] || ((LINKS < 1 || CONC < 1)); then
  die "LINKS and CONC must be positive numbers"
fi
PHASE=$((DURATION / 3))
for run in $RUNS; do
  [[ "$run" == kill || "$run" == stop ]] || die "RUNS may only name kill and stop, not $run"
done

# --- tools ------------------------------------------------------------------------------------
for tool in python3 redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# What the binary is built from (read-only git queries; "unknown" outside a checkout).
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null \
  | awk '{print $2}' | paste -sd, - || true)
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building: cargo build --release --bin shortener (commit $COMMIT${DIRTY:+, modified: $DIRTY})"
  (cd "$ROOT" && cargo build --release --bin shortener)
fi
BIN="$TARGET_DIR/release/shortener"
[[ -x "$BIN" ]] || die "$BIN is missing"
find_oha require
log "load generator: $("$OHA" --version); $(redis-server --version | cut -d' ' -f1-3)"

# --- file descriptors: oha holds one per connection, the service one per client ----------------
raise_fd_limit
NOFILE=$(ulimit -Sn)
((CONC + 500 <= NOFILE)) || die "CONC=$CONC needs more file descriptors than the limit $NOFILE allows"
log "fd soft limit raised to $NOFILE"

# --- layout -----------------------------------------------------------------------------------
TS=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$LT/results"
REPORT="$RESULTS/faults-$TS.md"
RAW="$RESULTS/faults-$TS/raw"
mkdir -p "$RAW"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shortener-faults.XXXXXX")
# The service reads .env from its working directory: run it where there is none.
cd "$WORK"
MANIFEST="$RAW/manifest.jsonl"
: >"$MANIFEST"
log "report: $REPORT; raw: $RAW; work: $WORK"

RPORT=$(python3 "$HELPER" freeport)
PORT=$(python3 "$HELPER" freeport)
[[ "$PORT" != "$RPORT" ]] || PORT=$(python3 "$HELPER" freeport)
SVC_URL="http://127.0.0.1:$PORT"

export DATABASE_URL="sqlite://$WORK/db.sqlite"
export REDIS_URL="redis://127.0.0.1:$RPORT"
export LISTEN_ADDR="127.0.0.1:$PORT"
export LOG_FORMAT=json RUST_LOG="$SERVICE_RUST_LOG"
export L1_CAPACITY="$L1" REDIS_TIMEOUT_MS

# --- redis ------------------------------------------------------------------------------------
RUN=""
redis_up() { # the same port and settings every time (start_redis, common.sh)
  start_redis "$RPORT" "$WORK" "$RAW/redis.log" || die "redis did not start (see $RAW/redis.log)"
}
redis_kill() {
  log "$RUN: kill -9 redis (pid $REDIS_PID)"
  kill -KILL "$REDIS_PID"
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=""
}
redis_restart() {
  log "$RUN: restarting redis on port $RPORT"
  redis_up
}
redis_stop() {
  log "$RUN: SIGSTOP redis (pid $REDIS_PID)"
  kill -STOP "$REDIS_PID"
}
redis_cont() {
  log "$RUN: SIGCONT redis (pid $REDIS_PID)"
  kill -CONT "$REDIS_PID"
}

# --- data -------------------------------------------------------------------------------------
log "generating $LINKS links (codes f000000, f000001, ...)"
python3 "$HELPER" gen --links "$LINKS" --base "$SVC_URL" --csv "$WORK/links.csv" --urls "$WORK/urls.txt"
log "importing: shortener links import"
"$BIN" links import "$WORK/links.csv" >"$RAW/import.txt" 2>"$RAW/import.log" \
  || die "import failed: $(tail -n 5 "$RAW/import.log")"
log "$(cat "$RAW/import.txt")"

# --- service ----------------------------------------------------------------------------------
declare -A SVC_EXIT=()
start_service() {
  log "$RUN: starting the service on $LISTEN_ADDR (L1_CAPACITY=$L1_CAPACITY, REDIS_TIMEOUT_MS=$REDIS_TIMEOUT_MS)"
  "$BIN" serve >"$RAW/service.$RUN.log" 2>&1 &
  SVC_PID=$!
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$SVC_PID" 2>/dev/null || die "the service exited (see $RAW/service.$RUN.log)"
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$SVC_URL/health")" == 200 ]] && return 0
    sleep 0.1
  done
  die "the service did not answer /health in 30 s (see $RAW/service.$RUN.log)"
}
stop_service() { # SIGTERM and record the exit code
  local rc=0 i
  kill -TERM "$SVC_PID"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$SVC_PID" 2>/dev/null && kill -KILL "$SVC_PID"
  wait "$SVC_PID" || rc=$?
  SVC_PID=""
  SVC_EXIT[$RUN]=$rc
  log "$RUN: service stopped, exit code $rc"
}

# --- one phase of oha, with an optional fault applied FAULT_DELAY s into it --------------------
now() { date +%s.%N; }
phase() { # phase NAME REDIS_LABEL [ACTION]
  local name=$1 label=$2 action=${3:-} base="$RAW/$RUN.$1" db="$WORK/$RUN.$1.db" rc=0 t0 t1 fault_at=null
  python3 "$HELPER" snap --base "$SVC_URL" --out "$base.start.json"
  log "$RUN/$name: oha c=$CONC for ${PHASE}s${action:+ (redis: $action after ${FAULT_DELAY}s)}"
  t0=$(now)
  # --db-url keeps every answered request (start, duration, status) for the per-second timeline.
  "$OHA" --no-tui -z "${PHASE}s" -w -c "$CONC" -t "$REQ_TIMEOUT" --redirect 0 \
    --output-format json -o "$base.oha.json" --db-url "$db" --urls-from-file "$WORK/urls.txt" &
  OHA_PID=$!
  if [[ -n "$action" ]]; then
    sleep "$FAULT_DELAY"
    fault_at=$(now)
    case "$action" in
      kill) redis_kill ;;
      restart) redis_restart ;;
      stop) redis_stop ;;
      cont) redis_cont ;;
    esac
  fi
  wait "$OHA_PID" || rc=$?
  OHA_PID=""
  t1=$(now)
  ((rc == 0)) || die "oha failed ($rc) in $RUN/$name"
  python3 "$HELPER" snap --base "$SVC_URL" --out "$base.end.json"
  python3 "$HELPER" timeline --db "$db" --out "$base.timeline.json" || log "no timeline for $RUN/$name"
  [[ "$KEEP_WORK" == 1 ]] || rm -f "$db"
  printf '{"run":"%s","phase":"%s","redis":"%s","fault":"%s","t0":%s,"t1":%s,"fault_at":%s,' \
    "$RUN" "$name" "$label" "$action" "$t0" "$t1" "$fault_at" >>"$MANIFEST"
  printf '"oha":"%s","start":"%s","end":"%s","timeline":"%s"}\n' \
    "$base.oha.json" "$base.start.json" "$base.end.json" "$base.timeline.json" >>"$MANIFEST"
  python3 - "$base.oha.json" >&2 <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
print(f"    rps {s['requestsPerSec']:.0f}  p50 {p['p50']*1e3:.1f} ms  p99 {p['p99']*1e3:.1f} ms  "
      f"max {s['slowest']*1e3:.0f} ms  statuses {d['statusCodeDistribution']}  errors {d['errorDistribution']}")
EOF
}

for RUN in $RUNS; do
  log "=== run $RUN ==="
  [[ -n "$REDIS_PID" ]] || redis_up
  redis-cli -p "$RPORT" FLUSHALL >/dev/null
  start_service
  log "$RUN: warming Redis (every code once)"
  python3 "$HELPER" warm --urls "$WORK/urls.txt" >"$RAW/$RUN.warm.json" || die "warm failed"
  log "$RUN: warm: $(cat "$RAW/$RUN.warm.json")"
  sleep 1
  if [[ "$RUN" == kill ]]; then
    phase before up
    phase during "killed (SIGKILL)" kill
    phase after "restarted (empty)" restart
  else
    phase before up
    phase during "paused (SIGSTOP)" stop
    phase after "resumed (SIGCONT)" cont
  fi
  stop_service
done

# --- report -----------------------------------------------------------------------------------
exits=""
for run in "${!SVC_EXIT[@]}"; do exits+="${exits:+,}\"$run\":${SVC_EXIT[$run]}"; done
cat >"$RAW/meta.json" <<EOF
{"timestamp":"$TS","links":$LINKS,"duration":$DURATION,"phase":$PHASE,"conc":$CONC,
 "fault_delay":"$FAULT_DELAY","req_timeout":"$REQ_TIMEOUT","l1_capacity":"$L1",
 "redis_timeout_ms":"$REDIS_TIMEOUT_MS","service_exit":{$exits},
 "command":"DURATION=$DURATION LINKS=$LINKS CONC=$CONC bash loadtest/faults.sh",
 "logs":{$(for run in $RUNS; do printf '"%s":"%s",' "$run" "$RAW/service.$run.log"; done | sed 's/,$//')},
 "commit":"$COMMIT","modified":"$DIRTY","skip_build":"$SKIP_BUILD",
 "nproc":$(nproc),"oha":"$("$OHA" --version)","redis":"$(redis-server --version | cut -d' ' -f3)"}
EOF
rc=0
python3 "$HELPER" table --manifest "$MANIFEST" --meta "$RAW/meta.json" --out "$REPORT" \
  --json "$RAW/summary.json" || rc=$?
log "report written to $REPORT"
if ((rc != 0)); then
  log "FAILED: non-3xx answers or client errors; service logs: $RAW/service.*.log"
  exit "$rc"
fi

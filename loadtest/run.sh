#!/usr/bin/env bash
# Load test of the shortener against a bare in-memory baseline (examples/static_redirect.rs),
# both measured in the same invocation so every figure can be read as a ratio.
#
# Builds release, starts its own redis-server and a fresh SQLite database, seeds LINKS links,
# runs oha through the scenarios, and writes loadtest/results/<UTC timestamp>/{report.md,
# results.json, chart.png} (raw oha JSON and snapshots under raw/, git-ignored).
# See loadtest/README.md for the knobs and what each number means.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT="$ROOT/loadtest"

# The command line as run (the knobs given in the environment), for the report.
COMMAND="loadtest/run.sh"
# (The service settings at the start of the list are passed through to `shortener serve`.)
for knob in BACKENDS L1_TTL_MS CLICK_COUNTING WRITE_BATCH_MAX RATE_LIMIT_REDIRECT_PER_IP_PER_MINUTE REDIS_TIMEOUT_MS \
  REPEATS REPEAT_C PROFILE SPREAD REDIS_KEY_PREFIX LISTEN_BACKLOG QUIET_BUSY QUIET_WAIT L1_CAPACITY IDLE_STEPS CREATE_C \
  HOT_C SCENARIOS SWEEP COLD_REQUESTS COLD_LINKS DURATION LINKS; do
  if [[ -n "${!knob:-}" ]]; then
    if [[ "${!knob}" == *" "* ]]; then COMMAND="$knob='${!knob}' $COMMAND"; else COMMAND="$knob=${!knob} $COMMAND"; fi
  fi
done

LINKS=${LINKS:-100000}
COLD_LINKS=${COLD_LINKS:-$((LINKS * 5))}
COLD_REQUESTS=${COLD_REQUESTS:-$((COLD_LINKS / 10))}
DURATION=${DURATION:-10s}
SWEEP=${SWEEP:-100 1000 5000 10000 15000}
SCENARIOS=${SCENARIOS:-hot zipf cold redis creates sweep idle}
HOT_C=${HOT_C:-1000}
# Pairs measured at each of REPEAT_C (the hot targets' concurrencies, when in SWEEP).
REPEATS=${REPEATS:-3}
REPEAT_C=${REPEAT_C:-1000 10000}
CREATE_C=${CREATE_C:-100 1000}
IDLE_STEPS=${IDLE_STEPS:-1000,10000}
# "Hot" means every code fits in L1: size it well above LINKS (a shard fills before the average).
L1_CAPACITY=${L1_CAPACITY:-$((LINKS * 3))}
SPREAD=${SPREAD:-1}
PROFILE=${PROFILE:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_BUSY=${QUIET_BUSY:-15}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
FD_RESERVE=${FD_RESERVE:-1000}
# "sqlite postgres": after the SQLite scenarios, hot, cold and creates again with the service on
# PostgreSQL (target service_pg in the report): a server this script starts, or the one a
# DATABASE_URL=postgres://… given to the script names (an empty database: the links are imported
# into it; its server's CPU is then not counted). Such a DATABASE_URL implies both backends.
USER_DATABASE_URL=${DATABASE_URL:-}
case "$USER_DATABASE_URL" in
  postgres://* | postgresql://*) BACKENDS=${BACKENDS:-sqlite postgres} ;;
  "") ;;
  *) echo "loadtest: DATABASE_URL=${USER_DATABASE_URL%%:*}:… is not a PostgreSQL URL; the SQLite database is the script's own" >&2 ;;
esac
BACKENDS=${BACKENDS:-sqlite}

LOG_TAG=loadtest DIE_STATUS=1
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LT/common.sh"
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# --- processes we start, and their cleanup ------------------------------------------------------
SVC_PID="" BASE_PID="" REDIS_PID="" PERF_PID="" WORK="" PG_DATA=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$PERF_PID"
  stop_pid "$SVC_PID"
  stop_pid "$BASE_PID"
  stop_pid "$REDIS_PID"
  if [[ -n "$PG_DATA" ]]; then pg_run pg_ctl -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true; fi
  remove_work "$rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ------------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is required"
command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"
command -v curl >/dev/null || die "curl is required"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building release (shortener + examples/static_redirect)"
  (cd "$ROOT" && cargo build --release --bin shortener --example static_redirect)
fi
BIN="$TARGET_DIR/release/shortener"
BASELINE="$TARGET_DIR/release/examples/static_redirect"
[[ -x "$BIN" && -x "$BASELINE" ]] || die "release binaries missing under $TARGET_DIR/release"

find_oha install
log "load generator: $("$OHA" --version)"

if ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib for the chart"
  python3 -m pip install --quiet matplotlib || log "matplotlib could not be installed: no chart"
fi

# --- file descriptors -------------------------------------------------------------------------
raise_fd_limit
NOFILE=$(ulimit -Sn)
MAX_C=$((NOFILE - FD_RESERVE))
log "fd limit raised to $NOFILE per process: at most $MAX_C concurrent connections" \
  "(oha holds one fd per connection and the server one; $FD_RESERVE kept for files, pools, Redis)"

# --- layout -----------------------------------------------------------------------------------
TS=$(date -u +%Y%m%dT%H%M%SZ)
RES=${RESULTS_DIR:-$LT/results/$TS}
[[ "$RES" == /* ]] || RES="$PWD/$RES" # the script changes directory below
RAW="$RES/raw"
mkdir -p "$RAW"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shortener-loadtest.XXXXXX")
# The service loads .env from its working directory and parents: run it where there is none.
cd "$WORK"
MANIFEST="$RAW/manifest.jsonl"
: >"$MANIFEST"
log "results: $RES; work: $WORK"

port() { python3 "$LT/lt.py" freeport; }
REDIS_PORT=${REDIS_PORT:-$(port)}
SVC_PORT=${SVC_PORT:-$(port)}
BASE_PORT=${BASE_PORT:-$(port)}
[[ "$SVC_PORT" != "$BASE_PORT" ]] || BASE_PORT=$(port)
LISTEN_HOST=127.0.0.1
CONNECT_TO=()
if ((SPREAD > 1)); then
  # oha cannot bind source addresses, but --connect-to picks one of several targets at random
  # per connection: spreading connections over 127.0.0.1..N gives each destination its own
  # ephemeral port range. The servers must then listen on every loopback address.
  LISTEN_HOST=0.0.0.0
  log "SPREAD=$SPREAD: connections spread over 127.0.0.1..127.0.0.$SPREAD (servers listen on 0.0.0.0)"
fi
spread_args() {
  local p=$1 i
  CONNECT_TO=()
  if ((SPREAD > 1)); then
    for ((i = 1; i <= SPREAD; i++)); do CONNECT_TO+=(--connect-to "127.0.0.1:$p:127.0.0.$i:$p"); done
  fi
}
SVC_URL="http://127.0.0.1:$SVC_PORT"
BASE_URL="http://127.0.0.1:$BASE_PORT"

# --- redis ------------------------------------------------------------------------------------
log "starting redis-server on 127.0.0.1:$REDIS_PORT (deploy/redis-shortener.conf)"
start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" || die "redis did not start (see $WORK/redis.log)"

export DATABASE_URL="sqlite://$WORK/db.sqlite"
SQLITE_URL=$DATABASE_URL

# --- postgresql (BACKENDS="sqlite postgres") -----------------------------------------------------
want_pg() { [[ " $BACKENDS " == *" postgres "* ]]; }
PG_BIN=""
# pg_run PROGRAM ARGS...: a PostgreSQL program, as the postgres user when root (initdb refuses root).
pg_run() {
  local prog=$1
  shift
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$PG_BIN/$prog" "$@"; else "$PG_BIN/$prog" "$@"; fi
}
if want_pg && [[ "$USER_DATABASE_URL" == postgres* ]]; then
  PG_URL=$USER_DATABASE_URL
  log "PostgreSQL phase on the DATABASE_URL given (not shown: it may carry a password); its server's CPU is not counted"
elif want_pg; then
  pg_bins=(/usr/lib/postgresql/*/bin)
  PG_BIN=$(printf '%s\n' "${pg_bins[@]}" | sort -V | tail -1)
  [[ -x "$PG_BIN/initdb" ]] || die "BACKENDS has postgres but PostgreSQL is not installed (apt-get install postgresql)"
  PG_PORT=$(python3 "$LT/lt.py" freeport)
  chmod 755 "$WORK"
  PG_DATA="$WORK/pg"
  mkdir "$PG_DATA"
  [[ $(id -u) == 0 ]] && chown postgres "$PG_DATA"
  log "starting PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PG_PORT, default settings but shared_buffers=256MB"
  pg_run initdb -D "$PG_DATA" -A trust -U postgres -E UTF8 >"$WORK/initdb.log" 2>&1 || die "initdb failed (see $WORK/initdb.log)"
  pg_run pg_ctl -D "$PG_DATA" -l "$PG_DATA/log" -w -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c shared_buffers=256MB" start >/dev/null \
    || die "PostgreSQL did not start (see $PG_DATA/log)"
  PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
fi
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export LISTEN_ADDR="$LISTEN_HOST:$SVC_PORT"
export LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}
if [[ -n "${REDIS_KEY_PREFIX:-}" ]]; then export REDIS_KEY_PREFIX; fi

# --- data -------------------------------------------------------------------------------------
log "generating $LINKS links (+ $COLD_LINKS for the cold scenario)"
python3 "$LT/lt.py" gen --links "$LINKS" --cold "$COLD_LINKS" --out "$WORK" >"$RAW/gen.json"
for set in hot cold zipf; do
  python3 "$LT/lt.py" urls --codes "$WORK/$set.codes" --base "$SVC_URL" --out "$WORK/svc.$set.urls"
  python3 "$LT/lt.py" urls --codes "$WORK/$set.codes" --base "$BASE_URL" --out "$WORK/base.$set.urls"
done
python3 "$LT/lt.py" bodies --count 1000000 --tag "lt$TS" --out "$WORK/bodies.jsonl"

log "importing with: shortener links import"
"$BIN" links import "$WORK/links.csv" >"$RAW/import.txt" 2>"$WORK/import.log" || die "import failed: $(tail -5 "$WORK/import.log")"
log "$(cat "$RAW/import.txt")"
API_KEY=$("$BIN" keys create loadtest --unlimited 2>/dev/null | tail -n1)
[[ -n "$API_KEY" ]] || die "could not create an API key"
if want_pg; then
  log "importing the same links into PostgreSQL"
  DATABASE_URL=$PG_URL "$BIN" links import "$WORK/links.csv" >"$RAW/import.pg.txt" 2>"$WORK/import.pg.log" \
    || die "import into PostgreSQL failed: $(tail -5 "$WORK/import.pg.log")"
  log "$(cat "$RAW/import.pg.txt")"
  PG_API_KEY=$(DATABASE_URL=$PG_URL "$BIN" keys create loadtest --unlimited 2>/dev/null | tail -n1)
  [[ -n "$PG_API_KEY" ]] || die "could not create an API key in PostgreSQL"
fi

# --- servers ----------------------------------------------------------------------------------
wait_http() {
  local url=$1 pid=$2 i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -fso /dev/null "$url" && return 0
    sleep 0.1
  done
  return 1
}
start_service() {
  local l1=$1
  log "starting the service (L1_CAPACITY=$l1) on $LISTEN_ADDR"
  L1_CAPACITY=$l1 "$BIN" serve >>"$WORK/service.log" 2>&1 &
  SVC_PID=$!
  wait_http "$SVC_URL/health" "$SVC_PID" || die "the service did not start (see $WORK/service.log)"
  SVC_L1=$l1
}
stop_service() {
  stop_pid "$SVC_PID"
  SVC_PID=""
}
log "starting the baseline (examples/static_redirect) on $LISTEN_HOST:$BASE_PORT"
# Both servers get the same listen backlog (the service's LISTEN_BACKLOG, default 4096): with
# a plain bind (backlog 128) the baseline would drop SYNs at high concurrency and look slower.
export LISTEN_BACKLOG=${LISTEN_BACKLOG:-4096}
BASELINE_BACKLOG=${BASELINE_BACKLOG:-$LISTEN_BACKLOG} "$BASELINE" "$WORK/links.csv" "$LISTEN_HOST:$BASE_PORT" >"$WORK/baseline.addr" 2>"$WORK/baseline.log" &
BASE_PID=$!
wait_http "$BASE_URL/$(head -n1 "$WORK/hot.codes")" "$BASE_PID" \
  || die "the baseline did not start (see $WORK/baseline.log)"

# --- measuring --------------------------------------------------------------------------------
snap() { # snap TARGET FILE
  if [[ $1 == service_pg && -n "$PG_DATA" ]]; then
    python3 "$LT/lt.py" snap --pid "$SVC_PID" --redis-pid "$REDIS_PID" --redis-port "$REDIS_PORT" \
      --health "$SVC_URL/health/cache" --pg-data "$PG_DATA" >"$2"
  elif [[ $1 == service_pg ]]; then
    python3 "$LT/lt.py" snap --pid "$SVC_PID" --redis-pid "$REDIS_PID" --redis-port "$REDIS_PORT" \
      --health "$SVC_URL/health/cache" >"$2"
  elif [[ $1 == service ]]; then
    python3 "$LT/lt.py" snap --pid "$SVC_PID" --redis-pid "$REDIS_PID" --redis-port "$REDIS_PORT" \
      --health "$SVC_URL/health/cache" >"$2"
  else
    python3 "$LT/lt.py" snap --pid "$BASE_PID" >"$2"
  fi
}
dur_secs() { # 10s -> 10, 2m -> 120
  local d=$1
  case "$d" in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
  esac
}
# measure SCENARIO TARGET CONCURRENCY KIND [oha args...]
# KIND is what the scenario expects as success: "redirect" (3xx) or "create" (201).
measure() {
  local name=$1 target=$2 c=$3 kind=$4
  shift 4
  local port=$SVC_PORT requested=$c
  [[ $target == baseline* ]] && port=$BASE_PORT
  if ((c > MAX_C)); then
    log "c=$c capped to $MAX_C by the fd limit ($NOFILE)"
    c=$MAX_C
  fi
  spread_args "$port"
  local base="$RAW/$name.$target" args="$*" quiet
  args=${args//"$API_KEY"/KEY}
  [[ -n "${PG_API_KEY:-}" ]] && args=${args//"$PG_API_KEY"/KEY}
  if ((QUIET_WAIT > 0)); then
    # A shared machine: wait (bounded) for other work to calm down before each run.
    quiet=$(python3 "$LT/lt.py" quiet --max-wait "$QUIET_WAIT" --threshold "$QUIET_BUSY")
    [[ $quiet == *'"quiet": true'* ]] || log "machine still busy after ${QUIET_WAIT}s ($quiet): measuring anyway"
  fi
  snap "$target" "$base.before.json"
  log "$name: $target c=$c $args"
  local limit
  limit=$(($(dur_secs "$DURATION") * 3 + 120))
  if ! python3 "$LT/lt.py" rusage --out "$base.rusage.json" -- timeout "$limit" "$OHA" --no-tui --output-format json -o "$base.oha.json" -c "$c" \
    --connect-timeout 10s -t 30s "${CONNECT_TO[@]}" "$@"; then
    die "oha failed or timed out for $name/$target"
  fi
  snap "$target" "$base.after.json"
  printf '{"scenario":"%s","target":"%s","c":%d,"requested_c":%d,"kind":"%s","l1_capacity":%s,"oha":"%s","rusage":"%s","before":"%s","after":"%s","args":"%s"}\n' \
    "$name" "$target" "$c" "$requested" "$kind" "${SVC_L1:-null}" "$base.oha.json" "$base.rusage.json" "$base.before.json" "$base.after.json" "$args" >>"$MANIFEST"
  python3 "$LT/report.py" --brief "$MANIFEST" "$name" "$target" >&2 || true
}
# profile NAME PIDS oha-args...: an extra, unmeasured run with `perf record` (cpu-clock samples)
# on PIDS (comma-separated), summarised by symbol in $RES/profile-NAME.txt. Only with PROFILE=1.
profile() {
  local name=$1 pids=$2
  shift 2
  [[ "$PROFILE" == 1 ]] || return 0
  if ! command -v perf >/dev/null; then
    log "PROFILE=1 but perf is not installed (apt-get install linux-perf): no profile"
    return 0
  fi
  local data="$RAW/$name.perf.data"
  log "profiling $name (pids $pids) for $DURATION"
  perf record -e cpu-clock -F 999 -p "$pids" -o "$data" -- sleep "$(dur_secs "$DURATION")" 2>"$RAW/$name.perf.log" &
  PERF_PID=$!
  timeout "$(($(dur_secs "$DURATION") * 3 + 120))" "$OHA" --no-tui --output-format quiet -c "$HOT_C" "${TIMED[@]}" "$@" || true
  wait "$PERF_PID" || true
  PERF_PID=""
  perf report -i "$data" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$RAW/$name.perf.txt" || true
  {
    echo "# perf record -e cpu-clock -F 999 -p <$name pids> during: oha -c $HOT_C $DURATION ${*//"$API_KEY"/KEY}"
    echo "# flat profile (self time), by process, library and symbol; entries under 0.3% left out"
    awk '$1 + 0 >= 0.3' "$RAW/$name.perf.txt" | cut -c1-220 | head -n 120
  } >"$RES/profile-$name.txt"
  rm -f "$data"
}
warm() { # request every hot code once on the service
  log "warming: every hot code once ($LINKS requests)"
  python3 "$LT/lt.py" warm --urls "$WORK/svc.hot.urls" >"$RAW/warm.$1.json" || die "warm failed"
  log "warm: $(cat "$RAW/warm.$1.json")"
}

TIMED=(-z "$DURATION" -w)
SVC_L1=""

# Phase 1: L1 on — hot, Zipf, sweep, creates, idle connections.
if want hot || want zipf || want sweep || want creates || want idle; then
  start_service "$L1_CAPACITY"
  warm l1
  # Idle connections first, while both processes are fresh: after the sweep their allocators hold
  # memory freed by 15,000 closed connections, which new connections would reuse unseen.
  if want idle; then
    code=$(head -n1 "$WORK/hot.codes")
    for target in baseline service; do
      pid=$SVC_PID port=$SVC_PORT
      [[ $target == baseline ]] && pid=$BASE_PID port=$BASE_PORT
      log "idle connections: $target, steps $IDLE_STEPS"
      python3 "$LT/lt.py" idle --addr "127.0.0.1:$port" --pid "$pid" --path "/$code" --steps "$IDLE_STEPS" \
        >"$RAW/idle.$target.json" || die "idle test failed for $target"
      log "idle $target: $(cat "$RAW/idle.$target.json")"
      sleep 2
    done
  fi
  if want hot; then
    measure hot_uniform baseline "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.hot.urls"
    measure hot_uniform service "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/svc.hot.urls"
  fi
  if want zipf; then
    measure hot_zipf baseline "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.zipf.urls"
    measure hot_zipf service "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/svc.zipf.urls"
  fi
  if want sweep; then
    for c in $SWEEP; do
      measure "sweep_c$c" baseline "$c" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.hot.urls"
      measure "sweep_c$c" service "$c" redirect "${TIMED[@]}" --urls-from-file "$WORK/svc.hot.urls"
    done
    # The hot targets' concurrencies again, as more pairs (the report takes the median ratio);
    # every other pair runs the service first, so neither server always gets the quieter slot.
    for ((r = 2; r <= REPEATS; r++)); do
      for c in $REPEAT_C; do
        [[ " $SWEEP " == *" $c "* ]] || continue
        order=(baseline service)
        ((r % 2 == 0)) && order=(service baseline)
        for target in "${order[@]}"; do
          urls="$WORK/svc.hot.urls"
          [[ $target == baseline ]] && urls="$WORK/base.hot.urls"
          measure "repeat_c${c}_r$r" "$target" "$c" redirect "${TIMED[@]}" --urls-from-file "$urls"
        done
      done
    done
  fi
  if want creates; then
    for c in $CREATE_C; do
      # The baseline cannot create: its bar is its redirect rate at the same concurrency.
      measure "creates_c$c" baseline "$c" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.hot.urls"
      measure "creates_c$c" service "$c" create "${TIMED[@]}" -m POST -T application/json \
        -H "Authorization: Bearer $API_KEY" -Z "$WORK/bodies.jsonl" "$SVC_URL/api/v1/links"
    done
  fi
  if want hot; then
    profile hot_uniform.baseline "$BASE_PID" --urls-from-file "$WORK/base.hot.urls"
    profile hot_uniform.service "$SVC_PID" --urls-from-file "$WORK/svc.hot.urls"
  fi
  if want creates; then
    profile creates.service "$SVC_PID" -m POST -T application/json \
      -H "Authorization: Bearer $API_KEY" -Z "$WORK/bodies.jsonl" "$SVC_URL/api/v1/links"
  fi
  stop_service
fi

# Phase 2: cold — Redis flushed, L1 off: every request a distinct code read from SQLite once.
if want cold; then
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  start_service 0
  # The baseline's bar is its timed rate over the same URLs (a short -n run would be mostly
  # connection setup for it).
  measure cold baseline "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.cold.urls"
  measure cold service "$HOT_C" redirect -n "$COLD_REQUESTS" --urls-from-file "$WORK/svc.cold.urls"
fi

# Phase 3: Redis only — L1 off, Redis warm.
if want redis; then
  [[ -n "$SVC_PID" && "$SVC_L1" == 0 ]] || { stop_service; start_service 0; }
  warm redis
  sleep 1
  measure redis_only baseline "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.hot.urls"
  measure redis_only service "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/svc.hot.urls"
  profile redis_only.service "$SVC_PID,$REDIS_PID" --urls-from-file "$WORK/svc.hot.urls"
fi
stop_service

# Phase 3b (SCENARIOS containing "cluster"): the Redis-only scenario on one redis-server and on a
# Redis Cluster of three masters with a replica each, CPU per request of the service plus every
# redis-server (loadtest/topology.sh, with this build); its table is appended to the report.
if want cluster; then
  log "cluster: the Redis-only scenario on one node, then on a Redis Cluster (loadtest/topology.sh)"
  CARGO_TARGET_DIR=$TARGET_DIR SKIP_BUILD=1 C=$HOT_C DURATION=$DURATION LINKS=$((LINKS < 10000 ? LINKS : 10000)) \
    bash "$LT/topology.sh" >"$RAW/topology.txt" || die "loadtest/topology.sh failed"
fi

# Phase 4: the same service on PostgreSQL (BACKENDS="sqlite postgres"): hot, creates, cold.
if want_pg; then
  export DATABASE_URL=$PG_URL
  if want hot || want creates; then
    redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
    start_service "$L1_CAPACITY"
    warm pg
    # Each PostgreSQL run has a baseline run right beside it too (baseline_pg): the machine's
    # noise differs from the SQLite phase's, and the report compares the two backends each
    # through its own neighbouring baseline.
    if want hot; then
      measure hot_uniform baseline_pg "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.hot.urls"
      measure hot_uniform service_pg "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/svc.hot.urls"
    fi
    if want creates; then
      for c in $CREATE_C; do
        measure "creates_c$c" baseline_pg "$c" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.hot.urls"
        measure "creates_c$c" service_pg "$c" create "${TIMED[@]}" -m POST -T application/json \
          -H "Authorization: Bearer $PG_API_KEY" -Z "$WORK/bodies.jsonl" "$SVC_URL/api/v1/links"
      done
    fi
    stop_service
  fi
  if want cold; then
    redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
    start_service 0
    measure cold baseline_pg "$HOT_C" redirect "${TIMED[@]}" --urls-from-file "$WORK/base.cold.urls"
    measure cold service_pg "$HOT_C" redirect -n "$COLD_REQUESTS" --urls-from-file "$WORK/svc.cold.urls"
    stop_service
  fi
  export DATABASE_URL=$SQLITE_URL
fi

# --- report -----------------------------------------------------------------------------------
cat >"$RAW/meta.json" <<EOF
{"timestamp":"$TS","command":"$COMMAND","links":$LINKS,"cold_links":$COLD_LINKS,"cold_requests":$COLD_REQUESTS,
 "duration":"$DURATION","sweep":"$SWEEP","scenarios":"$SCENARIOS","hot_c":$HOT_C,
 "l1_capacity":$L1_CAPACITY,"profile":$PROFILE,"nofile":$NOFILE,"max_c":$MAX_C,"spread":$SPREAD,
 "backends":"$BACKENDS","clk_tck":$(getconf CLK_TCK),"nproc":$(nproc),"oha":"$("$OHA" --version)",
 "kernel":"$(uname -r)","redis":"$(redis-server --version | tr -d '"')"}
EOF
python3 "$LT/report.py" --out "$RES" "$MANIFEST"
if [[ -s "$RAW/topology.txt" ]]; then
  {
    printf '\n## Redis Cluster against one node (loadtest/topology.sh)\n\n```\n'
    cat "$RAW/topology.txt"
    printf '```\n'
  } >>"$RES/report.md"
  cp "$RAW/topology.txt" "$RES/topology.txt"
fi
log "report: $RES/report.md"

#!/usr/bin/env bash
# What an update costs when every instance must confirm it (src/invalidation): PATCHes through one
# instance of a shared SQLite file and Redis, first with that instance alone, then with two more
# instances running (each subscribed, each confirming every change), twice in turn, then with one
# of those two stopped (SIGSTOP: it receives nothing and confirms nothing, so every change waits out
# CONFIRM_WITHIN). Each step runs oha at c=1 (the latency of one change) and c=16 (what batching
# makes of concurrent changes), same links, same bodies, in one invocation.
#
#   loadtest/update_cost.sh                 # N=2000 requests per run
#   N=500 BIN=target/release/shortener loadtest/update_cost.sh
#
# stdout: one Markdown table (step, c, rps, p50, p99 in ms, service CPU µs per request) and the
# ratios against the one-instance runs; everything else goes to stderr.
set -euo pipefail
LT=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$LT")
LOG_TAG=update_cost
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LT/common.sh"
N=${N:-2000}
LINKS=${LINKS:-1000}

command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"
find_oha install
if [[ -z "${BIN:-}" ]]; then
  log "building release"
  (cd "$ROOT" && cargo build --release --bin shortener >&2)
  BIN="$ROOT/target/release/shortener"
fi

PIDS=() REDIS_PID=""
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shortener-updatecost.XXXXXX")
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  stop_pid "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK" # no .env here

port() { python3 "$LT/lt.py" freeport; }
REDIS_PORT=$(port)
start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" || die "redis-server did not start"
export DATABASE_URL="sqlite://$WORK/db.sqlite" REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}
{
  echo "code,url"
  for ((i = 0; i < LINKS; i++)); do printf 'u%04d,https://example.com/%d\n' "$i" "$i"; done
} >"$WORK/links.csv"
"$BIN" links import "$WORK/links.csv" >/dev/null 2>"$WORK/import.log" || die "import failed"
KEY=$("$BIN" keys create updatecost --unlimited --admin 2>>"$WORK/import.log" | tail -1)
[[ -n "$KEY" ]] || die "no API key"

# start_instance: starts one more instance on a free port; sets LAST_PID and LAST_PORT.
start_instance() {
  local p i
  p=$(port)
  LISTEN_ADDR="127.0.0.1:$p" "$BIN" serve >>"$WORK/service-$p.log" 2>&1 &
  LAST_PID=$!
  LAST_PORT=$p
  PIDS+=("$LAST_PID")
  for ((i = 0; i < 300; i++)); do
    curl -fso /dev/null "http://127.0.0.1:$p/health/ready" && return 0
    sleep 0.1
  done
  die "instance on port $p did not come up"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run STEP C: N PATCHes at concurrency C over the LINKS codes; prints one table row.
run() {
  local step=$1 c=$2 out before after
  out="$WORK/oha-$step-$c.json"
  before=$(cpu_ticks "$WRITER_PID")
  "$OHA" -n "$N" -c "$c" --no-tui --output-format json -m PATCH \
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"url":"https://example.com/changed"}' \
    --rand-regex-url "http://127.0.0.1:$WRITER_PORT/api/v1/links/u0[0-9]{3}" >"$out"
  after=$(cpu_ticks "$WRITER_PID")
  python3 - "$out" "$step" "$c" "$((after - before))" "$(getconf CLK_TCK)" "$N" <<'EOF'
import json, sys
path, step, c, ticks, hz, n = sys.argv[1:]
r = json.load(open(path))
codes = r.get("statusCodeDistribution", {})
errors = sum(r.get("errorDistribution", {}).values())
bad = sum(v for k, v in codes.items() if k != "200")
pct = r["latencyPercentiles"]
print(f"| {step} | {c} | {r['summary']['requestsPerSec']:.0f} | {pct['p50'] * 1000:.2f} | {pct['p99'] * 1000:.2f} "
      f"| {int(ticks) / int(hz) / int(n) * 1e6:.0f} | {errors + bad} |")
EOF
}

start_instance
WRITER_PID=$LAST_PID WRITER_PORT=$LAST_PORT
log "one instance (port $WRITER_PORT): warm-up run (not reported)"
run warmup 16 >/dev/null
ROWS=()
# Two pairs, alone then three, so that neither side always runs first; the other two instances
# are stopped with SIGTERM between the pairs (they say goodbye: the writer stops waiting for
# them at once).
for pair in 1 2; do
  log "pair $pair: one instance"
  for c in 1 16; do ROWS+=("$(run alone "$c")"); done
  start_instance
  B=$LAST_PID
  start_instance
  C=$LAST_PID
  log "pair $pair: three instances"
  for c in 1 16; do ROWS+=("$(run three "$c")"); done
  if ((pair == 1)); then
    stop_pid "$B"
    stop_pid "$C"
  fi
done
log "three instances, one stopped (SIGSTOP)"
kill -STOP "$B"
N_SAVED=$N
N=$((N / 10 > 50 ? N / 10 : 50))
for c in 1 16; do ROWS+=("$(run one_stopped "$c")"); done
N=$N_SAVED
kill -CONT "$B"
confirmations=$(curl -s "http://127.0.0.1:$WRITER_PORT/metrics" | grep '^shortener_invalidation_confirmations_total' || true)

echo "| instances | c | rps | p50 ms | p99 ms | writer CPU µs/request | failed or non-200 |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
python3 - "${ROWS[@]}" <<'EOF'
import statistics, sys
rows = [r.strip("| ").split(" | ") for r in sys.argv[1:]]
for c in ("1", "16"):
    def med(step, col):
        return statistics.median(float(r[col]) for r in rows if r[0] == step and r[1] == c)
    ratio = {name: med("three", col) / max(med("alone", col), 1e-9) for name, col in (("rps", 2), ("p50", 3), ("p99", 4), ("CPU/request", 5))}
    print(f"c={c}: three instances / one (medians of two pairs): " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
EOF
echo
echo '```'
echo "$confirmations"
echo '```'

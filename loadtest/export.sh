#!/usr/bin/env bash
# How fast `links export` and `GET /api/v1/links/export` stream N links, and whether memory
# stays flat: N links imported from a generated CSV into a fresh SQLite file, then the CLI's CSV
# and JSON-lines exports under /usr/bin/time -v (wall time, max RSS), then the API's exports
# through curl from a running service, with the service's peak RSS (VmHWM) before and after.
#
#   N=1000000 BIN=target/release/shortener loadtest/export.sh
#
# stdout: the report; stderr: progress. Needs python3, curl, /usr/bin/time (apt-get install time).
set -euo pipefail
N=${N:-1000000}
BIN=${BIN:-target/release/shortener}
PORT=${PORT:-18977}
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
DIR=$(mktemp -d /tmp/export-bench.XXXXXX)
SERVICE=
stop() {
  [[ -n $SERVICE ]] && kill "$SERVICE" 2>/dev/null && wait "$SERVICE" 2>/dev/null
  rm -rf "$DIR"
}
trap stop EXIT
export DATABASE_URL="sqlite://$DIR/links.db" REDIS_ENABLED=false RUST_LOG=warn LISTEN_ADDR="127.0.0.1:$PORT"

python3 - "$N" "$DIR/links.csv" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(f"p{i:07d},https://example.com/some/path/{i}?q={i * 7919 % 100000}\n")
PY
echo "N=$N on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" links import "$DIR/links.csv" 2>/dev/null

for format in csv jsonl; do
  /usr/bin/time -v "$BIN" links export "$DIR/cli.$format" 2>"$DIR/time.txt"
  echo "cli $format: $(grep -h '^exported' "$DIR/time.txt");" \
    "wall $(grep 'Elapsed' "$DIR/time.txt" | awk '{print $NF}'),"\
    "max RSS $(grep 'Maximum resident' "$DIR/time.txt" | awk '{print $NF}') kB"
done

KEY=$("$BIN" keys create bench --admin 2>/dev/null | tail -n1)
"$BIN" serve 2>/dev/null &
SERVICE=$!
deadline=$(( $(date +%s) + 30 ))
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  (( $(date +%s) < deadline )) || { echo "the service did not start" >&2; exit 1; }
  sleep 0.05
done
hwm() { awk '/VmHWM/ {print $2}' "/proc/$SERVICE/status"; }
echo "service peak RSS before any export: $(hwm) kB"
for format in csv jsonl csv; do
  secs=$( { /usr/bin/time -f %e curl -sf -o "$DIR/api.$format" -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:$PORT/api/v1/links/export?format=$format"; } 2>&1 )
  same=$(cmp -s "$DIR/api.$format" "$DIR/cli.$format" && echo "same bytes as the CLI's" || echo "DIFFERENT from the CLI's")
  echo "api $format: $(stat -c %s "$DIR/api.$format") bytes in ${secs}s, $same; service peak RSS now $(hwm) kB"
done

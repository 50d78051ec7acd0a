#!/usr/bin/env bash
# How fast `shortener db copy` moves an installation: N links (clicks on each) and N daily click
# rows in a SQLite file, copied to a PostgreSQL started here (initdb and pg_ctl as the postgres
# user, as tests/api/pg.rs does; default settings, fsync on), copied again (the idempotent
# re-run), then copied back into a new SQLite file. Each run verifies (counts and checksums).
#
#   sudo loadtest/db_copy.sh                                    # N=100000
#   N=1000000 BIN=target/release/shortener sudo -E loadtest/db_copy.sh
#
# stdout: each copy's summary and verification report; stderr: its wall time and peak memory,
# and progress. Needs root (the postgres user runs the server), python3, sqlite3.
set -euo pipefail
N=${N:-100000}
BIN=${BIN:-target/release/shortener}
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
[[ -n $PG_BIN ]] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
PORT=${PORT:-55439}
DIR=$(mktemp -d /tmp/db-copy-bench.XXXXXX)
chmod 0755 "$DIR"
mkdir "$DIR/data"
chown postgres "$DIR/data"
stop() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap stop EXIT
runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/data/log" -w \
  -o "-p $PORT -k $DIR/data -c listen_addresses=127.0.0.1" start >/dev/null
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -c 'CREATE DATABASE bench'
PG=postgres://postgres@127.0.0.1:$PORT/bench
SRC=sqlite://$DIR/src.db

echo "making $N links and $N daily rows in $DIR/src.db" >&2
python3 -c "
with open('$DIR/links.csv', 'w') as f:
    for i in range($N): f.write(f'c{i:08d},https://example.com/page/{i}\n')"
RUST_LOG=warn DATABASE_URL=$SRC "$BIN" links import "$DIR/links.csv" >&2
sqlite3 "$DIR/src.db" "UPDATE link_mappings SET clicks = length(original_url), last_clicked_at = 1764547200000;
  INSERT INTO link_clicks_daily SELECT short_code, '2026-11-30', 7 FROM link_mappings;"

copy() {   # copy NAME FROM TO
  echo "== $1"
  RUST_LOG=warn DATABASE_URL=$SRC /usr/bin/time -f "%e s wall, %M KiB max RSS" "$BIN" db copy --from "$2" --to "$3"
}
copy "sqlite -> postgres" "$SRC" "$PG"
copy "sqlite -> postgres again (idempotent re-run)" "$SRC" "$PG"
copy "postgres -> sqlite" "$PG" "sqlite://$DIR/back.db"

#!/usr/bin/env bash
# The OpenAPI document against the live service: schemathesis (4.x, from PyPI, in a virtualenv
# of its own) generates requests for every documented operation from GET /api/v1/openapi.json
# and checks every answer: no 5xx, and status, content type, headers and body as documented.
#
# The real binary runs on a free port with a temp SQLite database and a redis-server of its own;
# an admin key made with `shortener keys create` authorizes the calls, and a few links are seeded
# so that codes exist. Rate limits are raised so that 429 (documented, and still possible) does
# not drown the run. Everything this script says goes to stderr; it exits non-zero on any
# failure and ends with one closing line either way.
#
# EXAMPLES (default 100: about 1,500 requests, half a minute) sets the examples per operation;
# SCHEMATHESIS_SEED a fixed seed.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec 1>&2

target_dir=${CARGO_TARGET_DIR:-target}
venv="$target_dir/openapi-venv"
examples=${EXAMPLES:-100}
work=$(mktemp -d)
pids=()

finish() {
    status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$status" -ne 0 ] && [ -f "$work/service.log" ]; then
        echo "--- the service's log (last 40 lines) ---"
        tail -n 40 "$work/service.log"
    fi
    rm -rf "$work"
    if [ "$status" -eq 0 ]; then
        echo "tests/openapi/run.sh: schemathesis passed: every operation, no server error, no schema violation"
    else
        echo "tests/openapi/run.sh: FAILED (exit $status)"
    fi
    exit "$status"
}
trap finish EXIT

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "installing python3-venv (for schemathesis' virtualenv)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "creating $venv with schemathesis 4.x"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis>=4,<5"
fi
"$venv/bin/schemathesis" --version

cargo build --locked --quiet --bin shortener
bin="$target_dir/debug/shortener"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to $2 seconds for the command $1 to succeed.
wait_for() {
    local deadline=$(( $(date +%s) + $2 ))
    until eval "$1" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "timed out waiting for: $1"
            return 1
        fi
        sleep 0.05
    done
}

redis_port=$(free_port)
redis-server deploy/redis-shortener.conf --port "$redis_port" --bind 127.0.0.1 --daemonize no \
    --logfile "" --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "redis-cli -p $redis_port PING | grep -q PONG" 10

port=$(free_port)
export DATABASE_URL="sqlite://$work/links.db"
export REDIS_URL="redis://127.0.0.1:$redis_port"
export LISTEN_ADDR="127.0.0.1:$port"
export PUBLIC_BASE_URL="http://127.0.0.1:$port/"
export RUST_LOG=warn LOG_FORMAT=json
export RATE_LIMIT_API_PER_IP_PER_MINUTE=1000000
export RATE_LIMIT_CREATE_PER_MINUTE=1000000
export RATE_LIMIT_CREATE_PER_IP_PER_MINUTE=1000000
export RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE=1000000

key=$("$bin" keys create schemathesis --admin 2>/dev/null | tail -n1)
"$bin" serve >"$work/service.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$port"
wait_for "curl -sf $base/health/ready" 30

seed() {
    curl -sf -o /dev/null -X POST "$base/api/v1/links" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' -d "$1"
}
seed '{"code":"seed-one","url":"https://example.com/one"}'
seed '{"code":"seed-two","url":"https://example.com/two?a=1,2","redirect_status":301}'
seed '{"code":"seed-three","url":"https://example.com/three","redirect_status":308,"expires_at":"2040-01-01T00:00:00Z"}'
seed '{"code":"seed-four","url":"https://example.com/four","redirect_status":307}'
echo "service on $base, links seeded; schemathesis with $examples examples per operation"

args=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then args+=(--seed "$SCHEMATHESIS_SEED"); fi
"$venv/bin/schemathesis" run "$base/api/v1/openapi.json" \
    -H "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$examples" \
    --workers 2 \
    --request-timeout 15 \
    --output-truncate false \
    "${args[@]}"

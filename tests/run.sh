#!/usr/bin/env bash
# The whole test suite: installs what the tests need (redis-server, postgresql) when it is
# missing, then runs every Rust test (unit and integration, each starting its own redis-server
# on a free port) on SQLite, the integration suite again on PostgreSQL (a server the tests start
# themselves in a temp dir), schemathesis against the OpenAPI document (tests/openapi/run.sh), and
# the deployment checks (tests/deploy/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    missing+=(redis-server)
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
# Certificates for the TLS tests (PostgreSQL, a Redis Cluster over TLS).
if ! command -v openssl >/dev/null 2>&1; then
    missing+=(openssl)
fi
# The admin app's browser tests (tests/browser/): a real headless Chromium over WebDriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    missing+=(chromium chromium-driver)
fi
if ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (the tests start their own servers)" >&2
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
# The packaged redis-server and postgresql services are not needed by the tests; they never
# touch ports 6379 or 5432. PostgreSQL's programs are needed on every run: the tests start
# servers of their own with them (tests/api/pg.rs), and `db copy` is tested against one whatever
# TEST_DATABASE says.

# axe-core for the browser tests' accessibility checks, at the version package-lock.json pins.
if [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error >&2
fi

# Unit and integration tests, the browser tests (tests/browser/) among them, once.
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}"
# The same integration suite with PostgreSQL as the database: every test but the Redis topology
# ones (topology::, Sentinel and Cluster failovers), which test Redis, not the database, and take
# a minute and a half.
TEST_DATABASE=postgres cargo test --locked --test api -- --test-threads="${TEST_THREADS:-2}" --skip topology::

# The OpenAPI document against the live service (schemathesis; once, on SQLite: about a minute).
bash tests/openapi/run.sh

if [ -x tests/deploy/run.sh ] && [ "${SKIP_DEPLOY_TESTS:-0}" != 1 ]; then
    bash tests/deploy/run.sh
fi

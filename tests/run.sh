#!/usr/bin/env bash
# The whole test suite: installs what the tests need (redis-server, postgresql) when missing, then
# runs every Rust test (unit and integration, each starting its own redis-server on a free
# port) and the deployment checks (tests/deploy/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "installing redis-server (the tests start their own instances)" >&2
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi
# The packaged redis-server service is not needed by the tests; they never touch port 6379.
# PostgreSQL: the tests start servers of their own with its programs (tests/api/pg.rs), on
# every run (`db copy` is tested against it whatever TEST_DATABASE says); the packaged cluster
# on 5432 is not used.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "installing postgresql (the tests start their own servers)" >&2
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}"

if [ -x tests/deploy/run.sh ] && [ "${SKIP_DEPLOY_TESTS:-0}" != 1 ]; then
    bash tests/deploy/run.sh
fi

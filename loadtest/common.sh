# shellcheck shell=bash
# Helpers shared by loadtest/run.sh and loadtest/faults.sh (sourced, not run). Set LOG_TAG (the
# log prefix) and DIE_STATUS (die's exit code) before sourcing.

log() { printf '[%s %s] %s\n' "${LOG_TAG:-loadtest}" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit "${DIE_STATUS:-1}"
}

# stop_pid PID: SIGTERM (after SIGCONT: a stopped process would keep SIGTERM pending), then
# SIGKILL after 30 s; reaps it. Does nothing for an empty or finished PID.
stop_pid() {
  local pid=$1 i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop in 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# remove_work RC: removes the work directory $WORK, unless KEEP_WORK=1 or RC (the script's exit
# status) is not 0: then it is kept, and its path logged, for a look at what went wrong.
remove_work() {
  [[ -n "${WORK:-}" && -d "$WORK" ]] || return 0
  if [[ "${KEEP_WORK:-0}" == 1 || $1 -ne 0 ]]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}

# find_oha install|require: sets OHA to the oha binary ($OHA, then PATH, then ~/.cargo/bin);
# when there is none, `install` runs `cargo install oha --locked` and `require` dies.
find_oha() {
  OHA=${OHA:-$(command -v oha || true)}
  if [[ -z "$OHA" && -x "$HOME/.cargo/bin/oha" ]]; then OHA="$HOME/.cargo/bin/oha"; fi
  if [[ -z "$OHA" ]]; then
    [[ "$1" == install ]] || die "oha is required: cargo install oha --locked"
    log "oha not found: cargo install oha --locked (a few minutes)"
    cargo install oha --locked
    OHA="$HOME/.cargo/bin/oha"
  fi
}

# raise_fd_limit: raises the soft open-files limit of this shell (and what it starts) to the
# hard one.
raise_fd_limit() {
  local hard
  hard=$(ulimit -Hn)
  if [[ "$hard" == unlimited ]]; then hard=1048576; fi
  ulimit -Sn "$hard"
}

# The Redis configuration that deploy.sh installs in production.
REDIS_CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/redis-shortener.conf"

# start_redis PORT DIR LOGFILE: starts redis-server in the background with the production
# settings (REDIS_CONF: memory cap, eviction policy, no persistence, backlog, ...) and only these
# overridden: the port, working directory and log file; bind 127.0.0.1 (the file's `-::1` would
# also take the port on ::1 where IPv6 is up, and the port was only found free on 127.0.0.1);
# daemonize no (the file leaves it to the distribution's redis.conf; this shell must keep the
# process as its child). Sets REDIS_PID; returns 1 unless it answers within 10 s (it, not some
# other server that holds the port: the answer must carry its process id).
start_redis() {
  local port=$1 dir=$2 logfile=$3 i
  redis-server "$REDIS_CONF" --port "$port" --bind 127.0.0.1 --daemonize no --dir "$dir" --logfile "$logfile" &
  REDIS_PID=$!
  for ((i = 0; i < 100; i++)); do
    kill -0 "$REDIS_PID" 2>/dev/null || return 1
    if redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$REDIS_PID"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

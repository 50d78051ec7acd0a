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

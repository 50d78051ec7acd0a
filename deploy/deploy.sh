#!/usr/bin/env bash
# deploy.sh — install or upgrade shortener on one Ubuntu 24.04 / Debian 12 host
# with systemd. Idempotent: a second run with the same binary changes nothing,
# restarts nothing and succeeds.
#
#   On the target:        sudo deploy/deploy.sh --local --binary target/release/shortener
#   From a workstation:   deploy/deploy.sh --host ubuntu@HOST [--binary PATH]
#
# Runbook (first deploy, upgrade, rollback, secrets, load test): deploy/README.md.
#
# What --local does, in order (each step only acts when something differs):
#   0. reads DATABASE_URL and REDIS_URL from the env file (on a first deploy:
#      from what step 7 will write) to see whether they are external, below
#   1. apt-get install redis-server (only if missing)
#   2. /etc/redis/shortener.conf (includes the distro redis.conf, then our
#      deploy/redis-shortener.conf, + REDIS_MAXMEMORY / REDIS_PASSWORD from the
#      service env) and a redis-server.service drop-in that starts Redis with
#      it; Redis is restarted only if one of them changed
#   3. /etc/sysctl.d/60-shortener.conf applied key by key; keys the kernel
#      refuses are a WARN inside a container (systemd-detect-virt --container)
#      and an error anywhere else
#   4. /etc/security/limits.d/90-shortener.conf (nofile for login sessions)
#   5. system user `shortener`, data dir /var/lib/shortener (0750)
#   6. binary -> /opt/shortener/releases/<version>-<sha256[:12]>/shortener
#   7. /etc/shortener/shortener.env from .env.production, ONCE (0600 root)
#   8. /etc/systemd/system/shortener.service, /etc/systemd/system/shortener.socket
#      and its drop-in shortener.socket.d/listen.conf (ListenStream= from
#      LISTEN_ADDR in the env file) (+ daemon-reload if any changed)
#   9. `shortener migrate` with the new binary (as the service user, env loaded)
#      and, the first time only, `shortener keys create admin --admin` (key -> stdout)
#  10. atomic switch of /opt/shortener/current (ln -sfn tmp + mv -T)
#  11. enable redis-server, shortener.socket + shortener; restart
#      shortener.socket (and with it the service) only if LISTEN_ADDR changed
#      since the socket was last started; otherwise restart shortener only if
#      the binary, unit or env file changed since the last good deploy (or it
#      is down). A service restart leaves the socket open: connections made
#      meanwhile wait in its backlog for the new process, none is refused.
#  12. health check with retries; on failure switch `current` back to the
#      previous release, restart, and exit non-zero
#
# External PostgreSQL and Redis (several instances behind a load balancer,
# deploy/README.md "Several instances"): nothing of this applies unless asked.
# - DATABASE_URL=postgres://… (or postgresql://…) in the env file: no SQLite
#   database is made (/var/lib/shortener stays the service's working
#   directory, empty); step 9 migrates that PostgreSQL before any restart and
#   stops the deploy, naming it (password redacted), when it cannot be
#   reached; the admin key is created only if the shared database has none.
# - REDIS_URL naming a host other than this one (not localhost, 127.x, ::1),
#   or --external-redis: steps 1-2 install and configure no redis-server
#   (one installed by an earlier deploy is left alone, with a warning).
#
# Output: progress and warnings go to stderr; stdout carries only the admin
# API key (first deploy) and a one-line summary.
#
# Options for the first creation of the env file only: --set KEY=VALUE
# (repeatable) replaces KEY in the copy of .env.production. Later runs never
# touch the env file: edit it by hand and re-run deploy.sh to restart.
set -Eeuo pipefail
umask 022

readonly APP=shortener
readonly SVC_USER=shortener
readonly OPT_DIR=/opt/shortener
readonly RELEASES_DIR=$OPT_DIR/releases
readonly CURRENT_LINK=$OPT_DIR/current
readonly FINGERPRINT_FILE=$OPT_DIR/.deployed
readonly ETC_DIR=/etc/shortener
readonly ENV_FILE=$ETC_DIR/shortener.env
readonly ADMIN_KEY_MARKER=$ETC_DIR/.admin-key-issued
readonly DATA_DIR=/var/lib/shortener
readonly UNIT_DEST=/etc/systemd/system/shortener.service
readonly SOCKET_DEST=/etc/systemd/system/shortener.socket
readonly SOCKET_DROPIN=/etc/systemd/system/shortener.socket.d/listen.conf
# The ListenStream= shortener.socket was last (re)started with by this script:
# what it really listens on, whatever its unit files say by now.
readonly SOCKET_STATE=$OPT_DIR/.socket-listen
readonly REDIS_CONF=/etc/redis/shortener.conf
readonly REDIS_DISTRO_CONF=/etc/redis/redis.conf
readonly REDIS_DROPIN=/etc/systemd/system/redis-server.service.d/shortener.conf
readonly SYSCTL_DEST=/etc/sysctl.d/60-shortener.conf
readonly LIMITS_DEST=/etc/security/limits.d/90-shortener.conf
readonly LOCK_FILE=/run/lock/shortener-deploy.lock

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

log()  { printf '%s deploy: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { log "WARN: $*"; }
die()  { log "ERROR: $*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: sudo deploy.sh --local --binary PATH [options]
       deploy.sh --host USER@HOST [--binary PATH] [options]

  --local               deploy on this machine (must be root)
  --host USER@HOST      copy binary + deploy files over ssh/scp and run
                        `sudo deploy.sh --local` there (sudo must not prompt)
  --binary PATH         the shortener binary; with --host and no --binary,
                        `cargo build --release --locked` is run first
  --set KEY=VALUE       only when /etc/shortener/shortener.env is first
                        created: use VALUE for KEY instead of .env.production's
                        (repeatable)
  --external-redis      Redis is run elsewhere (a managed Redis): install
                        and configure no local redis-server, whatever
                        REDIS_URL says (a REDIS_URL naming another host
                        implies this)
  --health-timeout S    seconds to wait for the health check (default 60)
  --keep-releases N     release dirs to keep besides current/previous (default 3)
  -h, --help            this text
EOF
}

MODE=""
HOST=""
BINARY=""
HEALTH_TIMEOUT=60
KEEP_RELEASES=3
SETS=()
EXTERNAL_REDIS_FLAG=0

while (($#)); do
  case $1 in
    --local) MODE=local ;;
    --host) MODE=remote; HOST=${2:?--host needs USER@HOST}; shift ;;
    --binary) BINARY=${2:?--binary needs a path}; shift ;;
    --set)
      [[ ${2:-} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--set needs KEY=VALUE, got '${2:-}'"
      SETS+=("$2"); shift ;;
    --external-redis) EXTERNAL_REDIS_FLAG=1 ;;
    --health-timeout) HEALTH_TIMEOUT=${2:?}; shift ;;
    --keep-releases) KEEP_RELEASES=${2:?}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
  shift
done
[[ -n $MODE ]] || { usage; die "say --local or --host USER@HOST"; }
[[ $HEALTH_TIMEOUT =~ ^[0-9]+$ ]] || die "--health-timeout must be a number of seconds"
[[ $KEEP_RELEASES =~ ^[0-9]+$ ]] || die "--keep-releases must be a number"

# ---------------------------------------------------------------- remote mode
# Ships the binary and exactly the files --local reads into a private temp dir
# on the host, runs this script there with --local under sudo, removes the dir.
deploy_remote() {
  if [[ -z $BINARY ]]; then
    log "no --binary: building with cargo build --release --locked in $REPO_DIR"
    (cd "$REPO_DIR" && cargo build --release --locked >&2)
    BINARY=$REPO_DIR/target/release/$APP
  fi
  [[ -f $BINARY && -x $BINARY ]] || die "binary not found or not executable: $BINARY"

  local remote_tmp
  remote_tmp=$(ssh "$HOST" 'mktemp -d /tmp/shortener-deploy.XXXXXXXX') \
    || die "ssh $HOST failed"
  # shellcheck disable=SC2064  # expand now: the path is fixed from here on
  trap "ssh '$HOST' rm -rf -- '$remote_tmp' || true" EXIT

  log "copying to $HOST:$remote_tmp"
  # shellcheck disable=SC2029  # expanded here on purpose: a mktemp path, no spaces
  ssh "$HOST" "mkdir -p '$remote_tmp/deploy' '$remote_tmp/systemd'"
  scp -q "$BINARY" "$HOST:$remote_tmp/$APP"
  scp -q "$SCRIPT_DIR/deploy.sh" "$SCRIPT_DIR/redis-shortener.conf" \
    "$SCRIPT_DIR/sysctl-shortener.conf" "$SCRIPT_DIR/limits-shortener.conf" \
    "$HOST:$remote_tmp/deploy/"
  scp -q "$REPO_DIR/systemd/shortener.service" "$REPO_DIR/systemd/shortener.socket" \
    "$HOST:$remote_tmp/systemd/"
  scp -q "$REPO_DIR/.env.production" "$HOST:$remote_tmp/"

  local -a args=(--local --binary "$remote_tmp/$APP"
                 --health-timeout "$HEALTH_TIMEOUT" --keep-releases "$KEEP_RELEASES")
  local s
  for s in "${SETS[@]}"; do args+=(--set "$s"); done
  if ((EXTERNAL_REDIS_FLAG)); then args+=(--external-redis); fi
  log "running deploy.sh --local on $HOST"
  # printf %q: the remote shell sees every argument exactly as given here.
  # No -t: remote stdout stays the key/summary, remote stderr stays the log.
  # shellcheck disable=SC2029  # expanded here on purpose, quoted by %q
  ssh "$HOST" "sudo -n bash $(printf '%q ' "$remote_tmp/deploy/deploy.sh" "${args[@]}")"
}

if [[ $MODE == remote ]]; then
  deploy_remote
  exit $?
fi

# ----------------------------------------------------------------- local mode
((EUID == 0)) || die "--local must run as root (sudo)"
command -v systemctl >/dev/null || die "systemd is required"
[[ -n $BINARY ]] || die "--local needs --binary PATH"
[[ -f $BINARY && -x $BINARY ]] || die "binary not found or not executable: $BINARY"
for f in "$SCRIPT_DIR/redis-shortener.conf" "$SCRIPT_DIR/sysctl-shortener.conf" \
         "$SCRIPT_DIR/limits-shortener.conf" "$REPO_DIR/systemd/shortener.service" \
         "$REPO_DIR/systemd/shortener.socket" "$REPO_DIR/.env.production"; do
  [[ -f $f ]] || die "missing $f (run from a checkout, or use --host)"
done

# One deploy at a time.
exec 9>"$LOCK_FILE"
flock -n 9 || die "another deploy.sh holds $LOCK_FILE"

CHANGES=()          # what this run changed, for the summary
note_change() { CHANGES+=("$1"); log "changed: $1"; }

is_container() { systemd-detect-virt --container --quiet; }

# write_if_changed DEST MODE OWNER:GROUP < content
# Writes atomically (temp file in the same dir + mv) and only when the content,
# mode or owner differ. Returns 0 if it wrote, 1 if DEST was already right.
write_if_changed() {
  local dest=$1 mode=$2 owner=$3 tmp
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")
  cat >"$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest" \
     && [[ $(stat -c '%a %U:%G' "$dest") == "${mode#0} $owner" ]]; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$dest"
  return 0
}

# env_get KEY: the value systemd's EnvironmentFile= would give KEY (the last
# assignment wins; surrounding single or double quotes are removed).
env_get() {
  [[ -f $ENV_FILE ]] || return 0
  env_value "$1" <"$ENV_FILE"
}

# env_value KEY < FILE: env_get's reading of an env file given on stdin.
env_value() {
  local key=$1 line val=""
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line#"${line%%[![:space:]]*}"}
    [[ $line == "$key="* ]] || continue
    val=${line#"$key="}
    val=${val%"${val##*[![:space:]]}"}
    if [[ $val =~ ^\"(.*)\"$ || $val =~ ^\'(.*)\'$ ]]; then val=${BASH_REMATCH[1]}; fi
  done
  printf '%s' "$val"
}

# planned_env_get KEY: env_get, or on a first deploy the value the env file
# step 7 writes will give KEY.
planned_env_get() {
  if [[ -f $ENV_FILE ]]; then env_get "$1"; return; fi
  local tmp
  tmp=$(mktemp /run/shortener-env.XXXXXX)   # 0600: --set values may be secrets
  render_env_file "$tmp"
  env_value "$1" <"$tmp"
  rm -f "$tmp"
}

# redact URL: the URL with the password of its user:password@ replaced.
redact() { sed -E 's#^([a-z+]+://[^:/@]*):[^@/]*@#\1:REDACTED@#' <<<"$1"; }

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# listen_addr: LISTEN_ADDR from the env file (the binary's default when unset),
# checked to be an address both the binary and ListenStream= read the same
# way: IPv4:port or [IPv6]:port.
listen_addr() {
  local addr
  addr=$(env_get LISTEN_ADDR)
  addr=${addr:-127.0.0.1:8080}
  [[ $addr =~ ^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$ ]] \
    || die "LISTEN_ADDR in $ENV_FILE must be IPv4:PORT or [IPv6]:PORT, got '$addr'"
  printf '%s' "$addr"
}

# run_as_service BINARY ARGS...: run the binary the way the service runs it —
# same user, same EnvironmentFile parsing (systemd's own), same working dir,
# same umask — as a transient unit, with its stdout/stderr on ours.
run_as_service() {
  systemd-run --quiet --wait --pipe --collect \
    --unit="shortener-deploy-$$-$RANDOM" \
    -p User="$SVC_USER" -p Group="$SVC_USER" \
    -p EnvironmentFile="$ENV_FILE" \
    -p WorkingDirectory="$DATA_DIR" \
    -p StateDirectory=shortener -p StateDirectoryMode=0750 \
    -p UMask=0077 -p LimitNOFILE=1048576 \
    -- "$@" </dev/null
}

# ---- 0. external database and Redis
EXTERNAL_DB=0      # DATABASE_URL is postgres://…
EXTERNAL_REDIS=0   # REDIS_URL names another host, or --external-redis

# redis_is_local URL: URL's host is this machine (or a unix socket).
redis_is_local() {
  local url=$1 rest host
  [[ $url == unix://* || $url == redis+unix://* ]] && return 0
  rest=${url#*://}
  rest=${rest%%/*}        # the authority,
  rest=${rest##*@}        # without user:password@
  if [[ $rest == \[* ]]; then host=${rest%%]*}]; else host=${rest%%:*}; fi
  [[ -z $host || $host == localhost || $host == 127.* || $host == "[::1]" ]]
}

plan_external() {
  local db redis
  db=$(planned_env_get DATABASE_URL)
  redis=$(planned_env_get REDIS_URL)
  redis=${redis:-redis://127.0.0.1:6379}
  if [[ $db =~ ^postgres(ql)?:// ]]; then
    EXTERNAL_DB=1
    log "database: external PostgreSQL $(redact "$db") (no SQLite file; $DATA_DIR is only the working directory)"
  fi
  if ((EXTERNAL_REDIS_FLAG)); then
    EXTERNAL_REDIS=1
    log "redis: external (--external-redis) at $(redact "$redis"): no local redis-server"
  elif ! redis_is_local "$redis"; then
    EXTERNAL_REDIS=1
    log "redis: external at $(redact "$redis") (REDIS_URL names another host): no local redis-server"
  fi
}

# ---- 1. packages: redis-server, and curl for the health check
is_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]; }
install_packages() {
  local pkg missing=() wanted=(redis-server curl)
  if ((EXTERNAL_REDIS)); then wanted=(curl); fi
  for pkg in "${wanted[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    if ((EXTERNAL_REDIS)); then
      log "packages: curl already installed"
    else
      log "packages: redis-server $(dpkg-query -W -f='${Version}' redis-server) and curl already installed"
    fi
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Refresh package lists when they are missing or older than a day (fresh
  # cloud images); if that fails (no network) try with the lists we have.
  if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null) ]]; then
    log "apt-get update"
    apt-get update -qq >&2 || warn "apt-get update failed; trying the package lists already here"
  fi
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >&2 </dev/null || die "apt-get install ${missing[*]} failed"
  if ((EXTERNAL_REDIS)); then
    note_change "installed ${missing[*]}"
  else
    note_change "installed ${missing[*]} (redis-server $(dpkg-query -W -f='${Version}' redis-server))"
  fi
}

# ---- 2. Redis config
configure_redis() {
  local maxmemory password changed=0
  maxmemory=$(env_get REDIS_MAXMEMORY)
  password=$(env_get REDIS_PASSWORD)
  [[ -z $maxmemory || $maxmemory =~ ^[0-9]+([kKmMgG][bB]?)?$ ]] \
    || die "REDIS_MAXMEMORY in $ENV_FILE must look like 200mb or 1gb, got '$maxmemory'"
  # Kept to characters that need no quoting in redis.conf nor in a redis:// URL.
  [[ -z $password || $password =~ ^[A-Za-z0-9._~-]+$ ]] \
    || die "REDIS_PASSWORD in $ENV_FILE may only use A-Z a-z 0-9 . _ ~ -"
  if [[ -n $password && $(env_get REDIS_URL) != *":$password@"* ]]; then
    warn "REDIS_PASSWORD is set but REDIS_URL does not carry it (redis://:PASSWORD@127.0.0.1:6379): the app will run without its cache"
  fi
  [[ -f $REDIS_DISTRO_CONF ]] || die "$REDIS_DISTRO_CONF missing: is redis-server installed?"

  if {
       echo "# Managed by shortener deploy/deploy.sh: overwritten on every deploy."
       echo "# Source: deploy/redis-shortener.conf in the shortener repository."
       echo "include $REDIS_DISTRO_CONF"
       echo
       cat "$SCRIPT_DIR/redis-shortener.conf"
       if [[ -n $maxmemory ]]; then
         echo
         echo "# REDIS_MAXMEMORY from $ENV_FILE"
         echo "maxmemory $maxmemory"
       fi
       if [[ -n $password ]]; then
         echo
         echo "# REDIS_PASSWORD from $ENV_FILE"
         echo "requirepass $password"
       fi
     } | write_if_changed "$REDIS_CONF" 0640 root:redis; then
    note_change "$REDIS_CONF"; changed=1
  fi

  # The distro unit starts `redis-server /etc/redis/redis.conf`; point it at
  # our file instead (which includes that one first). A drop-in leaves the
  # distro's conffile untouched, so package upgrades never stop at a prompt.
  # The ExecStart is the distro's own (Debian 12 and Ubuntu 24.04:
  # `/usr/bin/redis-server /etc/redis/redis.conf --supervised systemd
  # --daemonize no`) with only the config path swapped.
  local unit_file distro_exec
  unit_file=$(systemctl show -p FragmentPath --value redis-server)
  distro_exec=$(sed -n 's/^ExecStart=//p' "$unit_file" | tail -n 1)
  [[ $distro_exec == *" $REDIS_DISTRO_CONF"* ]] \
    || die "unexpected ExecStart in $unit_file: '$distro_exec' (no $REDIS_DISTRO_CONF to swap)"
  if write_if_changed "$REDIS_DROPIN" 0644 root:root <<EOF
# Managed by shortener deploy/deploy.sh: start Redis with $REDIS_CONF,
# which includes $REDIS_DISTRO_CONF and then overrides it.
[Service]
ExecStart=
ExecStart=${distro_exec/ $REDIS_DISTRO_CONF/ $REDIS_CONF}
EOF
  then
    note_change "$REDIS_DROPIN"; changed=1
    systemctl daemon-reload
  fi

  if ! systemctl is-enabled --quiet redis-server; then
    systemctl enable --quiet redis-server
    note_change "enabled redis-server"
  fi
  if ((changed)); then
    log "restarting redis-server (config changed)"
    systemctl restart redis-server || die "redis-server failed to restart: journalctl -u redis-server"
  elif ! systemctl is-active --quiet redis-server; then
    systemctl start redis-server || die "redis-server failed to start: journalctl -u redis-server"
    note_change "started redis-server"
  else
    log "redis: config unchanged, running"
  fi
}

# Redis is external: nothing to install or configure here. A redis-server a
# deploy installed before is not stopped (something else may use it).
no_local_redis() {
  if is_installed redis-server && systemctl is-enabled --quiet redis-server 2>/dev/null; then
    warn "redis-server is installed and enabled here but REDIS_URL points elsewhere: the service does not use it ('systemctl disable --now redis-server' if nothing else does)"
  fi
}

# ---- 3. sysctl
# Ceilings and queue sizes are minimums: where the kernel already has a higher
# value (Ubuntu's systemd sets fs.file-max to LONG_MAX and fs.nr_open to the
# kernel maximum), keep it rather than lower it, in force and at boot.
readonly SYSCTL_FLOOR_KEYS=" fs.file-max fs.nr_open net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog "
render_sysctl() {
  local line key want have
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*([0-9]+)[[:space:]]*$ \
          && $SYSCTL_FLOOR_KEYS == *" ${BASH_REMATCH[1]} "* ]]; then
      key=${BASH_REMATCH[1]}; want=${BASH_REMATCH[2]}
      have=$(sysctl -n "$key" 2>/dev/null || true)
      if [[ $have =~ ^[0-9]{1,19}$ ]] && ((have > want)); then
        echo "# $key: $want asked for; the higher $have already in force is kept"
        echo "$key = $have"
        continue
      fi
    fi
    printf '%s\n' "$line"
  done <"$SCRIPT_DIR/sysctl-shortener.conf"
}

configure_sysctl() {
  if render_sysctl | write_if_changed "$SYSCTL_DEST" 0644 root:root; then
    note_change "$SYSCTL_DEST"
  fi
  local line key want have failed=()
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
    key=${BASH_REMATCH[1]}
    want=$(echo "${BASH_REMATCH[2]}" | tr -s ' \t' ' ')
    have=$(sysctl -n "$key" 2>/dev/null | tr -s ' \t' ' ') || have=""
    [[ $have == "$want" ]] && continue
    if sysctl -q -w "$key=$want" >/dev/null 2>&1 \
       && [[ $(sysctl -n "$key" 2>/dev/null | tr -s ' \t' ' ') == "$want" ]]; then
      note_change "sysctl $key = $want"
    else
      failed+=("$key")
    fi
  done <"$SYSCTL_DEST"
  if ((${#failed[@]})); then
    if is_container; then
      warn "running in a container ($(systemd-detect-virt --container)): the kernel refused sysctl ${failed[*]}; they apply on a real host (and from $SYSCTL_DEST at boot)"
    else
      die "could not set sysctl ${failed[*]} (see $SYSCTL_DEST)"
    fi
  else
    log "sysctl: all keys in $SYSCTL_DEST in force"
  fi
}

# ---- 4. limits.d
configure_limits() {
  if write_if_changed "$LIMITS_DEST" 0644 root:root <"$SCRIPT_DIR/limits-shortener.conf"; then
    note_change "$LIMITS_DEST"
  fi
}

# ---- 5. user and directories
ensure_user_and_dirs() {
  if ! getent passwd "$SVC_USER" >/dev/null; then
    useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "shortener service" "$SVC_USER"
    note_change "created system user $SVC_USER"
  fi
  if [[ $(stat -c '%a %U:%G' "$DATA_DIR" 2>/dev/null) != "750 $SVC_USER:$SVC_USER" ]]; then
    install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$DATA_DIR"
    note_change "$DATA_DIR (0750 $SVC_USER)"
  fi
  install -d -m 0755 -o root -g root "$OPT_DIR" "$RELEASES_DIR"
  install -d -m 0755 -o root -g root "$ETC_DIR"
}

# ---- 6. release directory
RELEASE=""        # e.g. 0.1.0-3fa4c1d2e9b0
RELEASE_BIN=""
install_release() {
  local out version sum
  out=$(timeout 20 "$BINARY" --version 2>/dev/null) || die "$BINARY --version failed"
  # `shortener 0.1.0` -> 0.1.0
  version=$(awk 'NR==1 {print $NF}' <<<"$out")
  [[ $version =~ ^[0-9A-Za-z.+_-]+$ ]] || die "cannot read a version from '$out'"
  sum=$(sha256 "$BINARY")
  RELEASE="$version-${sum:0:12}"
  RELEASE_BIN=$RELEASES_DIR/$RELEASE/$APP
  if [[ -x $RELEASE_BIN && $(sha256 "$RELEASE_BIN") == "$sum" ]]; then
    log "release $RELEASE: already installed"
    return
  fi
  install -d -m 0755 -o root -g root "$RELEASES_DIR/$RELEASE"
  install -m 0755 -o root -g root "$BINARY" "$RELEASE_BIN.tmp"
  mv -f "$RELEASE_BIN.tmp" "$RELEASE_BIN"
  note_change "installed release $RELEASE"
}

# ---- 7. env file (created once, never overwritten)
create_env_file() {
  if [[ -f $ENV_FILE ]]; then
    log "$ENV_FILE exists: left as it is"
    return
  fi
  local tmp
  tmp=$(mktemp "$ETC_DIR/.shortener.env.XXXXXX")   # 0600
  render_env_file "$tmp"
  chown root:root "$tmp"
  chmod 0600 "$tmp"
  mv -T "$tmp" "$ENV_FILE"
  note_change "created $ENV_FILE from .env.production${SETS:+ (with ${#SETS[@]} --set)}"
}

# render_env_file FILE: .env.production with each --set applied, into FILE.
render_env_file() {
  local tmp=$1 s key
  cp "$REPO_DIR/.env.production" "$tmp"
  for s in "${SETS[@]}"; do
    key=${s%%=*}
    # Drop KEY's active assignments, then append the new one (last one wins).
    sed -i "/^[[:space:]]*$key=/d" "$tmp"
    printf '%s\n' "$s" >>"$tmp"
  done
}

# ---- 8. unit files
# LISTEN_ADDR lives in the env file, which systemd does not read for a socket
# unit: a drop-in carries it into shortener.socket (whose own ListenStream= is
# only the default). It takes effect when the socket is next started; main()
# restarts the socket when the address differs from the one it was started
# with.
SOCKET_UNIT_CHANGED=0
install_units() {
  local reload=0 addr
  addr=$(listen_addr)
  if write_if_changed "$UNIT_DEST" 0644 root:root <"$REPO_DIR/systemd/shortener.service"; then
    note_change "$UNIT_DEST"; reload=1
  fi
  if write_if_changed "$SOCKET_DEST" 0644 root:root <"$REPO_DIR/systemd/shortener.socket"; then
    note_change "$SOCKET_DEST"; reload=1; SOCKET_UNIT_CHANGED=1
  fi
  if write_if_changed "$SOCKET_DROPIN" 0644 root:root <<EOF
# Managed by shortener deploy/deploy.sh: LISTEN_ADDR from $ENV_FILE.
# Edit LISTEN_ADDR there and re-run deploy.sh, which rewrites this file and
# restarts shortener.socket (and shortener.service) on the new address.
[Socket]
ListenStream=
ListenStream=$addr
EOF
  then
    note_change "$SOCKET_DROPIN (ListenStream=$addr)"; reload=1
  fi
  if ((reload)); then systemctl daemon-reload; fi
}

# ---- 9. migrations and the admin key
migrate_and_admin_key() {
  if ((EXTERNAL_DB)); then
    local db
    db=$(redact "$(env_get DATABASE_URL)")
    log "shortener migrate ($RELEASE) on $db"
    run_as_service "$RELEASE_BIN" migrate >&2 \
      || die "shortener migrate failed with $RELEASE on $db: is that PostgreSQL reachable from this host (address, port, firewall or security group) and are its user, password and database right? The current release and the running service were left as they were"
  else
    log "shortener migrate ($RELEASE)"
    run_as_service "$RELEASE_BIN" migrate >&2 || die "shortener migrate failed with $RELEASE; current release left as it was"
  fi
  if [[ -f $ADMIN_KEY_MARKER ]]; then
    return
  fi
  local out key
  # A shared database may have its admin key already: another instance's
  # first deploy made it, or it came with a copied installation.
  # (awk reads the whole list: grep -q could stop early and fail the pipe.)
  if ((EXTERNAL_DB)) && run_as_service "$RELEASE_BIN" keys list | awk '/^admin +sk_/ { f = 1 } END { exit !f }'; then
    log "the database already has an 'admin' key (another instance's first deploy, or a copied installation): not creating one"
    date -u +%FT%TZ >"$ADMIN_KEY_MARKER"
    chmod 0600 "$ADMIN_KEY_MARKER"
    return
  fi
  log "creating the admin API key (first deploy)"
  out=$(run_as_service "$RELEASE_BIN" keys create admin --admin) \
    || die "shortener keys create admin failed (an 'admin' key may already exist; touch $ADMIN_KEY_MARKER to skip)"
  key=$(tail -n 1 <<<"$out")
  [[ -n $key ]] || die "shortener keys create admin printed no key"
  date -u +%FT%TZ >"$ADMIN_KEY_MARKER"
  chmod 0600 "$ADMIN_KEY_MARKER"
  note_change "created admin API key"
  log "the admin API key is printed once below (stdout); it is not stored in clear anywhere: keep it now"
  printf 'ADMIN_API_KEY=%s\n' "$key"
}

# ---- 10. the current symlink
PREVIOUS=""   # release dir `current` pointed at before this run ("" = none)
switch_current() {   # switch_current TARGET_DIR
  local target=$1 tmp=$OPT_DIR/.current.tmp.$$
  ln -sfn "$target" "$tmp"
  mv -T "$tmp" "$CURRENT_LINK"
}

# ---- 12. health
health_base_url() {
  local addr host port
  addr=$(listen_addr)
  port=${addr##*:}
  host=${addr%:*}
  # A wildcard listener is reached through loopback.
  case $host in
    0.0.0.0|"") host=127.0.0.1 ;;
    "[::]") host="[::1]" ;;
  esac
  printf 'http://%s:%s' "$host" "$port"
}

# health_check: 0 once /health/ready (or /health where /health/ready is 404)
# answers 200, 1 after HEALTH_TIMEOUT seconds.
HEALTH_URL=""
health_check() {
  local base code deadline path=/health/ready
  base=$(health_base_url)
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$base$path" 2>/dev/null) || true
    if [[ $code == 404 && $path == /health/ready ]]; then
      log "$base/health/ready is 404 (older binary): checking /health instead"
      path=/health
      continue
    fi
    if [[ $code == 200 ]] && curl -fsS -o /dev/null --max-time 3 "$base$path" 2>/dev/null; then
      HEALTH_URL=$base$path
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "health check failed: $base$path answered '${code:-nothing}' for ${HEALTH_TIMEOUT}s"
      return 1
    fi
    sleep 1
  done
}

# record_socket: remember the address shortener.socket was started with, if
# it is up (deploy.sh's drop-in is what it read).
record_socket() {
  if systemctl is-active --quiet shortener.socket; then
    listen_addr >"$SOCKET_STATE"
    chmod 0644 "$SOCKET_STATE"
  fi
}

fingerprint() {
  printf '%s\n%s\n%s\n' "$(readlink "$CURRENT_LINK" 2>/dev/null || true)" \
    "$(sha256 "$UNIT_DEST")" "$(sha256 "$ENV_FILE")" | sha256sum | cut -d' ' -f1
}

record_good_state() {
  fingerprint >"$FINGERPRINT_FILE"
  chmod 0600 "$FINGERPRINT_FILE"
}

prune_releases() {
  local keep=$KEEP_RELEASES cur d n=0
  cur=$(readlink "$CURRENT_LINK" || true)
  # Newest first; always keep current and previous.
  while IFS= read -r d; do
    d=${d%/}
    [[ $d == "$cur" || $d == "$PREVIOUS" ]] && continue
    n=$((n + 1))
    if ((n > keep)); then
      rm -rf -- "$d"
      note_change "pruned old release $(basename "$d")"
    fi
  done < <(ls -1dt "$RELEASES_DIR"/*/ 2>/dev/null)
}

rollback_and_exit() {
  local why=$1
  log "ERROR: $why"
  journalctl -u shortener -n 30 --no-pager >&2 2>/dev/null || true
  if [[ -z $PREVIOUS || ! -x $PREVIOUS/$APP || $PREVIOUS == "$RELEASES_DIR/$RELEASE" ]]; then
    log "no previous release to roll back to; $CURRENT_LINK stays at $RELEASE"
    printf 'shortener %s: deploy FAILED (%s), no previous release to roll back to\n' "$RELEASE" "$why"
    exit 1
  fi
  log "rolling back: $CURRENT_LINK -> $PREVIOUS"
  switch_current "$PREVIOUS"
  # A crashing release may have used up the unit's start limit (and, with it,
  # failed the socket: systemd closes a socket whose service hit its start
  # limit). The restart below brings the socket back (Requires=).
  systemctl reset-failed shortener shortener.socket 2>/dev/null || true
  if systemctl restart shortener && health_check; then
    record_good_state
    log "rolled back to $(basename "$PREVIOUS"), healthy at $HEALTH_URL"
    printf 'shortener %s: deploy FAILED (%s); rolled back to %s, healthy\n' \
      "$RELEASE" "$why" "$(basename "$PREVIOUS")"
  else
    log "ERROR: the previous release $(basename "$PREVIOUS") is not healthy either"
    printf 'shortener %s: deploy FAILED (%s); rollback to %s is NOT healthy\n' \
      "$RELEASE" "$why" "$(basename "$PREVIOUS")"
  fi
  exit 1
}

main() {
  log "deploying $BINARY on $(hostname) ($(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"'))"
  plan_external
  install_packages
  ensure_user_and_dirs
  create_env_file          # before Redis: REDIS_PASSWORD / REDIS_MAXMEMORY live there
  if ((EXTERNAL_REDIS)); then no_local_redis; else configure_redis; fi
  configure_sysctl
  configure_limits
  install_release
  install_units
  migrate_and_admin_key

  PREVIOUS=$(readlink "$CURRENT_LINK" 2>/dev/null || true)
  local target=$RELEASES_DIR/$RELEASE
  if [[ $PREVIOUS != "$target" ]]; then
    switch_current "$target"
    note_change "current -> $RELEASE (was $(basename "${PREVIOUS:-nothing}"))"
  fi

  local u
  for u in shortener.socket shortener; do
    if ! systemctl is-enabled --quiet "$u"; then
      systemctl enable --quiet "$u"
      note_change "enabled $u"
    fi
  done

  # The socket first. Restarting it closes it (what waits in its backlog is
  # reset), so only when the address it listens on must change; Requires=
  # restarts the service with it, onto the new socket.
  local restarted=0 socket_started=0 listen listening_on why=""
  listen=$(listen_addr)
  listening_on=$(cat "$SOCKET_STATE" 2>/dev/null || true)
  if systemctl is-active --quiet shortener.socket; then
    if [[ $listening_on != "$listen" ]]; then
      log "restarting shortener.socket and shortener (LISTEN_ADDR ${listening_on:-unknown} -> $listen; connections waiting on the old socket are reset)"
      socket_started=1
      systemctl restart shortener.socket shortener.service \
        || { record_socket; rollback_and_exit "shortener.socket or shortener failed to restart with $RELEASE"; }
      restarted=1
      note_change "restarted shortener.socket (ListenStream=$listen)"
    elif ((SOCKET_UNIT_CHANGED)); then
      warn "$SOCKET_DEST changed, its address did not: the running socket keeps its old settings until 'systemctl restart shortener.socket' (which resets the connections waiting on it) or the next boot"
    fi
  else
    # First deploy, or a host deployed before shortener.socket existed, whose
    # running service binds LISTEN_ADDR itself: the socket can bind only once
    # that process is gone, and a restart of the service does it in that
    # order (its stop first, then the socket it requires, then the new process).
    socket_started=1
  fi
  if ((!restarted)); then
    if [[ $(cat "$FINGERPRINT_FILE" 2>/dev/null || true) != "$(fingerprint)" ]]; then
      why="binary, unit or env file changed"
    elif ((socket_started)); then
      why="shortener.socket is not listening"
    elif ! systemctl is-active --quiet shortener; then
      why="it is not running"
    fi
    if [[ -n $why ]]; then
      log "restarting shortener ($why)"
      systemctl restart shortener \
        || { record_socket; rollback_and_exit "shortener failed to start with $RELEASE"; }
      restarted=1
    fi
  fi
  if ((socket_started)); then record_socket; fi
  if ((restarted)); then note_change "restarted shortener"; fi

  if ! health_check; then
    if ((restarted)); then
      rollback_and_exit "health check failed after starting $RELEASE"
    fi
    printf 'shortener %s: UNHEALTHY (nothing was changed by this run)\n' "$RELEASE"
    exit 1
  fi
  record_good_state
  prune_releases

  # What the kernel actually gives the running process (see README: checks).
  local pid nofile
  pid=$(systemctl show -p MainPID --value shortener)
  if [[ $pid =~ ^[1-9][0-9]*$ && -r /proc/$pid/limits ]]; then
    nofile=$(awk '/^Max open files/ {print $4 "/" $5}' "/proc/$pid/limits")
    log "service pid $pid: nofile (soft/hard) $nofile; fs.file-max $(sysctl -n fs.file-max); fs.nr_open $(sysctl -n fs.nr_open)"
    # systemd silently clamps LimitNOFILE to its own hard limit (fs.nr_open on
    # a real host; whatever a container was started with).
    [[ $nofile == 1048576/1048576 ]] \
      || warn "the service runs with nofile $nofile, not 1048576/1048576: check fs.nr_open and PID 1's limit (cat /proc/1/limits)"
  fi

  if ((${#CHANGES[@]})); then
    log "done: ${#CHANGES[@]} change(s)"
    printf 'shortener %s: deployed, healthy at %s (%d changes, listed on stderr)\n' \
      "$RELEASE" "$HEALTH_URL" "${#CHANGES[@]}"
  else
    log "done: no change"
    printf 'shortener %s: no change, healthy at %s\n' "$RELEASE" "$HEALTH_URL"
  fi
}

main

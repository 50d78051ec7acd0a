#!/usr/bin/env bash
# 50,000 concurrent connections on this 2-core machine, the service beside nginx, in one run.
#
#   CONNS=50000 bash loadtest/c50k.sh        # steps 1000 10000 25000 50000 (~13 min, the whole machine)
#   CONNS=5000 STEPS="1000 5000" SAT_WINDOW=5 PEAK_WINDOW=8 bash loadtest/c50k.sh   # a quick one
#
# A process may hold at most 20,000 descriptors here, so the connections are spread over several
# processes on each side: SERVERS service processes sharing one inherited listening socket
# (loadtest/share_socket.py, each with a private socket of its own for its /metrics), nginx with
# SERVERS workers on one listening socket as the anchor, and OHA_PROCS oha processes. Everything
# runs in a private network namespace that this script creates (unshare --net), where the port
# range and the listen queues can be widened without touching the host's settings.
#
# At each step, for nginx and for the service: the saturating workload (each connection sends its
# next request when the answer arrives) and the design's peak (each connection one person who
# follows a link every PEAK_PERIOD s: oha -q at connections/PEAK_PERIOD). Each run is measured
# over a window that opens once the server side holds every connection. Writes
# loadtest/results/<UTC timestamp>-c50k/{report.md,results.json,chart.png} (raw/ is git-ignored)
# and prints the report's path on stdout; everything else goes to stderr. See loadtest/README.md.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
LT="$ROOT/loadtest"
LOG_TAG=c50k DIE_STATUS=1
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LT/common.sh"

# --- into a network namespace of our own ------------------------------------------------------
# The host's network settings are never written: the script re-executes itself under
# `unshare --net` (same pid, so Ctrl-C and kill reach the trap below), and refuses to change a
# sysctl unless its network namespace differs from the one it was started in.
if [[ -z "${C50K_HOST_NETNS:-}" ]]; then
  ((EUID == 0)) || die "needs root (unshare --net, sysctls inside the new namespace)"
  command -v unshare >/dev/null || die "unshare (util-linux) is required"
  C50K_HOST_NETNS=$(readlink /proc/self/ns/net)
  export C50K_HOST_NETNS
  exec unshare --net -- bash "$SELF" "$@"
fi
[[ "$(readlink /proc/self/ns/net)" != "$C50K_HOST_NETNS" ]] || die "not in a private network namespace; refusing to touch sysctls"

# --- knobs ------------------------------------------------------------------------------------
COMMAND="bash loadtest/c50k.sh"
for knob in CONNS STEPS SERVERS OHA_PROCS WORKLOADS TARGETS SAT_WINDOW PEAK_WINDOW SAT_RAMP PEAK_RAMP PEAK_PERIOD RAMP_GAP \
  LINKS KEEPALIVE_TIMEOUT_MS BACKLOG QUIET_WAIT QUIET_BUSY PROFILE SVC_THREADS WARM_EACH L1_TTL_MS NGINX_REUSEPORT; do
  if [[ -n "${!knob:-}" ]]; then
    if [[ "${!knob}" == *" "* ]]; then COMMAND="$knob='${!knob}' $COMMAND"; else COMMAND="$knob=${!knob} $COMMAND"; fi
  fi
done
CONNS=${CONNS:-50000}
if [[ -z "${STEPS:-}" ]]; then
  STEPS=""
  for s in 1000 10000 25000; do if ((s < CONNS)); then STEPS="$STEPS $s"; fi; done
  STEPS="${STEPS# } $CONNS"
  STEPS=${STEPS# }
fi
# The fewest processes that hold 50,000 connections under the 20,000-descriptor cap.
SERVERS=${SERVERS:-3}
OHA_PROCS=${OHA_PROCS:-4}
WORKLOADS=${WORKLOADS:-peak saturating}
TARGETS=${TARGETS:-nginx service}
PEAK_PERIOD=${PEAK_PERIOD:-10}
RAMP_GAP=${RAMP_GAP:-1}
SAT_WINDOW=${SAT_WINDOW:-12}
PEAK_WINDOW=${PEAK_WINDOW:-20}
# From the first oha's start to the window: oha opens its saturating connections at once; its
# peak connections one at each first request, so over one period after its own start.
SAT_RAMP=${SAT_RAMP:-$((RAMP_GAP * (OHA_PROCS - 1) + 10))}
PEAK_RAMP=${PEAK_RAMP:-$((RAMP_GAP * (OHA_PROCS - 1) + PEAK_PERIOD + 2))}
# The oha processes stop this long after the window's latest end: the closing snapshot takes a
# few seconds on a saturated machine (at 50,000: 7 s for the service, 12 s for nginx — `ss` over
# 100,000 sockets, and a scrape that waits in line like any request), and must see every
# connection still open. Under two seconds at the peak.
SAT_TAIL=20 PEAK_TAIL=8
LINKS=${LINKS:-100000}
# How long both servers keep an idle keep-alive connection: the service's default, well past the
# design's PEAK_PERIOD between one person's clicks.
KEEPALIVE_TIMEOUT_MS=${KEEPALIVE_TIMEOUT_MS:-75000}
BACKLOG=${BACKLOG:-65535}
QUIET_WAIT=${QUIET_WAIT:-5}
QUIET_BUSY=${QUIET_BUSY:-25}
KEEP_WORK=${KEEP_WORK:-0}
PROFILE=${PROFILE:-0}
# One tokio worker per process: the processes are already more than the cores (as nginx's
# workers are one thread each).
SVC_THREADS=${SVC_THREADS:-1}
# nginx's workers each on a listening socket of their own (reuseport): on one shared socket its
# accept mutex hands most new connections to one worker, which past its worker_connections
# fails them (11,232 errors at 50,000 with 3 workers).
NGINX_REUSEPORT=${NGINX_REUSEPORT:-1}
WARM_EACH=${WARM_EACH:-0}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

# --- processes we start, and their cleanup ------------------------------------------------------
SVC_PID="" NGINX_PID="" REDIS_PID="" WATCH_PID="" PERF_PID="" WORK=""
OHA_PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${OHA_PIDS[@]}"; do stop_pid "$pid"; done
  stop_pid "$WATCH_PID"
  stop_pid "$PERF_PID"
  stop_pid "$SVC_PID"
  stop_pid "$NGINX_PID"
  stop_pid "$REDIS_PID"
  remove_work "$rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ------------------------------------------------------------------------------------
for tool in python3 redis-server redis-cli curl ss ip sysctl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x "$NGINX" ]] || die "nginx is required (apt-get install nginx-light)"
BIN=${SHORTENER_BIN:-}
if [[ -z "$BIN" ]]; then
  log "building release: cargo build --release --bin shortener"
  (cd "$ROOT" && cargo build --release --bin shortener >&2)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shortener"
fi
[[ -x "$BIN" ]] || die "no shortener binary at $BIN"
find_oha install
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib for the chart"
  python3 -m pip install --quiet matplotlib >&2 || log "matplotlib could not be installed: no chart"
fi

# --- the namespace ----------------------------------------------------------------------------
ip link set lo up
sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
sysctl -qw net.core.somaxconn="$BACKLOG" net.ipv4.tcp_max_syn_backlog="$BACKLOG"
raise_fd_limit
NOFILE=$(ulimit -Sn)
PORT_RANGE=$(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)
log "network namespace $(readlink /proc/self/ns/net): lo up, ports $PORT_RANGE, somaxconn" \
  "$(cat /proc/sys/net/core/somaxconn), tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)," \
  "tcp_tw_reuse $(cat /proc/sys/net/ipv4/tcp_tw_reuse); $NOFILE descriptors per process"
read -r -a STEP_LIST <<<"$STEPS"
((OHA_PROCS >= 1 && OHA_PROCS <= 254)) || die "OHA_PROCS must be 1..254 (one loopback address each)"
for c in "${STEP_LIST[@]}"; do
  (((c + OHA_PROCS - 1) / OHA_PROCS + 500 <= NOFILE)) \
    || die "step $c: $((c / OHA_PROCS)) connections per oha process exceed the descriptor limit $NOFILE; raise OHA_PROCS"
  ((c <= SERVERS * (NOFILE - 500))) || die "step $c: more than $SERVERS service processes can hold; raise SERVERS"
done

# --- layout -----------------------------------------------------------------------------------
TS=$(date -u +%Y%m%dT%H%M%SZ)
RES=${RESULTS_DIR:-$LT/results/$TS-c50k}
[[ "$RES" == /* ]] || RES="$PWD/$RES"
RAW="$RES/raw"
mkdir -p "$RAW"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/c50k.XXXXXX")
cd "$WORK" # the service loads .env from its working directory and parents: none here
MANIFEST="$RAW/runs.jsonl"
: >"$MANIFEST"
log "results: $RES; work: $WORK; steps: $STEPS; $SERVERS servers, $OHA_PROCS oha processes"

port() { python3 "$LT/lt.py" freeport; }
REDIS_PORT=$(port)
NGINX_PORT=$(port)
NGINX_STATUS=$(port)

# --- redis and data ---------------------------------------------------------------------------
log "starting redis-server on 127.0.0.1:$REDIS_PORT (deploy/redis-shortener.conf)"
start_redis "$REDIS_PORT" "$WORK" "$WORK/redis.log" >/dev/null || die "redis did not start (see $WORK/redis.log)"
export DATABASE_URL="sqlite://$WORK/db.sqlite"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn} KEEPALIVE_TIMEOUT_MS
unset LISTEN_ADDR TOKIO_WORKER_THREADS

log "generating and importing $LINKS links (shortener links import)"
python3 "$LT/lt.py" gen --links "$LINKS" --cold 0 --zipf-samples 1 --out "$WORK" >/dev/null
"$BIN" links import "$WORK/links.csv" >"$RAW/import.txt" 2>"$WORK/import.log" || die "import failed: $(tail -5 "$WORK/import.log")"
log "$(cat "$RAW/import.txt")"

# --- the service: SERVERS processes on one inherited socket -------------------------------------
# Each copy also gets a private socket (LISTEN_FDS=2, LISTEN_FDNAMES=http:admin) so that its own
# /metrics can be read; the shell in between only sends the service's output to the log, and
# execs it (same pid, so LISTEN_PID still names it). The machine is shared: the launcher ignores
# SIGUSR1 (a rolling restart meant for someone else's launcher), and the binary runs under a name
# of its own (a symlink), so that a `pkill shortener` elsewhere does not stop these.
log "starting $SERVERS service processes on one shared socket (backlog $BACKLOG)"
ln -s "$BIN" "$WORK/c50k-service"
# SVC_THREADS sets tokio's worker threads per process (TOKIO_WORKER_THREADS, for the service
# only: oha reads the same variable); empty, the runtime's default, one per core.
# shellcheck disable=SC2016 # $0, $1 and $2 are the inner shell's
python3 "$LT/share_socket.py" --no-rolling --backlog "$BACKLOG" --pidfile "$WORK/svc.pids" --private 127.0.0.1:0 \
  0.0.0.0:0 "$SERVERS" -- sh -c 'if [ -n "$2" ]; then export TOKIO_WORKER_THREADS="$2"; fi; exec "$0" serve >>"$1" 2>&1' \
  "$WORK/c50k-service" "$WORK/service.log" "$SVC_THREADS" \
  >"$WORK/svc.addrs" 2>>"$WORK/launcher.log" &
SVC_PID=$!
for ((i = 0; i < 100; i++)); do
  [[ -f "$WORK/svc.addrs" && $(wc -l <"$WORK/svc.addrs") -gt $SERVERS ]] && break
  kill -0 "$SVC_PID" 2>/dev/null || die "share_socket.py failed (see $WORK/launcher.log)"
  sleep 0.1
done
SVC_PORT=$(head -n1 "$WORK/svc.addrs")
SVC_PORT=${SVC_PORT##*:}
SVC_ADDR="127.0.0.1:$SVC_PORT"
SVC_ADMIN=$(tail -n +2 "$WORK/svc.addrs" | paste -sd, -)
for a in ${SVC_ADMIN//,/ }; do
  for ((i = 0; i < 300; i++)); do
    curl -fso /dev/null "http://$a/health" && break
    kill -0 "$SVC_PID" 2>/dev/null || die "the service did not start (see $WORK/service.log)"
    sleep 0.1
  done
  curl -fso /dev/null "http://$a/health" || die "a service process does not answer on $a (see $WORK/service.log)"
done
python3 "$LT/lt.py" urls --codes "$WORK/hot.codes" --base "http://$SVC_ADDR" --out "$WORK/svc.urls"
python3 "$LT/lt.py" urls --codes "$WORK/hot.codes" --base "http://127.0.0.1:$NGINX_PORT" --out "$WORK/nginx.urls"
# HEAD requests: they fill the caches as GET does, and count no click (the flush of 100,000
# warm-up clicks per process landed in a later run's window and took 13% of the machine).
log "warming: every link once through the shared socket ($LINKS HEAD requests)"
python3 "$LT/lt.py" warm --method HEAD --urls "$WORK/svc.urls" >"$RAW/warm.json" || die "warm failed"
if [[ "$WARM_EACH" == 1 ]]; then
  # Every process's own L1 holds every link, as after a long peak: each link once more through
  # each process's private socket.
  i=0
  for a in ${SVC_ADMIN//,/ }; do
    python3 "$LT/lt.py" urls --codes "$WORK/hot.codes" --base "http://$a" --out "$WORK/svc$i.urls"
    log "warming process $i's L1 through $a ($LINKS HEAD requests)"
    python3 "$LT/lt.py" warm --method HEAD --urls "$WORK/svc$i.urls" >"$RAW/warm$i.json" || die "warm failed"
    i=$((i + 1))
  done
fi

# --- nginx: the anchor ------------------------------------------------------------------------
mkdir -p "$WORK/nginx"
NGINX_LISTEN_OPTS=""
if [[ "$NGINX_REUSEPORT" == 1 ]]; then NGINX_LISTEN_OPTS=" reuseport"; fi
cat >"$WORK/nginx.conf" <<EOF
# NGINX_REUSEPORT=1: a listening socket per worker; 0: one socket shared by the workers.
worker_processes $SERVERS;
worker_rlimit_nofile $((NOFILE - 100));
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events {
  worker_connections $((NOFILE - 200));
  # Accept every pending connection at each wakeup: with the default (one per event-loop turn)
  # busy workers took seconds to accept a few thousand new connections under the saturating load,
  # which left them in the backlog, established but not served. With the accept mutex, a worker
  # whose connections are 7/8 used stops taking new ones; without it one worker took more than its
  # worker_connections at 50,000 and closed keep-alive connections to make room ("reusing").
  multi_accept on;
  accept_mutex on;
}
http {
  access_log off;
  keepalive_timeout $((KEEPALIVE_TIMEOUT_MS / 1000))s;
  keepalive_requests 1000000000;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server {
    listen $NGINX_PORT backlog=$BACKLOG$NGINX_LISTEN_OPTS;
    location / {
      return 302 https://example.com/0?utm=x;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_STATUS;
    location = /status {
      stub_status;
    }
  }
}
EOF
log "starting nginx ($("$NGINX" -v 2>&1 | sed 's/.*: //'), $SERVERS workers) on 127.0.0.1:$NGINX_PORT"
"$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx.conf" >>"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
for ((i = 0; i < 100; i++)); do
  curl -fso /dev/null "http://127.0.0.1:$NGINX_STATUS/status" && break
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx did not start (see $WORK/nginx/error.log)"
  sleep 0.1
done
curl -fso /dev/null "http://127.0.0.1:$NGINX_PORT/x" || die "nginx does not answer (see $WORK/nginx/error.log)"

# What the servers cost with no client at all (timers, Redis probes, flushes), for comparison
# with the peak's CPU.
log "idle CPU of both servers (5 s, no client)"
python3 "$LT/c50k.py" idle-cpu --target service --pidfile "$WORK/svc.pids" >"$RAW/idle-cpu.service.json" &
python3 "$LT/c50k.py" idle-cpu --target nginx --nginx-master "$NGINX_PID" >"$RAW/idle-cpu.nginx.json"
wait $! || die "idle CPU measurement failed"

# --- one measured run -------------------------------------------------------------------------
now() { date +%s.%N; }
# measure TARGET WORKLOAD C [profile]: one run, its figures appended to MANIFEST. With
# "profile", an extra run instead: `perf record` samples the server's processes over the window
# (which perf slows down, so its figures go to a manifest of their own).
measure() {
  local target=$1 workload=$2 c=$3 profile=${4:-}
  local name="$workload.c$c.$target${profile:+.profile}" port admin urls ramp window tail rate="" t0 win_start win_end stop i n q quiet
  local manifest=$MANIFEST
  if [[ -n "$profile" ]]; then manifest="$RAW/profile-runs.jsonl"; fi
  if [[ $target == service ]]; then
    port=$SVC_PORT admin=$SVC_ADMIN urls="$WORK/svc.urls"
  else
    port=$NGINX_PORT admin="127.0.0.1:$NGINX_STATUS" urls="$WORK/nginx.urls"
  fi
  if [[ $workload == saturating ]]; then ramp=$SAT_RAMP window=$SAT_WINDOW tail=$SAT_TAIL; else ramp=$PEAK_RAMP window=$PEAK_WINDOW tail=$PEAK_TAIL; fi
  python3 "$LT/c50k.py" wait-idle --target "$target" --port "$port" --admin "$admin" >"$RAW/$name.idle.json"
  if ((QUIET_WAIT > 0)); then
    quiet=$(python3 "$LT/lt.py" quiet --max-wait "$QUIET_WAIT" --threshold "$QUIET_BUSY")
    [[ $quiet == *'"quiet": true'* ]] || log "machine busy ($quiet): measuring anyway"
  fi
  if [[ $workload == peak ]]; then rate=$((c / PEAK_PERIOD)); fi
  log "$name: $c connections over $OHA_PROCS oha processes${rate:+, $rate requests/s in all}; window ${window}s from ${ramp}s"
  # The watcher starts first (it must sample on time on a saturated machine, hence the
  # priority), then the oha processes RAMP_GAP apart, all stopping at the same moment.
  t0=$(python3 -c "print($(now) + 1.5)")
  win_start=$(python3 -c "print($t0 + $ramp)")
  win_end=$(python3 -c "print($t0 + $ramp + $window)")
  stop=$(python3 -c "print($t0 + $ramp + $window + $tail)")
  local watch_args=(--target "$target" --port "$port" --admin "$admin" --redis-pid "$REDIS_PID" --redis-port "$REDIS_PORT"
    --oha-pidfile "$WORK/$name.oha.pids" --expect "$c" --launched "$t0" --window-start "$win_start" --window "$window"
    --deadline "$win_end" --out "$RAW/$name.watch.json")
  if [[ $target == service ]]; then watch_args+=(--pidfile "$WORK/svc.pids"); else watch_args+=(--nginx-master "$NGINX_PID"); fi
  nice -n -10 python3 "$LT/c50k.py" watch "${watch_args[@]}" &
  WATCH_PID=$!
  python3 -c "import time; time.sleep(max(0, $t0 - time.time()))"
  OHA_PIDS=()
  local specs=()
  for ((i = 0; i < OHA_PROCS; i++)); do
    n=$((c / OHA_PROCS + (i < c % OHA_PROCS ? 1 : 0)))
    # Each oha process connects to a loopback address of its own (127.0.0.1+i; the servers listen
    # on all of them): connect() takes its local port from one parity of the range first, so
    # past about 32,000 connections to one address:port it scans that whole half for every new
    # connection, which stalled 50,000 connections at 32,000 and took most of the machine.
    local args=(--no-tui --output-format json -o "$RAW/$name.oha$i.json" --db-url "$WORK/$name.oha$i.db"
      -c "$n" -w -t 30s --connect-timeout 30s --urls-from-file "$urls"
      --connect-to "127.0.0.1:$port:127.0.0.$((i + 1)):$port")
    if [[ -n "$rate" ]]; then
      q=$(python3 -c "print(round($n / $PEAK_PERIOD, 3))")
      args+=(-q "$q")
    fi
    local launched ms
    launched=$(now)
    ms=$(python3 -c "print(int(($stop - $launched) * 1000))")
    "$OHA" "${args[@]}" -z "${ms}ms" >>"$WORK/oha.log" 2>&1 &
    OHA_PIDS+=($!)
    specs+=(--oha "$RAW/$name.oha$i.json,$WORK/$name.oha$i.db,$launched")
    if ((i + 1 < OHA_PROCS)); then sleep "$RAMP_GAP"; fi
  done
  printf '%s\n' "${OHA_PIDS[@]}" >"$WORK/$name.oha.pids"
  if [[ -n "$profile" ]]; then
    local pids
    if [[ $target == service ]]; then pids=$(paste -sd, "$WORK/svc.pids"); else pids=$(pgrep -d, -P "$NGINX_PID"); fi
    python3 -c "import time; time.sleep(max(0, $win_start - time.time()))"
    perf record -e cpu-clock -F 999 -p "$pids" -o "$RAW/$name.perf.data" -- sleep "$window" >"$RAW/$name.perf.log" 2>&1 &
    PERF_PID=$!
  fi
  local failed=0 pid
  for pid in "${OHA_PIDS[@]}"; do wait "$pid" || failed=1; done
  OHA_PIDS=()
  wait "$WATCH_PID" || die "the watcher failed for $name"
  WATCH_PID=""
  if [[ -n "$profile" ]]; then
    wait "$PERF_PID" || log "perf record failed (see $RAW/$name.perf.log)"
    PERF_PID=""
    perf report -i "$RAW/$name.perf.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' >"$RAW/$name.perf.txt" || true
    {
      echo "# perf record -e cpu-clock -F 999 -p <the $target's processes> over the window of: $workload, $c connections"
      echo "# flat profile (self time) by process, library and symbol; entries under 0.2% left out"
      awk '$1 + 0 >= 0.2' "$RAW/$name.perf.txt" | cut -c1-200 | head -n 150
    } >"$RES/profile-$workload.c$c.$target.txt"
    rm -f "$RAW/$name.perf.data"
  fi
  ((failed == 0)) || die "an oha process failed for $name (see $WORK/oha.log)"
  python3 "$LT/c50k.py" analyze --watch "$RAW/$name.watch.json" --target "$target" --workload "$workload" --c "$c" \
    ${rate:+--rate "$rate"} "${specs[@]}" >>"$manifest" || die "analysis failed for $name"
  rm -f "$WORK/$name".oha*.db
  python3 - "$manifest" >&2 <<'EOF'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
s, o, c, m = r["server"], r["oha"], r["cpu"], r["memory"]
print(f"    -> held {s['held']} (open {s['open_start']}->{s['open_end']}, ss {s['ss_min']}-{s['ss_max']}, "
      f"{s['accepted_in_window']} new; established after {r['established_after_s']} s); "
      f"{o['window_rps']} rps (server {s['rps']}), p50 {o['p50_ms']} p99 {o['p99_ms']} max {o['max_ms']} ms; "
      f"errors {o['errors']} non-3xx {o['non3xx']}; server CPU {c['server_pct']}% ({c['server_us_per_req']} us/req), "
      f"oha {c['oha_pct']}%, others {c['others_pct']}%; RSS {m['server_rss_mb']} MB, sockstat {m['sockstat_mem_mb']} MB, "
      f"total {m['total_mb']} MB")
EOF
}

# --- the runs ---------------------------------------------------------------------------------
# One workload through all the steps, then the other: the peak first, so that its memory is not
# what the allocators kept from saturating runs (where every connection holds a request in
# flight, and its buffers, at once), but what the peak itself needs, the steps in rising order.
read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
k=0
for workload in "${WORKLOAD_LIST[@]}"; do
  for c in "${STEP_LIST[@]}"; do
    # Alternate which server goes first, so that neither always gets the quieter slot.
    if ((k % 2 == 0)); then order=(nginx service); else order=(service nginx); fi
    k=$((k + 1))
    for target in "${order[@]}"; do
      if [[ " $TARGETS " == *" $target "* ]]; then measure "$target" "$workload" "$c"; fi
    done
  done
done

# PROFILE=1: where the CPU goes at the largest step, one extra run per server and workload under
# perf, after the measured ones.
if [[ "$PROFILE" == 1 ]]; then
  if command -v perf >/dev/null; then
    for workload in "${WORKLOAD_LIST[@]}"; do
      for target in service nginx; do
        if [[ " $TARGETS " == *" $target "* ]]; then measure "$target" "$workload" "${STEP_LIST[-1]}" profile; fi
      done
    done
  else
    log "PROFILE=1 but perf is not installed (apt-get install linux-perf): no profile"
  fi
fi

# --- report -----------------------------------------------------------------------------------
FD_WARNINGS=$(grep -c 'out of file descriptors' "$WORK/service.log" || true)
python3 "$LT/c50k.py" log-summary "$WORK/service.log" >"$RAW/service-log.json"
cat >"$RAW/meta.json" <<EOF
{"timestamp":"$TS","command":"$COMMAND","steps":"$STEPS","servers":$SERVERS,"oha_procs":$OHA_PROCS,
 "backlog":$BACKLOG,"somaxconn":$(cat /proc/sys/net/core/somaxconn),"port_range":"$PORT_RANGE","nofile":$NOFILE,
 "links":$LINKS,"keepalive_timeout_ms":$KEEPALIVE_TIMEOUT_MS,"nginx_reuseport":$NGINX_REUSEPORT,"warm_each":$WARM_EACH,"l1_ttl_ms":"${L1_TTL_MS:-}","peak_period":$PEAK_PERIOD,"ramp_gap":$RAMP_GAP,
 "sat_window":$SAT_WINDOW,"peak_window":$PEAK_WINDOW,"sat_ramp":$SAT_RAMP,"peak_ramp":$PEAK_RAMP,
 "nproc":$(nproc),"kernel":"$(uname -r)","oha":"$("$OHA" --version)","nginx_version":"$("$NGINX" -v 2>&1 | sed 's/.*: //')",
 "redis":"$(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/')","fd_warnings":$FD_WARNINGS,
 "shortener":"$("$BIN" --version)","svc_threads":"$SVC_THREADS"}
EOF
python3 "$LT/c50k.py" report --manifest "$MANIFEST" --meta "$RAW/meta.json" --out "$RES"
log "report: $RES/report.md"
echo "$RES/report.md"

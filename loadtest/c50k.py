#!/usr/bin/env python3
"""Helpers for loadtest/c50k.sh (stdlib only, plus matplotlib for the chart).

Subcommands:
  wait-idle   wait until a server holds no client connection (server side and `ss`), bounded
  watch       during one measured run: wait until the expected connections are established,
              snapshot, hold a window while sampling `ss`, snapshot again; JSON to --out
  analyze     one run's figures from its watch file and its oha outputs (JSON summary for the
              whole run, SQLite rows for the window); one JSON line on stdout
  report      report.md, results.json and chart.png from all runs' lines

Server-side figures come from the servers themselves: for the service, each process' own
`/metrics` on its private socket (`shortener_connections_open`, `..._accepted_total`,
`shortener_http_requests_total`); for nginx, `stub_status` on a port of its own. Each scrape is a
fresh connection, counted and taken out again (one open connection and one accept per scrape).
"""

import argparse
import json
import math
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lt  # noqa: E402  (proc_stat, machine_ticks, redis_info, tcp_counters)

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- reading the machine ------------------------------------------------------------------------

def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _stat_fields(path):
    with open(path) as f:
        data = f.read()
    return data[data.rindex(")") + 2 :].split()  # [0] is field 3 (state)


def procs(pids):
    """Per pid still alive: utime and stime ticks (fields 14, 15 of /proc/PID/stat), VmRSS, Pss,
    threads, and context switches summed over its threads (voluntary: it waited for something,
    e.g. epoll; involuntary: it was preempted)."""
    out = []
    for pid in pids:
        try:
            f = _stat_fields(f"/proc/{pid}/stat")
            rss = threads = 0
            with open(f"/proc/{pid}/status") as st:
                for line in st:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            vol = invol = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/status") as st:
                        for line in st:
                            if line.startswith("voluntary_ctxt_switches:"):
                                vol += int(line.split()[1])
                            elif line.startswith("nonvoluntary_ctxt_switches:"):
                                invol += int(line.split()[1])
                except OSError:
                    pass
        except (OSError, ValueError, IndexError):
            continue
        utime, stime = int(f[11]), int(f[12])
        out.append({"pid": pid, "ticks": utime + stime, "utime": utime, "stime": stime, "rss_kb": rss,
                    "pss_kb": pss_kb(pid), "threads": threads, "ctxt_vol": vol, "ctxt_invol": invol})
    return out


def children_of(ppid):
    """Pids whose parent is ppid (nginx's workers)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(")") + 2 :].split()[1]) == ppid:
            kids.append(int(d))
    return sorted(kids)


def sockstat():
    """/proc/net/sockstat of this network namespace: {"TCP": {"inuse": .., "mem": pages, ..}, ..}."""
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            name, _, rest = line.partition(":")
            vals = rest.split()
            out[name] = {vals[i]: int(vals[i + 1]) for i in range(0, len(vals) - 1, 2)}
    return out


def snmp_tcp():
    with open("/proc/net/snmp") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("Tcp:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            keys = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab", "RetransSegs", "InErrs")
            return {k: int(row.get(k, 0)) for k in keys}
    return {}


def ss_established(port, memory=False, side="sport"):
    """Established TCP sockets whose local port (side="sport": the server's end of each
    connection) or remote port ("dport": the clients' ends) is `port`; with memory=True also the
    sum of their skmem fields (bytes)."""
    args = ["ss", "-Htn"] + (["-m"] if memory else []) + ["state", "established", f"( {side} = :{port} )"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if not memory:
        return {"count": sum(1 for line in out.splitlines() if line.strip())}
    mem = {"r": 0, "t": 0, "f": 0, "w": 0, "o": 0, "bl": 0}
    count = 0
    for m in re.finditer(r"skmem:\(([^)]*)\)", out):
        count += 1
        for part in m.group(1).split(","):
            k = part.rstrip("0123456789")
            if k in mem:
                mem[k] += int(part[len(k):])
    # What the sockets have charged to TCP's memory accounting (sockstat "mem"): queued receive
    # data, queued send data and the forward allocation each keeps.
    mem["charged"] = mem["r"] + mem["w"] + mem["f"]
    return {"count": count, "skmem": mem}


# --- reading the servers ------------------------------------------------------------------------

class Scraper:
    """Server-side connection and request counters, per target; counts its own connections."""

    def __init__(self, target, admins):
        self.target = target
        self.admins = admins  # service: one private addr per process; nginx: the status addr
        self.scrapes = [0] * len(admins)

    def _get(self, i, path):
        self.scrapes[i] += 1
        with urllib.request.urlopen(f"http://{self.admins[i]}{path}", timeout=30) as r:
            return r.read().decode()

    def read(self):
        if self.target == "service":
            per = []
            for i in range(len(self.admins)):
                text = self._get(i, "/metrics")
                m = {"requests": 0, "redirects": 0, "cache": {}}
                for line in text.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    name, _, value = line.rpartition(" ")
                    v = float(value)
                    if name == "shortener_connections_open":
                        m["open"] = int(v) - 1  # this scrape's own connection
                    elif name == "shortener_connections_accepted_total":
                        m["accepted"] = int(v)
                    elif name.startswith("shortener_http_requests_total{"):
                        m["requests"] += int(v)
                        st = re.search(r'status="(\d+)"', name)
                        if st and 300 <= int(st.group(1)) < 400:
                            m["redirects"] += int(v)
                    elif name.startswith("shortener_cache_lookups_total{"):
                        m["cache"][re.search(r'tier="([a-z0-9_]+)"', name).group(1)] = int(v)
                    elif name == "shortener_l1_entries":
                        m["l1_entries"] = int(v)
                m["scrapes"] = self.scrapes[i]
                per.append(m)
            tot = {"open": sum(p["open"] for p in per), "accepted": sum(p["accepted"] for p in per),
                   "requests": sum(p["requests"] for p in per), "redirects": sum(p["redirects"] for p in per),
                   "scrapes": sum(self.scrapes)}
            tiers = {}
            for p in per:
                for k, v in p["cache"].items():
                    tiers[k] = tiers.get(k, 0) + v
            tot["cache"] = tiers
            return {"total": tot, "per_process": per}
        text = self._get(0, "/status")
        # Active connections: N / server accepts handled requests / A H R / Reading: x Writing: y Waiting: z
        nums = [int(x) for x in re.findall(r"\d+", text)]
        active, accepts, handled, requests, reading, writing, waiting = nums[:7]
        # This scrape is one active connection, one accept and one request (counted before it
        # is answered).
        return {"total": {"open": active - 1, "accepted": accepts, "handled": handled, "requests": requests,
                          "redirects": None, "scrapes": self.scrapes[0],
                          "reading": reading, "writing": writing - 1, "waiting": waiting}}


def server_pids(args):
    if args.target == "service":
        with open(args.pidfile) as f:
            return [int(x) for x in f.read().split()]
    return [args.nginx_master] + children_of(args.nginx_master)


def snapshot(args, scraper, memory=False):
    """Everything about the servers at one moment. The CPU counters first, then the connection
    counts, and the slower reads (memory of every socket) last: on a saturated machine the whole
    snapshot takes seconds, and must be over before the clients stop."""
    s = {"t": time.time()}
    s["server_procs"] = procs(server_pids(args))
    if args.redis_pid:
        s["redis_proc"] = procs([args.redis_pid])
    s["oha_procs"] = procs(args.oha_pids)
    s["machine"] = lt.machine_ticks()
    s["ss"] = ss_established(args.port)
    # The counters are read when the server answers, which on a saturated machine is seconds
    # after `t`: the server's rates use the scrape's own midpoint.
    t_ask = time.time()
    s["server"] = scraper.read()
    s["t_server"] = (t_ask + time.time()) / 2
    s["tcp"] = snmp_tcp()
    s["tcpext"] = lt.tcp_counters()
    s["sockstat"] = sockstat()
    if args.redis_pid and args.redis_port:
        mem = lt.redis_info(args.redis_port, "memory")
        s["redis"] = {"used_memory": int(mem["used_memory"]), "used_memory_rss": int(mem["used_memory_rss"])}
    if memory:
        full = ss_established(args.port, memory=True)
        s["ss"]["skmem"], s["ss"]["count_with_memory"] = full["skmem"], full["count"]
        s["ss_clients"] = ss_established(args.port, memory=True, side="dport")
    s["t_done"] = time.time()
    return s


def admins_of(args):
    if args.target == "service":
        return [a for a in args.admin.split(",") if a]
    return [args.admin]


def cmd_wait_idle(args):
    """Waits (at most --max-wait s) until the server holds no client connection."""
    scraper = Scraper(args.target, admins_of(args))
    t0 = time.monotonic()
    while True:
        open_ = scraper.read()["total"]["open"]
        n = ss_established(args.port)["count"]
        if (open_ <= 0 and n == 0) or time.monotonic() - t0 > args.max_wait:
            print(json.dumps({"open": open_, "ss": n, "waited_s": round(time.monotonic() - t0, 1)}))
            return
        time.sleep(0.5)


def cmd_idle_cpu(args):
    """The server processes' CPU while no client is connected, over --seconds."""
    pids = server_pids(args)
    a, ma, t0 = procs(pids), lt.machine_ticks(), time.time()
    time.sleep(args.seconds)
    b, mb, t1 = procs(pids), lt.machine_ticks(), time.time()
    before = {p["pid"]: p for p in a}
    ticks = sum(p["ticks"] - before[p["pid"]]["ticks"] for p in b if p["pid"] in before)
    vol = sum(p["ctxt_vol"] + p["ctxt_invol"] - before[p["pid"]]["ctxt_vol"] - before[p["pid"]]["ctxt_invol"]
              for p in b if p["pid"] in before)
    print(json.dumps({"target": args.target, "seconds": round(t1 - t0, 2),
                      "server_pct": round(100 * ticks / ((t1 - t0) * CLK_TCK * NCPU), 3),
                      "ctxt_switches_per_s": round(vol / (t1 - t0)),
                      "machine_busy_pct": round(100 * (mb["busy"] - ma["busy"]) / max(1, mb["total"] - ma["total"]), 1),
                      "rss_mb": round(sum(p["rss_kb"] for p in b) / 1024, 1)}))


def cmd_log_summary(args):
    """The service's warnings and errors (JSON log lines), counted by level and message."""
    counts = {}
    with open(args.log, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            level = str(rec.get("level", "?")).upper()
            if level not in ("WARN", "ERROR"):
                continue
            msg = (rec.get("fields") or {}).get("message") or rec.get("message") or "?"
            key = f"{level}: {msg}"
            counts[key] = counts.get(key, 0) + 1
    print(json.dumps(dict(sorted(counts.items(), key=lambda kv: -kv[1]))))


def cmd_watch(args):
    args.oha_pids = []
    scraper = Scraper(args.target, admins_of(args))
    out = {"target": args.target, "expect": args.expect, "ramp": []}
    t_launch = args.launched
    reached_at = None
    # 1. The ramp: until the window is due and every connection is established on the server
    # side (as the server counts them and as `ss` sees them). When that comes late the window
    # shrinks, to half at least; never reached, that half is measured and the run is not "held".
    while True:
        now = time.time()
        srv = scraper.read()["total"]["open"]
        n = ss_established(args.port)["count"]
        out["ramp"].append({"t": round(now - t_launch, 2), "open": srv, "ss": n})
        if reached_at is None and srv >= args.expect and n >= args.expect:
            reached_at = now
        if reached_at is not None and now >= args.window_start and os.path.exists(args.oha_pidfile):
            break
        if now >= args.deadline - args.window / 2 and os.path.exists(args.oha_pidfile):
            break
        time.sleep(0.5)
    out["established_after_s"] = None if reached_at is None else round(reached_at - t_launch, 2)
    out["reached"] = reached_at is not None
    # 2. The window.
    with open(args.oha_pidfile) as f:  # written once every oha process has started
        args.oha_pids = [int(x) for x in f.read().split()]
    a = snapshot(args, scraper)
    end = min(a["t"] + args.window, args.deadline)
    samples = []
    while True:
        left = end - time.time()
        if left <= 0:
            break
        time.sleep(min(args.sample, left))
        if end - time.time() < 0.3:
            break
        samples.append({"t": round(time.time() - t_launch, 2), "ss": ss_established(args.port)["count"]})
    b = snapshot(args, scraper, memory=True)
    out.update(window_start=a["t"], window_end=b["t"], launched=t_launch, a=a, b=b, samples=samples)
    with open(args.out, "w") as f:
        json.dump(out, f)


# --- one run's figures --------------------------------------------------------------------------

def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    # nearest rank
    k = min(len(sorted_vals), max(1, math.ceil(p / 100 * len(sorted_vals))))
    return sorted_vals[k - 1]


def cmd_analyze(args):
    w = json.load(open(args.watch))
    a, b = w["a"], w["b"]
    secs = b["t"] - a["t"]
    run = {"target": args.target, "workload": args.workload, "c": args.c, "rate": args.rate,
           "oha_procs": len(args.oha), "window_s": round(secs, 2), "reached": w["reached"],
           "established_after_s": w["established_after_s"],
           "closing_snapshot_s": round(b["t_done"] - b["t"], 2) if "t_done" in b else None}
    # oha, whole run (errors and statuses) and the window (latency, rps): each oha's rows are in
    # seconds from its own start, which is its launch time within a few milliseconds. The window
    # holds the requests that ended in it: its throughput, and their latencies. (Counting only
    # those that both started and ended in it would leave out about one latency's worth: a third
    # of a 5 s window at 1.5 s latencies.)
    durations, in_window, non3xx_window = [], 0, 0
    status, errors, answered, whole_secs, bytes_ = {}, {}, 0, 0.0, []
    for spec in args.oha:
        js, db, launched = spec.split(",")
        o = json.load(open(js))
        for k, v in o.get("statusCodeDistribution", {}).items():
            status[k] = status.get(k, 0) + v
            answered += v
        for k, v in o.get("errorDistribution", {}).items():
            errors[k] = errors.get(k, 0) + v
        whole_secs = max(whole_secs, o["summary"]["total"])
        if o["summary"].get("sizePerRequest") is not None:
            bytes_.append(o["summary"]["sizePerRequest"])
        w0, w1 = a["t"] - float(launched), b["t"] - float(launched)
        con = sqlite3.connect(db)
        rows = con.execute("SELECT duration, status FROM oha WHERE end > ? AND end <= ?", (w0, w1)).fetchall()
        con.close()
        durations += [r[0] for r in rows]
        in_window += len(rows)
        non3xx_window += sum(1 for r in rows if not 300 <= r[1] < 400)
    durations.sort()
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    run["oha"] = {
        "window_requests": in_window, "window_rps": round(in_window / secs, 1) if secs else None,
        "p50_ms": ms(percentile(durations, 50)), "p99_ms": ms(percentile(durations, 99)),
        "max_ms": ms(durations[-1] if durations else None), "window_non3xx": non3xx_window,
        "answered": answered, "status": status, "errors": sum(errors.values()), "error_kinds": errors,
        "non3xx": sum(v for k, v in status.items() if not 300 <= int(k) < 400),
        "whole_run_s": round(whole_secs, 2), "bytes_per_answer": round(sum(bytes_) / len(bytes_)) if bytes_ else None,
    }
    # Server side.
    sa, sb = a["server"]["total"], b["server"]["total"]
    scrapes = sb["scrapes"] - sa["scrapes"]
    req = sb["requests"] - sa["requests"] - (scrapes if args.target == "nginx" else 0)
    server_secs = b.get("t_server", b["t"]) - a.get("t_server", a["t"])
    ss_samples = [s["ss"] for s in w["samples"]] + [a["ss"]["count"], b["ss"]["count"]]
    run["server"] = {
        "open_start": sa["open"], "open_end": sb["open"],
        "ss_start": a["ss"]["count"], "ss_end": b["ss"]["count"], "ss_min": min(ss_samples), "ss_max": max(ss_samples),
        # New connections during the window, less the scrapes' own.
        "accepted_in_window": sb["accepted"] - sa["accepted"] - scrapes,
        "passive_opens_in_window": b["tcp"]["PassiveOpens"] - a["tcp"]["PassiveOpens"] - scrapes,
        "estab_resets_in_window": b["tcp"]["EstabResets"] - a["tcp"]["EstabResets"],
        "requests": req, "rps": round(req / server_secs, 1) if server_secs > 0 else None,
        "scrape_s": round(server_secs, 2),
    }
    if args.target == "service":
        run["server"]["redirects"] = sb["redirects"] - sa["redirects"]
        run["server"]["per_process_open"] = [p["open"] for p in b["server"]["per_process"]]
        run["server"]["cache"] = {k: v - sa["cache"].get(k, 0) for k, v in sb["cache"].items()}
    else:
        run["server"]["per_process_open"] = None
    # The same processes at both ends of the window (none crashed, restarted or respawned).
    same = {p["pid"] for p in a["server_procs"]} == {p["pid"] for p in b["server_procs"]}
    run["server"]["same_processes"] = same
    held = (w["reached"] and same and min(ss_samples) >= args.c and sa["open"] >= args.c and sb["open"] >= args.c
            and run["server"]["accepted_in_window"] <= 0)
    run["server"]["held"] = bool(held)
    # CPU over the window.
    def ticks(key, snap):
        return sum(p["ticks"] for p in snap.get(key, []))

    def by_pid(key):
        before = {p["pid"]: p["ticks"] for p in a.get(key, [])}
        return sum(p["ticks"] - before.get(p["pid"], p["ticks"]) for p in b.get(key, []))

    wall_ticks = secs * CLK_TCK * NCPU
    srv_ticks = by_pid("server_procs")
    redis_ticks = by_pid("redis_proc") if "redis_proc" in b else 0
    oha_ticks = by_pid("oha_procs")
    mach = b["machine"]["busy"] - a["machine"]["busy"]
    mach_total = b["machine"]["total"] - a["machine"]["total"]
    pct = lambda t: round(100 * t / wall_ticks, 2) if wall_ticks else None  # noqa: E731
    # Requests answered over the CPU counters' span (the window): the server's own count at its
    # rate between the scrapes, or oha's.
    answered_window = req / server_secs * secs if req > 0 and server_secs > 0 else in_window
    run["cpu"] = {
        "server_pct": pct(srv_ticks), "redis_pct": pct(redis_ticks), "oha_pct": pct(oha_ticks),
        "machine_busy_pct": round(100 * mach / mach_total, 1) if mach_total else None,
        "others_pct": round(100 * max(0, mach - srv_ticks - redis_ticks - oha_ticks) / mach_total, 1) if mach_total else None,
        "server_us_per_req": round(srv_ticks / CLK_TCK / answered_window * 1e6, 2) if answered_window else None,
        "server_redis_us_per_req": round((srv_ticks + redis_ticks) / CLK_TCK / answered_window * 1e6, 2)
        if answered_window else None,
        "per_process_pct": [pct(p["ticks"] - next((q["ticks"] for q in a["server_procs"] if q["pid"] == p["pid"]), p["ticks"]))
                            for p in b["server_procs"]],
    }
    delta = lambda key, field: sum(  # noqa: E731
        p[field] - next((q[field] for q in a[key] if q["pid"] == p["pid"]), p[field]) for p in b[key])
    utime, stime = delta("server_procs", "utime"), delta("server_procs", "stime")
    run["cpu"]["server_user_pct"], run["cpu"]["server_sys_pct"] = pct(utime), pct(stime)
    vol, invol = delta("server_procs", "ctxt_vol"), delta("server_procs", "ctxt_invol")
    run["cpu"]["ctxt_switches_per_req"] = round((vol + invol) / answered_window, 2) if answered_window else None
    run["cpu"]["ctxt_switches_per_s"] = round((vol + invol) / secs) if secs else None
    # Memory at the end of the window.
    tcp = b["sockstat"].get("TCP", {})
    rss = sum(p["rss_kb"] for p in b["server_procs"]) * 1024
    pss = sum(p["pss_kb"] or 0 for p in b["server_procs"]) * 1024
    redis_rss = sum(p["rss_kb"] for p in b.get("redis_proc", [])) * 1024
    sock_mem = tcp.get("mem", 0) * PAGE
    mb = lambda v: round(v / 2**20, 1)  # noqa: E731
    run["memory"] = {
        "server_rss_mb": mb(rss), "server_pss_mb": mb(pss),
        "per_process_rss_mb": [mb(p["rss_kb"] * 1024) for p in b["server_procs"]],
        "redis_rss_mb": mb(redis_rss) if args.target == "service" else None,
        "redis_used_memory_mb": mb(b["redis"]["used_memory"]) if "redis" in b and args.target == "service" else None,
        "sockstat_tcp": tcp, "sockstat_mem_mb": mb(sock_mem),
        "server_sockets_charged_mb": mb(b["ss"]["skmem"]["charged"]),
        "client_sockets_charged_mb": mb(b["ss_clients"]["skmem"]["charged"]) if "ss_clients" in b else None,
        "total_mb": mb(rss + (redis_rss if args.target == "service" else 0) + sock_mem),
    }
    tx = {k: b["tcpext"].get(k, 0) - a["tcpext"].get(k, 0) for k in b["tcpext"]}
    run["tcpext_window"] = tx
    print(json.dumps(run))


# --- the report ---------------------------------------------------------------------------------

def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def targets(runs, top):
    """The issue's targets, at the largest step `top`, as (label, measured, bound, ok)."""
    get = lambda t, wl: next((r for r in runs if r["target"] == t and r["workload"] == wl and r["c"] == top), None)  # noqa: E731
    out = []
    for wl in ("saturating", "peak"):
        for t in ("service", "nginx"):
            who = t if t == "service" else "nginx (the anchor, for comparison)"
            r = get(t, wl)
            if not r:
                out.append((f"{wl}, {who}: {top:,} connections established and held", "not measured", "", None))
                continue
            s = r["server"]
            held = (f"{s['open_start']:,} → {s['open_end']:,} open (server's count), `ss` {s['ss_min']:,}–{s['ss_max']:,}, "
                    f"{s['accepted_in_window']:,} new in the window")
            out.append((f"{wl}, {who}: {top:,} connections established and held", held, f"{top:,}, 0 new", s["held"]))
            o = r["oha"]
            out.append((f"{wl}, {who}: errors / non-3xx (whole run)", f"{o['errors']:,} / {o['non3xx']:,}", "0 / 0",
                        o["errors"] == 0 and o["non3xx"] == 0))
    s, n = get("service", "saturating"), get("nginx", "saturating")
    if s and n:
        rr = ratio(s["oha"]["window_rps"], n["oha"]["window_rps"])
        out.append((f"saturating at {top:,}: service rps / nginx rps",
                    f"{fmt(s['oha']['window_rps'])} / {fmt(n['oha']['window_rps'])} = {rr:.2f}×", "≥ 1.00×", rr >= 1.0))
        pr = ratio(s["oha"]["p99_ms"], n["oha"]["p99_ms"])
        out.append((f"saturating at {top:,}: service p99 / nginx p99",
                    f"{fmt(s['oha']['p99_ms'], 1)} / {fmt(n['oha']['p99_ms'], 1)} ms = {pr:.2f}×", "≤ 1.25×", pr <= 1.25))
    p = get("service", "peak")
    if p:
        cpu = p["cpu"]["server_pct"]
        out.append((f"peak at {top:,}: service CPU (% of the machine)",
                    f"{cpu:.1f}% ({p['cpu']['server_us_per_req']} µs/request; with redis-server "
                    f"{p['cpu']['server_pct'] + p['cpu']['redis_pct']:.1f}%)", "≤ 10%", cpu <= 10))
        m = p["memory"]
        out.append((f"peak at {top:,}: service + Redis + kernel sockets (MB)",
                    f"{m['server_rss_mb']:.0f} + {m['redis_rss_mb']:.0f} + {m['sockstat_mem_mb']:.0f} = {m['total_mb']:.0f}",
                    "≤ 350", m["total_mb"] <= 350))
    return out


def per_idle_conn(runs, target):
    """(bytes of server RSS, of the total) per connection between the smallest and largest peak steps."""
    pk = sorted((r for r in runs if r["target"] == target and r["workload"] == "peak"), key=lambda r: r["c"])
    if len(pk) < 2:
        return None
    lo, hi = pk[0], pk[-1]
    dc = hi["server"]["open_end"] - lo["server"]["open_end"]
    if dc <= 0:
        return None
    per = lambda k: round((hi["memory"][k] - lo["memory"][k]) * 2**20 / dc)  # noqa: E731
    return {"from": lo["c"], "to": hi["c"], "server_rss": per("server_rss_mb"), "server_pss": per("server_pss_mb"),
            "sockstat": per("sockstat_mem_mb"), "server_sockets_charged": per("server_sockets_charged_mb"),
            "total": per("total_mb")}


def chart(runs, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    styles = {("service", "saturating"): "o-", ("nginx", "saturating"): "s-",
              ("service", "peak"): "o--", ("nginx", "peak"): "s--"}
    colors = {"service": "tab:blue", "nginx": "tab:orange"}
    for (t, wl), style in styles.items():
        rs = sorted((r for r in runs if r["target"] == t and r["workload"] == wl), key=lambda r: r["c"])
        if not rs:
            continue
        cs = [r["c"] for r in rs]
        label = f"{t}, {wl}"
        axes[0].plot(cs, [r["oha"]["window_rps"] for r in rs], style, color=colors[t], label=label)
        axes[1].plot(cs, [r["oha"]["p99_ms"] for r in rs], style, color=colors[t], label=label)
        axes[2].plot(cs, [r["memory"]["total_mb"] for r in rs], style, color=colors[t], label=label)
    titles = ("Redirects per second (window)", "p99 latency (window)",
              "Memory: server RSS (+ Redis) + kernel TCP")
    for ax, title, y in zip(axes, titles, ("req/s", "ms", "MB")):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(y)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(bottom=0)
    axes[2].axhline(350, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "chart.png"), dpi=100)
    return True


def profile_section(raw, results):
    """PROFILE=1: the profiled runs' samples by category (report.py's), as µs per request."""
    path = os.path.join(raw, "profile-runs.jsonl")
    if not os.path.exists(path):
        return []
    import report  # loadtest/report.py: the categories run.sh's profiles use

    # Two more categories in front of report.py's: the service's allocator is mimalloc (report.py
    # counts glibc's malloc only), and nginx's own code.
    report.PROFILE_CATEGORIES = [
        ("malloc/free (mimalloc)", lambda c, d, sym: d == "shortener" and (sym.startswith("_mi_") or sym.startswith("mi_"))),
        ("nginx (its own code)", lambda c, d, sym: d == "nginx"),
    ] + [cat for cat in report.PROFILE_CATEGORIES if not cat[0].startswith("malloc/free (m")]
    prof_runs = [json.loads(line) for line in open(path) if line.strip()]
    cols = []
    for r in prof_runs:
        listing = os.path.join(raw, f"{r['workload']}.c{r['c']}.{r['target']}.profile.perf.txt")
        if not os.path.exists(listing):
            continue
        cats = report.read_profile(listing)
        total = sum(cats.values()) or 1
        cols.append((r, {k: v * 100 / total for k, v in cats.items()}))
    if not cols:
        return []
    results["profiles"] = [{"run": f"{r['workload']}.c{r['c']}.{r['target']}", "cpu_us_per_req": r["cpu"]["server_us_per_req"],
                            "server_pct": r["cpu"]["server_pct"], "categories_pct": {k: round(v, 2) for k, v in c.items()}}
                           for r, c in cols]
    names = sorted({k for _, c in cols for k in c}, key=lambda k: -max(c.get(k, 0) for _, c in cols))
    md = ["## Where the CPU goes (PROFILE=1)\n",
          "One extra run per server and workload at the largest step, with `perf record -e cpu-clock -F 999` on its processes "
          "over the window (perf's own cost makes these runs a little dearer than the measured ones, whose figures are "
          "above). Samples are put in the categories `loadtest/report.py` uses and turned into µs per request with the "
          "profiled run's own CPU per request. `finish_task_switch` / `_raw_spin_unlock_irq*` are where cpu-clock "
          "samples land after the kernel switched tasks (waking up, going to sleep). Flat listings: "
          + ", ".join(f"[profile-{r['workload']}.c{r['c']}.{r['target']}.txt](profile-{r['workload']}.c{r['c']}.{r['target']}.txt)"
                      for r, _ in cols) + ".\n"]
    md.append("| category | " + " | ".join(f"{r['target']}, {r['workload']} at {r['c']:,} (µs/request; % of samples)"
                                          for r, _ in cols) + " |")
    md.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for k in names:
        cells = []
        for r, c in cols:
            pct = c.get(k, 0)
            us = (r["cpu"]["server_us_per_req"] or 0) * pct / 100
            cells.append(f"{us:.1f} ({pct:.1f}%)" if pct else "–")
        md.append(f"| {k} | " + " | ".join(cells) + " |")
    md.append("| **total (the profiled run)** | " + " | ".join(
        f"**{fmt(r['cpu']['server_us_per_req'], 1)}** ({fmt(r['cpu']['server_pct'], 1)}% of the machine)" for r, _ in cols) + " |")
    md.append("")
    return md


def cmd_report(args):
    runs = [json.loads(line) for line in open(args.manifest) if line.strip()]
    meta = json.load(open(args.meta))
    top = max(r["c"] for r in runs) if runs else 0
    tg = targets(runs, top)
    idle = {t: per_idle_conn(runs, t) for t in ("service", "nginx")}
    results = {"meta": meta, "runs": runs,
               "targets": [{"target": a, "measured": b, "bound": c, "met": d} for a, b, c, d in tg],
               "memory_per_idle_connection_bytes": idle}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    has_chart = chart(runs, args.out)

    md = [f"# 50,000 concurrent connections on one 2-core machine: {meta['timestamp']}\n"]
    md.append(
        f"Command: `{meta['command']}`. Steps: {meta['steps']} connections; {meta['servers']} service processes on one "
        f"inherited listening socket (`loadtest/share_socket.py`, backlog {meta['backlog']}) against nginx "
        f"{meta['nginx_version']} with {meta['servers']} workers "
        + ("each on a listening socket of its own (`reuseport`, the kernel spreading connections over them evenly; on "
           "one shared socket nginx's accept mutex overfills one worker at 50,000)"
           if meta.get('nginx_reuseport') else "on one listening socket they share (no `reuseport`)")
        + f", the same backlog, answering `return 302`; the same {meta['oha_procs']} oha processes "
        f"({meta['oha']}) for both, started {meta['ramp_gap']} s apart. Everything ran in a private network "
        f"namespace (loopback only; `ip_local_port_range` {meta['port_range']}, somaxconn and tcp_max_syn_backlog "
        f"{meta['somaxconn']}); per-process descriptor limit {meta['nofile']}. Redis {meta['redis']} with the "
        f"production settings (200 MB, allkeys-lru), {meta['links']:,} links imported with `shortener links import`, "
        f"each requested once before the runs"
        + (" through the shared socket, then once through each service process (every process's L1 holds every link)"
           if meta.get('warm_each') else "")
        + f". Service ({meta.get('shortener', '')}): tokio worker threads per process: "
        f"{meta.get('svc_threads') or 'the default (one per core)'}"
        + (f", `L1_TTL_MS={meta['l1_ttl_ms']}`" if meta.get('l1_ttl_ms') else "")
        + f", the other settings at their defaults (`KEEPALIVE_TIMEOUT_MS={meta['keepalive_timeout_ms']}`); nginx: "
        f"`keepalive_timeout {meta['keepalive_timeout_ms'] // 1000}s`, `keepalive_requests` unbounded. Machine: {meta['nproc']} "
        f"cores, kernel {meta['kernel']}, shared with other work (column \"others\").\n")
    md.append(
        "Workloads: **saturating**: every connection sends its next request as soon as the answer arrives. "
        f"**Peak** (the design's): each connection is a person with a session open who follows a link about every "
        f"{meta['peak_period']} s: oha `-q` at connections/{meta['peak_period']} in total, split over the oha processes, "
        "keep-alive; oha opens each connection at its first request, so the connections all exist once one period has "
        "passed. Each run is measured over a window that starts only once the server side holds every connection "
        f"(saturating: {meta['sat_window']} s from {meta['sat_ramp']} s after the first oha started; peak: "
        f"{meta['peak_window']} s from {meta['peak_ramp']} s); errors and non-3xx are counted over the whole run, "
        "ramp included.\n")

    md.append("## Targets\n")
    md.append("| target | measured | bound | |\n| --- | --- | --- | --- |")
    for label, measured, bound, ok in tg:
        verdict = "not measured" if ok is None else ("met" if ok else "**not met**")
        md.append(f"| {label} | {measured} | {bound} | {verdict} |")
    md.append("")
    md.append(
        "\"Held\": at the start and the end of the window the server counts at least that many open connections "
        "(the sum of `shortener_connections_open` over the processes, or nginx's `stub_status` active "
        "connections, less the scrape), `ss` counts that many established sockets on the server's port at every "
        "sample of the window, and the server accepted no new connection during it (so none was closed and "
        "reopened). Memory: the service processes' RSS summed (shared pages counted in each; PSS beside it), "
        "redis-server's RSS, and `/proc/net/sockstat` TCP `mem` of the namespace — which holds the client ends "
        "too, so it bounds the server's share from above (the server sockets' own share, from `ss -m`, is in "
        "the tables).\n")

    def table(wl):
        rows = sorted((r for r in runs if r["workload"] == wl), key=lambda r: (r["c"], r["target"] != "service"))
        if not rows:
            return
        md.append(f"## {wl.capitalize()}\n")
        md.append("| connections | server | open at the window's end: server's count (per process) / `ss` min–max "
                  "over the window | new in the window | redirects/s: oha / server's count | p50 / p99 / max (ms) | "
                  "errors / non-3xx (whole run) |")
        md.append("| ---: | --- | --- | ---: | --- | --- | --- |")
        for r in rows:
            s, o = r["server"], r["oha"]
            est = f"{s['open_end']:,}"
            if s.get("per_process_open"):
                est += f" ({' + '.join(f'{x:,}' for x in s['per_process_open'])})"
            est += f" / {s['ss_min']:,}–{s['ss_max']:,}" + ("" if s["held"] else " (**not held**)")
            if not s.get("same_processes", True):
                est += " (**server processes changed during the window**)"
            rate = "" if r["rate"] is None else f" (oha −q {r['rate']:,} in all)"
            md.append(
                f"| {r['c']:,} | {r['target']} | {est} | {s['accepted_in_window']:,} | {fmt(o['window_rps'])} / "
                f"{fmt(s['rps'])}{rate} | {fmt(o['p50_ms'], 2)} / {fmt(o['p99_ms'], 2)} / {fmt(o['max_ms'], 1)} | "
                f"{o['errors']:,} / {o['non3xx']:,} |")
        md.append("")
        md.append("| connections | server | server CPU, % of the machine (user + sys) | per process | µs/request | "
                  "context switches/request | Redis CPU % | oha / others CPU % | server RSS / PSS (MB) | Redis RSS (MB) | "
                  "kernel TCP mem, sockstat (MB; server / client ends by `ss -m`) | total (MB) |")
        md.append("| ---: | --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |")
        for r in rows:
            c, m = r["cpu"], r["memory"]
            md.append(
                f"| {r['c']:,} | {r['target']} | {fmt(c['server_pct'], 2)} ({fmt(c.get('server_user_pct'), 2)} + "
                f"{fmt(c.get('server_sys_pct'), 2)}) | {', '.join(fmt(x, 2) for x in c['per_process_pct'])} | "
                f"{fmt(c['server_us_per_req'], 1)} | {fmt(c.get('ctxt_switches_per_req'), 1)} | "
                f"{fmt(c['redis_pct'], 2) if r['target'] == 'service' else '–'} | {fmt(c['oha_pct'], 0)} / "
                f"{fmt(c['others_pct'], 0)} | {fmt(m['server_rss_mb'], 1)} / {fmt(m['server_pss_mb'], 1)} | "
                f"{fmt(m['redis_rss_mb'], 1)} | {fmt(m['sockstat_mem_mb'], 1)} ({fmt(m['server_sockets_charged_mb'], 1)} / "
                f"{fmt(m.get('client_sockets_charged_mb'), 1)}) | {fmt(m['total_mb'], 0)} |")
        md.append("")

    table("saturating")
    table("peak")
    if has_chart:
        md.append("![rps, p99 and memory against connections](chart.png)\n")

    md.append("## Memory per idle connection\n")
    md.append("From the peak runs (connections idle between requests), between the smallest and the largest step: "
              "Δ memory / Δ connections held by the server.\n")
    md.append("| server | steps | RSS (all processes) | PSS | sockstat TCP mem (both ends) | server sockets (`ss -m`) | total |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for t, d in idle.items():
        if d:
            md.append(f"| {t} | {d['from']:,} → {d['to']:,} | {d['server_rss']:,} B | {d['server_pss']:,} B | "
                      f"{d['sockstat']:,} B | {d['server_sockets_charged']:,} B | {d['total']:,} B |")
    md.append("")

    md.append("## Where it goes\n")
    idle_cpu = {}
    for t in ("service", "nginx"):
        pth = os.path.join(os.path.dirname(args.manifest), f"idle-cpu.{t}.json")
        if os.path.exists(pth):
            idle_cpu[t] = json.load(open(pth))
    if idle_cpu:
        md.append("With no client connected (before the runs): " + "; ".join(
            f"{t} {d['server_pct']:.2f}% of the machine, {d['ctxt_switches_per_s']:,} context switches/s, "
            f"RSS {d['rss_mb']} MB" for t, d in idle_cpu.items()) + ".\n")
        results["idle_cpu"] = idle_cpu
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    for r in sorted(runs, key=lambda r: (r["workload"], r["c"], r["target"])):
        if r["c"] != top:
            continue
        m, c = r["memory"], r["cpu"]
        md.append(
            f"- {r['workload']}, {r['target']} at {r['c']:,}: per-process RSS "
            f"{', '.join(fmt(x, 1) for x in m['per_process_rss_mb'])} MB; per-process CPU "
            f"{', '.join(fmt(x, 1) for x in c['per_process_pct'])}% of the machine; sockstat TCP {m['sockstat_tcp']}; "
            f"machine {fmt(c['machine_busy_pct'], 0)}% busy (oha {fmt(c['oha_pct'], 0)}%, others "
            f"{fmt(c['others_pct'], 0)}%); TcpExt during the window {r['tcpext_window']}"
            + (f"; cache lookups in the window {r['server']['cache']}" if r["server"].get("cache") else "")
            + (f"; service log: {meta['fd_warnings']} \"out of file descriptors\" lines over the whole run"
               if r["target"] == "service" and "fd_warnings" in meta else ""))
    md.append("")
    logsum = os.path.join(os.path.dirname(args.manifest), "service-log.json")
    if os.path.exists(logsum):
        counts = json.load(open(logsum))
        results["service_log"] = counts
        md.append("The service's log over the whole run (warnings and errors, by message): " + (
            "; ".join(f"{v:,} × {k}" for k, v in list(counts.items())[:8]) if counts else "none") + ".\n")
    md += profile_section(os.path.dirname(args.manifest), results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md.append("Raw oha outputs and the server-side samples of every run are in `raw/` (not committed).\n")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(md))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def server_args(sp):
        sp.add_argument("--target", choices=("service", "nginx"), required=True)
        sp.add_argument("--port", type=int, required=True, help="the port the clients connect to")
        sp.add_argument("--admin", required=True, help="service: the processes' private addrs, comma-separated; "
                        "nginx: its stub_status addr")

    wi = sub.add_parser("wait-idle")
    server_args(wi)
    wi.add_argument("--max-wait", type=float, default=60)
    w = sub.add_parser("watch")
    server_args(w)
    w.add_argument("--pidfile", help="service: share_socket.py's pidfile")
    w.add_argument("--nginx-master", type=int)
    w.add_argument("--redis-pid", type=int)
    w.add_argument("--redis-port", type=int)
    w.add_argument("--oha-pidfile", required=True, help="the oha processes' pids, written once all have started")
    w.add_argument("--expect", type=int, required=True)
    w.add_argument("--launched", type=float, required=True, help="epoch seconds the first oha started")
    w.add_argument("--window-start", type=float, required=True, help="epoch seconds")
    w.add_argument("--window", type=float, required=True)
    w.add_argument("--deadline", type=float, required=True, help="epoch seconds the oha processes stop")
    w.add_argument("--sample", type=float, default=2.0)
    w.add_argument("--out", required=True)
    ls = sub.add_parser("log-summary")
    ls.add_argument("log")
    ic = sub.add_parser("idle-cpu")
    ic.add_argument("--target", choices=("service", "nginx"), required=True)
    ic.add_argument("--pidfile")
    ic.add_argument("--nginx-master", type=int)
    ic.add_argument("--seconds", type=float, default=5)
    an = sub.add_parser("analyze")
    an.add_argument("--watch", required=True)
    an.add_argument("--target", required=True)
    an.add_argument("--workload", required=True)
    an.add_argument("--c", type=int, required=True)
    an.add_argument("--rate", type=int)
    an.add_argument("--oha", action="append", required=True, help="JSON,DB,LAUNCH_EPOCH of one oha process")
    r = sub.add_parser("report")
    r.add_argument("--manifest", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    args = p.parse_args()
    {"wait-idle": cmd_wait_idle, "idle-cpu": cmd_idle_cpu, "log-summary": cmd_log_summary, "watch": cmd_watch, "analyze": cmd_analyze, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()

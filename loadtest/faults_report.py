#!/usr/bin/env python3
"""Helpers for loadtest/faults.sh (stdlib only; the ones shared with loadtest/run.sh come from
loadtest/lt.py).

Subcommands:
  freeport   print a free TCP port on 127.0.0.1 below the ephemeral range (lt.py)
  gen        write links.csv ("code,url") and an oha URL file for N codes f000000, f000001, ...
  warm       request every URL of a file once (pipelined keep-alive), check every answer is 3xx
             (lt.py)
  snap       snapshot /health/cache and /health/redis of the service as JSON
  timeline   per-second figures of one phase from oha's --db-url records
  table      turn the run manifest into a Markdown table (stdout and --out); exit 1 when any
             phase saw a non-3xx answer or a client error
"""

import argparse
import json
import sys
import time
from datetime import datetime
import urllib.error
import urllib.request

import lt


def cmd_gen(args):
    width = max(6, len(str(args.links - 1)))
    with open(args.csv, "w") as csv, open(args.urls, "w") as urls:
        for i in range(args.links):
            code = f"f{i:0{width}d}"
            csv.write(f"{code},https://example.com/fault/{i}?src=faults\n")
            urls.write(f"{args.base.rstrip('/')}/{code}\n")


def _get_json(url, timeout):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.load(r)
        return body, round((time.monotonic() - started) * 1000, 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        return {"fetch_error": str(e)}, round((time.monotonic() - started) * 1000, 1)


def cmd_snap(args):
    base = args.base.rstrip("/")
    cache, cache_ms = _get_json(base + "/health/cache", args.timeout)
    redis, redis_ms = _get_json(base + "/health/redis", args.timeout)
    out = {"time": time.time(), "cache": cache, "cache_ms": cache_ms, "redis": redis, "redis_ms": redis_ms}
    with open(args.out, "w") as f:
        json.dump(out, f)


def cmd_timeline(args):
    """Per-second figures of one oha phase from its --db-url database (every answered request)."""
    import sqlite3

    db = sqlite3.connect(args.db)
    per = {}
    bad = []
    for start, duration, status in db.execute("SELECT start, duration, status FROM oha ORDER BY start"):
        sec = int(start)
        b = per.setdefault(sec, {"d": [], "non3xx": {}})
        b["d"].append(duration)
        if not 300 <= status < 400:
            b["non3xx"][str(status)] = b["non3xx"].get(str(status), 0) + 1
            if len(bad) < 50:
                bad.append({"start": round(start, 4), "duration": round(duration, 4), "status": status})
    seconds = []
    for sec in sorted(per):
        d = sorted(per[sec]["d"])
        n = len(d)
        seconds.append(
            {
                "t": sec,
                "n": n,
                "p50": d[n // 2],
                "p99": d[min(n - 1, int(n * 0.99))],
                "max": d[-1],
                "non3xx": per[sec]["non3xx"],
            }
        )
    with open(args.out, "w") as f:
        json.dump({"seconds": seconds, "first_non3xx": bad}, f)


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _delta(a, b, *keys):
    try:
        for k in keys:
            a, b = a[k], b[k]
        return b - a
    except (KeyError, TypeError):
        return None


def _ms(v):
    if v is None:
        return "–"
    return f"{v * 1000:.1f}" if v < 10 else f"{v * 1000:.0f}"


def _fmt(v):
    return "–" if v is None else f"{v:,}"


def _dist(d):
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items())) if d else "0"


def read_log(path):
    """The service's JSON log lines as (epoch seconds, level, message, line)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
                    out.append((ts, rec.get("level", "?"), rec.get("message", ""), line.rstrip()))
                except (ValueError, KeyError, TypeError):
                    out.append((None, "?", line.strip(), line.rstrip()))
    except OSError:
        pass
    return out


def breaker_in(log, a, b):
    """(times opened, seconds open) of the Redis breaker within [a, b], from its log lines."""
    state, since, opened, open_s = "closed", a, 0, 0.0
    for ts, _lvl, msg, _ in log:
        if ts is None or ts > b:
            break
        kind = "open" if "breaker open" in msg else "closed" if "breaker closed" in msg else None
        if kind is None:
            continue
        if ts < a:
            state = kind
            continue
        if kind == "open" and state != "open":
            opened += 1
            state, since = "open", ts
        elif kind == "closed" and state == "open":
            open_s += ts - since
            state = "closed"
    if state == "open":
        open_s += b - max(since, a)
    return opened, open_s


def phase_row(entry, log):
    oha = _load(entry["oha"]) or {}
    start, end = _load(entry["start"]) or {}, _load(entry["end"]) or {}
    summary = oha.get("summary", {})
    statuses = {str(k): v for k, v in (oha.get("statusCodeDistribution") or {}).items()}
    errors = oha.get("errorDistribution") or {}
    requests = sum(statuses.values())
    non3xx = {k: v for k, v in statuses.items() if not k.startswith("3")}
    pct = oha.get("latencyPercentiles") or {}
    breaker = (end.get("redis") or {}).get("breaker") or (end.get("cache") or {}).get("redis_breaker") or "?"
    t0, t1 = entry.get("t0"), entry.get("t1")
    opened, open_s = breaker_in(log, t0, t1) if t0 and t1 else (None, None)
    return {
        "run": entry["run"],
        "phase": entry["phase"],
        "redis": entry["redis"],
        "t0": t0,
        "t1": t1,
        "fault": entry.get("fault"),
        "fault_at": entry.get("fault_at"),
        "timeline": _load(entry.get("timeline") or ""),
        "requests": requests,
        "rps": summary.get("requestsPerSec"),
        "p50": pct.get("p50"),
        "p99": pct.get("p99"),
        "max": summary.get("slowest"),
        "non3xx": sum(non3xx.values()),
        "non3xx_detail": non3xx,
        "client_errors": sum(errors.values()),
        "client_errors_detail": errors,
        "redis_hits": _delta(start, end, "cache", "redis_hits"),
        "db_lookups": _delta(start, end, "cache", "db_lookups"),
        "redis_timeouts": _delta(start, end, "redis", "timeouts"),
        "redis_errors": _delta(start, end, "redis", "errors"),
        "breaker_opened": opened,
        "breaker_open_s": open_s,
        "breaker": breaker,
        "oha_ok": bool(oha),
    }


def cmd_table(args):
    with open(args.manifest) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    meta = _load(args.meta) or {}
    logs = {run: read_log(path) for run, path in (meta.get("logs") or {}).items()}
    rows = [phase_row(e, logs.get(e["run"], [])) for e in entries]
    out = []
    w = out.append
    l1 = str(meta.get("l1_capacity"))
    w(f"# Fault runs — {meta.get('timestamp', '?')}")
    w("")
    w(
        f"`{meta.get('command', 'bash loadtest/faults.sh')}`: oha c={meta.get('conc')}, "
        f"{meta.get('duration')} s per run in three phases of {meta.get('phase')} s, "
        f"{meta.get('links', 0):,} links picked at random per request, redirects not followed, request "
        f"timeout {meta.get('req_timeout')}. Service: **L1_CAPACITY={l1}**"
        + (" (L1 off, so every redirect goes to Redis or SQLite and Redis really matters)" if l1 == "0" else "")
        + f", REDIS_TIMEOUT_MS={meta.get('redis_timeout_ms')}, otherwise defaults. "
        f"{meta.get('nproc')} cores shared by oha, the service and Redis; {meta.get('oha')}, Redis {meta.get('redis')}. "
        + (
            f"Binary built from commit {meta.get('commit', '?')}"
            + (f" with uncommitted changes to {meta['modified']}" if meta.get("modified") else "")
            + ("" if str(meta.get("skip_build")) != "1" else " (SKIP_BUILD=1: the binary may be older)")
            + "."
        )
    )
    w("")
    w(
        f"Run *kill*: `kill -9` Redis {meta.get('fault_delay')} s into the *during* phase, restart it (same port "
        f"and flags; it comes back empty: no persistence) {meta.get('fault_delay')} s into the *after* phase. "
        f"Run *stop*: `SIGSTOP` and `SIGCONT` at the same moments. Each run starts the service afresh against a "
        f"fresh Redis warmed with every code once."
    )
    w("")
    w(
        "| run | phase | Redis | requests | rps | p50 ms | p99 ms | max ms | non-3xx | client errors "
        "| Δ redis_hits | Δ db_lookups | Δ Redis timeouts / errors | breaker opened (open s) | breaker at end |"
    )
    w("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in rows:
        rps = "–" if r["rps"] is None else f"{r['rps']:,.0f}"
        to_err = f"{_fmt(r['redis_timeouts'])} / {_fmt(r['redis_errors'])}"
        br = "–" if r["breaker_opened"] is None else f"{r['breaker_opened']} ({r['breaker_open_s']:.1f})"
        w(
            f"| {r['run']} | {r['phase']} | {r['redis']} | {r['requests']:,} | {rps} | {_ms(r['p50'])} "
            f"| {_ms(r['p99'])} | {_ms(r['max'])} | {r['non3xx']:,} | {r['client_errors']:,} "
            f"| {_fmt(r['redis_hits'])} | {_fmt(r['db_lookups'])} | {to_err} | {br} | {r['breaker']} |"
        )
    w("")
    w(
        "Δ columns are differences of the service's `/health/cache` and `/health/redis` counters over the "
        "phase; *breaker opened (open s)* counts the breaker's open transitions in the service log within the "
        "phase and how long it stayed open; *breaker at end* is `/health/redis` right after the phase."
    )

    # Seconds around each fault, from oha's per-request records.
    around = [r for r in rows if r["fault_at"] and r["timeline"] and r["t0"]]
    if around:
        w("")
        w("Around each fault (per second of oha time; second 0 holds the signal):")
        w("")
        w("| run | event | second | requests | p50 ms | p99 ms | max ms | non-3xx |")
        w("|---|---|--:|--:|--:|--:|--:|--:|")
        for r in around:
            at = r["fault_at"] - r["t0"]
            secs = {b["t"]: b for b in r["timeline"]["seconds"]}
            for k in range(-1, 4):
                b = secs.get(int(at) + k)
                if not b:
                    continue
                bad = sum(b["non3xx"].values())
                w(
                    f"| {r['run']} | {r['fault']} at {at:.2f} s | {k:+d} | {b['n']:,} | {_ms(b['p50'])} "
                    f"| {_ms(b['p99'])} | {_ms(b['max'])} | {bad:,} |"
                )

    w("")
    for run in sorted({r["run"] for r in rows}):
        code = (meta.get("service_exit") or {}).get(run)
        if code is not None:
            w(f"- run *{run}*: the service then stopped on SIGTERM with exit code {code}.")
    failures = [r for r in rows if r["non3xx"] or r["client_errors"] or not r["oha_ok"]]
    if not failures:
        w("")
        w("Result: **0 non-3xx answers and 0 client errors** in every phase of every run.")
    else:
        w("")
        w("**FAILED**: the target is 0 non-3xx answers and 0 client errors in every phase.")
        w("")
        for r in failures:
            if not r["oha_ok"]:
                w(f"- {r['run']}/{r['phase']}: no oha result")
                continue
            w(
                f"- {r['run']}/{r['phase']}: non-3xx {_dist(r['non3xx_detail'])}; "
                f"client errors {_dist(r['client_errors_detail'])}"
            )
            tl = r["timeline"]
            if tl:
                hot = [b for b in tl["seconds"] if b["non3xx"]]
                for b in hot[:10]:
                    w(
                        f"  - second {b['t']} of the phase: {_dist(b['non3xx'])} of {b['n']:,} answers; "
                        f"p99 {_ms(b['p99'])} ms, max {_ms(b['max'])} ms"
                    )
                if hot and r["t0"]:
                    a = r["t0"] + hot[0]["t"] - 1
                    z = r["t0"] + hot[-1]["t"] + 2
                    near = [x for x in logs.get(r["run"], []) if x[0] and a <= x[0] <= z]
                    if near:
                        w(f"  - service log from 1 s before to 1 s after those seconds ({len(near)} lines):")
                        w("")
                        w("    ```")
                        shown = near if len(near) <= 16 else near[:8] + near[-8:]
                        for i, x in enumerate(shown):
                            if len(near) > 16 and i == 8:
                                w(f"    … {len(near) - 16} lines …")
                            w("    " + x[3])
                        w("    ```")
                        w("")
    others = {}
    for run, log in logs.items():
        for _ts, lvl, msg, _ in log:
            if lvl in ("WARN", "ERROR") and "breaker" not in msg:
                others.setdefault(run, {}).setdefault(msg, 0)
                others[run][msg] += 1
    for run, msgs in others.items():
        w(f"- other warnings in the *{run}* run's service log: " + "; ".join(f"{m} ×{n}" for m, n in msgs.items()))
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        for r in rows:
            r.pop("timeline", None)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    sys.exit(1 if failures else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("freeport").set_defaults(fn=lt.cmd_freeport, below_ephemeral=True)
    g = sub.add_parser("gen")
    g.add_argument("--links", type=int, required=True)
    g.add_argument("--base", required=True)
    g.add_argument("--csv", required=True)
    g.add_argument("--urls", required=True)
    g.set_defaults(fn=cmd_gen)
    wm = sub.add_parser("warm")
    wm.add_argument("--urls", required=True)
    wm.add_argument("--conns", type=int, default=8)
    wm.add_argument("--pipeline", type=int, default=200)
    wm.set_defaults(fn=lt.cmd_warm)
    s = sub.add_parser("snap")
    s.add_argument("--base", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--timeout", type=float, default=10)
    s.set_defaults(fn=cmd_snap)
    tl = sub.add_parser("timeline")
    tl.add_argument("--db", required=True)
    tl.add_argument("--out", required=True)
    tl.set_defaults(fn=cmd_timeline)
    t = sub.add_parser("table")
    t.add_argument("--manifest", required=True)
    t.add_argument("--meta", required=True)
    t.add_argument("--out")
    t.add_argument("--json")
    t.set_defaults(fn=cmd_table)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()

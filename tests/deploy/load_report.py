#!/usr/bin/env python3
"""Reads what one run under load left (tests/deploy/run.sh, under_load) and prints KEY=VALUE lines.

usage: load_report.py OHA_JSON JOURNAL T0 PROBES...

OHA_JSON  oha's --output-format json report
JOURNAL   `journalctl -u shortener -o cat` since shortly before the action: the service's JSON
          log lines (anything else is skipped)
T0        when the action began (seconds since the epoch)
PROBES    files of "START CONNECTED END RESULT" lines, one per probe (a fresh connection):
          START before connect(), CONNECTED once it returned, END once the status line was read
          (or not); RESULT is the HTTP status, `refused` or `noanswer`

The gap is the time no process accepted on the socket: from the old process's "stopped
accepting" (the first after T0) to the first "listening" on inherited sockets after it, both
by the service's own timestamps (journald stamps a line when it reads it, late under load).
A probe was carried across the switch when it connected before the new process listened
(CONNECTED) and was answered after that (END): the old process, which exits before the new
one starts, cannot have answered it, so it waited in the backlog for the new one. Each prober
has one such probe at least (it is blocked on it through the gap); those whose connect()
also began after the old process stopped accepting (START) connected during the gap proper.
Probes that connected shortly before "stopped accepting" may be carried too: under load the
old process's accept loop is behind.
"""

import json
import sys
from datetime import datetime


def epoch(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def main():
    oha_json, journal, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
    out = {}

    try:
        r = json.load(open(oha_json))
        codes = r.get("statusCodeDistribution", {})
        errors = r.get("errorDistribution", {})
        lat = r.get("latencyPercentiles", {})
        s = r["summary"]
        out.update(
            requests=sum(codes.values()),
            rps=f"{s['requestsPerSec']:.0f}",
            p50_ms=f"{(lat.get('p50') or 0) * 1000:.1f}",
            p99_ms=f"{(lat.get('p99') or 0) * 1000:.1f}",
            max_ms=f"{(s.get('slowest') or 0) * 1000:.0f}",
            codes=json.dumps(codes, sort_keys=True, separators=(",", ":")),
            errors=json.dumps(errors, sort_keys=True, separators=(",", ":")),
            non3xx=sum(v for k, v in codes.items() if not k.startswith("3")),
        )
    except (OSError, ValueError, KeyError) as e:
        out.update(oha_report=f"unreadable:{type(e).__name__}")

    events = []
    for line in open(journal, errors="replace"):
        try:
            j = json.loads(line)
            events.append((epoch(j["timestamp"]), j.get("message", ""), j.get("listen.inherited")))
        except (ValueError, KeyError, TypeError):
            continue
    t_stop = next((t for t, m, _ in events if t >= t0 and m.startswith("shutdown: stopped accepting")), None)
    t_exit = t_listen = None
    if t_stop is not None:
        t_exit = next((t for t, m, _ in events if t >= t_stop and m == "shut down gracefully"), None)
        t_listen = next((t for t, m, i in events if t >= t_stop and m == "listening" and (i or 0) >= 1), None)
    if t_stop is not None and t_listen is not None:
        out["gap_ms"] = round((t_listen - t_stop) * 1000)
    if t_stop is not None and t_exit is not None:
        out["drain_ms"] = round((t_exit - t_stop) * 1000)

    probes, bad, in_gap, carried, waits = 0, [], 0, 0, []
    for path in sys.argv[4:]:
        for line in open(path):
            parts = line.split()
            if len(parts) != 4:
                bad.append("malformed:" + "_".join(parts))
                continue
            start, connected, end, result = float(parts[0]), float(parts[1]), float(parts[2]), parts[3]
            probes += 1
            if result != "302":
                bad.append(f"{start:.3f}:{result}")
            elif t_listen is not None and connected < t_listen < end:
                carried += 1
                waits.append(end - connected)
                if t_stop is not None and t_stop <= start:
                    in_gap += 1
    out.update(probes=probes, bad_probes=",".join(bad[:5]) or "none", carried=carried, in_gap=in_gap)
    if waits:
        out["carried_max_wait_ms"] = round(max(waits) * 1000)

    for k, v in out.items():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()

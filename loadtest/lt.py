#!/usr/bin/env python3
"""Helpers for loadtest/run.sh, and the module loadtest/faults_report.py takes its shared ones
from (stdlib only).

Subcommands:
  freeport                 print a free TCP port on 127.0.0.1 (--below-ephemeral: one that no
                           outgoing connection can take)
  gen                      write the links CSV and the code lists the scenarios draw from
  urls                     turn a code list into an oha URL file for one server
  bodies                   write POST bodies (one distinct URL per line) for oha -Z
  warm                     request every URL of a file exactly once (pipelined), check 3xx
  quiet                    wait until the machine's CPU is mostly idle (bounded)
  rusage                   run a command (oha) and record the CPU time it used
  snap                     snapshot a server process (CPU ticks, RSS) and optionally Redis and
                           /health/cache, as JSON on stdout
  idle                     open idle keep-alive connections in steps and read the server's RSS
"""

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import sys
import time
import urllib.request

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port(below_ephemeral=False):
    """A free TCP port on 127.0.0.1. With below_ephemeral, one below the ephemeral range: a server
    that is killed and restarted on the same port (Redis in faults.sh) would otherwise find it
    taken meanwhile by an outgoing connection (the load generator's)."""
    if not below_ephemeral:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    lo, hi = (10000, low - 1) if low > 11000 else (low, 65535)
    for _ in range(1000):
        port = random.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    sys.exit("no free port found")


def cmd_freeport(args):
    print(free_port(getattr(args, "below_ephemeral", False)))


def cmd_gen(args):
    """links.csv = hot codes then cold codes; hot.codes, cold.codes, zipf.codes."""
    rng = random.Random(args.seed)
    total = args.links + args.cold
    seen = set()
    codes = []
    while len(codes) < total:
        c = "".join(rng.choices(ALPHABET, k=7))
        if c not in seen:
            seen.add(c)
            codes.append(c)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "links.csv"), "w") as f:
        f.write("code,url\n")
        for n, c in enumerate(codes):
            f.write(f"{c},https://example.com/{n}?utm=x\n")
    hot, cold = codes[: args.links], codes[args.links :]
    with open(os.path.join(args.out, "hot.codes"), "w") as f:
        f.write("\n".join(hot) + "\n")
    with open(os.path.join(args.out, "cold.codes"), "w") as f:
        f.write("\n".join(cold) + "\n")
    # Zipf-like: rank k drawn with weight 1/k^s; the file is a sample oha then picks from
    # uniformly, so its empirical distribution is what the server sees.
    weights = [1.0 / (k**args.zipf_s) for k in range(1, len(hot) + 1)]
    sample = rng.choices(hot, weights=weights, k=args.zipf_samples)
    with open(os.path.join(args.out, "zipf.codes"), "w") as f:
        f.write("\n".join(sample) + "\n")
    top = set(hot[: max(1, len(hot) // 100)])
    share = sum(1 for c in sample if c in top) / len(sample)
    info = {
        "links": args.links,
        "cold_links": args.cold,
        "zipf_s": args.zipf_s,
        "zipf_samples": args.zipf_samples,
        "zipf_top1pct_share": round(share, 4),
        "zipf_distinct_codes": len(set(sample)),
    }
    with open(os.path.join(args.out, "gen.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


def cmd_urls(args):
    with open(args.codes) as src, open(args.out, "w") as dst:
        for line in src:
            c = line.strip()
            if c:
                dst.write(f"{args.base}/{c}\n")


def cmd_bodies(args):
    with open(args.out, "w") as f:
        for n in range(args.count):
            f.write(json.dumps({"url": f"https://example.com/{args.tag}/{n}?src=loadtest"}) + "\n")


async def _warm_conn(host, port, paths, pipeline, counts, method):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in range(0, len(paths), pipeline):
            batch = paths[i : i + pipeline]
            writer.write(b"".join(f"{method} {p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for p in batch))
            await writer.drain()
            for _ in batch:
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                if length and method != "HEAD":
                    await reader.readexactly(length)
                counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()


async def _warm(args):
    paths = []
    host = port = None
    with open(args.urls) as f:
        for line in f:
            u = line.strip()
            if not u:
                continue
            rest = u.split("://", 1)[1]
            hostport, path = rest.split("/", 1)
            host, port = hostport.rsplit(":", 1)
            paths.append("/" + path)
    counts = {}
    shards = [paths[i :: args.conns] for i in range(args.conns)]
    t0 = time.monotonic()
    await asyncio.gather(*(_warm_conn(host, int(port), s, args.pipeline, counts, args.method) for s in shards if s))
    dt = time.monotonic() - t0
    ok = sum(v for k, v in counts.items() if 300 <= k < 400)
    print(json.dumps({"requests": len(paths), "redirects": ok, "status": counts, "seconds": round(dt, 2)}))
    if ok != len(paths):
        sys.exit(f"warm: {len(paths) - ok} of {len(paths)} requests were not redirects: {counts}")


def cmd_warm(args):
    asyncio.run(_warm(args))


def proc_stat(pid):
    """(utime + stime in clock ticks, VmRSS in kB, threads) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return ticks, rss, threads


def pg_ticks(data_dir):
    """CPU ticks and RSS of a PostgreSQL server: its postmaster (first line of postmaster.pid)
    and every process it started (backends, WAL writer, checkpointer...)."""
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        master = int(f.readline())
    pids = [master]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                ppid = next(int(l.split()[1]) for l in f if l.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if ppid == master:
            pids.append(int(entry))
    ticks = rss = 0
    for pid in pids:
        try:
            t, r, _ = proc_stat(pid)
        except OSError:
            continue  # exited meanwhile
        ticks, rss = ticks + t, rss + r
    return {"pid": master, "processes": len(pids), "ticks": ticks, "rss_kb": rss}


def redis_info(port, section):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n", 1)
        n = int(head[1:])
        while len(rest) < n + 2:
            rest += s.recv(65536)
    out = {}
    for line in rest[:n].decode().splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def tcp_counters():
    """System-wide listen-queue overflows and drops (TcpExt), to see SYNs a backlog refused."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            return {k: int(row.get(k, 0)) for k in ("ListenOverflows", "ListenDrops", "TCPTimeWaitOverflow")}
    return {}


def machine_ticks():
    """All CPUs' busy and total ticks (/proc/stat), to tell how much else ran during a run."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return {"busy": total - v[3] - v[4], "total": total}


def cmd_quiet(args):
    """Waits (at most --max-wait s) until the machine's CPU is less than --threshold % busy over
    one second, so a shared box's other work disturbs a run less; prints what it saw."""
    t0 = time.monotonic()
    while True:
        a = machine_ticks()
        time.sleep(1)
        b = machine_ticks()
        busy = 100 * (b["busy"] - a["busy"]) / max(1, b["total"] - a["total"])
        waited = time.monotonic() - t0
        if busy < args.threshold or waited >= args.max_wait:
            print(json.dumps({"busy_pct": round(busy, 1), "waited_s": round(waited, 1), "quiet": busy < args.threshold}))
            return


def cmd_rusage(args):
    """Runs a command and writes its CPU time (user+sys, from wait4) as JSON; exits with its code."""
    import subprocess

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.monotonic()
    proc = subprocess.Popen(command)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(args.out, "w") as f:
        json.dump({"cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                   "wall_s": time.monotonic() - t0, "exit": proc.returncode}, f)
    sys.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)


def cmd_snap(args):
    snap = {"t": time.time()}
    ticks, rss, threads = proc_stat(args.pid)
    snap["proc"] = {"pid": args.pid, "ticks": ticks, "rss_kb": rss, "threads": threads}
    if args.redis_pid:
        rt, rr, _ = proc_stat(args.redis_pid)
        snap["redis_proc"] = {"pid": args.redis_pid, "ticks": rt, "rss_kb": rr}
    if args.pg_data:
        snap["db_proc"] = pg_ticks(args.pg_data)
    if args.redis_port:
        mem = redis_info(args.redis_port, "memory")
        stats = redis_info(args.redis_port, "commandstats")
        calls = {}
        for k, v in stats.items():
            if k.startswith("cmdstat_"):
                calls[k[8:]] = int(dict(p.split("=") for p in v.split(","))["calls"])
        snap["redis"] = {"used_memory": int(mem["used_memory"]), "calls": calls}
    if args.health:
        with urllib.request.urlopen(args.health, timeout=5) as r:
            snap["cache"] = json.load(r)
    snap["tcp"] = tcp_counters()
    snap["machine"] = machine_ticks()
    print(json.dumps(snap))


def _open_open(socks):
    """How many of the sockets the server has not closed."""
    alive = 0
    for s in socks:
        s.setblocking(False)  # with a timeout set, Python would poll() before the recv
        try:
            data = s.recv(1, socket.MSG_PEEK)
            if data:
                alive += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        s.settimeout(10)
    return alive


def cmd_idle(args):
    raise_nofile()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    req = f"GET {args.path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    socks = []
    steps = []
    _, rss0, _ = proc_stat(args.pid)
    for target in [int(x) for x in args.steps.split(",")]:
        new = []
        while len(socks) + len(new) < target:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(req)
            new.append(s)
        for s in new:
            # Read the whole (small) response so the connection is idle and keep-alive.
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        socks.extend(new)
        time.sleep(args.settle)
        _, rss, _ = proc_stat(args.pid)
        steps.append({"connections": target, "open": _open_open(socks), "rss_kb": rss})
    out = {"rss_kb_before": rss0, "steps": steps}
    if len(steps) >= 2:
        a, b = steps[0], steps[-1]
        out["bytes_per_conn"] = round((b["rss_kb"] - a["rss_kb"]) * 1024 / max(1, b["connections"] - a["connections"]))
    for s in socks:
        s.close()
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    fp = sub.add_parser("freeport")
    fp.add_argument("--below-ephemeral", action="store_true")
    g = sub.add_parser("gen")
    g.add_argument("--links", type=int, required=True)
    g.add_argument("--cold", type=int, required=True)
    g.add_argument("--seed", type=int, default=8)
    g.add_argument("--zipf-s", type=float, default=1.1)
    g.add_argument("--zipf-samples", type=int, default=200_000)
    g.add_argument("--out", required=True)
    u = sub.add_parser("urls")
    u.add_argument("--codes", required=True)
    u.add_argument("--base", required=True)
    u.add_argument("--out", required=True)
    b = sub.add_parser("bodies")
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--tag", required=True)
    b.add_argument("--out", required=True)
    w = sub.add_parser("warm")
    w.add_argument("--urls", required=True)
    w.add_argument("--conns", type=int, default=8)
    w.add_argument("--pipeline", type=int, default=64)
    # HEAD fills the caches as GET does without counting a click (no flush of the warm-up's
    # clicks lands in a measurement).
    w.add_argument("--method", choices=["GET", "HEAD"], default="GET")
    s = sub.add_parser("snap")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--redis-pid", type=int)
    s.add_argument("--redis-port", type=int)
    s.add_argument("--pg-data", help="a PostgreSQL data dir: also count its server's CPU")
    s.add_argument("--health")
    q = sub.add_parser("quiet")
    q.add_argument("--max-wait", type=float, default=60)
    q.add_argument("--threshold", type=float, default=15)
    r = sub.add_parser("rusage")
    r.add_argument("--out", required=True)
    r.add_argument("command", nargs=argparse.REMAINDER)
    i = sub.add_parser("idle")
    i.add_argument("--addr", required=True)
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--path", required=True)
    i.add_argument("--steps", default="1000,10000")
    i.add_argument("--settle", type=float, default=1.0)
    args = p.parse_args()
    globals()["cmd_" + args.cmd](args)


if __name__ == "__main__":
    main()

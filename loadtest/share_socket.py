#!/usr/bin/env python3
"""Several processes serving one listening socket, handed over the systemd way.

    share_socket.py [--backlog N] [--name NAME] [--pidfile FILE] [--private ADDR:PORT [--private-name NAME]]
                    [--no-rolling] ADDR:PORT N -- CMD [ARG...]

Binds ADDR:PORT (port 0: any free port) with a listen backlog of N (default 65535; the kernel caps
it at net.core.somaxconn), prints the bound `addr:port` on stdout, then starts N copies of CMD,
each with the socket as file descriptor 3 and `LISTEN_FDS=1`, `LISTEN_PID=<that process' pid>`,
`LISTEN_FDNAMES=NAME` (default `http`), as sd_listen_fds(3) defines them: what systemd passes a
service that owns a `.socket` unit. `SHARE_SOCKET_INDEX` (0..N-1) tells the copies apart.

SIGTERM or SIGINT is passed on to every copy; the launcher waits for all of them and exits with
the first non-zero status (or 0). SIGUSR1 restarts the copies one at a time (each is sent SIGTERM
and replaced once it has exited), which is what a rolling restart of several instances on one
socket looks like. `--pidfile` gets the copies' pids, one per line, rewritten on every change.
"""

import fcntl
import os
import signal
import socket
import sys


def parse(argv):
    backlog, name, pidfile, private, private_name, rolling = 65535, "http", None, None, "admin", True
    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if flag == "--":
            break
        if flag == "--no-rolling":
            rolling = False
            continue
        if not argv:
            sys.exit(f"share_socket.py: {flag} needs a value")
        value = argv.pop(0)
        if flag == "--backlog":
            backlog = int(value)
        elif flag == "--name":
            name = value
        elif flag == "--pidfile":
            pidfile = value
        elif flag == "--private":
            private = split_addr(value)
        elif flag == "--private-name":
            private_name = value
        else:
            sys.exit(f"share_socket.py: unknown flag {flag}")
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: " + " ".join(line.strip() for line in __doc__.strip().splitlines()[2:4]))
    host, port = split_addr(argv[0])
    copies, cmd = int(argv[1]), argv[3:]
    return host, port, copies, cmd, backlog, name, pidfile, private, private_name, rolling


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def listen(host, port, backlog):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    return sock, f"{shown}:{bound[1]}"


def start(sock, cmd, name, index, private=None, private_name=None):
    pid = os.fork()
    if pid == 0:
        try:
            # The sockets become descriptors 3, 4 in order. Copied above them first, so that
            # placing one cannot overwrite another that sits at 3 or 4 already; dup2 leaves the
            # new descriptor without FD_CLOEXEC (dup2 onto itself would not clear it).
            socks = [sock] + ([private] if private is not None else [])
            high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 3 + len(socks)) for s in socks]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
                os.close(fd)
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # an ignored signal would stay ignored
            env = dict(os.environ)
            env.update(
                LISTEN_FDS=str(len(socks)),
                LISTEN_PID=str(os.getpid()),
                LISTEN_FDNAMES=name if private is None else f"{name}:{private_name}",
                SHARE_SOCKET_INDEX=str(index),
            )
            os.execvpe(cmd[0], cmd, env)
        except Exception as e:  # noqa: BLE001 — the child must never return into the launcher
            print(f"share_socket.py: cannot start {cmd[0]}: {e}", file=sys.stderr)
            os._exit(127)
    return pid


def main():
    host, port, copies, cmd, backlog, name, pidfile, private, private_name, rolling_on = parse(sys.argv[1:])
    sock, shown = listen(host, port, backlog)
    privates = []
    if private is not None:
        for i in range(copies):
            privates.append(listen(private[0], private[1] + i if private[1] else 0, backlog))
    print(shown, flush=True)
    for _, addr in privates:
        print(addr, flush=True)

    def spawn(index):
        own = privates[index][0] if privates else None
        return start(sock, cmd, name, index, own, private_name)

    children = {}  # pid -> index
    stopping = False
    rolling = []  # indexes still to restart
    status = 0

    def write_pids():
        if pidfile:
            tmp = pidfile + ".tmp"
            with open(tmp, "w") as f:
                for pid in sorted(children, key=children.get):
                    f.write(f"{pid}\n")
            os.replace(tmp, pidfile)

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def roll(_signum, _frame):
        if rolling or stopping:
            return
        rolling.extend(sorted(children.values()))
        next_roll()

    def next_roll():
        if not rolling:
            return
        index = rolling[0]
        for pid, i in children.items():
            if i == index:
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, roll if rolling_on else signal.SIG_IGN)
    for i in range(copies):
        children[spawn(i)] = i
    write_pids()
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(code)
        if rolling and rolling[0] == index and not stopping:
            rolling.pop(0)
            children[spawn(index)] = index
            write_pids()
            next_roll()
            continue
        write_pids()
        if code != 0 and status == 0:
            status = code if code > 0 else 128 - code
        if not stopping:
            print(f"share_socket.py: copy {index} (pid {pid}) exited with {code}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()

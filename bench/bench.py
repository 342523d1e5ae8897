#!/usr/bin/env python3
"""`make bench`: sockd side by side with direct loopback, Dante and microsocks,
what each spends in CPU, and what each of sockd's capabilities costs.

One run on one machine, one load generator (bench/loadgen.c, compiled here
with gcc), every server on 127.0.0.1 one after the other, so that the ratios
between rows hold even when the absolute figures drift with the machine's
load.  Prints one table, the ratios between its rows, the price of each
capability, the issue-17 targets with PASS/FAIL and a `RATIOS` line with the
same keys as ../shared/tools/sidebyside.py; writes all of it as JSON and
draws it as a PNG bar chart (matplotlib: `pip install 'sockd[bench]'`;
without it the JSON is still written) into --out.

    bench/bench.py [--quick] [--only ROW,...] [--out DIR] [--secs 4] [--hold 20000]
                   [--peer-hold 8000] [--mib 1024] [--steady 200000] [--rules 100000]

Rows: `direct` (no proxy: the physical limit), `sockd-threads` (sockd -N 2),
`sockd-affinity` (sockd -N 2 with `affinity cpu`: each worker pinned to a
CPU and handed the connections that arrive there), `sockd-metrics` (sockd -N 2 with `metrics` on and scraped once a second, as
Prometheus would), `sockd-limit` (sockd -N 2 with a bandwidth limit and a
quota on every client, both far above what loopback reaches: what the
accounting costs when it never holds anyone back), `sockd-hop` (sockd -N 2
whose way-out file sends everything through a second sockd -N 2 on the same
machine, `?pipeline`, as sockd-to-sockd chains are best set up: what one
extra hop costs, both servers' CPU included), `sockd-fork`
(sockd -m fork), `danted` (Dante, -N 2) and `microsocks`; the last two only
when installed.  `--only sockd` means the threads and fork rows.

What is measured (columns):
  conn/s, p99 us   8 client threads, each looping: connect, SOCKS 5 CONNECT,
                   32-byte echo (the target closes first), close with RST
  rate err         failed tries in that loop
  CPU us/conn      user+system CPU of the server's whole process tree over
                   that loop (each process's CPU-time clock, in ns; children
                   reaped during it included, through their parent's
                   cutime/cstime), per connection served
  down/up MB/s     one session moving --mib MiB from / to the target
                   (upload needs half-close to be relayed); MB = MiB
  32x MB/s         32 sessions at once, each downloading --mib/16 MiB
  CPU ms/GB        the server tree's CPU over the three bulk phases (down,
                   up and 32x; a failed phase is left out), per GiB moved
  held             idle sessions opened and all answering, checked twice
                   (--hold for sockd-threads; Dante and microsocks, a process
                   per few clients and a thread per client, at most --peer-hold)
  KB/sess          PSS of the server's whole process tree while holding them,
                   minus before, divided by the sessions
  rules c/s, p99   the conn/s loop again against a fresh sockd whose rule
                   file has --rules lines, the matching one last
  steady %         a fresh sockd (threads model): worker PSS after --steady
                   connections against after --steady/20 (200,000 vs 10,000)

`direct` has no server, so no CPU cells: what the client and the target
spend is the same in every row and is never counted.

With the --rules file (threads model) the bench also times `sockd -V -f
FILE` (the whole command), start-up (the process started until its
"listening on" line) and a reload (SIGHUP, with one more rule in the file,
until the master's "reloaded FILE: N rules" line, which it logs once every
older worker has stopped accepting: from then on the new file is in effect).

GSS-API (RFC 1961; rows `gss`, when the test bed is there: make test-deps):
one session down and up through Dante's GSS-API socksify (loadgen bulk
direct, its connect() handed to the SOCKS server by the preloaded client
library), against sockd -N 2 with methods gssapi none and against Dante's
GSS-API server, for method none ("plain", the same client path), GSS-API
level 0 (clear) and level 2 (confidentiality).  The realm is a throwaway
MIT KDC on loopback (tests/gsskit.py).  CPU ms/GB: the server's whole process
tree, user+system, per GiB moved.

The bench raises its descriptor limit (RLIMIT_NOFILE, soft and hard; root
may go up to /proc/sys/fs/nr_open) before it starts anything, so that the
load generator, its target and the servers inherit room for --hold
sessions.  Every process is started in its own session and stopped by its
own process group; nothing is found or killed by name.
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

try:                      # the chart only: `pip install 'sockd[bench]'`; the JSON needs nothing
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = ["direct", "sockd-threads", "sockd-affinity", "sockd-metrics", "sockd-limit", "sockd-hop", "sockd-fork",
        "danted", "microsocks", "gss"]
COLS = ["conn/s", "p99 us", "rate err", "CPU us/conn", "down MB/s", "up MB/s", "32x MB/s", "CPU ms/GB",
        "held", "KB/sess", "rules c/s", "rules p99", "steady %"]
PEERS = ("danted", "microsocks", "direct")   # the rows every other row is compared with
HOLD_TARGET, RULES_TARGET = 20000, 100000    # issue 17's scale
CHART_COLS = ["conn/s", "CPU us/conn", "down MB/s", "up MB/s", "32x MB/s", "CPU ms/GB"]
FAIL = "fail"

started = []  # every Popen this run started, stopped in the end whatever happens


class Stop(Exception):
    pass


def on_signal(signum, frame):
    raise Stop("signal %d" % signum)


def note(msg):
    print("# " + msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------ processes

def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    started.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    """Stop p and everything in its process group (p leads its own session)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
    # children of a dead leader (fork-model clients, Dante's processes) are still in its group
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    if p in started:
        started.remove(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------ memory

def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root):
    kids, out, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rollup(pid):
    """(PSS, RSS) in kB from /proc/PID/smaps_rollup; (0, 0) for a process gone."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            text = f.read()
    except OSError:
        return 0, 0
    pss = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    rss = re.search(r"^Rss:\s+(\d+) kB", text, re.M)
    return (int(pss.group(1)) if pss else 0), (int(rss.group(1)) if rss else 0)


def process_cpu(pid):
    """CPU seconds of process ``pid``'s whole thread group (exited threads
    included), from its CPU-time clock: the kernel's running sum in
    nanoseconds, where /proc/PID/stat's utime+stime is cut to 10 ms ticks.
    The clock id is the one clock_getcpuclockid(3) returns, built the
    kernel's way (the negated PID shifted left three, CPUCLOCK_SCHED = 2),
    which Python does not wrap.  None if the clock cannot be read."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except (OSError, OverflowError):
        return None


def tree_cpu(*roots):
    """User+system CPU seconds of the ``roots`` and their descendants, so far.

    Each live process counts its own time (every thread's, exited ones
    included), read from its CPU-time clock in nanoseconds
    (process_cpu; /proc/PID/stat's utime+stime in 10 ms ticks where that
    clock cannot be read), and its reaped children's (cutime, cstime, in
    ticks: cut once per parent per reading, not once per child), so a
    fork-model child that served one client and was waited for still
    counts, once, in its parent's.  A child that exited but is not yet
    reaped still shows its own time; one reaped by a parent that is gone
    itself is lost, which none of the servers here does during a phase."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for root in roots:
        for pid in tree(root):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields_ = [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]
            except (OSError, IndexError, ValueError):
                continue
            own = process_cpu(pid)
            if own is None:
                own = (fields_[0] + fields_[1]) / tick    # utime stime
            total += own + (fields_[2] + fields_[3]) / tick   # cutime cstime
    return total


def tree_pss(root):
    return sum(rollup(p)[0] for p in tree(root))


def workers_mem(root):
    """(PSS, RSS, count) summed over the master's descendants."""
    pids = [p for p in tree(root) if p != root]
    mem = [rollup(p) for p in pids]
    return sum(m[0] for m in mem), sum(m[1] for m in mem), len(pids)


# ------------------------------------------------------------ servers

class Server:
    def __init__(self, name, proc, port, workdir, back=None, conf=None, log_path=None):
        self.name, self.proc, self.port, self.workdir = name, proc, port, workdir
        self.back = back          # sockd-hop: the second sockd, behind this one
        self.conf, self.log_path = conf, log_path
        self.check_secs = self.start_secs = None   # sockd -V, and spawn until "listening on"

    def roots(self):
        """The process trees whose CPU is this server's."""
        return [self.proc.pid] + (self.back.roots() if self.back is not None else [])

    def stop(self):
        # sockd: SIGINT stops at once (SIGTERM would give live clients 30 s)
        stop(self.proc, signal.SIGINT if self.name.startswith("sockd") else signal.SIGTERM)
        if self.back is not None:
            self.back.stop()


def rule_lines(n, target_port):
    """n - 1 rules that all miss the bench's connections (most of them after
    matching the source), then the one that permits them."""
    out = []
    for i in range(max(0, n - 1)):
        a, b = (i // 250) % 250 + 1, i % 250 + 1
        kind = i % 4
        if kind == 0:
            out.append("deny 10.%d.%d.0 255.255.255.0" % (a, b))
        elif kind == 1:
            out.append("permit 127.0.0.0 255.0.0.0 192.168.%d.%d 255.255.255.255" % (a, b))
        elif kind == 2:
            port = 1 + i % 1000
            port += 1000 if port == target_port else 0
            out.append("permit 127.0.0.1 255.255.255.255 127.0.0.0 255.0.0.0 eq %d" % port)
        else:
            out.append("deny 172.%d.%d.0 255.255.255.0 0.0.0.0 0.0.0.0" % (16 + a % 16, b))
    out.append("permit 127.0.0.0 255.0.0.0")
    return out


def sockd_conf(name, d, target_port, rules=0, back=None, extra_rules=0):
    """The lines of a sockd row's configuration file."""
    lines = ["listen 127.0.0.1:0"]
    if rules:
        body = rule_lines(rules, target_port)
        # a reload's file: more rules that miss, before the one that matches
        lines += body[:-1] + ["deny 10.255.%d.0 255.255.255.0" % (i % 250) for i in range(extra_rules)] + body[-1:]
    else:
        lines.append("permit 127.0.0.0 255.0.0.0")
    if name == "sockd-affinity":
        lines.append("affinity cpu")
    if name == "sockd-metrics":
        lines.append("metrics 127.0.0.1:0")
    if name == "sockd-limit":
        # every client under one budget and one count, neither ever reached:
        # loopback moves a few GB/s, and a run some tens of GB
        lines += ["limit bandwidth address 127.0.0.0/8 100G",
                  "quota address 127.0.0.0/8 1000T per day",
                  "accounting database %s" % os.path.join(d, "accounting.db")]
    if back is not None:
        wayout = os.path.join(d, "wayout")
        with open(wayout, "w") as f:
            f.write("sockd @=socks5://127.0.0.1:%d?pipeline ALL\n" % back.port)
        lines.append("upstream %s" % wayout)
    return lines


def wait_log(path, pattern, timeout, proc=None, since=0, step=0.02):
    """The first match of ``pattern`` in the log after byte ``since``, or None
    after ``timeout`` seconds (or once ``proc`` has exited)."""
    end = time.monotonic() + timeout
    while True:
        try:
            with open(path, errors="replace") as f:
                f.seek(since)
                m = re.search(pattern, f.read())
        except OSError:
            m = None
        if m or time.monotonic() >= end or (proc is not None and proc.poll() is not None):
            return m
        time.sleep(step)


def start_server(name, opts, workdir, target_port, rules=0):
    back = None
    if name == "sockd-hop":
        back = start_server("sockd-threads", opts, workdir, target_port)
    d = tempfile.mkdtemp(prefix=name + "-", dir=workdir)
    log_path = os.path.join(d, "out.log")
    log = open(log_path, "w")
    conf, check_secs, start_secs = None, None, None
    if name.startswith("sockd"):
        conf = os.path.join(d, "sockd.conf")
        with open(conf, "w") as f:
            f.write("\n".join(sockd_conf(name, d, target_port, rules, back)) + "\n")
        cmd = [opts.sockd, "-F", "-f", conf]
        cmd += ["-m", "fork"] if name == "sockd-fork" else ["-N", str(opts.workers)]
        if rules:
            t = time.monotonic()
            r = subprocess.run([opts.sockd, "-V", "-f", conf], capture_output=True, text=True, timeout=300,
                               stdin=subprocess.DEVNULL)
            check_secs = time.monotonic() - t if r.returncode == 0 else FAIL
        t = time.monotonic()
        proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        # a large rule file may take a while: the limit is for reporting, not a target
        m = wait_log(log_path, r"listening on 127\.0\.0\.1:(\d+)", 120, proc)
        port = int(m.group(1)) if m else None
        start_secs = time.monotonic() - t
    else:
        port = free_port()
        if name == "danted":
            conf = os.path.join(d, "danted.conf")
            with open(conf, "w") as f:
                f.write("logoutput: %s/danted.log\n"
                        "internal: 127.0.0.1 port = %d\n"
                        "external: 127.0.0.1\n"
                        "socksmethod: none\n"
                        "clientmethod: none\n"
                        "user.privileged: root\n"
                        "user.unprivileged: nobody\n"
                        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
                        "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n" % (d, port))
            cmd = ["danted", "-f", conf, "-N", str(opts.workers)]
        else:
            cmd = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
        proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
    if port is None or not port_open(port, 15) or proc.poll() is not None:
        stop(proc)
        if back is not None:
            back.stop()
        raise RuntimeError("%s did not start: %s" % (name, tail(log_path) or log_path))
    time.sleep(0.5)  # let every worker reach accept()
    if proc.poll() is not None:
        if back is not None:
            back.stop()
        raise RuntimeError("%s exited at start: %s" % (name, tail(log_path)))
    s = Server(name, proc, port, d, back, conf, log_path)
    s.check_secs, s.start_secs = check_secs, start_secs
    return s


def time_reload(s, opts, target_port):
    """Seconds from SIGHUP, with one more rule in the file, until the master
    logs that the new file is in effect ("reloaded FILE: N rules"), or FAIL."""
    with open(s.conf, "w") as f:
        f.write("\n".join(sockd_conf(s.name, s.workdir, target_port, opts.rules, extra_rules=1)) + "\n")
    since = os.path.getsize(s.log_path)
    t = time.monotonic()
    os.kill(s.proc.pid, signal.SIGHUP)
    m = wait_log(s.log_path, r"reloaded \S+: (\d+) rules|(reload failed)", 120, s.proc, since)
    secs = time.monotonic() - t
    if not m or m.group(2) or int(m.group(1)) != opts.rules + 1:
        note("reload: %s" % (m.group(0) if m else "no 'reloaded' line: " + tail(s.log_path)))
        return FAIL
    return secs


class Scraper:
    """GET /metrics once a second from a thread, as Prometheus would, while
    the row is measured."""

    def __init__(self, server):
        with open(os.path.join(server.workdir, "out.log"), errors="replace") as f:
            m = re.search(r"metrics: serving (http://\S+/metrics)", f.read())
        self.url = m.group(1) if m else None
        self.scrapes, self.error = 0, "no 'metrics: serving' line in the log"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.url and not self.done.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError as exc:
                self.error = str(exc)

    def stop(self):
        self.done.set()
        self.thread.join(10)


# ------------------------------------------------------------ load generator

def build_loadgen(workdir):
    exe = os.path.join(workdir, "loadgen")
    subprocess.check_call(["gcc", "-O2", "-pthread", "-o", exe, os.path.join(HERE, "loadgen.c")])
    return exe


def fields(text):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", text)}


def loadgen(opts, *args, timeout=300):
    r = subprocess.run([opts.loadgen] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, start_new_session=True)
    return fields(r.stdout)


def rate(opts, proxy, count=0, roots=()):
    """The connection loop: (conn/s, p99 us, failed tries, server CPU us per
    connection served; None without ``roots``)."""
    c0 = tree_cpu(*roots)
    f = loadgen(opts, "rate", proxy, opts.target_port, opts.conc, opts.secs, count,
                timeout=opts.secs + 60 + count / 200)
    cpu = tree_cpu(*roots) - c0
    ok = f.get("ok", 0)
    us = round(cpu * 1e6 / ok, 1) if roots and ok else None
    return f.get("conn_per_s", 0.0), f.get("p99_us", 0.0), int(f.get("errors", 0)), us


def bulk(opts, proxy, streams, mib, direction):
    f = loadgen(opts, "bulk", proxy, opts.target_port, streams, mib, direction, timeout=600)
    if not f or f.get("failed", 1) != 0:
        return FAIL
    return f["MB_per_s"]


def per_process(n):
    """How many processes ``n`` descriptors need under this process's
    RLIMIT_NOFILE (which the load generator and its target inherit), with
    room for their own few."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = max(1, soft - 256)
    return max(1, -(-n // room))


def hold(opts, proxy, root, n):
    """(held, KB per session) for ``n`` idle sessions, opened by as many
    load generators as the descriptor limit needs, against the hold target."""
    before = tree_pss(root)
    k = per_process(n)
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    hs = []
    try:
        for share in shares:
            h = subprocess.Popen([opts.loadgen, "hold", proxy, str(opts.hold_port), str(share)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
            started.append(h)
            hs.append(h)
        first = [h.stdout.readline() for h in hs]     # each has opened its share (bounded: 120 s)
        during = tree_pss(root)
        time.sleep(opts.hold_secs)
        for h in hs:
            h.stdin.write("go\n")
            h.stdin.close()
        rest = [h.stdout.read() for h in hs]
        for h in hs:
            h.wait(300)
    finally:
        for h in hs:
            stop(h)
    per = [[fields(line) for line in (a + b).splitlines() if line.startswith("hold ")] for a, b in zip(first, rest)]
    if not all(per):
        return 0, FAIL
    held = sum(int(min(p.get("alive", 0) for p in passes)) for passes in per)
    opened = sum(int(passes[0].get("opened", 0)) for passes in per)
    failed = sum(int(passes[0].get("failed", 0)) for passes in per)
    if failed:
        note("%d of %d idle sessions could not be opened" % (failed, n))
    return held, round((during - before) / max(1, opened), 1)


def measure(name, opts, proxy, roots=()):
    res = {}
    note("%s: connection rate" % name)
    res["conn/s"], res["p99 us"], res["rate err"], res["CPU us/conn"] = rate(opts, proxy, roots=roots)
    note("%s: one session down, up; 32 sessions down" % name)
    cpu, gib = 0.0, 0.0
    for col, streams, mib, direction in (("down MB/s", 1, opts.mib, "down"), ("up MB/s", 1, opts.mib, "up"),
                                         ("32x MB/s", 32, opts.mib / 16, "down")):
        c0 = tree_cpu(*roots)
        res[col] = bulk(opts, proxy, streams, mib, direction)
        if res[col] != FAIL:           # a phase that failed moved an unknown amount: left out
            cpu += tree_cpu(*roots) - c0
            gib += streams * mib / 1024.0
    res["CPU ms/GB"] = round(cpu * 1e3 / gib, 1) if roots and gib else None
    n = opts.hold if name == "sockd-threads" else min(opts.hold, opts.peer_hold)
    if roots and n and name in ("sockd-threads", "danted", "microsocks"):
        note("%s: holding %d idle sessions" % (name, n))
        res["held"], res["KB/sess"] = hold(opts, proxy, roots[0], n)
    return res


def steady(opts, workdir):
    """Worker memory after --steady connections against after --steady/20."""
    s = start_server("sockd-threads", opts, workdir, opts.target_port)
    try:
        first = max(1, opts.steady // 20)
        note("sockd-threads: steady state, %d connections" % first)
        rate(opts, s.port, first)
        time.sleep(0.5)
        a = workers_mem(s.proc.pid)
        note("sockd-threads: steady state, %d more connections" % (opts.steady - first))
        errors = rate(opts, s.port, opts.steady - first)[2]
        time.sleep(0.5)
        b = workers_mem(s.proc.pid)
    finally:
        s.stop()
    return {"first": first, "total": opts.steady, "pss": (a[0], b[0]), "rss": (a[1], b[1]),
            "workers": b[2], "errors": errors}


def run_row(name, opts, workdir, rows, extra):
    if name == "gss":
        gss_rows(opts, workdir, extra)
        return
    if name == "direct":
        rows[name] = measure(name, opts, "direct")
        return
    s = start_server(name, opts, workdir, opts.target_port)
    scraper = Scraper(s) if name == "sockd-metrics" else None
    try:
        rows[name] = measure(name, opts, str(s.port), s.roots())
    finally:
        if scraper is not None:
            scraper.stop()
        s.stop()
    if scraper is not None and not scraper.scrapes:
        raise RuntimeError("the metrics endpoint answered no scrape: %s" % scraper.error)
    if name in ("sockd-threads", "sockd-fork") and opts.rules:
        note("%s: a %d-line rule file: check, start, connection rate%s" % (
            name, opts.rules, ", reload" if name == "sockd-threads" else ""))
        s = start_server(name, opts, workdir, opts.target_port, rules=opts.rules)
        try:
            c, p99, _, _ = rate(opts, str(s.port))
            rows[name]["rules c/s"], rows[name]["rules p99"] = c, p99
            if name == "sockd-threads":
                extra["rules"] = {"lines": opts.rules, "check secs": s.check_secs, "start secs": s.start_secs,
                                  "reload secs": time_reload(s, opts, opts.target_port)}
        finally:
            s.stop()
    if name == "sockd-threads" and opts.steady:
        st = steady(opts, workdir)
        extra["steady"] = st
        rows[name]["steady %"] = growth(st["pss"])


# ------------------------------------------------------------ GSS-API

GSS_MODES = [("none", None), ("gssapi clear", "clear"), ("gssapi confidentiality", "confidentiality")]
SOCKS_CONF = """route {
    from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = %d
    proxyprotocol: socks_v5
    command: connect
    method: %s
%s}
"""


def gss_bed():
    """(gsskit, Dante's GSS-API prefix), or raises RuntimeError saying what
    is missing."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        import gsskit             # the test bed: the realm and the builds' places
    except ImportError as exc:
        raise RuntimeError("the GSS-API test bed is not installed (make test-deps): %s" % exc)
    r = subprocess.run(["bash", gsskit.BUILD_CACHED, "dante"], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError("Dante with GSS-API is not built (make test-deps): %s" % r.stderr[-300:])
    return gsskit, r.stdout.strip()


def gss_rows(opts, workdir, extra):
    """The GSS-API table: [{server, mode, down MB/s, up MB/s, CPU ms/GB}]."""
    gsskit, prefix = gss_bed()
    try:
        realm = gsskit.Realm()
    except BaseException as exc:          # pytest's skip too: a tool of the realm is missing
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RuntimeError("cannot start a Kerberos realm: %s" % exc)
    out = []
    try:
        env = realm.env(ccache=realm.ticket("alice"))
        d = tempfile.mkdtemp(prefix="gss-", dir=workdir)
        conf = os.path.join(d, "sockd.conf")
        with open(conf, "w") as f:
            f.write("listen 127.0.0.1:0\nmethods gssapi none\ngssapi keytab %s\npermit 127.0.0.0 255.0.0.0\n"
                    % realm.keytab)
        log_path = os.path.join(d, "sockd.log")
        with open(log_path, "w") as log:
            proc = spawn([opts.sockd, "-F", "-f", conf, "-N", str(opts.workers)], stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        port, end = None, time.monotonic() + 20
        while port is None and time.monotonic() < end and proc.poll() is None:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", open(log_path, errors="replace").read())
            port = int(m.group(1)) if m else None
            time.sleep(0.1)
        if port is None:
            stop(proc)
            raise RuntimeError("sockd (methods gssapi) did not start: %s" % tail(log_path))
        time.sleep(0.5)
        try:
            for mode, level in GSS_MODES:
                out.append(gss_entry("sockd-threads", mode, gss_measure(opts, prefix, env, d, port, proc.pid, level)))
        finally:
            stop(proc, signal.SIGINT)
        dante = gsskit.DantedGss(realm, d, levels=(0, 2), name="danted-gss-bench")
        try:
            for mode, level in GSS_MODES[1:]:
                out.append(gss_entry("danted-gss", mode, gss_measure(opts, prefix, env, d, dante.port,
                                                                     dante.proc.pid, level)))
        finally:
            dante.stop()
    finally:
        realm.stop()
    extra["gss"] = out
    return out


def gss_entry(server, mode, measured):
    return dict(zip(("server", "mode", "down MB/s", "up MB/s", "CPU ms/GB"), (server, mode) + measured))


def gss_measure(opts, prefix, env, d, port, root, level):
    """(down MB/s, up MB/s, server CPU ms per GiB) for one session each way
    under socksify through ``port``; ``level`` None: method none."""
    conf = os.path.join(d, "socks-%d-%s.conf" % (port, level))
    with open(conf, "w") as f:
        f.write(SOCKS_CONF % (port, "gssapi" if level else "none",
                              "    gssapi.servicename: rcmd\n    gssapi.enctype: %s\n" % level if level else ""))
    e = dict(env, SOCKS_CONF=conf, SOCKS_AUTOADD_LANROUTES="no")
    mib = opts.mib if level != "confidentiality" else min(opts.mib, 512)
    res, cpu, moved = [], 0.0, 0.0
    for direction in ("down", "up"):
        note("gss: %s through port %d, %s, %g MiB %s" % ("method none" if not level else level, port,
                                                        "server tree", mib, direction))
        c0 = tree_cpu(root)
        r = subprocess.run([os.path.join(prefix, "bin", "socksify"), opts.loadgen, "bulk", "direct",
                            str(opts.target_port), "1", str(mib), direction], env=e, capture_output=True, text=True,
                           timeout=600, start_new_session=True)
        cpu += tree_cpu(root) - c0
        f = fields(r.stdout)
        if not f or f.get("failed", 1) != 0:
            res.append(FAIL)
        else:
            res.append(f["MB_per_s"])
            moved += mib / 1024.0
    return res[0], res[1], round(cpu * 1e3 / moved, 1) if moved else FAIL


def growth(pair):
    a, b = pair
    return round((b - a) * 100.0 / a, 1) if a else FAIL


# ------------------------------------------------------------ report

def cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.0f" % v if abs(v) >= 100 else "%.1f" % v
    return str(v)


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def machine_info(load):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.M)
            mem = int(m.group(1)) // 1024 if m else None
    except OSError:
        mem = None
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu, "memory MiB": mem,
            "python": platform.python_version(), "load average at start": [round(x, 2) for x in load]}


def machine(info):
    return "nproc %d, kernel %s, CPU %s, load average at start %s" % (
        info["nproc"], info["kernel"], info["cpu"], ", ".join("%.2f" % x for x in info["load average at start"]))


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        m = re.search(r"\d+(\.\d+)+", r.stdout + r.stderr)
        return m.group(0) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def quotient(a, b):
    a, b = num(a), num(b)
    return round(a / b, 2) if a is not None and b else None


RATIO_COLS = ["conn/s", "p99 us", "CPU us/conn", "down MB/s", "up MB/s", "32x MB/s", "CPU ms/GB"]


def ratios(rows):
    """{row: {column: {peer: row's value / peer's}}} for every row against
    Dante, microsocks and direct of the same run (a peer missing: None)."""
    out = {}
    for name, r in rows.items():
        out[name] = {c: {p: quotient(r.get(c), rows.get(p, {}).get(c)) if p != name else None for p in PEERS}
                     for c in RATIO_COLS}
    return out


def price(rows, extra):
    """What each capability costs, against sockd-threads of the same run:
    [{capability, row, against, ratios {column: x}}]."""
    one = rows.get("sockd-threads")
    out = []
    for cap, row in (("affinity cpu (a worker per CPU, clients steered to it)", "sockd-affinity"),
                     ("one extra hop (sockd -> sockd, both servers' CPU)", "sockd-hop"),
                     ("a bandwidth limit and a quota configured, never reached", "sockd-limit"),
                     ("the metrics endpoint on, scraped every second", "sockd-metrics")):
        if one and row in rows:
            out.append({"capability": cap, "row": row, "against": "sockd-threads",
                        "ratios": {c: quotient(rows[row].get(c), one.get(c)) for c in RATIO_COLS}})
    g = {(e["server"], e["mode"]): e for e in extra.get("gss") or ()}
    plain = g.get(("sockd-threads", "none"))
    for cap, mode in (("GSS-API level 0 (clear: authentication only)", "gssapi clear"),
                      ("GSS-API level 2 (confidentiality: every byte sealed)", "gssapi confidentiality")):
        e = g.get(("sockd-threads", mode))
        if plain and e:
            out.append({"capability": cap, "row": "gss " + mode, "against": "gss none (the same socksify client)",
                        "values": {k: e[k] for k in ("down MB/s", "up MB/s", "CPU ms/GB")},
                        "ratios": {k: quotient(e[k], plain[k]) for k in ("down MB/s", "up MB/s", "CPU ms/GB")}})
    return out


def targets(rows, extra, opts):
    """Issue 17's targets and the older ones kept for information:
    ([(measure, target, measured, result)], [the same, informational])."""
    s, f = rows.get("sockd-threads", {}), rows.get("sockd-fork", {})
    d, m, direct = rows.get("danted", {}), rows.get("microsocks", {}), rows.get("direct", {})
    out, info = [], []

    def ratio(label, a, b, bound, higher=True, against="", to=out, words=("PASS", "FAIL")):
        a, b = num(a), num(b)
        target = "%s %.2fx %s" % (">=" if higher else "<=", bound, against)
        if a is None or b is None or b == 0:
            to.append((label, target, "-", "n/a"))
            return
        r = a / b
        good = r >= bound if higher else r <= bound
        to.append((label, target, "%.2fx" % r, words[0] if good else words[1]))

    def absolute(label, v, target, good, unit="", to=out, scale_ok=True):
        v = num(v)
        if v is None:
            to.append((label, target, "-", "n/a"))
        else:
            shown = ("%.2f" % v if abs(v) < 10 else cell(float(v))) + unit
            result = ("PASS" if good(v) else "FAIL") if scale_ok else "n/a (smaller run)"
            to.append((label, target, shown, result))

    ratio("conn/s vs microsocks", s.get("conn/s"), m.get("conn/s"), 1.0, against="microsocks")
    ratio("p99 latency vs microsocks", s.get("p99 us"), m.get("p99 us"), 1.0, higher=False, against="microsocks")
    a = rows.get("sockd-affinity", {})
    if a:
        ratio("conn/s vs microsocks, affinity cpu", a.get("conn/s"), m.get("conn/s"), 1.0, against="microsocks")
        ratio("p99 latency vs microsocks, affinity cpu", a.get("p99 us"), m.get("p99 us"), 1.0, higher=False,
              against="microsocks")
    ratio("one session down vs direct", s.get("down MB/s"), direct.get("down MB/s"), 0.7, against="direct")
    ratio("one session up vs direct", s.get("up MB/s"), direct.get("up MB/s"), 0.7, against="direct")
    ratio("32 sessions vs direct", s.get("32x MB/s"), direct.get("32x MB/s"), 0.6, against="direct")
    absolute("fork model conn/s", f.get("conn/s"), ">= 1000", lambda v: v >= 1000)
    held = num(s.get("held"))
    label = "idle sessions held, all answering (-N %d)" % opts.workers
    if held is None:
        out.append((label, ">= %d" % HOLD_TARGET, "-", "n/a"))
    else:
        result = "FAIL" if held < opts.hold else ("PASS" if held >= HOLD_TARGET else "n/a (--hold < %d)" % HOLD_TARGET)
        out.append((label, ">= %d" % HOLD_TARGET, "%d of %d" % (held, opts.hold), result))
    absolute("memory per idle session (PSS)", s.get("KB/sess"), "<= 4 KB", lambda v: v <= 4, " KB",
             scale_ok=opts.hold >= HOLD_TARGET)
    rl, big = "%d-line rule file" % opts.rules, opts.rules >= RULES_TARGET
    if opts.rules:
        r = quotient(s.get("rules c/s"), s.get("conn/s"))
        out.append(("%s: conn/s vs the 1-rule file" % rl, ">= 0.90x", "-" if r is None else "%.2fx" % r,
                    "n/a" if r is None else ("PASS" if r >= 0.9 else "FAIL") if big else "n/a (--rules < %d)"
                    % RULES_TARGET))
        ru = extra.get("rules", {})
        for what, key in (("sockd -V", "check secs"), ("start-up to 'listening'", "start secs"),
                          ("reload, SIGHUP to 'reloaded'", "reload secs")):
            v = ru.get(key)
            if v == FAIL:
                out.append(("%s: %s" % (rl, what), "< 2 s", "failed", "FAIL"))
            else:
                absolute("%s: %s" % (rl, what), v, "< 2 s", lambda x: x < 2, " s", scale_ok=big)
    else:
        out.append(("rule file (--rules 0)", "", "-", "n/a"))

    # issue 7's, against Dante: kept to see that nothing went back
    ratio("conn/s vs Dante", s.get("conn/s"), d.get("conn/s"), 1.25, against="Dante", to=info, words=("met", "not met"))
    ratio("p99 latency vs Dante", s.get("p99 us"), d.get("p99 us"), 1.0, higher=False, against="Dante", to=info,
          words=("met", "not met"))
    for col, what in (("down MB/s", "one session down"), ("up MB/s", "one session up"), ("32x MB/s", "32 sessions")):
        ratio("%s vs Dante" % what, s.get(col), d.get(col), 1.5, against="Dante", to=info, words=("met", "not met"))
    ratio("CPU per connection vs Dante", s.get("CPU us/conn"), d.get("CPU us/conn"), 1.0, higher=False,
          against="Dante", to=info, words=("met", "not met"))
    ratio("CPU per GB vs Dante", s.get("CPU ms/GB"), d.get("CPU ms/GB"), 1.0, higher=False, against="Dante",
          to=info, words=("met", "not met"))
    if opts.rules:
        absolute("%s: fork model conn/s" % rl, f.get("rules c/s"), ">= 1000", lambda v: v >= 1000, to=info)
        info[-1] = info[-1][:3] + ({"PASS": "met", "FAIL": "not met"}.get(info[-1][3], info[-1][3]),)
    st = extra.get("steady")
    if not st:
        info.append(("steady state: worker memory growth", "<= 10 %", "-", "n/a"))
    else:
        gp, gr = growth(st["pss"]), growth(st["rss"])
        if num(gp) is None or num(gr) is None:
            info.append(("steady state: worker memory growth", "<= 10 %", "no workers", "not met"))
        else:
            info.append(("steady state: %d vs %d conns" % (st["total"], st["first"]), "<= 10 %",
                         "PSS %+.1f %%, RSS %+.1f %%" % (gp, gr), "met" if max(gp, gr) <= 10 else "not met"))
    return out, info


def sidebyside_ratios(rows, extra):
    """The RATIOS line's keys (../shared/tools/sidebyside.py's, and more)."""
    s, d, m, direct = (rows.get(k, {}) for k in ("sockd-threads", "danted", "microsocks", "direct"))
    g = {(e["server"], e["mode"]): e["down MB/s"] for e in extra.get("gss") or ()}

    def gr(a, b):
        return quotient(g.get(a), g.get(b))
    return {
        "conn_vs_dante": quotient(s.get("conn/s"), d.get("conn/s")),
        "down_vs_dante": quotient(s.get("down MB/s"), d.get("down MB/s")),
        "up_vs_dante": quotient(s.get("up MB/s"), d.get("up MB/s")),
        "multi_vs_dante": quotient(s.get("32x MB/s"), d.get("32x MB/s")),
        "down_vs_direct": quotient(s.get("down MB/s"), direct.get("down MB/s")),
        "up_vs_direct": quotient(s.get("up MB/s"), direct.get("up MB/s")),
        "multi_vs_direct": quotient(s.get("32x MB/s"), direct.get("32x MB/s")),
        "p99_vs_dante": quotient(s.get("p99 us"), d.get("p99 us")),
        "conn_vs_microsocks": quotient(s.get("conn/s"), m.get("conn/s")),
        "p99_vs_microsocks": quotient(s.get("p99 us"), m.get("p99 us")),
        "cpu_conn_vs_microsocks": quotient(s.get("CPU us/conn"), m.get("CPU us/conn")),
        "cpu_gb_vs_microsocks": quotient(s.get("CPU ms/GB"), m.get("CPU ms/GB")),
        "fork_conn": rows.get("sockd-fork", {}).get("conn/s"),
        "held": s.get("held"), "kb_per_session": s.get("KB/sess"),
        "gss0_vs_plain": gr(("sockd-threads", "gssapi clear"), ("sockd-threads", "none")),
        "gss2_vs_plain": gr(("sockd-threads", "gssapi confidentiality"), ("sockd-threads", "none")),
        "gss2_vs_dante": gr(("sockd-threads", "gssapi confidentiality"), ("danted-gss", "gssapi confidentiality")),
    }


def results(rows, extra, errors, opts, started_at, secs):
    """Everything the run found, as one JSON-able dict (what report() prints)."""
    tl, info = targets(rows, extra, opts)
    args = {k: v for k, v in vars(opts).items() if k not in ("machine", "nofile")}
    return {
        "bench": "sockd bench/bench.py",
        "started": started_at.isoformat(timespec="seconds"),
        "secs": round(secs, 1),
        "machine": opts.machine,
        "versions": {
            "sockd": version([opts.sockd, "--version"]),
            "danted": version(["danted", "-v"]) if shutil.which("danted") else None,
            "microsocks": "installed" if shutil.which("microsocks") else None},
        "arguments": args,
        "descriptors": opts.nofile,
        "columns": COLS,
        "units": {"MB": "MiB", "GB": "GiB", "CPU": "user+system seconds of the server's process tree",
                  "CPU ms/GB": "over the down, up and 32x phases together"},
        "rows": {n: rows[n] for n in opts.rows if n in rows},
        "errors": errors,
        "ratios": ratios(rows),
        "price": price(rows, extra),
        "gss": extra.get("gss"),
        "rules": extra.get("rules"),
        "steady": extra.get("steady"),
        "targets": [dict(zip(("measure", "target", "measured", "result"), t)) for t in tl],
        "informational": [dict(zip(("measure", "target", "measured", "result"), t)) for t in info],
        "summary": {"pass": sum(1 for t in tl if t[3] == "PASS"), "fail": sum(1 for t in tl if t[3] == "FAIL"),
                    "other": sum(1 for t in tl if t[3] not in ("PASS", "FAIL"))},
        "sidebyside": sidebyside_ratios(rows, extra),
    }


def short(v):
    """A ratio in at most four characters or so."""
    return "-" if v is None else "%.2f" % v if v < 10 else "%.1f" % v if v < 100 else "%.0f" % v


def xs(v):
    return "-" if v is None else "x%.2f" % v


def report(res, opts):
    rows, errors = res["rows"], res["errors"]
    print("sockd bench, %s (%.0f s)" % (res["started"].replace("T", " "), res["secs"]))
    print("machine: %s" % machine(res["machine"]))
    v = res["versions"]
    print("sockd: %s; danted: %s; microsocks: %s" % (v["sockd"], v["danted"] or "not installed",
                                                     v["microsocks"] or "not installed"))
    print("load: %d client threads for %gs, %g MiB per session, %d idle sessions (peers at most %d), "
          "%d-line rule file, steady state %d connections, sockd/danted -N %d; descriptors: %s" % (
              opts.conc, opts.secs, opts.mib, opts.hold, min(opts.hold, opts.peer_hold), opts.rules,
              opts.steady, opts.workers, res["descriptors"]["said"]))
    print("CPU: user+system of the server's process tree; us/conn over the conn/s loop, ms/GB over the "
          "down, up and 32x phases (MB = MiB, GB = GiB); direct has no server")
    print()
    print("%-14s" % "server" + "".join("%12s" % c for c in COLS))
    for name in opts.rows:
        if name == "gss":
            continue
        if name in errors:
            print("%-14s %s" % (name, errors[name]))
        elif name in rows:
            print("%-14s" % name + "".join("%12s" % cell(rows[name].get(c)) for c in COLS))

    peers = [p for p in PEERS if p in rows]
    if peers and len(rows) > 1:
        print()
        print("ratios to %s, same run (conn/s and MB/s: higher is better; p99 and CPU: lower is better)"
              % " / ".join(peers))
        print("%-14s" % "server" + "".join("%18s" % c for c in RATIO_COLS))
        for name in rows:
            r = res["ratios"][name]
            print("%-14s" % name + "".join("%18s" % "/".join(short(r[c][p]) for p in peers) for c in RATIO_COLS))

    gss = res["gss"]
    if gss or "gss" in errors:
        print()
        print("GSS-API (RFC 1961): one session through Dante's GSS-API socksify, %g MiB (level 2: at most 512)"
              % opts.mib)
        if "gss" in errors:
            print("  %s" % errors["gss"])
        for e in gss or ():
            print("  %-14s %-24s down %9s MB/s   up %9s MB/s   server CPU %6s ms/GB" % (
                e["server"], e["mode"], cell(e["down MB/s"]), cell(e["up MB/s"]), cell(e["CPU ms/GB"])))

    if res["price"]:
        print()
        print("PRICE of each capability, against sockd-threads of this run (one run each: +-5 % is noise)")
        for e in res["price"]:
            r = e["ratios"]
            if "values" in e:
                print("  %-56s down %s, up %s, CPU/GB %s against gss none (%s down, %s up MB/s)" % (
                    e["capability"], xs(r["down MB/s"]), xs(r["up MB/s"]), xs(r["CPU ms/GB"]),
                    cell(e["values"]["down MB/s"]), cell(e["values"]["up MB/s"])))
            else:
                print("  %-56s conn/s %s, p99 %s, CPU/conn %s; down %s, up %s, 32x %s, CPU/GB %s" % (
                    e["capability"], xs(r["conn/s"]), xs(r["p99 us"]), xs(r["CPU us/conn"]), xs(r["down MB/s"]),
                    xs(r["up MB/s"]), xs(r["32x MB/s"]), xs(r["CPU ms/GB"])))

    ru = res["rules"]
    if ru:
        def secs(x):
            return x if x == FAIL or x is None else "%.2f s" % x
        print()
        print("%d-line rule file (sockd-threads): sockd -V %s, start-up to 'listening' %s, "
              "reload (SIGHUP to 'reloaded') %s" % (ru["lines"], secs(ru["check secs"]), secs(ru["start secs"]),
                                                    secs(ru["reload secs"])))
    st = res["steady"]
    if st:
        print()
        print("steady state (sockd-threads, %d workers): after %d connections PSS %d kB RSS %d kB; "
              "after %d: PSS %d kB RSS %d kB; %d failed tries" % (
                  st["workers"], st["first"], st["pss"][0], st["rss"][0], st["total"], st["pss"][1],
                  st["rss"][1], st["errors"]))
    print()
    print("TARGETS (issue 17; sockd-threads unless the line says fork)")
    lines = [(t["measure"], t["target"], t["measured"], t["result"]) for t in res["targets"] + res["informational"]]
    w = max(len(t[0]) for t in lines)
    for t in res["targets"]:
        print("  %-*s  %-22s %-28s %s" % (w, t["measure"], t["target"], t["measured"], t["result"]))
    sm = res["summary"]
    print("  %d PASS, %d FAIL, %d not measured" % (sm["pass"], sm["fail"], sm["other"]))
    print("informational (issue 7's, against Dante; not counted)")
    for t in res["informational"]:
        print("  %-*s  %-22s %-28s %s" % (w, t["measure"], t["target"], t["measured"], t["result"]))
    print()
    print("RATIOS " + " ".join("%s=%s" % kv for kv in res["sidebyside"].items()))


# ------------------------------------------------------------ JSON and chart

def write_outputs(res, out_dir, started_at):
    """Write the JSON and, with matplotlib, the chart into ``out_dir``; the
    lines to print about them."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, "bench-" + started_at.strftime("%Y%m%d-%H%M%S"))
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1, sort_keys=False)
        f.write("\n")
    said = ["wrote %s" % (stem + ".json")]
    if plt is None:
        said.append("no chart: matplotlib is not installed (pip install 'sockd[bench]'; make bench installs it)")
    elif not res["rows"]:
        said.append("no chart: no row was measured")
    else:
        chart(res, stem + ".png")
        said.append("wrote %s" % (stem + ".png"))
    return said


def bar_label(v):
    """A bar's figure on the chart: a failed phase says so ("fail", as in
    the table), a cell with no figure (direct's CPU) is "-"."""
    if v == FAIL:
        return FAIL
    v = num(v)
    return "-" if v is None else cell(float(v))


def chart(res, path):
    """One panel per column of CHART_COLS, one bar per server."""
    names = list(res["rows"])
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colours = {"direct": "#999999", "danted": "#d9822b", "microsocks": "#8e5ea2"}
    for ax, col in zip(axes.flat, CHART_COLS):
        vals = [num(res["rows"][n].get(col)) for n in names]
        ys = range(len(names))
        ax.barh(ys, [v or 0 for v in vals], color=[colours.get(n, "#3a76af") for n in names])
        ax.set_yticks(list(ys))
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        better = "lower is better" if col.startswith("CPU") else "higher is better"
        ax.set_title("%s (%s)" % (col, better), fontsize=11)
        top = max([v for v in vals if v is not None] or [1])
        for y, n, v in zip(ys, names, vals):
            ax.text((v or 0) + top * 0.01, y, bar_label(res["rows"][n].get(col)), va="center", fontsize=8)
        ax.set_xlim(0, top * 1.18)
        ax.grid(axis="x", alpha=0.3)
    m = res["machine"]
    fig.suptitle("sockd bench %s: %d cores, %s; the proxy, the load generator and the target share them"
                 % (res["started"][:16].replace("T", " "), m["nproc"], m["cpu"]), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------ main

def parse(argv):
    ap = argparse.ArgumentParser(description="sockd side by side with direct loopback, Dante and microsocks")
    ap.add_argument("--sockd", default=os.path.join(ROOT, ".venv", "bin", "sockd"), help="the sockd to run")
    ap.add_argument("--only", default=",".join(ROWS),
                    help="rows to run, comma-separated (%s; 'sockd' = both sockd rows)" % ",".join(ROWS))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --secs 1 --mib 64 --hold 200 --hold-secs 0.2 --rules 1000 --steady 4000")
    ap.add_argument("--out", default=os.path.join(HERE, "out"),
                    help="directory of the JSON and the chart (default bench/out)")
    ap.add_argument("--workers", type=int, default=2, help="-N for sockd and danted (default 2)")
    ap.add_argument("--conc", type=int, default=8, help="client threads in the rate loop (default 8)")
    ap.add_argument("--secs", type=float, help="seconds of each rate loop (default 4)")
    ap.add_argument("--mib", type=float, help="MiB moved by one session (default 1024)")
    ap.add_argument("--hold", type=int, help="idle sessions to hold through sockd (default %d; 0: skip)"
                    % HOLD_TARGET)
    ap.add_argument("--peer-hold", type=int, default=8000,
                    help="at most this many through Dante and microsocks (default 8000: a thread or process "
                         "per few clients, and the machine's pid_max)")
    ap.add_argument("--hold-secs", type=float, help="wait between the two checks of the idle sessions (default 3)")
    ap.add_argument("--rules", type=int, help="lines in the rule file (default %d; 0: skip)" % RULES_TARGET)
    ap.add_argument("--steady", type=int, help="connections of the steady-state check (default 200000; 0: skip)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    opts = ap.parse_args(argv)
    quick = dict(secs=1, mib=64, hold=200, hold_secs=0.2, rules=1000, steady=4000)
    full = dict(secs=4, mib=1024, hold=HOLD_TARGET, hold_secs=3, rules=RULES_TARGET, steady=200000)
    for k, v in (quick if opts.quick else full).items():
        if getattr(opts, k) is None:
            setattr(opts, k, v)
    wanted = []
    for n in opts.only.split(","):
        n = n.strip()
        names = ["sockd-threads", "sockd-fork"] if n == "sockd" else [n]
        for x in names:
            if x not in ROWS:
                ap.error("--only: unknown row %r (rows: %s)" % (x, ", ".join(ROWS)))
            if x not in wanted:
                wanted.append(x)
    opts.rows = [r for r in ROWS if r in wanted]
    return opts


def raise_nofile(hold):
    """Raise RLIMIT_NOFILE, soft and hard, so that everything started from
    here inherits room for ``hold`` sessions: the load generator and its
    target one descriptor each, a proxy two (-N 1 at worst), and some to
    spare.  Root may raise the hard limit up to fs.nr_open; anyone may raise
    the soft one to the hard.  Returns what was done, for the report."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * hold + 4096
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = hard
    new = (soft, hard)
    if soft < want:
        for lim in ((min(want, ceiling), max(hard, min(want, ceiling))), (hard, hard)):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, lim)
                new = lim
                break
            except (ValueError, OSError):
                continue
    said = ("RLIMIT_NOFILE %d (hard %d)" % new if new == (soft, hard) else
            "RLIMIT_NOFILE raised from %d (hard %d) to %d (hard %d)" % ((soft, hard) + new))
    if new[0] < want:
        said += (", short of the %d that a proxy holding --hold %d needs (the load generator and the target "
                 "are split into processes that fit)" % (want, hold))
    return {"before": [soft, hard], "after": list(new), "wanted": want, "said": said}


def target_port(target, timeout=10):
    """The port the target server prints on its first line, or None."""
    sel = selectors.DefaultSelector()
    sel.register(target.stdout, selectors.EVENT_READ)
    try:
        ready = sel.select(timeout)
    finally:
        sel.close()
    m = re.match(r"port=(\d+)", target.stdout.readline() if ready else "")
    return int(m.group(1)) if m else None


def main(argv=None):
    opts = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started_at, t0 = datetime.datetime.now().astimezone(), time.monotonic()
    opts.machine = machine_info(os.getloadavg())
    opts.nofile = raise_nofile(max(opts.hold, 1))
    workdir = tempfile.mkdtemp(prefix="sockd-bench-")
    rows, extra, errors = {}, {}, {}
    status = 0
    try:
        opts.loadgen = build_loadgen(workdir)
        target = spawn([opts.loadgen, "target"], stdout=subprocess.PIPE, text=True)
        opts.target_port = target_port(target)
        if opts.target_port is None:
            raise RuntimeError("the target server did not start")
        if opts.hold:
            # the idle sessions' far ends: a target of their own, in as many
            # processes as the descriptor limit needs
            ht = spawn([opts.loadgen, "target", str(per_process(opts.hold))], stdout=subprocess.PIPE, text=True)
            opts.hold_port = target_port(ht)
            if opts.hold_port is None:
                raise RuntimeError("the hold target did not start")
        for name in opts.rows:
            if name.startswith("sockd") and not os.access(opts.sockd, os.X_OK):
                errors[name] = "no sockd at %s (make venv)" % opts.sockd
                continue
            if name in ("danted", "microsocks") and not shutil.which(name):
                errors[name] = "not installed (Debian package %s)" % (
                    "dante-server" if name == "danted" else name)
                continue
            try:
                run_row(name, opts, workdir, rows, extra)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors[name] = "error: %s" % exc
                status = 1
        res = results(rows, extra, errors, opts, started_at, time.monotonic() - t0)
        report(res, opts)
        print()
        for line in write_outputs(res, opts.out, started_at):
            print(line)
    except (Stop, KeyboardInterrupt) as exc:
        note("interrupted (%s)" % (exc or "SIGINT"))
        status = 130
    except RuntimeError as exc:
        note("error: %s" % exc)
        status = 1
    finally:
        for p in list(started):
            stop(p)
        if opts.keep:
            note("work directory kept: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

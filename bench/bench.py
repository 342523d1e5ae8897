#!/usr/bin/env python3
"""`make bench`: sockd side by side with direct loopback, Dante and microsocks.

One run on one machine, one load generator (bench/loadgen.c, compiled here
with gcc), every server on 127.0.0.1 one after the other, so that the ratios
between rows hold even when the absolute figures drift with the machine's
load.  Prints one table, the issue-7 targets with PASS/FAIL, and a `RATIOS`
line with the same keys as ../shared/tools/sidebyside.py.

    bench/bench.py [--quick] [--only direct,sockd-threads,sockd-metrics,sockd-fork,danted,microsocks]
                   [--secs 4] [--hold 8000] [--mib 1024] [--steady 200000] [--rules 1000]

Rows: `direct` (no proxy: the physical limit), `sockd-threads` (sockd -N 2),
`sockd-hop` (sockd -N 2 whose way-out file sends everything through a
second sockd -N 2 on the same machine: what one extra hop costs, both
servers' CPU included), `sockd-metrics` (sockd -N 2 with `metrics` on and
scraped once a second, as Prometheus would: what counting and reporting
cost; conn/s and bulk only), `sockd-fork` (sockd -m fork), `danted` (Dante, -N 2)
and `microsocks`; the last two only when installed.  `--only sockd` means
the threads and fork rows.

What is measured (columns):
  conn/s, p99 us   8 client threads, each looping: connect, SOCKS 5 CONNECT,
                   32-byte echo (the target closes first), close with RST
  rate err         failed tries in that loop
  down/up MB/s     one session moving --mib MiB from / to the target
                   (upload needs half-close to be relayed); MB = MiB
  32x MB/s         32 sessions at once, each downloading --mib/16 MiB
  held             idle sessions opened and all answering, checked twice
  KB/sess          PSS of the server's whole process tree while holding them,
                   minus before, divided by the sessions
  rules c/s, p99   the conn/s loop again against a fresh sockd whose rule
                   file has --rules lines, the matching one last
  steady %         a fresh sockd (threads model): worker PSS after --steady
                   connections against after --steady/20 (200,000 vs 10,000)

GSS-API (RFC 1961; rows `gss`, when the test bed is there: make test-deps):
one session down and up through Dante's GSS-API socksify (loadgen bulk
direct, its connect() handed to the SOCKS server by the preloaded client
library), against sockd -N 2 with methods gssapi none and against Dante's
GSS-API server, for method none ("plain", the same client path), GSS-API
level 0 (clear) and level 2 (confidentiality).  The realm is a throwaway
MIT KDC on loopback (tests/gsskit.py).  CPU s/GB: the server's whole process
tree, user+system, per GiB moved.

Every process is started in its own session and stopped by its own process
group; nothing is found or killed by name.
"""
import argparse
import datetime
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = ["direct", "sockd-threads", "sockd-metrics", "sockd-hop", "sockd-fork", "danted", "microsocks", "gss"]
COLS = ["conn/s", "p99 us", "rate err", "down MB/s", "up MB/s", "32x MB/s", "held", "KB/sess",
        "rules c/s", "rules p99", "steady %"]
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


def tree_cpu(root):
    """User+system CPU seconds of ``root`` and its descendants, so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree(root):
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields_ = f.read().rsplit(")", 1)[1].split()
            total += int(fields_[11]) + int(fields_[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def tree_pss(root):
    return sum(rollup(p)[0] for p in tree(root))


def workers_mem(root):
    """(PSS, RSS, count) summed over the master's descendants."""
    pids = [p for p in tree(root) if p != root]
    mem = [rollup(p) for p in pids]
    return sum(m[0] for m in mem), sum(m[1] for m in mem), len(pids)


# ------------------------------------------------------------ servers

class Server:
    def __init__(self, name, proc, port, workdir, back=None):
        self.name, self.proc, self.port, self.workdir = name, proc, port, workdir
        self.back = back          # sockd-hop: the second sockd, behind this one

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


def start_server(name, opts, workdir, target_port, rules=0):
    back = None
    if name == "sockd-hop":
        back = start_server("sockd-threads", opts, workdir, target_port)
    d = tempfile.mkdtemp(prefix=name + "-", dir=workdir)
    log_path = os.path.join(d, "out.log")
    log = open(log_path, "w")
    if name.startswith("sockd"):
        conf = os.path.join(d, "sockd.conf")
        lines = ["listen 127.0.0.1:0"]
        lines += rule_lines(rules, target_port) if rules else ["permit 127.0.0.0 255.0.0.0"]
        if name == "sockd-metrics":
            lines.append("metrics 127.0.0.1:0")
        if back is not None:
            wayout = os.path.join(d, "wayout")
            with open(wayout, "w") as f:
                f.write("sockd @=socks5://127.0.0.1:%d ALL\n" % back.port)
            lines.append("upstream %s" % wayout)
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        cmd = [opts.sockd, "-F", "-f", conf]
        cmd += ["-m", "fork"] if name == "sockd-fork" else ["-N", str(opts.workers)]
        proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        port, end = None, time.monotonic() + 20
        while time.monotonic() < end and proc.poll() is None:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", open(log_path, errors="replace").read())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.1)
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
    return Server(name, proc, port, d, back)


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


def rate(opts, proxy, count=0):
    f = loadgen(opts, "rate", proxy, opts.target_port, opts.conc, opts.secs, count,
                timeout=opts.secs + 60 + count / 200)
    return f.get("conn_per_s", 0.0), f.get("p99_us", 0.0), int(f.get("errors", 0))


def bulk(opts, proxy, streams, mib, direction):
    f = loadgen(opts, "bulk", proxy, opts.target_port, streams, mib, direction, timeout=600)
    if not f or f.get("failed", 1) != 0:
        return FAIL
    return f["MB_per_s"]


def hold(opts, proxy, root):
    """(held, KB per session)."""
    before = tree_pss(root)
    h = subprocess.Popen([opts.loadgen, "hold", proxy, str(opts.target_port), str(opts.hold)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    started.append(h)
    try:
        first = h.stdout.readline()
        during = tree_pss(root)
        time.sleep(opts.hold_secs)
        h.stdin.write("go\n")
        h.stdin.close()
        rest = h.stdout.read()
        h.wait(120)
    finally:
        stop(h)
    passes = [fields(line) for line in (first + rest).splitlines() if line.startswith("hold ")]
    if not passes:
        return 0, FAIL
    held = int(min(p.get("alive", 0) for p in passes))
    opened = int(passes[0].get("opened", 0))
    return held, round((during - before) / max(1, opened), 1)


def measure(name, opts, proxy, root=None):
    res = {}
    note("%s: connection rate" % name)
    res["conn/s"], res["p99 us"], res["rate err"] = rate(opts, proxy)
    note("%s: one session down, up; 32 sessions down" % name)
    res["down MB/s"] = bulk(opts, proxy, 1, opts.mib, "down")
    res["up MB/s"] = bulk(opts, proxy, 1, opts.mib, "up")
    res["32x MB/s"] = bulk(opts, proxy, 32, opts.mib / 16, "down")
    if root is not None and opts.hold and name not in ("sockd-fork", "sockd-hop", "sockd-metrics"):
        note("%s: holding %d idle sessions" % (name, opts.hold))
        res["held"], res["KB/sess"] = hold(opts, proxy, root)
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
        _, _, errors = rate(opts, s.port, opts.steady - first)
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
        rows[name] = measure(name, opts, str(s.port), s.proc.pid)
    finally:
        if scraper is not None:
            scraper.stop()
        s.stop()
    if scraper is not None and not scraper.scrapes:
        raise RuntimeError("the metrics endpoint answered no scrape: %s" % scraper.error)
    if name in ("sockd-threads", "sockd-fork") and opts.rules:
        note("%s: connection rate with a %d-line rule file" % (name, opts.rules))
        s = start_server(name, opts, workdir, opts.target_port, rules=opts.rules)
        try:
            c, p99, _ = rate(opts, str(s.port))
            rows[name]["rules c/s"], rows[name]["rules p99"] = c, p99
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
    """The GSS-API table: [(server, mode, down, up, cpu s/GB)]."""
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
                out.append(("sockd-threads", mode) + gss_measure(opts, prefix, env, d, port, proc.pid, level))
        finally:
            stop(proc, signal.SIGINT)
        dante = gsskit.DantedGss(realm, d, levels=(0, 2), name="danted-gss-bench")
        try:
            for mode, level in GSS_MODES[1:]:
                out.append(("danted-gss", mode) + gss_measure(opts, prefix, env, d, dante.port, dante.proc.pid,
                                                               level))
        finally:
            dante.stop()
    finally:
        realm.stop()
    extra["gss"] = out
    return out


def gss_measure(opts, prefix, env, d, port, root, level):
    """(down MB/s, up MB/s, server CPU s per GiB) for one session each way
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
    return res[0], res[1], round(cpu / moved, 2) if moved else FAIL


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


def machine(load):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    return "nproc %d, kernel %s, CPU %s, load average at start %s" % (
        os.cpu_count(), platform.release(), cpu, ", ".join("%.2f" % x for x in load))


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        m = re.search(r"\d+(\.\d+)+", r.stdout + r.stderr)
        return m.group(0) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def targets(rows, extra, opts):
    """[(measure, target, measured, result)]"""
    s, f = rows.get("sockd-threads", {}), rows.get("sockd-fork", {})
    d, m, direct = rows.get("danted", {}), rows.get("microsocks", {}), rows.get("direct", {})
    out = []

    def ratio(label, a, b, bound, higher=True, unit="x", ok_words=("PASS", "FAIL"), against=""):
        a, b = num(a), num(b)
        if a is None or b is None or b == 0:
            out.append((label, ("%s %.2f%s %s" % (">=" if higher else "<=", bound, unit, against)).strip(),
                        "-", "n/a"))
            return
        r = a / b
        good = r >= bound if higher else r <= bound
        out.append((label, "%s %.2f%s %s" % (">=" if higher else "<=", bound, unit, against),
                    "%.2f%s" % (r, unit), ok_words[0] if good else ok_words[1]))

    def absolute(label, v, target, good):
        v = num(v)
        out.append((label, target, "-" if v is None else cell(float(v)),
                    "n/a" if v is None else ("PASS" if good(v) else "FAIL")))

    ratio("conn/s vs Dante", s.get("conn/s"), d.get("conn/s"), 1.25, against="Dante")
    ratio("conn/s vs microsocks (aim)", s.get("conn/s"), m.get("conn/s"), 1.0, against="microsocks",
          ok_words=("met", "not met"))
    ratio("p99 latency vs Dante", s.get("p99 us"), d.get("p99 us"), 1.0, higher=False, against="Dante")
    ratio("one session down vs Dante", s.get("down MB/s"), d.get("down MB/s"), 1.5, against="Dante")
    ratio("one session up vs Dante", s.get("up MB/s"), d.get("up MB/s"), 1.5, against="Dante")
    ratio("one session down vs direct", s.get("down MB/s"), direct.get("down MB/s"), 0.5, against="direct")
    ratio("one session up vs direct", s.get("up MB/s"), direct.get("up MB/s"), 0.5, against="direct")
    ratio("32 sessions vs Dante", s.get("32x MB/s"), d.get("32x MB/s"), 1.5, against="Dante")
    held = num(s.get("held"))
    if held is None:
        out.append(("idle sessions held, all answering", ">= 8000", "-", "n/a"))
    else:
        result = "FAIL" if held < opts.hold else ("PASS" if held >= 8000 else "n/a (--hold < 8000)")
        out.append(("idle sessions held, all answering", ">= 8000", "%d of %d" % (held, opts.hold), result))
    absolute("memory per idle session (KB PSS)", s.get("KB/sess"), "<= 24 KB", lambda v: v <= 24)
    absolute("fork model conn/s", f.get("conn/s"), ">= 500", lambda v: v >= 500)
    rl = "%d rules" % opts.rules if opts.rules else "rule file (--rules 0)"
    ratio("%s: conn/s vs Dante" % rl, s.get("rules c/s"), d.get("conn/s"), 1.25,
          against="Dante")
    ratio("%s: p99 vs Dante" % rl, s.get("rules p99"), d.get("p99 us"), 1.0, higher=False,
          against="Dante")
    absolute("%s: fork model conn/s" % rl, f.get("rules c/s"), ">= 500", lambda v: v >= 500)
    st = extra.get("steady")
    if not st:
        out.append(("steady state: worker memory growth", "<= 10 %", "-", "n/a"))
    else:
        gp, gr = growth(st["pss"]), growth(st["rss"])
        if num(gp) is None or num(gr) is None:
            out.append(("steady state: worker memory growth", "<= 10 %", "no workers", "FAIL"))
        else:
            label = "steady state: %d vs %d conns" % (st["total"], st["first"])
            out.append((label, "<= 10 %", "PSS %+.1f %%, RSS %+.1f %%" % (gp, gr),
                        "PASS" if max(gp, gr) <= 10 else "FAIL"))
    return out


def report(rows, extra, errors, opts, started_at, secs):
    print("sockd bench, %s (%.0f s)" % (started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip(), secs))
    print("machine: %s" % machine(opts.load_at_start))
    print("sockd: %s; danted: %s; microsocks: %s" % (
        version([opts.sockd, "--version"]),
        version(["danted", "-v"]) if shutil.which("danted") else "not installed",
        "installed" if shutil.which("microsocks") else "not installed"))
    print("load: %d client threads for %gs, %g MiB per session, %d idle sessions, %d-line rule file, "
          "steady state %d connections, sockd/danted -N %d" % (
              opts.conc, opts.secs, opts.mib, opts.hold, opts.rules, opts.steady, opts.workers))
    print()
    print("%-14s" % "server" + "".join("%11s" % c for c in COLS))
    for name in opts.rows:
        if name == "gss":
            continue
        if name in errors:
            print("%-14s %s" % (name, errors[name]))
        elif name in rows:
            print("%-14s" % name + "".join("%11s" % cell(rows[name].get(c)) for c in COLS))
    gss = extra.get("gss")
    if gss or "gss" in errors:
        print()
        print("GSS-API (RFC 1961): one session through Dante's GSS-API socksify, %g MiB (level 2: at most 512)"
              % opts.mib)
        if "gss" in errors:
            print("  %s" % errors["gss"])
        for server, mode, down, up, cpu in gss or ():
            print("  %-14s %-24s down %9s MB/s   up %9s MB/s   server CPU %6s s/GB" % (
                server, mode, cell(down), cell(up), cell(cpu)))
    met, one = rows.get("sockd-metrics"), rows.get("sockd-threads")
    if met and one:
        def y(k):
            a, b = num(met.get(k)), num(one.get(k))
            return "x%.2f" % (a / b) if a is not None and b else "-"
        print()
        print("metrics on (sockd-metrics, scraped every second) against off (sockd-threads): conn/s %s, "
              "p99 %s, down %s, up %s, 32x %s" % (y("conn/s"), y("p99 us"), y("down MB/s"), y("up MB/s"),
                                                 y("32x MB/s")))
    hop = rows.get("sockd-hop")
    if hop and one:
        def x(k):
            a, b = num(hop.get(k)), num(one.get(k))
            return "x%.2f" % (a / b) if a is not None and b else "-"
        print()
        print("one extra hop (sockd-hop against sockd-threads, both servers on this machine): conn/s %s, "
              "p99 %s, down %s, up %s, 32x %s" % (x("conn/s"), x("p99 us"), x("down MB/s"), x("up MB/s"),
                                                 x("32x MB/s")))
    st = extra.get("steady")
    if st:
        print()
        print("steady state (sockd-threads, %d workers): after %d connections PSS %d kB RSS %d kB; "
              "after %d: PSS %d kB RSS %d kB; %d failed tries" % (
                  st["workers"], st["first"], st["pss"][0], st["rss"][0], st["total"], st["pss"][1],
                  st["rss"][1], st["errors"]))
    print()
    print("TARGETS (issue 7; sockd-threads unless the line says fork)")
    tl = targets(rows, extra, opts)
    w = max(len(t[0]) for t in tl)
    for label, target, measured, result in tl:
        print("  %-*s  %-22s %-28s %s" % (w, label, target, measured, result))
    passed = sum(1 for t in tl if t[3] == "PASS")
    failed = sum(1 for t in tl if t[3] == "FAIL")
    print("  %d PASS, %d FAIL, %d not measured or informational" % (passed, failed, len(tl) - passed - failed))
    s, d, direct = rows.get("sockd-threads", {}), rows.get("danted", {}), rows.get("direct", {})

    def r(a, b, k):
        a, b = num(a.get(k)), num(b.get(k))
        return round(a / b, 2) if a is not None and b else None
    print()
    g = {(srv, mode): (down, up) for srv, mode, down, up, _ in extra.get("gss") or ()}

    def gr(a, b):
        a, b = num(g.get(a, (None,))[0]), num(g.get(b, (None,))[0])
        return round(a / b, 2) if a is not None and b else None
    print("RATIOS conn_vs_dante=%s down_vs_dante=%s up_vs_dante=%s multi_vs_dante=%s down_vs_direct=%s "
          "p99_vs_dante=%s held=%s kb_per_session=%s gss0_vs_plain=%s gss2_vs_plain=%s gss2_vs_dante=%s" % (
              r(s, d, "conn/s"), r(s, d, "down MB/s"), r(s, d, "up MB/s"), r(s, d, "32x MB/s"),
              r(s, direct, "down MB/s"), r(s, d, "p99 us"), s.get("held"), s.get("KB/sess"),
              gr(("sockd-threads", "gssapi clear"), ("sockd-threads", "none")),
              gr(("sockd-threads", "gssapi confidentiality"), ("sockd-threads", "none")),
              gr(("sockd-threads", "gssapi confidentiality"), ("danted-gss", "gssapi confidentiality"))))


# ------------------------------------------------------------ main

def parse(argv):
    ap = argparse.ArgumentParser(description="sockd side by side with direct loopback, Dante and microsocks")
    ap.add_argument("--sockd", default=os.path.join(ROOT, ".venv", "bin", "sockd"), help="the sockd to run")
    ap.add_argument("--only", default=",".join(ROWS),
                    help="rows to run, comma-separated (%s; 'sockd' = both sockd rows)" % ",".join(ROWS))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --secs 1 --mib 64 --hold 200 --hold-secs 0.2 --steady 4000")
    ap.add_argument("--workers", type=int, default=2, help="-N for sockd and danted (default 2)")
    ap.add_argument("--conc", type=int, default=8, help="client threads in the rate loop (default 8)")
    ap.add_argument("--secs", type=float, help="seconds of each rate loop (default 4)")
    ap.add_argument("--mib", type=float, help="MiB moved by one session (default 1024)")
    ap.add_argument("--hold", type=int, help="idle sessions to hold (default 8000; 0: skip)")
    ap.add_argument("--hold-secs", type=float, help="wait between the two checks of the idle sessions (default 3)")
    ap.add_argument("--rules", type=int, default=1000, help="lines in the rule file (default 1000; 0: skip)")
    ap.add_argument("--steady", type=int, help="connections of the steady-state check (default 200000; 0: skip)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    opts = ap.parse_args(argv)
    quick = dict(secs=1, mib=64, hold=200, hold_secs=0.2, steady=4000)
    full = dict(secs=4, mib=1024, hold=8000, hold_secs=3, steady=200000)
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


def main(argv=None):
    opts = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started_at, t0 = datetime.datetime.now().astimezone(), time.monotonic()
    opts.load_at_start = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="sockd-bench-")
    rows, extra, errors = {}, {}, {}
    status = 0
    try:
        opts.loadgen = build_loadgen(workdir)
        target = spawn([opts.loadgen, "target"], stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([target.stdout], [], [], 10)
        m = re.match(r"port=(\d+)", target.stdout.readline() if ready else "")
        if not m:
            raise RuntimeError("the target server did not start")
        opts.target_port = int(m.group(1))
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
        report(rows, extra, errors, opts, started_at, time.monotonic() - t0)
    except (Stop, KeyboardInterrupt) as exc:
        note("interrupted (%s)" % (exc or "SIGINT"))
        status = 130
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

#!/usr/bin/env python3
"""How long a client waits for its SOCKS reply when inetd starts one sockd
per connection, with a 10,000-line sockd.conf.

Starts openbsd-inetd (inetd -d) on loopback with three services, all the
line of etc/inetd.conf run through env(1) so that they differ only in the
configuration and SOCKD_CACHE_DIR:

    small   a 3-line configuration (the floor: Python and sockd starting)
    cold    the 10,000-line configuration, cache off (parsed every time)
    warm    the same file with the parsed-configuration cache filled

and times, for each, from connect() to the 8-byte SOCKS 4 reply of a
CONNECT to a local echo server; the permitting rule is the last line, so
the request is matched against every rule.  Prints median, 90th
percentile and minimum in milliseconds.

    sudo python3 bench/inetd_startup.py [-n RUNS] [--json]

Everything runs on 127.0.0.1 and is stopped by PID at the end.
"""

import argparse
import json
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_SOCKD = os.path.join(ROOT, ".venv", "bin", "sockd")
SOCKD = VENV_SOCKD if os.path.exists(VENV_SOCKD) else os.path.join(ROOT, "bin", "sockd")


def big_config(path, lines=10000, seed=1):
    """A configuration of ``lines`` lines in the classic forms: deny lines
    with and without destinations, users and ports, and the permit line
    that lets the benchmark's client through at the very end."""
    rnd = random.Random(seed)
    out = ["# %d-line configuration for bench/inetd_startup.py" % lines, "log socket /nonexistent/bench"]
    while len(out) < lines - 1:
        a, b, c = rnd.randrange(1, 223), rnd.randrange(256), rnd.randrange(256)
        kind = len(out) % 4
        if kind == 0:
            out.append("deny 10.%d.%d.0 255.255.255.0 %d.%d.%d.0 255.255.255.0 eq %d"
                       % (b, c, a, b, c, rnd.randrange(1, 65535)))
        elif kind == 1:
            out.append("deny *=user%d,other%d 192.168.%d.%d 255.255.255.255" % (len(out), len(out), b, c))
        elif kind == 2:
            out.append("permit ?=i 172.%d.%d.0 255.255.255.0 %d.%d.0.0 255.255.0.0 lt 1024" % (16 + b % 16, c, a, b))
        else:
            out.append("deny 10.%d.0.0/16 eq telnet" % b)
    out.append("permit 127.0.0.0 255.0.0.0")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return len(out)


def echo_server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)

    def run():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.close()
    threading.Thread(target=run, daemon=True).start()
    return s


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def one(port, target_port):
    t0 = time.perf_counter()
    c = socket.create_connection(("127.0.0.1", port), 10)
    c.sendall(struct.pack("!BBH4s", 4, 1, target_port, socket.inet_aton("127.0.0.1")) + b"bench\0")
    rep = b""
    while len(rep) < 8:
        chunk = c.recv(8 - len(rep))
        if not chunk:
            break
        rep += chunk
    t1 = time.perf_counter()
    c.close()
    if len(rep) != 8 or rep[1] != 90:
        raise RuntimeError("unexpected reply %r" % rep)
    return (t1 - t0) * 1000.0


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("inetd did not open port %d" % port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=30, help="connections per service (default 30)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    inetd = shutil.which("inetd") or "/usr/sbin/inetd"
    env_prog = shutil.which("env") or "/usr/bin/env"
    if not os.path.exists(inetd):
        sys.exit("openbsd-inetd is not installed (apt-get install openbsd-inetd)")
    work = tempfile.mkdtemp(prefix="sockd-bench-")
    os.chmod(work, 0o755)
    big = os.path.join(work, "big.conf")
    nlines = big_config(big)
    small = os.path.join(work, "small.conf")
    with open(small, "w") as f:
        f.write("# small\nlog socket /nonexistent/bench\npermit 127.0.0.0 255.0.0.0\n")
    cache = os.path.join(work, "cache")
    me = pwd.getpwuid(os.getuid()).pw_name
    services = {"small": (small, ""), "cold": (big, ""), "warm": (big, cache)}
    ports = {name: free_port() for name in services}
    conf = os.path.join(work, "inetd.conf")
    with open(conf, "w") as f:
        for name, (cfg, cdir) in services.items():
            f.write("127.0.0.1:%d\tstream\ttcp\tnowait.10000\t%s\t%s\tenv SOCKD_CACHE_DIR=%s %s --inetd -f %s\n"
                    % (ports[name], me, env_prog, cdir, SOCKD, cfg))
    target = echo_server()
    tport = target.getsockname()[1]
    log = open(os.path.join(work, "inetd.log"), "wb")
    p = subprocess.Popen([inetd, "-d", conf], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results = {}
    try:
        for port in ports.values():
            wait_port(port)
        # fill the cache, and let its writer finish
        one(ports["warm"], tport)
        end = time.monotonic() + 30
        while not (os.path.isdir(cache) and os.listdir(cache)) and time.monotonic() < end:
            time.sleep(0.1)
        if not os.listdir(cache):
            raise RuntimeError("the cache was not written")
        for name in services:
            one(ports[name], tport)               # warm the page cache
        for name in services:
            times = []
            for _ in range(args.n):
                times.append(one(ports[name], tport))
                time.sleep(0.05)                  # let the previous sockd leave
            times.sort()
            results[name] = {"median_ms": round(statistics.median(times), 1),
                             "p90_ms": round(times[int(len(times) * 0.9) - 1], 1),
                             "min_ms": round(times[0], 1), "runs": len(times)}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        target.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"config_lines": nlines, "results": results}, indent=2))
        return
    print("connect -> SOCKS 4 reply under openbsd-inetd, %d runs each (%s)" % (args.n, SOCKD))
    print("%-6s %-34s %8s %8s %8s" % ("", "configuration", "median", "p90", "min"))
    labels = {"small": "3 lines", "cold": "%d lines, no cache" % nlines, "warm": "%d lines, cache" % nlines}
    for name, r in results.items():
        print("%-6s %-34s %6.1fms %6.1fms %6.1fms" % (name, labels[name], r["median_ms"], r["p90_ms"], r["min_ms"]))


if __name__ == "__main__":
    main()

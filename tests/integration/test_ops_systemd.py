"""systemd without systemd: socket activation through the real
systemd-socket-activate(1) (LISTEN_FDS, LISTEN_FDNAMES), and the
readiness protocol (NOTIFY_SOCKET) heard by a receiver of the test's own,
as systemd would hear it: READY=1, RELOADING=1 with MONOTONIC_USEC and
READY=1 on SIGHUP, STOPPING=1, STATUS= and the watchdog.  Every process is
stopped by its PID."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest

import helpers
from helpers import SOCKD, need, wait_for
from opshelp import NotifyReceiver, children_of, cmdline

PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"


@pytest.fixture
def notify(tmp_path):
    r = NotifyReceiver(tmp_path)
    yield r
    r.close()


@pytest.fixture
def activate(tmp_path):
    """activate(conf_text, listen=[...], names=None, env={}) runs
    ``systemd-socket-activate -l ADDR... sockd -F -f FILE``; stopped by PID."""
    exe = need("systemd-socket-activate")
    started = []

    def start(conf, listen, names=None, env=None, args=()):
        path = tmp_path / ("sockd%d.conf" % len(started))
        path.write_text(conf)
        cmd = [exe]
        for addr in listen:
            cmd += ["-l", addr]
        if names:
            cmd += ["--fdname=" + ":".join(names)]
        for k, v in (env or {}).items():
            cmd += ["-E", "%s=%s" % (k, v)]
        cmd += [SOCKD, "-F", "-f", str(path)] + list(args)
        log = open(tmp_path / ("activate%d.log" % len(started)), "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        p.log_path, p.conf_path = tmp_path / ("activate%d.log" % len(started)), path
        started.append((p, log))
        # systemd-socket-activate listens first, then execs sockd on the
        # first client: wait until it listens
        for addr in listen:
            wait_for(lambda: b"Listening on %s" % addr.encode() in p.log_path.read_bytes() or p.poll() is not None,
                     10, what="systemd-socket-activate on %s" % addr)
        return p
    yield start
    for p, log in started:
        helpers.kill_pid(p)
        log.close()


def log_of(p):
    return p.log_path.read_text(errors="replace")


def curl(port, www, scheme="socks5h"):
    r = subprocess.run([need("curl"), "-sS", "--max-time", "10", "-x", "%s://127.0.0.1:%d" % (scheme, port),
                        www.url("hello.txt", "localhost")], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def test_socket_activation_serves_and_notifies_ready_reloading_ready_stopping(activate, notify, www, model,
                                                                               tmp_path):
    port = helpers.free_port()
    p = activate("model %s\nworkers 2\n" % model + PERMIT_LOCAL, ["127.0.0.1:%d" % port],
                 env={"NOTIFY_SOCKET": notify.address})
    # the first client makes systemd-socket-activate exec sockd, which
    # serves it on the inherited socket
    rc, out = curl(port, www)
    assert rc == 0 and out == "hello through sockd\n", out + log_of(p)
    ready = notify.until("READY")
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("serving: generation 1 (%s model)" % model)
    assert cmdline(p.pid).startswith("sockd: master -f ")          # exec'd in place: MAINPID is sockd
    text = log_of(p)
    assert "listening on 127.0.0.1:%d (%s model, from systemd: fd 3, unknown)" % (port, model) in text
    assert "0.0.0.0:1080" not in text                             # no listen line: the default is not opened
    if model == "threads":
        assert len(children_of(p.pid)) == 2
    # SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC, READY=1 once the
    # new generation serves; the inherited socket stays, a new line is added
    p.conf_path.write_text(p.conf_path.read_text() + "listen 127.0.0.1:0\n")
    before = time.monotonic()
    os.kill(p.pid, signal.SIGHUP)
    reloading = notify.until("RELOADING")
    after = time.monotonic()
    assert reloading["RELOADING"] == "1"
    assert before * 1e6 - 1e6 <= int(reloading["MONOTONIC_USEC"]) <= after * 1e6
    ready = notify.until("READY")
    assert "generation 2" in ready["STATUS"], notify.got
    line = wait_for(lambda: re.search(r"reloaded .*listening on ([^;]*)", log_of(p)), 10, what="the reloaded line")
    served = sorted(int(q) for q in re.findall(r"127\.0\.0\.1:(\d+)", line.group(1)))
    assert len(served) == 2 and port in served, line.group(0)
    (added,) = [q for q in served if q != port]
    for q in (port, added):
        rc, out = curl(q, www)
        assert rc == 0 and out == "hello through sockd\n", (q, out)
    # SIGTERM: STOPPING=1, and gone
    os.kill(p.pid, signal.SIGTERM)
    assert notify.until("STOPPING")["STOPPING"] == "1"
    assert p.wait(15) == 0


def test_named_sockets_a_listen_line_takes_its_own_and_a_missing_name_stops_the_start(activate, www, tmp_path):
    a, b = helpers.free_port(), helpers.free_port()
    conf = "listen systemd:plain\nlisten 127.0.0.1:%d\nworkers 1\n" % b + PERMIT_LOCAL
    p = activate(conf, ["127.0.0.1:%d" % a, "127.0.0.1:%d" % b], names=["plain", "other"])
    for port in (a, b):
        rc, out = curl(port, www, "socks4a")
        assert rc == 0 and out == "hello through sockd\n", out + log_of(p)
    text = log_of(p)
    assert "listening on 127.0.0.1:%d (threads model, from systemd: fd 3, plain)" % a in text
    # the line for b's address took the inherited socket: no second bind
    assert "listening on 127.0.0.1:%d (threads model, from systemd: fd 4, other)" % b in text
    assert "cannot listen" not in text
    helpers.kill_pid(p)
    # a file that wants a socket systemd did not pass: a clear refusal, status 1
    c = helpers.free_port()
    q = activate("listen systemd:nope\n" + PERMIT_LOCAL, ["127.0.0.1:%d" % c], names=["plain"])
    try:
        socket.create_connection(("127.0.0.1", c), 5).close()        # the client that starts it
    except OSError:
        pass
    assert q.wait(15) == 1
    assert "listen systemd:nope: no such socket was inherited from systemd" in log_of(q)


def test_watchdog_pings_and_status_counts_live_clients(activate, tmp_path, echo_server):
    port = helpers.free_port()
    notify = NotifyReceiver(tmp_path, abstract=True)           # an '@' address this time
    try:
        p = activate("workers 1\n" + PERMIT_LOCAL, ["127.0.0.1:%d" % port],
                     env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "600000"})
        live, rep = helpers.socks4_connect(("127.0.0.1", port), "127.0.0.1", echo_server.port, "fred")
        assert rep == 90
        assert notify.until("READY")["READY"] == "1"
        t0 = time.monotonic()
        pings = 0
        status = None
        while time.monotonic() - t0 < 8:
            msg = notify.next(2)
            pings += "WATCHDOG" in msg
            status = msg.get("STATUS", status)
            if pings >= 5 and status and "1 client," in status:
                break
        assert pings >= 5, notify.got                           # every 0.3 s
        assert "serving: generation 1 (threads model), 1 client, 1 worker" == status, notify.got
        live.close()
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        notify.close()


def test_a_foreground_sockd_under_notify_socket_without_activation(tmp_path, notify, www):
    """Type=notify without a .socket unit: the listen lines, READY=1 once
    every worker serves, and the status line a systemctl status shows; the
    commands sockd runs do not see NOTIFY_SOCKET."""
    env_file = tmp_path / "hook-env.txt"
    conf = "listen 127.0.0.1:0\nworkers 2\npermit 127.0.0.0 255.0.0.0 : env > %s\n" % env_file
    d = helpers.Sockd(tmp_path, conf, env=dict(os.environ, NOTIFY_SOCKET=notify.address))
    try:
        ready = notify.until("READY")
        assert ready["STATUS"] == "serving: generation 1 (threads model), 0 clients, 2 workers"
        rc, out = curl(d.port, www)
        assert rc == 0, out
        wait_for(lambda: env_file.exists() and "PATH=" in env_file.read_text(), 10, what="the hook's env")
        assert "NOTIFY_SOCKET" not in env_file.read_text()
        os.kill(d.proc.pid, signal.SIGHUP)
        assert notify.until("RELOADING")["RELOADING"] == "1"
        assert notify.until("READY")["READY"] == "1"
        # a broken file: READY=1 all the same (systemd waits for it), with the reason
        with open(d.conf_path, "a") as f:
            f.write("frobnicate\n")
        os.kill(d.proc.pid, signal.SIGHUP)
        notify.until("RELOADING")
        assert notify.until("READY")["STATUS"].startswith("reload failed: 1 problem in ")
    finally:
        d.stop()
    assert notify.until("STOPPING")["STOPPING"] == "1"

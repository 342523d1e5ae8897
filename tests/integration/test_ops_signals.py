"""Signals, against a real sockd in both process models: SIGHUP reloads
(new rules for new clients, live connections kept, a broken file changes
nothing, listeners added and dropped, everything the file names re-read,
``reload recheck``), SIGTERM drains within ``timeout shutdown``, SIGINT
stops at once, SIGUSR1 reports."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import helpers
from helpers import wait_for
from opshelp import children_of, cmdline, ops_user  # noqa: F401

PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"


def rewrite(s, conf):
    tmp = s.conf_path + ".new"
    with open(tmp, "w") as f:
        f.write(conf)
    os.replace(tmp, s.conf_path)


def hup(s, count):
    """Send SIGHUP and wait for the count-th reload to be done (or refused)."""
    os.kill(s.proc.pid, signal.SIGHUP)
    wait_for(lambda: len(re.findall(r"reloaded |reload failed", s.log())) >= count, 15,
             what="reload number %d:\n%s" % (count, s.log()[-2000:]))


def connect4(s, port, user="fred", addr=None):
    return helpers.socks4_connect(addr or s.addr, "127.0.0.1", port, user)


def assert_echoes(c, payload=b"still here"):
    c.sendall(payload)
    assert helpers.recv_exact(c, len(payload)) == payload


def wait_workers_settled(s, n):
    """Old workers gone and n workers of the new generation up."""
    wait_for(lambda: (lambda ws: len(ws) == n and all(re.fullmatch(r"sockd: worker \d+ \(\d+ clients\)",
                                                                   cmdline(w)) for w in ws))(
        children_of(s.proc.pid)), 10, what="%d settled workers" % n)


def test_hup_new_rules_for_new_clients_live_connection_kept(start_sockd, echo_server, model):
    listen = "listen 127.0.0.1:0\n"
    s = start_sockd(listen + PERMIT_LOCAL, model=model, workers=2)
    live, rep = connect4(s, echo_server.port)
    assert rep == 90
    assert_echoes(live)
    rewrite(s, listen + "deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq %d\n" % echo_server.port
            + PERMIT_LOCAL)
    hup(s, 1)
    assert "reloaded %s: 2 rules" % s.conf_path in s.log()
    # new clients get the new rules ...
    for _ in range(6):                                 # whichever worker takes them
        c, rep = connect4(s, echo_server.port)
        assert rep == 91
        c.close()
    s.wait_log(r"refused -- Connect from fred\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 \(\d+\) by .*:2")
    # ... while the open connection keeps working
    assert_echoes(live)
    if model == "threads":
        # the old workers finish their clients, then go
        assert any(cmdline(w).endswith("finishing") for w in children_of(s.proc.pid))
        live.close()
        wait_workers_settled(s, 2)
    else:
        live.close()
    s.wait_log(r"terminated -- Connect from fred\(unknown\)@127\.0\.0\.1")


def test_hup_with_a_broken_file_keeps_the_old_rules(start_sockd, echo_server, model):
    s = start_sockd("listen 127.0.0.1:0\n" + PERMIT_LOCAL, model=model, workers=2)
    if model == "threads":
        wait_workers_settled(s, 2)
    before = children_of(s.proc.pid)
    rewrite(s, "listen 127.0.0.1:0\ndeny 0/0\nfrobnicate on\npermit 10.0.0.0 255.0.0.0 eq 99999\n" + PERMIT_LOCAL)
    hup(s, 1)
    log = s.log()
    assert "%s:3: unknown directive" % s.conf_path in log
    assert re.search(r"%s:4: .*near '99999'" % re.escape(s.conf_path), log)
    assert "reload failed: 2 problems in %s; still running with the previous configuration" % s.conf_path in log
    assert "Traceback" not in log
    for _ in range(4):
        c, rep = connect4(s, echo_server.port)
        assert rep == 90
        assert_echoes(c)
        c.close()
    if model == "threads":
        assert sorted(children_of(s.proc.pid)) == sorted(before)     # nothing restarted


def test_hup_adds_and_drops_listeners_without_refusing_on_the_others(start_sockd, echo_server, model):
    keep, drop, add = "127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"
    s = start_sockd("listen %s\nlisten %s\n" % (keep, drop) + PERMIT_LOCAL, model=model, workers=2)
    ports = dict(s.ports)
    kept, dropped = ("127.0.0.1", ports["127.0.0.1"]), ("127.0.0.2", ports["127.0.0.2"])
    failures, done, count = [], threading.Event(), [0]

    def hammer():
        while not done.is_set():
            try:
                c, rep = helpers.socks4_connect(kept, "127.0.0.1", echo_server.port, "fred", timeout=10)
                if rep != 90:
                    failures.append("reply %d" % rep)
                c.close()
                count[0] += 1
            except OSError as exc:
                failures.append(repr(exc))
    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        wait_for(lambda: count[0] >= 5, 10, what="connections before the reload")
        rewrite(s, "listen %s\nlisten %s\n" % (keep, add) + PERMIT_LOCAL)
        hup(s, 1)
        n = count[0]
        wait_for(lambda: count[0] >= n + 20, 20, what="connections after the reload")
    finally:
        done.set()
        t.join(15)
    assert not failures, failures[:5]
    log = s.log()
    assert "no longer listening on 127.0.0.2:%d" % dropped[1] in log
    added = int(re.search(r"listening on 127\.0\.0\.3:(\d+)", log).group(1))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(dropped, 5)
    c, rep = helpers.socks4_connect(("127.0.0.3", added), "127.0.0.1", echo_server.port, "fred")
    assert rep == 90
    assert_echoes(c)
    c.close()


def test_hup_rereads_the_files_the_configuration_names(start_sockd, echo_server, tmp_path, model):
    users = tmp_path / "users"
    users.write_text("fred\n")
    s = start_sockd("permit *=/%s 127.0.0.0 255.0.0.0\n" % str(users).lstrip("/"), model=model, workers=1)
    c, rep = connect4(s, echo_server.port, "fred")
    assert rep == 90
    c.close()
    users.write_text("wilma\n")                   # the configuration file itself is unchanged
    hup(s, 1)
    c, rep = connect4(s, echo_server.port, "fred")
    assert rep == 91
    c, rep = connect4(s, echo_server.port, "wilma")
    assert rep == 90
    c.close()


def test_reload_recheck_closes_what_the_new_rules_refuse(start_sockd, echo_server, model):
    other = helpers.TCPServer(helpers.echo_handler)
    try:
        s = start_sockd("listen 127.0.0.1:0\n" + PERMIT_LOCAL, model=model, workers=2)
        doomed, rep = connect4(s, echo_server.port)
        assert rep == 90
        kept, rep = connect4(s, other.port)
        assert rep == 90
        assert_echoes(doomed)
        assert_echoes(kept)
        rewrite(s, "listen 127.0.0.1:0\nreload recheck yes\n"
                   "deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq %d\n" % echo_server.port + PERMIT_LOCAL)
        hup(s, 1)
        s.wait_log(r"refused -- Connect from fred\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 \(%d\): "
                   r"no longer permitted after reload \(denied by .*:3\)" % echo_server.port)
        doomed.settimeout(5)
        assert helpers.recv_all(doomed) == b""                  # closed by sockd
        assert_echoes(kept)                                     # still permitted: kept
        c, rep = connect4(s, echo_server.port)
        assert rep == 91
        kept.close()
    finally:
        other.close()


def test_sigterm_lets_live_connections_finish_then_exits_0(start_sockd, echo_server, model):
    s = start_sockd(PERMIT_LOCAL, model=model, workers=2)
    live, rep = connect4(s, echo_server.port)
    assert rep == 90
    os.kill(s.proc.pid, signal.SIGTERM)
    s.wait_log(r"stopping \(SIGTERM\)")
    # no new clients: the listening socket is closed at once
    wait_for(lambda: _refused(s.addr), 5, what="the listener to close")
    time.sleep(0.5)
    assert_echoes(live)                          # the live one goes on
    assert s.proc.poll() is None
    live.close()
    assert s.proc.wait(10) == 0
    assert "stopped" in s.log()


def _refused(addr):
    try:
        socket.create_connection(addr, 2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.serial
def test_sigterm_closes_what_is_left_after_timeout_shutdown(start_sockd, echo_server, model):
    s = start_sockd("timeout shutdown 1\n" + PERMIT_LOCAL, model=model, workers=1)
    live, rep = connect4(s, echo_server.port)
    assert rep == 90
    t0 = time.monotonic()
    os.kill(s.proc.pid, signal.SIGTERM)
    live.settimeout(10)
    assert helpers.recv_all(live) == b""
    assert 0.8 < time.monotonic() - t0 < 6
    assert s.proc.wait(10) == 0
    if model == "threads":
        assert re.search(r"worker 1: closing 1 connection still open after 1s \(timeout shutdown\)", s.log())


@pytest.mark.serial
def test_sigint_stops_at_once(start_sockd, echo_server, model):
    s = start_sockd(PERMIT_LOCAL, model=model, workers=2)
    live, rep = connect4(s, echo_server.port)
    assert rep == 90
    t0 = time.monotonic()
    os.kill(s.proc.pid, signal.SIGINT)
    s.proc.wait(10)
    assert time.monotonic() - t0 < 3
    live.settimeout(5)
    assert helpers.recv_all(live) == b""
    assert "stopping now (SIGINT)" in s.log()


def test_sigusr1_writes_the_state_to_the_log(start_sockd, echo_server, model):
    s = start_sockd(PERMIT_LOCAL, model=model, workers=2)
    live, rep = connect4(s, echo_server.port)
    assert rep == 90
    c, rep = connect4(s, echo_server.port)
    c.close()
    s.wait_log(r"terminated -- Connect from fred")
    os.kill(s.proc.pid, signal.SIGUSR1)
    if model == "threads":
        s.wait_log(r"master \(pid %d, threads model, generation 1, up \d+s, .*: 1 rules\): 2 workers, 0 finishing; "
                   r"since start: 2 workers started, 0 died, 0 reloads \(0 failed\)" % s.proc.pid)
        s.wait_log(r"worker 1 \(pid \d+, generation 1\): \d+ clients; since start \d+s ago: accepted \d+, "
                   r"connected \d+")
        s.wait_log(r"worker 2 \(pid \d+, generation 1\): \d+ clients")
        lines = re.findall(r"worker \d \(pid \d+, generation 1\): (\d+) clients; since start \d+s ago: "
                           r"accepted (\d+)", s.log())
        assert sum(int(n) for n, _ in lines) == 1 and sum(int(a) for _, a in lines) == 2
    else:
        s.wait_log(r"master \(pid %d, fork model, generation 1, up \d+s, .*\): [12] children \(limit 512\); "
                   r"since start: 2 clients, 0 reloads \(0 failed\)" % s.proc.pid)
        s.wait_log(r"child \(pid \d+, generation 1\): Connect from fred\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1")
    live.close()


def test_reload_whose_workers_cannot_start_keeps_the_old_ones(tmp_path, echo_server, ops_user):
    """The new workers start beside the old ones: when they cannot (here the
    new file names a user, and sockd runs without CAP_SETUID/CAP_SETGID),
    the old configuration, ports and workers go on."""
    setpriv = helpers.need("setpriv")
    conf = tmp_path / "s.conf"
    conf.write_text("listen 127.0.0.1:0\nworkers 2\n" + PERMIT_LOCAL)
    logp = tmp_path / "log"
    logf = open(logp, "wb")
    p = subprocess.Popen([setpriv, "--bounding-set", "-setuid,-setgid", "--", helpers.SOCKD, "-F", "-f", str(conf)],
                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = int(wait_for(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", logp.read_text()), 15,
                            what="the start").group(1))
        master = wait_for(lambda: (lambda c: c[0] if c else None)(children_of(p.pid)), 5, what="the master")
        master = p.pid if cmdline(p.pid).startswith("sockd: master") else master
        wait_for(lambda: len(children_of(master)) == 2, 10, what="two workers")
        before = sorted(children_of(master))
        live, rep = helpers.socks4_connect(("127.0.0.1", port), "127.0.0.1", echo_server.port, "fred")
        assert rep == 90
        conf.write_text("listen 127.0.0.1:0\nworkers 2\nuser %s\ndeny 0/0\n" % ops_user.pw_name)
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: "reload failed" in logp.read_text(), 15, what="the reload to fail")
        text = logp.read_text()
        assert re.search(r"worker \d could not start: cannot set the groups of %s" % ops_user.pw_name, text)
        assert re.search(r"reload failed: worker \d could not start \(the reason is logged above\); still running "
                         r"with the previous configuration", text)
        wait_for(lambda: sorted(children_of(master)) == before, 10, what="only the old workers")
        c, rep = helpers.socks4_connect(("127.0.0.1", port), "127.0.0.1", echo_server.port, "fred")
        assert rep == 90                                      # the old rules
        c.close()
        assert_echoes(live)
        live.close()
    finally:
        helpers.kill_pid(p)
        logf.close()

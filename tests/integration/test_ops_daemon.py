"""Running sockd as a daemon, as an administrator would: detaching with a
pid file, process titles, privileges (user, group, chroot), the open-files
limit, workers that die or cannot start."""

import os
import re
import signal
import socket
import struct
import subprocess
import time

import pytest

import helpers
from helpers import SOCKD, need, wait_for
from opshelp import (Daemon, SyslogSink, alive, cmdline, children_of, free_port, ops_user, ppid_of,  # noqa: F401
                     read_pid, server_pid_of, stop_pid, uid_of)

PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"


@pytest.fixture
def sink():
    s = SyslogSink()
    yield s
    s.close()


@pytest.fixture
def daemons(tmp_path, sink):
    made = []

    def make(conf, args=(), name=None, **kw):
        d = Daemon(tmp_path, conf, sink, args=args, name=name or "daemon%d" % len(made), **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def echo_through(proxy, echo_port, payload=b"ping", version=5, user=""):
    if version == 5:
        c, rep, _ = helpers.socks5_connect(proxy, "127.0.0.1", echo_port)
        assert rep == 0
    else:
        c, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_port, user)
        assert rep == 90
    c.sendall(payload)
    assert helpers.recv_exact(c, len(payload)) == payload
    return c


def test_detaches_writes_pidfile_and_stops_on_sigterm(daemons, sink, echo_server):
    d = daemons(PERMIT_LOCAL + "workers 2\n")
    r = d.start()
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    # the shell got control back with the pid file already in place
    pid = d.pid
    assert pid and alive(pid)
    assert pid != os.getpid() and ppid_of(pid) != os.getpid()
    assert os.getsid(pid) != os.getsid(0)                       # its own session: no terminal
    assert os.readlink("/proc/%d/cwd" % pid) == "/"
    with open("/proc/%d/fd/0" % pid, "rb"):
        assert os.readlink("/proc/%d/fd/0" % pid) == "/dev/null"
    # ps shows what each process is
    assert cmdline(pid) == "sockd: master -f %s" % d.conf_path
    workers = children_of(pid)
    assert len(workers) == 2
    titles = sorted(cmdline(w) for w in workers)
    assert titles == ["sockd: worker 1 (0 clients)", "sockd: worker 2 (0 clients)"]
    port = sink.ports()[0]
    c = echo_through(("127.0.0.1", port), echo_server.port)
    handler = server_pid_of(c)
    assert handler in workers
    wait_for(lambda: cmdline(handler).endswith("(1 clients)"), 5, what="the worker title to count the client")
    c.close()
    wait_for(lambda: cmdline(handler).endswith("(0 clients)"), 5, what="the worker title to drop the client")
    sink.wait(r"sockd\[%d\]: sockd \S+ starting \(pid %d\); open files limit \d+" % (pid, pid))
    # SIGTERM: it stops, removes its pid file, and leaves no process behind
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 10, what="the master to exit")
    assert not os.path.exists(d.pidfile)
    assert not any(alive(w) for w in workers)
    sink.wait(r"sockd\[%d\]: stopped" % pid)


def test_live_pidfile_refuses_start_and_stale_one_is_replaced(daemons, sink, tmp_path):
    d = daemons(PERMIT_LOCAL + "workers 1\n")
    assert d.start().returncode == 0
    first = d.pid
    # a second one with the same pid file is refused, clearly, with status 1
    again = subprocess.run(d.cmd, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1
    assert "already running as pid %d (pid file %s)" % (first, d.pidfile) in again.stderr
    assert read_pid(d.pidfile) == first and alive(first)
    d.stop()
    assert not os.path.exists(d.pidfile)
    # a stale pid file (its process has gone) is replaced
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(d.pidfile, "w") as f:
        f.write("%d\n" % dead.pid)
    r = d.start()
    assert r.returncode == 0, r.stderr
    assert d.pid != dead.pid and alive(d.pid)
    # the pidfile directive does the same as -p
    d.stop()
    pf = str(tmp_path / "directive.pid")
    conf = PERMIT_LOCAL + "workers 1\npidfile %s\n" % pf
    e = daemons(conf, name="directive")
    e.cmd = [SOCKD, "-f", e.conf_path]
    assert e.start().returncode == 0
    e.pid = read_pid(pf)
    assert e.pid and alive(e.pid) and cmdline(e.pid).startswith("sockd: master")
    e.stop()
    assert not os.path.exists(pf)


def test_start_failures_reach_the_shell(daemons, sink, tmp_path):
    # a port that is taken: reported before detaching, exit status 1
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        d = daemons("listen 127.0.0.1:%d\n" % port + PERMIT_LOCAL)
        r = d.start()
        assert r.returncode == 1
        assert "cannot listen on 127.0.0.1:%d: Address already in use" % port in r.stderr
        assert not os.path.exists(d.pidfile)
    finally:
        busy.close()
    # a configuration error: FILE:LINE and the token, no traceback
    d = daemons(PERMIT_LOCAL + "frobnicate 3\n", name="bad")
    r = d.start()
    assert r.returncode == 1
    assert re.search(r"bad\.conf:\d+: unknown directive .*near 'frobnicate'", r.stderr)
    assert "Traceback" not in r.stderr
    # contradictory flags
    r = subprocess.run([SOCKD, "-F", "-D", "-f", d.conf_path], capture_output=True, text=True)
    assert r.returncode == 2


@pytest.mark.parametrize("model", ["threads", "fork"])
def test_worker_that_cannot_start_stops_the_master(tmp_path, sink, model, ops_user):
    """Without CAP_SETUID/CAP_SETGID (as in some containers) a worker cannot
    become the configured user: the master stops with the reason instead of
    restarting workers forever."""
    setpriv = need("setpriv")
    conf = tmp_path / "s.conf"
    conf.write_text("listen 127.0.0.1:0\nlog socket %s\nuser %s\nworkers 2\nmodel %s\n" % (
        sink.path, ops_user.pw_name, model) + PERMIT_LOCAL)
    t0 = time.monotonic()
    r = subprocess.run([setpriv, "--bounding-set", "-setuid,-setgid", "--", SOCKD, "-F", "-f", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - t0 < 15
    assert re.search(r"(worker \d|a child) could not start: cannot set the groups of %s: Operation not permitted"
                     % ops_user.pw_name, r.stderr), r.stderr
    assert re.search(r"could not start \(the reason is logged above\); stopping", r.stderr)
    assert r.stderr.count("could not start:") <= 2        # no restart loop
    assert "Traceback" not in r.stderr


def test_worker_that_dies_is_replaced(start_sockd, echo_server):
    s = start_sockd(PERMIT_LOCAL, workers=2)
    workers = wait_for(lambda: (lambda w: w if len(w) == 2 and all("worker" in cmdline(p) for p in w) else None)(
        children_of(s.proc.pid)), 10, what="two workers")
    victim = workers[0]
    number = wait_for(lambda: re.search(r"worker (\d+)", cmdline(victim)), 5, what="a title").group(1)
    os.kill(victim, signal.SIGKILL)
    s.wait_log(r"worker %s \(pid %d\) exited with signal 9; starting another" % (number, victim))
    new = wait_for(lambda: (lambda w: w if len(w) == 2 and victim not in w else None)(children_of(s.proc.pid)), 10,
                   what="a replacement worker")
    wait_for(lambda: any(cmdline(w) == "sockd: worker %s (0 clients)" % number for w in new), 5,
             what="the replacement's title")
    for _ in range(4):
        echo_through(s.addr, echo_server.port).close()


@pytest.mark.parametrize("model", ["threads", "fork"])
def test_privileges_are_dropped_where_clients_are_served(start_sockd, echo_server, ops_user, model):
    low = free_port(low=600, high=1000)
    s = start_sockd("listen 127.0.0.1:0\nlisten 127.0.0.1:%d\nuser %s\n" % (low, ops_user.pw_name) + PERMIT_LOCAL,
                    model=model, workers=2)
    assert s.ports[1][1] == low                     # a port below 1024, bound by the root master
    assert uid_of(s.proc.pid) == 0
    for port in (s.port, low):
        c = echo_through(("127.0.0.1", port), echo_server.port, version=4, user="fred")
        handler = server_pid_of(c)
        assert handler != s.proc.pid and ppid_of(handler) == s.proc.pid
        assert uid_of(handler) == ops_user.pw_uid
        with open("/proc/%d/status" % handler) as f:
            st = f.read()
        assert re.search(r"^Gid:\s+%d\s+%d" % (ops_user.pw_gid, ops_user.pw_gid), st, re.M)
        assert re.search(r"^Groups:\s*%d?\s*$" % ops_user.pw_gid, st, re.M)
        if model == "fork":
            # the classic per-client title, with nothing secret in it
            wait_for(lambda: cmdline(handler) == "sockd: fred@127.0.0.1 -> 127.0.0.1:%d" % echo_server.port, 5,
                     what="the child's title, got %r" % cmdline(handler))
        c.close()
    if model == "threads":
        wait_for(lambda: (lambda ws: len(ws) == 2 and all(uid_of(w) == ops_user.pw_uid for w in ws))(
            children_of(s.proc.pid)), 10, what="both workers to run as %s" % ops_user.pw_name)


def test_chroot(start_sockd, echo_server, ops_user, tmp_path, model):
    jail = tmp_path / "jail"
    jail.mkdir()
    s = start_sockd("chroot %s\nuser %s\n" % (jail, ops_user.pw_name) + PERMIT_LOCAL, model=model, workers=1)
    c = echo_through(s.addr, echo_server.port)
    handler = server_pid_of(c)
    assert os.readlink("/proc/%d/root" % handler) == str(jail)
    assert uid_of(handler) == ops_user.pw_uid
    c.close()
    # log lines still arrive (the syslog socket was connected before the chroot)
    s.wait_log(r"terminated -- Connect from .* to 127\.0\.0\.1")
    assert os.readlink("/proc/%d/root" % s.proc.pid) == "/"


def test_no_secret_in_titles_or_argv(start_sockd, echo_server, tmp_path):
    from sockd import passwd
    pw = "s3cret-Pa55word"
    pwfile = tmp_path / "users"
    pwfile.write_text("fred:%s\n" % passwd.make_hash(pw.encode(), cost=4))
    s = start_sockd("methods username\npasswd %s\n" % pwfile + PERMIT_LOCAL, model="fork")
    c = socket.create_connection(s.addr, 10)
    c.sendall(b"\x05\x01\x02")
    assert helpers.recv_exact(c, 2) == b"\x05\x02"
    c.sendall(b"\x01\x04fred" + bytes([len(pw)]) + pw.encode())
    assert helpers.recv_exact(c, 2) == b"\x01\x00"
    c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_server.port))
    assert helpers.recv_exact(c, 10)[1] == 0
    c.sendall(b"x")
    assert helpers.recv_exact(c, 1) == b"x"
    handler = server_pid_of(c)
    wait_for(lambda: "fred@" in cmdline(handler), 5, what="the child's title")
    for pid in [s.proc.pid] + children_of(s.proc.pid):
        assert pw not in cmdline(pid)
        with open("/proc/%d/environ" % pid, "rb") as f:
            assert pw.encode() not in f.read()
    c.close()
    assert pw not in s.log()


def test_open_files_limit_is_raised_and_logged(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("listen 127.0.0.1:0\n" + PERMIT_LOCAL)
    import resource

    def low_soft():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
    logf = open(tmp_path / "log", "wb")
    p = subprocess.Popen([SOCKD, "-F", "-N", "1", "-f", str(conf)], stdout=logf, stderr=subprocess.STDOUT,
                         preexec_fn=low_soft, start_new_session=True)
    try:
        wait_for(lambda: b"open files limit" in (tmp_path / "log").read_bytes(), 15, what="the start line")
        assert b"open files limit 4096" in (tmp_path / "log").read_bytes()
        with open("/proc/%d/limits" % p.pid) as f:
            assert re.search(r"Max open files\s+4096\s+4096", f.read())
    finally:
        helpers.kill_pid(p)
        logf.close()


def test_journal_stream_suppresses_the_stderr_copy(tmp_path):
    """Under systemd (-F, standard error to the journal, JOURNAL_STREAM set)
    the syslog lines are not written to standard error a second time."""
    sink = SyslogSink()
    conf = tmp_path / "s.conf"
    conf.write_text("listen 127.0.0.1:0\nlog socket %s\n" % sink.path + PERMIT_LOCAL)
    errf = open(tmp_path / "err", "wb")
    st = os.fstat(errf.fileno())
    env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
    p = subprocess.Popen([SOCKD, "-F", "-N", "1", "-f", str(conf)], stdout=errf, stderr=errf, env=env,
                         start_new_session=True)
    try:
        sink.wait(r"listening on 127\.0\.0\.1:\d+")
        assert (tmp_path / "err").read_bytes() == b""
    finally:
        helpers.kill_pid(p)
        errf.close()
        sink.close()


def test_workers_stop_by_themselves_when_the_master_is_killed(start_sockd, echo_server, model):
    s = start_sockd("timeout shutdown 1\n" + PERMIT_LOCAL, model=model, workers=2)
    live = echo_through(s.addr, echo_server.port)
    handler = server_pid_of(live)
    others = children_of(s.proc.pid)
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(5)
    # its processes notice, let the live client finish within timeout shutdown, and go
    wait_for(lambda: not any(alive(p) for p in others + [handler]), 10, what="the orphans to leave")
    live.settimeout(5)
    assert helpers.recv_all(live) == b""

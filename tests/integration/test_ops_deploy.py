"""The deployment files of etc/, run for real where a test can: inetd mode
under openbsd-inetd with the etc/inetd.conf line, the SysV script's start,
status, reload, restart and stop, the systemd unit's commands (and
systemd-analyze verify on both units), and syslog through a real
rsyslogd.  Socket activation and NOTIFY_SOCKET in full: test_ops_systemd.py."""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time

import pytest

import helpers
from helpers import ROOT, SOCKD, need, wait_for
from opshelp import (NotifyReceiver, SyslogSink, alive, cmdline, children_of, free_port, ops_user,  # noqa: F401
                     ppid_of, read_pid, server_pid_of, stop_pid, uid_of)

ETC = os.path.join(ROOT, "etc")
PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"
INSTALLED = "/usr/local/bin/sockd"


def etc_lines(name):
    with open(os.path.join(ETC, name)) as f:
        return [ln for ln in f.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def wait_port(host, port, timeout=15):
    def up():
        try:
            socket.create_connection((host, port), 0.5).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout, what="%s:%d to accept" % (host, port))


@pytest.fixture
def sink():
    s = SyslogSink()
    yield s
    s.close()


# --- inetd ---------------------------------------------------------------------------------------

@pytest.fixture
def inetd(tmp_path):
    """inetd(8) on a private configuration; stopped by its PID."""
    exe = need("inetd")
    started = []

    def start(lines, env=None):
        conf = tmp_path / "inetd.conf"
        conf.write_text("\n".join(lines) + "\n")
        log = open(tmp_path / "inetd.log", "wb")
        # -d: debug on stderr, no detaching; -E: keep our environment
        p = subprocess.Popen([exe, "-d", "-E", str(conf)], stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        started.append((p, log))
        return p
    yield start
    for p, log in started:
        helpers.kill_pid(p)
        log.close()


def inetd_line(port, conf, extra=""):
    """The line of etc/inetd.conf, pointed at this checkout, a test port
    and a test configuration."""
    (line,) = etc_lines("inetd.conf")
    fields = line.split(None, 6)
    assert fields[:5] == ["socks", "stream", "tcp", "nowait", "root"], fields
    assert fields[5] == INSTALLED and fields[6] == "sockd --inetd -f /etc/sockd.conf"
    fields[0] = "127.0.0.1:%d" % port
    fields[5] = SOCKD
    fields[6] = fields[6].replace("/etc/sockd.conf", str(conf)) + extra
    return "\t".join(fields)


def test_inetd_mode_under_openbsd_inetd(inetd, tmp_path, sink, www, echo_server, ops_user):
    cache_dir = tmp_path / "cache"
    conf = tmp_path / "sockd.conf"
    conf.write_text("log socket %s\nlog facility local2\nuser %s\n" % (sink.path, ops_user.pw_name)
                    + "deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq 9\n" + PERMIT_LOCAL)
    port = free_port()
    p = inetd([inetd_line(port, conf, " -d 1")], env=dict(os.environ, SOCKD_CACHE_DIR=str(cache_dir)))
    wait_port("127.0.0.1", port)
    proxy = ("127.0.0.1", port)
    # SOCKS 4, by hand: the process serving it was started by inetd and is
    # no longer root
    c, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_server.port, "fred")
    assert rep == 90
    c.sendall(b"ping4")
    assert helpers.recv_exact(c, 5) == b"ping4"
    handler = server_pid_of(c)
    assert ppid_of(handler) == p.pid
    assert uid_of(handler) == ops_user.pw_uid
    c.close()
    # SOCKS 5 and 4A with curl, and a refusal
    curl = need("curl")
    for scheme in ("socks5h", "socks5", "socks4a", "socks4"):
        r = subprocess.run([curl, "-sS", "--max-time", "10", "-x", "%s://127.0.0.1:%d" % (scheme, port),
                            www.url("hello.txt", "localhost" if scheme.endswith(("h", "a")) else None)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (scheme, r.stderr)
        assert r.stdout == "hello through sockd\n"
    c, rep, _ = helpers.socks5_connect(proxy, "127.0.0.1", 9)
    assert rep == 2
    # the classic lines, from one sockd per client, with the facility
    sink.wait(r"<%d>\w+ +\d+ [\d:]+ sockd\[\d+\]: connected -- Connect from fred\(unknown\)@127\.0\.0\.1 to "
              r"127\.0\.0\.1 \(%d\)" % (18 * 8 + 5, echo_server.port))
    sink.wait(r"sockd\[\d+\]: terminated -- Connect from .* to localhost \(%d\)" % www.port)
    sink.wait(r"sockd\[\d+\]: refused -- Connect from unknown\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 \(discard\) "
              r"by %s:4" % re.escape(str(conf)))
    pids = set(re.findall(r"sockd\[(\d+)\]: connected", sink.text()))
    assert len(pids) >= 5
    # the first sockd parsed and wrote the cache; later ones read it
    wait_for(lambda: len(os.listdir(cache_dir)) == 1, 10, what="the configuration cache")
    (cached,) = os.listdir(cache_dir)
    assert os.stat(cache_dir / cached).st_mode & 0o777 == 0o600
    c, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_server.port, "wilma")
    assert rep == 90
    c.close()
    sink.wait(r"configuration from the cache for %s" % re.escape(str(conf)))
    # an edit is seen at once (the cache no longer matches the file)
    conf.write_text(conf.read_text().replace("eq 9\n", "eq %d\n" % echo_server.port))
    c, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_server.port, "barney")
    assert rep == 91
    assert p.poll() is None


def test_inetd_mode_detected_when_stdin_is_a_socket(tmp_path, sink, echo_server):
    """Without --inetd: a socket on standard input means inetd mode."""
    conf = tmp_path / "sockd.conf"
    conf.write_text("log socket %s\n" % sink.path + PERMIT_LOCAL)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    c = socket.create_connection(lsock.getsockname(), 5)
    server_side, _ = lsock.accept()
    env = dict(os.environ, SOCKD_CACHE_DIR="")
    p = subprocess.Popen([SOCKD, "-f", str(conf)], stdin=server_side, stdout=subprocess.DEVNULL, env=env)
    server_side.close()
    try:
        c.sendall(b"\x04\x01" + echo_server.port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + b"joe\0")
        assert helpers.recv_exact(c, 8)[1] == 90
        c.sendall(b"hi")
        assert helpers.recv_exact(c, 2) == b"hi"
        c.close()
        assert p.wait(10) == 0
    finally:
        helpers.kill_pid(p)
        lsock.close()
    sink.wait(r"terminated -- Connect from joe\(unknown\)@127\.0\.0\.1")


def test_xinetd_file_matches_the_inetd_line():
    """xinetd cannot be installed beside openbsd-inetd (Debian marks them as
    conflicting), so its file is checked against the inetd line that the
    test above runs."""
    text = open(os.path.join(ETC, "xinetd.d", "socks")).read()
    assert re.search(r"^service socks\s*\{", text, re.M) and text.rstrip().endswith("}")
    attrs = dict(re.findall(r"^\s*(\w+)\s*\+?=\s*(.*?)\s*$", text, re.M))
    (line,) = etc_lines("inetd.conf")
    f = line.split(None, 6)
    assert attrs["socket_type"] == f[1] and attrs["protocol"] == f[2]
    assert attrs["wait"] == "no" and f[3] == "nowait"
    assert attrs["user"] == f[4] and attrs["server"] == f[5]
    assert attrs["server_args"] == f[6].split(None, 1)[1]          # argv[0] is implicit in xinetd
    assert attrs["port"] == str(socket.getservbyname("socks", "tcp")) == "1080"
    assert attrs["disable"] == "no"


# --- the SysV init script ---------------------------------------------------------------------------

@pytest.fixture
def sysv(tmp_path, sink):
    conf = tmp_path / "sockd.conf"
    pidfile = tmp_path / "sockd.pid"
    defaults = tmp_path / "default-sockd"
    defaults.write_text("DAEMON=%s\nCONFIG=%s\nPIDFILE=%s\nOPTIONS='-N 2'\nSTOP_TIMEOUT=20\n" % (
        SOCKD, conf, pidfile))
    script = os.path.join(ETC, "init.d", "sockd")
    env = dict(os.environ, SOCKD_DEFAULTS=str(defaults))
    sh = need("sh")

    def run(action):
        return subprocess.run([sh, script, action], capture_output=True, text=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL)
    run.conf, run.pidfile = conf, pidfile
    yield run
    stop_pid(read_pid(str(pidfile)))


def test_sysv_script_start_status_reload_restart_stop(sysv, sink, echo_server):
    head = open(os.path.join(ETC, "init.d", "sockd")).read()
    assert "### BEGIN INIT INFO" in head and "### END INIT INFO" in head
    assert 'CONFIG=/etc/sockd.conf' in head and 'PIDFILE=/run/sockd.pid' in head
    assert '"$DAEMON" -f "$CONFIG" -p "$PIDFILE"' in head
    base = "log socket %s\nlisten 127.0.0.1:0\n" % sink.path
    sysv.conf.write_text(base + PERMIT_LOCAL)
    assert sysv("status").returncode == 3
    r = sysv("start")
    assert r.returncode == 0, r.stdout + r.stderr
    pid = read_pid(str(sysv.pidfile))
    assert "Starting sockd: sockd (pid %d)." % pid in r.stdout
    assert cmdline(pid) == "sockd: master -f %s" % sysv.conf
    assert len(children_of(pid)) == 2                        # OPTIONS='-N 2' from the defaults file
    r = sysv("status")
    assert r.returncode == 0 and "sockd is running (pid %d)" % pid in r.stdout
    assert sysv("start").stdout.strip() == "sockd is already running (pid %d)" % pid
    port = sink.ports()[0]
    proxy = ("127.0.0.1", port)
    live, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_server.port, "fred")
    assert rep == 90
    # reload: a broken file is refused by the script (sockd keeps running)
    sysv.conf.write_text(base + "frobnicate\n" + PERMIT_LOCAL)
    r = sysv("reload")
    assert r.returncode == 1 and "has errors" in r.stderr and "frobnicate" in r.stderr
    assert "reloading" not in sink.text()
    # reload with a good file: new rules for new clients, the live one kept
    sysv.conf.write_text(base + "deny 0/0 127.0.0.1/32 eq %d\n" % echo_server.port + PERMIT_LOCAL)
    r = sysv("reload")
    assert r.returncode == 0, r.stderr
    sink.wait(r"sockd\[%d\]: reloaded " % pid)
    c, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_server.port, "fred")
    assert rep == 91
    live.sendall(b"still")
    assert helpers.recv_exact(live, 5) == b"still"
    live.close()
    # restart: a new master on the same pid file
    r = sysv("restart")
    assert r.returncode == 0, r.stdout + r.stderr
    new = read_pid(str(sysv.pidfile))
    assert new != pid and not alive(pid) and alive(new)
    # stop: gone, with its pid file
    r = sysv("stop")
    assert r.returncode == 0 and "Stopping sockd: sockd." in r.stdout
    assert not alive(new) and not os.path.exists(sysv.pidfile)
    assert sysv("status").returncode == 3
    assert sysv("stop").returncode == 0
    assert sysv("reload").returncode == 7


def test_sysv_script_reports_a_failed_start(sysv, sink):
    sysv.conf.write_text("log socket %s\nlisten 127.0.0.1:0\nuser no-such-user-here\n" % sink.path + PERMIT_LOCAL)
    r = sysv("start")
    assert r.returncode == 1
    assert "failed." in r.stdout and "unknown user" in r.stderr
    assert not os.path.exists(sysv.pidfile)


# --- the systemd unit --------------------------------------------------------------------------------

def unit_for_test(conf):
    with open(os.path.join(ETC, "sockd.service")) as f:
        text = f.read()
    return text.replace(INSTALLED, SOCKD).replace("/etc/sockd.conf", str(conf))


def unit_values(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_systemd_units_verify(tmp_path):
    """Both units, as systemd-analyze verify judges them without a running
    systemd: every directive known, the programs there, the socket's
    service beside it, the Documentation= pages found by man(1)."""
    analyze = need("systemd-analyze")
    conf = tmp_path / "sockd.conf"
    conf.write_text(PERMIT_LOCAL)
    unit = tmp_path / "sockd.service"
    unit.write_text(unit_for_test(conf))
    shutil.copy(os.path.join(ETC, "sockd.socket"), tmp_path / "sockd.socket")
    for page, sec in (("sockd.8", "8"), ("sockd.conf.5", "5")):
        d = tmp_path / "man" / ("man" + sec)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, "man", page), d / page)
    for units in ([unit], [tmp_path / "sockd.socket"], [tmp_path / "sockd.socket", unit]):
        r = subprocess.run([analyze, "verify"] + [str(u) for u in units], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, MANPATH=str(tmp_path / "man")))
        assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stdout + r.stderr
    v = unit_values((tmp_path / "sockd.socket").read_text())
    assert v["ListenStream"] == ["127.0.0.1:1080"] and v["Accept"] == ["no"]     # etc/sockd.conf's listen line
    assert "listen 127.0.0.1:1080" in etc_lines("sockd.conf")


def test_systemd_unit_commands_run_as_systemd_would(tmp_path, sink, echo_server):
    """ExecStartPre, ExecStart (foreground, Type=notify: READY=1 on
    NOTIFY_SOCKET), ExecReload with $MAINPID (RELOADING=1, READY=1), and
    the stop (SIGTERM to the main process, KillMode=mixed; STOPPING=1)
    within TimeoutStopSec, with JOURNAL_STREAM on standard error as systemd
    sets it."""
    conf = tmp_path / "sockd.conf"
    conf.write_text("log socket %s\nlisten 127.0.0.1:0\n" % sink.path + PERMIT_LOCAL)
    v = unit_values(unit_for_test(conf))
    assert v["Type"] == ["notify"] and v["NotifyAccess"] == ["main"] and v["KillMode"] == ["mixed"]
    assert float(v["TimeoutStopSec"][0]) > 30                 # timeout shutdown's default
    for cmd in v["ExecStartPre"]:
        assert subprocess.run(shlex.split(cmd), capture_output=True, timeout=30).returncode == 0
    err = open(tmp_path / "stderr", "wb")
    st = os.fstat(err.fileno())
    notify = NotifyReceiver(tmp_path)
    env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino), NOTIFY_SOCKET=notify.address)
    (start,) = v["ExecStart"]
    main = subprocess.Popen(shlex.split(start), stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
                            start_new_session=True)
    try:
        assert notify.until("READY")["READY"] == "1"
        sink.wait(r"listening on 127\.0\.0\.1:\d+")
        assert main.poll() is None and cmdline(main.pid) == "sockd: master -f %s" % conf   # did not fork away
        proxy = ("127.0.0.1", sink.ports()[0])
        c, rep = helpers.socks4_connect(proxy, "127.0.0.1", echo_server.port, "fred")
        assert rep == 90
        c.close()
        conf.write_text(conf.read_text() + "deny 0/0\n")
        for cmd in v["ExecReload"]:
            r = subprocess.run(shlex.split(cmd.replace("$MAINPID", str(main.pid))), capture_output=True,
                               timeout=30)
            assert r.returncode == 0
        sink.wait(r"sockd\[%d\]: reloaded .*: 2 rules" % main.pid)
        assert notify.until("RELOADING")["RELOADING"] == "1"
        assert "generation 2" in notify.until("READY")["STATUS"]
        t0 = time.monotonic()
        os.kill(main.pid, signal.SIGTERM)
        assert main.wait(float(v["TimeoutStopSec"][0])) == 0
        assert time.monotonic() - t0 < 5
        assert notify.until("STOPPING")["STOPPING"] == "1"
        assert (tmp_path / "stderr").read_bytes() == b""       # the journal gets syslog's copy only
    finally:
        helpers.kill_pid(main)
        err.close()
        notify.close()


# --- syslog through a real rsyslogd ---------------------------------------------------------------

@pytest.fixture
def rsyslog(tmp_path):
    exe = need("rsyslogd")
    d = tmp_path / "rsyslog"
    (d / "work").mkdir(parents=True)
    sockpath = d / "log.sock"
    out = d / "out.log"
    conf = d / "rsyslog.conf"
    # imuxsock without the system socket: /dev/log stays as it is
    conf.write_text('''global(workDirectory="%s")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="%s" CreatePath="on")
template(name="t" type="string" string="%%syslogtag%%%%msg%% [fac=%%syslogfacility-text%% sev=%%syslogseverity-text%%]\\n")
*.* action(type="omfile" file="%s" template="t")
''' % (d / "work", sockpath, out))
    r = subprocess.run([exe, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    log = open(d / "rsyslogd.log", "wb")
    p = subprocess.Popen([exe, "-n", "-f", str(conf), "-i", str(d / "rsyslogd.pid")], stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: sockpath.exists() or p.poll() is not None, 15, what="rsyslogd's socket")
        assert p.poll() is None, (d / "rsyslogd.log").read_text()
        os.chmod(sockpath, 0o666)

        def lines():
            return out.read_text() if out.exists() else ""
        lines.socket = sockpath
        yield lines
    finally:
        helpers.kill_pid(p)
        log.close()


def test_classic_lines_reach_rsyslogd(rsyslog, tmp_path, echo_server, model):
    conf = tmp_path / "sockd.conf"
    conf.write_text("listen 127.0.0.1:0\nlog socket %s\nlog facility local3\nworkers 2\nmodel %s\n" % (
        rsyslog.socket, model) + "deny 0/0 127.0.0.1/32 eq 9\n" + PERMIT_LOCAL)
    d = helpers.Sockd(tmp_path, conf.read_text(), name="rs")
    try:
        c, rep = helpers.socks4_connect(d.addr, "127.0.0.1", echo_server.port, "fred")
        assert rep == 90
        c.sendall(b"12345")
        helpers.recv_exact(c, 5)
        c.close()
        c, rep = helpers.socks4_connect(d.addr, "127.0.0.1", 9, "joe")
        assert rep == 91
        master = d.proc.pid
        fac = r"\[fac=local3 sev=notice\]"
        wait_for(lambda: re.search(r"sockd\[%d\]: listening on 127\.0\.0\.1:%d \(%s model\) %s" % (
            master, d.port, model, fac), rsyslog()), 10, what="the start line in:\n" + rsyslog())
        wait_for(lambda: re.search(r"sockd\[(\d+)\]: terminated -- Connect from fred\(unknown\)@127\.0\.0\.1 to "
                                   r"127\.0\.0\.1 \(%d\)\. 5 bytes from 127\.0\.0\.1, 5 bytes from 127\.0\.0\.1 %s"
                                   % (echo_server.port, fac), rsyslog()), 10, what="the terminated line")
        text = rsyslog()
        m = re.search(r"sockd\[(\d+)\]: connected -- Connect from fred\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 "
                      r"\(%d\) %s" % (echo_server.port, fac), text)
        assert m and int(m.group(1)) != master                # a worker or child said it
        wait_for(lambda: re.search(r"sockd\[\d+\]: refused -- Connect from joe\(unknown\)@127\.0\.0\.1 to "
                                   r"127\.0\.0\.1 \(discard\) by .*rs\.conf:6 %s" % fac, rsyslog()), 10,
                 what="the refused line")
        os.kill(master, signal.SIGUSR1)
        wait_for(lambda: re.search(r"sockd\[%d\]: master \(pid %d.* \[fac=local3 sev=info\]" % (master, master),
                                   rsyslog()), 10, what="the SIGUSR1 state line")
    finally:
        d.stop()

"""The client library and runsocks against real servers on loopback: sockd
(every path: direct, via, deny, failover past a dead server, BIND, UDP),
Dante's danted (CONNECT, BIND, UDP), microsocks (SOCKS 5 with and without
RFC 1929) and a small SOCKS-4-only server for the fallback and the 91/92/93
messages.

Destinations listen on 127.0.0.2: 127.0.0.1 is always direct in socks.conf.
Fixtures here are imported by test_client_tools.py too."""

import os
import socket
import subprocess
import sys
import threading

import pytest

import helpers
from helpers import ROOT, free_port, need, kill_pid, wait_for

from sockd import protocol as P
from sockd.client import core
from sockd.client import (SocksDenied, SocksRefused, SocksServerError, socksocket)

TARGET = "127.0.0.2"
PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"
BIN = os.path.join(ROOT, "bin")
PYTHON = sys.executable

FETCH = """\
import sys, urllib.request
try:
    page = urllib.request.urlopen(sys.argv[1], timeout=20).read()
except OSError as exc:
    reason = getattr(exc, "reason", exc)
    print("refused: %s" % reason)
    sys.exit(3)
sys.stdout.write(page.decode())
"""



def wait_listening(host, port, proc, timeout=15):
    def up():
        if proc.poll() is not None:
            raise AssertionError("exited with %s" % proc.returncode)
        try:
            socket.create_connection((host, port), 0.5).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout, 0.05, "%s:%d to listen" % (host, port))


class Danted:
    """Dante's server on 127.0.0.1, every command permitted, optionally
    with RFC 1929 (checked against the system passwords)."""

    def __init__(self, tmp_path, method="none"):
        exe = need("danted")
        self.port = free_port()
        self.conf = tmp_path / ("danted-%d.conf" % self.port)
        self.conf.write_text(
            "logoutput: stderr\ninternal: 127.0.0.1 port = %d\nexternal: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: %s\nuser.privileged: root\nuser.unprivileged: nobody\n"
            "user.libwrap: nobody\n"
            "client pass {\n from: 127.0.0.0/8 to: 0.0.0.0/0\n log: error connect disconnect\n}\n"
            "socks pass {\n from: 0.0.0.0/0 to: 0.0.0.0/0\n"
            " command: bind connect udpassociate bindreply udpreply\n log: error connect disconnect\n}\n"
            % (self.port, method))
        self.log_path = tmp_path / ("danted-%d.log" % self.port)
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "-N", "1", "-f", str(self.conf), "-p",
                                      str(tmp_path / ("danted-%d.pid" % self.port))],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        try:
            wait_listening("127.0.0.1", self.port, self.proc)
        except AssertionError:
            self.stop()
            raise AssertionError("danted did not start:\n" + self.log())
        self.addr = ("127.0.0.1", self.port)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        kill_pid(self.proc)
        self.logf.close()


@pytest.fixture
def danted(tmp_path):
    started = []

    def start(**kw):
        d = Danted(tmp_path, **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop()


@pytest.fixture
def microsocks():
    exe = need("microsocks")
    procs = []

    def start(*args):
        port = free_port()
        p = subprocess.Popen([exe, "-i", "127.0.0.1", "-p", str(port)] + list(args),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_listening("127.0.0.1", port, p)
        return ("127.0.0.1", port)
    yield start
    for p in procs:
        kill_pid(p)


class Socks4Only:
    """A classic-style server that speaks SOCKS 4/4A only: it closes a
    SOCKS 5 greeting without a word, answers ``code``, and on 90 connects
    to ``target`` (whatever was asked: names need not resolve) and relays."""

    def __init__(self, target, code=90):
        self.target, self.code = target, code
        self.requests = []
        self.greetings = 0
        self.srv = helpers.TCPServer(self.handle)
        self.addr = self.srv.addr

    def handle(self, conn):
        first = conn.recv(1, socket.MSG_PEEK)
        if first != b"\x04":
            self.greetings += 1
            return
        buf = b""
        while True:
            got = P.parse_socks4(buf)
            if got is not None:
                break
            chunk = conn.recv(512)
            if not chunk:
                return
            buf += chunk
        req = got[0]
        self.requests.append(req)
        if self.code != 90:
            conn.sendall(P.reply4(self.code))
            return
        out = socket.create_connection(self.target, 10)
        conn.sendall(P.reply4(90))

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        t = threading.Thread(target=pump, args=(out, conn), daemon=True)
        t.start()
        pump(conn, out)
        t.join(30)
        out.close()

    def close(self):
        self.srv.close()


@pytest.fixture
def target_echo():
    srv = helpers.TCPServer(helpers.echo_handler, host=TARGET)
    yield srv
    srv.close()


@pytest.fixture
def target_www(tmp_path):
    d = tmp_path / "site"
    d.mkdir()
    (d / "hello.txt").write_text("hello through the client library\n")
    srv = helpers.HTTPServer(d, host=TARGET)
    yield srv
    srv.close()


@pytest.fixture
def socksconf(tmp_path, monkeypatch):
    """socksconf(text) writes socks.conf and points the library (this
    process, and the environment of programs it starts) at it."""
    path = tmp_path / "socks.conf"
    for var in ("SOCKS_SERVER", "SOCKS_USERNAME", "SOCKS_PASSWORD", "SOCKS_BANNER", "SOCKS_DNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SOCKS_CONF", str(path))
    monkeypatch.setenv("SOCKS_LOG", "stderr")
    core.reset()

    def write(text):
        path.write_text(text)
        core.reset()
        return str(path)
    yield write
    core.reset()


def echo_through(target_echo):
    """A socksocket to the echo target, as socks.conf routes it: one round
    trip, then closed."""
    c = socksocket()
    c.settimeout(10)
    c.connect((TARGET, target_echo.port))
    echo_roundtrip(c)
    c.close()


def echo_roundtrip(sock, payload=b"ping through"):
    sock.sendall(payload)
    assert helpers.recv_exact(sock, len(payload)) == payload


def runsocks(args, env=None, cwd=None, timeout=60):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([PYTHON, os.path.join(BIN, "runsocks")] + list(args), capture_output=True,
                          text=True, timeout=timeout, env=e, cwd=cwd)


# --- Done when: runsocks fetches a page past a dead server; a deny line refuses -------

def test_runsocks_fetches_a_page_past_a_dead_server(start_sockd, target_www, socksconf, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    dead = free_port()
    socksconf("# dead first, then the live sockd\nsockd @=127.0.0.1:%d,127.0.0.1:%d ALL\n" % (dead, s.port))
    script = tmp_path / "script.py"
    script.write_text(FETCH)
    r = runsocks([str(script), target_www.url("hello.txt")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello through the client library\n"
    assert "Failed to connect to sockd at 127.0.0.1:%d: Connection refused" % dead in r.stderr
    s.wait_log(r"connected -- Connect from \S+@127\.0\.0\.1 to 127\.0\.0\.2 \(%d\)" % target_www.port)


def test_a_deny_line_refuses_with_a_clear_message(target_www, socksconf, tmp_path):
    mark = tmp_path / "marks"
    mark.mkdir()
    path = socksconf("direct 10.0.0.0/8\ndeny 127.0.0.2/32 eq %d : touch %s/denied-%%u-%%s-%%c-%%z\n"
                     "direct ALL\n" % (target_www.port, mark))
    script = tmp_path / "script.py"
    script.write_text(FETCH)
    r = runsocks([str(script), target_www.url("hello.txt")])
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith("refused: connect to 127.0.0.2 port %d refused: %s:2: denied by 'deny "
                               "127.0.0.2/32 eq %d'" % (target_www.port, path, target_www.port)), r.stdout
    assert "Traceback" not in r.stderr
    wait_for(lambda: os.listdir(str(mark)), 10, what="the deny line's shell command")
    assert os.listdir(str(mark)) == ["denied-root-%d-connect-127.0.0.2" % target_www.port]


def test_refusals_in_process_are_connection_refused_errors(socksconf, target_echo):
    path = socksconf("deny 127.0.0.2/32\n")
    c = socksocket()
    with pytest.raises(SocksDenied) as ei:
        c.connect((TARGET, target_echo.port))
    assert isinstance(ei.value, ConnectionRefusedError) and ei.value.errno == 111
    assert ei.value.where == "%s:1" % path
    assert c.connect_ex((TARGET, target_echo.port)) == 111
    socksconf("direct 10.0.0.0/8\n")
    with pytest.raises(SocksDenied, match="no line matches: access denied"):
        socksocket().connect((TARGET, target_echo.port))
    c.close()


def test_local_host_always_direct_and_no_file_all_direct(socksconf, echo_server, target_echo):
    socksconf("deny ALL\n")
    c = socksocket()
    c.settimeout(10)
    c.connect(("127.0.0.1", echo_server.port))       # 127.0.0.1 is always direct
    echo_roundtrip(c)
    c.close()
    os.environ["SOCKS_CONF"] += ".absent"
    core.reset()
    c = socksocket()
    c.settimeout(10)
    c.connect((TARGET, target_echo.port))             # no socks.conf: direct
    echo_roundtrip(c)
    assert c.getpeername() == (TARGET, target_echo.port)
    c.close()


def test_config_mistakes_stop_runsocks_before_the_program(socksconf, tmp_path):
    path = socksconf("direct 10.0.0.0/8\nsockd @=fw:99999 ALL\nfrob 0/0\n")
    script = tmp_path / "never.py"
    script.write_text("print('ran')\n")
    r = runsocks([str(script)])
    assert r.returncode == 1 and "ran" not in r.stdout
    assert "%s:2: bad server port: port number out of range (near 'fw:99999')" % path in r.stderr
    assert "%s:3: unknown action" % path in r.stderr
    assert "Traceback" not in r.stderr
    socksconf("sockd ALL\n")
    r = runsocks([str(script)], env={"SOCKS_SERVER": "fw:x:y"})
    assert r.returncode == 1 and "ran" not in r.stdout
    assert "SOCKS_SERVER: bad server: write an IPv6 server as [ADDRESS]:PORT (near 'fw:x:y')" in r.stderr


def test_runsocks_module_form_argv_and_exit_status(start_sockd, target_www, socksconf, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd ALL\n")
    (tmp_path / "fetchmod.py").write_text(
        "import sys, urllib.request\n"
        "print(sys.argv[0].endswith('fetchmod'), sys.argv[1:])\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode(), end='')\n"
        "sys.exit(7)\n")
    r = runsocks(["-m", "fetchmod", target_www.url("hello.txt"), "two"], cwd=str(tmp_path),
                 env={"SOCKS_SERVER": "127.0.0.1:%d" % s.port, "SOCKS_BANNER": "1"})
    assert r.returncode == 7, r.stderr
    assert r.stdout == "False ['%s', 'two']\nhello through the client library\n" % target_www.url("hello.txt") \
        or r.stdout.startswith("True"), r.stdout
    assert "hello through the client library" in r.stdout
    assert "Default SOCKS server: 127.0.0.1:%d" % s.port in r.stderr
    s.wait_log(r"connected -- Connect from .* to 127\.0\.0\.2")


# --- the library against sockd ------------------------------------------------------------

def test_connect_through_sockd_reads_no_byte_of_the_data(start_sockd, socksconf):
    def banner(conn):
        conn.sendall(b"220 banner right after the connect\r\n")
        helpers.echo_handler(conn)
    srv = helpers.TCPServer(banner, host=TARGET)
    try:
        s = start_sockd(PERMIT_LOCAL)
        socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
        c = socksocket()
        c.settimeout(10)
        c.connect((TARGET, srv.port))
        assert helpers.recv_exact(c, 36) == b"220 banner right after the connect\r\n"
        echo_roundtrip(c)
        assert c.getpeername() == (TARGET, srv.port)
        c.close()
    finally:
        srv.close()


def test_sockd_refusal_says_which_reply(start_sockd, socksconf, target_echo):
    s = start_sockd("deny 0/0 127.0.0.2 255.255.255.255\n" + PERMIT_LOCAL)
    socksconf("sockd @=127.0.0.1:%d ALL\n" % s.port)
    with pytest.raises(SocksRefused) as ei:
        socksocket().connect((TARGET, target_echo.port))
    assert str(ei.value) == ("SOCKS server 127.0.0.1:%d refused connect to 127.0.0.2 port %d: "
                             "SOCKS 5 reply 2, connection not allowed by ruleset" % (s.port, target_echo.port))
    assert ei.value.code == 2


def test_every_server_dead(socksconf, target_echo, caplog):
    d1, d2 = free_port(), free_port()
    path = socksconf("sockd @=127.0.0.1:%d,127.0.0.1:%d ALL\n" % (d1, d2))
    with pytest.raises(SocksServerError) as ei:
        socksocket().connect((TARGET, target_echo.port))
    msg = str(ei.value)
    assert msg.startswith("%s:1: no SOCKS server could be used for 127.0.0.2 port %d" % (path, target_echo.port))
    assert "127.0.0.1:%d: Connection refused" % d1 in msg and "127.0.0.1:%d: Connection refused" % d2 in msg


def test_create_connection_through_sockd(start_sockd, socksconf, target_echo):
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd @=127.0.0.1:%d ALL\n" % s.port)
    c = core.create_connection((TARGET, target_echo.port), timeout=10)
    assert type(c) is socksocket
    echo_roundtrip(c)
    c.close()
    s.wait_log(r"connected -- Connect from .* to 127\.0\.0\.2 \(%d\)" % target_echo.port)


def bind_roundtrip(control_port, peer_host=TARGET):
    """The classic call order: connect, then bind -> getsockname -> listen
    -> accept; the application server (peer_host) connects to the address
    getsockname gave."""
    c = socksocket()
    c.settimeout(10)
    c.connect((TARGET, control_port))
    d = socksocket()
    d.settimeout(10)
    d.bind(("", 0))
    addr = d.getsockname()
    d.listen(1)
    got = {}

    def peer():
        p = socket.socket()
        p.bind((peer_host, 0))
        got["peer"] = p.getsockname()
        p.connect(addr[:2])
        p.sendall(b"data from the application server")
        p.shutdown(socket.SHUT_WR)
        got["echo"] = helpers.recv_all(p)
        p.close()
    t = threading.Thread(target=peer)
    t.start()
    conn, peer_addr = d.accept()
    assert peer_addr == got["peer"]
    assert helpers.recv_exact(conn, 32) == b"data from the application server"
    conn.sendall(b"answer")
    conn.close()
    d.close()
    t.join(10)
    assert got["echo"] == b"answer"
    c.close()
    return addr


def test_bind_through_sockd(start_sockd, socksconf, target_echo):
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    addr = bind_roundtrip(target_echo.port)
    assert addr[0] == "127.0.0.1" and addr[1] != 0


def udp_roundtrip(server_kind="connectionless"):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind((TARGET, 0))
    srv.settimeout(10)

    def echo():
        for _ in range(2):
            data, a = srv.recvfrom(2048)
            srv.sendto(b"echo:" + data, a)
    t = threading.Thread(target=echo, daemon=True)
    t.start()
    u = socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(10)
    try:
        u.sendto(b"one", srv.getsockname())
        assert u.recvfrom(100) == (b"echo:one", srv.getsockname())
        u.connect(srv.getsockname())
        u.send(b"two")
        assert u.recv(100) == b"echo:two"
        assert u._udp is not None        # it went through an association
    finally:
        u.close()
        srv.close()


def test_udp_through_sockd(start_sockd, socksconf):
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    udp_roundtrip()


# --- the same library through Dante and microsocks -------------------------------------------

def test_runsocks_through_dante(danted, target_www, socksconf, tmp_path):
    d = danted()
    socksconf("sockd @=127.0.0.1:%d ALL\n" % d.port)
    script = tmp_path / "script.py"
    script.write_text(FETCH)
    r = runsocks([str(script), target_www.url("hello.txt")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello through the client library\n"
    assert "tcp/connect" in d.log() and "127.0.0.2.%d" % target_www.port in d.log()


def test_bind_and_udp_through_dante(danted, socksconf, target_echo):
    d = danted()
    socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % d.port)
    bind_roundtrip(target_echo.port)
    udp_roundtrip()
    log = d.log()
    assert "tcp/bind" in log and "tcp/bindreply" in log and "udp/udpassociate" in log


def test_microsocks_with_and_without_a_password(microsocks, socksconf, target_echo, monkeypatch):
    plain = microsocks()
    socksconf("sockd @=127.0.0.1:%d ALL\n" % plain[1])
    echo_through(target_echo)
    auth = microsocks("-u", "tbu", "-P", "tbp")
    socksconf("sockd @=127.0.0.1:%d ALL\n" % auth[1])
    with pytest.raises(SocksRefused, match="accepts none of the authentication methods offered; "
                                           "set SOCKS_USERNAME and SOCKS_PASSWORD"):
        socksocket().connect((TARGET, target_echo.port))
    monkeypatch.setenv("SOCKS_USERNAME", "tbu")
    monkeypatch.setenv("SOCKS_PASSWORD", "wrong")
    with pytest.raises(SocksRefused, match="refused the user name and password of tbu"):
        socksocket().connect((TARGET, target_echo.port))
    monkeypatch.setenv("SOCKS_PASSWORD", "tbp")
    echo_through(target_echo)


def test_pipelined_servers_with_and_without_a_password(start_sockd, microsocks, socksconf, target_echo,
                                                       monkeypatch, tmp_path):
    """``?pipeline``: greeting, credentials and request in one write, to
    servers that read their handshake in order (sockd); microsocks drops
    what follows its greeting, and the error says to remove the option."""
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd @=socks5://127.0.0.1:%d?pipeline ALL\n" % s.port)
    echo_through(target_echo)
    from test_logins import sockd_passwd
    pw = str(tmp_path / "passwd")
    assert sockd_passwd("-c", "-i", "-C", "4", pw, "pipe", password="Pipe1Pass\n").returncode == 0
    u = start_sockd("passwd %s\nmethods username\n" % pw + PERMIT_LOCAL, name="users")
    socksconf("sockd @=socks5://127.0.0.1:%d?pipeline ALL\n" % u.port)
    monkeypatch.setenv("SOCKS_USERNAME", "pipe")
    monkeypatch.setenv("SOCKS_PASSWORD", "Pipe1Pass")
    echo_through(target_echo)
    u.wait_log(r"connected -- Connect from pipe\(unknown\)@127\.0\.0\.1")
    monkeypatch.delenv("SOCKS_USERNAME")
    monkeypatch.delenv("SOCKS_PASSWORD")
    m = microsocks()
    socksconf("sockd @=socks5://127.0.0.1:%d?pipeline ALL\n" % m[1])
    c = socksocket()
    c.settimeout(2)
    with pytest.raises(SocksServerError, match=r"answering the greeting.*remove \?pipeline"):
        c.connect((TARGET, target_echo.port))
    c.close()


# --- SOCKS 4 fallback, 4A, and the classic reply messages -------------------------------------

def test_fallback_to_socks4_and_4a(socksconf, target_echo):
    srv = Socks4Only((TARGET, target_echo.port))
    try:
        socksconf("sockd @=127.0.0.1:%d .example.test\nsockd @=127.0.0.1:%d 127.0.0.0/8\n"
                  % (srv.addr[1], srv.addr[1]))
        c = socksocket()
        c.settimeout(10)
        c.connect((TARGET, target_echo.port))
        echo_roundtrip(c)
        c.close()
        assert srv.greetings == 1                      # SOCKS 5 tried once, then remembered
        c = core.create_connection(("www.example.test", 80), timeout=10)
        echo_roundtrip(c)
        c.close()
        assert srv.greetings == 1
        first, second = srv.requests
        assert (first.ip, first.port, first.userid, first.host) == (socket.inet_aton(TARGET), target_echo.port,
                                                                    "root", None)
        assert (second.port, second.host) == (80, "www.example.test")     # 4A: the name went to the server
    finally:
        srv.close()


@pytest.mark.parametrize("code,text", [
    (91, "reply 91, request rejected or failed"),
    (92, "reply 92, the server cannot reach identd on your machine"),
    (93, "reply 93, your user id does not match identd"),
])
def test_socks4_refusals_say_why(socksconf, code, text):
    srv = Socks4Only(None, code)
    try:
        socksconf("sockd @=127.0.0.1:%d ALL\n" % srv.addr[1])
        with pytest.raises(SocksRefused) as ei:
            socksocket().connect((TARGET, 7))
        assert str(ei.value) == "SOCKS server 127.0.0.1:%d refused connect to 127.0.0.2 port 7: %s" % (
            srv.addr[1], text)
        assert ei.value.code == code and ei.value.version == 4
    finally:
        srv.close()


def test_dead_server_then_socks4_server(socksconf, target_echo, caplog):
    srv = Socks4Only((TARGET, target_echo.port))
    dead = free_port()
    try:
        socksconf("sockd @=127.0.0.1:%d,127.0.0.1:%d ALL\n" % (dead, srv.addr[1]))
        with caplog.at_level("INFO", logger="sockd.client"):
            c = socksocket()
            c.settimeout(10)
            c.connect((TARGET, target_echo.port))
            echo_roundtrip(c)
            c.close()
        text = caplog.text
        assert "Failed to connect to sockd at 127.0.0.1:%d: Connection refused" % dead in text
        assert "using sockd at 127.0.0.1:%d (SOCKS 4)" % srv.addr[1] in text
    finally:
        srv.close()


def test_socksify_patches_and_unpatches():
    import sockd.client as C
    code = ("import socket, sockd.client as C\n"
            "real = socket.socket\n"
            "C.socksify()\n"
            "assert socket.socket is C.socksocket and C.socksified()\n"
            "import ssl\n"
            "assert isinstance(real(), socket.socket)\n"
            "assert not isinstance(socket.socket(), ssl.SSLSocket)\n"
            "class Later(socket.socket): pass\n"
            "assert isinstance(Later(), socket.socket) and not isinstance(socket.socket(), Later)\n"
            "C.unsocksify()\n"
            "assert socket.socket is real and not C.socksified()\n"
            "print('ok')\n")
    env = dict(os.environ, SOCKS_CONF="/nonexistent/socks.conf", PYTHONPATH=ROOT)
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert C.socksocket is core.socksocket


# --- SOCKS 4 with real servers (SOCKS_VERSION=4), an IPv6 server ------------------------------

def test_socks4_connect_and_bind_through_sockd(start_sockd, socksconf, target_echo, monkeypatch):
    monkeypatch.setenv("SOCKS_VERSION", "4")
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    bind_roundtrip(target_echo.port)
    s.wait_log(r"connected -- Connect from root\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.2 \(%d\)" % target_echo.port)
    s.wait_log(r"Bind from root\(unknown\)@127\.0\.0\.1 for 127\.0\.0\.2")


def test_sockd_strict_identd_refusal_reads_92(start_sockd, socksconf, target_echo, monkeypatch):
    # A client on 127.0.0.3, where no identd listens: sockd -I answers 92.
    monkeypatch.setenv("SOCKS_VERSION", "4")
    s = start_sockd("timeout ident 3\n" + PERMIT_LOCAL, args=("-I",))
    socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    c = socksocket()
    c.settimeout(20)
    c.bind(("127.0.0.3", 0))
    with pytest.raises(SocksRefused) as ei:
        c.connect((TARGET, target_echo.port))
    assert str(ei.value) == ("SOCKS server 127.0.0.1:%d refused connect to 127.0.0.2 port %d: reply 92, "
                             "the server cannot reach identd on your machine" % (s.port, target_echo.port))
    c.close()


def test_socks4_bind_through_dante_and_version_5_only(danted, socksconf, target_echo, monkeypatch):
    d = danted()
    socksconf("sockd @=127.0.0.1:%d 127.0.0.0/8\n" % d.port)
    monkeypatch.setenv("SOCKS_VERSION", "4")
    bind_roundtrip(target_echo.port)
    srv = Socks4Only((TARGET, target_echo.port))
    try:
        socksconf("sockd @=127.0.0.1:%d ALL\n" % srv.addr[1])
        monkeypatch.setenv("SOCKS_VERSION", "5")
        with pytest.raises(SocksServerError, match="no SOCKS 5 answer"):
            socksocket().connect((TARGET, target_echo.port))
        assert srv.requests == []
        monkeypatch.setenv("SOCKS_VERSION", "6")
        with pytest.raises(core.SocksConfigError, match="SOCKS_VERSION: expected 4 or 5"):
            core.check_config()
    finally:
        srv.close()


def test_ipv6_server_for_an_ipv4_destination(start_sockd, socksconf, target_echo):
    s = start_sockd("listen [::1]:0\n" + PERMIT_LOCAL + "permit ::1/128\n")
    socksconf("sockd @=[::1]:%d ALL\n" % s.port)
    c = socksocket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect((TARGET, target_echo.port))
    echo_roundtrip(c)
    assert c.getsockname()[0] == "::1"              # the real local end, not garbage
    assert c.getpeername() == (TARGET, target_echo.port)
    c.close()


@pytest.fixture(scope="module")
def plain_user():
    """An unprivileged user, made with useradd when missing."""
    import pwd
    need("useradd")
    runuser = need("runuser")
    name, created = "sockdclient", False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)
        created = True
    yield name, runuser
    if created:
        subprocess.run(["userdel", name], check=False)


def test_user_lists_match_the_effective_user(plain_user, target_www):
    """*= lines see the user of the effective uid: the same program is sent
    direct as root and refused as another user."""
    import shutil
    import tempfile
    plain_user, runuser = plain_user
    d = tempfile.mkdtemp(prefix="sockd-client-")
    try:
        os.chmod(d, 0o755)
        conf = os.path.join(d, "socks.conf")
        with open(conf, "w") as f:
            f.write("deny *=%s 127.0.0.2/32\ndirect ALL\n" % plain_user)
        script = os.path.join(d, "fetch.py")
        with open(script, "w") as f:
            f.write(FETCH)
        for path in (conf, script):
            os.chmod(path, 0o644)
        env = {"SOCKS_CONF": conf, "SOCKS_LOG": "none", "PATH": "/usr/bin:/bin", "HOME": d}
        cmd = ["/usr/bin/python3", os.path.join(BIN, "runsocks"), script, target_www.url("hello.txt")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0 and r.stdout == "hello through the client library\n", r.stderr
        r = subprocess.run([runuser, "-u", plain_user, "--"] + cmd, capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "%s:1: denied by 'deny *=%s 127.0.0.2/32'" % (conf, plain_user) in r.stdout
    finally:
        shutil.rmtree(d)


ASYNCIO = """\
import asyncio, sys
async def main(port):
    r, w = await asyncio.open_connection("127.0.0.2", port)
    w.write(b"asyncio through SOCKS")
    await w.drain()
    print((await r.readexactly(21)).decode())
    w.close()
asyncio.run(main(int(sys.argv[1])))
"""


def test_asyncio_program_through_sockd(start_sockd, socksconf, target_echo, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    socksconf("sockd @=127.0.0.1:%d ALL\n" % s.port)
    script = tmp_path / "aio.py"
    script.write_text(ASYNCIO)
    r = runsocks([str(script), str(target_echo.port)])
    assert r.returncode == 0 and r.stdout == "asyncio through SOCKS\n", r.stderr
    s.wait_log(r"connected -- Connect from .* to 127\.0\.0\.2 \(%d\)" % target_echo.port)

"""Ways out through upstream proxies, for real: curl at the front, sockd
with a way-out file (``upstream FILE``), and behind it Dante's danted,
microsocks with a password, a second sockd, and tinyproxy (HTTP CONNECT),
each started here on a free port and stopped by PID.  Failover past a dead
upstream (a closed port) and a black hole (accepts, never answers), with
one log line about it; a deny line of the way-out file, and a sockd.conf
rule that refuses before any upstream is asked; credentials never in the
log."""

import os
import re
import socket
import subprocess
import threading
import time

import pytest

import helpers
from helpers import free_port, kill_pid, need, wait_for

PERMIT_LOCAL = "permit 127.0.0.0 255.0.0.0\n"


def curl(proxy, url, *extra, max_time=20):
    exe = need("curl")
    return subprocess.run([exe, "-sS", "--max-time", str(max_time), "-x", proxy, url] + list(extra),
                          capture_output=True, text=True, timeout=max_time + 10)


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


def wayout(tmp_path, text, name="wayout"):
    """A way-out file only root may read (it may hold credentials)."""
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, 0o600)
    return str(p)


@pytest.fixture
def front(start_sockd, tmp_path):
    """front(wayout text, extra sockd.conf lines) -> the sockd curl talks to."""
    made = []

    def start(text, extra="", **kw):
        path = wayout(tmp_path, text, name="wayout%d" % len(made))
        made.append(path)
        return start_sockd(PERMIT_LOCAL + extra + "upstream %s\n" % path, name="front%d" % len(made), **kw)
    return start


@pytest.fixture
def danted(tmp_path):
    """Dante's server on 127.0.0.1, every command permitted."""
    exe = need("danted")
    procs = []

    def start():
        port = free_port()
        conf = tmp_path / ("danted-%d.conf" % port)
        conf.write_text(
            "logoutput: stderr\ninternal: 127.0.0.1 port = %d\nexternal: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
            "user.libwrap: nobody\n"
            "client pass {\n from: 127.0.0.0/8 to: 0.0.0.0/0\n log: error connect disconnect\n}\n"
            "socks pass {\n from: 0.0.0.0/0 to: 0.0.0.0/0\n"
            " command: bind connect udpassociate bindreply udpreply\n log: error connect disconnect\n}\n" % port)
        logf = open(tmp_path / ("danted-%d.log" % port), "wb")
        p = subprocess.Popen([exe, "-N", "1", "-f", str(conf), "-p", str(tmp_path / ("danted-%d.pid" % port))],
                             stdout=logf, stderr=subprocess.STDOUT)
        procs.append((p, logf))
        wait_listening("127.0.0.1", port, p)
        p.port = port
        p.log = lambda: (tmp_path / ("danted-%d.log" % port)).read_text(errors="replace")
        return p
    yield start
    for p, logf in procs:
        kill_pid(p)
        logf.close()


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
        return port
    yield start
    for p in procs:
        kill_pid(p)


@pytest.fixture
def tinyproxy(tmp_path):
    """tinyproxy in the foreground (-d) on a free port with a configuration
    of its own; optional Basic credentials."""
    exe = need("tinyproxy")
    procs = []

    def start(user=None, password=None):
        port = free_port()
        conf = tmp_path / ("tinyproxy-%d.conf" % port)
        conf.write_text("Port %d\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nMaxClients 50\nLogLevel Info\n"
                        % port + ("BasicAuth %s %s\n" % (user, password) if user else ""))
        logf = open(tmp_path / ("tinyproxy-%d.log" % port), "wb")
        p = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT)
        procs.append((p, logf))
        wait_listening("127.0.0.1", port, p)
        p.port = port
        p.log = lambda: (tmp_path / ("tinyproxy-%d.log" % port)).read_text(errors="replace")
        return p
    yield start
    for p, logf in procs:
        kill_pid(p)
        logf.close()


class BlackHole:
    """Accepts connections and never answers (nor closes them)."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.conns = []
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.ls.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.stop = True
        self.t.join(2)
        self.ls.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def black_hole():
    b = BlackHole()
    yield b
    b.close()


def fetched(r, www):
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello through sockd\n"


# --- through each kind of upstream -----------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4", "socks4a"])
def test_through_dante(front, danted, www, scheme):
    d = danted()
    kind = {"socks4a": "socks4"}.get(scheme, scheme)   # Dante has no 4A
    s = front("sockd @=%s://127.0.0.1:%d ALL\n" % (kind, d.port))
    host = "localhost" if scheme.endswith(("h", "a")) else "127.0.0.1"
    fetched(curl("%s://127.0.0.1:%d" % (scheme, s.port), www.url("hello.txt", host)), www)
    s.wait_log(r"connected -- Connect from .* to %s \(%d\) via %s://127\.0\.0\.1:%d" % (
        re.escape(host), www.port, kind, d.port))
    wait_for(lambda: "pass(1): tcp/connect" in d.log() or "tcp/connect" in d.log(), 10, what="danted's log")


def test_through_microsocks_with_a_password(front, microsocks, www):
    port = microsocks("-u", "mu", "-P", "Sekr1tPw")
    s = front("sockd @=socks5h://mu:Sekr1tPw@127.0.0.1:%d ALL\n" % port, args=["-d", "2"])   # debug lines too
    fetched(curl("socks5h://127.0.0.1:%d" % s.port, www.url("hello.txt", "localhost")), www)
    s.wait_log(r"via socks5h://127\.0\.0\.1:%d" % port)
    # without the password microsocks refuses sockd: down, one line, and the client is told
    s2 = front("sockd @=socks5://127.0.0.1:%d ALL\n" % port)
    r = curl("socks5://127.0.0.1:%d" % s2.port, www.url("hello.txt"))
    assert r.returncode != 0
    s2.wait_log(r"upstream socks5://127\.0\.0\.1:%d is down: no acceptable method \(it wants credentials\)" % port)
    for srv in (s, s2):
        srv.stop()
        assert "Sekr1tPw" not in srv.log()


def test_through_a_second_sockd(front, start_sockd, www):
    back = start_sockd(PERMIT_LOCAL, name="back")
    s = front("sockd @=socks5://127.0.0.1:%d ALL\n" % back.port)
    for scheme, host in (("socks5", "127.0.0.1"), ("socks5h", "localhost"), ("socks4", "127.0.0.1")):
        fetched(curl("%s://127.0.0.1:%d" % (scheme, s.port), www.url("hello.txt", host)), www)
    back.wait_log(r"connected -- Connect from unknown\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.1 \(%d\)" % www.port)
    # the front's worker writes its lines at the end of its turn, after the reply: wait for them
    helpers.wait_for(lambda: len(re.findall(r"connected -- .* via socks5://127\.0\.0\.1:%d" % back.port,
                                            s.log())) == 3, what="three connected lines via the back")


def test_through_an_http_proxy(front, tinyproxy, www):
    tp = tinyproxy("tpuser", "tpPassw0rd")
    s = front("sockd @=http://tpuser:tpPassw0rd@127.0.0.1:%d ALL\n" % tp.port)
    fetched(curl("socks5h://127.0.0.1:%d" % s.port, www.url("hello.txt", "localhost")), www)
    s.wait_log(r"connected -- Connect from .* to localhost \(%d\) via http://127\.0\.0\.1:%d" % (www.port, tp.port))
    wait_for(lambda: "CONNECT localhost:%d" % www.port in tp.log(), 10, what="tinyproxy's CONNECT")
    # the proxy refuses (nothing listens there): the client is refused, the proxy is not down
    r = curl("socks5://127.0.0.1:%d" % s.port, "http://127.0.0.1:%d/" % helpers.closed_port())
    assert r.returncode != 0
    s.wait_log(r"failed -- .*Error code: upstream http://127\.0\.0\.1:%d refused: HTTP 500 Unable to connect" % tp.port)
    assert "is down" not in s.log()
    s.stop()
    assert "tpPassw0rd" not in s.log()


def test_direct_and_through_per_the_file(front, danted, tinyproxy, www, tmp_path):
    """As a new user would: one destination direct, one through Dante, the
    rest through an HTTP proxy, each as the file says."""
    d = danted()
    tp = tinyproxy()
    s = front("direct 127.0.0.1 255.255.255.255\nsockd @=socks5://127.0.0.1:%d 127.0.0.2 255.255.255.255\n"
              "sockd @=http://127.0.0.1:%d ALL\n" % (d.port, tp.port))
    fetched(curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt", "127.0.0.1")), www)
    s.wait_log(r"(?m)connected -- Connect from .* to 127\.0\.0\.1 \(%d\)$" % www.port)
    servers = [helpers.HTTPServer(tmp_path / "www", host=h) for h in ("127.0.0.2", "127.0.0.3")]
    try:
        for srv, via in zip(servers, ("socks5://127.0.0.1:%d" % d.port, "http://127.0.0.1:%d" % tp.port)):
            fetched(curl("socks5h://127.0.0.1:%d" % s.port, srv.url("hello.txt")), www)
            s.wait_log(r"connected -- Connect from .* to %s \(%d\) via %s" % (
                re.escape(srv.host), srv.port, re.escape(via)))
        wait_for(lambda: "CONNECT 127.0.0.3:%d" % servers[1].port in tp.log(), 10, what="tinyproxy's CONNECT")
    finally:
        for srv in servers:
            srv.close()


# --- failover -----------------------------------------------------------------------------------------

@pytest.mark.serial
@pytest.mark.parametrize("first", ["dead", "black hole"])
def test_failover_serves_the_client_within_timeout_connect(front, start_sockd, www, black_hole, first, model):
    back = start_sockd(PERMIT_LOCAL, name="back")
    bad = helpers.closed_port() if first == "dead" else black_hole.port
    s = front("sockd @=socks5://127.0.0.1:%d,socks5://127.0.0.1:%d ALL\n" % (bad, back.port),
              "timeout connect 8\ntimeout upstream 1\n", model=model, workers=2)
    t0 = time.monotonic()
    fetched(curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt")), www)
    took = time.monotonic() - t0
    assert took < 8
    for _ in range(5):        # the next clients do not wait for it
        t1 = time.monotonic()
        fetched(curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt")), www)
        assert time.monotonic() - t1 < 1.0
    s.wait_log(r"upstream socks5://127\.0\.0\.1:%d is down" % bad)
    time.sleep(0.3)
    down = [line for line in s.log().splitlines() if "upstream socks5://127.0.0.1:%d" % bad in line]
    assert len(down) == 1, down
    why = "connect: Connection refused" if first == "dead" else "no answer within 1s (timeout upstream)"
    assert why in down[0]


def test_killing_the_first_upstream_does_not_stop_clients(front, start_sockd, www):
    one = start_sockd(PERMIT_LOCAL, name="one")
    two = start_sockd(PERMIT_LOCAL, name="two")
    s = front("sockd @=socks5://127.0.0.1:%d,socks5://127.0.0.1:%d ALL\n" % (one.port, two.port),
              "timeout upstream 2\n")
    fetched(curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt")), www)
    one.stop()
    for _ in range(3):
        fetched(curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt")), www)
    helpers.wait_for(lambda: len(re.findall(r"via socks5://127\.0\.0\.1:%d" % two.port, s.log())) >= 3,
                     what="three sessions via the second upstream")
    assert len(re.findall(r"upstream socks5://127\.0\.0\.1:%d is down" % one.port, s.log())) == 1


def test_every_upstream_down(front, www):
    a, b = helpers.closed_port(), helpers.closed_port()
    s = front("sockd @=socks5://127.0.0.1:%d,http://127.0.0.1:%d ALL\n" % (a, b))
    for _ in range(2):
        r = curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt"))
        assert r.returncode != 0 and "connection to 127.0.0.1. (3)" in r.stderr, r.stderr   # network unreachable
    s.wait_log(r"failed -- .*Error code: no upstream answered \(socks5://127\.0\.0\.1:%d: connect: Connection "
               r"refused; http://127\.0\.0\.1:%d: connect: Connection refused\)" % (a, b))
    # still tried while marked down: the second client's line names them again
    wait_for(lambda: len(re.findall("no upstream answered", s.log())) == 2, 5, what="two failures")


# --- ?pipeline: the whole SOCKS 5 handshake in the first write ------------------------------------------

@pytest.mark.parametrize("back_kind", ["sockd", "danted"])
def test_pipelined_through_a_server_that_reads_its_handshake_in_order(front, start_sockd, danted, www, back_kind):
    back = start_sockd(PERMIT_LOCAL, name="back") if back_kind == "sockd" else danted()
    s = front("sockd @=socks5://127.0.0.1:%d?pipeline ALL\n" % back.port)
    for scheme in ("socks5", "socks4"):
        fetched(curl("%s://127.0.0.1:%d" % (scheme, s.port), www.url("hello.txt")), www)
    helpers.wait_for(lambda: len(re.findall(r"connected -- .* via socks5://127\.0\.0\.1:%d\?pipeline" % back.port,
                                            s.log())) == 2, what="two connected lines via the pipelined upstream")


def test_pipelined_through_a_server_with_a_password(front, start_sockd, www, tmp_path):
    # the back wants RFC 1929: greeting (method 2 only), credentials and request in one write
    from test_logins import sockd_passwd
    pw = str(tmp_path / "passwd")
    r = sockd_passwd("-c", "-i", "-C", "4", pw, "chain", password="Ch4inPass\n")
    assert r.returncode == 0, r.stderr
    back = start_sockd("passwd %s\nmethods username\n" % pw + PERMIT_LOCAL, name="back")
    s = front("sockd @=socks5://chain:Ch4inPass@127.0.0.1:%d?pipeline ALL\n" % back.port)
    fetched(curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt")), www)
    back.wait_log(r"connected -- Connect from chain\(unknown\)@127\.0\.0\.1")
    s.stop()
    assert "Ch4inPass" not in s.log()


def test_microsocks_drops_a_pipelined_request_and_the_log_says_so(front, microsocks, www):
    port = microsocks()
    s = front("sockd @=socks5://127.0.0.1:%d?pipeline ALL\n" % port, "timeout connect 2\n")
    r = curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt"))
    assert r.returncode != 0
    s.wait_log(r"timed-out -- .*Upstream socks5://127\.0\.0\.1:%d\?pipeline answered the greeting and not "
               r"the pipelined request: .*\(remove \?pipeline\)" % port)
    # the same server without ?pipeline serves
    s2 = front("sockd @=socks5://127.0.0.1:%d ALL\n" % port)
    fetched(curl("socks5://127.0.0.1:%d" % s2.port, www.url("hello.txt")), www)


# --- refusals -------------------------------------------------------------------------------------------

def test_a_deny_line_refuses_naming_it(front, www, black_hole):
    s = front("deny 127.0.0.1 255.255.255.255 eq %d\nsockd @=socks5://127.0.0.1:%d ALL\n" % (
        www.port, black_hole.port))
    r = curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt"))
    assert r.returncode != 0 and "(2)" in r.stderr, r.stderr    # not allowed
    s.wait_log(r"refused -- Connect from .* to 127\.0\.0\.1 \(%d\): way out .*wayout\d+:1: denied by 'deny "
               r"127\.0\.0\.1 255\.255\.255\.255 eq %d'" % (www.port, www.port))
    r = curl("socks4://127.0.0.1:%d" % s.port, www.url("hello.txt"))
    assert r.returncode != 0
    time.sleep(0.2)
    assert black_hole.conns == []


def test_sockd_conf_refuses_before_any_upstream(start_sockd, tmp_path, www, black_hole):
    path = wayout(tmp_path, "sockd @=socks5://127.0.0.1:%d ALL\n" % black_hole.port)
    s = start_sockd("deny 0/0 127.0.0.1/32 eq %d\n" % www.port + PERMIT_LOCAL + "upstream %s\n" % path)
    r = curl("socks5://127.0.0.1:%d" % s.port, www.url("hello.txt"))
    assert r.returncode != 0
    s.wait_log(r"(?m)refused -- Connect from .* by .*sockd0\.conf:2$")
    time.sleep(0.2)
    assert black_hole.conns == []


# --- BIND two hops out --------------------------------------------------------------------------------

from test_client_tools import COMMANDS, TARGET, check_transfer, client_env, rftp  # noqa: E402
from test_client_tools import ftpd  # noqa: E402,F401 (a fixture)


@pytest.mark.parametrize("back_kind", ["sockd", "danted"])
def test_rftp_active_mode_two_hops(front, start_sockd, danted, ftpd, tmp_path, back_kind):  # noqa: F811
    """rftp (the client library's BIND) -> sockd -> a second SOCKS server
    (sockd, or Dante) -> pyftpdlib: the data connection comes back through
    both hops."""
    if back_kind == "sockd":
        back = start_sockd(PERMIT_LOCAL, name="back")
        port = back.port
    else:
        back = danted()
        port = back.port
    s = front("sockd @=socks5://127.0.0.1:%d ALL\n" % port)
    env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "up.txt").write_text("uploaded through SOCKS\n")
    r, work = rftp(tmp_path, env, TARGET, str(ftpd.port), commands=COMMANDS)
    check_transfer(r, work, ftpd, active=True)
    s.wait_log(r"bind -- Bind from .* for 127\.0\.0\.2 \(\w+\) via socks5://127\.0\.0\.1:%d: listening on "
               r"127\.0\.0\.1 port \d+" % port)
    s.wait_log(r"connected -- Bind from .* for 127\.0\.0\.2 \(\w+\) via socks5://127\.0\.0\.1:%d: 127\.0\.0\.2 port "
               r"\d+ connected" % port)
    if back_kind == "sockd":
        back.wait_log(r"connected -- Bind from unknown\(unknown\)@127\.0\.0\.1 for 127\.0\.0\.2")
    else:
        assert "tcp/bindreply" in back.log()


# --- UDP two hops out ---------------------------------------------------------------------------------

from test_bind_udp import hdr, udp_associate  # noqa: E402


@pytest.mark.parametrize("back_kind", ["sockd", "danted"])
def test_udp_two_hops(front, start_sockd, danted, back_kind):
    """A datagram echoed back through sockd and a second SOCKS 5 server
    (sockd, or Dante): association to association; a destination the
    way-out file sends direct skips the upstream, one it denies is
    dropped."""
    echo = helpers.UDPEcho(prefix=b"echo:")
    near = helpers.UDPEcho(prefix=b"near:")
    denied = helpers.UDPEcho(prefix=b"no:")
    try:
        if back_kind == "sockd":
            back = start_sockd(PERMIT_LOCAL, name="back")
        else:
            back = danted()
        s = front("direct 127.0.0.1 255.255.255.255 eq %d\ndeny 127.0.0.1 255.255.255.255 eq %d\n"
                  "sockd @=socks5://127.0.0.1:%d ALL\n" % (near.port, denied.port, back.port))
        c, u, relay = udp_associate(s.addr)
        u.settimeout(5)
        for i in range(3):
            u.sendto(hdr("127.0.0.1", echo.port) + b"hello %d" % i, relay)
            data, src = u.recvfrom(1000)
            assert data == hdr("127.0.0.1", echo.port) + b"echo:hello %d" % i
            assert src == relay
        # the echo saw the back server's relay, not the front's
        assert all(peer != relay for _, peer in echo.seen)
        u.sendto(hdr("127.0.0.1", near.port) + b"direct", relay)
        assert u.recvfrom(1000)[0] == hdr("127.0.0.1", near.port) + b"near:direct"
        u.sendto(hdr("127.0.0.1", denied.port) + b"denied", relay)
        u.settimeout(0.5)
        with pytest.raises(socket.timeout):
            u.recvfrom(1000)
        assert not denied.seen
        s.wait_log(r"connected -- UDP associate from .*: through socks5://127\.0\.0\.1:%d, its relay on "
                   r"127\.0\.0\.1 port \d+" % back.port)
        s.wait_log(r"refused -- UDP associate from .*: datagram to 127\.0\.0\.1 \(%d\): way out .*:2: denied"
                   % denied.port)
        c.close()
        s.wait_log(r"terminated -- UDP associate .* in 5 datagrams from 127\.0\.0\.1, .* in 4 datagrams to it, "
                   r"1 dropped")
        if back_kind == "sockd":
            back.wait_log(r"terminated -- UDP associate from unknown\(unknown\)@127\.0\.0\.1\. .* in 3 datagrams")
        else:
            wait_for(lambda: "udpassociate" in back.log() or "udpreply" in back.log(), 5, what="danted's log")
    finally:
        for e in (echo, near, denied):
            e.close()


def test_udp_through_a_dead_upstream_fails_over(front, start_sockd):
    echo = helpers.UDPEcho(prefix=b"echo:")
    try:
        back = start_sockd(PERMIT_LOCAL, name="back")
        dead = helpers.closed_port()
        s = front("sockd @=socks5://127.0.0.1:%d,socks5://127.0.0.1:%d ALL\n" % (dead, back.port))
        c, u, relay = udp_associate(s.addr)
        u.settimeout(5)
        u.sendto(hdr("127.0.0.1", echo.port) + b"x", relay)
        assert u.recvfrom(1000)[0].endswith(b"echo:x")
        s.wait_log(r"upstream socks5://127\.0\.0\.1:%d is down: connect: Connection refused" % dead)
        c.close()
    finally:
        echo.close()


def test_a_name_only_the_upstream_can_resolve_is_left_to_it(front, start_sockd, www, tmp_path):
    """socks5h:// (and socks4a://, http://) upstreams resolve names
    themselves: a name the front sockd cannot resolve is judged by its name
    and passed on.  The back sockd has its own /etc/hosts (a mount
    namespace; the host's file is never touched)."""
    need("unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 only-upstream.test\n")
    before = open("/etc/hosts", "rb").read()
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    back = start_sockd(PERMIT_LOCAL, name="back", prefix=prefix)
    url = "http://only-upstream.test:%d/hello.txt" % www.port
    s = front("sockd @=socks5h://127.0.0.1:%d .test\ndirect ALL\n" % back.port)
    fetched(curl("socks5h://127.0.0.1:%d" % s.port, url), www)
    s.wait_log(r"connected -- Connect from unknown\(unknown\)@127\.0\.0\.1 to only-upstream\.test \(%d\) via "
               r"socks5h://127\.0\.0\.1:%d" % (www.port, back.port))
    back.wait_log(r"connected -- Connect from unknown\(unknown\)@127\.0\.0\.1 to only-upstream\.test")
    # an upstream that wants sockd to resolve (socks5://) cannot take it: host unreachable, saying why
    s2 = front("sockd @=socks5://127.0.0.1:%d .test\ndirect ALL\n" % back.port)
    r = curl("socks5h://127.0.0.1:%d" % s2.port, url)
    assert r.returncode == 97 and r.stdout == "", r.stderr
    s2.wait_log(r"failed -- Connect from .* to only-upstream\.test .*Error code: resolve")
    assert open("/etc/hosts", "rb").read() == before

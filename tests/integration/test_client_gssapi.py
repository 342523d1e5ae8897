"""The client library's GSS-API (RFC 1961) against a real MIT realm
(gsskit.Realm, the session's krb5_realm) and two real servers: sockd with
``methods gssapi``, and Dante's GSS-API server (danted-gss) as the
reference.  The same client runs against both and must get the same
results: CONNECT at levels 0, 1 and 2 (runsocks running a small script,
with the realm's environment, in a process of its own), 16 MiB each way
byte for byte at levels 1 and 2 (SHA-256, with the MB/s printed), UDP at
levels 1 and 2, BIND at level 2, the wire at level 2 (no plaintext), and
the refusals in words: no ticket, an expired one, a service the KDC does
not know, one the server does not accept, a level the server will not
grant.  Targets listen on 127.0.0.2 (127.0.0.1 is always direct)."""

import hashlib
import json
import os
import re
import socket
import subprocess
import threading

import pytest

import gsskit
import helpers

TARGET = "127.0.0.2"
BIN = os.path.join(helpers.ROOT, "bin")
PAGE = "hello through GSS-API\n"
LEVELS = gsskit.LEVELS                  # index = RFC 1961 level

FETCH = r"""
import sys, urllib.request
try:
    sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())
except OSError as exc:
    print("refused: %s" % getattr(exc, "reason", exc))
    sys.exit(3)
"""

BULK = r"""
import hashlib, json, socket, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=60)
up = hashlib.sha256(b"up").digest() * (n // 32)
start = time.monotonic()
def send():
    s.sendall(up)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
h, got = hashlib.sha256(), 0
while True:
    c = s.recv(1 << 16)
    if not c:
        break
    h.update(c)
    got += len(c)
t.join(60)
took = time.monotonic() - start
print(json.dumps({"up": hashlib.sha256(up).hexdigest(), "down": h.hexdigest(), "got": got, "seconds": took,
                  "relayed": type(s).__name__ == "socksocket" and s._relay is not None}))
"""

UDP = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
for size in (1, 100, 1400, 8000, 30000):
    msg = bytes((size % 251,)) * size
    u.sendto(msg, (host, port))
    data, src = u.recvfrom(65535)
    assert data == b"echo:" + msg and src == (host, port), (size, data[:20], src)
u.connect((host, port))
u.send(b"connected")
assert u.recv(100) == b"echo:connected"
print("udp ok", type(u).__name__, u._udp.prot is not None)
"""

BIND = r"""
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((host, port), timeout=10)       # the control connection, as FTP has
d = socket.socket()
d.settimeout(10)
d.bind(("", 0))
addr = d.getsockname()                                       # a SOCKS BIND at the same server
d.listen(1)
got = {}
def peer():
    # the application server, elsewhere: a real socket, or its bind()
    # would be taken for the next SOCKS BIND of the classic call order
    from sockd.client import core
    p = core._socket()
    p.bind((host, 0))
    got["peer"] = p.getsockname()
    p.connect(addr[:2])
    p.sendall(b"data from the application server")
    p.shutdown(socket.SHUT_WR)
    b = b""
    while True:
        x = p.recv(100)
        if not x:
            break
        b += x
    got["echo"] = b
    p.close()
t = threading.Thread(target=peer)
t.start()
conn, peer_addr = d.accept()
data = b""
while len(data) < 32:
    data += conn.recv(32 - len(data))
conn.sendall(b"answer")
conn.close()
d.close()
t.join(10)
print(peer_addr == got["peer"], data == b"data from the application server", got["echo"] == b"answer")
"""


# --- the servers ----------------------------------------------------------------------------

@pytest.fixture
def gss_sockd(start_sockd, krb5_realm):
    """gss_sockd(extra="") -> helpers.Sockd with methods gssapi on the realm."""
    gsskit.need_python_gssapi()

    def start(extra="", **kw):
        conf = ("methods gssapi\ngssapi keytab %s\n%spermit 127.0.0.0/8 127.0.0.0/8\n"
                % (krb5_realm.keytab, extra))
        return start_sockd(conf, env=krb5_realm.env(), **kw)
    return start


@pytest.fixture
def dante(start_danted_gss, monkeypatch):
    """start_danted_gss, with BIND and UDP permitted too (gsskit's rule
    permits CONNECT only)."""
    every = gsskit.DANTED_CONF.replace("    command: connect\n",
                                       "    command: connect bind bindreply udpassociate udpreply\n")
    assert every != gsskit.DANTED_CONF, "gsskit's Dante rule changed: adapt this fixture"
    monkeypatch.setattr(gsskit, "DANTED_CONF", every)
    return start_danted_gss


@pytest.fixture
def server(request, gss_sockd, dante):
    """The server under test, by the parameter: start(levels=, servicename=)
    -> a started helpers.Sockd or gsskit.DantedGss; ``start.kind`` says which."""
    kind = request.param

    def start(levels=(0, 1, 2), servicename="rcmd"):
        if kind == "sockd":
            extra = "gssapi levels %s\n" % " ".join(LEVELS[lv] for lv in levels)
            if servicename != "rcmd":
                extra += "gssapi service %s\n" % servicename
            return gss_sockd(extra)
        return dante(levels=levels, servicename=servicename)
    start.kind = kind
    return start


BOTH = pytest.mark.parametrize("server", ["sockd", "danted"], indirect=True)


def connected(kind, level, port=None):
    """The server's log line for alice's CONNECT at ``level``."""
    if kind == "sockd":
        return (r"connected -- Connect from gssapi/%s%%alice@SOCKS\.TEST\(unknown\)@127\.0\.0\.1 to 127\.0\.0\.2"
                % LEVELS[level])
    return r"tcp/connect \[: gssapi/%s%%alice@SOCKS\.TEST@127\.0\.0\.1\.\d+ .* 127\.0\.0\.2\.%s" % (
        LEVELS[level], port or r"\d+")


# --- the client ----------------------------------------------------------------------------

class Client:
    """runsocks with the realm's environment, alice's ticket (unless told
    otherwise) and a socks.conf that sends everything to ``port``."""

    def __init__(self, realm, tmp_path):
        self.realm, self.dir = realm, tmp_path

    def run(self, script, args, port, level=2, ccache=None, env=None, timeout=60):
        path = self.dir / ("client-%s.py" % hashlib.sha1(script.encode()).hexdigest()[:8])
        path.write_text(script)
        conf = self.dir / ("socks-%d.conf" % port)
        conf.write_text("sockd @=127.0.0.1:%d ALL\n" % port)
        base = {k: v for k, v in os.environ.items() if not k.startswith("SOCKS_")}
        e = self.realm.env(ccache=self.realm.ticket("alice") if ccache is None else ccache, base=base)
        e.update({"SOCKS_CONF": str(conf), "SOCKS_LOG": "stderr", "SOCKS_GSSAPI_LEVEL": LEVELS[level]})
        e.update(env or {})
        return subprocess.run([helpers.PYTHON, os.path.join(BIN, "runsocks"), str(path)] + [str(a) for a in args],
                              capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture
def client(krb5_realm, tmp_path):
    gsskit.need_python_gssapi()
    return Client(krb5_realm, tmp_path)


@pytest.fixture
def target_www(tmp_path):
    d = tmp_path / "site"
    d.mkdir()
    (d / "hello.txt").write_text(PAGE)
    srv = helpers.HTTPServer(d, host=TARGET)
    yield srv
    srv.close()


def updown(n):
    """A target on 127.0.0.2 that hashes what it is sent while it sends
    ``n`` bytes of its own; ``result["up"]`` is the hash once both ended."""
    result = {}

    def handle(conn):
        down = hashlib.sha256(b"down").digest() * (n // 32)
        t = threading.Thread(target=lambda: (conn.sendall(down), conn.shutdown(socket.SHUT_WR)))
        t.start()
        result["up"] = helpers.sha256_until_eof(conn)
        t.join(60)
    srv = helpers.TCPServer(handle, host=TARGET)
    srv.result = result
    return srv


# --- CONNECT at every level, against both -----------------------------------------------------

@BOTH
@pytest.mark.parametrize("level", [0, 1, 2])
def test_runsocks_fetches_a_page_at_each_level(server, client, target_www, level):
    srv = server()
    r = client.run(FETCH, [target_www.url("hello.txt")], srv.port, level=level)
    assert r.returncode == 0 and r.stdout == PAGE, r.stdout + r.stderr
    assert "using sockd at 127.0.0.1:%d (SOCKS 5, gssapi/%s as alice@SOCKS.TEST)" % (srv.port, LEVELS[level]) \
        in r.stderr
    srv.wait_log(connected(server.kind, level, target_www.port))


@pytest.mark.serial
@BOTH
@pytest.mark.parametrize("level", [1, 2])
def test_16_mib_each_way_byte_for_byte(server, client, level, capsys):
    n = 16 << 20
    target = updown(n)
    try:
        srv = server()
        r = client.run(BULK, [TARGET, target.port, n], srv.port, level=level, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout)
        helpers.wait_for(lambda: "up" in target.result, 20, what="the target's hash")
    finally:
        target.close()
    assert got["relayed"]                       # the program's socket was the socketpair's end
    assert got["got"] == n
    assert got["down"] == hashlib.sha256(hashlib.sha256(b"down").digest() * (n // 32)).hexdigest()
    assert target.result["up"] == got["up"]
    rate = n / got["seconds"] / 1e6
    with capsys.disabled():
        print("\n    client library via %s, %s: 16 MiB each way at once in %.2f s, %.1f MB/s each way"
              % (server.kind, LEVELS[level], got["seconds"], rate))
    assert rate > 1.0, "pathologically slow: %.2f MB/s" % rate


@BOTH
@pytest.mark.parametrize("level", [1, 2])
def test_udp_each_datagram_one_protected_message(server, client, level):
    echo = helpers.UDPEcho(host=TARGET, prefix=b"echo:")
    try:
        srv = server()
        r = client.run(UDP, [TARGET, echo.port], srv.port, level=level)
    finally:
        echo.close()
    assert r.returncode == 0 and r.stdout == "udp ok socksocket True\n", r.stdout + r.stderr
    assert "udp associate from" in r.stderr and "(SOCKS 5, gssapi/%s as alice@SOCKS.TEST)" % LEVELS[level] \
        in r.stderr
    assert len(echo.seen) == 6


@BOTH
def test_bind_at_level_2(server, client, echo_on_target):
    srv = server()
    r = client.run(BIND, [TARGET, echo_on_target.port], srv.port, level=2)
    assert r.returncode == 0 and r.stdout == "True True True\n", r.stdout + r.stderr
    assert re.search(r"bind\(\) from .* using sockd at 127\.0\.0\.1:%d \(SOCKS 5, gssapi/confidentiality as "
                     r"alice@SOCKS\.TEST\): listening on" % srv.port, r.stderr), r.stderr


@pytest.fixture
def echo_on_target():
    srv = helpers.TCPServer(helpers.echo_handler, host=TARGET)
    yield srv
    srv.close()


def test_the_wire_at_level_2_holds_no_plaintext(gss_sockd, client, start_tap, target_www):
    s = gss_sockd()
    tap = start_tap(s.port, max_sessions=2, lifetime=30)
    r = client.run(FETCH, [target_www.url("hello.txt")], tap.port, level=2)
    assert r.returncode == 0 and r.stdout == PAGE, r.stderr
    sess = tap.session(1)
    assert sess.c2s.head == b"\x05\x02\x00\x01" and sess.s2c.head == b"\x05\x01"   # none and GSS-API offered
    assert [f.mtyp for f in sess.c2s.frames][:2] == [1, 2] and [f.mtyp for f in sess.s2c.frames][:2] == [1, 2]
    assert all(f.mtyp == 3 for f in sess.c2s.frames[2:] + sess.s2c.frames[2:])
    assert len(sess.c2s.frames) >= 3 and len(sess.s2c.frames) >= 3
    assert sess.c2s.tail == b"" and sess.s2c.tail == b""
    assert sess.plaintext((b"GET /hello.txt", PAGE.encode(), b"Host: 127.0.0.2")) == []


# --- refusals, in words, from both -----------------------------------------------------------

@BOTH
@pytest.mark.parametrize("cache", ["missing", "expired"])
def test_without_a_valid_ticket_the_message_says_kinit(server, client, krb5_realm, target_www, tmp_path, cache):
    ccache = (krb5_realm.missing_ccache() if cache == "missing"
              else krb5_realm.expired_ccache(tmp_path / "expired.ccache"))
    srv = server()
    r = client.run(FETCH, [target_www.url("hello.txt")], srv.port, ccache=ccache)
    assert r.returncode == 3, r.stdout + r.stderr
    why = "no Kerberos ticket (" if cache == "missing" else "your Kerberos ticket has expired ("
    assert r.stdout.startswith("refused: SOCKS server 127.0.0.1:%d accepts none of the authentication methods "
                               "offered" % srv.port), r.stdout
    assert "; GSS-API (Kerberos) was not offered: " + why in r.stdout
    assert r.stdout.rstrip().endswith("run kinit (KRB5CCNAME=%s)" % gsskit.ccache_name(ccache)), r.stdout
    assert "Traceback" not in r.stderr
    assert not re.search(connected(server.kind, 2), srv.log())


@BOTH
def test_require_without_a_ticket_asks_no_server(server, client, krb5_realm, target_www):
    srv = server()
    r = client.run(FETCH, [target_www.url("hello.txt")], srv.port, ccache=krb5_realm.missing_ccache(),
                   env={"SOCKS_GSSAPI": "require"})
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith("refused: SOCKS_GSSAPI=require, but GSS-API cannot be used: no Kerberos ticket")
    assert ("tcp/accept" if server.kind == "danted" else "from 127.0.0.1") not in srv.log()


@BOTH
def test_a_service_the_kdc_does_not_know(server, client, target_www):
    srv = server()
    r = client.run(FETCH, [target_www.url("hello.txt")], srv.port, env={"SOCKS_GSSAPI_SERVICE": "nosuch"})
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith(
        "refused: SOCKS server 127.0.0.1:%d: GSS-API as alice@SOCKS.TEST failed: the KDC knows no service "
        "nosuch@127.0.0.1 (Server nosuch/127.0.0.1@SOCKS.TEST not found in Kerberos database): set "
        "SOCKS_GSSAPI_SERVICE" % srv.port), r.stdout


@BOTH
def test_a_service_the_server_does_not_accept(server, client, target_www):
    # socks/127.0.0.1 is in the realm and the keytab; the servers accept rcmd only
    srv = server(servicename="rcmd" if server.kind == "sockd" else "rcmd/localhost")
    r = client.run(FETCH, [target_www.url("hello.txt")], srv.port, env={"SOCKS_GSSAPI_SERVICE": "socks"})
    assert r.returncode == 3, r.stdout + r.stderr
    if server.kind == "sockd":                  # sockd sends the abort
        assert r.stdout.startswith("refused: SOCKS server 127.0.0.1:%d refused the GSS-API context of "
                                   "alice@SOCKS.TEST for socks@127.0.0.1 (it sent the abort" % srv.port), r.stdout
        srv.wait_log(r"the client asked for the service socks/127\.0\.0\.1@SOCKS\.TEST, not one of gssapi service")
    else:                                       # Dante just closes
        assert r.stdout.startswith("refused: SOCKS server 127.0.0.1:%d closed the connection during the GSS-API "
                                   "negotiation for alice@SOCKS.TEST (service socks@127.0.0.1" % srv.port), r.stdout


@BOTH
def test_a_level_the_server_will_not_grant_is_refused_and_a_stronger_one_followed(server, client, target_www):
    srv = server(levels=(1,))
    r = client.run(FETCH, [target_www.url("hello.txt")], srv.port, level=2)
    assert r.returncode == 3, r.stdout + r.stderr
    if server.kind == "sockd":
        assert r.stdout.startswith("refused: SOCKS server 127.0.0.1:%d refused GSS-API protection level "
                                   "confidentiality for alice@SOCKS.TEST; try another SOCKS_GSSAPI_LEVEL" % srv.port)
        # asked for less than it grants, the client is given more, and follows
        ok = client.run(FETCH, [target_www.url("hello.txt")], srv.port, level=0)
        assert ok.returncode == 0 and ok.stdout == PAGE, ok.stdout + ok.stderr
        assert "(SOCKS 5, gssapi/integrity as alice@SOCKS.TEST)" in ok.stderr
        srv.wait_log(connected("sockd", 1))
    else:                                       # Dante never offers another level: it closes
        assert r.stdout.startswith("refused: SOCKS server 127.0.0.1:%d closed the connection during the GSS-API "
                                   "negotiation" % srv.port) and "protection level confidentiality" in r.stdout
        ok = client.run(FETCH, [target_www.url("hello.txt")], srv.port, level=1)
        assert ok.returncode == 0 and ok.stdout == PAGE, ok.stdout + ok.stderr


def test_no_never_offers_it(gss_sockd, client, target_www):
    s = gss_sockd()
    r = client.run(FETCH, [target_www.url("hello.txt")], s.port, env={"SOCKS_GSSAPI": "no"})
    assert r.returncode == 3 and "GSS-API" not in r.stdout, r.stdout + r.stderr
    s.wait_log(r"refused -- no acceptable authentication method from 127\.0\.0\.1 \(offered 0\)")

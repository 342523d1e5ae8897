"""sockd/client/core.py: the client library's socket, against real peers.

The pure parts (the SOCKS 4 texts 91/92/93, the error classes, SOCKS_DNAME,
Route, the versions to try) are example tables, with hypothesis where the
input can be hostile.  Everything with I/O is driven against small SOCKS
servers that the test itself runs on 127.0.0.1, port 0 (clientkit.Peer):
they check the bytes ``socksocket`` sends against an independent writing
of the wire format, answer with scripted replies (whole or a byte at a
time), and close, stay silent or refuse where the test says.  Reply
reading is also fed through socketpairs.  socks.conf is a file in the
test's directory (the ``socksenv`` fixture).  Destinations are 127.0.0.2
(127.0.0.1 is always direct); nothing leaves loopback, and every wait is
bounded by the socket's timeout (clientkit.WAIT or less).
"""

import errno
import os
import pwd
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import protocol as P
from sockd.client import core

from clientkit import (BADNAME, LOCAL, NODOMAIN, NONAME, TARGET, WAIT, Peer, listener, read_greeting,
                       read_request4,
                       read_request5, read_userpass, reply4, reply5, socks5_server, socksenv, udp_header)

assert socksenv     # the fixture, used by name
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def sockets():
    """make(*args) -> a socksocket with the WAIT timeout, closed at the end."""
    made = []

    def make(family=socket.AF_INET, type=socket.SOCK_STREAM, timeout=WAIT):
        s = core.socksocket(family, type)
        s.settimeout(timeout)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.fixture
def peers():
    """start(handler, host=LOCAL) -> a running Peer, closed (and its
    handler's failures raised) at the end."""
    started = []

    def start(handler, **kw):
        p = Peer(handler, **kw)
        started.append(p)
        return p
    yield start
    for p in started:
        p.close()


def hold(c):
    """After the reply: keep the relayed stream open until the client closes."""
    c.read_all()


# --- pure parts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("code,text", [
    (91, "request rejected or failed"),
    (92, "the server cannot reach identd on your machine"),
    (93, "your user id does not match identd"),
])
def test_socks4_codes_have_the_classic_texts(code, text):
    assert core.S4_TEXT[code] == text


def test_every_refusal_is_a_connection_refused_error():
    for cls in (core.SocksError, core.SocksDenied, core.SocksRefused, core.SocksServerError,
                core.SocksConfigError):
        e = cls("why", where="f:1", server="s:1", code=91, version=4)
        assert isinstance(e, ConnectionRefusedError) and isinstance(e, core.SocksError)
        assert e.errno == errno.ECONNREFUSED and str(e) == "why"
        assert (e.where, e.server, e.code, e.version) == ("f:1", "s:1", 91, 4)


@pytest.mark.parametrize("host,dname,want", [
    ("www", "example.test", "www.example.test"),
    ("www", ".example.test.", "www.example.test"),
    ("www", "", "www"),
    ("www.other.test", "example.test", "www.other.test"),
    ("localhost", "example.test", "localhost"),
    ("LOCALHOST", "example.test", "LOCALHOST"),
    ("10.1.2.3", "example.test", "10.1.2.3"),
    ("::1", "example.test", "::1"),
    ("fe80::1%lo", "example.test", "fe80::1%lo"),
])
def test_socks_dname_qualifies_one_label_names(host, dname, want):
    assert core.qualify(host, {"SOCKS_DNAME": dname}) == want
    assert core.qualify(host, {}) == host


@FAST
@given(st.text(max_size=30), st.text(max_size=30))
def test_qualify_only_ever_appends_the_domain(host, dname):
    got = core.qualify(host, {"SOCKS_DNAME": dname})
    if got != host:
        assert "." not in host and got == "%s.%s" % (host, dname.strip().strip("."))


def test_route_properties():
    from sockd.client import conf as K
    c = K.parse_text("direct ALL\n", "/etc/socks.conf")
    r = core.Route(K.decide(c, "u", (4, 1), 23), "h.test", "0.0.0.1", (), 23, "u", "l", "connect")
    assert (r.action, r.where, r.dest) == ("direct", "/etc/socks.conf:1", "h.test (telnet)")
    r = core.Route(K.decide(None, "u", (4, 1), 23), "h.test", None, (), 23, "u", "l", "bind")
    assert r.where is None and r.action == "direct"


def test_users_are_the_effective_user_and_the_login():
    user, login = core._users()
    assert user == ME and login


@pytest.mark.parametrize("value,want", [(None, (5, 4)), ("4", (4,)), ("5", (5,))])
def test_versions_to_try(socksenv, value, want):
    if value:
        socksenv.set("SOCKS_VERSION", value)
    assert core._versions() == want


def test_configuration_mistakes_are_socks_config_errors(socksenv):
    socksenv.set("SOCKS_VERSION", "6")
    with pytest.raises(core.SocksConfigError, match=r"^SOCKS_VERSION: expected 4 or 5 \(near '6'\)$"):
        core.check_config()
    socksenv.set("SOCKS_VERSION", "5")
    socksenv.set("SOCKS_SERVER", "fw:0")
    with pytest.raises(core.SocksConfigError, match=r"^SOCKS_SERVER: bad server port: 0 \(near 'fw:0'\)$"):
        core.check_config()
    with pytest.raises(core.SocksConfigError):
        core.route(TARGET, 7)


def test_banner(socksenv, capsys):
    import io
    out = io.StringIO()
    core.banner(out)
    assert out.getvalue() == ("sockd %s SOCKS client (SOCKS 5, 4A, 4; socks.conf %s). Default SOCKS server: "
                              "none (SOCKS_SERVER is not set)\n" % (core.__version__, socksenv.path))
    socksenv.set("SOCKS_SERVER", "fw1,[::1]:1081")
    out = io.StringIO()
    core.banner(out)
    assert out.getvalue().endswith("Default SOCKS server: fw1:1080, [::1]:1081\n")
    socksenv.set("SOCKS_SERVER", "fw:x")
    core.banner()
    assert "Default SOCKS server: none (SOCKS_SERVER: bad server port" in capsys.readouterr().err


# --- what the rules are told about a destination ---------------------------------------------

def test_lookup_of_addresses_and_names(socksenv):
    assert core.lookup("10.1.2.3", 80, None) == ("10.1.2.3", "10.1.2.3", (), (4, 0x0A010203))
    assert core.lookup("fe80::1%lo", 80, None)[1:3] == ("fe80::1", ())
    # a name is resolved here, and the rules see it in lower case
    assert core.lookup("LocalHost", 80, None) == ("LocalHost", "127.0.0.1", ("localhost",), (4, 0x7F000001))
    # a name only a server could resolve: decided on its name alone
    assert core.lookup(NONAME, 80, None) == (NONAME, None, (NONAME,), (0, 0))
    # a label the IDNA codec refuses is no traceback either
    assert core.lookup(BADNAME, 80, None) == (BADNAME, None, (BADNAME,), (0, 0))
    assert core.lookup("x" * 70 + ".test", 80, None)[1] is None
    socksenv.set("SOCKS_DNAME", NODOMAIN)
    assert core.lookup("www", 80, None)[:3] == (NONAME, None, (NONAME,))


def test_load_conf_rereads_a_changed_file_and_keeps_reporting_a_mistake(socksenv, caplog):
    assert core.load_conf() is None                       # no file: everything direct
    socksenv.path.write_text("direct ALL\n")
    assert [e.action for e in core.load_conf().entries] == ["direct"]
    socksenv.path.write_text("deny 10.0.0.0/8\nsockd ALL\n")
    assert [e.action for e in core.load_conf().entries] == ["deny", "sockd"]
    socksenv.path.write_text("sockd ALL\nbogus ALL\n")
    for _ in range(2):                                    # the second time from the cache
        with pytest.raises(core.SocksConfigError) as ei:
            core.load_conf()
        assert str(ei.value) == ("%s:2: unknown action: expected deny, direct, sockd or sockd@SERVER "
                                 "(near 'bogus')" % socksenv.path)
    socksenv.conf("direct *=/nonexistent/users ALL\n")
    with caplog.at_level("WARNING", logger="sockd.client"):
        core.load_conf()
    assert "%s:1: Unable to open userfile (/nonexistent/users)" % socksenv.path in caplog.text


# --- reading replies: exact lengths, any arrival, hostile bytes ------------------------------

def later(sock, pieces, pause=0.002):
    """Send ``pieces`` from a thread, a pause between each: the reader sees
    them arrive one by one.  Returns the thread (join it)."""
    def run():
        for p in pieces:
            sock.sendall(p)
            time.sleep(pause)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


REPLIES5 = [
    (reply5(0, "10.1.2.3", 1080), (0, "10.1.2.3", 1080)),
    (reply5(5, "2001:db8::7", 1), (5, "2001:db8::7", 1)),
    (reply5(0, "relay.example.test", 65535), (0, "relay.example.test", 65535)),
]


@pytest.mark.parametrize("wire,want", REPLIES5)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_read_reply5_reads_exactly_one_reply(wire, want, split):
    a, b = socket.socketpair()
    with a, b:
        pieces = [wire + b"DATA"] if split == "whole" else [bytes((x,)) for x in wire] + [b"DATA"]
        t = later(b, pieces)
        assert core.read_reply5(a, time.monotonic() + WAIT) == want
        t.join(WAIT)
        a.settimeout(WAIT)
        assert a.recv(10) == b"DATA"


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_read_reply4_reads_exactly_eight_bytes(split):
    wire = reply4(91, "10.0.0.9", 2121)
    a, b = socket.socketpair()
    with a, b:
        t = later(b, [wire + b"X"] if split == "whole" else [bytes((x,)) for x in wire] + [b"X"])
        assert core.read_reply4(a, time.monotonic() + WAIT) == (91, "10.0.0.9", 2121)
        t.join(WAIT)
        a.settimeout(WAIT)
        assert a.recv(10) == b"X"
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"\x04\x5a\0\x07\x7f\0\0\x02")           # some servers answer with VN 4
        assert core.read_reply4(a, time.monotonic() + WAIT) == (90, "127.0.0.2", 7)


@pytest.mark.parametrize("wire,error", [
    (b"\x05\x00\x00", EOFError),                           # closed in the middle
    (b"\x04\x00\x00\x01\x7f\0\0\x01\0\x50", P.ProtocolError),
    (b"\x05\x00\x00\x09\x00\x00\x00", P.ProtocolError),    # no such address type
    (b"\x05\x00\x00\x03\x03a b\x00\x50", P.ProtocolError),  # a name with a space
])
def test_read_reply5_refuses_bad_replies(wire, error):
    a, b = socket.socketpair()
    with a, b:
        b.sendall(wire)
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(error):
            core.read_reply5(a, time.monotonic() + WAIT)


def test_reading_a_reply_is_bounded_by_the_deadline():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"\x05\x00")
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            core.read_reply5(a, t0 + 0.1)
        with pytest.raises(socket.timeout):
            core.read_reply4(a, time.monotonic() - 1)      # a deadline already past: no wait at all
        assert time.monotonic() - t0 < 1.0


ADDRESSES = st.one_of(st.ip_addresses().map(str),
                      st.from_regex(r"[a-z0-9][a-z0-9.-]{0,60}", fullmatch=True))


@FAST
@given(st.integers(0, 255), ADDRESSES, st.integers(0, 65535), st.binary(max_size=40))
def test_any_reply_is_read_to_its_length_and_no_further(rep, addr, port, trailing):
    a, b = socket.socketpair()
    with a, b:
        b.sendall(reply5(rep, addr, port) + trailing)
        b.shutdown(socket.SHUT_WR)
        got = core.read_reply5(a, time.monotonic() + WAIT)
        assert got[0] == rep and got[2] == port
        a.settimeout(WAIT)
        rest = b""
        while True:
            chunk = a.recv(64)
            if not chunk:
                break
            rest += chunk
        assert rest == trailing


@FAST
@given(st.binary(max_size=300))
def test_hostile_reply_bytes_raise_only_protocol_error_or_eof(wire):
    for read in (core.read_reply5, core.read_reply4):
        a, b = socket.socketpair()
        with a, b:
            b.sendall(wire)
            b.shutdown(socket.SHUT_WR)
            try:
                read(a, time.monotonic() + WAIT)
            except (P.ProtocolError, EOFError):
                pass


# --- SOCKS 5 through a server the test runs --------------------------------------------------

@pytest.mark.parametrize("split", [False, True])
def test_connect_sends_the_rfc1928_bytes_and_eats_no_data(socksenv, sockets, peers, split):
    seen = []

    def handle(c, peer):
        # each message in one piece (one segment: one recv has all of it), and
        # the request waits for the method choice
        seen.append(c.sock.recv(1024))
        seen.append(c.quiet())
        c.send(b"\x05\x00")
        seen.append(c.sock.recv(1024))
        if split:
            c.send_bytewise(reply5(0, "10.1.1.1", 4242))
            c.send(b"early data")
        else:
            c.send(reply5(0, "10.1.1.1", 4242) + b"early data")
        hold(c)
    p = peers(handle)
    socksenv.via(p)
    s = sockets()
    assert s.connect((TARGET, 7)) is None
    assert seen == [b"\x05\x01\x00", True, b"\x05\x01\x00\x01\x7f\x00\x00\x02\x00\x07"]
    assert s.recv(100) == b"early data"
    assert s.getpeername() == (TARGET, 7)
    assert s.gettimeout() == WAIT                       # the program's own timeout stays
    assert s.getsockname()[0] == LOCAL


def test_connect_is_logged_with_the_server_and_version(socksenv, sockets, peers, caplog):
    p = peers(socks5_server(then=hold))
    socksenv.via(p)
    with caplog.at_level("INFO", logger="sockd.client"):
        sockets().connect((TARGET, 7))
    assert "connect() from %s(" % ME in caplog.text
    assert "to %s (echo) using sockd at %s:%d (SOCKS 5)" % (TARGET, LOCAL, p.port) in caplog.text


def test_a_name_goes_to_the_server_as_a_name(socksenv, peers):
    reqs = []
    p = peers(socks5_server(then=hold, requests=reqs))
    socksenv.via(p)
    socksenv.set("SOCKS_DNAME", NODOMAIN)
    with core.create_connection(("www", 80), timeout=WAIT) as s:
        assert s.getpeername() == (NONAME, 80)
    with core.create_connection(("2001:db8::5", 443), timeout=WAIT):
        pass
    assert reqs == [([0], (1, 3, NONAME, 80)), ([0], (1, 4, "2001:db8::5", 443))]


def test_rfc1929_user_name_and_password(socksenv, sockets, peers):
    seen = []

    def handle(c, peer):
        seen.append(read_greeting(c))
        c.send(b"\x05\x02")
        seen.append(read_userpass(c))
        c.send(b"\x01\x00")
        read_request5(c)
        c.send(reply5())
        hold(c)
    p = peers(handle)
    socksenv.via(p)
    socksenv.set("SOCKS_USERNAME", "jane")
    socksenv.set("SOCKS_PASSWORD", "s3cret:x")
    sockets().connect((TARGET, 7))
    assert seen == [[0, 2], ("jane", "s3cret:x")]


@pytest.mark.parametrize("creds,method,status,message", [
    (True, 2, 1, "refused the user name and password of jane (SOCKS_USERNAME, SOCKS_PASSWORD)"),
    (True, 0xFF, None, "accepts none of the authentication methods offered"),
    (False, 0xFF, None, "accepts none of the authentication methods offered; set SOCKS_USERNAME and "
                        "SOCKS_PASSWORD if it wants a password"),
    (False, 2, None, "accepts none of the authentication methods offered; set SOCKS_USERNAME"),
    (True, 1, None, "accepts none of the authentication methods offered"),   # GSSAPI, not offered
])
def test_authentication_refusals(socksenv, sockets, peers, creds, method, status, message):
    def handle(c, peer):
        read_greeting(c)
        c.send(bytes((5, method)))
        if status is not None:
            read_userpass(c)
            c.send(bytes((1, status)))
        c.read_all()                        # until the client gives up and closes
    p = peers(handle)
    socksenv.via(p)
    if creds:
        socksenv.set("SOCKS_USERNAME", "jane")
        socksenv.set("SOCKS_PASSWORD", "pw")
    with pytest.raises(core.SocksRefused) as ei:
        sockets().connect((TARGET, 7))
    assert str(ei.value).startswith("SOCKS server %s:%d " % (LOCAL, p.port)) and message in str(ei.value)
    assert ei.value.version == 5 and ei.value.where == "%s:1" % socksenv.path


def test_a_password_too_long_for_rfc1929_is_refused_before_sending(socksenv, sockets, peers):
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x02")
        assert c.read_all() == b""
    p = peers(handle)
    socksenv.via(p)
    socksenv.set("SOCKS_USERNAME", "jane")
    socksenv.set("SOCKS_PASSWORD", "p" * 256)
    with pytest.raises(core.SocksRefused, match="wants a user name and password: user name and password "
                                                "must be 1 to 255 bytes"):
        sockets().connect((TARGET, 7))


@pytest.mark.parametrize("rep,text", [
    (1, "general SOCKS server failure"), (2, "connection not allowed by ruleset"), (3, "network unreachable"),
    (4, "host unreachable"), (5, "connection refused"), (6, "TTL expired"), (7, "command not supported"),
    (8, "address type not supported"), (9, "unknown reply"), (0xFF, "unknown reply"),
])
def test_every_socks5_reply_code_is_a_refusal_in_words(socksenv, sockets, peers, rep, text):
    p = peers(socks5_server(rep=rep))
    socksenv.via(p)
    with pytest.raises(core.SocksRefused) as ei:
        sockets().connect((TARGET, 7))
    assert str(ei.value) == ("SOCKS server %s:%d refused connect to %s port 7: SOCKS 5 reply %d, %s"
                             % (LOCAL, p.port, TARGET, rep, text))
    assert (ei.value.code, ei.value.version, ei.value.server) == (rep, 5, "%s:%d" % (LOCAL, p.port))
    assert ei.value.where == "%s:1" % socksenv.path


def test_a_refusal_is_final_the_next_server_is_not_asked(socksenv, sockets, peers):
    first = peers(socks5_server(rep=2))
    second = peers(socks5_server(then=hold))
    socksenv.conf("sockd @=%s:%d,%s:%d ALL\n" % (LOCAL, first.port, LOCAL, second.port))
    with pytest.raises(core.SocksRefused):
        sockets().connect((TARGET, 7))
    assert (first.count, second.count) == (1, 0)


def closed_port():
    s = socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_dead_server_is_skipped_and_logged(socksenv, sockets, peers, caplog):
    dead = closed_port()
    live = peers(socks5_server(then=hold))
    socksenv.conf("sockd @=%s:%d,%s:%d ALL\n" % (LOCAL, dead, LOCAL, live.port))
    with caplog.at_level("WARNING", logger="sockd.client"):
        sockets().connect((TARGET, 7))
    assert "Failed to connect to sockd at %s:%d: Connection refused" % (LOCAL, dead) in caplog.text
    assert live.count == 1


def test_when_no_server_can_be_used(socksenv, sockets, peers):
    dead = closed_port()
    closer = peers(lambda c, peer: None)                  # accepts, then closes without a word ...
    socksenv.set("SOCKS_VERSION", "5")                    # ... and no SOCKS 4 to fall back to
    socksenv.conf("sockd @=%s:%d,%s:%d,%s ALL\n" % (LOCAL, dead, LOCAL, closer.port, BADNAME))
    with pytest.raises(core.SocksServerError) as ei:
        sockets().connect((TARGET, 7))
    msg = str(ei.value)
    assert msg.startswith("%s:1: no SOCKS server could be used for %s port 7: " % (socksenv.path, TARGET))
    assert "Failed to connect to sockd at %s:1080: " % BADNAME in msg
    assert "Failed to connect to sockd at %s:%d: Connection refused" % (LOCAL, dead) in msg
    assert "Failed to talk to sockd at %s:%d: no SOCKS 5 answer (SOCKS_VERSION=5)" % (LOCAL, closer.port) in msg
    assert ei.value.where == "%s:1" % socksenv.path


@pytest.mark.parametrize("after,why", [
    ("close", "the server closed the connection"),
    ("silent", "timed out"),
    ("garbage", "bad SOCKS 5 reply version (0x48)"),
])
def test_a_server_that_fails_after_the_request(socksenv, sockets, peers, after, why):
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x00")
        read_request5(c)
        if after == "garbage":
            c.send(b"HTTP/1.0 400 Bad\r\n\r\n")
        if after == "silent":
            c.read_all()
    p = peers(handle)
    socksenv.via(p)
    t0 = time.monotonic()
    with pytest.raises(core.SocksServerError) as ei:
        sockets(timeout=0.15).connect((TARGET, 7))
    assert time.monotonic() - t0 < WAIT
    assert str(ei.value).endswith("Failed to talk to sockd at %s:%d: %s" % (LOCAL, p.port, why))


def test_the_whole_handshake_is_bounded_by_the_socket_timeout(socksenv, sockets, peers):
    # silent after the greeting: no time is left to try SOCKS 4 afterwards
    p = peers(lambda c, peer: c.read_all())
    socksenv.via(p)
    t0 = time.monotonic()
    with pytest.raises(core.SocksServerError, match="timed out"):
        sockets(timeout=0.15).connect((TARGET, 7))
    assert time.monotonic() - t0 < 1.0


@FAST
@given(st.binary(max_size=40))
def test_hostile_replies_end_in_a_socks_error(socksenv, wire):
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x00")
        read_request5(c)
        c.send(wire)
    p = Peer(handle)
    try:
        socksenv.via(p)
        s = core.socksocket()
        s.settimeout(0.5)
        try:
            s.connect((TARGET, 7))
        except core.SocksError:
            pass
        else:
            assert wire[:2] == b"\x05\x00" and len(wire) >= 10
        finally:
            s.close()
    finally:
        p.close()


# --- deciding: deny, direct, the local host --------------------------------------------------

def test_a_deny_line_refuses_without_asking_anyone(socksenv, sockets, peers, caplog):
    p = peers(socks5_server())
    socksenv.conf("deny 127.0.0.2/32 : true\nsockd @=%s:%d ALL\n" % (LOCAL, p.port))
    with caplog.at_level("WARNING", logger="sockd.client"), pytest.raises(core.SocksDenied) as ei:
        sockets().connect((TARGET, 7))
    assert str(ei.value) == "connect to %s port 7 refused: %s:1: denied by 'deny 127.0.0.2/32'" % (
        TARGET, socksenv.path)
    assert ei.value.where == "%s:1" % socksenv.path
    assert sockets().connect_ex((TARGET, 7)) == errno.ECONNREFUSED
    assert "refused -- connect() from %s(" % ME in caplog.text
    assert p.count == 0
    socksenv.conf("direct 10.0.0.0/8\n")
    with pytest.raises(core.SocksDenied, match="no line matches: access denied"):
        sockets().connect((TARGET, 7))


def test_direct_lines_and_the_local_host(socksenv, sockets):
    dst = listener(TARGET)
    loc = listener(LOCAL)
    with dst, loc:
        socksenv.conf("direct 127.0.0.2/32\ndeny ALL\n")
        s = sockets()
        s.connect(dst.getsockname())
        assert s.getpeername() == dst.getsockname()
        socksenv.conf("deny ALL\n")
        sockets().connect(loc.getsockname())              # 127.0.0.1 is always direct
        assert sockets().connect_ex(dst.getsockname()) == errno.ECONNREFUSED
        socksenv.path.unlink()
        core.reset()
        sockets().connect(dst.getsockname())              # no socks.conf: everything direct
        c = core.create_connection(dst.getsockname(), timeout=WAIT)
        assert type(c) is socket.socket                   # the real function made it
        c.close()


def test_sockets_that_are_not_inet_streams_are_left_alone(socksenv, sockets, tmp_path):
    socksenv.conf("deny ALL\n")
    path = str(tmp_path / "unix.sock")
    srv = socket.socket(socket.AF_UNIX)
    with srv:
        srv.bind(path)
        srv.listen(1)
        u = sockets(family=socket.AF_UNIX)
        u.connect(path)                                     # not routed: deny ALL does not apply
    dst = listener(TARGET)
    plain = socket.socket()
    with dst, plain:
        s = core.socksocket(fileno=os.dup(plain.fileno()))  # made from a descriptor: plain too
        with s:
            s.settimeout(WAIT)
            s.connect(dst.getsockname())


def test_socksocket_is_broad_only_for_itself():
    real = core._socket()
    with real:
        assert isinstance(real, core.socksocket) and issubclass(core._socket, core.socksocket)

        class Later(core.socksocket):
            pass
        assert not isinstance(real, Later)
        later = Later()
        with later:
            assert isinstance(later, Later) and isinstance(later, core.socksocket)


# --- SOCKS 4 and 4A, and the fallback to them --------------------------------------------------

def first_byte(c):
    """The first byte the client sends, left unread."""
    return c.sock.recv(1, socket.MSG_PEEK)


def socks4_server(code=90, then=None, requests=None, greetings=None):
    """A classic server that speaks SOCKS 4/4A only: it closes a SOCKS 5
    greeting without a word (counted in ``greetings``) and answers a
    SOCKS 4 request with ``code``."""
    def handle(c, peer):
        first = first_byte(c)
        if first != b"\x04":
            if greetings is not None and first:
                greetings.append(first)
            return
        req = read_request4(c)
        if requests is not None:
            requests.append(req)
        c.send(reply4(code, "0.0.0.0", 0))
        if then is not None:
            then(c)
    return handle


def test_fallback_to_socks4_when_the_server_closes_a_greeting_and_it_is_remembered(socksenv, sockets, peers,
                                                                                   caplog):
    reqs, greets = [], []
    p = peers(socks4_server(then=hold, requests=reqs, greetings=greets))
    socksenv.via(p)
    with caplog.at_level("INFO", logger="sockd.client"):
        sockets().connect((TARGET, 7))
        sockets().connect((TARGET, 8))
    assert greets == [b"\x05"] and p.count == 3             # SOCKS 5 once, then SOCKS 4 twice
    assert reqs == [(1, 7, TARGET, ME, None), (1, 8, TARGET, ME, None)]
    assert "using sockd at %s:%d (SOCKS 4)" % (LOCAL, p.port) in caplog.text


def test_fallback_when_the_greeting_answer_is_not_socks5(socksenv, sockets, peers):
    reqs = []

    def handle(c, peer):
        if first_byte(c) == b"\x05":
            c.read(3)
            c.send(b"\x00\x5b")                             # a SOCKS 4 server's idea of an answer
            return
        reqs.append(read_request4(c))
        c.send(reply4(90))
        hold(c)
    p = peers(handle)
    socksenv.via(p)
    sockets().connect((TARGET, 7))
    assert p.count == 2 and reqs == [(1, 7, TARGET, ME, None)]


def test_socks4a_sends_a_name_it_cannot_resolve(socksenv, sockets, peers):
    reqs = []
    p = peers(socks4_server(then=hold, requests=reqs))
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "4")
    with core.create_connection((NONAME, 80), timeout=WAIT):
        pass
    assert p.count == 1                                     # SOCKS_VERSION=4: no greeting first
    assert reqs == [(1, 80, "0.0.0.1", ME, NONAME)]


def test_socks4_wire_bytes(socksenv, sockets, peers):
    seen = []

    def handle(c, peer):
        seen.append(c.read(8 + len(ME) + 1))
        c.send(reply4())
        hold(c)
    p = peers(handle)
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "4")
    sockets().connect((TARGET, 0x1234))
    assert seen == [b"\x04\x01\x12\x34\x7f\x00\x00\x02" + ME.encode() + b"\0"]


@pytest.mark.parametrize("code,text", [
    (91, "reply 91, request rejected or failed"),
    (92, "reply 92, the server cannot reach identd on your machine"),
    (93, "reply 93, your user id does not match identd"),
    (94, "reply 94, unknown reply"),
    (0, "reply 0, unknown reply"),
])
def test_socks4_refusals_say_why(socksenv, sockets, peers, code, text):
    p = peers(socks4_server(code))
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "4")
    with pytest.raises(core.SocksRefused) as ei:
        sockets().connect((TARGET, 7))
    assert str(ei.value) == "SOCKS server %s:%d refused connect to %s port 7: %s" % (LOCAL, p.port, TARGET, text)
    assert (ei.value.code, ei.value.version) == (code, 4)


def test_socks4_cannot_reach_an_ipv6_destination(socksenv, sockets, peers):
    p = peers(socks4_server())
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "4")
    with pytest.raises(core.SocksRefused, match="speaks only SOCKS 4, which cannot reach the IPv6 address "
                                                "2001:db8::1"):
        sockets(family=socket.AF_INET6).connect(("2001:db8::1", 7))


def test_socks_version_5_does_not_fall_back(socksenv, sockets, peers):
    greets = []
    p = peers(socks4_server(greetings=greets))
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "5")
    with pytest.raises(core.SocksServerError, match=r"no SOCKS 5 answer \(SOCKS_VERSION=5\)"):
        sockets().connect((TARGET, 7))
    assert p.count == 1 and greets == [b"\x05"]


# --- the source address, BIND ---------------------------------------------------------------------

def test_a_bound_source_address_is_kept_through_the_server(socksenv, sockets, peers):
    peers_seen = []

    def handle(c, peer):
        peers_seen.append(c.sock.getpeername()[0])
        socks5_server(then=hold)(c, peer)
    p = peers(handle)
    socksenv.via(p)
    s = sockets()
    s.bind(("127.0.0.3", 0))
    s.connect((TARGET, 7))
    assert peers_seen == ["127.0.0.3"]


def bind_server(bound=("0.0.0.0", 2020), second=(0, "10.9.9.9", 2121), log=None, version=5):
    """Connection 1: the CONNECT (held open).  Connection 2: the BIND,
    answered with ``bound``, then the second reply ``second`` and data."""
    def handle(c, peer):
        if version == 4:
            req = read_request4(c)
            if log is not None:
                log.append(req)
            c.send(reply4(90, *(bound if req[0] == 2 else ("0.0.0.0", 0))))
            if req[0] == 2:
                c.read(1)                   # the test's go-ahead
                c.send(reply4(second[0], second[1], second[2]) + b"from the ftp server")
            hold(c)
            return
        read_greeting(c)
        c.send(b"\x05\x00")
        req = read_request5(c)
        if log is not None:
            log.append(req)
        if req[0] == 1:
            c.send(reply5(0, "10.1.1.1", 4242))
            hold(c)
            return
        c.send(reply5(0, *bound))
        c.read(1)                           # the test's go-ahead: the accept is waiting
        c.send(reply5(*second) + b"from the ftp server")
        hold(c)
    return handle


def test_bind_after_a_connect_through_a_server_is_a_socks_bind(socksenv, sockets, peers):
    log = []
    p = peers(bind_server(log=log))
    socksenv.via(p)
    ctrl = sockets()
    ctrl.connect((TARGET, 21))
    d = sockets()
    d.bind((LOCAL, 0))
    assert d.getsockname() == (LOCAL, 2020)          # 0.0.0.0: where we reached the server
    assert d.listen(1) is None                       # the server listens
    d.sendall(b"!")
    conn, addr = d.accept()
    with conn:
        assert addr == ("10.9.9.9", 2121)
        assert conn.recv(100) == b"from the ftp server"
    assert log == [(1, 1, TARGET, 21), (2, 1, TARGET, 21)]
    with pytest.raises(core.SocksError, match="accepts one connection only"):
        d.accept()


def test_socks4_bind(socksenv, sockets, peers):
    log = []
    p = peers(bind_server(bound=("10.7.7.7", 2020), second=(90, "10.9.9.9", 2121), log=log, version=4))
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "4")
    sockets().connect((TARGET, 21))
    d = sockets()
    d.bind(("", 0))
    d.listen(1)
    assert d.getsockname() == ("10.7.7.7", 2020)
    d.sendall(b"!")
    conn, addr = d.accept()
    with conn:
        assert addr == ("10.9.9.9", 2121) and conn.recv(100) == b"from the ftp server"
    assert [r[:2] for r in log] == [(1, 21), (2, 21)]


def test_a_refused_incoming_connection(socksenv, sockets, peers):
    p = peers(bind_server(second=(5, "0.0.0.0", 0)))
    socksenv.via(p)
    sockets().connect((TARGET, 21))
    d = sockets()
    d.bind((LOCAL, 0))
    d.listen(1)
    d.sendall(b"!")
    with pytest.raises(core.SocksRefused, match="the server refused the incoming connection: SOCKS 5 reply 5, "
                                                "connection refused") as ei:
        d.accept()
    assert ei.value.code == 5 and ei.value.version == 5


def test_a_non_blocking_accept_before_the_second_reply(socksenv, sockets, peers):
    p = peers(bind_server())
    socksenv.via(p)
    sockets().connect((TARGET, 21))
    d = sockets()
    d.bind((LOCAL, 0))
    d.listen(1)
    d.setblocking(False)
    with pytest.raises(BlockingIOError):
        d.accept()
    assert d.gettimeout() == 0.0


def test_bind_after_a_direct_connect_is_a_plain_bind(socksenv, sockets):
    socksenv.conf("direct ALL\n")
    dst = listener(TARGET)
    with dst:
        sockets().connect(dst.getsockname())
        d = sockets()
        d.bind((LOCAL, 0))
        d.listen(1)
        port = d.getsockname()[1]
        assert port != 0
        c = socket.create_connection((LOCAL, port), WAIT)
        with c:
            conn, _ = d.accept()
            conn.close()


def test_bind_then_connect_is_a_local_bind_before_an_outgoing_connect(socksenv, sockets, peers):
    seen = []

    def handle(c, peer):
        seen.append(c.sock.getpeername())
        socks5_server(then=hold)(c, peer)
    p = peers(handle)
    socksenv.via(p)
    sockets().connect((TARGET, 7))
    s = sockets()
    s.bind(("127.0.0.3", 0))
    s.connect((TARGET, 8))
    assert [a[0] for a in seen] == [LOCAL, "127.0.0.3"] and p.count == 2


# --- UDP ASSOCIATE ------------------------------------------------------------------------------

@pytest.fixture
def relay():
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind((LOCAL, 0))
    r.settimeout(WAIT)
    yield r
    r.close()


def udp_server(relay_addr, log):
    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x00")
        log.append(read_request5(c))
        c.send(reply5(0, *relay_addr))
        c.read_all()
        log.append("closed")
    return handle


def test_udp_associate_wraps_and_unwraps_datagrams(socksenv, sockets, peers, relay):
    log = []
    p = peers(udp_server(relay.getsockname(), log))
    socksenv.via(p)
    u = sockets(type=socket.SOCK_DGRAM)
    assert u.sendto(b"query", (TARGET, 53)) == 5
    data, src = relay.recvfrom(1000)
    assert data == udp_header(TARGET, 53) + b"query"
    cmd, atyp, addr, port = log[0]
    assert (cmd, addr, port) == (3, src[0], src[1])         # the announced address is the one that sends
    # a fragment and a malformed datagram from the relay are dropped; others pass as they are
    relay.sendto(udp_header(TARGET, 53, frag=1) + b"part", src)
    relay.sendto(b"\x00\x01\x00junk", src)
    relay.sendto(udp_header("10.5.5.5", 5353) + b"answer", src)
    assert u.recvfrom(100) == (b"answer", ("10.5.5.5", 5353))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with other:
        other.bind((LOCAL, 0))
        other.sendto(b"plain", src)
        assert u.recvfrom(100) == (b"plain", other.getsockname())
    relay.sendto(udp_header(TARGET, 53) + b"0123456789", src)
    assert u.recvfrom(4) == (b"0123", (TARGET, 53))          # cut to bufsize, as recvfrom does
    u.close()
    deadline = time.monotonic() + WAIT
    while "closed" not in log and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log[-1] == "closed"                               # closing ends the association


def test_connected_udp_through_the_server(socksenv, sockets, peers, relay):
    log = []
    p = peers(udp_server(relay.getsockname(), log))
    socksenv.via(p)
    u = sockets(type=socket.SOCK_DGRAM)
    assert u.connect((TARGET, 53)) is None
    assert u.getpeername() == (TARGET, 53)
    u.send(b"one")
    u.sendall(b"two")
    got = [relay.recvfrom(100) for _ in range(2)]
    assert [g[0] for g in got] == [udp_header(TARGET, 53) + b"one", udp_header(TARGET, 53) + b"two"]
    relay.sendto(udp_header(TARGET, 53) + b"back", got[0][1])
    assert u.recv(100) == b"back"
    assert p.count == 1                                      # one association for all of them


def test_udp_direct_and_denied(socksenv, sockets):
    socksenv.conf("direct 127.0.0.2/32\ndeny ALL\n")
    dst = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dst:
        dst.bind((TARGET, 0))
        dst.settimeout(WAIT)
        u = sockets(type=socket.SOCK_DGRAM)
        u.sendto(b"plain", dst.getsockname())
        assert dst.recvfrom(100)[0] == b"plain"
        with pytest.raises(core.SocksDenied, match="udp to 10.0.0.1 port 53 refused"):
            u.sendto(b"x", ("10.0.0.1", 53))
        with pytest.raises(core.SocksDenied):
            sockets(type=socket.SOCK_DGRAM).connect(("10.0.0.1", 53))
        c = sockets(type=socket.SOCK_DGRAM)
        c.connect(dst.getsockname())
        c.send(b"connected")
        assert dst.recvfrom(100)[0] == b"connected"


def test_udp_needs_socks5(socksenv, sockets, peers):
    p = peers(socks4_server())
    socksenv.via(p)
    socksenv.set("SOCKS_VERSION", "4")
    with pytest.raises(core.SocksServerError, match="UDP needs SOCKS 5, and SOCKS 4 is what is spoken here"):
        sockets(type=socket.SOCK_DGRAM).sendto(b"x", (TARGET, 53))


# --- the line's shell command, and the log's destination ------------------------------------------

def wait_for_file(path, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError("%s was not written" % path)


def test_the_deciding_line_runs_its_command_with_the_client_values(socksenv, tmp_path):
    out = tmp_path / "out"
    socksenv.conf("deny 127.0.0.2/32 : echo %%c %%Z %%z %%s %%S %%u %%p %%x. > %s\n" % out)
    r = core.route(TARGET, 23)
    assert r.action == "deny"
    assert wait_for_file(out) == "connect %s %s 23 telnet %s %d .\n" % (TARGET, TARGET, ME, os.getpid())
    out.unlink()
    assert core.route(TARGET, 23, run_command=False).action == "deny"
    time.sleep(0.05)
    assert not out.exists()


def run_python(code, env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SOCKS_")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=e)


def test_socks_log_and_socks_banner(tmp_path):
    code = ("import sockd.client.core as c\n"
            "c.start(); c.start()\n"
            "try:\n    c.route('127.0.0.2', 7)\nexcept c.SocksError:\n    pass\n")
    conf = tmp_path / "socks.conf"
    conf.write_text("deny ALL\n")
    r = run_python(code, {"SOCKS_CONF": str(conf), "SOCKS_LOG": "none", "SOCKS_BANNER": "1"})
    assert r.returncode == 0 and r.stderr.count("SOCKS client (SOCKS 5, 4A, 4; socks.conf %s)" % conf) == 1
    r = run_python(code.replace("c.route('127.0.0.2', 7)", "c.socksocket().connect(('127.0.0.2', 7))"),
                   {"SOCKS_CONF": str(conf), "SOCKS_LOG": "stderr"})
    assert r.returncode == 0 and r.stderr.startswith("-c: refused -- connect() from %s(" % ME), r.stderr

"""sockd.protocol: the pure codecs, fed every way a network can deliver
bytes: one byte at a time, all at once, and with application data right
behind the request.  Vectors, the client-side encoders parsed back by the
server's parsers, the failure replies, and hypothesis: any bytes give a
message, "need more" or the documented error; any valid message sequence
in any chunking gives the same messages and the same early data.
"""

import errno
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import gss1961 as G1961
from sockd import protocol as P

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drive(chunks, after_greeting="request"):
    """Feed ``chunks`` to a ServerHandshake and collect its messages."""
    hs = P.ServerHandshake()
    out = []
    for chunk in chunks:
        hs.feed(chunk)
        while True:
            msg = hs.next()
            if msg is None:
                break
            out.append(msg)
            if isinstance(msg, P.Greeting):
                hs.expect_auth() if after_greeting == "auth" else hs.expect_request()
            elif isinstance(msg, P.UserPass):
                hs.expect_request()
    return out, hs.rest()


def ways(data):
    """The same bytes as one chunk, one byte at a time, and in two halves."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    yield [data[:len(data) // 2], data[len(data) // 2:]]


S4 = bytes([4, 1, 0, 80, 10, 1, 2, 3]) + b"fred\0"
S4A = bytes([4, 1, 0x1F, 0x90, 0, 0, 0, 9]) + b"\0" + b"example.org\0"
S4_BIND = bytes([4, 2, 0, 21, 192, 0, 2, 1]) + b"u\0"
G5 = b"\x05\x02\x00\x02"
R5_V4 = b"\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + b"\x1f\x90"
R5_V6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + b"\x00\x50"
R5_NAME = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
UP = b"\x01\x04fred\x06secret"

VECTORS = [
    ("socks4", S4, [P.Socks4Request(1, 80, bytes([10, 1, 2, 3]), "fred")], "request"),
    ("socks4a", S4A, [P.Socks4Request(1, 8080, b"\0\0\0\x09", "", "example.org")], "request"),
    ("socks4 bind", S4_BIND, [P.Socks4Request(2, 21, bytes([192, 0, 2, 1]), "u")], "request"),
    ("socks5 ipv4", G5 + R5_V4, [P.Greeting((0, 2)), P.Socks5Request(1, 1, "127.0.0.1", 8080)], "request"),
    ("socks5 ipv6", G5 + R5_V6, [P.Greeting((0, 2)), P.Socks5Request(1, 4, "::1", 80)], "request"),
    ("socks5 name", G5 + R5_NAME, [P.Greeting((0, 2)), P.Socks5Request(1, 3, "example.com", 443)], "request"),
    ("socks5 auth", G5 + UP + R5_V4,
     [P.Greeting((0, 2)), P.UserPass("fred", b"secret"), P.Socks5Request(1, 1, "127.0.0.1", 8080)], "auth"),
]


@pytest.mark.parametrize("name,data,expected,mode", VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors_any_chunking(name, data, expected, mode):
    for chunks in ways(data):
        got, rest = drive(chunks, mode)
        assert got == expected
        assert rest == b""


@pytest.mark.parametrize("name,data,expected,mode", VECTORS, ids=[v[0] for v in VECTORS])
def test_early_data_is_kept(name, data, expected, mode):
    early = b"GET / HTTP/1.0\r\n\r\n"
    for chunks in ways(data + early):
        got, rest = drive(chunks, mode)
        assert got == expected
        assert rest == early


def test_socks4_userid_bounded():
    bad = bytes([4, 1, 0, 80, 1, 2, 3, 4]) + b"x" * (P.MAX_USERID + 1)
    with pytest.raises(P.ProtocolError) as e:
        drive([bad])
    assert e.value.reply == P.reply4(P.S4_REJECTED)
    # exactly the maximum is fine
    ok = bytes([4, 1, 0, 80, 1, 2, 3, 4]) + b"x" * P.MAX_USERID + b"\0"
    got, _ = drive([ok])
    assert got[0].userid == "x" * P.MAX_USERID


def test_socks4a_hostname_bounded():
    bad = bytes([4, 1, 0, 80, 0, 0, 0, 1]) + b"\0" + b"h" * (P.MAX_HOSTNAME + 1)
    with pytest.raises(P.ProtocolError) as e:
        drive([bad])
    assert e.value.reply[1] == P.S4_REJECTED


def test_socks4a_hostname_must_be_printable():
    with pytest.raises(P.ProtocolError):
        drive([bytes([4, 1, 0, 80, 0, 0, 0, 1]) + b"\0" + b"a b\0"])


def test_socks4_unknown_command_gets_91():
    with pytest.raises(P.ProtocolError) as e:
        drive([bytes([4, 9, 0, 80, 1, 2, 3, 4]) + b"\0"])
    assert e.value.reply == P.reply4(P.S4_REJECTED)
    with pytest.raises(P.ProtocolError):        # found from the second byte on
        drive([b"\x04", b"\x09"])


def test_wrong_version_has_no_reply():
    with pytest.raises(P.ProtocolError) as e:
        drive([b"GET / HTTP/1.0\r\n"])
    assert e.value.reply is None
    assert "wrong version (0x47)" in str(e.value)


def test_socks5_no_methods():
    with pytest.raises(P.ProtocolError) as e:
        drive([b"\x05\x00"])
    assert e.value.reply == b"\x05\xff"


def test_socks5_bad_atyp_gets_reply_8():
    with pytest.raises(P.ProtocolError) as e:
        drive([b"\x05\x01\x00", b"\x05\x01\x00\x07rest"])
    assert e.value.reply[1] == P.REP_ATYP_UNSUPPORTED


def test_socks5_bad_request_version():
    with pytest.raises(P.ProtocolError) as e:
        drive([b"\x05\x01\x00", b"\x04\x01\x00\x01"])
    assert e.value.reply[1] == P.REP_FAILURE


def test_socks5_domain_with_control_chars():
    with pytest.raises(P.ProtocolError):
        drive([b"\x05\x01\x00\x05\x01\x00\x03\x03a\nb\x00\x50"])


def test_socks5_unknown_command_is_parsed_for_the_session():
    got, _ = drive([b"\x05\x01\x00\x05\x09\x00\x01\x01\x02\x03\x04\x00\x50"])
    assert got[1].command == 9


def test_replies():
    assert P.reply4(90, 1080, bytes([1, 2, 3, 4])) == b"\x00\x5a\x04\x38\x01\x02\x03\x04"
    assert P.reply5(0, "10.0.0.1", 1080) == b"\x05\x00\x00\x01\x0a\x00\x00\x01\x04\x38"
    assert P.reply5(0, "::1", 1) == b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x01"
    assert P.reply5(5, "example.com", 80) == b"\x05\x05\x00\x03\x0bexample.com\x00\x50"
    assert P.method_reply(0) == b"\x05\x00"
    assert P.userpass_reply(True) == b"\x01\x00" and P.userpass_reply(False) == b"\x01\x01"


def test_client_side_reply_parsers():
    assert P.parse_reply4(b"\x00\x5a\x04\x38\x01\x02\x03") is None
    assert P.parse_reply4(b"\x00\x5a\x04\x38\x01\x02\x03\x04") == ((90, "1.2.3.4", 1080), 8)
    full = P.reply5(0, "::1", 99)
    for i in range(len(full)):
        assert P.parse_reply5(full[:i]) is None
    assert P.parse_reply5(full + b"x") == ((0, "::1", 99), len(full))


def test_udp_header_roundtrip():
    for addr in ("10.1.2.3", "2001:db8::1", "example.net"):
        hdr = P.udp_header(addr, 53)
        frag, req, off = P.parse_udp_header(hdr + b"payload")
        assert (frag, req.address, req.port, (hdr + b"payload")[off:]) == (0, addr, 53, b"payload")
    with pytest.raises(P.ProtocolError):
        P.parse_udp_header(b"\x00\x00\x00\x01\x01")
    with pytest.raises(P.ProtocolError):
        P.parse_udp_header(b"\x00\x01\x00\x01" + bytes(6))
    frag, _, _ = P.parse_udp_header(b"\x00\x00\x05\x01" + bytes(6))
    assert frag == 5


# --- the failure replies ------------------------------------------------------------------------------

def test_failure_reply_in_the_clients_version():
    assert P.failure_reply(4, P.REP_REFUSED) == P.reply4(P.S4_REJECTED)
    assert P.failure_reply(4, P.REP_NOT_ALLOWED, P.S4_BAD_ID) == b"\x00\x5d" + bytes(6)
    assert P.failure_reply(5, P.REP_REFUSED) == P.reply5(P.REP_REFUSED)
    assert P.failure_reply(0, P.REP_FAILURE) == P.reply5(P.REP_FAILURE)     # before the version is known


@pytest.mark.parametrize("err,rep", [
    (errno.ECONNREFUSED, P.REP_REFUSED), (errno.ENETUNREACH, P.REP_NET_UNREACHABLE),
    (errno.EHOSTUNREACH, P.REP_HOST_UNREACHABLE), (errno.ETIMEDOUT, P.REP_TTL_EXPIRED),
    (errno.EAFNOSUPPORT, P.REP_ATYP_UNSUPPORTED), (errno.EADDRNOTAVAIL, P.REP_HOST_UNREACHABLE),
    (errno.EIO, P.REP_FAILURE), (None, P.REP_FAILURE),
])
def test_rep_for_errno(err, rep):
    assert P.rep_for_errno(err) == rep


# --- the bound on what a client may send before its request ------------------------------------------

def test_a_client_that_never_finishes_is_stopped_at_the_bound():
    hs = P.ServerHandshake()
    hs.feed(G5)
    assert hs.next() == P.Greeting((0, 2))
    # the session has not said what comes next: bytes pile up, to the bound
    hs.feed(b"x" * P.ServerHandshake.MAX_BUFFER)
    assert hs.next() is None
    hs.feed(b"x")
    with pytest.raises(P.ProtocolError, match="more than %d bytes" % P.ServerHandshake.MAX_BUFFER):
        hs.next()


def test_the_bound_does_not_refuse_a_complete_request_with_early_data_behind_it():
    early = b"x" * (P.ServerHandshake.MAX_BUFFER + 1)
    got, rest = drive([G5 + R5_V4 + early])
    assert got == [P.Greeting((0, 2)), P.Socks5Request(1, 1, "127.0.0.1", 8080)] and rest == early


# --- the client's encoders, parsed back (moved here from test_client_units.py) -------------------------

def test_socks4_and_4a_requests_parse_back():
    req = P.request4(P.CMD_CONNECT, 80, bytes([10, 1, 2, 3]), "fred")
    got, used = P.parse_socks4(req)
    assert used == len(req) and got == P.Socks4Request(1, 80, bytes([10, 1, 2, 3]), "fred")
    req = P.request4(P.CMD_BIND, 21, userid="fred", host="ftp.example.org")
    got, used = P.parse_socks4(req)
    assert got.host == "ftp.example.org" and got.command == P.CMD_BIND and got.port == 21
    with pytest.raises(ValueError):
        P.request4(1, 80, userid="a\0b")
    with pytest.raises(ValueError):
        P.request4(1, 80, host="h" * 300)


def test_socks5_messages_parse_back():
    assert P.parse_greeting(P.greeting5([0, 2]))[0] == P.Greeting((0, 2))
    up = P.userpass_request("tbuser", "secret")
    assert P.parse_userpass(up)[0] == P.UserPass("tbuser", b"secret")
    with pytest.raises(ValueError):
        P.userpass_request("", "x")
    for addr, atyp in (("10.0.0.1", 1), ("2001:db8::1", 4), ("www.example.org", 3)):
        req = P.request5(P.CMD_CONNECT, addr, 443)
        got, used = P.parse_request5(req)
        assert used == len(req) and (got.atyp, got.address, got.port) == (atyp, addr, 443)


def test_reply5_size_reads_exactly_one_reply():
    for addr in ("10.0.0.1", "2001:db8::1", "relay.example.org"):
        rep = P.reply5(0, addr, 1080)
        data = rep + b"early data"
        assert P.reply5_size(data[:4]) is None
        assert P.reply5_size(data) == len(rep)
        assert P.parse_reply5(data[:len(rep)])[0] == (0, addr, 1080)
    with pytest.raises(P.ProtocolError):
        P.reply5_size(b"\x05\x00\x00\x09\x00")


# --- properties ------------------------------------------------------------------------------------------

names = st.from_regex(r"\A[a-zA-Z0-9_][a-zA-Z0-9_-]{0,20}(\.[a-zA-Z0-9_][a-zA-Z0-9_-]{0,20}){0,3}\Z")
# IPv6 as the system writes it (inet_ntop: "::ffff:0.0.0.0", where ipaddress says "::ffff:0:0")
addresses = st.one_of(st.ip_addresses(v=4).map(str),
                      st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed)), names)
ports = st.integers(0, 65535)


@SOME
@given(st.sampled_from([P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP]), addresses, ports)
def test_any_socks5_request_parses_back(command, address, port):
    req = P.request5(command, address, port)
    got, used = P.parse_request5(req + b"more")
    assert used == len(req) and (got.command, got.address, got.port) == (command, address, port)
    assert (got.atyp == P.ATYP_DOMAIN) == (got.host is not None)
    assert P.reply5_size(P.reply5(0, address, port)) == len(P.reply5(0, address, port))
    assert P.parse_reply5(P.reply5(3, address, port)) == ((3, address, port), len(P.reply5(0, address, port)))
    frag, hdr, off = P.parse_udp_header(P.udp_header(address, port) + b"payload")
    assert (frag, hdr.address, hdr.port) == (0, address, port) and off == len(P.udp_header(address, port))


@SOME
@given(st.sampled_from([P.CMD_CONNECT, P.CMD_BIND]), ports,
       st.ip_addresses(v=4).filter(lambda ip: not (ip.packed[:3] == bytes(3) and ip.packed[3])),   # 0.0.0.x: 4A
       st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=40), st.one_of(st.none(), names))
def test_any_socks4_request_parses_back(command, port, ip, userid, host):
    uid = userid.encode("latin-1")
    req = P.request4(command, port, ip.packed, uid, host)
    got, used = P.parse_socks4(req)
    assert used == len(req) and (got.command, got.port, got.userid, got.host) == (command, port, userid, host)
    if host is None:
        assert got.address == str(ip)
    code, addr, p = P.parse_reply4(P.reply4(P.S4_GRANTED, port, ip.packed))[0]
    assert (code, addr, p) == (P.S4_GRANTED, str(ip), port)


def chunks_of(data, cuts):
    out, last = [], 0
    for c in sorted(set(cuts)):
        if 0 < c < len(data):
            out.append(data[last:c])
            last = c
    out.append(data[last:])
    return out


@SOME
@given(st.lists(st.integers(0, 255), min_size=1, max_size=5), st.booleans(), addresses, ports,
       st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=10))
def test_any_socks5_exchange_in_any_chunking(methods, auth, address, port, early, cuts):
    data = P.greeting5(methods) + (P.userpass_request("u", "p") if auth else b"") + \
        P.request5(P.CMD_CONNECT, address, port) + early
    got, rest = drive(chunks_of(data, cuts), "auth" if auth else "request")
    assert got[0] == P.Greeting(tuple(methods))
    assert (got[-1].address, got[-1].port) == (address, port)
    assert len(got) == (3 if auth else 2) and rest == early


# --- any bytes (moved here from test_properties.py) ------------------------------------------------------

# bytes that look like the start of real messages half the time
PREFIXES = [b"", b"\x04\x01", b"\x04\x02", b"\x05\x01\x00", b"\x05\x02\x00\x02",
            b"\x04\x01\x00\x50\x00\x00\x00\x01", b"\x05\x01\x00\x05\x01\x00\x03",
            b"\x05\x01\x02\x01\x04user"]
hostile = st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=600))


@FAST
@given(hostile, st.lists(st.integers(0, 600), max_size=8), st.booleans())
def test_server_handshake_never_raises_anything_else(data, cuts, want_auth):
    hs = P.ServerHandshake()
    try:
        for chunk in chunks_of(data, cuts):
            hs.feed(chunk)
            while True:
                msg = hs.next()
                if msg is None:
                    break
                assert isinstance(msg, (P.Socks4Request, P.Greeting, P.UserPass, P.Socks5Request))
                if isinstance(msg, P.Greeting):
                    hs.expect_auth() if want_auth else hs.expect_request()
                elif isinstance(msg, P.UserPass):
                    hs.expect_request()
    except P.ProtocolError as exc:
        assert exc.reply is None or isinstance(exc.reply, bytes)
    assert len(hs.buf) <= len(data)


@FAST
@given(st.binary(max_size=300))
def test_udp_header_and_replies(data):
    for fn in (P.parse_udp_header, P.parse_reply4, P.parse_reply5, P.parse_request5, P.parse_userpass,
               P.parse_greeting, P.parse_socks4):
        try:
            got = fn(data)
        except P.ProtocolError:
            continue
        assert got is None or isinstance(got, tuple)


# --- issue 13: a method's own messages, and protected requests --------------------------------

def test_a_method_parser_runs_between_the_greeting_and_the_request():
    hs = P.ServerHandshake()
    hs.feed(b"\x05\x01\x01")
    assert hs.next() == P.Greeting((1,))
    hs.expect_method(G1961.parse_frame)
    tok = G1961.frame(1, b"ctx") + G1961.frame(2, b"lv")
    for i in range(len(tok)):
        hs.feed(tok[i:i + 1])
    assert hs.next() == G1961.Frame(1, b"ctx")
    assert hs.next() is None                 # the session says what comes next
    hs.expect_method(G1961.parse_frame)
    assert hs.next() == G1961.Frame(2, b"lv")


def test_a_protected_request_is_parsed_from_the_plaintext():
    flip = lambda d: bytes(b ^ 0xFF for b in d)
    sender, receiver = G1961.Protection(flip, flip, 2), G1961.Protection(flip, flip, 2)
    req = P.request5(P.CMD_CONNECT, "example.org", 80)
    wire = sender.seal(req + b"GET /")
    hs = P.ServerHandshake()
    hs.feed(b"\x05\x01\x01" + wire[:5])      # the frame's start arrives with the greeting
    assert hs.next() == P.Greeting((1,))
    hs.protect(receiver)
    hs.expect_request()
    assert hs.next() is None
    hs.feed(wire[5:])
    assert hs.next() == P.Socks5Request(P.CMD_CONNECT, P.ATYP_DOMAIN, "example.org", 80)
    assert hs.rest() == b"GET /"

"""Property tests: whatever bytes or text arrive, every codec and parser
gives a message, "need more", or its documented error -- never another
exception."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import config as C
from sockd import passwd as PW
from sockd import protocol as P
from sockd import proxyproto as PP
from sockd import route as RT

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bytes that look like the start of real messages half the time
PREFIXES = [b"", b"\x04\x01", b"\x04\x02", b"\x05\x01\x00", b"\x05\x02\x00\x02", b"\x04\x01\x00\x50\x00\x00\x00\x01",
            b"\x05\x01\x00\x05\x01\x00\x03", b"\x05\x01\x02\x01\x04user"]
hostile = st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=600))


def chunked(data, cuts):
    out, last = [], 0
    for c in sorted(set(cuts)):
        if 0 < c < len(data):
            out.append(data[last:c])
            last = c
    out.append(data[last:])
    return out


@FAST
@given(hostile, st.lists(st.integers(0, 600), max_size=8), st.booleans())
def test_server_handshake_never_raises_anything_else(data, cuts, want_auth):
    hs = P.ServerHandshake()
    try:
        for chunk in chunked(data, cuts):
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


@FAST
@given(st.builds(lambda p, b: p + b, st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", PP.V2_SIGNATURE,
                                                      PP.V2_SIGNATURE + b"\x21\x11"]),
                 st.binary(max_size=300)))
def test_proxy_protocol(data):
    for end in (len(data), len(data) // 2):
        try:
            got = PP.parse(data[:end])
        except P.ProtocolError:
            continue
        if got is not None:
            header, used = got
            assert isinstance(header, (PP.Proxied, PP.Local)) and 0 < used <= end


words = st.sampled_from(["permit", "deny", "listen", "timeout", "connect", "idle", "?=I", "?=x", "*=a,b",
                         "*=/nonexistent", "0/0", "10.0.0.0", "255.0.0.0", "::1/128", "ALL", ".zone.example",
                         "eq", "neq", "lt", "telnet", "80", "99999", ":", "#", "workers", "3", "model", "fork",
                         "udp", "strict", "yes", "bind", "methods", "none", "username", "log", "facility",
                         "[::1]:1080", "127.0.0.1:0", "\t", "%u", "limit", "clients"])
lines = st.lists(st.lists(words, max_size=9).map(" ".join), max_size=12).map("\n".join)


@FAST
@given(st.one_of(lines, st.text(string.printable, max_size=400), st.text(max_size=200)))
def test_config_parser(text):
    try:
        cfg = C.parse_text(text, "p.conf")
    except C.ConfigError as exc:
        assert exc.problems and all(p[0] and isinstance(p[1], int) for p in exc.problems)
        return
    assert isinstance(cfg, C.Config)


@FAST
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["127.0.0.1", "10.0.0.0", "255.0.0.0", ".zone", "ALL", "0/0", "::1", "x", "#"]), max_size=5).map(" ".join)))
def test_route_parser(text):
    table, problems = RT.parse(text, "r")
    assert all(isinstance(p[1], int) for p in problems)
    for r in table.routes:
        table.lookup(4, 0x7F000001)


@FAST
@given(st.text(max_size=400))
def test_passwd_parser(text):
    entries, problems = PW.parse(text, "pw")
    assert all(v.startswith((b"$2y$", b"$2b$", b"$2a$")) for v in entries.values())


@FAST
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["sockd", "direct", "deny", "sockd@127.0.0.1:1080,h", "@=a,b", "*=u", "0/0", "10.0.0.0", "255.0.0.0",
     "eq", "80", ":", "#", "ALL", ".z", "::1/128"]), max_size=8).map(" ".join)))
def test_socks_conf_parser(text):
    from sockd.client import conf as SC
    try:
        SC.parse_text(text, "socks.conf")
    except C.ConfigError as exc:
        assert exc.problems

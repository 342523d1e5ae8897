"""The pure codecs, fed every way a network can deliver bytes: one byte at
a time, all at once, and with application data right behind the request."""

import pytest

from sockd import protocol as P


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

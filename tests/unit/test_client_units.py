"""The request encoders the client sends, checked against the server's own
parsers, and exact-length reply reading."""

import pytest

from sockd import protocol as P


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


def test_telnet_refuses_every_option_in_any_chunking():
    from sockd.client.tools.rtelnet import Telnet, encode_line
    stream = (b"\xff\xfd\x18" b"\xff\xfb\x01" b"\xff\xfa\x18\x01" + b"x" * 5000 + b"\xff\xf0"
              b"log\xff\xffin: " b"\xff\xfc\x03" b"\xff\xfe\x05" b"\xff\xf1" b"\xff\xfd\x1f")
    want_text = b"log\xffin: "
    want_answer = b"\xff\xfc\x18" b"\xff\xfe\x01" b"\xff\xfc\x1f"
    for size in (1, 2, 3, 7, len(stream)):
        t = Telnet()
        text, answer = b"", b""
        for i in range(0, len(stream), size):
            a, b = t.feed(stream[i:i + size])
            text += a
            answer += b
        assert (text, answer) == (want_text, want_answer), size
    assert encode_line(b"a\xffb\n") == b"a\xff\xffb\r\n"

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

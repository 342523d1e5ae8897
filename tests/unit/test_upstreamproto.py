"""sockd.upstreamproto: the client side of handshakes with upstream
proxies, fed as a network delivers: one byte at a time, all at once, and
with the destination's first bytes right behind the reply.  Vectors for
SOCKS 4, 4A, 5 (with and without RFC 1929) and HTTP CONNECT, every
refusal and breakage, and hypothesis: any answer in any chunking gives the
same events and the same rest; any bytes give events, "need more" or one of
the two documented errors, within the documented bound.
"""

import base64
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import protocol as P
from sockd import upstreamproto as U

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ways(data):
    """The same bytes as one chunk, one byte at a time, and in two halves."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    yield [data[:len(data) // 2], data[len(data) // 2:]]


def drive(hs, chunks):
    """Feed ``chunks``; every event, in order, and what came after."""
    events = []
    for chunk in chunks:
        events += hs.feed(chunk)
    return events, hs.rest()


def make(kind, command=P.CMD_CONNECT, address="192.0.2.7", port=80, user=None, password=None):
    return U.handshake(kind, command, address, port, user, password)


ONE_REPLY5 = P.reply5(0, "10.0.0.1", 1080)

# (id, handshake arguments, first bytes, what the upstream answers, events expected)
VECTORS = [
    ("socks4 connect", (U.SOCKS4,), b"\x04\x01\x00\x50\xc0\x00\x02\x07\x00",
     P.reply4(90, 0, bytes(4)), [U.ALIVE, U.Reply("0.0.0.0", 0)]),
    ("socks4 userid from the URL", (U.SOCKS4, P.CMD_CONNECT, "192.0.2.7", 80, "up"),
     b"\x04\x01\x00\x50\xc0\x00\x02\x07up\x00", P.reply4(90), [U.ALIVE, U.Reply("0.0.0.0", 0)]),
    ("socks4a name", (U.SOCKS4A, P.CMD_CONNECT, "example.org", 443),
     b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.org\x00", P.reply4(90, 5, bytes([1, 2, 3, 4])),
     [U.ALIVE, U.Reply("1.2.3.4", 5)]),
    ("socks4a with an address is plain socks4", (U.SOCKS4A,), b"\x04\x01\x00\x50\xc0\x00\x02\x07\x00",
     P.reply4(90), [U.ALIVE, U.Reply("0.0.0.0", 0)]),
    ("socks4 bind: two replies", (U.SOCKS4, P.CMD_BIND, "192.0.2.7", 21), b"\x04\x02\x00\x15\xc0\x00\x02\x07\x00",
     P.reply4(90, 40000, bytes(4)) + P.reply4(90, 20, bytes([192, 0, 2, 7])),
     [U.ALIVE, U.Reply("0.0.0.0", 40000), U.Reply("192.0.2.7", 20)]),
    ("socks5 connect", (U.SOCKS5,), b"\x05\x01\x00",
     b"\x05\x00" + ONE_REPLY5, [U.ALIVE, U.Send(P.request5(1, "192.0.2.7", 80)), U.Reply("10.0.0.1", 1080)]),
    ("socks5h name", (U.SOCKS5H, P.CMD_CONNECT, "example.com", 443), b"\x05\x01\x00",
     b"\x05\x00" + P.reply5(0, "::1", 9),
     [U.ALIVE, U.Send(b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"), U.Reply("::1", 9)]),
    ("socks5 with credentials, chosen", (U.SOCKS5, P.CMD_CONNECT, "2001:db8::1", 80, "fred", "secret"),
     b"\x05\x02\x00\x02", b"\x05\x02" + b"\x01\x00" + ONE_REPLY5,
     [U.ALIVE, U.Send(b"\x01\x04fred\x06secret"), U.Send(P.request5(1, "2001:db8::1", 80)),
      U.Reply("10.0.0.1", 1080)]),
    ("socks5 with credentials, not needed", (U.SOCKS, P.CMD_CONNECT, "h.example", 80, "fred", "secret"),
     b"\x05\x02\x00\x02", b"\x05\x00" + ONE_REPLY5,
     [U.ALIVE, U.Send(P.request5(1, "h.example", 80)), U.Reply("10.0.0.1", 1080)]),
    ("socks5 auth reply version 5 (seen in the wild)", (U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, "u", "p"),
     b"\x05\x02\x00\x02", b"\x05\x02\x05\x00" + ONE_REPLY5,
     [U.ALIVE, U.Send(b"\x01\x01u\x01p"), U.Send(P.request5(1, "192.0.2.7", 80)), U.Reply("10.0.0.1", 1080)]),
    ("socks5 bind: two replies", (U.SOCKS5, P.CMD_BIND, "192.0.2.7", 21), b"\x05\x01\x00",
     b"\x05\x00" + P.reply5(0, "0.0.0.0", 40000) + P.reply5(0, "192.0.2.7", 20),
     [U.ALIVE, U.Send(P.request5(2, "192.0.2.7", 21)), U.Reply("0.0.0.0", 40000), U.Reply("192.0.2.7", 20)]),
    ("socks5 udp associate", (U.SOCKS5, P.CMD_UDP, "0.0.0.0", 0), b"\x05\x01\x00",
     b"\x05\x00" + P.reply5(0, "127.0.0.1", 5353),
     [U.ALIVE, U.Send(P.request5(3, "0.0.0.0", 0)), U.Reply("127.0.0.1", 5353)]),
    ("http connect", (U.HTTP, P.CMD_CONNECT, "example.com", 443),
     b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     b"HTTP/1.1 200 Connection established\r\n\r\n", [U.ALIVE, U.Reply(None, 0)]),
    ("http connect, headers, 1.0", (U.HTTP, P.CMD_CONNECT, "::1", 8080),
     b"CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
     b"HTTP/1.0 200 OK\r\nProxy-agent: tinyproxy/1.11.1\r\nVia: x\r\n\r\n", [U.ALIVE, U.Reply(None, 0)]),
    ("http basic credentials", (U.HTTP, P.CMD_CONNECT, "10.1.1.1", 22, "al", "pa:ss"),
     b"CONNECT 10.1.1.1:22 HTTP/1.1\r\nHost: 10.1.1.1:22\r\nProxy-Authorization: Basic "
     + base64.b64encode(b"al:pa:ss") + b"\r\n\r\n",
     b"HTTP/1.1 204 No Content\r\n\r\n", [U.ALIVE, U.Reply(None, 0)]),
]


@pytest.mark.parametrize("name,args,first,answer,expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors_any_chunking(name, args, first, answer, expected):
    for chunks in ways(answer):
        hs = make(*args)
        assert hs.start() == first
        assert not hs.done
        got, rest = drive(hs, chunks)
        assert got == expected
        assert rest == b""
        assert hs.done


@pytest.mark.parametrize("name,args,first,answer,expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_the_destinations_first_bytes_are_handed_on(name, args, first, answer, expected):
    banner = b"220 ftp.example ready\r\n"
    for chunks in ways(answer + banner):
        hs = make(*args)
        hs.start()
        got, rest = drive(hs, chunks)
        assert got == expected
        assert rest == banner
        # whatever arrives after the last reply is the destination's too
        assert hs.feed(b"more") == []
        assert hs.rest() == b"more"


def test_bind_first_reply_comes_alone():
    hs = make(U.SOCKS5, P.CMD_BIND, "192.0.2.7", 21)
    hs.start()
    assert hs.feed(b"\x05\x00" + P.reply5(0, "10.0.0.9", 40000)) == [
        U.ALIVE, U.Send(P.request5(2, "192.0.2.7", 21)), U.Reply("10.0.0.9", 40000)]
    assert not hs.done
    assert hs.feed(P.reply5(0, "192.0.2.7", 20)[:3]) == []
    assert hs.feed(P.reply5(0, "192.0.2.7", 20)[3:]) == [U.Reply("192.0.2.7", 20)]
    assert hs.done


# --- refusals: the upstream answered, the destination is the problem ---------------------------------

@pytest.mark.parametrize("args,answer,rep,words", [
    ((U.SOCKS4,), P.reply4(91), P.REP_FAILURE, "request rejected or failed (91)"),
    ((U.SOCKS4,), P.reply4(92), P.REP_NOT_ALLOWED, "identd"),
    ((U.SOCKS4,), P.reply4(93), P.REP_NOT_ALLOWED, "(93)"),
    ((U.SOCKS4,), P.reply4(77), P.REP_FAILURE, "(77)"),
    ((U.SOCKS4, P.CMD_BIND), P.reply4(90, 1, bytes(4)) + P.reply4(91), P.REP_FAILURE, "(91)"),
    ((U.SOCKS5,), b"\x05\x00" + P.reply5(P.REP_HOST_UNREACHABLE), P.REP_HOST_UNREACHABLE, "host unreachable (4)"),
    ((U.SOCKS5,), b"\x05\x00" + P.reply5(P.REP_NOT_ALLOWED), P.REP_NOT_ALLOWED, "not allowed by ruleset (2)"),
    ((U.SOCKS5,), b"\x05\x00" + P.reply5(P.REP_REFUSED), P.REP_REFUSED, "connection refused (5)"),
    ((U.SOCKS5,), b"\x05\x00" + P.reply5(P.REP_ATYP_UNSUPPORTED), P.REP_ATYP_UNSUPPORTED, "(8)"),
    ((U.SOCKS5,), b"\x05\x00" + P.reply5(0x42), P.REP_FAILURE, "reply code 66 (66)"),
    ((U.HTTP,), b"HTTP/1.1 403 Forbidden\r\n\r\n", P.REP_NOT_ALLOWED, "HTTP 403 Forbidden"),
    ((U.HTTP,), b"HTTP/1.1 503 Service Unavailable\r\nX: 1\r\n\r\n", P.REP_HOST_UNREACHABLE, "HTTP 503"),
    ((U.HTTP,), b"HTTP/1.1 504 Gateway Timeout\r\n\r\n", P.REP_TTL_EXPIRED, "504"),
    ((U.HTTP,), b"HTTP/1.0 500 Unable to connect\r\n\r\n", P.REP_FAILURE, "HTTP 500 Unable to connect"),
    ((U.HTTP,), b"HTTP/1.1 418\r\n\r\n", P.REP_FAILURE, "HTTP 418"),
])
def test_refusals_carry_the_reply_code(args, answer, rep, words):
    for chunks in ways(answer):
        hs = make(*args)
        hs.start()
        with pytest.raises(U.Refused) as e:
            drive(hs, chunks)
        assert e.value.rep == rep
        assert words in str(e.value)
        assert hs.alive


# --- broken upstreams: another one is to be tried -------------------------------------------------------

@pytest.mark.parametrize("args,answer,words", [
    ((U.SOCKS5,), b"\x05\xff", "no acceptable method (it wants credentials)"),
    ((U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, "u", "p"), b"\x05\xff", "refused username/password"),
    ((U.SOCKS5,), b"\x05\x02", "chose method 2, which was not offered"),
    ((U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, "u", "p"), b"\x05\x02\x01\x01", "refused our username/password"),
    ((U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, "u", "p"), b"\x05\x02\x07\x00", "reply version"),
    ((U.SOCKS5,), b"\x04\x5a", "not a SOCKS 5 server (answered 0x04)"),
    ((U.SOCKS5,), b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a SOCKS 5 server"),
    ((U.SOCKS5,), b"\x05\x00\x06\x00\x00\x01" + bytes(6), "bad SOCKS 5 reply"),
    ((U.SOCKS5,), b"\x05\x00\x05\x00\x00\x09" + bytes(6), "address type 0x09"),
    ((U.SOCKS4,), b"\x05\x00" + bytes(6), "not a SOCKS 4 server"),
    ((U.HTTP,), b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP proxy"),
    ((U.HTTP,), b"HTTP/1.1 abc x\r\n\r\n", "status line"),
    ((U.HTTP,), b"HTTP/2 200\r\n\r\n", "status line"),
    ((U.HTTP,), b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "wants credentials (HTTP 407"),
    ((U.HTTP, P.CMD_CONNECT, "h", 1, "u", "p"), b"HTTP/1.1 407 No\r\n\r\n", "refused our credentials"),
])
def test_broken_upstreams(args, answer, words):
    for chunks in ways(answer):
        hs = make(*args)
        hs.start()
        with pytest.raises(U.Broken) as e:
            drive(hs, chunks)
        assert words in str(e.value)


def test_http_head_is_bounded():
    hs = make(U.HTTP)
    hs.start()
    hs.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(U.Broken, match="longer than 8192"):
        for _ in range(U.MAX_HTTP_HEAD):
            hs.feed(b"X")
    assert len(hs.buf) <= U.MAX_HTTP_HEAD + 1


def test_http_reason_is_made_printable_and_short():
    hs = make(U.HTTP)
    hs.start()
    with pytest.raises(U.Refused) as e:
        hs.feed(b"HTTP/1.1 403 \x1b[31mred\x07" + b"z" * 500 + b"\r\n\r\n")
    text = str(e.value)
    assert "\x1b" not in text and "\x07" not in text
    assert len(text) < U.MAX_TEXT + 20


@pytest.mark.parametrize("args", [
    (U.SOCKS4, P.CMD_CONNECT, "example.com"),        # a name to plain SOCKS 4
    (U.SOCKS4, P.CMD_CONNECT, "::1"),
    (U.SOCKS4A, P.CMD_CONNECT, "::1"),
    (U.SOCKS4, P.CMD_UDP, "0.0.0.0"),
    (U.HTTP, P.CMD_BIND, "192.0.2.7"),
    (U.HTTP, P.CMD_UDP, "192.0.2.7"),
    (U.HTTP, P.CMD_CONNECT, "a b"),
    (U.HTTP, P.CMD_CONNECT, "x\r\nEvil: 1"),
    (U.SOCKS5, 9, "192.0.2.7"),
    ("gopher", P.CMD_CONNECT, "192.0.2.7"),
])
def test_what_a_kind_cannot_carry(args):
    with pytest.raises(ValueError):
        U.handshake(*args, 80)


def test_socks5_credentials_bounded():
    with pytest.raises(ValueError):
        make(U.SOCKS5, user="u" * 256, password="p")


def test_no_secret_in_repr_or_errors():
    hs = make(U.SOCKS5, user="fred", password="hunter2")
    hs.start()
    assert "hunter2" not in repr(hs)
    with pytest.raises(U.Broken) as e:
        hs.feed(b"\x05\x02\x01\x01")
    assert "hunter2" not in str(e.value) and "fred" not in str(e.value)
    h = make(U.HTTP, user="fred", password="hunter2")
    assert "hunter2" not in repr(h)
    assert base64.b64encode(b"fred:hunter2").decode() not in repr(h)


def test_the_password_is_not_kept_once_sent():
    hs = make(U.SOCKS5, user="fred", password="hunter2")
    hs.start()
    hs.feed(b"\x05\x02")
    assert hs.auth is None


def test_feeding_after_done_is_rest():
    hs = make(U.SOCKS4)
    hs.start()
    hs.feed(P.reply4(90) + b"ab")
    assert hs.feed(b"cd") == []
    assert hs.rest() == b"abcd"
    assert hs.rest() == b""


# --- hypothesis ----------------------------------------------------------------------------------------

addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}", fullmatch=True))
# as the kernel writes them (inet_ntop: "::ffff:1.2.3.4", where str() of ipaddress differs)
bound = st.one_of(st.ip_addresses(v=4).map(str),
                  st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed)))
ports = st.integers(0, 65535)
splits = st.lists(st.integers(0, 400), max_size=8)


def chunked(data, cuts):
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for c in cuts + [len(data)]:
        out.append(data[last:c])
        last = c
    return out


@FAST
@given(st.sampled_from([P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP]), addresses, ports, bound, ports, bound, ports,
       st.booleans(), st.binary(max_size=64), splits)
def test_socks5_any_chunking(cmd, dst, dport, b1, p1, b2, p2, creds, after, cuts):
    """A whole SOCKS 5 answer, cut anywhere: the same events, the same rest."""
    answer = b"\x05" + (b"\x02\x01\x00" if creds else b"\x00") + P.reply5(0, b1, p1)
    expected = [U.ALIVE] + ([U.Send(P.userpass_request("u", "p"))] if creds else []) + [
        U.Send(P.request5(cmd, dst, dport)), U.Reply(b1, p1)]
    if cmd == P.CMD_BIND:
        answer += P.reply5(0, b2, p2)
        expected.append(U.Reply(b2, p2))
    hs = make(U.SOCKS5, cmd, dst, dport, "u" if creds else None, "p" if creds else None)
    hs.start()
    got, rest = drive(hs, chunked(answer + after, cuts))
    assert got == expected
    assert rest == after
    assert hs.done


@FAST
@given(st.sampled_from([P.CMD_CONNECT, P.CMD_BIND]), st.ip_addresses(v=4).map(str), ports,
       st.binary(min_size=4, max_size=4), ports, st.binary(max_size=64), splits)
def test_socks4_any_chunking(cmd, dst, dport, ip, port, after, cuts):
    answer = P.reply4(90, port, ip) * (2 if cmd == P.CMD_BIND else 1)
    hs = make(U.SOCKS4, cmd, dst, dport)
    hs.start()
    got, rest = drive(hs, chunked(answer + after, cuts))
    reply = U.Reply(".".join(str(b) for b in ip), port)
    assert got == [U.ALIVE] + [reply] * (2 if cmd == P.CMD_BIND else 1)
    assert rest == after


@FAST
@given(st.integers(200, 299), st.lists(st.from_regex(r"[A-Za-z-]{1,12}: [ -~]{0,40}", fullmatch=True),
                                       max_size=10),
       st.binary(max_size=64), splits)
def test_http_any_chunking(status, headers, after, cuts):
    answer = ("HTTP/1.1 %d OK\r\n" % status + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    hs = make(U.HTTP)
    hs.start()
    got, rest = drive(hs, chunked(answer + after, cuts))
    assert got == [U.ALIVE, U.Reply(None, 0)]
    assert rest == after


@FAST
@given(st.sampled_from(U.KINDS), st.sampled_from([P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP]),
       st.lists(st.binary(max_size=300), max_size=12), st.booleans())
def test_hostile_answers(kind, cmd, chunks, creds):
    """Any bytes: events, need-more, Refused or Broken; never anything
    else, and never more buffered than one bounded reply plus one read."""
    try:
        hs = make(kind, cmd, "192.0.2.7", 80, "u" if creds else None, "p" if creds else None)
    except ValueError:
        return
    hs.start()
    try:
        for chunk in chunks:
            for ev in hs.feed(chunk):
                assert ev is U.ALIVE or isinstance(ev, (U.Send, U.Reply))
            assert len(hs.buf) <= U.MAX_HTTP_HEAD + 300
    except (U.Refused, U.Broken) as exc:
        assert str(exc)
        if isinstance(exc, U.Refused):
            assert 1 <= exc.rep <= 8


# --- ?pipeline: the whole handshake in the first write ---------------------------------------------

def test_a_pipelined_handshake_is_one_write_and_sends_nothing_after():
    hs = U.handshake(U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, pipeline=True)
    assert hs.start() == P.greeting5((P.METHOD_NONE,)) + P.request5(P.CMD_CONNECT, "192.0.2.7", 80)
    for chunks in ways(b"\x05\x00" + ONE_REPLY5 + b"hi"):
        hs = U.handshake(U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, pipeline=True)
        hs.start()
        assert drive(hs, chunks) == ([U.ALIVE, U.Reply("10.0.0.1", 1080)], b"hi")


def test_a_pipelined_handshake_with_credentials_offers_only_username_password():
    hs = U.handshake(U.SOCKS5H, P.CMD_CONNECT, "example.com", 443, "fred", "hunter2", pipeline=True)
    assert hs.start() == (P.greeting5((P.METHOD_USERPASS,)) + P.userpass_request("fred", "hunter2")
                          + P.request5(P.CMD_CONNECT, "example.com", 443))
    assert "hunter2" not in repr(hs) and hs.auth is None       # not kept: it went out with the greeting
    assert hs.feed(b"\x05\x02\x01\x00" + ONE_REPLY5) == [U.ALIVE, U.Reply("10.0.0.1", 1080)]
    assert hs.done


@pytest.mark.parametrize("creds, answer, words", [
    (False, b"\x05\x02", "not offered"),            # it may not choose what the greeting did not offer
    (True, b"\x05\x00", "not offered"),
    (True, b"\x05\xff", "refused username/password"),
    (False, b"\x05\xff", "wants credentials"),
    (True, b"\x05\x02\x01\x01", "refused our username/password"),
])
def test_a_pipelined_handshake_holds_the_upstream_to_the_one_method(creds, answer, words):
    hs = U.handshake(U.SOCKS5, P.CMD_CONNECT, "192.0.2.7", 80, "u" if creds else None,
                     "p" if creds else None, pipeline=True)
    hs.start()
    with pytest.raises(U.Broken) as e:
        hs.feed(answer)
    assert words in str(e.value)


@pytest.mark.parametrize("kind", [U.SOCKS4, U.SOCKS4A, U.HTTP, U.SOCKS])
def test_only_a_socks5_url_is_pipelined(kind):
    with pytest.raises(ValueError):
        U.handshake(kind, P.CMD_CONNECT, "192.0.2.7", 80, pipeline=True)


@FAST
@given(st.sampled_from([P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP]), addresses, ports, bound, ports, bound, ports,
       st.booleans(), st.binary(max_size=64), splits)
def test_socks5_pipelined_any_chunking(cmd, dst, dport, b1, p1, b2, p2, creds, after, cuts):
    """The pipelined handshake's answers, cut anywhere: the replies and the
    rest as without pipelining, and nothing more to send."""
    answer = b"\x05" + (b"\x02\x01\x00" if creds else b"\x00") + P.reply5(0, b1, p1)
    expected = [U.ALIVE, U.Reply(b1, p1)]
    if cmd == P.CMD_BIND:
        answer += P.reply5(0, b2, p2)
        expected.append(U.Reply(b2, p2))
    hs = U.handshake(U.SOCKS5, cmd, dst, dport, "u" if creds else None, "p" if creds else None, pipeline=True)
    first = hs.start()
    assert first.endswith(P.request5(cmd, dst, dport))
    got, rest = drive(hs, chunked(answer + after, cuts))
    assert got == expected
    assert rest == after
    assert hs.done

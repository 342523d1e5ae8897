"""sockd.upstream: the connector through upstream proxies, on a real loop
against scripted upstreams on loopback (a listener that answers what a
script says once it has read enough, a closed port, a black hole that
accepts and never answers).  Checked: exactly one callback, the socket
handed over with ``mask`` telling the truth, the destination's first
bytes kept, failover past dead and silent upstreams (and not past one that
refused), one log line when an upstream goes down and one when it comes
back, upstreams marked down tried last and still tried, names sent or
resolved per kind, credentials on the wire and never in the log, BIND's
two replies, cancel.
"""

import socket

import pytest

from sockd import health as H
from sockd import protocol as P
from sockd import resolver as RS
from sockd import upstream as UP
from sockd import wayout as W
from sockd.loop import EPOLLIN

from loopkit import _Handler as Handler, Scripted, closed_port, epoll_masks, parse_conf, run_for, run_until, watched


class Owner:
    """The session, as the connector sees it (and the helper pool's
    requester)."""

    def __init__(self, loop):
        self.loop = loop
        self.gone = False
        self.src_key = (4, 0x7F000001)
        self.client_ip = "127.0.0.1"
        self.calls = []
        self.bound = []
        self.closed = 0
        self.connector = None
        self.mask = None

    def on_connected(self, sock, ip, err):
        self.calls.append((sock, ip, err))
        if sock is not None:
            self.mask = (self.connector.mask, epoll_masks(self.loop).get(sock.fileno()))
            self.loop.remove(sock.fileno())

    def on_upstream_bound(self, addr, port):
        self.bound.append((addr, port))

    def close(self):
        self.closed += 1

    @property
    def result(self):
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def health():
    return H.Health()


@pytest.fixture
def ups(loop):
    made = []

    def make(script, host="127.0.0.1"):
        u = Scripted(loop, script, host)
        made.append(u)
        return u
    yield make
    for u in made:
        u.close()


def server(kind, port, host="127.0.0.1", user=None, password=None):
    return W.Server(host, port, kind, user, password)


class Ctx:
    """What the connector takes of the session's Context."""

    def __init__(self, loop, log, health, attempt):
        self.loop, self.log, self.health = loop, log, health
        self.config = parse_conf("timeout upstream %g\npermit 127.0.0.0/8\n" % attempt)
        self.resolver = RS.Resolver(self)

    def upstream_health(self):
        return self.health


def connect(loop, log, health, servers, command=P.CMD_CONNECT, dst_host=None, candidates=(("192.0.2.7",)),
            port=80, attempt=1.0):
    owner = Owner(loop)
    cands = [(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip) for ip in candidates]
    c = UP.UpstreamConnector(Ctx(loop, log, health, attempt), owner, servers, command, dst_host, cands, port)
    owner.connector = c
    c.start()
    return c, owner


GREETED = [(3, b"\x05\x00")]


def socks5_ok(reply=P.reply5(0, "10.9.8.7", 4321), extra=b""):
    request = len(P.request5(1, "192.0.2.7", 80))
    return GREETED + [(3 + request, reply + extra)]


def test_socks5_connect_hands_over_socket_and_first_bytes(loop, log, health, ups):
    u = ups(socks5_ok(extra=b"220 hello\r\n"))
    c, owner = connect(loop, log, health, [server("socks5", u.port)])
    assert run_until(loop, lambda: owner.calls)
    sock, ip, err = owner.result
    assert err is None and ip == "192.0.2.7"
    assert u.got[0] == b"\x05\x01\x00" + P.request5(1, "192.0.2.7", 80)
    assert c.server.label == "socks5://127.0.0.1:%d" % u.port
    assert c.bound == ("10.9.8.7", 4321)
    assert c.first == b"220 hello\r\n"
    assert owner.mask == (EPOLLIN, EPOLLIN)          # registered as mask says
    sock.close()
    assert not health.down(c.server.label)
    assert log.lines() == []


def test_names_go_to_upstreams_that_resolve_them(loop, log, health, ups):
    name_req = P.request5(1, "www.example.com", 443)
    u = ups(GREETED + [(3 + len(name_req), P.reply5(0))])
    c, owner = connect(loop, log, health, [server("socks5h", u.port)], dst_host="www.example.com", port=443)
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None
    assert u.got[0].endswith(name_req)
    owner.result[0].close()
    # plain socks5: sockd's own (permitted) address
    v = ups(socks5_ok())
    c, owner = connect(loop, log, health, [server("socks5", v.port)], dst_host="www.example.com")
    assert run_until(loop, lambda: owner.calls)
    assert v.got[0].endswith(P.request5(1, "192.0.2.7", 80))
    owner.result[0].close()


def test_a_dead_upstream_fails_over_and_is_logged_once(loop, log, health, ups):
    dead = server("socks5", closed_port())
    u = ups(socks5_ok())
    for _ in range(3):
        c, owner = connect(loop, log, health, [dead, server("socks5", u.port)])
        assert run_until(loop, lambda: owner.calls)
        assert owner.result[2] is None
        owner.result[0].close()
    assert log.lines("warning") == ["upstream %s is down: connect: Connection refused; tried again in 30s"
                                    % dead.label]
    assert health.down(dead.label)
    # marked down: tried after the others, so the next clients did not wait for it
    assert c.failures == []


def test_a_black_hole_fails_over_within_the_attempts_bound(loop, log, health, ups):
    hole = ups([])
    u = ups(socks5_ok())
    start = loop.now
    c, owner = connect(loop, log, health, [server("socks5", hole.port), server("socks5", u.port)], attempt=0.3)
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None
    assert 0.25 < loop.now - start < 1.5
    assert log.having("no answer within 0.3s (timeout upstream)", "warning")
    owner.result[0].close()


@pytest.mark.parametrize("kind,script,rep,words", [
    ("socks5", GREETED + [(13, P.reply5(P.REP_HOST_UNREACHABLE))], P.REP_HOST_UNREACHABLE, "host unreachable"),
    ("socks4", [(9, P.reply4(91))], P.REP_FAILURE, "(91)"),
    ("http", [(10, b"HTTP/1.1 403 Forbidden\r\n\r\n")], P.REP_NOT_ALLOWED, "HTTP 403 Forbidden"),
])
def test_a_refusal_is_the_answer_no_failover(loop, log, health, ups, kind, script, rep, words):
    u = ups(script)
    other = ups(socks5_ok())
    c, owner = connect(loop, log, health, [server(kind, u.port), server("socks5", other.port)])
    assert run_until(loop, lambda: owner.calls)
    sock, ip, err = owner.result
    assert sock is None and isinstance(err, UP.UpstreamFailure)
    assert err.rep == rep
    assert "upstream %s://127.0.0.1:%d refused" % (kind, u.port) in err.detail and words in err.detail
    assert other.got == []                           # the destination is the problem: nobody else asked
    assert not health.down("%s://127.0.0.1:%d" % (kind, u.port))
    assert c.sock is None and c.connector is None and c.timer is None and owner.closed == 0


def test_all_down_is_network_unreachable_and_they_are_still_tried(loop, log, health, ups):
    a, b = server("socks5", closed_port()), server("http", closed_port())
    c, owner = connect(loop, log, health, [a, b])
    assert run_until(loop, lambda: owner.calls)
    err = owner.result[2]
    assert err.rep == P.REP_NET_UNREACHABLE
    assert err.detail == ("no upstream answered (%s: connect: Connection refused; %s: connect: Connection refused)"
                          % (a.label, b.label))
    assert len(log.lines("warning")) == 2
    # both marked down: a stale mark must not refuse everyone: tried anyway
    c, owner = connect(loop, log, health, [a, b])
    assert run_until(loop, lambda: owner.calls)
    assert len(c.failures) == 2
    assert len(log.lines("warning")) == 2            # nothing new to say


def test_recovery_is_logged_once(loop, log, health, ups):
    u = ups(socks5_ok())
    s = server("socks5", u.port)
    health.failed(s.label)
    c, owner = connect(loop, log, health, [s])
    assert run_until(loop, lambda: owner.calls)
    owner.result[0].close()
    assert log.lines("notice") == ["upstream %s is up again (down for 0s)" % s.label]
    c, owner = connect(loop, log, health, [s])
    assert run_until(loop, lambda: owner.calls)
    owner.result[0].close()
    assert len(log.lines("notice")) == 1


def test_closed_before_answering_is_a_dead_upstream(loop, log, health, ups):
    # an upstream that accepts and closes at once
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ls.setblocking(False)

    def on_accept(ev):
        conn, _ = ls.accept()
        conn.close()
    loop.add(ls.fileno(), EPOLLIN, Handler(on_accept).on_event)
    good = ups(socks5_ok())
    try:
        c, owner = connect(loop, log, health, [server("socks5", ls.getsockname()[1]), server("socks5", good.port)])
        assert run_until(loop, lambda: owner.calls)
        assert owner.result[2] is None
        owner.result[0].close()
        assert log.having("closed the connection before answering", "warning")
    finally:
        loop.remove(ls.fileno())
        ls.close()


def test_closed_after_answering_is_the_answer(loop, log, health, ups):
    u = ups(GREETED)
    good = ups(socks5_ok())
    c, owner = connect(loop, log, health, [server("socks5", u.port), server("socks5", good.port)])
    assert run_until(loop, lambda: len(u.got) == 1 and len(u.got[0]) >= 13)
    u.conns[0].close()
    assert run_until(loop, lambda: owner.calls)
    err = owner.result[2]
    assert err.rep == P.REP_FAILURE and "closed the connection before its reply" in err.detail
    assert good.got == []


def test_wrong_credentials_fail_over(loop, log, health, ups):
    u = ups([(4, b"\x05\x02"), (4 + 11, b"\x01\x01")])
    good = ups(socks5_ok())
    c, owner = connect(loop, log, health, [server("socks5", u.port, user="fred", password="hunter2"),
                                           server("socks5", good.port)])
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None
    owner.result[0].close()
    assert u.got[0] == b"\x05\x02\x00\x02" + b"\x01\x04fred\x07hunter2"
    assert log.having("refused our username/password", "warning")
    assert not any("hunter2" in m or "fred" in m for m in log.lines())


def test_http_basic_credentials_and_the_label(loop, log, health, ups):
    u = ups([(20, b"HTTP/1.1 200 Connection established\r\n\r\n")])
    s = server("http", u.port, user="al", password="s3cret")
    c, owner = connect(loop, log, health, [s], dst_host="h.example", port=443)
    assert run_until(loop, lambda: owner.calls)
    sock, _, err = owner.result
    assert err is None
    assert b"Proxy-Authorization: Basic YWw6czNjcmV0\r\n" in u.got[0]
    assert c.bound is None                          # HTTP announces nothing: the session uses its own
    assert "s3cret" not in c.server.label and "al" not in c.server.label.split("//")[1]
    sock.close()


def test_what_no_upstream_can_carry(loop, log, health, ups):
    c, owner = connect(loop, log, health, [server("socks4", 1)], candidates=("2001:db8::1",))
    assert run_until(loop, lambda: owner.calls)
    err = owner.result[2]
    assert err.rep == P.REP_ATYP_UNSUPPORTED
    assert "SOCKS 4 carries IPv4 destinations only" in err.detail
    c, owner = connect(loop, log, health, [server("http", 1)], command=P.CMD_BIND)
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2].rep == P.REP_CMD_UNSUPPORTED
    assert log.lines() == []                        # not the upstreams' fault


def test_upstream_names_are_resolved(loop, log, health, ups):
    u = ups(socks5_ok())
    c, owner = connect(loop, log, health, [server("socks5", u.port, host="localhost")])
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None
    owner.result[0].close()
    c, owner = connect(loop, log, health, [server("socks5", 1, host="no-such-host.invalid"),
                                           server("socks5", u.port)])
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None
    owner.result[0].close()
    assert log.having("cannot resolve no-such-host.invalid", "warning")


def test_bind_two_replies(loop, log, health, ups):
    req = len(P.request5(2, "192.0.2.7", 21))
    u = ups(GREETED + [(3 + req, P.reply5(0, "0.0.0.0", 40000))])
    c, owner = connect(loop, log, health, [server("socks5", u.port)], command=P.CMD_BIND, port=21)
    assert run_until(loop, lambda: owner.bound)
    assert owner.bound == [("127.0.0.1", 40000)]   # the unspecified address: the upstream's own
    assert owner.calls == []
    u.conns[0].send(P.reply5(0, "192.0.2.7", 20) + b"data")
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None
    assert c.bound == ("192.0.2.7", 20) and c.first == b"data"
    owner.result[0].close()


def test_cancel_leaves_nothing(loop, log, health, ups):
    hole = ups([])
    before = watched(loop)
    c, owner = connect(loop, log, health, [server("socks5", hole.port)], attempt=5)
    assert run_until(loop, lambda: hole.got)
    c.cancel()
    c.release()
    run_for(loop, 0.1)
    assert owner.calls == []
    assert watched(loop) - before <= {fd for x in hole.conns for fd in [x.fileno()]}


def test_attempt_seconds():
    assert UP.attempt_seconds(10, 120) == 10
    assert UP.attempt_seconds(10, 8) == 4
    assert UP.attempt_seconds(0, 8) == 0
    assert UP.attempt_seconds(10, 0) == 10
    assert UP.attempt_seconds(0, 0) == 0


def test_bind_both_replies_in_one_read(loop, log, health, ups):
    req = len(P.request5(2, "192.0.2.7", 21))
    u = ups(GREETED + [(3 + req, P.reply5(0, "10.0.0.9", 40000) + P.reply5(0, "192.0.2.7", 20))])
    c, owner = connect(loop, log, health, [server("socks5", u.port)], command=P.CMD_BIND, port=21)
    assert run_until(loop, lambda: owner.calls)
    assert owner.bound == [("10.0.0.9", 40000)]
    assert owner.result[2] is None and c.bound == ("192.0.2.7", 20)
    owner.result[0].close()


def test_an_upstream_name_through_the_cache_and_every_address(loop, log, health, ups):
    """The upstream's name comes from the process's resolver (here its
    cache: no helper thread), and a dead first address does not make the
    upstream dead: the Connector tries the next (Happy Eyeballs)."""
    u = ups(socks5_ok())
    owner = Owner(loop)
    ctx = Ctx(loop, log, health, 1.0)
    ctx.resolver.cached("up.test")          # the configuration's cache bounds apply
    ctx.resolver.cache.put("up.test", ((socket.AF_INET, "127.0.0.3"), (socket.AF_INET, "127.0.0.1")), None,
                           loop.now)
    c = UP.UpstreamConnector(ctx, owner, [server("socks5", u.port, host="up.test")], P.CMD_CONNECT, None,
                             [(socket.AF_INET, "192.0.2.7")], 80)
    owner.connector = c
    c.start()
    assert run_until(loop, lambda: owner.calls)
    assert owner.result[2] is None and c.upstream_ip == "127.0.0.1"
    owner.result[0].close()
    assert log.lines("warning") == []


def pipelined(kind, port, user=None, password=None):
    return W.Server("127.0.0.1", port, kind, user, password, pipeline=True)


def test_a_pipelined_upstream_gets_the_whole_handshake_before_it_answers(loop, log, health, ups):
    # it answers nothing until it has read greeting and request: without
    # the pipeline the two would wait for each other until the bound
    request = P.request5(1, "192.0.2.7", 80)
    u = ups([(3 + len(request), b"\x05\x00" + P.reply5(0, "10.9.8.7", 4321) + b"hi")])
    c, owner = connect(loop, log, health, [pipelined("socks5", u.port)])
    assert run_until(loop, lambda: owner.calls, 3)
    sock, ip, err = owner.result
    assert err is None
    assert u.got[0] == b"\x05\x01\x00" + request
    assert c.bound == ("10.9.8.7", 4321) and c.first == b"hi"
    assert c.server.label == "socks5://127.0.0.1:%d?pipeline" % u.port
    sock.close()


def test_a_pipelined_upstream_with_credentials(loop, log, health, ups):
    auth, request = P.userpass_request("fred", "hunter2"), P.request5(1, "192.0.2.7", 80)
    u = ups([(3 + len(auth) + len(request), b"\x05\x02\x01\x00" + P.reply5(0, "10.9.8.7", 4321))])
    c, owner = connect(loop, log, health, [pipelined("socks5", u.port, "fred", "hunter2")])
    assert run_until(loop, lambda: owner.calls, 3)
    sock, ip, err = owner.result
    assert err is None
    assert u.got[0] == b"\x05\x01\x02" + auth + request
    assert "hunter2" not in "".join(log.lines())
    sock.close()


def test_an_upstream_that_drops_a_pipelined_request_is_named_when_the_session_gives_up(loop, log, health, ups):
    # microsocks' way: the greeting answered, what followed it dropped
    u = ups([(3, b"\x05\x00")])
    c, owner = connect(loop, log, health, [pipelined("socks5", u.port)], attempt=0.3)
    run_for(loop, 0.6)
    assert owner.calls == []                    # answered once: no failover, the session's deadline decides
    assert "answered the greeting and not the pipelined request" in c.timeout_detail()
    assert "remove ?pipeline" in c.timeout_detail()
    c.cancel()
    plain = ups([(3, b"\x05\x00")])
    c2, owner2 = connect(loop, log, health, [server("socks5", plain.port)], attempt=0.3)
    run_for(loop, 0.3)
    assert c2.timeout_detail() == ""            # not pipelined: nothing to say
    c2.cancel()

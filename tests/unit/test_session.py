"""sockd.session: one client from its first byte to its relay, and its end.

Real Sessions on a real sockd.loop.Loop, built as a worker builds them
(``Context(config, loop, log)`` and an accepted loopback socket), with a
recording log; the destination is an echo server on the same loop, the
client is the test's peer, and identd (when a rule asks) an identd of the
test's own.  Requests are sent coalesced (greeting, request and early
data in one write) and byte by byte.  Checked: the replies of each SOCKS
version, the log lines naming the deciding line, refusals (reply 2, and
91/93 for SOCKS 4), timeouts, authentication, BIND, UDP ASSOCIATE, the
PROXY protocol, and that a closed session leaves nothing registered.
"""

import gc
import socket
import time
import weakref

import pytest

from sockd import ident as I
from sockd import limits as LI
from sockd import metrics as MX
from sockd import passwd as PW
from sockd import pools as PO
from sockd import protocol as P
from sockd import resolver as RS
from sockd import rules as R
from sockd import session as S
from sockd import wayout as W
from sockd.addresses import service_name

from loopkit import Identd, Scripted, closed_port, epoll_masks, parse_conf, run_for, run_until, watched

GREETING = P.greeting5([P.METHOD_NONE])
METHOD_NONE_REPLY = b"\x05\x00"


def connect5(ip, port):
    return P.request5(P.CMD_CONNECT, ip, port)


def connect4(ip, port, user="fred", host=None):
    return P.request4(P.CMD_CONNECT, port, socket.inet_aton(ip) if ip else P.ZERO4, user, host)


def drained(sock):
    """Has the session read everything the client sent?"""
    try:
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return True


class Server:
    """A worker's view: one Context, one listener; ``client(first)``
    connects a client that has sent ``first`` and makes its Session."""

    def __init__(self, loop, net, log, text, **ctxkw):
        self.loop, self.net, self.log = loop, net, log
        self.ctx = S.Context(parse_conf(text), loop, log, bufsize=1 << 16, **ctxkw)
        self.ended = []
        self.ctx.on_close = self.ended.append
        self.ls = net.listener("127.0.0.1")
        self.port = self.ls.getsockname()[1]
        net.keep(self)

    def client(self, first=b"", source=None, **kw):
        c = self.net.connect(("127.0.0.1", self.port), source)
        if first:
            c.sendall(first)
        conn, peer = self.ls.accept()
        sess = S.Session(self.ctx, conn, peer, conn.getsockname(), **kw)
        return self.net.peer(c), sess

    def close(self):
        for sess in list(self.ctx.sessions):
            sess.close()
        runner = self.ctx.runner
        if runner.queue is not None:
            runner.drain(2)
            for _ in runner.threads:
                runner.queue.put(None)
            for t in runner.threads:
                t.join(2)


@pytest.fixture
def server(loop, net, log):
    return lambda text="permit 127.0.0.0/8\n", **kw: Server(loop, net, log, text, **kw)


def reply5(data):
    """(rep, address, port), rest -- of what a SOCKS 5 client got after the method reply."""
    assert data[:2] == METHOD_NONE_REPLY
    (rep, addr, port), used = P.parse_reply5(bytes(data[2:]))
    return (rep, addr, port), bytes(data[2 + used:])


def nothing_left(loop, sess):
    return sess.state == S.CLOSED and sess.c.fileno() == -1 and not (watched(loop) & {sess.cfd}) and \
        sess not in sess.ctx.sessions


# --- CONNECT ------------------------------------------------------------------------------------------

def test_socks5_connect_in_one_write_relays_to_the_destination(loop, net, log, server):
    echo = net.echo_server()
    srv = server()
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"early bytes")
    assert run_until(loop, lambda: client.data.endswith(b"early bytes"))
    (rep, addr, port), rest = reply5(client.data)
    assert (rep, addr, rest) == (P.REP_SUCCEEDED, "127.0.0.1", b"early bytes")
    assert port == sess.relay.r.getsockname()[1]                  # the address sockd connected from
    assert sess.state == S.RELAY and sess.title() == "unknown@127.0.0.1 -> 127.0.0.1:%d" % echo.port
    desc = "Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 (%s)" % service_name(echo.port)
    assert log.lines("notice") == ["connected -- " + desc]
    client.write(b" and more")
    assert run_until(loop, lambda: client.data.endswith(b"early bytes and more"))
    client.shutdown()
    assert run_until(loop, lambda: client.eof and srv.ended)
    assert srv.ended == [sess] and nothing_left(loop, sess)
    assert log.lines("notice")[-1] == "terminated -- %s. 20 bytes from 127.0.0.1, 20 bytes from 127.0.0.1" % desc
    st = srv.ctx.stats
    assert (st["accepted"], st["connected"], st["bytes_in"], st["bytes_out"]) == (1, 1, 20, 20)
    assert sess.status() == "finished; 20 bytes from the client, 20 to it"


def test_a_finished_session_is_freed_at_once_not_by_the_garbage_collector(loop, net, server):
    # a cycle (session <-> relay) left every finished session to the cycle
    # collector: a worker grew by a third over 200,000 connections
    echo = net.echo_server()
    srv = server()
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"x")
    assert run_until(loop, lambda: client.data.endswith(b"x"))
    client.shutdown()
    assert run_until(loop, lambda: client.eof and srv.ended)
    gone = weakref.ref(sess)
    gc.disable()
    try:
        srv.ended.clear()
        del sess
        assert gone() is None
    finally:
        gc.enable()


def test_socks5_connect_byte_by_byte(loop, net, server):
    echo = net.echo_server()
    srv = server()
    client, sess = srv.client()
    request = connect5("127.0.0.1", echo.port)
    for i, byte in enumerate(GREETING + request):
        client.sock.send(bytes([byte]))
        assert run_until(loop, lambda: drained(sess.c))
        if i < len(GREETING) - 1:
            assert client.data == b""                             # no answer to half a greeting
        elif i < len(GREETING) + len(request) - 1:
            assert run_until(loop, lambda: client.data == METHOD_NONE_REPLY)
    assert run_until(loop, lambda: len(client.data) == 12)
    assert reply5(client.data)[0][0] == P.REP_SUCCEEDED
    for byte in b"late":
        client.sock.send(bytes([byte]))
    assert run_until(loop, lambda: client.data.endswith(b"late"))


def test_socks4_connect_and_its_reply(loop, net, log, server):
    echo = net.echo_server()
    srv = server()
    client, sess = srv.client(connect4("127.0.0.1", echo.port) + b"hi")
    assert run_until(loop, lambda: len(client.data) == 10)
    (code, addr, port), used = P.parse_reply4(bytes(client.data))
    assert (code, addr, client.data[used:]) == (P.S4_GRANTED, "127.0.0.1", b"hi")
    assert log.lines("notice") == ["connected -- Connect from fred(unknown)@127.0.0.1 to 127.0.0.1 (%s)"
                                   % service_name(echo.port)]


def test_a_name_tries_its_permitted_addresses_in_order(loop, net, log, server, monkeypatch):
    echo = net.echo_server()
    monkeypatch.setattr(RS, "resolve", lambda host, port: [
        (socket.AF_INET, "127.0.0.2"), (socket.AF_INET, "127.0.0.3"), (socket.AF_INET, "127.0.0.1")])
    srv = server("deny 0/0 127.0.0.2/32\npermit 127.0.0.0/8\n")
    client, sess = srv.client(connect4(None, echo.port, host="Echo.Test"))
    assert run_until(loop, lambda: len(client.data) == 8)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_GRANTED
    # .2 is refused by the rules and never tried, .3 refuses the connection, .1 answers
    assert [ip for _, ip in sess.candidates] == ["127.0.0.3", "127.0.0.1"]
    assert (sess.dst_host, sess.dst_ip) == ("echo.test", "127.0.0.1")
    assert log.lines("notice") == ["connected -- Connect from fred(unknown)@127.0.0.1 to echo.test (%s)"
                                   % service_name(echo.port)]


def test_a_second_connect_to_a_name_is_answered_by_the_cache(loop, net, log, server, monkeypatch):
    """The sessions of a process share its resolver cache: the second
    CONNECT to a name (in any case) asks no resolver, and a name that did
    not resolve is answered as failed from the cache too."""
    echo = net.echo_server()
    asked = []

    def resolve(host, port):
        asked.append(host)
        if host == "nosuch.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, "127.0.0.1")]
    monkeypatch.setattr(RS, "resolve", resolve)
    srv = server()
    for host in ("echo.test", "ECHO.test"):
        client, sess = srv.client(connect4(None, echo.port, host=host))
        assert run_until(loop, lambda: len(client.data) == 8)
        assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_GRANTED
    for _ in range(2):
        client, sess = srv.client(GREETING + P.request5(P.CMD_CONNECT, "nosuch.test", 80))
        assert run_until(loop, lambda: client.eof)
        assert reply5(client.data)[0][0] == P.REP_HOST_UNREACHABLE
    assert asked == ["echo.test", "nosuch.test"]
    assert len(log.having("Error code: resolve Name or service not known", "notice")) == 2


def test_a_name_that_does_not_resolve(loop, server, log, monkeypatch):
    def fail(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(RS, "resolve", fail)
    srv = server()
    client, sess = srv.client(GREETING + P.request5(P.CMD_CONNECT, "nosuch.test", 80))
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_HOST_UNREACHABLE
    assert log.lines("notice") == ["failed -- Connect from unknown(unknown)@127.0.0.1 to nosuch.test (http).  "
                                   "Error code: resolve Name or service not known"]


class RefusingExecutor:
    """The helper pools of a worker whose client address has too many jobs
    waiting: every job refused, logged or not."""

    def __init__(self, log_it=True):
        self.log_it = log_it
        self.asked = []

    def submit(self, kind, requester, fn, args, done):
        self.asked.append((kind, requester))
        return PO.Refusal("too many %s waiting from 127.0.0.1 (helpers queue 64); logged at most once every 5 "
                          "seconds" % PO.WORK[kind], self.log_it)

    def shutdown(self):
        pass


@pytest.mark.parametrize("log_it", [True, False])
def test_a_name_the_pool_will_not_look_up_fails_at_once(loop, server, log, log_it):
    loop.executor = ex = RefusingExecutor(log_it)
    srv = server()
    client, sess = srv.client(GREETING + P.request5(P.CMD_CONNECT, "www.example.test", 80))
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_HOST_UNREACHABLE
    assert ex.asked == [(PO.NAMES, sess)] and sess.gone
    assert log.lines("notice") == ([
        "failed -- Connect from unknown(unknown)@127.0.0.1 to www.example.test (http).  Error code: resolve not "
        "run: too many name lookups waiting from 127.0.0.1 (helpers queue 64); logged at most once every 5 seconds"]
        if log_it else [])
    assert srv.ctx.stats["failed"] == 1


def test_names_for_the_rules_the_pool_will_not_look_up_fail_the_socks4_request(loop, server, log):
    loop.executor = RefusingExecutor()
    srv = server("permit 127.0.0.0/8 .example.test\n")
    client, sess = srv.client(connect4("127.0.0.1", 80))
    assert run_until(loop, lambda: client.eof)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_REJECTED
    assert log.having("Error code: names not run: too many name lookups waiting from 127.0.0.1", "notice")


def test_a_session_is_gone_once_closed(server):
    srv = server()
    client, sess = srv.client()
    assert not sess.gone
    sess.close()
    assert sess.gone


def test_a_refused_connection_is_answered_with_its_reply(loop, server, log):
    port = closed_port()
    srv = server()
    client, sess = srv.client(GREETING + connect5("127.0.0.1", port))
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_REFUSED
    assert log.lines("notice") == ["failed -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 (%s).  "
                                   "Error code: connect Connection refused" % service_name(port)]
    assert srv.ctx.stats["failed"] == 1 and nothing_left(loop, sess)


# --- refusals --------------------------------------------------------------------------------------------

def test_a_deny_line_refuses_socks5_with_reply_2_and_names_the_line(loop, net, log, server):
    echo = net.echo_server()
    srv = server("deny 127.0.0.0/8 127.0.0.2/32\npermit 0/0\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.2", echo.port))
    assert run_until(loop, lambda: client.eof)
    assert bytes(client.data) == METHOD_NONE_REPLY + P.reply5(P.REP_NOT_ALLOWED)
    assert log.lines("notice") == ["refused -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.2 (%s) "
                                   "by unit.conf:1" % service_name(echo.port)]
    assert echo.peers == [] and srv.ctx.stats["refused"] == 1 and nothing_left(loop, sess)


def test_no_matching_line_refuses_socks4_with_91(loop, log, server):
    srv = server("permit 10.0.0.0/8\n")
    client, sess = srv.client(connect4("127.0.0.1", 80))
    assert run_until(loop, lambda: client.eof)
    assert bytes(client.data) == P.reply4(P.S4_REJECTED)
    assert log.lines("notice") == ["refused -- Connect from fred(unknown)@127.0.0.1 to 127.0.0.1 (http): "
                                   "no matching rule in unit.conf"]


def test_the_refusing_lines_command_runs(loop, server, tmp_path):
    out = tmp_path / "refused"
    srv = server("deny 0/0 127.0.0.2/32 : echo %%u to %%z > %s\npermit 0/0\n" % out)
    client, sess = srv.client(connect4("127.0.0.2", 80, user="x;rm"))
    assert run_until(loop, lambda: client.eof)
    # not Runner.drain(): it can return before a just-queued command has started (see test_shell.py)
    assert run_until(loop, lambda: out.exists() and out.read_text().endswith("\n"))
    assert out.read_text() == "x_rm to 127.0.0.2\n"


def test_identd_naming_another_user_refuses_socks4_with_93(loop, net, log, server, monkeypatch, tmp_path):
    echo = net.echo_server()
    identd = Identd(loop, net, lambda q: [q.strip() + b" : USERID : UNIX : bob\r\n"])
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    hook = tmp_path / "bad_id"
    srv = server("permit ?=i 127.0.0.0/8\n#BAD_ID: echo %%U is not %%u > %s\n" % hook)
    client, sess = srv.client(connect4("127.0.0.1", echo.port, user="fred"))
    assert run_until(loop, lambda: client.eof)
    assert bytes(client.data) == P.reply4(P.S4_BAD_ID)
    assert identd.queries == [b"%d , %d\r\n" % (sess.client_port, srv.port)]
    assert log.lines("warning") == ["*Alert*: real user is bob, not fred"]
    assert log.lines("notice") == ["refused -- Connect from fred(bob)@127.0.0.1 to 127.0.0.1 (%s) by unit.conf:1: "
                                   "identd says the user is bob" % service_name(echo.port)]
    assert echo.peers == []
    assert run_until(loop, lambda: hook.exists() and hook.read_text().endswith("\n"))
    assert hook.read_text() == "bob is not fred\n"


def test_identd_agreeing_lets_the_client_through(loop, net, server, monkeypatch):
    echo = net.echo_server()
    identd = Identd(loop, net, lambda q: [q.strip() + b" : USERID : UNIX : fred\r\n"])
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    srv = server("permit ?=I 127.0.0.0/8\n")
    client, sess = srv.client(connect4("127.0.0.1", echo.port, user="fred"))
    assert run_until(loop, lambda: len(client.data) == 8)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_GRANTED and sess.realuser == "fred"


def test_socks5_without_auth_takes_identds_user(loop, net, server, monkeypatch):
    echo = net.echo_server()
    identd = Identd(loop, net, lambda q: [q.strip() + b" : USERID : UNIX : alice\r\n"])
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    srv = server("permit ?=i *=alice 127.0.0.0/8\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port))
    assert run_until(loop, lambda: len(client.data) == 12)
    assert reply5(client.data)[0][0] == P.REP_SUCCEEDED
    assert (sess.user, sess.realuser) == ("alice", "alice")


def test_through_a_trusted_balancer_the_real_client_is_judged(loop, net, log, server):
    """PROXY protocol: the header names a client not on loopback, so the
    private-destination guard applies to it (deny-private-destinations auto)."""
    echo = net.echo_server()
    srv = server("permit 0/0\n")
    header = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 1080\r\n"
    client, sess = srv.client(header + GREETING + connect5("127.0.0.1", echo.port),
                              proxy=[R.parse_addr_spec("127.0.0.0/8")])
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_NOT_ALLOWED
    assert (sess.client_ip, sess.client_port, sess.local_port) == ("203.0.113.9", 5555, 1080)
    assert log.lines("notice") == ["refused -- Connect from unknown(unknown)@203.0.113.9 to 127.0.0.1 (%s): "
                                   "127.0.0.1 is private to this host (deny-private-destinations)"
                                   % service_name(echo.port)]


def test_a_balancer_that_is_not_trusted_is_hung_up_on(loop, log, server):
    srv = server()
    client, sess = srv.client(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 1080\r\n",
                              proxy=[R.parse_addr_spec("192.0.2.0/24")])
    assert run_until(loop, lambda: client.eof or client.error)     # a reset: its header was never read
    assert client.data == b"" and sess.state == S.CLOSED and srv.ended == [sess]
    assert log.lines("notice") == ["refused -- connection from 127.0.0.1: not a trusted PROXY protocol source"]


# --- negotiation ------------------------------------------------------------------------------------------

def test_timeout_negotiate_ends_a_client_that_does_not_finish(loop, log, server):
    srv = server("timeout negotiate 0.1\npermit 0/0\n")
    start = time.monotonic()
    client, sess = srv.client(b"\x05\x01")
    assert run_until(loop, lambda: client.eof)
    assert time.monotonic() - start >= 0.09
    assert client.data == b"" and nothing_left(loop, sess)
    assert log.lines("notice") == ["timed-out -- negotiation with 127.0.0.1 took too long (timeout negotiate)"]


def test_timeout_connect_covers_a_silent_identd(loop, net, log, server, monkeypatch):
    identd = Identd(loop, net, lambda q: "silent")
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    srv = server("timeout connect 0.1\npermit ?=I 127.0.0.0/8\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", 80))
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_TTL_EXPIRED
    assert log.lines("notice") == ["timed-out -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 (http)"]
    assert nothing_left(loop, sess) and sess.identq is None


def test_a_served_client_makes_one_timer_for_its_deadlines(loop, net, log, server, monkeypatch):
    """negotiate, connect and idle deadlines of whole seconds share the
    session's one timer: the later ones wait behind the first."""
    echo = net.echo_server()
    made = []
    real = loop.call_at

    def call_at(when, cb):
        made.append(getattr(cb, "__name__", cb))
        return real(when, cb)
    monkeypatch.setattr(loop, "call_at", call_at)
    srv = server("timeout negotiate 30\ntimeout connect 120\ntimeout idle 7200\npermit 0/0\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"ping")
    assert run_until(loop, lambda: client.data.endswith(b"ping"))
    assert made.count("on_timer") == 1 and sess.on_due == sess.on_idle_check
    assert sess.timer.when <= int(sess.due) + 1 and sess.due >= loop.now + 7199
    client.shutdown()
    assert run_until(loop, lambda: srv.ended)
    assert nothing_left(loop, sess) and sess.timer is None and sess.on_due is None


def behind_a_silent_identd(loop, net, server, monkeypatch, timeouts, wait):
    """A CONNECT whose rule asks identd, which never answers, under
    ``timeouts``: (client, session, seconds until the client saw EOF)."""
    identd = Identd(loop, net, lambda q: "silent")
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    srv = server(timeouts + "timeout ident 30\npermit ?=I 127.0.0.0/8\n")
    start = time.monotonic()
    client, sess = srv.client(GREETING + connect5("127.0.0.1", 80))
    assert run_until(loop, lambda: client.eof, timeout=wait)
    return client, sess, time.monotonic() - start


def test_a_deadline_later_than_the_timer_waits_for_its_own_second(loop, net, log, server, monkeypatch):
    """timeout negotiate 1, timeout connect 2, identd silent: the timer of
    the negotiation fires first and waits on for the connect deadline,
    which ends the request (not as a negotiation timeout)."""
    client, sess, took = behind_a_silent_identd(loop, net, server, monkeypatch,
                                                "timeout negotiate 1\ntimeout connect 2\n", 6)
    assert took >= 1.5
    assert reply5(client.data)[0][0] == P.REP_TTL_EXPIRED
    assert log.lines("notice") == ["timed-out -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 (http)"]
    assert nothing_left(loop, sess)


def test_a_deadline_earlier_than_the_timer_replaces_it(loop, net, log, server, monkeypatch):
    """timeout negotiate 5, timeout connect 1: the connect deadline, armed
    later, comes first."""
    client, sess, took = behind_a_silent_identd(loop, net, server, monkeypatch,
                                                "timeout negotiate 5\ntimeout connect 1\n", 4)
    assert 1 <= took < 3
    assert reply5(client.data)[0][0] == P.REP_TTL_EXPIRED
    assert nothing_left(loop, sess)


def test_an_unknown_command_is_answered_7(loop, log, server):
    srv = server()
    client, sess = srv.client(GREETING + b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_CMD_UNSUPPORTED
    assert log.having(": command 9 not supported", "notice")


def test_no_acceptable_method(loop, log, server):
    srv = server()
    client, sess = srv.client(P.greeting5([P.METHOD_USERPASS]))
    assert run_until(loop, lambda: client.eof)
    assert bytes(client.data) == b"\x05\xff"
    assert log.lines("notice") == ["refused -- no acceptable authentication method from 127.0.0.1 (offered 2)"]


def test_a_protocol_error_is_logged_and_the_client_dropped(loop, log, server):
    srv = server()
    client, sess = srv.client(b"GET / HTTP/1.0\r\n\r\n")
    assert run_until(loop, lambda: client.eof)
    assert log.lines("notice") == ["error -- wrong version (0x47) from host 127.0.0.1."]
    assert srv.ctx.stats["errors"] == 1


@pytest.fixture
def passwd(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:%s\n" % PW.make_hash(b"right", 4))
    return path


@pytest.mark.parametrize("password,ok", [("right", True), ("wrong", False)])
def test_username_and_password(loop, net, log, server, passwd, password, ok):
    echo = net.echo_server()
    srv = server("methods username\npasswd %s\npermit *=alice 127.0.0.0/8\n" % passwd)
    client, sess = srv.client(P.greeting5([P.METHOD_USERPASS]) + P.userpass_request("alice", password)
                              + connect5("127.0.0.1", echo.port))
    if ok:
        assert run_until(loop, lambda: len(client.data) == 2 + 2 + 10)
        assert client.data[:4] == b"\x05\x02\x01\x00"
        assert P.parse_reply5(bytes(client.data[4:]))[0][0] == P.REP_SUCCEEDED
        assert sess.user == "alice" and sess.authenticated
    else:
        assert run_until(loop, lambda: client.eof)
        assert bytes(client.data) == b"\x05\x02\x01\x01"
        assert log.lines("notice") == ["refused -- username/password authentication failed for alice from 127.0.0.1"]


@pytest.mark.parametrize("command", [P.CMD_CONNECT, P.CMD_BIND])
@pytest.mark.parametrize("host", [None, "localhost"])
def test_socks4_is_refused_when_every_method_needs_a_password(loop, net, log, server, passwd, command, host):
    echo = net.echo_server()
    srv = server("listen 127.0.0.1:0\nmethods username\npasswd %s\npermit *=alice 0/0\n" % passwd)
    client, sess = srv.client(P.request4(command, echo.port, P.ZERO4 if host else socket.inet_aton("127.0.0.1"),
                                         "alice", host))
    assert run_until(loop, lambda: client.eof)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_REJECTED
    what = "Bind from alice(unknown)@127.0.0.1 for" if command == P.CMD_BIND else \
        "Connect from alice(unknown)@127.0.0.1 to"
    assert log.lines("notice") == [
        "refused -- %s %s (%s) by %s:2: a SOCKS 4 USERID is no password, and "
        "methods requires one (socks4 trust-userid no)" % (what, host or "127.0.0.1", service_name(echo.port),
                                                          srv.ctx.config.path)]
    assert srv.ctx.stats["refused"] == 1 and sess.state == S.CLOSED


@pytest.mark.parametrize("conf", ["methods username\nsocks4 trust-userid yes\n", "methods none username\n"])
def test_socks4_is_served_when_trusted_or_a_method_needs_no_password(loop, net, log, server, passwd, conf):
    echo = net.echo_server()
    srv = server(conf + "passwd %s\npermit *=alice 0/0\n" % passwd)
    client, sess = srv.client(connect4("127.0.0.1", echo.port, "alice"))
    assert run_until(loop, lambda: len(client.data) == 8)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_GRANTED and sess.user == "alice"


class HeldExecutor:
    """Keeps the jobs it is given (a password check that takes its time)."""

    def __init__(self):
        self.jobs = []

    def submit(self, kind, requester, fn, args, done):
        self.jobs.append((fn, args, done))

    def shutdown(self):
        pass


def test_a_login_the_pool_will_not_check_is_refused_at_once(loop, log, server, passwd):
    loop.executor = ex = RefusingExecutor()
    srv = server("methods username\npasswd %s\npermit 0/0\n" % passwd)
    client, sess = srv.client(P.greeting5([P.METHOD_USERPASS]) + P.userpass_request("alice", "right"))
    assert run_until(loop, lambda: client.eof)
    assert bytes(client.data) == b"\x05\x02\x01\x01" and ex.asked == [(PO.PASSWORDS, sess)]
    assert log.lines("notice") == [
        "refused -- username/password check for alice from 127.0.0.1 not run: too many password checks waiting "
        "from 127.0.0.1 (helpers queue 64); logged at most once every 5 seconds"]
    assert srv.ctx.stats["refused"] == 1


def test_timeout_negotiate_covers_a_slow_password_check(loop, log, server, passwd):
    loop.executor = held = HeldExecutor()
    srv = server("timeout negotiate 0.1\nmethods username\npasswd %s\npermit 0/0\n" % passwd)
    client, sess = srv.client(P.greeting5([P.METHOD_USERPASS]) + P.userpass_request("alice", "right"))
    assert run_until(loop, lambda: client.eof)
    assert len(held.jobs) == 1 and sess.state == S.CLOSED and bytes(client.data) == b"\x05\x02"
    assert log.lines("notice") == ["timed-out -- negotiation with 127.0.0.1 took too long (timeout negotiate)"]
    fn, args, done = held.jobs[0]
    done(fn(*args), None)                            # the answer comes after the end: ignored
    assert bytes(client.data) == b"\x05\x02"


# --- BIND and UDP ASSOCIATE ------------------------------------------------------------------------------------

def test_socks4_bind_two_replies_then_the_relay(loop, net, log, server):
    srv = server()
    client, sess = srv.client(P.request4(P.CMD_BIND, 21, socket.inet_aton("127.0.0.1"), "fred"))
    assert run_until(loop, lambda: len(client.data) == 8)
    (code, addr, port), _ = P.parse_reply4(bytes(client.data))
    assert (code, addr, sess.state) == (P.S4_GRANTED, "127.0.0.1", S.BINDWAIT)
    app = net.peer(net.connect((addr, port)))
    assert run_until(loop, lambda: len(client.data) == 16)
    (code2, addr2, port2), _ = P.parse_reply4(bytes(client.data[8:]))
    assert (code2, addr2, port2) == (P.S4_GRANTED, "127.0.0.1", app.sock.getsockname()[1])
    app.write(b"220 hello\r\n")
    assert run_until(loop, lambda: client.data.endswith(b"220 hello\r\n"))
    client.write(b"QUIT\r\n", shutdown=True)
    assert run_until(loop, lambda: app.data == b"QUIT\r\n" and app.eof)
    assert log.having("connected -- Bind from fred(unknown)@127.0.0.1 for 127.0.0.1 (ftp): 127.0.0.1 port %d connected"
                      % port2, "notice")


def bind4(srv, loop, dst="0.0.0.0", port=21, source=None):
    """A SOCKS 4 BIND; (client, session, listening address, port) once granted."""
    client, sess = srv.client(P.request4(P.CMD_BIND, port, socket.inet_aton(dst), "fred"), source=source)
    assert run_until(loop, lambda: len(client.data) >= 8)
    (code, addr, lport), _ = P.parse_reply4(bytes(client.data[:8]))
    assert code == P.S4_GRANTED and sess.state == S.BINDWAIT
    return client, sess, addr, lport


def test_a_bind_that_names_no_server_lets_in_only_what_the_rules_let_the_client_reach(loop, net, log, server):
    """DSTIP 0.0.0.0: granted on the client alone; the host that connects
    is judged as the destination of the same request (here a rule names
    127.0.0.5, and the guard keeps the rest of loopback out)."""
    srv = server("deny-private-destinations yes\npermit 127.0.0.0/8 127.0.0.5/32\npermit 127.0.0.0/8\n")
    client, sess, addr, port = bind4(srv, loop)
    local = net.connect((addr, port), source="127.0.0.1")            # a program on this host
    assert run_until(loop, lambda: len(client.data) == 16 and sess.state == S.CLOSED)
    assert P.parse_reply4(bytes(client.data[8:]))[0][0] == P.S4_REJECTED
    assert log.having("refused -- Bind from fred(unknown)@127.0.0.1 for 0.0.0.0 (ftp): connection from "
                      "127.0.0.1 port %d: 127.0.0.1 is private to this host" % local.getsockname()[1], "notice")
    local.settimeout(2)
    assert local.recv(10) == b""                                     # and it is hung up on
    client, sess, addr, port = bind4(srv, loop)
    named = net.peer(net.connect((addr, port), source="127.0.0.5"))   # the host a rule names
    assert run_until(loop, lambda: len(client.data) == 16)
    assert P.parse_reply4(bytes(client.data[8:]))[0] == (P.S4_GRANTED, "127.0.0.5", named.sock.getsockname()[1])
    named.write(b"hello")
    assert run_until(loop, lambda: client.data.endswith(b"hello"))


def test_a_bind_that_names_no_server_needs_a_permit_line_for_its_client(loop, log, server):
    srv = server("permit 10.0.0.0/8\n")
    client, sess = srv.client(P.request4(P.CMD_BIND, 21, socket.inet_aton("0.0.0.0"), "fred"))
    assert run_until(loop, lambda: len(client.data) == 8 and sess.state == S.CLOSED)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_REJECTED


def test_without_check_peer_the_rules_judge_the_host_that_connects(loop, net, log, server):
    srv = server("bind check-peer no\ndeny 127.0.0.0/8 127.0.0.9/32\npermit 127.0.0.0/8\n")
    client, sess, addr, port = bind4(srv, loop, dst="127.0.0.1")
    net.connect((addr, port), source="127.0.0.9")
    assert run_until(loop, lambda: sess.state == S.CLOSED)
    assert log.having("refused -- Bind from fred(unknown)@127.0.0.1 for 127.0.0.1 (ftp): connection from 127.0.0.9",
                      "notice")
    client, sess, addr, port = bind4(srv, loop, dst="127.0.0.1")
    net.connect((addr, port), source="127.0.0.8")
    assert run_until(loop, lambda: len(client.data) == 16)
    assert P.parse_reply4(bytes(client.data[8:]))[0][:2] == (P.S4_GRANTED, "127.0.0.8")


def test_rules_that_name_hosts_see_the_names_of_the_host_that_connects(loop, net, log, server, monkeypatch):
    asked = []

    def lookup_names(client_ip, dst_ip, want_src, want_dst):
        asked.append(dst_ip)
        return (), (("app.example",) if dst_ip == "127.0.0.7" else ())
    monkeypatch.setattr(S, "lookup_names", lookup_names)
    srv = server("deny 127.0.0.0/8 app.example\npermit 127.0.0.0/8\n")
    client, sess, addr, port = bind4(srv, loop)
    net.connect((addr, port), source="127.0.0.7")
    assert run_until(loop, lambda: sess.state == S.CLOSED)
    assert "127.0.0.7" in asked and "0.0.0.0" not in asked          # no name for "no server"
    assert log.having("connection from 127.0.0.7 port", "notice")


def test_identd_is_asked_when_a_rule_needs_it_for_the_host_that_connects(loop, net, log, server, monkeypatch):
    answers = []

    class FakeIdent:
        def __init__(self, loop, local_ip, client_ip, client_port, local_port, timeout, callback):
            answers.append(client_ip)
            loop.call_later(0.01, lambda: callback(I.USERID, "mallory"))

        def cancel(self):
            pass
    monkeypatch.setattr(S.I, "IdentQuery", FakeIdent)
    srv = server("permit ?=I *=fred 127.0.0.0/8\n")
    client, sess, addr, port = bind4(srv, loop)
    net.connect((addr, port))
    assert run_until(loop, lambda: sess.state == S.CLOSED and len(client.data) == 16)
    assert answers == ["127.0.0.1"] and sess.realuser == "mallory"
    assert P.parse_reply4(bytes(client.data[8:16]))[0][0] == P.S4_BAD_ID


def test_pending_binds_past_limit_binds_are_refused_with_a_failure_reply(loop, net, log, server):
    srv = server("permit 127.0.0.0/8\n")
    srv.ctx.bind_limits = LI.Limits(binds=2)
    waiting = [bind4(srv, loop) for _ in range(2)]
    client, sess = srv.client(P.request4(P.CMD_BIND, 21, socket.inet_aton("0.0.0.0"), "fred"))
    assert run_until(loop, lambda: len(client.data) == 8 and sess.state == S.CLOSED)
    assert P.parse_reply4(bytes(client.data))[0][0] == P.S4_REJECTED
    assert log.having("refused -- Bind from fred(unknown)@127.0.0.1 for 0.0.0.0 (ftp): too many BINDs waiting "
                      "from 127.0.0.1 (limit binds; logged at most once every 5 seconds)", "notice")
    waiting[0][1].close()                                            # one ends: room again
    bind4(srv, loop)


def test_udp_associate_opens_a_relay_that_lives_with_the_control_connection(loop, net, log, server):
    echo = net.udp(echo=True)
    me = net.udp()
    srv = server()
    client, sess = srv.client(GREETING + P.request5(P.CMD_UDP, "127.0.0.1", me.port))
    assert run_until(loop, lambda: len(client.data) == 12)
    (rep, addr, port), _ = reply5(client.data)
    assert (rep, addr, sess.state) == (P.REP_SUCCEEDED, "127.0.0.1", S.UDP)
    me.send(P.udp_header("127.0.0.1", echo.port) + b"ping", (addr, port))
    assert run_until(loop, lambda: me.got)
    assert me.got[0][0] == P.udp_header("127.0.0.1", echo.port) + b"ping"
    assoc = sess.aux
    client.close()
    assert run_until(loop, lambda: srv.ended)
    assert nothing_left(loop, sess) and assoc.csock is None and assoc.cfd not in watched(loop)
    assert log.lines("notice")[-1] == (
        "terminated -- UDP associate from unknown(unknown)@127.0.0.1. 4 bytes in 1 datagrams from 127.0.0.1, "
        "4 bytes in 1 datagrams to it, 0 dropped")


def test_udp_associate_without_a_permit_line_for_the_client(loop, log, server):
    srv = server("permit 10.0.0.0/8\n")
    client, sess = srv.client(GREETING + P.request5(P.CMD_UDP, "0.0.0.0", 0))
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_NOT_ALLOWED
    assert log.lines("notice") == ["refused -- UDP associate from unknown(unknown)@127.0.0.1: "
                                   "no permit line for this client"]


# --- the end ---------------------------------------------------------------------------------------------

def test_timeout_idle_closes_a_quiet_relay(loop, net, log, server):
    echo = net.echo_server()
    srv = server("timeout idle 0.1\npermit 0/0\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port))
    assert run_until(loop, lambda: client.eof)
    assert log.having(": idle for 0.1s", "notice")


def test_a_session_paused_by_limit_buffers_still_meets_timeout_idle(loop, net, log, server):
    """limit buffers 0: the relay keeps nothing; a client that stops
    reading pauses its download (nothing held) and the idle timeout still
    ends it."""
    srv = server("limit buffers 0\ntimeout idle 0.3\npermit 0/0\n")
    dest = net.listener("127.0.0.1")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", dest.getsockname()[1]))
    client.pause()
    assert run_until(loop, lambda: sess.state == S.RELAY)
    conn, _ = dest.accept()
    remote = net.peer(conn)
    remote.write(b"x" * (8 << 20))
    assert run_until(loop, lambda: sess.relay is not None and sess.relay.pend_rc is not None)
    assert sess.relay.pend_rc == b"" and srv.ctx.budget.held == 0
    assert run_until(loop, lambda: sess.state == S.CLOSED, timeout=3)
    assert log.having(": idle for 0.3s", "notice") and srv.ctx.budget.held == 0


def test_a_client_that_hangs_up_while_waiting_is_closed_once(loop, net, server, monkeypatch):
    identd = Identd(loop, net, lambda q: "silent")
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    srv = server("permit ?=I 127.0.0.0/8\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", 80))
    assert run_until(loop, lambda: identd.queries)
    client.reset()
    assert run_until(loop, lambda: srv.ended)
    run_for(loop, 0.05)
    assert srv.ended == [sess] and nothing_left(loop, sess) and sess.identq is None


def test_close_is_idempotent(loop, server):
    srv = server()
    client, sess = srv.client(b"\x05")
    sess.close()
    sess.close()
    assert srv.ended == [sess] and nothing_left(loop, sess)


def test_the_descriptions(server):
    srv = server()
    client, sess = srv.client()
    assert sess.title() is None
    sess.user, sess.realuser, sess.dst_host, sess.dst_port = "fred", "frederick", "ftp.example.org", 21
    assert sess.desc() == "Connect from fred(frederick)@127.0.0.1 to ftp.example.org (ftp)"
    sess.command = P.CMD_BIND
    assert sess.desc() == "Bind from fred(frederick)@127.0.0.1 for ftp.example.org (ftp)"
    sess.command = P.CMD_UDP
    assert sess.desc() == "UDP associate from fred(frederick)@127.0.0.1"
    sess.command, sess.dst_host, sess.dst_ip = P.CMD_CONNECT, None, None
    assert sess.desc() == "Connect from fred(frederick)@127.0.0.1 to Unspecified.Host (ftp)"
    assert sess.status() == sess.desc() + "; 0 bytes from the client, 0 to it"


def test_state_order():
    assert list(S.State) == sorted(S.State)
    assert [s.name for s in S.State] == ["PROXYHDR", "NEG", "WAIT", "BINDWAIT", "UDP", "RELAY", "CLOSED"]


def test_the_context_shares_one_buffer_and_waits_for_commands_at_the_end(loop, log):
    ctx = S.Context(parse_conf("permit 0/0\n"), loop, log, bufsize=1 << 16)
    assert len(ctx.buf) == 1 << 16 and ctx.mv.nbytes == 1 << 16
    assert ctx.ruleset is ctx.config.ruleset
    assert ctx.drain_commands in loop.close_hooks


# --- the way-out file (issue 14) -----------------------------------------------------------------

def with_wayout(srv, text):
    srv.ctx.config.wayout = W.parse_text(text, "up.conf")
    return srv


def test_wayout_deny_refuses_naming_its_line(loop, net, log, server):
    echo = net.echo_server()
    srv = with_wayout(server(), "direct 10.0.0.0/8\ndeny 127.0.0.0/8\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port))
    assert run_until(loop, lambda: client.eof)
    assert reply5(client.data)[0][0] == P.REP_NOT_ALLOWED
    assert echo.peers == []
    assert log.lines("notice") == [
        "refused -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 (%s): way out up.conf:2: denied by "
        "'deny 127.0.0.0/8'" % service_name(echo.port)]
    # SOCKS 4: 91
    client, sess = srv.client(connect4("127.0.0.1", echo.port))
    assert run_until(loop, lambda: client.eof)
    assert bytes(client.data) == P.reply4(P.S4_REJECTED)


def test_wayout_rules_refuse_first(loop, net, log, server):
    """sockd.conf refuses before the way-out file (and any upstream) is asked."""
    up = Scripted(loop, [])
    try:
        srv = with_wayout(server("deny 0/0 127.0.0.1/32\npermit 127.0.0.0/8\n"),
                          "sockd @=socks5://127.0.0.1:%d ALL\n" % up.port)
        client, sess = srv.client(GREETING + connect5("127.0.0.1", 9))
        assert run_until(loop, lambda: client.eof)
        assert reply5(client.data)[0][0] == P.REP_NOT_ALLOWED
        run_for(loop, 0.05)
        assert up.got == []
    finally:
        up.close()


def test_wayout_direct_is_todays_connect(loop, net, log, server):
    echo = net.echo_server()
    srv = with_wayout(server(), "direct 127.0.0.0/8\ndeny ALL\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"hi")
    assert run_until(loop, lambda: client.data.endswith(b"hi"))
    assert log.lines("notice")[0].endswith("(%s)" % service_name(echo.port))          # no "via"


def test_wayout_through_an_upstream(loop, net, log, server):
    """SOCKS 5 upstream: its reply's address reaches the client, then the
    destination's first bytes (which came with the reply), then the relay;
    the log line names the upstream, never the credentials."""
    dst = ("127.0.0.1", 4444)
    req = P.request5(1, *dst)
    up = Scripted(loop, [(4, b"\x05\x02"), (4 + 6, b"\x01\x00"),
                         (4 + 6 + len(req), P.reply5(0, "10.1.2.3", 5555) + b"banner\r\n")])
    try:
        srv = with_wayout(server(), "sockd @=socks5://u:pw@127.0.0.1:%d ALL\n" % up.port)
        client, sess = srv.client(GREETING + connect5(*dst) + b"early")
        assert run_until(loop, lambda: client.data.endswith(b"banner\r\n") and up.got and up.got[0].endswith(
            b"early"))
        (rep, addr, port), rest = reply5(client.data)
        assert (rep, addr, port, rest) == (0, "10.1.2.3", 5555, b"banner\r\n")
        assert up.got[0] == b"\x05\x02\x00\x02" + b"\x01\x01u\x02pw" + req + b"early"
        label = "socks5://127.0.0.1:%d" % up.port
        assert log.lines("notice")[0] == "connected -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 " \
            "(%s) via %s" % (service_name(4444), label)
        up.conns[0].send(b"more")
        assert run_until(loop, lambda: client.data.endswith(b"more"))
        assert sess.relay.n_rc == len(b"banner\r\nmore")
        assert not any("pw" in m for m in log.lines())
    finally:
        up.close()


def test_wayout_upstream_refusal_reaches_the_client(loop, net, log, server):
    up = Scripted(loop, [(3, b"\x05\x00"), (13, P.reply5(P.REP_REFUSED))])
    try:
        srv = with_wayout(server(), "sockd @=socks5://127.0.0.1:%d ALL\n" % up.port)
        client, sess = srv.client(GREETING + connect5("127.0.0.1", 4444))
        assert run_until(loop, lambda: client.eof)
        assert reply5(client.data)[0][0] == P.REP_REFUSED
        assert log.lines("notice") == [
            "failed -- Connect from unknown(unknown)@127.0.0.1 to 127.0.0.1 (%s).  Error code: upstream "
            "socks5://127.0.0.1:%d refused: connection refused (5)" % (service_name(4444), up.port)]
        assert nothing_left(loop, sess)
    finally:
        up.close()


def test_wayout_timeout_connect_while_an_upstream_is_silent(loop, net, log, server):
    up = Scripted(loop, [])
    try:
        srv = with_wayout(server("timeout connect 0.3\ntimeout upstream 0\npermit 127.0.0.0/8\n"),
                          "sockd @=socks5://127.0.0.1:%d ALL\n" % up.port)
        client, sess = srv.client(GREETING + connect5("127.0.0.1", 4444))
        assert run_until(loop, lambda: client.eof)
        assert reply5(client.data)[0][0] == P.REP_TTL_EXPIRED
        assert nothing_left(loop, sess)
        assert sess.aux is None
        assert up.conns[0].recv(1) == b""            # sockd's end of the silent upstream is closed
    finally:
        up.close()


def bind5(ip, port):
    return P.request5(P.CMD_BIND, ip, port)


@pytest.mark.parametrize("peer,ok", [("127.0.0.1", True), ("127.0.0.9", False)])
def test_wayout_bind_through_an_upstream(loop, net, log, server, peer, ok):
    """The upstream's first reply (its own address where it announced
    0.0.0.0) is the client's first; its second, checked against the host
    the request named, the client's second; then the relay."""
    req = bind5("127.0.0.1", 21)
    up = Scripted(loop, [(3, b"\x05\x00"), (3 + len(req), P.reply5(0, "0.0.0.0", 40000))])
    try:
        srv = with_wayout(server(), "sockd @=socks5://127.0.0.1:%d ALL\n" % up.port)
        client, sess = srv.client(GREETING + req)
        assert run_until(loop, lambda: len(client.data) >= 12)
        (rep, addr, port), _ = reply5(client.data)
        assert (rep, addr, port) == (0, "127.0.0.1", 40000)
        assert sess.state == S.BINDWAIT
        up.conns[0].send(P.reply5(0, peer, 2020) + b"from the peer")
        if not ok:
            assert run_until(loop, lambda: client.eof)
            assert client.data.endswith(P.reply5(P.REP_NOT_ALLOWED))
            assert log.having("connected to wrong host 127.0.0.9 (2020)")
            return
        assert run_until(loop, lambda: client.data.endswith(b"from the peer"))
        assert P.reply5(0, "127.0.0.1", 2020) in bytes(client.data)
        label = "socks5://127.0.0.1:%d" % up.port
        assert log.having("connected -- Bind from unknown(unknown)@127.0.0.1 for 127.0.0.1 (%s) via %s: "
                          "127.0.0.1 port 2020 connected" % (service_name(21), label))
        client.write(b"to the peer")
        assert run_until(loop, lambda: up.got[0].endswith(b"to the peer"))
    finally:
        up.close()


def test_wayout_bind_unnamed_peer_is_judged(loop, net, log, server):
    req = bind5("0.0.0.0", 0)
    up = Scripted(loop, [(3, b"\x05\x00"), (3 + len(req), P.reply5(0, "10.0.0.1", 40000) +
                                             P.reply5(0, "10.9.9.9", 20))])
    try:
        srv = with_wayout(server("permit 127.0.0.0/8 127.0.0.0/8\n"), "sockd @=socks5://127.0.0.1:%d ALL\n" % up.port)
        client, sess = srv.client(GREETING + req)
        assert run_until(loop, lambda: client.eof)
        assert client.data.endswith(P.reply5(P.REP_NOT_ALLOWED))
        assert log.having("refused -- Bind from unknown(unknown)@127.0.0.1 for 0.0.0.0 (0) via socks5://127.0.0.1:"
                          "%d: connection from 10.9.9.9 port 20" % up.port)
        assert nothing_left(loop, sess)
    finally:
        up.close()


@pytest.mark.parametrize("credentials", [None, ("up", "uppw")])
def test_wayout_never_forwards_the_clients_password(loop, net, log, server, passwd, credentials):
    """The client logs in with RFC 1929; the upstream gets the URL's
    credentials (offered with method 0), or none: never the client's."""
    dst = ("127.0.0.1", 4444)
    req = P.request5(1, *dst)
    greeting = P.greeting5([0, 2] if credentials else [0])
    auth = P.userpass_request(*credentials) if credentials else b""
    script = [(len(greeting), b"\x05\x02" if credentials else b"\x05\x00")]
    if credentials:
        script.append((len(greeting) + len(auth), b"\x01\x00"))
    script.append((len(greeting) + len(auth) + len(req), P.reply5(0, "10.1.2.3", 5555)))
    up = Scripted(loop, script)
    try:
        url = "socks5://%s127.0.0.1:%d" % ("%s:%s@" % credentials if credentials else "", up.port)
        srv = with_wayout(server("methods username\npasswd %s\npermit *=alice 127.0.0.0/8\n" % passwd),
                          "sockd @=%s ALL\n" % url)
        client, sess = srv.client(P.greeting5([P.METHOD_USERPASS]) + P.userpass_request("alice", "right")
                                  + connect5(*dst))
        assert run_until(loop, lambda: len(client.data) >= 4 + 10)
        assert up.got[0] == greeting + auth + req
        assert b"right" not in up.got[0] and b"alice" not in up.got[0]
        assert log.having("connected -- Connect from alice(unknown)@127.0.0.1")
    finally:
        up.close()


# --- the metrics' counts (Context.counts, metrics.py) ------------------------------------------------


def outcomes(ctx):
    return {k[1:]: v for k, v in ctx.counts.items() if k[0] == MX.SESSIONS}


def test_counts_of_a_connected_refused_and_failed_session(loop, net, server):
    echo = net.echo_server()
    srv = server("deny 127.0.0.0/8 127.0.0.2/32\npermit 0/0\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"hi")
    assert run_until(loop, lambda: client.data.endswith(b"hi"))
    assert S.live_counts(srv.ctx.sessions) == (2, 2, 0, 0)       # bytes of a relay still open
    client.shutdown()
    assert run_until(loop, lambda: client.eof and not srv.ctx.sessions)
    c2, _ = srv.client(GREETING + connect5("127.0.0.2", echo.port))
    assert run_until(loop, lambda: c2.eof)
    c3, _ = srv.client(GREETING + connect5("127.0.0.1", closed_port()))
    assert run_until(loop, lambda: c3.eof)
    c = srv.ctx.counts
    assert outcomes(srv.ctx) == {("connect", "connected"): 1, ("connect", "refused"): 1, ("connect", "failed"): 1}
    assert c[(MX.RULE, "unit.conf:1")] == 1 and c[(MX.RULE, "unit.conf:2")] == 2
    assert sum(v for k, v in c.items() if k[0] == MX.REPLY) == 3     # each request's reply, once
    assert c[(MX.AUTH, "none", "ok")] == 3
    r = MX.report(c, srv.ctx.stats, S.live_counts(srv.ctx.sessions))
    assert r[(MX.ACCEPTED,)] == 3 and r[(MX.BYTES, "in")] == 2 and r[(MX.BYTES, "out")] == 2


def test_counts_of_sessions_that_end_before_their_request(loop, log, server):
    srv = server("timeout negotiate 0.1\npermit 0/0\n")
    c1, _ = srv.client(b"\x05\x01")                                   # never finishes: timed out
    c2, _ = srv.client(b"GET / HTTP/1.0\r\n\r\n")                     # a protocol error
    c3, _ = srv.client(P.greeting5([P.METHOD_USERPASS]))             # no acceptable method
    c4, s4 = srv.client(b"\x05")                                      # leaves
    c4.close()
    assert run_until(loop, lambda: c1.eof and c2.eof and c3.eof and not srv.ctx.sessions)
    assert outcomes(srv.ctx) == {("none", "timed_out"): 1, ("none", "error"): 1, ("none", "refused"): 1,
                                 ("none", "closed"): 1}
    assert not any(k[0] == MX.REPLY for k in srv.ctx.counts)       # no request, no reply to one


def test_counts_of_a_connect_that_times_out_and_of_identd(loop, net, log, server, monkeypatch):
    identd = Identd(loop, net, lambda q: "silent")
    monkeypatch.setattr(I, "IDENT_PORT", identd.port)
    srv = server("timeout connect 0.1\npermit ?=I 127.0.0.0/8\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", 80))
    assert run_until(loop, lambda: client.eof)
    assert outcomes(srv.ctx) == {("connect", "timed_out"): 1}


@pytest.mark.parametrize("own, pending, forgotten", [(True, 0, True), (True, 1, False), (False, 0, False)])
def test_the_close_leaves_the_registrations_to_close_only_when_no_one_else_holds_the_sockets(
        loop, net, server, monkeypatch, own, pending, forgotten):
    """A worker's own sockets (ctx.own_sockets) end their epoll
    registrations with their close(2); not while a shell command's child
    may be between its fork and exec (runner.pending), nor when a parent
    shares the client's descriptor (a fork-model child, inetd)."""
    echo = net.echo_server()
    srv = server()
    srv.ctx.own_sockets = own
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"x")
    assert run_until(loop, lambda: client.data.endswith(b"x"))
    calls = []
    monkeypatch.setattr(loop, "forget", lambda fd: (calls.append("forget"), loop.handlers.pop(fd, None)))
    real_remove = loop.remove
    monkeypatch.setattr(loop, "remove", lambda fd: (calls.append("remove"), real_remove(fd)))
    monkeypatch.setattr(srv.ctx.runner, "pending", pending)
    sess.close()
    assert calls == (["forget"] * 2 if forgotten else ["remove"] * 2)
    assert nothing_left(loop, sess) and not (set(epoll_masks(loop)) & {sess.cfd})

"""sockd.bind: the BIND listener that waits for the application server.

A real BindWait on a real sockd.loop.Loop; the application server is a
loopback TCP client of the test (from 127.0.0.1, or from 127.0.0.2 to be
the wrong host), and the owner is a fake session with exactly the
interface bind.py documents (ctx, src_key, dst_ip, dst_host, dst_port,
local_ip, desc(), granted(), fail(), connect_failed(), over_limit(),
bound(), judge_peer(), close()).  Checked: the listener's address and
port (the kernel's choice, or the one asked for within ``bind ports``),
the first reply, one accepted peer handed over, the wrong peer refused
under ``bind check-peer``, a peer the request did not name handed to the
session to judge, ``limit binds`` counted while listening and given back,
the route file's address, and the listener released every way out.
"""

import socket

import pytest

from sockd import bind as B
from sockd import limits as LI
from sockd import protocol as P
from sockd import route as RT
from sockd import rules as R

from loopkit import closed_port, parse_conf, run_until, watched


class Ctx:
    def __init__(self, config, loop, log, bind_limits=None):
        self.config, self.loop, self.log = config, loop, log
        self.bind_limits = bind_limits


class FakeSession:
    def __init__(self, ctx, dst_ip="127.0.0.1", dst_port=21, dst_host=None, local_ip="127.0.0.1",
                 grant=True):
        self.ctx = ctx
        self.src_key = R.ip_key("127.0.0.1")
        self.dst_ip, self.dst_port, self.dst_host, self.local_ip = dst_ip, dst_port, dst_host, local_ip
        self.grant = grant
        self.calls = []
        self.wait = None

    def desc(self):
        return "Bind from fred(unknown)@127.0.0.1 for %s (ftp)" % (self.dst_host or self.dst_ip)

    def granted(self, address, port):
        self.calls.append(("granted", address, port))
        return self.grant

    def fail(self, rep, detail=None):
        self.calls.append(("fail", rep, detail))
        self.close()

    def connect_failed(self, err):
        self.calls.append(("connect_failed", err))
        self.close()

    def over_limit(self, reason, log_it):
        self.calls.append(("over_limit", reason, log_it))
        self.close()

    def bound(self, conn, ip, port):
        self.calls.append(("bound", ip, port))
        self.conn = conn

    def judge_peer(self):
        self.calls.append(("judge_peer",) + self.wait.peer)

    def close(self):
        self.calls.append(("close",))
        self.wait.release()

    def kinds(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def bindwait(loop, log, net):
    made = []

    def make(conf="", bind_limits=None, **kw):
        sess = FakeSession(Ctx(parse_conf(conf + "permit 0/0\n"), loop, log, bind_limits), **kw)
        sess.wait = B.BindWait(sess)
        made.append(sess)
        return sess
    yield make
    for sess in made:
        sess.wait.release()
        if getattr(sess, "conn", None) is not None:
            sess.conn.close()


def started(sess):
    assert sess.wait.start() is True
    kind, address, port = sess.calls[0]
    assert kind == "granted"
    return address, port


def test_listens_facing_the_server_and_hands_over_the_one_peer(loop, net, log, bindwait):
    sess = bindwait()
    address, port = started(sess)
    assert address == "127.0.0.1" and port != 21          # a well-known port is not taken
    assert sess.wait.fd in watched(loop)
    assert log.lines("info") == ["bind -- Bind from fred(unknown)@127.0.0.1 for 127.0.0.1 (ftp): "
                                 "listening on 127.0.0.1 port %d" % port]
    app = net.connect((address, port))
    assert run_until(loop, lambda: "bound" in sess.kinds())
    assert sess.calls[1] == ("bound", "127.0.0.1", app.getsockname()[1])
    assert sess.conn.getpeername() == app.getsockname()
    assert sess.wait.lsock is None and sess.wait.fd not in watched(loop)    # exactly one peer


def test_the_wrong_host_is_refused_under_check_peer(loop, net, bindwait):
    sess = bindwait()
    address, port = started(sess)
    app = net.connect((address, port), source="127.0.0.2")
    assert run_until(loop, lambda: "fail" in sess.kinds())
    assert sess.calls[1] == ("fail", P.REP_NOT_ALLOWED,
                             ". Error: connected to wrong host 127.0.0.2 (%d)" % app.getsockname()[1])
    assert sess.wait.lsock is None
    app.settimeout(2)
    assert app.recv(10) == b""                            # the wrong host is hung up on


def test_without_check_peer_another_host_is_for_the_session_to_judge(loop, net, bindwait):
    sess = bindwait("bind check-peer no\n")
    address, port = started(sess)
    app = net.connect((address, port), source="127.0.0.2")
    assert run_until(loop, lambda: "judge_peer" in sess.kinds())
    assert sess.calls[1] == ("judge_peer", "127.0.0.2", app.getsockname()[1])
    assert sess.wait.lsock is None and sess.wait.conn is not None     # no longer listening; held
    conn, ip, peer_port = sess.wait.take()
    assert (ip, peer_port) == ("127.0.0.2", app.getsockname()[1]) and sess.wait.conn is None
    conn.close()


def test_without_check_peer_the_named_host_needs_no_judging(loop, net, bindwait):
    sess = bindwait("bind check-peer no\n")
    address, port = started(sess)
    net.connect((address, port))
    assert run_until(loop, lambda: "bound" in sess.kinds())


def test_an_unspecified_destination_takes_the_address_the_client_reached(loop, net, bindwait):
    sess = bindwait(dst_ip="0.0.0.0", local_ip="127.0.0.3")
    address, port = started(sess)
    assert address == "127.0.0.3"
    net.connect((address, port), source="127.0.0.2")       # no host to check against: the rules judge
    assert run_until(loop, lambda: "judge_peer" in sess.kinds())
    assert "bound" not in sess.kinds()


def test_closing_while_the_peer_is_judged_hangs_up_on_it(loop, net, bindwait):
    sess = bindwait(dst_ip="0.0.0.0")
    address, port = started(sess)
    app = net.connect((address, port))
    assert run_until(loop, lambda: "judge_peer" in sess.kinds())
    sess.close()
    assert sess.wait.conn is None
    app.settimeout(2)
    assert app.recv(10) == b""


def test_the_kernel_chooses_the_port_unless_bind_ports_allows_the_one_asked_for(bindwait):
    want = closed_port()                                  # the port of a service that has stopped
    assert want >= 1024
    assert started(bindwait(dst_port=want))[1] != want
    assert started(bindwait("bind ports %d-%d\n" % (want - 1, want + 1), dst_port=want))[1] == want
    outside = closed_port()
    assert started(bindwait("bind ports %d-%d\n" % (want, want), dst_port=outside))[1] not in (outside, 0)


def test_listen_port():
    assert B.listen_port(40000, None) == 0
    assert B.listen_port(40000, (40000, 40010)) == 40000 and B.listen_port(40010, (40000, 40010)) == 40010
    assert B.listen_port(39999, (40000, 40010)) == 0 and B.listen_port(21, (40000, 40010)) == 0


def test_a_busy_port_gives_another(net, bindwait):
    busy = net.listener("127.0.0.1").getsockname()[1]
    sess = bindwait("bind ports 1024-65535\n", dst_port=busy)
    port = started(sess)[1]
    assert port != busy and port > 0


def test_pending_binds_are_counted_while_listening(loop, net, bindwait):
    lim = LI.Limits(binds=2)
    first, second, third = (bindwait(bind_limits=lim) for _ in range(3))
    address, port = started(first)
    started(second)
    assert third.wait.start() is False
    assert third.calls == [("over_limit", "limit binds", True), ("close",)]
    assert not any(c[0] == "granted" for c in third.calls)
    net.connect((address, port))                          # the first has its peer: no longer pending
    assert run_until(loop, lambda: "bound" in first.kinds())
    fourth = bindwait(bind_limits=lim)
    started(fourth)
    second.close()                                        # so is one that ends while listening
    fourth.close()
    assert lim.admit_bind(R.ip_key("127.0.0.1"))[0] == LI.OK


def test_a_client_gone_before_the_first_reply_releases_the_listener(loop, bindwait):
    sess = bindwait(grant=False)
    assert sess.wait.start() is False
    assert sess.kinds() == ["granted", "close"]
    assert sess.wait.lsock is None and not watched(loop)


def routed(sess, text):
    """The route file as the configuration holds it once read (sockd.route)."""
    sess.ctx.config.route_table = RT.parse(text, "routes")[0]
    return sess


def test_the_route_file_gives_the_listening_address(bindwait):
    sess = routed(bindwait(), "127.0.0.4 127.0.0.0 255.0.0.0\n")
    assert started(sess)[0] == "127.0.0.4"


def test_no_route_to_the_server_answers_network_unreachable(log, bindwait):
    sess = routed(bindwait(), "127.0.0.4 10.0.0.0/8\n")
    assert sess.wait.start() is False
    assert sess.calls[0] == ("fail", P.REP_NET_UNREACHABLE, None)
    assert log.lines("error") == ["***Cannot find appropriate interface to communicate with 127.0.0.1"]


def test_a_listener_that_cannot_be_opened_fails_with_the_reason(bindwait):
    sess = routed(bindwait(), "192.0.2.1 127.0.0.0/8\n")                # not an address of this host
    assert sess.wait.start() is False
    assert sess.calls[0] == ("fail", P.REP_FAILURE, ".  Error code: bind Cannot assign requested address")


def test_ipv6_destinations_get_an_ipv6_listener(loop, net, bindwait):
    sess = bindwait(dst_ip="::1", local_ip="::1")
    address, port = started(sess)
    assert address == "::1" and sess.wait.family == socket.AF_INET6
    net.connect((address, port))
    assert run_until(loop, lambda: "bound" in sess.kinds())


def test_close_is_the_sessions_and_release_is_idempotent(loop, bindwait):
    sess = bindwait()
    started(sess)
    sess.wait.close()                                     # the loop's error handler
    assert sess.kinds()[-1] == "close" and sess.wait.lsock is None
    sess.wait.release()
    assert not watched(loop)


def test_facing_address():
    assert B.facing_address(socket.AF_INET, "127.0.0.1", 21, "fallback") == "127.0.0.1"
    assert B.facing_address(socket.AF_INET, "127.0.0.9", 0, "fallback") == "127.0.0.1"
    for unspecified in B.UNSPECIFIED:
        assert B.facing_address(socket.AF_INET, unspecified, 21, "fallback") == "fallback"
    assert B.facing_address(socket.AF_INET, "::1", 21, "fallback") == "fallback"   # of the other family

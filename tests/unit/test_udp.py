"""sockd.udp: the datagram relay of one UDP ASSOCIATE.

A real Association on a real sockd.loop.Loop with loopback UDP sockets:
the client, an echo server and strangers are UDP peers on the same loop,
and the owner is a small fake session with exactly the interface the
module documents (ctx, client_ip, local_ip, src_key, user, desc(),
touch(), close()).  Checked: an echo both ways with the SOCKS 5 UDP
header, datagrams dropped from other addresses and ports (strict, or the
port learnt), fragments and bad headers dropped, denied destinations
dropped and logged once, replies only from permitted hosts, the verdict
memo per (address, port, name) and re-decided for a new configuration,
names resolved once through the process's resolver cache (answers and
failures; shared with every association and session of the process), at
most two lookups at once on a real helper pool, and the end.
"""

import socket
import threading

import pytest

from sockd import decision as D
from sockd import health as H
from sockd import pools as PO
from sockd import protocol as P
from sockd import resolver as RS
from sockd import rules as R
from sockd import udp as U
from sockd import wayout as W

from loopkit import Scripted, parse_conf, run_for, run_until, watched


class Ctx:
    """What the association takes from the session's context."""

    def __init__(self, config, loop, log, bufsize=1 << 16):
        self.config, self.loop, self.log = config, loop, log
        self.buf = bytearray(bufsize)
        self.mv = memoryview(self.buf)
        self.resolver = RS.Resolver(self)


class FakeSession:
    def __init__(self, ctx, client_ip="127.0.0.1", user=None):
        self.ctx = ctx
        self.client_ip = client_ip
        self.local_ip = client_ip
        self.src_key = R.ip_key(client_ip)
        self.user = user
        self.method = None
        self.prot = None
        self.tplan = None           # no traffic control (test_shaping.py has the association under it)
        self.touched = 0
        self.closed = 0
        self.assoc = None

    def desc(self):
        return "UDP associate from unknown(unknown)@%s" % self.client_ip

    def touch(self):
        self.touched += 1

    def close(self):
        self.closed += 1
        self.assoc.release()


class Setup:
    """A client, an echo server and an association between them."""

    def __init__(self, loop, net, log, conf="permit 127.0.0.0/8 127.0.0.1/32\n", announce=True, host="127.0.0.1"):
        self.loop, self.net, self.log = loop, net, log
        self.client = net.udp(host)
        self.echo = net.udp(host, echo=True)
        self.ctx = Ctx(parse_conf(conf.format(echo=self.echo.port)), loop, log)
        self.sess = FakeSession(self.ctx, host)
        self.assoc = self.sess.assoc = U.Association(self.sess, self.client.port if announce else 0)
        self.net.keep(self)
        self.advertised, self.port = self.assoc.start()
        self.relay = (host, self.port)

    def send(self, payload, to=None, port=None, frm=None, frag=0):
        to = to or self.echo.address[0]
        header = bytearray(P.udp_header(to, port or self.echo.port))
        header[2] = frag
        (frm or self.client).send(bytes(header) + payload, self.relay)

    def close(self):
        self.assoc.release()


@pytest.fixture
def setup(loop, net, log):
    return lambda **kw: Setup(loop, net, log, **kw)


def test_an_echo_goes_both_ways_with_the_socks5_header(loop, setup):
    s = setup()
    assert s.advertised == "127.0.0.1"
    s.send(b"ping")
    assert run_until(loop, lambda: s.client.got)
    [(payload, source)] = s.echo.got
    assert payload == b"ping" and source[0] == "127.0.0.1" and source[1] != s.port   # from the remote socket
    [(reply, relay)] = s.client.got
    assert relay == s.relay
    assert reply == P.udp_header("127.0.0.1", s.echo.port) + b"ping"
    a = s.assoc
    assert (a.d_in, a.n_in, a.d_out, a.n_out, a.dropped) == (1, 4, 1, 4, 0)
    assert s.sess.touched == 2
    assert a.summary() == "4 bytes in 1 datagrams from 127.0.0.1, 4 bytes in 1 datagrams to it, 0 dropped"


def test_datagrams_from_another_address_are_dropped(loop, net, setup):
    s = setup()
    stranger = net.udp("127.0.0.2")
    s.send(b"not yours", frm=stranger)
    s.send(b"mine")
    assert run_until(loop, lambda: s.client.got)
    assert [p for p, _ in s.echo.got] == [b"mine"]
    assert s.assoc.dropped == 1 and stranger.got == []


@pytest.mark.parametrize("strict", ["yes", "no"])
def test_another_address_is_dropped_even_from_the_clients_port(loop, net, setup, strict):
    s = setup(conf="udp strict %s\npermit 127.0.0.0/8 127.0.0.1/32\n" % strict)
    impostor = net.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    impostor.bind(("127.0.0.2", s.client.port))                  # the client's port, another address
    header = P.udp_header("127.0.0.1", s.echo.port)
    impostor.sendto(header + b"not yours", s.relay)
    s.send(b"mine")
    assert run_until(loop, lambda: s.client.got)
    assert [p for p, _ in s.echo.got] == [b"mine"]
    assert s.assoc.dropped == 1 and s.assoc.client_port == s.client.port


def test_strict_drops_another_port_of_the_client(loop, net, setup):
    s = setup()
    other = net.udp("127.0.0.1")
    s.send(b"other port", frm=other)
    s.send(b"announced port")
    assert run_until(loop, lambda: s.client.got)
    assert [p for p, _ in s.echo.got] == [b"announced port"]
    assert s.assoc.dropped == 1


def test_not_strict_learns_the_new_port(loop, net, setup):
    s = setup(conf="udp strict no\npermit 127.0.0.0/8 127.0.0.1/32\n")
    s.send(b"first")
    assert run_until(loop, lambda: s.client.got)
    other = net.udp("127.0.0.1")
    s.send(b"moved", frm=other)
    assert run_until(loop, lambda: other.got)
    assert other.got[0][0].endswith(b"moved") and len(s.client.got) == 1
    assert s.assoc.client_port == other.port and s.assoc.dropped == 0


def test_an_announced_port_of_zero_is_learnt_from_the_first_datagram(loop, net, setup):
    s = setup(announce=False)
    assert s.assoc.client_port is None
    s.send(b"hello")
    assert run_until(loop, lambda: s.client.got)
    assert s.assoc.client_port == s.client.port
    other = net.udp("127.0.0.1")
    s.send(b"x", frm=other)
    run_until(loop, lambda: s.assoc.dropped)
    assert s.assoc.dropped == 1


def test_fragments_and_bad_headers_are_dropped(loop, setup):
    s = setup()
    s.send(b"fragment", frag=1)
    s.client.send(b"\x00\x01\x00\x01" + bytes(6), s.relay)         # RSV not zero
    s.client.send(b"\x00\x00\x00\x09", s.relay)                   # no such address type
    s.client.send(b"\x00", s.relay)                               # short
    s.send(b"whole")
    assert run_until(loop, lambda: s.client.got)
    assert [p for p, _ in s.echo.got] == [b"whole"]
    assert s.assoc.dropped == 4 and s.assoc.d_in == 1


def test_a_denied_destination_is_dropped_and_logged_once(loop, net, setup, log):
    s = setup(conf="permit 127.0.0.0/8 127.0.0.1/32 eq {echo}\n")
    elsewhere = net.udp("127.0.0.1")
    for _ in range(3):
        s.send(b"no", port=elsewhere.port)
    s.send(b"yes")
    assert run_until(loop, lambda: s.client.got)
    run_for(loop, 0.02)
    assert elsewhere.got == [] and s.assoc.dropped == 3
    assert log.lines("notice") == [
        "refused -- UDP associate from unknown(unknown)@127.0.0.1: datagram to 127.0.0.1 (%d) no matching rule;"
        " dropped" % elsewhere.port]


def test_the_log_line_names_the_deciding_line_and_the_guard(loop, setup, log):
    s = setup(conf="deny-private-destinations yes\npermit 0/0\n")
    s.send(b"to loopback")
    run_until(loop, lambda: s.assoc.dropped)
    assert s.echo.got == []
    assert log.lines("notice") == [
        "refused -- UDP associate from unknown(unknown)@127.0.0.1: datagram to 127.0.0.1 (%d) by unit.conf:2 "
        "(127.0.0.1 is private to this host (deny-private-destinations)); dropped" % s.echo.port]


def test_replies_only_from_hosts_the_client_may_reach(loop, net, setup):
    s = setup(conf="permit 127.0.0.0/8 127.0.0.1/32 eq {echo}\n")
    s.send(b"ping")
    assert run_until(loop, lambda: s.client.got)
    remote_port = s.assoc.rsocks[socket.AF_INET].getsockname()[1]
    stranger = net.udp("127.0.0.1")
    stranger.send(b"unsolicited", ("127.0.0.1", remote_port))
    run_until(loop, lambda: s.assoc.dropped)
    assert len(s.client.got) == 1 and s.assoc.dropped == 1


def test_verdicts_are_memoised_and_decided_again_for_a_new_configuration(loop, setup, monkeypatch):
    asked = []
    real = D.decide

    def counting(ask, cfg):
        asked.append((tuple(ask.dsts), ask.port, ask.dst_host, ask.command, ask.ident_checks))
        return real(ask, cfg)
    monkeypatch.setattr(D, "decide", counting)
    s = setup()
    for i in range(3):
        s.send(b"ping %d" % i)
        assert run_until(loop, lambda: len(s.client.got) == i + 1)
    # one question for the destination, whose replies come from the same (address, port)
    assert asked == [(("127.0.0.1",), s.echo.port, None, D.UDP, False)]
    s.ctx.config = parse_conf("deny 0/0\n")        # a reload (reload recheck yes)
    s.send(b"after the reload")
    run_until(loop, lambda: s.assoc.dropped)
    assert len(asked) == 2 and len(s.echo.got) == 3 and s.assoc.dropped == 1


def test_the_memo_is_bounded(setup):
    s = setup()
    for port in range(1, U.MAX_MEMO + 50):
        s.assoc.permitted("127.0.0.1", port)
        assert len(s.assoc.memo) <= U.MAX_MEMO


def test_names_are_resolved_by_sockd_once(loop, setup, monkeypatch):
    looked_up = []

    def resolve(name, port):
        looked_up.append(name)
        return [(socket.AF_INET, "127.0.0.1")]
    monkeypatch.setattr(RS, "resolve", resolve)
    s = setup()
    s.send(b"one", to="Echo.Test")
    s.send(b"two", to="echo.test")
    assert run_until(loop, lambda: len(s.client.got) == 2)
    assert looked_up == ["echo.test"]
    assert [p for p, _ in s.echo.got] == [b"one", b"two"]
    # the reply says where it came from: the address
    assert s.client.got[0][0] == P.udp_header("127.0.0.1", s.echo.port) + b"one"


def test_a_rule_naming_the_host_applies_to_datagrams_sent_by_name(loop, setup, monkeypatch, log):
    monkeypatch.setattr(RS, "resolve", lambda name, port: [(socket.AF_INET, "127.0.0.1")])
    s = setup(conf="deny 0/0 blocked.test\npermit 127.0.0.0/8 127.0.0.1/32\n")
    s.send(b"by name", to="blocked.test")
    s.send(b"by address")
    assert run_until(loop, lambda: s.client.got)
    assert [p for p, _ in s.echo.got] == [b"by address"]
    assert log.having("datagram to blocked.test (%d) by unit.conf:1; dropped" % s.echo.port)


def test_a_name_that_does_not_resolve_is_dropped_and_logged_once(loop, setup, monkeypatch, log):
    def fail(name, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(RS, "resolve", fail)
    s = setup()
    s.send(b"a", to="nosuch.test")
    s.send(b"b", to="nosuch.test")
    run_until(loop, lambda: s.assoc.dropped == 2)
    assert s.assoc.dropped == 2
    assert log.lines("notice") == [
        "failed -- UDP associate from unknown(unknown)@127.0.0.1: cannot resolve nosuch.test"]


class HeldExecutor:
    """An executor that keeps its jobs until the test lets them run."""

    def __init__(self):
        self.jobs = []

    def submit(self, kind, requester, fn, args, done):
        self.jobs.append((fn, args, done))

    def release(self):
        jobs, self.jobs = self.jobs, []
        for fn, args, done in jobs:
            done(fn(*args), None)

    def shutdown(self):
        pass


def test_datagrams_waiting_for_a_name_are_bounded(loop, setup, monkeypatch):
    monkeypatch.setattr(RS, "resolve", lambda name, port: [(socket.AF_INET, "127.0.0.1")])
    held = loop.executor = HeldExecutor()
    s = setup()
    for i in range(U.MAX_PENDING + 4):
        s.send(b"%d" % i, to="slow.test")
    run_until(loop, lambda: s.assoc.dropped == 4)
    assert len(held.jobs) == 1 and len(s.assoc.pending["slow.test"]) == U.MAX_PENDING
    held.release()
    assert run_until(loop, lambda: len(s.echo.got) == U.MAX_PENDING)
    assert [p for p, _ in s.echo.got] == [b"%d" % i for i in range(U.MAX_PENDING)]
    assert s.assoc.pending == {}


def test_an_answer_after_the_end_is_ignored(loop, setup, monkeypatch):
    monkeypatch.setattr(RS, "resolve", lambda name, port: [(socket.AF_INET, "127.0.0.1")])
    held = loop.executor = HeldExecutor()
    s = setup()
    s.send(b"late", to="slow.test")
    run_until(loop, lambda: held.jobs)
    s.assoc.release()
    held.release()
    assert s.echo.got == [] and s.assoc.rsocks == {}


def test_release_closes_every_socket_and_close_ends_the_session(loop, setup):
    s = setup()
    s.send(b"ping")
    assert run_until(loop, lambda: s.client.got)
    fds = {s.assoc.cfd} | {r.fileno() for r in s.assoc.rsocks.values()}
    assert fds <= watched(loop)
    s.assoc.close()                                  # the loop's error handler: the session ends it
    assert s.sess.closed == 1
    assert s.assoc.csock is None and s.assoc.rsocks == {} and not fds & watched(loop)
    s.assoc.release()                                # twice is harmless


def test_udp_advertise_names_the_address_given_to_the_client(setup):
    s = setup(conf="udp advertise 192.0.2.5\npermit 127.0.0.0/8\n")
    assert (s.advertised, s.port) == ("192.0.2.5", s.assoc.csock.getsockname()[1])


def test_an_association_over_ipv6(loop, setup):
    s = setup(conf="permit ::1/128 ::1/128\n", host="::1")
    s.send(b"ping6")
    assert run_until(loop, lambda: s.client.got)
    assert s.client.got[0][0] == P.udp_header("::1", s.echo.port) + b"ping6"


RULE = R.Rule(R.DENY, R.AddrSpec.any(), file="u.conf", line=3)


@pytest.mark.parametrize("verdict,text", [
    (D.Verdict(False, RULE), " by u.conf:3"),
    (D.Verdict(False, RULE, "it is private"), " by u.conf:3 (it is private)"),
    (D.Verdict(False, None, "no permit line"), " (no permit line)"),
    (D.Verdict(False), " no matching rule"),
])
def test_datagram_reason(verdict, text):
    assert U.datagram_reason(verdict) == text


# --- names: the process's resolver cache, and looked up a couple at a time (pools.py) ----------------------------

def test_a_failed_name_is_not_asked_again_for_a_while(loop, setup, monkeypatch, log):
    asked = []

    def fail(name, port):
        asked.append(name)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(RS, "resolve", fail)
    s = setup()
    for i in range(3):
        s.send(b"%d" % i, to="nosuch.test")
    assert run_until(loop, lambda: s.assoc.dropped == 3)
    assert asked == ["nosuch.test"]
    addresses, error, stored = s.ctx.resolver.cache.entries["nosuch.test"]
    assert addresses is None and error.strerror == "Name or service not known"
    # its time is up (resolve failure-life): asked again
    s.ctx.resolver.cache.entries["nosuch.test"] = (None, error, loop.now - s.ctx.config.resolve_failure_life - 1)
    s.send(b"again", to="nosuch.test")
    assert run_until(loop, lambda: s.assoc.dropped == 4)
    assert asked == ["nosuch.test"] * 2 and s.assoc.unlooked == 0
    assert len(log.having("cannot resolve nosuch.test", "notice")) == 1


def test_associations_share_the_processs_cache(loop, net, log, monkeypatch):
    """A name one association has looked up is not looked up again for
    another association of the same process: a hit, without a helper."""
    asked = []

    def resolve(name, port):
        asked.append(name)
        return [(socket.AF_INET, "127.0.0.1")]
    monkeypatch.setattr(RS, "resolve", resolve)
    one = Setup(loop, net, log)
    two = Setup(loop, net, log)
    two.ctx = two.sess.ctx = two.assoc.ctx = one.ctx
    one.send(b"first", to="echo.test")
    assert run_until(loop, lambda: one.client.got)
    loop.executor = HeldExecutor()                   # a lookup now would wait for ever
    two.send(b"second", to="echo.test")
    assert run_until(loop, lambda: two.client.got)
    assert asked == ["echo.test"] and loop.executor.jobs == []
    assert [p for p, _ in two.echo.got] == [b"second"]


def test_with_the_cache_off_every_datagram_to_a_name_is_looked_up(loop, setup, monkeypatch):
    asked = []

    def resolve(name, port):
        asked.append(name)
        return [(socket.AF_INET, "127.0.0.1")]
    monkeypatch.setattr(RS, "resolve", resolve)
    s = setup(conf="resolve cache 0\npermit 127.0.0.0/8 127.0.0.1/32\n")
    s.send(b"one", to="echo.test")
    assert run_until(loop, lambda: len(s.echo.got) == 1)
    s.send(b"two", to="echo.test")
    assert run_until(loop, lambda: len(s.echo.got) == 2)
    assert asked == ["echo.test"] * 2 and len(s.ctx.resolver.cache) == 0


@pytest.fixture
def pools(loop):
    ex = loop.executor = PO.ThreadExecutor(loop, 8, 1)
    gate = threading.Event()
    yield ex, gate
    gate.set()
    ex.shutdown()
    for t in ex.pools[PO.NAMES].threads:
        t.join(5)


def test_an_association_looks_up_two_names_at_once_and_drops_the_rest(loop, setup, monkeypatch, log, pools):
    """Hundreds of names that never resolve: two lookups take threads, the
    other datagrams are dropped, counted and logged once; once the
    association has gone, its answers are of no use and ignored."""
    ex, gate = pools
    asked = []

    def hangs(name, port):
        asked.append(name)
        assert gate.wait(5)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    monkeypatch.setattr(RS, "resolve", hangs)
    s = setup()
    for i in range(40):
        s.send(b"%d" % i, to="n%d.nowhere.test" % i)
    assert run_until(loop, lambda: s.assoc.d_in == 40 and len(asked) == 2)
    assert sorted(asked) == ["n0.nowhere.test", "n1.nowhere.test"] and s.assoc.gone is False
    assert (s.assoc.dropped, s.assoc.unlooked) == (38, 38)
    assert s.assoc.summary().endswith(", 38 dropped (38 to names beyond its lookups at once)")
    assert log.lines("notice") == [
        "dropped -- UDP associate from unknown(unknown)@127.0.0.1: datagram to n2.nowhere.test not looked up: 2 name "
        "lookups already under way for this client; logged at most once every 5 seconds"]
    assert ex.stats()["names_refused"] == 38
    s.assoc.release()
    assert s.assoc.gone
    gate.set()
    run_for(loop, 0.1)
    assert s.assoc.dropped == 38 and s.assoc.pending == {}


# --- through an upstream (the way-out file) ---------------------------------------------------------

class UpCtx(Ctx):
    def __init__(self, config, loop, log):
        super().__init__(config, loop, log)
        self.health = H.Health()

    def upstream_health(self):
        return self.health


def through_setup(loop, net, log, wayout_text, relay_reply=None):
    """An association whose way-out file names a scripted SOCKS 5 upstream
    that answers UDP ASSOCIATE with the address of ``relay`` (a UDP peer
    standing for the upstream's relay)."""
    relay = net.udp("127.0.0.1")
    req = P.request5(P.CMD_UDP, "0.0.0.0", 0)
    reply = relay_reply if relay_reply is not None else P.reply5(0, "0.0.0.0", relay.port)
    up = Scripted(loop, [(3, b"\x05\x00"), (3 + len(req), reply)])
    s = Setup(loop, net, log)
    s.ctx.__class__ = UpCtx
    s.ctx.health = H.Health()
    s.ctx.config.wayout = W.parse_text(wayout_text.format(up=up.port), "up.conf")
    return s, up, relay


def test_datagrams_through_an_upstream_relay(loop, net, log):
    s, up, relay = through_setup(loop, net, log, "deny 127.0.0.1/32 eq 9\nsockd @=socks5://127.0.0.1:{up} ALL\n")
    try:
        s.send(b"one")
        s.send(b"two")                      # waits with the first while the association is made
        assert run_until(loop, lambda: len(relay.got) == 2)
        assert [d for d, _ in relay.got] == [P.udp_header("127.0.0.1", s.echo.port) + b"one",
                                               P.udp_header("127.0.0.1", s.echo.port) + b"two"]
        assert s.echo.got == []             # nothing direct
        assert up.got[0] == b"\x05\x01\x00" + P.request5(P.CMD_UDP, "0.0.0.0", 0)
        assert log.having("connected -- UDP associate from unknown(unknown)@127.0.0.1: through "
                          "socks5://127.0.0.1:%d, its relay on 127.0.0.1 port %d" % (up.port, relay.port))
        # the relay answers: the client sees the host it names
        back = relay.got[0][1]
        relay.send(P.udp_header("127.0.0.1", s.echo.port) + b"answer", back)
        assert run_until(loop, lambda: s.client.got)
        assert s.client.got[0][0] == P.udp_header("127.0.0.1", s.echo.port) + b"answer"
        # only the relay speaks there; a host the rules refuse is dropped
        stranger = net.udp("127.0.0.1")
        stranger.send(P.udp_header("127.0.0.1", s.echo.port) + b"stranger", back)
        relay.send(P.udp_header("10.1.1.1", 53) + b"refused source", back)
        run_for(loop, 0.1)
        assert len(s.client.got) == 1
        # a deny line of the way-out file: dropped, logged once
        s.send(b"x", port=9)
        s.send(b"y", port=9)
        run_for(loop, 0.1)
        assert len(log.having("datagram to 127.0.0.1 (9): way out up.conf:1: denied by")) == 1
        assert len(relay.got) == 2
        s.close()
        assert up.conns[0].recv(10) == b""  # the upstream association ends with the client's
    finally:
        s.close()
        up.close()


def test_an_upstream_that_ends_its_association(loop, net, log):
    s, up, relay = through_setup(loop, net, log, "sockd @=socks5://127.0.0.1:{up} ALL\n")
    try:
        s.send(b"one")
        assert run_until(loop, lambda: relay.got)
        up.conns[0].close()
        assert run_until(loop, lambda: log.having("the upstream closed its association"))
        s.send(b"lost")
        run_for(loop, 0.1)
        assert len(relay.got) == 1 and s.assoc.dropped == 1
    finally:
        s.close()
        up.close()


def test_no_upstream_for_the_datagrams(loop, net, log):
    s, up, relay = through_setup(loop, net, log, "sockd @=socks5://127.0.0.1:{up} ALL\n",
                                 relay_reply=P.reply5(P.REP_NOT_ALLOWED))
    try:
        s.send(b"one")
        assert run_until(loop, lambda: log.having("failed -- "))
        assert log.having("datagrams through socks5://127.0.0.1:%d: upstream socks5://127.0.0.1:%d refused: "
                          "connection not allowed by ruleset (2)" % (up.port, up.port))
        s.send(b"two")
        run_for(loop, 0.05)
        assert s.assoc.dropped == 2 and relay.got == []
    finally:
        s.close()
        up.close()

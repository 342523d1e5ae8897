"""relay.ShapedRelay and ShapedProtectedRelay: a relay whose reads go
through its session's meter.  A real loop between loopback TCP
connections, as in test_relay.py, and a real traffic table.  Checked: the
rate (never above burst plus rate times the time, and close to it), a
paused direction's sender is not read (EPOLLIN off in the kernel) and is
woken by one timer, not by spinning; the other direction goes on; a
half-close gets through a paused direction; a quota with cut ends the
relay; GSS-API protection and shaping compose.  Past a direction's first
64 KiB a shaped plain relay splices, each splice no larger than the meter
allows."""

import os
import socket
import time

from sockd import config as C
from sockd import gss1961 as G
from sockd import meters as M
from sockd import relay as RL
from sockd import rules as R
from sockd.loop import EPOLLIN

from sockd import protocol as P

from loopkit import epoll_masks, run_for, run_until
from test_relay import Owner, count_splices, toy
from test_session import GREETING, Server, connect5
from test_udp import Ctx, FakeSession


def make(loop, net, conf, user="alice", protected=False, bufsize=None):
    cfg = C.parse_text(conf + "\npermit 0/0\n", "s.conf")
    tc = M.TrafficControl(M.TrafficTable(slots=64))
    plan = tc.plan(cfg, R.ip_key("127.0.0.1"), user, "username", None)
    meter = tc.meter(plan, cfg)
    app, c = net.tcp_pair(bufsize=bufsize)
    r, dest = net.tcp_pair(bufsize=bufsize)
    c.setblocking(False)
    r.setblocking(False)
    owner = Owner()
    buf = bytearray(1 << 16)
    if protected:
        prot = G.Protection(toy, toy, G.CONFIDENTIALITY, 1000)
        relay = RL.ShapedProtectedRelay(owner, loop, buf, memoryview(buf), c, r, None, prot, meter)
    else:
        relay = RL.ShapedRelay(owner, loop, buf, memoryview(buf), c, r, None, meter)
    owner.relay = relay
    client = net.peer(app)
    remote = net.peer(dest)
    relay.start(-1, -1)
    return relay, owner, client, remote, tc


def counting_takes(meter):
    """How often the meter takes the table's lock (every take does, once)."""
    calls = [0]
    real = meter.tt.acquire

    def acquire(timeout=None):
        calls[0] += 1
        return real(timeout)
    meter.tt.acquire = acquire
    return calls


def test_a_download_goes_at_the_rate_and_no_faster(loop, net, monkeypatch):
    moved = count_splices(monkeypatch)
    rate, burst = 400 << 10, 40 << 10
    relay, owner, client, remote, _ = make(loop, net, "limit bandwidth user alice %d burst %d" % (rate, burst))
    remote.write(os.urandom(4 << 20))
    start = time.monotonic()
    run_for(loop, 1.0)
    took = time.monotonic() - start
    got = len(client.data)
    assert got <= burst + rate * took + 1
    assert got >= 0.85 * rate * 1.0, got
    assert relay.n_rc == got
    # past the first 64 KiB the bytes were spliced, at the meter's pace all the same
    assert sum(moved) >= got - (128 << 10)
    assert "down paused" in relay.meter.shaped() and "by user alice" in relay.meter.shaped()


def test_a_paused_sender_is_not_read_and_one_timer_wakes_it(loop, net):
    relay, owner, client, remote, _ = make(loop, net, "limit bandwidth user alice 100K burst 32K")
    takes = counting_takes(relay.meter)
    remote.write(os.urandom(1 << 20))
    assert run_until(loop, lambda: relay.meter.paused[1])
    assert not relay.rmask & EPOLLIN and not epoll_masks(loop)[relay.rfd] & EPOLLIN
    assert relay.timer is not None
    run_for(loop, 0.5)
    # 100 KiB/s in takes of at least a twentieth of a second's worth: ~10 a second
    # (and as many failed ones at most), never a spin
    assert takes[0] <= 30, takes[0]
    # the other way is not limited by this direction's pause
    client.write(b"ping")
    assert run_until(loop, lambda: remote.data == b"ping")


def test_a_half_close_gets_through_a_paused_direction(loop, net):
    relay, owner, client, remote, _ = make(loop, net, "limit bandwidth user alice 200K burst 16K")
    data = os.urandom(60 << 10)
    remote.write(data, shutdown=True)
    assert run_until(loop, lambda: client.eof, timeout=2.0)
    assert bytes(client.data) == data and owner.closed == 0
    client.write(b"bye", shutdown=True)
    assert run_until(loop, lambda: owner.closed == 1)
    assert remote.data == b"bye"


def test_a_quota_with_cut_ends_the_relay(loop, net):
    relay, owner, client, remote, tc = make(loop, net, "quota user alice 300K per day")
    remote.write(os.urandom(2 << 20))
    assert run_until(loop, lambda: owner.closed == 1)
    assert relay.meter.cut[0] == "user alice"
    # cut within a count's worth of the quota
    assert 300 << 10 <= relay.n_rc <= (300 << 10) + M.COUNT_EVERY + (64 << 10)


def test_protection_and_shaping_compose(loop, net):
    relay, owner, client, remote, _ = make(loop, net, "limit bandwidth user alice 300K burst 32K", protected=True)
    back = os.urandom(200 << 10)
    remote.write(back, shutdown=True)
    start = time.monotonic()
    assert run_until(loop, lambda: client.eof, timeout=2.0)
    took = time.monotonic() - start
    receiver = G.Protection(toy, toy, G.CONFIDENTIALITY, 1000)
    assert receiver.feed(client.data) == back
    assert took >= ((200 << 10) - (32 << 10)) / (300 << 10) * 0.9
    sender = G.Protection(toy, toy, G.CONFIDENTIALITY, 1000)
    msg = os.urandom(5000)
    client.write(sender.seal(msg))
    assert run_until(loop, lambda: remote.data == msg)
    assert relay.n_cr == 5000 and relay.n_rc == 200 << 10


def test_release_counts_and_cancels_the_timer(loop, net):
    relay, owner, client, remote, tc = make(loop, net, "limit bandwidth user alice 50K burst 16K")
    remote.write(os.urandom(256 << 10))
    assert run_until(loop, lambda: relay.meter.paused[1])
    timer = relay.timer
    relay.close()
    assert owner.closed == 1 and timer.cancelled and relay.timer is None
    drained = {k: d for k, u, d in tc.table.drain()}
    assert drained["user alice"] == len(client.data) or drained["user alice"] >= 16 << 10


# --- the session's part: which relay, and the quota check after the rules -----------------

def session_server(loop, net, log, text, table=None):
    srv = Server(loop, net, log, text)
    srv.ctx.traffic = M.TrafficControl(table or M.TrafficTable(slots=64))
    return srv


def test_without_limits_the_relay_is_the_plain_one(loop, net, log):
    echo = net.echo_server()
    srv = session_server(loop, net, log, "permit 127.0.0.0/8\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port) + b"hi")
    assert run_until(loop, lambda: client.data.endswith(b"hi"))
    assert type(sess.relay) is RL.Relay and sess.tplan is None


def test_with_a_limit_the_relay_is_shaped_and_its_end_says_so(loop, net, log):
    echo = net.echo_server()
    srv = session_server(loop, net, log, "permit 127.0.0.0/8\nlimit bandwidth address 127.0.0.1 100K burst 16K\n")
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port))
    assert run_until(loop, lambda: len(client.data) >= 12)
    assert type(sess.relay) is RL.ShapedRelay
    client.write(os.urandom(64 << 10))
    assert run_until(loop, lambda: len(client.data) >= 12 + (64 << 10))
    sess.close()
    line, = log.having("terminated --")
    assert "; shaped: " in line and "by address 127.0.0.1 (102400 bytes/s, unit.conf:2)" in line, line


def test_a_quota_reached_refuses_the_request_after_the_rules(loop, net, log):
    echo = net.echo_server()
    table = M.TrafficTable(slots=64)
    conf = "permit 127.0.0.0/8\nquota address 127.0.0.0/8 each 10K per day\n"
    srv = session_server(loop, net, log, conf, table)
    client, sess = srv.client(GREETING + connect5("127.0.0.1", echo.port))
    assert run_until(loop, lambda: len(client.data) >= 12)
    client.write(os.urandom(M.COUNT_EVERY + (16 << 10)))
    # cut at the quota: unlimited, a session counts (and so finds the quota) every COUNT_EVERY bytes
    assert run_until(loop, lambda: sess.state == 7)
    assert "; cut: quota address 127.0.0.0/8 each 10240 bytes per day reached for address 127.0.0.1" in \
        log.having("terminated --")[0]
    client2, sess2 = srv.client(GREETING + connect5("127.0.0.1", echo.port))
    assert run_until(loop, lambda: len(client2.data) >= 4)
    assert client2.data[2:4] == bytes([5, P.REP_NOT_ALLOWED])
    line, = log.having("refused --")
    assert "quota address 127.0.0.0/8 each 10240 bytes per day reached for address 127.0.0.1 (unit.conf:2;" in line


# --- UDP: a datagram over the budget is dropped and counted --------------------------------

def udp_setup(loop, net, log, conf):
    from sockd import udp as U
    client = net.udp("127.0.0.1")
    echo = net.udp("127.0.0.1", echo=True)
    cfg = C.parse_text(conf + "\npermit 127.0.0.0/8 127.0.0.1/32\n", "u.conf")
    ctx = Ctx(cfg, loop, log)
    ctx.traffic = M.TrafficControl(M.TrafficTable(slots=64))
    sess = FakeSession(ctx, "127.0.0.1", user="alice")
    sess.tplan = ctx.traffic.plan(cfg, sess.src_key, "alice", "username", None)
    assoc = sess.assoc = U.Association(sess, client.port)
    _addr, port = assoc.start()
    header = P.udp_header("127.0.0.1", echo.port)
    return assoc, sess, client, echo, ("127.0.0.1", port), header


def send(loop, assoc, client, relay, datagram, n):
    """Send ``n`` datagrams, ten at a time, each ten read by the
    association before the next (the kernel drops what a socket's buffer
    cannot hold); stops early once the association has closed."""
    for i in range(0, n, 10):
        if assoc.csock is None:
            return
        for _ in range(10):
            client.send(datagram, relay)
        assert run_until(loop, lambda: assoc.d_in >= i + 10 or assoc.csock is None)


def test_datagrams_over_the_budget_are_dropped_and_counted(loop, net, log):
    assoc, sess, client, echo, relay, header = udp_setup(loop, net, log,
                                                        "limit bandwidth user alice 20K/1M burst 10K/1M")
    send(loop, assoc, client, relay, header + b"x" * 1000, 100)
    run_for(loop, 0.1)
    # up: the burst (10 datagrams of 1000 bytes) and what 20K/s adds meanwhile; down: every echo
    assert 9 <= len(echo.got) <= 14, len(echo.got)
    assert assoc.over == 100 - len(echo.got) and assoc.dropped == assoc.over
    assert len(client.got) == len(echo.got)
    assert "(%d over the bandwidth limit)" % assoc.over in assoc.summary()
    sess.close()
    counted = {k: (u, d) for k, u, d in sess.ctx.traffic.table.drain()}
    assert counted["user alice"] == (1000 * len(echo.got), 1000 * len(echo.got))


def test_a_quota_with_cut_ends_the_association(loop, net, log):
    assoc, sess, client, echo, relay, header = udp_setup(loop, net, log, "quota user alice 100K per day")
    send(loop, assoc, client, relay, header + b"y" * 1000, 200)
    assert run_until(loop, lambda: sess.closed == 1)
    assert assoc.meter.cut[0] == "user alice" and "; cut: quota user alice 102400 bytes per day" in assoc.summary()


def test_the_metered_reads_test_their_flags_as_ints():
    """MeteredSocket.recv_into tests MSG_TRUNC and MSG_PEEK on every read:
    as ints, not socket's IntFlag members (``0 & socket.MSG_PEEK`` builds
    a MsgFlag through enum, about half a microsecond each, four reads a
    connection); a peek is not spent, a read and a truncating read are."""
    assert type(RL.MSG_PEEK) is int and type(RL.MSG_TRUNC) is int
    assert (RL.MSG_PEEK, RL.MSG_TRUNC) == (int(socket.MSG_PEEK), int(socket.MSG_TRUNC))

    class Meter:
        def __init__(self):
            self.spent_n = 0

        def allowance(self, d):
            return 1 << 20

        def spent(self, d, n):
            self.spent_n += n

    a, b = socket.socketpair()
    try:
        m = Meter()
        ms = RL.MeteredSocket(b, m, 0)
        a.sendall(b"x" * 30)
        buf = bytearray(64)
        assert ms.recv_into(buf, 10, RL.MSG_PEEK) == 10 and m.spent_n == 0
        assert ms.recv_into(buf, 10) == 10 and m.spent_n == 10
        assert ms.recv_into(buf, 20, RL.MSG_TRUNC) == 20 and m.spent_n == 30
    finally:
        a.close()
        b.close()

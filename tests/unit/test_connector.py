"""sockd.connector: Happy Eyeballs (RFC 8305) over candidate addresses, and
the route file's choice of the source address.

A real Connector on a real sockd.loop.Loop against listeners on loopback
(127.0.0.0/8 and ::1 give distinct addresses to be refused at, black-holed
at or to connect from); the owner is the test's recorder.  Checked: the
order of the candidates (``interleave``, pure, with hypothesis), the next
candidate at once after a refused one and after ``stagger`` beside a
black-holed one, the first to connect winning and the others closed, at
most MAX_IN_FLIGHT attempts at once, stagger 0 as one after another, the
last errno when all fail, exactly one callback, none after cancel(),
``mask`` telling the truth about the registration, and the route file's
source address or its complaint.

Black-holed: a listener with a backlog of 0 whose one slot a connection
the test never accepts has taken.  Linux drops the SYNs that come to a
listener whose accept queue is full, without an answer, as a host behind
a filtering firewall would; nothing leaves loopback.
"""

import errno
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import connector as CN
from sockd import route as RT
from sockd.loop import EPOLLOUT

from loopkit import closed_port, epoll_masks, run_for, run_until, watched


class Done:
    """The connector's owner, as the session is: on success it takes the
    socket over from the loop (the relay rebinds it; here it is simply
    unregistered), recording what ``mask`` said at that moment."""

    def __init__(self, loop):
        self.loop = loop
        self.connector = None
        self.calls = []
        self.masks = []
        self.closed = 0

    def close(self):
        self.closed += 1

    def on_connected(self, sock, address, err):
        self.calls.append((sock, address, err))
        if sock is not None:
            mask = self.connector.mask
            fd = sock.fileno()
            self.masks.append((mask, fd in watched(self.loop),
                               epoll_masks(self.loop).get(fd) if mask >= 0 else None))
            if mask >= 0:
                self.loop.remove(fd)

    @property
    def result(self):
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


def family(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def connector(loop, log, candidates, port, table=None, host=None, done=None, stagger=CN.STAGGER):
    done = done or Done(loop)
    c = CN.Connector(loop, [(family(ip), ip) for ip in candidates], port, table, host, log, done, stagger)
    done.connector = c
    return c, done


def finish(loop, c, done):
    c.start()
    assert run_until(loop, lambda: done.calls)
    run_for(loop, 0.02)                               # and never a second call
    return done.result


def test_connects_to_the_first_candidate_that_answers(loop, net, log):
    ls = net.listener("127.0.0.1")
    port = ls.getsockname()[1]
    c, done = connector(loop, log, ["127.0.0.3", "127.0.0.4", "127.0.0.1"], port)     # nothing on .3 and .4
    sock, address, err = finish(loop, c, done)
    net.keep(sock)
    assert (address, err) == ("127.0.0.1", None)
    assert sock.getpeername() == ("127.0.0.1", port)
    assert sock.gettimeout() == 0.0                   # non-blocking
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    accepted, _ = ls.accept()
    net.keep(accepted)


def test_mask_says_whether_the_socket_is_still_registered(loop, net, log):
    port = net.listener("127.0.0.1").getsockname()[1]
    c, done = connector(loop, log, ["127.0.0.1"], port)
    sock, _, _ = finish(loop, c, done)
    net.keep(sock)
    [(mask, registered, kernel)] = done.masks
    if mask < 0:                                      # connected at once: never registered
        assert not registered
    else:                                             # connected later: still registered, for the relay
        assert (mask, registered, kernel) == (EPOLLOUT, True, EPOLLOUT)


def test_every_candidate_refused_gives_the_last_errno(loop, log):
    port = closed_port()
    c, done = connector(loop, log, ["127.0.0.1", "127.0.0.2"], port)
    assert finish(loop, c, done) == (None, None, errno.ECONNREFUSED)
    assert not watched(loop)


def test_the_last_errno_is_the_last_candidates(loop, net, log):
    port = net.listener("127.0.0.1").getsockname()[1]
    table = RT.parse("127.0.0.1 127.0.0.3 255.255.255.255\n", "r")[0]          # no route for .1
    c, done = connector(loop, log, ["127.0.0.3", "127.0.0.1"], port, table)
    # .3: routed but nothing listens there (refused); .1: no route (the last errno)
    assert finish(loop, c, done) == (None, None, errno.ENETUNREACH)
    assert log.having("***Cannot find appropriate interface to communicate with 127.0.0.1", "error")


def test_no_candidates_is_host_unreachable(loop, log):
    c, done = connector(loop, log, [], 80)
    c.start()
    assert done.result == (None, None, errno.EHOSTUNREACH)


def test_ipv6_and_ipv4_candidates(loop, net, log):
    port = net.listener("127.0.0.1").getsockname()[1]
    c, done = connector(loop, log, ["::1", "127.0.0.1"], port)                # nothing on [::1]:port
    sock, address, err = finish(loop, c, done)
    net.keep(sock)
    assert (address, err) == ("127.0.0.1", None)


def test_cancel_gives_no_callback_and_leaves_nothing(loop, net, log):
    ls = net.listener("127.0.0.1")
    c, done = connector(loop, log, ["127.0.0.1"], ls.getsockname()[1])
    c.start()
    if done.calls:                                   # connected at once: nothing left to cancel
        net.keep(done.calls[0][0])
        pytest.skip("the kernel connected at once")
    [fd] = [a.fd for a in c.attempts]
    c.cancel()
    run_for(loop, 0.05)
    assert done.calls == [] and fd not in watched(loop) and c.attempts == []
    c.cancel()                                       # twice is harmless


def test_cancel_between_candidates_stops_there(loop, log):
    port = closed_port()
    c, done = connector(loop, log, ["127.0.0.1", "127.0.0.2", "127.0.0.3"], port)
    c.start()
    c.cancel()
    run_for(loop, 0.05)
    assert done.calls == [] and c.candidates == [] and not watched(loop)


def test_close_ends_the_owner_and_leaves_nothing_registered(loop, net, log):
    """What the loop's error handler calls: the connect is dropped and its
    owner (the session) ends; no callback."""
    port = net.listener("127.0.0.1").getsockname()[1]
    c, done = connector(loop, log, ["127.0.0.1", "127.0.0.2"], port)
    c.start()
    if done.calls:
        net.keep(done.calls[0][0])
        pytest.skip("the kernel connected at once")
    c.close()
    assert done.calls == [] and done.closed == 1
    assert not watched(loop)


def test_the_route_file_chooses_the_source_address(loop, net, log):
    ls = net.listener("127.0.0.1")
    table = RT.parse("127.0.0.2 127.0.0.0 255.0.0.0\n", "routes")[0]
    c, done = connector(loop, log, ["127.0.0.1"], ls.getsockname()[1], table)
    sock, address, err = finish(loop, c, done)
    net.keep(sock)
    assert err is None and sock.getsockname()[0] == "127.0.0.2"
    accepted, peer = ls.accept()
    net.keep(accepted)
    assert peer[0] == "127.0.0.2"


def test_a_route_naming_a_foreign_address_is_logged_and_fails(loop, log):
    table = RT.parse("# comment\n192.0.2.1 127.0.0.0/8\n", "routes")[0]
    c, done = connector(loop, log, ["127.0.0.1"], closed_port(), table)
    assert finish(loop, c, done) == (None, None, errno.EADDRNOTAVAIL)
    assert log.having("route routes:2: cannot use 192.0.2.1: Cannot assign requested address", "error")


def test_route_source_by_address_and_by_name(log):
    table = RT.parse("127.0.0.5 gw.example.org\n127.0.0.6 127.0.0.0/8\n", "routes")[0]
    assert CN.route_source(table, "127.0.0.9", "gw.example.org", log).if_addr == "127.0.0.5"
    assert CN.route_source(table, "127.0.0.9", None, log).if_addr == "127.0.0.6"
    assert CN.route_source(table, "::ffff:127.0.0.9", None, log).line == 2
    assert CN.route_source(table, "203.0.113.1", None, log) is None
    assert log.lines("error") == ["***Cannot find appropriate interface to communicate with 203.0.113.1"]


def test_a_bug_in_the_owners_callback_leaves_nothing_registered(loop, net, log, looplog):
    port = net.listener("127.0.0.1").getsockname()[1]
    taken = []

    class Buggy:
        closed = 0

        def on_connected(self, sock, address, err):
            taken.append(sock)
            net.keep(sock)
            raise RuntimeError("a bug in the session's on_connected")

        def close(self):
            Buggy.closed += 1
    c = CN.Connector(loop, [(socket.AF_INET, "127.0.0.1")], port, None, None, log, Buggy())
    try:
        c.start()
    except RuntimeError:
        pytest.skip("the kernel connected at once")
    run_until(loop, lambda: taken)
    run_for(loop, 0.05)
    errors = looplog.having("internal error")
    looplog.clear()
    assert taken and taken[0].fileno() not in watched(loop)
    assert len(errors) == 1, "%d internal errors in 50 ms" % len(errors)
    assert Buggy.closed == 1                         # and the owner was ended


# --- the order: RFC 8305 section 4 -------------------------------------------------------------------

V4, V6 = socket.AF_INET, socket.AF_INET6


def fams(text):
    """"6 6 4" -> [(V6, "a0"), (V6, "a1"), (V4, "a2")]: the address names the position."""
    return [(V6 if f == "6" else V4, "a%d" % i) for i, f in enumerate(text.split())]


@pytest.mark.parametrize("given_order, tried", [
    ("", ""),
    ("4", "4"),
    ("6 6 6", "6 6 6"),
    ("6 6 4 4", "6 4 6 4"),
    ("4 6 6 6", "4 6 6 6"),
    ("6 6 6 4", "6 4 6 6"),
    ("4 4 4 6 6", "4 6 4 6 4"),
])
def test_interleave_leads_with_the_first_family_then_takes_turns(given_order, tried):
    got = CN.interleave(fams(given_order))
    assert " ".join("6" if f == V6 else "4" for f, _ in got) == tried


def test_interleave_keeps_each_familys_order():
    assert [a for _, a in CN.interleave(fams("6 6 4 6 4"))] == ["a0", "a2", "a1", "a4", "a3"]


@given(st.lists(st.sampled_from([V4, V6]), max_size=12))
def test_interleave_is_a_fair_permutation(families):
    cands = [(f, "a%d" % i) for i, f in enumerate(families)]
    got = CN.interleave(cands)
    assert sorted(got) == sorted(cands)
    assert got[:1] == cands[:1]                                  # the resolver's first stays first
    for f in (V4, V6):
        assert [c for c in got if c[0] == f] == [c for c in cands if c[0] == f]
    # the families alternate until one has run out
    n = min(families.count(V4), families.count(V6))
    head = [f for f, _ in got[:2 * n]]
    assert all(head[i] != head[i + 1] for i in range(len(head) - 1))


def test_interleave_does_not_change_its_argument():
    cands = fams("6 6 4")
    CN.interleave(cands)
    assert cands == fams("6 6 4")


# --- Happy Eyeballs on loopback ----------------------------------------------------------------------

def black_hole(net, host, port):
    """``host``:``port`` takes no connection and answers no SYN: a listener
    with a backlog of 0 whose one slot a connection the test never accepts
    has taken (Linux drops SYNs to a full accept queue)."""
    ls = net.listener(host, port, backlog=0)
    net.connect((host, ls.getsockname()[1]))
    probe = socket.socket(family(host), socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    net.keep(probe)
    assert probe.connect_ex((host, ls.getsockname()[1])) == errno.EINPROGRESS
    return ls.getsockname()[1]


def live(net, host="127.0.0.1", port=0):
    ls = net.listener(host, port)
    return ls, ls.getsockname()[1]


def live_and_holes(net, host, holes):
    """A listener on ``host`` and black holes on each of ``holes``, all on
    one port (a port free on every one of those addresses)."""
    for _ in range(50):
        ls, port = live(net, host)
        try:
            for h in holes:
                black_hole(net, h, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return ls, port
    raise AssertionError("no port free on %s and %s" % (host, holes))


def timed_finish(loop, c, done, timeout=2.0):
    t0 = time.monotonic()
    c.start()
    assert run_until(loop, lambda: done.calls, timeout)
    took = time.monotonic() - t0
    run_for(loop, 0.02)
    return done.result, took


@pytest.mark.serial
def test_a_black_holed_first_address_gives_way_after_the_stagger(loop, net, log):
    ls, port = live_and_holes(net, "127.0.0.1", ["127.0.0.2"])
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.1"], port, host="both.test", stagger=0.2)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert (address, err) == ("127.0.0.1", None) and sock.getpeername() == ("127.0.0.1", port)
    assert 0.18 <= took < 0.6, took
    # the black-holed attempt is closed: once the owner has taken the winner, nothing is left
    assert c.attempts == [] and c.timer is None and not watched(loop)
    assert log.having("connect to both.test: no answer from 127.0.0.2 port %d in 0.2s" % port, "debug")
    assert log.having("127.0.0.1 port %d answered first; 1 other attempts closed" % port, "debug")


@pytest.mark.serial
def test_a_refused_first_address_gives_way_at_once(loop, net, log):
    ls, port = live(net, "127.0.0.1")                    # nothing on 127.0.0.2:port: refused
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.1"], port, stagger=1.0)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert (address, err) == ("127.0.0.1", None)
    assert took < 0.5, took                              # not after the stagger
    assert log.having("127.0.0.2 port %d: Connection refused (0 other attempts under way, 1 addresses to try)"
                      % port, "debug")


@pytest.mark.serial
def test_dead_ipv6_live_ipv4_and_the_reverse(loop, net, log):
    ls, port = live_and_holes(net, "127.0.0.1", ["::1"])
    c, done = connector(loop, log, ["::1", "127.0.0.1"], port, stagger=0.1)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert (address, err, sock.family) == ("127.0.0.1", None, socket.AF_INET) and took < 0.5

    ls6, port6 = live_and_holes(net, "::1", ["127.0.0.1"])
    c, done = connector(loop, log, ["127.0.0.1", "::1"], port6, stagger=0.1)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert (address, err, sock.family) == ("::1", None, socket.AF_INET6) and took < 0.5


def test_the_families_take_turns(loop, net, log):
    """Two dead IPv6 addresses first, then the live IPv4 one: interleaved,
    IPv4 is the second attempt, not the third."""
    ls, port = live_and_holes(net, "127.0.0.1", ["::1"])
    c, done = connector(loop, log, ["::1", "::1", "127.0.0.1"], port, stagger=0.15)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert address == "127.0.0.1" and took < 0.29, took


def test_stagger_0_tries_one_address_after_another(loop, net, log):
    ls, port = live_and_holes(net, "127.0.0.1", ["127.0.0.2"])
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.1"], port, stagger=0)
    c.start()
    run_for(loop, 0.4)
    assert done.calls == [] and len(c.attempts) == 1 and c.timer is None
    c.cancel()
    assert not watched(loop)


def test_stagger_0_still_moves_on_when_one_is_refused(loop, net, log):
    ls, port = live(net, "127.0.0.1")
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.3", "127.0.0.1"], port, stagger=0)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert address == "127.0.0.1"


def test_at_most_max_in_flight_at_once(loop, net, log):
    holes = ["127.0.0.%d" % i for i in range(2, 9)]
    ls, port = live_and_holes(net, "127.0.0.1", holes)
    c, done = connector(loop, log, holes, port, stagger=0.01)
    c.start()
    run_for(loop, 0.3)
    assert len(c.attempts) == CN.MAX_IN_FLIGHT and len(c.candidates) == len(holes) - CN.MAX_IN_FLIGHT
    assert c.timer is None                               # nothing due: no spinning at the bound
    assert len(watched(loop)) == CN.MAX_IN_FLIGHT and done.calls == []
    c.cancel()
    assert not watched(loop) and c.candidates == []


def test_a_failure_at_the_bound_lets_the_next_one_start(loop, net, log):
    """Four black holes and a refused address under way: when the refused
    one fails, the next (live) candidate starts at once."""
    ls, port = live_and_holes(net, "127.0.0.1", ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    # .5 is refused, so that the one after it (.1, live) starts when it fails
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.1"], port,
                        stagger=0.05)
    (sock, address, err), took = timed_finish(loop, c, done)
    net.keep(sock)
    assert address == "127.0.0.1" and took < 0.5, took


def test_every_candidate_black_holed_or_refused_waits_for_the_deadline(loop, net, log):
    """The connector never gives up on an attempt under way: the session's
    timeout connect does (cancel)."""
    port = black_hole(net, "127.0.0.2", 0)
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.3"], port, stagger=0.05)
    c.start()
    run_for(loop, 0.3)
    assert done.calls == [] and len(c.attempts) == 1 and c.candidates == [] and c.error == errno.ECONNREFUSED
    c.cancel()
    assert not watched(loop)


def test_the_winner_after_the_stagger_is_registered_as_mask_says(loop, net, log):
    ls, port = live_and_holes(net, "127.0.0.1", ["127.0.0.2"])
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.1"], port, stagger=0.05)
    (sock, _, _), _ = timed_finish(loop, c, done)
    net.keep(sock)
    [(mask, registered, kernel)] = done.masks
    assert c.fd == sock.fileno()
    if mask >= 0:
        assert (mask, registered, kernel) == (EPOLLOUT, True, EPOLLOUT)
    else:
        assert not registered


def test_cancel_during_the_stagger_leaves_nothing(loop, net, log):
    ls, port = live_and_holes(net, "127.0.0.1", ["127.0.0.2"])
    c, done = connector(loop, log, ["127.0.0.2", "127.0.0.1"], port, stagger=0.1)
    c.start()
    assert c.timer is not None and len(c.attempts) == 1
    c.cancel()
    run_for(loop, 0.25)
    assert done.calls == [] and not watched(loop) and c.timer is None


def test_one_candidate_arms_no_timer(loop, net, log):
    ls, port = live(net, "127.0.0.1")
    c, done = connector(loop, log, ["127.0.0.1"], port)
    heap = len(loop.timers)
    c.start()
    assert c.timer is None and len(loop.timers) == heap
    assert run_until(loop, lambda: done.calls)
    net.keep(done.result[0])
    assert not log.lines("debug")                       # nothing to tell about one address

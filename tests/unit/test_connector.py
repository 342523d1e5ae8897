"""sockd.connector: the non-blocking connect over candidate addresses, and
the route file's choice of the source address.

A real Connector on a real sockd.loop.Loop against listeners on loopback
(127.0.0.0/8 gives distinct addresses to be refused at or to connect
from); the owner is the test's recorder.  Checked: the next candidate after
a refused one, the last errno when all fail, exactly one callback, none
after cancel(), ``mask`` telling the truth about the registration, and the
route file's source address or its complaint.
"""

import errno
import socket

import pytest

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


def connector(loop, log, candidates, port, table=None, host=None, done=None):
    done = done or Done(loop)
    c = CN.Connector(loop, [(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip) for ip in candidates],
                     port, table, host, log, done)
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
    fd = c.fd
    c.cancel()
    run_for(loop, 0.05)
    assert done.calls == [] and fd not in watched(loop) and c.sock is None
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

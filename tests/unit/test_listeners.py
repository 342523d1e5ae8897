"""listeners.py: listening sockets keyed as the file writes them, kept
across a reload, closed on failure; their names for the log."""

import errno
import socket

import pytest

from sockd import config as C
from sockd import listeners as L
from sockd.errors import Halt


def conf(*listen):
    return C.parse_text("".join("listen %s\n" % a for a in listen) + "permit 127.0.0.0 255.0.0.0\n")


def close_all(socks):
    for s in socks:
        s.close()


def test_open_listener_is_bound_listening_and_non_blocking():
    s = L.open_listener("127.0.0.1", 0)
    try:
        assert s.getsockname()[0] == "127.0.0.1" and s.getsockname()[1] > 0
        assert s.getblocking() is False
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        # accepted sockets inherit the session's options from the listener
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        c = socket.create_connection(s.getsockname(), 2)
        a, _ = _accept(s)
        assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        a.close()
        c.close()
    finally:
        s.close()


def _accept(s):
    s.settimeout(2)
    try:
        return s.accept()
    finally:
        s.setblocking(False)


def test_the_nth_line_for_one_address_is_its_own_listener():
    out, added, dropped = L.open_listeners(conf("127.0.0.1:0", "127.0.0.1:0"))
    try:
        assert sorted(out) == [("127.0.0.1", 0, 0), ("127.0.0.1", 0, 1)]
        assert sorted(added) == sorted(out) and dropped == []
        assert out[("127.0.0.1", 0, 0)].getsockname() != out[("127.0.0.1", 0, 1)].getsockname()
    finally:
        close_all(out.values())


def test_a_reload_keeps_what_stays_opens_what_is_new_and_names_what_goes():
    first, _, _ = L.open_listeners(conf("127.0.0.1:0", "127.0.0.2:0"))
    kept = first[("127.0.0.1", 0, 0)]
    gone = first[("127.0.0.2", 0, 0)]
    try:
        out, added, dropped = L.open_listeners(conf("127.0.0.1:0", "127.0.0.3:0"), first)
        try:
            assert out[("127.0.0.1", 0, 0)] is kept
            assert added == [("127.0.0.3", 0, 0)]
            assert dropped == [gone]
            assert gone.fileno() >= 0           # closing it is the caller's decision
        finally:
            out[("127.0.0.3", 0, 0)].close()
    finally:
        close_all(first.values())


def test_a_port_that_is_taken_closes_what_was_opened_and_halts():
    taken = L.open_listener("127.0.0.1", 0)
    port = taken.getsockname()[1]
    opened = []

    def opener(host, p):
        s = L.open_listener(host, p)
        opened.append(s)
        return s
    try:
        with pytest.raises(Halt, match=r"cannot listen on 127\.0\.0\.1:%d: Address already in use" % port):
            L.open_listeners(conf("127.0.0.2:0", "127.0.0.1:%d" % port), opener=opener)
        assert len(opened) == 1 and opened[0].fileno() == -1
    finally:
        taken.close()


def test_names_for_the_log():
    assert L.fmt_hostport("127.0.0.1", 1080) == "127.0.0.1:1080"
    assert L.fmt_hostport("::1", 1080) == "[::1]:1080"
    s = L.open_listener("127.0.0.1", 0)
    assert L.sock_name(s) == "127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    assert L.sock_name(s) == "?"


def test_a_group_is_one_listener_of_sockets_on_one_port():
    s = L.open_listener("127.0.0.1", 0, group=3)
    try:
        assert isinstance(s, L.Steered)
        group = L.members(s)
        assert len(group) == 3 and group[0] is s
        assert {g.getsockname() for g in group} == {s.getsockname()}
        for g in group:
            assert g.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert g.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert g.getblocking() is False
        # a client reaches one of them (the kernel's choice: the CPU it arrived on)
        c = socket.create_connection(s.getsockname(), 2)
        try:
            import selectors
            sel = selectors.DefaultSelector()
            for g in group:
                sel.register(g, selectors.EVENT_READ)
            ready = sel.select(2)
            sel.close()
            assert len(ready) == 1
        finally:
            c.close()
    finally:
        s.close()
    assert all(g.fileno() == -1 for g in group)


def test_a_plain_listener_does_not_share_its_port():
    s = L.open_listener("127.0.0.1", 0)
    try:
        assert L.members(s) == [s]
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        s.close()


@pytest.mark.parametrize("first_group", [0, 2])
def test_a_port_in_use_is_refused_to_a_group_too(first_group):
    """With SO_REUSEPORT a second sockd of the same user would join the
    first's group and serve nobody: it must fail as in use, as it does
    without affinity."""
    first = L.open_listener("127.0.0.1", 0, group=first_group)
    try:
        with pytest.raises(OSError) as err:
            L.open_listener("127.0.0.1", first.getsockname()[1], group=2)
        assert err.value.errno == errno.EADDRINUSE
    finally:
        first.close()


def test_group_for_and_the_lines_the_log_says():
    threads = C.parse_text("listen 127.0.0.1:0\naffinity cpu\npermit 127.0.0.0 255.0.0.0\n")
    fork = C.parse_text("listen 127.0.0.1:0\naffinity cpu\nmodel fork\npermit 127.0.0.0 255.0.0.0\n")
    plain = conf("127.0.0.1:0")
    assert L.group_for(threads, 4) == 4 and L.group_for(fork, 4) == 0 and L.group_for(plain, 4) == 0
    asked = []
    opener = L.opener_for(threads, lambda h, p, group: asked.append((h, p, group)), 2)
    opener("127.0.0.1", 0)
    assert asked == [("127.0.0.1", 0, 2)]
    s = L.open_listener("127.0.0.1", 0, group=2)
    one = L.open_listener("127.0.0.1", 0)
    try:
        port = s.getsockname()[1]
        assert L.listening_line(s, threads) == "listening on 127.0.0.1:%d (threads model, a socket per CPU: 2)" % port
        assert L.listening_line(one, plain) == "listening on %s (threads model)" % L.sock_name(one)
        assert L.affinity_warnings(threads, {"a": s}) == []
        warned = L.affinity_warnings(threads, {"a": s, "b": one})
        assert len(warned) == 1 and L.sock_name(one) in warned[0]
        assert L.affinity_warnings(plain, {"b": one}) == []
        assert L.affinity_warnings(fork, {"a": s}) == ["affinity cpu: the fork model has no workers to pin; ignored"]
    finally:
        s.close()
        one.close()

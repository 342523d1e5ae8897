"""listeners.py: listening sockets keyed as the file writes them, kept
across a reload, closed on failure; their names for the log."""

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

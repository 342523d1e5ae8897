"""sockd/client/socksify.py: socksify(), unsocksify(), socksified().

In this process, for real: the socket module is patched and unpatched
(a fixture always undoes it), a mistake in socks.conf stops socksify()
before it patches anything, and programs that only know the socket module
-- socket.socket, socket.create_connection, http.client -- are routed
through a SOCKS 5 peer that the test runs on loopback (after its reply
the peer plays the destination's part).  The isinstance rules that keep
ssl and later subclasses working are checked on real objects.
"""

import http.client
import socket
import ssl

import pytest

from sockd.client import core, shell
from sockd.client import socksified, socksify, unsocksify

from clientkit import TARGET, WAIT, Peer, listener, socks5_server, socksenv

assert socksenv     # the fixture, used by name
REAL_SOCKET, REAL_CREATE = socket.socket, socket.create_connection


@pytest.fixture
def patched(socksenv):
    """socksify() at the test's call; undone whatever happens."""
    yield socksenv
    unsocksify()
    assert socket.socket is REAL_SOCKET and socket.create_connection is REAL_CREATE


def test_patch_and_unpatch(patched):
    assert not socksified()
    socksify()
    assert socket.socket is core.socksocket and socket.create_connection is core.create_connection
    assert socksified()
    socksify()                                             # idempotent
    assert socket.socket is core.socksocket
    unsocksify()
    assert socket.socket is REAL_SOCKET and socket.create_connection is REAL_CREATE
    assert not socksified()
    unsocksify()                                           # and so is this
    assert socket.socket is REAL_SOCKET


def test_a_mistake_stops_socksify_before_it_patches(patched):
    patched.conf("sockd @=fw ALL\nnonsense\n")
    with pytest.raises(core.SocksConfigError, match=r":2: unknown action"):
        socksify()
    assert not socksified()
    patched.set("SOCKS_SERVER", "fw:0")
    patched.conf("direct ALL\n")
    with pytest.raises(core.SocksConfigError, match="^SOCKS_SERVER: "):
        socksify()
    assert not socksified()
    socksify(check=False)                                  # told not to look: the first connection will
    assert socksified()
    with pytest.raises(core.SocksConfigError):
        socket.socket().connect((TARGET, 7))


def test_isinstance_keeps_working_for_real_sockets_ssl_and_later_classes(patched):
    real = REAL_SOCKET()
    socksify()
    with real, socket.socket() as s:
        assert type(s) is core.socksocket
        assert isinstance(real, socket.socket)            # made before the patch
        assert not isinstance(s, ssl.SSLSocket)           # ssl was imported before the patch
        assert issubclass(ssl.SSLSocket, socket.socket)

        class Later(socket.socket):
            pass
        with Later() as later:
            assert isinstance(later, socket.socket) and not isinstance(s, Later)


def test_programs_that_know_only_the_socket_module_are_routed(patched):
    reqs = []

    def speak_http(c):
        c.read_until(b"\r\n\r\n")
        c.send(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    peer = Peer(socks5_server(then=speak_http, requests=reqs))
    dst = listener(TARGET)
    try:
        patched.conf("direct 127.0.0.2/32 eq %d\nsockd @=127.0.0.1:%d ALL\n" % (dst.getsockname()[1], peer.port))
        socksify()
        h = http.client.HTTPConnection(TARGET, 80, timeout=WAIT)
        h.request("GET", "/")
        assert h.getresponse().read() == b"hello"
        h.close()
        c = socket.create_connection(dst.getsockname(), timeout=WAIT)    # a direct line
        conn, _ = dst.accept()
        conn.close()
        c.close()
        assert [r[1] for r in reqs] == [(1, 1, TARGET, 80)]
    finally:
        dst.close()
        peer.close()


def test_a_direct_connection_is_decided_once(patched, tmp_path):
    out = tmp_path / "out"
    dst = listener(TARGET)
    with dst:
        patched.conf("direct 127.0.0.2/32 : echo %%c %%Z >> %s\nsockd @=fw ALL\n" % out)
        socksify()
        c = socket.create_connection(dst.getsockname(), timeout=WAIT)
        c.close()
        assert shell._runner.drain(WAIT)
    assert out.read_text() == "connect %s\n" % TARGET

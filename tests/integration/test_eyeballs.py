"""Issue 14: Happy Eyeballs (RFC 8305) for sockd's own connects, and the
resolver cache of a worker, against a real sockd.

sockd gets its own /etc/hosts (and, to put IPv4 first, its own
/etc/gai.conf) through a mount namespace: ``unshare --mount`` with private
propagation and a bind mount of the test's files; the host's files are
never touched (checked).  The name has a live address in one family and a
dead one in the other, on the same port:

* black-holed: a listener with a backlog of 0 whose one slot a connection
  the test never accepts has taken.  Linux drops SYNs to a listener whose
  accept queue is full, without an answer, as a filtering firewall does;
  the connect hangs.  Nothing leaves loopback.
* refused: nothing listens there; the connect fails at once.

The resolver sorts the dead address first (RFC 6724: ::1 before
127.0.0.1; with the test's gai.conf, IPv4 first).  A CONNECT to the name
must be answered within about ``connect stagger`` (250 ms) when the first
address is black-holed, at once when it refuses, far within ``timeout
connect``; with ``connect stagger 0`` (one address after another) the
black hole costs the whole timeout.  The times are measured from the
request to the reply.

The cache: with ``-d``, a second CONNECT to a name logs a hit and is not
resolved again (the test changes the hosts file between the two, and the
second still goes to the first answer), until ``resolve life`` has passed;
a name that does not resolve is answered from the cache as failed.
"""

import hashlib
import os
import signal
import socket
import struct
import time

import pytest

import helpers

NAME = "eyeballs.test"
STAGGER = 0.25
PREFER_IPV4 = """\
precedence ::1/128 50
precedence ::/0 40
precedence 2002::/16 30
precedence ::/96 20
precedence ::ffff:0:0/96 100
"""


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Bed:
    """The test's files, listeners and sockets, closed at the end."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.things = []

    def keep(self, thing):
        self.things.append(thing)
        return thing

    def namespace(self, hosts, prefer_ipv4=False):
        """A prefix that runs sockd in a mount namespace of its own with
        ``hosts`` over /etc/hosts (and a gai.conf that sorts IPv4 first).
        Returns (prefix, the hosts file's path)."""
        helpers.need("unshare")
        path = self.dir / "hosts"
        path.write_text("127.0.0.1 localhost\n::1 localhost\n" + hosts)
        if not prefer_ipv4:
            script, files = 'mount --bind "$0" /etc/hosts && exec "$@"', [str(path)]
        else:
            gai = self.dir / "gai.conf"
            gai.write_text(PREFER_IPV4)
            script = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/gai.conf && shift && exec "$@"'
            files = [str(path), str(gai)]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script] + files, path

    def target(self, live, dead, how):
        """An echo server on ``live`` and, on the same port, ``dead``
        black-holed or refusing.  Returns (the server, the port)."""
        for _ in range(50):
            srv = self.keep(helpers.TCPServer(helpers.echo_handler, host=live))
            try:
                if how == "black-holed":
                    self.black_hole(dead, srv.port)
                else:
                    probe = socket.socket(socket.AF_INET6 if ":" in dead else socket.AF_INET)
                    probe.bind((dead, srv.port))              # free there: nothing will answer
                    probe.close()
            except OSError as exc:
                if exc.errno != 98:                           # EADDRINUSE: another port
                    raise
                continue
            return srv, srv.port
        raise AssertionError("no port free on both %s and %s" % (live, dead))

    def black_hole(self, host, port):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        ls = self.keep(socket.socket(fam, socket.SOCK_STREAM))
        ls.bind((host, port))
        ls.listen(0)
        self.keep(socket.create_connection((host, port), 2))       # takes the one slot, never accepted
        probe = self.keep(socket.socket(fam, socket.SOCK_STREAM))
        probe.settimeout(0.3)
        with pytest.raises(socket.timeout):
            probe.connect((host, port))                               # it is black-holed

    def close(self):
        for t in self.things:
            t.close()


@pytest.fixture
def bed(tmp_path):
    before = sha256("/etc/hosts"), sha256("/etc/gai.conf")
    b = Bed(tmp_path)
    yield b
    b.close()
    assert (sha256("/etc/hosts"), sha256("/etc/gai.conf")) == before, "the host's files changed"


def connect_name(proxy, name, port, timeout=20):
    """SOCKS 5 CONNECT to ``name``.  Returns (socket, REP, seconds from the
    request to the reply)."""
    s = socket.create_connection(proxy, 5)
    s.settimeout(timeout)
    s.sendall(b"\x05\x01\x00")
    assert helpers.recv_exact(s, 2) == b"\x05\x00"
    t0 = time.monotonic()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name.encode() + struct.pack("!H", port))
    head = helpers.recv_exact(s, 4)
    took = time.monotonic() - t0
    helpers.recv_exact(s, {1: 6, 4: 18}.get(head[3], 6))
    return s, head[1], took


CASES = [
    # (first address: dead, the second: live), prefer IPv4 first
    pytest.param("::1", "127.0.0.1", False, id="dead-ipv6-live-ipv4"),
    pytest.param("127.0.0.1", "::1", True, id="dead-ipv4-live-ipv6"),
]


@pytest.mark.parametrize("how", ["black-holed", "refused"])
@pytest.mark.parametrize("dead, live, prefer_ipv4", CASES)
def test_a_name_whose_first_address_is_dead_still_connects_at_once(start_sockd, bed, dead, live, prefer_ipv4,
                                                                   how):
    srv, port = bed.target(live, dead, how)
    prefix, _ = bed.namespace("%s %s\n%s %s\n" % (dead, NAME, live, NAME), prefer_ipv4)
    s = start_sockd("timeout connect 10\npermit 127.0.0.0/8\n", args=["-d", "1"], workers=1, prefix=prefix)
    c, rep, took = connect_name(s.addr, NAME, port)
    try:
        assert rep == 0, s.log()[-2000:]
        c.sendall(b"through the live one")
        assert helpers.recv_exact(c, 20) == b"through the live one"
    finally:
        c.close()
    assert [p[0] for p in srv.peers] == [live]                      # reached over the live family
    text = s.log()
    if how == "black-holed":
        # the dead address was tried first and given a quarter of a second
        assert "connect to %s: no answer from %s port %d in 0.25s; trying the next address too" % (
            NAME, dead, port) in text, text[-2000:]
        assert "connect to %s: %s port %d answered first; 1 other attempts closed" % (NAME, live, port) in text
        assert STAGGER - 0.02 <= took < STAGGER + 0.75, took
    else:
        assert "connect to %s: %s port %d: Connection refused" % (NAME, dead, port) in text, text[-2000:]
        assert took < STAGGER, took                                   # at once: not after the stagger
    assert "connected -- Connect from unknown(unknown)@127.0.0.1 to %s (%d)" % (NAME, port) in text
    print("%s first address %s %s: connected in %.0f ms" % (how, dead, "(IPv4 preferred)" if prefer_ipv4 else "",
                                                             took * 1000))


def test_the_fork_model_connects_the_same_way(start_sockd, bed):
    srv, port = bed.target("127.0.0.1", "::1", "black-holed")
    prefix, _ = bed.namespace("::1 %s\n127.0.0.1 %s\n" % (NAME, NAME))
    s = start_sockd("timeout connect 10\npermit 127.0.0.0/8\n", model="fork", prefix=prefix)
    c, rep, took = connect_name(s.addr, NAME, port)
    c.close()
    assert rep == 0 and STAGGER - 0.02 <= took < STAGGER + 0.75, (rep, took)


def test_stagger_0_tries_one_address_after_another(start_sockd, bed):
    """Without Happy Eyeballs the black-holed first address holds the
    connect until timeout connect: what the stagger saves."""
    srv, port = bed.target("127.0.0.1", "::1", "black-holed")
    prefix, _ = bed.namespace("::1 %s\n127.0.0.1 %s\n" % (NAME, NAME))
    s = start_sockd("connect stagger 0\ntimeout connect 1.5\npermit 127.0.0.0/8\n", workers=1, prefix=prefix)
    c, rep, took = connect_name(s.addr, NAME, port)
    c.close()
    assert rep == 6 and 1.4 <= took < 3.5, (rep, took)               # TTL expired: the timeout
    assert srv.peers == []
    s.wait_log(r"timed-out -- Connect from .* to %s" % NAME.replace(".", r"\."))


def test_a_second_connect_to_a_name_is_answered_by_the_cache(start_sockd, bed):
    """-d shows the miss, then the hit; the hosts file changed in between
    and the second CONNECT still goes to the first answer, until resolve
    life has passed.  A name that does not resolve: a miss, then a hit that
    says it failed."""
    srv = bed.keep(helpers.TCPServer(helpers.echo_handler, host="127.0.0.1"))
    prefix, hosts = bed.namespace("127.0.0.1 cached.test\n")
    s = start_sockd("resolve life 1.5\npermit 127.0.0.0/8\n", args=["-d", "1"], workers=1, prefix=prefix)
    ino = os.stat(hosts).st_ino

    def connect(name):
        c, rep, _ = connect_name(s.addr, name, srv.port)
        c.close()
        return rep

    t0 = time.monotonic()
    assert connect("cached.test") == 0
    s.wait_log(r"resolve cache: miss cached\.test")
    # the name moves to an address where nothing listens (the same file: the bind mount sees it)
    with open(hosts, "r+") as f:
        f.seek(0)
        f.write("127.0.0.1 localhost\n::1 localhost\n127.0.0.9 cached.test\n")
        f.truncate()
    assert os.stat(hosts).st_ino == ino
    assert connect("CACHED.test") == 0                               # the cache's answer, in any case
    assert time.monotonic() - t0 < 1.5, "too slow to show the cache"
    s.wait_log(r"resolve cache: hit cached\.test: 127\.0\.0\.1 \(\d+s old\)")
    # the target's accept thread records a peer after the kernel has completed
    # the connection (and sockd has replied): wait for it, bounded
    helpers.wait_for(lambda: len(srv.peers) == 2, timeout=5, what="the target to record both connections")
    # resolve life has passed: asked again, and the new answer refuses
    time.sleep(max(0.0, t0 + 1.6 - time.monotonic()))
    assert connect("cached.test") == 5
    # the worker writes its lines at the end of its turn, after the reply: wait for them
    helpers.wait_for(lambda: s.log().count("resolve cache: miss cached.test") == 2, what="the second miss")
    # negative caching
    assert connect("nosuch.test") == 4
    assert connect("nosuch.test") == 4
    s.wait_log(r"resolve cache: hit nosuch\.test: failed, ")
    helpers.wait_for(lambda: s.log().count("Error code: resolve ") == 2, what="two resolve errors")
    assert s.log().count("resolve cache: miss nosuch.test") == 1
    # the worker's SIGUSR1 line counts them
    os.kill(s.proc.pid, signal.SIGUSR1)
    s.wait_log(r"resolve_hits 2, resolve_misses 3, resolve_names 2")

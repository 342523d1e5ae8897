"""Issue 12, item 1: no client can stall a worker's helper threads (name
lookups, password checks) for the others.

A real sockd (one worker) runs in a network namespace of the test's own
whose resolver never answers: /etc/netns/NAME/resolv.conf names
127.0.0.1, where a small process inside the namespace reads every query
and drops it (the resolver's own defaults then make each lookup of an
unknown name hang for about 10 s); /etc/netns/NAME/hosts names the one
host a normal client goes to.  ``ip netns exec`` mounts both for sockd;
the host's files are never touched.  The clients are this test's: their
sockets are made by a thread that has entered the namespace (setns), the
attacker's from 127.0.0.1, the normal client's from 127.0.0.2.

Each attack is followed by a normal client: its RFC 1929 login (bcrypt,
cost 10 as ``sockd-passwd`` writes it) and its CONNECT to a host name,
then a few bytes echoed, must take less than LIMIT seconds.
"""

import concurrent.futures
import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

import bcrypt
import pytest

import helpers

LIMIT = 2.0                 # seconds a normal client's login and CONNECT may take after a flood
PATIENCE = 25.0             # seconds the test waits for it at most (before the fix: far longer)
HOST = "www.pools.test"     # in the namespace's hosts file
CLONE_NEWNET = 0x40000000

BLACKHOLE = r'''
import select, socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 53))
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", 53))
t.listen(64)
held = {}
p = select.poll()
p.register(u, select.POLLIN)
p.register(t, select.POLLIN)
print("ready", flush=True)
while True:
    for fd, ev in p.poll():
        if fd == u.fileno():
            u.recv(65536)                         # a query: never answered
        elif fd == t.fileno():
            c, _ = t.accept()
            held[c.fileno()] = c
            p.register(c, select.POLLIN)
        elif not held[fd].recv(65536):
            p.unregister(fd)
            held.pop(fd).close()
'''


class Netns:
    """A network namespace whose resolver never answers, and a thread inside
    it that makes the test's sockets there."""

    def __init__(self, name, ip):
        self.name = name
        self.prefix = [ip, "netns", "exec", name]
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.threads = concurrent.futures.ThreadPoolExecutor(1, initializer=self.enter)

    def enter(self):
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def call(self, fn, *args):
        """``fn(*args)`` run by the thread inside the namespace."""
        return self.threads.submit(fn, *args).result(60)

    def connect(self, address, source, timeout=PATIENCE):
        return self.call(connect_from, address, source, timeout)


def connect_from(address, source, timeout):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(address)
    return s


@pytest.fixture
def deadns(tmp_path):
    """A namespace with loopback up, a resolver that drops every query, a
    hosts file naming HOST; removed at the end, with /etc/netns/NAME."""
    with helpers.network_namespace("sockd-pools") as (name, ip):
        yield from dead_resolver(name, ip)


def dead_resolver(name, ip):
    """In namespace ``name``: its own resolv.conf and hosts, and a resolver
    on 127.0.0.1:53 that drops every query."""
    etc = "/etc/netns/" + name
    hole = None
    ns = None
    try:
        os.makedirs(etc)
        with open(etc + "/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\n")           # the resolver's own timeouts and attempts
        with open(etc + "/hosts", "w") as f:
            f.write("127.0.0.1 localhost\n127.0.0.1 %s\n" % HOST)
        hole = subprocess.Popen([ip, "netns", "exec", name, helpers.PYTHON, "-c", BLACKHOLE],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert hole.stdout.readline().strip() == "ready"
        ns = Netns(name, ip)
        yield ns
    finally:
        if ns is not None:
            ns.threads.shutdown()
        if hole is not None:
            helpers.kill_pid(hole)
            hole.stdout.close()
        shutil.rmtree(etc, ignore_errors=True)


@pytest.fixture
def passwd(tmp_path):
    path = tmp_path / "users"
    hashes = [bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode() for _ in range(2)]
    path.write_text("tb:%s\nalice:%s\n" % tuple(hashes))
    return path


@pytest.fixture
def setup(deadns, passwd, start_sockd, request):
    """sockd (one worker) in the namespace, and an echo server there that
    HOST names.  A test may add lines (``@pytest.mark.conf("...")``)."""
    extra = "".join(m.args[0] for m in request.node.iter_markers("conf"))
    echo = deadns.call(helpers.TCPServer, helpers.echo_handler)
    s = start_sockd("methods username none\npasswd %s\ndeny-private-destinations no\npermit 127.0.0.0/8\n%s"
                    % (passwd, extra), workers=1, prefix=deadns.prefix)
    yield deadns, s, echo
    echo.close()
    assert "internal error" not in s.log(), s.log()


# --- SOCKS 5 by hand --------------------------------------------------------------------------------

def userpass(user, password):
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


def domain(name, port):
    return b"\x03" + bytes([len(name)]) + name.encode() + struct.pack("!H", port)


def reply(sock):
    head = helpers.recv_exact(sock, 4)
    n = {1: 4, 4: 16}.get(head[3])
    if n is None:
        n = helpers.recv_exact(sock, 1)[0]
    rest = helpers.recv_exact(sock, n + 2)
    return head[1], rest


def normal_client(ns, s, echo):
    """Log in as tb from 127.0.0.2, CONNECT to HOST, echo a few bytes;
    returns the seconds it took (PATIENCE or more when it did not finish;
    an AssertionError when sockd gave up on it first)."""
    t0 = time.monotonic()
    c = ns.connect(s.addr, "127.0.0.2")
    try:
        c.sendall(b"\x05\x01\x02")
        assert helpers.recv_exact(c, 2) == b"\x05\x02"
        c.sendall(userpass(b"tb", b"right"))
        assert helpers.recv_exact(c, 2) == b"\x01\x00", "the login failed"
        c.sendall(b"\x05\x01\x00" + domain(HOST, echo.port))
        rep, _ = reply(c)
        assert rep == 0, "CONNECT answered %d" % rep
        c.sendall(b"ping")
        assert helpers.recv_exact(c, 4) == b"ping"
    except socket.timeout:
        return time.monotonic() - t0
    except EOFError:
        raise AssertionError("sockd closed the normal client unanswered after %.1f s" % (time.monotonic() - t0))
    finally:
        c.close()
    return time.monotonic() - t0


def worker_report(s):
    """SIGUSR1: the worker's counters, as a dict."""
    before = len(re.findall(r"worker 1 \(pid", s.log()))
    os.kill(s.proc.pid, signal.SIGUSR1)
    helpers.wait_for(lambda: len(re.findall(r"worker 1 \(pid", s.log())) > before, 10, what="the worker's report")
    line = re.findall(r"worker 1 \(pid .*", s.log())[-1]
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", line.split("ago: ", 1)[1])}


# --- the attacks -------------------------------------------------------------------------------------

def flood_logins(address, n):
    """``n`` bogus RFC 1929 logins from 127.0.0.1 (a real user's name, or
    none), each in one write, as fast as they go; the connections are
    returned open."""
    out = []
    for i in range(n):
        c = connect_from(address, "127.0.0.1", 10)
        user = b"alice" if i % 2 else b"nobody%d" % i
        c.sendall(b"\x05\x01\x02" + userpass(user, b"wrong%d" % i))
        out.append(c)
    return out


@pytest.mark.conf("auth failures off\n")      # the pool's own bounds, without the login back-off in front
def test_a_flood_of_bogus_logins_does_not_stall_a_normal_client(setup):
    ns, s, echo = setup
    assert normal_client(ns, s, echo) < LIMIT                       # as it is without a flood
    t0 = time.monotonic()
    flood = ns.call(flood_logins, s.addr, 400)
    sent = time.monotonic() - t0
    try:
        took = normal_client(ns, s, echo)
        assert took < LIMIT, "after 400 bogus logins (sent in %.2f s) a normal login and CONNECT took %.1f s%s" % (
            sent, took, " or more" if took >= PATIENCE else "")
    finally:
        for c in flood:                        # they hang up unread: the server's sockets see a reset
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
    # the checks of clients that have gone are dropped, those over the bounds refused, and the report says so
    def dropped():
        counts = worker_report(s)
        return counts if counts["passwords_dropped"] else None
    counts = helpers.wait_for(dropped, 10, interval=0.5, what="dropped password checks in the worker's report")
    assert counts["passwords_refused"] > 0 and counts["names_refused"] == 0
    s.wait_log(r"refused -- username/password check for \S+ from 127\.0\.0\.1 not run: too many password checks "
               r"waiting from 127\.0\.0\.1 \(helpers queue 64\); logged at most once every 5 seconds")
    assert len(re.findall(r"not run: too many password checks", s.log())) <= 2       # once per 5 s window


def test_with_the_login_back_off_on_the_flood_is_refused_before_the_pool(setup):
    ns, s, echo = setup
    flood = ns.call(flood_logins, s.addr, 400)
    try:
        took = normal_client(ns, s, echo)
        assert took < LIMIT, "after 400 bogus logins a normal login and CONNECT took %.1f s" % took
    finally:
        for c in flood:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
    s.wait_log(r"refused -- username/password authentication for \S+ from 127\.0\.0\.1: too many logins at once "
               r"from 127\.0\.0\.1 \(auth failures; logged at most once every 60 seconds\)")
    assert len(re.findall(r"too many logins at once", s.log())) == 1                 # once per window
    assert "not run: too many password checks" not in s.log()                       # never reached the pool's bound


def udp_names_flood(ns, s, names):
    """From 127.0.0.1: a UDP association, datagrams to ``names`` different
    names that never resolve (all sent at once); the association is then
    closed.  Returns its summary line."""
    c = ns.connect(s.addr, "127.0.0.1", 10)
    u = ns.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", 0))
        announce = socket.inet_aton("127.0.0.1") + struct.pack("!H", u.getsockname()[1])
        c.sendall(b"\x05\x01\x00" + b"\x05\x03\x00\x01" + announce)
        assert helpers.recv_exact(c, 2) == b"\x05\x00"
        rep, rest = reply(c)
        assert rep == 0
        relay = (socket.inet_ntoa(rest[:4]), struct.unpack("!H", rest[4:])[0])
        for i in range(names):
            u.sendto(b"\0\0\0" + domain("n%d.nowhere.test" % i, 53) + b"query", relay)
            if i % 50 == 49:
                time.sleep(0.002)                  # within the socket's buffer: none lost on the way
        time.sleep(0.5)                            # its lookups are under way, hanging
    finally:
        c.close()
        u.close()
    return s.wait_log(r"terminated -- UDP associate from .*").group(0)


def test_a_flood_of_udp_names_does_not_stall_a_normal_client(setup):
    ns, s, echo = setup
    assert normal_client(ns, s, echo) < LIMIT
    summary = udp_names_flood(ns, s, 300)
    took = normal_client(ns, s, echo)
    assert took < LIMIT, "after one association sent to 300 names that never resolve, a normal login and " \
                         "CONNECT took %.1f s%s" % (took, " or more" if took >= PATIENCE else "")
    # two names looked up, the rest dropped and counted
    got = re.search(r"in (\d+) datagrams from 127\.0\.0\.1, .* (\d+) dropped \((\d+) to names beyond its lookups "
                    r"at once\)", summary)
    assert got, summary
    came, dropped, unlooked = map(int, got.groups())
    assert came > 250 and dropped == unlooked == came - 2, summary
    s.wait_log(r"dropped -- UDP associate from unknown\(unknown\)@127\.0\.0\.1: datagram to n\d+\.nowhere\.test not "
               r"looked up: 2 name lookups already under way for this client")


def flood_connects(address, n):
    """``n`` CONNECTs from 127.0.0.1 to names that never resolve, kept open
    (their lookups hang in the worker's threads)."""
    out = []
    for i in range(n):
        c = connect_from(address, "127.0.0.1", 10)
        c.sendall(b"\x05\x01\x00\x05\x01\x00" + domain("c%d.nowhere.test" % i, 80))
        out.append(c)
    return out


def test_lookups_that_hang_hold_only_their_own_address_threads(setup):
    ns, s, echo = setup
    assert normal_client(ns, s, echo) < LIMIT
    flood = ns.call(flood_connects, s.addr, 40)
    try:
        time.sleep(0.5)                            # every thread it may take is stuck in a lookup
        took = normal_client(ns, s, echo)
        assert took < LIMIT, "with 40 CONNECTs to names that never resolve waiting from another address, a " \
                             "normal login and CONNECT took %.1f s%s" % (took, " or more" if took >= PATIENCE else "")
    finally:
        for c in flood:
            c.close()


def test_the_fork_model_still_checks_and_looks_up_in_its_child(deadns, passwd, start_sockd):
    """One client per process: its login and its lookup run inline, in its
    own child (no pool: nobody else to stall)."""
    echo = deadns.call(helpers.TCPServer, helpers.echo_handler)
    try:
        s = start_sockd("methods username none\npasswd %s\ndeny-private-destinations no\npermit 127.0.0.0/8\n"
                        % passwd, model="fork", prefix=deadns.prefix)
        for _ in range(3):
            assert normal_client(deadns, s, echo) < LIMIT
    finally:
        echo.close()

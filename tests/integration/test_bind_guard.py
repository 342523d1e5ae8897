"""BIND facing hostile clients (issue 12, item 6): a client cannot take the
port of a service that is restarting, asks for ports only within ``bind
ports``, holds at most ``limit binds`` listening ports per address, and a
BIND that names no server (DSTIP 0.0.0.0) lets in only the hosts the rules
would let the client reach -- not the programs of the proxy's own host."""

import socket
import struct
import subprocess
import sys
import time

import pytest

import helpers
from helpers import free_port

LOCAL = "permit 127.0.0.0 255.0.0.0\n"



def bind4(proxy, ip, port, source=None):
    """SOCKS 4 BIND: (socket, reply code, address, port) of the first reply."""
    c = socket.create_connection(proxy, 10, source_address=(source, 0) if source else None)
    c.sendall(struct.pack("!BBH4s", 4, 2, port, socket.inet_aton(ip)) + b"fred\0")
    rep = helpers.recv_exact(c, 8)
    return c, rep[1], socket.inet_ntoa(rep[4:8]), struct.unpack("!H", rep[2:4])[0]


def bind5(proxy, ip, port, source=None):
    """SOCKS 5 BIND: (socket, REP, address, port) of the first reply."""
    c = socket.create_connection(proxy, 10, source_address=(source, 0) if source else None)
    c.sendall(b"\x05\x01\x00\x05\x02\x00\x01" + socket.inet_aton(ip) + struct.pack("!H", port))
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    rep = helpers.recv_exact(c, 10)
    return c, rep[1], socket.inet_ntoa(rep[4:8]), struct.unpack("!H", rep[8:10])[0]


def test_a_bind_cannot_take_the_port_of_a_stopped_service(start_sockd):
    """A service on 127.0.0.1 stops for a moment (a restart): a client that
    asks BIND for its port gets one the kernel chooses, and the service can
    have its port back."""
    s = start_sockd(LOCAL)
    service = socket.socket()
    service.bind(("127.0.0.1", 0))
    port = service.getsockname()[1]
    service.close()
    taken = []
    for bind in (bind4, bind5):
        for dst in ("127.0.0.1", "0.0.0.0"):
            c, code, ip, got = bind(s.addr, dst, port)
            taken.append(c)
            assert code in (90, 0) and ip == "127.0.0.1"
            assert got != port, "%s for %s: the client was given the service's port %d" % (
                bind.__name__, dst, port)
    back = socket.socket()
    back.bind(("127.0.0.1", port))          # the service restarts on its own port
    back.close()
    # the port the client was given works: the application server connects back
    c, code, ip, got = bind4(s.addr, "127.0.0.1", port)
    app = socket.create_connection((ip, got), 5)
    assert helpers.recv_exact(c, 8)[1] == 90
    app.sendall(b"hello")
    assert helpers.recv_exact(c, 5) == b"hello"
    for t in taken + [c, app]:
        t.close()


def test_bind_ports_grants_a_port_asked_for_only_within_the_range(start_sockd):
    inside, outside = free_port(), free_port()
    while outside == inside:
        outside = free_port()
    s = start_sockd("bind ports %d-%d\n" % (inside, inside) + LOCAL)
    c, code, ip, got = bind4(s.addr, "0.0.0.0", inside)
    assert (code, got) == (90, inside)
    c2, code, ip, got = bind5(s.addr, "127.0.0.1", outside)
    assert code == 0 and got != outside
    s.wait_log(r"bind -- Bind from .* for 0.0.0.0 \(%d\): listening on 127.0.0.1 port %d" % (inside, inside))
    c.close()
    c2.close()


def test_pending_binds_from_one_address_are_refused_past_the_limit(start_sockd):
    """16 listening BINDs per client address by default, counted across
    workers: the 17th gets a SOCKS failure reply (and one log line); other
    addresses are not held back, and one that has its peer no longer
    counts."""
    s = start_sockd(LOCAL, workers=2)
    held = []
    for i in range(16):
        c, rep, ip, port = (bind5 if i % 2 else bind4)(s.addr, "127.0.0.1", 21)
        assert rep in (0, 90), "BIND %d refused" % (i + 1)
        held.append((c, ip, port))
    c, rep, _, _ = bind5(s.addr, "127.0.0.1", 21)
    assert rep == 1                                       # general failure, not a hang
    c, code, _, _ = bind4(s.addr, "127.0.0.1", 21)
    assert code == 91
    for _ in range(5):
        assert bind5(s.addr, "127.0.0.1", 21)[1] == 1
    other, rep, _, _ = bind5(s.addr, "127.0.0.2", 21, source="127.0.0.2")
    assert rep == 0
    # the application server connects to one: that BIND no longer waits
    c0, ip, port = held[0]
    app = socket.create_connection((ip, port), 5)
    assert helpers.recv_exact(c0, 8)[1] == 90
    helpers.wait_for(lambda: bind5(s.addr, "127.0.0.1", 21)[1] == 0, 5, interval=0.1,
                     what="room once a BIND had its peer")
    text = s.log()
    assert len(text.split("too many BINDs waiting from 127.0.0.1 (limit binds")) == 2, text[-3000:]
    app.close()


# --- DSTIP 0.0.0.0 from a client that is not on loopback --------------------------------------------

@pytest.fixture
def hostns():
    """A network namespace standing for the proxy's host: loopback, and
    10.77.0.1 and 10.77.0.2 on it, addresses that are not loopback, for
    clients that are not on loopback (so deny-private-destinations auto
    applies to them) and hosts that are not either."""
    setup = [["ip", "addr", "add", addr, "dev", "lo"] for addr in ("10.77.0.1/32", "10.77.0.2/32")]
    with helpers.network_namespace(setup=setup) as (name, _):
        yield name


# Runs in the namespace: a client at 10.77.0.1 sends BIND with DSTIP
# 0.0.0.0, then a "program of this host" connects to the port it was given
# from the address in argv[2]; prints the second reply's code (or "hangs").
BIND_FROM_OUTSIDE = r'''
import socket, struct, sys
proxy = ("10.77.0.1", int(sys.argv[1]))
c = socket.create_connection(proxy, 10, source_address=("10.77.0.1", 0))
c.sendall(b"\x05\x01\x00\x05\x02\x00\x01" + bytes(4) + struct.pack("!H", 0))
def exact(s, n):
    d = b""
    while len(d) < n:
        k = s.recv(n - len(d))
        if not k:
            raise EOFError(len(d))
        d += k
    return d
assert exact(c, 2) == b"\x05\x00"
rep = exact(c, 10)
assert rep[1] == 0, rep
ip, port = socket.inet_ntoa(rep[4:8]), struct.unpack("!H", rep[8:10])[0]
p = socket.create_connection((ip, port), 5, source_address=(sys.argv[2], 0))
p.sendall(b"what a program of this host sends")
c.settimeout(5)
try:
    second = exact(c, 10)
except socket.timeout:
    print("hangs")
    sys.exit()
if second[1] == 0:
    c.settimeout(2)
    try:
        got = exact(c, 33)
    except (socket.timeout, EOFError):
        got = b""
    print(0, got.decode(errors="replace"))
else:
    print(second[1])
'''


def bind_from_outside(netns, port, source):
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", BIND_FROM_OUTSIDE, str(port), source],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_bind_that_names_no_server_does_not_let_this_hosts_programs_in(start_sockd, hostns):
    """A client that is not on loopback asks BIND with DSTIP 0.0.0.0 and
    permit 0/0: a program of the proxy's host (127.0.0.1) that connects to
    the port is refused by default (deny-private-destinations auto) and
    gets nothing to the client; a host a rule names literally is let in."""
    s = start_sockd("listen 10.77.0.1:0\npermit 0/0 127.0.0.5/32\npermit 0/0\n",
                    prefix=["ip", "netns", "exec", hostns])
    got = bind_from_outside(hostns, s.port, "127.0.0.1")
    assert got == "2", "a program on this host reached the BIND client: %r" % got
    s.wait_log(r"refused -- Bind from unknown\(unknown\)@10.77.0.1 for 0.0.0.0 \(0\): connection from "
               r"127.0.0.1 port \d+: 127.0.0.1 is private to this host")
    got = bind_from_outside(hostns, s.port, "10.77.0.1")             # this host's other address
    assert got == "2", got
    assert bind_from_outside(hostns, s.port, "127.0.0.5") == "0 what a program of this host sends"
    time.sleep(0.2)
    assert "Traceback" not in s.log()


def test_rules_that_keep_clients_off_this_host_keep_them_off_a_bind_too(start_sockd, hostns):
    """The classic way to protect local services, deny lines for this
    host's addresses (the guard turned off): a BIND with DSTIP 0.0.0.0 used
    to let a program of this host reach the client; now the deny line
    refuses it as it refuses a CONNECT there, and a host the rules let the
    client reach still gets through."""
    s = start_sockd("listen 10.77.0.1:0\ndeny-private-destinations no\n"
                    "deny 0/0 127.0.0.0/8\ndeny 0/0 10.77.0.1/32\npermit 0/0\n",
                    prefix=["ip", "netns", "exec", hostns])
    got = bind_from_outside(hostns, s.port, "127.0.0.1")
    assert got == "2", "a program on this host reached the BIND client: %r" % got
    s.wait_log(r"refused -- Bind from unknown\(unknown\)@10.77.0.1 for 0.0.0.0 \(0\): connection from "
               r"127.0.0.1 port \d+ by .*sockd0.conf:3")
    assert bind_from_outside(hostns, s.port, "10.77.0.2") == "0 what a program of this host sends"

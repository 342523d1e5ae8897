"""One table of "may this client go there?" cases, run through every path
that asks it of a real sockd: CONNECT, BIND, a UDP datagram, and the
re-check of a live connection after a reload (``reload recheck yes``).

All four ask decision.decide; this shows that they get the same answer,
the private-destination guard included (the re-check skipped it once)."""

import os
import re
import signal
import socket
import struct

import pytest

import helpers
from helpers import wait_for

# (name, sockd.conf rules, destination, permitted?)
CASES = [
    ("named-by-line", "permit 0/0 127.0.0.2/32\n", "127.0.0.2", True),
    ("no-matching-line", "permit 0/0 127.0.0.2/32\n", "127.0.0.3", False),
    ("denied-by-line", "deny 0/0 127.0.0.3/32\npermit 0/0\n", "127.0.0.3", False),
    ("permitted-after-a-deny", "deny 0/0 127.0.0.3/32\npermit 0/0\n", "127.0.0.2", True),
    ("private-guard", "deny-private-destinations yes\npermit 0/0\n", "127.0.0.2", False),
    ("guard-and-a-line-naming-it", "deny-private-destinations yes\npermit 0/0 127.0.0.0/8\n", "127.0.0.2", True),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    name, rules, dst, ok = request.param
    tcp = helpers.TCPServer(helpers.echo_handler, host=dst)
    udp = helpers.UDPEcho(dst)
    yield rules, dst, ok, tcp, udp
    tcp.close()
    udp.close()


def read5(c):
    head = helpers.recv_exact(c, 4)
    rest = helpers.recv_exact(c, 6 if head[3] == 1 else 18)
    return head[1], rest


def test_connect(start_sockd, case):
    rules, dst, ok, tcp, _ = case
    s = start_sockd(rules)
    c, rep, _ = helpers.socks5_connect(s.addr, dst, tcp.port)
    assert rep == (0 if ok else 2)
    c.close()


def test_bind(start_sockd, case):
    rules, dst, ok, tcp, _ = case
    s = start_sockd(rules)
    c = socket.create_connection(s.addr, 5)
    c.sendall(b"\x05\x01\x00" + b"\x05\x02\x00\x01" + socket.inet_aton(dst) + struct.pack("!H", tcp.port))
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    rep, _ = read5(c)
    assert rep == (0 if ok else 2)
    c.close()


def test_udp_datagram(start_sockd, case):
    rules, dst, ok, _, udp = case
    # the association is granted by any permit line for the client; the
    # datagram is then judged on its own
    s = start_sockd(rules)
    c = socket.create_connection(s.addr, 5)
    c.sendall(b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(6))
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    rep, rest = read5(c)
    assert rep == 0
    relay = (socket.inet_ntoa(rest[:4]), struct.unpack("!H", rest[4:6])[0])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(1.5)
    u.sendto(b"\x00\x00\x00\x01" + socket.inet_aton(dst) + struct.pack("!H", udp.port) + b"ping", relay)
    if ok:
        data, _ = u.recvfrom(65535)
        assert data.endswith(b"ping")
    else:
        s.wait_log(r"refused -- UDP associate .*: datagram to %s \(%d\).*; dropped" % (re.escape(dst), udp.port))
        u.settimeout(0.3)
        with pytest.raises(socket.timeout):
            u.recvfrom(65535)
    u.close()
    c.close()


def test_recheck_after_reload(start_sockd, case):
    rules, dst, ok, tcp, _ = case
    s = start_sockd("permit 0/0\n")
    c, rep, _ = helpers.socks5_connect(s.addr, dst, tcp.port)
    assert rep == 0
    tmp = s.conf_path + ".new"
    with open(tmp, "w") as f:
        f.write("listen 127.0.0.1:0\nreload recheck yes\n" + rules)
    os.replace(tmp, s.conf_path)
    os.kill(s.proc.pid, signal.SIGHUP)
    wait_for(lambda: re.search(r"reloaded |reload failed", s.log()), 15, what="the reload")
    assert "reload failed" not in s.log()
    c.settimeout(3)
    if ok:
        c.sendall(b"still here")
        assert helpers.recv_exact(c, 10) == b"still here"
    else:
        s.wait_log(r"no longer permitted after reload")
        assert helpers.recv_all(c) == b""
    c.close()

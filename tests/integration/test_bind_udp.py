"""BIND, UDP ASSOCIATE, IPv6, the route file and urgent data, with real
clients (Dante's socksify around socat and nc, PySocks, curl) and raw ones."""

import os
import socket
import struct
import subprocess
import time

import pytest

import helpers
from helpers import free_port, need

LOCAL = "permit 127.0.0.0 255.0.0.0\npermit ::1/128\n"



def socksify_env(version, port):
    env = dict(os.environ)
    env.pop("SOCKS4_SERVER", None)
    env.pop("SOCKS5_SERVER", None)
    env["SOCKS%d_SERVER" % version] = "127.0.0.1:%d" % port
    env["SOCKS_AUTOADD_LANROUTES"] = "no"      # else loopback counts as LAN and goes direct
    return env


def UDPEcho(host="127.0.0.1"):
    return helpers.UDPEcho(host, prefix=b"echo:")


@pytest.fixture
def udp_echo():
    e = UDPEcho()
    yield e
    e.close()


# --- BIND ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_socksify_socat_listens_through_sockd(start_sockd, version, model):
    socksify = need("socksify")
    need("socat")
    bp = free_port()
    # socat listens on a port of its choosing: the administrator allows it
    # (by default a BIND gets a port the kernel chooses: issue 12)
    s = start_sockd("bind ports %d-%d\n" % (bp, bp) + LOCAL, model=model)
    p = subprocess.Popen([socksify, "socat", "-T", "5", "TCP-LISTEN:%d,bind=127.0.0.1" % bp,
                          "SYSTEM:echo bound-hello"], env=socksify_env(version, s.port),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        s.wait_log(r"bind -- Bind from .*listening on 127.0.0.1 port %d" % bp)
        c = socket.create_connection(("127.0.0.1", bp), 5)
        assert helpers.recv_all(c) == b"bound-hello\n"
        c.close()
        s.wait_log(r"connected -- Bind from .* 127.0.0.1 port \d+ connected")
    finally:
        helpers.kill_pid(p)


def socks4_bind(proxy, app_ip, app_port, user="u"):
    c = socket.create_connection(proxy, 10)
    c.sendall(struct.pack("!BBH4s", 4, 2, app_port, socket.inet_aton(app_ip)) + user.encode() + b"\0")
    rep = helpers.recv_exact(c, 8)
    return c, rep[1], socket.inet_ntoa(rep[4:8]), struct.unpack("!H", rep[2:4])[0]


def socks5_bind(proxy, app_ip, app_port):
    c = socket.create_connection(proxy, 10)
    fam6 = ":" in app_ip
    addr = (b"\x04" + socket.inet_pton(socket.AF_INET6, app_ip)) if fam6 else (b"\x01" + socket.inet_aton(app_ip))
    c.sendall(b"\x05\x01\x00" + b"\x05\x02\x00" + addr + struct.pack("!H", app_port))
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    return c, read5(c)


def read5(c):
    head = helpers.recv_exact(c, 4)
    if head[3] == 1:
        rest = helpers.recv_exact(c, 6)
        ip = socket.inet_ntoa(rest[:4])
    else:
        rest = helpers.recv_exact(c, 18)
        ip = socket.inet_ntop(socket.AF_INET6, rest[:16])
    return head[1], ip, struct.unpack("!H", rest[-2:])[0]


def test_socks4_bind_two_replies_and_relay(start_sockd, model):
    s = start_sockd(LOCAL, model=model)
    c, code, ip, port = socks4_bind(s.addr, "127.0.0.1", 21)
    assert code == 90 and ip == "127.0.0.1" and port > 0          # never 0.0.0.0
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    app.connect((ip, port))
    rep2 = helpers.recv_exact(c, 8)
    assert rep2[1] == 90
    assert socket.inet_ntoa(rep2[4:8]) == "127.0.0.1"
    assert struct.unpack("!H", rep2[2:4])[0] == app.getsockname()[1]   # the peer's port
    app.sendall(b"from the server")
    assert helpers.recv_exact(c, 15) == b"from the server"
    c.sendall(b"from the client")
    assert helpers.recv_exact(app, 15) == b"from the client"
    app.close()
    assert helpers.recv_all(c) == b""          # the server's EOF, passed on as a half-close
    c.close()
    s.wait_log(r"terminated -- Bind from u\(unknown\)@127.0.0.1 for 127.0.0.1 \(ftp\). "
               r"15 bytes from 127.0.0.1, 15 bytes from 127.0.0.1")


def test_bind_checks_the_peer(start_sockd):
    s = start_sockd(LOCAL)
    c, code, ip, port = socks4_bind(s.addr, "127.0.0.1", 21)
    intruder = socket.socket()
    intruder.bind(("127.0.0.9", 0))
    intruder.connect((ip, port))
    rep2 = helpers.recv_exact(c, 8)
    assert rep2[1] == 91
    assert helpers.recv_all(c) == b""
    s.wait_log(r"failed -- Bind from .*Error: connected to wrong host 127.0.0.9")
    intruder.close()
    # relaxed
    s2 = start_sockd("bind check-peer no\n" + LOCAL)
    c, code, ip, port = socks4_bind(s2.addr, "127.0.0.1", 21)
    other = socket.create_connection((ip, port), 5, source_address=("127.0.0.9", 0))
    assert helpers.recv_exact(c, 8)[1] == 90
    other.close()


@pytest.mark.serial
def test_bind_times_out(start_sockd):
    s = start_sockd("timeout connect 1\n" + LOCAL)
    c, code, ip, port = socks4_bind(s.addr, "127.0.0.1", 21)
    assert code == 90
    t0 = time.monotonic()
    assert helpers.recv_exact(c, 8)[1] == 91
    assert 0.8 < time.monotonic() - t0 < 5
    s.wait_log("timed-out -- Bind from")


def test_bind_is_refused_by_the_rules(start_sockd):
    s = start_sockd("deny 127.0.0.0/8 127.0.0.1/32 eq 21\n" + LOCAL)
    c, code, ip, port = socks4_bind(s.addr, "127.0.0.1", 21)
    assert code == 91
    s.wait_log(r"refused -- Bind from u\(unknown\)@127.0.0.1 for 127.0.0.1 \(ftp\) by")


def test_socks5_bind_over_ipv6(start_sockd):
    s = start_sockd("listen [::1]:0\n" + LOCAL)
    assert s.ports[0][0] == "::1"
    c, (rep, ip, port) = socks5_bind(("::1", s.port), "::1", 21)
    assert rep == 0 and ip == "::1"
    app = socket.create_connection(("::1", port), 5)
    rep2, pip, pport = read5(c)
    assert rep2 == 0 and pip == "::1" and pport == app.getsockname()[1]
    app.sendall(b"six")
    assert helpers.recv_exact(c, 3) == b"six"


# --- UDP ASSOCIATE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tool", ["socat", "nc"])
def test_socksify_udp(start_sockd, udp_echo, tool, model):
    socksify = need("socksify")
    need(tool)
    s = start_sockd(LOCAL, model=model)
    if tool == "socat":
        cmd = [socksify, "socat", "-T", "3", "-", "UDP:127.0.0.1:%d" % udp_echo.port]
    else:
        cmd = [socksify, "nc", "-u", "-w", "2", "127.0.0.1", str(udp_echo.port)]
    r = subprocess.run(cmd, input=b"hi\n", env=socksify_env(5, s.port), capture_output=True, timeout=20)
    assert r.stdout == b"echo:hi\n", r
    s.wait_log(r"terminated -- UDP associate from .* 3 bytes in 1 datagrams from 127.0.0.1, "
               r"8 bytes in 1 datagrams to it")


def pysocks_udp(port):
    import socks
    u = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    u.set_proxy(socks.SOCKS5, "127.0.0.1", port)
    u.settimeout(5)
    return u


def test_pysocks_udp_round_trip(start_sockd, udp_echo):
    s = start_sockd(LOCAL)
    u = pysocks_udp(s.port)
    u.sendto(b"one", ("127.0.0.1", udp_echo.port))
    assert u.recvfrom(100) == (b"echo:one", ("127.0.0.1", udp_echo.port))
    u.sendto(b"two", ("localhost", udp_echo.port))           # sockd resolves the name
    assert u.recvfrom(100)[0] == b"echo:two"
    u.close()
    s.wait_log(r"terminated -- UDP associate .* 6 bytes in 2 datagrams")


def udp_associate(proxy, announce=("0.0.0.0", 0), src=None):
    """Raw UDP ASSOCIATE: returns (control socket, udp socket, relay address)."""
    c = socket.create_connection(proxy, 10)
    c.sendall(b"\x05\x01\x00" + b"\x05\x03\x00\x01" + socket.inet_aton(announce[0]) + struct.pack("!H", announce[1]))
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    rep, ip, port = read5(c)
    assert rep == 0
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(src or ("127.0.0.1", 0))
    u.settimeout(1.5)
    return c, u, (ip, port)


def hdr(ip, port, frag=0):
    return b"\x00\x00" + bytes([frag]) + b"\x01" + socket.inet_aton(ip) + struct.pack("!H", port)


def test_udp_rules_per_datagram_frag_and_sources(start_sockd, udp_echo):
    other = UDPEcho()
    try:
        conf = "deny 127.0.0.0/8 127.0.0.1/32 eq %d\n" % other.port + LOCAL
        s = start_sockd(conf)
        c, u, relay = udp_associate(s.addr)
        assert relay[0] == "127.0.0.1"
        u.sendto(hdr("127.0.0.1", udp_echo.port) + b"ok", relay)
        data, _ = u.recvfrom(1000)
        assert data == hdr("127.0.0.1", udp_echo.port) + b"echo:ok"
        u.sendto(hdr("127.0.0.1", other.port) + b"denied", relay)           # denied: dropped, logged
        u.sendto(hdr("127.0.0.1", udp_echo.port, frag=1) + b"fragment", relay)  # FRAG != 0: dropped
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.7", 0))
        stranger.sendto(hdr("127.0.0.1", udp_echo.port) + b"stranger", relay)  # not the client: dropped
        with pytest.raises(socket.timeout):
            u.recvfrom(1000)
        assert not other.seen
        assert [d for d, _ in udp_echo.seen] == [b"ok"]
        s.wait_log(r"refused -- UDP associate from .*: datagram to 127.0.0.1 \(%d\) by .*:2; dropped" % other.port)
        c.close()
        s.wait_log(r"terminated -- UDP associate .* 3 dropped")
    finally:
        other.close()


@pytest.mark.parametrize("strict", [True, False])
def test_udp_strict_and_lenient_ports(start_sockd, udp_echo, strict):
    s = start_sockd(("udp strict yes\n" if strict else "udp strict no\n") + LOCAL)
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0))
    c, u, relay = udp_associate(s.addr, announce=("127.0.0.1", u1.getsockname()[1]))
    u.close()
    u1.settimeout(1.5)
    u1.sendto(hdr("127.0.0.1", udp_echo.port) + b"announced", relay)
    assert u1.recvfrom(1000)[0].endswith(b"echo:announced")
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)           # another port of the client
    u2.bind(("127.0.0.1", 0))
    u2.settimeout(1.5)
    u2.sendto(hdr("127.0.0.1", udp_echo.port) + b"moved", relay)
    if strict:
        with pytest.raises(socket.timeout):
            u2.recvfrom(1000)
    else:
        assert u2.recvfrom(1000)[0].endswith(b"echo:moved")       # learnt


def test_udp_advertise_and_lifetime(start_sockd, udp_echo):
    s = start_sockd("udp advertise 192.0.2.10\n" + LOCAL)
    c = socket.create_connection(s.addr, 5)
    c.sendall(b"\x05\x01\x00\x05\x03\x00\x01" + bytes(6))
    helpers.recv_exact(c, 2)
    rep, ip, port = read5(c)
    assert (rep, ip) == (0, "192.0.2.10")
    # the relay lives exactly as long as the TCP connection
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1.5)
    u.sendto(hdr("127.0.0.1", udp_echo.port) + b"x", ("127.0.0.1", port))
    assert u.recvfrom(100)[0].endswith(b"echo:x")
    c.close()
    s.wait_log("terminated -- UDP associate")
    u.sendto(hdr("127.0.0.1", udp_echo.port) + b"y", ("127.0.0.1", port))
    with pytest.raises((socket.timeout, ConnectionRefusedError)):
        u.recvfrom(100)


def test_udp_over_ipv6(start_sockd):
    echo6 = UDPEcho("::1")
    try:
        s = start_sockd("listen [::1]:0\n" + LOCAL)
        c = socket.create_connection(("::1", s.port), 5)
        c.sendall(b"\x05\x01\x00\x05\x03\x00\x04" + bytes(18))
        helpers.recv_exact(c, 2)
        rep, ip, port = read5(c)
        assert rep == 0 and ip == "::1"
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u.settimeout(2)
        h = b"\x00\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!H", echo6.port)
        u.sendto(h + b"six", ("::1", port))
        assert u.recvfrom(100)[0] == h + b"echo:six"
    finally:
        echo6.close()


def test_udp_needs_a_permit_line(start_sockd):
    s = start_sockd("permit 10.0.0.0/8\n")
    c = socket.create_connection(s.addr, 5)
    c.sendall(b"\x05\x01\x00\x05\x03\x00\x01" + bytes(6))
    helpers.recv_exact(c, 2)
    assert read5(c)[0] == 2


# --- IPv6, routes, urgent data -----------------------------------------------------------------------

def test_curl_over_ipv6(start_sockd, tmp_path):
    curl = need("curl")
    d = tmp_path / "www6"
    d.mkdir()
    (d / "six.txt").write_text("over IPv6\n")
    www6 = helpers.HTTPServer(d, host="::1")
    try:
        s = start_sockd("listen [::1]:0\npermit ::1/128 ::1/128\n")
        r = subprocess.run([curl, "-sS", "--max-time", "10", "-x", "socks5h://[::1]:%d" % s.port,
                            www6.url("six.txt")], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout == "over IPv6\n", r.stderr
        s.wait_log(r"connected -- Connect from unknown\(unknown\)@::1 to ::1")
    finally:
        www6.close()


def test_ipv6_rules_refuse(start_sockd, echo_server):
    six = helpers.TCPServer(helpers.echo_handler, host="::1")
    try:
        s = start_sockd("deny 0/0 ::1/128\n" + LOCAL)
        c, rep, _ = helpers.socks5_connect(s.addr, "::1", six.port)
        assert rep == 2
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        assert rep == 0
    finally:
        six.close()


def test_route_file_chooses_source_and_bind_address(start_sockd, tmp_path):
    routes = tmp_path / "sockd.route"
    routes.write_text("# if_addr dst_addr dst_mask\n127.0.0.2 127.0.0.1 255.255.255.255\n"
                      "127.0.0.3 .nowhere.invalid 0.0.0.0\n")
    srv = helpers.TCPServer(lambda conn: conn.sendall(repr(conn.getpeername()[0]).encode()))
    try:
        s = start_sockd("route %s\n%s" % (routes, LOCAL))
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port)
        assert rep == 0 and helpers.recv_all(c) == b"'127.0.0.2'"
        c, code, ip, port = socks4_bind(s.addr, "127.0.0.1", 21)
        assert code == 90 and ip == "127.0.0.2"
        # no route for the destination: the classic error, and a failure reply
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.5", srv.port)
        assert rep == 3
        s.wait_log(r"\*\*\*Cannot find appropriate interface to communicate with 127.0.0.5")
    finally:
        srv.close()


def test_route_file_errors_have_line_numbers(tmp_path):
    routes = tmp_path / "bad.route"
    routes.write_text("127.0.0.2 127.0.0.0 255.0.0.0\nnot-an-address 10.0.0.0 255.0.0.0\n127.0.0.1 10.0.0.0\n")
    conf = tmp_path / "s.conf"
    conf.write_text("route %s\npermit 0/0\n" % routes)
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:2: if_addr must be" % routes in r.stderr
    assert "%s:3: missing dst_mask" % routes in r.stderr
    conf.write_text("route /nonexistent/route\npermit 0/0\n")
    r = subprocess.run([helpers.SOCKD, "-V", "-f", str(conf)], capture_output=True, text=True)
    assert "s.conf:1: Unable to open routing file (/nonexistent/route)" in r.stderr


def test_urgent_data_keeps_flowing(start_sockd, model):
    got = []

    def handler(conn):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        data = b""
        while len(data) < 5:
            chunk = conn.recv(10)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.sendall(b"done")
    srv = helpers.TCPServer(handler)
    try:
        s = start_sockd(LOCAL, model=model)
        c, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", srv.port)
        c.sendall(b"ab")
        time.sleep(0.05)
        c.send(b"c", socket.MSG_OOB)                 # TCP urgent data
        time.sleep(0.05)
        c.sendall(b"de")
        assert helpers.recv_exact(c, 4) == b"done"
        assert got == [b"abcde"]
    finally:
        srv.close()

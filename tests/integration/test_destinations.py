"""Hostile destinations (issue 12, items 3 and 4), against a real sockd.

* The private-destination guard judges the address actually connected to:
  with ``deny-private-destinations yes``, a permit line that names its
  destination by a ``.zone`` does not let names of the zone that resolve
  to loopback or to 169.254.169.254 through, over SOCKS 5, SOCKS 4A and
  UDP; only a line naming the address literally does.  sockd gets its own
  /etc/hosts in a mount namespace (the host's file is never touched).
* Unspecified destinations (0.0.0.0, ``::``, names that resolve to them,
  SOCKS 4's DSTIP 0.0.0.0, datagrams) are refused: the kernel reads them
  as "this host" and they reached loopback services past the deny lines.
  The rules also see through the IPv4-compatible and -translated IPv6
  spellings of a loopback address.
"""

import socket
import struct

import pytest

import helpers

ZONE_HOSTS = """\
127.0.0.3 svc.example.test
127.0.0.4 other.example.test
169.254.169.254 metadata.example.test
"""


@pytest.fixture
def servers():
    """Echo servers, TCP and UDP, on the given addresses; closed after."""
    made = []

    def make(host, udp=False):
        srv = helpers.UDPEcho(host) if udp else helpers.TCPServer(helpers.echo_handler, host=host)
        made.append(srv)
        return srv
    yield make
    for srv in made:
        srv.close()


def socks4a(proxy, name, port, user="joe"):
    s = socket.create_connection(proxy, 5)
    s.sendall(struct.pack("!BBH4s", 4, 1, port, b"\0\0\0\x01") + user.encode() + b"\0" + name.encode() + b"\0")
    rep = helpers.recv_exact(s, 8)
    s.close()
    return rep[1]


def socks4_ip(proxy, ip, port, user="joe"):
    s = socket.create_connection(proxy, 5)
    s.sendall(struct.pack("!BBH4s", 4, 1, port, socket.inet_aton(ip)) + user.encode() + b"\0")
    rep = helpers.recv_exact(s, 8)
    return s, rep[1]


def socks5_name(proxy, name, port):
    """SOCKS 5 CONNECT with the destination as a name (ATYP 3), whatever it
    looks like.  Returns REP."""
    s = socket.create_connection(proxy, 5)
    s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name.encode() + struct.pack("!H", port))
    assert helpers.recv_exact(s, 2) == b"\x05\x00"
    rep = helpers.recv_exact(s, 2)[1]
    s.close()
    return rep


def udp_associate(proxy):
    c = socket.create_connection(proxy, 5)
    c.sendall(b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(6))
    assert helpers.recv_exact(c, 2) == b"\x05\x00"
    head = helpers.recv_exact(c, 10)
    assert head[1] == 0
    relay = (socket.inet_ntoa(head[4:8]), struct.unpack("!H", head[8:10])[0])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(1.0)
    return c, u, relay


def udp_header(host, port):
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return b"\x00\x00\x00\x01" + packed + struct.pack("!H", port)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
        return b"\x00\x00\x00\x04" + packed + struct.pack("!H", port)
    except OSError:
        return b"\x00\x00\x00\x03" + bytes([len(host)]) + host.encode() + struct.pack("!H", port)


def echoed(u, relay, host, port):
    u.sendto(udp_header(host, port) + b"ping", relay)
    try:
        data, _ = u.recvfrom(65535)
    except socket.timeout:
        return False
    return data.endswith(b"ping")


@pytest.fixture
def hosts_namespace(tmp_path):
    """A prefix that runs sockd in a mount namespace of its own, with
    ZONE_HOSTS bind-mounted over /etc/hosts there."""
    helpers.need("unshare")
    path = tmp_path / "hosts"
    path.write_text(ZONE_HOSTS + open("/etc/hosts").read())
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(path)]


# --- item 3: the guard and destinations named by host name or .zone ---------------------------------

def test_a_zone_line_does_not_open_private_addresses_of_the_zone(start_sockd, servers, hosts_namespace):
    svc = servers("127.0.0.3")
    other = servers("127.0.0.4")
    other_udp = servers("127.0.0.4", udp=True)
    s = start_sockd("deny-private-destinations yes\ntimeout connect 3\n"
                    "permit 0/0 127.0.0.3 255.255.255.255\n"        # names 127.0.0.3 literally
                    "permit 0/0 .example.test\n", prefix=hosts_namespace)
    # a line naming the address literally lets it through, by name too
    c, rep, _ = helpers.socks5_connect(s.addr, "svc.example.test", svc.port)
    assert rep == 0
    c.sendall(b"hello")
    assert helpers.recv_exact(c, 5) == b"hello"
    c.close()
    # a name of the zone that resolves to loopback: refused, over SOCKS 5 and 4A
    c, rep, _ = helpers.socks5_connect(s.addr, "other.example.test", other.port)
    assert rep == 2
    c.close()
    s.wait_log(r"refused -- Connect from .* to other\.example\.test \(\d+\): 127\.0\.0\.4 is private to this host "
               r"\(deny-private-destinations\)")
    assert socks4a(s.addr, "other.example.test", other.port) == 91
    # the cloud metadata address: refused at once, never connected to
    c, rep, _ = helpers.socks5_connect(s.addr, "metadata.example.test", 80)
    assert rep == 2
    c.close()
    s.wait_log(r"169\.254\.169\.254 is private to this host")
    # and a datagram to the name is dropped
    c, u, relay = udp_associate(s.addr)
    assert not echoed(u, relay, "other.example.test", other_udp.port)
    s.wait_log(r"datagram to other\.example\.test \(%d\).*127\.0\.0\.4 is private.*dropped" % other_udp.port)
    u.close()
    c.close()


# --- item 4: unspecified destinations and the IPv6 spellings of IPv4 --------------------------------

LOOPBACK_DENIED = "deny 0/0 127.0.0.0 255.0.0.0\ndeny 0/0 ::1/128\npermit 0/0\n"


def test_unspecified_destinations_are_refused(start_sockd, servers):
    v4 = servers("127.0.0.1")
    v6 = servers("::1")
    s = start_sockd(LOOPBACK_DENIED)
    for host, port in (("0.0.0.0", v4.port), ("::", v6.port), ("0", v4.port)):
        c, rep, _ = helpers.socks5_connect(s.addr, host, port)
        c.close()
        assert rep == 2, (host, rep)
    for name in ("0.0.0.0", "::"):                  # the same texts sent as names (ATYP 3)
        assert socks5_name(s.addr, name, v4.port if "." in name else v6.port) == 2, name
    s.wait_log(r"refused -- Connect from .* to 0\.0\.0\.0 \(\d+\): 0\.0\.0\.0 is the unspecified address")
    s.wait_log(r"refused -- Connect from .* to :: \(\d+\): :: is the unspecified address")
    s.wait_log(r"refused -- Connect from .* to 0 \(\d+\): 0\.0\.0\.0 is the unspecified address")
    c, rep = socks4_ip(s.addr, "0.0.0.0", v4.port)
    assert rep == 91
    c.close()
    # the loopback spellings the deny lines must catch
    for host in ("::127.0.0.1", "::ffff:0:127.0.0.1", "::ffff:127.0.0.1"):
        c, rep, _ = helpers.socks5_connect(s.addr, host, v4.port)
        c.close()
        assert rep == 2, (host, rep)
    s.wait_log(r"refused -- Connect from .* to ::ffff:0:7f00:1 \(\d+\) by .*sockd0.conf:2")       # (line 1 is listen)
    s.wait_log(r"refused -- Connect from .* to ::127\.0\.0\.1 \(\d+\) by .*sockd0.conf:2")


def test_datagrams_to_unspecified_destinations_are_dropped(start_sockd, servers):
    v4 = servers("127.0.0.1", udp=True)
    s = start_sockd(LOOPBACK_DENIED)
    c, u, relay = udp_associate(s.addr)
    assert not echoed(u, relay, "0.0.0.0", v4.port)
    assert not echoed(u, relay, "0", v4.port)
    assert v4.seen == []                         # (the kernel would have delivered them to loopback)
    s.wait_log(r"datagram to 0\.0\.0\.0 \(%d\) \(0\.0\.0\.0 is the unspecified address.*dropped" % v4.port)
    u.close()
    c.close()

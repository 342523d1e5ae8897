"""The PROXY protocol (HAProxy), versions 1 and 2, on input: how a load
balancer in front of sockd tells it who the real client is.  Pure and
incremental, like the SOCKS codecs: ``parse(buf)`` returns None (need more),
or (header, bytes used), or raises ProtocolError.

A header is a Proxied(src_ip, src_port, dst_ip, dst_port), or Local() for
the balancer's own connections (health checks: v2 LOCAL, v1 UNKNOWN).
Everything is bounded: a v1 line is at most 107 bytes, a v2 header at most
MAX_V2 bytes of addresses and TLVs (which are skipped).
"""

import socket
import struct

from .errors import ProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
MAX_V2 = 1024


class Proxied:
    __slots__ = ("src_ip", "src_port", "dst_ip", "dst_port")

    def __init__(self, src_ip, src_port, dst_ip, dst_port):
        self.src_ip, self.src_port, self.dst_ip, self.dst_port = src_ip, src_port, dst_ip, dst_port

    def __eq__(self, other):
        return isinstance(other, Proxied) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        return "Proxied(%r, %r, %r, %r)" % (self.src_ip, self.src_port, self.dst_ip, self.dst_port)


class Local:
    """The balancer speaks for itself (a health check): no client."""

    def __eq__(self, other):
        return isinstance(other, Local)

    def __repr__(self):
        return "Local()"


def parse(buf):
    if not buf:
        return None
    if buf[0] == 0x0D:
        return _parse_v2(buf)
    if buf[0] == ord("P"):
        return _parse_v1(buf)
    raise ProtocolError("no PROXY protocol header")


def _parse_v1(buf):
    n = min(len(buf), len(V1_PREFIX))
    if bytes(buf[:n]) != V1_PREFIX[:n]:
        raise ProtocolError("no PROXY protocol header")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProtocolError("PROXY v1 header longer than %d bytes" % V1_MAX)
        return None
    try:
        line = bytes(buf[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("PROXY v1 header is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Local(), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProtocolError("malformed PROXY v1 header")
    fam = socket.AF_INET if parts[1] == "TCP4" else socket.AF_INET6
    try:
        src = socket.inet_ntop(fam, socket.inet_pton(fam, parts[2]))
        dst = socket.inet_ntop(fam, socket.inet_pton(fam, parts[3]))
        sport, dport = _port(parts[4]), _port(parts[5])
    except (OSError, ValueError):
        raise ProtocolError("malformed PROXY v1 header") from None
    return Proxied(src, sport, dst, dport), end + 2


def _port(text):
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(text)
    v = int(text)
    if v > 65535:
        raise ValueError(text)
    return v


def _parse_v2(buf):
    n = min(len(buf), 12)
    if bytes(buf[:n]) != V2_SIGNATURE[:n]:
        raise ProtocolError("no PROXY protocol header")
    if len(buf) < 16:
        return None
    ver_cmd, fam, length = buf[12], buf[13], (buf[14] << 8) | buf[15]
    if ver_cmd >> 4 != 2:
        raise ProtocolError("PROXY v2: unknown version %d" % (ver_cmd >> 4))
    cmd = ver_cmd & 0x0F
    if cmd not in (0, 1):
        raise ProtocolError("PROXY v2: unknown command %d" % cmd)
    if length > MAX_V2:
        raise ProtocolError("PROXY v2 header longer than %d bytes" % MAX_V2)
    end = 16 + length
    if len(buf) < end:
        return None
    if cmd == 0:                      # LOCAL: the balancer itself
        return Local(), end
    body = bytes(buf[16:end])
    if fam == 0x11:                   # TCP over IPv4
        if length < 12:
            raise ProtocolError("PROXY v2: short IPv4 addresses")
        src = socket.inet_ntop(socket.AF_INET, body[0:4])
        dst = socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = (body[8] << 8) | body[9], (body[10] << 8) | body[11]
    elif fam == 0x21:                 # TCP over IPv6
        if length < 36:
            raise ProtocolError("PROXY v2: short IPv6 addresses")
        src = socket.inet_ntop(socket.AF_INET6, body[0:16])
        dst = socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = (body[32] << 8) | body[33], (body[34] << 8) | body[35]
    elif fam == 0x00:                 # UNSPEC with PROXY: no usable address
        return Local(), end
    else:
        raise ProtocolError("PROXY v2: unsupported address family 0x%02x" % fam)
    return Proxied(src, sport, dst, dport), end


def header_v2(src, sport, dst, dport, local=False):
    """Encode a v2 header (tests and tools)."""
    if local:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    if ":" in src:
        body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        fam = 0x21
    else:
        body = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
        fam = 0x11
    body += struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes((0x21, fam)) + struct.pack("!H", len(body)) + body

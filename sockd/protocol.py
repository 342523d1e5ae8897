"""SOCKS 4, 4A and 5 (RFC 1928) and RFC 1929 wire formats: pure, incremental codecs.

This module owns every byte layout sockd speaks and nothing else: it never
touches a socket, a file or the clock.  Parsers take the bytes received so
far and return either ``None`` (need more), a message and the number of
bytes it used, or raise :class:`ProtocolError` carrying the failure reply to
send (when the protocol has one).  Because they only ever look at the
accumulated buffer, any chunking works: one byte at a time, greeting and
request coalesced, application data sent right behind the request.

Every variable-length field is bounded by the format itself (one length
byte) or by the limits below (SOCKS 4 USERID and 4A host name, which are
NUL-terminated and could otherwise grow without end).
"""

import errno as _errno
import ipaddress
import socket as _socket
import struct

from .errors import ProtocolError  # noqa: F401  (raised here, caught as P.ProtocolError)

# address conversions in C: the hot path of every request
_inet_pton, _inet_ntop = _socket.inet_pton, _socket.inet_ntop
_AF_INET, _AF_INET6 = _socket.AF_INET, _socket.AF_INET6

# --- SOCKS 4 -------------------------------------------------------------
S4_GRANTED = 90
S4_REJECTED = 91
S4_NO_IDENTD = 92
S4_BAD_ID = 93

# --- SOCKS 5 -------------------------------------------------------------
CMD_CONNECT = 1
CMD_BIND = 2
CMD_UDP = 3
COMMAND_NAMES = {CMD_CONNECT: "connect", CMD_BIND: "bind", CMD_UDP: "udp"}

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

METHOD_NONE = 0
METHOD_GSSAPI = 1
METHOD_USERPASS = 2
METHOD_UNACCEPTABLE = 0xFF

REP_SUCCEEDED = 0
REP_FAILURE = 1
REP_NOT_ALLOWED = 2
REP_NET_UNREACHABLE = 3
REP_HOST_UNREACHABLE = 4
REP_REFUSED = 5
REP_TTL_EXPIRED = 6
REP_CMD_UNSUPPORTED = 7
REP_ATYP_UNSUPPORTED = 8

REPLY_TEXT = {
    REP_SUCCEEDED: "succeeded",
    REP_FAILURE: "general SOCKS server failure",
    REP_NOT_ALLOWED: "connection not allowed by ruleset",
    REP_NET_UNREACHABLE: "network unreachable",
    REP_HOST_UNREACHABLE: "host unreachable",
    REP_REFUSED: "connection refused",
    REP_TTL_EXPIRED: "TTL expired",
    REP_CMD_UNSUPPORTED: "command not supported",
    REP_ATYP_UNSUPPORTED: "address type not supported",
    S4_GRANTED: "request granted",
    S4_REJECTED: "request rejected or failed",
    S4_NO_IDENTD: "the server cannot connect to identd on the client",
    S4_BAD_ID: "the client's user id does not match identd",
}

# Bounds on the NUL-terminated SOCKS 4 fields.  The classic sockd kept 127
# characters of USERID; RFC 1928 allows 255-byte names, so 4A gets as much.
MAX_USERID = 255
MAX_HOSTNAME = 255

ZERO4 = b"\0\0\0\0"


class Socks4Request:
    """A SOCKS 4 or 4A request.  ``host`` is the 4A name or ``None``."""

    __slots__ = ("command", "port", "ip", "userid", "host")
    version = 4

    def __init__(self, command, port, ip, userid, host=None):
        self.command, self.port, self.ip, self.userid, self.host = command, port, ip, userid, host

    @property
    def address(self):
        """The destination as text: the 4A name, else the dotted quad."""
        return self.host if self.host is not None else ipaddress.IPv4Address(self.ip).compressed

    def __eq__(self, other):
        return isinstance(other, Socks4Request) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        return "Socks4Request(%r, %r, %r, %r, %r)" % (self.command, self.port, self.ip, self.userid, self.host)


class Socks5Request:
    """A SOCKS 5 request (or a UDP datagram header).  ``address`` is text:
    a dotted quad, an IPv6 address or a domain name, per ``atyp``."""

    __slots__ = ("command", "atyp", "address", "port")
    version = 5

    def __init__(self, command, atyp, address, port):
        self.command, self.atyp, self.address, self.port = command, atyp, address, port

    @property
    def host(self):
        return self.address if self.atyp == ATYP_DOMAIN else None

    def __eq__(self, other):
        return isinstance(other, Socks5Request) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        return "Socks5Request(%r, %r, %r, %r)" % (self.command, self.atyp, self.address, self.port)


class Greeting:
    """SOCKS 5 method negotiation: the methods the client offers."""

    __slots__ = ("methods",)
    version = 5

    def __init__(self, methods):
        self.methods = methods

    def __eq__(self, other):
        return isinstance(other, Greeting) and self.methods == other.methods

    def __repr__(self):
        return "Greeting(%r)" % (self.methods,)


class UserPass:
    """RFC 1929 sub-negotiation: user name and password (bytes)."""

    __slots__ = ("user", "password")

    def __init__(self, user, password):
        self.user, self.password = user, password

    def __eq__(self, other):
        return isinstance(other, UserPass) and (self.user, self.password) == (other.user, other.password)

    def __repr__(self):
        return "UserPass(%r, <%d bytes>)" % (self.user, len(self.password))


def reply4(code, port=0, ip=ZERO4):
    """The 8-byte SOCKS 4 reply (VN is 0)."""
    return struct.pack("!BBH4s", 0, code, port, ip)


# prebuilt: a reply's first bytes by code, and the method replies (one per client)
_REPLY5_HEAD = tuple(bytes((5, rep, 0)) for rep in range(256))
_METHOD_REPLY = tuple(bytes((5, method)) for method in range(256))
_PORT = struct.Struct("!H").pack


def reply5(rep, address="0.0.0.0", port=0):
    """A SOCKS 5 reply; ``address`` is an IPv4/IPv6 literal or a name."""
    return _REPLY5_HEAD[rep] + encode_address(address) + _PORT(port)


def failure_reply(version, rep, code4=S4_REJECTED):
    """The failure reply for a client of SOCKS ``version`` (4 or 5): SOCKS 4
    has only its few codes (``code4``), SOCKS 5 the reply code ``rep``."""
    return reply4(code4) if version == 4 else reply5(rep)


ERRNO_REPLY = {
    _errno.ECONNREFUSED: REP_REFUSED,
    _errno.ENETUNREACH: REP_NET_UNREACHABLE,
    _errno.ENETDOWN: REP_NET_UNREACHABLE,
    _errno.EHOSTUNREACH: REP_HOST_UNREACHABLE,
    _errno.EHOSTDOWN: REP_HOST_UNREACHABLE,
    _errno.ETIMEDOUT: REP_TTL_EXPIRED,
    _errno.EAFNOSUPPORT: REP_ATYP_UNSUPPORTED,
    _errno.EADDRNOTAVAIL: REP_HOST_UNREACHABLE,
}


def rep_for_errno(err):
    """The SOCKS 5 reply code for a connect that failed with ``err``."""
    return ERRNO_REPLY.get(err, REP_FAILURE)


def method_reply(method):
    return _METHOD_REPLY[method]


def userpass_reply(ok):
    return b"\x01\x00" if ok else b"\x01\x01"


def encode_address(address):
    """ATYP + address bytes for a literal IPv4/IPv6 address or a domain name."""
    if not isinstance(address, bytes):
        try:
            return b"\x01" + _inet_pton(_AF_INET, address)
        except OSError:
            pass
        try:
            return b"\x04" + _inet_pton(_AF_INET6, address.split("%", 1)[0])
        except OSError:
            pass
        except ValueError:
            pass
    name = address.encode("idna") if not isinstance(address, bytes) else address
    if not 0 < len(name) < 256:
        raise ValueError("domain name length %d out of range" % len(name))
    return bytes((ATYP_DOMAIN, len(name))) + name


def _decode_name(raw):
    """Domain names arrive as bytes; keep them printable ASCII or refuse."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text or any(c <= " " or c == "\x7f" for c in text):
        return None
    return text


def parse_socks4(buf, max_userid=MAX_USERID, max_host=MAX_HOSTNAME):
    """Parse a SOCKS 4/4A request from the start of ``buf``.

    Returns ``None`` when more bytes are needed, else ``(request, used)``.
    Raises ProtocolError (with a 91 reply) on an unknown command, an
    over-long USERID or host name, or a bad 4A host name."""
    if len(buf) < 9:
        if len(buf) >= 2 and buf[1] not in (CMD_CONNECT, CMD_BIND):
            raise ProtocolError("undefined command (0x%02x)" % buf[1], reply4(S4_REJECTED))
        return None
    if buf[0] != 4:
        raise ProtocolError("wrong version (0x%02x)" % buf[0])
    cmd = buf[1]
    if cmd not in (CMD_CONNECT, CMD_BIND):
        raise ProtocolError("undefined command (0x%02x)" % cmd, reply4(S4_REJECTED))
    port, ip = struct.unpack_from("!H4s", buf, 2)
    end = buf.find(b"\0", 8, 8 + max_userid + 1)
    if end < 0:
        if len(buf) > 8 + max_userid:
            raise ProtocolError("USERID longer than %d bytes" % max_userid, reply4(S4_REJECTED))
        return None
    userid = bytes(buf[8:end]).decode("latin-1")
    used = end + 1
    host = None
    if ip[:3] == b"\0\0\0" and ip[3] != 0:
        hend = buf.find(b"\0", used, used + max_host + 1)
        if hend < 0:
            if len(buf) > used + max_host:
                raise ProtocolError("4A host name longer than %d bytes" % max_host, reply4(S4_REJECTED))
            return None
        host = _decode_name(bytes(buf[used:hend]))
        if host is None:
            raise ProtocolError("malformed 4A host name", reply4(S4_REJECTED))
        used = hend + 1
    return Socks4Request(cmd, port, bytes(ip), userid, host), used


def parse_greeting(buf):
    """Parse ``VER NMETHODS METHODS``.  Returns None or (Greeting, used)."""
    if len(buf) < 2:
        return None
    if buf[0] != 5:
        raise ProtocolError("wrong version (0x%02x)" % buf[0])
    n = buf[1]
    if n == 0:
        raise ProtocolError("no authentication methods offered", method_reply(METHOD_UNACCEPTABLE))
    if len(buf) < 2 + n:
        return None
    return Greeting(tuple(buf[2:2 + n])), 2 + n


def parse_userpass(buf):
    """Parse an RFC 1929 request.  Returns None or (UserPass, used)."""
    if len(buf) < 2:
        return None
    if buf[0] != 1:
        raise ProtocolError("wrong username/password version (0x%02x)" % buf[0], userpass_reply(False))
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    user = bytes(buf[2:2 + ulen]).decode("utf-8", "replace")
    return UserPass(user, bytes(buf[3 + ulen:end])), end


def _parse_address(buf, off, failure):
    """ATYP at ``off``.  Returns None or (atyp, address text, port, used end)."""
    if len(buf) < off + 1:
        return None
    atyp = buf[off]
    if atyp == ATYP_IPV4:
        end = off + 1 + 4 + 2
        if len(buf) < end:
            return None
        addr = _inet_ntop(_AF_INET, bytes(buf[off + 1:off + 5]))
    elif atyp == ATYP_IPV6:
        end = off + 1 + 16 + 2
        if len(buf) < end:
            return None
        addr = _inet_ntop(_AF_INET6, bytes(buf[off + 1:off + 17]))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < off + 2:
            return None
        n = buf[off + 1]
        end = off + 2 + n + 2
        if len(buf) < end:
            return None
        addr = _decode_name(bytes(buf[off + 2:off + 2 + n]))
        if addr is None:
            raise ProtocolError("malformed domain name", failure(REP_FAILURE))
    else:
        raise ProtocolError("address type 0x%02x not supported" % atyp, failure(REP_ATYP_UNSUPPORTED))
    port = (buf[end - 2] << 8) | buf[end - 1]
    return atyp, addr, port, end


def parse_request5(buf):
    """Parse ``VER CMD RSV ATYP DST.ADDR DST.PORT``.

    Returns None or (Socks5Request, used).  The command is returned as sent;
    the session answers 7 to one it does not carry out."""
    if len(buf) < 4:
        if buf and buf[0] != 5:
            raise ProtocolError("wrong version (0x%02x) in request" % buf[0], reply5(REP_FAILURE))
        return None
    if buf[0] != 5:
        raise ProtocolError("wrong version (0x%02x) in request" % buf[0], reply5(REP_FAILURE))
    got = _parse_address(buf, 3, reply5)
    if got is None:
        return None
    atyp, addr, port, end = got
    return Socks5Request(buf[1], atyp, addr, port), end


def parse_udp_header(data):
    """Parse the RFC 1928 UDP request header of a whole datagram.

    Returns (frag, Socks5Request with command 0, payload offset).  Raises
    ProtocolError (no reply: datagrams are dropped, never answered)."""
    if len(data) < 4:
        raise ProtocolError("short UDP header")
    if data[0] or data[1]:
        raise ProtocolError("non-zero RSV in UDP header")
    try:
        got = _parse_address(data, 3, lambda rep: None)
    except ProtocolError as exc:
        raise ProtocolError(str(exc)) from None
    if got is None:
        raise ProtocolError("truncated UDP header")
    atyp, addr, port, end = got
    return data[2], Socks5Request(0, atyp, addr, port), end


def udp_header(address, port):
    """The header sockd puts in front of a datagram it hands to a client."""
    return b"\0\0\0" + encode_address(address) + struct.pack("!H", port)


# --- client side (replies) ---------------------------------------------------

def parse_reply4(buf):
    """Parse the 8-byte SOCKS 4 reply.  Returns None or ((code, ip, port), 8)."""
    if len(buf) < 8:
        return None
    if buf[0] not in (0, 4):
        raise ProtocolError("bad SOCKS 4 reply version (0x%02x)" % buf[0])
    port, ip = struct.unpack_from("!H4s", buf, 2)
    return (buf[1], ipaddress.IPv4Address(bytes(ip)).compressed, port), 8


def parse_reply5(buf):
    """Parse a SOCKS 5 reply.  Returns None or ((rep, address, port), used)."""
    if len(buf) < 4:
        if buf and buf[0] != 5:
            raise ProtocolError("bad SOCKS 5 reply version (0x%02x)" % buf[0])
        return None
    if buf[0] != 5:
        raise ProtocolError("bad SOCKS 5 reply version (0x%02x)" % buf[0])

    def fail(rep):
        return None
    got = _parse_address(buf, 3, fail)
    if got is None:
        return None
    atyp, addr, port, end = got
    return (buf[1], addr, port), end


# --- the server side of a handshake, as one state machine ----------------------

START, WAIT, AUTH, REQUEST, DONE, METHOD = range(6)


class ServerHandshake:
    """Accumulates what a client sends before the relay starts and hands out
    one message at a time.

    ``feed(data)`` adds bytes; ``next()`` returns the next complete message
    (Socks4Request, Greeting, UserPass or Socks5Request) or None.  After a
    Greeting the session says what comes next with ``expect_auth()``,
    ``expect_method(parse)`` (a method's own messages: ``parse(buf)`` returns
    (message, bytes used) or None, as the parsers here do; RFC 1961's
    frames) or ``expect_request()``.  ``protect(p)``: from now on what
    arrives is ``p.feed``'s plaintext (RFC 1961 levels 1 and 2).  ``rest()``
    returns what the client sent beyond the request (early application
    data).  Input is bounded: the buffer never holds more than one maximal
    message plus one read."""

    __slots__ = ("buf", "state", "parser", "prot")
    MAX_BUFFER = 8 + MAX_USERID + 1 + MAX_HOSTNAME + 1 + 65536

    def __init__(self, data=b""):
        self.buf = data
        self.state = START
        self.parser = None
        self.prot = None

    def feed(self, data):
        if self.prot is not None:
            data = self.prot.feed(data)
        self.buf = self.buf + data if self.buf else data

    def expect_auth(self):
        self.state = AUTH

    def expect_method(self, parse):
        self.parser = parse
        self.state = METHOD

    def expect_request(self):
        self.state = REQUEST

    def protect(self, prot):
        """What is buffered and what comes next are protected frames."""
        self.prot = prot
        buf, self.buf = self.buf, b""
        if buf:
            self.feed(buf)

    def rest(self):
        data, self.buf = self.buf, b""
        return data

    def next(self):
        buf = self.buf
        if not buf:
            return None
        state = self.state
        if state == START:
            first = buf[0]
            if first == 4:
                got = parse_socks4(buf)
                if got is not None:
                    self.state = DONE
            elif first == 5:
                got = parse_greeting(buf)
                if got is not None:
                    self.state = WAIT
            else:
                raise ProtocolError("wrong version (0x%02x)" % first)
        elif state == REQUEST:
            got = parse_request5(buf)
            if got is not None:
                self.state = DONE
        elif state == AUTH:
            got = parse_userpass(buf)
            if got is not None:
                self.state = WAIT
        elif state == METHOD:
            got = self.parser(buf)
            if got is not None:
                self.state = WAIT
        elif state == WAIT:
            got = None              # the session has yet to say what comes next
        else:
            return None             # DONE: the rest is early data, the session's
        if got is None:
            if len(buf) > self.MAX_BUFFER:
                raise ProtocolError("more than %d bytes before the request was complete" % self.MAX_BUFFER)
            return None
        msg, used = got
        self.buf = buf[used:]
        return msg


# --- client side (requests) ----------------------------------------------------

def request4(command, port, ip=ZERO4, userid="", host=None):
    """A SOCKS 4 request; with ``host`` a 4A request (DSTIP 0.0.0.1 and the
    name after the USERID).  ``ip`` is 4 bytes.  Raises ValueError for a
    USERID or host name that the format cannot carry."""
    uid = userid.encode("utf-8") if isinstance(userid, str) else userid
    if b"\0" in uid or len(uid) > MAX_USERID:
        raise ValueError("USERID cannot be sent in SOCKS 4")
    req = struct.pack("!BBH4s", 4, command, port, b"\0\0\0\x01" if host is not None else ip) + uid + b"\0"
    if host is not None:
        name = host.encode("idna") if isinstance(host, str) else host
        if not name or b"\0" in name or len(name) > MAX_HOSTNAME:
            raise ValueError("host name cannot be sent in SOCKS 4A")
        req += name + b"\0"
    return req


def greeting5(methods):
    """``VER NMETHODS METHODS``."""
    return bytes((5, len(methods))) + bytes(methods)


def userpass_request(user, password):
    """The RFC 1929 sub-negotiation request.  Raises ValueError when a
    field is empty or longer than 255 bytes."""
    u = user.encode("utf-8") if isinstance(user, str) else user
    p = password.encode("utf-8") if isinstance(password, str) else password
    if not 0 < len(u) < 256 or not 0 < len(p) < 256:
        raise ValueError("user name and password must be 1 to 255 bytes")
    return bytes((1, len(u))) + u + bytes((len(p),)) + p


def request5(command, address, port):
    """``VER CMD RSV ATYP DST.ADDR DST.PORT`` for an address literal or name."""
    return b"\x05" + bytes((command, 0)) + encode_address(address) + struct.pack("!H", port)


def reply5_size(buf):
    """How long the SOCKS 5 reply (or UDP-style address block) starting at
    ``buf`` is, once its first 5 bytes are known; None before.  Lets a
    client read exactly the reply and not one byte of the data behind it."""
    if len(buf) < 5:
        return None
    atyp = buf[3]
    if atyp == ATYP_IPV4:
        return 4 + 4 + 2
    if atyp == ATYP_IPV6:
        return 4 + 16 + 2
    if atyp == ATYP_DOMAIN:
        return 4 + 1 + buf[4] + 2
    raise ProtocolError("address type 0x%02x in reply" % atyp)

"""The client side of a handshake with an upstream proxy: SOCKS 4, 4A, 5
(with RFC 1929 username/password) and HTTP CONNECT, as pure incremental
state machines.  No I/O: they say what to send and read what the upstream
answers, in whatever pieces it arrives (one byte at a time, or the reply
and the destination's first bytes in one read).

``handshake(kind, command, address, port, ...)`` returns one.  Its
contract:

* ``start()``: the bytes to send first.
* ``feed(data)``: what the upstream sent next.  Returns the events it
  completes, in order: ``Send(data)`` (bytes to send now: the RFC 1929
  request, the SOCKS 5 request), ``ALIVE`` (the upstream has answered its
  first message: whatever goes wrong after this is not a dead upstream),
  ``Reply(address, port)`` (a success reply: the one of CONNECT and UDP
  ASSOCIATE, each of BIND's two).  Raises ``Refused`` when the upstream
  answered and refused the request -- the destination, or the rules there,
  are the problem, and the reply code for our client is in it -- and
  ``Broken`` when the upstream cannot serve anyone: it does not speak the
  protocol, refused our method or our credentials.
* ``done``: the last reply is in (CONNECT and UDP after one, BIND after
  two); ``rest()`` then gives what came after it, the destination's first
  bytes, which belong to the client.

Every reply is bounded by its format (SOCKS) or by MAX_HTTP_HEAD (HTTP):
the buffer never holds more than one reply plus one read.  Texts for the
log come from the upstream's bytes made printable and short; a handshake
never holds a secret in a text (``repr`` of one shows no password).
"""

import base64
import ipaddress

from . import protocol as P
from .errors import ProtocolError

SOCKS4, SOCKS4A, SOCKS5, SOCKS5H, SOCKS, HTTP = "socks4", "socks4a", "socks5", "socks5h", "socks", "http"
KINDS = (SOCKS4, SOCKS4A, SOCKS5, SOCKS5H, SOCKS, HTTP)
PIPELINED = (SOCKS5, SOCKS5H)   # the kinds whose handshake may go in one write (a URL's ?pipeline)
MAX_HTTP_HEAD = 8192      # an HTTP proxy's status line and headers, at most
MAX_TEXT = 80             # characters of an upstream's own words kept for the log

# SOCKS 4 codes from an upstream, as the reply code our SOCKS 5 client gets
# (a SOCKS 4 client always gets 91): 91 says "rejected or failed" and no
# more; 92 and 93 are the upstream's identd check of sockd itself
S4_REP = {P.S4_REJECTED: P.REP_FAILURE, P.S4_NO_IDENTD: P.REP_NOT_ALLOWED, P.S4_BAD_ID: P.REP_NOT_ALLOWED}

# an HTTP proxy's refusal status, as a SOCKS 5 reply code (anything else: 1)
HTTP_REP = {403: P.REP_NOT_ALLOWED, 404: P.REP_HOST_UNREACHABLE, 410: P.REP_HOST_UNREACHABLE,
            405: P.REP_CMD_UNSUPPORTED, 501: P.REP_CMD_UNSUPPORTED, 502: P.REP_HOST_UNREACHABLE,
            503: P.REP_HOST_UNREACHABLE, 504: P.REP_TTL_EXPIRED}


class Refused(ProtocolError):
    """The upstream answered, and refused the request: ``rep`` is the
    SOCKS 5 reply code for our client (a SOCKS 4 client gets 91), the
    message says what the upstream said."""

    def __init__(self, message, rep):
        super().__init__(message)
        self.rep = rep


class Broken(ProtocolError):
    """The upstream cannot serve this server at all: not the protocol its
    kind says, or it refused our method or credentials.  Another upstream
    is to be tried."""


class Send:
    """Bytes to send to the upstream now."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __eq__(self, other):
        return isinstance(other, Send) and self.data == other.data

    def __repr__(self):
        return "Send(<%d bytes>)" % len(self.data)


class Reply:
    """A success reply: the address and port the upstream announced (BIND:
    where it listens, then who connected; UDP: its relay), as text; None
    and 0 when its kind announces none (HTTP)."""

    __slots__ = ("address", "port")

    def __init__(self, address, port):
        self.address, self.port = address, port

    def __eq__(self, other):
        return isinstance(other, Reply) and (self.address, self.port) == (other.address, other.port)

    def __repr__(self):
        return "Reply(%r, %r)" % (self.address, self.port)


class _Alive:
    __slots__ = ()

    def __repr__(self):
        return "ALIVE"


ALIVE = _Alive()


def printable(raw, limit=MAX_TEXT):
    """An upstream's own words, safe for one log line: printable ASCII,
    at most ``limit`` characters."""
    text = bytes(raw).decode("ascii", "replace")
    return "".join(c if " " <= c < "\x7f" else "?" for c in text[:limit])


def reply_text(rep):
    return P.REPLY_TEXT.get(rep, "reply code %d" % rep)


def is_ipv4(address):
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True


def handshake(kind, command, address, port, user=None, password=None, pipeline=False):
    """The handshake for an upstream of ``kind`` (KINDS) asked to carry out
    ``command`` (protocol.CMD_*) towards ``address`` (an IP literal or a
    name: sending a name is the caller's choice) and ``port``; ``user`` and
    ``password`` are the upstream's own credentials, or None; ``pipeline``
    (SOCKS 5 only): everything in the first write (Socks5Handshake).
    Raises ValueError for what the kind cannot carry (a name or IPv6 to
    SOCKS 4, UDP to SOCKS 4, anything but CONNECT to HTTP, a credential too
    long, a pipeline to anything but SOCKS 5)."""
    if pipeline and kind not in PIPELINED:
        raise ValueError("only a SOCKS 5 handshake is pipelined")
    if kind in (SOCKS4, SOCKS4A):
        return Socks4Handshake(command, address, port, user, allow_name=kind == SOCKS4A)
    if kind in (SOCKS5, SOCKS5H, SOCKS):
        return Socks5Handshake(command, address, port, user, password, pipeline)
    if kind == HTTP:
        return HttpConnect(command, address, port, user, password)
    raise ValueError("unknown upstream kind %r" % (kind,))


class Handshake:
    """What the three kinds share: the buffer, the count of replies still
    due, what came after the last one."""

    __slots__ = ("buf", "replies_due", "after", "first", "alive")
    pipelined = False               # only a SOCKS 5 handshake may be (its own slot)

    def __init__(self, command):
        self.buf = b""
        self.replies_due = 2 if command == P.CMD_BIND else 1
        self.after = b""
        self.first = None          # the bytes start() gives
        self.alive = False         # the upstream has answered its first message

    def answered(self, events):
        """The upstream's first complete answer: ALIVE, once."""
        if not self.alive:
            self.alive = True
            events.append(ALIVE)

    @property
    def done(self):
        return self.replies_due == 0

    def start(self):
        return self.first

    def rest(self):
        data, self.after = self.after, b""
        return data

    def feed(self, data):
        if self.done:
            self.after += data
            return []
        self.buf = self.buf + data if self.buf else bytes(data)
        events = []
        while not self.done:
            got = self.step(events)
            if not got:
                break
        if self.done:
            self.after, self.buf = self.buf, b""
        return events

    def step(self, events):
        """Take one message off ``buf`` when it is complete: append its
        events, return True; False when more bytes are needed."""
        raise NotImplementedError


class Socks4Handshake(Handshake):
    """SOCKS 4 (IPv4 addresses) and 4A (names too).  The USERID is the
    upstream's user from its URL, else empty: never the client's."""

    __slots__ = ()

    def __init__(self, command, address, port, userid=None, allow_name=False):
        super().__init__(command)
        if command not in (P.CMD_CONNECT, P.CMD_BIND):
            raise ValueError("SOCKS 4 carries CONNECT and BIND only")
        if is_ipv4(address):
            self.first = P.request4(command, port, ipaddress.IPv4Address(address).packed, userid or "")
        elif not allow_name:
            raise ValueError("SOCKS 4 carries IPv4 addresses only")
        elif ":" in address:
            raise ValueError("SOCKS 4A carries IPv4 addresses and names, not IPv6")
        else:
            self.first = P.request4(command, port, userid=userid or "", host=address)

    def step(self, events):
        try:
            got = P.parse_reply4(self.buf)
        except ProtocolError as exc:
            raise Broken("not a SOCKS 4 server: %s" % exc) from None
        if got is None:
            return False
        (code, ip, port), used = got
        self.buf = self.buf[used:]
        self.answered(events)
        if code != P.S4_GRANTED:
            raise Refused("%s (%d)" % (P.REPLY_TEXT.get(code, "reply code"), code), S4_REP.get(code, P.REP_FAILURE))
        events.append(Reply(ip, port))
        self.replies_due -= 1
        return True



class Socks5Handshake(Handshake):
    """SOCKS 5: the greeting (method 0; 0 and 2 when the upstream has
    credentials), RFC 1929 when the upstream chooses it, the request, its
    reply (two for BIND).

    ``pipeline``: the greeting, the credentials and the request in the
    first write, without waiting for each answer (one round trip in all,
    where RFC 1928 takes two or three).  The greeting then offers the one
    method the rest is written for (0, or 2 with credentials), so the
    upstream's choice is known in advance; its answers are read in order
    as before.  Only for a server that reads its handshake off the stream
    as it comes: one that drops what follows the greeting (microsocks)
    never answers the request."""

    __slots__ = ("state", "request", "auth", "pipelined", "offer")
    GREETING, AUTH, REPLY = range(3)

    def __init__(self, command, address, port, user=None, password=None, pipeline=False):
        super().__init__(command)
        if command not in (P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP):
            raise ValueError("unknown command %r" % (command,))
        self.request = P.request5(command, address, port)
        self.pipelined = pipeline
        self.auth = None if user is None else P.userpass_request(user, password or "")
        if pipeline:
            # one method, the one the rest is written for
            self.offer = (P.METHOD_NONE,) if user is None else (P.METHOD_USERPASS,)
            self.first = P.greeting5(self.offer) + (self.auth or b"") + self.request
            self.auth = self.request = None     # sent already
        else:
            self.offer = (P.METHOD_NONE,) if user is None else (P.METHOD_NONE, P.METHOD_USERPASS)
            self.first = P.greeting5(self.offer)
        self.state = self.GREETING

    def __repr__(self):
        return "Socks5Handshake(state=%d, credentials=%s, pipelined=%s)" % (
            self.state, P.METHOD_USERPASS in self.offer, self.pipelined)

    @staticmethod
    def send(events, data):
        """``data`` to send now, unless the first write carried it (None)."""
        if data is not None:
            events.append(Send(data))

    def step(self, events):
        buf = self.buf
        if self.state == self.GREETING:
            if len(buf) < 2:
                if buf and buf[0] != 5:
                    raise Broken("not a SOCKS 5 server (answered 0x%02x)" % buf[0])
                return False
            if buf[0] != 5:
                raise Broken("not a SOCKS 5 server (answered 0x%02x)" % buf[0])
            method = buf[1]
            self.buf = buf[2:]
            self.answered(events)
            if method == P.METHOD_NONE and method in self.offer:
                self.state = self.REPLY
                self.send(events, self.request)
            elif method == P.METHOD_USERPASS and method in self.offer:
                self.state = self.AUTH
                self.send(events, self.auth)
                self.auth = None            # not kept once sent
            elif method == P.METHOD_UNACCEPTABLE:
                raise Broken("no acceptable method" + (
                    " (it wants credentials)" if P.METHOD_USERPASS not in self.offer
                    else " (it refused username/password)"))
            else:
                raise Broken("chose method %d, which was not offered" % method)
            return True
        if self.state == self.AUTH:
            if len(buf) < 2:
                return False
            self.buf = buf[2:]
            if buf[0] not in (1, 5):
                raise Broken("bad username/password reply version (0x%02x)" % buf[0])
            if buf[1] != 0:
                raise Broken("refused our username/password (status %d)" % buf[1])
            self.state = self.REPLY
            self.send(events, self.request)
            return True
        try:
            got = P.parse_reply5(buf)
        except ProtocolError as exc:
            raise Broken("bad SOCKS 5 reply: %s" % exc) from None
        if got is None:
            if len(buf) >= 4 and buf[3] not in (P.ATYP_IPV4, P.ATYP_IPV6, P.ATYP_DOMAIN):
                raise Broken("bad SOCKS 5 reply: address type 0x%02x" % buf[3])
            return False
        (rep, address, port), used = got
        self.buf = buf[used:]
        if rep != P.REP_SUCCEEDED:
            raise Refused("%s (%d)" % (reply_text(rep), rep), rep if 1 <= rep <= 8 else P.REP_FAILURE)
        events.append(Reply(address, port))
        self.replies_due -= 1
        return True


class HttpConnect(Handshake):
    """HTTP CONNECT (RFC 9110 section 9.3.6): the request line, Host, and
    Proxy-Authorization Basic when the upstream has credentials; the
    status line and headers, at most MAX_HTTP_HEAD bytes.  A 2xx status is
    the tunnel; 407 is a refusal of our credentials (Broken: no client can
    be served there); any other status refuses this request."""

    __slots__ = ("creds",)

    def __init__(self, command, address, port, user=None, password=None):
        super().__init__(command)
        self.creds = user is not None
        if command != P.CMD_CONNECT:
            raise ValueError("an HTTP proxy carries CONNECT only")
        if any(c in address for c in " \r\n/@") or not address:
            raise ValueError("cannot ask an HTTP proxy for %r" % (address,))
        target = ("[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)).encode("idna")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if user is not None:
            token = base64.b64encode(("%s:%s" % (user, password or "")).encode("utf-8"))
            lines.append(b"Proxy-Authorization: Basic " + token)
        self.first = b"\r\n".join(lines) + b"\r\n\r\n"

    def __repr__(self):
        return "HttpConnect(<%d bytes to send>)" % len(self.first or b"")

    def step(self, events):
        buf = self.buf
        end = buf.find(b"\r\n\r\n", 0, MAX_HTTP_HEAD)
        if end < 0:
            if not b"HTTP/"[:len(buf)] == buf[:5]:
                raise Broken("not an HTTP proxy (answered %r)" % printable(buf[:16]))
            if len(buf) >= MAX_HTTP_HEAD:
                raise Broken("reply headers longer than %d bytes" % MAX_HTTP_HEAD)
            return False
        head = buf[:end]
        self.buf = buf[end + 4:]
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise Broken("not an HTTP proxy (status line %r)" % printable(status_line))
        status = int(parts[1])
        self.answered(events)
        reason = printable(parts[2]) if len(parts) > 2 else ""
        what = ("HTTP %d %s" % (status, reason)).rstrip()
        if 200 <= status < 300:
            events.append(Reply(None, 0))
            self.replies_due -= 1
            return True
        if status == 407:
            raise Broken(("refused our credentials (%s)" if self.creds else "wants credentials (%s)") % what)
        raise Refused(what, HTTP_REP.get(status, P.REP_FAILURE))

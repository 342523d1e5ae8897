"""RFC 1961, the GSS-API method of SOCKS 5, on the wire: its frames, the
protection-level sub-negotiation and per-message protection.  Pure: no
I/O, and no GSS-API library either -- the mechanism's wrap and unwrap are
handed in (gss.py holds the library's side, at the edge).

Every message of the method is a frame::

    +------+------+------+.......................+
    | ver  | mtyp | len  |       token           |
    +------+------+------+.......................+
    | 0x01 | 0x01 | 2    | up to 65535 octets    |

``mtyp`` 1 carries a context-establishment token (section 3), 2 the
protection level (section 4), 3 a protected message (section 5).  The
abort, ``01 ff``, has no length and no token (section 3.8).

Levels: 1 integrity, 2 integrity and confidentiality (3, selective per
message, is refused, as Dante does); 0, "clear", is no per-message
protection.  It is not in the RFC, but it is what curl asks for and what
Dante calls clear.  The level octet goes GSS_Wrap'd (conf_req false), or,
in the NEC variant (curl's --socks5-gssapi-nec), as one plain octet: a
wrapped token is never one octet long, so the two cannot be confused.

At levels 1 and 2 everything after the level -- the request, the reply,
every relayed byte -- goes in mtyp 3 frames (``Protection``); a UDP
datagram, SOCKS header included, is one frame of its own.
"""

from .protocol import ProtocolError

VERSION = 1
MTYP_AUTH = 1
MTYP_LEVEL = 2
MTYP_DATA = 3
MTYP_ABORT = 0xFF
ABORT = b"\x01\xff"
MAX_TOKEN = 65535
HEADER = 4

CLEAR, INTEGRITY, CONFIDENTIALITY, SELECTIVE = 0, 1, 2, 3
LEVEL_NAMES = {CLEAR: "clear", INTEGRITY: "integrity", CONFIDENTIALITY: "confidentiality",
               SELECTIVE: "per-message"}
LEVELS = {"clear": CLEAR, "integrity": INTEGRITY, "confidentiality": CONFIDENTIALITY,
          "0": CLEAR, "1": INTEGRITY, "2": CONFIDENTIALITY}

# Plaintext per mtyp-3 frame when the mechanism cannot say (gss.py asks it
# for its own figure): room for Kerberos' largest overhead in 65535.
DEFAULT_CHUNK = 65535 - 1024


class Abort:
    """The peer sent the abort frame ``01 ff``."""

    __slots__ = ()

    def __repr__(self):
        return "Abort()"


ABORTED = Abort()


class Frame:
    """One frame other than the abort: its type and token."""

    __slots__ = ("mtyp", "token")

    def __init__(self, mtyp, token):
        self.mtyp = mtyp
        self.token = token

    def __eq__(self, other):
        return isinstance(other, Frame) and (self.mtyp, self.token) == (other.mtyp, other.token)

    def __repr__(self):
        return "Frame(%d, %d bytes)" % (self.mtyp, len(self.token))


def frame(mtyp, token):
    """The frame of ``token``; a token over 65535 octets is a ValueError
    (the caller chunks)."""
    n = len(token)
    if n > MAX_TOKEN:
        raise ValueError("GSS-API token of %d bytes is over the 65535-byte limit" % n)
    return bytes((VERSION, mtyp, n >> 8, n & 0xFF)) + token


def parse_frame(buf, pos=0):
    """The frame at ``buf[pos:]``: (Frame or ABORTED, the offset after it),
    or None while it is incomplete.  Raises ProtocolError on a wrong version
    or message type (an abort is not an error here: the caller decides)."""
    n = len(buf) - pos
    if n < 2:
        if n == 1 and buf[pos] != VERSION:
            raise ProtocolError("GSS-API frame of version %d, not 1" % buf[pos])
        return None
    ver, mtyp = buf[pos], buf[pos + 1]
    if ver != VERSION:
        raise ProtocolError("GSS-API frame of version %d, not 1" % ver)
    if mtyp == MTYP_ABORT:
        return ABORTED, pos + 2
    if mtyp not in (MTYP_AUTH, MTYP_LEVEL, MTYP_DATA):
        raise ProtocolError("GSS-API frame of unknown type %d" % mtyp)
    if n < HEADER:
        return None
    end = pos + HEADER + ((buf[pos + 2] << 8) | buf[pos + 3])
    if len(buf) < end:
        return None
    return Frame(mtyp, bytes(buf[pos + HEADER:end])), end


def choose_level(requested, allowed):
    """The level to answer a client that asked for ``requested`` with:
    that one when ``allowed`` holds it, else the weakest allowed one that
    protects more (the client may still close), else None (abort).  A
    client that asks for more than is allowed is never given less."""
    if requested in allowed:
        return requested
    if requested > CONFIDENTIALITY:
        return None
    stronger = [lv for lv in allowed if lv > requested]
    return min(stronger) if stronger else None


def level_name(level):
    return LEVEL_NAMES.get(level, "level %d" % level)


class Protection:
    """Per-message protection of one connection at level 1 or 2: ``seal``
    turns plaintext into frames, ``feed`` turns what arrives into
    plaintext, buffering a partial frame between calls.

    ``wrap(data) -> token`` and ``unwrap(token) -> data`` are the
    mechanism's, already bound to the level (unwrap raises ProtocolError
    for a token that fails, or lacks the confidentiality the level
    demands).  ``chunk``: the most plaintext one token may carry.  What is
    buffered is bounded by one frame (65539 bytes): frames are taken out as
    soon as they are complete."""

    __slots__ = ("wrap", "unwrap", "chunk", "level", "pending", "wire_in", "wire_out")

    def __init__(self, wrap, unwrap, level, chunk=DEFAULT_CHUNK):
        self.wrap = wrap
        self.unwrap = unwrap
        self.level = level
        self.chunk = max(1, min(chunk, MAX_TOKEN))
        self.pending = b""          # the start of a frame not yet complete
        self.wire_in = 0            # bytes received and sent on the wire, frames included
        self.wire_out = 0

    def seal(self, data):
        """``data`` (bytes-like) as one or more mtyp 3 frames."""
        if not data:
            return b""
        wrap, chunk = self.wrap, self.chunk
        if len(data) <= chunk:
            out = frame(MTYP_DATA, wrap(bytes(data)))
        else:
            mv = memoryview(data)
            out = b"".join(frame(MTYP_DATA, wrap(bytes(mv[i:i + chunk]))) for i in range(0, len(data), chunk))
        self.wire_out += len(out)
        return out

    def feed(self, data):
        """The plaintext of every frame that ``data`` completes (b"" while
        none is).  Raises ProtocolError for a frame other than mtyp 3, for
        the client's abort, or for a token that does not unwrap."""
        self.wire_in += len(data)
        buf = self.pending + bytes(data) if self.pending else data
        pos, end, out = 0, len(buf), []
        unwrap = self.unwrap
        while pos < end:
            got = parse_frame(buf, pos)
            if got is None:
                break
            fr, pos = got
            if fr is ABORTED:
                raise ProtocolError("GSS-API abort from the client")
            if fr.mtyp != MTYP_DATA:
                raise ProtocolError("GSS-API frame of type %d where protected data belongs" % fr.mtyp)
            out.append(unwrap(fr.token))
        self.pending = bytes(buf[pos:]) if pos < end else b""
        return out[0] if len(out) == 1 else b"".join(out)

    def seal_datagram(self, data):
        """One UDP datagram, SOCKS header included, as one frame (RFC 1961
        section 5); None when it would not fit in one token."""
        if len(data) > self.chunk:
            return None
        return frame(MTYP_DATA, self.wrap(bytes(data)))

    def open_datagram(self, data):
        """The plaintext of one datagram that is exactly one mtyp 3 frame.
        Raises ProtocolError otherwise."""
        got = parse_frame(data)
        if got is None or got[1] != len(data) or got[0] is ABORTED or got[0].mtyp != MTYP_DATA:
            raise ProtocolError("a UDP datagram that is not one GSS-API frame")
        return self.unwrap(got[0].token)

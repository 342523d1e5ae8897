"""A stand-in for the GSS-API mechanism in the client's unit tests, so
that RFC 1961 on the wire, the level rules and the relay can be tested
byte by byte without a realm (the integration tests have the real one).

* ``fake_protection(level, chunk)``: a gss1961.Protection whose "wrap" is
  a byte substitution behind a tag (b"W" + data with every byte xor 0x5a):
  reversible, length-changing, and it never leaves the plaintext on the
  wire; "unwrap" refuses a token without the tag (ProtocolError), as a
  real mechanism refuses a forged one.
* ``FakeCreds`` and ``FakeInitiator``: what sockd.client.gss.probe and
  gss.Initiator give, with a scripted number of context rounds.
* ``server_handshake(c, ...)``: the server's side of sections 3 and 4,
  written out with struct on a clientkit.Conn, independently of gss1961.
"""

import struct

from sockd import gss1961 as G
from sockd.client import gss
from sockd.protocol import ProtocolError

XOR = bytes(b ^ 0x5A for b in range(256))


def fake_wrap(data):
    return b"W" + bytes(data).translate(XOR)


def fake_unwrap(token):
    if token[:1] != b"W":
        raise ProtocolError("GSS-API message does not unwrap: fake")
    return bytes(token[1:]).translate(XOR)


def fake_protection(level=G.CONFIDENTIALITY, chunk=1000):
    return G.Protection(fake_wrap, fake_unwrap, level, chunk)


class FakeCreds:
    name = "alice@FAKE.TEST"
    lifetime = 3600


class FakeInitiator:
    """Context tokens b"ctx-1", b"ctx-2"... until ``rounds`` answers from
    the server were stepped; ``fail_at``: the step that raises GssRefused;
    ``problem``: what check() reports."""

    rounds = 1
    fail_at = None
    problem = None
    made = []

    def __init__(self, creds, name, hostbased, wanted):
        self.creds, self.name, self.hostbased, self.wanted = creds, name, hostbased, wanted
        self.principal = creds.name
        self.steps = 0
        self.seen = []
        FakeInitiator.made.append(self)

    @property
    def complete(self):
        return self.steps > type(self).rounds

    def step(self, token):
        self.seen.append(token)
        self.steps += 1
        if self.steps == type(self).fail_at:
            raise gss.GssRefused("no Kerberos ticket (fake): run kinit")
        return b"" if self.complete else b"ctx-%d" % self.steps

    def check(self):
        return type(self).problem

    def level_token(self, level):
        return fake_wrap(bytes((level,)))

    def read_level(self, token):
        msg = fake_unwrap(token)
        if len(msg) != 1:
            raise ProtocolError("GSS-API protection level of %d octets, not 1" % len(msg))
        return msg[0]

    def protection(self, level):
        return fake_protection(level)


def read_frame(c):
    """(mtyp, token) of the next frame a clientkit.Conn receives; (0xff, b"") for the abort."""
    ver, mtyp = c.read(2)
    assert ver == 1, "not an RFC 1961 frame: %r" % c.got[-8:]
    if mtyp == 0xFF:
        return mtyp, b""
    (n,) = struct.unpack("!H", c.read(2))
    return mtyp, c.read(n)


def frame(mtyp, token):
    return struct.pack("!BBH", 1, mtyp, len(token)) + token


def server_handshake(c, rounds=1, grant=None):
    """Method 1 chosen, then ``rounds`` context tokens answered, then the
    level asked for granted (or ``grant``).  Returns the level asked for."""
    for i in range(rounds):
        mtyp, tok = read_frame(c)
        assert (mtyp, tok) == (1, b"ctx-%d" % (i + 1))
        c.send(frame(1, b"srv-%d" % (i + 1)))
    mtyp, tok = read_frame(c)
    assert mtyp == 2
    asked = fake_unwrap(tok)[0]
    c.send(frame(2, fake_wrap(bytes((asked if grant is None else grant,)))))
    return asked

"""SOCKS 5 method 1, GSS-API (RFC 1961), on the client's side: whether to
offer it, the initiator's handshake with a server, and the per-message
protection of the connection afterwards.  The wire format and the level
rules are gss1961's (one home for the framing, shared with the server);
the relay that lets a program read and write plaintext at levels 1 and 2
is gssrelay's.

python-gssapi (over MIT Kerberos) is the same optional extra as for the
server (``pip install 'sockd[gssapi]'``).  Without it, or without usable
credentials (the user's ticket cache, KRB5CCNAME), method 1 is simply not
offered; a server that wants nothing else then gets a refusal whose text
says what to do (install, kinit).

The environment (read at each connection, like SOCKS_USERNAME):

* ``SOCKS_GSSAPI``: ``auto`` (the default; also ``yes``) offers method 1
  beside the others when it can be used; ``no`` never offers it;
  ``require`` offers nothing else, speaks only SOCKS 5, and refuses at
  once, with the reason, when it cannot be used.
* ``SOCKS_GSSAPI_SERVICE``: the server's service name, default ``rcmd``
  (Dante's and curl's).  Without ``/`` or ``@`` it is host-based:
  ``rcmd@PROXYHOST``, PROXYHOST being the server as written in socks.conf
  or SOCKS_SERVER (curl's rule); ``rcmd@HOST`` names the host itself; a
  name with ``/`` is a Kerberos principal, used as is
  (``rcmd/proxy.example.org@EXAMPLE.ORG``).
* ``SOCKS_GSSAPI_LEVEL``: ``clear``, ``integrity`` or ``confidentiality``
  (the default, as with Dante's client), or 0, 1, 2.  A server that
  answers with a stronger level is followed; a weaker one is refused.

Pure here: ``settings``, ``target``, ``judge_level``, ``read_frame``,
``handshake`` and ``Unsealer`` (they are handed their I/O as callables).
At the edge: ``probe`` and ``Initiator``, over python-gssapi.
"""

import os

from .. import config as C
from .. import gss1961 as G
from ..protocol import ProtocolError

try:
    import gssapi
    import gssapi.raw as graw
    from gssapi.exceptions import GSSError
except ImportError:          # the optional extra is not installed
    gssapi = graw = None

    class GSSError(Exception):
        pass

MISSING = ("the Python package gssapi is not installed: pip install 'sockd[gssapi]' "
           "(it builds against MIT Kerberos: apt-get install libkrb5-dev gcc)")
AUTO, NO, REQUIRE = "auto", "no", "require"
MODES = {"auto": AUTO, "yes": AUTO, "no": NO, "require": REQUIRE}
DEFAULT_SERVICE = "rcmd"
DEFAULT_LEVEL = G.CONFIDENTIALITY
MAX_ROUNDS = 8            # context tokens from the server (Kerberos needs 1, SPNEGO 2)


class GssRefused(Exception):
    """GSS-API could not be used with this server, or the server refused
    it: the message says why, and what to do (the caller makes it a
    SocksRefused)."""


class Settings:
    """What the environment asks for: ``mode`` (AUTO, NO, REQUIRE), the
    ``service`` name and the ``level`` wanted."""

    __slots__ = ("mode", "service", "level")

    def __init__(self, mode=AUTO, service=DEFAULT_SERVICE, level=DEFAULT_LEVEL):
        self.mode, self.service, self.level = mode, service, level

    def __repr__(self):
        return "Settings(%s, %s, %s)" % (self.mode, self.service, G.level_name(self.level))


def settings(env=None):
    """The Settings of ``env`` (default os.environ).  Raises ValueError
    whose text names the variable and the values it takes."""
    env = os.environ if env is None else env
    mode_text = env.get("SOCKS_GSSAPI", "").strip().lower() or AUTO
    if mode_text not in MODES:
        raise ValueError("SOCKS_GSSAPI: expected auto, no or require (near '%s')" % C.printable(mode_text))
    service = env.get("SOCKS_GSSAPI_SERVICE", "").strip() or DEFAULT_SERVICE
    if any(c.isspace() or not c.isprintable() for c in service) or service.startswith(("/", "@")):
        raise ValueError("SOCKS_GSSAPI_SERVICE: expected a service name such as rcmd, rcmd@HOST or "
                         "rcmd/HOST@REALM (near '%s')" % C.printable(service))
    level_text = env.get("SOCKS_GSSAPI_LEVEL", "").strip().lower()
    if level_text and level_text not in G.LEVELS:
        raise ValueError("SOCKS_GSSAPI_LEVEL: expected clear, integrity or confidentiality "
                         "(near '%s')" % C.printable(level_text))
    level = G.LEVELS[level_text] if level_text else DEFAULT_LEVEL
    return Settings(MODES[mode_text], service, level)


def target(service, proxy_host):
    """The name to ask the KDC for: (text, host-based?).  ``rcmd`` and the
    proxy ``host`` as written give the host-based ``rcmd@host``;
    ``svc@host`` is taken as it is; a name with ``/`` is a principal."""
    if "/" in service:
        return service, False
    if "@" in service:
        return service, True
    return "%s@%s" % (service, proxy_host.rstrip(".")), True


def judge_level(wanted, got):
    """None when the server's answer ``got`` to the level ``wanted`` will
    do (the same, or a stronger one this side speaks), else why not."""
    if got == wanted or wanted < got <= G.CONFIDENTIALITY:
        return None
    if got == G.SELECTIVE or got > G.CONFIDENTIALITY:
        return "protection level %s, which this client does not speak" % G.level_name(got)
    return ("protection level %s, weaker than the %s asked for (SOCKS_GSSAPI_LEVEL)"
            % (G.level_name(got), G.level_name(wanted)))


def read_frame(recv):
    """One frame, read to its exact length with ``recv(n)`` (which returns
    exactly n bytes or raises): a gss1961.Frame, or gss1961.ABORTED.
    Raises ProtocolError for a wrong version or type."""
    head = recv(2)
    got = G.parse_frame(head)
    if got is not None:         # only the abort is complete in two bytes
        return got[0]
    head += recv(2)
    size = (head[2] << 8) | head[3]
    return G.parse_frame(head + (recv(size) if size else b""))[0]


def abort(send):
    """Send the abort frame (RFC 1961 section 3.8) if the connection still takes it."""
    try:
        send(G.ABORT)
    except OSError:
        pass


def handshake(init, send, recv, server):
    """RFC 1961 sections 3 and 4 after the server chose method 1: context
    tokens (mtyp 1) until ``init`` is complete, then the protection level
    (mtyp 2).  ``init``: an Initiator (or its likeness: ``step``,
    ``complete``, ``check``, ``level_token``, ``read_level``, ``wanted``);
    ``send(bytes)``, ``recv(n)`` the connection's.  Returns the level the
    server granted.  Raises GssRefused (after sending the abort, when it
    is this side that gives up), or ProtocolError / EOFError / OSError."""
    def step(token):
        try:
            return init.step(token)
        except GssRefused as exc:
            abort(send)         # the server waits for a token: tell it there is none
            raise GssRefused("SOCKS server %s: GSS-API as %s failed: %s" % (server, init.principal, exc)) from None

    token = step(None)
    rounds = 0
    while True:
        if token:
            send(G.frame(G.MTYP_AUTH, token))
        if init.complete:
            break
        rounds += 1
        if rounds > MAX_ROUNDS:
            abort(send)
            raise GssRefused("SOCKS server %s sent more than %d GSS-API context tokens" % (server, MAX_ROUNDS))
        fr = read_frame(recv)
        if fr is G.ABORTED:
            raise GssRefused("SOCKS server %s refused the GSS-API context of %s for %s (it sent the abort; "
                             "its log says why: often a service it does not accept, see SOCKS_GSSAPI_SERVICE, "
                             "default rcmd)" % (server, init.principal, init.name))
        if fr.mtyp != G.MTYP_AUTH:
            raise ProtocolError("GSS-API frame of type %d during context establishment" % fr.mtyp)
        token = step(fr.token)
    problem = init.check()
    if problem is not None:
        abort(send)
        raise GssRefused("SOCKS server %s: %s" % (server, problem))
    try:
        token = init.level_token(init.wanted)
    except GssRefused as exc:
        abort(send)
        raise GssRefused("SOCKS server %s: %s" % (server, exc)) from None
    send(G.frame(G.MTYP_LEVEL, token))
    fr = read_frame(recv)
    if fr is G.ABORTED:
        raise GssRefused("SOCKS server %s refused GSS-API protection level %s for %s; try another "
                         "SOCKS_GSSAPI_LEVEL (clear, integrity, confidentiality)"
                         % (server, G.level_name(init.wanted), init.principal))
    if fr.mtyp != G.MTYP_LEVEL:
        raise ProtocolError("GSS-API frame of type %d where the protection level belongs" % fr.mtyp)
    got = init.read_level(fr.token)
    problem = judge_level(init.wanted, got)
    if problem is not None:
        abort(send)
        raise GssRefused("SOCKS server %s answered with %s: refused" % (server, problem))
    return got


class Unsealer:
    """Plaintext read from a connection at level 1 or 2, frame by frame:
    ``read(n)`` returns exactly n bytes, reading whole frames with
    ``recv(n)`` (exact) and opening them with the gss1961.Protection.
    What a frame held beyond is kept in ``buffer`` (for the relay)."""

    __slots__ = ("prot", "recv", "buffer")

    def __init__(self, prot, recv):
        self.prot, self.recv, self.buffer = prot, recv, b""

    def read(self, n):
        while len(self.buffer) < n:
            fr = read_frame(self.recv)
            if fr is G.ABORTED:
                raise GssRefused("the SOCKS server aborted the GSS-API protected session")
            if fr.mtyp != G.MTYP_DATA:
                raise ProtocolError("GSS-API frame of type %d where protected data belongs" % fr.mtyp)
            self.buffer += self.prot.feed(G.frame(fr.mtyp, fr.token))
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


# --- the edge: python-gssapi ------------------------------------------------------------

def available():
    return gssapi is not None


def error_text(exc):
    """A GSSError's major and minor messages as one printable line."""
    try:
        text = exc.gen_message()
    except Exception:          # any library fault: its plain text will do
        text = str(exc)
    return C.printable(" ".join(text.split()), 300)


def brief(exc):
    """The telling part of a GSSError: the mechanism's (minor) message,
    which names the cache, the principal or the ticket, unless it says
    nothing (then the major one)."""
    text = error_text(exc)
    major, sep, minor = text.partition(", Minor (")
    if sep:
        minor = minor.split("): ", 1)[-1]
        if minor and minor.lower() != "success":
            return minor
    return major.split("): ", 1)[-1] if major.startswith("Major (") else major


def kinit():
    cc = os.environ.get("KRB5CCNAME")
    return "run kinit" + (" (KRB5CCNAME=%s)" % C.printable(cc, 200) if cc else "")


def advice(exc, name=None):
    """What a GSSError means for the user, and what to do about it."""
    text = brief(exc)
    low = error_text(exc).lower()
    if "expired" in low:
        return "your Kerberos ticket has expired (%s): %s" % (text, kinit())
    if "not found in kerberos database" in low:
        return ("the KDC knows no service %s (%s): set SOCKS_GSSAPI_SERVICE to the proxy's service "
                "name (default rcmd), or add that principal to the realm and the proxy's keytab"
                % (name or "principal for the proxy", text))
    if "no credentials" in low or "credentials cache" in low or "no kerberos credentials" in low:
        return "no Kerberos ticket (%s): %s" % (text, kinit())
    if "cannot contact any kdc" in low or "cannot find kdc" in low:
        return "the Kerberos KDC cannot be reached (%s)" % text
    return text


def probe():
    """The user's initiator credentials, or why there are none:
    (gssapi.Credentials or None, reason or None)."""
    if gssapi is None:
        return None, MISSING
    try:
        creds = gssapi.Credentials(usage="initiate")
        lifetime = creds.lifetime
    except GSSError as exc:
        return None, advice(exc)
    if lifetime is not None and lifetime <= 0:
        return None, "your Kerberos ticket has expired: %s" % kinit()
    return creds, None


class Initiator:
    """One context as the initiator (python-gssapi, usage "initiate"),
    mutual authentication requested with replay and sequence detection,
    integrity and confidentiality: ``step`` until ``complete``, then the
    level tokens and the connection's ``protection``."""

    __slots__ = ("creds", "name", "hostbased", "wanted", "ctx", "principal")

    def __init__(self, creds, name, hostbased, wanted):
        self.creds = creds
        self.name = name
        self.wanted = wanted
        self.ctx = None
        try:
            self.principal = str(creds.name)
        except GSSError:
            self.principal = "you"
        self.principal = C.printable(self.principal, 255)
        self.hostbased = hostbased

    @property
    def complete(self):
        return self.ctx is not None and self.ctx.complete

    def step(self, token):
        """The next token to send (b"" for none).  Blocks while the KDC is
        asked for the service ticket.  Raises GssRefused."""
        try:
            if self.ctx is None:
                kind = gssapi.NameType.hostbased_service if self.hostbased else gssapi.NameType.kerberos_principal
                flags = gssapi.RequirementFlag
                self.ctx = gssapi.SecurityContext(
                    name=gssapi.Name(self.name, kind), creds=self.creds, usage="initiate",
                    flags=[flags.mutual_authentication, flags.replay_detection, flags.out_of_sequence_detection,
                           flags.integrity, flags.confidentiality])
            return self.ctx.step(token) or b""
        except GSSError as exc:
            raise GssRefused(advice(exc, self.name)) from None

    def check(self):
        """None when the established context gives what the level needs,
        else why not."""
        flags = self.ctx.actual_flags
        rf = gssapi.RequirementFlag
        if rf.mutual_authentication not in flags:
            return "the GSS-API context did not authenticate the server (no mutual authentication)"
        if self.wanted >= G.INTEGRITY and rf.integrity not in flags:
            return "the GSS-API context offers no integrity protection"
        if self.wanted >= G.CONFIDENTIALITY and rf.confidentiality not in flags:
            return "the GSS-API context offers no confidentiality protection"
        return None

    def level_token(self, level):
        """The mtyp 2 token asking for ``level`` (wrapped, conf_req false).
        Raises GssRefused."""
        try:
            return graw.wrap(self.ctx, bytes((level,)), False).message
        except GSSError as exc:
            raise GssRefused("the protection level cannot be wrapped: %s" % advice(exc, self.name)) from None

    def read_level(self, token):
        """The level of the server's mtyp 2 answer.  Raises ProtocolError."""
        try:
            msg = graw.unwrap(self.ctx, token).message
        except GSSError as exc:
            raise ProtocolError("GSS-API protection level does not unwrap: %s" % error_text(exc)) from None
        if len(msg) != 1:
            raise ProtocolError("GSS-API protection level of %d octets, not 1" % len(msg))
        return msg[0]

    def protection(self, level):
        """The connection's gss1961.Protection at level 1 or 2."""
        ctx, conf = self.ctx, level == G.CONFIDENTIALITY
        try:
            chunk = graw.wrap_size_limit(ctx, G.MAX_TOKEN, conf)
        except GSSError:
            chunk = G.DEFAULT_CHUNK
        wrap, unwrap = graw.wrap, graw.unwrap

        def seal(data):
            try:
                return wrap(ctx, data, conf).message
            except GSSError as exc:
                # e.g. the context outlived the service ticket it was made with
                raise ProtocolError("GSS-API message cannot be sealed: %s" % error_text(exc)) from None

        def unseal(token):
            try:
                res = unwrap(ctx, token)
            except GSSError as exc:
                raise ProtocolError("GSS-API message does not unwrap: %s" % error_text(exc)) from None
            if conf and not res.encrypted:
                raise ProtocolError("GSS-API message without confidentiality at level 2")
            return res.message

        return G.Protection(seal, unseal, level, chunk)

"""The GSS-API library's side of method 1 (RFC 1961), at the edge: one
client's security context as an acceptor, over python-gssapi and MIT
Kerberos.  The wire format and the level rules are gss1961's (pure).

python-gssapi is an optional extra (``pip install 'sockd[gssapi]'``):
without it ``MISSING`` says what to install, and the configuration
refuses ``methods gssapi`` with that text at its line (configload).  It
is imported only when a configuration names the method (extras.py:
``available()``, which configload calls, loads it in the master).

Context steps can be slow (the keytab is read, the replay cache written)
and run on the loop's helper pool for logins, like password checks;
wrapping and unwrapping run on the loop (AES on a few KiB: microseconds).
Every failure is a ``GssFailure`` whose text is fit for the log.
"""

from . import extras
from . import gss1961 as G
from .log import clean
from .protocol import ProtocolError

MISSING = ("the Python package gssapi is not installed: pip install 'sockd[gssapi]' "
           "(it builds against MIT Kerberos: apt-get install libkrb5-dev gcc)")
MAX_ROUNDS = 8            # context tokens a client may send (Kerberos needs 1, SPNEGO 2)


def available():
    """Is the gssapi package there?  Loads it (extras.py)."""
    return extras.gssapi() is not None


class GssFailure(Exception):
    """A context that could not be established, or was refused."""


def error_text(exc):
    """A GSSError's major and minor messages as one clean line."""
    try:
        text = exc.gen_message()
    except Exception:          # any library fault: its plain text will do
        text = str(exc)
    return clean(" ".join(text.split()), 300)


def service_matches(target, names):
    """Is ``target`` (the principal the client asked for, e.g.
    ``rcmd/localhost@SOCKS.TEST``) one of the acceptable service ``names``?
    A name without ``/`` or ``@`` is a service on any host (``rcmd``); one
    with ``/`` a principal, with or without the realm (``rcmd/localhost``);
    ``rcmd@localhost`` is the host-based form of the same.  Pure."""
    base, _, realm = target.partition("@") if "/" in target else (target, "", "")
    service = base.split("/", 1)[0]
    for name in names:
        if "/" not in name and "@" in name:
            svc, host = name.split("@", 1)
            name = "%s/%s" % (svc, host)
        if "/" not in name:
            if name == service:
                return True
        elif name == base or name == target:
            return True
    return False


def short_name(principal):
    """``alice`` of ``alice@REALM``: what *= lists that name no realm match."""
    return principal.rsplit("@", 1)[0] if "@" in principal else principal


class Acceptor:
    """One client's context: ``step(token)`` until ``complete``; then its
    ``principal``, the ``level`` negotiation and the ``protection`` of the
    connection.  ``keytab``: the service keytab (None: the library's
    default, KRB5_KTNAME); ``services``: the acceptable service names."""

    __slots__ = ("keytab", "services", "ctx", "rounds", "principal", "target", "__weakref__")

    def __init__(self, keytab, services):
        self.keytab = keytab
        self.services = services
        self.ctx = None
        self.rounds = 0
        self.principal = None
        self.target = None

    @property
    def complete(self):
        return self.principal is not None

    def step(self, token):
        """Feed one context token; returns (the token to send back, b""
        for none; established?).  Blocks (the helper pool runs it).  Raises
        GssFailure, with the reason for the log."""
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            raise GssFailure("more than %d context tokens" % MAX_ROUNDS)
        gssapi = extras.gssapi()
        try:
            if self.ctx is None:
                store = {"keytab": self.keytab} if self.keytab else None
                creds = gssapi.Credentials(usage="accept", store=store) if store else None
                ctx = gssapi.SecurityContext(usage="accept", creds=creds)
                # the library would hand back the mechanism's error token
                # and raise only later; RFC 1961 wants the abort at once
                ctx.__DEFER_STEP_ERRORS__ = False
                self.ctx = ctx
            out = self.ctx.step(token) or b""
            if not self.ctx.complete:
                return out, False
            target = str(self.ctx.target_name) if self.ctx.target_name is not None else ""
            principal = str(self.ctx.initiator_name)
        except gssapi.exceptions.GSSError as exc:
            raise GssFailure(error_text(exc)) from None
        if not service_matches(target, self.services):
            raise GssFailure("the client asked for the service %s, not one of gssapi service (%s)" % (
                clean(target, 200), " ".join(self.services)))
        self.target = clean(target, 200)
        self.principal = clean(principal, 255)
        return out, True

    def read_level(self, token):
        """The level a client asks for, from its mtyp 2 token, and whether
        it spoke the NEC variant (one plain octet).  Raises ProtocolError."""
        if len(token) == 1:
            return token[0], True
        gssapi = extras.gssapi()
        try:
            msg = gssapi.raw.unwrap(self.ctx, token).message
        except gssapi.exceptions.GSSError as exc:
            raise ProtocolError("GSS-API protection level does not unwrap: %s" % error_text(exc)) from None
        if len(msg) != 1:
            raise ProtocolError("GSS-API protection level of %d octets, not 1" % len(msg))
        return msg[0], False

    def level_token(self, level, nec):
        """The mtyp 2 token that answers with ``level``."""
        if nec:
            return bytes((level,))
        return extras.gssapi().raw.wrap(self.ctx, bytes((level,)), False).message

    def protection(self, level):
        """The connection's gss1961.Protection at level 1 or 2."""
        ctx, conf = self.ctx, level == G.CONFIDENTIALITY
        lib = extras.gssapi()
        graw, GSSError = lib.raw, lib.exceptions.GSSError
        try:
            chunk = graw.wrap_size_limit(ctx, G.MAX_TOKEN, conf)
        except GSSError:
            chunk = G.DEFAULT_CHUNK
        wrap, unwrap = graw.wrap, graw.unwrap

        def seal(data):
            return wrap(ctx, data, conf).message

        def unseal(token):
            try:
                res = unwrap(ctx, token)
            except GSSError as exc:
                raise ProtocolError("GSS-API message does not unwrap: %s" % error_text(exc)) from None
            if conf and not res.encrypted:
                raise ProtocolError("GSS-API message without confidentiality at level 2")
            return res.message

        return G.Protection(seal, unseal, level, chunk)

    def close(self):
        """Forget the context (there is no deletion token, RFC 1961 s. 6)."""
        self.ctx = None

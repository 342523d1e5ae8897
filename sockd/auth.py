"""SOCKS 5 authentication: which method a client gets, and the checks the
methods run.

``choose`` picks, in the order the configuration's ``methods`` line gives,
the first method the client offers (RFC 1928 section 3); ``socks4_allowed``
says whether a SOCKS 4 client, which has no method to offer, may be served
at all.  The checks that block (bcrypt, on purpose slow) run on the loop's
helper pool for passwords (pools.PASSWORDS) and report back with
``done(ok, error)`` on the loop.

A password check is one decision in three steps: may this address try at
all (the login back-off, backoff.py: refused at once, with no bcrypt
work, while it is penalised), the check itself, and its outcome recorded
for the address.  The session only sends the reply and logs it.

GSS-API (RFC 1961) is the third method: its context steps (``gss_step``)
run on the same pool as password checks, bounded and fair per client
address in the same way; the session routes its frames (gss1961) and
holds the context (gss.Acceptor).  A failed context is not counted by the
login back-off: a ticket is not a password that can be guessed.
"""

from . import backoff as B
from . import protocol as P
from .errors import BackedOff
from .pools import PASSWORDS
from .rules import ip_key

METHODS = {"none": P.METHOD_NONE, "username": P.METHOD_USERPASS, "gssapi": P.METHOD_GSSAPI}
METHOD_NAMES = {code: name for name, code in METHODS.items()}


def choose(preferred, offered):
    """The method code to answer a greeting with, or None: ``preferred`` is
    the configuration's list of method names, ``offered`` the client's
    method codes."""
    for name in preferred:
        code = METHODS[name]
        if code in offered:
            return code
    return None


def socks4_allowed(cfg):
    """May a SOCKS 4 or 4A request be served under ``cfg``?  Its USERID is
    a claim, not a login: it counts as the method none, so only when
    ``methods`` names it, or ``socks4 trust-userid yes`` says to trust the
    claim (as Dante, which refuses SOCKS 4 under socksmethod username)."""
    return cfg.socks4_trust_userid or choose(cfg.methods, (P.METHOD_NONE,)) is not None


def check_password(ctx, requester, user, password, done, source=None):
    """RFC 1929: is ``password`` (bytes) ``user``'s in the passwd file?
    ``done(ok, error)`` runs on the loop, later; with no passwd file
    configured, at once and refusing.  ``requester``: the session asking
    (pools.py: the check is dropped if it has gone before its turn).
    ``source``: the client's address (text), whose failures the login
    back-off counts (None: not counted); a login it refuses gets
    ``done(False, BackedOff)`` at once.  Returns None, or the pools.Refusal
    when the pool would not take the check (``done`` is then never called,
    and the back-off counts nothing)."""
    db = ctx.config.passwd_db
    if db is None:
        done(False, None)
        return None
    recorder = backed_off(ctx, source, done)
    if recorder is None:
        return None
    busy = ctx.loop.executor.submit(PASSWORDS, requester, db.verify, (user, password), recorder)
    if busy is not None and recorder is not done:
        recorder.forget()
    return busy


def gss_step(ctx, requester, acceptor, token, done):
    """One GSS-API context token for ``acceptor`` (gss.Acceptor.step) on the
    pool for logins; ``done(result, error)`` on the loop, later.  Returns
    None, or the pools.Refusal when the pool would not take it."""
    return ctx.loop.executor.submit(PASSWORDS, requester, acceptor.step, (token,), done)


def backed_off(ctx, source, done):
    """The login back-off's part of a check: None when it refuses the login
    (``done`` has been told), else the ``done`` to give the check: a
    Recorder that records the outcome for ``source`` before passing it on
    (or ``done`` itself when nothing is counted)."""
    if source is None:
        return done
    table, pol = ctx.backoff, B.policy(ctx.config)
    if table is None or pol is None:
        return done
    key = ip_key(source)
    verdict, log_it, left, token = table.begin(key, pol)
    if verdict != B.OK:
        done(False, BackedOff(refusal_text(verdict, source, left, pol) if log_it else None))
        return None
    return Recorder(ctx, table, pol, key, token, source, done)


class Recorder:
    """The outcome of one counted check, recorded for its address, then
    handed to the session's ``done``."""

    __slots__ = ("ctx", "table", "pol", "key", "token", "source", "done")

    def __init__(self, ctx, table, pol, key, token, source, done):
        self.ctx, self.table, self.pol, self.key, self.token, self.source, self.done = \
            ctx, table, pol, key, token, source, done

    def __call__(self, ok, error):
        # a check that raised says nothing about the password: not a failure
        pol = self.pol
        started = self.table.end(self.key, pol, self.token, failed=error is None and not ok)
        if started is not None:
            self.ctx.log.notice("login back-off: %d failed logins from %s within %gs; its logins are refused "
                                "for %gs (penalty %d in a row; auth failures, auth penalty)" % (
                                    pol.failures, self.source, pol.window, started[1], started[0]))
        self.done(ok, error)

    def forget(self):
        """The check never ran (the pool refused it): it counts for nothing."""
        self.table.end(self.key, self.pol, self.token, failed=False)


def refusal_text(verdict, source, left, pol):
    """Why the back-off refused a login from ``source``, for the log."""
    if verdict == B.PENALISED:
        what = "too many failed logins from %s (auth failures; refused for %ds more" % (source, left + 0.999)
    else:
        what = "too many logins at once from %s (auth failures" % source
    return "%s; logged at most once every %g seconds)" % (what, pol.window)

"""SOCKS 5 authentication: which method a client gets, and the checks the
methods run.

``choose`` picks, in the order the configuration's ``methods`` line gives,
the first method the client offers (RFC 1928 section 3); ``socks4_allowed``
says whether a SOCKS 4 client, which has no method to offer, may be served
at all.  The checks that block (bcrypt, on purpose slow) run on the loop's
helper pool for passwords (pools.PASSWORDS) and report back with
``done(ok, error)`` on the loop.

A new method (GSS-API, RFC 1961) is a new entry in METHODS and a check of
its own here; the session only routes its sub-negotiation messages.
"""

from . import protocol as P
from .pools import PASSWORDS

METHODS = {"none": P.METHOD_NONE, "username": P.METHOD_USERPASS}


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


def check_password(ctx, requester, user, password, done):
    """RFC 1929: is ``password`` (bytes) ``user``'s in the passwd file?
    ``done(ok, error)`` runs on the loop, later; with no passwd file
    configured, at once and refusing.  ``requester``: the session asking
    (pools.py: the check is dropped if it has gone before its turn).
    Returns None, or the pools.Refusal when the pool would not take the
    check (``done`` is then never called)."""
    db = ctx.config.passwd_db
    if db is None:
        done(False, None)
        return None
    return ctx.loop.executor.submit(PASSWORDS, requester, db.verify, (user, password), done)

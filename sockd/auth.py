"""SOCKS 5 authentication: which method a client gets, and the checks the
methods run.

``choose`` picks, in the order the configuration's ``methods`` line gives,
the first method the client offers (RFC 1928 section 3).  The checks that
block (bcrypt, on purpose slow) run on the loop's helper pool and report
back with ``done(ok, error)`` on the loop.

A password check is one decision in three steps: may this address try at
all (the login back-off, backoff.py: refused at once, with no bcrypt
work, while it is penalised), the check itself, and its outcome recorded
for the address.  The session only sends the reply and logs it.

A new method (GSS-API, RFC 1961) is a new entry in METHODS and a check of
its own here; the session only routes its sub-negotiation messages.
"""

from . import backoff as B
from . import protocol as P
from .errors import BackedOff
from .rules import ip_key

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


def check_password(ctx, user, password, done, source=None):
    """RFC 1929: is ``password`` (bytes) ``user``'s in the passwd file?
    ``done(ok, error)`` runs on the loop, later; with no passwd file
    configured, at once and refusing.  ``source``: the client's address
    (text), whose failures the login back-off counts (None: not counted);
    a login it refuses gets ``done(False, BackedOff)`` at once."""
    db = ctx.config.passwd_db
    if db is None:
        done(False, None)
        return
    done = backed_off(ctx, source, done)
    if done is None:
        return
    ctx.loop.executor.submit(db.verify, (user, password), done)


def backed_off(ctx, source, done):
    """The login back-off's part of a check: None when it refuses the login
    (``done`` has been told), else the ``done`` to give the check, which
    records the outcome for ``source`` before passing it on."""
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

    def recorded(ok, error):
        # a check that raised says nothing about the password: not a failure
        started = table.end(key, pol, token, failed=error is None and not ok)
        if started is not None:
            ctx.log.notice("login back-off: %d failed logins from %s within %gs; its logins are refused "
                           "for %gs (penalty %d in a row; auth failures, auth penalty)" % (
                               pol.failures, source, pol.window, started[1], started[0]))
        done(ok, error)
    return recorded


def refusal_text(verdict, source, left, pol):
    """Why the back-off refused a login from ``source``, for the log."""
    if verdict == B.PENALISED:
        what = "too many failed logins from %s (auth failures; refused for %ds more" % (source, left + 0.999)
    else:
        what = "too many logins at once from %s (auth failures" % source
    return "%s; logged at most once every %g seconds)" % (what, pol.window)

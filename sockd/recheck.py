"""``reload recheck yes``: after a reload, close the live connections that
the new rules no longer permit.

Runs in a worker (or fork-model child) that was started under an older
configuration, once per reload, when the master asks: it reads what each
Session knows (client, user, destination) and asks the new configuration's
rules as a new request would.  Host names are looked up here, blocking,
only when a rule of the new file names hosts, once per address.  Sessions
still negotiating are left alone: they decide with the new rules anyway.
"""

from . import rules as R
from .addresses import reverse_names
from .session import State

CHECKED_STATES = (State.RELAY, State.BINDWAIT)


def verdict(sess, ruleset, names):
    """The rule that decides ``sess`` under ``ruleset`` (None: no rule
    matches), or False when the session cannot be judged (no fixed
    destination, e.g. a UDP association)."""
    dst_ip = getattr(sess, "dst_ip", None)
    if not dst_ip:
        return False
    try:
        src = getattr(sess, "src_key", None) or R.ip_key(sess.client_ip)
        dst = R.ip_key(dst_ip)
    except ValueError:
        return False
    src_names = dst_names = ()
    if ruleset.needs_src_names:
        src_names = lookup(names, sess.client_ip)
    if ruleset.needs_dst_names:
        dst_names = ((sess.dst_host,) if sess.dst_host else ()) + lookup(names, dst_ip)
    user = sess.user if sess.user is not None else getattr(sess, "realuser", None)
    return ruleset.match(R.Request(src, dst, sess.dst_port, user, src_names, dst_names))


def lookup(names, ip):
    if ip not in names:
        names[ip] = reverse_names(ip)
    return names[ip]


def recheck(sessions, cfg, log):
    """Close each session of ``sessions`` the rules of ``cfg`` refuse.
    Returns how many were closed."""
    ruleset = cfg.ruleset
    names = {}
    closed = 0
    for sess in list(sessions):
        if sess.state not in CHECKED_STATES:
            continue
        rule = verdict(sess, ruleset, names)
        if rule is False or (rule and rule.action == R.PERMIT):
            continue
        why = ("denied by %s" % rule.where) if rule else ("no matching rule in %s" % cfg.path)
        try:
            what = sess.desc()
        except Exception:
            what = "connection from %s" % sess.client_ip
        log.notice("refused -- %s: no longer permitted after reload (%s)" % (what, why))
        sess.close()
        closed += 1
    return closed

"""``reload recheck yes``: after a reload, close the live connections that
the new configuration no longer permits.

Runs in a worker (or fork-model child) that was started under an older
configuration, once per reload, when the master asks: each relaying or
BIND-waiting session is judged by decision.decide as a new request would
be, private-destination guard included, without the identd checks (the
answer identd gave is the session's real user).  Host names are looked up
here, blocking, only when a rule of the new file names hosts, once per
address.  Sessions still negotiating are left alone: they decide with the
new rules anyway; UDP associations have no fixed destination (each
datagram is judged as it comes).
"""

from . import decision as D
from .addresses import reverse_names
from .bind import UNSPECIFIED
from .protocol import CMD_BIND
from .session import State

CHECKED_STATES = (State.RELAY, State.BINDWAIT)


def ask_for(sess, ruleset, names):
    """The decision.Ask for a live session, or None when it cannot be
    judged (no fixed destination).  A BIND is judged by the host that
    connected, once one has (the request may have named none, or another
    with ``bind check-peer no``); until then by its request, and one that
    named no server by its client alone, as when it was granted."""
    dst = sess.dst_ip
    if not dst:
        return None
    if sess.command == CMD_BIND:
        dst = sess.peer or (None if dst in UNSPECIFIED else dst)
    src_names = lookup(names, sess.client_ip) if ruleset.needs_src_names else ()
    dst_names = lookup(names, dst) if ruleset.needs_dst_names and dst else ()
    user = sess.user if sess.user is not None else sess.realuser
    return D.Ask(sess.src_key, [dst] if dst else None, sess.dst_port, sess.command, user=user,
                 ident_checks=False, dst_host=sess.dst_host if dst == sess.dst_ip else None,
                 src_names=src_names, dst_names=dst_names)


def lookup(names, ip):
    if ip not in names:
        names[ip] = reverse_names(ip)
    return names[ip]


def recheck(sessions, cfg, log):
    """Close each session of ``sessions`` that ``cfg`` refuses.  Returns
    how many were closed.  May block (reverse lookups, when rules name
    hosts)."""
    names = {}
    closed = 0
    for sess in list(sessions):
        if sess.state not in CHECKED_STATES:
            continue
        ask = ask_for(sess, cfg.ruleset, names)
        if ask is None:
            continue
        verdict = D.decide(ask, cfg)
        if verdict.allowed:
            continue
        if verdict.why:
            why = verdict.why
        elif verdict.rule is not None:
            why = "denied by %s" % verdict.rule.where
        else:
            why = "no matching rule in %s" % cfg.path
        log.notice("refused -- %s: no longer permitted after reload (%s)" % (sess.desc(), why))
        sess.close()
        closed += 1
    return closed

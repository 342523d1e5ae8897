"""The one answer to "may this client go there?".

Every caller asks here, with an ``Ask`` that says what it knows: CONNECT
and BIND requests (session.py), every UDP datagram and the grant of a UDP
association (udp.py, session.py), and the re-check of live connections
after a reload (recheck.py).  ``decide(ask, config)`` returns a
``Verdict``: allowed or not, the rule that decided, why in words for the
log, the failure replies, and what the caller must find out first (the
client's identd answer).

Pure: no sockets, no files, no clock, no logging.  What only the outside
world knows (host names, identd's answer, this host's addresses) is
looked up by the caller and handed in; a Verdict asks for identd when a
rule needs it, and the caller asks again with the answer.

The rules are sockd.conf's, first match wins (rules.py); on top of them:

* an unspecified destination (0.0.0.0/8, ``::``) is refused whatever the
  rules say: the kernel reads it as "this host" (BIND is different: there
  DSTIP 0.0.0.0 names no peer, and bind.py judges the peer);
* the private-destination guard (``deny-private-destinations``): loopback,
  link-local and this host's own addresses are open to the clients it
  applies to only through a permit line that names the address or its
  network literally (an address and mask, or CIDR); "any", ALL, a host
  name or a ``.zone`` does not open them, however the name resolves;
* the identd matrix of the classic sockd for permit lines with ``?=i`` or
  ``?=I`` (or -i/-I): identd naming another user than the client claimed
  refuses (SOCKS 4 reply 93), and under ``I`` an identd that cannot be
  reached refuses too (92).
"""

from . import netinfo
from . import protocol as P
from . import rules as R
from .ident import USERID

CONNECT, BIND, UDP = P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP


class Ask:
    """What a caller knows when it asks.

    ``src``: the client's (family, int) key.  ``user``: the user the client
    claimed (SOCKS 4 USERID, or the RFC 1929 name), None for SOCKS 5
    without authentication; then ``user_from_ident`` is true and the user
    a ``*=`` list sees is identd's answer, on lines that ask identd.
    ``ident``: None (not asked yet) or identd's (kind, value).
    ``ident_default``: -i/-I ("i", "I") or None.  ``ident_checks``: apply
    the identd matrix (requests: yes; datagrams and re-checks: no, as the
    classic sockd).  ``dsts``: the destination's address texts, in the
    order they would be tried (None: a UDP association being granted,
    whose datagrams are each decided later; empty, with ``dst_host``: a
    name that does not resolve here, left for an upstream, judged by its
    name alone).  ``dst_host``: the name the
    client asked for, if any; ``dst_names`` and ``src_names``: the names
    looked up for the addresses (lower-case), for rules that name hosts.
    ``method``: how a SOCKS 5 client authenticated (none, username,
    gssapi; None for SOCKS 4), for rules with a ``method=`` field; a
    gssapi ``user`` is the principal, ``alice@REALM``."""

    __slots__ = ("src", "user", "user_from_ident", "ident", "ident_default", "ident_checks", "command",
                 "dsts", "port", "dst_host", "src_names", "dst_names", "method")

    def __init__(self, src, dsts, port, command=CONNECT, user=None, user_from_ident=False, ident=None,
                 ident_default=None, ident_checks=True, dst_host=None, src_names=(), dst_names=(),
                 method=None):
        self.method = method
        self.src = src
        self.dsts = dsts
        self.port = port
        self.command = command
        self.user = user
        self.user_from_ident = user_from_ident
        self.ident = ident
        self.ident_default = ident_default
        self.ident_checks = ident_checks
        self.dst_host = dst_host
        self.src_names = src_names
        self.dst_names = dst_names


class Verdict:
    """The answer.  ``allowed``; ``rule``: the line that decided (None: no
    line matched); ``why``: the reason in words when it is not simply
    that line; ``addresses``: the permitted ones of ``Ask.dsts``, in order;
    ``need_ident``: ask the client's identd, then decide again; ``user``:
    the user identd established (SOCKS 5 without a claimed user);
    ``alert``: identd's user when it contradicts the claimed one;
    ``code4``/``code5``: the failure replies for SOCKS 4 and 5;
    ``run_rule_command``: the refusing line's ``: command`` is to run."""

    __slots__ = ("allowed", "rule", "why", "addresses", "need_ident", "user", "alert", "code4", "code5",
                 "by_rule", "run_rule_command")

    def __init__(self, allowed, rule=None, why=None, addresses=(), need_ident=False, user=None, alert=None,
                 code4=P.S4_REJECTED, code5=P.REP_NOT_ALLOWED, by_rule=False, run_rule_command=False):
        self.allowed = allowed
        self.rule = rule
        self.why = why
        self.addresses = addresses
        self.need_ident = need_ident
        self.user = user
        self.alert = alert
        self.code4 = code4
        self.code5 = code5
        self.by_rule = by_rule
        self.run_rule_command = run_rule_command

    def reason(self, config_path):
        """The refusal for the log, after the session's description:
        ' by FILE:LINE', ': why', ' by FILE:LINE: why' or ': no matching
        rule in FILE'."""
        if self.by_rule and self.why:
            return " by %s: %s" % (self.rule.where, self.why)
        if self.why:
            return ": %s" % self.why
        if self.rule is None:
            return ": no matching rule in %s" % config_path
        return " by %s" % self.rule.where

    def __repr__(self):
        return "<Verdict %s %s%s>" % ("allowed" if self.allowed else "refused",
                                      self.rule.where if self.rule else "-", ": " + self.why if self.why else "")


NEED_IDENT = Verdict(False, need_ident=True)


def private_guard(mode, src):
    """Does deny-private-destinations apply to a client?  ``mode`` is the
    setting: "yes", "no" or "auto" (for clients not on loopback)."""
    if mode == "auto":
        return not netinfo.is_loopback(src)
    return mode == "yes"


def names_literally(spec):
    """Does a rule's destination name its addresses literally -- an address
    and mask, or CIDR, other than "any"?  Only such a line opens a private
    destination under the guard."""
    return spec.kind == "net" and spec.mask != 0


def ident_mode(rule, default):
    """The identd mode of a rule: its ?= field, else -i/-I, else none."""
    return rule.ident or default or "n"


class IdentUser:
    """SOCKS 5 without a claimed user: the user a rule's *= list sees is
    identd's answer, and only on lines that ask identd."""

    __slots__ = ("ask",)

    def __init__(self, ask):
        self.ask = ask

    def of(self, rule):
        ask = self.ask
        if ident_mode(rule, ask.ident_default) == "n":
            return None
        if ask.ident is None:
            return R.NEED_USER(rule)
        return ask.ident[1] if ask.ident[0] == USERID else None


def decide(ask, cfg):
    """Judge ``ask`` under the configuration ``cfg`` (its ruleset,
    ``deny_private_destinations``, ``own_addresses`` and ``path``).
    Returns a Verdict; never raises for a well-formed Ask."""
    rs = cfg.ruleset
    if ask.dsts is None:
        rule = rs.may_permit(ask.src, ask.user, ask.method)
        if rule is None:
            return Verdict(False, why="no permit line for this client")
        return Verdict(True, rule)
    if ask.user_from_ident and rs.has_users:
        user, user_of = None, IdentUser(ask).of
    else:
        user, user_of = ask.user, None
    # names only when a rule looks at them: without, the ruleset's memo applies
    src_names = ask.src_names if rs.needs_src_names else ()
    dst_names = ()
    if rs.needs_dst_names:
        dst_names = ((ask.dst_host,) if ask.dst_host else ()) + tuple(ask.dst_names)
    if not ask.dsts and ask.dst_host is not None:
        return unresolved(ask, cfg, rs, user, user_of, src_names, dst_names)
    guard = private_guard(cfg.deny_private_destinations, ask.src)
    first = None
    permitting = None
    allowed = []
    for ip in ask.dsts:
        try:
            key = R.ip_key(ip)
        except ValueError:
            continue
        if ask.command != BIND and netinfo.is_unspecified(key):
            if first is None:
                first = Verdict(False, why="%s is the unspecified address: this host, to the kernel" % ip)
            continue
        rule = rs.match(R.Request(ask.src, key, ask.port, user, src_names, dst_names, ask.method),
                        user_of=user_of)
        if isinstance(rule, R.NEED_USER):
            return NEED_IDENT
        if guard and rule is not None and rule.action == R.PERMIT and not names_literally(rule.dst) \
                and netinfo.is_private(key, cfg.own_addresses):
            if first is None:
                first = Verdict(False, rule, "%s is private to this host (deny-private-destinations)" % ip)
            continue
        if first is None:
            first = Verdict(False, rule, run_rule_command=rule is not None)
        if rule is not None and rule.action == R.PERMIT:
            allowed.append(ip)
            if permitting is None:
                permitting = rule
    if not allowed:
        return first if first is not None else Verdict(False)
    if ask.ident_checks:
        return ident_matrix(ask, permitting, allowed)
    return Verdict(True, permitting, addresses=allowed)


def unresolved(ask, cfg, rs, user, user_of, src_names, dst_names):
    """A name that does not resolve here, left for an upstream to resolve
    (the way-out file sends it through socks5h://, socks4a:// or http://):
    judged once, by its name, as an address that no address in a rule
    names (lines for 0/0 and for names still match).  The private guard
    does not apply: sockd never connects to it."""
    rule = rs.match(R.Request(ask.src, None, ask.port, user, src_names, dst_names, ask.method), user_of=user_of)
    if isinstance(rule, R.NEED_USER):
        return NEED_IDENT
    if rule is None or rule.action != R.PERMIT:
        return Verdict(False, rule, run_rule_command=rule is not None)
    if ask.ident_checks:
        return ident_matrix(ask, rule, [])
    return Verdict(True, rule)


def ident_matrix(ask, rule, allowed):
    """The classic sockd's identd checks for a permitting ``rule``."""
    mode = ident_mode(rule, ask.ident_default)
    if mode not in ("i", "I"):
        return Verdict(True, rule, addresses=allowed)
    if ask.ident is None:
        return NEED_IDENT
    kind, value = ask.ident
    claimed = None if ask.user_from_ident else ask.user
    if kind == USERID:
        if claimed is not None and value != claimed:
            return Verdict(False, rule, "identd says the user is %s" % value, alert=value, code4=P.S4_BAD_ID,
                           by_rule=True)
        return Verdict(True, rule, addresses=allowed, user=value if claimed is None else None)
    if mode == "I":
        return Verdict(False, rule, "cannot verify the user with identd", code4=P.S4_NO_IDENTD, by_rule=True)
    return Verdict(True, rule, addresses=allowed)

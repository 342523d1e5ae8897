"""Traffic control's pure parts: what ``limit bandwidth`` and ``quota``
lines say (``Limit``, ``Quota``), which of them apply to a session and
under which keys (``plan``, the one home of that question), the token
bucket (``refill``, ``wait``, ``TokenBucket``), and the periods quotas count
in (``period_start``, ``slice_start``).

Keys.  Every budget and every counter has a key, a short text that names
what it counts: ``user alice``, ``address 10.1.2.3``, ``address
10.1.0.0/16``, ``rule lab``.  Two lines that name the same thing share
its key: one budget (at the stricter rate) and one counter.  A session
draws on every bucket that applies to it, so the strictest wins.  For
users, a line that names the user applies instead of the ``*`` lines (a
default for everyone without a line of their own); a GSS-API principal
``alice@REALM`` matches a line for ``alice`` as ``*=`` lists do, and then
counts under that line's key.  For addresses every line whose network
holds the client applies: a network line is one budget for the whole
network, an ``each`` line one per client address.

No I/O and no clock: what needs the time is given it.  The local time
zone (``time.localtime``/``mktime``) is the only thing read from outside.
Imports only ``rules`` of sockd (addresses).
"""

import hashlib
import ipaddress
import time

from . import rules as R

KIB = 1024
CHUNK = 64 * KIB          # most tokens a session takes from a shared bucket at once, slow rates
MAX_CHUNK = 4 << 20       # ... and fast ones (see take_size)
MIN_BURST = 16 * KIB      # the default burst is a tenth of a second at the rate, at least this
KEY_MAX = 120             # bytes of a key kept as they are; longer ones end in a hash
DIRECTIONS = ("up", "down")   # 0: from the client (upload), 1: to it (download)

LIMIT_KINDS = ("session", "address", "user", "rule")
QUOTA_KINDS = ("address", "user", "rule")
CALENDAR = ("day", "week", "month")
MODES = ("cut", "finish")
HOUR = 3600
BASES = 8                 # periods the shared table keeps a count for, per key; "day" is the first


def default_burst(rate):
    """The burst of a rate given none: a tenth of a second of it, at least
    MIN_BURST (a smaller one would cost a wake-up per few packets)."""
    return max(MIN_BURST, int(rate // 10))


def least_take(rate, burst):
    """The fewest tokens worth waking up for: a twentieth of a second at the
    rate, at most a chunk or half the burst, at least one byte.  Waiting
    for fewer would wake a paused session more often for no gain; waiting
    for the whole burst would lose what comes in while the wake-up is late
    (a full bucket takes no more)."""
    return max(1, min(CHUNK, burst // 2, int(rate // 20)))


def take_size(rate):
    """The most tokens a session takes at once from a bucket of ``rate``:
    CHUNK, or a fiftieth of a second at the rate when that is more, at most
    MAX_CHUNK.  A take is a lock, a few unpacks and a read cut to its size,
    so at 64 KiB a fast limit that is never reached cost 2.5 times the CPU
    per GB of no limit (one take per 64 KiB read); a fiftieth of a second
    is still a small share of what the other sessions of the key can use."""
    return max(CHUNK, min(MAX_CHUNK, int(rate // 50)))


def key_text(kind, value):
    """The key of ``kind`` (user, address, rule) ``value``.  A key longer
    than KEY_MAX bytes is cut and ends in a hash of the whole, so that two
    long names stay apart."""
    text = "%s %s" % (kind, value)
    raw = text.encode("utf-8", "replace")
    if len(raw) <= KEY_MAX:
        return text
    digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
    return raw[:KEY_MAX - 18].decode("utf-8", "ignore") + "~" + digest


def net_text(fam, addr, prefix):
    """A network as keys and messages write it: the address alone for a
    single host, else ADDRESS/PREFIX."""
    bits = 32 if fam == 4 else 128
    ip = str(ipaddress.IPv4Address(addr) if fam == 4 else ipaddress.IPv6Address(addr))
    return ip if prefix == bits else "%s/%d" % (ip, prefix)


def parse_net(text):
    """An address or CIDR (``10.1.0.0/16``, ``10.1.2.3``, ``2001:db8::/32``)
    -> (family, network address, prefix); host bits are cleared.  Raises
    ValueError."""
    ip, sep, prefix = text.partition("/")
    fam, addr = R.ip_key(ip)
    bits = 32 if fam == 4 else 128
    if sep:
        if not (prefix.isascii() and prefix.isdigit()) or not 0 <= int(prefix) <= bits:
            raise ValueError("bad prefix length")
        p = int(prefix)
    else:
        p = bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - p)) - 1)
    return fam, addr & mask, p


def in_net(net, key):
    """Is the address ``key`` (family, int) in ``net`` (parse_net's)?"""
    fam, addr, prefix = net
    if key[0] != fam:
        return False
    bits = 32 if fam == 4 else 128
    return key[1] >> (bits - prefix) == addr >> (bits - prefix) if prefix else True


class Limit:
    """One ``limit bandwidth`` line: its kind (session, address, user,
    rule), target (a network's text, a user name or ``*``, a tag; None for
    session), ``each`` (an address line: a budget per client address),
    the rates up and down in bytes per second (None: that direction is not
    limited) and their bursts, and where it was written."""

    __slots__ = ("kind", "target", "each", "up", "down", "burst_up", "burst_down", "file", "line", "_net")

    def __init__(self, kind, target, each, up, down, burst_up, burst_down, file="-", line=0):
        self.kind, self.target, self.each = kind, target, each
        self.up, self.down = up, down
        self.burst_up, self.burst_down = burst_up, burst_down
        self.file, self.line = file, line
        self._net = parse_net(target) if kind == "address" else None

    @property
    def where(self):
        return "%s:%d" % (self.file, self.line)

    def rate(self, d):
        return self.up if d == 0 else self.down

    def burst(self, d):
        return self.burst_up if d == 0 else self.burst_down

    def text(self):
        """The line as messages quote it (rates in bytes per second)."""
        rates = "/".join("-" if r is None else "%d" % r for r in (self.up, self.down)) \
            if self.up != self.down else "%d" % self.up
        return "limit bandwidth %s%s%s %s" % (self.kind, "" if self.target is None else " " + self.target,
                                              " each" if self.each else "", rates)


class Quota:
    """One ``quota`` line: kind (address, user, rule), target, ``each``,
    the bytes allowed (both directions together) per ``period`` (day,
    week, month, or ``rolling N`` hours), what happens to live sessions
    once it is reached (``mode``: cut or finish), and where it was written."""

    __slots__ = ("kind", "target", "each", "nbytes", "period", "mode", "file", "line", "_net")

    def __init__(self, kind, target, each, nbytes, period, mode, file="-", line=0):
        self.kind, self.target, self.each = kind, target, each
        self.nbytes, self.period, self.mode = nbytes, period, mode
        self.file, self.line = file, line
        self._net = parse_net(target) if kind == "address" else None

    @property
    def where(self):
        return "%s:%d" % (self.file, self.line)

    def text(self):
        return "quota %s %s%s %d bytes per %s" % (self.kind, self.target, " each" if self.each else "",
                                                  self.nbytes, period_text(self.period))


def period_text(period):
    """A period as the configuration writes it: day, week, month, 24h."""
    if period.startswith("rolling "):
        hours = int(period.split()[1])
        return "%dd" % (hours // 24) if hours % 24 == 0 else "%dh" % hours
    return period


def parse_period(tok):
    """``day``, ``week``, ``month`` (calendar periods, local time), or a
    duration in whole hours (``24h``, ``7d``: a rolling window).  Returns
    the period's canonical text (``rolling 24``); raises ValueError."""
    t = tok.lower()
    if t in CALENDAR:
        return t
    units = {"h": 1, "d": 24, "w": 168}
    if len(t) < 2 or t[-1] not in units or not (t[:-1].isascii() and t[:-1].isdigit()):
        raise ValueError("expected day, week, month or a rolling window in hours or days (24h, 7d)")
    hours = int(t[:-1]) * units[t[-1]]
    if not 1 <= hours <= 24 * 400:
        raise ValueError("a rolling window is from 1 hour to 400 days")
    return "rolling %d" % hours


def period_indexes(quotas, known=None):
    """Which of the shared table's BASES counts each period uses: "day"
    first (for the status report), then the periods of ``quotas`` in the
    order they first appear, keeping those ``known`` (period -> index)
    already has.  Returns a dict; raises ValueError when more than BASES
    periods are in use."""
    out = dict(known or {})
    out.setdefault("day", 0)
    wanted = ["day"] + [q.period for q in quotas]
    free = [i for i in range(BASES) if i not in out.values()]
    for p in wanted:
        if p in out:
            continue
        if not free:
            # forget the periods no longer used (their counts are recomputed)
            stale = sorted(i for k, i in out.items() if k not in wanted)
            if not stale:
                raise ValueError("more than %d different quota periods" % BASES)
            for k in [k for k, i in out.items() if i in stale]:
                del out[k]
            free = stale
        out[p] = free.pop(0)
    return out


# --- the token bucket -------------------------------------------------------------------

def refill(tokens, stamp, now, rate, burst):
    """A bucket of ``tokens`` last filled at ``stamp``, filled up to
    ``now`` at ``rate`` tokens a second, never above ``burst``.  Returns
    (tokens, stamp).  Time going backwards adds nothing."""
    if now > stamp:
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        stamp = now
    elif tokens > burst:
        tokens = float(burst)
    return tokens, stamp


def wait(tokens, want, rate):
    """Seconds until a bucket holding ``tokens`` holds ``want``."""
    if tokens >= want:
        return 0.0
    return (want - tokens) / rate


class TokenBucket:
    """A token bucket of its own (one session's limit): ``rate`` tokens a
    second, at most ``burst`` held, full at the start.  ``take(now, most,
    least)`` gives between ``least`` and ``most`` tokens, or none; ``due``
    says when ``least`` will be there."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst, now):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def available(self, now):
        self.tokens, self.stamp = refill(self.tokens, self.stamp, now, self.rate, self.burst)
        return self.tokens

    def take(self, now, most, least=1):
        have = self.available(now)
        if have < least:
            return 0
        n = int(min(have, most))
        self.tokens -= n
        return n

    def give(self, n):
        """Tokens taken and not used, back (never above the burst)."""
        self.tokens = min(float(self.burst), self.tokens + n)

    def due(self, now, least):
        return wait(self.available(now), least, self.rate)


# --- periods ----------------------------------------------------------------------------

def slice_start(now):
    """The start of the local hour ``now`` (a Unix time) is in: counts are
    kept per local hour, so every calendar period and rolling window is a
    whole number of them (in zones half an hour off UTC too)."""
    lt = time.localtime(now)
    return int(now) - lt.tm_min * 60 - lt.tm_sec


def period_start(period, now):
    """When the ``period`` (day, week -- from Monday --, month, ``rolling
    N``) that ``now`` is in began, in local time: a Unix time at the start
    of a local hour."""
    if period.startswith("rolling "):
        hours = int(period.split()[1])
        return slice_start(now) - (hours - 1) * HOUR
    lt = time.localtime(now)
    if period == "day":
        fields = (lt.tm_year, lt.tm_mon, lt.tm_mday)
    elif period == "week":
        fields = (lt.tm_year, lt.tm_mon, lt.tm_mday - lt.tm_wday)     # mktime carries into the month
    else:
        fields = (lt.tm_year, lt.tm_mon, 1)
    return int(time.mktime(fields + (0, 0, 0, 0, 0, -1)))


# --- which limits and quotas apply: the plan ------------------------------------------------

class Budget:
    """A budget in a plan: the key, and per direction the rate, burst and
    the line that set it (the strictest of those that share the key)."""

    __slots__ = ("key", "rates", "bursts", "lines")

    def __init__(self, key):
        self.key = key
        self.rates = [None, None]
        self.bursts = [0, 0]
        self.lines = [None, None]

    def add(self, lim):
        for d in (0, 1):
            r = lim.rate(d)
            if r is not None and (self.rates[d] is None or r < self.rates[d]):
                self.rates[d], self.bursts[d], self.lines[d] = r, lim.burst(d), lim


class Plan:
    """What applies to one session: ``budgets`` (shared, by key),
    ``session`` (its own budget, key None, or None), ``counted`` (the keys
    its bytes are added to), ``quotas`` ((key, Quota) pairs)."""

    __slots__ = ("budgets", "session", "counted", "quotas", "shape")

    def __init__(self, budgets, session, counted, quotas):
        self.budgets, self.session, self.counted, self.quotas = budgets, session, counted, quotas
        self.shape = None       # what every meter of this plan shares (meters.Meter builds it once)

    def limited(self, d):
        """Is direction ``d`` limited at all?"""
        return (self.session is not None and self.session.rates[d] is not None) or any(
            b.rates[d] is not None for b in self.budgets)


def user_match(name, user, method):
    """Does a line naming ``name`` apply to ``user``?  By the whole name,
    or, for a GSS-API principal, by the name before its realm, as a rule's
    ``*=`` list matches (rules.Ruleset.user_matches)."""
    if user == name:
        return True
    return method == "gssapi" and "@" in user and user.rsplit("@", 1)[0] == name


def _user_lines(lines, user, method):
    """The user lines of ``lines`` that apply to ``user``: those naming it,
    or, when none does, the ``*`` ones.  Returns (lines, key name)."""
    named = [x for x in lines if x.kind == "user" and x.target != "*" and user_match(x.target, user, method)]
    if named:
        return named, named[0].target
    return [x for x in lines if x.kind == "user" and x.target == "*"], user


def _key_of(line, src_key, user_name, tag):
    """The key a line applies to a session under, or None when it does not
    apply.  ``user_name``: the key name of the session's user lines (they
    are chosen by _user_lines first)."""
    kind = line.kind
    if kind == "address":
        if not in_net(line._net, src_key):
            return None
        if line.each:
            fam = line._net[0]
            return key_text("address", net_text(fam, src_key[1], 32 if fam == 4 else 128))
        return key_text("address", net_text(*line._net))
    if kind == "user":
        return key_text("user", user_name)
    if kind == "rule":
        return key_text("rule", line.target) if tag == line.target else None
    return None


def plan(limits, quotas, record, src_key, user=None, method=None, tag=None):
    """The Plan of a session from ``src_key`` (family, int) as ``user``
    (authenticated with ``method``), permitted by a rule tagged ``tag``:
    the budgets of ``limits`` and the ``quotas`` that apply, and the keys
    its bytes count under (with ``record``, its user's and address's
    totals too).  Returns None when nothing applies: the session is then
    relayed as if traffic control did not exist."""
    user_limits = user_quotas = ()
    user_name = user
    if user is not None:
        user_limits, lname = _user_lines(limits, user, method)
        user_quotas, qname = _user_lines(quotas, user, method)
        named = [n for n in (lname, qname) if n != user]
        user_name = named[0] if named else user
    budgets = {}
    session = None
    for lim in limits:
        if lim.kind == "session":
            if session is None:
                session = Budget(None)
            session.add(lim)
            continue
        if lim.kind == "user" and lim not in user_limits:
            continue
        key = _key_of(lim, src_key, user_name, tag)
        if key is None:
            continue
        b = budgets.get(key)
        if b is None:
            b = budgets[key] = Budget(key)
        b.add(lim)
    applied = []
    for q in quotas:
        if q.kind == "user" and q not in user_quotas:
            continue
        key = _key_of(q, src_key, user_name, tag)
        if key is not None:
            applied.append((key, q))
    counted = []
    if record:
        if user is not None:
            counted.append(key_text("user", user_name))
        fam = src_key[0]
        counted.append(key_text("address", net_text(fam, src_key[1], 32 if fam == 4 else 128)))
    for key, _q in applied:
        if key not in counted:
            counted.append(key)
    budgets = tuple(b for b in budgets.values() if b.rates != [None, None])
    if session is not None and session.rates == [None, None]:
        session = None
    if not budgets and session is None and not counted:
        return None
    return Plan(budgets, session, tuple(counted), tuple(applied))


def quotas_of_key(quotas, key):
    """The quotas that count under ``key``, as far as the key tells: the
    master asks, to keep the counts of those keys at hand (a user's key
    made by a ``*`` line is taken to be under the ``*`` quotas)."""
    kind, _, value = key.partition(" ")
    out = []
    if kind == "user":
        named = [q for q in quotas if q.kind == "user" and q.target == value]
        return named or [q for q in quotas if q.kind == "user" and q.target == "*"]
    if kind == "rule":
        return [q for q in quotas if q.kind == "rule" and q.target == value]
    if kind == "address":
        try:
            net = parse_net(value)
        except ValueError:
            return []
        bits = 32 if net[0] == 4 else 128
        for q in quotas:
            if q.kind != "address":
                continue
            if q.each:
                if net[2] == bits and in_net(q._net, net[:2]):
                    out.append(q)
            elif q._net == net:
                out.append(q)
    return out

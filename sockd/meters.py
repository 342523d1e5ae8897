"""Traffic control's shared state: every key's budget and counters in one
table that every process of the server sees (``TrafficTable``), one
session's use of it (``Meter``), and what a serving process asks of it
(``TrafficControl``, the context's ``traffic``).

The table is a limits.AddressTable: an anonymous shared mapping the
master makes before it forks, one process-shared lock, keys of up to 128
bytes (traffic.key_text).  A slot's record holds, per direction, the
key's token bucket (tokens and when they were last counted: the rate and
burst are the configuration's, so a reload changes them without losing
the bucket), the bytes counted since the master last took them
(``pending``), and the bytes of each period as the master last knew them
from the database (``bases``, one per period of traffic.period_indexes).
A key's use in a period is its base plus what is pending.

Costs are paid in chunks, not per read: a session takes up to
traffic.take_size tokens from all of its buckets at once (one lock), spends
them locally, and adds its counts to the shared counters when it takes
again, every COUNT_EVERY bytes when it has no limit, and at its end.  What
a worker that is killed still held locally
is lost (at most a take per session); everything added to the table survives it, for the master
writes the table to the database.

A slot is reused for another key only once nothing is pending in it, it
has been idle for GRACE seconds, and the period counts of a key with a
quota are all zero (the database has them; a key with none has no use
this period, which is what a fresh slot says).  When the table is full a
key is not counted and not limited, and that is logged: traffic control
must never lock anyone out.

A process killed while it holds the lock would stop every other: each
holder writes its pid beside the lock, and the master, which reaps the
dead, lets it go (``freed``).

Runs in every process; imports only config (what a configuration asks
for), limits, log and traffic of sockd.
"""

import os
import struct
import time

from . import traffic as T
from .config import accounting_on, traffic_on
from .limits import AddressTable
from .log import log

SLOTS = 16384
PLANS = 4096            # plans a process remembers (TrafficControl.plan), per configuration
KEY_SIZE = 128
RECORD = struct.Struct("=16Q")          # 128 bytes; laid out by the offsets below
TOUCHED = 0                             # d: monotonic time of the last use
BUCKET = (8, 24)                        # per direction: dd (tokens, stamp)
PENDING = (40, 48)                      # per direction: Q bytes not yet taken by the master
FLAGS = 56                              # Q: QUOTA, the key has a quota (its counts are kept)
BASES = 64                              # T.BASES times Q
QUOTA = 1
D = struct.Struct("=d")
DD = struct.Struct("=dd")
Q = struct.Struct("=Q")
QQ = struct.Struct("=QQ")
NB = struct.Struct("=%dQ" % T.BASES)
ZERO_BASES = bytes(NB.size)
FRESH = bytes(RECORD.size)
GRACE = 120.0             # seconds a slot stays its key's after its last use
COUNT_EVERY = 256 << 10   # bytes a session without a limit relays between two counts
UNLIMITED = 1 << 30       # the allowance of a direction without a limit
FULL_LOG_EVERY = 10.0     # seconds between "the table is full" lines of one process
DRAIN_BATCH = 256         # slots the master drains per hold of the lock


# this process's pid, for the lock's holder field: os.getpid is a system
# call, once per take; a fork (every worker, every child) sets it anew
PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: PID.__setitem__(0, os.getpid()))


def key_bytes(key):
    """A key (traffic.key_text) as the table stores it."""
    return key.encode("utf-8", "replace")[:KEY_SIZE].ljust(KEY_SIZE, b"\0")


class TrafficTable:
    """The shared table.  Made once by the master (every generation uses
    the same one, so a reload loses no count and no bucket)."""

    def __init__(self, slots=SLOTS, clock=time.monotonic):
        # the extra area: a dirty byte per slot (something is pending), the
        # lock holder's pid
        self.table = AddressTable(RECORD, slots + 8, key_size=KEY_SIZE, slots=slots)
        self.slots = slots
        self.mem = self.table.mem
        self.lock = self.table.lock
        self.keys_off = self.table.keys_off
        self.rec_off = self.table.rec_off
        self.dirty_off = self.table.extra_off
        self.holder_off = self.dirty_off + slots
        self.clock = clock
        self.full_logged = -1e18

    # --- the lock ---------------------------------------------------------------------
    def acquire(self, timeout=None):
        """Take the lock (waiting at most ``timeout`` seconds when given).
        Returns whether it was taken."""
        if timeout is None:
            self.lock.acquire()
        elif not self.lock.acquire(timeout=timeout):
            return False
        Q.pack_into(self.mem, self.holder_off, PID[0])
        return True

    def release(self):
        Q.pack_into(self.mem, self.holder_off, 0)
        self.lock.release()

    def freed(self, pid):
        """Process ``pid`` has ended (the master reaped it): if it held the
        lock, let it go, or nobody would ever have it again.  Returns
        whether it did."""
        if Q.unpack_from(self.mem, self.holder_off)[0] != pid:
            return False
        Q.pack_into(self.mem, self.holder_off, 0)
        try:
            self.lock.release()
        except ValueError:
            return False
        log.error("traffic: process %d died holding the traffic table's lock; released" % pid)
        return True

    def holder(self):
        return Q.unpack_from(self.mem, self.holder_off)[0]

    def holder_gone(self):
        """The lock has been held for seconds by nobody alive (a process
        died between taking it and writing its pid): let it go."""
        Q.pack_into(self.mem, self.holder_off, 0)
        try:
            self.lock.release()
        except ValueError:
            return
        log.error("traffic: the traffic table's lock was held by a process that has gone; released")

    # --- slots ------------------------------------------------------------------------
    def rec(self, s):
        """The offset of slot ``s``'s record."""
        return self.rec_off + s * RECORD.size

    def key_at(self, s):
        off = self.keys_off + s * KEY_SIZE
        return self.mem[off:off + KEY_SIZE].rstrip(b"\0").decode("utf-8", "replace")

    def same_key(self, s, kb):
        off = self.keys_off + s * KEY_SIZE
        return self.mem[off:off + KEY_SIZE] == kb

    def _dead(self, now):
        mem, dirty_off = self.mem, self.dirty_off

        def dead(s):
            if mem[dirty_off + s]:
                return False
            off = self.rec_off + s * RECORD.size
            if now - D.unpack_from(mem, off + TOUCHED)[0] < GRACE:
                return False
            if Q.unpack_from(mem, off + FLAGS)[0] & QUOTA and mem[off + BASES:off + BASES + NB.size] != ZERO_BASES:
                return False
            return True
        return dead

    def find(self, kb, now, insert=True):
        """The slot of key bytes ``kb``, or -1 (not there; or, with
        ``insert``, the table is full: logged).  Lock held."""
        s = self.table.slot(kb, insert, self._dead(now), FRESH)
        if s >= 0 and insert:
            D.pack_into(self.mem, self.rec(s) + TOUCHED, now)     # a new key is not idle
        elif s < 0 and insert and now - self.full_logged >= FULL_LOG_EVERY:
            self.full_logged = now
            log.error("traffic: the traffic table is full (%d keys); a new key is neither limited nor counted"
                      % self.slots)
        return s

    def used(self, s):
        """Slot ``s``'s pending bytes and its bases (a tuple).  Lock held."""
        off = self.rec(s)
        p0, p1 = QQ.unpack_from(self.mem, off + PENDING[0])
        return p0 + p1, NB.unpack_from(self.mem, off + BASES)

    def slots_in_use(self):
        """Every slot that holds a key: (slot, key).  Reads without the lock
        (a key being written is read on the next pass)."""
        mem, out = self.mem, []
        for s in range(self.slots):
            off = self.keys_off + s * KEY_SIZE
            if mem[off]:
                out.append((s, self.key_at(s)))
        return out

    # --- the master's side ------------------------------------------------------------
    def drain(self, timeout=0.2):
        """Take what every key has pending: zeroed in the table and added to
        its bases at once (in the same hold of the lock, so that a key's use
        never drops while the master writes it).  Returns [(key, up, down)],
        or None when the lock could not be had within ``timeout``."""
        mem, dirty_off = self.mem, self.dirty_off
        found = []
        i = mem.find(b"\x01", dirty_off, dirty_off + self.slots)
        while i >= 0:
            found.append(i - dirty_off)
            i = mem.find(b"\x01", i + 1, dirty_off + self.slots)
        out = []
        for start in range(0, len(found), DRAIN_BATCH):
            if not self.acquire(timeout):
                return out or None
            try:
                for s in found[start:start + DRAIN_BATCH]:
                    mem[dirty_off + s] = 0
                    off = self.rec(s)
                    up, down = QQ.unpack_from(mem, off + PENDING[0])
                    if not up and not down:
                        continue
                    QQ.pack_into(mem, off + PENDING[0], 0, 0)
                    bases = NB.unpack_from(mem, off + BASES)
                    NB.pack_into(mem, off + BASES, *[b + up + down for b in bases])
                    out.append((self.key_at(s), up, down))
            finally:
                self.release()
        return out

    def set_bases(self, index, totals, keep=lambda key: False, timeout=1.0):
        """Period ``index``'s counts from the database: every key's base
        becomes its total in ``totals`` (key -> bytes), 0 for those not in
        it.  A key of ``totals`` not in the table is put in when
        ``keep(key)`` (it has a quota, so its count must be at hand).
        Returns whether the lock was had."""
        now = self.clock()
        if not self.acquire(timeout):
            return False
        try:
            mem = self.mem
            seen = set()
            for s, key in self.slots_in_use():
                off = self.rec(s) + BASES + 8 * index
                Q.pack_into(mem, off, max(0, totals.get(key, 0)))
                seen.add(key)
            for key, total in totals.items():
                if key in seen or total <= 0 or not keep(key):
                    continue
                s = self.find(key_bytes(key), now)
                if s < 0:
                    break
                off = self.rec(s)
                D.pack_into(mem, off + TOUCHED, now)
                Q.pack_into(mem, off + FLAGS, Q.unpack_from(mem, off + FLAGS)[0] | QUOTA)
                Q.pack_into(mem, off + BASES + 8 * index, total)
        finally:
            self.release()
        return True

    def sub_bases(self, index, totals, timeout=1.0):
        """Take ``totals`` (key -> bytes: hours a rolling window has left
        behind) off period ``index``'s counts.  Returns whether the lock was
        had."""
        if not totals:
            return True
        if not self.acquire(timeout):
            return False
        try:
            mem = self.mem
            for s, key in self.slots_in_use():
                n = totals.get(key)
                if n:
                    off = self.rec(s) + BASES + 8 * index
                    Q.pack_into(mem, off, max(0, Q.unpack_from(mem, off)[0] - n))
        finally:
            self.release()
        return True

    def forget(self, key, timeout=1.0):
        """``sockd-accounting --reset``: the key's counts start from zero."""
        if not self.acquire(timeout):
            return False
        try:
            s = self.find(key_bytes(key), self.clock(), insert=False)
            if s >= 0:
                off = self.rec(s)
                QQ.pack_into(self.mem, off + PENDING[0], 0, 0)
                NB.pack_into(self.mem, off + BASES, *([0] * T.BASES))
        finally:
            self.release()
        return True

    def top(self, index=0, n=10):
        """The ``n`` keys that used most in period ``index`` (base and
        pending), largest first: [(key, bytes)].  Reads without the lock
        (a report may be a chunk off)."""
        out = []
        for s, key in self.slots_in_use():
            pending, bases = self.used(s)
            total = bases[index] + pending
            if total:
                out.append((total, key))
        out.sort(reverse=True)
        return [(k, t) for t, k in out[:n]]


class Entry:
    """One key of a meter: its slot (a hint: the key is checked at every
    use), rate and burst per direction (None: not limited), whether it is
    counted, and its quotas [(base index, Quota)]."""

    __slots__ = ("key", "kb", "slot", "rates", "bursts", "lines", "counted", "quotas")

    def __init__(self, key):
        self.key = key
        self.kb = key_bytes(key)
        self.slot = -1
        self.rates = [None, None]
        self.bursts = [0, 0]
        self.lines = [None, None]
        self.counted = False
        self.quotas = []


def plan_shape(plan, periods):
    """What every meter of ``plan`` shares, built once per plan (Plan.shape):
    (periods, its Entries, the limited ones per direction, the counted
    ones, least and most per direction from the shared budgets).  The
    entries are shared too: their slot is a hint that every use checks,
    and nothing else in them changes."""
    entries = {}
    for b in plan.budgets:
        e = entries[b.key] = Entry(b.key)
        e.rates, e.bursts, e.lines = list(b.rates), list(b.bursts), list(b.lines)
    for key in plan.counted:
        e = entries.get(key) or entries.setdefault(key, Entry(key))
        e.counted = True
    for key, q in plan.quotas:
        entries[key].quotas.append((periods[q.period], q))
    entries = list(entries.values())
    limited = [[e for e in entries if e.rates[d] is not None] for d in (0, 1)]
    counted = [e for e in entries if e.counted]
    least = [T.CHUNK, T.CHUNK]
    most = [T.MAX_CHUNK, T.MAX_CHUNK]
    for d in (0, 1):
        for e in limited[d]:
            least[d] = min(least[d], T.least_take(e.rates[d], e.bursts[d]))
            most[d] = min(most[d], T.take_size(e.rates[d]))
    return (periods, entries, limited, counted, tuple(least), tuple(most))


class Meter:
    """One session's budgets and counts (a traffic.Plan in the table).

    ``allowance(d)``: how many bytes direction ``d`` (0: from the client,
    1: to it) may read now -- what is left of its last take, or a new take
    from every bucket at once; 0 when it must wait (then ``paused[d]``,
    until ``due[d]``, a monotonic time) or the session was cut.
    ``spent(d, n)``: ``n`` bytes were read.  ``retry(d)``: the wait is
    over, take again.  ``close()``: the last counts, and what was taken and
    not used goes back."""

    __slots__ = ("tt", "entries", "limited", "counted", "local", "grant", "least", "most", "uncounted", "paused",
                 "due", "since", "paused_for", "short", "cut", "on_quota", "clock", "has_limit", "started")

    def __init__(self, tt, plan, periods, clock=time.monotonic):
        """``tt``: the TrafficTable; ``plan``: a traffic.Plan; ``periods``:
        period -> base index (traffic.period_indexes)."""
        self.tt = tt
        self.clock = clock
        shape = plan.shape
        if shape is None or shape[0] != periods:
            shape = plan.shape = plan_shape(plan, periods)
        _, self.entries, self.limited, self.counted, least, most = shape
        now = self.started = clock()
        sess = plan.session
        self.local = [None, None]
        self.least = list(least)
        self.most = list(most)      # tokens per take: the slowest rate's take_size
        if sess is not None:
            for d in (0, 1):
                if sess.rates[d] is not None:
                    self.local[d] = T.TokenBucket(sess.rates[d], sess.bursts[d], now)
                    self.least[d] = min(least[d], T.least_take(sess.rates[d], sess.bursts[d]))
                    self.most[d] = min(most[d], T.take_size(sess.rates[d]))
        self.has_limit = [bool(self.limited[d]) or self.local[d] is not None for d in (0, 1)]
        self.grant = [0, 0]
        self.uncounted = [0, 0]
        self.since = 0                    # bytes since the last count
        self.paused = [False, False]
        self.due = [0.0, 0.0]
        self.paused_for = [0.0, 0.0]      # seconds paused, per direction
        self.short = [{}, {}]             # what it waited for: key (or None: the session) -> times
        self.cut = None                   # (key, Quota) when a quota with mode cut was reached
        self.on_quota = None              # called (once) when it is

    @property
    def limited_any(self):
        return self.has_limit[0] or self.has_limit[1]

    # --- what the relay calls ---------------------------------------------------------
    def allowance(self, d):
        if self.cut is not None:
            return 0
        g = self.grant[d]
        if g > 0:
            return g
        if not self.has_limit[d]:
            return UNLIMITED
        if self.paused[d]:
            return 0
        return self.take(d)

    def add(self, d, n):
        """``n`` bytes relayed in direction ``d`` that no allowance covered
        (what a client sent before its relay began): counted, not charged."""
        self.uncounted[d] += n
        self.since += n

    def spent(self, d, n):
        if n <= 0:
            return
        if self.has_limit[d]:
            self.grant[d] -= n
        self.uncounted[d] += n
        self.since += n
        if self.since >= COUNT_EVERY and self.counted:
            self.count()

    def admit(self, d, n):
        """A datagram of ``n`` bytes in direction ``d`` (UDP): True when the
        budget has room for all of it (then it is spent and counted), False
        when it is to be dropped.  While a direction waits for its tokens,
        datagrams are refused without taking the lock."""
        if self.cut is not None:
            return False
        if not self.has_limit[d]:
            self.spent(d, n)
            return True
        if self.grant[d] < n:
            if self.paused[d] and self.clock() < self.due[d]:
                return False
            self.paused[d] = False
            self.take(d)
            if self.grant[d] < n:
                return False
        self.spent(d, n)
        return True

    def retry(self, d):
        """A pause is over (the timer came): take again.  Returns whether
        the direction may go on."""
        if not self.paused[d]:
            return True
        self.paused[d] = False
        return self.take(d) > 0

    def take(self, d):
        """Take tokens for direction ``d`` from every bucket of it, as many
        as the emptiest has (at most ``most``: traffic.take_size), or none when that is fewer
        than ``least``: then pause until enough will be there.  Counts what
        is uncounted on the way.  Returns what was taken."""
        now = self.clock()
        tt, mem = self.tt, self.tt.mem
        local = self.local[d]
        most = float(self.most[d])
        if local is not None:
            most = min(most, local.available(now))
        least = self.least[d]
        got = 0
        states = []
        tt.acquire()
        try:
            if self.uncounted[0] or self.uncounted[1]:
                self._count(now)
            for e in self.limited[d]:
                s = self._slot(e, now)
                if s < 0:
                    continue
                off = tt.rec(s) + BUCKET[d]
                tok, stamp = T.refill(*DD.unpack_from(mem, off), now, e.rates[d], e.bursts[d])
                states.append((off, tok, stamp, e))
                if tok < most:
                    most = tok
            if most >= least and self.cut is None:
                got = int(most)
                for off, tok, stamp, _e in states:
                    DD.pack_into(mem, off, tok - got, stamp)
        finally:
            tt.release()
        if self.cut is not None:
            self.quota_reached()
            return 0
        if got:
            if local is not None:
                local.tokens -= got
            self.grant[d] += got
            return got
        # how long until every bucket of this direction has ``least``
        wait, short = 0.0, None
        for _off, tok, _stamp, e in states:
            w = T.wait(tok, least, e.rates[d])
            if w > wait:
                wait, short = w, e.key
        if local is not None:
            w = local.due(now, least)
            if w > wait:
                wait, short = w, None
        self.paused[d] = True
        self.due[d] = now + max(wait, 0.001)
        self.paused_for[d] += max(wait, 0.001)
        self.short[d][short] = self.short[d].get(short, 0) + 1
        return 0

    def count(self):
        """Add what was relayed since the last count to the shared counters."""
        if not (self.uncounted[0] or self.uncounted[1]):
            return
        now = self.clock()
        self.tt.acquire()
        try:
            self._count(now)
        finally:
            self.tt.release()
        if self.cut is not None:
            self.quota_reached()

    def _count(self, now):
        """count(), lock held; notes a quota with mode cut that is reached."""
        tt, mem = self.tt, self.tt.mem
        up, down = self.uncounted
        self.uncounted = [0, 0]
        self.since = 0
        for e in self.counted:
            s = self._slot(e, now)
            if s < 0:
                continue
            off = tt.rec(s)
            p0, p1 = QQ.unpack_from(mem, off + PENDING[0])
            p0, p1 = p0 + up, p1 + down
            QQ.pack_into(mem, off + PENDING[0], p0, p1)
            mem[tt.dirty_off + s] = 1
            if e.quotas:
                flags = Q.unpack_from(mem, off + FLAGS)[0]
                if not flags & QUOTA:
                    Q.pack_into(mem, off + FLAGS, flags | QUOTA)
                if self.cut is None:
                    bases = NB.unpack_from(mem, off + BASES)
                    for i, q in e.quotas:
                        if q.mode == "cut" and bases[i] + p0 + p1 >= q.nbytes:
                            self.cut = (e.key, q)
                            break

    def _slot(self, e, now):
        """The slot of entry ``e`` (found again when another key has taken
        it since), its use noted.  Lock held."""
        tt = self.tt
        s = e.slot
        if s < 0 or not tt.same_key(s, e.kb):
            s = e.slot = tt.find(e.kb, now)
            if s < 0:
                return -1
        D.pack_into(tt.mem, tt.rec(s) + TOUCHED, now)
        return s

    def quota_reached(self):
        cb, self.on_quota = self.on_quota, None
        if cb is not None:
            cb()

    def close(self):
        """The session is over: its last counts, and the tokens it took and
        did not use back to their buckets."""
        now = self.clock()
        tt, mem = self.tt, self.tt.mem
        tt.acquire()
        try:
            if self.uncounted[0] or self.uncounted[1]:
                self._count(now)
            for d in (0, 1):
                g = self.grant[d]
                if g <= 0:
                    continue
                self.grant[d] = 0
                if self.local[d] is not None:
                    self.local[d].give(g)
                for e in self.limited[d]:
                    s = self._slot(e, now)
                    if s >= 0:
                        off = tt.rec(s) + BUCKET[d]
                        tok, stamp = DD.unpack_from(mem, off)
                        DD.pack_into(mem, off, min(float(e.bursts[d]), tok + g), stamp)
        finally:
            tt.release()

    # --- what the log says ------------------------------------------------------------
    def shaped(self):
        """How the session was shaped, for its ``terminated`` line: ''
        when it never waited, else ``; shaped: down paused 4.1s of 5.0s
        by user alice (2097152 bytes/s, FILE:LINE)`` (per direction that
        waited; of the meter's life so far)."""
        parts = []
        lived = max(0.0, self.clock() - self.started)
        for d in (0, 1):
            if not self.short[d]:
                continue
            key = max(self.short[d], key=self.short[d].get)
            if key is None:
                rate, line = self.local[d].rate, None
                who = "the session's limit"
            else:
                e = next(x for x in self.limited[d] if x.key == key)
                rate, line = e.rates[d], e.lines[d]
                who = key
            parts.append("%s paused %.1fs of %.1fs by %s (%d bytes/s%s)" % (
                T.DIRECTIONS[d], min(self.paused_for[d], lived), lived, who, rate,
                ", " + line.where if line is not None else ""))
        return "; shaped: " + ", ".join(parts) if parts else ""


class TrafficControl:
    """What a serving process asks of traffic control (``Context.traffic``):
    the plan of a session, whether a quota refuses it, a meter for its
    relay.  ``table`` is the master's TrafficTable (or a process's own,
    under inetd: then nothing is shared)."""

    def __init__(self, table):
        self.table = table
        self.plans = {}         # (src_key, user, method, tag) -> Plan or None, for self.plans_of
        self.plans_of = None    # the configuration they were made of

    def plan(self, cfg, src_key, user, method, tag):
        """The session's traffic.Plan, or None: then it is relayed as if
        traffic control did not exist.  No lock, no table.  Remembered per
        client address, user, method and tag for the configuration (at most
        PLANS of them; then forgotten all at once), so that the sessions of
        one client share one plan and the meters' shape built from it."""
        if cfg is not self.plans_of:
            self.plans, self.plans_of = {}, cfg
        k = (src_key, user, method, tag)
        plans = self.plans
        if k in plans:
            return plans[k]
        if not traffic_on(cfg):
            return None
        if len(plans) >= PLANS:
            plans.clear()
        p = plans[k] = T.plan(cfg.limit_bandwidth, cfg.quota, accounting_on(cfg), src_key, user, method, tag)
        return p

    @staticmethod
    def periods(cfg):
        """period -> base index: the master's (cfg.traffic_periods, kept
        across reloads), else the configuration's own."""
        return cfg.traffic_periods if cfg.traffic_periods is not None else T.period_indexes(cfg.quota)

    def over_quota(self, plan, cfg):
        """The first quota of ``plan`` that is reached: (Quota, key, bytes
        used in its period), or None."""
        if not plan.quotas:
            return None
        periods = self.periods(cfg)
        tt = self.table
        now = tt.clock()
        tt.acquire()
        try:
            for key, q in plan.quotas:
                s = tt.find(key_bytes(key), now, insert=False)
                if s < 0:
                    continue
                pending, bases = tt.used(s)
                used = bases[periods[q.period]] + pending
                if used >= q.nbytes:
                    return q, key, used
        finally:
            tt.release()
        return None

    def meter(self, plan, cfg):
        return Meter(self.table, plan, self.periods(cfg))

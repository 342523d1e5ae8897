"""Client limits shared by every worker: ``limit clients N`` (in all),
``limit per-address N`` and ``limit rate N/SECONDS`` (per client address),
and ``limit binds N``: the BINDs waiting for their peer, per client
address (threads model).

The counts live in an anonymous shared mapping made by the master before
it forks, guarded by one process-shared lock.  Each worker counts its own
clients in a column of its own, so when a worker dies the master zeroes
that column and nothing leaks; an address's count is the sum of the
columns.  Pending BINDs are counted the same way, in a plane of columns
of their own beside the clients'.  The rate is a fixed window per address.  Addresses sit in an
open-addressing table with bounded probing; when it is full, clients are
admitted (and it is logged): a limit must never lock everyone out.

Costs nothing when no limit is set: the server does not make one; with
only ``limit binds`` (its default) the table exists but only BIND requests
touch it (``clients_on`` is false: no client is counted).  The
``limit rate`` value is read by ``validators.to_rate``.  Imports only
``log`` of sockd.

``AddressTable`` is the shared table itself -- the mapping, the lock and
the bounded probing -- for every per-address count of the server: the
limits here, the login back-off (backoff.py).

The descriptor limit (RLIMIT_NOFILE) is here too: what a configuration
needs (``descriptors_wanted``, pure), raising the process's limits at start
and at a reload (``raise_descriptors``: the hard limit only as root, never
above the kernel's fs.nr_open; the soft one to the hard one always), and
the descriptor number past which a worker stops accepting
(``accept_ceiling``), so that a client it accepts still has a descriptor
for its destination and the other workers take the rest.
"""

import _multiprocessing
import errno
import mmap
import os
import resource
import struct
import time
import zlib

from .log import log

SLOTS = 8192
PROBE = 32
COLUMNS = 64              # processes counting at once (workers of two generations)
KEY = struct.Struct("=B16s")                # family (0: empty), address
RATE = struct.Struct("=ddI")                # window start, refusal last logged, clients in window
LOG_EVERY = 5.0                             # seconds between log lines about one address
COUNT = struct.Struct("=i")

OK, TOO_MANY, PER_ADDRESS, RATE_LIMITED, TOO_MANY_BINDS = range(5)
REASONS = {TOO_MANY: "limit clients", PER_ADDRESS: "limit per-address", RATE_LIMITED: "limit rate",
           TOO_MANY_BINDS: "limit binds"}


# -- descriptors (issue 17: 20,000 idle sessions over two workers) --
DESCRIPTORS_DEFAULT = 65536   # without limit clients: some 30,000 sessions in one worker
DESCRIPTORS_PER_CLIENT = 4    # the client, its destination, and an identd query, a BIND's listener or UDP's
DESCRIPTORS_BASE = 256        # listeners, pipes, the loop, the log, the helper threads' files
ACCEPT_RESERVE = 64           # descriptors a worker keeps free for the destinations of those it accepted
NR_OPEN = "/proc/sys/fs/nr_open"


def descriptors_wanted(cfg):
    """The open-files limit a configuration wants for each process:
    ``limit descriptors`` when given, else four per client of ``limit
    clients`` (one worker may get them all) and 256 besides, else 65536.
    Pure."""
    if cfg.limit_descriptors:
        return cfg.limit_descriptors
    if cfg.limit_clients:
        return DESCRIPTORS_PER_CLIENT * cfg.limit_clients + DESCRIPTORS_BASE
    return DESCRIPTORS_DEFAULT


def read_nr_open(path=NR_OPEN):
    """The kernel's ceiling for RLIMIT_NOFILE (fs.nr_open), or None when it
    cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def raise_descriptors(wanted, nr_open=None):
    """Raise this process's RLIMIT_NOFILE for ``wanted`` descriptors: the
    hard limit up to ``wanted`` when it is lower (only a process with
    CAP_SYS_RESOURCE, root, may; never above ``nr_open``, default the
    kernel's fs.nr_open), then the soft limit to the hard one, always.
    Never lowers either.  Returns (soft, hard) as they are now (-1:
    unlimited).  Processes forked later inherit them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    if hard != infinity and hard < wanted:
        ceiling = nr_open if nr_open is not None else read_nr_open()
        target = wanted if ceiling is None else min(wanted, ceiling)
        if target > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
                soft = hard = target
            except (ValueError, OSError):
                pass                    # not root (EPERM): the hard limit stays
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def descriptors_short(soft, wanted):
    """The warning for a soft limit below what the configuration wants, or
    None when it is not."""
    if soft < 0 or soft >= wanted:
        return None
    return ("open files limit %d is below the %d this configuration wants (limit descriptors, limit clients): "
            "a worker serves some %d clients at most; raise the hard limit (ulimit -Hn, systemd's LimitNOFILE=), "
            "which only root with CAP_SYS_RESOURCE may" % (soft, wanted, max(0, (soft - DESCRIPTORS_BASE) // 2)))


def accept_ceiling(reserve=ACCEPT_RESERVE):
    """The descriptor number from which a worker stops accepting for a
    moment (the kernel hands out the lowest free one, so an accepted socket
    numbered this high means that many are in use): the soft limit less
    ``reserve``; None when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return max(soft - reserve, soft // 2)


def nearly_out(fd):
    """The OSError a worker pauses its accepting on when the socket it has
    just accepted is numbered ``fd``, past its accept_ceiling()."""
    return OSError(errno.EMFILE, "descriptor %d in use, near the open files limit" % fd)


def key_bytes(key):
    fam, n = key
    return KEY.pack(fam, n.to_bytes(16, "big"))


SEMAPHORE = 1             # multiprocessing.synchronize's kind of a Lock (0 is a recursive mutex)


def shared_lock():
    """A lock shared by every process forked after it is made, and by their
    threads: a POSIX semaphore of value 1, which is what
    ``multiprocessing.Lock()`` is under the fork start method
    (``_multiprocessing.SemLock``, its name unlinked at once), without the
    multiprocessing package and its synchronize module in the master, which
    every fork-model client pays for (docs/performance.md section 3)."""
    name = "/sockd-%d-%s" % (os.getpid(), os.urandom(8).hex())
    return _multiprocessing.SemLock(SEMAPHORE, 1, 1, name, True)


class AddressTable:
    """Client addresses in an anonymous shared mapping, made by the master
    before it forks so that every process sees the same table: SLOTS keys,
    each with a ``record`` (a struct.Struct) of its owner's, then ``extra``
    bytes the owner lays out itself (at ``extra_off``), all guarded by one
    process-shared lock (``lock``: the caller holds it around every call).
    Open addressing with at most PROBE probes: a slot is reused once its
    owner's ``dead(slot)`` says it holds nothing worth keeping, and when
    every slot probed is alive the address is not kept (-1): the owner then
    lets the client through, for a full table must never lock anyone out."""

    def __init__(self, record, extra=0, key_size=KEY.size, slots=None):
        """``key_size``: the bytes of a key (key_bytes' by default; another
        owner's keys must never begin with a zero byte, which marks an
        empty slot); ``slots``: how many (default SLOTS)."""
        self.record = record
        self.slots = slots = slots or SLOTS
        self.key_size = key_size
        self.keys_off = 0
        self.rec_off = slots * key_size
        self.extra_off = self.rec_off + slots * record.size
        self.mem = mmap.mmap(-1, self.extra_off + extra)    # anonymous and shared across fork
        self.lock = shared_lock()

    def slot(self, kb, insert, dead, fresh):
        """The slot of key bytes ``kb`` (key_bytes), or -1.  With
        ``insert``, a missing key takes an empty or dead slot, its record
        set to ``fresh`` (packed bytes).  Lock held."""
        h = zlib.crc32(kb) % self.slots
        reuse = -1
        mem = self.mem
        ks = self.key_size
        for i in range(PROBE):
            s = (h + i) % self.slots
            off = self.keys_off + s * ks
            cur = mem[off:off + ks]
            if cur == kb:
                return s
            if cur[0] == 0:
                if reuse < 0:
                    reuse = s
                break
            if reuse < 0 and dead(s):
                reuse = s
        if insert and reuse >= 0:
            off = self.keys_off + reuse * ks
            mem[off:off + ks] = kb
            roff = self.rec_off + reuse * self.record.size
            mem[roff:roff + self.record.size] = fresh
            return reuse
        return -1

    def get(self, s):
        """The record of slot ``s``, unpacked.  Lock held."""
        return self.record.unpack_from(self.mem, self.rec_off + s * self.record.size)

    def put(self, s, *values):
        """Write the record of slot ``s``.  Lock held."""
        self.record.pack_into(self.mem, self.rec_off + s * self.record.size, *values)


FRESH_RATE = RATE.pack(0.0, -1e18, 0)


class Limits:
    def __init__(self, total=0, per_address=0, rate=None, clock=time.monotonic, binds=0):
        self.total = total
        self.per_address = per_address
        self.rate = rate                      # (clients, seconds) or None
        self.binds = binds                    # pending BINDs per address (0: not counted)
        self.columns = columns = COLUMNS
        self.clock = clock
        # the addresses and their rate windows; then the counts: a column of
        # SLOTS per process for clients and another for pending BINDs, the
        # processes' totals, how many columns are used
        plane = columns * SLOTS * COUNT.size
        self.table = AddressTable(RATE, 2 * plane + columns * COUNT.size + COUNT.size)
        self.lock = self.table.lock
        self.mem = self.table.mem
        self.rate_off = self.table.rec_off
        self.count_off = self.table.extra_off
        self.binds_off = self.count_off + plane
        self.totals_off = self.binds_off + plane
        self.used_off = self.totals_off + columns * COUNT.size
        self.column = 0                       # this process's column
        self.full_logged = 0.0
        self.free = list(range(columns))      # the master's bookkeeping

    # --- columns (the master hands them out) ---------------------------------------------
    def take_column(self):
        """A free column for a new worker, or -1 (then it does not count)."""
        if not self.free:
            return -1
        c = self.free.pop(0)
        with self.lock:
            used = COUNT.unpack_from(self.mem, self.used_off)[0]
            if c + 1 > used:
                COUNT.pack_into(self.mem, self.used_off, c + 1)
        return c

    def give_back(self, column):
        """The worker of ``column`` has ended: its clients are gone."""
        if column < 0:
            return
        self.clear_column(column)
        self.free.append(column)
        self.free.sort()

    def _used(self):
        return COUNT.unpack_from(self.mem, self.used_off)[0] or 1

    @property
    def per_address_on(self):
        return bool(self.per_address or self.rate)

    @property
    def clients_on(self):
        """Are clients counted at all (else only pending BINDs are)?"""
        return bool(self.total or self.per_address or self.rate)

    # --- the table ----------------------------------------------------------------------
    def _slot(self, kb, insert):
        """The slot of key bytes ``kb``, or -1.  Lock held."""
        return self.table.slot(kb, insert, self._dead, FRESH_RATE)

    def _dead(self, s):
        """No client of this address is connected, none of its BINDs waits,
        and its rate window is over."""
        if self._address_count(s) or self._address_count(s, self.binds_off):
            return False
        start, _logged, _n = RATE.unpack_from(self.mem, self.rate_off + s * RATE.size)
        return not self.rate or self.clock() - start >= self.rate[1]

    def _address_count(self, s, plane=None):
        """Clients (or, with ``plane`` binds_off, pending BINDs) of slot ``s``."""
        base = self.count_off if plane is None else plane
        total = 0
        for c in range(self._used()):
            total += COUNT.unpack_from(self.mem, base + (c * SLOTS + s) * COUNT.size)[0]
        return total

    def _add(self, off, delta):
        v = COUNT.unpack_from(self.mem, off)[0] + delta
        COUNT.pack_into(self.mem, off, max(0, v))

    def _total(self):
        return sum(COUNT.unpack_from(self.mem, self.totals_off + c * COUNT.size)[0] for c in range(self._used()))

    # --- what the server calls ----------------------------------------------------------
    def admit(self, key):
        """Count a new client from ``key`` (family, int).  Returns (verdict,
        slot, log): OK and a slot to pass to release(); or a refusal reason,
        -1 (nothing was counted) and whether this refusal should be logged
        (at most one line every LOG_EVERY seconds per address, across all
        processes).  A process without a column (-1) counts nothing and
        refuses nothing."""
        if self.column < 0:
            return OK, -2, False
        with self.lock:
            now = self.clock()
            slot = -1
            if self.per_address_on:
                slot = self._slot(key_bytes(key), insert=True)
                if slot < 0 and now - self.full_logged > LOG_EVERY:
                    self.full_logged = now
                    log.error("limits: the address table is full; admitting without per-address limits")
            roff = self.rate_off + slot * RATE.size
            if self.total and self._total() >= self.total:
                return self._refuse(TOO_MANY, slot, now)
            if slot >= 0:
                if self.per_address and self._address_count(slot) >= self.per_address:
                    return self._refuse(PER_ADDRESS, slot, now)
                if self.rate:
                    n, secs = self.rate
                    start, logged, seen = RATE.unpack_from(self.mem, roff)
                    if now - start >= secs:
                        start, seen = now, 0
                    if seen >= n:
                        return self._refuse(RATE_LIMITED, slot, now)
                    RATE.pack_into(self.mem, roff, start, logged, seen + 1)
                self._add(self.count_off + (self.column * SLOTS + slot) * COUNT.size, 1)
            self._add(self.totals_off + self.column * COUNT.size, 1)
            return OK, slot, False

    def _refuse(self, verdict, slot, now):
        """A refusal; log it only if this address's last line is old enough.
        Lock held."""
        if slot < 0:
            log_it = now - self.full_logged > LOG_EVERY
            if log_it:
                self.full_logged = now
            return verdict, -1, log_it
        roff = self.rate_off + slot * RATE.size
        start, logged, seen = RATE.unpack_from(self.mem, roff)
        log_it = now - logged >= LOG_EVERY
        if log_it:
            RATE.pack_into(self.mem, roff, start, now, seen)
        return verdict, -1, log_it

    def release(self, slot):
        if slot == -2:
            return
        with self.lock:
            if slot >= 0:
                self._add(self.count_off + (self.column * SLOTS + slot) * COUNT.size, -1)
            self._add(self.totals_off + self.column * COUNT.size, -1)

    def admit_bind(self, key):
        """Count a pending BIND of a client at ``key``.  Returns (verdict,
        slot, log) as admit() does: OK and a slot for release_bind(), or
        TOO_MANY_BINDS, -1 and whether to log it (the same window per
        address as the client limits).  Nothing is counted (OK, -2) when
        BINDs are not limited, in a process without a column, or when the
        address table is full: a limit must never lock everyone out."""
        if self.column < 0 or not self.binds:
            return OK, -2, False
        with self.lock:
            now = self.clock()
            slot = self._slot(key_bytes(key), insert=True)
            if slot < 0:
                if now - self.full_logged > LOG_EVERY:
                    self.full_logged = now
                    log.error("limits: the address table is full; admitting without per-address limits")
                return OK, -2, False
            if self._address_count(slot, self.binds_off) >= self.binds:
                return self._refuse(TOO_MANY_BINDS, slot, now)
            self._add(self.binds_off + (self.column * SLOTS + slot) * COUNT.size, 1)
            return OK, slot, False

    def release_bind(self, slot):
        """The BIND counted in ``slot`` has its peer, or has ended."""
        if slot < 0:
            return
        with self.lock:
            self._add(self.binds_off + (self.column * SLOTS + slot) * COUNT.size, -1)

    def clear_column(self, column):
        """A worker died: forget its clients and BINDs (the master calls this)."""
        with self.lock:
            for plane in (self.count_off, self.binds_off):
                start = plane + column * SLOTS * COUNT.size
                self.mem[start:start + SLOTS * COUNT.size] = bytes(SLOTS * COUNT.size)
            COUNT.pack_into(self.mem, self.totals_off + column * COUNT.size, 0)

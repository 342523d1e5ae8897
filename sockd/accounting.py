"""The accounting database, and the master's side of traffic control.

``Store`` is the SQLite file (``accounting database``, by default
/var/lib/sockd/accounting.db; stdlib sqlite3, WAL mode): one row per key
and local hour, ``usage(key, hour, up, down)``, the hour being the Unix
time at which that local hour began (traffic.slice_start), so that every
calendar period and rolling window is a sum of whole rows.  Beside it,
``resets`` (what ``sockd-accounting --reset`` asked for) and ``meta``.

``Accountant`` runs in the master, and only there: it alone writes the
counts.  Every ``accounting interval`` (5 seconds by default) it drains
what the serving processes have added to the shared table
(meters.TrafficTable.drain: zeroed there and added to the period counts in
one hold of the lock) and writes it in one transaction, upserting a row
per key for the current hour.  So a serving process that is killed loses
nothing it had added to the table, and a master that is killed loses at
most one interval of counts (and what a write that failed keeps for the
next: a locked or full disk is logged once a minute and retried).  A
write waits at most BUSY seconds for the database: the master's loop is
never held up for long.

It also keeps each period's count in the table (the ``bases``): at start
and when a configuration brings new periods, from the database (the
period's rows summed); when a calendar period turns, from the rows of the
new one (an hour's worth); when a rolling window moves on by an hour, by
taking off the hour it has left behind.  Reload keeps the table and so
every count; a start reads them back from the file.

Imports only extras, log and traffic of sockd (the table comes from the master).
"""

import os
import time

from . import extras
from . import traffic as T
from .log import log

DEFAULT_PATH = "/var/lib/sockd/accounting.db"
SCHEMA_VERSION = "1"
BUSY = 0.2                 # seconds a write waits for a lock the accounting tool holds
LOG_EVERY = 60.0           # seconds between two lines about a failing database
STUCK_AFTER = 3            # drains that could not have the table's lock before it is looked at
PRUNE_EVERY = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    key TEXT NOT NULL,
    hour INTEGER NOT NULL,
    up INTEGER NOT NULL DEFAULT 0,
    down INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_hour ON usage (hour);
CREATE TABLE IF NOT EXISTS resets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

UPSERT = ("INSERT INTO usage (key, hour, up, down) VALUES (?, ?, ?, ?) "
          "ON CONFLICT (key, hour) DO UPDATE SET up = up + excluded.up, down = down + excluded.down")


class StoreError(Exception):
    """The database cannot be opened or used; the message says why."""


class Store:
    """The accounting database, opened (made when missing, with its
    directory, mode 0750, and the file 0640)."""

    def __init__(self, path, busy=BUSY, readonly=False):
        self.path = path
        sqlite3 = extras.sqlite3()     # loaded by the master when it opens the file (extras.py)
        try:
            if readonly:
                if not os.path.exists(path):
                    raise StoreError("%s: no such file" % path)
                self.db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=busy, isolation_level=None)
                return
            d = os.path.dirname(path)
            if d and not os.path.isdir(d):
                os.makedirs(d, mode=0o750, exist_ok=True)
            fresh = not os.path.exists(path)
            self.db = sqlite3.connect(path, timeout=busy, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            if fresh:
                os.chmod(path, 0o640)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError("%s: %s" % (path, getattr(exc, "strerror", None) or exc)) from None

    def close(self):
        self.db.close()

    def add(self, rows, hour):
        """Add ``rows`` [(key, up, down)] to ``hour``'s counts, in one
        transaction.  Raises sqlite3.Error."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(UPSERT, ((k, hour, u, d) for k, u, d in rows))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def totals_since(self, start):
        """{key: bytes both ways} of the hours from ``start`` on."""
        cur = self.db.execute("SELECT key, SUM(up + down) FROM usage WHERE hour >= ? GROUP BY key", (start,))
        return dict(cur.fetchall())

    def totals_between(self, start, end):
        """{key: bytes both ways} of the hours from ``start`` to before ``end``."""
        cur = self.db.execute("SELECT key, SUM(up + down) FROM usage WHERE hour >= ? AND hour < ? GROUP BY key",
                              (start, end))
        return dict(cur.fetchall())

    def report(self, start=None, end=None, kind=None):
        """[(key, up, down)] summed over the hours from ``start`` to
        before ``end`` (None: no bound), keys of ``kind`` (user, address,
        rule; None: all), most first."""
        where, args = [], []
        if start is not None:
            where.append("hour >= ?")
            args.append(int(start))
        if end is not None:
            where.append("hour < ?")
            args.append(int(end))
        if kind is not None:
            where.append("key LIKE ?")
            args.append(kind + " %")
        sql = "SELECT key, SUM(up), SUM(down) FROM usage%s GROUP BY key ORDER BY SUM(up + down) DESC, key" % (
            " WHERE " + " AND ".join(where) if where else "")
        return [tuple(r) for r in self.db.execute(sql, args).fetchall()]

    def last_reset(self):
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM resets").fetchone()[0]

    def resets_after(self, rid):
        return self.db.execute("SELECT id, key FROM resets WHERE id > ? ORDER BY id", (rid,)).fetchall()

    def reset(self, key, at=None):
        """Forget every count of ``key`` and say so to a running master
        (which zeroes the key in its table).  Returns the rows deleted."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute("DELETE FROM usage WHERE key = ?", (key,)).rowcount
            db.execute("INSERT INTO resets (key, at) VALUES (?, ?)", (key, time.time() if at is None else at))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return n

    def delete_key(self, key):
        self.db.execute("DELETE FROM usage WHERE key = ?", (key,))

    def prune(self, before):
        """Delete the hours before ``before``; returns how many rows went."""
        return self.db.execute("DELETE FROM usage WHERE hour < ?", (int(before),)).rowcount


class Accountant:
    """The master's side (see the module docstring).  ``table``: the
    shared meters.TrafficTable; ``clock``: wall time (periods are local
    time); ``mono``: the master's monotonic clock (when to write)."""

    def __init__(self, table, clock=time.time, mono=time.monotonic):
        self.table = table
        self.clock, self.mono = clock, mono
        self.store = None
        self.path = None
        self.periods = {}          # period -> base index, kept across reloads
        self.starts = {}           # period -> when its current instance began
        self.quotas = []
        self.interval = 5.0
        self.keep = 400 * 86400.0
        self.carry = {}            # key -> [up, down]: drained, not written yet
        self.next_write = 0.0
        self.last_reset = 0
        self.failed_logged = -1e18
        self.busy = 0              # drains in a row that could not have the lock
        self.pruned = -1e18

    # --- configuration ----------------------------------------------------------------
    def prepare(self, cfg):
        """A configuration about to be served (the first, or a reload's,
        before its processes fork): the period indexes its quotas use,
        written into ``cfg.traffic_periods``, and the counts of any period
        new to the table read from the database.  Opens the database the
        first time.  Raises StoreError."""
        if self.store is None:
            self.use(cfg)
        old = self.periods
        self.periods = T.period_indexes(cfg.quota, old)
        cfg.traffic_periods = dict(self.periods)
        self.quotas = list(cfg.quota)
        fresh = [p for p, i in self.periods.items() if old.get(p) != i]
        if fresh:
            self.recount(fresh)

    def use(self, cfg):
        """The committed configuration's database, interval and retention:
        a new database file is opened (the old one gets what it is owed
        first) and every count is read again from it.  Raises StoreError."""
        self.interval = cfg.accounting_interval
        self.keep = cfg.accounting_keep
        self.quotas = list(cfg.quota)
        if cfg.accounting_database == self.path:
            return
        store = Store(cfg.accounting_database)
        if self.store is not None:
            self.write()
            self.store.close()
        self.store, self.path = store, cfg.accounting_database
        self.last_reset = store.last_reset()
        self.next_write = self.mono() + self.interval
        if self.periods:
            self.recount(list(self.periods))

    def keeps(self, key):
        """Must ``key``'s counts be at hand in the table: has it a quota?"""
        return bool(T.quotas_of_key(self.quotas, key))

    def recount(self, periods):
        """Read the counts of ``periods`` again from the database (and what
        is drained but not written yet)."""
        now = self.clock()
        for p in periods:
            start = T.period_start(p, now)
            totals = self.store.totals_since(start)
            for key, (up, down) in self.carry.items():
                totals[key] = totals.get(key, 0) + up + down
            self.table.set_bases(self.periods[p], totals, self.keeps)
            self.starts[p] = start

    # --- every interval ---------------------------------------------------------------
    def tick(self):
        """Called on every pass of the master's loop: write when due."""
        if self.store is not None and self.mono() >= self.next_write:
            self.next_write = self.mono() + self.interval
            self.flush()

    def flush(self):
        """Drain the table, write, move periods on, apply resets."""
        moved = self.table.drain()
        if moved is None:
            self.stuck()
        else:
            self.busy = 0
            for key, up, down in moved:
                c = self.carry.get(key)
                if c is None:
                    self.carry[key] = [up, down]
                else:
                    c[0] += up
                    c[1] += down
        self.write()
        try:
            self.turn()
            self.apply_resets()
            self.prune()
        except extras.sqlite3().Error as exc:
            self.failed("reading", exc)

    def write(self):
        """Write what was drained; on failure keep it for the next time."""
        if not self.carry:
            return True
        rows = [(k, u, d) for k, (u, d) in self.carry.items()]
        try:
            self.store.add(rows, T.slice_start(self.clock()))
        except extras.sqlite3().Error as exc:
            self.failed("writing", exc)
            return False
        self.carry = {}
        return True

    def failed(self, what, exc):
        now = self.mono()
        if now - self.failed_logged >= LOG_EVERY:
            self.failed_logged = now
            log.error("traffic: %s the accounting database %s: %s (the counts are kept and written later)" % (
                what, self.path, exc))

    def turn(self):
        """Periods that have turned since the last pass: a new calendar
        period counts from its own rows; a rolling window that moved on
        loses the hours it left behind."""
        now = self.clock()
        for p, old in list(self.starts.items()):
            start = T.period_start(p, now)
            if start == old:
                continue
            i = self.periods[p]
            if p.startswith("rolling ") and start > old:
                self.table.sub_bases(i, self.store.totals_between(old, start))
            else:
                totals = self.store.totals_since(start)
                for key, (up, down) in self.carry.items():
                    totals[key] = totals.get(key, 0) + up + down
                self.table.set_bases(i, totals, self.keeps)
            self.starts[p] = start

    def apply_resets(self):
        """``sockd-accounting --reset KEY`` since the last pass: the key
        counts from zero (rows the tool deleted before this master wrote its
        last batch are deleted again)."""
        for rid, key in self.store.resets_after(self.last_reset):
            self.table.forget(key)
            self.carry.pop(key, None)
            self.store.delete_key(key)
            self.last_reset = rid
            log.notice("traffic: the counts of %s were reset (sockd-accounting)" % key)

    def prune(self):
        now = self.mono()
        if now - self.pruned < PRUNE_EVERY:
            return
        self.pruned = now
        n = self.store.prune(self.clock() - self.keep)
        if n:
            log.info("traffic: %d hourly counts older than %gs deleted (accounting keep)" % (n, self.keep))

    def stuck(self):
        """The table's lock could not be had: after a few tries, a holder
        that has gone without the master seeing it (it died before it
        wrote its pid) is let go."""
        self.busy += 1
        if self.busy < STUCK_AFTER:
            return
        holder = self.table.holder()
        if holder and alive(holder):
            return
        self.busy = 0
        self.table.holder_gone()

    def close(self):
        """The master stops: the last counts, written; the database closed."""
        if self.store is None:
            return
        moved = self.table.drain()
        for key, up, down in moved or ():
            c = self.carry.setdefault(key, [0, 0])
            c[0] += up
            c[1] += down
        self.write()
        self.store.close()
        self.store = None

    def top(self, n=10):
        """The keys that used most today: [(key, bytes)]."""
        return self.table.top(self.periods.get("day", 0), n)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

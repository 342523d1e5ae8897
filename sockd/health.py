"""The health of upstream proxies, shared by every process of the server.

An upstream that failed (its connect was refused or timed out, it reset or
closed before answering, it did not answer within ``timeout upstream``, it
refused our credentials or spoke another protocol) is marked down, and the
connectors skip it while the mark lasts: FIRST seconds after it went down,
then, each time a retry after the mark fails again, twice as long as the
last, at most MOST.  A success (or an answer, even a refusal: it is
alive) clears the mark.

"Once for the whole server": the record of an upstream lives in a
limits.AddressTable, an anonymous shared mapping the master makes before
it forks, under its one process-shared lock, so whichever process sees the
change first -- up to down, down to up -- is the only one told to log it
(``failed`` returns DOWN, ``succeeded`` how long it was down).  Failures
seen while the mark is already on (other clients of the same moment,
other workers) change nothing: a burst of clients at a dead upstream
starts one mark, not a doubling per client.

Upstreams are keyed by their label (the URL without credentials), hashed
into the table's 16-byte keys.  A full table keeps no mark (the upstream
is tried every time), and the connectors try the upstreams that are down
too, after the others: a stale mark must never refuse everyone.

In inetd mode the process serves one client, and its table is its own.
"""

import hashlib
import struct
import time

from .limits import KEY, AddressTable

FIRST = 30.0              # seconds an upstream that failed is skipped
MOST = 300.0              # the longest mark, however often it failed in a row
NEVER = -1e18
KEY_FAMILY = 0xFE         # not an address family: a label's hash
# marked down until, went down at (NEVER: up), failures in a row
RECORD = struct.Struct("=ddI")
UP = RECORD.pack(NEVER, NEVER, 0)
NOTHING, DOWN, STILL_DOWN = range(3)


def mark_seconds(k, first=FIRST, most=MOST):
    """How long the ``k``-th failure in a row (k from 1) keeps an upstream
    down: ``first``, doubled for each failure before it, at most ``most``.
    Pure."""
    return min(first * 2.0 ** min(max(k, 1) - 1, 64), most)


def label_key(label):
    """The table key of an upstream's label."""
    return KEY.pack(KEY_FAMILY, hashlib.blake2b(label.encode("utf-8", "replace"), digest_size=16).digest())


class Health:
    """The shared marks.  ``clock``: monotonic time (the same in every
    process of one boot)."""

    def __init__(self, clock=time.monotonic, first=FIRST, most=MOST):
        self.table = AddressTable(RECORD)
        self.clock = clock
        self.first, self.most = first, most

    def _up(self, s):
        # a slot whose upstream is up holds nothing worth keeping
        return self.table.get(s)[1] == NEVER

    def down(self, label):
        """Whether ``label`` is marked down now (then it is tried after
        the others)."""
        with self.table.lock:
            s = self.table.slot(label_key(label), False, self._up, UP)
            if s < 0:
                return False
            return self.clock() < self.table.get(s)[0]

    def status(self, label):
        """(marked down now?, failures in a row) of ``label``, for the
        metrics."""
        with self.table.lock:
            s = self.table.slot(label_key(label), False, self._up, UP)
            if s < 0:
                return False, 0
            until, since, k = self.table.get(s)
            if since == NEVER:
                return False, 0
            return self.clock() < until, k

    def failed(self, label):
        """An attempt at ``label`` failed.  Returns (what, seconds): DOWN
        when this failure marked it down (log it: this caller alone sees
        the change), STILL_DOWN when a retry after the mark failed and the
        mark is longer now, NOTHING when it was marked already (or the
        table is full); ``seconds``: how long it is skipped."""
        with self.table.lock:
            now = self.clock()
            s = self.table.slot(label_key(label), True, self._up, UP)
            if s < 0:
                return NOTHING, 0.0
            until, since, k = self.table.get(s)
            if since == NEVER:
                seconds = mark_seconds(1, self.first, self.most)
                self.table.put(s, now + seconds, now, 1)
                return DOWN, seconds
            if now < until:
                return NOTHING, until - now
            k += 1
            seconds = mark_seconds(k, self.first, self.most)
            self.table.put(s, now + seconds, since, k)
            return STILL_DOWN, seconds

    def succeeded(self, label):
        """``label`` answered.  Returns the seconds it had been down when
        this clears its mark (log it: this caller alone sees the change),
        else None."""
        with self.table.lock:
            s = self.table.slot(label_key(label), False, self._up, UP)
            if s < 0:
                return None
            until, since, k = self.table.get(s)
            if since == NEVER:
                return None
            self.table.put(s, NEVER, NEVER, 0)
            return max(0.0, self.clock() - since)

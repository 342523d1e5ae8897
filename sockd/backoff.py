"""The login back-off: failed RFC 1929 logins counted per client address,
shared by every process of the server, and the penalty that refuses an
address's logins at once, before any bcrypt work, once it has failed too
often.  The model is OpenSSH's ``PerSourcePenalties``.

The policy (``Policy``, from ``auth failures N/SECONDS``, ``auth penalty``
and ``auth penalty-max``):

* A login from an address begins (``begin``): it is refused (PENALISED)
  while the address's penalty lasts, whatever the password; refused (BUSY)
  when the address's failures in the current window and its logins still
  being checked are N already, so that logins sent all at once cannot buy
  more than N guesses before the first of them fails; else it counts as
  being checked.
* It ends (``end``) right: it is no longer being checked, and that is all.
  A success resets neither the failures nor the penalties: an attacker
  with an account of its own could otherwise wipe its count between
  guesses.
* It ends wrong: one more failure in the window.  The N-th starts the
  address's k-th penalty, ``penalty_seconds(k)``: the first one ``auth
  penalty`` long, each next one twice the last, up to ``auth
  penalty-max``; k starts over once the address has stayed out of trouble
  for ``auth penalty-max`` after its last penalty.
* Windows are fixed: the first login after one is over opens the next, of
  SECONDS.  The logins being checked are forgotten with the window they
  began in, so a process that died in the middle of a check holds nothing
  for longer than that.

Only the source address counts, never the user name (anyone could lock a
user out by failing as them), and it is the client's own: the session
passes the PROXY header's address behind a balancer.  The counts live in a
limits.AddressTable (an anonymous shared mapping the master makes before
it forks, one process-shared lock); a full table lets logins through
unthrottled, and says so: the back-off must never lock everyone out.
"""

import collections
import struct
import time

from .limits import AddressTable, key_bytes
from .log import log

OK, PENALISED, BUSY = range(3)
NEVER = -1e18
LOG_FULL_EVERY = 5.0      # seconds between "the table is full" lines of one process
# window start, penalty until, refusal last logged, failures in the window,
# logins being checked (of that window), penalties in a row
RECORD = struct.Struct("=dddIII")
FRESH = RECORD.pack(NEVER, NEVER, NEVER, 0, 0, 0)

Policy = collections.namedtuple("Policy", "failures window first most")


def policy(cfg):
    """The back-off of configuration ``cfg``, or None when it is off."""
    if not cfg.auth_failures:
        return None
    n, window = cfg.auth_failures
    return Policy(n, window, cfg.auth_penalty, max(cfg.auth_penalty, cfg.auth_penalty_max))


def penalty_seconds(k, first, most):
    """How long an address's ``k``-th penalty in a row lasts (k from 1):
    ``first``, doubled for each one before it, at most ``most``.  Pure."""
    if k < 1:
        return 0.0
    return min(first * 2.0 ** min(k - 1, 64), most)


class Backoff:
    """The shared failure counts.  Made once by the master (every
    generation uses the same one, so a reload forgets no penalty); each
    call takes the policy of the caller's configuration."""

    def __init__(self, clock=time.monotonic):
        self.table = AddressTable(RECORD)
        self.clock = clock
        self.full_logged = NEVER

    def _dead(self, pol, now):
        """A predicate for the table: the slot's window is over and its
        last penalty is old enough to be forgotten."""
        get = self.table.get

        def dead(s):
            start, until, _logged, _f, _c, _k = get(s)
            return now - start >= pol.window and now >= until + pol.most
        return dead

    def _slot(self, key, pol, now, insert=True):
        s = self.table.slot(key_bytes(key), insert, self._dead(pol, now), FRESH)
        if s < 0 and insert and now - self.full_logged >= LOG_FULL_EVERY:
            self.full_logged = now
            log.error("login back-off: the address table is full; checking logins without back-off")
        return s

    def begin(self, key, pol):
        """A login from ``key`` (rules.ip_key) is about to be checked.
        Returns (verdict, log it?, seconds of penalty left, token): OK with
        the token to give ``end``, or PENALISED or BUSY, and whether this
        refusal should be logged (at most once every window per address,
        across all processes)."""
        with self.table.lock:
            now = self.clock()
            s = self._slot(key, pol, now)
            if s < 0:
                return OK, False, 0.0, None
            start, until, logged, f, c, k = self.table.get(s)
            if now < until:
                verdict = PENALISED
            else:
                if now - start >= pol.window:
                    start, f, c = now, 0, 0
                if f + c < pol.failures:
                    self.table.put(s, start, until, logged, f, c + 1, k)
                    return OK, False, 0.0, start
                verdict = BUSY
            log_it = now - logged >= pol.window
            if log_it:
                logged = now
            self.table.put(s, start, until, logged, f, c, k)
            return verdict, log_it, max(0.0, until - now), None

    def end(self, key, pol, token, failed):
        """The login ``begin`` let through with ``token`` has been checked;
        ``failed``: the password was wrong.  Returns (k, seconds) when this
        failure starts the address's k-th penalty, else None."""
        if token is None:
            return None                       # the table was full: it was never counted
        with self.table.lock:
            now = self.clock()
            s = self._slot(key, pol, now, insert=failed)
            if s < 0:
                return None
            start, until, logged, f, c, k = self.table.get(s)
            if start == token:
                c = max(0, c - 1)             # no longer being checked
            if not failed:
                self.table.put(s, start, until, logged, f, c, k)
                return None
            if now - start >= pol.window:
                start, f, c = now, 0, 0
            f += 1
            started = None
            if f >= pol.failures and now >= until:
                if now >= until + pol.most:
                    k = 0                     # out of trouble long enough: start over
                k += 1
                seconds = penalty_seconds(k, pol.first, pol.most)
                until = now + seconds
                # the next window opens after the penalty; logins still being
                # checked now belong to this one and are forgotten with it
                start, f, c = NEVER, 0, 0
                started = (k, seconds)
            self.table.put(s, start, until, logged, f, c, k)
            return started

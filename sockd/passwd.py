"""RFC 1929 passwords: an htpasswd-format file with bcrypt hashes.

``parse`` is pure: ``user:hash`` lines, ``#`` comments; only bcrypt
hashes (``$2y$``/``$2b$``/``$2a$``, as ``htpasswd -B`` and ``sockd-passwd``
write them) are accepted.  Plaintext, crypt, MD5 and SHA entries are
refused with their line number: they are too weak to keep.

``PasswdFile`` checks a user's password (blocking: bcrypt is slow on
purpose, so it runs on a helper thread, never on the poll loop), re-reading
the file when it changes.  An unknown user's password is checked against a
dummy hash of the cost most of the file's hashes use (``dummy_cost``,
chosen again whenever the file is re-read), through the same steps as a
known user's, so a failure takes the same time whatever the name and
timing does not tell which names exist.  A file whose hashes have
different costs cannot hide every name: it is warned about
(``cost_warning``).  Passwords are never logged.
"""

import collections
import os
import threading

from . import extras

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
MAX_USER = 255
MAX_PASSWORD = 72         # bcrypt reads no further; htpasswd -B hashes the first 72 bytes
DEFAULT_COST = 10
MIN_COST, MAX_COST = 4, 31
# The salt and checksum of the dummy hashes an unknown user's password is
# checked against.  bcrypt's work is set by the cost in a hash's prefix
# alone, so a dummy of any cost is this text behind "$2b$NN$": nothing is
# hashed to make one (a real hash of cost 12 would cost ~250 ms at every
# start of every process that reads the file: every inetd-mode sockd).  No
# password is known to match it, and an unknown user is refused whatever
# matches.
_DUMMY_TAIL = b"IOXSMs/RSG1/d5Ee2kpCceeNrrOdAPqWPClY2NvxQrKMW6Qy3Ml7."


def cost_of(hashed):
    """The cost of a bcrypt hash (bytes or text) that ``parse`` accepted."""
    return int(hashed[4:6])


def dummy_cost(entries):
    """The cost an unknown user's check is made at: the one most of the
    file's hashes use (a tie goes to the higher cost), DEFAULT_COST for a
    file with no users.  Pure."""
    counts = collections.Counter(cost_of(h) for h in entries.values())
    if not counts:
        return DEFAULT_COST
    return max(counts, key=lambda cost: (counts[cost], cost))


def dummy_hash(cost):
    """A bcrypt hash of ``cost`` that no known password matches (bytes)."""
    return b"$2b$%02d$" % cost + _DUMMY_TAIL


def cost_warning(entries):
    """None when every hash has the same cost; else what that tells an
    attacker and what to do, for the log (the file's name is the caller's).
    Pure."""
    counts = collections.Counter(cost_of(h) for h in entries.values())
    if len(counts) < 2:
        return None
    common = dummy_cost(entries)
    odd = sum(n for cost, n in counts.items() if cost != common)
    return ("bcrypt costs differ (%s): unknown names are checked at cost %d, so a failed login as "
            "one of the %d user%s of another cost takes a different time and tells that the name exists; "
            "give every user the same cost (sockd-passwd -C %d FILE USER)" % (
                ", ".join("%d at cost %d" % (counts[c], c) for c in sorted(counts)),
                common, odd, "" if odd == 1 else "s", common))


def parse(text, path="-"):
    """Returns (entries dict user -> hash bytes, problems [(file, line, msg)])."""
    entries, problems = {}, []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            problems.append((path, lineno, "expected USER:HASH"))
            continue
        if len(user.encode()) > MAX_USER:
            problems.append((path, lineno, "user name longer than %d bytes" % MAX_USER))
            continue
        if not hashed.startswith(BCRYPT_PREFIXES):
            kind = ("MD5" if hashed.startswith("$apr1$") or hashed.startswith("$1$") else
                    "SHA" if hashed.startswith("{SHA}") or hashed.startswith(("$5$", "$6$")) else
                    "crypt or plaintext")
            problems.append((path, lineno, "%s password of '%s' refused: only bcrypt hashes "
                                           "(htpasswd -B, sockd-passwd)" % (kind, user[:40])))
            continue
        if len(hashed) != 60 or hashed[6] != "$" or not hashed[4:6].isdigit() or not (
                MIN_COST <= int(hashed[4:6]) <= MAX_COST):
            problems.append((path, lineno, "malformed bcrypt hash for '%s'" % user[:40]))
            continue
        if user in entries:
            problems.append((path, lineno, "user '%s' given twice" % user[:40]))
            continue
        entries[user] = hashed.encode("ascii")
    return entries, problems


def read(path):
    """Read and parse; returns (entries, problems, signature)."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            text = f.read(1 << 24).decode("utf-8", "replace")
    except OSError as exc:
        return {}, [(path, 0, "cannot read: %s" % exc.strerror)], None
    entries, problems = parse(text, path)
    return entries, problems, signature(st)


def signature(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class PasswdFile:
    """The users of one passwd file, kept up to date with it.  ``state``
    is (entries, dummy hash), replaced as one when the file is re-read, so
    that a check never pairs the users of one version with the dummy of
    another."""

    def __init__(self, path, entries, sig, log=None):
        self.path = path
        self.state = (entries, dummy_hash(dummy_cost(entries)))
        self.sig = sig
        self.log = log
        self.lock = threading.Lock()

    @property
    def entries(self):
        return self.state[0]

    @classmethod
    def load(cls, path, log=None):
        """Raises ValueError with the problems when the file is not usable."""
        entries, problems, sig = read(path)
        if problems:
            raise ValueError(problems)
        return cls(path, entries, sig, log)

    def refresh(self):
        """Re-read the file if it changed; keep the old entries on errors."""
        try:
            sig = signature(os.stat(self.path))
        except OSError:
            return
        if sig == self.sig:
            return
        with self.lock:
            if sig == self.sig:
                return
            entries, problems, new_sig = read(self.path)
            self.sig = sig
            if problems:
                if self.log:
                    for f, line, msg in problems:
                        self.log.error("%s:%d: %s (keeping the previous passwords)" % (f, line, msg))
                return
            self.state = (entries, dummy_hash(dummy_cost(entries)))
            if self.log:
                self.log.notice("re-read %s: %d users" % (self.path, len(entries)))
                warning = cost_warning(entries)
                if warning:
                    self.log.warning("%s: %s" % (self.path, warning))

    def verify(self, user, password):
        """Blocking.  True when ``password`` (bytes) is ``user``'s.  A known
        and an unknown name take the same steps, with the same bcrypt cost
        when the file's hashes share one: only the hash differs."""
        self.refresh()
        entries, dummy = self.state
        hashed = entries.get(user)
        try:
            ok = extras.bcrypt().checkpw(password[:MAX_PASSWORD], dummy if hashed is None else hashed)
        except ValueError:
            ok = False
        return ok and hashed is not None


def make_hash(password, cost=DEFAULT_COST):
    bcrypt = extras.bcrypt()
    return bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode("ascii")

"""RFC 1929 passwords: an htpasswd-format file with bcrypt hashes.

``parse`` is pure: ``user:hash`` lines, ``#`` comments; only bcrypt
hashes (``$2y$``/``$2b$``/``$2a$``, as ``htpasswd -B`` and ``sockd-passwd``
write them) are accepted.  Plaintext, crypt, MD5 and SHA entries are
refused with their line number: they are too weak to keep.

``PasswdFile`` checks a user's password (blocking: bcrypt is slow on
purpose, so it runs on a helper thread, never on the poll loop), re-reading
the file when it changes.  An unknown user costs the same bcrypt work as a
known one, so timing does not tell which names exist.  Passwords are never
logged.
"""

import os
import threading

import bcrypt

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
MAX_USER = 255
DEFAULT_COST = 10
# What an unknown user's password is checked against, so that it costs the
# same bcrypt work as a known one's: a hash of cost DEFAULT_COST, written
# out rather than made at import time, which cost ~60 ms on every start of
# every process that imports this module (every inetd-mode sockd).  Its
# password is no secret: an unknown user is refused whatever matches it.
_DUMMY = b"$2b$10$IOXSMs/RSG1/d5Ee2kpCceeNrrOdAPqWPClY2NvxQrKMW6Qy3Ml7."


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
        if len(hashed) != 60:
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
    def __init__(self, path, entries, sig, log=None):
        self.path = path
        self.entries = entries
        self.sig = sig
        self.log = log
        self.lock = threading.Lock()

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
            self.entries = entries
            if self.log:
                self.log.notice("re-read %s: %d users" % (self.path, len(entries)))

    def verify(self, user, password):
        """Blocking.  True when ``password`` (bytes) is ``user``'s."""
        self.refresh()
        hashed = self.entries.get(user)
        if hashed is None:
            bcrypt.checkpw(password, _DUMMY)
            return False
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:
            return False


def make_hash(password, cost=DEFAULT_COST):
    return bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode("ascii")

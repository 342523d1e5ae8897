"""The pid file: written atomically, a stale one replaced, a live one
refusing the start, removed on exit only while it still names us.

A pid file is "live" when the process it names exists and looks like a
sockd (its command line or title mentions sockd): after a reboot the
number may belong to some other program, which must not keep sockd down.

Imports only ``errors`` of sockd; the ``pidfile`` directive's converter is
``validators.to_pidfile``.
"""

import errno
import os

from .errors import PidfileError


def read_pid(path):
    """The pid in ``path``, or None when there is no file or no number."""
    try:
        with open(path, "rb") as f:
            text = f.read(64)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError("cannot read pid file %s: %s" % (path, exc.strerror)) from None
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def is_sockd(pid):
    """Does ``pid`` name a live sockd process?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read(4096)
    except FileNotFoundError:
        return False
    except OSError:
        return True                    # cannot tell: better refuse than run twice
    return b"sockd" in cmdline


def check(path):
    """Refuse (PidfileError) when ``path`` names a live sockd."""
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and is_sockd(pid):
        raise PidfileError("already running as pid %d (pid file %s); not starting another" % (pid, path))


def write(path, pid=None):
    """Write ``pid`` (default: ours) to ``path`` atomically: a temporary file
    in the same directory, then link() (which fails if a file appeared
    meanwhile) or, over a stale file, rename().  Raises PidfileError."""
    pid = os.getpid() if pid is None else pid
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), pid))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise PidfileError("cannot write pid file %s: %s" % (path, exc.strerror)) from None
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, b"%d\n" % pid)
        os.close(fd)
        fd = -1
        for _ in range(3):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                pass
            other = read_pid(path)
            if other is not None and other != pid and is_sockd(other):
                raise PidfileError("already running as pid %d (pid file %s); not starting another"
                                   % (other, path))
            os.replace(tmp, path)       # stale, or ours: replace it
            return
        raise PidfileError("cannot write pid file %s: it keeps changing" % path)
    except OSError as exc:
        raise PidfileError("cannot write pid file %s: %s" % (path, exc.strerror)) from None
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def remove(path, pid=None):
    """Remove ``path`` if it still holds ``pid`` (default: ours)."""
    pid = os.getpid() if pid is None else pid
    try:
        if read_pid(path) == pid:
            os.unlink(path)
    except (OSError, PidfileError) as exc:
        if getattr(exc, "errno", None) != errno.ENOENT:
            return False
    return True


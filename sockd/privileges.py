"""Who the processes that serve clients run as: ``user``, ``group`` and
``chroot``, and the open-files limit.

The master keeps the privileges it was started with (root, normally): it
binds the listening ports, including those below 1024, re-reads the
configuration on SIGHUP and opens new ports then.  Every worker and every
fork-model child gives them up before it touches a client: chroot (when
set), then the supplementary groups, the group and the user.  An inetd-mode
sockd started as root does the same before reading its client.

Before a chroot everything that would be loaded from the file system later
is loaded now: every sockd module, the codecs that name resolution may
need, and the C library's name-service modules (by asking it once).  What
must exist inside the directory is documented in sockd.conf(5).

Imports only ``errors`` of sockd at load time (``preload`` imports the rest
on purpose).  The directives' converters are in ``validators``.
"""

import grp
import importlib
import os
import pkgutil
import pwd
import socket

import sockd
from .errors import PrivilegeError


class Identity:
    """What a serving process becomes: uid, gid, supplementary groups and
    the chroot directory (each None: unchanged)."""

    __slots__ = ("user", "uid", "gid", "groups", "chroot")

    def __init__(self, user=None, uid=None, gid=None, groups=None, chroot=None):
        self.user, self.uid, self.gid, self.groups, self.chroot = user, uid, gid, groups, chroot

    @property
    def changes_anything(self):
        return self.uid is not None or self.gid is not None or self.chroot is not None


def resolve(cfg):
    """The Identity a configuration asks for.  Raises PrivilegeError."""
    user, group, chroot = getattr(cfg, "user", None), getattr(cfg, "group", None), getattr(cfg, "chroot", None)
    ident = Identity(chroot=chroot)
    if user is not None:
        try:
            pw = pwd.getpwuid(int(user)) if user.isascii() and user.isdigit() else pwd.getpwnam(user)
        except (KeyError, OverflowError):
            raise PrivilegeError("unknown user %s" % user) from None
        ident.user, ident.uid, ident.gid = pw.pw_name, pw.pw_uid, pw.pw_gid
        try:
            ident.groups = sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid)))
        except OSError:
            ident.groups = [pw.pw_gid]
    if group is not None:
        try:
            gr = grp.getgrgid(int(group)) if group.isascii() and group.isdigit() else grp.getgrnam(group)
        except (KeyError, OverflowError):
            raise PrivilegeError("unknown group %s" % group) from None
        ident.gid = gr.gr_gid
        ident.groups = [gr.gr_gid] if ident.groups is None else sorted(set(ident.groups) | {gr.gr_gid})
    return ident


_preloaded = False


def preload():
    """Load now what a process could not load once it is in a chroot or
    no longer root (the Python library itself may be unreadable to the
    user): the server's modules, the codecs name resolution uses, the C
    library's name-service modules.  Done once, in the master, before it
    forks anything, and in inetd mode before the drop."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    # loading these is this function's whole job, so they are imported here
    import encodings.idna      # noqa: F401  getaddrinfo() of a non-ASCII name
    import traceback           # noqa: F401  error reports
    # the server's own modules (not the client library, the command-line
    # tools or __main__, which would run a sockd when imported)
    for m in pkgutil.iter_modules(sockd.__path__):
        if m.ispkg or m.name in ("__main__", "cli", "tools", "daemonize"):
            continue
        try:
            importlib.import_module("sockd." + m.name)
        except Exception:      # an optional module (e.g. a missing library): not needed then
            pass
    for probe in (lambda: socket.getaddrinfo("localhost", 0, 0, socket.SOCK_STREAM),
                  lambda: socket.gethostbyaddr("127.0.0.1"),
                  lambda: socket.getservbyport(80, "tcp"),
                  lambda: pwd.getpwuid(0)):
        try:
            probe()
        except (OSError, KeyError):
            pass


def enter(ident):
    """Become ``ident``: chroot, groups, gid, uid (in that order; a process
    that has given up root can do none of them).  Raises PrivilegeError."""
    if ident is None or not ident.changes_anything:
        return
    step = ""
    try:
        if ident.chroot:
            step = "chroot to %s" % ident.chroot
            os.chroot(ident.chroot)
            os.chdir("/")
        if ident.groups is not None:
            step = "set the groups of %s" % (ident.user or "gid %d" % ident.gid)
            os.setgroups(ident.groups)
        if ident.gid is not None:
            step = "switch to gid %d" % ident.gid
            os.setresgid(ident.gid, ident.gid, ident.gid)
        if ident.uid is not None:
            step = "switch to user %s (uid %d)" % (ident.user, ident.uid)
            os.setresuid(ident.uid, ident.uid, ident.uid)
    except OSError as exc:
        raise PrivilegeError("cannot %s: %s" % (step, exc.strerror)) from None
    if ident.uid is not None and ident.uid != 0:
        try:
            os.setuid(0)
        except OSError:
            pass
        else:
            raise PrivilegeError("could regain root after switching to %s" % ident.user)

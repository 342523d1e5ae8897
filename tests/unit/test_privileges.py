"""Who serving processes become: the Identity a configuration asks for,
becoming it (in a forked child, so the test process keeps its own), and
the open-files limit."""

import grp
import os
import pwd
import resource

import pytest

from sockd import limits as L
from sockd import privileges as PV
from sockd.errors import PrivilegeError


class Cfg:
    def __init__(self, user=None, group=None, chroot=None):
        self.user, self.group, self.chroot = user, group, chroot


def test_nothing_asked_changes_nothing():
    ident = PV.resolve(Cfg())
    assert not ident.changes_anything
    PV.enter(ident)
    PV.enter(None)


def test_user_brings_its_groups_and_group_overrides_the_gid():
    pw = pwd.getpwnam("nobody")
    ident = PV.resolve(Cfg(user="nobody"))
    assert (ident.user, ident.uid, ident.gid) == ("nobody", pw.pw_uid, pw.pw_gid)
    assert pw.pw_gid in ident.groups and ident.changes_anything
    assert PV.resolve(Cfg(user=str(pw.pw_uid))).user == "nobody"
    gr = grp.getgrnam("nogroup")
    ident = PV.resolve(Cfg(user="nobody", group="nogroup", chroot="/"))
    assert ident.gid == gr.gr_gid and gr.gr_gid in ident.groups and ident.chroot == "/"
    ident = PV.resolve(Cfg(group=str(gr.gr_gid)))
    assert (ident.uid, ident.gid, ident.groups) == (None, gr.gr_gid, [gr.gr_gid])


def test_unknown_names_are_privilege_errors():
    with pytest.raises(PrivilegeError, match="unknown user no-such-user-xyz"):
        PV.resolve(Cfg(user="no-such-user-xyz"))
    with pytest.raises(PrivilegeError, match="unknown group no-such-group-xyz"):
        PV.resolve(Cfg(group="no-such-group-xyz"))


def in_child(fn):
    """Run ``fn`` in a forked child; returns what it wrote (or its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except BaseException as exc:
            out = "%s: %s" % (type(exc).__name__, exc)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_enter_chroots_then_drops_groups_gid_and_uid(tmp_path):
    (tmp_path / "marker").write_text("inside")
    os.chmod(tmp_path, 0o755)
    ident = PV.resolve(Cfg(user="nobody", group="nogroup", chroot=str(tmp_path)))

    def become():
        PV.enter(ident)
        return "%d %d %s %s %s" % (os.getuid(), os.getgid(), sorted(os.getgroups()) == sorted(ident.groups),
                                   os.getcwd(), open("/marker").read())
    assert in_child(become) == "%d %d True / inside" % (ident.uid, ident.gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_enter_failures_name_the_step():
    ident = PV.Identity(chroot="/nonexistent/jail")
    assert in_child(lambda: PV.enter(ident) or "entered") == \
        "PrivilegeError: cannot chroot to /nonexistent/jail: No such file or directory"


def test_raise_nofile_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def raise_it():
        got = L.raise_descriptors(0)[0]   # the one home of the open-files limit
        return "%d %d" % (got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    assert in_child(raise_it) == "%d %d" % (hard, hard)

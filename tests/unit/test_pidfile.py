"""The pid file: written atomically, a stale one replaced, a live sockd's
refusing the start, removed only while it names us."""

import os
import subprocess
import sys

import pytest

from sockd import pidfile as PF
from sockd.errors import PidfileError


def test_pidfile_written_atomically_and_removed_only_when_ours(tmp_path):
    p = str(tmp_path / "s.pid")
    PF.write(p)
    assert open(p).read() == "%d\n" % os.getpid()
    assert os.listdir(tmp_path) == ["s.pid"]                 # no temporary file left
    PF.remove(p, pid=os.getpid() + 1)                         # somebody else's: kept
    assert os.path.exists(p)
    PF.remove(p)
    assert not os.path.exists(p)
    PF.remove(p)                                              # already gone: fine


def test_pidfile_stale_replaced_live_refused(tmp_path):
    p = str(tmp_path / "s.pid")
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(p, "w") as f:
        f.write("%d\n" % dead.pid)
    PF.check(p)
    PF.write(p)
    assert PF.read_pid(p) == os.getpid()
    # a live process that is not a sockd (a reused number) does not count
    other = subprocess.Popen(["sleep", "30"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "sockd-lookalike"])
    try:
        with open(p, "w") as f:
            f.write("%d\n" % other.pid)
        PF.check(p)
        with open(p, "w") as f:
            f.write("%d\n" % live.pid)
        with pytest.raises(PidfileError, match="already running as pid %d" % live.pid):
            PF.check(p)
        with pytest.raises(PidfileError, match="already running"):
            PF.write(p, pid=os.getpid())
        assert PF.read_pid(p) == live.pid
    finally:
        other.kill()
        live.kill()
        other.wait()
        live.wait()
    # garbage is no pid
    with open(p, "w") as f:
        f.write("hello\n")
    assert PF.read_pid(p) is None
    PF.write(p)
    assert PF.read_pid(p) == os.getpid()


def test_pidfile_in_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PidfileError, match="cannot write pid file .*No such file or directory"):
        PF.write(str(tmp_path / "no" / "such" / "s.pid"))



def test_our_own_pid_never_blocks_the_start(tmp_path):
    p = str(tmp_path / "s.pid")
    with open(p, "w") as f:
        f.write("%d\n" % os.getpid())
    PF.check(p)                                               # a re-exec finds its own number
    assert PF.read_pid(str(tmp_path / "missing.pid")) is None
    with open(p, "w") as f:
        f.write("-5\n")
    assert PF.read_pid(p) is None


def test_unreadable_pid_file_is_a_clear_error(tmp_path):
    with pytest.raises(PidfileError, match="cannot read pid file .*Is a directory"):
        PF.read_pid(str(tmp_path))

"""The fork model's rehearsal (sockd/rehearsal.py): made-up clients served
in the master on loopback, so that the children inherit quickened code.
It must serve them to the end, leave nothing behind (descriptors, threads,
log lines), stay within its bounds and never raise."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sockd import osfacade
from sockd import protocol as P
from sockd import rehearsal as RH
from sockd.log import log
from test_protocol import drive          # the handshake driver of the codec tests (same directory)


def test_the_made_up_requests_are_connects_to_the_destination():
    v5, v4 = RH.requests(4321)
    for blob in (v5, v4):
        for pieces in ([blob], [blob[i:i + 1] for i in range(len(blob))]):   # coalesced, byte by byte
            out, _ = drive(pieces)
            req = out[-1]
            assert req.command == P.CMD_CONNECT and req.port == 4321
            if req.version == 5:
                assert out[0] == P.Greeting((0,)) and req.address == "127.0.0.1"
            else:
                assert len(out) == 1 and req.ip == socket.inet_aton("127.0.0.1") and req.userid == ""
    assert (v5[0], v4[0]) == (5, 4)


def test_it_serves_every_round_and_leaves_nothing_behind(monkeypatch):
    lines = []
    monkeypatch.setattr(log, "log", lambda level, message: lines.append(message))
    fds = set(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    t0 = time.monotonic()
    assert RH.rehearse() == RH.ROUNDS
    assert time.monotonic() - t0 < RH.DEADLINE
    assert set(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads            # the master forks: no helper thread may be left
    assert lines == []                                    # the real log hears nothing of it


def test_its_logger_formats_but_writes_nowhere(capfd):
    from sockd.log import Logger
    quiet = Logger(socket_path=None, at_fork=False)
    quiet.notice("connected -- nothing")
    assert quiet._sock is None and capfd.readouterr() == ("", "")


def test_it_stays_within_its_deadline():
    t0 = time.monotonic()
    assert RH.rehearse(deadline=0) == 0
    assert time.monotonic() - t0 < 0.5


def test_without_loopback_it_gives_up_quietly(monkeypatch):
    def no_loopback(self, address):
        raise OSError(99, "Cannot assign requested address")
    monkeypatch.setattr(socket.socket, "bind", no_loopback)
    assert RH.rehearse() == 0


def test_the_os_facade_rehearses_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(osfacade, "rehearse", lambda: calls.append(1) or 24)
    monkeypatch.setattr(osfacade.OS, "rehearsed", False)
    assert osfacade.OS.rehearse() == 24
    assert osfacade.OS.rehearse() == 0 and calls == [1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="quickening is CPython 3.11's")
def test_it_leaves_the_session_code_quickened():
    """What it is for: after a rehearsal the session's code is in its
    specialised form (in a fresh interpreter, where nothing else ran it)."""
    code = r"""
import dis
from sockd import rehearsal, session, relay
def specialised(f):
    return sum(i.opname != dis.opname[i.opcode] or i.opname.endswith(("_ADAPTIVE", "_QUICK"))
               for i in dis.get_instructions(f, adaptive=True))
fs = [session.Session.__init__, session.Session.on_client, relay.Relay.__init__]
before = [specialised(f) for f in fs]
assert rehearsal.rehearse() == rehearsal.ROUNDS
after = [specialised(f) for f in fs]
print(before, after)
assert before == [0, 0, 0] and all(a > 0 for a in after), (before, after)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

"""Fixtures of the unit tests only: a real sockd.loop.Loop whose internal
errors are recorded (and fail the test unless it looked at them), the
test's sockets and peers on that loop (closed at the end), and
configurations parsed from text.

The loop also checks the contract that Loop.handle_error relies on: every
handler that sockd's own modules register is a bound method of an object
with close(), so that a bug in it cannot leave a descriptor registered."""

import sys
import time

import pytest

from sockd import loop as L

import loopkit


def _closable_owner(handler):
    owner = getattr(handler, "__self__", None)
    return owner is not None and callable(getattr(owner, "close", None))


@pytest.fixture
def looplog(monkeypatch):
    """What the loop itself logs (its internal errors)."""
    rec = loopkit.RecordingLog()
    monkeypatch.setattr(L, "log", rec)
    return rec


@pytest.fixture
def loop(looplog):
    lp = L.Loop()
    bad = []
    real_add, real_rebind = lp.add, lp.rebind

    def checked(real):
        def register(fd, *args):
            handler = args[-1]
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("sockd.") and not _closable_owner(handler):
                bad.append((caller, handler))
            return real(fd, *args)
        return register

    lp.add = checked(real_add)
    lp.rebind = checked(real_rebind)
    lp.now = time.monotonic()
    yield lp
    lp.close()
    assert not bad, "handlers without an owner to close: %r" % bad
    unexpected = looplog.having("internal error")
    assert not unexpected, "the loop met errors: %r" % unexpected


@pytest.fixture
def net(loop):
    n = loopkit.Net(loop)
    yield n
    n.close_all()


@pytest.fixture
def log():
    """A recording log to hand to the module under test."""
    return loopkit.RecordingLog()


@pytest.fixture
def conf():
    """conf(text, path="unit.conf", own=()) -> a parsed configuration."""
    return loopkit.parse_conf

"""sockd.health: marks on upstreams that failed, how long they last, that
exactly one caller is told of each change (down, up again), and that the
marks are shared with forked processes."""

import os

import pytest

from sockd import health as H
from sockd import limits as L


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def table(clock):
    return H.Health(clock, first=30.0, most=300.0)


UP1 = "socks5://up1:1080"
UP2 = "http://proxy.example:3128"


def test_mark_seconds_double_and_are_capped():
    assert [H.mark_seconds(k, 30, 300) for k in range(1, 7)] == [30, 60, 120, 240, 300, 300]
    assert H.mark_seconds(10 ** 6, 30, 300) == 300


def test_an_unknown_upstream_is_up(table):
    assert not table.down(UP1)
    assert table.succeeded(UP1) is None


def test_the_first_failure_marks_it_down_once(table, clock):
    assert table.failed(UP1) == (H.DOWN, 30.0)
    assert table.down(UP1)
    assert not table.down(UP2)
    # other clients of the same moment: nothing new to say, no doubling
    clock.now += 1
    assert table.failed(UP1) == (H.NOTHING, 29.0)
    assert table.failed(UP1)[0] == H.NOTHING
    clock.now += 29
    assert not table.down(UP1)                      # tried again


def test_a_retry_that_fails_doubles_the_mark(table, clock):
    table.failed(UP1)
    clock.now += 30
    assert table.failed(UP1) == (H.STILL_DOWN, 60.0)
    clock.now += 60
    assert table.failed(UP1) == (H.STILL_DOWN, 120.0)
    for _ in range(5):
        clock.now += 300
        what, seconds = table.failed(UP1)
    assert (what, seconds) == (H.STILL_DOWN, 300.0)


def test_recovery_is_told_once_and_starts_over(table, clock):
    table.failed(UP1)
    clock.now += 30
    table.failed(UP1)
    clock.now += 75
    assert table.succeeded(UP1) == 105.0
    assert table.succeeded(UP1) is None
    assert not table.down(UP1)
    assert table.failed(UP1) == (H.DOWN, 30.0)      # a new outage: from the first mark again


def test_a_success_while_marked_clears_it(table, clock):
    """Every upstream of a line down: they are still tried, and the one
    that answers is up again at once."""
    table.failed(UP1)
    clock.now += 1
    assert table.succeeded(UP1) == 1.0
    assert not table.down(UP1)


def test_keys_are_labels(table):
    assert H.label_key(UP1) != H.label_key(UP2)
    assert len(H.label_key(UP1)) == L.KEY.size
    assert H.label_key(UP1)[0] == H.KEY_FAMILY


def test_marks_are_shared_with_forked_processes(table):
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if table.failed(UP1)[0] == H.DOWN else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert table.down(UP1)
    assert table.failed(UP1)[0] == H.NOTHING        # the child told of the change; the parent is not
    pid = os.fork()
    if pid == 0:
        os._exit(0 if table.succeeded(UP1) is not None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert table.succeeded(UP1) is None


def test_a_full_table_keeps_no_mark(monkeypatch, clock):
    monkeypatch.setattr(L, "SLOTS", 2)
    monkeypatch.setattr(L, "PROBE", 2)
    table = H.Health(clock)
    assert table.failed("a")[0] == H.DOWN
    assert table.failed("b")[0] == H.DOWN
    others = ["c%d" % i for i in range(20)]
    assert any(table.failed(x) == (H.NOTHING, 0.0) for x in others)
    # an upstream that is up again frees its slot for another
    table.succeeded("a")
    table.succeeded("b")
    assert table.failed(others[0])[0] == H.DOWN

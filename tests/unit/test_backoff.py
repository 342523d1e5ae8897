"""The login back-off: the penalty arithmetic (pure), the policy a
configuration gives, and the shared table driven with an injected clock --
failures to a penalty, refusals while it lasts and their log pacing,
logins sent all at once, successes that reset nothing, penalties that
double and are forgotten, a table shared with forked processes and one
that lets logins through when full."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import backoff as B
from sockd import config as C
from sockd import limits as L
from sockd import rules as R

POL = B.Policy(failures=3, window=60.0, first=10.0, most=80.0)
A, OTHER = R.ip_key("192.0.2.7"), R.ip_key("2001:db8::7")


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
    return B.Backoff(clock)


def fail(table, key=A, pol=POL):
    """One login that begins and fails; returns what end() said."""
    verdict, _log, _left, token = table.begin(key, pol)
    assert verdict == B.OK
    return table.end(key, pol, token, failed=True)


# --- pure ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,seconds", [(0, 0), (1, 10), (2, 20), (3, 40), (4, 80), (5, 80), (1000, 80)])
def test_each_penalty_in_a_row_doubles_up_to_the_longest(k, seconds):
    assert B.penalty_seconds(k, 10.0, 80.0) == seconds


@given(st.integers(1, 10 ** 6), st.floats(0.001, 1e6), st.floats(0.001, 1e7))
def test_a_penalty_is_never_shorter_than_the_first_nor_longer_than_the_longest(k, first, most):
    most = max(first, most)
    p = B.penalty_seconds(k, first, most)
    assert first <= p <= most
    assert B.penalty_seconds(k + 1, first, most) >= p


def test_the_policy_of_a_configuration():
    cfg = C.parse_text("permit 0/0\n")
    assert B.policy(cfg) == B.Policy(10, 60.0, 60.0, 600.0)          # on by default
    cfg = C.parse_text("auth failures 5/30\nauth penalty 2m\nauth penalty-max 1h\npermit 0/0\n")
    assert B.policy(cfg) == B.Policy(5, 30.0, 120.0, 3600.0)
    assert B.policy(C.parse_text("auth failures off\nauth penalty 0\npermit 0/0\n")) is None


# --- the table ----------------------------------------------------------------------------------

def test_n_failures_start_a_penalty_that_refuses_at_once_and_ends(table, clock):
    assert fail(table) is None and fail(table) is None
    assert fail(table) == (1, 10.0)                       # the third failure starts the first penalty
    verdict, log_it, left, token = table.begin(A, POL)
    assert (verdict, log_it, left, token) == (B.PENALISED, True, 10.0, None)
    assert table.begin(OTHER, POL)[0] == B.OK             # another address is not held back
    clock.now += 9.5
    assert table.begin(A, POL)[:3] == (B.PENALISED, False, 0.5)   # paced: logged once per window
    clock.now += 0.5
    verdict, _log, _left, token = table.begin(A, POL)
    assert verdict == B.OK                                # over: the address may try again
    assert table.end(A, POL, token, failed=False) is None


def test_refusals_are_logged_once_per_window_per_address(table, clock):
    pol = POL._replace(first=300.0, most=300.0)
    for _ in range(3):
        fail(table, pol=pol)
    logged = []
    for _ in range(200):
        logged.append(table.begin(A, pol)[1])
        clock.now += 1
    assert logged == [True] + [False] * 59 + [True] + [False] * 59 + [True] + [False] * 59 + [True] + [False] * 19


def test_a_success_resets_nothing(table, clock):
    fail(table)
    fail(table)
    for _ in range(5):                                    # the attacker's own account, between guesses
        verdict, _log, _left, token = table.begin(A, POL)
        assert verdict == B.OK
        assert table.end(A, POL, token, failed=False) is None
    assert fail(table) == (1, 10.0)


def test_logins_sent_at_once_cannot_buy_more_than_n_guesses(table, clock):
    tokens = [table.begin(A, POL) for _ in range(3)]
    assert all(t[0] == B.OK for t in tokens)
    verdict, log_it, _left, _token = table.begin(A, POL)  # three are being checked already
    assert (verdict, log_it) == (B.BUSY, True)
    assert table.begin(A, POL)[:2] == (B.BUSY, False)
    assert table.end(A, POL, tokens[0][3], failed=False) is None   # one was right: room for one more
    assert table.begin(A, POL)[0] == B.OK


def test_logins_being_checked_are_forgotten_with_their_window(table, clock):
    for _ in range(3):
        table.begin(A, POL)                                # a process died while checking them
    assert table.begin(A, POL)[0] == B.BUSY
    clock.now += POL.window
    verdict, _log, _left, token = table.begin(A, POL)
    assert verdict == B.OK
    table.end(A, POL, token, failed=False)


def test_a_check_that_ends_in_a_later_window_counts_there(table, clock):
    verdict, _log, _left, old = table.begin(A, POL)
    clock.now += POL.window + 1
    fail(table)
    fail(table)
    # the late one is not taken off the new window's logins being checked, but its failure counts
    assert table.end(A, POL, old, failed=True) == (1, 10.0)


def test_penalties_in_a_row_double_and_are_forgotten_after_the_longest(table, clock):
    seen = []
    for _ in range(5):
        fail(table)
        fail(table)
        seen.append(fail(table))
        clock.now += seen[-1][1]                           # the penalty is over
    assert seen == [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 80.0)]
    clock.now += POL.most                                  # out of trouble long enough
    fail(table)
    fail(table)
    assert fail(table) == (1, 10.0)


def test_failures_in_different_windows_do_not_add_up(table, clock):
    fail(table)
    fail(table)
    clock.now += POL.window
    assert fail(table) is None and fail(table) is None
    assert fail(table) == (1, 10.0)


def test_a_failure_while_penalised_does_not_lengthen_the_penalty(table, clock):
    tokens = [table.begin(A, POL)[3] for _ in range(3)]
    assert table.end(A, POL, tokens[0], True) is None
    assert table.end(A, POL, tokens[1], True) is None
    assert table.end(A, POL, tokens[2], True) == (1, 10.0)
    clock.now += 5
    verdict, _log, left, _ = table.begin(A, POL)
    assert (verdict, left) == (B.PENALISED, 5.0)


def test_the_counts_are_shared_with_forked_processes(table):
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(3):
                fail(table)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert table.begin(A, POL)[0] == B.PENALISED


def test_a_full_table_lets_logins_through_and_says_so(monkeypatch, clock):
    errors = []
    monkeypatch.setattr(B.log, "error", errors.append)
    monkeypatch.setattr(L, "SLOTS", 4)
    monkeypatch.setattr(L, "PROBE", 4)
    table = B.Backoff(clock)
    for i in range(4):
        fail(table, R.ip_key("10.0.0.%d" % i))
    verdict, log_it, _left, token = table.begin(A, POL)
    assert (verdict, log_it, token) == (B.OK, False, None)   # not counted: let through
    assert table.end(A, POL, token, failed=True) is None
    assert errors == ["login back-off: the address table is full; checking logins without back-off"]
    table.begin(OTHER, POL)
    assert len(errors) == 1                                  # paced
    clock.now += POL.window                                  # their windows are over, nothing to keep
    assert table.begin(A, POL)[3] is not None


def test_a_penalised_address_keeps_its_slot_until_forgotten(monkeypatch, clock):
    monkeypatch.setattr(L, "SLOTS", 2)
    monkeypatch.setattr(L, "PROBE", 2)
    table = B.Backoff(clock)
    for _ in range(3):
        fail(table)
    clock.now += POL.window + POL.first                      # penalty over, but remembered
    fail(table, OTHER)
    assert table.begin(R.ip_key("10.9.9.9"), POL)[3] is None  # no slot may be taken from them
    clock.now += POL.most
    assert table.begin(R.ip_key("10.9.9.9"), POL)[3] is not None

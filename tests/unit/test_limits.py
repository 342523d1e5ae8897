"""The shared client limits: admit and release, the per-worker columns, the
rate window (with an injected clock), the refusal log pacing and the table
that admits when full; the pending BINDs (limit binds) counted beside the
clients, in columns of their own."""

import os

import pytest

from sockd import limits as L
from sockd import rules as R


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def key(ip):
    return R.ip_key(ip)


def limits(**kw):
    lim = L.Limits(clock=kw.pop("clock", Clock()), **kw)
    lim.column = lim.take_column()
    return lim


def test_total_limit_and_release():
    lim = limits(total=2)
    a = lim.admit(key("10.0.0.1"))
    b = lim.admit(key("10.0.0.2"))
    assert a[0] == b[0] == L.OK
    verdict, slot, _log = lim.admit(key("10.0.0.3"))
    assert (verdict, slot) == (L.TOO_MANY, -1)
    lim.release(a[1])
    assert lim.admit(key("10.0.0.3"))[0] == L.OK
    assert L.REASONS[L.TOO_MANY] == "limit clients"


def test_per_address_limit():
    lim = limits(per_address=1)
    ok = lim.admit(key("10.0.0.1"))
    assert ok[0] == L.OK and ok[1] >= 0
    assert lim.admit(key("10.0.0.1"))[0] == L.PER_ADDRESS
    assert lim.admit(key("2001:db8::1"))[0] == L.OK
    lim.release(ok[1])
    assert lim.admit(key("10.0.0.1"))[0] == L.OK


def test_rate_window_follows_the_clock():
    clock = Clock()
    lim = limits(rate=(2, 10.0), clock=clock)
    for _ in range(2):
        verdict, slot, _ = lim.admit(key("10.0.0.1"))
        assert verdict == L.OK
        lim.release(slot)                       # the rate counts arrivals, not clients
    assert lim.admit(key("10.0.0.1"))[0] == L.RATE_LIMITED
    assert lim.admit(key("10.0.0.2"))[0] == L.OK
    clock.now += 9.9
    assert lim.admit(key("10.0.0.1"))[0] == L.RATE_LIMITED
    clock.now += 0.1                            # a new window
    assert lim.admit(key("10.0.0.1"))[0] == L.OK


def test_refusals_are_logged_at_most_every_few_seconds_per_address():
    clock = Clock()
    lim = limits(per_address=1, clock=clock)
    lim.admit(key("10.0.0.1"))
    lim.admit(key("10.0.0.2"))
    assert lim.admit(key("10.0.0.1"))[2] is True
    assert lim.admit(key("10.0.0.1"))[2] is False
    assert lim.admit(key("10.0.0.2"))[2] is True       # another address has its own pace
    clock.now += L.LOG_EVERY
    assert lim.admit(key("10.0.0.1"))[2] is True


def test_columns_count_per_worker_and_are_cleared_when_it_dies():
    lim = L.Limits(total=3, clock=Clock())
    first, second = lim.take_column(), lim.take_column()
    assert (first, second) == (0, 1)
    lim.column = first
    lim.admit(key("10.0.0.1"))
    lim.admit(key("10.0.0.2"))
    lim.column = second
    lim.admit(key("10.0.0.3"))
    assert lim.admit(key("10.0.0.4"))[0] == L.TOO_MANY
    lim.give_back(first)                        # its two clients are gone with it
    assert lim.admit(key("10.0.0.4"))[0] == L.OK
    assert lim.take_column() == first           # and the column is free again


def test_a_process_without_a_column_counts_nothing():
    lim = L.Limits(total=1, clock=Clock())
    lim.free = []
    lim.column = lim.take_column()
    assert lim.column == -1
    assert lim.admit(key("10.0.0.1")) == (L.OK, -2, False)
    assert lim.admit(key("10.0.0.1")) == (L.OK, -2, False)
    lim.release(-2)
    lim.give_back(-1)


def test_counts_are_shared_with_forked_processes():
    lim = limits(total=1)
    pid = os.fork()
    if pid == 0:
        try:
            lim.admit(key("10.0.0.1"))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lim.admit(key("10.0.0.2"))[0] == L.TOO_MANY


def test_the_shared_lock_excludes_forked_processes_and_threads():
    """limits.shared_lock: held here, a forked child cannot take it until
    it is let go; a second take in one process waits too (not recursive)."""
    lock = L.shared_lock()
    r, w = os.pipe()
    lock.acquire()
    pid = os.fork()
    if pid == 0:
        try:
            got = lock.acquire(timeout=0.05)
            os.write(w, b"early" if got else b"wait")
            if not got:
                os.write(w, b" got" if lock.acquire(timeout=10) else b" never")
                lock.release()
        finally:
            os._exit(0)
    assert os.read(r, 5) == b"wait"
    assert not lock.acquire(timeout=0.01)
    lock.release()
    assert os.read(r, 5) == b" got"
    os.waitpid(pid, 0)
    with lock:
        pass
    with pytest.raises(ValueError):
        lock.release()
    os.close(r)
    os.close(w)


def test_a_full_table_admits_and_says_so(monkeypatch):
    errors = []
    monkeypatch.setattr(L.log, "error", errors.append)
    monkeypatch.setattr(L, "SLOTS", 4)
    monkeypatch.setattr(L, "PROBE", 4)
    clock = Clock()
    lim = limits(per_address=1, clock=clock)
    slots = [lim.admit(key("10.0.0.%d" % i)) for i in range(1, 5)]
    assert all(v == L.OK and s >= 0 for v, s, _ in slots)
    verdict, slot, _ = lim.admit(key("10.0.0.9"))
    assert (verdict, slot) == (L.OK, -1)                # admitted without a per-address count
    assert errors == ["limits: the address table is full; admitting without per-address limits"]
    lim.admit(key("10.0.0.10"))
    assert len(errors) == 1                             # paced
    lim.release(slots[0][1])                            # a slot whose address has gone is reused
    assert lim.admit(key("10.0.0.11"))[1] == slots[0][1]


@pytest.mark.parametrize("total,per,rate,on", [(0, 0, None, False), (5, 0, None, False), (0, 1, None, True),
                                               (0, 0, (1, 1.0), True)])
def test_per_address_table_only_when_needed(total, per, rate, on):
    assert L.Limits(total, per, rate).per_address_on is on


def test_the_address_table_reuses_only_dead_slots_and_is_shared(monkeypatch):
    monkeypatch.setattr(L, "SLOTS", 2)
    monkeypatch.setattr(L, "PROBE", 2)
    rec = L.struct.Struct("=d")
    table = L.AddressTable(rec, extra=8)
    alive = set()
    dead = lambda s: s not in alive                  # noqa: E731
    kb = [L.key_bytes(key("10.0.0.%d" % i)) for i in range(3)]
    with table.lock:
        s0 = table.slot(kb[0], True, dead, rec.pack(1.5))
        alive.add(s0)
        assert table.get(s0) == (1.5,) and table.slot(kb[0], False, dead, b"") == s0
        assert table.slot(kb[1], False, dead, b"") == -1           # looking does not insert
        s1 = table.slot(kb[1], True, dead, rec.pack(3.0))
        alive.add(s1)
        assert s1 != s0
        assert table.slot(kb[2], True, dead, rec.pack(9.0)) == -1   # full of live addresses
        table.put(s0, 2.5)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if table.get(s0) == (2.5,) else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    alive.discard(s0)
    with table.lock:
        assert table.slot(kb[2], True, dead, rec.pack(9.0)) == s0   # a dead slot is taken, fresh
        assert table.get(s0) == (9.0,) and table.slot(kb[0], False, dead, b"") == -1
    assert table.extra_off + 8 == len(table.mem)


def test_pending_binds_per_address_across_columns():
    clock = Clock()
    lim = L.Limits(binds=2, clock=clock)
    first, second = lim.take_column(), lim.take_column()
    lim.column = first
    a = lim.admit_bind(key("10.0.0.1"))
    lim.column = second
    b = lim.admit_bind(key("10.0.0.1"))
    assert a[0] == b[0] == L.OK and a[1] == b[1] >= 0
    assert lim.admit_bind(key("10.0.0.1")) == (L.TOO_MANY_BINDS, -1, True)
    assert lim.admit_bind(key("10.0.0.1"))[2] is False            # logged once per window
    assert lim.admit_bind(key("10.0.0.2"))[0] == L.OK             # another address
    assert L.REASONS[L.TOO_MANY_BINDS] == "limit binds"
    lim.release_bind(b[1])
    assert lim.admit_bind(key("10.0.0.1"))[0] == L.OK
    assert lim.admit_bind(key("10.0.0.1"))[0] == L.TOO_MANY_BINDS
    lim.give_back(first)                                          # a worker died: its BIND went with it
    assert lim.admit_bind(key("10.0.0.1"))[0] == L.OK
    assert lim.admit_bind(key("10.0.0.1"))[0] == L.TOO_MANY_BINDS
    lim.release_bind(-2)


def test_binds_and_clients_are_counted_apart():
    lim = limits(per_address=1, binds=1)
    assert lim.clients_on and lim.admit(key("10.0.0.1"))[0] == L.OK
    assert lim.admit_bind(key("10.0.0.1"))[0] == L.OK             # a client's BIND is not another client
    assert lim.admit(key("10.0.0.1"))[0] == L.PER_ADDRESS
    only = limits(binds=1)
    assert not only.clients_on and only.admit_bind(key("10.0.0.1"))[0] == L.OK
    assert limits().admit_bind(key("10.0.0.1")) == (L.OK, -2, False)   # not counted: no limit


def test_a_slot_with_a_waiting_bind_is_not_taken_by_another_address(monkeypatch):
    monkeypatch.setattr(L, "SLOTS", 2)
    monkeypatch.setattr(L, "PROBE", 2)
    lim = limits(binds=1)
    one = lim.admit_bind(key("10.0.0.1"))
    two = lim.admit_bind(key("10.0.0.2"))
    assert one[1] >= 0 and two[1] >= 0 and one[1] != two[1]
    assert lim.admit_bind(key("10.0.0.3")) == (L.OK, -2, False)    # full: admitted, not counted
    assert lim.admit_bind(key("10.0.0.1"))[0] == L.TOO_MANY_BINDS  # its count is still its own

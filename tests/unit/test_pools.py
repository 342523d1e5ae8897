"""sockd.pools: the helper threads.  Inline (one client per process: at
once, in the loop's thread) and the pools of a worker: one per kind of
work, the client addresses served in turn, bounds per address (running,
waiting) and per requester, jobs of requesters that have gone dropped,
refusals logged at most once a window per address, the counts for the
SIGUSR1 report.

Driven for real: a sockd.loop.Loop and real threads, held by events where
the test needs a job to take its time (a hung lookup, a slow bcrypt).
"""

import threading
import time

import pytest

from sockd import loop as L
from sockd import pools as PO
from sockd import rules as R

from loopkit import run_until


class Asker:
    """A requester as the pools want it: a session or an association."""

    def __init__(self, ip="127.0.0.1"):
        self.client_ip = ip
        self.src_key = R.ip_key(ip)
        self.gone = False


class Owner:
    """A done callback's object, whose close() the loop calls on a bug."""

    def __init__(self):
        self.closed = 0

    def boom(self, result, error):
        raise KeyError("a bug in a callback")

    def close(self):
        self.closed += 1


class Held:
    """Jobs that block until the test opens the gate; what ran, in order."""

    def __init__(self):
        self.gate = threading.Event()
        self.ran = []
        self.answers = []
        self.lock = threading.Lock()

    def job(self, name, wait=True):
        with self.lock:
            self.ran.append(name)
        if wait:
            assert self.gate.wait(5)
        return name, threading.get_ident()

    def done(self, result, error):
        self.answers.append((result, error, threading.get_ident()))


@pytest.fixture
def make(loop):
    """make(names=, passwords=, per_address=, queued=) -> (ThreadExecutor,
    Held); the gate is opened and the threads are stopped at the end."""
    made = []

    def build(names=2, passwords=2, per_address=4, queued=64):
        ex = PO.ThreadExecutor(loop, names, passwords, per_address, queued)
        held = Held()
        made.append((ex, held))
        return ex, held
    yield build
    for ex, held in made:
        held.gate.set()
        ex.shutdown()
        for pool in ex.pools.values():
            for t in pool.threads:
                t.join(5)
                assert not t.is_alive()


def submit(ex, asker, held, name, kind=PO.NAMES, wait=True):
    return ex.submit(kind, asker, held.job, (name, wait), held.done)


# --- inline ------------------------------------------------------------------------------------------

def test_the_inline_executor_answers_at_once_and_refreshes_the_time(loop):
    ex = L.InlineExecutor(loop)
    got = []
    loop.now = 0.0
    assert ex.submit(PO.NAMES, Asker(), lambda a, b: a + b, (2, 3), lambda r, e: got.append((r, e))) is None
    assert got == [(5, None)] and loop.now > 0
    ex.submit(PO.PASSWORDS, Asker(), lambda: 1 / 0, (), lambda r, e: got.append((r, type(e))))
    assert got[1] == (None, ZeroDivisionError)
    assert ex.stats() == {}
    assert isinstance(loop.executor, PO.InlineExecutor)      # a loop's own: one client per process


# --- the pools of a worker ---------------------------------------------------------------------------

def test_jobs_run_off_the_loop_and_answer_on_it(loop, make):
    ex, held = make(names=2)
    main = threading.get_ident()
    for i in range(5):
        assert submit(ex, Asker("127.0.0.%d" % (i + 1)), held, i) is None
    pool = ex.pools[PO.NAMES]
    assert len(pool.threads) == 2 and not ex.pools[PO.PASSWORDS].threads     # bounded by its size
    held.gate.set()
    assert run_until(loop, lambda: len(held.answers) == 5)
    assert sorted(r[0] for r, _, _ in held.answers) == [0, 1, 2, 3, 4]
    assert all(err is None and where == main and r[1] != main for r, err, where in held.answers)
    assert (pool.waiting, pool.running, pool.held, pool.turns) == ({}, {}, {}, PO.collections.deque())


def test_errors_go_to_the_caller_and_a_failing_callback_closes_its_owner(loop, make, looplog):
    ex, _ = make()
    got = []
    ex.submit(PO.NAMES, Asker(), lambda: {}["missing"], (), lambda r, e: got.append((r, type(e))))
    assert run_until(loop, lambda: got)
    assert got == [(None, KeyError)]
    owner = Owner()
    ex.submit(PO.PASSWORDS, Asker(), lambda: 1, (), owner.boom)
    assert run_until(loop, lambda: owner.closed == 1)
    looplog.clear()


def test_passwords_and_names_never_wait_for_each_other(loop, make):
    ex, held = make(names=2, passwords=2)
    for i in range(6):                                # every password thread busy, more waiting
        submit(ex, Asker("127.0.0.%d" % (i + 1)), held, "pw%d" % i, PO.PASSWORDS)
    got = []
    ex.submit(PO.NAMES, Asker("127.0.0.9"), lambda: "looked up", (), lambda r, e: got.append(r))
    assert run_until(loop, lambda: got) and got == ["looked up"]
    held2 = Held()
    for i in range(6):                                # and the other way round
        submit(ex, Asker("127.0.1.%d" % (i + 1)), held2, "name%d" % i, PO.NAMES)
    held.gate.set()
    assert run_until(loop, lambda: len(held.answers) == 6)
    held2.gate.set()
    assert run_until(loop, lambda: len(held2.answers) == 6)


def test_addresses_are_served_in_turn(loop, make):
    ex, held = make(names=1)                          # one thread: the order shows
    blocker = Held()
    submit(ex, Asker("127.0.0.9"), blocker, "first")
    assert run_until(loop, lambda: blocker.ran)
    a, b = Asker("127.0.0.1"), Asker("127.0.0.2")
    for name in ("a1", "a2", "a3"):
        submit(ex, Asker(a.client_ip), held, name, wait=False)
    for name in ("b1", "b2"):
        submit(ex, Asker(b.client_ip), held, name, wait=False)
    blocker.gate.set()
    assert run_until(loop, lambda: len(held.answers) == 5)
    assert held.ran == ["a1", "b1", "a2", "b2", "a3"]


def test_one_address_never_holds_every_thread(loop, make):
    """Lookups that hang (nothing can interrupt getaddrinfo) hold their own
    address's threads only: another address is served at once."""
    ex, held = make(names=4, per_address=2)
    pool = ex.pools[PO.NAMES]
    for i in range(10):
        assert submit(ex, Asker("127.0.0.1"), held, "hung%d" % i) is None
    assert run_until(loop, lambda: len(held.ran) == 2)
    time.sleep(0.05)
    assert len(held.ran) == 2 and pool.running == {PO.address_of(R.ip_key("127.0.0.1")): 2}
    got = []
    ex.submit(PO.NAMES, Asker("127.0.0.2"), lambda: "served", (), lambda r, e: got.append(r))
    assert run_until(loop, lambda: got) and got == ["served"]
    held.gate.set()
    assert run_until(loop, lambda: len(held.answers) == 10)


@pytest.mark.parametrize("size,asked,bound", [(16, 4, 4), (4, 4, 3), (3, 10, 2), (2, 1, 1), (1, 4, 1)])
def test_the_bound_per_address_is_below_the_pool_size(loop, size, asked, bound):
    assert PO.Pool(loop, PO.NAMES, size, asked).per_address == bound


def test_an_ipv6_client_is_bounded_by_its_64():
    one = PO.address_of(R.ip_key("2001:db8:1:2::1"))
    assert one == PO.address_of(R.ip_key("2001:db8:1:2:ffff::9"))
    assert one != PO.address_of(R.ip_key("2001:db8:1:3::1"))
    assert PO.address_of(R.ip_key("192.0.2.1")) == R.ip_key("192.0.2.1") != PO.address_of(R.ip_key("192.0.2.2"))


def test_too_many_waiting_from_one_address_are_refused_at_once_and_logged_once(loop, make):
    ex, held = make(names=2, per_address=1, queued=3)
    assert submit(ex, Asker("127.0.0.1"), held, 0) is None
    assert run_until(loop, lambda: held.ran)          # one running (its thread has taken it) ...
    for i in range(1, 4):                             # ... and three waiting
        assert submit(ex, Asker("127.0.0.1"), held, i) is None
    first = submit(ex, Asker("127.0.0.1"), held, "over")
    again = submit(ex, Asker("127.0.0.1"), held, "over again")
    assert isinstance(first, PO.Refusal) and first.log_it and not again.log_it
    assert first.text == ("too many name lookups waiting from 127.0.0.1 (helpers queue 3); "
                          "logged at most once every 5 seconds")
    assert submit(ex, Asker("127.0.0.2"), held, "other") is None           # another address is not
    assert submit(ex, Asker("127.0.0.1"), held, "a password check", PO.PASSWORDS) is None   # nor another pool
    pool = ex.pools[PO.NAMES]
    pool.logged[PO.address_of(R.ip_key("127.0.0.1"))] -= PO.LOG_EVERY         # the window has passed
    assert submit(ex, Asker("127.0.0.1"), held, "later").log_it
    assert ex.stats() == {"names_dropped": 0, "names_refused": 3, "passwords_dropped": 0, "passwords_refused": 0}
    held.gate.set()
    assert run_until(loop, lambda: len(held.answers) == 6)
    assert "over" not in held.ran and "later" not in held.ran


def test_one_requester_has_at_most_two_jobs(loop, make):
    ex, held = make(names=4)
    assoc = Asker()
    assert submit(ex, assoc, held, 1) is None and submit(ex, assoc, held, 2) is None
    busy = submit(ex, assoc, held, 3)
    assert busy.text.startswith("2 name lookups already under way for this client")
    assert submit(ex, Asker(), held, "another requester, same address") is None
    held.gate.set()
    assert run_until(loop, lambda: len(held.answers) == 3)
    assert submit(ex, assoc, held, 4, wait=False) is None                  # its jobs are done: again
    assert run_until(loop, lambda: len(held.answers) == 4)
    assert 3 not in held.ran


def test_a_job_whose_requester_has_gone_is_dropped_before_it_runs(loop, make):
    ex, held = make(names=1)
    blocker = Held()
    submit(ex, Asker("127.0.0.9"), blocker, "running")
    assert run_until(loop, lambda: blocker.ran)
    left, stays = Asker("127.0.0.1"), Asker("127.0.0.2")
    for name in ("left1", "left2"):
        submit(ex, left, held, name, wait=False)
    submit(ex, stays, held, "stays", wait=False)
    left.gone = True                                   # its client hung up while they waited
    blocker.gate.set()
    assert run_until(loop, lambda: held.answers)
    time.sleep(0.05)
    assert held.ran == ["stays"] and [r[0] for r, _, _ in held.answers] == ["stays"]
    pool = ex.pools[PO.NAMES]
    assert ex.stats()["names_dropped"] == 2 and pool.held == {} and pool.waiting == {}


def test_shutdown_ends_the_idle_threads(loop, make):
    ex, held = make(names=3, passwords=3)
    for i in range(3):
        submit(ex, Asker("127.0.0.%d" % (i + 1)), held, i, wait=False)
        submit(ex, Asker("127.0.0.%d" % (i + 1)), held, i, PO.PASSWORDS, wait=False)
    assert run_until(loop, lambda: len(held.answers) == 6)
    ex.shutdown()
    for pool in ex.pools.values():
        for t in pool.threads:
            t.join(2)
            assert not t.is_alive()


def test_a_loop_stops_its_executor_when_it_closes():
    lp = L.Loop()
    ex = lp.executor = PO.ThreadExecutor(lp, 1, 1)
    got = []
    ex.submit(PO.NAMES, Asker(), lambda: 1, (), lambda r, e: got.append(r))
    thread = ex.pools[PO.NAMES].threads[0]
    run_until(lp, lambda: got)
    lp.close()
    thread.join(2)
    assert not thread.is_alive()

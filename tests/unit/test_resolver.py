"""sockd.resolver: the resolver cache of a serving process.

``Cache`` is pure and is driven here with the time handed in: hits while
fresh, expiry after ``resolve life`` (answers) and ``resolve
failure-life`` (failures), the bound on names with the oldest going
first (hypothesis: never more than the bound), names too long to keep,
and new settings applied at once.  ``Resolver`` runs on a real loop with
an executor that holds its jobs until the test lets them run: a hit
answers at once and submits nothing, a miss goes to the pool and its
answer is kept, failures are kept without their traceback, a pool's
refusal is handed back and keeps nothing, -d's hit and miss lines, and a
bug in the requester's callback ends the requester.
"""

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import pools as PO
from sockd import resolver as RS
from sockd.loop import Loop

from loopkit import RecordingLog, parse_conf

A = ((socket.AF_INET6, "2001:db8::1"), (socket.AF_INET, "192.0.2.1"))
NXDOMAIN = OSError(socket.EAI_NONAME, "Name or service not known")


# --- the cache, pure ------------------------------------------------------------------------------

def test_an_answer_is_used_for_its_life():
    c = RS.Cache(size=4, life=60, failure_life=10)
    assert c.get("www.example.org", 100.0) is None
    c.put("www.example.org", A, None, 100.0)
    assert c.get("www.example.org", 159.9) == (A, None, 100.0)
    assert c.get("www.example.org", 160.0) is None               # expired: forgotten
    assert len(c) == 0 and (c.hits, c.misses) == (1, 2)


def test_a_failure_is_kept_for_the_shorter_failure_life():
    c = RS.Cache(size=4, life=60, failure_life=10)
    c.put("nosuch.test", None, NXDOMAIN, 0.0)
    assert c.get("nosuch.test", 9.0) == (None, NXDOMAIN, 0.0)
    assert c.get("nosuch.test", 10.0) is None


def test_the_oldest_name_goes_when_full():
    c = RS.Cache(size=3, life=60, failure_life=10)
    for i, name in enumerate(["a", "b", "c", "d"]):
        c.put(name, A, None, float(i))
    assert list(c.entries) == ["b", "c", "d"]
    c.put("b", A, None, 5.0)                                      # stored again: now the newest
    c.put("e", A, None, 6.0)
    assert list(c.entries) == ["d", "b", "e"]


def test_what_has_expired_at_the_old_end_is_forgotten_on_the_next_store():
    c = RS.Cache(size=100, life=60, failure_life=10)
    c.put("gone1", None, NXDOMAIN, 0.0)
    c.put("gone2", A, None, 1.0)
    c.put("fresh", A, None, 50.0)
    c.put("new", A, None, 70.0)                                   # gone1 (10 s) and gone2 (60 s) have expired
    assert list(c.entries) == ["fresh", "new"]


def test_size_0_or_life_0_keeps_nothing_and_long_names_are_not_kept():
    off = RS.Cache(size=0, life=60, failure_life=10)
    off.put("a", A, None, 0.0)
    assert len(off) == 0
    no_answers = RS.Cache(size=8, life=0, failure_life=10)
    no_answers.put("a", A, None, 0.0)
    no_answers.put("b", None, NXDOMAIN, 0.0)
    assert list(no_answers.entries) == ["b"]
    c = RS.Cache(size=8, life=60, failure_life=10)
    c.put("x" * (RS.MAX_NAME + 1), A, None, 0.0)
    c.put("y" * RS.MAX_NAME, A, None, 0.0)
    assert list(c.entries) == ["y" * RS.MAX_NAME]


def test_new_settings_apply_at_once():
    c = RS.Cache(size=8, life=60, failure_life=10)
    for i in range(8):
        c.put("n%d" % i, A, None, float(i))
    c.configure(3, 5, 1)
    assert list(c.entries) == ["n5", "n6", "n7"]
    assert c.get("n7", 11.9) is not None and c.get("n7", 12.0) is None   # the new life: 5 s from 7


@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.booleans(), st.floats(0, 5)), max_size=60),
       st.integers(0, 5))
def test_the_cache_never_holds_more_than_its_size(ops, size):
    c = RS.Cache(size=size, life=3, failure_life=1)
    now = 0.0
    for name, ok, step in ops:
        now += step
        got = c.get(name, now)
        if got is not None:
            assert now - got[2] < (3 if got[1] is None else 1)
        c.put(name, A if ok else None, None if ok else NXDOMAIN, now)
        assert len(c) <= size
        assert list(c.entries) == sorted(c.entries, key=lambda n: c.entries[n][2])   # oldest first


def test_failure_keeps_the_words_and_no_traceback():
    try:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    except socket.gaierror as exc:
        f = RS.failure(exc)
    assert (f.errno, f.strerror, f.__traceback__) == (socket.EAI_NONAME, "Name or service not known", None)
    long = RS.failure(UnicodeError("label too long " + "x" * 1000))
    assert long.strerror.startswith("label too long") and len(long.strerror) == RS.MAX_REASON


# --- the resolver on a loop ------------------------------------------------------------------------

class HeldExecutor:
    """Keeps its jobs until the test runs them (as the pool's threads would,
    then the loop: ``done`` on the loop's thread)."""

    def __init__(self):
        self.jobs = []
        self.refusal = None

    def submit(self, kind, requester, fn, args, done):
        if self.refusal is not None:
            return self.refusal
        assert kind == PO.NAMES
        self.jobs.append((fn, args, done))
        return None

    def run(self):
        jobs, self.jobs = self.jobs, []
        for fn, args, done in jobs:
            try:
                result, error = fn(*args), None
            except Exception as exc:
                result, error = None, exc
            done(result, error)

    def shutdown(self):
        pass


class Ctx:
    def __init__(self, conf="permit 0/0\n"):
        self.loop = Loop()
        self.loop.executor = self.executor = HeldExecutor()
        self.log = RecordingLog()
        self.config = parse_conf(conf)
        self.resolver = RS.Resolver(self)


class Requester:
    gone = False
    src_key = (4, 0x7F000001)
    client_ip = "127.0.0.1"

    def __init__(self):
        self.answers = []
        self.closed = 0

    def done(self, name, addresses, error):
        self.answers.append((name, addresses, error))

    def close(self):
        self.closed += 1


@pytest.fixture
def ctx(monkeypatch):
    c = Ctx()
    c.asked = []

    def resolve(name, port):
        c.asked.append(name)
        if name.startswith("nosuch"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name.startswith("empty"):
            return []
        if name.startswith("bug"):
            raise KeyError(name)
        return list(A)
    monkeypatch.setattr(RS, "resolve", resolve)
    yield c
    c.loop.close()


def test_a_miss_goes_to_the_pool_and_a_hit_does_not(ctx):
    r = Requester()
    assert ctx.resolver.resolve(r, "WWW.Example.ORG", r.done) is None
    assert r.answers == [] and len(ctx.executor.jobs) == 1         # a miss: on the helper pool
    ctx.executor.run()
    assert r.answers == [("WWW.Example.ORG", A, None)] and ctx.asked == ["WWW.Example.ORG"]
    two = Requester()
    assert ctx.resolver.resolve(two, "www.example.org", two.done) is None
    assert two.answers == [("www.example.org", A, None)]            # at once, from the cache
    assert ctx.executor.jobs == [] and ctx.asked == ["WWW.Example.ORG"]
    assert ctx.resolver.stats() == {"resolve_hits": 1, "resolve_misses": 1, "resolve_names": 1}
    assert ctx.log.lines("debug") == ["resolve cache: miss WWW.Example.ORG",
                                      "resolve cache: hit www.example.org: 2001:db8::1 192.0.2.1 (0s old)"]


def test_a_failure_is_kept_and_answered_from_the_cache(ctx):
    r = Requester()
    ctx.resolver.resolve(r, "nosuch.test", r.done)
    ctx.executor.run()
    [(_, addresses, error)] = r.answers
    assert addresses is None and error.strerror == "Name or service not known" and error.__traceback__ is None
    ctx.resolver.resolve(r, "nosuch.test", r.done)
    assert r.answers[1] == ("nosuch.test", None, error) and ctx.asked == ["nosuch.test"]
    assert ctx.log.having("resolve cache: hit nosuch.test: failed, Name or service not known", "debug")


def test_no_address_is_a_failure_too(ctx):
    r = Requester()
    ctx.resolver.resolve(r, "empty.test", r.done)
    ctx.executor.run()
    [(_, addresses, error)] = r.answers
    assert addresses is None and error.strerror == "no address"
    assert ctx.resolver.cache.entries["empty.test"][1] is error


def test_what_is_not_the_resolvers_answer_is_not_kept(ctx):
    r = Requester()
    ctx.resolver.resolve(r, "bug.test", r.done)
    ctx.executor.run()
    [(_, addresses, error)] = r.answers
    assert addresses is None and isinstance(error, KeyError) and len(ctx.resolver.cache) == 0


def test_a_refusal_of_the_pool_is_handed_back_and_keeps_nothing(ctx):
    ctx.executor.refusal = PO.Refusal("too many", True)
    r = Requester()
    assert ctx.resolver.resolve(r, "www.example.org", r.done) is ctx.executor.refusal
    assert r.answers == [] and len(ctx.resolver.cache) == 0


def test_a_new_configuration_changes_the_settings_and_keeps_the_names(ctx):
    r = Requester()
    for i in range(5):
        ctx.resolver.resolve(r, "n%d.test" % i, r.done)
        ctx.executor.run()
    assert len(ctx.resolver.cache) == 5
    ctx.config = parse_conf("resolve cache 2\nresolve life 30\npermit 0/0\n")      # a reload
    ctx.resolver.resolve(r, "n4.test", r.done)
    assert list(ctx.resolver.cache.entries) == ["n3.test", "n4.test"] and ctx.resolver.cache.life == 30
    assert r.answers[-1] == ("n4.test", A, None) and ctx.executor.jobs == []


def test_an_answer_goes_stale_after_resolve_life(ctx):
    ctx.config = parse_conf("resolve life 5\npermit 0/0\n")
    r = Requester()
    ctx.resolver.resolve(r, "www.example.org", r.done)
    ctx.executor.run()
    ctx.loop.now += 5.1
    ctx.resolver.resolve(r, "www.example.org", r.done)
    assert len(ctx.executor.jobs) == 1                             # asked again


def test_with_the_cache_off_every_lookup_goes_to_the_pool(ctx):
    ctx.config = parse_conf("resolve cache 0\npermit 0/0\n")
    r = Requester()
    for _ in range(2):
        ctx.resolver.resolve(r, "www.example.org", r.done)
        ctx.executor.run()
    assert ctx.asked == ["www.example.org"] * 2 and len(r.answers) == 2


def test_a_bug_in_the_requesters_callback_ends_the_requester(ctx):
    """The pool hands the answer to the loop, whose error handler closes
    the callback's object: the Answer, which ends its requester."""
    r = Requester()

    def buggy(name, addresses, error):
        raise RuntimeError("a bug")
    ctx.resolver.resolve(r, "www.example.org", buggy)
    [(fn, args, done)] = ctx.executor.jobs
    assert isinstance(done.__self__, RS.Answer)
    with pytest.raises(RuntimeError):
        done(fn(*args), None)
    done.__self__.close()
    assert r.closed == 1

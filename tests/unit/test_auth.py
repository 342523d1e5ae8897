"""sockd.auth: the SOCKS 5 method chosen for a greeting, and the RFC 1929
password check.

``choose`` is pure: a table, and hypothesis for "the first of ours that the
client offers"; so is ``socks4_allowed``, a table of methods lines.  ``check_password`` runs a real bcrypt password file
(cost 4) through a real loop's executors: inline (a fork-model child) and
the thread pool (a worker), whose answer must come back on the loop; and
with a real login back-off table, which refuses at once, with no check,
once an address has failed too often.
"""

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockd import auth as A
from sockd import backoff as B
from sockd import passwd as PW
from sockd import pools as PO
from sockd import protocol as P

from loopkit import run_until

NONE, USERPASS, GSSAPI = P.METHOD_NONE, P.METHOD_USERPASS, P.METHOD_GSSAPI


@pytest.mark.parametrize("preferred,offered,chosen", [
    (("none",), (NONE,), NONE),
    (("none",), (USERPASS,), None),
    (("username",), (NONE, USERPASS), USERPASS),
    (("username", "none"), (NONE, USERPASS), USERPASS),        # our order, not the client's
    (("none", "username"), (USERPASS, NONE), NONE),
    (("username", "none"), (GSSAPI, NONE), NONE),
    (("none",), (), None),
    (("none", "username"), (GSSAPI, 0x80, 0xFE), None),
])
def test_choose(preferred, offered, chosen):
    assert A.choose(preferred, offered) == chosen


@given(st.lists(st.sampled_from(sorted(A.METHODS)), unique=True, min_size=1),
       st.lists(st.integers(0, 255), max_size=10))
def test_choose_is_the_first_of_ours_the_client_offers(preferred, offered):
    ours = [A.METHODS[name] for name in preferred]
    want = next((code for code in ours if code in offered), None)
    assert A.choose(preferred, offered) == want


@pytest.mark.parametrize("methods,trust,allowed", [
    (("none",), False, True),
    (("none", "username"), False, True),        # a client without a password is served anyway
    (("username", "none"), False, True),
    (("username",), False, False),              # passwords required: a USERID is none
    (("username",), True, True),                # unless the configuration trusts it
    (("none",), True, True),
])
def test_socks4_allowed(methods, trust, allowed):
    cfg = type("Config", (), {"methods": methods, "socks4_trust_userid": trust})()
    assert A.socks4_allowed(cfg) is allowed


class Log:
    def __init__(self):
        self.lines = []

    def notice(self, text):
        self.lines.append(text)


class Ctx:
    def __init__(self, loop, db, backoff=None, failures=(2, 60.0)):
        self.loop = loop
        self.config = type("Config", (), {"passwd_db": db, "auth_failures": failures, "auth_penalty": 30.0,
                                          "auth_penalty_max": 300.0})()
        self.backoff = backoff
        self.log = Log()


class Asker:
    """A requester as the pools want it (a session)."""
    gone = False
    src_key = (4, 0x7F000001)
    client_ip = "127.0.0.1"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_text("alice:%s\n" % PW.make_hash(b"right", 4))
    return PW.PasswdFile.load(str(path))


def test_without_a_passwd_file_every_password_is_refused_at_once(loop):
    got = []
    A.check_password(Ctx(loop, None), Asker(), "alice", b"right", lambda ok, err: got.append((ok, err)))
    assert got == [(False, None)]


@pytest.mark.parametrize("user,password,ok", [("alice", b"right", True), ("alice", b"wrong", False),
                                              ("mallory", b"right", False)])
def test_inline_check(loop, db, user, password, ok):
    got = []
    A.check_password(Ctx(loop, db), Asker(), user, password, lambda ok, err: got.append((ok, err)))
    assert got == [(ok, None)]


def test_the_pool_checks_off_the_loop_and_answers_on_it(loop, db):
    loop.executor = ex = PO.ThreadExecutor(loop, 1, 1)
    main = threading.get_ident()
    got = []
    assert A.check_password(Ctx(loop, db), Asker(), "alice", b"right",
                            lambda ok, err: got.append((ok, err, threading.get_ident()))) is None
    assert got == []                                 # not at once: bcrypt is slow on purpose
    assert run_until(loop, lambda: got)
    assert got == [(True, None, main)]
    pool = ex.pools[PO.PASSWORDS]
    assert len(pool.threads) == 1 and not ex.pools[PO.NAMES].threads   # the pool for passwords
    ex.shutdown()
    pool.threads[0].join(2)


def test_a_check_the_pool_refuses_is_returned_and_never_answered(loop, db):
    loop.executor = ex = PO.ThreadExecutor(loop, 1, 1, queued=1)
    asker, got = Asker(), []
    gate = threading.Event()
    pool = ex.pools[PO.PASSWORDS]
    pool.submit(Asker(), gate.wait, (5,), lambda r, e: None)       # the one thread, held
    assert run_until(loop, lambda: pool.running)
    assert A.check_password(Ctx(loop, db), asker, "alice", b"right", lambda ok, err: got.append(ok)) is None
    busy = A.check_password(Ctx(loop, db), Asker(), "alice", b"right", lambda ok, err: got.append(ok))
    assert isinstance(busy, PO.Refusal) and "too many password checks waiting from 127.0.0.1" in busy.text
    gate.set()
    assert run_until(loop, lambda: got)
    assert got == [True]
    ex.shutdown()


class Counting:
    """A passwd file that counts its checks."""

    def __init__(self, db):
        self.db, self.checks = db, 0

    def verify(self, user, password):
        self.checks += 1
        return self.db.verify(user, password)


def test_the_back_off_refuses_a_failing_address_without_checking(loop, db):
    counting = Counting(db)
    ctx = Ctx(loop, counting, B.Backoff())
    got = []
    answer = lambda ok, err: got.append((ok, err))             # noqa: E731
    for _ in range(2):
        A.check_password(ctx, Asker(), "alice", b"wrong", answer, "192.0.2.7")
    assert got == [(False, None)] * 2 and counting.checks == 2
    assert ctx.log.lines == ["login back-off: 2 failed logins from 192.0.2.7 within 60s; its logins are refused "
                             "for 30s (penalty 1 in a row; auth failures, auth penalty)"]
    got.clear()
    A.check_password(ctx, Asker(), "alice", b"right", answer, "192.0.2.7")       # right, but refused at once
    A.check_password(ctx, Asker(), "mallory", b"x", answer, "192.0.2.7")
    assert counting.checks == 2
    (ok, err), (ok2, err2) = got
    assert ok is ok2 is False and isinstance(err, A.BackedOff) and isinstance(err2, A.BackedOff)
    assert err.text == ("too many failed logins from 192.0.2.7 (auth failures; refused for 30s more; "
                        "logged at most once every 60 seconds)")
    assert err2.text is None                                             # logged once per window
    got.clear()
    A.check_password(ctx, Asker(), "alice", b"right", answer, "192.0.2.8")       # another address
    A.check_password(ctx, Asker(), "alice", b"right", answer)                    # not counted at all
    assert got == [(True, None)] * 2 and counting.checks == 4


def test_a_success_is_recorded_and_the_back_off_can_be_off(loop, db):
    ctx = Ctx(loop, db, B.Backoff())
    got = []
    for _ in range(5):
        A.check_password(ctx, Asker(), "alice", b"right", lambda ok, err: got.append(ok), "192.0.2.7")
    assert got == [True] * 5 and ctx.log.lines == []
    ctx = Ctx(loop, db, B.Backoff(), failures=None)
    for _ in range(5):
        A.check_password(ctx, Asker(), "alice", b"wrong", lambda ok, err: got.append(ok), "192.0.2.7")
    assert got[5:] == [False] * 5 and ctx.log.lines == []


def test_a_check_that_raises_is_no_failure(loop):
    class Broken:
        def verify(self, user, password):
            raise OSError("disk")
    ctx = Ctx(loop, Broken(), B.Backoff())
    got = []
    for _ in range(4):
        A.check_password(ctx, Asker(), "alice", b"x", lambda ok, err: got.append((ok, type(err))), "192.0.2.7")
    assert got == [(None, OSError)] * 4 and ctx.log.lines == []


def test_a_check_the_pool_refuses_counts_for_nothing_in_the_back_off(loop, db):
    loop.executor = ex = PO.ThreadExecutor(loop, 1, 1, queued=1)
    gate = threading.Event()
    pool = ex.pools[PO.PASSWORDS]
    pool.submit(Asker(), gate.wait, (5,), lambda r, e: None)       # the one thread, held
    assert run_until(loop, lambda: pool.running)
    ctx = Ctx(loop, db, B.Backoff(), failures=(3, 60.0))
    got = []
    A.check_password(ctx, Asker(), "alice", b"wrong", lambda ok, err: got.append(ok), "192.0.2.9")   # queued
    busy = A.check_password(ctx, Asker(), "alice", b"wrong", lambda ok, err: got.append(ok), "192.0.2.9")
    assert isinstance(busy, PO.Refusal)
    gate.set()
    assert run_until(loop, lambda: got) and got == [False]
    # the refused check was neither a failure nor left "being checked": two
    # more failures, not one, start the penalty
    for n in (2, 3):
        A.check_password(ctx, Asker(), "alice", b"wrong", lambda ok, err: got.append(ok), "192.0.2.9")
        assert run_until(loop, lambda: len(got) == n)
        assert bool(ctx.log.lines) == (n == 3)
    ex.shutdown()

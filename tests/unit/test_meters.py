"""meters.py: the traffic table every process shares, and one session's
meter on it.  Real shared memory and a real fork where sharing is the
point; a fake clock elsewhere, so that rates are exact."""

import os
import signal
import time

import pytest

from sockd import config as C
from sockd import meters as M
from sockd import rules as R
from sockd import traffic as T


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def cfg_of(text):
    return C.parse_text(text + "\npermit tag=lab 0/0\n", "m.conf")


def meter_for(tt, text, ip="10.1.2.3", user=None, clock=None, method="username"):
    cfg = cfg_of(text)
    tc = M.TrafficControl(tt)
    plan = tc.plan(cfg, R.ip_key(ip), user, method, None)
    m = M.Meter(tt, plan, tc.periods(cfg), clock=clock or tt.clock)
    return m, cfg, tc, plan


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tt(clock):
    return M.TrafficTable(slots=64, clock=clock)


def test_two_sessions_of_one_key_share_its_bucket(tt, clock):
    a, *_ = meter_for(tt, "limit bandwidth user alice 100K burst 40K", user="alice", clock=clock)
    b, *_ = meter_for(tt, "limit bandwidth user alice 100K burst 40K", user="alice", clock=clock)
    least = T.least_take(100 << 10, 40 << 10)
    assert a.allowance(1) == 40 << 10                 # the whole burst, at most a chunk
    a.spent(1, 40 << 10)
    assert b.allowance(1) == 0 and b.paused[1]        # nothing left for the other
    assert b.due[1] == pytest.approx(clock.t + least / (100 << 10))
    clock.t += 0.2                                   # 20 KiB come in
    assert b.retry(1) and b.allowance(1) == 20 << 10
    assert a.allowance(0) == 40 << 10                 # the other direction has its own bucket
    assert not a.paused[0] and not b.paused[1]


def test_the_strictest_bucket_decides_and_is_named(tt, clock):
    m, *_ = meter_for(tt, "limit bandwidth address 10.0.0.0/8 1M\nlimit bandwidth user bob 64K burst 16K\n"
                          "limit bandwidth session 2M", user="bob", clock=clock)
    assert m.allowance(1) == 16 << 10
    m.spent(1, 16 << 10)
    assert m.allowance(1) == 0
    assert "down paused" in m.shaped() and "by user bob (65536 bytes/s, m.conf:2)" in m.shaped()
    assert m.allowance(0) == 16 << 10                  # up: the same user bucket, its own direction


def test_the_sessions_own_limit_is_its_alone(tt, clock):
    a, *_ = meter_for(tt, "limit bandwidth session 20K burst 10K", clock=clock)
    b, *_ = meter_for(tt, "limit bandwidth session 20K burst 10K", clock=clock)
    assert a.allowance(1) == 10 << 10 and b.allowance(1) == 10 << 10
    a.spent(1, 10 << 10)
    assert a.allowance(1) == 0 and "the session's limit" in a.shaped()


def test_an_unlimited_direction_counts_in_batches(tt, clock):
    m, cfg, tc, plan = meter_for(tt, "limit bandwidth user carol -/1M", user="carol", clock=clock)
    assert m.allowance(0) == M.UNLIMITED
    m.spent(0, 1000)
    assert tt.drain() == []                           # not counted yet: one batch is COUNT_EVERY
    m.spent(0, M.COUNT_EVERY)
    got = sorted(tt.drain())
    assert got == [("address 10.1.2.3", 1000 + M.COUNT_EVERY, 0), ("user carol", 1000 + M.COUNT_EVERY, 0)]
    m.spent(0, 5)
    m.close()                                         # the rest, at the end
    assert sorted(tt.drain()) == [("address 10.1.2.3", 5, 0), ("user carol", 5, 0)]
    assert tt.drain() == []


def test_unused_tokens_go_back_at_the_end(tt, clock):
    a, *_ = meter_for(tt, "limit bandwidth user dan 100K burst 64K", user="dan", clock=clock)
    assert a.allowance(1) == 64 << 10
    a.spent(1, 4 << 10)
    a.close()
    b, *_ = meter_for(tt, "limit bandwidth user dan 100K burst 64K", user="dan", clock=clock)
    assert b.allowance(1) == 60 << 10


def test_quota_use_refusal_and_cut(tt, clock):
    conf = "quota user erin 100K per day\nquota user erin 1M per month finish"
    m, cfg, tc, plan = meter_for(tt, conf, user="erin", clock=clock)
    assert tc.over_quota(plan, cfg) is None
    cut = []
    m.on_quota = lambda: cut.append(1)
    m.spent(1, 99 << 10)
    m.count()
    assert not cut and tc.over_quota(plan, cfg) is None
    m.spent(1, 2 << 10)
    m.count()
    assert cut == [1] and m.cut[0] == "user erin" and m.cut[1].line == 1
    assert m.allowance(1) == 0                        # a cut session reads no more
    q, key, used = tc.over_quota(plan, cfg)
    assert (q.line, key, used) == (1, "user erin", 101 << 10)
    # the master takes the pending bytes into the bases: the use stays what it was
    assert dict((k, u + d) for k, u, d in tt.drain())["user erin"] == 101 << 10
    assert tc.over_quota(plan, cfg)[2] == 101 << 10


def test_a_quota_over_finish_refuses_new_sessions_but_cuts_none(tt, clock):
    m, cfg, tc, plan = meter_for(tt, "quota address 10.0.0.0/8 each 10K per 24h finish", clock=clock)
    m.on_quota = lambda: pytest.fail("finish cuts nothing")
    m.spent(1, 20 << 10)
    m.count()
    assert m.cut is None and m.allowance(1) == M.UNLIMITED
    assert tc.over_quota(plan, cfg)[1] == "address 10.1.2.3"


def test_slots_are_reused_only_when_idle_flushed_and_without_counts(clock):
    tt = M.TrafficTable(slots=2, clock=clock)
    m1, *_ = meter_for(tt, "quota user u1 1G per day", user="u1", ip="10.0.0.1", clock=clock)
    m1.spent(0, 10)
    m1.close()
    # two keys (user, address) fill the table: a third finds no room
    tt.acquire()
    try:
        assert tt.find(M.key_bytes("user u2"), clock.t) < 0       # pending bytes, in use a moment ago
    finally:
        tt.release()
    tt.drain()
    clock.t += M.GRACE + 1
    tt.acquire()
    try:
        s = tt.find(M.key_bytes("user u2"), clock.t)           # the address: flushed, idle, no quota
        assert s >= 0 and tt.key_at(s) == "user u2"
        assert tt.find(M.key_bytes("user u3"), clock.t) < 0    # user u1 has a quota and a count today
    finally:
        tt.release()


def test_set_bases_keeps_quota_keys_at_hand_and_sub_bases_slides(tt, clock):
    cfg = cfg_of("quota user * 1G per day")
    assert tt.set_bases(0, {"user fay": 500, "address 10.9.9.9": 7},
                        keep=lambda k: bool(T.quotas_of_key(cfg.quota, k)))
    assert dict(tt.top()) == {"user fay": 500}        # the address has no quota: not put in
    tt.sub_bases(0, {"user fay": 200})
    assert dict(tt.top()) == {"user fay": 300}
    assert tt.forget("user fay") and tt.top() == []


def test_the_table_is_shared_with_a_forked_worker(tt, clock):
    a, *_ = meter_for(tt, "limit bandwidth user gil 100K burst 64K", user="gil", clock=clock)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            b, *_ = meter_for(tt, "limit bandwidth user gil 100K burst 64K", user="gil", clock=clock)
            b.spent(1, b.allowance(1))
            b.count()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert a.allowance(1) == 0                        # the child took the whole burst
    assert dict(tt.top()) == {"user gil": 64 << 10, "address 10.1.2.3": 64 << 10}
    assert {k: d for k, u, d in tt.drain()} == {"user gil": 64 << 10, "address 10.1.2.3": 64 << 10}


def test_a_process_killed_holding_the_lock_is_let_go_by_the_master(tt):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            tt.acquire()
            os.write(w, b"x")
            time.sleep(30)
        finally:
            os._exit(0)
    assert os.read(r, 1) == b"x"
    os.close(r)
    os.close(w)
    assert tt.holder() == pid and not tt.acquire(timeout=0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert tt.freed(pid)
    assert tt.acquire(timeout=1)
    tt.release()
    assert not tt.freed(pid)


def test_drain_gives_up_when_the_lock_is_held(tt, clock):
    m, *_ = meter_for(tt, "accounting record yes", clock=clock)
    m.spent(0, 3)
    m.count()
    tt.acquire()
    try:
        assert tt.drain(timeout=0.01) is None
    finally:
        tt.release()
    assert tt.drain() == [("address 10.1.2.3", 3, 0)]


def test_a_fast_limit_is_taken_in_bigger_bites(tt, clock):
    # a fiftieth of a second at the rate, at most traffic.MAX_CHUNK: a limit far above
    # what the session moves must not cost a lock per 64 KiB
    m, *_ = meter_for(tt, "limit bandwidth user alice 100M", user="alice", clock=clock)
    assert m.allowance(1) == (100 << 20) // 50
    fast, *_ = meter_for(tt, "limit bandwidth user bob 100G", user="bob", clock=clock)
    assert fast.allowance(1) == T.MAX_CHUNK
    slow, *_ = meter_for(tt, "limit bandwidth user carol 1M", user="carol", clock=clock)
    assert slow.allowance(1) == T.CHUNK


def test_take_size_bounds():
    assert T.take_size(1) == T.CHUNK
    assert T.take_size(1 << 40) == T.MAX_CHUNK
    sizes = [T.take_size(r) for r in range(0, 1 << 30, 1 << 22)]
    assert sizes == sorted(sizes)


# --- what the sessions of one client share: the plan and the meters' shape

def test_a_client_s_sessions_share_one_plan_per_configuration(tt):
    cfg = cfg_of("limit bandwidth address 10.0.0.0/8 each 1M\nquota user * 1G per day")
    tc = M.TrafficControl(tt)
    a = tc.plan(cfg, R.ip_key("10.1.2.3"), "alice", "username", None)
    assert tc.plan(cfg, R.ip_key("10.1.2.3"), "alice", "username", None) is a
    b = tc.plan(cfg, R.ip_key("10.1.2.4"), "alice", "username", None)
    c = tc.plan(cfg, R.ip_key("10.1.2.3"), "bob", "username", None)
    assert b is not a and c is not a
    assert [x.key for x in b.budgets] == ["address 10.1.2.4"] and c.quotas[0][0] == "user bob"
    # a new configuration (a reload's, a recheck's) plans afresh
    cfg2 = cfg_of("limit bandwidth address 10.0.0.0/8 each 2M")
    d = tc.plan(cfg2, R.ip_key("10.1.2.3"), "alice", "username", None)
    assert d is not a and d.budgets[0].rates == [2 << 20, 2 << 20]
    # no traffic control at all: None
    assert tc.plan(cfg_of(""), R.ip_key("10.1.2.3"), "alice", "username", None) is None


def test_the_plans_remembered_are_bounded(tt, monkeypatch):
    monkeypatch.setattr(M, "PLANS", 8)
    cfg = cfg_of("limit bandwidth address 10.0.0.0/8 each 1M")
    tc = M.TrafficControl(tt)
    for i in range(50):
        assert tc.plan(cfg, R.ip_key("10.0.0.%d" % i), None, "none", None).budgets[0].key == "address 10.0.0.%d" % i
        assert len(tc.plans) <= 8


def test_the_meters_of_one_plan_share_its_shape_not_their_state(tt, clock):
    text = "limit bandwidth address 10.0.0.0/8 1M\nlimit bandwidth session 64K\nquota address 10.0.0.0/8 1G per day"
    m1, cfg, tc, plan = meter_for(tt, text, clock=clock)
    m2 = M.Meter(tt, plan, tc.periods(cfg), clock=clock)
    assert m1.entries is m2.entries and m1.limited is m2.limited
    assert m1.local[0] is not m2.local[0] and m1.grant is not m2.grant
    assert m1.most == m2.most == [T.take_size(64 << 10)] * 2
    assert m1.allowance(1) > 0 and m2.grant == [0, 0]
    m1.spent(1, 1000)
    assert m2.uncounted == [0, 0]
    m1.close()
    m2.close()

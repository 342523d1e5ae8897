"""traffic.py, the pure parts of traffic control: the token bucket (property
tests: never more than the burst above the rate, and the rate in the long
run), the periods in local time, which lines apply to a session (the
plan), and the sockd.conf lines that say so."""

import os
import time

import pytest
from hypothesis import given, settings, strategies as st

from sockd import config as C
from sockd import rules as R
from sockd import traffic as T
from sockd.errors import ConfigError


# --- the token bucket --------------------------------------------------------------------

rates = st.integers(1, 50_000_000)
steps = st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 1 << 20)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(rate=rates, burst_k=st.integers(1, 4096), steps=steps)
def test_no_more_than_the_burst_above_the_rate(rate, burst_k, steps):
    """Over any stretch of time, a bucket gives at most its burst plus the
    rate times the stretch -- whoever asks, however often."""
    burst = burst_k * 1024
    b = T.TokenBucket(rate, burst, 0.0)
    now = 0.0
    grants = []
    for dt, want in steps:
        now += dt
        grants.append((now, b.take(now, want, T.least_take(rate, burst))))
    for i in range(len(grants)):
        total = 0
        for j in range(i, len(grants)):
            total += grants[j][1]
            assert total <= burst + rate * (grants[j][0] - grants[i][0]) + 1


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(1, 10_000_000), burst_k=st.integers(1, 4096), seconds=st.floats(1, 10))
def test_the_long_run_rate_is_the_limit(rate, burst_k, seconds):
    """A taker that comes back exactly when the bucket says (``due``) gets
    the rate: within a burst and one take of rate times the time."""
    burst = burst_k * 1024
    least = T.least_take(rate, burst)
    b = T.TokenBucket(rate, burst, 0.0)
    now, total = 0.0, 0
    while now < seconds:
        total += b.take(now, T.CHUNK, least)
        now += max(b.due(now, least), 1e-6)
    assert abs(total - rate * seconds) <= burst + least + 1


@given(tokens=st.floats(0, 1e9), stamp=st.floats(0, 1e6), dt=st.floats(-10, 1e6), rate=rates,
       burst=st.integers(1, 1 << 30))
def test_refill_never_overflows_and_never_runs_backwards(tokens, stamp, dt, rate, burst):
    t, s = T.refill(min(tokens, burst), stamp, stamp + dt, rate, burst)
    assert t <= burst
    assert s >= stamp
    if dt <= 0:
        assert t == min(tokens, burst)


def test_give_back_and_due():
    b = T.TokenBucket(1000, 2000, 0.0)
    assert b.take(0.0, 5000) == 2000
    assert b.take(0.0, 10, least=1) == 0
    assert b.due(0.0, 500) == pytest.approx(0.5)
    b.give(300)
    assert b.available(0.0) == 300
    b.give(10 ** 9)
    assert b.available(0.0) == 2000


def test_defaults_of_burst_and_least():
    assert T.default_burst(2 << 20) == (2 << 20) // 10
    assert T.default_burst(1000) == T.MIN_BURST
    assert T.least_take(2 << 20, 200_000) == T.CHUNK
    assert T.least_take(2 << 20, 100_000) == 50_000
    assert T.least_take(1000, T.MIN_BURST) == 50
    assert T.least_take(10, 1024) == 1


# --- periods, in the server's time zone ---------------------------------------------------

@pytest.fixture
def tz():
    old = os.environ.get("TZ")

    def use(name):
        os.environ["TZ"] = name
        time.tzset()
    yield use
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def local(*fields):
    return int(time.mktime(fields + (0, 0, -1)))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns"])
def test_calendar_periods_start_at_local_midnight(tz, zone):
    tz(zone)
    now = local(2024, 3, 14, 15, 47, 12)              # a Thursday
    assert T.period_start("day", now) == local(2024, 3, 14, 0, 0, 0)
    assert T.period_start("week", now) == local(2024, 3, 11, 0, 0, 0)    # Monday
    assert T.period_start("month", now) == local(2024, 3, 1, 0, 0, 0)
    assert T.slice_start(now) == local(2024, 3, 14, 15, 0, 0)
    # a week that began in the month before
    assert T.period_start("week", local(2024, 5, 2, 9, 0, 0)) == local(2024, 4, 29, 0, 0, 0)


def test_a_day_with_a_clock_change_is_23_hours_long(tz):
    tz("Europe/Berlin")
    start = T.period_start("day", local(2024, 3, 31, 12, 0, 0))       # clocks went forward at 02:00
    assert T.period_start("day", local(2024, 4, 1, 0, 30, 0)) - start == 23 * 3600


def test_rolling_windows_are_whole_local_hours(tz):
    tz("Asia/Kolkata")
    now = local(2024, 3, 14, 15, 47, 12)
    assert T.period_start("rolling 24", now) == local(2024, 3, 13, 16, 0, 0)
    assert T.period_start("rolling 1", now) == local(2024, 3, 14, 15, 0, 0)
    assert T.parse_period("7d") == "rolling 168"
    assert T.parse_period("36h") == "rolling 36"
    assert T.period_text("rolling 168") == "7d" and T.period_text("rolling 36") == "36h"
    for bad in ("year", "0h", "1.5h", "401d", "24"):
        with pytest.raises(ValueError):
            T.parse_period(bad)


def test_period_indexes_keep_what_is_known():
    q = [T.Quota("user", "a", False, 1, p, "cut") for p in ("month", "rolling 24", "day")]
    got = T.period_indexes(q)
    assert got == {"day": 0, "month": 1, "rolling 24": 2}
    q2 = [T.Quota("user", "a", False, 1, p, "cut") for p in ("week", "rolling 24")]
    assert T.period_indexes(q2, got) == {"day": 0, "month": 1, "rolling 24": 2, "week": 3}
    many = [T.Quota("user", "a", False, 1, "rolling %d" % h, "cut") for h in range(1, 9)]
    with pytest.raises(ValueError):
        T.period_indexes(many)
    # stale periods make room
    full = T.period_indexes(many[:7])
    again = T.period_indexes(many[7:], full)
    assert again["rolling 8"] in range(1, 8) and "day" in again


# --- the lines ------------------------------------------------------------------------------

def parse(text):
    return C.parse_text(text + "\npermit tag=lab 0/0\n", "t.conf")


def test_the_forms_the_acceptance_checks_use():
    cfg = parse("limit bandwidth address 10.1.0.0/16 50M\nlimit bandwidth user alice 2M\n"
                "quota address 10.1.0.0/16 20G per day\nquota user alice 500M per day")
    a, u = cfg.limit_bandwidth
    assert (a.kind, a.target, a.each, a.up, a.down) == ("address", "10.1.0.0/16", False, 50 << 20, 50 << 20)
    assert (u.kind, u.target, u.up, u.down, u.burst_up) == ("user", "alice", 2 << 20, 2 << 20, (2 << 20) // 10)
    qa, qu = cfg.quota
    assert (qa.kind, qa.target, qa.nbytes, qa.period, qa.mode) == ("address", "10.1.0.0/16", 20 << 30, "day", "cut")
    assert (qu.target, qu.nbytes, qu.where) == ("alice", 500 << 20, "t.conf:4")


def test_the_other_forms():
    cfg = parse("limit bandwidth session 1M/10M burst 64K\nlimit bandwidth address 10.0.0.0/8 each -/2M/s\n"
                "limit bandwidth user * 2M/s\nlimit bandwidth rule lab 5M burst 1M/2M\n"
                "limit bandwidth address 10.1.2.3/32 1.5M\n"
                "quota user * 1G per 24h finish\nquota rule lab 1T per month\nquota address ::1 each 1G per week")
    s, e, star, rule, host = cfg.limit_bandwidth
    assert (s.kind, s.target, s.up, s.down, s.burst_up, s.burst_down) == ("session", None, 1 << 20, 10 << 20,
                                                                         64 << 10, 64 << 10)
    assert (e.each, e.up, e.down) == (True, None, 2 << 20)
    assert (star.target, rule.burst_up, rule.burst_down) == ("*", 1 << 20, 2 << 20)
    assert (host.target, host.up) == ("10.1.2.3", int(1.5 * (1 << 20)))
    q1, q2, q3 = cfg.quota
    assert (q1.period, q1.mode, q2.nbytes, q3.target, q3.each) == ("rolling 24", "finish", 1 << 40, "::1", True)


@pytest.mark.parametrize("line,near", [
    ("limit bandwidth", "bandwidth"),
    ("limit bandwidth host a 1M", "host"),
    ("limit bandwidth user alice", "alice"),
    ("limit bandwidth user alice 2Q", "2Q"),
    ("limit bandwidth user alice -/-", "-/-"),
    ("limit bandwidth address 10.0.0.0/33 1M", "10.0.0.0/33"),
    ("limit bandwidth user alice 2M burst", "burst"),
    ("limit bandwidth user alice 2M burst 100", "100"),
    ("limit bandwidth user alice 2M fast", "fast"),
    ("limit bandwidth rule nosuch 2M", "nosuch"),
    ("quota user alice 1G", "1G"),
    ("quota user alice 1G per year", "year"),
    ("quota user alice lots per day", "lots"),
    ("quota session 1G per day", "session"),
    ("quota user alice 1G per day kill", "kill"),
])
def test_mistakes_name_the_line_and_token(line, near):
    with pytest.raises(ConfigError) as err:
        parse(line)
    (path, lineno, msg), = err.value.problems
    assert (path, lineno) == ("t.conf", 1) and "(near '%s')" % near in msg, msg


def test_tags_only_in_sockd_conf_rules():
    cfg = parse("")
    assert cfg.ruleset.rules[0].tag == "lab"
    with pytest.raises(Exception):
        C.parse_rule(["permit", "tag=lab", "0/0"], None)          # socks.conf's rules have no tags
    for bad in ("permit tag= 0/0", "permit tag=a tag=b 0/0", "permit tag=a/b 0/0"):
        with pytest.raises(ConfigError):
            C.parse_text(bad + "\n")


def test_on_and_off():
    assert not C.traffic_on(C.parse_text("permit 0/0\n"))
    assert C.traffic_on(C.parse_text("permit 0/0\nlimit bandwidth session 1M\n"))
    assert C.accounting_on(C.parse_text("permit 0/0\nlimit bandwidth session 1M\n"))
    assert not C.accounting_on(C.parse_text("permit 0/0\nlimit bandwidth session 1M\naccounting record no\n"))
    assert C.accounting_on(C.parse_text("permit 0/0\nquota user a 1G per day\naccounting record no\n"))
    assert C.traffic_on(C.parse_text("permit 0/0\naccounting record yes\n"))


# --- which lines apply: the plan -----------------------------------------------------------------

CONF = """limit bandwidth user alice 2M
limit bandwidth user * 4M
limit bandwidth address 10.1.0.0/16 50M
limit bandwidth address 10.0.0.0/8 each 1M/10M
limit bandwidth address 10.1.0.0/16 each 3M
limit bandwidth rule lab 5M
quota user alice 10G per day
quota user * 1G per 24h
quota address 10.1.0.0/16 20G per month
"""


def plan_of(ip, user=None, method=None, tag=None, record=True, conf=CONF):
    cfg = parse(conf)
    return T.plan(cfg.limit_bandwidth, cfg.quota, record, R.ip_key(ip), user, method, tag)


def budgets(p):
    return {b.key: tuple(b.rates) for b in p.budgets}


def test_every_key_that_applies_and_the_strictest_rate_of_each():
    p = plan_of("10.1.2.3", "bob", "username", "lab")
    assert budgets(p) == {"user bob": (4 << 20, 4 << 20), "address 10.1.0.0/16": (50 << 20, 50 << 20),
                          "address 10.1.2.3": (1 << 20, 3 << 20), "rule lab": (5 << 20, 5 << 20)}
    line = {b.key: b for b in p.budgets}["address 10.1.2.3"].lines
    assert (line[0].line, line[1].line) == (4, 5)               # up from the /8 line, down from the /16 one
    assert p.counted == ("user bob", "address 10.1.2.3", "address 10.1.0.0/16")
    assert [(k, q.line) for k, q in p.quotas] == [("user bob", 8), ("address 10.1.0.0/16", 9)]
    assert p.limited(0) and p.limited(1) and p.session is None


def test_a_user_line_overrides_star_and_a_principal_matches_its_short_name():
    p = plan_of("192.0.2.1", "alice@REALM", "gssapi")
    assert budgets(p) == {"user alice": (2 << 20, 2 << 20)}
    assert p.counted == ("user alice", "address 192.0.2.1")
    assert [(k, q.line) for k, q in p.quotas] == [("user alice", 7)]
    # not by its short name under another method: the * lines, by the whole name
    p = plan_of("192.0.2.1", "alice@REALM", "username")
    assert budgets(p) == {"user alice@REALM": (4 << 20, 4 << 20)}


def test_nothing_applies_nothing_planned():
    assert plan_of("192.0.2.1", record=False, conf="limit bandwidth user alice 1M\n") is None
    p = plan_of("192.0.2.1", record=True, conf="limit bandwidth user alice 1M\n")
    assert p.budgets == () and p.counted == ("address 192.0.2.1",)
    p = plan_of("2001:db8::1", "carol", conf="limit bandwidth session 1M\n", record=False)
    assert p.session.rates == [1 << 20, 1 << 20] and p.budgets == () and p.counted == ()


def test_quotas_of_a_key_as_the_master_sees_it():
    cfg = parse(CONF + "quota address 10.0.0.0/8 each 1G per day\n")
    lines = lambda key: [q.line for q in T.quotas_of_key(cfg.quota, key)]  # noqa: E731
    assert lines("user alice") == [7]
    assert lines("user zed") == [8]
    assert lines("address 10.1.0.0/16") == [9]
    assert lines("address 10.9.9.9") == [10]
    assert lines("address 192.0.2.1") == [] and lines("rule lab") == []


def test_long_keys_stay_apart():
    a = T.key_text("user", "x" * 300)
    b = T.key_text("user", "x" * 299 + "y")
    assert a != b and len(a.encode()) <= T.KEY_MAX and len(b.encode()) <= T.KEY_MAX
    assert T.key_text("user", "alice") == "user alice"

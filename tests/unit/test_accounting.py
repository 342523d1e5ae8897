"""accounting.py: the SQLite store and the master's accountant, on a real
file in a temporary directory, a real shared table and clocks of the
test's own (so that days turn and rolling windows move when the test
says)."""

import os
import sqlite3
import time

import pytest

from sockd import accounting as A
from sockd import config as C
from sockd import meters as M
from sockd import rules as R
from sockd import tools
from sockd import traffic as T


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def utc():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


NOON = 1710417600        # 2024-03-14 12:00 UTC, a Thursday


def setup(tmp_path, text, wall=NOON):
    cfg = C.parse_text("accounting database %s/acct.db\naccounting interval 1\n%s\npermit 0/0\n" % (
        tmp_path, text), "a.conf")
    wall, mono = Clock(wall), Clock(100.0)
    tt = M.TrafficTable(slots=256, clock=mono)
    acc = A.Accountant(tt, wall, mono)
    acc.prepare(cfg)
    return cfg, tt, acc, wall, mono


def traffic(tt, cfg, n, user="alice", ip="10.0.0.1", d=1):
    tc = M.TrafficControl(tt)
    plan = tc.plan(cfg, R.ip_key(ip), user, "username", None)
    m = tc.meter(plan, cfg)
    m.spent(d, n)
    m.close()
    return tc, plan


def rows(tmp_path):
    db = sqlite3.connect(str(tmp_path / "acct.db"))
    try:
        return sorted(db.execute("SELECT key, hour, up, down FROM usage").fetchall())
    finally:
        db.close()


def test_the_database_is_made_in_wal_mode_with_its_directory(tmp_path):
    path = tmp_path / "lib" / "sockd" / "acct.db"
    s = A.Store(str(path))
    assert (os.stat(path.parent).st_mode & 0o777) == 0o750 and (os.stat(path).st_mode & 0o777) == 0o640
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()
    with pytest.raises(A.StoreError):
        A.Store(str(tmp_path / "missing.db"), readonly=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(A.StoreError):
        A.Store(str(tmp_path / "file" / "acct.db"))


def test_a_flush_writes_one_row_per_key_and_hour_in_batches(tmp_path, utc):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 1M per day")
    traffic(tt, cfg, 1000)
    acc.tick()                      # not due yet
    assert rows(tmp_path) == []
    mono.t += 1
    acc.tick()
    assert rows(tmp_path) == [("address 10.0.0.1", NOON, 0, 1000), ("user alice", NOON, 0, 1000)]
    traffic(tt, cfg, 500, d=0)
    wall.t += 60
    mono.t += 1
    acc.tick()
    assert rows(tmp_path) == [("address 10.0.0.1", NOON, 500, 1000), ("user alice", NOON, 500, 1000)]


def test_a_new_day_counts_from_zero_and_a_restart_reads_the_counts_back(tmp_path, utc):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 2000 per day\nquota user alice 10000 per month")
    tc, plan = traffic(tt, cfg, 1500)
    acc.flush()
    assert tc.over_quota(plan, cfg) is None
    tc, plan = traffic(tt, cfg, 600)
    q, key, used = tc.over_quota(plan, cfg)
    assert (q.period, used) == ("day", 2100)
    acc.flush()
    assert tc.over_quota(plan, cfg)[2] == 2100           # written: the count is what it was
    acc.close()
    # a new master on the same file, the next day: the day is new, the month is not
    cfg2, tt2, acc2, wall2, mono2 = setup(tmp_path, "quota user alice 2000 per day\nquota user alice 2100 per month",
                                          wall=NOON + 86400)
    tc2 = M.TrafficControl(tt2)
    plan2 = tc2.plan(cfg2, R.ip_key("10.0.0.1"), "alice", "username", None)
    q, key, used = tc2.over_quota(plan2, cfg2)
    assert (q.period, used) == ("month", 2100)
    # and one on the day itself sees the day's count too
    acc2.close()
    cfg3, tt3, *_ = setup(tmp_path, "quota user alice 2000 per day")
    tc3 = M.TrafficControl(tt3)
    assert tc3.over_quota(tc3.plan(cfg3, R.ip_key("10.0.0.1"), "alice", "username", None), cfg3)[2] == 2100


def test_the_day_turns_while_the_master_runs(tmp_path, utc):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 1000 per day")
    tc, plan = traffic(tt, cfg, 1200)
    acc.flush()
    assert tc.over_quota(plan, cfg)
    wall.t = NOON + 12 * 3600 + 5          # just past midnight
    acc.flush()
    assert tc.over_quota(plan, cfg) is None
    traffic(tt, cfg, 300)
    acc.flush()
    assert dict(tt.top())["user alice"] == 300


def test_a_rolling_window_loses_the_hours_it_leaves_behind(tmp_path, utc):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 1000 per 2h")
    i = cfg.traffic_periods["rolling 2"]
    traffic(tt, cfg, 700)
    acc.flush()                            # hour 12:00
    wall.t += 3600
    traffic(tt, cfg, 200)
    acc.flush()                            # hour 13:00: the window is 12:00-14:00
    tc = M.TrafficControl(tt)
    plan = tc.plan(cfg, R.ip_key("10.0.0.1"), "alice", "username", None)
    s = tt.find(M.key_bytes("user alice"), 0, insert=False)
    assert tt.used(s)[1][i] == 900
    wall.t += 3600                          # 14:00: 12:00 has left the window
    acc.flush()
    assert tt.used(s)[1][i] == 200 and tc.over_quota(plan, cfg) is None


def test_a_write_that_fails_is_kept_and_written_later(tmp_path, utc, monkeypatch):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 1M per day")
    logged = []
    monkeypatch.setattr(A, "log", type("L", (), {"error": lambda self, m: logged.append(m),
                                                  "notice": lambda self, m: None, "info": lambda self, m: None})())
    other = sqlite3.connect(str(tmp_path / "acct.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")                 # the tool, say, holds the write lock
    traffic(tt, cfg, 1000)
    start = time.monotonic()
    acc.flush()
    assert time.monotonic() - start < 1.0            # the master's loop is held up BUSY at most
    assert logged and "the counts are kept and written later" in logged[0]
    other.execute("ROLLBACK")
    other.close()
    acc.flush()
    assert rows(tmp_path) == [("address 10.0.0.1", NOON, 0, 1000), ("user alice", NOON, 0, 1000)]


def test_a_reset_by_the_tool_reaches_the_running_master(tmp_path, utc):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 1000 per day")
    tc, plan = traffic(tt, cfg, 1500)
    acc.flush()
    assert tc.over_quota(plan, cfg)
    out = []
    assert tools.sockd_accounting(["-d", str(tmp_path / "acct.db"), "--reset", "user", "alice"],
                                  out=Out(out)) == 0
    assert "user alice: 1 hourly count deleted" in "".join(out)
    acc.flush()
    assert tc.over_quota(plan, cfg) is None and [r for r in rows(tmp_path) if r[0] == "user alice"] == []


class Out:
    def __init__(self, lines):
        self.lines = lines

    def write(self, s):
        self.lines.append(s)


def test_a_reload_with_new_periods_keeps_the_old_indexes(tmp_path, utc):
    cfg, tt, acc, wall, mono = setup(tmp_path, "quota user alice 1000 per month")
    traffic(tt, cfg, 800)
    acc.flush()
    month = cfg.traffic_periods["month"]
    new = C.parse_text("accounting database %s/acct.db\nquota user alice 1000 per week\n"
                       "quota user alice 5000 per month\npermit 0/0\n" % tmp_path, "b.conf")
    acc.prepare(new)
    assert new.traffic_periods["month"] == month and new.traffic_periods["week"] not in (0, month)
    s = tt.find(M.key_bytes("user alice"), 0, insert=False)
    bases = tt.used(s)[1]
    assert bases[month] == 800 and bases[new.traffic_periods["week"]] == 800


def test_the_tools_table_and_periods(tmp_path, utc):
    s = A.Store(str(tmp_path / "acct.db"))
    s.add([("user alice", 100, 2 << 20), ("address 10.0.0.1", 50, 60), ("rule lab", 1, 2)], NOON)
    s.add([("user alice", 1, 1)], NOON - 86400)
    s.close()
    out = []
    assert tools.sockd_accounting(["-d", str(tmp_path / "acct.db"), "-p", "2024-03-14"], out=Out(out)) == 0
    text = "".join(out).splitlines()
    assert text[1].split() == ["KIND", "NAME", "UP", "DOWN", "TOTAL"]
    assert text[2].split() == ["user", "alice", "100", "2.0M", "2.0M"]
    assert text[3].split()[:2] == ["address", "10.0.0.1"] and text[4].split()[:2] == ["rule", "lab"]
    out = []
    assert tools.sockd_accounting(["-d", str(tmp_path / "acct.db"), "-p", "2024-03-13..2024-03-14", "--csv",
                                   "-k", "user"], out=Out(out)) == 0
    assert "".join(out).splitlines() == ["kind,name,up,down,total,from,to",
                                         "user,alice,101,%d,%d,2024-03-13 00:00,2024-03-15 00:00" % (
                                             (2 << 20) + 1, (2 << 20) + 102)]
    assert tools.period_bounds("month", NOON)[:2] == (1709251200, None)
    assert tools.period_bounds("24h", NOON)[0] == NOON - 23 * 3600
    for bad in ("soon", "2024-13", "2024-03-14..2024-03-01"):
        with pytest.raises(ValueError):
            tools.period_bounds(bad, NOON)
    assert tools.key_of(["address", "10.1.2.0/24"]) == "address 10.1.2.0/24"
    assert tools.key_of(["address", "10.1.2.3/32"]) == "address 10.1.2.3"
    with pytest.raises(ValueError):
        tools.key_of(["person", "x"])

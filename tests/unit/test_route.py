"""The multi-homed route file: lines, first match wins, and every problem
on its line."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import route as RT
from sockd import rules as R

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def key(ip):
    return R.ip_key(ip)


def test_first_match_wins_per_family():
    table, problems = RT.parse("# out\n10.0.0.1 192.168.0.0 255.255.0.0\n10.0.0.2 0.0.0.0 0.0.0.0\n"
                               "2001:db8::1 ALL\n", "r")
    assert problems == []
    assert table.lookup(*key("192.168.3.4")).if_addr == "10.0.0.1"
    assert table.lookup(*key("8.8.8.8")).if_addr == "10.0.0.2"
    assert table.lookup(*key("2001:db8::9")).if_addr == "2001:db8::1"
    assert (table.lookup(*key("8.8.8.8")).file, table.lookup(*key("8.8.8.8")).line) == ("r", 3)


def test_names_and_zones():
    table, problems = RT.parse("10.0.0.1 .corp.example 0.0.0.0\n10.0.0.2 ALL\n", "r")
    assert problems == [] and table.uses_names
    assert table.lookup(*key("1.2.3.4"), names=("www.corp.example",)).if_addr == "10.0.0.1"
    assert table.lookup(*key("1.2.3.4"), names=("www.other.example",)).if_addr == "10.0.0.2"


def test_problems_name_their_lines():
    _table, problems = RT.parse("eth0 ALL\n10.0.0.1\n10.0.0.1 10.0.0.0\n10.0.0.1 10.0.0.0 255.0.0.0 extra\n" + "#" * 1100, "r")
    assert [(p[1], p[2]) for p in problems] == [
        (1, "if_addr must be an address of this host (near 'eth0')"), (2, "missing dst_addr and dst_mask"),
        (3, "missing dst_mask (near '10.0.0.0')"), (4, "unexpected text (near 'extra')"),
        (5, "line longer than 1024 characters")]


def test_unreadable_file():
    assert RT.load("/nonexistent/route") == (None, [(
        "/nonexistent/route", 0, "Unable to open routing file (/nonexistent/route): No such file or directory")])


@FAST
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["127.0.0.1", "10.0.0.0", "255.0.0.0", ".zone", "ALL", "0/0", "::1", "x", "#"]), max_size=5).map(" ".join)))
def test_route_parser(text):
    table, problems = RT.parse(text, "r")
    assert all(isinstance(p[1], int) for p in problems)
    for r in table.routes:
        table.lookup(4, 0x7F000001)

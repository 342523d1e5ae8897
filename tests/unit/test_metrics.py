"""metrics.py: the status pipe's report codec, the master's totals (never
backwards), and the text exposition format (pure)."""

import math
import re

from sockd import metrics as M


def test_bucket_is_the_first_bound_at_or_above():
    assert M.bucket(0) == 0
    assert M.bucket(0.001) == 0
    assert M.bucket(0.0011) == 1
    assert M.bucket(1.0) == M.BUCKETS.index(1.0)
    assert M.bucket(121) == len(M.BUCKETS)


def test_observe_reply_counts_the_bucket_and_the_sum_in_microseconds():
    c = {}
    M.observe_reply(c, 0.003)
    M.observe_reply(c, 0.003)
    assert c[(M.REPLY, M.bucket(0.003))] == 2
    assert c[(M.REPLY_SUM,)] == 6000


def test_report_adds_the_stats_and_the_live_sessions():
    stats = {"accepted": 7, "errors": 1, "bytes_in": 100, "bytes_out": 200, "refused": 2}
    r = M.report({(M.UDP, "relayed"): 3}, stats, (10, 20, 4, 1))
    assert r[(M.ACCEPTED,)] == 7 and r[(M.ERRORS,)] == 1
    assert r[(M.BYTES, "in")] == 110 and r[(M.BYTES, "out")] == 220
    assert r[(M.UDP, "relayed")] == 7 and r[(M.UDP, "dropped")] == 1


def roundtrip(pid, counts):
    out = {}
    for line in M.encode(pid, counts):
        assert line.endswith(b"\n") and len(line) <= M.LINE_MAX
        f = line.split()
        assert f[0] == b"M" and int(f[1]) == pid
        out.update(M.decode(f[2:]))
    return out


def test_encode_decode_roundtrip_with_awkward_labels():
    counts = {(M.SESSIONS, "connect", "connected"): 5, (M.RULE, "/etc/my sockd.conf:12"): 2,
              (M.RULE, "/a|b=c%d\nx:1"): 1, (M.REPLY, 3): 9, (M.REPLY_SUM,): 12345, (M.ACCEPTED,): 7}
    assert roundtrip(42, counts) == counts


def test_a_big_report_is_split_into_lines_shorter_than_pipe_buf():
    counts = {(M.RULE, "/etc/sockd/rules-of-a-rather-long-name.conf:%d" % i): i for i in range(1, 400)}
    lines = M.encode(7, counts)
    assert len(lines) > 1
    assert roundtrip(7, counts) == counts


def test_an_empty_report_is_one_line_and_a_key_too_long_is_left_out():
    assert M.encode(3, {}) == [b"M 3\n"]
    assert roundtrip(3, {(M.RULE, "x" * 2000 + ":1"): 1, (M.ACCEPTED,): 1}) == {(M.ACCEPTED,): 1}


def test_decode_skips_words_that_do_not_parse():
    assert M.decode([b"c=1", b"junk", b"e=x", b"h|q=3", b"b|in=5"]) == {(M.ACCEPTED,): 1, (M.BYTES, "in"): 5}


def test_totals_never_go_backwards_across_deaths_and_late_lines():
    t = M.Totals()
    t.update(100, {(M.ACCEPTED,): 3})
    t.update(200, {(M.ACCEPTED,): 2})
    assert t.snapshot()[(M.ACCEPTED,)] == 5
    # a stale (smaller) value from the same process changes nothing
    t.update(100, {(M.ACCEPTED,): 1})
    assert t.snapshot()[(M.ACCEPTED,)] == 5
    t.ended(100)                      # killed: its last report is kept
    assert t.snapshot()[(M.ACCEPTED,)] == 5
    t.update(100, {(M.ACCEPTED,): 1})  # the pid, reused by a new process
    assert t.snapshot()[(M.ACCEPTED,)] == 6
    t.ended(200)
    t.ended(100)
    t.ended(999)                      # never reported
    assert t.snapshot() == {(M.ACCEPTED,): 6}
    assert t.last == {}


def test_render_writes_help_type_and_escaped_labels():
    f = M.Family("x_total", "counter", "What\\ it counts.\nMore.")
    f.add((("rule", 'a"b\\c\nd'),), 3)
    f.add((), 1.5)
    text = M.render([f])
    assert text == ('# HELP x_total What\\\\ it counts.\\nMore.\n'
                    '# TYPE x_total counter\n'
                    'x_total{rule="a\\"b\\\\c\\nd"} 3\n'
                    'x_total 1.5\n')


def test_numbers_in_go_spellings():
    assert M.number(3) == "3"
    assert M.number(math.inf) == "+Inf" and M.number(-math.inf) == "-Inf" and M.number(math.nan) == "NaN"
    assert M.number(True) == "1"


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    f = M.histogram("h_seconds", "h", {0: 2, 3: 1, len(M.BUCKETS): 1, None: 2500000})
    by = {dict(labels).get("le"): v for suffix, labels, v in f.samples if suffix == "_bucket"}
    assert by["0.001"] == 2 and by["0.005"] == 2 and by["0.01"] == 3 and by["120"] == 3 and by["+Inf"] == 4
    assert by["1"] == 3                       # whole bounds as Go writes them
    rest = {suffix: v for suffix, labels, v in f.samples if suffix != "_bucket"}
    assert rest == {"_sum": 2.5, "_count": 4}


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


def test_families_make_a_well_formed_exposition_with_every_name():
    t = M.Totals()
    t.update(1, {(M.SESSIONS, "connect", "connected"): 5, (M.SESSIONS, "none", "closed"): 1,
                 (M.RULE, "/etc/sockd.conf:3"): 2, (M.REPLY, 0): 5, (M.REPLY_SUM,): 1000,
                 (M.ACCEPTED,): 6, (M.BYTES, "in"): 10, (M.AUTH, "username", "failed"): 1,
                 (M.LIMIT, "rate"): 1, (M.IDENT, "userid"): 1, (M.UDP, "dropped"): 4})
    server = {"counts": {"workers started": 2, "workers died": 1, "clients": 0, "reloads": 1,
                         "failed reloads": 0},
              "active": [("threads", "1", "2", 3)], "workers": 2, "generation": 2, "started": 1.7e9,
              "upstreams": [("socks5://10.0.0.1:1080", False, 2)], "refused": 1}
    text = M.render(M.families(t.snapshot(), server))
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        assert SAMPLE.match(line), line
    for name in ("sockd_sessions_total", "sockd_sessions_active", "sockd_bytes_total", "sockd_rule_hits_total",
                 "sockd_reply_seconds", "sockd_ident_total", "sockd_auth_total", "sockd_limit_refusals_total",
                 "sockd_udp_datagrams_total", "sockd_workers_started_total", "sockd_workers_died_total",
                 "sockd_reloads_total", "sockd_reloads_failed_total", "sockd_upstream_up"):
        assert name in names, name
    assert 'sockd_sessions_total{command="connect",outcome="connected"} 5\n' in text
    assert 'sockd_sessions_total{command="bind",outcome="timed_out"} 0\n' in text     # every pair, from 0
    assert 'sockd_sessions_total{command="none",outcome="closed"} 1\n' in text
    assert 'sockd_rule_hits_total{rule="/etc/sockd.conf:3"} 2\n' in text
    assert 'sockd_sessions_active{model="threads",worker="1",generation="2"} 3\n' in text
    assert 'sockd_upstream_up{upstream="socks5://10.0.0.1:1080"} 0\n' in text
    assert 'sockd_upstream_failures{upstream="socks5://10.0.0.1:1080"} 2\n' in text
    assert 'sockd_reply_seconds_count 5\n' in text and 'sockd_reply_seconds_sum 0.001\n' in text
    assert "sockd_workers_died_total 1\n" in text and "sockd_reloads_total 1\n" in text
    assert 'sockd_auth_total{method="username",outcome="failed"} 1\n' in text
    assert 'sockd_limit_refusals_total{limit="rate"} 1\n' in text
    assert 'sockd_udp_datagrams_total{outcome="dropped"} 4\n' in text
    assert text.endswith("\n")

"""Property tests: whatever text arrives, the parsers of the configuration,
route, password and socks.conf files give a result or their documented
error -- never another exception.  (The codecs' properties are in
test_protocol.py, test_proxyproto.py and test_ident.py.)"""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import config as C
from sockd import passwd as PW
from sockd import route as RT

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.sampled_from(["permit", "deny", "listen", "timeout", "connect", "idle", "?=I", "?=x", "*=a,b",
                         "*=/nonexistent", "0/0", "10.0.0.0", "255.0.0.0", "::1/128", "ALL", ".zone.example",
                         "eq", "neq", "lt", "telnet", "80", "99999", ":", "#", "workers", "3", "model", "fork",
                         "udp", "strict", "yes", "bind", "methods", "none", "username", "log", "facility",
                         "[::1]:1080", "127.0.0.1:0", "\t", "%u", "limit", "clients"])
lines = st.lists(st.lists(words, max_size=9).map(" ".join), max_size=12).map("\n".join)


@FAST
@given(st.one_of(lines, st.text(string.printable, max_size=400), st.text(max_size=200)))
def test_config_parser(text):
    try:
        cfg = C.parse_text(text, "p.conf")
    except C.ConfigError as exc:
        assert exc.problems and all(p[0] and isinstance(p[1], int) for p in exc.problems)
        return
    assert isinstance(cfg, C.Config)


@FAST
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["127.0.0.1", "10.0.0.0", "255.0.0.0", ".zone", "ALL", "0/0", "::1", "x", "#"]), max_size=5).map(" ".join)))
def test_route_parser(text):
    table, problems = RT.parse(text, "r")
    assert all(isinstance(p[1], int) for p in problems)
    for r in table.routes:
        table.lookup(4, 0x7F000001)


@FAST
@given(st.text(max_size=400))
def test_passwd_parser(text):
    entries, problems = PW.parse(text, "pw")
    assert all(v.startswith((b"$2y$", b"$2b$", b"$2a$")) for v in entries.values())


@FAST
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["sockd", "direct", "deny", "sockd@127.0.0.1:1080,h", "@=a,b", "*=u", "0/0", "10.0.0.0", "255.0.0.0",
     "eq", "80", ":", "#", "ALL", ".z", "::1/128"]), max_size=8).map(" ".join)))
def test_socks_conf_parser(text):
    from sockd.client import conf as SC
    try:
        SC.parse_text(text, "socks.conf")
    except C.ConfigError as exc:
        assert exc.problems

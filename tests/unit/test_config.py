"""The sockd.conf parser, pure: good files, and bad ones with every problem
named by its line.  (Reading files is test_configload's.)"""

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd import cache
from sockd import config as C


def problems(text):
    with pytest.raises(C.ConfigError) as e:
        C.parse_text(text, "bad.conf")
    return e.value.problems


def test_directives_and_defaults():
    cfg = C.parse_text("permit 0/0\n")
    assert cfg.listen == [("0.0.0.0", 1080)]            # the classic default
    assert (cfg.timeout_negotiate, cfg.timeout_connect, cfg.timeout_idle) == (30, 120, 7200)
    assert cfg.model == "threads" and cfg.log_facility == "daemon"
    cfg = C.parse_text("listen 127.0.0.1:1081\nlisten [::1]:1082\nlisten *:socks\nworkers 3\n"
                       "model fork\ntimeout negotiate 5\ntimeout connect 1m\ntimeout idle 2h\n"
                       "log facility local3\npermit 0/0\n")
    assert cfg.listen == [("127.0.0.1", 1081), ("::1", 1082), ("0.0.0.0", 1080)]
    assert (cfg.workers, cfg.model) == (3, "fork")
    assert (cfg.timeout_negotiate, cfg.timeout_connect, cfg.timeout_idle) == (5, 60, 7200)
    assert cfg.log_facility == "local3"


def test_classic_file_with_comments_and_tabs():
    text = ("# comment\n\n"
            "permit\t?=i\t*=ylee\t128.12.6.4\t255.255.255.255\t137.12.0.0 255.255.0.0 eq ftp # trailing\n"
            "deny 0.0.0.0 0.0.0.0 : echo '# kept in the command' %u\n")
    cfg = C.parse_text(text)
    r1, r2 = cfg.ruleset.rules
    assert (r1.line, r1.ident, r1.users, r1.port_op, r1.port) == (3, "i", ("ylee",), "eq", 21)
    assert r2.command == "echo '# kept in the command' %u"
    assert r2.line == 4


def test_keywords_are_case_insensitive_like_4_3():
    cfg = C.parse_text("PERMIT 10.0.0.0/8\nDeny 0/0\n")
    assert [r.action for r in cfg.ruleset.rules] == ["permit", "deny"]


def test_ipv6_colons_are_not_commands():
    cfg = C.parse_text("permit ::1/128 :: ::\npermit 2001:db8:: ffff:ffff:: : logger %a\n")
    r1, r2 = cfg.ruleset.rules
    assert r1.command is None and r1.dst.is_any
    assert r2.command == "logger %a"


def test_every_problem_is_reported_with_its_line():
    text = ("listen 127.0.0.1:99999\n"          # 1 bad port
            "permit 10.0.0.0\n"                 # 2 no mask
            "permit ?=x 0/0\n"                  # 3 bad ?=
            "permit 0/0 eq 80x\n"               # 4 bad port name
            "permit 0/0 about 80\n"             # 5 bad comparison
            "frobnicate yes\n"                  # 6 unknown directive
            "timeout forever 3\n"               # 7 unknown timeout
            "workers many\n"                    # 8 not a number
            "permit 0/0\n"                      # 9 fine
            "permit 300.1.1.1 255.0.0.0\n"      # 10 bad address
            "permit 0/0 eq 80 extra\n")         # 11 trailing
    got = problems(text)
    assert [p[1] for p in got] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    msgs = {p[1]: p[2] for p in got}
    assert "port number out of range (near '99999')" in msgs[1]
    assert "needs a mask" in msgs[2] and "near '10.0.0.0'" in msgs[2]
    assert "?=" in msgs[3] and "near '?=x'" in msgs[3]
    assert "invalid port number" in msgs[4] and "near '80x'" in msgs[4]
    assert "invalid comparison" in msgs[5] and "near 'about'" in msgs[5]
    assert "unknown directive" in msgs[6] and "near 'frobnicate'" in msgs[6]
    assert "unknown 'timeout' setting" in msgs[7]
    assert "not a number" in msgs[8]
    assert "near '300.1.1.1" in msgs[10]
    assert "near 'extra'" in msgs[11]
    assert all(p[0] == "bad.conf" for p in got)


def test_repeated_setting_and_long_line():
    got = problems("workers 2\nworkers 3\n" + "#" * 2000 + "\n")
    assert got[0][1] == 2 and "given twice (first on line 1)" in got[0][2]
    assert got[1][1] == 3 and "longer than 1023" in got[1][2]


def test_no_permit_line_warns():
    cfg = C.parse_text("deny 0/0\n", "x.conf")
    assert any("no permit line" in w[2] for w in cfg.warnings)


def test_non_printable_tokens_are_cleaned_in_messages():
    got = problems("perm\x1bit 0/0\n")
    assert "\x1b" not in got[0][2]


def test_directives_parse_and_refuse_mistakes():
    cfg = C.parse_text("user nobody\ngroup nogroup\nchroot /\npidfile /run/x.pid\ntimeout shutdown 2m\n"
                       "reload recheck yes\npermit 0/0\n")
    assert (cfg.user, cfg.group, cfg.chroot, cfg.pidfile, cfg.timeout_shutdown, cfg.reload_recheck) == \
        ("nobody", "nogroup", "/", "/run/x.pid", 120.0, True)
    with pytest.raises(C.ConfigError) as e:
        C.parse_text("chroot relative\npidfile x.pid\nreload recheck maybe\ntimeout shutdown soon\n")
    assert e.value.lines() == ["-:1: the chroot directory must be an absolute path (near 'relative')",
                               "-:2: the pid file must be an absolute path (near 'x.pid')",
                               "-:3: expected yes or no (near 'maybe')",
                               "-:4: not a duration (seconds, or a number with s, m, h or d) (near 'soon')"]


def test_the_parse_reads_nothing_and_asks_the_system_nothing():
    text = ("user no-such-user-xyz\ngroup no-such-group-xyz\nchroot /no/such/../dir\n"
            "methods username\npasswd /nonexistent/users\nroute /nonexistent/route\n"
            "permit *=/nonexistent/staff 0/0\n")
    with cache.Recording() as files:
        cfg = C.parse_text(text, "x.conf")
    assert files == []
    assert (cfg.user, cfg.group, cfg.chroot) == ("no-such-user-xyz", "no-such-group-xyz", "/no/such/../dir")
    assert cfg.passwd_db is None and cfg.route_table is None and cfg.own_addresses == frozenset()
    assert cfg.ruleset.userfiles == {} and cfg.warnings == []
    assert [u for u, _rule in C.userfiles_named(cfg)] == ["/nonexistent/staff"]


def test_the_line_of_every_setting_is_kept():
    cfg = C.parse_text("# c\nworkers 2\n\nlisten 127.0.0.1:1\nlisten 127.0.0.1:2\nuser nobody\npermit 0/0\n")
    assert cfg.line_of == {"workers": 2, "listen": 4, "user": 6}
    assert cfg.explicit == {"workers", "listen", "user"}


def test_methods_username_needs_a_passwd_line():
    with pytest.raises(C.ConfigError) as e:
        C.parse_text("\nmethods username none\npermit 0/0\n", "x.conf")
    assert e.value.lines() == ["x.conf:2: 'methods username' needs a 'passwd FILE' line"]
    with pytest.raises(C.ConfigError) as e:
        C.parse_text("methods username kerberos\n", "x.conf")
    assert "near 'kerberos'" in e.value.problems[0][2]


def test_open_proxy_warning():
    cfg = C.parse_text("listen 0.0.0.0:1080\npermit 0/0\npermit *=fred 0/0\n", "x.conf")
    assert cfg.warnings == [("x.conf", 2, "this line permits any client on 0.0.0.0:1080: an open proxy "
                             "(anyone who can reach the port can use it)")]
    assert C.parse_text("listen 127.0.0.1:1080\npermit 0/0\n").warnings == []


def test_userfile_names():
    assert C.parse_userfile("alice, bob # the admins\ncarol\tdave,,\n# all\n") == \
        frozenset({"alice", "bob", "carol", "dave"})


# --- properties -------------------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.sampled_from(["permit", "deny", "listen", "timeout", "connect", "idle", "?=I", "?=x", "*=a,b",
                         "*=/nonexistent", "0/0", "10.0.0.0", "255.0.0.0", "::1/128", "ALL", ".zone.example",
                         "eq", "neq", "lt", "telnet", "80", "99999", ":", "#", "workers", "3", "model", "fork",
                         "udp", "strict", "yes", "bind", "methods", "none", "username", "log", "facility",
                         "[::1]:1080", "127.0.0.1:0", "\t", "%u", "limit", "clients", "user", "group", "chroot",
                         "passwd", "route", "/x", "nan", "rate", "5/10", "proxy-protocol", "\x00"])
lines = st.lists(st.lists(words, max_size=9).map(" ".join), max_size=12).map("\n".join)


@FAST
@given(st.one_of(lines, st.text(string.printable, max_size=400), st.text(max_size=200)))
def test_config_parser(text):
    """Any text: a Config, or ConfigError naming a file and line -- and no I/O."""
    try:
        with cache.Recording() as files:
            cfg = C.parse_text(text, "p.conf")
    except C.ConfigError as exc:
        assert exc.problems and all(p[0] == "p.conf" and isinstance(p[1], int) for p in exc.problems)
        assert [p[1] for p in exc.problems] == sorted(p[1] for p in exc.problems)
        return
    finally:
        assert files == []
    assert isinstance(cfg, C.Config)
    assert set(cfg.line_of) == cfg.explicit


def test_the_login_back_off_directives():
    cfg = C.parse_text("permit 0/0\n")
    assert (cfg.auth_failures, cfg.auth_penalty, cfg.auth_penalty_max) == ((10, 60.0), 60.0, 600.0)
    cfg = C.parse_text("auth failures 3/10\nauth penalty 1m\nauth penalty-max 1m\npermit 0/0\n")
    assert (cfg.auth_failures, cfg.auth_penalty, cfg.auth_penalty_max) == ((3, 10.0), 60.0, 60.0)
    assert C.parse_text("auth failures off\nauth penalty 0\npermit 0/0\n").auth_failures is None
    assert problems("auth failures 10\npermit 0/0\n") == [
        ("bad.conf", 1, "expected N/SECONDS or off (expected N/SECONDS) (near '10')")]
    assert problems("auth penalty 0\npermit 0/0\n") == [
        ("bad.conf", 1, "'auth penalty' must be longer than 0 (to turn the back-off off: 'auth failures off')")]
    assert problems("auth penalty 2m\nauth penalty-max 60\npermit 0/0\n") == [
        ("bad.conf", 2, "'auth penalty-max' (60s) is shorter than 'auth penalty' (120s)")]
    assert problems("auth backoff 1\npermit 0/0\n") == [
        ("bad.conf", 1, "unknown 'auth' setting; expected one of: failures, penalty, penalty-max (near 'backoff')")]


# --- each address field of a file parsed once ---------------------------------------------------

FIELDS = ["10.0.0.0 255.0.0.0", "10.0.0.0/8", "127.0.0.1 255.255.255.255", "0/0", "ALL", "ALL 0.0.0.0",
          "host.example", "host.example 255.255.255.255", ".zone.example", "::1/128", "fe80:: ffff::",
          "0.0.0.0 0.0.0.0"]
PORTS = ["", " eq 80", " lt 1024", " neq 25"]


def spec_fields(spec):
    return None if spec is None else (spec.kind, spec.family, spec.addr, spec.mask, spec.name, spec.text)


def rule_fields(rule):
    return (rule.action, spec_fields(rule.src), spec_fields(rule.dst), rule.port_op, rule.port, rule.text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["permit", "deny"]), st.sampled_from(FIELDS),
                          st.one_of(st.none(), st.sampled_from(FIELDS)), st.sampled_from(PORTS)),
                min_size=1, max_size=30))
def test_a_file_read_with_its_fields_remembered_gives_the_rules_each_line_gives_alone(lines):
    text = "".join("%s %s%s%s\n" % (a, src, "" if dst is None else " " + dst, port) for a, src, dst, port in lines)
    cfg, problems = C.read_lines(text, "f.conf")
    alone = []
    for line in text.splitlines():
        try:
            alone.append(rule_fields(C.parse_rule(line.split(), None, "f.conf", 0, line, tags=True)))
        except C.Bad:
            alone.append(None)
    if problems:
        assert None in alone
        return
    assert [rule_fields(r) for r in cfg.ruleset.rules] == alone


def test_lines_that_share_a_field_share_its_spec():
    cfg, problems = C.read_lines("permit 10.0.0.0 255.0.0.0 1.2.3.4 255.255.255.255\n"
                                 "deny 10.0.0.0 255.0.0.0 0/0 eq 25\n", "f.conf")
    assert not problems
    a, b = cfg.ruleset.rules
    assert a.src is b.src


# the shortcut for fields seen before (known_fields) reads what the general reading does
SHORT_FIELDS = FIELDS + ["10.0.0.0 255.0.0.0.1", "10.0.0.0", "10.0.0.0/33", "0/0 0.0.0.0", "eq", "about",
                         "10.1.0.0\t255.255.0.0"]
SHORT_PORTS = PORTS + [" eq", " eq 99999", " eq 80 x", " about 80", " eq nosuchservice", " eq 0x50", " ge 65535",
                       " eq http"]


def outcome(line, specs):
    try:
        return rule_fields(C.parse_rule(line.split(), None, "f.conf", 0, line, tags=True, specs=specs))
    except C.Bad as exc:
        return str(exc), exc.token


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["permit", "deny"]), st.sampled_from(["", "?=i ", "tag=x "]),
                          st.sampled_from(SHORT_FIELDS), st.one_of(st.none(), st.sampled_from(SHORT_FIELDS)),
                          st.sampled_from(SHORT_PORTS)),
                min_size=1, max_size=40))
def test_fields_seen_before_are_read_as_the_first_time_errors_included(lines):
    specs = {}
    for a, pre, src, dst, port in lines:
        line = "%s %s%s%s%s" % (a, pre, src, "" if dst is None else " " + dst, port)
        assert outcome(line, specs) == outcome(line, None), line


def test_hook_lines_and_tabs_read_as_before():
    cfg, problems = C.read_lines("#NO_IDENTD: echo a\n#BAD_ID:\n#BAD_ID: echo b\n#NO_IDENTD: echo c\n"
                                 "permit\t10.0.0.0\t255.0.0.0  \t0/0\teq\t80\n", "f.conf")
    assert not problems
    rs = cfg.ruleset
    assert rs.no_identd == ("f.conf", 1, "echo a") and rs.bad_id == ("f.conf", 3, "echo b")
    (r,) = rs.rules
    assert (r.src.text, r.dst.text, r.port_op, r.port, r.text) == ("10.0.0.0 255.0.0.0", "0/0", "eq", 80,
                                                                    "permit 10.0.0.0 255.0.0.0 0/0 eq 80")

"""The sockd.conf parser: good files, and bad ones with every problem named
by its line."""

import os

import pytest

from sockd import config as C

ETC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "etc", "sockd.conf")


def problems(text):
    with pytest.raises(C.ConfigError) as e:
        C.parse_text(text, "bad.conf")
    return e.value.problems


def test_shipped_default_parses():
    cfg = C.load(ETC)
    assert cfg.listen == [("127.0.0.1", 1080)]
    assert cfg.ruleset.has_permit
    assert not cfg.warnings


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


def test_unreadable_file():
    with pytest.raises(C.ConfigError) as e:
        C.load("/nonexistent/sockd.conf")
    assert e.value.lines()[0].startswith("/nonexistent/sockd.conf:0: cannot read")


def test_non_printable_tokens_are_cleaned_in_messages():
    got = problems("perm\x1bit 0/0\n")
    assert "\x1b" not in got[0][2]

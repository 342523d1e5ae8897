"""The command line: flags built from the settings table and checked by
their converters, usage errors with status 2, -V and --version."""

import os

import pytest

from sockd import cli
from sockd import settings as S

ETC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "etc", "sockd.conf")


def action(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_setting_flags_come_from_the_table():
    p = cli.build_parser()
    for s in S.SETTINGS:
        if not s.cli:
            continue
        a = action(p, s.cli)
        assert a.dest == s.attr and a.metavar == s.args
        assert a.help.startswith(s.doc) and "'%s'" % s.key in a.help


def test_setting_flags_are_checked_by_their_converters():
    p = cli.build_parser()
    args = p.parse_args(["-N", "3", "-m", "FORK", "-p", "rel.pid"])
    assert (args.workers, args.model, args.pidfile) == (3, "fork", os.path.join(os.getcwd(), "rel.pid"))
    args = p.parse_args(["-p", "/run/x.pid"])
    assert (args.workers, args.model, args.pidfile) == (None, None, "/run/x.pid")
    assert p.parse_args(["-p", ""]).pidfile is None          # an init script's empty $PIDFILE


@pytest.mark.parametrize("argv,message", [
    (["-N", "300"], "argument -N: out of range 0-256 (near '300')"),
    (["-N", "many"], "argument -N: not a number (near 'many')"),
    (["-m", "bogus"], "argument -m: expected one of: fork, threads (near 'bogus')"),
    (["-i", "-I"], "not allowed with argument"),
    (["-q"], "unrecognized arguments: -q"),
])
def test_usage_errors_exit_2_with_the_usage(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sockd ") and message in err and "Traceback" not in err


def test_foreground_and_detach_contradict(capsys):
    assert cli.main(["-F", "-D"]) == 2
    assert "-F and -D contradict each other" in capsys.readouterr().err


def test_version(capsys):
    for flag in ("-ver", "--version"):
        assert cli.main([flag]) == 0
        assert capsys.readouterr().out.startswith("sockd %s: SOCKS 4, 4A and 5" % cli.__version__)


def test_verify_good_file(capsys):
    assert cli.main(["-V", "-f", ETC]) == 0
    out, err = capsys.readouterr()
    assert out == "%s: OK, 3 rules, listening on 127.0.0.1:1080\n" % ETC and err == ""


def test_verify_lists_problems_and_warnings(tmp_path, capsys):
    bad = tmp_path / "bad.conf"
    bad.write_text("listen [::1]:1\nworkers many\npermit 10.0.0.0\n")
    assert cli.main(["-V", "-f", str(bad)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "%s:2: not a number (near 'many')" % bad,
        "%s:3: source address needs a mask (or write it as ADDRESS/PREFIX) (near '10.0.0.0')" % bad,
        "sockd: %s: 2 problems" % bad]
    warn = tmp_path / "warn.conf"
    warn.write_text("listen [::1]:1\ndeny 0/0\n")
    assert cli.main(["-V", "-f", str(warn)]) == 0
    out, err = capsys.readouterr()
    assert out == "%s: OK, 1 rule, listening on [::1]:1\n" % warn
    assert err == "%s:0: warning: no permit line: every request will be refused\n" % warn


@pytest.mark.parametrize("foreground", [False, True])
def test_a_broken_file_stops_the_start_with_its_lines(tmp_path, capsys, monkeypatch, foreground):
    from sockd.log import log
    logged = []
    monkeypatch.setattr(log, "error", logged.append)
    monkeypatch.setattr(log, "stderr", False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    bad = tmp_path / "bad.conf"
    bad.write_text("workers many\nuser no-such-user-xyz\n")
    argv = ["-f", str(bad)] + (["-F"] if foreground else ["-D"])
    assert cli.main(argv) == 1
    want = ["%s:1: not a number (near 'many')" % bad, "%s:2: unknown user (near 'no-such-user-xyz')" % bad]
    assert logged == want
    # -F copies every log line to stderr itself; otherwise the lines are printed there too
    assert capsys.readouterr().err == ("" if foreground else "".join(w + "\n" for w in want))

"""test_sockd_conf on the classic package's golden example, and its
usage errors (status 255)."""

import pytest

from sockd import configload
from sockd import decision as D
from sockd import ident as I
from sockd import rules as R
from sockd import tools
from sockd import validators as V

GOLDEN = """\
deny *=bonnie,clyde 128.12.6.0 255.255.255.0 : mail 'Rejected SOCKS access by %u'
permit *=ylee 128.12.6.4 255.255.255.255 137.12.0.0 255.255.0.0
deny 128.12.0.0 255.255.0.0 eq telnet
permit 128.12.0.0 255.255.0.0
#NO_IDENTD: mail -s 'please run identd on %A' root
#BAD_ID: mail -s '%U pretends to be %u on %A' root
"""


@pytest.fixture
def golden(tmp_path):
    p = tmp_path / "sockd.conf"
    p.write_text(GOLDEN)
    return str(p)


@pytest.mark.parametrize("args,status,last", [
    (["clyde", "128.12.6.34", "10.0.0.1", "ftp"], 0, "Shell command: mail 'Rejected SOCKS access by clyde'"),
    (["ylee", "128.12.6.4", "137.12.1.1", "telnet"], 1, "*** Permitted by line 2."),
    (["jane", "128.12.2.13", "10.0.0.1", "telnet"], 0, "*** Denied by line 3."),
    (["sam", "128.12.2.13", "10.0.0.1", "70"], 1, "*** Permitted by line 4."),
    (["don", "23.2.6.127", "10.0.0.1", "70"], 0, "*** No match with any line. Access denied."),
    (["-I", "sam", "128.12.2.13", "10.0.0.1", "70"], 0, "Access denied: cannot verify user-id (reply 92)."),
    (["-B", "joe", "128.12.6.4", "10.0.0.1", "70"], 0,
     "Access denied: user-id does not agree with the one reported by identd (reply 93)."),
    (["-i", "sam", "128.12.2.13", "10.0.0.1", "70"], 1, "*** Permitted by line 4."),
])
def test_test_sockd_conf_golden(golden, capsys, args, status, last):
    assert tools.test_sockd_conf(["-C", golden] + args) == status
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("USER:%s, SRC:" % args[-4])
    assert out[-1] == last


def test_test_sockd_conf_special_lines(golden, capsys):
    tools.test_sockd_conf(["-C", golden, "-I", "sam", "128.12.2.13", "10.0.0.1", "70"])
    out = capsys.readouterr().out
    assert "Line 4: permit 128.12.0.0 255.255.0.0\n" in out
    assert "Line 5: #NO_IDENTD: mail -s 'please run identd on 128.12.2.13' root" in out
    tools.test_sockd_conf(["-C", golden, "-B", "joe", "128.12.6.4", "10.0.0.1", "70"])
    assert "#BAD_ID: mail -s 'unknown pretends to be joe on 128.12.6.4' root" in capsys.readouterr().out


@pytest.mark.parametrize("head,noted", [("methods username\n", True), ("methods none username\n", False),
                                        ("methods username\nsocks4 trust-userid yes\n", False)])
def test_test_sockd_conf_notes_that_socks4_needs_a_password(tmp_path, capsys, head, noted):
    users = tmp_path / "users"
    users.write_text("")
    conf = tmp_path / "sockd.conf"
    conf.write_text(head + "passwd %s\n" % users + GOLDEN)
    assert tools.test_sockd_conf(["-C", str(conf), "sam", "128.12.2.13", "10.0.0.1", "70"]) == 1
    out = capsys.readouterr().out.splitlines()
    note = ("Note: SOCKS 4 and 4A clients are refused before these lines (methods username, socks4 trust-userid "
            "no); a SOCKS 5 client must log in as sam.")
    assert (out[1] == note) is noted and out[-1] == "*** Permitted by line %d." % (4 + head.count("\n") + 1)


def test_test_sockd_conf_usage_errors(golden, tmp_path, capsys):
    assert tools.test_sockd_conf(["-C", golden, "u", "1.2.3.4"]) == 255
    bad = tmp_path / "bad.conf"
    bad.write_text("permit 10.0.0.0\n")
    assert tools.test_sockd_conf(["-C", str(bad), "u", "1.2.3.4", "5.6.7.8", "80"]) == 255
    assert "bad.conf:1:" in capsys.readouterr().err


def test_test_sockd_conf_bad_port(golden, capsys):
    assert tools.test_sockd_conf(["-C", golden, "u", "1.2.3.4", "5.6.7.8", "nosuchservice"]) == 255
    assert capsys.readouterr().err == "test_sockd_conf: nosuchservice: unknown service name\n"


# --- sockd-passwd -----------------------------------------------------------------------------

def passwd(monkeypatch, argv, password="secret\n"):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(password))
    return tools.sockd_passwd(argv)


def test_sockd_passwd_create_change_delete(tmp_path, monkeypatch, capsys):
    from sockd import passwd as PW
    f = str(tmp_path / "users")
    assert passwd(monkeypatch, ["-i", "-C", "4", f, "alice"]) == 1          # no file, no -c
    assert "does not exist (use -c to create it)" in capsys.readouterr().err
    assert passwd(monkeypatch, ["-c", "-i", "-C", "4", f, "alice"]) == 0
    assert passwd(monkeypatch, ["-i", "-C", "4", f, "bob"], "other\n") == 0
    db = PW.PasswdFile.load(f)
    assert db.verify("alice", b"secret") and db.verify("bob", b"other")
    assert passwd(monkeypatch, ["-i", "-C", "4", f, "alice"], "changed\n") == 0
    assert PW.PasswdFile.load(f).verify("alice", b"changed")
    assert passwd(monkeypatch, ["-D", f, "alice"]) == 0
    assert set(PW.PasswdFile.load(f).entries) == {"bob"}
    assert passwd(monkeypatch, ["-D", f, "alice"]) == 1
    assert "no user alice in" in capsys.readouterr().err


@pytest.mark.parametrize("argv,password,status,message", [
    (["-i", "-C", "3", "F", "alice"], "x\n", 2, "-C: cost must be 4 to 17"),
    (["-c", "-i", "F", "bad:name"], "x\n", 2, "bad user name"),
    (["-c", "-i", "F", "alice"], "\n", 1, "empty password refused"),
    (["-c", "-i", "F", "alice"], "x" * 73 + "\n", 1, "at most 72 bytes"),
    (["F"], "", 2, "usage: sockd-passwd"),
])
def test_sockd_passwd_mistakes(tmp_path, monkeypatch, capsys, argv, password, status, message):
    argv = [str(tmp_path / "users") if a == "F" else a for a in argv]
    assert passwd(monkeypatch, argv, password) == status
    assert message in capsys.readouterr().err


# --- the same decision as sockd -------------------------------------------------------------

def test_the_private_destination_guard_is_shown_as_sockd_applies_it(tmp_path, capsys):
    conf = tmp_path / "guard.conf"
    conf.write_text("deny-private-destinations yes\npermit 0/0\n")
    assert tools.test_sockd_conf(["-C", str(conf), "joe", "10.1.1.1", "127.0.0.1", "80"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "*** Denied: 127.0.0.1 is private to this host (deny-private-destinations)."
    conf.write_text("deny-private-destinations yes\npermit 0/0 127.0.0.0/8\n")
    assert tools.test_sockd_conf(["-C", str(conf), "joe", "10.1.1.1", "127.0.0.1", "80"]) == 1


@pytest.mark.parametrize("args", [
    ["clyde", "128.12.6.34", "10.0.0.1", "ftp"], ["ylee", "128.12.6.4", "137.12.1.1", "telnet"],
    ["sam", "128.12.2.13", "10.0.0.1", "70"], ["-I", "sam", "128.12.2.13", "10.0.0.1", "70"],
    ["-B", "joe", "128.12.6.4", "10.0.0.1", "70"], ["-i", "sam", "128.12.2.13", "10.0.0.1", "70"]])
def test_its_status_is_decision_decides(golden, capsys, args):
    cfg = configload.load(golden)
    flags = [a for a in args if a.startswith("-")]
    user, src, dst, port = [a for a in args if not a.startswith("-")]
    mode = "I" if "-I" in flags else "i" if ("-i" in flags or "-B" in flags) else None
    ident = (I.USERID, "other") if "-B" in flags else (I.UNREACHABLE, "x") if mode else (I.USERID, user)
    v = D.decide(D.Ask(R.ip_key(src), [dst], V.to_port(port), user=user, ident=ident, ident_default=mode), cfg)
    assert tools.test_sockd_conf(flags + ["-C", golden, user, src, dst, port]) == (1 if v.allowed else 0)


def test_test_sockd_conf_judges_method_lines_with_M(tmp_path, capsys):
    conf = tmp_path / "sockd.conf"
    conf.write_text("permit method=gssapi *=alice 0/0\ndeny 0/0\n")
    args = ["-C", str(conf), "alice@SOCKS.TEST", "10.1.1.1", "10.0.0.1", "80"]
    assert tools.test_sockd_conf(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "*** Denied by line 2."
    assert tools.test_sockd_conf(["-M", "gssapi"] + args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "USER:alice@SOCKS.TEST, SRC:10.1.1.1, DST:10.0.0.1, PORT:80, METHOD:gssapi"
    assert out[-1] == "*** Permitted by line 1."
    assert tools.test_sockd_conf(["-M", "username"] + args) == 0
    capsys.readouterr()
    assert tools.test_sockd_conf(["-M", "kerberos"] + args) == 255

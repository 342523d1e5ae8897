"""Pure parts of 'who is asking': the password file, and test_sockd_conf on
the golden example.  (RFC 1413 is in test_ident.py, % expansion in
test_shell.py.)"""

import pytest

from sockd import config as C
from sockd import passwd as PW
from sockd import tools

# --- passwd ----------------------------------------------------------------------------------

def test_passwd_accepts_only_bcrypt():
    h = PW.make_hash(b"pw", 4)
    text = ("# users\nalice:%s\nbob:%s\ncarol:$apr1$abc$def\ndave:plain\neve:{SHA}xyz\n"
            "frank:$6$salt$hash\nnocolon\n" % (h, h.replace("$2b$", "$2y$")))
    entries, problems = PW.parse(text, "users")
    assert set(entries) == {"alice", "bob"}
    assert [(p[1], p[2].split(" ")[0]) for p in problems] == [
        (4, "MD5"), (5, "crypt"), (6, "SHA"), (7, "SHA"), (8, "expected")]
    assert all(p[0] == "users" for p in problems)


def test_passwd_verify_and_reload(tmp_path):
    f = tmp_path / "users"
    f.write_text("alice:%s\n" % PW.make_hash(b"right", 4))
    db = PW.PasswdFile.load(str(f))
    assert db.verify("alice", b"right")
    assert not db.verify("alice", b"wrong")
    assert not db.verify("mallory", b"right")
    f.write_text("alice:%s\nbob:%s\n" % (PW.make_hash(b"new", 4), PW.make_hash(b"b", 4)))
    assert db.verify("alice", b"new") and db.verify("bob", b"b")
    f.write_text("alice:plaintext\n")          # broken: the old entries stay
    assert db.verify("alice", b"new")


def test_methods_username_needs_a_passwd_file(tmp_path):
    with pytest.raises(C.ConfigError) as e:
        C.parse_text("methods username none\npermit 0/0\n", "x.conf")
    assert e.value.problems[0][:2] == ("x.conf", 1)
    bad = tmp_path / "users"
    bad.write_text("alice:plaintext\n")
    with pytest.raises(C.ConfigError) as e:
        C.parse_text("methods username\npasswd %s\npermit 0/0\n" % bad, "x.conf")
    assert e.value.problems[0][:2] == (str(bad), 1)
    with pytest.raises(C.ConfigError) as e:
        C.parse_text("methods username gssapi\n", "x.conf")
    assert "near 'gssapi'" in e.value.problems[0][2]


# --- test_sockd_conf: the classic package's golden example -------------------------------------------

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


def test_test_sockd_conf_usage_errors(golden, tmp_path, capsys):
    assert tools.test_sockd_conf(["-C", golden, "u", "1.2.3.4"]) == 255
    bad = tmp_path / "bad.conf"
    bad.write_text("permit 10.0.0.0\n")
    assert tools.test_sockd_conf(["-C", str(bad), "u", "1.2.3.4", "5.6.7.8", "80"]) == 255
    assert "bad.conf:1:" in capsys.readouterr().err

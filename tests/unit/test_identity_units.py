"""Pure parts of 'who is asking': RFC 1413 replies, % expansion and its
sanitising, and the rules engine asking for the user."""

import pytest

from sockd import config as C
from sockd import ident as I
from sockd import rules as R
from sockd import shell

# --- RFC 1413 ---------------------------------------------------------------------------


def test_ident_query_format():
    assert I.query(6191, 23) == b"6191 , 23\r\n"


@pytest.mark.parametrize("reply,expected", [
    (b"6191, 23 : USERID : UNIX : stjohns\r\n", ("USERID", "stjohns")),
    (b"6191,23:USERID:UNIX,US-ASCII:stjohns\n", ("USERID", "stjohns")),
    (b"6191 , 23 : USERID : OTHER : a:b:c\r\n", ("USERID", "a:b:c")),
    (b"6195, 23 : ERROR : NO-USER\r\n", ("ERROR", "NO-USER")),
    (b"6191, 24 : USERID : UNIX : stjohns\r\n", ("ERROR", "wrong ports")),
    (b"garbage\r\n", ("ERROR", "garbage")),
    (b"6191, 23 : USERID : UNIX : \r\n", ("ERROR", "bad user id")),
    (b"6191, 23 : USERID : UNIX : " + b"x" * 65 + b"\r\n", ("ERROR", "bad user id")),
    (b"6191, 23 : USERID : UNIX : a\x1bb\r\n", ("ERROR", "bad user id")),
    (b"6191, 23 : USERID : UNIX : \xff\xfe\r\n", ("ERROR", "garbage")),
    (b"6191, 23 : WHATEVER : x\r\n", ("ERROR", "garbage")),
])
def test_ident_replies(reply, expected):
    p1 = 6195 if b"6195" in reply else 6191
    assert I.parse_reply(reply, p1, 23) == expected


# --- % expansion --------------------------------------------------------------------------

VALUES = {"A": "host.example", "a": "10.1.2.3", "c": "connect", "p": "42", "S": "telnet", "s": "23",
          "U": "root", "u": "joe", "Z": "dst.example", "z": "10.9.9.9"}


def test_expand_every_token():
    t = "%A %a %c %p %S %s %U %u %Z %z %% %x"
    assert shell.expand(t, VALUES) == \
        "host.example 10.1.2.3 connect 42 telnet 23 root joe dst.example 10.9.9.9 % "


@pytest.mark.parametrize("hostile", ["x;touch /tmp/F", "$(touch /tmp/F)", "`touch /tmp/F`",
                                     "a|b&c>d<e", "'quoted'\"q\"", "new\nline", "sp ace", "é"])
def test_client_values_cannot_become_shell_syntax(hostile):
    out = shell.expand("echo %u", dict(VALUES, u=hostile))
    value = out[len("echo "):]
    assert all(c in shell.SAFE for c in value), value
    assert len(value) == len(hostile)


def test_template_is_the_administrators_and_kept():
    assert shell.expand("mail -s 'hi %u' root; true", VALUES) == "mail -s 'hi joe' root; true"


def test_command_checks():
    assert shell.check("echo hi") is None
    assert "no alphanumeric" in shell.check("%%% ;")
    assert "too long" in shell.check("x" * (shell.MAX_COMMAND + 1))


# --- the rules engine stops for a user it does not know yet ----------------------------------------

def test_need_user_for_lines_that_ask_identd():
    rs = C.parse_text("permit ?=n *=alice 0/0\npermit ?=I *=bob 0/0\npermit 0/0\n").ruleset
    req = R.Request(R.ip_key("1.1.1.1"), R.ip_key("2.2.2.2"), 80, None)
    asked = []

    def user_of(rule):
        if rule.ident == "I":
            asked.append(rule.line)
            return R.NEED_USER(rule)
        return None
    got = rs.match(req, user_of=user_of)
    assert isinstance(got, R.NEED_USER) and got.rule.line == 2 and asked == [2]
    assert rs.match(req, user_of=lambda r: "bob" if r.ident == "I" else None).line == 2
    assert rs.match(req, user_of=lambda r: None).line == 3

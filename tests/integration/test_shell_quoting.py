"""Issue 12, item 5: nothing a client sends changes how /bin/sh splits a
rule's ``: command``.

A real sockd whose deny lines run commands that print each argument the
shell made on a line of its own (``printf '<%s>\\n' ...``, the ``%s`` written
``%%s`` in sockd.conf, since ``%s`` is the destination port there), with
the client's user name in every template position: a word of its own,
inside "...", inside '...', and glued to the template's text.  Clients send
SOCKS 4 USERIDs holding each shell metacharacter, alone, at the start, at
the end and in the middle of the name, and whole injection attempts; SOCKS
5 clients log in (RFC 1929) as users of a passwd file whose names hold
them.  Each client asks for a port of its own, so each command writes a
file of its own (``out-%s``), and the test checks its exact lines: the
words the template says, each holding the name cut to the documented safe
set (letters, digits, ``@ % - _ + : , . /``; anything else, and a leading
``-``, becomes ``_``; an empty name becomes ``_``), and no file made by
the name itself.  Also the issue's own line, ``echo "%u" "%Z" >> FILE``,
with a USERID ending in a backslash.
"""

import os
import shutil
import socket
import string
import struct
import tempfile

import bcrypt
import pytest

import helpers

ALLOWED = set(string.ascii_letters + string.digits + "@%-_+:,./")
HOSTILE = "\\'\"$`;&|<>() \t*?[]#~!{}=^\n\r\x01\x1b\x7f\xe9\xff"
TEMPLATE = """printf '<%%s>\\n' BEGIN %u "%u" '%u' x%uy "x%uy" 'x%uy' END"""
ALERT_PORT = 9
WAIT = 5.0


def expected(value):
    """The documented cut, written out again here (not sockd's code)."""
    s = "".join(c if c in ALLOWED else "_" for c in value)
    if s.startswith("-"):
        s = "_" + s[1:]
    return s or "_"


def as_kept(userid):
    """A USERID as sockd keeps it: printable ASCII for its log lines, where
    a control byte is one ? and a byte of 0x80 or more two (as UTF-8); each
    of those is then cut to _ as any refused character."""
    return "".join(c if " " <= c <= "~" else "?" for c in userid.decode("latin-1").encode().decode("latin-1"))


def lines_for(value):
    s = expected(value)
    return ["<%s>" % w for w in ("BEGIN", s, s, s, "x%sy" % s, "x%sy" % s, "x%sy" % s, "END")]


def userids():
    """(id, USERID bytes): each hostile byte alone, first, last and inside,
    the allowed punctuation, and whole attacks (DIR stands for the test's
    directory, where no INJ file may ever appear)."""
    out = []
    for b in HOSTILE.encode("latin-1"):
        c = bytes([b])
        for name, v in (("alone", c), ("first", c + b"ab"), ("last", b"ab" + c), ("inside", b"a" + c + b"b")):
            out.append(("%02x-%s" % (b, name), v))
    for c in "@%-_+:,./":
        out.append(("ok-%02x" % ord(c), ("a" + c + "b").encode()))
    attacks = ["$(touch DIR/INJ1)", "`touch DIR/INJ2`", "x;touch DIR/INJ3", "a' ; touch DIR/INJ4 ; '",
               "a\" ; touch DIR/INJ5 ; \"", "x\\", "x\\\" ; touch DIR/INJ6 #", "a\ntouch DIR/INJ7",
               "${IFS}touch${IFS}DIR/INJ8", "{a,b}", "{1..3}", "~", "~/", "~root", "*", "-n", "--",
               "a=b", "PATH=/", "%u", "%%", "", "!", "#x"]
    for i, a in enumerate(attacks):
        out.append(("attack%d" % i, a.encode()))
    return out


USERIDS = userids()


@pytest.fixture(scope="module")
def out_dir():
    d = tempfile.mkdtemp(prefix="sockd-quote-")
    yield d
    shutil.rmtree(d)


def conf_for(out_dir):
    return ("deny 0/0 eq %d : echo \"%%u\" \"%%Z\" >> %s/alert\n" % (ALERT_PORT, out_dir) +
            "deny 0/0 : %s >> %s/out-%%s\n" % (TEMPLATE, out_dir))


@pytest.fixture(scope="module")
def sockd4(tmp_path_factory, out_dir):
    s = helpers.Sockd(tmp_path_factory.mktemp("sockd4"), conf_for(out_dir), workers=1)
    yield s
    s.stop()


def socks4(proxy, port, userid, host=None):
    """A SOCKS 4 (4A with ``host``) CONNECT with raw USERID bytes; the reply code."""
    with socket.create_connection(proxy, 10) as s:
        ip = socket.inet_aton("127.0.0.1") if host is None else b"\0\0\0\x01"
        s.sendall(struct.pack("!BBH4s", 4, 1, port, ip) + userid + b"\0" +
                  (host.encode() + b"\0" if host else b""))
        return helpers.recv_exact(s, 8)[1]


def written(path, sockd):
    """The lines the command wrote, once its END line is there (bounded)."""
    try:
        helpers.wait_for(lambda: os.path.exists(path) and open(path).read().endswith("<END>\n"), WAIT)
    except AssertionError:
        text = open(path).read() if os.path.exists(path) else None
        raise AssertionError("no complete output after %gs: %r\nsockd log:\n%s" % (WAIT, text, sockd.log()[-2000:]))
    return open(path).read().splitlines()


def no_injection(out_dir):
    return sorted(f for f in os.listdir(out_dir) if f.startswith("INJ"))


@pytest.mark.parametrize("index", range(len(USERIDS)), ids=[i for i, _ in USERIDS])
def test_a_socks4_userid_cannot_change_the_split(sockd4, out_dir, index):
    userid = USERIDS[index][1].replace(b"DIR", out_dir.encode())
    port = 20000 + index
    assert socks4(sockd4.addr, port, userid) == 91
    assert written(os.path.join(out_dir, "out-%d" % port), sockd4) == lines_for(as_kept(userid))
    assert no_injection(out_dir) == []


def test_the_issues_alert_line_with_a_trailing_backslash(sockd4, out_dir):
    """deny ... : echo "%u" "%Z" >> FILE and USERID tb\\ : the alert is
    written, the backslash cut to _ (before: the quote was escaped, the
    shell found no closing one and the line was lost)."""
    path = os.path.join(out_dir, "alert")
    assert socks4(sockd4.addr, ALERT_PORT, b"tb\\", host="localhost") == 91
    helpers.wait_for(lambda: os.path.exists(path) and open(path).read().endswith("\n"), WAIT,
                     what="the alert line (sockd log:\n%s)" % sockd4.log()[-1500:])
    assert open(path).read() == "tb_ localhost\n"


# --- SOCKS 5: the names of a passwd file ---------------------------------------------------------

PASSWORD = b"secret"
NAMES = ["tb\\", "a\"b", "it's", "$(touch DIR/INJ9)", "`touch DIR/INJ10`", "a b", "x;y&z|w", "-n", "~", "!",
         "a=b", "{a,b}", "*", "x#y", "\u00e9t\u00e9", "a\x01b", "<x>", "(x)", "x\\\" ; touch DIR/INJ11 #"]


@pytest.fixture(scope="module")
def sockd5(tmp_path_factory, out_dir):
    d = tmp_path_factory.mktemp("sockd5")
    hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()
    pw = d / "passwd"
    pw.write_text("".join("%s:%s\n" % (n.replace("DIR", out_dir), hashed) for n in NAMES), encoding="utf-8")
    s = helpers.Sockd(d, "methods username\npasswd %s\n" % pw + conf_for(out_dir), workers=1)
    yield s
    s.stop()


def socks5_login(proxy, port, user):
    """RFC 1929 login, then CONNECT 127.0.0.1:port; the REP code."""
    with socket.create_connection(proxy, 10) as s:
        s.sendall(b"\x05\x01\x02")
        assert helpers.recv_exact(s, 2) == b"\x05\x02"
        u = user.encode()
        s.sendall(bytes([1, len(u)]) + u + bytes([len(PASSWORD)]) + PASSWORD)
        assert helpers.recv_exact(s, 2) == b"\x01\x00", "login refused for %r" % user
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", port))
        return helpers.recv_exact(s, 10)[1]


@pytest.mark.parametrize("index", range(len(NAMES)), ids=["name%d" % i for i in range(len(NAMES))])
def test_a_socks5_user_name_cannot_change_the_split(sockd5, out_dir, index):
    user = NAMES[index].replace("DIR", out_dir)
    port = 30000 + index
    assert socks5_login(sockd5.addr, port, user) == 2
    assert written(os.path.join(out_dir, "out-%d" % port), sockd5) == lines_for(user)
    assert no_injection(out_dir) == []

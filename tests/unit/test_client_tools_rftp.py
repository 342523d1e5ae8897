"""sockd/client/tools/rftp.py: a line-mode FTP client through socks.conf.

Everything runs against a small FTP server written here (FakeFTP) on
loopback, port 0: reply reading (multi-line, hostile: not FTP, too long,
too many lines, the server gone), logging in (331/230/530, a password
from standard input, ~/.netrc), transfers in passive (PASV, EPSV on ::1)
and active (PORT, EPRT) mode, binary and ASCII, listings, and the
command table with its usage errors.  main() reads its commands from a
StringIO.  One test plays a SOCKS 5 server and the FTP server in one
peer, to follow an active-mode transfer through a SOCKS BIND in the
classic order (bind, getsockname, PORT, listen, accept).  HOME is the
test's directory, so no real ~/.netrc is read.
"""

import io
import os
import queue
import re
import socket
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockd.client.tools import rftp
from sockd.client.tools.rftp import FTPError, Session, run_command

from clientkit import (LOCAL, WAIT, Peer, read_greeting, read_request5, reply5, socksenv)

assert socksenv     # the fixture, used by name


class FakeFTP:
    """Enough of an FTP server: a greeting, USER/PASS, TYPE, CWD/PWD,
    PORT/EPRT (it connects back), PASV/EPSV (it listens), RETR, STOR,
    LIST/NLST and QUIT.  ``commands`` keeps every line it was sent."""

    def __init__(self, host=LOCAL, greeting=b"220 fake ftpd ready\r\n", password="pw"):
        self.greeting = greeting
        self.password = password
        self.files = {"hello.txt": b"hello\r\nworld\r\n", "bin.dat": bytes(range(256)) * 40}
        self.stored = {}
        self.commands = []
        self.types = []
        self.replies = {}               # verb -> a canned reply instead of the usual one
        self.peer = Peer(self.handle, host=host)
        self.port = self.peer.port

    def close(self):
        self.peer.close()

    def handle(self, c, peer):
        c.send(self.greeting)
        if not self.greeting.startswith(b"220 "):
            c.read_all()
            return
        data_to = None                  # an address to connect to (PORT), or a listener (PASV)
        while True:
            try:
                line = c.read_until(b"\r\n")[:-2].decode("utf-8", "replace")
            except EOFError:
                return
            self.commands.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in self.replies:
                c.send(self.replies[verb])
                continue
            if verb == "USER":
                c.send(b"331 password please\r\n" if arg != "anon230" else b"230 in\r\n")
            elif verb == "PASS":
                c.send(b"230 logged in\r\n" if arg == self.password else b"530 no\r\n")
            elif verb == "TYPE":
                self.types.append(arg)
                c.send(b"200 type set\r\n")
            elif verb == "CWD":
                c.send(b"250 ok\r\n" if arg != "nowhere" else b"550 no such directory\r\n")
            elif verb == "PWD":
                c.send(b'257 "/pub" is the current directory\r\n')
            elif verb == "PORT":
                n = [int(x) for x in arg.split(",")]
                data_to = ("%d.%d.%d.%d" % tuple(n[:4]), n[4] << 8 | n[5])
                c.send(b"200 PORT ok\r\n")
            elif verb == "EPRT":
                _, _, host, port, _ = arg.split("|")
                data_to = (host, int(port))
                c.send(b"200 EPRT ok\r\n")
            elif verb in ("PASV", "EPSV"):
                fam = socket.AF_INET6 if ":" in c.sock.getsockname()[0] else socket.AF_INET
                data_to = socket.socket(fam)
                data_to.bind((c.sock.getsockname()[0], 0))
                data_to.listen(1)
                data_to.settimeout(WAIT)
                p = data_to.getsockname()[1]
                if verb == "PASV":
                    c.send(b"227 Entering Passive Mode (127,0,0,1,%d,%d)\r\n" % (p >> 8, p & 255))
                else:
                    c.send(b"229 Entering Extended Passive Mode (|||%d|)\r\n" % p)
            elif verb in ("RETR", "STOR", "LIST", "NLST"):
                if verb == "RETR" and arg not in self.files:
                    c.send(b"550 no such file\r\n")
                    continue
                c.send(b"150 opening data connection\r\n")
                if isinstance(data_to, tuple):
                    d = socket.create_connection(data_to, WAIT)
                else:
                    d, _ = data_to.accept()
                    data_to.close()
                d.settimeout(WAIT)
                with d:
                    if verb == "RETR":
                        d.sendall(self.files[arg])
                    elif verb == "STOR":
                        got = b""
                        while True:
                            chunk = d.recv(65536)
                            if not chunk:
                                break
                            got += chunk
                        self.stored[arg] = got
                    else:
                        d.sendall(b"hello.txt\r\nbin.dat\r\n\x1b[2J\r\n")
                c.send(b"226 transfer complete\r\n")
            elif verb == "QUIT":
                c.send(b"221 bye\r\n")
                return
            else:
                c.send(b"502 not implemented\r\n")


@pytest.fixture
def ftpd(socksenv, monkeypatch, tmp_path):
    """start(**kw) -> a FakeFTP; HOME and the current directory are the
    test's own."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    started = []

    def start(**kw):
        f = FakeFTP(**kw)
        started.append(f)
        return f
    yield start
    for f in started:
        f.close()


def session(f, host=LOCAL, **kw):
    s = Session(io.StringIO(), **kw)
    s.open(host, f.port)
    return s


# --- replies ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("greeting,shown", [
    (b"220 ready\r\n", ["220 ready"]),
    (b"220-first\r\n220-second\r\n  indented\r\n220 last\r\n", ["220-first", "220-second", "  indented", "220 last"]),
    (b"220-first\r\n220\r\n", ["220-first", "220"]),
    (b"220-\x1b[31mred\r\n220 ok\r\n", ["220-?[31mred", "220 ok"]),
])
def test_greetings_whole_and_multi_line(ftpd, greeting, shown):
    f = ftpd(greeting=greeting)
    s = session(f)
    assert s.out.getvalue().splitlines() == ["Connected to %s." % LOCAL] + shown
    s.close_quietly()


@pytest.mark.parametrize("greeting,error", [
    (b"421 too busy\r\n", "ftp: the server did not greet us"),
    (b"SSH-2.0-OpenSSH\r\n", "ftp: not an FTP reply: SSH-2.0-OpenSSH"),
    (b"22 short\r\n", "ftp: not an FTP reply: 22 short"),
    (b"220" + b"x" * 9000 + b"\r\n", "ftp: reply line longer than 8192 bytes; connection closed"),
    (b"220-start\r\n" + b"more\r\n" * 1001, "ftp: reply of more than 1000 lines; connection closed"),
    (b"220-start\r\n", "421 Service not available, remote server has closed connection"),
])
def test_bad_greetings(ftpd, greeting, error):
    f = ftpd(greeting=greeting)
    f.peer.handler = lambda c, peer: (c.send(greeting), c.sock.shutdown(socket.SHUT_WR), c.read_all())
    s = Session(io.StringIO())
    with pytest.raises(FTPError) as ei:
        s.open(LOCAL, f.port)
    assert str(ei.value) == error
    assert s.ctrl is None and s.rfile is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"220 ", b"220-", b"\r\n", b"\n", b"220"])),
                max_size=12).map(b"".join))
def test_any_greeting_is_a_session_or_an_ftp_error(ftpd, greeting):
    f = ftpd(greeting=b"")
    f.peer.handler = lambda c, peer: (c.send(greeting), c.sock.shutdown(socket.SHUT_WR), c.read_all())
    s = Session(io.StringIO())
    try:
        s.open(LOCAL, f.port)
    except FTPError:
        assert s.ctrl is None
    else:
        assert greeting.startswith(b"220")
        s.close_quietly()
    f.close()


def test_a_server_that_never_answers_is_not_waited_for_forever(ftpd, monkeypatch):
    f = ftpd()
    f.peer.handler = lambda c, peer: c.read_all()
    s = Session(io.StringIO())
    s.ctrl = rftp.common.connect(LOCAL, f.port, timeout=0.1)
    s.rfile = s.ctrl.makefile("rb")
    with pytest.raises(FTPError, match=r"^ftp: no reply for 60 seconds; connection closed$"):
        s.reply()
    assert s.ctrl is None


# --- logging in ------------------------------------------------------------------------------------

def test_login(ftpd, monkeypatch):
    f = ftpd()
    s = session(f)
    s.login("jane", "pw")
    with pytest.raises(FTPError, match="^Login failed.$"):
        s.login("jane", "wrong")
    s.login("anon230")                                     # 230 at once: no password asked
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    s.login("jane")                                        # not a terminal: the password is a line of stdin
    assert f.commands == ["USER jane", "PASS pw", "USER jane", "PASS wrong", "USER anon230", "USER jane", "PASS pw"]
    s.close_quietly()


def test_auto_login_from_netrc_else_a_name_from_stdin(ftpd, monkeypatch, tmp_path):
    f = ftpd()
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine %s login jane password pw\n" % LOCAL)
    netrc.chmod(0o600)
    s = session(f)
    rftp.auto_login(s, LOCAL, "me")
    netrc.unlink()
    monkeypatch.setattr(sys, "stdin", io.StringIO("\npw\n"))
    rftp.auto_login(s, LOCAL, "me")                        # an empty name: the user's own
    assert f.commands == ["USER jane", "PASS pw", "USER me", "PASS pw"]
    assert "Name (%s:me): \n" % LOCAL in s.out.getvalue()
    s.close_quietly()


# --- transfers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("passive", [False, True])
def test_get_put_and_list(ftpd, tmp_path, passive):
    f = ftpd()
    s = session(f, passive=passive)
    s.login("jane", "pw")
    s.get("hello.txt")
    assert (tmp_path / "hello.txt").read_bytes() == b"hello\r\nworld\r\n"   # binary: as sent
    s.get("bin.dat", "copy.dat")
    assert (tmp_path / "copy.dat").read_bytes() == f.files["bin.dat"]
    s.binary = False
    s.get("hello.txt", "text.txt")
    assert (tmp_path / "text.txt").read_bytes() == b"hello\nworld\n"       # ASCII: CR LF -> LF
    (tmp_path / "up.txt").write_bytes(b"one\ntwo\r\n")
    s.put("up.txt")
    assert f.stored["up.txt"] == b"one\r\ntwo\r\n"                            # ASCII: LF -> CR LF
    s.binary = True
    s.put("copy.dat", "remote.dat")
    assert f.stored["remote.dat"] == f.files["bin.dat"]
    s.out = io.StringIO()
    s.listing("NLST")
    assert "hello.txt\nbin.dat\n?[2J\n" in s.out.getvalue()
    assert f.types == ["I", "I", "A", "A", "I", "A"]
    data_cmds = [c.split()[0] for c in f.commands if c.split()[0] in ("PORT", "EPRT", "PASV", "EPSV")]
    assert data_cmds == ["PASV" if passive else "PORT"] * 6
    s.close_quietly()


def test_transfer_reports_and_failures(ftpd, tmp_path):
    f = ftpd()
    s = session(f, passive=True)
    s.get("bin.dat")
    assert re.search(r"^10240 bytes received in [0-9.]+ secs \([0-9.]+ kB/s\)$", s.out.getvalue(), re.M)
    with pytest.raises(FTPError) as ei:
        s.get("missing.txt")
    assert ei.value.args == (None,)                        # the server's 550 was shown; nothing more to say
    with pytest.raises(FTPError, match="^local: /nonexistent/x: No such file or directory$"):
        s.get("hello.txt", "/nonexistent/x")
    with pytest.raises(FTPError, match="^local: nothing.here: No such file or directory$"):
        s.put("nothing.here")
    s.close_quietly()


def test_ipv6_uses_eprt_and_epsv(ftpd, tmp_path):
    f = ftpd(host="::1")
    s = session(f, host="::1")
    s.get("hello.txt", "a.txt")
    s.passive = True
    s.get("hello.txt", "b.txt")
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes() == f.files["hello.txt"]
    assert [c.split()[0] for c in f.commands if c[:4] in ("EPRT", "EPSV")] == ["EPRT", "EPSV"]
    assert [c for c in f.commands if c.startswith("EPRT")][0].startswith("EPRT |2|::1|")
    s.close_quietly()


@pytest.mark.parametrize("reply,error", [
    (b"227 Entering Passive Mode\r\n", "ftp: cannot read the PASV reply"),
    (b"227 Entering Passive Mode (127,0,0,1,256,1)\r\n", "ftp: cannot read the PASV reply"),
    (b"227 (127,0,0,1,4)\r\n", "ftp: cannot read the PASV reply"),
])
def test_unreadable_pasv_replies(ftpd, reply, error):
    f = ftpd()
    f.replies["PASV"] = reply
    s = session(f, passive=True)
    with pytest.raises(FTPError) as ei:
        s.get("hello.txt", "x")
    assert str(ei.value) == error
    s.close_quietly()


def test_pasv_to_0000_means_the_control_peer(ftpd, tmp_path):
    f = ftpd()
    real = FakeFTP.handle

    def handle(c, peer):
        # rewrite the PASV reply's address to 0,0,0,0
        orig_send = c.send

        def send(data):
            orig_send(data.replace(b"(127,0,0,1,", b"(0,0,0,0,"))
        c.send = send
        real(f, c, peer)
    f.peer.handler = handle
    s = session(f, passive=True)
    s.get("hello.txt", "z.txt")
    assert (tmp_path / "z.txt").read_bytes() == f.files["hello.txt"]
    s.close_quietly()


def test_an_epsv_port_out_of_range_is_refused(ftpd):
    f = ftpd(host="::1")
    f.replies["EPSV"] = b"229 Entering Extended Passive Mode (|||99999|)\r\n"
    s = session(f, host="::1", passive=True)
    try:
        with pytest.raises(FTPError):
            s.get("hello.txt", "x")
    finally:
        s.close_quietly()



# --- the command table -----------------------------------------------------------------------------

@pytest.mark.parametrize("line,error", [
    ("open", "usage: open HOST [PORT]"),
    ("user", "Not connected."),
    ("pass", "usage: pass PASSWORD"),
    ("cd a b", "usage: cd DIR"),
    ("get", "usage: get REMOTE [LOCAL]"),
    ("recv a b c", "usage: get REMOTE [LOCAL]"),
    ("put", "usage: put LOCAL [REMOTE]"),
    ("send a b c", "usage: put LOCAL [REMOTE]"),
    ("close", "Not connected."),
    ("ls", "Not connected."),
    ("pwd", "Not connected."),
    ("frobnicate", "?Invalid command"),
    ("open 127.0.0.1 nosuchservice", "bad port: nosuchservice"),
])
def test_usage_errors(ftpd, line, error):
    s = Session(io.StringIO())
    with pytest.raises((FTPError, rftp.common.Fail)) as ei:
        run_command(s, line)
    assert str(ei.value) == error


def test_commands_that_need_no_server(ftpd, tmp_path):
    s = Session(io.StringIO())
    assert run_command(s, "") is True and run_command(s, "   ") is True
    assert run_command(s, "help") is True and s.out.getvalue() == rftp.HELP
    s.out = io.StringIO()
    run_command(s, "passive")
    run_command(s, "passive")
    run_command(s, "ascii")
    assert s.binary is False and s.passive is False
    run_command(s, "binary")
    assert s.binary is True
    (tmp_path / "sub dir").mkdir()
    run_command(s, "lcd 'sub dir'")                       # shlex: quotes group words
    assert os.getcwd() == str(tmp_path / "sub dir")
    with pytest.raises(FTPError, match="^local: /nonexistent: No such file or directory$"):
        run_command(s, "lcd /nonexistent")
    assert s.out.getvalue() == ("Passive mode on.\nPassive mode off.\nLocal directory now %s\n"
                                % (tmp_path / "sub dir"))
    with pytest.raises(FTPError, match=r"^\?Invalid command$"):
        run_command(s, "unbalanced 'quote")               # not shlex: split on blanks
    assert run_command(s, "quit") is False and run_command(s, "BYE") is False


def test_commands_with_a_server(ftpd):
    f = ftpd()
    s = Session(io.StringIO())
    run_command(s, "open %s %d" % (LOCAL, f.port))
    with pytest.raises(FTPError, match="^Already connected to 127.0.0.1, use close first.$"):
        run_command(s, "open %s %d" % (LOCAL, f.port))
    run_command(s, "user jane pw")
    run_command(s, "cd /pub")
    run_command(s, "pwd")
    with pytest.raises(FTPError):
        run_command(s, "cd nowhere")
    run_command(s, "ascii")
    run_command(s, "close")
    assert s.ctrl is None
    assert f.commands == ["USER jane", "PASS pw", "CWD /pub", "PWD", "CWD nowhere", "TYPE A", "QUIT"]
    run_command(s, "open %s %d" % (LOCAL, f.port))
    assert run_command(s, "quit") is False and s.ctrl is None and f.commands[-1] == "QUIT"


# --- main ------------------------------------------------------------------------------------------

def test_main_with_commands_from_stdin(ftpd, monkeypatch, capsys, tmp_path):
    f = ftpd()
    monkeypatch.setattr(sys, "stdin", io.StringIO("jane\npw\nget hello.txt\nquit\n"))
    assert rftp.main(["-p", LOCAL, str(f.port)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Connected to %s.\n220 fake ftpd ready\nName (%s:" % (LOCAL, LOCAL))
    assert (tmp_path / "hello.txt").read_bytes() == f.files["hello.txt"]
    assert [c.split()[0] for c in f.commands] == ["USER", "PASS", "TYPE", "PASV", "RETR", "QUIT"]


def test_main_status_is_1_when_any_command_failed(ftpd, monkeypatch, capsys):
    f = ftpd()
    monkeypatch.setattr(sys, "stdin", io.StringIO("user jane pw\nget missing.txt\npwd\n"))
    assert rftp.main(["-n", LOCAL, str(f.port)]) == 1
    out, err = capsys.readouterr()
    assert "550 no such file" in out and "257" in out and err == ""


def test_main_without_a_server(ftpd, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("ls\nhelp\n"))
    assert rftp.main([]) == 1
    out, err = capsys.readouterr()
    assert out == rftp.HELP and err == "Not connected.\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    port = socket.socket()
    port.bind((LOCAL, 0))
    number = port.getsockname()[1]
    port.close()
    assert rftp.main([LOCAL, str(number)]) == 1
    assert capsys.readouterr().err == "ftp: connect: connect to %s port %d: Connection refused\n" % (LOCAL, number)
    assert rftp.main([LOCAL, "nosuchservice"]) == 1
    assert capsys.readouterr().err == "bad port: nosuchservice\n"
    with pytest.raises(SystemExit) as ei:
        rftp.main(["-x"])
    assert ei.value.code == 2 and "usage: rftp" in capsys.readouterr().err


# --- active mode through a SOCKS BIND -------------------------------------------------------------

def test_active_mode_through_a_socks_bind(ftpd, socksenv, tmp_path):
    """One peer is the SOCKS server and, behind it, the FTP server: the
    CONNECT's stream is the control connection, and the BIND's reply names
    the address the FTP server is told in PORT."""
    events = queue.Queue()
    seen = []

    def handle(c, peer):
        read_greeting(c)
        c.send(b"\x05\x00")
        cmd, _, host, port = read_request5(c)
        seen.append((cmd, host, port))
        if cmd == 2:                                       # BIND: where "the server" listens for us
            c.send(reply5(0, "10.20.30.40", 2021))
            assert events.get(timeout=WAIT) == "RETR"
            c.send(reply5(0, "10.0.0.21", 20) + b"through the bind\r\n")
            return
        c.send(reply5(0, "10.1.1.1", 4242))
        c.send(b"220 behind socks\r\n")
        while True:
            line = c.read_until(b"\r\n")[:-2].decode()
            seen.append(line)
            if line.startswith("PORT"):
                c.send(b"200 ok\r\n")
            elif line.startswith("TYPE"):
                c.send(b"200 ok\r\n")
            elif line.startswith("RETR"):
                c.send(b"150 here it comes\r\n")
                events.put("RETR")
                c.send(b"226 done\r\n")
            else:
                c.send(b"221 bye\r\n")
                return
    p = Peer(handle)
    try:
        socksenv.via(p)
        s = Session(io.StringIO())
        s.open("127.0.0.2", 21)
        s.get("file.txt", "got.txt")
        run_command(s, "quit")
    finally:
        p.close()
    assert (tmp_path / "got.txt").read_bytes() == b"through the bind\r\n"
    assert seen == [(1, "127.0.0.2", 21), "TYPE I", (2, "127.0.0.2", 21), "PORT 10,20,30,40,7,229",
                    "RETR file.txt", "QUIT"]

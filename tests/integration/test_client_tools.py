"""The client programs as a user runs them: test_socks_conf, and the
SOCKS-ified clients against real local servers, through a real sockd."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT

BIN = os.path.join(ROOT, "bin")
PYTHON = sys.executable

CONF = """\
deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %u' root
direct 10.0.0.0 255.0.0.0
deny ALL eq telnet
sockd @=fw1:1081,fw2 .example.test
sockd ALL
"""


def tool(name, *args, env=None, stdin=None, timeout=60):
    e = dict(os.environ)
    for var in ("SOCKS_SERVER", "SOCKS_CONF", "SOCKS_BANNER"):
        e.pop(var, None)
    e.update(env or {})
    return subprocess.run([PYTHON, os.path.join(BIN, name)] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=e, input=stdin)


@pytest.fixture
def conf_file(tmp_path):
    p = tmp_path / "socks.conf"
    p.write_text(CONF)
    return str(p)


def test_socks_conf_deny_line(conf_file):
    r = tool("test_socks_conf", "-C", conf_file, "clyde", "10.1.2.3", "ftp")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("USER:clyde, DST:10.1.2.3, PORT:21\n"
                        "Line 1: deny *=bonnie,clyde 10.0.0.0 255.0.0.0 : mail -s 'refused %%u' root\n"
                        "*** Denied: %s:1: denied by 'deny *=bonnie,clyde 10.0.0.0 255.0.0.0'\n" % conf_file)


def test_socks_conf_direct_via_and_default_server(conf_file):
    r = tool("test_socks_conf", "-C", conf_file, "jane", "10.1.2.3", "80")
    assert r.returncode == 1 and r.stdout.endswith("*** Direct: %s:2: direct\n" % conf_file)
    r = tool("test_socks_conf", "-C", conf_file, "jane", "www.example.test", "http")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "USER:jane, DST:www.example.test, PORT:80"
    assert r.stdout.endswith("Line 4: sockd @=fw1:1081,fw2 .example.test\n"
                             "*** Via sockd at fw1:1081, fw2:1080 (%s:4)\n" % conf_file)
    r = tool("test_socks_conf", "-C", conf_file, "jane", "192.0.2.1", "80", env={"SOCKS_SERVER": "gw:1090"})
    assert r.returncode == 1 and r.stdout.endswith("*** Via sockd at gw:1090 (%s:5)\n" % conf_file)
    r = tool("test_socks_conf", "-C", conf_file, "jane", "192.0.2.1", "80")
    assert r.returncode == 0 and "SOCKS_SERVER is not set" in r.stdout
    r = tool("test_socks_conf", "-C", conf_file, "jane", "192.0.2.1", "telnet")
    assert r.returncode == 0 and "*** Denied: %s:3: denied by 'deny ALL eq telnet'" % conf_file in r.stdout


def test_socks_conf_no_match_no_file_and_local_host(tmp_path):
    p = tmp_path / "socks.conf"
    p.write_text("direct 10.0.0.0/8\n")
    r = tool("test_socks_conf", "jane", "192.0.2.1", "80", env={"SOCKS_CONF": str(p)})
    assert r.returncode == 0 and r.stdout.endswith("*** No match with any line. Access denied.\n")
    r = tool("test_socks_conf", "jane", "127.0.0.1", "80", env={"SOCKS_CONF": str(p)})
    assert r.returncode == 1 and "always direct" in r.stdout
    r = tool("test_socks_conf", "-C", str(tmp_path / "absent"), "jane", "192.0.2.1", "80")
    assert r.returncode == 1 and "*** Direct: no socks.conf" in r.stdout


def test_socks_conf_errors(tmp_path):
    p = tmp_path / "socks.conf"
    p.write_text("direct 10.0.0.0/8\nsockd @=fw:0 ALL\n")
    r = tool("test_socks_conf", "-C", str(p), "jane", "192.0.2.1", "80")
    assert r.returncode == 2
    assert r.stderr == "%s:2: bad server port: 0 (near 'fw:0')\n" % p
    r = tool("test_socks_conf", "-C", str(p), "jane", "192.0.2.1", "no-such-service")
    assert r.returncode == 2 and "unknown service name" in r.stderr
    r = tool("test_socks_conf", "jane")
    assert r.returncode == 2 and "usage" in r.stderr and "Traceback" not in r.stderr


# --- the clients, through a real sockd (and Dante) to small local servers ----------------

import helpers  # noqa: E402
from helpers import IN_CI, kill_pid  # noqa: E402
from test_client import TARGET, PERMIT_LOCAL, wait_listening  # noqa: E402
from test_client import danted  # noqa: E402,F401 (a fixture)


def client_env(tmp_path, conf_text):
    p = tmp_path / "socks.conf"
    p.write_text(conf_text)
    return {"SOCKS_CONF": str(p), "SOCKS_LOG": "stderr"}


def line_server(answer):
    """A server on 127.0.0.2 that reads one line, records it, answers
    ``answer(line)`` and closes: finger and whois."""
    got = []

    def handle(conn):
        buf = b""
        while b"\n" not in buf and len(buf) < 4096:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
        got.append(buf)
        conn.sendall(answer(buf))
    srv = helpers.TCPServer(handle, host=TARGET)
    srv.got = got
    return srv


def test_rfinger_through_sockd(start_sockd, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    srv = line_server(lambda q: b"Login: alice\t\t\tName: Alice Liddell\r\nPlan: \x1b[2Jtea\r\n")
    try:
        env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
        r = tool("rfinger", "-p", str(srv.port), "alice@%s" % TARGET, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "[%s]\nLogin: alice\t\t\tName: Alice Liddell\nPlan: ?[2Jtea\n" % TARGET
        assert srv.got == [b"alice\r\n"]
        r = tool("rfinger", "-l", "-p", str(srv.port), "bob@otherhost@%s" % TARGET, env=env)
        assert r.returncode == 0 and srv.got[1] == b"/W bob@otherhost\r\n"
        s.wait_log(r"connected -- Connect from \S+@127\.0\.0\.1 to 127\.0\.0\.2 \(%d\)" % srv.port)
    finally:
        srv.close()


def test_rwhois_through_sockd(start_sockd, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    srv = line_server(lambda q: b"% whois for " + q.strip() + b"\r\nDomain Name: EXAMPLE.ORG\r\n")
    try:
        env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
        r = tool("rwhois", "-h", TARGET, "-p", str(srv.port), "example.org", env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "% whois for example.org\nDomain Name: EXAMPLE.ORG\n"
        s.wait_log(r"connected -- Connect from .* to 127\.0\.0\.2 \(%d\)" % srv.port)
        r = tool("rwhois", "-h", TARGET, "-p", str(srv.port), "example.org",
                 env=dict(env, WHOIS_SERVER="ignored.invalid"))
        assert r.returncode == 0
    finally:
        srv.close()


def test_clients_say_why_they_are_refused(tmp_path):
    env = client_env(tmp_path, "direct 10.0.0.0/8\ndeny 127.0.0.2/32 : true\n")
    path = env["SOCKS_CONF"]
    for args in (("rfinger", "-p", "7", "x@%s" % TARGET), ("rwhois", "-h", TARGET, "-p", "7", "q"),
                 ("rtelnet", TARGET, "7")):
        r = tool(*args, env=env, stdin="")
        assert r.returncode == 1, r
        assert "%s: connect to 127.0.0.2 port 7 refused: %s:2: denied by 'deny 127.0.0.2/32'" % (
            args[0], path) in r.stderr, r.stderr
    bad = client_env(tmp_path, "direct 10.0.0.1\n")
    r = tool("rfinger", "x@%s" % TARGET, env=bad)
    assert r.returncode == 1
    assert r.stderr.endswith("rfinger: %s:1: destination address needs a mask (or write it as "
                             "ADDRESS/PREFIX) (near '10.0.0.1')\n" % bad["SOCKS_CONF"])


IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240


def test_rtelnet_refuses_every_option(start_sockd, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    seen = []

    def telnetd(conn):
        conn.sendall(bytes((IAC, DO, 24, IAC, WILL, 1, IAC, SB, 24, 1, IAC, SE, IAC, DO, 31)) + b"login: ")
        refusals = (bytes((IAC, WONT, 24)), bytes((IAC, DONT, 1)), bytes((IAC, WONT, 31)))
        buf = b""
        # answer once the lines and the client's answers to the options are in
        while not (b"quit\r\n" in buf and all(x in buf for x in refusals)):
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        seen.append(buf)
        text = buf
        for x in refusals:
            text = text.replace(x, b"")
        for line in text.split(b"\r\n"):
            if line == b"quit":
                conn.sendall(b"bye\r\n")
                return
            conn.sendall(b"you said: " + line + b"\r\n")
    srv = helpers.TCPServer(telnetd, host=TARGET)
    try:
        env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
        r = tool("rtelnet", TARGET, str(srv.port), env=env, stdin="hello\nquit\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout == ("Trying 127.0.0.2...\nConnected to 127.0.0.2.\nEscape character is '^]'.\n"
                            "login: you said: hello\nbye\nConnection closed by foreign host.\n")
        sent = b"".join(seen)
        for refusal in (bytes((IAC, WONT, 24)), bytes((IAC, DONT, 1)), bytes((IAC, WONT, 31))):
            assert refusal in sent
        assert bytes((IAC, WILL)) not in sent and bytes((IAC, DO)) not in sent
        s.wait_log(r"connected -- Connect from .* to 127\.0\.0\.2 \(%d\)" % srv.port)
    finally:
        srv.close()


FTPD = """\
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
auth = DummyAuthorizer()
auth.add_user("tbuser", "tbpass", sys.argv[1], perm="elradfmw")
auth.add_anonymous(sys.argv[1])
FTPHandler.authorizer = auth
srv = FTPServer((sys.argv[2], 0), FTPHandler)
print(srv.address[1], flush=True)
srv.serve_forever()
"""


@pytest.fixture
def ftpd(tmp_path):
    """pyftpdlib on 127.0.0.2 in a process of its own, stopped by PID."""
    try:
        import pyftpdlib
        del pyftpdlib
    except ImportError:
        if IN_CI:
            pytest.fail("pyftpdlib is not installed (make test-deps installs it)")
        pytest.skip("pyftpdlib is not installed (make test-deps installs it)")
    root = tmp_path / "ftproot"
    root.mkdir()
    (root / "remote.bin").write_bytes(os.urandom(200000))
    script = tmp_path / "ftpd.py"
    script.write_text(FTPD)
    p = subprocess.Popen([PYTHON, str(script), str(root), TARGET], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(p.stdout.readline())
        wait_listening(TARGET, port, p)
    except (ValueError, AssertionError):
        kill_pid(p)
        raise
    p.port, p.root = port, root
    yield p
    kill_pid(p)


def rftp(tmp_path, env, *args, commands):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    e = dict(os.environ, **env)
    for var in ("SOCKS_SERVER", "SOCKS_BANNER"):
        e.pop(var, None)
    return subprocess.run([PYTHON, os.path.join(BIN, "rftp")] + list(args), input=commands,
                          capture_output=True, text=True, timeout=120, env=e, cwd=str(work)), work


def check_transfer(r, work, ftpd, active):
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "remote.bin").read_bytes() == (ftpd.root / "remote.bin").read_bytes()
    assert (ftpd.root / "up.txt").read_text() == "uploaded through SOCKS\n"
    assert "230 Login successful." in r.stdout
    assert "200 Active data connection established." in r.stdout if active else "227 Entering passive mode" \
        in r.stdout
    assert "200000 bytes received" in r.stdout and "remote.bin" in r.stdout


COMMANDS = "tbuser\ntbpass\nget remote.bin\nput up.txt\nls\nquit\n"


def test_rftp_active_mode_through_sockd_bind(start_sockd, ftpd, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "up.txt").write_text("uploaded through SOCKS\n")
    r, work = rftp(tmp_path, env, TARGET, str(ftpd.port), commands=COMMANDS)
    check_transfer(r, work, ftpd, active=True)
    assert "bind() from" in r.stderr and "using sockd at 127.0.0.1:%d" % s.port in r.stderr
    s.wait_log(r"Bind from .* for 127\.0\.0\.2")


def test_rftp_passive_mode_through_sockd(start_sockd, ftpd, tmp_path):
    s = start_sockd(PERMIT_LOCAL)
    env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % s.port)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "up.txt").write_text("uploaded through SOCKS\n")
    r, work = rftp(tmp_path, env, "-p", TARGET, str(ftpd.port), commands=COMMANDS)
    check_transfer(r, work, ftpd, active=False)
    assert "bind()" not in r.stderr
    s.wait_log(r"connected -- Connect from .* to 127\.0\.0\.2 \(%d\)" % ftpd.port)


@pytest.mark.parametrize("mode", ["active", "passive"])
def test_rftp_through_dante(danted, ftpd, tmp_path, mode):  # noqa: F811 (the fixture)
    d = danted()
    env = client_env(tmp_path, "sockd @=127.0.0.1:%d 127.0.0.0/8\n" % d.port)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "up.txt").write_text("uploaded through SOCKS\n")
    args = ["-p"] if mode == "passive" else []
    r, work = rftp(tmp_path, env, *args, TARGET, str(ftpd.port), commands=COMMANDS)
    check_transfer(r, work, ftpd, active=mode == "active")
    if mode == "active":
        assert "tcp/bindreply" in d.log()


def test_rftp_direct_and_failures(ftpd, tmp_path):
    env = client_env(tmp_path, "direct 127.0.0.0/8\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "up.txt").write_text("uploaded through SOCKS\n")
    r, work = rftp(tmp_path, env, "-n", TARGET, str(ftpd.port),
                   commands="user tbuser tbpass\nget remote.bin\npassive\nput up.txt\nls\nquit\n")
    check_transfer(r, work, ftpd, active=True)
    assert "Passive mode on." in r.stdout
    r, _ = rftp(tmp_path, env, "-n", TARGET, str(ftpd.port),
                commands="user tbuser wrong\nget nothing\nfrobnicate\ncd /nowhere\nquit\n")
    assert r.returncode == 1
    assert "530" in r.stdout and "Login failed." in r.stderr and "?Invalid command" in r.stderr

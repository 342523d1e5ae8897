"""Who is asking, with the real parts: oidentd on 127.0.0.1:113, a test user
made with useradd and clients run as that user with runuser, curl with
--proxy-user.  Every cell of the classic identd matrix, for SOCKS 4 and 5."""

import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import helpers
from helpers import need

TEST_USER = "sockdid"
CLIENT = r'''
import socket, struct, sys
ver, host, port, claim, dport, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
s = socket.socket()
s.settimeout(20)
s.bind((src, 0))
s.connect((host, port))
if ver == "4":
    s.sendall(struct.pack("!BBH4s", 4, 1, dport, socket.inet_aton("127.0.0.1")) + claim.encode() + b"\0")
    r = b""
    while len(r) < 8:
        c = s.recv(8 - len(r))
        if not c: break
        r += c
    print(r[1] if len(r) == 8 else "closed")
else:
    s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", dport))
    r = b""
    while len(r) < 5:
        c = s.recv(5 - len(r))
        if not c: break
        r += c
    print(r[3] if len(r) >= 4 else "closed")
'''


@pytest.fixture(scope="module")
def test_user():
    need("useradd")
    need("runuser")
    created = False
    try:
        import pwd
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True)
        created = True
    yield TEST_USER
    if created:
        subprocess.run(["userdel", TEST_USER], check=False)


@pytest.fixture(scope="module")
def client_script():
    d = tempfile.mkdtemp(prefix="sockd-id-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "client.py")
    with open(path, "w") as f:
        f.write(CLIENT)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d)


class Oidentd:
    """oidentd on 127.0.0.1:113, lying "mallory" for TEST_USER's
    connections to the ports in ``liar_ports``."""

    def __init__(self, liar_ports=()):
        exe = need("oidentd")
        self.dir = tempfile.mkdtemp(prefix="sockd-oidentd-")
        os.chmod(self.dir, 0o755)
        conf = os.path.join(self.dir, "oidentd.conf")
        blocks = "".join('    fport %d {\n        force reply "mallory"\n    }\n' % p for p in liar_ports)
        with open(conf, "w") as f:
            f.write("default {\n    default {\n        deny spoof\n        deny spoof_all\n"
                    "        deny spoof_privport\n        deny random\n        deny random_numeric\n"
                    "        deny numeric\n        deny hide\n        deny forward\n    }\n}\n")
            if blocks:
                f.write('user "%s" {\n%s}\n' % (TEST_USER, blocks))
        os.chmod(conf, 0o644)
        self.log = open(os.path.join(self.dir, "oidentd.log"), "wb")
        self.proc = subprocess.Popen([exe, "-i", "-S", "-a", "127.0.0.1", "-p", "113", "-C", conf],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        helpers.wait_for(self.listening, 10, what="oidentd on 127.0.0.1:113")

    def listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("oidentd exited: " + open(self.log.name).read())
        try:
            socket.create_connection(("127.0.0.1", 113), 0.5).close()
            return True
        except OSError:
            return False

    def stop(self):
        helpers.kill_pid(self.proc)
        self.log.close()
        shutil.rmtree(self.dir)


@pytest.fixture
def identd_factory():
    started = []

    def start(liar_ports=()):
        o = Oidentd(liar_ports)
        started.append(o)
        return o
    yield start
    for o in started:
        o.stop()


def run_client(script, ver, sockd_port, claim, dport, src="127.0.0.1", as_user=TEST_USER):
    cmd = ["/usr/bin/python3", script, ver, "127.0.0.1", str(sockd_port), claim, str(dport), src]
    if as_user:
        cmd = ["runuser", "-u", as_user, "--"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    return int(out) if out.isdigit() else out


def two_port_sockd(start_sockd, conf, args=()):
    """sockd listening twice on 127.0.0.1: the second port is the one
    oidentd lies about."""
    s = start_sockd("listen 127.0.0.1:0\nlisten 127.0.0.1:0\n" + conf, args=args)
    s.ports = helpers.wait_for(lambda: len(s._ports() or []) == 2 and s._ports(), what="two ports")
    return s, s.ports[0][1], s.ports[1][1]


RULES = "permit 127.0.0.0 255.0.0.0\n"


@pytest.mark.parametrize("mode", ["n", "i", "I"])
def test_socks4_matrix(start_sockd, identd_factory, test_user, client_script, echo_server, mode):
    args = {"n": (), "i": ("-i",), "I": ("-I",)}[mode]
    s, good, liar = two_port_sockd(start_sockd, RULES, args)
    identd_factory(liar_ports=[liar])
    d = echo_server.port
    # identd confirms the user: granted in every mode
    assert run_client(client_script, "4", good, TEST_USER, d) == 90
    # identd names another user
    assert run_client(client_script, "4", liar, TEST_USER, d) == {"n": 90, "i": 93, "I": 93}[mode]
    # the client claims another user than the one identd reports
    assert run_client(client_script, "4", good, "root", d) == {"n": 90, "i": 93, "I": 93}[mode]
    # identd unreachable: the client on 127.0.0.3, where no identd listens
    assert run_client(client_script, "4", good, TEST_USER, d, src="127.0.0.3") == \
        {"n": 90, "i": 90, "I": 92}[mode]
    # the worker writes its lines at the end of its turn, after the reply: wait for them
    if mode == "n":
        helpers.wait_for(lambda: len(re.findall(r"connected -- Connect from \S+\(unknown\)@", s.log())) == 4,
                         what="four connected lines, no identd user in them")
        assert "identd" not in s.log()
    else:
        for line in ("*Alert*: real user is mallory, not %s" % TEST_USER,
                     "*Alert*: real user is %s, not root" % TEST_USER,
                     "cannot connect to identd on 127.0.0.3",
                     "connected -- Connect from %s(%s)@127.0.0.1" % (TEST_USER, TEST_USER)):
            s.wait_log(re.escape(line))


def test_per_line_modes_override_the_flag(start_sockd, identd_factory, test_user, client_script, echo_server):
    conf = ("permit ?=n 127.0.0.3 255.255.255.255\n"     # no identd for this client even with -I
            "permit ?=I 127.0.0.0 255.0.0.0 eq %d\n"      # strict for this port even with -i
            "permit 127.0.0.0 255.0.0.0\n" % echo_server.port)
    s, good, _ = two_port_sockd(start_sockd, conf, ("-i",))
    identd_factory()
    assert run_client(client_script, "4", good, "nobody-else", echo_server.port, src="127.0.0.3") == 90
    assert run_client(client_script, "4", good, TEST_USER, echo_server.port, src="127.0.0.4") == 92
    assert run_client(client_script, "4", good, TEST_USER, echo_server.port) == 90


def test_socks5_matrix(start_sockd, identd_factory, test_user, client_script, echo_server):
    """SOCKS 5 without authentication: the user a *= list sees is identd's
    answer, for lines that ask identd; refusals are reply 2."""
    conf = ("permit ?=I *=%s 127.0.0.0 255.0.0.0 eq %d\n" % (TEST_USER, echo_server.port) +
            "deny 127.0.0.0 255.0.0.0 eq %d\n" % echo_server.port +
            "permit 127.0.0.0 255.0.0.0\n")
    s, good, liar = two_port_sockd(start_sockd, conf, ("-I",))
    identd_factory(liar_ports=[liar])
    d = echo_server.port
    assert run_client(client_script, "5", good, "", d) == 0                   # identd says sockdid
    assert run_client(client_script, "5", liar, "", d) == 2                   # identd lies: mallory
    assert run_client(client_script, "5", good, "", d, as_user=None) == 2     # root is not on the list
    assert run_client(client_script, "5", good, "", d, src="127.0.0.3") == 2  # unreachable
    # another port: line 3, strict through -I
    other = helpers.TCPServer(helpers.echo_handler)
    try:
        assert run_client(client_script, "5", good, "", other.port) == 0
        assert run_client(client_script, "5", good, "", other.port, src="127.0.0.3") == 2
    finally:
        other.close()
    s.wait_log(re.escape("connected -- Connect from %s(%s)@127.0.0.1" % (TEST_USER, TEST_USER)))
    s.wait_log(re.escape("cannot connect to identd on 127.0.0.3"))


class FakeIdentd:
    """A hostile identd on 127.0.0.4:113 (the client's side is not to be
    trusted): answers garbage, an error, floods, or never answers."""

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.4", 113))
        self.sock.listen(8)
        self.conns = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            try:
                c.recv(100)
                if self.mode == "garbage":
                    c.sendall(b"\x00\xff garbage\r\n")
                elif self.mode == "error":
                    c.sendall(b"1, 2 : ERROR : HIDDEN-USER\r\n")
                elif self.mode == "flood":
                    c.sendall(b"A" * 100000)
            except OSError:
                pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)      # wakes the accept() of our thread
        except OSError:
            pass
        self.sock.close()
        self.t.join(5)
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode", ["garbage", "error", "flood", "silent"])
def test_hostile_identd_counts_as_unreachable(start_sockd, client_script, echo_server, mode):
    fake = FakeIdentd(mode)
    try:
        s = start_sockd("timeout ident 1\n" + RULES, args=("-I",))
        t0 = time.monotonic()
        assert run_client(client_script, "4", s.port, "root", echo_server.port, src="127.0.0.4", as_user=None) == 92
        assert time.monotonic() - t0 < 8
        s.wait_log("cannot connect to identd on 127.0.0.4")
    finally:
        fake.close()


def test_shell_commands_get_sanitised_values(start_sockd, echo_server, tmp_path):
    out = tempfile.mkdtemp(prefix="sockd-sh-")
    try:
        conf = ("deny 127.0.0.0 255.0.0.0 eq %d : echo '%%u' >> %s/denied-%%a\n" % (echo_server.port, out) +
                RULES)
        s = start_sockd(conf)
        hostile = ["x;touch %s/INJECT1" % out, "$(touch %s/INJECT2)" % out, "`touch %s/INJECT3`" % out,
                   "a' ; touch %s/INJECT4 ; '" % out]
        for claim in hostile:
            c, code = helpers.socks4_connect(s.addr, "127.0.0.1", echo_server.port, claim)
            assert code == 91
        path = os.path.join(out, "denied-127.0.0.1")
        helpers.wait_for(lambda: os.path.exists(path) and len(open(path).read().splitlines()) == 4,
                         what="the deny command to run 4 times")
        lines = open(path).read().splitlines()
        assert sorted(lines) == sorted(
            "".join(ch if ch in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz@%-_+:,./"
                    else "_" for ch in h) for h in hostile)
        time.sleep(0.3)
        assert not [f for f in os.listdir(out) if f.startswith("INJECT")]
    finally:
        shutil.rmtree(out)


@pytest.mark.serial                             # times the reply against a 2-second command
def test_special_lines_and_command_does_not_delay_the_reply(start_sockd, identd_factory, test_user,
                                                             client_script, echo_server, tmp_path):
    out = tempfile.mkdtemp(prefix="sockd-sh-")
    os.chmod(out, 0o777)
    try:
        conf = (RULES.strip() + " : sleep 2; touch %s/slow-done\n" % out +
                "#NO_IDENTD: touch %s/no-identd-%%a\n" % out +
                "#BAD_ID: touch %s/bad-id-%%U-pretends-%%u\n" % out)
        s, good, liar = two_port_sockd(start_sockd, conf, ("-i",))
        identd_factory(liar_ports=[liar])
        t0 = time.monotonic()
        assert run_client(client_script, "4", good, TEST_USER, echo_server.port) == 90
        assert time.monotonic() - t0 < 1.9        # the 2-second command ran beside the client
        assert run_client(client_script, "4", liar, TEST_USER, echo_server.port) == 93
        assert run_client(client_script, "4", good, TEST_USER, echo_server.port, src="127.0.0.3") == 90
        for name in ("slow-done", "no-identd-127.0.0.3", "bad-id-mallory-pretends-%s" % TEST_USER):
            helpers.wait_for(lambda: os.path.exists(os.path.join(out, name)), what=name)
    finally:
        shutil.rmtree(out)


def test_failing_command_is_logged(start_sockd, echo_server):
    s = start_sockd("deny 127.0.0.0/8 eq %d : exit 3\n" % echo_server.port + RULES)
    helpers.socks4_connect(s.addr, "127.0.0.1", echo_server.port, "u")
    s.wait_log(r"shell command of .*:2 exited with status 3")


# --- RFC 1929 ----------------------------------------------------------------------------------

def sockd_passwd(*args, password=None):
    exe = os.path.join(os.path.dirname(helpers.SOCKD), "sockd-passwd")
    return subprocess.run([exe] + list(args), input=password, capture_output=True, text=True, timeout=60)


def curl(proxy, url, *extra):
    exe = need("curl")
    return subprocess.run([exe, "-sS", "--max-time", "10", "-x", proxy, url] + list(extra),
                          capture_output=True, text=True, timeout=30)


def test_username_password(start_sockd, www, tmp_path):
    users = str(tmp_path / "users")
    assert sockd_passwd("-c", "-i", users, "alice", password="right horse\n").returncode == 0
    assert sockd_passwd("-i", "-C", "4", users, "bob", password="bobs secret\n").returncode == 0
    assert open(users).read().startswith("alice:$2b$")
    conf = "methods username\npasswd %s\npermit *=alice 127.0.0.0 255.0.0.0\n" % users
    s = start_sockd(conf)
    proxy = "socks5h://127.0.0.1:%d" % s.port
    r = curl(proxy, www.url("hello.txt"), "--proxy-user", "alice:right horse")
    assert r.returncode == 0 and r.stdout == "hello through sockd\n", r.stderr
    r = curl(proxy, www.url("hello.txt"), "--proxy-user", "alice:wrong")
    assert r.returncode == 97
    r = curl(proxy, www.url("hello.txt"))                   # offers no password: no acceptable method
    assert r.returncode == 97
    r = curl(proxy, www.url("hello.txt"), "--proxy-user", "bob:bobs secret")
    assert r.returncode == 97                               # authenticated, but not on the *= list
    for line in ("connected -- Connect from alice(unknown)@127.0.0.1 to 127.0.0.1",
                 "refused -- username/password authentication failed for alice from 127.0.0.1",
                 "refused -- Connect from bob(unknown)@127.0.0.1"):
        s.wait_log(re.escape(line))
    log = s.log()
    assert "right horse" not in log and "wrong" not in log.replace("wrong version", "")
    # the file is re-read when it changes, without a restart
    assert sockd_passwd("-i", users, "alice", password="new horse\n").returncode == 0
    r = curl(proxy, www.url("hello.txt"), "--proxy-user", "alice:new horse")
    assert r.returncode == 0, r.stderr + s.log()
    r = curl(proxy, www.url("hello.txt"), "--proxy-user", "alice:right horse")
    assert r.returncode == 97


@pytest.mark.serial                             # times five connects beside a bcrypt check
def test_passwords_are_checked_off_the_loop(start_sockd, www, tmp_path, echo_server):
    """bcrypt takes tens of milliseconds: other clients must not wait for it."""
    users = str(tmp_path / "users")
    assert sockd_passwd("-c", "-i", "-C", "14", users, "slow", password="pw\n").returncode == 0
    s = start_sockd("methods none username\npasswd %s\n%s" % (users, RULES), workers=1)
    c = socket.create_connection(s.addr, 10)
    c.sendall(b"\x05\x01\x02" + b"\x01\x04slow\x02pw")          # a slow cost-14 check starts
    t0 = time.monotonic()
    for _ in range(5):
        d, rep, _ = helpers.socks5_connect(s.addr, "127.0.0.1", echo_server.port)
        assert rep == 0
        d.close()
    assert time.monotonic() - t0 < 0.5
    assert helpers.recv_exact(c, 4) == b"\x05\x02\x01\x00"


def test_sockd_passwd_tool(tmp_path):
    users = str(tmp_path / "users")
    r = sockd_passwd("-i", users, "alice", password="x\n")
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert sockd_passwd("-c", "-i", users, "alice", password="x\n").returncode == 0
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o640
    assert sockd_passwd("-i", users, "bad:name", password="x\n").returncode == 2
    assert sockd_passwd("-i", users, "carol", password="\n").returncode == 1
    assert sockd_passwd("-D", users, "alice").returncode == 0
    assert open(users).read() == ""
    r = subprocess.run([helpers.SOCKD, "-V", "-f", "/dev/null"], capture_output=True, text=True)
    assert r.returncode == 0

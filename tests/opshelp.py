"""Support for the operations tests (tests/integration/test_ops*.py): a
private syslog socket, a detached sockd run from its pid file, process
facts from /proc, a test user.  Every process started is stopped by PID."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from helpers import SOCKD, children_of, need, proc_stat, proc_state, wait_for  # noqa: F401 (children_of: for the ops tests)

OPS_USER = "sockdops"


class SyslogSink:
    """A unix datagram socket in a world-searchable temporary directory
    that collects what sockd sends to its ``log socket``."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sockd-log-")
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "log.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.2)
        self.lines = []
        self.lock = threading.Lock()
        self.closed = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.lines.append(data.decode("utf-8", "replace"))

    def text(self):
        with self.lock:
            return "\n".join(self.lines)

    def wait(self, pattern, timeout=10, count=1):
        rx = re.compile(pattern)
        return wait_for(lambda: (lambda m: m if len(m) >= count else None)(rx.findall(self.text())),
                        timeout, what="log line %r in:\n%s" % (pattern, self.text()[-3000:]))

    def ports(self):
        return [int(p) for p in re.findall(r"listening on [0-9.]+:(\d+) ", self.text())]

    def close(self):
        self.closed = True
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class NotifyReceiver:
    """systemd's end of NOTIFY_SOCKET: a unix datagram socket in the
    test's directory (``address`` to put in the environment), or in the
    abstract namespace."""

    def __init__(self, tmp_path, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "sockd-test-%s" % uuid.uuid4().hex
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify.sock")
            self.sock.bind(self.address)
        self.got = []

    def next(self, timeout=15):
        """The next datagram as {KEY: VALUE}."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            raise AssertionError("no notification within %ss; so far: %r" % (timeout, self.got)) from None
        msg = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
        self.got.append(msg)
        return msg

    def until(self, key, timeout=15):
        """Datagrams up to the first with ``key``; returns that one."""
        end = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.1, end - time.monotonic()))
            if key in msg:
                return msg

    def close(self):
        self.sock.close()


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return proc_state(pid) != "Z"
    except OSError:
        return False


def stop_pid(pid, sig=signal.SIGTERM, timeout=15):
    """Stop a process we started (by its PID), then its process group if it
    lingers.  Returns True when it had to be killed."""
    if pid is None or not alive(pid):
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    os.kill(pid, sig)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return False
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def status_field(pid, name):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1:]
    return None


def uid_of(pid):
    return int(status_field(pid, "Uid")[1])          # effective


def ppid_of(pid):
    return int(proc_stat(pid)[1])


def server_pid_of(client_sock):
    """The PID of the process holding the server side of ``client_sock``
    (a TCP connection on loopback), from ss(8)."""
    ss = need("ss")
    lport = client_sock.getsockname()[1]
    rport = client_sock.getpeername()[1]

    def find():
        r = subprocess.run([ss, "-Htnp", "state", "established",
                            "( sport = :%d and dport = :%d )" % (rport, lport)],
                           capture_output=True, text=True)
        m = re.search(r"pid=(\d+)", r.stdout)
        return int(m.group(1)) if m else None
    return wait_for(find, 5, what="the server side of the connection in ss")


def free_port(host="127.0.0.1", low=None, high=None):
    """A port nobody listens on now (for programs that need a number,
    like inetd).  With low/high, search that range (privileged ports)."""
    if low is None:
        s = socket.socket()
        s.bind((host, 0))
        port = s.getsockname()[1]
        s.close()
        return port
    import random
    ports = list(range(low, high))
    random.shuffle(ports)
    for port in ports:
        s = socket.socket()
        try:
            s.bind((host, port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise AssertionError("no free port in %d-%d" % (low, high))


@pytest.fixture(scope="session")
def ops_user():
    """A system user for the privilege tests (created when missing)."""
    need("useradd")
    created = False
    try:
        pwd.getpwnam(OPS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OPS_USER],
                       check=True, capture_output=True)
        created = True
    yield pwd.getpwnam(OPS_USER)
    if created:
        subprocess.run(["userdel", OPS_USER], check=False, capture_output=True)


class Daemon:
    """``sockd -f CONF -p PIDFILE`` as an administrator runs it: it detaches
    and its shell command returns.  Logs come through a SyslogSink."""

    def __init__(self, tmp_path, conf, sink, args=(), env=None, name="daemon"):
        self.conf_path = os.path.join(str(tmp_path), name + ".conf")
        self.pidfile = os.path.join(str(tmp_path), name + ".pid")
        self.sink = sink
        self.write_conf(conf)
        self.cmd = [SOCKD, "-f", self.conf_path, "-p", self.pidfile] + list(args)
        self.env = env
        self.pid = None

    def write_conf(self, conf):
        if "log socket" not in conf:
            conf = "log socket %s\n" % self.sink.path + conf
        if "listen" not in conf:
            conf = "listen 127.0.0.1:0\n" + conf
        tmp = self.conf_path + ".new"
        with open(tmp, "w") as f:
            f.write(conf)
        os.replace(tmp, self.conf_path)

    def start(self, timeout=30):
        t0 = time.monotonic()
        self.result = subprocess.run(self.cmd, capture_output=True, text=True, timeout=timeout, env=self.env,
                                     stdin=subprocess.DEVNULL)
        self.start_time = time.monotonic() - t0
        self.pid = read_pid(self.pidfile)
        return self.result

    def stop(self, sig=signal.SIGTERM):
        pid = self.pid or read_pid(self.pidfile)
        return stop_pid(pid, sig)

"""Shared test machinery: starting sockd for real, small local servers, and
raw SOCKS clients.  Every process a test starts is stopped by its own PID."""

import contextlib
import hashlib
import http.server
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
SOCKD = os.path.join(VENV_BIN, "sockd") if os.path.exists(os.path.join(VENV_BIN, "sockd")) \
    else os.path.join(ROOT, "bin", "sockd")
PYTHON = sys.executable
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(program):
    """The path of a program the test needs; skip without it (fail in CI)."""
    path = shutil.which(program) or next(
        (p for p in ("/usr/sbin/" + program, "/sbin/" + program) if os.path.exists(p)), None)
    if path is None:
        msg = "%s is not installed (make test-deps installs it)" % program
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s" % what)


def kill_pid(proc, sig=signal.SIGTERM, timeout=10):
    """Stop a Popen we started, by its PID (its process group when it leads
    one, so its workers go too)."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(5)


class Sockd:
    """A sockd process started on a configuration text.  The listen port is
    learnt from its own log line, so configurations may say port 0."""

    def __init__(self, tmp_path, conf, args=(), model=None, workers=None, env=None, name="sockd", prefix=()):
        self.dir = tmp_path
        self.conf_path = os.path.join(str(tmp_path), name + ".conf")
        self.log_path = os.path.join(str(tmp_path), name + ".log")
        if "listen" not in conf:
            conf = "listen 127.0.0.1:0\n" + conf
        with open(self.conf_path, "w") as f:
            f.write(conf)
        cmd = list(prefix) + [SOCKD, "-F", "-f", self.conf_path] + list(args)
        if model:
            cmd += ["-m", model]
        if workers is not None:
            cmd += ["-N", str(workers)]
        self.cmd = cmd
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        self.ports = []
        # the master logs one "listening on" line per listener, one after
        # the other: wait for the first, then (briefly) for the rest, so that
        # a test never reads the ports between two of those lines
        listens = len(re.findall(r"^\s*listen\s", conf, re.M))
        try:
            self.ports = wait_for(self._ports, 15, what="sockd to listen")
            if len(self.ports) < listens:
                try:
                    self.ports = wait_for(lambda: (lambda p: p if len(p) >= listens else None)(self._ports()), 3,
                                          what="every listener")
                except AssertionError:
                    self.ports = self._ports()     # a name's addresses, a listener it could not open: as logged
        except AssertionError:
            self.stop()
            raise AssertionError("sockd did not start:\n" + self.log())
        self.port = self.ports[0][1]
        self.addr = ("127.0.0.1" if ":" not in self.ports[0][0] else self.ports[0][0], self.port)

    def _ports(self):
        if self.proc.poll() is not None:
            raise AssertionError("sockd exited with %s:\n%s" % (self.proc.returncode, self.log()))
        found = re.findall(r"listening on \[?([0-9a-f.:]+?)\]?:(\d+) ", self.log())
        return [(h, int(p)) for h, p in found] if found else None

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log()), timeout, what="log line %r" % pattern)

    def worker_pids(self):
        return children_of(self.proc.pid)

    def wait_workers(self, n, timeout=10):
        """The master logs 'listening' before it forks: wait, bounded, until
        n children are up, and return their PIDs sorted."""
        def ready():
            pids = self.worker_pids()
            return len(pids) == n and sorted(pids)
        return wait_for(ready, timeout, what="%d workers" % n)

    def stop(self, sig=signal.SIGTERM):
        kill_pid(self.proc, sig)
        self.logf.close()
        return self.proc.returncode


def fds_of(pid, kind=None):
    """How many descriptors process ``pid`` has open; with ``kind``, only
    those whose /proc link starts so ("socket:", "pipe:")."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += kind is None or os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith(kind)
        except OSError:
            pass
    return n


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(proc_stat(d)[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d))
    return out


# --- local servers (threads in the test process) -----------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


class HTTPServer:
    def __init__(self, directory, host="127.0.0.1"):
        handler = lambda *a, **k: _Quiet(*a, directory=str(directory), **k)  # noqa: E731
        cls = http.server.ThreadingHTTPServer
        if ":" in host:
            class V6(http.server.ThreadingHTTPServer):
                address_family = socket.AF_INET6
            cls = V6
        self.srv = cls((host, 0), handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.host = host
        # shutdown() waits for serve_forever to look at its flag, once per
        # poll_interval (0.5 s by default): a test's tear-down would wait that out
        self.t = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.t.start()

    def url(self, path, host=None):
        h = host or self.host
        if ":" in h:
            h = "[%s]" % h
        return "http://%s:%d/%s" % (h, self.port, path.lstrip("/"))

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class TCPServer:
    """A small threaded TCP server running ``handler(conn)`` per connection."""

    def __init__(self, handler, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = (host, self.port)
        self.handler = handler
        self.peers = []
        self.closed = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.closed:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.settimeout(30)
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def echo_handler(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def sha256_until_eof(conn):
    """The SHA-256 (hex) of everything ``conn`` sends until its EOF."""
    h = hashlib.sha256()
    while True:
        data = conn.recv(65536)
        if not data:
            return h.hexdigest()
        h.update(data)


def hash_handler(conn):
    """Read until EOF, answer the SHA-256 of what came, then close."""
    conn.sendall(sha256_until_eof(conn).encode())


def free_port(host="127.0.0.1"):
    """A port free on ``host`` now, for a program that must be told one."""
    t = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    t.bind((host, 0))
    port = t.getsockname()[1]
    t.close()
    return port


def closed_port():
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    return free_port()


class UDPEcho:
    """A UDP server on ``host`` that answers every datagram with ``prefix``
    and the datagram; ``seen`` lists what came, as (data, peer)."""

    def __init__(self, host="127.0.0.1", prefix=b""):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        self.seen = []
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                d, a = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.seen.append((d, a))
            self.sock.sendto(self.prefix + d, a)

    def close(self):
        self.stop = True
        self.t.join(2)
        self.sock.close()


@contextlib.contextmanager
def network_namespace(tag="sockd", setup=()):
    """A network namespace of the test's own with loopback up, then each
    command of ``setup`` (the arguments after ``ip netns exec NAME``) run
    in it; deleted at the end.  Yields (its name, the ip command)."""
    ip = need("ip")
    name = "%s-%s" % (tag, uuid.uuid4().hex[:8])
    r = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("cannot make a network namespace: %s" % r.stderr)
    try:
        for cmd in [[ip, "link", "set", "lo", "up"]] + [list(c) for c in setup]:
            subprocess.run([ip, "netns", "exec", name] + cmd, check=True)
        yield name, ip
    finally:
        subprocess.run([ip, "netns", "del", name])


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def recv_all(sock):
    out = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(out)
        out.append(chunk)


# --- raw SOCKS clients ---------------------------------------------------------------

def socks4_connect(proxy, host, port, user="", timeout=10, hostname=None):
    """SOCKS 4 (or 4A when ``hostname``) CONNECT.  Returns (sock, reply code)."""
    s = socket.create_connection(proxy, timeout)
    ip = socket.inet_aton(host) if hostname is None else b"\0\0\0\x01"
    req = struct.pack("!BBH4s", 4, 1, port, ip) + user.encode() + b"\0"
    if hostname is not None:
        req += hostname.encode() + b"\0"
    s.sendall(req)
    rep = recv_exact(s, 8)
    return s, rep[1]


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (which may hold
    spaces and parentheses): [0] the state, [1] the parent's PID, [11] and
    [12] user and system time in clock ticks."""
    with open("/proc/%s/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_state(pid):
    """The state letter of process ``pid`` (R, S, T, Z, ...)."""
    return proc_stat(pid)[0]


@contextlib.contextmanager
def paused(*pids):
    """The processes ``pids`` stopped (SIGSTOP) while inside, continued after.
    A stopped worker is not waiting in epoll, so the kernel wakes another for
    each new connection: with one of two workers paused, the test chooses
    which worker serves a client (epoll's exclusive wake-up otherwise goes
    to the first worker waiting, and a burst may all go to one)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # stopped, not only signalled: until it has run to its stop, it is
        # still waiting in epoll and may take the next wake-up with it
        for pid in pids:
            wait_for(lambda: proc_state(pid) in ("T", "t"), 10, interval=0.005, what="process %d stopped" % pid)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def greeted(proxy, timeout=10):
    """A SOCKS 5 greeting answered by ``proxy`` (then the client leaves, which
    sockd does not log).  A worker that answers is past its start: it has
    closed the master's descriptors and made its own, so what /proc shows of
    them from then on is its own doing."""
    with socket.create_connection(proxy, timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"\x05\x01\x00")
        assert recv_exact(s, 2) == b"\x05\x00"


def socks5_connect(proxy, host, port, timeout=10, atyp=None, early=b"", source=None):
    """SOCKS 5 CONNECT without authentication (from ``source``, an address,
    when given).  Returns (sock, REP, bound)."""
    import ipaddress
    s = socket.create_connection(proxy, timeout, source_address=(source, 0) if source else None)
    try:
        ip = ipaddress.ip_address(host)
        addr = (b"\x01" + ip.packed) if ip.version == 4 else (b"\x04" + ip.packed)
    except ValueError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + addr + struct.pack("!H", port) + early)
    m = recv_exact(s, 2)
    assert m == b"\x05\x00", m
    head = recv_exact(s, 4)
    if head[3] == 1:
        rest = recv_exact(s, 6)
    elif head[3] == 4:
        rest = recv_exact(s, 18)
    else:
        n = recv_exact(s, 1)[0]
        rest = recv_exact(s, n + 2)
    return s, head[1], rest

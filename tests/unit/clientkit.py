"""Small machinery for the unit tests of sockd.client: real peers on
loopback that the test scripts, and the environment the library reads.

* ``Peer`` listens on 127.0.0.1 (port 0) and runs the test's handler for
  every connection on a thread of its own.  What a handler raises is kept
  and raised again by ``close()``, so an assertion inside the peer fails
  the test.  Every read is bounded by WAIT.
* ``read_greeting``, ``read_request5``, ``read_request4``, ``reply5`` and
  ``reply4`` are the SOCKS wire format written out here with struct, not
  taken from sockd.protocol: the tests compare the library's bytes with an
  independent reading of RFC 1928 and the SOCKS 4/4A papers.
* ``socksenv`` (a fixture) points the library at a socks.conf in the
  test's directory, clears the other SOCKS_* variables, points Kerberos
  at a ticket cache that does not exist (so GSS-API is not offered), and
  forgets the library's cached configuration and remembered servers
  before and after.
"""

import ipaddress
import os
import socket
import struct
import threading
import time

import pytest

from sockd.client import core

WAIT = 2.0                  # the longest any single wait of a client unit test may take
LOCAL = "127.0.0.1"         # where the test's peers listen (always direct in socks.conf)
TARGET = "127.0.0.2"        # a destination that socks.conf decides about
# Names that do not resolve, and that no name server is ever asked about
# (a test must not send DNS queries off this host):
#   NONAME is 254 characters, one more than DNS can carry, so the C library
#   fails it without a query -- yet SOCKS 5 and 4A carry up to 255;
#   BADNAME is a valid host name for socks.conf whose 60-letter label the
#   IDNA codec cannot encode in 63, so Python fails it before the C library.
NONAME = "www." + ".".join(["n" * 63, "o" * 63, "p" * 63, "q" * 50]) + ".invalid"
NODOMAIN = NONAME[4:]           # SOCKS_DNAME that makes "www" into NONAME
BADNAME = "\u00fc" * 60 + ".invalid"
assert len(NONAME) == 254
ENV = ("SOCKS_CONF", "SOCKS_SERVER", "SOCKS_VERSION", "SOCKS_USERNAME", "SOCKS_PASSWORD",
       "SOCKS_BANNER", "SOCKS_DNAME", "SOCKS_LOG", "SOCKS_GSSAPI", "SOCKS_GSSAPI_SERVICE", "SOCKS_GSSAPI_LEVEL")
# No Kerberos ticket, whatever the host has: GSS-API is then never offered
# (a client keytab would get one silently, hence the second variable).
NO_TICKET = {"KRB5CCNAME": "FILE:/nonexistent/sockd-unit-tests", "KRB5_CLIENT_KTNAME": "FILE:/nonexistent"}


class Conn:
    """The peer's end of one accepted connection."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.got = b""              # everything read so far

    def read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("peer: EOF after %r" % (self.got + buf))
            buf += chunk
        self.got += buf
        return buf

    def read_until(self, end, limit=65536):
        buf = b""
        while not buf.endswith(end):
            buf += self.read(1)
            if len(buf) > limit:
                raise AssertionError("peer: no %r in %r" % (end, buf[:80]))
        return buf

    def read_all(self):
        out = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.got += out
                return out
            out += chunk

    def quiet(self, wait=0.05):
        """True when the other end sends nothing more within ``wait``."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except (socket.timeout, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(WAIT)
        return data == b""

    def send(self, data):
        self.sock.sendall(data)

    def send_bytewise(self, data):
        """One byte a segment (TCP_NODELAY, a pause between), so that the
        other end sees the message arrive in pieces."""
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            time.sleep(0.001)


class Peer:
    """A TCP server on loopback, port 0, running ``handler(conn, peer)``
    for each connection.  ``conns`` keeps the Conn objects in order."""

    def __init__(self, handler, host=LOCAL):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.addr = self.sock.getsockname()[:2]
        self.port = self.addr[1]
        self.handler = handler
        self.conns = []
        self.errors = []
        self.closing = False
        self.threads = []
        self.lock = threading.Lock()
        t = threading.Thread(target=self._accept, name="peer-accept", daemon=True)
        self.threads.append(t)
        t.start()

    @property
    def count(self):
        return len(self.conns)

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            c = Conn(s)
            with self.lock:
                if self.closing:
                    s.close()
                    return
                self.conns.append(c)
                t = threading.Thread(target=self._one, args=(c,), name="peer-conn", daemon=True)
                self.threads.append(t)
            t.start()

    def _one(self, c):
        try:
            self.handler(c, self)
        except Exception as exc:            # noqa: BLE001 -- kept for close()
            if not self.closing:
                self.errors.append(exc)
        finally:
            c.sock.close()

    def close(self):
        with self.lock:
            self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self.threads):
            t.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "a peer thread did not end"
        if self.errors:
            raise self.errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- the SOCKS wire format, written out independently of sockd.protocol ------------------------

def read_greeting(c):
    """VER NMETHODS METHODS -> the list of methods (VER must be 5)."""
    ver, n = c.read(2)
    assert ver == 5, "not a SOCKS 5 greeting: %r" % c.got
    return list(c.read(n))


def read_address(c):
    atyp = c.read(1)[0]
    if atyp == 1:
        addr = socket.inet_ntop(socket.AF_INET, c.read(4))
    elif atyp == 4:
        addr = socket.inet_ntop(socket.AF_INET6, c.read(16))
    elif atyp == 3:
        addr = c.read(c.read(1)[0]).decode("ascii")
    else:
        raise AssertionError("ATYP %d" % atyp)
    (port,) = struct.unpack("!H", c.read(2))
    return atyp, addr, port


def read_request5(c):
    """VER CMD RSV ATYP ADDR PORT -> (cmd, atyp, addr, port)."""
    ver, cmd, rsv = c.read(3)
    assert (ver, rsv) == (5, 0), c.got
    return (cmd,) + read_address(c)


def read_userpass(c):
    ver, n = c.read(2)
    assert ver == 1, c.got
    user = c.read(n)
    password = c.read(c.read(1)[0])
    return user.decode(), password.decode()


def read_request4(c):
    """VN CD DSTPORT DSTIP USERID NUL [HOST NUL] -> (cmd, port, ip, user, host)."""
    vn, cd = c.read(2)
    assert vn == 4, c.got
    (port,) = struct.unpack("!H", c.read(2))
    ip = socket.inet_ntoa(c.read(4))
    user = c.read_until(b"\0")[:-1].decode()
    host = None
    if ip.startswith("0.0.0.") and ip != "0.0.0.0":
        host = c.read_until(b"\0")[:-1].decode()
    return cd, port, ip, user, host


def encode_address(addr):
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        name = addr.encode()
        return bytes((3, len(name))) + name
    return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed


def reply5(rep=0, addr="0.0.0.0", port=0):
    return bytes((5, rep, 0)) + encode_address(addr) + struct.pack("!H", port)


def reply4(code=90, ip="0.0.0.0", port=0):
    return struct.pack("!BBH4s", 0, code, port, socket.inet_aton(ip))


def udp_header(addr, port, frag=0):
    return bytes((0, 0, frag)) + encode_address(addr) + struct.pack("!H", port)


def socks5_server(rep=0, bound=("10.1.1.1", 4242), then=None, split=False, requests=None):
    """A handler: no-authentication SOCKS 5, answer ``rep`` with ``bound``
    (whole or a byte at a time), then ``then(conn)``.  Each request is
    appended to ``requests`` (a list) as (methods, request)."""
    def handle(c, peer):
        methods = read_greeting(c)
        c.send(b"\x05\x00")
        req = read_request5(c)
        if requests is not None:
            requests.append((methods, req))
        r = reply5(rep, *bound)
        c.send_bytewise(r) if split else c.send(r)
        if then is not None:
            then(c)
    return handle


# --- the environment the library reads ----------------------------------------------------------

class Env:
    def __init__(self, path, monkeypatch):
        self.path = path
        self.mp = monkeypatch

    def conf(self, text):
        """Write socks.conf and make the library read it afresh."""
        self.path.write_text(text)
        core.reset()
        return str(self.path)

    def set(self, name, value):
        self.mp.setenv(name, value)

    def via(self, peer, dst="ALL"):
        """socks.conf: everything (or ``dst``) through ``peer``."""
        return self.conf("sockd @=%s:%d %s\n" % (peer.addr[0], peer.port, dst))


def _set_up_logging_once():
    """The library sets its log up once a process, and its stderr handler
    keeps the sys.stderr of that moment.  Do it now, while the test files
    are collected, so that the handler holds pytest's own stream and never
    a capsys one that is closed after its test.  SOCKS_LOG=stderr, as the
    integration tests have it."""
    old = os.environ.get("SOCKS_LOG")
    os.environ["SOCKS_LOG"] = "stderr"
    try:
        core.setup_logging()
    finally:
        if old is None:
            del os.environ["SOCKS_LOG"]
        else:
            os.environ["SOCKS_LOG"] = old


_set_up_logging_once()


@pytest.fixture
def socksenv(tmp_path, monkeypatch):
    """The library pointed at ``tmp_path/socks.conf`` (not written yet: no
    file, every connection direct)."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    for var, value in NO_TICKET.items():
        monkeypatch.setenv(var, value)
    path = tmp_path / "socks.conf"
    monkeypatch.setenv("SOCKS_CONF", str(path))
    monkeypatch.setenv("SOCKS_LOG", "stderr")
    core.reset()
    yield Env(path, monkeypatch)
    core.reset()


def listener(host=TARGET):
    """A plain listening socket (the destination of a direct connection)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    s.listen(4)
    s.settimeout(WAIT)
    return s

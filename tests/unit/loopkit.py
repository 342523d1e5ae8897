"""Small machinery for the unit tests of the I/O modules: a bounded run of a
real sockd.loop.Loop, a recording log, and the test's own ends of
connections (a reading/writing peer, an echo server, UDP peers) that live
on the same loop as the module under test.

Everything runs in the test's thread, driven by the one loop, so a test is
deterministic: the module under test and its surroundings take turns in
the order the kernel reports their events.  Every wait is bounded.
"""

import errno
import os
import socket
import time

from sockd import config as C
from sockd import configload as CL
from sockd.errors import ConfigError
from sockd.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT

WAIT = 2.0          # the longest any single wait of a unit test may take


class RecordingLog:
    """The log interface of sockd (error/warning/notice/info/debug), kept in
    a list of (level, message)."""

    def __init__(self):
        self.records = []

    def _record(level):
        def method(self, msg):
            self.records.append((level, msg))
        method.__name__ = level
        return method

    error = _record("error")
    warning = _record("warning")
    notice = _record("notice")
    info = _record("info")
    debug = _record("debug")
    del _record

    def lines(self, level=None):
        return [m for lv, m in self.records if level is None or lv == level]

    def having(self, text, level=None):
        return [m for m in self.lines(level) if text in m]

    def clear(self):
        del self.records[:]


def run_until(loop, pred, timeout=WAIT):
    """Run ``loop`` until ``pred()`` is true, at most ``timeout`` seconds;
    returns ``pred()``.  A short heap timer keeps the loop waking up, so
    the condition is checked even when the event that makes it true
    happened on a socket the loop does not watch."""
    if pred():
        return True
    end = time.monotonic() + timeout
    pending = [None]

    def tick():
        pending[0] = None
        if time.monotonic() >= end:
            loop.stop()
            return
        pending[0] = loop.call_later(0.01, tick)

    loop.now = time.monotonic()
    pending[0] = loop.call_later(0.01, tick)
    try:
        loop.run(until=lambda: pred() or time.monotonic() >= end)
    finally:
        if pending[0] is not None:
            pending[0].cancel()
    return bool(pred())


def run_for(loop, seconds):
    """Let the loop serve for ``seconds`` (to show that nothing more happens)."""
    run_until(loop, lambda: False, seconds)


def epoll_masks(loop):
    """{fd: registered events} as the kernel has them (/proc fdinfo of the
    loop's epoll descriptor), EPOLLIN/EPOLLOUT bits only."""
    out = {}
    with open("/proc/self/fdinfo/%d" % loop.ep.fileno()) as f:
        for line in f:
            if line.startswith("tfd:"):
                parts = line.split()
                out[int(parts[1])] = int(parts[3], 16) & (EPOLLIN | EPOLLOUT)
    return out


def watched(loop):
    """The descriptors the loop has handlers for, less its own wake-up fd."""
    return set(loop.handlers) - {loop._wake_fd}


def tcp_pair(host="127.0.0.1", family=socket.AF_INET, bufsize=None):
    """Two connected TCP sockets on loopback: (the connecting end, the
    accepted end).  ``bufsize``: small send and receive buffers on both."""
    ls = socket.socket(family, socket.SOCK_STREAM)
    try:
        if bufsize:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        ls.bind((host, 0))
        ls.listen(1)
        a = socket.socket(family, socket.SOCK_STREAM)
        if bufsize:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        a.settimeout(WAIT)
        a.connect(ls.getsockname()[:2])
        b, _ = ls.accept()
    finally:
        ls.close()
    a.settimeout(None)
    return a, b


def closed_port(host="127.0.0.1"):
    """A port on which nothing listens (taken and given back at once)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Peer:
    """The test's end of a TCP connection, served by the loop: it collects
    what arrives in ``data`` (``eof`` once the other side shut down,
    ``error`` the errno of a failure) and writes what it is given as the
    socket takes it, then optionally shuts down its sending side.  With
    ``echo``, what it reads it writes back, and it answers EOF with EOF."""

    def __init__(self, loop, sock, read=True, echo=False):
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        self.data = bytearray()
        self.eof = False
        self.error = None
        self.reading = read
        self.echo = echo
        self.out = b""
        self.off = 0
        self.sent = 0
        self.shut_after = False
        self.shut = False
        self.mask = -1
        self.update()

    @property
    def pending(self):
        """Bytes given to write() that the socket has not taken yet."""
        return len(self.out) - self.off

    # what the test calls
    def write(self, data, shutdown=False):
        self.out = self.out[self.off:] + data
        self.off = 0
        self.shut_after = self.shut_after or shutdown
        self.flush()
        self.update()

    def shutdown(self):
        self.write(b"", shutdown=True)

    def pause(self):
        self.reading = False
        self.update()

    def resume(self):
        self.reading = True
        self.update()

    def reset(self):
        """Close with a TCP reset (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()

    def close(self):
        if self.mask >= 0:
            self.loop.remove(self.fd)
            self.mask = -1
        self.sock.close()

    # the loop's side
    def on_event(self, ev):
        if ev & EPOLLOUT:
            self.flush()
        if ev & (EPOLLIN | EPOLLHUP | EPOLLERR) and self.reading:
            self.read()
        self.update()

    def read(self):
        for _ in range(64):
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                self.error = exc.errno
                return
            if not chunk:
                self.eof = True
                if self.echo:
                    self.shut_after = True
                    self.flush()
                return
            self.data += chunk
            if self.echo:
                self.out = self.out[self.off:] + chunk
                self.off = 0
                self.flush()

    def flush(self):
        while self.off < len(self.out):
            try:
                n = self.sock.send(memoryview(self.out)[self.off:self.off + (1 << 20)])
            except BlockingIOError:
                return
            except OSError as exc:
                self.error = exc.errno
                self.out, self.off = b"", 0
                return
            self.off += n
            self.sent += n
        self.out, self.off = b"", 0
        if self.shut_after and not self.shut:
            self.shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self.error = exc.errno

    def update(self):
        if self.sock.fileno() < 0:
            return
        m = 0
        if self.reading and not self.eof and self.error is None:
            m |= EPOLLIN
        if self.pending:
            m |= EPOLLOUT
        if m == self.mask or (m == 0 and self.mask < 0):
            return
        if m == 0:
            self.loop.remove(self.fd)       # nothing to wait for: not even hang-ups
            m = -1
        elif self.mask < 0:
            self.loop.add(self.fd, m, self.on_event)
        else:
            self.loop.modify(self.fd, m)
        self.mask = m


class EchoServer:
    """A TCP echo server on the loop; ``conns`` are its Peers, ``peers``
    the addresses that connected."""

    def __init__(self, loop, host="127.0.0.1"):
        self.loop = loop
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ls = socket.socket(fam, socket.SOCK_STREAM)
        self.ls.bind((host, 0))
        self.ls.listen(16)
        self.ls.setblocking(False)
        self.address = self.ls.getsockname()[:2]
        self.port = self.address[1]
        self.conns = []
        self.peers = []
        loop.add(self.ls.fileno(), EPOLLIN, self.on_accept)

    def on_accept(self, ev):
        try:
            conn, peer = self.ls.accept()
        except BlockingIOError:
            return
        self.peers.append(peer[:2])
        self.conns.append(Peer(self.loop, conn, echo=True))

    def close(self):
        if self.ls.fileno() >= 0:
            self.loop.remove(self.ls.fileno())
            self.ls.close()
        for c in self.conns:
            c.close()


class UdpPeer:
    """A UDP socket on the loop: ``got`` collects (data, address); with
    ``echo`` every datagram goes back to its sender."""

    def __init__(self, loop, host="127.0.0.1", echo=False):
        self.loop = loop
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.port = self.address[1]
        self.echo = echo
        self.got = []
        loop.add(self.sock.fileno(), EPOLLIN, self.on_event)

    def send(self, data, address):
        assert self.sock.sendto(data, address) == len(data)

    def on_event(self, ev):
        while True:
            try:
                data, addr = self.sock.recvfrom(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    continue
                return
            self.got.append((data, addr[:2]))
            if self.echo:
                self.sock.sendto(data, addr)

    def close(self):
        if self.sock.fileno() >= 0:
            self.loop.remove(self.sock.fileno())
            self.sock.close()


class Identd:
    """An identd on the loop (on a port of its own: point sockd.ident's
    IDENT_PORT at ``port``).  ``script(query)`` gives what to do: a list
    of byte chunks (sent one per round, then the connection closed), or
    "silent" (keep the connection open, say nothing)."""

    def __init__(self, loop, net, script, host="127.0.0.1"):
        self.loop = loop
        self.script = script
        self.ls = net.listener(host)
        self.ls.setblocking(False)
        self.port = self.ls.getsockname()[1]
        self.queries = []
        self.peers = []
        self.conns = []
        loop.add(self.ls.fileno(), EPOLLIN, self.on_accept)
        net.keep(self)

    def on_accept(self, ev):
        conn, peer = self.ls.accept()
        self.peers.append(peer)
        self.conns.append(conn)
        conn.setblocking(False)
        buf = [b""]

        def on_query(ev):
            data = conn.recv(100)
            buf[0] += data
            if b"\n" not in buf[0] and data:
                return
            self.loop.remove(conn.fileno())
            self.queries.append(buf[0])
            todo = self.script(buf[0])
            if todo == "silent":
                return
            self.send_next(conn, list(todo))
        handler = _Handler(on_query)
        self.loop.add(conn.fileno(), EPOLLIN, handler.on_event)

    def send_next(self, conn, chunks):
        if not chunks:
            conn.close()
            return
        try:
            conn.send(chunks.pop(0))
        except OSError:                 # the query has stopped listening
            conn.close()
            return
        self.loop.call_later(0.01, lambda: self.send_next(conn, chunks))

    def close(self):
        if self.ls.fileno() >= 0:
            self.loop.remove(self.ls.fileno())
        for c in self.conns:
            c.close()


class _Handler:
    def __init__(self, fn):
        self.on_event = fn

    def close(self):
        pass


class Net:
    """Makes the test's sockets and peers and closes every one of them at
    the end of the test."""

    def __init__(self, loop):
        self.loop = loop
        self.things = []

    def keep(self, thing):
        self.things.append(thing)
        return thing

    def tcp_pair(self, **kw):
        a, b = tcp_pair(**kw)
        self.keep(a)
        self.keep(b)
        return a, b

    def peer(self, sock, **kw):
        return self.keep(Peer(self.loop, sock, **kw))

    def echo_server(self, host="127.0.0.1"):
        return self.keep(EchoServer(self.loop, host))

    def udp(self, host="127.0.0.1", echo=False):
        return self.keep(UdpPeer(self.loop, host, echo))

    def listener(self, host="127.0.0.1", port=0, backlog=8):
        s = self.keep(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM))
        s.bind((host, port))
        s.listen(backlog)
        return s

    def connect(self, address, source=None, timeout=WAIT):
        s = self.keep(socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
                                    socket.SOCK_STREAM))
        if source:
            s.bind((source, 0))
        s.settimeout(timeout)
        s.connect(address)
        return s

    def close_all(self):
        for thing in reversed(self.things):
            try:
                thing.close()
            except OSError:
                pass
        del self.things[:]


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def parse_conf(text, path="unit.conf", own=()):
    """A configuration from text (sockd.config.parse_text); this host's
    addresses are the ones the test names (none by default), not the
    machine's, so that decisions do not depend on where the test runs."""
    cfg = C.parse_text(text, path)
    # what configload.load reads besides the text: the passwd file and the
    # userfiles (real files the test wrote), not the host's addresses
    problems = CL.load_passwd(cfg)
    if problems:
        raise ConfigError(problems)
    CL.read_userfiles(cfg)
    cfg.own_addresses = frozenset(own)
    return cfg


class Scripted:
    """An upstream on the loop: for each connection, ``script`` is a list
    of (bytes to have read in all, bytes to answer then); an empty script
    is a black hole.  ``got`` has what each connection sent."""

    def __init__(self, loop, script, host="127.0.0.1"):
        self.loop = loop
        self.script = script
        self.ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.ls.bind((host, 0))
        self.ls.listen(16)
        self.ls.setblocking(False)
        self.port = self.ls.getsockname()[1]
        self.got = []
        self.conns = []
        loop.add(self.ls.fileno(), EPOLLIN, self.on_accept)

    def on_accept(self, ev):
        conn, _ = self.ls.accept()
        conn.setblocking(False)
        i = len(self.got)
        self.got.append(b"")
        self.conns.append(conn)
        steps = list(self.script)

        def on_data(ev):
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                self.loop.remove(conn.fileno())
                return
            self.got[i] += data
            while steps and len(self.got[i]) >= steps[0][0]:
                conn.send(steps.pop(0)[1])
        self.loop.add(conn.fileno(), EPOLLIN, _Handler(on_data).on_event)

    def close(self):
        for c in self.conns:
            if c.fileno() >= 0:
                self.loop.remove(c.fileno())
                c.close()
        if self.ls.fileno() >= 0:
            self.loop.remove(self.ls.fileno())
            self.ls.close()

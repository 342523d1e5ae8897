"""The metrics endpoint (``metrics ADDRESS:PORT [CIDR...]``): a small HTTP/1.0
and 1.1 server inside the master's own poll loop, which serves ``GET
/metrics`` in the Prometheus text format (metrics.py writes it).

It never blocks the master: its sockets are non-blocking and registered
with the master's poller (``attach``); the master hands it their events
(``on_event``) and calls ``tick`` once a pass, which closes what has taken
longer than TIMEOUT.  A scrape is one request per connection (the answer
says ``Connection: close``): read the head, at most MAX_REQUEST bytes,
answer, then half-close and read what the client may still send until it
closes (at most LINGER seconds): closing with unread bytes would reset the
connection and could lose the answer.  At most MAX_CONNS connections at once; a client outside
the access list, or one too many, is closed at once without a word.

``answer(head, body)`` (pure) turns a request head into the response
bytes: 200 for GET /metrics, 405 for another method on it, 404 for
another path, 400 for what is not an HTTP/1.x request.

Runs in the master only.  Must not import the master, the models or the
serving processes.
"""

import errno
import socket
from select import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT

from .addresses import addr_text
from .rules import ip_key

MAX_REQUEST = 8192        # bytes of a request head
TIMEOUT = 5.0             # seconds a connection may take, from accept to the last byte out
MAX_CONNS = 8             # connections at once
ACCEPTS = 16              # connections taken per readable event of the listener
REFUSED_LOG_EVERY = 60.0  # seconds between two log lines about refused clients
LINGER = 1.0              # seconds an answered connection is read (and dropped) until the client closes
LINGER_BYTES = 65536      # ... or until this much more has come
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large"}


def response(code, body=b"", content_type="text/plain; charset=utf-8", extra=()):
    """The bytes of an HTTP/1.1 response that closes the connection."""
    head = ["HTTP/1.1 %d %s" % (code, REASONS[code]),
            "Content-Type: %s" % content_type,
            "Content-Length: %d" % len(body),
            "Connection: close"]
    head += list(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def head_end(data):
    """Where the request head in ``data`` ends (after its blank line), or
    -1 while it has not."""
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        return i + 4
    i = data.find(b"\n\n")           # a bare-LF client (RFC 9112 lets a server take it)
    return i + 2 if i >= 0 else -1


def answer(head, body):
    """The response to the request whose head is ``head`` (bytes);
    ``body()`` makes the metrics text (str) when the request is ``GET
    /metrics``.  Returns (status code, response bytes).  Pure but for
    ``body``."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return 400, response(400, b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return 404, response(404, b"not found: the metrics are at /metrics\n")
    if method != b"GET":
        return 405, response(405, b"method not allowed: GET /metrics\n", extra=("Allow: GET",))
    return 200, response(200, body().encode("utf-8"), CONTENT_TYPE)


class Scrape:
    """One connection: what it has sent so far, what is left to send to
    it, and its deadline."""

    __slots__ = ("sock", "fd", "data", "out", "until", "lingering")

    def __init__(self, sock, until):
        self.sock, self.fd, self.until = sock, sock.fileno(), until
        self.data = b""
        self.out = None
        self.lingering = 0                # answered: bytes read (and dropped) since


class Endpoint:
    """The endpoint on listening socket ``sock`` (non-blocking), for the
    clients ``allowed`` (rules.AddrSpec, nets).  ``body()`` makes the text;
    ``clock()`` is the master's monotonic clock; ``log`` its log."""

    def __init__(self, address, sock, allowed, body, clock, log):
        self.address = address            # (host, port) as written
        self.sock = sock
        self.fd = sock.fileno()
        self.allowed = tuple(allowed)
        self.body = body
        self.clock = clock
        self.log = log
        self.poller = None
        self.conns = {}                   # fd -> Scrape
        self.refused = 0                  # connections refused (a metric of its own)
        self.refused_logged = -1e18
        self.served = 0

    # --- in the master's poll loop
    def attach(self, poller):
        """Register the listener with the master's poller."""
        self.poller = poller
        poller.register(self.fd, POLLIN)

    def owns(self, fd):
        return fd == self.fd or fd in self.conns

    def on_event(self, fd, ev):
        if fd == self.fd:
            self.accept()
            return
        c = self.conns.get(fd)
        if c is None:
            return
        if ev & (POLLERR | POLLNVAL) or (ev & POLLHUP and c.out is None and not ev & POLLIN):
            self.drop(c)
        elif c.lingering:
            self.linger(c)
        elif c.out is None:
            self.read(c)
        else:
            self.write(c)

    def tick(self, now):
        """Close the connections that have outlived TIMEOUT."""
        if not self.conns:
            return
        for c in [c for c in self.conns.values() if now >= c.until]:
            self.drop(c)

    def accept(self):
        for _ in range(ACCEPTS):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error("metrics: accept: %s" % exc.strerror)
                return
            if not self.permitted(peer[0]) or len(self.conns) >= MAX_CONNS:
                self.refuse(sock, peer[0], len(self.conns) >= MAX_CONNS)
                continue
            sock.setblocking(False)
            c = Scrape(sock, self.clock() + TIMEOUT)
            self.conns[c.fd] = c
            self.poller.register(c.fd, POLLIN)

    def permitted(self, ip):
        fam, n = ip_key(addr_text(ip))
        return any(spec.match(fam, n) for spec in self.allowed)

    def refuse(self, sock, ip, busy):
        self.refused += 1
        sock.close()
        now = self.clock()
        if now - self.refused_logged >= REFUSED_LOG_EVERY:
            self.refused_logged = now
            self.log.notice("metrics: refused a connection from %s (%s; logged at most once a minute)" % (
                addr_text(ip), "%d scrapes under way already" % MAX_CONNS if busy else
                "not in the metrics access list"))

    def read(self, c):
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(c)
            return
        if not data:
            self.drop(c)
            return
        c.data += data
        end = head_end(c.data)
        if end < 0:
            if len(c.data) >= MAX_REQUEST:
                self.send(c, response(431, b"request too large\n"))
            return
        if end > MAX_REQUEST:
            self.send(c, response(431, b"request too large\n"))
            return
        code, out = answer(c.data[:end], self.body)
        if code == 200:
            self.served += 1
        self.send(c, out)

    def send(self, c, out):
        """Answer ``c``: as much as goes now, the rest when it can take it."""
        c.data = b""
        c.out = memoryview(out)
        self.poller.modify(c.fd, POLLOUT)
        self.write(c)

    def write(self, c):
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(c)
            return
        c.out = c.out[n:]
        if not len(c.out):
            self.answered(c)

    def answered(self, c):
        """All sent: half-close, then read until the client closes."""
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop(c)
            return
        c.out = None
        c.lingering = 1
        c.until = min(c.until, self.clock() + LINGER)
        self.poller.modify(c.fd, POLLIN)

    def linger(self, c):
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        c.lingering += len(data)
        if not data or c.lingering > LINGER_BYTES:
            self.drop(c)

    def drop(self, c):
        self.conns.pop(c.fd, None)
        if self.poller is not None:
            try:
                self.poller.unregister(c.fd)
            except (KeyError, ValueError):
                pass
        c.sock.close()

    # --- its end
    def close(self):
        """Close every connection and the listener (the master's end, or
        a reload that drops or moves the endpoint)."""
        for c in list(self.conns.values()):
            self.drop(c)
        if self.poller is not None:
            try:
                self.poller.unregister(self.fd)
            except (KeyError, ValueError):
                pass
        self.sock.close()

    def forget(self):
        """In a new process after the fork: close its sockets (a scrape
        must not stay open because a child holds its descriptor)."""
        for c in self.conns.values():
            c.sock.close()
        self.conns = {}
        self.sock.close()

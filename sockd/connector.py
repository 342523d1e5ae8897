"""The way out: how sockd itself reaches a destination.

A ``Connector`` connects to one of a destination's permitted addresses as
browsers do (Happy Eyeballs, RFC 8305): the candidates in the order of
``interleave`` (the resolver's first family leads, then the families take
turns), the first attempt at once, the next one ``stagger`` seconds later
or as soon as an attempt fails, at most MAX_IN_FLIGHT under way at once;
the first that connects wins and the others are closed.  Each attempt is
a non-blocking connect from the source address the route file chooses (or
the kernel's).  It is driven by the poll loop and never blocks; the
session's ``timeout connect`` bounds it from outside (``cancel``).
``stagger`` 0 tries the candidates one after another, each until it fails.

It knows nothing of sessions or SOCKS: candidates and a port in, a
connected socket out, so that reaching an upstream server's addresses
takes the same code.

``route_source`` is the one place that asks the route file which local
address faces a destination, for connects and for BIND's listener.

This is where other ways out belong: an upstream server (chaining) would
be another connector with the same owner interface: ``owner.on_connected(
sock, address, error)`` and ``owner.close()``.
"""

import _socket
import errno
import socket

from .addresses import addr_text, errno_text
from .ident import IP_BIND_ADDRESS_NO_PORT
from .loop import EPOLLERR, EPOLLHUP, EPOLLOUT
from .relay import set_socket_options
from .rules import ip_key

STAGGER = 0.25          # RFC 8305 section 5: the recommended Connection Attempt Delay
SOCK_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
MAX_IN_FLIGHT = 4       # attempts under way at once; past that, the next waits for one to fail


def route_source(table, ip, host, log):
    """The local address the route file gives for destination ``ip``
    (``host``: its name, for name routes), or None after logging the
    classic complaint."""
    route = table.lookup(*ip_key(ip), names=(host,) if host else ())
    if route is None:
        log.error("***Cannot find appropriate interface to communicate with %s" % addr_text(ip))
        return None
    return route


def interleave(candidates):
    """RFC 8305 section 4: [(family, address)] in the order to try them.
    The first address's family leads (the resolver has sorted by RFC 6724
    already), then the families take turns, each in its own order.  Pure."""
    if len(candidates) < 2:
        return list(candidates)
    first = candidates[0][0]
    lead = [c for c in candidates if c[0] == first]
    rest = [c for c in candidates if c[0] != first]
    out = []
    for i in range(max(len(lead), len(rest))):
        if i < len(lead):
            out.append(lead[i])
        if i < len(rest):
            out.append(rest[i])
    return out


class Attempt:
    """One non-blocking connect under way beside another; its socket's
    events go to the connector that started it.  (The connector's own
    ``sock``, ``fd`` and ``ip`` carry one attempt, so that the common case,
    one address, makes no object more.)"""

    __slots__ = ("connector", "sock", "fd", "ip")

    def __init__(self, connector, sock, ip):
        self.connector = connector
        self.sock = sock
        self.fd = sock.fileno()
        self.ip = ip

    def on_event(self, ev):
        self.connector.attempt_done(self, ev)

    def close(self):
        """The loop's error handler: the whole connect ends, and its owner."""
        self.connector.close()


class Connector:
    """Connect to one of ``candidates`` [(family, address)] on ``port``.
    ``owner.on_connected(sock, address, None)`` on success (a connected
    non-blocking socket, options set) or ``owner.on_connected(None, None,
    errno)`` when every candidate failed (the errno of the last one to
    fail); called exactly once, unless cancelled first.  After success,
    ``mask`` is what the socket is still registered for in the loop (-1:
    not registered) and ``fd`` its descriptor, so that the relay can take
    it over without a system call."""

    __slots__ = ("loop", "candidates", "port", "table", "host", "log", "owner", "live", "stagger",
                 "attempts", "timer", "error", "sock", "fd", "ip", "mask")

    def __init__(self, loop, candidates, port, table, host, log, owner, stagger=STAGGER):
        self.loop = loop
        # still to try, the next one last (a copy: the session keeps its own)
        self.candidates = list(candidates)
        self.candidates.reverse()
        self.port = port
        self.table = table          # the route file's RouteTable, or None
        self.host = host
        self.log = log
        self.owner = owner
        self.live = True            # until on_connected is called, or cancel()
        self.stagger = stagger      # seconds before the next attempt (0: only once one fails)
        self.attempts = []          # attempts under way, oldest first: Attempts, or self
        self.timer = None           # the stagger's, while another attempt is due
        self.error = None           # errno of the last attempt that failed
        self.sock = None            # the attempt this object carries itself, while under way
        self.fd = -1                # its descriptor; once connected, the winner's
        self.ip = None
        self.mask = -1

    def start(self):
        """Start the first attempt.  One candidate, the common case, goes
        straight to it."""
        c = self.candidates
        if len(c) > 1:
            c.reverse()
            self.candidates = c = interleave(c)
            c.reverse()
        self.launch()

    def launch(self):
        """Start the next attempt: open sockets until one is connecting (a
        candidate that fails at once is passed over at once), then arm the
        stagger for the one after.  With nothing left under way, the
        connect has failed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        candidates = self.candidates
        while candidates and len(self.attempts) < MAX_IN_FLIGHT:
            fam, ip = candidates.pop()
            try:
                # the C type, as the acceptor's (serving.py): no Python
                # __init__ and close around it
                r = _socket.socket(fam, SOCK_FLAGS)
            except OSError as exc:
                self.failed(ip, exc.errno)
                continue
            set_socket_options(r)
            if self.table is not None:
                err = self.bind_source(r, ip)
                if err:
                    r.close()
                    self.failed(ip, err)
                    continue
            err = r.connect_ex((ip, self.port))
            if err == 0:
                self.won(r, ip, r.fileno(), -1)
                return
            if err == errno.EINPROGRESS:
                if self.sock is None:
                    a = self
                    self.sock, self.fd, self.ip = r, r.fileno(), ip
                else:
                    a = Attempt(self, r, ip)
                self.attempts.append(a)
                self.loop.add(a.fd, EPOLLOUT, a.on_event)
                break
            r.close()
            self.failed(ip, err)
        if not self.attempts:
            self.finish(None, None, self.error or errno.EHOSTUNREACH)
        elif candidates and self.stagger > 0 and len(self.attempts) < MAX_IN_FLIGHT:
            self.timer = self.loop.call_later(self.stagger, self.on_stagger)

    def failed(self, ip, err):
        """An attempt failed (at once, or later): its errno is the answer
        unless another one does better."""
        self.error = err
        if self.candidates or self.attempts:
            self.log.debug("connect to %s: %s port %d: %s (%d other attempts under way, %d addresses to try)" % (
                self.host or addr_text(ip), addr_text(ip), self.port, errno_text(err), len(self.attempts),
                len(self.candidates)))

    def on_stagger(self):
        """``stagger`` seconds without an answer: start the next attempt
        beside the ones under way."""
        self.timer = None
        if not self.live:
            return
        a = self.attempts[-1]
        self.log.debug("connect to %s: no answer from %s port %d in %gs; trying the next address too" % (
            self.host or addr_text(a.ip), addr_text(a.ip), self.port, self.stagger))
        self.launch()

    def bind_source(self, r, ip):
        """The route file chooses the source address.  Bound without a port
        (IP_BIND_ADDRESS_NO_PORT): the port is picked at connect time, so a
        busy server cannot run out of ephemeral ports.  Returns an errno."""
        route = route_source(self.table, ip, self.host, self.log)
        if route is None:
            return errno.ENETUNREACH
        try:
            r.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            r.bind((route.if_addr, 0))
        except OSError as exc:
            self.log.error("route %s:%d: cannot use %s: %s" % (route.file, route.line, route.if_addr, exc.strerror))
            return exc.errno
        return 0

    def on_event(self, ev):
        """The events of the attempt this object carries itself."""
        self.attempt_done(self, ev)

    def attempt_done(self, a, ev=EPOLLERR):
        """An attempt's socket is writable (``ev``): connected, or failed.
        A connect that failed reports EPOLLERR (tcp_poll), so EPOLLOUT
        alone means connected, without asking SO_ERROR."""
        sock, fd, ip = a.sock, a.fd, a.ip
        err = 0 if not ev & (EPOLLERR | EPOLLHUP) else sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.attempts.remove(a)
        if a is self:
            self.sock, self.fd = None, -1
        if err:
            self.loop.remove(fd)
            sock.close()
            self.failed(ip, err)
            if self.live:
                self.launch()
            return
        self.won(sock, ip, fd, EPOLLOUT)

    def won(self, sock, ip, fd, mask):
        """``sock`` connected first (still registered for ``mask``): the
        other attempts are closed, and the owner told."""
        if self.attempts or self.timer is not None:
            if self.attempts:
                self.log.debug("connect to %s: %s port %d answered first; %d other attempts closed" % (
                    self.host or addr_text(ip), addr_text(ip), self.port, len(self.attempts)))
            self.drop()
        self.fd, self.mask = fd, mask
        self.finish(sock, ip, None)

    def drop(self):
        """Close every attempt under way and the stagger's timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        attempts = self.attempts
        while attempts:
            a = attempts.pop()
            self.loop.remove(a.fd)
            a.sock.close()
            if a is self:
                self.sock, self.fd = None, -1

    def finish(self, sock, ip, err):
        if not self.live:
            if sock is not None:
                if self.mask >= 0:
                    self.loop.remove(self.fd)
                    self.mask = -1
                sock.close()
            return
        self.live = False
        self.owner.on_connected(sock, addr_text(ip) if ip else None, err)

    def cancel(self):
        """Give up (the session's deadline, or it went away): no callback."""
        self.live = False
        self.candidates = []
        self.drop()

    def close(self):
        """The loop's error handler: a bug met this connect, or the owner's
        on_connected.  Nothing of it stays registered, and the owner ends."""
        self.live = False
        self.candidates = []
        self.drop()
        if self.mask >= 0:
            # connected and handed over, but the owner failed before it took
            # the socket's events: they would fire for nobody, forever
            self.loop.remove(self.fd)
            self.mask = -1
        self.owner.close()

"""The way out: how sockd itself reaches a destination.

A ``Connector`` tries the permitted addresses of a destination in order,
each with a non-blocking connect from the source address the route file
chooses (or the kernel's), and reports the first socket that connects, or
the last error.  It is driven by the poll loop and never blocks; the
session's ``timeout connect`` bounds it from outside (``cancel``).

``route_source`` is the one place that asks the route file which local
address faces a destination, for connects and for BIND's listener.

This is where other ways out belong: an upstream server (chaining) would
be another connector with the same owner interface: ``owner.on_connected(
sock, address, error)`` and ``owner.close()``.
"""

import errno
import socket

from .addresses import addr_text
from .ident import IP_BIND_ADDRESS_NO_PORT
from .loop import EPOLLOUT
from .relay import set_socket_options
from .rules import ip_key


def route_source(table, ip, host, log):
    """The local address the route file gives for destination ``ip``
    (``host``: its name, for name routes), or None after logging the
    classic complaint."""
    route = table.lookup(*ip_key(ip), names=(host,) if host else ())
    if route is None:
        log.error("***Cannot find appropriate interface to communicate with %s" % addr_text(ip))
        return None
    return route


class Connector:
    """Connect to the first of ``candidates`` [(family, address)] that
    answers on ``port``.  ``owner.on_connected(sock, address, None)`` on
    success (a connected non-blocking socket, options set) or
    ``owner.on_connected(None, None, errno)`` when every candidate failed;
    called exactly once, unless cancelled first.  After success, ``mask``
    is what the socket is still registered for in the loop (-1: not
    registered), so that the relay can take it over without a system
    call."""

    __slots__ = ("loop", "candidates", "port", "table", "host", "log", "owner", "live", "sock", "fd", "ip",
                 "mask")

    def __init__(self, loop, candidates, port, table, host, log, owner):
        self.loop = loop
        self.candidates = list(candidates)      # the session keeps its own
        self.port = port
        self.table = table          # the route file's RouteTable, or None
        self.host = host
        self.log = log
        self.owner = owner
        self.live = True            # until on_connected is called, or cancel()
        self.sock = None
        self.fd = -1
        self.ip = None
        self.mask = -1

    def start(self, last_error=None):
        """Try the next candidates until one is connecting or connected."""
        while self.candidates:
            fam, ip = self.candidates.pop(0)
            try:
                r = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError as exc:
                last_error = exc.errno
                continue
            set_socket_options(r)
            if self.table is not None:
                err = self.bind_source(r, ip)
                if err:
                    r.close()
                    last_error = err
                    continue
            err = r.connect_ex((ip, self.port))
            if err == 0:
                self.finish(r, ip, None)
                return
            if err == errno.EINPROGRESS:
                self.sock, self.fd, self.ip = r, r.fileno(), ip
                self.loop.add(self.fd, EPOLLOUT, self.on_event)
                return
            r.close()
            last_error = err
        self.finish(None, None, last_error or errno.EHOSTUNREACH)

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
        r = self.sock
        err = r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.drop()
            self.start(err)
            return
        self.sock = None
        self.mask = EPOLLOUT
        self.finish(r, self.ip, None)

    def drop(self):
        if self.sock is not None:
            self.loop.remove(self.fd)
            self.sock.close()
            self.sock = None

    def finish(self, sock, ip, err):
        if not self.live:
            if sock is not None:
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

"""The way out: how sockd itself reaches a destination.

A ``Connector`` tries the permitted addresses of a destination in order,
each with a non-blocking connect from the source address the route file
chooses (or the kernel's), and reports the first socket that connects, or
the last error.  It is driven by the poll loop and never blocks; the
session's ``timeout connect`` bounds it from outside (``cancel``).

``route_source`` is the one place that asks the route file which local
address faces a destination, for connects and for BIND's listener.

This is where other ways out belong: an upstream server (chaining) would
be another connector with the same ``done(sock, address, error)`` contract.
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
    answers on ``port``.  ``done(sock, address, None)`` on success (a
    connected non-blocking socket, options set) or ``done(None, None,
    errno)`` when every candidate failed; called exactly once, unless
    cancelled first.  After success, ``mask`` is what the socket is still
    registered for in the loop (-1: not registered), so that the relay can
    take it over without a system call."""

    __slots__ = ("loop", "candidates", "port", "table", "host", "log", "done", "sock", "fd", "ip", "mask")

    def __init__(self, loop, candidates, port, table, host, log, done):
        self.loop = loop
        self.candidates = list(candidates)      # the session keeps its own
        self.port = port
        self.table = table          # the route file's RouteTable, or None
        self.host = host
        self.log = log
        self.done = done
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
        done, self.done = self.done, None
        if done is not None:
            done(sock, addr_text(ip) if ip else None, err)
        elif sock is not None:
            sock.close()

    def cancel(self):
        """Give up (the session's deadline, or it went away): no callback."""
        self.done = None
        self.candidates = []
        self.drop()

    def close(self):
        """A bug met this connect (the loop's error handler): report it as a
        failure, so that the session answers and closes."""
        self.candidates = []
        self.drop()
        self.finish(None, None, errno.EIO)

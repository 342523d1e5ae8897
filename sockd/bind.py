"""BIND (SOCKS 4 and 5): let an application server connect back to the
client through sockd, as active FTP does.

The session has been granted by the rules (destination = DSTIP/DSTPORT of
the request).  ``start`` opens a listening socket on the address that faces
the application server (the route file's interface for it, else the one the
kernel would use to reach it; never 0.0.0.0) -- on the requested port when
it is 1024 or above and free, else on one the system picks -- answers the
first reply with that address and port, accepts exactly one connection,
checks that it comes from DSTIP (``bind check-peer``), and hands the
connection to the session, which sends the second reply and relays.  The
session's ``timeout connect`` bounds the wait.

What it asks of its owner (the session), and nothing more: ``ctx``,
``dst_ip``, ``dst_host``, ``dst_port`` and ``local_ip``; ``desc()`` for log
lines; ``granted(address, port)`` (send the first reply; False if the
client is gone); ``fail(rep5, detail)`` and ``connect_failed(errno)``
(count, log, answer in the client's version and close); ``bound(conn, ip,
port)``; ``close()``.
"""

import errno
import socket

from . import protocol as P
from .addresses import addr_text
from .connector import route_source
from .loop import EPOLLIN

UNSPECIFIED = (None, "0.0.0.0", "::")


def facing_address(family, dst_ip, port, fallback):
    """The local address the kernel would use towards ``dst_ip``."""
    if dst_ip in UNSPECIFIED:
        return fallback
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((dst_ip, port or 9))
        return s.getsockname()[0]
    except OSError:
        return fallback
    finally:
        s.close()


class BindWait:
    __slots__ = ("session", "lsock", "fd", "family")

    def __init__(self, session):
        self.session = session
        self.lsock = None
        self.fd = -1

    def start(self):
        """Open the listener and send the first reply.  Returns False after
        the session has been answered and closed on failure."""
        s = self.session
        ctx = s.ctx
        v6 = ":" in (s.dst_ip or "") or (s.dst_ip in (None, "0.0.0.0") and ":" in s.local_ip)
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        self.family = fam
        table = ctx.config.route_table
        if table is not None and s.dst_ip not in UNSPECIFIED:
            route = route_source(table, s.dst_ip, s.dst_host, ctx.log)
            if route is None:
                s.fail(P.REP_NET_UNREACHABLE)
                return False
            local = route.if_addr
        else:
            local = facing_address(fam, s.dst_ip, s.dst_port, s.local_ip)
        try:
            ls = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            s.connect_failed(exc.errno)
            return False
        try:
            if fam == socket.AF_INET6:
                ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # A client that asks for a port of its own (1024 and up, as
            # socksify does for a program's bind()) gets it when it is free;
            # classic clients name the primary connection's port, usually a
            # well-known one, and get one the system picks.
            try:
                if s.dst_port < 1024:
                    raise OSError
                ls.bind((local, s.dst_port))
            except OSError:
                ls.bind((local, 0))
            ls.listen(1)
        except OSError as exc:
            ls.close()
            s.fail(P.REP_FAILURE, ".  Error code: bind %s" % exc.strerror)
            return False
        self.lsock = ls
        self.fd = ls.fileno()
        addr, port = ls.getsockname()[:2]
        if not s.granted(addr, port):
            self.release()
            s.close()
            return False
        ctx.log.info("bind -- %s: listening on %s port %d" % (s.desc(), addr, port))
        ctx.loop.add(self.fd, EPOLLIN, self.on_accept)
        return True

    def on_accept(self, ev):
        s = self.session
        try:
            conn, peer = self.lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                return
            self.release()
            s.connect_failed(exc.errno)
            return
        self.release()
        peer_ip = addr_text(peer[0])
        expect = s.dst_ip
        if s.ctx.config.bind_check_peer and expect not in UNSPECIFIED and peer_ip != expect:
            conn.close()
            s.fail(P.REP_NOT_ALLOWED, ". Error: connected to wrong host %s (%s)" % (peer_ip, peer[1]))
            return
        s.bound(conn, peer_ip, peer[1])

    def close(self):
        """The loop's error handler: the wait ends with its session."""
        self.session.close()

    def release(self):
        """Close the listener (the session is closing, or it has its peer)."""
        if self.lsock is not None:
            self.session.ctx.loop.remove(self.fd)
            self.lsock.close()
            self.lsock = None

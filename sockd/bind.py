"""BIND (SOCKS 4 and 5): let an application server connect back to the
client through sockd, as active FTP does.

The session has been granted by the rules (destination = DSTIP/DSTPORT of
the request).  ``start`` opens a listening socket on the address that faces
the application server (the route file's interface for it, else the one the
kernel would use to reach it; never 0.0.0.0) -- on the requested port when
it is 1024 or above and free, else on one the system picks -- answers the first reply with
that address and port, accepts exactly one connection within
``timeout connect``, checks that it comes from DSTIP (``bind check-peer``),
sends the second reply with the peer's address and port, and hands the
connection to the session's relay.
"""

import errno
import socket

from . import protocol as P
from .addresses import addr_text
from .loop import EPOLLIN


def facing_address(family, dst_ip, port, fallback):
    """The local address the kernel would use towards ``dst_ip``."""
    if dst_ip in ("0.0.0.0", "::"):
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

    def start(self):
        """Open the listener and send the first reply.  Returns False after
        answering and closing the session on failure."""
        s = self.session
        ctx = s.ctx
        v6 = ":" in (s.dst_ip or "") or (s.dst_ip in (None, "0.0.0.0") and ":" in s.local_ip)
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        self.family = fam
        table = ctx.config.route_table
        if table is not None and s.dst_ip and s.dst_ip not in ("0.0.0.0", "::"):
            from .rules import ip_key
            route = table.lookup(*ip_key(s.dst_ip), names=(s.dst_host,) if s.dst_host else ())
            if route is None:
                ctx.log.error("***Cannot find appropriate interface to communicate with %s" % s.dst_ip)
                s.fail_reply(P.REP_NET_UNREACHABLE)
                return False
            local = route.if_addr
        else:
            local = facing_address(fam, s.dst_ip or "0.0.0.0", s.dst_port, s.local_ip)
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
            ctx.stats["failed"] += 1
            ctx.log.notice("failed -- %s.  Error code: bind %s" % (s.desc(), exc.strerror))
            s.fail_reply(P.REP_FAILURE)
            return False
        self.lsock = ls
        self.fd = ls.fileno()
        addr, port = ls.getsockname()[:2]
        if not s.send_now(s.granted(addr, port)):
            self.close()
            s.close()
            return False
        ctx.log.info("bind -- %s: listening on %s port %d" % (s.desc(), addr, port))
        s.loop.add(self.fd, EPOLLIN, self.on_accept)
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
            self.close()
            s.connect_failed(exc.errno)
            return
        self.close()
        peer_ip = addr_text(peer[0])
        ctx = s.ctx
        expect = s.dst_ip
        if ctx.config.bind_check_peer and expect not in (None, "0.0.0.0", "::") and peer_ip != expect:
            conn.close()
            ctx.stats["failed"] += 1
            ctx.log.notice("failed -- %s. Error: connected to wrong host %s (%s)" % (
                s.desc(), peer_ip, peer[1]))
            s.fail_reply(P.REP_NOT_ALLOWED)
            return
        s.bound(conn, peer_ip, peer[1])

    def close(self):
        if self.lsock is not None:
            self.session.loop.remove(self.fd)
            self.lsock.close()
            self.lsock = None

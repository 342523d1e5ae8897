"""BIND (SOCKS 4 and 5): let an application server connect back to the
client through sockd, as active FTP does.

The session has been granted by the rules (destination = DSTIP/DSTPORT of
the request; a request whose DSTIP is 0.0.0.0 or :: names no server and is
granted on its client alone, as a UDP association is).  ``start`` counts
the BIND against ``limit binds`` (the client address's BINDs waiting for
their peer, across workers), opens a listening socket on the address that
faces the application server (the route file's interface for it, else the
one the kernel would use to reach it; never 0.0.0.0) -- on a port the
kernel chooses, or on the requested one (DSTPORT) when it is within
``bind ports`` and free -- answers the first reply with that address and
port, and accepts exactly one connection.  The connection must come from
DSTIP when the request names it (``bind check-peer yes``, the default);
otherwise (no DSTIP, or ``bind check-peer no``) the session judges its
address with the rules, as the same request naming it (``decision.decide``:
the one answer to "may this client go there?", private-destination guard
included).  The session's ``timeout connect`` bounds the whole wait.

What it asks of its owner (the session), and nothing more: ``ctx``,
``src_key``, ``dst_ip``, ``dst_host``, ``dst_port`` and ``local_ip``;
``desc()`` for log lines; ``granted(address, port)`` (send the first
reply; False if the client is gone); ``fail(rep5, detail)`` and
``connect_failed(errno)`` (count, log, answer in the client's version and
close); ``over_limit(reason, log_it)`` (refused by a limit); ``bound(conn,
ip, port)``; ``judge_peer()`` (the rules are to judge ``peer``, then the
session calls ``take()`` or closes); ``close()``.
"""

import errno
import socket

from . import protocol as P
from .addresses import addr_text
from .connector import route_source
from .limits import OK, REASONS
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


def listen_port(wanted, allowed):
    """The port to bind for a BIND that asked for ``wanted`` (DSTPORT):
    itself when ``bind ports`` (``allowed``, (low, high) or None) includes
    it, else 0 (the kernel chooses).  Classic clients name the port of
    their primary connection (21 for FTP), socksify the port the program
    binds; only the administrator's range may be taken on request, so a
    client cannot take the port of a service that is restarting."""
    if allowed is not None and allowed[0] <= wanted <= allowed[1]:
        return wanted
    return 0


class BindWait:
    __slots__ = ("session", "lsock", "fd", "family", "slot", "conn", "peer", "names")

    def __init__(self, session):
        self.session = session
        self.lsock = None
        self.fd = -1
        self.slot = -2              # counted by limit binds while listening (release_bind)
        self.conn = None            # the accepted connection while the rules judge it
        self.peer = None            # (address, port) of that connection
        self.names = None           # its names, once looked up (when rules name hosts)

    def start(self):
        """Count the BIND, open the listener and send the first reply.
        Returns False after the session has been answered and closed on
        failure."""
        s = self.session
        ctx = s.ctx
        limits = ctx.bind_limits
        if limits is not None:
            verdict, slot, log_it = limits.admit_bind(s.src_key)
            if verdict != OK:
                s.over_limit(REASONS[verdict], log_it)
                return False
            self.slot = slot
        v6 = ":" in (s.dst_ip or "") or (s.dst_ip in (None, "0.0.0.0") and ":" in s.local_ip)
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        self.family = fam
        table = ctx.config.route_table
        if table is not None and s.dst_ip not in UNSPECIFIED:
            route = route_source(table, s.dst_ip, s.dst_host, ctx.log)
            if route is None:
                self.release()
                s.fail(P.REP_NET_UNREACHABLE)
                return False
            local = route.if_addr
        else:
            local = facing_address(fam, s.dst_ip, s.dst_port, s.local_ip)
        try:
            ls = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.release()
            s.connect_failed(exc.errno)
            return False
        try:
            if fam == socket.AF_INET6:
                ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            port = listen_port(s.dst_port, ctx.config.bind_ports)
            try:
                ls.bind((local, port))
            except OSError:
                if not port:
                    raise
                ls.bind((local, 0))         # the port asked for is taken: another one
            ls.listen(1)
        except OSError as exc:
            ls.close()
            self.release()
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
        # one connection per BIND: the port is given back at once
        self.stop_listening()
        peer_ip = addr_text(peer[0])
        expect = s.dst_ip
        if expect not in UNSPECIFIED and (peer_ip == expect or s.ctx.config.bind_check_peer):
            if peer_ip != expect:
                conn.close()
                s.fail(P.REP_NOT_ALLOWED, ". Error: connected to wrong host %s (%s)" % (peer_ip, peer[1]))
                return
            s.bound(conn, peer_ip, peer[1])
            return
        # a host the request did not name: the rules judge it first
        self.conn, self.peer = conn, (peer_ip, peer[1])
        s.judge_peer()

    def take(self):
        """The judged connection, for the session to relay: (conn, ip, port)."""
        conn, self.conn = self.conn, None
        return conn, self.peer[0], self.peer[1]

    def close(self):
        """The loop's error handler: the wait ends with its session."""
        self.session.close()

    def stop_listening(self):
        """Close the listener and stop counting the BIND as pending."""
        if self.lsock is not None:
            self.session.ctx.loop.remove(self.fd)
            self.lsock.close()
            self.lsock = None
        if self.slot != -2:
            self.session.ctx.bind_limits.release_bind(self.slot)
            self.slot = -2

    def release(self):
        """Let go of everything: the session is closing, or it has its peer."""
        self.stop_listening()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

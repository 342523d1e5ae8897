"""The way out through an upstream proxy: a connector that reaches the
destination through the SOCKS 4, 4A, 5 or HTTP proxies the way-out file
lists for it (wayout.Decision.servers), in order, with failover.

It has ``connector.Connector``'s owner interface: ``owner.on_connected(
sock, address, error)`` exactly once unless cancelled -- a socket whose
upstream has said yes (the relay can start on it), or None and the error --
and ``owner.close()`` when the loop's error handler meets it; ``cancel()``
(the session's ``timeout connect``, or it went away), ``release()`` (the
same, by the name the session's close uses), ``mask``: what the socket
handed over is registered for.  On success it also tells: ``server`` (the
wayout.Server that carried it: its ``label`` for the log), ``bound`` (the
address and port the upstream announced, or None when it announced none),
``first`` (the destination's first bytes, which came with the reply: the
client's).  ``error`` on failure is an errno (only when no upstream could
even be asked) or an ``UpstreamFailure``: the SOCKS 5 reply code for the
client and the words for the log.

Each upstream in turn, those the health table (health.py) marks down
after the others: its name is resolved through the process's resolver
(resolver.py: its cache, then the helper pool for names, as the
session's own lookups are), its addresses are reached with a
``connector.Connector`` (Happy Eyeballs over them, the route file's
source address), and the handshake (upstreamproto.py) runs on the loop,
never blocking.  What it takes of the process, through ``ctx`` (the
session's Context): ``loop``, ``log``, ``resolver``, ``upstream_health()``
and ``config`` (``timeout upstream``, ``timeout connect``, ``connect
stagger``, the route file).  What it sends is the destination's name when the upstream
resolves names (socks4a, socks5h, http and the classic form) and the
client gave one, else the address sockd resolved and the rules permitted.
The client's own user name and password are never sent: an upstream gets
the credentials of its URL, or none.

What ends an attempt decides what comes next:

* the upstream refused the connect, reset or closed before answering, did
  not answer its first message within ``attempt`` seconds (``timeout
  upstream``), its name did not resolve, it refused our credentials or
  does not speak its protocol: it is down for now (marked in the health
  table, logged once for the whole server) and the next upstream is
  tried;
* it answered and refused the request (host unreachable, not allowed):
  that is the answer, passed on to the client; no other upstream is asked,
  for the destination is the problem, not the way there.

BIND and UDP ASSOCIATE take the same path (``command``); for BIND the
owner is told of the first reply with ``owner.on_upstream_bound(address,
port)`` and the connector goes on to the second.
"""

import errno
import socket

from . import health as H
from . import protocol as P
from . import upstreamproto as U
from .addresses import addr_text, errno_text
from .connector import Connector
from .loop import EPOLLIN, EPOLLOUT

RECV = 8192
UNSPECIFIED = ("0.0.0.0", "::", None)


class UpstreamFailure:
    """Why no upstream carried the request: ``rep`` (the SOCKS 5 reply code
    for the client; a SOCKS 4 client gets 91) and ``detail`` (for the log
    line: upstream labels, never credentials)."""

    __slots__ = ("rep", "detail")

    def __init__(self, rep, detail):
        self.rep, self.detail = rep, detail

    def __repr__(self):
        return "UpstreamFailure(%d, %r)" % (self.rep, self.detail)


def attempt_seconds(timeout_upstream, timeout_connect):
    """How long one upstream has to answer its first message: ``timeout
    upstream``, and at most half of ``timeout connect``, so that a
    black-holed first upstream leaves time for the next (0: no bound but
    the session's)."""
    if timeout_connect > 0 and timeout_upstream > 0:
        return min(timeout_upstream, timeout_connect / 2.0)
    return timeout_upstream


def order(servers, health):
    """The upstreams to try: in the list's order, those marked down after
    the others (still tried: a stale mark must never refuse everyone)."""
    up, down = [], []
    for s in servers:
        (down if health.down(s.label) else up).append(s)
    return up + down


def destination_for(server, command, dst_host, candidates):
    """What to ask ``server`` for: the client's name when the upstream
    resolves names, else the first permitted address its kind can carry
    (SOCKS 4: IPv4).  None when it can carry none."""
    if command == P.CMD_UDP:
        return "0.0.0.0"
    if dst_host is not None and server.remote_names:
        return dst_host
    for fam, ip in candidates or ():
        if fam == socket.AF_INET or server.kind not in (U.SOCKS4, U.SOCKS4A):
            return addr_text(ip)
    return None


class UpstreamConnector:
    __slots__ = ("loop", "log", "owner", "resolver", "health", "table", "stagger", "attempt", "command",
                 "dst_host", "candidates", "port", "queue", "live", "server", "tries", "connector", "sock", "fd",
                 "hs", "out", "mask",
                 "timer", "bound", "first", "upstream_ip", "failures", "uncarried", "handed", "listening")

    def __init__(self, ctx, owner, servers, command, dst_host, candidates, port):
        """``owner``: the session (also the requester of the resolver's
        jobs: ``gone``, ``src_key``, ``client_ip``, ``close()``);
        ``servers``: the Decision's; ``dst_host``: the client's name or
        None; ``candidates``: the permitted [(family, address)]."""
        cfg = ctx.config
        self.loop = ctx.loop
        self.log = ctx.log
        self.owner = owner
        self.resolver = ctx.resolver
        self.health = health = ctx.upstream_health()
        self.table = cfg.route_table
        self.stagger = cfg.connect_stagger
        self.attempt = attempt_seconds(cfg.timeout_upstream, cfg.timeout_connect)
        self.command = command
        self.dst_host = dst_host
        self.candidates = candidates
        self.port = port
        self.queue = order(servers, health)
        self.live = True
        self.server = None
        self.tries = 0              # attempts begun (for the resolver's answers)
        self.connector = None
        self.sock = None
        self.fd = -1
        self.hs = None
        self.out = b""
        self.mask = -1
        self.timer = None
        self.bound = None
        self.first = b""
        self.upstream_ip = None
        self.failures = []          # "label: why" of each upstream that failed
        self.uncarried = []         # "label: why" of those that cannot carry the request
        self.handed = -1            # the descriptor handed to the owner, still registered here
        self.listening = False      # BIND: the first reply is in

    # --- one upstream after the other ------------------------------------------------------
    def start(self):
        """Try the next upstream; when none is left, give up."""
        while self.live and self.queue:
            server = self.queue.pop(0)
            address = destination_for(server, self.command, self.dst_host, self.candidates)
            try:
                if address is None:
                    raise ValueError("SOCKS 4 carries IPv4 destinations only")
                hs = U.handshake(server.kind, self.command, address, self.port, server.user, server.password,
                                 server.pipeline)
            except ValueError as exc:
                self.uncarried.append("%s: %s" % (server.label, exc))
                continue
            self.server, self.hs, self.out = server, hs, b""
            self.tries += 1
            if self.attempt > 0:
                self.timer = self.loop.call_later(self.attempt, self.on_attempt_timeout)
            fam = server.family     # parsed once, with the way-out file
            if fam is not None:
                self.reach([(fam, server.host)])
                return
            tries = self.tries
            busy = self.resolver.resolve(self.owner, server.host,
                                         lambda name, addresses, error: self.on_resolved(tries, addresses, error))
            if busy is not None:
                self.stop_attempt()
                self.finish(None, UpstreamFailure(P.REP_FAILURE, "lookup of upstream %s not run: %s" % (
                    server.label, busy.text)))
            return
        if self.live:
            self.give_up()

    def on_resolved(self, tries, result, error):
        if not self.live or tries != self.tries or self.connector is not None or self.sock is not None:
            return                  # an attempt given up meanwhile (timeout upstream)
        if error is not None or not result:
            why = getattr(error, "strerror", None) or str(error or "no address")
            self.server_failed("cannot resolve %s: %s" % (self.server.host, why))
            return
        self.reach(result)

    def reach(self, addresses):
        self.connector = Connector(self.loop, addresses, self.server.port, self.table, self.server.host,
                                   self.log, self, self.stagger)
        self.connector.start()

    # --- the connector's owner ---------------------------------------------------------------
    def on_connected(self, sock, ip, err):
        connector, self.connector = self.connector, None
        if not self.live:
            if sock is not None:
                if connector.mask >= 0:
                    self.loop.remove(sock.fileno())
                sock.close()
            return
        if sock is None:
            self.server_failed("connect: %s" % errno_text(err), err)
            return
        self.sock, self.fd, self.upstream_ip = sock, sock.fileno(), ip
        if connector.mask >= 0:
            self.loop.rebind(self.fd, self.on_event)
            self.mask = connector.mask
        else:
            self.loop.add(self.fd, 0, self.on_event)
            self.mask = 0
        self.send(self.hs.start())

    def close(self):
        """The loop's error handler met this connector, or its Connector, or
        the owner's on_connected: nothing of it stays registered, and the
        owner ends."""
        self.cancel()
        if self.handed >= 0:
            # handed over, but the owner failed before it took the events
            self.loop.remove(self.handed)
            self.handed = -1
        self.owner.close()

    # --- the handshake -----------------------------------------------------------------------
    def send(self, data):
        """Send ``data`` (after what waits); what the socket cannot take
        now waits for EPOLLOUT.  Returns False when the attempt ended."""
        out = self.out + data if self.out else data
        try:
            n = self.sock.send(out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self.lost(exc.errno)
            return False
        self.out = out[n:]
        self.want(EPOLLIN | (EPOLLOUT if self.out else 0))
        return True

    def want(self, mask):
        if mask != self.mask:
            self.loop.modify(self.fd, mask)
            self.mask = mask

    def on_event(self, ev):
        if ev & EPOLLOUT and self.out:
            if not self.send(b""):
                return
        if not ev & ~EPOLLOUT:
            return
        try:
            data = self.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc.errno)
            return
        if not data:
            self.lost(None)
            return
        hs = self.hs
        try:
            events = hs.feed(data)
        except U.Refused as exc:
            self.answered()
            self.stop_attempt()
            self.finish(None, UpstreamFailure(exc.rep, "upstream %s refused: %s" % (self.server.label, exc)))
            return
        except U.Broken as exc:
            self.server_failed(str(exc))
            return
        for e in events:
            if e is U.ALIVE:
                self.answered()
            elif isinstance(e, U.Send):
                if not self.send(e.data):
                    return
            elif self.command == P.CMD_BIND and not self.listening:
                # BIND's first reply: where the upstream listens for the peer
                self.listening = True
                self.owner.on_upstream_bound(*self.announced(e))
                if not self.live:
                    return
            else:
                self.succeed(e)
                return

    def announced(self, reply):
        """A reply's address as the client should see it: the upstream's own
        address where it announced the unspecified one (where it listens,
        for BIND; its relay, for UDP), as the classic clients read it."""
        addr = reply.address
        if addr in UNSPECIFIED:
            addr = self.upstream_ip
        return addr, reply.port

    def answered(self):
        """The upstream has answered its first message: it is alive (up
        again, if it was marked down), and the attempt's own bound is off;
        the session's ``timeout connect`` still bounds the rest."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        was = self.health.succeeded(self.server.label)
        if was is not None:
            self.log.notice("upstream %s is up again (down for %ds)" % (self.server.label, was))

    def lost(self, err):
        """The upstream closed or reset the connection before its reply."""
        why = "closed the connection" if err is None else errno_text(err)
        if self.hs.alive:
            # it had answered: this request's answer, not a dead upstream
            self.stop_attempt()
            self.finish(None, UpstreamFailure(P.REP_FAILURE, "upstream %s %s before its reply" % (
                self.server.label, why if err is None else "failed: " + why)))
            return
        self.server_failed(why + " before answering", err)

    def on_attempt_timeout(self):
        self.timer = None
        if self.live:
            self.server_failed("no answer within %gs (timeout upstream)" % self.attempt, errno.ETIMEDOUT)

    def server_failed(self, why, err=None):
        """This upstream cannot serve now: mark it (one log line for the
        whole server when it goes down), then the next one."""
        label = self.server.label
        self.stop_attempt()
        what, seconds = self.health.failed(label)
        if what == H.DOWN:
            self.log.warning("upstream %s is down: %s; tried again in %ds" % (label, why, seconds))
        elif what == H.STILL_DOWN:
            self.log.debug("upstream %s is still down: %s; tried again in %ds" % (label, why, seconds))
        else:
            self.log.debug("upstream %s: %s" % (label, why))
        self.failures.append("%s: %s" % (label, why))
        self.start()

    def give_up(self):
        if self.failures:
            self.finish(None, UpstreamFailure(P.REP_NET_UNREACHABLE, "no upstream answered (%s)" % "; ".join(
                self.failures + self.uncarried)))
        else:
            rep = P.REP_CMD_UNSUPPORTED if self.command != P.CMD_CONNECT else P.REP_ATYP_UNSUPPORTED
            self.finish(None, UpstreamFailure(rep, "no upstream can carry it (%s)" % "; ".join(self.uncarried)))

    def succeed(self, reply):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        addr, port = self.announced(reply)
        self.bound = (addr, port) if reply.address is not None else None
        self.first = self.hs.rest()
        self.want(EPOLLIN)
        sock, self.sock = self.sock, None
        self.hs = None
        self.handed = self.fd
        self.finish(sock, None)

    def stop_attempt(self):
        """End the current attempt: its timer, its connect, its socket."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        if self.sock is not None:
            self.loop.remove(self.fd)
            self.sock.close()
            self.sock = None
            self.mask = -1

    def finish(self, sock, err):
        if not self.live:
            if sock is not None:
                self.loop.remove(sock.fileno())
                sock.close()
            return
        self.live = False
        self.queue = []
        ip = addr_text(self.candidates[0][1]) if sock is not None and self.candidates else None
        self.owner.on_connected(sock, ip, err)

    def timeout_detail(self):
        """What the session's ``timed-out`` line adds when its deadline came
        during this connector: a pipelined upstream that answered the
        greeting and nothing after it may not read past the greeting."""
        hs = self.hs
        if hs is not None and hs.pipelined and hs.alive and not hs.done:
            return (".  Upstream %s answered the greeting and not the pipelined request: a server that "
                    "drops what follows its greeting never will (remove ?pipeline)" % self.server.label)
        return ""

    def cancel(self):
        """Give up (the session's deadline, or it went away): no callback.
        A socket already handed over is the owner's."""
        self.live = False
        self.queue = []
        self.stop_attempt()

    release = cancel

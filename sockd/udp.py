"""UDP ASSOCIATE (RFC 1928 section 7): a datagram relay per association.

One client-facing UDP socket, bound to the address the client reached over
TCP (and advertised as such, or as ``udp advertise``), and one remote-facing
socket per address family, opened when first needed.  The association
lives exactly as long as its TCP control connection, and no longer than
``timeout idle`` without traffic.

Client datagrams are accepted only from the client's address, and from the
port it announced when that is not 0 (``udp strict no`` learns a changed
port instead of dropping); an announced port of 0 is learnt from the first
datagram.  Fragments (FRAG != 0) are dropped.  Every destination is judged
by decision.decide, as a request would be, with a small per-association
memo; a denied one is dropped and logged once.  Names are resolved by
sockd.  Datagrams from remote hosts go back to the client only, wrapped in
the SOCKS 5 header, and only from hosts the rules would let the client
reach.

Names are resolved through the process's resolver and its cache
(resolver.py, shared with the sessions: an answer or a failure is kept
for ``resolve life`` or ``resolve failure-life``); a miss is looked up on
the helper pool for names, with the association as the requester
(pools.py): at most pools.PER_REQUESTER lookups at once, so that one
association cannot take the pool, and none run once it has closed.
Datagrams to a name whose lookup is under way wait for it (MAX_PENDING);
a datagram to a new name while the association's lookups are all under
way is dropped, and counted in the summary line.

With a way-out file (``upstream FILE``), each permitted destination is
also asked how it is reached (wayout.decide_server, memoised like the
verdicts): direct, as above; refused by a deny line (dropped, logged once
per destination); or through the line's SOCKS 5 upstreams: an
association of sockd's own with the first of them that answers
(``Through``: a TCP control connection made by upstream.UpstreamConnector,
with its failover and health, and a UDP socket facing the upstream's
relay), one per upstream list, opened with the first datagram for it
(the datagrams meanwhile wait, at most MAX_PENDING), and ended with the
client's association.  Datagrams go to the upstream's relay in the RFC
1928 header (the name when the upstream resolves names and the client gave
one) and come back from it the same way; the source it names is judged by
the rules as any remote host is, before the client sees it.

Under traffic control (the session has a plan, ``tplan``) every datagram
that would be relayed goes through the session's meters.Meter first
(``admit``): one over the budget of its direction is dropped, and counted
in the summary line as over the bandwidth limit; a quota with ``cut``
that is reached ends the association.

What it asks of its owner (the session), and nothing more: ``ctx`` (the
worker's configuration, loop, log, buffer, resolver and traffic control),
``client_ip``, ``local_ip``, ``src_key``, ``user``, ``method``, ``prot``
(RFC 1961 per-message protection, or None) and ``tplan`` (a
traffic.Plan, or None); ``desc()`` for log lines; ``touch()`` on traffic
(the idle timeout); ``close()`` to end it all.
"""

import socket

from . import decision as D
from . import protocol as P
from . import rules as R
from . import wayout as W
from .addresses import addr_text, errno_text, literal_family
from .loop import EPOLLIN
from .upstream import UpstreamConnector

MAX_MEMO = 256
MAX_PENDING = 16          # datagrams waiting for one name to resolve
UPSTREAM_RETRY = 10.0     # seconds an upstream list that carried nothing is not asked again
MAX_THROUGH = 8           # upstream associations of one client association


class Association:
    __slots__ = ("session", "ctx", "loop", "csock", "cfd", "rsocks", "client_ip", "client_port",
                 "strict", "memo", "pending", "n_in", "n_out", "d_in", "d_out", "dropped",
                 "denied_logged", "unlooked", "ways", "through", "meter", "over")

    def __init__(self, session, announced_port):
        self.session = session
        self.ctx = session.ctx
        self.loop = session.ctx.loop
        self.csock = None
        self.rsocks = {}
        self.client_ip = session.client_ip
        self.client_port = announced_port or None
        self.strict = self.ctx.config.udp_strict
        self.memo = {}
        self.pending = {}          # name -> [(port, payload)] waiting for its lookup
        self.n_in = self.n_out = self.d_in = self.d_out = self.dropped = 0
        self.unlooked = 0          # of those dropped: to names it could not look up then
        self.denied_logged = set()
        self.ways = {}             # (ip, port, name) -> (config, the way-out file's Decision)
        self.through = {}          # upstream list -> its Through
        self.meter = None          # traffic control: the session's meters.Meter
        self.over = 0              # of those dropped: over the bandwidth limit
        if session.tplan is not None:
            self.meter = self.ctx.traffic.meter(session.tplan, self.ctx.config)
            self.meter.on_quota = self.quota_reached

    # --- a helper pool's requester (pools.py) --------------------------------------------
    @property
    def gone(self):
        return self.csock is None

    @property
    def src_key(self):
        return self.session.src_key

    def start(self):
        """Open the client-facing socket; returns (address, port) to reply."""
        s = self.session
        fam = socket.AF_INET6 if ":" in s.local_ip else socket.AF_INET
        cs = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            if fam == socket.AF_INET6:
                cs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            cs.bind((s.local_ip, 0))
        except OSError:
            cs.close()
            raise
        self.csock = cs
        self.cfd = cs.fileno()
        self.loop.add(self.cfd, EPOLLIN, self.on_client)
        port = cs.getsockname()[1]
        return (self.ctx.config.udp_advertise or s.local_ip), port

    # --- client -> remote -------------------------------------------------------------
    def on_client(self, ev):
        ctx = self.ctx
        buf, mv = ctx.buf, ctx.mv
        for _ in range(64):
            try:
                n, peer = self.csock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr_text(peer[0]) != self.client_ip:
                self.dropped += 1
                continue
            if self.client_port is None:
                self.client_port = peer[1]
            elif peer[1] != self.client_port:
                if self.strict:
                    self.dropped += 1
                    continue
                self.client_port = peer[1]
            self.session.touch()
            data = bytes(mv[:n])
            prot = self.session.prot
            if prot is not None:
                # RFC 1961 levels 1 and 2: each datagram is one protected frame
                try:
                    data = prot.open_datagram(data)
                except P.ProtocolError:
                    self.dropped += 1
                    continue
                n = len(data)
            try:
                frag, req, off = P.parse_udp_header(data)
            except P.ProtocolError:
                self.dropped += 1
                continue
            if frag:
                self.dropped += 1
                continue
            self.d_in += 1
            self.n_in += n - off
            if req.atyp == P.ATYP_DOMAIN:
                self.to_name(req.address.lower(), req.port, data[off:])
            else:
                self.to_address(req.address, req.port, data[off:], None)

    def to_name(self, name, port, payload):
        waiting = self.pending.get(name)
        if waiting is not None:
            if len(waiting) < MAX_PENDING:
                waiting.append((port, payload))
            else:
                self.dropped += 1
            return
        resolver = self.ctx.resolver
        known = resolver.cached(name)
        if known is not None:
            addresses = known[0]
            if addresses is None:
                self.unresolved(name, 1)
            else:
                self.to_address(addresses[0][1], port, payload, name)
            return
        # before submitting: an inline executor answers at once
        self.pending[name] = [(port, payload)]
        busy = resolver.submit(self, name, self.on_resolved)
        if busy is not None:
            del self.pending[name]
            self.dropped += 1
            self.unlooked += 1
            if busy.log_it:
                self.ctx.log.notice("dropped -- %s: datagram to %s not looked up: %s" % (
                    self.session.desc(), name, busy.text))

    def on_resolved(self, name, addresses, error):
        waiting = self.pending.pop(name, [])
        if self.csock is None:
            return
        if error is not None or not addresses:
            self.unresolved(name, len(waiting))
            return
        ip = addresses[0][1]
        for p, data in waiting:
            self.to_address(ip, p, data, name)

    def unresolved(self, name, n):
        """``n`` datagrams to a name that does not resolve are dropped; the
        first time, for this association, logged."""
        self.dropped += n
        if name not in self.denied_logged and len(self.denied_logged) < MAX_MEMO:
            self.denied_logged.add(name)
            self.ctx.log.notice("failed -- %s: cannot resolve %s" % (self.session.desc(), name))

    def permitted(self, ip, port, name=None):
        """The Verdict for one destination, memoised per association (the
        configuration a reload re-checks with may change: the memo is
        keyed by it too)."""
        cfg = self.ctx.config
        key = (ip, port, name)
        got = self.memo.get(key)
        if got is None or got[0] is not cfg:
            s = self.session
            verdict = D.decide(D.Ask(s.src_key, [ip], port, D.UDP, user=s.user, ident_checks=False,
                                     dst_host=name, method=s.method), cfg)
            if len(self.memo) >= MAX_MEMO:
                self.memo.clear()
            self.memo[key] = (cfg, verdict)
            return verdict
        return got[1]

    def to_address(self, ip, port, payload, name):
        ip = addr_text(ip)
        verdict = self.permitted(ip, port, name)
        if not verdict.allowed:
            self.dropped += 1
            key = (ip, port)
            if key not in self.denied_logged and len(self.denied_logged) < MAX_MEMO:
                self.denied_logged.add(key)
                self.ctx.log.notice("refused -- %s: datagram to %s (%d)%s; dropped" % (
                    self.session.desc(), name or ip, port, datagram_reason(verdict)))
            return
        if self.meter is not None and not self.meter.admit(0, len(payload)):
            # over the budget, direct or through an upstream alike
            self.dropped += 1
            self.over += 1
            return
        cfg = self.ctx.config
        if cfg.wayout is not None:
            d = self.way_out(cfg, ip, port, name)
            if d.action != W.DIRECT:
                self.leave(d, ip, port, payload, name)
                return
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        rs = self.rsocks.get(fam)
        if rs is None:
            rs = self.open_remote(fam)
            if rs is None:
                self.dropped += 1
                return
        try:
            rs.sendto(payload, (ip, port))
        except OSError:
            self.dropped += 1

    def way_out(self, cfg, ip, port, name):
        """The way-out file's Decision for one destination, memoised."""
        key = (ip, port, name)
        got = self.ways.get(key)
        if got is not None and got[0] is cfg:
            return got[1]
        d = W.decide_server(cfg.wayout, self.session.user, R.ip_key(ip), port, (name,) if name else ())
        if len(self.ways) >= MAX_MEMO:
            self.ways.clear()
        self.ways[key] = (cfg, d)
        return d

    def leave(self, d, ip, port, payload, name):
        """A datagram the way-out file does not send direct: dropped by a
        deny line, or handed to the association through its upstreams."""
        if d.action == W.DENY:
            self.dropped += 1
            key = ("wayout", ip, port)
            if key not in self.denied_logged and len(self.denied_logged) < MAX_MEMO:
                self.denied_logged.add(key)
                self.ctx.log.notice("refused -- %s: datagram to %s (%d): way out %s; dropped" % (
                    self.session.desc(), name or ip, port, d.reason))
            return
        t = self.through.get(d.servers)
        if t is None or (t.failed_at is not None and self.loop.now - t.failed_at >= UPSTREAM_RETRY):
            if t is not None:
                t.release()
            elif len(self.through) >= MAX_THROUGH:
                self.dropped += 1
                return
            t = self.through[d.servers] = Through(self, d.servers)
            t.start()
        t.send(ip, port, payload, name)

    def open_remote(self, fam):
        s = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(("::", 0))
            else:
                s.bind(("0.0.0.0", 0))
        except OSError:
            s.close()
            return None
        self.rsocks[fam] = s
        self.loop.add(s.fileno(), EPOLLIN, self.on_remote4 if fam == socket.AF_INET else self.on_remote6)
        return s

    # --- remote -> client ------------------------------------------------------------------
    def on_remote4(self, ev):
        self.from_remote(self.rsocks[socket.AF_INET])

    def on_remote6(self, ev):
        self.from_remote(self.rsocks[socket.AF_INET6])

    def from_remote(self, sock):
        ctx = self.ctx
        buf, mv = ctx.buf, ctx.mv
        for _ in range(64):
            try:
                n, peer = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.to_client(addr_text(peer[0]), peer[1], mv[:n])

    def to_client(self, ip, port, data):
        """A datagram from ``ip``:``port`` (a remote host, or a host an
        upstream's relay names) for the client, if the rules would let the
        client reach that host."""
        if self.client_port is None or not self.permitted(ip, port).allowed:
            self.dropped += 1
            return
        if self.meter is not None and not self.meter.admit(1, len(data)):
            self.dropped += 1
            self.over += 1
            return
        self.session.touch()
        self.d_out += 1
        self.n_out += len(data)
        out = P.udp_header(ip, port) + data
        prot = self.session.prot
        if prot is not None:
            out = prot.seal_datagram(out)
            if out is None:          # too big for one token
                self.dropped += 1
                return
        try:
            self.csock.sendto(out, (self.client_ip, self.client_port))
        except OSError:
            self.dropped += 1

    def close(self):
        """The loop's error handler, or the end: the association ends with
        its session."""
        self.session.close()

    def quota_reached(self):
        """A quota with ``cut`` is reached: the association ends, at the
        next turn of the loop."""
        self.loop.call_later(0, self.close)

    def release(self):
        """Close the relay's sockets (the session is closing); the meter's
        last counts."""
        if self.meter is not None:
            self.meter.on_quota = None
            self.meter.close()
        if self.csock is not None:
            self.loop.remove(self.cfd)
            self.csock.close()
            self.csock = None
        for s in self.rsocks.values():
            self.loop.remove(s.fileno())
            s.close()
        self.rsocks = {}
        for t in self.through.values():
            t.release()
        self.through = {}

    def summary(self):
        text = "%d bytes in %d datagrams from %s, %d bytes in %d datagrams to it, %d dropped" % (
            self.n_in, self.d_in, self.client_ip, self.n_out, self.d_out, self.dropped)
        if self.unlooked:
            text += " (%d to names beyond its lookups at once)" % self.unlooked
        if self.over:
            text += " (%d over the bandwidth limit)" % self.over
        if self.meter is not None and self.meter.cut is not None:
            key, q = self.meter.cut
            text += "; cut: %s reached for %s (%s)" % (q.text(), key, q.where)
        return text


def datagram_reason(verdict):
    """Why a datagram was dropped, for its log line."""
    if verdict.rule is not None:
        if verdict.why:
            return " by %s (%s)" % (verdict.rule.where, verdict.why)
        return " by %s" % verdict.rule.where
    if verdict.why:
        return " (%s)" % verdict.why
    return " no matching rule"


class Through:
    """An association of sockd's own with an upstream SOCKS 5 server, for
    the datagrams one client association sends through a way-out line's
    ``servers``: its control connection (made with failover by an
    UpstreamConnector, and kept open: the upstream's association lives as
    long as it), and a UDP socket facing the upstream's relay.  Datagrams
    wait while it is being made; it says once when it is made and once if
    it could not be; an upstream that ends it ends only it (the next
    datagram for it, UPSTREAM_RETRY seconds after, makes another).

    The helper pool's requester for the upstream's name (``gone``,
    ``src_key``, ``client_ip``), and the connector's owner
    (``on_connected``, ``close``)."""

    __slots__ = ("assoc", "servers", "connector", "ctrl", "usock", "relay", "server", "waiting", "failed_at",
                 "closed", "dst_ip")

    def __init__(self, assoc, servers):
        self.assoc = assoc
        self.servers = servers
        self.connector = None
        self.ctrl = None
        self.usock = None
        self.relay = None          # (address, port) of the upstream's relay
        self.server = None
        self.waiting = []          # (ip, port, payload, name) until the relay is known
        self.failed_at = None      # loop time it could not be made, or ended
        self.closed = False
        self.dst_ip = None         # the connector's owner interface (an association names no destination)

    @property
    def gone(self):
        return self.closed

    @property
    def src_key(self):
        return self.assoc.session.src_key

    @property
    def client_ip(self):
        return self.assoc.client_ip

    def start(self):
        self.connector = UpstreamConnector(self.assoc.ctx, self, self.servers, P.CMD_UDP, None, [], 0)
        self.connector.start()

    def send(self, ip, port, payload, name):
        if self.usock is not None:
            self.forward(ip, port, payload, name)
        elif self.failed_at is None and len(self.waiting) < MAX_PENDING:
            self.waiting.append((ip, port, bytes(payload), name))
        else:
            self.assoc.dropped += 1

    def forward(self, ip, port, payload, name):
        dst = name if name is not None and self.server.remote_names else ip
        try:
            self.usock.sendto(P.udp_header(dst, port) + payload, self.relay)
        except (OSError, ValueError):
            self.assoc.dropped += 1

    def on_connected(self, sock, ip, err):
        connector, self.connector = self.connector, None
        assoc = self.assoc
        log = assoc.ctx.log
        if sock is None:
            self.failed(err.detail if not isinstance(err, int) else "connect: %s" % errno_text(err))
            return
        loop = assoc.loop
        self.server = connector.server
        self.ctrl = sock
        self.relay = connector.bound
        loop.rebind(sock.fileno(), self.on_control)
        if connector.mask != EPOLLIN:
            loop.modify(sock.fileno(), EPOLLIN)
        relay_ip = self.relay[0]
        fam = literal_family(relay_ip)
        if fam is None:
            # a name would be looked up by sendto, on the loop, for every datagram
            self.failed("its relay is named %s, not given as an address" % relay_ip)
            return
        try:
            us = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.failed("udp socket: %s" % exc.strerror)
            return
        self.usock = us
        try:
            us.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
        except OSError as exc:
            self.failed("udp socket: %s" % exc.strerror)
            return
        loop.add(us.fileno(), EPOLLIN, self.on_relay)
        log.notice("connected -- %s: through %s, its relay on %s port %d" % (
            assoc.session.desc(), self.server.label, relay_ip, self.relay[1]))
        waiting, self.waiting = self.waiting, []
        for ip, port, payload, name in waiting:
            self.forward(ip, port, payload, name)

    def failed(self, detail):
        """It could not be made, or it ended: what waits is dropped, and the
        datagrams for it are, until UPSTREAM_RETRY has passed."""
        assoc = self.assoc
        if self.failed_at is None:
            assoc.ctx.log.notice("failed -- %s: datagrams through %s: %s" % (
                assoc.session.desc(), ", ".join(s.label for s in self.servers), detail))
        self.failed_at = assoc.loop.now
        assoc.dropped += len(self.waiting)
        self.waiting = []
        self.shut()

    def on_control(self, ev):
        """The control connection: the upstream says nothing more on it; a
        hang-up ends its association."""
        try:
            data = self.ctrl.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.failed("the upstream closed its association")

    def on_relay(self, ev):
        assoc = self.assoc
        buf, mv = assoc.ctx.buf, assoc.ctx.mv
        for _ in range(64):
            try:
                n, peer = self.usock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if (addr_text(peer[0]), peer[1]) != (addr_text(self.relay[0]), self.relay[1]):
                assoc.dropped += 1       # only the upstream's relay speaks here
                continue
            try:
                frag, hdr, off = P.parse_udp_header(mv[:n])
            except P.ProtocolError:
                assoc.dropped += 1
                continue
            if frag or hdr.atyp == P.ATYP_DOMAIN:
                assoc.dropped += 1
                continue
            assoc.to_client(addr_text(hdr.address), hdr.port, mv[off:n])

    def shut(self):
        loop = self.assoc.loop
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        if self.ctrl is not None:
            loop.remove(self.ctrl.fileno())
            self.ctrl.close()
            self.ctrl = None
        if self.usock is not None:
            loop.remove(self.usock.fileno())
            self.usock.close()
            self.usock = None

    def close(self):
        """The loop's error handler: the client's association ends too."""
        self.release()
        self.assoc.close()

    def release(self):
        self.closed = True
        self.waiting = []
        self.shut()

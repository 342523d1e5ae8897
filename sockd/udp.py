"""UDP ASSOCIATE (RFC 1928 section 7): a datagram relay per association.

One client-facing UDP socket, bound to the address the client reached over
TCP (and advertised as such, or as ``udp advertise``), and one remote-facing
socket per address family, opened when first needed.  The association
lives exactly as long as its TCP control connection, and no longer than
``timeout idle`` without traffic.

Client datagrams are accepted only from the client's address, and from the
port it announced when that is not 0 (``udp strict no`` learns a changed
port instead of dropping); an announced port of 0 is learnt from the first
datagram.  Fragments (FRAG != 0) are dropped.  Every destination is checked
against the rules, with a small per-association memo; a denied one is
dropped and logged once.  Names are resolved by sockd.  Datagrams from
remote hosts go back to the client only, wrapped in the SOCKS 5 header, and
only from hosts the rules would let the client reach.
"""

import socket

from . import netinfo
from . import protocol as P
from . import rules as R
from .addresses import addr_text, resolve
from .loop import EPOLLIN

MAX_MEMO = 256
MAX_PENDING = 16          # datagrams waiting for one name to resolve


class Association:
    __slots__ = ("session", "ctx", "loop", "csock", "cfd", "rsocks", "client_ip", "client_port",
                 "strict", "memo", "names", "pending", "n_in", "n_out", "d_in", "d_out", "dropped",
                 "denied_logged")

    def __init__(self, session, announced_port):
        self.session = session
        self.ctx = session.ctx
        self.loop = session.loop
        self.csock = None
        self.rsocks = {}
        self.client_ip = session.client_ip
        self.client_port = announced_port or None
        self.strict = self.ctx.config.udp_strict
        self.memo = {}
        self.names = {}
        self.pending = {}
        self.n_in = self.n_out = self.d_in = self.d_out = self.dropped = 0
        self.denied_logged = set()

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
            self.session.last = self.loop.now
            data = bytes(mv[:n])
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
        addr = self.names.get(name)
        if addr is not None:
            self.to_address(addr, port, payload, name)
            return
        waiting = self.pending.get(name)
        if waiting is not None:
            if len(waiting) < MAX_PENDING:
                waiting.append((port, payload))
            else:
                self.dropped += 1
            return
        self.pending[name] = [(port, payload)]

        def done(result, error):
            waiting = self.pending.pop(name, [])
            if self.csock is None:
                return
            if error is not None or not result:
                self.dropped += len(waiting)
                if name not in self.denied_logged:
                    self.denied_logged.add(name)
                    self.ctx.log.notice("failed -- %s: cannot resolve %s" % (self.session.desc(), name))
                return
            if len(self.names) >= MAX_MEMO:
                self.names.clear()
            self.names[name] = result[0][1]
            for p, data in waiting:
                self.to_address(result[0][1], p, data, name)
        self.loop.executor.submit(resolve, (name, port), done)

    def permitted(self, ip, port, name=None):
        """(allowed, deciding rule) for one destination, memoised per
        association."""
        key = (ip, port, name)
        got = self.memo.get(key)
        if got is None:
            s = self.session
            rs = self.ctx.ruleset
            dst_names = (name,) if name and rs.needs_dst_names else ()
            key = R.ip_key(ip)
            rule = rs.match(R.Request(s.src_key, key, port, s.user, dst_names=dst_names))
            ok = rule is not None and rule.action == R.PERMIT
            if ok and rule.dst.is_any and s.private_guard() and netinfo.is_private(key, self.ctx.own_addresses):
                ok = False
            got = (ok, rule)
            if len(self.memo) >= MAX_MEMO:
                self.memo.clear()
            self.memo[key] = got
        return got

    def to_address(self, ip, port, payload, name):
        ip = addr_text(ip)
        ok, rule = self.permitted(ip, port, name)
        if not ok:
            self.dropped += 1
            key = (ip, port)
            if key not in self.denied_logged and len(self.denied_logged) < MAX_MEMO:
                self.denied_logged.add(key)
                where = "by %s" % rule.where if rule is not None else "no matching rule"
                self.ctx.log.notice("refused -- %s: datagram to %s (%d) %s; dropped" % (
                    self.session.desc(), name or ip, port, where))
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
        self.loop.add(s.fileno(), EPOLLIN, lambda ev, s=s: self.on_remote(s))
        return s

    # --- remote -> client ------------------------------------------------------------------
    def on_remote(self, sock):
        ctx = self.ctx
        buf, mv = ctx.buf, ctx.mv
        for _ in range(64):
            try:
                n, peer = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            ip = addr_text(peer[0])
            if self.client_port is None or not self.permitted(ip, peer[1])[0]:
                self.dropped += 1
                continue
            self.session.last = self.loop.now
            self.d_out += 1
            self.n_out += n
            try:
                self.csock.sendto(P.udp_header(ip, peer[1]) + mv[:n], (self.client_ip, self.client_port))
            except OSError:
                self.dropped += 1

    def close(self):
        if self.csock is not None:
            self.loop.remove(self.cfd)
            self.csock.close()
            self.csock = None
        for s in self.rsocks.values():
            self.loop.remove(s.fileno())
            s.close()
        self.rsocks = {}

    def summary(self):
        return "%d bytes in %d datagrams from %s, %d bytes in %d datagrams to it, %d dropped" % (
            self.n_in, self.d_in, self.client_ip, self.n_out, self.d_out, self.dropped)

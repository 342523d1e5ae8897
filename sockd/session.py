"""One client, from its first byte to the end of its relay.

This is the only code that couples the pure protocol (protocol.py) and the
rules engine (rules.py) to sockets.  A Session is driven by the worker's
poll loop: it reads the handshake, decides with the rules, reaches the
destination with a non-blocking connect, answers, and relays both ways with
half-close.  Steps that block (name resolution) go to the loop's helper
pool and come back as callbacks, so one slow client never holds up another.

An idle relayed session costs one small object and two sockets: data moves
through one receive buffer shared by the whole worker, and only bytes that a
slow receiver could not take yet are kept per session.
"""

import enum
import errno
import mmap
import socket

from . import ident as I
from .addresses import addr_text, errno_text, lookup_names, resolve, service_name
from . import netinfo
from . import protocol as P
from . import proxyproto as PP
from . import rules as R
from . import shell
from .log import clean
from .loop import EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP

# --- errno -> replies ---------------------------------------------------------------

ERRNO_REPLY = {
    errno.ECONNREFUSED: P.REP_REFUSED,
    errno.ENETUNREACH: P.REP_NET_UNREACHABLE,
    errno.ENETDOWN: P.REP_NET_UNREACHABLE,
    errno.EHOSTUNREACH: P.REP_HOST_UNREACHABLE,
    errno.EHOSTDOWN: P.REP_HOST_UNREACHABLE,
    errno.ETIMEDOUT: P.REP_TTL_EXPIRED,
    errno.EAFNOSUPPORT: P.REP_ATYP_UNSUPPORTED,
    errno.EADDRNOTAVAIL: P.REP_HOST_UNREACHABLE,
}



class State(enum.IntEnum):
    """Where a session is, from accept to close."""
    PROXYHDR = 1      # waiting for the PROXY protocol header of a balancer
    NEG = 2           # greeting, authentication and request
    WAIT = 3          # the request is in: names, rules, identd, connect
    BINDWAIT = 4      # BIND: waiting for the application server
    UDP = 5           # UDP ASSOCIATE: the control connection of a relay
    RELAY = 6         # relaying both ways
    CLOSED = 7


PROXYHDR, NEG, WAIT, BINDWAIT, UDP, RELAY, CLOSED = State
RECV_CHUNK = 4096


class Context:
    """What every session of a worker shares: configuration, loop, log, the
    receive buffer, counters.  Built per worker after the fork."""

    def __init__(self, config, loop, log, ident_mode=None, bufsize=4 << 20):
        self.config = config
        self.loop = loop
        self.log = log
        self.ident_mode = ident_mode          # "i", "I" or None, from -i/-I
        # One receive buffer for every relay of the process: 4 MB moves bulk
        # data in few system calls (measured: 12 % more than 1 MB for one
        # stream).  Anonymous memory, so pages cost only once data has used
        # them: a one-client process that relays a few bytes touches one.
        self.buf = mmap.mmap(-1, bufsize)
        self.mv = memoryview(self.buf)
        self.sessions = set()
        self.stats = {"accepted": 0, "connected": 0, "refused": 0, "failed": 0, "errors": 0,
                      "bytes_in": 0, "bytes_out": 0}
        self.on_close = None
        self.runner = shell.Runner(log, config.limit_commands)
        self.limits = None        # a limits.Limits when any limit is set
        self.own_addresses = config.own_addresses
        # a process that exits after its one client waits for its commands
        loop.close_hooks.append(lambda: self.runner.drain(10))

    @property
    def ruleset(self):
        return self.config.ruleset


class Session:
    __slots__ = (
        "ctx", "loop", "c", "r", "cfd", "rfd", "client_ip", "client_port", "local_ip", "local_port",
        "src_key", "state", "hs", "version", "command", "user", "realuser", "dst_host", "dst_ip",
        "dst_port", "candidates", "rule", "timer", "cmask", "rmask", "pend_cr", "pend_rc",
        "eof_c", "eof_r", "shut_c", "shut_r", "n_cr", "n_rc", "last", "early", "__weakref__",
        "ident", "identq", "authenticated", "names", "aux", "peer", "logdesc", "lslot", "refusal",
    )

    def __init__(self, ctx, sock, peer, local, inherited=False, proxy=None, refusal=None):
        """``inherited``: the socket comes from a listener that already set
        TCP_NODELAY, SO_OOBINLINE and SO_KEEPALIVE (accepted sockets inherit
        them), so they need not be set again.  ``proxy``: the listener takes
        PROXY protocol headers from these balancer addresses (AddrSpecs)."""
        self.ctx = ctx
        loop = self.loop = ctx.loop
        self.c = sock
        self.r = None
        self.cfd = sock.fileno()
        self.rfd = -1
        self.client_ip = addr_text(peer[0])
        self.client_port = peer[1]
        self.local_ip = addr_text(local[0])
        self.local_port = local[1]
        self.src_key = R.ip_key(self.client_ip)
        self.state = NEG
        self.hs = P.ServerHandshake()
        self.version = 0
        self.command = P.CMD_CONNECT
        self.user = None
        self.realuser = None
        self.dst_host = None
        self.dst_ip = None
        self.dst_port = 0
        self.candidates = None
        self.rule = None
        self.pend_cr = self.pend_rc = None
        self.eof_c = self.eof_r = self.shut_c = self.shut_r = False
        self.n_cr = self.n_rc = 0
        self.early = b""
        self.rmask = 0
        self.ident = None           # (kind, value) once identd has been asked
        self.identq = None
        self.authenticated = False
        self.names = ((), ())
        self.aux = None             # the BindWait or UDP Association
        self.peer = None            # BIND: who connected back
        self.logdesc = None         # desc(), once the request is granted
        self.lslot = None           # counted by the limits (release at close)
        self.refusal = refusal      # over a limit: (which one, log it?); refused at the request
        ctx.sessions.add(self)
        ctx.stats["accepted"] += 1
        sock.setblocking(False)
        if not inherited:
            set_socket_options(sock)
        self.cmask = EPOLLIN
        if proxy is not None:
            fam, n = self.src_key
            if not any(spec.match(fam, n) for spec in proxy):
                ctx.stats["refused"] += 1
                ctx.log.notice("refused -- connection from %s: not a trusted PROXY protocol source" % self.client_ip)
                self.state = CLOSED
                ctx.sessions.discard(self)
                sock.close()
                if ctx.on_close is not None:
                    ctx.on_close(self)
                return
            self.state = PROXYHDR
            self.hs = None
        loop.add(self.cfd, EPOLLIN, self.on_client)
        t = ctx.config.timeout_negotiate
        self.timer = loop.call_later(t, self.on_negotiate_timeout) if t > 0 else None
        if ctx.limits is not None and proxy is None:
            self.apply_limits()
        self.last = loop.now
        # The greeting has usually arrived with the connection: read it now.
        self.on_client(EPOLLIN)

    # --- descriptions for the log -----------------------------------------------
    def desc(self):
        user = self.user if self.user is not None else "unknown"
        real = self.realuser if self.realuser is not None else "unknown"
        host = self.dst_host or self.dst_ip or "Unspecified.Host"
        who = "%s(%s)@%s" % (user, real, self.client_ip)
        if self.command == P.CMD_BIND:
            return "Bind from %s for %s (%s)" % (who, host, service_name(self.dst_port))
        if self.command == P.CMD_UDP:
            return "UDP associate from %s" % who
        return "Connect from %s to %s (%s)" % (who, host, service_name(self.dst_port))

    def title(self):
        """What a process that serves only this client shows as its title,
        once the request has been decided; None before."""
        if self.state < BINDWAIT:
            return None
        return "%s@%s -> %s:%d" % (self.user or "unknown", self.client_ip, self.dst_host or self.dst_ip,
                                   self.dst_port)

    def status(self):
        """One line for SIGUSR1."""
        return "%s; %d bytes from the client, %d to it" % (
            self.desc() if self.state != CLOSED else "finished", self.n_cr, self.n_rc)

    # --- negotiation ------------------------------------------------------------------
    def on_client(self, ev):
        st = self.state
        if st == RELAY:
            self.relay_event(0, ev)
            return
        if st in (BINDWAIT, UDP):
            self.watch_control(ev)
            return
        if st == WAIT and self.hs is None:
            self.read_early()
            return
        if st == PROXYHDR:
            self.read_proxy_header()
            return
        if st != NEG:
            if ev & (EPOLLERR | EPOLLHUP):
                self.close()
            return
        data = self.recv_or_close()
        if data:
            self.last = self.loop.now
            self.hs.feed(data)
            self.process_handshake()

    def recv_or_close(self):
        """What the client sent, or None: nothing yet, or it has gone (then
        the session is closed)."""
        try:
            data = self.c.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        return data

    def process_handshake(self):
        hs = self.hs
        try:
            while self.state == NEG:
                msg = hs.next()
                if msg is None:
                    return
                self.on_message(msg)
        except P.ProtocolError as exc:
            self.protocol_error(exc)

    def read_proxy_header(self):
        """A load balancer's connection: first the PROXY protocol header that
        names the real client, who then drives the rules, identd, limits and
        the log."""
        data = self.recv_or_close()
        if not data:
            return
        self.early += data
        try:
            got = PP.parse(self.early)
        except P.ProtocolError as exc:
            self.ctx.stats["errors"] += 1
            self.ctx.log.notice("error -- %s from host %s." % (exc, self.client_ip))
            self.close()
            return
        if got is None:
            return
        header, used = got
        rest, self.early = self.early[used:], b""
        if isinstance(header, PP.Local):
            self.ctx.log.debug("PROXY protocol LOCAL connection from %s (health check)" % self.client_ip)
            self.hs = P.ServerHandshake()
            self.state = NEG
            if rest:
                self.hs.feed(rest)
                self.process_handshake()
            return
        self.client_ip, self.client_port = addr_text(header.src_ip), header.src_port
        self.src_key = R.ip_key(self.client_ip)
        # The client reached the balancer's address and port.  Its identd
        # knows that port; the address sockd binds for identd queries, UDP
        # relays and BIND (local_ip) must be one of this host's: the
        # balancer's when it is (a balancer on this host), else our end of
        # the balancer's connection, else the wildcard (the kernel picks)
        # when that is of the other family, or loopback and the client not.
        self.local_port = header.dst_port
        dst = addr_text(header.dst_ip)
        dkey = R.ip_key(dst)
        if dkey in self.ctx.own_addresses or netinfo.is_loopback(dkey):
            self.local_ip = dst
        elif (":" in self.client_ip) != (":" in self.local_ip) or (
                netinfo.is_loopback(R.ip_key(self.local_ip)) and not netinfo.is_loopback(self.src_key)):
            self.local_ip = "::" if ":" in self.client_ip else "0.0.0.0"
        self.hs = P.ServerHandshake()
        self.state = NEG
        if self.ctx.limits is not None:
            self.apply_limits()
        if rest:
            self.hs.feed(rest)
            self.process_handshake()

    def apply_limits(self):
        """Count this client, or note which limit it is over: it is then
        answered politely (a SOCKS failure reply) once it has asked, and given
        little time to ask."""
        from .limits import OK, REASONS
        verdict, slot, log_it = self.ctx.limits.admit(self.src_key)
        if verdict == OK:
            self.lslot = slot
            return
        self.refusal = (REASONS[verdict], log_it)
        if self.timer is not None and self.ctx.config.timeout_negotiate > 5:
            self.timer.cancel()
            self.timer = self.loop.call_later(5, self.on_negotiate_timeout)

    def refuse_over_limit(self):
        ctx = self.ctx
        ctx.stats["refused"] += 1
        reason, log_it = self.refusal
        if log_it:
            what = {"limit clients": "too many clients", "limit per-address": "too many clients from %s",
                    "limit rate": "too many new clients from %s"}[reason]
            ctx.log.notice("refused -- %s: %s (%s; logged at most once every 5 seconds)" % (
                self.desc(), what.replace("%s", self.client_ip), reason))
        if self.version == 4:
            self.finish_reply(P.reply4(P.S4_REJECTED))
        else:
            self.finish_reply(P.reply5(P.REP_FAILURE))

    def read_early(self):
        """The request is in and sockd is still deciding or connecting: what
        the client sends meanwhile is kept for the destination (up to 64 KB;
        then, or at its EOF, reading pauses until the relay starts)."""
        try:
            data = self.c.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if data:
            self.early += data
        if not data or len(self.early) >= 65536:
            self.cmask = 0
            self.loop.modify(self.cfd, 0)

    def protocol_error(self, exc):
        self.ctx.stats["errors"] += 1
        self.ctx.log.notice("error -- %s from host %s." % (exc, self.client_ip))
        if exc.reply:
            self.send_now(exc.reply)
        self.close()

    def on_message(self, msg):
        if isinstance(msg, P.Socks4Request):
            self.version = 4
            self.command = msg.command
            self.user = clean(msg.userid, 255)
            self.dst_port = msg.port
            if msg.host is not None:
                self.dst_host = msg.host.lower()
            else:
                self.dst_ip = socket.inet_ntoa(msg.ip)
            self.request()
        elif isinstance(msg, P.Greeting):
            self.version = 5
            self.greeting(msg)
        elif isinstance(msg, P.Socks5Request):
            self.command = msg.command
            self.dst_port = msg.port
            if msg.atyp == P.ATYP_DOMAIN:
                self.dst_host = msg.address.lower()
            else:
                self.dst_ip = msg.address
            if msg.command not in (P.CMD_CONNECT, P.CMD_BIND, P.CMD_UDP):
                self.ctx.log.notice("refused -- %s: command %d not supported" % (self.desc(), msg.command))
                self.ctx.stats["refused"] += 1
                self.finish_reply(P.reply5(P.REP_CMD_UNSUPPORTED))
                return
            self.request()
        elif isinstance(msg, P.UserPass):
            self.userpass(msg)

    def greeting(self, msg):
        """Choose the first of our methods, in our order, that the client offers."""
        for name in self.ctx.config.methods:
            code = P.METHOD_USERPASS if name == "username" else P.METHOD_NONE
            if code in msg.methods:
                self.send_now(P.method_reply(code))
                if code == P.METHOD_USERPASS:
                    self.hs.expect_auth()
                else:
                    self.hs.expect_request()
                return
        self.ctx.log.notice("refused -- no acceptable authentication method from %s (offered %s)" % (
            self.client_ip, ",".join(str(m) for m in msg.methods)))
        self.ctx.stats["refused"] += 1
        self.finish_reply(P.method_reply(P.METHOD_UNACCEPTABLE))

    def userpass(self, msg):
        """RFC 1929: check the password on a helper thread (bcrypt is slow on
        purpose); stop reading the client meanwhile."""
        db = self.ctx.config.passwd_db
        self.state = WAIT
        self.user = msg.user
        if self.cmask:
            self.cmask = 0
            self.loop.modify(self.cfd, 0)
        if db is None:
            self.on_auth(False, None)
            return
        self.loop.executor.submit(db.verify, (msg.user, msg.password), self.on_auth)

    def on_auth(self, ok, error):
        if self.state != WAIT or self.hs is None:
            return
        if not ok:
            self.ctx.stats["refused"] += 1
            self.ctx.log.notice("refused -- username/password authentication failed for %s from %s" % (
                self.user, self.client_ip))
            self.finish_reply(P.userpass_reply(False))
            return
        self.authenticated = True
        if not self.send_now(P.userpass_reply(True)):
            self.close()
            return
        self.state = NEG
        self.hs.expect_request()
        self.cmask = EPOLLIN
        self.loop.modify(self.cfd, EPOLLIN)
        self.process_handshake()

    def on_negotiate_timeout(self):
        self.timer = None
        if self.state in (NEG, WAIT, PROXYHDR):
            self.ctx.log.notice("timed-out -- negotiation with %s took too long (timeout negotiate)" % (
                self.client_ip))
            self.close()

    # --- decision -----------------------------------------------------------------------
    def request(self):
        """A complete request is in: stop reading the client (what it sends
        next is kept for the destination) and decide."""
        self.state = WAIT
        self.early = self.hs.rest()
        self.hs = None
        if self.refusal is not None:
            self.refuse_over_limit()
            return
        # from here on one deadline covers resolving, identd and connecting
        if self.timer is not None:
            self.timer.cancel()
        t = self.ctx.config.timeout_connect
        self.timer = self.loop.call_later(t, self.on_connect_timeout) if t > 0 else None
        if self.command == P.CMD_UDP:
            self.udp_request()
            return
        if self.dst_host is not None:
            self.loop.executor.submit(resolve, (self.dst_host, self.dst_port), self.on_resolved)
            return
        self.candidates = [(socket.AF_INET6 if ":" in self.dst_ip else socket.AF_INET, self.dst_ip)]
        self.decide()

    def on_resolved(self, result, error):
        if self.state != WAIT:
            return
        if error is not None or not result:
            reason = getattr(error, "strerror", None) or str(error or "no address")
            self.ctx.log.notice("failed -- %s.  Error code: resolve %s" % (self.desc(), clean(reason)))
            self.ctx.stats["failed"] += 1
            self.fail_reply(P.REP_HOST_UNREACHABLE)
            return
        self.candidates = result
        self.dst_ip = addr_text(result[0][1])
        self.decide()

    def rules_request(self, ip):
        return R.Request(self.src_key, R.ip_key(ip), self.dst_port, self.user,
                         dst_names=(self.dst_host,) if self.dst_host and self.ctx.ruleset.needs_dst_names else ())

    def decide(self):
        rs = self.ctx.ruleset
        if rs.needs_src_names or (rs.needs_dst_names and self.dst_host is None):
            self.loop.executor.submit(lookup_names, (self.client_ip, self.dst_ip if self.dst_host is None else None,
                                                     rs.needs_src_names, rs.needs_dst_names), self.on_names)
            return
        self.decide_with((), ())

    def on_names(self, result, error):
        if self.state != WAIT:
            return
        src_names, dst_names = result if error is None else ((), ())
        self.decide_with(src_names, dst_names)

    def ident_mode(self, rule):
        """The identd mode of a rule: its ?= field, else -i/-I, else none."""
        return rule.ident or self.ctx.ident_mode or "n"

    def user_of(self, rule):
        """SOCKS 5 without authentication: the user a rule's *= list sees is
        identd's answer, and only for lines that ask identd."""
        if self.ident_mode(rule) == "n":
            return None
        if self.ident is None:
            return R.NEED_USER(rule)
        return self.ident[1] if self.ident[0] == I.USERID else None

    def decide_with(self, src_names, dst_names):
        self.names = (src_names, dst_names)
        rs = self.ctx.ruleset
        if self.dst_host and rs.needs_dst_names:
            dst_names = (self.dst_host,) + tuple(dst_names)
        user_of = self.user_of if (self.version == 5 and not self.authenticated and rs.has_users) else None
        user = self.user if user_of is None else None
        first = None
        allowed = []
        guard = self.private_guard()
        for fam, ip in self.candidates:
            key = R.ip_key(ip)
            req = R.Request(self.src_key, key, self.dst_port, user, src_names, dst_names)
            rule = rs.match(req, user_of=user_of)
            if isinstance(rule, R.NEED_USER):
                self.ask_ident(self.redecide)
                return
            if guard and rule is not None and rule.action == R.PERMIT and rule.dst.is_any \
                    and netinfo.is_private(key, self.ctx.own_addresses):
                if first is None:
                    first = (rule, "%s is private to this host (deny-private-destinations)" % addr_text(ip))
                continue
            if first is None:
                first = (rule,)
            if rule is not None and rule.action == R.PERMIT:
                allowed.append((fam, ip))
                if len(allowed) == 1:
                    self.rule = rule
        if not allowed:
            if first and len(first) == 2:
                self.refuse(first[0], first[1])
            else:
                self.refuse(first[0] if first else None)
            return
        if len(allowed) != len(self.candidates):
            self.dst_ip = addr_text(allowed[0][1])
        self.candidates = allowed
        if self.ident_mode(self.rule) in ("i", "I"):
            if self.ident is None:
                self.ask_ident(self.after_ident)
            else:
                self.after_ident()
            return
        self.run_command(self.rule.command, self.rule.where)
        self.permitted()

    def private_guard(self):
        """Does deny-private-destinations apply to this client?"""
        mode = self.ctx.config.deny_private_destinations
        if mode == "auto":
            return not netinfo.is_loopback(self.src_key)
        return mode == "yes"

    def redecide(self):
        self.decide_with(*self.names)

    def ask_ident(self, then):
        """Ask the client's identd (once per client), then call ``then``."""
        def done(kind, value):
            self.identq = None
            if self.state != WAIT:
                return
            self.ident = (kind, value)
            if kind == I.USERID:
                self.realuser = value
            else:
                self.ctx.log.notice("cannot connect to identd on %s" % self.client_ip)
                no_identd = self.ctx.ruleset.no_identd
                if no_identd:
                    self.run_command(no_identd[2], "%s:%d" % no_identd[:2])
            then()
        self.identq = I.IdentQuery(self.loop, self.local_ip, self.client_ip, self.client_port,
                                   self.local_port, self.ctx.config.timeout_ident, done)

    def after_ident(self):
        """The matrix of the classic sockd for a permit line that asks identd."""
        kind, value = self.ident
        rule = self.rule
        if kind == I.USERID:
            claimed = self.user if (self.version == 4 or self.authenticated) else None
            if claimed is not None and value != claimed:
                self.ctx.log.warning("*Alert*: real user is %s, not %s" % (value, claimed))
                bad = self.ctx.ruleset.bad_id
                if bad:
                    self.run_command(bad[2], "%s:%d" % bad[:2])
                self.refuse_ident(rule, P.S4_BAD_ID, "identd says the user is %s" % value)
                return
            if claimed is None:
                self.user = value
        elif self.ident_mode(rule) == "I":
            self.refuse_ident(rule, P.S4_NO_IDENTD, "cannot verify the user with identd")
            return
        self.run_command(rule.command, rule.where)
        self.permitted()

    def refuse_ident(self, rule, code4, why):
        ctx = self.ctx
        ctx.stats["refused"] += 1
        ctx.log.notice("refused -- %s by %s: %s" % (self.desc(), rule.where, why))
        if self.version == 4:
            self.finish_reply(P.reply4(code4))
        else:
            self.finish_reply(P.reply5(P.REP_NOT_ALLOWED))

    def run_command(self, template, where):
        if not template:
            return
        snap = Snapshot(self)
        self.ctx.runner.submit(template, lambda: shell.values_for(snap), where)

    def permitted(self):
        """The rules permit: reach the destination, or wait for it (BIND)."""
        if self.command == P.CMD_BIND:
            self.bind_start()
        else:
            self.connect_next()

    # --- BIND ----------------------------------------------------------------------------------
    def bind_start(self):
        from .bind import BindWait
        bw = BindWait(self)
        self.aux = bw
        if not bw.start():
            return
        self.state = BINDWAIT
        # the client may only hang up now; watch for that
        if self.cmask != EPOLLIN:
            self.cmask = EPOLLIN
            self.loop.modify(self.cfd, EPOLLIN)
        if self.timer is not None:
            self.timer.cancel()
        t = self.ctx.config.timeout_connect
        self.timer = self.loop.call_later(t, self.on_bind_timeout) if t > 0 else None

    def on_bind_timeout(self):
        self.timer = None
        if self.state != BINDWAIT:
            return
        self.ctx.log.notice("timed-out -- %s" % self.desc())
        self.ctx.stats["failed"] += 1
        self.fail_reply(P.REP_TTL_EXPIRED)

    def bound(self, conn, peer_ip, peer_port):
        """The application server connected back: second reply, then relay."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.aux = None
        conn.setblocking(False)
        set_socket_options(conn)
        self.r = conn
        self.rfd = conn.fileno()
        self.peer = peer_ip
        reply = self.granted(peer_ip, peer_port)
        self.ctx.stats["connected"] += 1
        self.ctx.log.notice("connected -- %s: %s port %d connected" % (self.desc(), peer_ip, peer_port))
        if not self.send_now(reply):
            self.close()
            return
        self.start_relay()

    def watch_control(self, ev):
        """BIND wait or UDP association: the TCP connection only carries
        the client's hang-up; anything it sends is read and dropped."""
        try:
            data = self.c.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
        elif self.state == BINDWAIT and len(self.early) < 65536:
            self.early += data          # sent early: goes to the peer once it is there

    # --- UDP ASSOCIATE -----------------------------------------------------------------------
    def udp_request(self):
        rs = self.ctx.ruleset
        rule = rs.may_permit(self.src_key, self.user)
        if rule is None:
            self.refuse(None, "no permit line for this client")
            return
        from .udp import Association
        assoc = Association(self, self.dst_port)
        try:
            addr, port = assoc.start()
        except OSError as exc:
            self.ctx.stats["failed"] += 1
            self.ctx.log.notice("failed -- %s.  Error code: udp %s" % (self.desc(), exc.strerror))
            self.fail_reply(P.REP_FAILURE)
            return
        self.aux = assoc
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.send_now(P.reply5(P.REP_SUCCEEDED, addr, port)):
            self.close()
            return
        self.ctx.stats["connected"] += 1
        self.ctx.log.notice("connected -- %s: relay on %s port %d" % (self.desc(), addr, port))
        self.state = UDP
        if self.cmask != EPOLLIN:
            self.cmask = EPOLLIN
            self.loop.modify(self.cfd, EPOLLIN)
        self.last = self.loop.now
        idle = self.ctx.config.timeout_idle
        if idle > 0:
            self.timer = self.loop.call_later(idle, self.on_idle_check)

    def refuse(self, rule, why=None):
        ctx = self.ctx
        ctx.stats["refused"] += 1
        if why:
            ctx.log.notice("refused -- %s: %s" % (self.desc(), why))
            rule = None
        elif rule is None:
            ctx.log.notice("refused -- %s: no matching rule in %s" % (self.desc(), ctx.config.path))
        else:
            ctx.log.notice("refused -- %s by %s" % (self.desc(), rule.where))
            self.run_command(rule.command, rule.where)
        if self.version == 4:
            self.finish_reply(P.reply4(P.S4_REJECTED))
        else:
            self.finish_reply(P.reply5(P.REP_NOT_ALLOWED))

    # --- connect --------------------------------------------------------------------------
    def connect_next(self, last_error=None):
        loop = self.loop
        while self.candidates:
            fam, ip = self.candidates.pop(0)
            try:
                r = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError as exc:
                last_error = exc.errno
                continue
            set_socket_options(r)
            table = self.ctx.config.route_table
            if table is not None:
                err = self.bind_source(r, table, ip)
                if err:
                    r.close()
                    last_error = err
                    continue
            err = r.connect_ex((ip, self.dst_port))
            if err == 0:
                self.r = r
                self.rfd = r.fileno()
                self.dst_ip = addr_text(ip)
                self.connected()
                return
            if err == errno.EINPROGRESS:
                self.r = r
                self.rfd = r.fileno()
                self.dst_ip = addr_text(ip)
                self.rmask = EPOLLOUT
                loop.add(self.rfd, EPOLLOUT, self.on_remote)
                return
            r.close()
            last_error = err
        self.connect_failed(last_error or errno.EHOSTUNREACH)

    def bind_source(self, r, table, ip):
        """The route file chooses the source address.  Bound without a port
        (IP_BIND_ADDRESS_NO_PORT): the port is picked at connect time, so a
        busy server cannot run out of ephemeral ports.  Returns an errno."""
        route = table.lookup(*R.ip_key(ip), names=(self.dst_host,) if self.dst_host else ())
        if route is None:
            self.ctx.log.error("***Cannot find appropriate interface to communicate with %s" % addr_text(ip))
            return errno.ENETUNREACH
        try:
            r.setsockopt(socket.IPPROTO_IP, I.IP_BIND_ADDRESS_NO_PORT, 1)
            r.bind((route.if_addr, 0))
        except OSError as exc:
            self.ctx.log.error("route %s:%d: cannot use %s: %s" % (route.file, route.line, route.if_addr,
                                                                 exc.strerror))
            return exc.errno
        return 0

    def on_remote(self, ev):
        st = self.state
        if st == RELAY:
            self.relay_event(1, ev)
            return
        if st != WAIT:
            return
        err = self.r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.loop.remove(self.rfd)
            self.r.close()
            self.r, self.rfd, self.rmask = None, -1, 0
            if self.candidates:
                self.connect_next(err)
            else:
                self.connect_failed(err)
            return
        self.connected()

    def on_connect_timeout(self):
        self.timer = None
        if self.state != WAIT:
            return
        if self.identq is not None:
            self.identq.cancel()
            self.identq = None
        if self.r is not None:
            self.loop.remove(self.rfd)
            self.r.close()
            self.r, self.rfd, self.rmask = None, -1, 0
        self.ctx.log.notice("timed-out -- %s" % self.desc())
        self.ctx.stats["failed"] += 1
        self.fail_reply(P.REP_TTL_EXPIRED)

    def connect_failed(self, err):
        self.ctx.stats["failed"] += 1
        self.ctx.log.notice("failed -- %s.  Error code: connect %s" % (self.desc(), errno_text(err)))
        self.fail_reply(ERRNO_REPLY.get(err, P.REP_FAILURE))

    def granted(self, addr, port):
        """The success reply of the client's version for an address and port
        (SOCKS 4 has room for IPv4 only; an IPv6 address is sent as zeros)."""
        if self.version == 4:
            try:
                ip = socket.inet_aton(addr)
            except OSError:
                ip = P.ZERO4
            return P.reply4(P.S4_GRANTED, port, ip)
        return P.reply5(P.REP_SUCCEEDED, addr, port)

    def fail_reply(self, rep):
        if self.version == 4:
            self.finish_reply(P.reply4(P.S4_REJECTED))
        else:
            self.finish_reply(P.reply5(rep))

    def connected(self):
        ctx = self.ctx
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            bnd = self.r.getsockname()
        except OSError:
            bnd = ("0.0.0.0", 0)
        reply = self.granted(addr_text(bnd[0]), bnd[1])
        ctx.stats["connected"] += 1
        self.logdesc = desc = self.desc()
        ctx.log.notice("connected -- " + desc)
        if not self.send_now(reply):
            self.close()
            return
        self.start_relay()

    # --- relay ------------------------------------------------------------------------------
    def start_relay(self):
        loop = self.loop
        self.state = RELAY
        self.last = loop.now
        if self.rfd not in loop.handlers:
            loop.add(self.rfd, 0, self.on_remote)
            self.rmask = 0
        early, self.early = self.early, b""
        if early:
            self.n_cr += len(early)
            try:
                sent = self.r.send(early)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent < len(early):
                self.pend_cr = early[sent:]
        idle = self.ctx.config.timeout_idle
        if idle > 0:
            self.timer = loop.call_later(idle, self.on_idle_check)
        # No reads here: the poll loop reports whatever is already waiting.
        self.update()

    def relay_event(self, side, ev):
        """An event on the client (side 0) or remote (side 1) socket."""
        if ev & EPOLLOUT:
            self.flush(1 - side)
            if self.state != RELAY:
                return
        if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
            if (self.cmask if side == 0 else self.rmask) & EPOLLIN:
                self.pump(side)
            elif ev & EPOLLERR or (ev & EPOLLHUP and (self.pend_rc if side == 0 else self.pend_cr) is not None):
                self.close()
                return
            elif ev & EPOLLHUP:
                # Hang-up on a socket we are not reading now (its data waits
                # for the other side to drain): stop hearing about it until
                # there is room again; update() registers it anew then.
                if side == 0:
                    self.loop.remove(self.cfd)
                    self.cmask = -1
                else:
                    self.loop.remove(self.rfd)
                    self.rmask = -1
        if self.state == RELAY:
            self.update()

    def pump(self, side):
        """Move what the socket on ``side`` has to the other one."""
        if side == 0:
            src, dst = self.c, self.r
            if self.pend_cr is not None:
                return
        else:
            src, dst = self.r, self.c
            if self.pend_rc is not None:
                return
        ctx = self.ctx
        buf, mv = ctx.buf, ctx.mv
        size = len(buf)
        for _ in range(8):
            try:
                n = src.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if n == 0:
                if side == 0:
                    self.eof_c = True
                else:
                    self.eof_r = True
                return
            self.last = self.loop.now
            if side == 0:
                self.n_cr += n
            else:
                self.n_rc += n
            try:
                m = dst.send(mv[:n])
            except (BlockingIOError, InterruptedError):
                m = 0
            except OSError:
                self.close()
                return
            if m < n:
                if side == 0:
                    self.pend_cr = bytes(mv[m:n])
                else:
                    self.pend_rc = bytes(mv[m:n])
                return
            if n < size:
                return

    def flush(self, direction):
        """Send what is waiting for the receiver of ``direction``
        (0: client->remote, 1: remote->client)."""
        if direction == 0:
            data, dst = self.pend_cr, self.r
        else:
            data, dst = self.pend_rc, self.c
        if data is None:
            return
        try:
            m = dst.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        rest = data[m:] if m < len(data) else None
        if direction == 0:
            self.pend_cr = rest
        else:
            self.pend_rc = rest
        if rest is None:
            self.last = self.loop.now
            # the sender may have more: read it now instead of waiting a round
            self.pump(direction)

    def update(self):
        """Recompute what each socket waits for; relay half-closes; finish."""
        if self.eof_c and self.pend_cr is None and not self.shut_r:
            self.shut_r = True
            try:
                self.r.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.eof_r and self.pend_rc is None and not self.shut_c:
            self.shut_c = True
            try:
                self.c.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.shut_c and self.shut_r:
            self.close()
            return
        m = 0
        if not self.eof_c and self.pend_cr is None:
            m = EPOLLIN
        if self.pend_rc is not None:
            m |= EPOLLOUT
        if m != self.cmask:
            self.set_mask(0, m)
        m = 0
        if not self.eof_r and self.pend_rc is None:
            m = EPOLLIN
        if self.pend_cr is not None:
            m |= EPOLLOUT
        if m != self.rmask:
            self.set_mask(1, m)

    def set_mask(self, side, m):
        loop = self.loop
        if side == 0:
            fd, cur, handler = self.cfd, self.cmask, self.on_client
        else:
            fd, cur, handler = self.rfd, self.rmask, self.on_remote
        if cur == -1:
            if m == 0:
                return
            loop.add(fd, m, handler)
        elif (self.eof_c and self.shut_c) if side == 0 else (self.eof_r and self.shut_r):
            # both directions of this socket are done: nothing more to hear
            loop.remove(fd)
            m = -1
        else:
            loop.modify(fd, m)
        if side == 0:
            self.cmask = m
        else:
            self.rmask = m

    def on_idle_check(self):
        self.timer = None
        if self.state not in (RELAY, UDP):
            return
        idle = self.ctx.config.timeout_idle
        due = self.last + idle
        if due > self.loop.now + 0.5:
            self.timer = self.loop.call_at(due, self.on_idle_check)
            return
        self.ctx.log.notice("timed-out -- %s: idle for %gs" % (self.desc(), idle))
        self.close()

    # --- ending ------------------------------------------------------------------------------
    def send_now(self, data):
        """Send a short message (a reply) on the client socket.  Replies are
        a few bytes on an empty socket buffer; if even that does not fit the
        client is not reading and is dropped.  Returns success."""
        try:
            return self.c.send(data) == len(data)
        except OSError:
            return False

    def finish_reply(self, data):
        self.send_now(data)
        self.close()

    def close(self):
        if self.state == CLOSED:
            return
        was_relay = self.state == RELAY
        self.state = CLOSED
        ctx = self.ctx
        loop = self.loop
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.identq is not None:
            self.identq.cancel()
            self.identq = None
        aux, self.aux = self.aux, None
        if aux is not None:
            aux.close()
        loop.remove(self.cfd)
        self.c.close()
        if self.r is not None:
            loop.remove(self.rfd)
            self.r.close()
            self.r = None
        self.pend_cr = self.pend_rc = None
        ctx.sessions.discard(self)
        if self.lslot is not None:
            ctx.limits.release(self.lslot)
            self.lslot = None
        if aux is not None and self.command == P.CMD_UDP:
            ctx.stats["bytes_in"] += aux.n_in
            ctx.stats["bytes_out"] += aux.n_out
            ctx.log.notice("terminated -- %s. %s" % (self.desc(), aux.summary()))
        if was_relay:
            ctx.stats["bytes_in"] += self.n_cr
            ctx.stats["bytes_out"] += self.n_rc
            ctx.log.notice("terminated -- %s. %d bytes from %s, %d bytes from %s" % (
                self.logdesc or self.desc(), self.n_cr, self.client_ip, self.n_rc, self.peer or self.dst_host or self.dst_ip))
        if ctx.on_close is not None:
            ctx.on_close(self)


class Snapshot:
    """What a shell command may need of a session, frozen when it is queued."""

    __slots__ = ("client_ip", "dst_ip", "dst_host", "dst_port", "command", "user", "realuser")

    def __init__(self, s):
        for k in self.__slots__:
            setattr(self, k, getattr(s, k))


def set_socket_options(sock):
    """What every relayed TCP socket gets: no Nagle delay (replies and
    interactive traffic go out at once), urgent data inline (the classic
    SO_OOBINLINE), keep-alives (a dead peer is noticed)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass

"""One client, from its first byte to the start of its relay, and its end.

A Session is driven by the worker's poll loop through these states
(``State``): a balancer's PROXY protocol header when the listener takes
one, then the greeting, authentication and request (protocol.py parses,
auth.py checks), then the decision (decision.py, with the names and the
identd answer it asks for looked up first), the shell hooks of the deciding
line, and the way out: a connect (connector.py), a BIND listener (bind.py)
or a UDP relay (udp.py).  Once connected, the relay (relay.py) moves the
bytes; the session keeps the deadlines, the counts and the log lines.

Steps that block (name lookups, password checks) go to the loop's helper
pools (pools.py) and come back as callbacks, so one slow client never holds
up another (a destination's name goes there only when the process's
resolver cache, resolver.py, does not have it); the session is their requester (``gone``, ``src_key``), and a
step the pools refuse (its address has too many waiting) fails at once.
Every failure is answered with the failure reply of the client's SOCKS
version (``fail``, ``refuse``), and every refusal is logged once, naming the
line or the limit that refused it.
"""

import enum
import mmap
import socket

from . import auth
from . import decision as D
from . import gss
from . import gss1961 as G
from . import ident as I
from . import metrics as M
from . import netinfo
from . import protocol as P
from . import proxyproto as PP
from . import rules as R
from . import shell
from . import wayout as W
from .addresses import addr_text, errno_text, lookup_names, service_name
from .bind import UNSPECIFIED, BindWait
from .connector import Connector
from .errors import BackedOff
from .health import Health
from .limits import OK, REASONS
from .log import clean
from .loop import EPOLLERR, EPOLLHUP, EPOLLIN
from .pools import NAMES
from .relay import Budget, ProtectedRelay, Relay, ShapedProtectedRelay, ShapedRelay, set_socket_options
from .resolver import Resolver
from .traffic import period_text
from .udp import Association
from .upstream import UpstreamConnector


class State(enum.IntEnum):
    """Where a session is, from accept to close (in this order)."""
    PROXYHDR = 1      # waiting for the PROXY protocol header of a balancer
    NEG = 2           # greeting, authentication and request
    WAIT = 3          # the request is in: names, rules, identd, connect
    BINDWAIT = 4      # BIND: waiting for the application server
    UDP = 5           # UDP ASSOCIATE: the control connection of a relay
    RELAY = 6         # relaying both ways
    CLOSED = 7


PROXYHDR, NEG, WAIT, BINDWAIT, UDP, RELAY, CLOSED = State
RECV_CHUNK = 4096
MAX_EARLY = 65536           # bytes a client may send ahead of the relay
LIMIT_TEXT = {"limit clients": "too many clients", "limit per-address": "too many clients from %s",
              "limit rate": "too many new clients from %s", "limit binds": "too many BINDs waiting from %s"}


class Context:
    """What every session of a process shares: configuration, loop, log, the
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
        # what the relays keep for slow receivers, in all (limit buffers)
        self.budget = Budget(config.limit_buffers, config.relay_splice)
        self.sessions = set()
        self.resolver = Resolver(self)      # names to addresses, with the process's cache
        self.stats = {"accepted": 0, "connected": 0, "refused": 0, "failed": 0, "errors": 0,
                      "bytes_in": 0, "bytes_out": 0}
        # what the metrics add (metrics.py: keys are tuples, (FAMILY, label, ...))
        self.counts = {}
        self.on_close = None
        self.runner = shell.Runner(log, config.limit_commands)
        self.limits = None        # a limits.Limits when a client limit is set
        self.bind_limits = None   # the same when pending BINDs are counted (limit binds)
        self.backoff = None       # the master's backoff.Backoff, shared by every process (none in inetd mode)
        self.health = None        # the master's health.Health, shared likewise; a table of its own without one
        self.traffic = None       # a meters.TrafficControl when traffic control is on
        # the sockets of its sessions are this process's alone (a threads-model
        # worker accepts its clients itself; a fork-model child or inetd's
        # shares its client's descriptor with its parent)
        self.own_sockets = False
        # a process that exits after its one client waits for its commands
        loop.close_hooks.append(self.drain_commands)

    def drain_commands(self):
        self.runner.drain(10)

    def upstream_health(self):
        """The marks on upstream proxies: the master's, shared by every
        process; under inetd (no master) a table of this process's own."""
        if self.health is None:
            self.health = Health()
        return self.health

    @property
    def ruleset(self):
        return self.config.ruleset


class Session:
    __slots__ = (
        "ctx", "loop", "c", "cfd", "client_ip", "client_port", "local_ip", "local_port", "src_key",
        "state", "hs", "version", "command", "user", "realuser", "dst_host", "dst_ip", "dst_port",
        "candidates", "rule", "timer", "cmask", "early", "last", "ident", "identq", "authenticated",
        "names", "aux", "relay", "peer", "logdesc", "lslot", "refusal", "method", "gss", "prot", "level",
        "via", "tplan", "t0", "outcome", "due", "on_due",
        "__weakref__",
    )

    def __init__(self, ctx, sock, peer, local, inherited=False, proxy=None, refusal=None):
        """``inherited``: the socket comes from a listener that already set
        TCP_NODELAY, SO_OOBINLINE and SO_KEEPALIVE (accepted sockets inherit
        them), so they need not be set again.  ``proxy``: the listener takes
        PROXY protocol headers from these balancer addresses (AddrSpecs).
        ``refusal``: (limit, log it?) when the master found the client over a
        limit: it is answered politely once it has asked."""
        self.ctx = ctx
        loop = self.loop = ctx.loop
        self.t0 = loop.now          # the accept, until the reply to the request (metrics.REPLY)
        self.outcome = None         # how it ended, once counted (metrics.SESSIONS)
        self.c = sock
        self.cfd = sock.fileno()
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
        self.early = b""
        self.ident = None           # (kind, value) once identd has been asked
        self.identq = None
        self.authenticated = False
        self.names = ((), ())
        self.aux = None             # the Connector, BindWait or UDP Association
        self.relay = None
        self.peer = None            # BIND: who connected back
        self.logdesc = None         # desc(), once the request is granted
        self.lslot = None           # counted by the limits (release at close)
        self.refusal = refusal
        self.method = None          # SOCKS 5: the method chosen (none, username, gssapi)
        self.gss = None             # method gssapi: the gss.Acceptor
        self.prot = None            # RFC 1961 levels 1 and 2: the gss1961.Protection of the connection
        self.level = None           # method gssapi: the protection level granted
        self.via = None             # the upstream (its label) the way-out file sent this through
        self.tplan = None           # traffic control: the traffic.Plan of the session, once decided
        ctx.sessions.add(self)
        ctx.stats["accepted"] += 1
        sock.setblocking(False)
        if not inherited:
            set_socket_options(sock)
        self.cmask = EPOLLIN
        if proxy is not None:
            fam, n = self.src_key
            if not any(spec.match(fam, n) for spec in proxy):
                self.count("refused", "refused")
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
        self.timer = self.on_due = None
        t = ctx.config.timeout_negotiate
        if t > 0:
            self.arm(t, self.on_negotiate_timeout)
        if ctx.limits is not None and proxy is None:
            self.apply_limits()
        self.last = loop.now
        # The greeting has usually arrived with the connection: read it now.
        self.on_client(EPOLLIN)

    @property
    def gone(self):
        """Closed: what the helper threads would find for it is of no use
        (pools.py drops its jobs)."""
        return self.state == CLOSED

    # --- counting ------------------------------------------------------------------------
    def count(self, stat, outcome):
        """Count an answer: in the process's stats (``stat``, SIGUSR1's
        words; None: not there) and, the first time for this session, as
        its ``outcome`` by command (metrics.SESSIONS)."""
        ctx = self.ctx
        if stat is not None:
            ctx.stats[stat] += 1
        if self.outcome is None:
            self.outcome = outcome
            # before its request (greeting, authentication), a session has no command
            cmd = "none" if self.hs is not None or self.state == PROXYHDR else P.COMMAND_NAMES.get(
                self.command, "none")
            key = (M.SESSIONS, cmd, outcome)
            c = ctx.counts
            c[key] = c.get(key, 0) + 1

    def replied(self):
        """The first reply to the request: the time since the accept."""
        t0 = self.t0
        if t0 is not None:
            self.t0 = None
            M.observe_reply(self.ctx.counts, self.loop.now - t0)

    def hit(self, where):
        """The rule or way-out line ``where`` (FILE:LINE) decided."""
        c = self.ctx.counts
        key = (M.RULE, where)
        c[key] = c.get(key, 0) + 1

    # --- descriptions ---------------------------------------------------------------------
    def desc(self):
        """The session as log lines name it."""
        user = self.user if self.user is not None else "unknown"
        real = self.realuser if self.realuser is not None else "unknown"
        host = self.dst_host or self.dst_ip or "Unspecified.Host"
        if self.level is not None:
            user = "gssapi/%s%%%s" % (G.level_name(self.level), user)
        who = "%s(%s)@%s" % (user, real, self.client_ip)
        if self.command == P.CMD_BIND:
            if self.via is not None:
                return "Bind from %s for %s (%s) via %s" % (who, host, service_name(self.dst_port), self.via)
            return "Bind from %s for %s (%s)" % (who, host, service_name(self.dst_port))
        if self.command == P.CMD_UDP:
            return "UDP associate from %s" % who
        if self.via is not None:
            return "Connect from %s to %s (%s) via %s" % (who, host, service_name(self.dst_port), self.via)
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
        n_cr, n_rc = self.byte_counts()
        return "%s; %d bytes from the client, %d to it" % (
            self.desc() if self.state != CLOSED else "finished", n_cr, n_rc)

    def byte_counts(self):
        """(bytes from the client, bytes to it) relayed so far."""
        r = self.relay
        return (r.n_cr, r.n_rc) if r is not None else (0, 0)

    # --- reading the client before the relay --------------------------------------------------
    def on_client(self, ev):
        st = self.state
        if st == NEG:
            data = self.recv_or_close()
            if data:
                self.last = self.loop.now
                self.hs.feed(data)
                self.process_handshake()
        elif st == WAIT and self.hs is None:
            self.read_early()
        elif st == BINDWAIT or st == UDP:
            self.watch_control()
        elif st == PROXYHDR:
            self.read_proxy_header()
        elif ev & (EPOLLERR | EPOLLHUP):
            self.close()

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

    def pause_reading(self):
        if self.cmask:
            self.cmask = 0
            self.loop.modify(self.cfd, 0)

    def resume_reading(self):
        if self.cmask != EPOLLIN:
            self.cmask = EPOLLIN
            self.loop.modify(self.cfd, EPOLLIN)

    def read_early(self):
        """The request is in and sockd is still deciding or connecting: what
        the client sends meanwhile is kept for the destination (up to
        MAX_EARLY; then, or at its EOF, reading pauses until the relay
        starts)."""
        try:
            data = self.c.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if data and self.prot is not None:
            data = self.unprotect(data)
            if data is None:
                return
        if data:
            self.early += data
        if not data or len(self.early) >= MAX_EARLY:
            self.pause_reading()

    def watch_control(self):
        """BIND wait or UDP association: the TCP connection only carries
        the client's hang-up; anything it sends is read and dropped (BIND:
        kept for the peer, up to MAX_EARLY)."""
        try:
            data = self.c.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
        elif self.state == BINDWAIT and len(self.early) < MAX_EARLY:
            if self.prot is not None:
                data = self.unprotect(data)
                if data is None:
                    return
            self.early += data

    def unprotect(self, data):
        """The plaintext of what a client at level 1 or 2 sent, or None when
        it does not unwrap (the session is closed)."""
        try:
            return self.prot.feed(data)
        except P.ProtocolError as exc:
            self.protocol_error(exc)
            return None

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
            self.count("errors", "error")
            self.ctx.log.notice("error -- %s from host %s." % (exc, self.client_ip))
            self.close()
            return
        if got is None:
            return
        header, used = got
        rest, self.early = self.early[used:], b""
        if isinstance(header, PP.Local):
            self.ctx.log.debug("PROXY protocol LOCAL connection from %s (health check)" % self.client_ip)
        else:
            self.proxied(header)
        self.hs = P.ServerHandshake()
        self.state = NEG
        if not isinstance(header, PP.Local) and self.ctx.limits is not None:
            self.apply_limits()
        if rest:
            self.hs.feed(rest)
            self.process_handshake()

    def proxied(self, header):
        """Take the real client from a PROXY header.  The client reached the
        balancer's address and port.  Its identd knows that port; the
        address sockd binds for identd queries, UDP relays and BIND
        (local_ip) must be one of this host's: the balancer's when it is (a
        balancer on this host), else our end of the balancer's connection,
        else the wildcard (the kernel picks) when that is of the other
        family, or loopback and the client not."""
        self.client_ip, self.client_port = addr_text(header.src_ip), header.src_port
        self.src_key = R.ip_key(self.client_ip)
        self.local_port = header.dst_port
        dst = addr_text(header.dst_ip)
        dkey = R.ip_key(dst)
        if dkey in self.ctx.config.own_addresses or netinfo.is_loopback(dkey):
            self.local_ip = dst
        elif (":" in self.client_ip) != (":" in self.local_ip) or (
                netinfo.is_loopback(R.ip_key(self.local_ip)) and not netinfo.is_loopback(self.src_key)):
            self.local_ip = "::" if ":" in self.client_ip else "0.0.0.0"

    # --- limits ----------------------------------------------------------------------------
    def apply_limits(self):
        """Count this client, or note which limit it is over: it is then
        answered politely (a SOCKS failure reply) once it has asked, and given
        little time to ask."""
        verdict, slot, log_it = self.ctx.limits.admit(self.src_key)
        if verdict == OK:
            self.lslot = slot
            return
        self.refusal = (REASONS[verdict], log_it)
        if self.timer is not None and self.ctx.config.timeout_negotiate > 5:
            self.arm(5, self.on_negotiate_timeout)

    def refuse_over_limit(self):
        self.over_limit(*self.refusal)

    def over_limit(self, reason, log_it):
        """Over the limit named ``reason``: a SOCKS failure reply, and a log
        line when ``log_it`` (at most one every 5 seconds per address)."""
        ctx = self.ctx
        self.count("refused", "refused")
        M.bump(ctx.counts, (M.LIMIT, reason[6:] if reason.startswith("limit ") else reason))
        if log_it:
            what = LIMIT_TEXT[reason].replace("%s", self.client_ip)
            ctx.log.notice("refused -- %s: %s (%s; logged at most once every 5 seconds)" % (
                self.desc(), what, reason))
        self.reply_failure(P.REP_FAILURE)
        self.close()

    # --- negotiation ------------------------------------------------------------------------
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

    def protocol_error(self, exc):
        self.count("errors", "error")
        self.ctx.log.notice("error -- %s from host %s." % (exc, self.client_ip))
        if exc.reply:
            self.send_now(exc.reply)
        self.close()

    def on_message(self, msg):
        # in the order a SOCKS 5 client's messages come: one isinstance for
        # its greeting, two for its request
        if isinstance(msg, P.Greeting):
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
                self.count("refused", "refused")
                self.send_now(P.reply5(P.REP_CMD_UNSUPPORTED))
                self.close()
                return
            self.request()
        elif isinstance(msg, P.Socks4Request):
            self.version = 4
            self.command = msg.command
            self.user = clean(msg.userid, 255)
            self.dst_port = msg.port
            if msg.host is not None:
                self.dst_host = msg.host.lower()
            else:
                self.dst_ip = socket.inet_ntoa(msg.ip)
            self.request()
        elif isinstance(msg, P.UserPass):
            self.userpass(msg)
        elif isinstance(msg, G.Frame) or msg is G.ABORTED:
            self.gss_message(msg)

    def greeting(self, msg):
        """Choose the first of our methods, in our order, that the client offers."""
        code = auth.choose(self.ctx.config.methods, msg.methods)
        if code is None:
            self.ctx.log.notice("refused -- no acceptable authentication method from %s (offered %s)" % (
                self.client_ip, ",".join(str(m) for m in msg.methods)))
            self.count("refused", "refused")
            self.send_now(P.method_reply(P.METHOD_UNACCEPTABLE))
            self.close()
            return
        self.send_now(P.method_reply(code))
        self.method = auth.METHOD_NAMES[code]
        if self.method == "none":
            M.bump(self.ctx.counts, (M.AUTH, "none", "ok"))
        if code == P.METHOD_USERPASS:
            self.hs.expect_auth()
        elif code == P.METHOD_GSSAPI:
            cfg = self.ctx.config
            self.gss = gss.Acceptor(cfg.gssapi_keytab, cfg.gssapi_service)
            self.hs.expect_method(G.parse_frame)
        else:
            self.hs.expect_request()

    def userpass(self, msg):
        """RFC 1929: the password is checked off the loop (bcrypt is slow on
        purpose); the client is not read meanwhile."""
        self.state = WAIT
        self.user = msg.user
        self.pause_reading()
        busy = auth.check_password(self.ctx, self, msg.user, msg.password, self.on_auth, self.client_ip)
        if busy is not None:
            # refused at once, as a failed login: the pool is not to be queued on without end
            ctx = self.ctx
            self.count("refused", "refused")
            M.bump(ctx.counts, (M.AUTH, "username", "failed"))
            M.bump(ctx.counts, (M.LIMIT, "helpers"))
            if busy.log_it:
                ctx.log.notice("refused -- username/password check for %s from %s not run: %s" % (
                    self.user, self.client_ip, busy.text))
            self.send_now(P.userpass_reply(False))
            self.close()

    def on_auth(self, ok, error):
        if self.state != WAIT or self.hs is None:
            return
        if not ok:
            self.count("refused", "refused")
            M.bump(self.ctx.counts, (M.AUTH, "username", "failed"))
            if not isinstance(error, BackedOff):
                self.ctx.log.notice("refused -- username/password authentication failed for %s from %s" % (
                    self.user, self.client_ip))
            elif error.text is not None:
                self.ctx.log.notice("refused -- username/password authentication for %s from %s: %s" % (
                    self.user, self.client_ip, error.text))
            self.send_now(P.userpass_reply(False))
            self.close()
            return
        self.authenticated = True
        M.bump(self.ctx.counts, (M.AUTH, "username", "ok"))
        if not self.send_now(P.userpass_reply(True)):
            self.close()
            return
        self.state = NEG
        self.hs.expect_request()
        self.resume_reading()
        self.process_handshake()

    # --- GSS-API, RFC 1961 ----------------------------------------------------------------------
    def gss_message(self, msg):
        """A frame of the GSS-API sub-negotiation: a context token (its
        step runs on the helper pool for logins, like a password check; the
        client is not read meanwhile), then the protection level."""
        acc = self.gss
        if msg is G.ABORTED:
            self.gss_refuse("the client aborted", abort=False)
            return
        if not acc.complete:
            if msg.mtyp != G.MTYP_AUTH:
                self.gss_refuse("a frame of type %d before the context was established" % msg.mtyp)
                return
            self.state = WAIT
            self.pause_reading()
            busy = auth.gss_step(self.ctx, self, acc, msg.token, self.on_gss_step)
            if busy is not None:
                M.bump(self.ctx.counts, (M.LIMIT, "helpers"))
                self.gss_refuse("context step not run: %s" % busy.text, log_it=busy.log_it)
            return
        if msg.mtyp != G.MTYP_LEVEL:
            self.gss_refuse("a frame of type %d where the protection level belongs" % msg.mtyp)
            return
        self.gss_level(msg.token)

    def on_gss_step(self, result, error):
        if self.state != WAIT or self.hs is None:
            return
        if error is not None:
            self.gss_refuse(str(error) if isinstance(error, gss.GssFailure) else "internal error: %r" % error)
            return
        out, established = result
        if out and not self.send_now(G.frame(G.MTYP_AUTH, out)):
            self.close()
            return
        if established:
            self.user = self.gss.principal
            self.authenticated = True
        self.state = NEG
        self.hs.expect_method(G.parse_frame)
        self.resume_reading()
        self.process_handshake()

    def gss_level(self, token):
        """The client's protection level: granted as asked when ``gssapi
        levels`` allows it, else the next stronger one allowed (the client
        may close), else the abort.  At levels 1 and 2 everything from here
        on is wrapped (``prot``)."""
        cfg = self.ctx.config
        try:
            requested, nec = self.gss.read_level(token)
        except P.ProtocolError as exc:
            self.gss_refuse(str(exc))
            return
        if nec and not cfg.gssapi_nec:
            self.gss_refuse("the NEC variant's unwrapped protection level (gssapi nec no)")
            return
        level = G.choose_level(requested, cfg.gssapi_levels)
        if level is None:
            self.gss_refuse("asked for protection level %s; gssapi levels grants %s" % (
                G.level_name(requested), " ".join(G.level_name(lv) for lv in cfg.gssapi_levels)))
            return
        if not self.send_now(G.frame(G.MTYP_LEVEL, self.gss.level_token(level, nec))):
            self.close()
            return
        self.level = level
        M.bump(self.ctx.counts, (M.AUTH, "gssapi", "ok"))
        self.ctx.log.info("authenticated -- GSS-API %s from %s for %s; protection %s%s" % (
            self.user, self.client_ip, self.gss.target, G.level_name(level),
            " (NEC variant)" if nec else "" if level == requested else " (asked for %s)" % G.level_name(requested)))
        if level != G.CLEAR:
            self.prot = self.gss.protection(level)
            self.hs.protect(self.prot)
        self.hs.expect_request()

    def gss_refuse(self, why, abort=True, log_it=True):
        """GSS-API authentication failed or was refused: the abort frame
        (RFC 1961 section 3.8) and a log line."""
        ctx = self.ctx
        self.count("refused", "refused")
        M.bump(ctx.counts, (M.AUTH, "gssapi", "failed"))
        if log_it:
            who = self.user if self.gss is not None and self.gss.complete else "unknown"
            ctx.log.notice("refused -- GSS-API authentication of %s from %s: %s" % (who, self.client_ip, why))
        if abort:
            self.send_now(G.ABORT)
        self.close()

    def on_negotiate_timeout(self):
        self.timer = None
        if self.state in (NEG, WAIT, PROXYHDR):
            self.count(None, "timed_out")
            self.ctx.log.notice("timed-out -- negotiation with %s took too long (timeout negotiate)" % (
                self.client_ip))
            self.close()

    # --- the decision --------------------------------------------------------------------------
    def request(self):
        """A complete request is in: stop reading the client (what it sends
        next is kept for the destination) and decide."""
        self.state = WAIT
        self.early = self.hs.rest()
        self.hs = None
        if self.refusal is not None:
            self.refuse_over_limit()
            return
        if self.version == 4 and not auth.socks4_allowed(self.ctx.config):
            self.refuse_without_password()
            return
        # from here on one deadline covers resolving, identd and connecting
        self.set_deadline(self.on_connect_timeout)
        if self.command == P.CMD_UDP:
            self.udp_request()
            return
        if self.dst_host is not None:
            self.pool_refused("resolve", self.ctx.resolver.resolve(self, self.dst_host, self.on_resolved))
            return
        self.candidates = [(socket.AF_INET6 if ":" in self.dst_ip else socket.AF_INET, self.dst_ip)]
        self.lookup_names()

    def refuse_without_password(self):
        """SOCKS 4 when every method needs a password: the USERID proves
        nothing, so the request is refused before any rule sees it, as a
        SOCKS 5 client that offers no acceptable method is at its greeting."""
        ctx = self.ctx
        cfg = ctx.config
        self.count("refused", "refused")
        ctx.log.notice("refused -- %s by %s:%d: a SOCKS 4 USERID is no password, and methods requires one "
                       "(socks4 trust-userid no)" % (self.desc(), cfg.path, cfg.line_of.get("methods", 0)))
        self.reply_failure(P.REP_NOT_ALLOWED)
        self.close()

    def on_resolved(self, name, result, error):
        if self.state != WAIT:
            return
        if error is not None or not result:
            if self.upstream_resolves():
                # judged by its name; the upstream resolves it (decision.unresolved)
                self.candidates = []
                self.lookup_names()
                return
            reason = getattr(error, "strerror", None) or str(error or "no address")
            self.fail(P.REP_HOST_UNREACHABLE, ".  Error code: resolve %s" % clean(reason))
            return
        self.candidates = result
        self.dst_ip = addr_text(result[0][1])
        self.lookup_names()

    def upstream_resolves(self):
        """A CONNECT to a name that does not resolve here: does the way-out
        file send it through upstreams that each resolve names themselves
        (socks5h://, socks4a://, http://, the classic form)?  Then it is not
        sockd's to resolve."""
        wo = self.ctx.config.wayout
        if wo is None or self.command != P.CMD_CONNECT or self.dst_host is None:
            return False
        d = W.decide_server(wo, self.user, (0, 0), self.dst_port, (self.dst_host,))
        return d.action == W.SOCKD and all(s.remote_names for s in d.servers)

    def lookup_names(self):
        """The host names the rules need, looked up off the loop; then judge."""
        rs = self.ctx.config.ruleset
        named = self.dst_host is None and not (self.command == P.CMD_BIND and self.bind_unnamed())
        if rs.needs_src_names or (rs.needs_dst_names and named):
            self.look_up("names", lookup_names, (self.client_ip, self.dst_ip if named else None,
                                                 rs.needs_src_names, rs.needs_dst_names), self.on_names)
            return
        self.judge()

    def look_up(self, what, fn, args, done):
        """Run ``fn(*args)`` on the helper pool for names, ``done`` after."""
        self.pool_refused(what, self.loop.executor.submit(NAMES, self, fn, args, done))

    def pool_refused(self, what, busy):
        """When the pool refused a lookup (``busy``, its Refusal), the
        request fails at once: host unreachable (without the names a rule
        asks for, it cannot be judged either)."""
        if busy is None:
            return
        M.bump(self.ctx.counts, (M.LIMIT, "helpers"))
        if busy.log_it:
            self.fail(P.REP_HOST_UNREACHABLE, ".  Error code: %s not run: %s" % (what, busy.text))
        else:
            self.ctx.stats["failed"] += 1
            self.fail(P.REP_HOST_UNREACHABLE)

    def on_names(self, result, error):
        if self.state != WAIT:
            return
        self.names = result if error is None else ((), ())
        self.judge()

    def bind_unnamed(self):
        """A BIND whose DSTIP is 0.0.0.0 or ::: it names no application
        server, so no destination to judge until one connects."""
        return self.command == P.CMD_BIND and self.dst_host is None and self.dst_ip in UNSPECIFIED

    def ask(self, peer=None, peer_names=()):
        """This request as decision.decide wants it.  A BIND that names no
        server is asked about its client alone (dsts None: is there a
        permit line for it?), as a UDP association is; the host that then
        connects (``peer``) is asked about as the destination of the same
        request, with its names ``peer_names``."""
        src_names, dst_names = self.names
        if peer is not None:
            dsts, dst_names = [peer], peer_names
        elif self.command == P.CMD_BIND and self.bind_unnamed():
            dsts = None
        else:
            dsts = [ip for _, ip in self.candidates]
        return D.Ask(self.src_key, dsts, self.dst_port, self.command,
                     user=self.user, user_from_ident=self.version == 5 and not self.authenticated,
                     ident=self.ident, ident_default=self.ctx.ident_mode,
                     dst_host=self.dst_host if peer is None else None,
                     src_names=src_names, dst_names=dst_names, method=self.method)

    def judge(self):
        verdict = D.decide(self.ask(), self.ctx.config)
        if verdict.need_ident:
            self.ask_ident()
            return
        if verdict.rule is not None:
            self.hit(verdict.rule.where)
        if verdict.alert is not None:
            self.alert(verdict)
        if not verdict.allowed:
            self.refuse(verdict)
            return
        self.rule = verdict.rule
        if verdict.user is not None:
            self.user = verdict.user
        if verdict.addresses and len(verdict.addresses) != len(self.candidates):
            allowed = set(verdict.addresses)
            self.candidates = [c for c in self.candidates if c[1] in allowed]
            self.dst_ip = addr_text(self.candidates[0][1])
        if self.ctx.traffic is not None and not self.traffic_admits(verdict.rule):
            return
        if self.rule.command:
            self.run_command(self.rule.command, self.rule.where)
        cfg = self.ctx.config
        if cfg.wayout is not None:
            self.way_out(cfg)
        elif self.command == P.CMD_BIND:
            self.bind_start()
        else:
            self.connect()

    def traffic_admits(self, rule):
        """Traffic control, once the rules have permitted the request: the
        session's plan (which limits and quotas apply), and the one check
        of the quotas -- one that is reached refuses the request with the
        SOCKS failure reply and a line naming it.  Returns whether the
        request goes on."""
        ctx = self.ctx
        cfg = ctx.config
        plan = self.tplan = ctx.traffic.plan(cfg, self.src_key, self.user, self.method,
                                             rule.tag if rule is not None else None)
        if plan is None:
            return True
        over = ctx.traffic.over_quota(plan, cfg)
        if over is None:
            return True
        q, key, used = over
        self.count("refused", "refused")
        M.bump(ctx.counts, (M.LIMIT, "quota"))
        ctx.log.notice("refused -- %s: %s reached for %s (%s; %d bytes used this %s)" % (
            self.desc(), q.text(), key, q.where, used, period_text(q.period)))
        self.reply_failure(P.REP_NOT_ALLOWED)
        self.close()
        return False

    def ask_ident(self):
        """Ask the client's identd (once per client), then judge again."""
        self.identq = I.IdentQuery(self.loop, self.local_ip, self.client_ip, self.client_port,
                                   self.local_port, self.ctx.config.timeout_ident, self.on_ident)

    def on_ident(self, kind, value):
        self.identq = None
        if self.state != WAIT and not (self.state == BINDWAIT and self.aux is not None and self.aux.peer):
            return
        M.bump(self.ctx.counts, (M.IDENT, kind.lower()))
        self.ident = (kind, value)
        if kind == I.USERID:
            self.realuser = value
        else:
            self.ctx.log.notice("cannot connect to identd on %s" % self.client_ip)
            self.run_hook(self.ctx.ruleset.no_identd)
        if self.state == BINDWAIT:
            self.judge_peer()
        else:
            self.judge()

    def run_hook(self, hook):
        """A #NO_IDENTD: or #BAD_ID: line: (file, line, command) or None."""
        if hook:
            self.run_command(hook[2], "%s:%d" % hook[:2])

    def run_command(self, template, where):
        if not template:
            return
        snap = Snapshot(self)
        self.ctx.runner.submit(template, snap.values, where)

    def alert(self, verdict):
        """identd named another user than the client claimed: the classic
        *Alert* line and the #BAD_ID: hook."""
        if verdict.alert is not None:
            self.ctx.log.warning("*Alert*: real user is %s, not %s" % (verdict.alert, self.user))
            self.run_hook(self.ctx.ruleset.bad_id)

    def refuse(self, verdict, about=""):
        """The rules refuse: log which line (or why), after ``about`` (what
        was refused, when more than the request), run the refusing line's
        command, answer and close."""
        ctx = self.ctx
        self.count("refused", "refused")
        ctx.log.notice("refused -- %s%s%s" % (self.desc(), about, verdict.reason(ctx.config.path)))
        if verdict.run_rule_command:
            self.run_command(verdict.rule.command, verdict.rule.where)
        self.reply_failure(verdict.code5, verdict.code4)
        self.close()

    # --- CONNECT ---------------------------------------------------------------------------------
    def connect(self):
        cfg = self.ctx.config
        self.aux = Connector(self.loop, self.candidates, self.dst_port, cfg.route_table, self.dst_host,
                             self.ctx.log, self, cfg.connect_stagger)
        self.aux.start()

    def way_out(self, cfg, names=None):
        """The rules have permitted the request; the way-out file says how
        it leaves: direct, through its upstreams, or not at all (a refusal
        naming its line).  Its host-name lines need the destination's names:
        the client's name, else those looked up for the rules, else a
        lookup now."""
        wo = cfg.wayout
        if names is None:
            if self.dst_host is not None:
                names = (self.dst_host,)
            else:
                names = self.names[1]
                if not names and wo.needs_names and not cfg.ruleset.needs_dst_names and not self.bind_unnamed():
                    self.look_up("names", lookup_names, (self.client_ip, self.dst_ip, False, True),
                                 self.on_wayout_names)
                    return
        d = W.decide_server(wo, self.user, R.ip_key(self.dst_ip) if self.candidates else (0, 0), self.dst_port,
                            names)
        if not self.candidates and not (d.action == W.SOCKD and all(s.remote_names for s in d.servers)):
            # a name only an upstream can resolve, but the line (for this user) goes another way
            self.fail(P.REP_HOST_UNREACHABLE, ".  Error code: resolve: %s does not resolve here, and %s" % (
                self.dst_host, d.reason))
            return
        if d.entry is not None:
            self.hit("%s:%d" % (d.entry.file, d.entry.line))
        if d.action == W.DIRECT:
            if self.command == P.CMD_BIND:
                self.bind_start()
            else:
                self.connect()
            return
        if d.action == W.DENY:
            self.refuse_way_out(d)
            return
        self.aux = UpstreamConnector(self.ctx, self, d.servers, self.command, self.dst_host, self.candidates,
                                     self.dst_port)
        self.aux.start()

    def on_wayout_names(self, result, error):
        if self.state != WAIT:
            return
        self.way_out(self.ctx.config, result[1] if error is None else ())

    def refuse_way_out(self, decision):
        """A deny line of the way-out file (or none matched): refused, by
        its line, before any upstream is asked."""
        ctx = self.ctx
        self.count("refused", "refused")
        ctx.log.notice("refused -- %s: way out %s" % (self.desc(), decision.reason))
        self.reply_failure(P.REP_NOT_ALLOWED)
        self.close()

    def on_connected(self, sock, ip, err):
        connector, self.aux = self.aux, None
        if sock is None:
            if isinstance(err, int):
                self.connect_failed(err)
            else:
                self.fail(err.rep, ".  Error code: %s" % err.detail)
            return
        if self.command == P.CMD_BIND:
            self.upstream_peer(connector, sock)
            return
        self.dst_ip = ip
        # the connect deadline is over; start_relay arms the idle timeout on
        # the same timer (close() cancels it)
        self.on_due = None
        bnd = None
        first = b""
        if type(connector) is not Connector:
            self.via = connector.server.label
            bnd = connector.bound
            first = connector.first
        if bnd is None:
            try:
                bnd = sock.getsockname()
            except OSError:
                bnd = ("0.0.0.0", 0)
        ctx = self.ctx
        self.count("connected", "connected")
        self.logdesc = desc = self.desc()
        ctx.log.notice("connected -- " + desc)
        if not self.granted(addr_text(bnd[0]), bnd[1]):
            if connector.mask >= 0:
                self.loop.remove(sock.fileno())
            sock.close()
            self.close()
            return
        self.start_relay(sock, connector.mask, first)

    def on_connect_timeout(self):
        self.timer = None
        if self.state != WAIT:
            return
        if self.identq is not None:
            self.identq.cancel()
            self.identq = None
        detail = ""
        if self.aux is not None:
            if type(self.aux) is UpstreamConnector:
                detail = self.aux.timeout_detail()      # its word on why
            self.aux.cancel()
            self.aux = None
        self.fail(P.REP_TTL_EXPIRED, detail, "timed-out")

    def connect_failed(self, err):
        self.fail(P.rep_for_errno(err), ".  Error code: connect %s" % errno_text(err))

    # --- BIND ------------------------------------------------------------------------------------
    def bind_start(self):
        bw = BindWait(self)
        self.aux = bw
        if not bw.start():
            return
        self.state = BINDWAIT
        # the client may only hang up now; watch for that
        self.resume_reading()
        self.set_deadline(self.on_bind_timeout)

    def on_bind_timeout(self):
        self.timer = None
        if self.state == BINDWAIT:
            self.fail(P.REP_TTL_EXPIRED, "", "timed-out")

    def judge_peer(self):
        """The BIND's connection comes from a host the request did not name
        (it named none, or ``bind check-peer no``): the rules judge it as
        the destination of the same request -- decision.decide, with the
        private-destination guard and identd as for any request -- before a
        byte is relayed.  Its names are looked up first when rules name
        hosts.  Permitted: the second reply and the relay; refused: the
        failure reply and a log line naming the line or the reason."""
        bw = self.aux
        ip, port = bw.peer
        rs = self.ctx.ruleset
        if rs.needs_dst_names and bw.names is None:
            self.look_up("names", lookup_names, (self.client_ip, ip, False, True), self.on_peer_names)
            return
        verdict = D.decide(self.ask(ip, bw.names or ()), self.ctx.config)
        if verdict.need_ident:
            self.ask_ident()
            return
        if verdict.rule is not None:
            self.hit(verdict.rule.where)
        self.alert(verdict)
        if not verdict.allowed:
            self.refuse(verdict, ": connection from %s port %d" % (ip, port))
            return
        if verdict.user is not None:
            self.user = verdict.user
        self.bound(*bw.take())

    def on_peer_names(self, result, error):
        bw = self.aux
        if self.state != BINDWAIT or bw is None or bw.conn is None:
            return
        bw.names = result[1] if error is None else ()
        self.judge_peer()

    def bound(self, conn, peer_ip, peer_port, rmask=-1, first=b""):
        """The application server connected back: second reply, then relay.
        Through an upstream, ``conn`` is the connection to it, registered
        for ``rmask``, and ``first`` what the peer sent with the reply."""
        self.cancel_timer()
        self.aux = None
        if rmask < 0:
            conn.setblocking(False)
            set_socket_options(conn)
        self.peer = peer_ip
        self.count("connected", "connected")
        self.ctx.log.notice("connected -- %s: %s port %d connected" % (self.desc(), peer_ip, peer_port))
        if not self.granted(peer_ip, peer_port):
            if rmask >= 0:
                self.loop.remove(conn.fileno())
            conn.close()
            self.close()
            return
        self.start_relay(conn, rmask, first)

    # --- BIND through an upstream ----------------------------------------------------------------
    def on_upstream_bound(self, addr, port):
        """The upstream's first BIND reply: where it listens for the peer.
        It is the client's first reply; then the wait, as for a BIND of
        sockd's own."""
        self.via = self.aux.server.label
        if not self.granted(addr, port):
            self.close()
            return
        self.ctx.log.info("bind -- %s: listening on %s port %d" % (self.desc(), addr, port))
        self.state = BINDWAIT
        self.resume_reading()
        self.set_deadline(self.on_bind_timeout)

    def upstream_peer(self, connector, sock):
        """The upstream's second BIND reply: who connected to it.  Checked
        as a peer of sockd's own BIND would be: the host the request named
        (``bind check-peer``), else judged by the rules."""
        peer = PeerThrough(self, sock, connector.bound or ("0.0.0.0", 0), connector.mask, connector.first)
        ip, port = peer.peer
        expect = self.dst_ip
        if expect not in UNSPECIFIED and (ip == expect or self.ctx.config.bind_check_peer):
            if ip != expect:
                peer.release()
                self.fail(P.REP_NOT_ALLOWED, ". Error: connected to wrong host %s (%s)" % (ip, port))
                return
            self.bound(*peer.take())
            return
        self.aux = peer
        peer.hold()
        self.judge_peer()

    # --- UDP ASSOCIATE -----------------------------------------------------------------------------
    def udp_request(self):
        verdict = D.decide(D.Ask(self.src_key, None, self.dst_port, P.CMD_UDP, user=self.user, method=self.method),
                           self.ctx.config)
        if verdict.rule is not None:
            self.hit(verdict.rule.where)
        if not verdict.allowed:
            self.refuse(verdict)
            return
        if self.ctx.traffic is not None and not self.traffic_admits(verdict.rule):
            return
        assoc = Association(self, self.dst_port)
        try:
            addr, port = assoc.start()
        except OSError as exc:
            self.fail(P.REP_FAILURE, ".  Error code: udp %s" % exc.strerror)
            return
        self.aux = assoc
        self.cancel_timer()
        self.replied()
        if not self.send_now(P.reply5(P.REP_SUCCEEDED, addr, port)):
            self.close()
            return
        self.count("connected", "connected")
        self.ctx.log.notice("connected -- %s: relay on %s port %d" % (self.desc(), addr, port))
        self.state = UDP
        self.resume_reading()
        self.touch()
        self.start_idle_timer()

    def touch(self):
        """Traffic: the idle timeout starts again."""
        self.last = self.loop.now

    # --- replies ---------------------------------------------------------------------------------
    def send_now(self, data):
        """Send a short message (a reply) on the client socket, wrapped at
        RFC 1961 levels 1 and 2.  Replies are a few bytes on an empty socket
        buffer; if even that does not fit the client is not reading and is
        dropped.  Returns success."""
        if self.prot is not None:
            data = self.prot.seal(data)
        try:
            return self.c.send(data) == len(data)
        except OSError:
            return False

    def granted(self, addr, port):
        """Send the success reply of the client's version for an address and
        port (SOCKS 4 has room for IPv4 only; an IPv6 address is sent as
        zeros).  Returns False when the client could not take it."""
        self.replied()
        if self.version == 4:
            try:
                ip = socket.inet_aton(addr)
            except OSError:
                ip = P.ZERO4
            return self.send_now(P.reply4(P.S4_GRANTED, port, ip))
        return self.send_now(P.reply5(P.REP_SUCCEEDED, addr, port))

    def reply_failure(self, rep, code4=P.S4_REJECTED):
        """The failure reply in the client's SOCKS version."""
        self.replied()
        self.send_now(P.failure_reply(self.version, rep, code4))

    def fail(self, rep, detail=None, outcome="failed"):
        """A request that cannot be served: count it and log ``outcome --
        DESCRIPTION`` + ``detail`` (no line when ``detail`` is None), answer
        with ``rep`` in the client's version, close."""
        if detail is not None:
            self.ctx.stats["failed"] += 1
            self.ctx.log.notice("%s -- %s%s" % (outcome, self.desc(), detail))
        self.count(None, "timed_out" if outcome == "timed-out" else "failed")
        self.reply_failure(rep)
        self.close()

    # --- relay -----------------------------------------------------------------------------------
    def start_relay(self, r, rmask, first=b""):
        """Hand both sockets to a Relay; ``rmask``: what ``r`` is registered
        for in the loop now (-1: not registered); ``first``: what the remote
        sent before the relay began (behind an upstream's reply), for the
        client."""
        self.state = RELAY
        early, self.early = self.early, b""
        ctx = self.ctx
        if self.tplan is not None:
            # traffic control applies: the same relay, its reads metered
            meter = ctx.traffic.meter(self.tplan, ctx.config)
            if self.prot is None:
                relay = ShapedRelay(self, self.loop, ctx.buf, ctx.mv, self.c, r, ctx.budget, meter)
            else:
                relay = ShapedProtectedRelay(self, self.loop, ctx.buf, ctx.mv, self.c, r, ctx.budget, self.prot,
                                             meter)
        elif self.prot is None:
            relay = Relay(self, self.loop, ctx.buf, ctx.mv, self.c, r, ctx.budget)
        else:
            relay = ProtectedRelay(self, self.loop, ctx.buf, ctx.mv, self.c, r, ctx.budget, self.prot)
        self.relay = relay
        self.start_idle_timer()
        relay.start(self.cmask, rmask, early, first)

    def start_idle_timer(self):
        idle = self.ctx.config.timeout_idle
        if idle > 0:
            self.arm(idle, self.on_idle_check)
        else:
            self.cancel_timer()

    def on_idle_check(self):
        self.timer = None
        if self.state not in (RELAY, UDP):
            return
        idle = self.ctx.config.timeout_idle
        last = self.relay.last if self.relay is not None else self.last
        due = last + idle
        if due > self.loop.now + 0.5:
            self.arm_at(due, self.on_idle_check)
            return
        self.ctx.log.notice("timed-out -- %s: idle for %gs" % (self.desc(), idle))
        self.close()

    # --- deadlines and the end -----------------------------------------------------------------
    def set_deadline(self, callback):
        """``timeout connect`` from now, replacing any earlier deadline."""
        t = self.ctx.config.timeout_connect
        if t > 0:
            self.arm(t, callback)
        else:
            self.cancel_timer()

    def arm(self, delay, callback):
        """``callback()`` in ``delay`` seconds, replacing the deadline
        armed before.  A session has one timer for its successive deadlines
        (negotiate, connect, idle): when the one armed fires no later than
        the new deadline's second, it is kept and re-armed for the rest when
        it fires (``on_timer``), so that a client served within its first
        deadline creates and cancels one timer, not three.  The callback
        runs when a timer of its own would have (the loop's wheel: at most
        a second late)."""
        due = self.loop.now + delay
        t = self.timer
        if t is not None and delay >= 1.0 and t.when <= int(due) + 1:
            self.due, self.on_due = due, callback
            return
        self.arm_at(due, callback)

    def arm_at(self, due, callback):
        """``callback()`` at loop time ``due``, on a timer of its own (the
        one armed before, if any, cancelled)."""
        if self.timer is not None:
            self.timer.cancel()
        self.due, self.on_due = due, callback
        self.timer = self.loop.call_at(due, self.on_timer)

    def on_timer(self):
        self.timer = None
        cb = self.on_due
        if cb is None:
            return
        if self.loop.now < self.due:
            # armed for an earlier deadline, since moved on: wait for this one
            self.arm_at(self.due, cb)
            return
        self.on_due = None
        cb()

    def cancel_timer(self):
        self.on_due = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self):
        if self.state == CLOSED:
            return
        if self.outcome is None:
            self.count(None, "closed")
        self.state = CLOSED
        ctx = self.ctx
        self.cancel_timer()
        if self.identq is not None:
            self.identq.cancel()
            self.identq = None
        aux, self.aux = self.aux, None
        if self.gss is not None:
            self.gss.close()
        if aux is not None:
            if isinstance(aux, Connector):
                aux.cancel()
            else:
                aux.release()
        relay = self.relay
        if relay is not None:
            # both sockets are closed now: when no other process can hold
            # them (this process made both, and no shell command's child
            # is between its fork and its exec), their close(2) ends their
            # epoll registrations
            relay.release(ctx.own_sockets and not ctx.runner.pending)
            relay.r.close()
        else:
            self.loop.remove(self.cfd)
        self.c.close()
        ctx.sessions.discard(self)
        if self.lslot is not None:
            ctx.limits.release(self.lslot)
            self.lslot = None
        if aux is not None and isinstance(aux, Association):
            ctx.stats["bytes_in"] += aux.n_in
            ctx.stats["bytes_out"] += aux.n_out
            M.bump(ctx.counts, (M.UDP, "relayed"), aux.d_in + aux.d_out)
            M.bump(ctx.counts, (M.UDP, "dropped"), aux.dropped)
            ctx.log.notice("terminated -- %s. %s" % (self.desc(), aux.summary()))
        if relay is not None:
            ctx.stats["bytes_in"] += relay.n_cr
            ctx.stats["bytes_out"] += relay.n_rc
            if relay.error is not None:
                ctx.stats["errors"] += 1
                ctx.log.notice("error -- %s from host %s." % (relay.error, self.client_ip))
            wire = "" if self.prot is None else " (on the wire: %d bytes from %s, %d to it)" % (
                self.prot.wire_in, self.client_ip, self.prot.wire_out)
            if self.tplan is not None:
                meter = relay.meter
                wire += meter.shaped()
                if meter.cut is not None:
                    M.bump(ctx.counts, (M.CUT, "quota"))
                    key, q = meter.cut
                    wire += "; cut: %s reached for %s (%s)" % (q.text(), key, q.where)
            ctx.log.notice("terminated -- %s. %d bytes from %s, %d bytes from %s%s" % (
                self.logdesc or self.desc(), relay.n_cr, self.client_ip, relay.n_rc,
                self.peer or self.dst_host or self.dst_ip, wire))
        if ctx.on_close is not None:
            ctx.on_close(self)


class PeerThrough:
    """The peer of a BIND through an upstream, while the rules judge it:
    BindWait's ``peer``, ``names``, ``conn``, ``take()`` and ``release()``
    over the connection to the upstream, whose events (a hang-up) end the
    session meanwhile."""

    __slots__ = ("session", "conn", "peer", "names", "mask", "first")

    def __init__(self, session, conn, peer, mask, first):
        self.session, self.conn, self.peer, self.mask, self.first = session, conn, peer, mask, first
        self.names = None

    def hold(self):
        loop = self.session.loop
        loop.rebind(self.conn.fileno(), self.on_event)
        if self.mask != 0:
            loop.modify(self.conn.fileno(), 0)
            self.mask = 0

    def on_event(self, ev):
        self.session.close()

    def take(self):
        conn, self.conn = self.conn, None
        return conn, self.peer[0], self.peer[1], self.mask, self.first

    def close(self):
        self.session.close()

    def release(self):
        if self.conn is not None:
            if self.mask >= 0:
                self.session.loop.remove(self.conn.fileno())
            self.conn.close()
            self.conn = None


class Snapshot:
    """What a shell command may need of a session, frozen when it is queued
    (the command runs on another thread, later)."""

    __slots__ = ("client_ip", "dst_ip", "dst_host", "dst_port", "command", "user", "realuser")

    def __init__(self, s):
        for k in self.__slots__:
            setattr(self, k, getattr(s, k))

    def values(self):
        return shell.values_for(self)


def live_counts(sessions):
    """(bytes from clients, bytes to them, datagrams relayed, dropped) of
    the ``sessions`` still open: what they have moved that their close has
    not yet added to the process's counts (metrics.report)."""
    b_in = b_out = d_ok = d_drop = 0
    for s in sessions:
        r = s.relay
        if r is not None:
            b_in += r.n_cr
            b_out += r.n_rc
        elif type(s.aux) is Association:
            a = s.aux
            b_in += a.n_in
            b_out += a.n_out
            d_ok += a.d_in + a.d_out
            d_drop += a.dropped
    return b_in, b_out, d_ok, d_drop

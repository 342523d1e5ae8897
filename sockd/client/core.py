"""The client library: a socket class that goes direct, through a SOCKS
server, or nowhere, as socks.conf says -- the Python counterpart of the
classic libsocks (Rconnect, Rbind, Rgetsockname, Rlisten, Raccept).

``socksocket`` is a real ``socket.socket``.  For a TCP ``connect()`` it asks
socks.conf (conf.py) and then

* connects directly, like the plain call, or
* tries the line's servers in order, every address of each name, skipping
  (and logging) the dead ones; on the first that answers it speaks SOCKS 5
  (no authentication, RFC 1929 with SOCKS_USERNAME / SOCKS_PASSWORD, or
  GSS-API, RFC 1961, with the user's Kerberos ticket: gss.py) and falls
  back to SOCKS 4A/4 when the server does not speak 5; the socket is then
  the relayed stream itself -- or, at GSS-API protection levels 1 and 2,
  one end of a socketpair whose relay (gssrelay.py) seals and opens what
  goes through, so that the program still reads and writes plaintext -- or
* refuses with a SocksError whose message says why (the socks.conf line,
  or the server's reply in words).

BIND keeps the classic call order: after a connect() through a server, a
socket that binds port 0 and then calls getsockname() or listen() gets a
SOCKS BIND at the same server, for the same host; getsockname() returns the
address the server listens on, listen() does nothing, and accept() waits
for the server's second reply and returns the connection.  A datagram
socket sending to a destination that goes through a server gets a SOCKS 5
UDP ASSOCIATE; sendto()/recvfrom() wrap and unwrap the RFC 1928 header
(and, at GSS-API levels 1 and 2, make each datagram one protected frame).

Every wait is bounded (the socket's own timeout, else CONNECT_TIMEOUT), and
every reply is read to its exact length, so no byte of the relayed data is
ever eaten by the handshake.
"""

import errno
import ipaddress
import logging
import logging.handlers
import os
import pwd
import select
import socket
import sys
import threading
import time

from .. import __version__
from .. import gss1961 as G
from .. import protocol as P
from .. import rules as R
from ..addresses import service_name
from . import conf as K
from . import gss
from . import gssrelay
from . import shell

log = logging.getLogger("sockd.client")

_socket = socket.socket                       # the real class, whatever is patched later
_create_connection = socket.create_connection

CONNECT_TIMEOUT = 120.0     # the classic client's limit for a whole handshake
SERVER_TIMEOUT = 15.0       # reaching one address of one server
GREETING_TIMEOUT = 10.0     # a server silent after a SOCKS 5 greeting speaks only 4
MAX_DATAGRAM = 65535

S4_TEXT = {
    P.S4_REJECTED: "request rejected or failed",
    P.S4_NO_IDENTD: "the server cannot reach identd on your machine",
    P.S4_BAD_ID: "your user id does not match identd",
}


# --- errors ------------------------------------------------------------------------

class SocksError(ConnectionRefusedError):
    """A connection the SOCKS layer did not make.  Like the classic
    library's ECONNREFUSED, but ``str()`` tells why.  ``where`` is the
    socks.conf FILE:LINE that decided (or None), ``server`` the server that
    answered (or None), ``code`` its reply code (or None)."""

    def __init__(self, message, where=None, server=None, code=None, version=None):
        super().__init__(message)
        self.errno = errno.ECONNREFUSED
        self.where, self.server, self.code, self.version = where, server, code, version


class SocksDenied(SocksError):
    """socks.conf refused the connection (a deny line, or no line matched)."""


class SocksRefused(SocksError):
    """The SOCKS server answered with a refusal or a failure."""


class SocksServerError(SocksError):
    """No server of the list could be used (all dead, or not speaking SOCKS)."""


class SocksConfigError(SocksError):
    """socks.conf or SOCKS_SERVER holds a mistake; the message lists them."""


class _Dead(Exception):
    """This address of this server cannot be used: try the next one."""


class _NotSocks5(Exception):
    """The server did not answer a SOCKS 5 greeting: try SOCKS 4."""


# --- process-wide state: configuration, users, the last connect -------------------

class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.conf_key = None
        self.conf = None
        self.conf_error = None
        self.v4_only = set()        # server addresses that did not answer SOCKS 5
        self.last = None            # the last successful TCP connect: _Last
        self.started = False
        self.names = {}             # reverse lookups (bounded)


_state = _State()


class _Last:
    __slots__ = ("host", "ip", "port", "decision", "server")

    def __init__(self, host, ip, port, decision, server):
        self.host, self.ip, self.port, self.decision, self.server = host, ip, port, decision, server


def _users():
    """(effective user: sent on the wire and matched by *=, login name)."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    try:
        login = os.getlogin()
    except OSError:
        login = os.environ.get("LOGNAME") or os.environ.get("USER") or user
    return user, login


def _progname():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "SOCKSclient"


class _Syslog(logging.handlers.SysLogHandler):
    """A syslog that is not listening must never disturb the program."""

    def handleError(self, record):
        pass


def setup_logging():
    """Send the library's log lines where SOCKS_LOG says: ``syslog``
    (default: facility daemon, as the program's name with its pid),
    ``stderr`` (syslog and stderr) or ``none``.  Idempotent."""
    if getattr(log, "_sockd_setup", False):
        return
    log._sockd_setup = True
    where = os.environ.get("SOCKS_LOG", "syslog").lower()
    log.setLevel(logging.INFO)
    name = "%s[%d]: " % (_progname(), os.getpid())
    if where in ("syslog", "stderr"):
        try:
            h = _Syslog("/dev/log", logging.handlers.SysLogHandler.LOG_DAEMON)
            h.setLevel(logging.WARNING)
            h.setFormatter(logging.Formatter(name + "%(message)s"))
            log.addHandler(h)
        except OSError:
            pass
    if where == "stderr":
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(_progname() + ": %(message)s"))
        log.addHandler(h)
    if where == "none":
        log.addHandler(logging.NullHandler())
        log.propagate = False


def banner(stream=None):
    """SOCKS_BANNER: the version and the default server, on stderr."""
    try:
        servers = K.env_servers()
        default = ", ".join(map(K.fmt_server, servers)) if servers else "none (SOCKS_SERVER is not set)"
    except K.ConfError as exc:
        default = "none (%s)" % exc
    (stream or sys.stderr).write("sockd %s SOCKS client (SOCKS 5, 4A, 4; socks.conf %s). "
                                 "Default SOCKS server: %s\n" % (__version__, K.conf_path(), default))


def start():
    """Once per process: logging, and the banner when SOCKS_BANNER is set."""
    with _state.lock:
        if _state.started:
            return
        _state.started = True
    setup_logging()
    if os.environ.get("SOCKS_BANNER"):
        banner()


def load_conf():
    """The current socks.conf (None: no file), re-read when it changes.
    Raises SocksConfigError."""
    path = K.conf_path()
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        key = (path, None)
    with _state.lock:
        if key == _state.conf_key:
            if _state.conf_error is not None:
                raise SocksConfigError(_state.conf_error)
            return _state.conf
    try:
        conf, err = K.load(path), None
    except K.ConfError as exc:
        conf, err = None, str(exc)
    with _state.lock:
        _state.conf_key, _state.conf, _state.conf_error = key, conf, err
    if err is not None:
        log.error("%s", err)
        raise SocksConfigError(err)
    for w in conf.warnings if conf else ():
        log.warning("%s:%d: %s", *w)
    return conf


def check_config():
    """Load socks.conf, SOCKS_SERVER and SOCKS_VERSION now; raise
    SocksConfigError."""
    load_conf()
    _default_servers()
    _versions()


def _gss_settings():
    """SOCKS_GSSAPI, SOCKS_GSSAPI_SERVICE, SOCKS_GSSAPI_LEVEL (gss.py)."""
    try:
        return gss.settings()
    except ValueError as exc:
        raise SocksConfigError(str(exc)) from None


def _versions():
    """The SOCKS versions to try with a server, in order.  SOCKS_GSSAPI=require
    speaks only 5: a fallback to 4 would drop the authentication it insists on."""
    try:
        v = K.env_version()
    except K.ConfError as exc:
        raise SocksConfigError(str(exc)) from None
    if _gss_settings().mode == gss.REQUIRE:
        if v == 4:
            raise SocksConfigError("SOCKS_GSSAPI=require needs SOCKS 5, but SOCKS_VERSION is 4")
        return (5,)
    return (v,) if v else (5, 4)


def _default_servers():
    try:
        return K.env_servers()
    except K.ConfError as exc:
        raise SocksConfigError(str(exc)) from None


def reset():
    """Forget the cached configuration and remembered servers (tests)."""
    with _state.lock:
        _state.conf_key = _state.conf = _state.conf_error = None
        _state.v4_only.clear()
        _state.last = None


# --- deciding -------------------------------------------------------------------------

class Route:
    """A Decision for one destination, with what was learnt about it."""

    __slots__ = ("decision", "host", "ip", "names", "port", "user", "login", "kind")

    def __init__(self, decision, host, ip, names, port, user, login, kind):
        self.decision, self.host, self.ip, self.names, self.port = decision, host, ip, names, port
        self.user, self.login, self.kind = user, login, kind

    @property
    def action(self):
        return self.decision.action

    @property
    def where(self):
        e = self.decision.entry
        return "%s:%d" % (e.file, e.line) if e is not None else None

    @property
    def dest(self):
        """Where to, as the user wrote it (name or address) and port."""
        return "%s (%s)" % (self.host, service_name(self.port))




def _is_ip(host):
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _reverse(ip):
    """Names of ``ip``, checked forward (a name counts when it resolves back)."""
    with _state.lock:
        got = _state.names.get(ip)
    if got is not None:
        return got
    names = ()
    try:
        name, aliases, _ = socket.gethostbyaddr(ip)
        cands = [n.lower().rstrip(".") for n in [name] + aliases]
        ok = []
        for n in cands:
            try:
                addrs = {a[4][0] for a in socket.getaddrinfo(n, None)}
            except OSError:
                continue
            if ip in addrs:
                ok.append(n)
        names = tuple(ok)
    except OSError:
        pass
    with _state.lock:
        if len(_state.names) > 1024:
            _state.names.clear()
        _state.names[ip] = names
    return names


def qualify(host, env=None):
    """SOCKS_DNAME: the default domain appended to a one-label host name."""
    env = os.environ if env is None else env
    dname = env.get("SOCKS_DNAME", "").strip().strip(".")
    if dname and "." not in host and not _is_ip(host) and host.lower() != "localhost":
        return "%s.%s" % (host, dname)
    return host


def lookup(host, port, conf, family=socket.AF_UNSPEC):
    """What the rules need to know of a destination: (host with SOCKS_DNAME
    applied, its address or None, its names, (family, int) or (0, 0)).
    A name is resolved here when it can be; an address is looked up
    backwards only when some line of ``conf`` matches on names."""
    host = qualify(str(host))
    ip, names = None, ()
    if _is_ip(host):
        ip = host.split("%", 1)[0]
    else:
        names = (host.lower().rstrip("."),)
        try:
            ip = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4][0]
        except (OSError, UnicodeError):
            ip = None
    dst = R.ip_key(ip) if ip else (0, 0)
    if ip and not names and conf is not None and conf.needs_names and dst not in K.ALWAYS_DIRECT:
        names = _reverse(ip)
    return host, ip, names, dst


def route(host, port, kind="connect", family=socket.AF_UNSPEC, run_command=True):
    """Decide for (host, port).  A name is resolved here when it can be (the
    rules then see its first address and the name); one that cannot is
    decided on its name alone and, through a server, sent as a name.
    Runs the deciding line's shell command.  Raises SocksConfigError."""
    start()
    conf = load_conf()
    defaults = _default_servers()
    user, login = _users()
    host, ip, names, dst = lookup(host, port, conf, family)
    decision = K.decide(conf, user, dst, port, names, defaults, path=K.conf_path())
    r = Route(decision, host, ip, names, port, user, login, kind)
    if run_command and decision.entry is not None and decision.entry.command:
        run_line_command(r)
    return r


def run_line_command(r):
    try:
        local = socket.gethostname()
    except OSError:
        local = "localhost"
    try:
        local_ip = socket.gethostbyname(local)
    except OSError:
        local_ip = "127.0.0.1"
    values = {"A": local, "a": local_ip, "c": r.kind, "p": str(os.getpid()), "S": service_name(r.port),
              "s": str(r.port), "U": r.login, "u": r.user, "Z": r.host, "z": r.ip or "0.0.0.0"}
    shell.submit(r.decision.entry.command, values, r.where)


def _who(r):
    return "%s(%s)" % (r.user, r.login)


# --- talking to a server ---------------------------------------------------------------

def _recv_exact(sock, n, deadline):
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the server closed the connection")
        buf += chunk
    return buf


def read_reply5(sock, deadline):
    """Exactly one SOCKS 5 reply: (rep, address, port)."""
    return _read_reply5_with(lambda n: _recv_exact(sock, n, deadline))


def _read_reply5_with(read):
    """One SOCKS 5 reply from ``read(n)``, which returns exactly n bytes."""
    head = read(5)
    if head[0] != 5:
        raise P.ProtocolError("bad SOCKS 5 reply version (0x%02x)" % head[0])
    size = P.reply5_size(head)
    got = P.parse_reply5(head + read(size - 5))
    return got[0]


def read_reply4(sock, deadline):
    """Exactly one SOCKS 4 reply: (code, address, port)."""
    return P.parse_reply4(_recv_exact(sock, 8, deadline))[0]


def _fmt_sa(sa):
    return K.fmt_server((sa[0], sa[1]))


def _credentials():
    u, p = os.environ.get("SOCKS_USERNAME"), os.environ.get("SOCKS_PASSWORD")
    return (u, p) if u and p else None


class _Link:
    """What SOCKS 5 method 1 (GSS-API) left on a connection: the ``level``
    granted, the gss1961.Protection at levels 1 and 2 (None at 0), the
    plaintext the server sent after its reply (``early``), and who the
    user was (``principal``)."""

    __slots__ = ("level", "prot", "early", "principal")

    def __init__(self, level, prot, early, principal):
        self.level, self.prot, self.early, self.principal = level, prot, early, principal

    @property
    def method(self):
        return "gssapi/%s" % G.level_name(self.level)


class _Offer:
    """Whether to offer GSS-API, decided once per connection: the
    settings, the user's credentials (None: not offered) and why not."""

    __slots__ = ("settings", "creds", "why")

    def __init__(self):
        self.settings = _gss_settings()
        if self.settings.mode == gss.NO:
            self.creds, self.why = None, "SOCKS_GSSAPI=no"
        else:
            self.creds, self.why = gss.probe()
        if self.settings.mode == gss.REQUIRE and self.creds is None:
            # before any server is asked: nothing it could say would help
            raise SocksRefused("SOCKS_GSSAPI=require, but GSS-API cannot be used: %s" % self.why)


def _gss_handshake(conn, server, proxy_host, creds, gs, deadline):
    """Method 1 once the server has chosen it: the context and the level
    (gss.handshake).  Returns (Initiator, level).  Raises SocksRefused."""
    name, hostbased = gss.target(gs.service, proxy_host)
    init = gss.Initiator(creds, name, hostbased, gs.level)
    try:
        level = gss.handshake(init, conn.sendall, lambda n: _recv_exact(conn, n, deadline), server)
    except gss.GssRefused as exc:
        raise SocksRefused(str(exc), server=server, version=5) from None
    except EOFError:
        # Dante closes without the abort frame when it does not like the
        # context or the level; its log says which
        raise SocksRefused("SOCKS server %s closed the connection during the GSS-API negotiation for %s "
                           "(service %s, protection level %s): its log says why; check SOCKS_GSSAPI_SERVICE "
                           "and SOCKS_GSSAPI_LEVEL" % (server, init.principal, name, G.level_name(gs.level)),
                           server=server, version=5) from None
    return init, level


def _userpass(creds, server):
    """The RFC 1929 request for ``creds``; SocksRefused when they do not fit it."""
    try:
        return P.userpass_request(*creds)
    except ValueError as exc:
        raise SocksRefused("SOCKS server %s wants a user name and password: %s" % (server, exc),
                           server=server, version=5) from None


def _socks5(conn, sa, command, host, port, deadline, proxy_host=None, offer=None, pipeline=False):
    """SOCKS 5 on ``conn``: methods, request, reply.  Returns ((5, bound
    address, bound port), _Link or None).  ``proxy_host``: the server as
    written, for GSS-API's host-based service name; ``offer``: the _Offer;
    ``pipeline`` (the server's ``?pipeline``): the greeting, the user name
    and password and the request in one write, offering the one method
    they are written for (not with GSS-API, whose exchange takes turns)."""
    creds = _credentials()
    server = _fmt_sa(sa)
    offer = offer or _Offer()
    gs, gss_creds, gss_why = offer.settings, offer.creds, offer.why
    request = P.request5(command, host, port)
    sent = False
    if gs.mode == gss.REQUIRE:
        methods = [P.METHOD_GSSAPI]
    elif pipeline and gss_creds is None:
        methods = [P.METHOD_USERPASS] if creds else [P.METHOD_NONE]
    else:
        methods = [P.METHOD_NONE] + ([P.METHOD_USERPASS] if creds else []) + \
                  ([P.METHOD_GSSAPI] if gss_creds is not None else [])
    if methods == [P.METHOD_NONE] and pipeline:
        conn.sendall(P.greeting5(methods) + request)
        sent = True
    elif methods == [P.METHOD_USERPASS] and pipeline:
        conn.sendall(P.greeting5(methods) + _userpass(creds, server) + request)
        sent = True
    else:
        conn.sendall(P.greeting5(methods))
    try:
        ans = _recv_exact(conn, 2, min(deadline, time.monotonic() + GREETING_TIMEOUT))
    except (EOFError, socket.timeout, ConnectionResetError):
        raise _NotSocks5() from None
    if ans[0] != 5:
        raise _NotSocks5()
    method = ans[1]
    link = None
    if method == P.METHOD_USERPASS and creds and method in methods:
        if not sent:
            conn.sendall(_userpass(creds, server))
        st = _recv_exact(conn, 2, deadline)
        if st[1] != 0:
            raise SocksRefused("SOCKS server %s refused the user name and password of %s "
                               "(SOCKS_USERNAME, SOCKS_PASSWORD)" % (server, creds[0]),
                               server=server, version=5)
    elif method == P.METHOD_GSSAPI and gss_creds is not None:
        init, level = _gss_handshake(conn, server, proxy_host or sa[0], gss_creds, gs, deadline)
        link = _Link(level, init.protection(level) if level != G.CLEAR else None, b"", init.principal)
    elif method != P.METHOD_NONE or method not in methods:
        hint = "" if creds else "; set SOCKS_USERNAME and SOCKS_PASSWORD if it wants a password"
        if gss_creds is None and gs.mode != gss.NO:
            hint += "; GSS-API (Kerberos) was not offered: %s" % gss_why
        raise SocksRefused("SOCKS server %s accepts none of the authentication methods offered%s"
                           % (server, hint), server=server, version=5)
    if link is not None and link.prot is not None:
        conn.sendall(link.prot.seal(request))
        reader = gss.Unsealer(link.prot, lambda n: _recv_exact(conn, n, deadline))
        try:
            rep, addr, bport = _read_reply5_with(reader.read)
        except gss.GssRefused as exc:
            raise SocksRefused("SOCKS server %s: %s" % (server, exc), server=server, version=5) from None
        link.early = reader.buffer
    elif not sent:
        conn.sendall(request)
        rep, addr, bport = read_reply5(conn, deadline)
    else:
        try:
            rep, addr, bport = read_reply5(conn, deadline)
        except socket.timeout:
            raise socket.timeout("timed out after answering the greeting: a server that drops what "
                                 "follows its greeting never answers a pipelined request "
                                 "(remove ?pipeline)") from None
    if rep != P.REP_SUCCEEDED:
        raise SocksRefused("SOCKS server %s refused %s to %s port %d: SOCKS 5 reply %d, %s"
                           % (server, P.COMMAND_NAMES.get(command, "request"), host, port, rep,
                              P.REPLY_TEXT.get(rep, "unknown reply")),
                           server=server, code=rep, version=5)
    return (5, addr, bport), link


def _socks4(conn, sa, command, host, ip, port, user, deadline):
    server = _fmt_sa(sa)
    if ip is not None and ":" in ip:
        raise SocksRefused("SOCKS server %s speaks only SOCKS 4, which cannot reach the IPv6 address %s"
                           % (server, ip), server=server, version=4)
    if ip is not None:
        req = P.request4(command, port, socket.inet_aton(ip), user)
    else:
        req = P.request4(command, port, userid=user, host=host)
    conn.sendall(req)
    code, addr, bport = read_reply4(conn, deadline)
    if code != P.S4_GRANTED:
        raise SocksRefused("SOCKS server %s refused %s to %s port %d: reply %d, %s"
                           % (server, P.COMMAND_NAMES.get(command, "request"), host, port, code,
                              S4_TEXT.get(code, "unknown reply")),
                           server=server, code=code, version=4)
    return (4, addr, bport), None


def _server_addrs(servers, first=None):
    """(server, sockaddr, family) for every address of every server, in
    order; ``first`` (a sockaddr) goes to the front.  Names that do not
    resolve are logged and skipped; returns them as failures too."""
    out, failures = [], []
    for srv in servers:
        try:
            infos = socket.getaddrinfo(srv[0], srv[1], 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            msg = "Failed to connect to sockd at %s: %s" % (K.fmt_server(srv), getattr(exc, "strerror", exc))
            log.warning("%s", msg)
            failures.append(msg)
            continue
        for fam, _, _, _, sa in infos:
            item = (srv, sa[:2], fam)
            if item not in out:
                out.append(item)
    if first is not None:
        out.sort(key=lambda it: it[1] != first)
    return out, failures


def via(r, command, port=None, timeout=None, first=None, announce=None, source=None):
    """Open a SOCKS session for Route ``r``: try each server address in
    order until one answers.  Returns (conn, (version, bound address,
    bound port), server sockaddr, _Link or None).  ``announce(conn)`` gives the address
    for a UDP ASSOCIATE once connected; ``source`` is the local address
    the program bound (its address is kept).  Raises SocksRefused (a server said
    no: the next is not asked) or SocksServerError (none could be used)."""
    total = timeout if timeout else CONNECT_TIMEOUT
    deadline = time.monotonic() + total
    port = r.port if port is None else port
    addrs, failures = _server_addrs(r.decision.servers, first)
    wanted = _versions()
    try:
        offer = _Offer()
    except SocksRefused as exc:
        exc.where = r.where
        raise
    for srv, sa, fam in addrs:
        versions = (4,) if wanted == (5, 4) and sa in _state.v4_only else wanted
        kind = getattr(srv, "kind", "socks")
        if kind != "socks":
            # a URL says what the server speaks (socks4://, socks5h://...)
            versions = (4,) if kind.startswith("socks4") else (5,)
        for v in versions:
            left = deadline - time.monotonic()
            if left <= 0:
                failures.append("timed out")
                break
            conn = _socket(fam, socket.SOCK_STREAM)
            try:
                conn.settimeout(min(left, SERVER_TIMEOUT))
                try:
                    if source and source[0] and (":" in source[0]) == (fam == socket.AF_INET6):
                        conn.bind((source[0], 0))
                    conn.connect(sa)
                except OSError as exc:
                    raise _Dead(exc.strerror or str(exc)) from None
                if v == 5:
                    dst_host, dst_port = r.host, port
                    if announce is not None:
                        dst_host, dst_port = announce(conn)
                    got, link = _socks5(conn, sa, command, dst_host, dst_port, deadline, srv[0], offer,
                                        getattr(srv, "pipeline", False))
                else:
                    if command == P.CMD_UDP:
                        raise SocksServerError("SOCKS server %s: UDP needs SOCKS 5, and SOCKS 4 is what "
                                               "is spoken here" % _fmt_sa(sa), server=_fmt_sa(sa), where=r.where)
                    got, link = _socks4(conn, sa, command, r.host, r.ip, port, r.user, deadline)
                return conn, got, sa, link
            except _NotSocks5:
                conn.close()
                if 4 in versions:
                    with _state.lock:
                        _state.v4_only.add(sa)
                    continue
                msg = "Failed to talk to sockd at %s: no SOCKS 5 answer (SOCKS_VERSION=5)" % _fmt_sa(sa)
            except SocksError as exc:
                conn.close()
                exc.where = exc.where or r.where
                raise
            except _Dead as exc:
                conn.close()
                msg = "Failed to connect to sockd at %s: %s" % (_fmt_sa(sa), exc)
            except (OSError, EOFError, P.ProtocolError, ValueError) as exc:
                conn.close()
                why = (str(exc) or "timed out") if isinstance(exc, socket.timeout) else \
                    (getattr(exc, "strerror", None) or exc)
                msg = "Failed to talk to sockd at %s: %s" % (_fmt_sa(sa), why)
            log.warning("%s", msg)
            failures.append(msg)
            break
    raise SocksServerError("%s: no SOCKS server could be used for %s port %d: %s"
                           % (r.where, r.host, port, "; ".join(failures) or "no server address"),
                           where=r.where)


def refuse(r):
    """Log and raise the SocksDenied for a Route that socks.conf refuses."""
    log.warning("refused -- %s() from %s to %s: %s", r.kind, _who(r), r.dest, r.decision.reason)
    raise SocksDenied("%s to %s port %d refused: %s" % (r.kind, r.host, r.port, r.decision.reason),
                      where=r.where)


def _remember(r, server):
    with _state.lock:
        _state.last = _Last(r.host, r.ip, r.port, r.decision, server)


def _adopt(sock, conn, link=None, server=None):
    """Make ``sock``'s descriptor the connection ``conn`` holds (dup2), and
    give it back ``sock``'s own blocking mode and timeout.  At GSS-API
    levels 1 and 2 (``link.prot``) it becomes the program's end of a
    socketpair instead, and a relay thread keeps ``conn``."""
    timeout = sock.gettimeout()
    # An IPv4 socket may now hold a connection to an IPv6 server (or the
    # reverse); the object keeps its family, so keep the real local address.
    sock._local = conn.getsockname() if conn.family != sock.family else None
    if link is not None and link.prot is not None:
        sock._local = conn.getsockname()        # the descriptor is a socketpair's now
        end, sock._relay = gssrelay.start(conn, link.prot, link.early, server or "the SOCKS server")
        os.dup2(end.fileno(), sock.fileno(), inheritable=False)
        end.close()
    else:
        os.dup2(conn.fileno(), sock.fileno(), inheritable=False)
        conn.close()
    sock.settimeout(timeout)


def _how(version, link):
    return "SOCKS %d" % version if link is None else "SOCKS %d, %s as %s" % (version, link.method, link.principal)


class _Meta(type):
    # After socksify(), socket.socket is socksocket: every socket made by
    # the real class (ssl's, ones made before) must still pass
    # isinstance(s, socket.socket).  Only socksocket itself is that broad: a
    # class derived from it later (a module imported after socksify) keeps
    # the ordinary test, or isinstance(s, ssl.SSLSocket) would hold for all.
    def __instancecheck__(cls, obj):
        if cls.__dict__.get("_broad", False):
            return isinstance(obj, _socket)
        return type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub):
        if cls.__dict__.get("_broad", False):
            return issubclass(sub, _socket)
        return type.__subclasscheck__(cls, sub)


class socksocket(_socket, metaclass=_Meta):
    """socket.socket, routed by socks.conf (see the module's text)."""

    _broad = True

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        super().__init__(family, type, proto, fileno)
        self._adopted = fileno is not None      # made from a descriptor: plain
        self._peer = None                        # the destination, when relayed
        self._pending_bind = None                # bind() waiting for what comes next
        self._bind = None                        # SOCKS BIND: [bound address, accepted]
        self._udp = None                         # UDP ASSOCIATE: _Assoc
        self._udp_default = None                 # connect()ed datagram destination
        self._udp_route = None
        self._local = None                       # local address when families differ
        self._source = None                      # the local address the program bound
        self._relay = None                       # GSS-API levels 1 and 2: the gssrelay.Relay

    # -- which sockets are ours --
    def _routed(self, kind):
        if self._adopted or self.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        return self.type == kind

    def _sockaddr(self, host, port):
        if self.family == socket.AF_INET6:
            return (host, port, 0, 0)
        return (host, port)

    # -- TCP --
    def connect(self, address):
        if not self._routed(socket.SOCK_STREAM):
            if self._routed(socket.SOCK_DGRAM):
                return self._udp_connect(address)
            return super().connect(address)
        if self._pending_bind is not None:
            local, self._pending_bind = self._pending_bind, None
            super().bind(local)
            self._source = local
        r = route(address[0], address[1], "connect", self.family)
        return self._connect_route(r, address)

    def _connect_route(self, r, address):
        if r.action == K.DIRECT:
            log.info("connect() directly from %s to %s", _who(r), r.dest)
            super().connect(address)
            _remember(r, None)
            return None
        if r.action == K.DENY:
            refuse(r)
        conn, (version, _, _), sa, link = via(r, P.CMD_CONNECT, timeout=self.gettimeout(), source=self._source)
        log.info("connect() from %s to %s using sockd at %s (%s)", _who(r), r.dest, _fmt_sa(sa), _how(version, link))
        _adopt(self, conn, link, _fmt_sa(sa))
        self._peer = (r.ip or r.host, r.port)
        _remember(r, sa)
        return None

    def connect_ex(self, address):
        try:
            self.connect(address)
        except socket.gaierror:
            raise
        except OSError as exc:
            return exc.errno or errno.ECONNREFUSED
        return 0

    def setsockopt(self, level, optname, value, optlen=None):
        # at GSS-API levels 1 and 2 the descriptor is a socketpair's: TCP
        # options are the connection's to the server, which the relay holds
        target = self._relay.net if self._relay is not None and level == socket.IPPROTO_TCP else super()
        if optlen is None:
            return target.setsockopt(level, optname, value)
        return target.setsockopt(level, optname, value, optlen)

    def getsockopt(self, level, optname, buflen=None):
        target = self._relay.net if self._relay is not None and level == socket.IPPROTO_TCP else super()
        if buflen is None:
            return target.getsockopt(level, optname)
        return target.getsockopt(level, optname, buflen)

    def getpeername(self):
        if self._peer is not None:
            return self._sockaddr(*self._peer)
        if self._udp_default is not None and self._udp is not None:
            return self._sockaddr(*self._udp_default)
        return super().getpeername()

    def bind(self, address):
        if self._routed(socket.SOCK_STREAM) and address[1] == 0:
            last = _state.last
            if last is not None and last.decision.action == K.SOCKD:
                # Classic call order: the next call says whether this is the
                # data socket of a connection made through a server (then
                # getsockname/listen: a SOCKS BIND) or a local bind before
                # an outgoing connect.
                self._pending_bind = address
                return None
        self._source = address
        return super().bind(address)

    def _start_bind(self):
        self._pending_bind = None
        last = _state.last
        r = Route(last.decision, last.host, last.ip, (), last.port, *_users(), kind="bind")
        conn, (version, addr, port), sa, link = via(r, P.CMD_BIND, timeout=self.gettimeout(), first=last.server)
        if addr in ("0.0.0.0", "::"):
            addr = sa[0]        # the server listens on the address we reached it at
        log.info("bind() from %s for %s using sockd at %s (%s): listening on %s",
                 _who(r), r.dest, _fmt_sa(sa), _how(version, link), K.fmt_server((addr, port)))
        _adopt(self, conn, link, _fmt_sa(sa))
        self._bind = [(addr, port), False, version]

    def getsockname(self):
        if self._pending_bind is not None:
            self._start_bind()
        if self._bind is not None:
            return self._sockaddr(*self._bind[0])
        if self._local is not None:
            return self._local
        return super().getsockname()

    def listen(self, backlog=socket.SOMAXCONN):
        if self._pending_bind is not None:
            self._start_bind()
        if self._bind is not None:
            return None             # the server listens (Rlisten does nothing)
        return super().listen(backlog)

    def accept(self):
        if self._bind is None:
            return super().accept()
        if self._bind[1]:
            raise SocksError("a SOCKS BIND accepts one connection only")
        timeout = self.gettimeout()
        if timeout == 0:
            ready, _, _ = select.select([self.fileno()], [], [], 0)
            if not ready:
                raise BlockingIOError(errno.EAGAIN, "no connection yet")
        deadline = time.monotonic() + (timeout if timeout else CONNECT_TIMEOUT)
        version = self._bind[2]
        try:
            if version == 5:
                code, addr, port = read_reply5(self, deadline)
                ok = code == P.REP_SUCCEEDED
                text = "SOCKS 5 reply %d, %s" % (code, P.REPLY_TEXT.get(code, "unknown reply"))
            else:
                code, addr, port = read_reply4(self, deadline)
                ok = code == P.S4_GRANTED
                text = "reply %d, %s" % (code, S4_TEXT.get(code, "unknown reply"))
        except (EOFError, P.ProtocolError) as exc:
            raise SocksRefused("SOCKS BIND: no second reply (%s)" % exc) from None
        finally:
            self.settimeout(timeout)
        self._bind[1] = True
        if not ok:
            raise SocksRefused("SOCKS BIND: the server refused the incoming connection: %s" % text,
                               code=code, version=version)
        if self._relay is not None:
            # a socketpair's end: keep the addresses it stands for
            conn = socksocket(self.family, socket.SOCK_STREAM, fileno=os.dup(self.fileno()))
            conn._peer, conn._local, conn._relay = (addr, port), self._local, self._relay
        else:
            conn = _socket(fileno=os.dup(self.fileno()))
        conn.settimeout(timeout)
        return conn, self._sockaddr(addr, port)

    # -- UDP --
    def _udp_connect(self, address):
        r = route(address[0], address[1], "udp", self.family)
        if r.action == K.DENY:
            refuse(r)
        if r.action == K.DIRECT and self._udp is None:
            self._udp_default = None
            return super().connect(address)
        self._ensure_assoc(r)
        self._udp_default = (r.ip or r.host, r.port)
        self._udp_route = r
        return None

    def _ensure_assoc(self, r):
        if self._udp is not None:
            return self._udp

        def announce(ctrl):
            try:
                bound = super(socksocket, self).getsockname()
            except OSError:
                bound = ("0.0.0.0", 0)
            if bound[1] == 0:
                super(socksocket, self).bind(self._sockaddr(ctrl.getsockname()[0], 0)
                                             if ctrl.family == self.family else self._sockaddr("", 0))
                bound = super(socksocket, self).getsockname()
            ip = bound[0]
            if ip in ("0.0.0.0", "::"):
                ip = ctrl.getsockname()[0]
            return ip, bound[1]
        conn, (version, addr, port), sa, link = via(r, P.CMD_UDP, timeout=self.gettimeout(), announce=announce)
        if addr in ("0.0.0.0", "::"):
            addr = sa[0]
        relay = socket.getaddrinfo(addr, port, self.family, socket.SOCK_DGRAM)[0][4]
        log.info("udp associate from %s for %s using sockd at %s (%s): relay %s",
                 _who(r), r.dest, _fmt_sa(sa), _how(version, link), K.fmt_server((addr, port)))
        self._udp = _Assoc(conn, relay, link.prot if link is not None else None)
        return self._udp

    def sendto(self, data, flags_or_addr, addr=None):
        if not self._routed(socket.SOCK_DGRAM):
            if addr is None:
                return super().sendto(data, flags_or_addr)
            return super().sendto(data, flags_or_addr, addr)
        flags, address = (0, flags_or_addr) if addr is None else (flags_or_addr, addr)
        r = route(address[0], address[1], "udp", self.family)
        if r.action == K.DENY:
            refuse(r)
        if r.action == K.DIRECT:
            return super().sendto(data, flags, address)
        return self._send_via(data, flags, r.ip or r.host, r.port, r)

    def _send_via(self, data, flags, host, port, r):
        assoc = self._ensure_assoc(r)
        super().sendto(assoc.seal(P.udp_header(host, port) + bytes(data)), flags, assoc.relay)
        return len(data)

    def send(self, data, flags=0):
        if self._udp is not None and self._udp_default is not None and self.type == socket.SOCK_DGRAM:
            host, port = self._udp_default
            return self._send_via(data, flags, host, port, self._udp_route)
        return super().send(data, flags)

    def sendall(self, data, flags=0):
        if self._udp is not None and self.type == socket.SOCK_DGRAM:
            self.send(data, flags)
            return None
        return super().sendall(data, flags)

    def recvfrom(self, bufsize, flags=0):
        if self._udp is None:
            return super().recvfrom(bufsize, flags)
        while True:
            data, src = super().recvfrom(MAX_DATAGRAM, flags)
            if src[:2] != self._udp.relay[:2]:
                return data[:bufsize], src
            try:
                data = self._udp.open(data)
                frag, hdr, off = P.parse_udp_header(data)
            except P.ProtocolError:
                continue            # not a datagram the relay could have sent: drop it
            if frag:
                continue            # fragments are not reassembled (RFC 1928 allows dropping)
            return data[off:off + bufsize], self._sockaddr(hdr.address, hdr.port)

    def recv(self, bufsize, flags=0):
        if self._udp is not None and self.type == socket.SOCK_DGRAM:
            return self.recvfrom(bufsize, flags)[0]
        return super().recv(bufsize, flags)

    def close(self):
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        super().close()


class _Assoc:
    """A UDP association: the TCP control connection it lives on, the
    relay address datagrams go to, and at GSS-API levels 1 and 2 the
    connection's gss1961.Protection (``prot``): each datagram, SOCKS
    header included, is then one mtyp 3 frame (RFC 1961 section 5).  The
    context is shared by both directions, and a program may send and
    receive from two threads: the lock keeps its calls one at a time."""

    def __init__(self, ctrl, relay, prot=None):
        self.ctrl, self.relay, self.prot = ctrl, relay, prot
        self.lock = threading.Lock()

    def seal(self, datagram):
        if self.prot is None:
            return datagram
        try:
            with self.lock:
                out = self.prot.seal_datagram(datagram)
        except P.ProtocolError as exc:
            raise OSError(errno.EIO, str(exc)) from None
        if out is None:
            raise OSError(errno.EMSGSIZE, "datagram too long for one GSS-API token")
        return out

    def open(self, datagram):
        """The plaintext of a datagram from the relay; raises ProtocolError
        for one that is not a frame that opens (it is dropped)."""
        if self.prot is None:
            return datagram
        with self.lock:
            return self.prot.open_datagram(datagram)

    def close(self):
        self.ctrl.close()


def _connect_direct(host, port, timeout, source_address):
    """Connect to each address of ``host`` in turn with real sockets, as
    socket.create_connection does.  Returns the socket; raises the last
    OSError."""
    error = None
    for fam, kind, proto, _, sa in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = _socket(fam, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError("getaddrinfo returned no address for %s" % host)


def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kw):
    """socket.create_connection, with the name decided on before it is
    resolved here (so ``.zone`` lines and names only the server can
    resolve work).  Direct connections are made with the real socket class:
    the real create_connection would make socksockets (socksify patches the
    class), and each would decide again, running the line's command twice."""
    host, port = address[0], address[1]
    r = route(host, port, "connect")
    if r.action == K.DIRECT:
        log.info("connect() directly from %s to %s", _who(r), r.dest)
        sock = _connect_direct(host, port, timeout, source_address)
        _remember(r, None)
        return sock
    if r.action == K.DENY:
        refuse(r)
    fam = socket.AF_INET6 if r.ip and ":" in r.ip else socket.AF_INET
    sock = socksocket(fam, socket.SOCK_STREAM)
    try:
        if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(timeout)
        if source_address:
            _socket.bind(sock, source_address)
            sock._source = source_address
        sock._connect_route(r, (host, port))
        return sock
    except BaseException:
        sock.close()
        raise

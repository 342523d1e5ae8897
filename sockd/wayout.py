"""The way-out file: which connections go direct, which through which
SOCKS or HTTP proxy, and which are refused -- socks.conf(5)'s grammar,
read by the client library (sockd/client/conf.py, for programs) and by
sockd itself (the ``upstream FILE`` directive: how sockd reaches a
destination its rules have permitted).  One grammar, one decision.
Pure: parsing and deciding never touch a socket or a file; the readers
(client/conf.load, configload) read the files.

The classic grammar (CSTC 4.2/4.3), one entry a line::

    deny   [*=userlist]                dst_addr dst_mask [op port] [: shell command]
    direct [*=userlist]                dst_addr dst_mask [op port] [: shell command]
    sockd  [@=serverlist] [*=userlist] dst_addr dst_mask [op port] [: shell command]
    sockd@server,...      [*=userlist] dst_addr dst_mask [op port] [: shell command]

The address, mask, port and user fields are read by the same code as the
server's rules (sockd.config / sockd.rules): CIDR, IPv6, host names,
``.zones`` and ``ALL`` work here too.  A server is ``host``, ``host:port``,
``[ipv6]:port`` or a bare IPv6 address (the classic form: SOCKS 5, and the
client library falls back to 4), or a URL that says what it is:
``socks4://``, ``socks4a://``, ``socks5://``, ``socks5h://`` (SOCKS 5, the
name resolved by the upstream) or ``http://`` (HTTP CONNECT), each
``KIND://[USER:PASSWORD@]HOST[:PORT][?pipeline]`` (user and password
%-encoded; the port defaults to 1080, and an http:// one must be given;
``?pipeline``, SOCKS 5 only: the whole handshake in one write, for a
server that reads its handshake off the stream in order, one round trip
fewer).  First match wins; no match means deny.  Every mistake is reported as ``FILE:LINE:
message (near 'token')``, all of them at once.  Credentials never appear
in an entry's text (``mask_credentials``) nor in a server's ``label``.
"""

import ipaddress
import re
import urllib.parse

from . import config as C
from . import rules as R
from .addresses import literal_family
from .upstreamproto import PIPELINED

MAX_LINE = 1024
DEFAULT_PATH = "/etc/socks.conf"      # the client library's file, for its messages
DENY, DIRECT, SOCKD = "deny", "direct", "sockd"
ACTIONS = (DENY, DIRECT, SOCKD)
# 4.3 skipped these first words (resolver lines shared with HP-UX files).
SKIP_WORDS = ("domain", "nameserver", "bind", "findserver")
ALWAYS_DIRECT = {(4, 0x7F000001), (4, 0), (6, 1), (6, 0)}
KINDS = ("socks4", "socks4a", "socks5", "socks5h", "http")
REMOTE_NAMES = ("socks", "socks4a", "socks5h", "http")
URL = re.compile(r"^([A-Za-z0-9]+)://(.*)$")
CREDENTIALS = re.compile(r"(?i)\b((?:socks4a?|socks5h?|http)://)([^:/@\s,]*):([^@\s,]*)@")


class WayoutError(C.ConfigError):
    """A ConfigError whose problems may carry no line (line 0): then the
    message reads ``WHERE: message`` (an environment variable, a file that
    cannot be read)."""

    def lines(self):
        return ["%s:%d: %s" % p if p[1] else "%s: %s" % (p[0], p[2]) for p in self.problems]

    def __str__(self):
        return "\n".join(self.lines())


class Server(tuple):
    """One upstream: a (host, port) tuple, so that it compares and prints
    as the classic servers always have, with what a URL adds: ``kind``
    ("socks" for the classic form, else one of KINDS), ``user`` and
    ``password`` (None unless given), ``pipeline`` (``?pipeline``), ``label``
    (the URL without the credentials, for logs; made once: every
    connection through the upstream names it)."""

    def __new__(cls, host, port, kind="socks", user=None, password=None, pipeline=False):
        self = tuple.__new__(cls, (host, port))
        self.host, self.port = host, port
        self.kind, self.user, self.password = kind, user, password
        self.pipeline = pipeline
        hp = fmt_server(self)
        self._label = hp if kind == "socks" else "%s://%s%s" % (kind, hp, "?pipeline" if pipeline else "")
        self._family = literal_family(host)
        return self

    def __init__(self, host, port, kind="socks", user=None, password=None, pipeline=False):
        """__new__ made it; these parameters are what cache's codec (the
        inetd cache, a recheck's copy of the configuration) rebuilds it
        from."""

    @property
    def remote_names(self):
        """Does the upstream resolve the destination's name (sockd passes
        the name on) rather than sockd?"""
        return self.kind in REMOTE_NAMES

    @property
    def label(self):
        return self._label

    @property
    def family(self):
        """AF_INET or AF_INET6 when the host is an address literal, None
        for a name (to be resolved), as addresses.literal_family says."""
        return self._family

    def __repr__(self):
        # the classic form prints as the (host, port) it has always been
        return tuple.__repr__(self) if self.kind == "socks" else "Server(%s)" % self.label


def mask_credentials(text):
    """``text`` with the password of every URL in it replaced by ``***``."""
    return CREDENTIALS.sub(lambda m: "%s%s:***@" % (m.group(1), m.group(2)), text)


def _server_port(text, tok):
    try:
        port = C.to_port(text)
    except C.Bad as exc:
        raise C.Bad("bad server port: %s" % exc, tok) from None
    if port == 0:
        raise C.Bad("bad server port: 0", tok)
    return port


def parse_server(tok, port=C.DEFAULT_PORT):
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6
    address, or a URL (see the module's text) -> a Server; ``port`` is the
    default of the classic form.  Raises Bad."""
    m = URL.match(tok)
    if m:
        return parse_url(tok, m.group(1).lower(), m.group(2))
    host, p = parse_hostport(tok, port)
    return Server(host, p)


def parse_url(tok, kind, rest):
    """``KIND://[USER:PASSWORD@]HOST[:PORT][?pipeline]`` -> a Server.
    Raises Bad; the token it names has its password masked."""
    shown = mask_credentials(tok)
    if kind not in KINDS:
        raise C.Bad("unknown kind of server: expected %s" % ", ".join(k + "://" for k in KINDS), shown)
    user = password = None
    if "@" in rest:
        cred, rest = rest.rsplit("@", 1)
        user, sep, password = cred.partition(":")
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
        if not sep or not user:
            raise C.Bad("credentials are written USER:PASSWORD@ (%-encode ':', '@' and ',')", shown)
        if kind in ("socks4", "socks4a"):
            raise C.Bad("SOCKS 4 has no password: credentials need socks5:// or http://", shown)
        if len(user.encode()) > 255 or len(password.encode()) > 255:
            raise C.Bad("user and password are at most 255 bytes each (RFC 1929)", shown)
    # after the credentials: a password may hold a '?'
    pipeline = False
    if "?" in rest:
        rest, _, query = rest.partition("?")
        for opt in query.split("&"):
            if opt != "pipeline":
                raise C.Bad("unknown server option %r: the one option is ?pipeline" % opt, shown)
            pipeline = True
        if kind not in PIPELINED:
            raise C.Bad("?pipeline is for SOCKS 5 servers (socks5://, socks5h://)", shown)
    rest = rest.rstrip("/")
    if kind == "http" and not re.search(r"(?:^|[^:]|\]):\d+$", rest):
        raise C.Bad("an http:// upstream needs its port (http://HOST:PORT)", shown)
    try:
        host, p = parse_hostport(rest, C.DEFAULT_PORT)
    except C.Bad as exc:
        raise C.Bad(str(exc), shown) from None
    return Server(host, p, kind, user, password, pipeline)


def parse_hostport(tok, port):
    """The classic ``host[:port]`` forms -> (host, port).  Raises Bad."""
    if tok.startswith("["):
        end = tok.find("]")
        if end < 0:
            raise C.Bad("missing ']' in IPv6 server address", tok)
        host, rest = tok[1:end], tok[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise C.Bad("bad IPv6 server address", tok) from None
        if not rest:
            return host, port
        if not rest.startswith(":") or len(rest) < 2:
            raise C.Bad("expected ':PORT' after ']'", tok)
        return host, _server_port(rest[1:], tok)
    if tok.count(":") > 1:
        try:
            return ipaddress.IPv6Address(tok).compressed, port
        except ValueError:
            raise C.Bad("bad server: write an IPv6 server as [ADDRESS]:PORT", tok) from None
    host, sep, ptext = tok.partition(":")
    if not host:
        raise C.Bad("missing server host name", tok)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not R.valid_hostname(host.rstrip(".")):
            raise C.Bad("bad server host name", tok) from None
    return host, (_server_port(ptext, tok) if sep else port)


def parse_servers(text, port=C.DEFAULT_PORT):
    """A comma-separated server list -> tuple of Server.  Raises Bad."""
    if not text:
        raise C.Bad("empty server list", text)
    out = []
    for tok in text.split(","):
        if not tok:
            raise C.Bad("empty name in server list", text)
        out.append(parse_server(tok, port))
    return tuple(out)


class Entry(R.Rule):
    """One socks.conf line: a Rule (so the server's matching engine decides)
    whose action is deny, direct or sockd, plus its servers (None: the
    default server)."""

    __slots__ = ("servers",)

    def __init__(self, action, servers, rule):
        super().__init__(action, rule.src, rule.dst, users=rule.users, port_op=rule.port_op,
                         port=rule.port, command=rule.command, file=rule.file, line=rule.line,
                         text=rule.text)
        self.servers = servers


def split_entry_line(raw):
    """The classic ':' / '#' scan of sockd.config.split_line, except that the
    colons of a server list (``@=host:port``, ``sockd@host:port``) are part
    of the list, not the start of the shell command."""
    masked = re.sub(r"(?i)(?<!\S)(?:@=|sockd@)\S*", lambda m: m.group().replace(":", "\0"), raw)
    tokens, command = C.split_line(masked)
    tokens = [t.replace("\0", ":") for t in tokens]
    if command is not None:
        command = command.replace("\0", ":")
    return tokens, command


def parse_entry(tokens, command, path="-", lineno=0, port=C.DEFAULT_PORT):
    """One socks.conf line, already split.  Returns an Entry; raises Bad."""
    first = tokens[0]
    low = first.lower()
    servers = None
    if low.startswith("sockd@"):
        action = SOCKD
        if not first[6:]:
            raise C.Bad("sockd@ needs a server: sockd@HOST[:PORT],...", first)
        servers = parse_servers(first[6:], port)
    elif low in ACTIONS:
        action = low
    else:
        raise C.Bad("unknown action: expected deny, direct, sockd or sockd@SERVER", first)
    i = 1
    users = []
    seen = set()
    while i < len(tokens) and tokens[i][:2] in ("@=", "*=", "?="):
        tok = tokens[i]
        kind = tok[:2]
        if kind == "?=":
            raise C.Bad("?= (identd) belongs in sockd.conf, not in socks.conf", tok)
        if kind in seen or (kind == "@=" and servers is not None):
            raise C.Bad("%s given twice" % kind, tok)
        seen.add(kind)
        if kind == "@=":
            if action != SOCKD:
                raise C.Bad("a server list (@=) belongs on a sockd line, not on a %s line" % action, tok)
            if tok[2:]:
                servers = parse_servers(tok[2:], port)
        else:
            users.append(tok)
        i += 1
    rest = tokens[i:]
    if not rest or rest[0] in R.PORT_OPS:
        raise C.Bad("missing destination address (write ALL or 0/0 for any)", rest[0] if rest else first)
    # The server's rule parser reads the user list, the address and the port:
    # a rule "from anywhere" to this destination.
    rule = C.parse_rule(["permit"] + users + ["0/0"] + rest, command, path, lineno,
                        mask_credentials(" ".join(tokens)))
    return Entry(action, servers, rule)


class SocksConf:
    """A parsed socks.conf: the entries in order, the userfiles' contents,
    and warnings (file, line, message) that are not errors."""

    def __init__(self, path, entries, userfiles=None, warnings=()):
        self.path = path
        self.entries = list(entries)
        self.warnings = list(warnings)
        self.ruleset = R.Ruleset(self.entries, userfiles=userfiles)

    @property
    def needs_names(self):
        return self.ruleset.needs_dst_names

    def match(self, user, dst, port, names=(), trace=None):
        """The first Entry matching (user, dst=(family, int), port, names),
        or None.  ``trace`` (a list) receives every entry examined."""
        return self.ruleset.match(R.Request((0, 0), dst, port, user, dst_names=tuple(names)), trace)


def parse_text(text, path="-", port=C.DEFAULT_PORT, read_userfile=C.read_userfile):
    """Parse socks.conf text.  Returns a SocksConf; raises WayoutError with
    every problem.  ``read_userfile(path)`` reads the userfiles *= lists
    name (None: unreadable: a warning, and it matches nobody)."""
    problems = []
    entries = []

    def problem(lineno, message, token=None):
        if token is not None:
            message = "%s (near '%s')" % (message, C.printable(token))
        problems.append((path, lineno, message))

    for lineno, raw in enumerate(text.splitlines(), 1):
        if len(raw) > MAX_LINE:
            problem(lineno, "line longer than %d characters" % MAX_LINE)
            continue
        if "\0" in raw:
            problem(lineno, "NUL character in line")
            continue
        tokens, command = split_entry_line(raw)
        if not tokens:
            if command is not None:
                problem(lineno, "shell command without an entry")
            continue
        if tokens[0].lower() in SKIP_WORDS:
            continue
        try:
            entries.append(parse_entry(tokens, command, path, lineno, port))
        except C.Bad as exc:
            problem(lineno, str(exc), exc.token if exc.token is None else mask_credentials(exc.token))
    if not problems and not entries:
        problems.append((path, 0, "no entries: every connection would be refused "
                         "(write 'deny ALL' if that is what you mean)"))
    if problems:
        raise WayoutError(problems)
    userfiles = {}
    warnings = []
    for e in entries:
        for u in e.users or ():
            if u.startswith("/") and u not in userfiles:
                userfiles[u] = read_userfile(u)
                if userfiles[u] is None:
                    warnings.append((e.file, e.line, "Unable to open userfile (%s)" % u))
    return SocksConf(path, entries, userfiles, warnings)


class Decision:
    """What to do with one connection: ``action`` (direct, deny or sockd),
    the ``servers`` to try in order, the deciding ``entry`` (None for the
    built-in cases) and a ``reason`` in words."""

    __slots__ = ("action", "servers", "entry", "reason")

    def __init__(self, action, servers=(), entry=None, reason=""):
        self.action, self.servers, self.entry, self.reason = action, tuple(servers), entry, reason

    @property
    def allowed(self):
        return self.action != DENY

    def __repr__(self):
        return "Decision(%s, %r, %s)" % (self.action, self.servers, self.reason)


def fmt_server(server):
    host, port = server
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def decide(conf, user, dst, port, names=(), default_servers=(), trace=None, path=None):
    """Decide for a connection to ``dst`` = (family, int) (family 0 when the
    address is unknown: a name that does not resolve here), ``port``, the
    destination's ``names``, on behalf of ``user``.  ``conf`` None means
    there is no socks.conf.  Returns a Decision."""
    if dst in ALWAYS_DIRECT:
        return Decision(DIRECT, reason="the local host and the unspecified address are always direct")
    return decide_lines(conf, user, dst, port, names, default_servers, trace, path)


def decide_lines(conf, user, dst, port, names=(), default_servers=(), trace=None, path=None):
    """``decide`` without the always-direct addresses."""
    if conf is None:
        return Decision(DIRECT, reason="no socks.conf (%s): every connection is direct" % (path or DEFAULT_PATH))
    entry = conf.match(user, dst, port, names, trace)
    if entry is None:
        return Decision(DENY, reason="%s: no line matches: access denied" % conf.path)
    where = "%s:%d" % (entry.file, entry.line)
    if entry.action == DENY:
        return Decision(DENY, entry=entry, reason="%s: denied by '%s'" % (where, entry.text))
    if entry.action == DIRECT:
        return Decision(DIRECT, entry=entry, reason="%s: direct" % where)
    servers = entry.servers or default_servers
    if not servers:
        return Decision(DENY, entry=entry,
                        reason="%s: the line names no server (@=) and SOCKS_SERVER is not set" % where)
    return Decision(SOCKD, servers, entry, "%s: via sockd at %s" % (
        where, ", ".join(s.label if isinstance(s, Server) else fmt_server(s) for s in servers)))


def decide_server(conf, user, dst, port, names=(), trace=None):
    """How sockd itself reaches ``dst`` = (family, int) (family 0: not
    known), ``port``, named ``names``, for the client ``user``, by the
    way-out file ``conf`` (None: every connection is direct).  Unlike a
    program, sockd has no always-direct addresses (its loopback is not the
    client's) and no default server (configload refuses a sockd line
    without one).  Returns a Decision."""
    if conf is None:
        return DIRECT_ALWAYS
    return decide_lines(conf, user, dst, port, names, (), trace, conf.path)


def server_problems(conf):
    """What makes a parsed file unfit as sockd's way-out file: a sockd line
    without servers (sockd has no SOCKS_SERVER).  [(file, line, message)]."""
    return [(e.file, e.line, "a sockd line needs its servers here (@=SERVER,... or sockd@SERVER)")
            for e in conf.entries if e.action == SOCKD and not e.servers]


def has_credentials(conf):
    """The first entry whose servers carry credentials, or None."""
    for e in conf.entries:
        if any(isinstance(s, Server) and s.user is not None for s in e.servers or ()):
            return e
    return None


DIRECT_ALWAYS = Decision(DIRECT, reason="no way-out file: every connection is direct")

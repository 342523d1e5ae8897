"""socks.conf: which connections go direct, which through which sockd, and
which are refused.  Pure: parsing and deciding never touch a socket; the
only I/O is reading the file (and the userfiles it names) in ``load``.

The classic grammar (CSTC 4.2/4.3), one entry a line::

    deny   [*=userlist]                dst_addr dst_mask [op port] [: shell command]
    direct [*=userlist]                dst_addr dst_mask [op port] [: shell command]
    sockd  [@=serverlist] [*=userlist] dst_addr dst_mask [op port] [: shell command]
    sockd@server,...      [*=userlist] dst_addr dst_mask [op port] [: shell command]

The address, mask, port and user fields are read by the same code as the
server's rules (sockd.config / sockd.rules): CIDR, IPv6, host names,
``.zones`` and ``ALL`` work here too.  A server is ``host``, ``host:port``,
``[ipv6]:port`` or a bare IPv6 address.  First match wins; no match means
deny; no file at all means everything is direct (``load`` returns None);
127.0.0.1 and 0.0.0.0 (and ::1, ::) are always direct.  Every mistake is
reported as ``FILE:LINE: message (near 'token')``, all of them at once.
"""

import ipaddress
import os
import re
import socket

from .. import config as C
from .. import rules as R

DEFAULT_PATH = "/etc/socks.conf"
MAX_LINE = 1024
DENY, DIRECT, SOCKD = "deny", "direct", "sockd"
ACTIONS = (DENY, DIRECT, SOCKD)
# 4.3 skipped these first words (resolver lines shared with HP-UX files).
SKIP_WORDS = ("domain", "nameserver", "bind", "findserver")
ALWAYS_DIRECT = {(4, 0x7F000001), (4, 0), (6, 1), (6, 0)}


class ConfError(C.ConfigError):
    """A ConfigError whose problems may carry no line (line 0): then the
    message reads ``WHERE: message`` (an environment variable, a file that
    cannot be read)."""

    def lines(self):
        return ["%s:%d: %s" % p if p[1] else "%s: %s" % (p[0], p[2]) for p in self.problems]

    def __str__(self):
        return "\n".join(self.lines())


def default_port():
    """The port of ``socks`` in /etc/services, else 1080."""
    try:
        return socket.getservbyname("socks", "tcp")
    except OSError:
        return C.DEFAULT_PORT


def _server_port(text, tok):
    try:
        port = C.to_port(text)
    except C.Bad as exc:
        raise C.Bad("bad server port: %s" % exc, tok) from None
    if port == 0:
        raise C.Bad("bad server port: 0", tok)
    return port


def parse_server(tok, port=C.DEFAULT_PORT):
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6
    address -> (host, port); ``port`` is the default.  Raises Bad."""
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
    """A comma-separated server list -> tuple of (host, port).  Raises Bad."""
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
    rule = C.parse_rule(["permit"] + users + ["0/0"] + rest, command, path, lineno, " ".join(tokens))
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


def parse_text(text, path="-", port=C.DEFAULT_PORT):
    """Parse socks.conf text.  Returns a SocksConf; raises ConfError with
    every problem.  Userfiles are read here (an unreadable one is a
    warning, and matches nobody)."""
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
            problem(lineno, str(exc), exc.token)
    if not problems and not entries:
        problems.append((path, 0, "no entries: every connection would be refused "
                         "(write 'deny ALL' if that is what you mean)"))
    if problems:
        raise ConfError(problems)
    userfiles = {}
    warnings = []
    for e in entries:
        for u in e.users or ():
            if u.startswith("/") and u not in userfiles:
                userfiles[u] = C.read_userfile(u)
                if userfiles[u] is None:
                    warnings.append((e.file, e.line, "Unable to open userfile (%s)" % u))
    return SocksConf(path, entries, userfiles, warnings)


def load(path, port=None):
    """Read and parse ``path``.  Returns None when there is no such file
    (every connection is then direct); raises ConfError for a file that
    cannot be read or holds mistakes."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 22)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfError([(path, 0, "cannot read: %s" % exc.strerror)]) from None
    return parse_text(data.decode("utf-8", "replace"), path, default_port() if port is None else port)


def conf_path(env=None):
    env = os.environ if env is None else env
    return env.get("SOCKS_CONF") or DEFAULT_PATH


def env_servers(env=None, port=None):
    """The default servers from SOCKS_SERVER (a server or a comma-separated
    list), or () when unset.  Raises ConfError naming the variable."""
    env = os.environ if env is None else env
    text = env.get("SOCKS_SERVER", "").strip()
    if not text:
        return ()
    try:
        return parse_servers(text, default_port() if port is None else port)
    except C.Bad as exc:
        msg = str(exc) + (" (near '%s')" % C.printable(exc.token) if exc.token else "")
        raise ConfError([("SOCKS_SERVER", 0, msg)]) from None


def env_version(env=None):
    """SOCKS_VERSION: 4 or 5 to speak only that version, None (unset) to
    try 5 and fall back to 4.  Raises ConfError naming the variable."""
    env = os.environ if env is None else env
    text = env.get("SOCKS_VERSION", "").strip()
    if not text:
        return None
    if text not in ("4", "5"):
        raise ConfError([("SOCKS_VERSION", 0, "expected 4 or 5 (near '%s')" % C.printable(text))])
    return int(text)


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
    return Decision(SOCKD, servers, entry, "%s: via sockd at %s" % (where, ", ".join(map(fmt_server, servers))))

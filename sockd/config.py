"""Reading sockd.conf: server directives and classic permit/deny rules.

The directives are those of the table in ``settings``.  A line is a rule
when its first word is ``permit`` or ``deny`` (any case, as 4.3 allowed), a
special hook when it starts with ``#NO_IDENTD:`` or ``#BAD_ID:`` in column
0, and a directive otherwise; no directive keyword can ever be read as a
rule.

The parser reports every problem it finds, each as ``FILE:LINE: message
(near 'token')``, and never raises anything but ConfigError for a user's
mistake.  ``parse_text`` is pure, text in and Config out: it opens no file
and asks the system nothing (but for service names, see validators).  The
files a configuration names, the checks of ``user``, ``group`` and
``chroot`` and the host's addresses are the edge's, configload.load, which
runs the same steps -- read_lines, check_together, finish -- with its I/O
between them.  The line grammar (split_line, parse_rule, read_userfile)
is shared with the client library's socks.conf.

``limit bandwidth`` and ``quota`` lines are keyed and repeated: their
converters (validators.to_limit, to_quota) read the whole line and give a
traffic.Limit or traffic.Quota, which learns its file and line here.  A
rule may carry ``tag=NAME`` for them to name.

Imports only errors, rules, settings, traffic and validators of sockd (all
pure): the client library imports this module and must not pull in the
server.
"""

import gc
import ipaddress
import re

from . import rules as R
from . import traffic as T
from .errors import Bad, ConfigError
from .settings import BY_KEY, GROUPS, SETTINGS
from .validators import (DEFAULT_PORT, TAG_CHARS, is_inherited, listen_text, to_listen,  # noqa: F401
                         to_port)  # DEFAULT_PORT: the client's C.DEFAULT_PORT

MAX_LINE = 1023


class Config:
    """A parsed configuration.  Settings are attributes named after their key
    (``timeout negotiate`` -> ``timeout_negotiate``); ``ruleset`` holds the
    rules; ``warnings`` the (file, line, message) notes that are not errors;
    ``line_of`` the line each setting was given on, for the messages about
    it that come later (configload's system checks).  ``passwd_db``,
    ``route_table``, ``wayout`` and ``own_addresses`` stay empty until configload fills
    them; ``traffic_periods`` until the master does."""

    def __init__(self, path):
        self.path = path
        self.ruleset = R.Ruleset([])
        self.passwd_db = None
        self.route_table = None
        self.wayout = None             # the upstream way-out file, parsed (wayout.SocksConf)
        self.listen_proxy = {}    # (host, port, n-th such line) -> trusted balancer AddrSpecs
        self.own_addresses = frozenset()   # this host's addresses, for deny-private
        self.traffic_periods = None    # period -> shared count index, the master's (traffic.period_indexes)
        self.warnings = []
        self.explicit = set()
        self.line_of = {}         # setting key -> the line it was (first) given on
        for s in SETTINGS:
            setattr(self, s.attr, list(s.default) if s.repeat else s.default)

    def get(self, key):
        return getattr(self, BY_KEY[key].attr)

    def set(self, key, value):
        setattr(self, BY_KEY[key].attr, value)
        self.explicit.add(key)


def _is_v6_token(tok):
    try:
        if "/" in tok:
            ipaddress.IPv6Network(tok, strict=False)
        else:
            ipaddress.IPv6Address(tok)
        return True
    except ValueError:
        return False


def command_colon(raw):
    """Where the ': shell command' part starts, or -1.

    The classic scan takes the first ':' of the line; IPv6 addresses are
    full of them, so a token that is an IPv6 address (or network) is
    skipped, and the command starts at the first other ':'."""
    if ":" not in raw:
        return -1               # most lines: no regular expression at all
    for m in re.finditer(r"\S+", raw):
        tok = m.group()
        if ":" not in tok:
            continue
        if _is_v6_token(tok):
            continue
        return m.start() + tok.index(":")
    return -1


def split_line(raw):
    """The classic scan: the first ':' splits off the shell command, and a
    '#' before any ':' ends the line.  Returns (tokens, command or None)."""
    if ":" not in raw and "#" not in raw:
        return raw.split(), None      # most lines
    colon = command_colon(raw)
    hash_ = raw.find("#")
    if hash_ >= 0 and (colon < 0 or hash_ < colon):
        raw, colon = raw[:hash_], command_colon(raw[:hash_])
    command = None
    if colon >= 0:
        command = raw[colon + 1:].strip() or None
        raw = raw[:colon]
    return raw.split(), command       # split() takes tabs (and every other blank) as blanks


def parse_tag(tok):
    """A rule's ``tag=NAME`` field (sockd.conf only): the name that
    ``limit bandwidth rule NAME`` and ``quota rule NAME`` give the sessions
    the line permits.  Returns NAME; raises Bad."""
    name = tok[4:]
    if not name or len(name) > 64 or not set(name) <= TAG_CHARS:
        raise Bad("a tag is 1 to 64 letters, digits, '_', '.' or '-'", tok)
    return name


def parse_rule(tokens, command, file="-", line=0, text="", tags=False, specs=None):
    """Parse one permit/deny line (already split).  ``tags``: a ``tag=``
    field is allowed (sockd.conf's rules; not socks.conf's).  ``specs``: a
    dict kept across the lines of one file, where each address field is
    parsed once (see spec_of).  Raises Bad."""
    action = tokens[0].lower()
    ident = users = methods = tag = None
    if len(tokens) < 2 or "=" not in tokens[1]:
        # most lines: no ?=, *=, method= or tag= field (no address holds an '=')
        src, dst, port_op, port = parse_fields(tokens[1:], specs)
        return R.Rule(action, src, dst, None, None, port_op, port, command, file, line, text)
    i = 1
    seen = set()
    while i < len(tokens) and (tokens[i][:2] in ("?=", "*=") or tokens[i][:7].lower() == "method=" or (
            tags and tokens[i][:4].lower() == "tag=")):
        if tokens[i][:4].lower() == "tag=":
            if tag is not None:
                raise Bad("tag= given twice", tokens[i])
            tag = parse_tag(tokens[i])
            i += 1
            continue
        if tokens[i][:7].lower() == "method=":
            if methods is not None:
                raise Bad("method= given twice", tokens[i])
            methods = parse_methods(tokens[i])
            i += 1
            continue
        tok = tokens[i]
        kind = tok[:2]
        if kind in seen:
            raise Bad("%s given twice" % kind, tok)
        seen.add(kind)
        if kind == "?=":
            val = tok[2:]
            if val not in ("I", "i", "n", ""):
                raise Bad("invalid ?= field: expected ?=I, ?=i or ?=n", tok)
            ident = val or "n"
        else:
            val = tok[2:]
            if val:
                names = val.split(",")
                for n in names:
                    if not n:
                        raise Bad("empty name in *= list", tok)
                    if n.startswith("/") and len(n) < 2:
                        raise Bad("bad userfile path in *= list", tok)
                users = tuple(names)
        i += 1
    rest = tokens[i:]
    src, dst, port_op, port = parse_fields(rest, specs)
    return R.Rule(action, src, dst, ident=ident, users=users, port_op=port_op, port=port,
                  command=command, file=file, line=line, text=text, methods=methods, tag=tag)


RULE_METHODS = ("none", "username", "gssapi")


def parse_methods(tok):
    """A rule's ``method=gssapi[,username...]`` field: the SOCKS 5 methods a
    client must have authenticated with for the line to apply (a SOCKS 4
    client has none, so such a line never applies to it).  Returns a
    frozenset; raises Bad."""
    names = tok[7:].lower().split(",")
    for n in names:
        if n not in RULE_METHODS:
            raise Bad("unknown method in method= (expected %s)" % ", ".join(RULE_METHODS), tok)
    return frozenset(names)


def spec_of(specs, addr_tok, mask_tok=None):
    """rules.parse_addr_spec, once per distinct field of a file: the lines of
    a large rule file share most of their address fields (a site's own
    networks, 0/0), and an AddrSpec is never changed once made, so lines
    with the same field share one (a third less time for `sockd -V` of the
    bench's 100,000 lines; docs/performance.md section 5).  ``specs`` is the
    caller's dict for one file (None: no memo); it holds the fields that
    parsed, as many as the file has distinct ones, and goes with the call
    that read the file."""
    if specs is None:
        return R.parse_addr_spec(addr_tok, mask_tok)
    key = (addr_tok, mask_tok)
    spec = specs.get(key)
    if spec is None:
        spec = specs[key] = R.parse_addr_spec(addr_tok, mask_tok)
    return spec


def addr_candidates(rest, what, specs=None):
    """The ways the front of ``rest`` can be read as an address field:
    a list of (AddrSpec, remaining tokens).  A CIDR takes one token, a
    literal address two (address and mask); a name or ALL takes its mask
    when one follows (it is ignored, as in the classic route file) or stands
    alone."""
    if not rest or rest[0] in R.PORT_OPS:
        raise Bad("missing %s address" % what, rest[0] if rest else None)
    tok = rest[0]
    if "/" in tok:
        try:
            return [(spec_of(specs, tok), rest[1:])]
        except ValueError as exc:
            raise Bad("bad %s address: %s" % (what, exc), tok) from None
    if specs is not None and len(rest) >= 2 and (tok, rest[1]) in specs:
        return [(specs[tok, rest[1]], rest[2:])]         # an address and mask seen before in this file
    if R.ip_literal(tok) is not None:
        if len(rest) < 2 or rest[1] in R.PORT_OPS:
            raise Bad("%s address needs a mask (or write it as ADDRESS/PREFIX)" % what, tok)
        try:
            return [(spec_of(specs, tok, rest[1]), rest[2:])]
        except ValueError as exc:
            raise Bad("bad %s address: %s" % (what, exc), "%s %s" % (tok, rest[1])) from None
    try:
        alone = spec_of(specs, tok)
    except ValueError as exc:
        raise Bad("bad %s address: %s" % (what, exc), tok) from None
    out = []
    if len(rest) >= 2 and R.looks_like_mask(rest[1]):
        out.append((alone, rest[2:]))
    out.append((alone, rest[1:]))
    return out


def parse_port_part(rest):
    if not rest:
        return None, 0
    op = rest[0]
    if op not in R.PORT_OPS:
        raise Bad("invalid comparison: expected eq, neq, lt, gt, le or ge", op)
    if len(rest) < 2:
        raise Bad("missing port number after '%s'" % op, op)
    try:
        port = to_port(rest[1])
    except Bad as exc:
        raise Bad("invalid port number: %s" % exc, rest[1]) from None
    if len(rest) > 2:
        raise Bad("unexpected text at the end of the rule", rest[2])
    return op, port


def parse_fields(rest, specs=None):
    """src [dst] [op port] -> (src, dst or None, op or None, port).  Tries
    each reading of the address fields and keeps the first that parses."""
    if specs:
        got = known_fields(rest, specs)
        if got is not None:
            return got
    first_error = None
    for src, after_src in addr_candidates(rest, "source", specs):
        try:
            if not after_src or after_src[0] in R.PORT_OPS:
                op, port = parse_port_part(after_src)
                return src, None, op, port
            for dst, after_dst in addr_candidates(after_src, "destination", specs):
                if dst.uses_names and len(after_dst) == 1:
                    # "permit 0/0 about 80": a misspelt operator, not a host named "about"
                    first_error = first_error or Bad(
                        "invalid comparison: expected eq, neq, lt, gt, le or ge", after_src[0])
                    continue
                try:
                    op, port = parse_port_part(after_dst)
                    return src, dst, op, port
                except Bad as exc:
                    first_error = first_error or exc
        except Bad as exc:
            first_error = first_error or exc
    raise first_error


def known_fields(rest, specs):
    """parse_fields' answer for the commonest lines of a large file, or None
    for the general reading: address fields that ``specs`` holds as an
    address and mask, or as a CIDR, then nothing or ``OP PORT``.  Such a
    field has one reading only (addr_candidates gives it alone), so the
    answer is the general one's; anything else, errors included, goes the
    general way (which gives the same messages)."""
    n = len(rest)
    if n < 2:
        return None
    src = specs.get((rest[0], rest[1]))
    if src is not None:
        at = 2
    elif "/" in rest[0]:
        src = specs.get((rest[0], None))
        if src is None:
            return None
        at = 1
    else:
        return None
    dst = None
    if at < n and rest[at] not in R.PORT_OPS:
        dst = specs.get((rest[at], rest[at + 1])) if at + 1 < n else None
        if dst is not None:
            at += 2
        elif "/" in rest[at]:
            dst = specs.get((rest[at], None))
            if dst is None:
                return None
            at += 1
        else:
            return None
    if at == n:
        return src, dst, None, 0
    if n - at != 2 or rest[at] not in R.PORT_OPS:
        return None
    try:
        return src, dst, rest[at], to_port(rest[at + 1])
    except Bad:
        return None


def parse_userfile(text):
    """The names of a userfile: separated by blanks, tabs and commas, with #
    comments.  Returns a frozenset."""
    names = set()
    for raw in text.splitlines():
        raw = raw.split("#", 1)[0]
        names.update(n for n in raw.replace(",", " ").split() if n)
    return frozenset(names)


def read_userfile(path):
    """The names of the userfile at ``path``.  Returns a frozenset, or None
    when it cannot be read.  Blocks on the file system: the one function
    here that opens a file; parse_text never calls it (configload and the
    client library's socks.conf loader do)."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            data = f.read(1 << 22)
    except OSError:
        return None
    return parse_userfile(data)


def located(path, lineno, message, token=None):
    """A problem as ConfigError keeps it: (path, line, "message (near
    'token')"), the token made printable."""
    if token is not None:
        message = "%s (near '%s')" % (message, printable(token))
    return path, lineno, message


def parse_text(text, path="-"):
    """Parse configuration text, with no I/O at all: the files it names
    (userfiles, passwd, route) are not read, ``user``, ``group`` and
    ``chroot`` are not looked up, the host's addresses are not asked for --
    configload.load does all that around the same three steps.  Returns a
    Config; raises ConfigError with every problem."""
    cfg, problems = read_lines(text, path)
    if not problems:
        problems = check_together(cfg)
    if problems:
        raise ConfigError(problems)
    return finish(cfg)


HOOKS = ("#NO_IDENTD:", "#BAD_ID:")      # in column 0: the special hook lines


def read_lines(text, path="-"):
    """The first step: every line on its own.  Returns (Config, problems in
    line order).  The Config has its settings, ``line_of`` (the line each
    setting was given on) and, when there are no problems, its ruleset."""
    cfg = Config(path)
    problems = []
    rules = []
    specs = {}              # the address fields of this file, each parsed once (spec_of)
    no_identd = bad_id = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        if len(raw) > MAX_LINE:
            problems.append(located(path, lineno, "line longer than %d characters" % MAX_LINE))
            continue
        if raw.startswith(HOOKS):
            if raw.startswith(HOOKS[0]):
                cmd = raw[len(HOOKS[0]):].strip()
                if no_identd is None and cmd:
                    no_identd = (path, lineno, cmd)
            else:
                cmd = raw[len(HOOKS[1]):].strip()
                if bad_id is None and cmd:
                    bad_id = (path, lineno, cmd)
        else:
            tokens, command = split_line(raw)
            if not tokens:
                if command is not None:
                    problems.append(located(path, lineno, "shell command without a rule"))
                continue
            word = tokens[0]
            try:
                if word.lower() in (R.PERMIT, R.DENY):
                    rules.append(parse_rule(tokens, command, path, lineno, " ".join(tokens), True, specs))
                else:
                    if command is not None:
                        # a directive has no ':' command; put it back (paths may hold ':')
                        tokens, command = raw.split("#", 1)[0].replace("\t", " ").split(), None
                    parse_directive(cfg, tokens, lineno)
            except Bad as exc:
                problems.append(located(path, lineno, str(exc), exc.token))
    if not problems:
        # the userfiles' names are filled in by whoever reads them (configload)
        cfg.ruleset = R.Ruleset(rules, no_identd, bad_id)
    return cfg, problems


def check_together(cfg):
    """The second step: what no line tells on its own -- ``methods
    username`` needs a ``passwd`` line.  Returns the problems."""
    if "username" in cfg.methods and not cfg.passwd:
        return [(cfg.path, cfg.line_of.get("methods", 0), "'methods username' needs a 'passwd FILE' line")]
    return check_backoff(cfg) + check_traffic(cfg)


def check_backoff(cfg):
    """The login back-off's penalties: a first one of some length, and a
    longest one no shorter.  Returns the problems."""
    if not cfg.auth_failures:
        return []
    if not cfg.auth_penalty > 0:
        return [(cfg.path, cfg.line_of.get("auth penalty", 0),
                 "'auth penalty' must be longer than 0 (to turn the back-off off: 'auth failures off')")]
    if cfg.auth_penalty_max < cfg.auth_penalty:
        return [(cfg.path, cfg.line_of.get("auth penalty-max", cfg.line_of.get("auth penalty", 0)),
                 "'auth penalty-max' (%gs) is shorter than 'auth penalty' (%gs)" % (
                     cfg.auth_penalty_max, cfg.auth_penalty))]
    return []


def check_traffic(cfg):
    """``limit bandwidth rule TAG`` and ``quota rule TAG`` name a tag some
    rule carries; the quotas use at most traffic.BASES periods.  Returns
    the problems."""
    problems = []
    tags = {r.tag for r in cfg.ruleset.rules if r.tag is not None}
    for line in list(cfg.limit_bandwidth) + list(cfg.quota):
        if line.kind == "rule" and line.target not in tags:
            problems.append(located(cfg.path, line.line, "no rule carries tag=%s" % line.target, line.target))
    try:
        T.period_indexes(cfg.quota)
    except ValueError as exc:
        problems.append((cfg.path, cfg.line_of.get("quota", 0), str(exc)))
    return problems


def traffic_on(cfg):
    """Does ``cfg`` ask for traffic control at all: a limit, a quota, or
    ``accounting record yes``?  (Without, sessions are relayed exactly as
    if it did not exist.)"""
    return bool(cfg.limit_bandwidth or cfg.quota or cfg.accounting_record == "yes")


def accounting_on(cfg):
    """Are totals kept in the accounting database: a quota (its counts are
    kept there), or ``accounting record`` yes, or auto with a limit."""
    rec = cfg.accounting_record
    return bool(cfg.quota) or rec == "yes" or (rec == "auto" and bool(cfg.limit_bandwidth))


def finish(cfg):
    """The last step: the warnings about the whole file (after any the edge
    has added about the files it read).  Returns ``cfg``."""
    if not cfg.ruleset.has_permit:
        cfg.warnings.append((cfg.path, 0, "no permit line: every request will be refused"))
    open_proxy_warnings(cfg)
    return cfg


def userfiles_named(cfg):
    """Each /path that a *= list names, with the first rule naming it:
    [(path, rule)] in file order."""
    out, seen = [], set()
    for r in cfg.ruleset.rules:
        for u in r.users or ():
            if u.startswith("/") and u not in seen:
                seen.add(u)
                out.append((u, r))
    return out


def parse_listen_proxy(cfg, args, lineno):
    """``listen ADDRESS:PORT proxy-protocol CIDR...``: this listener takes
    clients from load balancers at those addresses only, each connection
    opening with a PROXY protocol header."""
    if args[1].lower() != "proxy-protocol":
        raise Bad("after the address, expected 'proxy-protocol CIDR...'", args[1])
    if len(args) < 3:
        raise Bad("'proxy-protocol' needs the addresses of the load balancers", args[1])
    trusted = []
    for tok in args[2:]:
        for part in tok.split(","):
            if not part:
                continue
            try:
                spec = R.parse_addr_spec(part) if "/" in part else R.parse_addr_spec(
                    part, "255.255.255.255" if ":" not in part else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
            except ValueError as exc:
                raise Bad("bad load balancer address: %s" % exc, part) from None
            if spec.kind != "net":
                raise Bad("load balancers are given by address or CIDR", part)
            trusted.append(spec)
    hostport = to_listen(args[0])
    if "listen" not in cfg.line_of:
        cfg.set("listen", [])
    nth = cfg.listen.count(hostport)       # "listen X:0" twice is two listeners
    cfg.listen.append(hostport)
    cfg.listen_proxy[hostport + (nth,)] = tuple(trusted)
    cfg.line_of.setdefault("listen", lineno)


def repeated(cfg, key, lineno):
    """The list of a repeated setting that ``cfg`` fills from its file."""
    if key not in cfg.line_of:
        cfg.set(key, [])
        cfg.line_of[key] = lineno
    return cfg.get(key)


def parse_directive(cfg, tokens, lineno):
    """One directive line (already split) into ``cfg``.  Raises Bad."""
    word = tokens[0].lower()
    if word in GROUPS:
        if len(tokens) < 2:
            raise Bad("'%s' needs a second word" % word, tokens[0])
        key = "%s %s" % (word, tokens[1].lower())
        args = tokens[2:]
        if key not in BY_KEY:
            choices = sorted(k.split(" ", 1)[1] for k in BY_KEY if k.startswith(word + " "))
            raise Bad("unknown '%s' setting; expected one of: %s" % (word, ", ".join(choices)), tokens[1])
    else:
        key, args = word, tokens[1:]
        if key not in BY_KEY:
            raise Bad("unknown directive (rules start with permit or deny)", tokens[0])
    s = BY_KEY[key]
    if key == "listen" and len(args) > 1:
        parse_listen_proxy(cfg, args, lineno)
        return
    if key in ("limit bandwidth", "quota"):
        # keyed and repeated: the converter reads the whole line, and the
        # value learns where it was written (log lines name it)
        value = s.convert(" ".join(args) if args else "")
        value.file, value.line = cfg.path, lineno
        repeated(cfg, key, lineno).append(value)
        return
    if s.whole:
        value = s.convert(args)
    elif s.many:
        if not args:
            raise Bad("'%s' needs at least one argument: %s %s" % (key, key, s.args), tokens[0])
        value = tuple(s.convert(a) for a in args)
        if len(set(value)) != len(value):
            raise Bad("'%s' names a value twice" % key, " ".join(args))
    elif len(args) != 1:
        raise Bad("'%s' takes one argument: %s %s" % (key, key, s.args), " ".join(tokens))
    else:
        value = s.convert(args[0])
    if s.repeat:
        if key not in cfg.line_of:
            cfg.set(key, [])
        cfg.get(key).append(value)
    else:
        if key in cfg.line_of:
            raise Bad("'%s' given twice (first on line %d)" % (key, cfg.line_of[key]), tokens[0])
        cfg.set(key, value)
    cfg.line_of.setdefault(key, lineno)


def open_proxy_warnings(cfg):
    """A permit line for any client on a listener other than loopback makes
    an open proxy: say so loudly (people look for those to abuse)."""
    proxied = {k[:2] for k in cfg.listen_proxy}
    # (inherited sockets are judged once their addresses are known: listeners.py)
    public = [hp for hp in cfg.listen if not is_inherited(hp)
              and hp not in proxied and not hp[0].startswith("127.") and hp[0] not in ("::1", "localhost")]
    cfg.warnings.extend(open_proxy_lines(cfg, [listen_text(hp) for hp in public]))


def open_proxy_lines(cfg, public):
    """The warnings, as (file, line, message), for the rules of ``cfg``
    that permit any client, when it listens on ``public`` (addresses as
    text, none on loopback); [] when ``public`` is empty."""
    if not public:
        return []
    return [(r.file, r.line, "this line permits any client on %s: an open proxy "
             "(anyone who can reach the port can use it)" % ", ".join(public))
            for r in cfg.ruleset.rules if r.action == R.PERMIT and r.src.is_any and r.users is None]


def printable(text, limit=60):
    """A token as it may appear in a message: printable, and short."""
    out = "".join(c if " " <= c < "\x7f" else "?" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def without_gc(fn, arg, keep=False):
    """fn(arg) with the cyclic collector off.  Parsing or coding a
    configuration makes some ten objects a rule line and frees almost none,
    so the collector would walk them again and again for nothing (a third
    of the time of a 100,000-line file, issue 17).  ``keep``: the caller
    keeps what fn made for as long as it runs (the server's configuration):
    everything that exists now is put out of the collector's sight
    (gc.freeze) before it is turned on again; else the collector, once on,
    walks those objects three times as they age through its generations
    (0.15 to 0.4 s for 100,000 lines; docs/performance.md section 5).  The
    one home of this; configload and channel call it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        got = fn(arg)
        if keep:
            gc.freeze()
        return got
    finally:
        if enabled:
            gc.enable()

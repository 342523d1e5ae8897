"""The value converters of sockd.conf and the command line, in the manner of
supervisor's ``datatypes``: each takes one token (a string) and returns the
value, or raises ``errors.Bad`` with the message and the token it is near.
The parser adds the file and the line.

Pure: no converter opens a file or asks the system whether something
exists, but for a service name (``eq telnet``), looked up in the C
library's services table as the C sockd does.  What only the running
system can answer -- does this user or group exist, is this a directory --
is asked by the ``system_*`` checks at the end, which the parser never
calls: the edge (``configload``) runs them on the values the parser
returned, as the table's ``check`` says.

Imports only ``errors``, ``rules`` (for the host-name grammar) and
``traffic`` (the values of ``limit bandwidth`` and ``quota``) of sockd:
the client library uses these converters too, and must not pull in the
server.
"""

import grp
import ipaddress
import os
import pwd
import socket

from . import rules as R
from . import traffic as T
from .errors import Bad

DEFAULT_PORT = 1080
# "listen systemd" and "listen systemd:NAME": sockets inherited by socket
# activation, as (INHERITED, NAME or "") in cfg.listen
INHERITED = "systemd"

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}


def to_int(lo, hi):
    """A converter for a decimal integer from ``lo`` to ``hi``.  Returns the
    converter; it returns an int, raises Bad."""
    def conv(tok):
        try:
            v = int(tok, 10)
        except ValueError:
            raise Bad("not a number", tok) from None
        if not lo <= v <= hi:
            raise Bad("out of range %d-%d" % (lo, hi), tok)
        return v
    return conv


def to_seconds(tok):
    """Seconds, with an optional unit: 30, 30s, 2m, 2h, 1d.  Returns a float
    (at most ten years), raises Bad."""
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = tok.lower()
    m = 1
    if t and t[-1] in mult:
        m, t = mult[t[-1]], t[:-1]
    try:
        v = float(t)
    except ValueError:
        raise Bad("not a duration (seconds, or a number with s, m, h or d)", tok) from None
    # written so that nan, which compares false with everything, is refused too
    if not 0 <= v * m <= 10 * 365 * 86400:
        raise Bad("duration out of range", tok)
    return v * m


def to_stagger(tok):
    """``connect stagger``: 0 (one address after another), or seconds from
    0.01 to 2 (RFC 8305 section 5: a Connection Attempt Delay of at least
    10 ms, at most 2 s).  Returns a float, raises Bad."""
    v = to_seconds(tok)
    if v != 0 and not 0.01 <= v <= 2:
        raise Bad("out of range: 0, or 0.01 to 2 seconds", tok)
    return v


def to_choice(*choices):
    """A converter for one word of ``choices``, in any case.  Returns the
    converter; it returns the word in lower case, raises Bad."""
    def conv(tok):
        if tok.lower() not in choices:
            raise Bad("expected one of: %s" % ", ".join(choices), tok)
        return tok.lower()
    return conv


GSS_LEVELS = {"clear": 0, "integrity": 1, "confidentiality": 2, "0": 0, "1": 1, "2": 2}


def to_gss_level(tok):
    """A GSS-API protection level, by name or number (RFC 1961 section 4;
    0 is Dante's "clear").  Returns 0, 1 or 2; raises Bad."""
    level = GSS_LEVELS.get(tok.lower())
    if level is None:
        raise Bad("expected a protection level: clear, integrity or confidentiality (0, 1, 2; "
                  "3, per-message, is not offered)", tok)
    return level


def to_gss_service(tok):
    """A service name for GSS-API: ``rcmd``, ``rcmd/HOST``, ``rcmd/HOST@REALM``
    or ``rcmd@HOST``.  Returns it; raises Bad."""
    if len(tok) > 255 or not all(c.isalnum() or c in "-_.@/" for c in tok) or tok[0] in "@/":
        raise Bad("expected a service name such as rcmd or rcmd/HOST", tok)
    return tok


def to_bool(tok):
    """yes/on/true/1 or no/off/false/0, in any case.  Returns a bool, raises Bad."""
    t = tok.lower()
    if t in ("yes", "on", "true", "1"):
        return True
    if t in ("no", "off", "false", "0"):
        return False
    raise Bad("expected yes or no", tok)


def to_facility(tok):
    """A syslog facility name of FACILITIES.  Returns it in lower case, raises Bad."""
    if tok.lower() not in FACILITIES:
        raise Bad("unknown syslog facility", tok)
    return tok.lower()


def to_port(tok, proto="tcp"):
    """A port number (0-65535) or a service name.  Returns an int, raises
    Bad.  A name is looked up in the C library's services table."""
    if tok.isascii() and tok.isdigit():
        v = int(tok)
        if v > 65535:
            raise Bad("port number out of range", tok)
        return v
    try:
        return socket.getservbyname(tok, proto)
    except (OSError, ValueError):
        # ValueError: a NUL in the name, which the C library cannot be asked about
        raise Bad("unknown service name", tok) from None


def to_listen(tok):
    """ADDRESS:PORT, [IPV6]:PORT, *:PORT or a bare PORT.  Returns (host,
    port), host "0.0.0.0" for the wildcard; raises Bad.  "systemd" or
    "systemd:NAME" (the sockets systemd passes, all or those of that
    FileDescriptorName=) returns (INHERITED, NAME or ""): see
    is_inherited."""
    if tok.lower() == INHERITED or tok[:len(INHERITED) + 1].lower() == INHERITED + ":":
        name = tok[len(INHERITED) + 1:]
        if len(tok) > len(INHERITED) and not name:
            raise Bad("expected a socket name after 'systemd:' (FileDescriptorName=)", tok)
        # systemd's own rule for FileDescriptorName=: printable ASCII, no colon
        if len(name) > 255 or not all(" " < c < "\x7f" for c in name):
            raise Bad("bad socket name: printable ASCII without spaces, at most 255 characters", tok)
        return INHERITED, name
    if tok.startswith("["):
        end = tok.find("]")
        if end < 0:
            raise Bad("missing ']' in IPv6 address", tok)
        host, rest = tok[1:end], tok[end + 1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise Bad("bad IPv6 address", tok) from None
        if not rest:
            return host, DEFAULT_PORT
        if not rest.startswith(":"):
            raise Bad("expected ':PORT' after ']'", tok)
        return host, to_port(rest[1:])
    if tok.count(":") > 1:
        raise Bad("write IPv6 addresses in brackets: [ADDRESS]:PORT", tok)
    if ":" in tok:
        host, port = tok.rsplit(":", 1)
        port = to_port(port)
    elif tok.isascii() and tok.isdigit():
        host, port = "0.0.0.0", to_port(tok)
    else:
        host, port = tok, DEFAULT_PORT
    if host in ("", "*"):
        host = "0.0.0.0"
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not R.valid_hostname(host):
            raise Bad("bad listen address", tok) from None
    return host, port


def is_inherited(hostport):
    """Whether a ``listen`` value names inherited sockets (systemd[:NAME])
    rather than an address and port."""
    return isinstance(hostport[1], str)


def listen_text(hostport):
    """A ``listen`` value as written: HOST:PORT, [IPV6]:PORT, systemd or
    systemd:NAME."""
    host, port = hostport
    if is_inherited(hostport):
        return INHERITED + (":" + port if port else "")
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def parse_rate(tok):
    """N/SECONDS -> (N, seconds): N from 1, SECONDS above 0 and at most a
    day.  Raises ValueError (to_rate turns it into Bad)."""
    n, sep, secs = tok.partition("/")
    if not sep:
        raise ValueError("expected N/SECONDS")
    n = int(n)
    secs = float(secs)
    if n < 1 or not 0 < secs <= 86400:         # "not": nan is refused too
        raise ValueError("out of range")
    return n, secs


def to_rate(tok):
    """N/SECONDS, e.g. 20/10: twenty new clients per ten seconds.  Returns
    (N, seconds), raises Bad."""
    try:
        return parse_rate(tok)
    except ValueError as exc:
        raise Bad("expected N/SECONDS (%s)" % exc, tok) from None


def to_failures(tok):
    """``auth failures``: N/SECONDS (as to_rate), or off (None).  Raises Bad."""
    if tok.lower() in ("off", "no", "none"):
        return None
    try:
        return parse_rate(tok)
    except ValueError as exc:
        raise Bad("expected N/SECONDS or off (%s)" % exc, tok) from None


def to_size(lo, hi):
    """A converter for a size in bytes, with an optional unit: 65536, 512k,
    64M, 1G (powers of 1024; K, M and G in either case), from ``lo`` to
    ``hi`` bytes.  Returns the converter; it returns an int, raises Bad."""
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

    def conv(tok):
        t = tok.lower()
        m = 1
        if t and t[-1] in mult:
            m, t = mult[t[-1]], t[:-1]
        if not (t.isascii() and t.isdigit()):
            raise Bad("not a size (bytes, or a number with k, M or G)", tok)
        v = int(t) * m
        if not lo <= v <= hi:
            raise Bad("size out of range", tok)
        return v
    return conv


AMOUNT_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_amount(text):
    """A number of bytes with an optional unit (k, M, G, T: powers of 1024,
    either case) and decimals (``1.5M``).  Returns an int from 1; raises
    ValueError."""
    t = text.lower()
    m = 1
    if t and t[-1] in AMOUNT_UNITS:
        m, t = AMOUNT_UNITS[t[-1]], t[:-1]
    if not t or not all(c.isdigit() or c == "." for c in t) or not t.isascii() or t.count(".") > 1:
        raise ValueError("not an amount")
    v = int(float(t) * m)
    if not 1 <= v <= 1 << 60:
        raise ValueError("out of range")
    return v


def to_amount(tok):
    """A size in bytes for traffic control: 500M, 20G, 1.5T.  Returns an
    int; raises Bad."""
    try:
        return parse_amount(tok)
    except ValueError:
        raise Bad("not an amount of bytes (a number with k, M, G or T)", tok) from None


def to_bandwidth(tok):
    """RATE or UP/DOWN, bytes per second in each direction: ``2M`` (both
    ways), ``2M/s``, ``1M/10M`` (up, from the client, then down, to it),
    ``-/2M`` (``-``: that direction unlimited).  Returns (up, down), each
    an int or None; raises Bad."""
    parts = tok.split("/")
    rates = []
    i = 0
    while i < len(parts):
        p = parts[i]
        i += 1
        if i < len(parts) and parts[i].lower() == "s":
            i += 1                          # "2M/s": a unit, not a second rate
        if p == "-":
            rates.append(None)
            continue
        try:
            rates.append(parse_amount(p))
        except ValueError:
            raise Bad("expected a rate in bytes per second: 2M, 2M/s, or UP/DOWN such as 1M/10M", tok) from None
    if len(rates) == 1:
        rates.append(rates[0])
    if len(rates) != 2 or rates == [None, None]:
        raise Bad("expected a rate in bytes per second: 2M, 2M/s, or UP/DOWN such as 1M/10M", tok)
    return rates[0], rates[1]


TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def traffic_target(kind, args, what):
    """The target of a ``limit bandwidth`` or ``quota`` line of ``kind``
    and whether it says ``each``.  Returns (target, each, arguments
    left); raises Bad."""
    if not args:
        raise Bad("'%s %s' needs %s" % (what, kind, {"address": "a network (CIDR) or address", "user":
                                                    "a user name or *", "rule": "a rule's tag"}[kind]), kind)
    tok, rest = args[0], args[1:]
    each = False
    if kind == "address":
        try:
            target = T.net_text(*T.parse_net(tok))
        except ValueError:
            raise Bad("expected a network (CIDR, such as 10.1.0.0/16) or an address", tok) from None
        if rest and rest[0].lower() == "each":
            each, rest = True, rest[1:]
    elif kind == "user":
        target = tok
        if len(tok) > 255:
            raise Bad("a user name is at most 255 bytes", tok)
    else:
        if not set(tok) <= TAG_CHARS or len(tok) > 64:
            raise Bad("expected a rule's tag (the NAME of tag=NAME)", tok)
        target = tok
    return target, each, rest


def to_limit(text):
    """``limit bandwidth KEY RATE [burst SIZE]``, the words after ``limit
    bandwidth``: KEY is ``session``, ``address CIDR [each]``, ``user
    NAME|*`` or ``rule TAG``.  Returns a traffic.Limit (its file and line
    are the parser's to set); raises Bad."""
    args = text.split()
    if not args:
        raise Bad("'limit bandwidth' needs a key and a rate: session, address CIDR, user NAME or rule TAG",
                  "bandwidth")
    kind = args[0].lower()
    if kind not in T.LIMIT_KINDS:
        raise Bad("expected session, address, user or rule", args[0])
    target, each, rest = (None, False, args[1:]) if kind == "session" else traffic_target(kind, args[1:],
                                                                                         "limit bandwidth")
    if not rest:
        raise Bad("missing the rate (bytes per second each way, such as 2M)", args[-1])
    up, down = to_bandwidth(rest[0])
    bursts = [None, None]
    rest = rest[1:]
    if rest:
        if rest[0].lower() != "burst":
            raise Bad("unexpected text after the rate (expected 'burst SIZE')", rest[0])
        if len(rest) < 2:
            raise Bad("'burst' needs a size (bytes, such as 256K)", rest[0])
        bu, bd = to_bandwidth(rest[1])
        if bu is None or bd is None or min(bu, bd) < 1024:
            raise Bad("a burst is a size of at least 1K (or UP/DOWN)", rest[1])
        bursts = [bu, bd]
        if len(rest) > 2:
            raise Bad("unexpected text after the burst", rest[2])
    bursts = [b if b is not None else (T.default_burst(r) if r is not None else 0)
              for b, r in zip(bursts, (up, down))]
    return T.Limit(kind, target, each, up, down, bursts[0], bursts[1])


def to_quota(text):
    """``quota KEY BYTES per PERIOD [cut|finish]``, the words after
    ``quota``: KEY is ``address CIDR [each]``, ``user NAME|*`` or ``rule
    TAG``, PERIOD day, week, month or a rolling window (24h, 7d).  Returns
    a traffic.Quota (file and line set by the parser); raises Bad."""
    args = text.split()
    if not args:
        raise Bad("'quota' needs a key, an amount and a period: quota user NAME 10G per day", "quota")
    kind = args[0].lower()
    if kind not in T.QUOTA_KINDS:
        raise Bad("expected address, user or rule", args[0])
    target, each, rest = traffic_target(kind, args[1:], "quota")
    if not rest:
        raise Bad("missing the amount of bytes (such as 10G)", args[-1])
    nbytes = to_amount(rest[0])
    if len(rest) < 3 or rest[1].lower() != "per":
        raise Bad("expected 'per day', 'per week', 'per month' or 'per 24h' after the amount",
                  rest[1] if len(rest) > 1 else rest[0])
    try:
        period = T.parse_period(rest[2])
    except ValueError as exc:
        raise Bad(str(exc), rest[2]) from None
    mode = "cut"
    if len(rest) > 3:
        mode = rest[3].lower()
        if mode not in T.MODES:
            raise Bad("expected cut (live sessions end at the quota) or finish (they go on)", rest[3])
        if len(rest) > 4:
            raise Bad("unexpected text after the quota", rest[4])
    return T.Quota(kind, target, each, nbytes, period, mode)


def to_port_range(tok):
    """LOW-HIGH (or one PORT): ports from 1024 to 65535 that a BIND client
    may ask for; below 1024 are services' ports, never handed out.
    Returns (low, high), raises Bad."""
    lo, sep, hi = tok.partition("-")
    if not sep:
        hi = lo
    if not (lo.isascii() and lo.isdigit() and hi.isascii() and hi.isdigit()):
        raise Bad("expected LOW-HIGH (port numbers)", tok)
    lo, hi = int(lo), int(hi)
    if not 1024 <= lo <= hi <= 65535:
        raise Bad("expected ports from 1024 to 65535, the lower first", tok)
    return lo, hi


def to_address(tok):
    """An IPv4 or IPv6 address literal, brackets allowed.  Returns it in
    compressed form, raises Bad."""
    try:
        return ipaddress.ip_address(tok.strip("[]")).compressed
    except ValueError:
        raise Bad("not an IP address", tok) from None


def to_pidfile(tok):
    """The ``pidfile`` directive: an absolute path.  Returns it, raises Bad."""
    if not tok.startswith("/"):
        raise Bad("the pid file must be an absolute path", tok)
    return tok


def to_user(tok):
    """``user NAME`` or a number.  Returns it as written; whether the user
    exists is system_user's question, asked at the edge."""
    return tok


def to_group(tok):
    """``group NAME`` or a number.  Returns it as written; whether the group
    exists is system_group's question, asked at the edge."""
    return tok


def to_db_path(tok):
    """``accounting database``: an absolute path.  Returns it, raises Bad."""
    if not tok.startswith("/"):
        raise Bad("the accounting database must be an absolute path", tok)
    return tok


def to_interval(tok):
    """``accounting interval``: seconds (as to_seconds), from 0.2 to an
    hour.  Returns a float, raises Bad."""
    v = to_seconds(tok)
    if not 0.2 <= v <= 3600:
        raise Bad("expected from 0.2 seconds to an hour", tok)
    return v


def to_chroot(tok):
    """``chroot DIR``: an absolute path.  Returns it as written (system_chroot
    checks and normalises it at the edge), raises Bad."""
    if not tok.startswith("/"):
        raise Bad("the chroot directory must be an absolute path", tok)
    return tok


# --- checks that consult the system: never called by the parser ---------------------------

def system_user(value):
    """The user of ``user`` exists now.  Returns it, raises Bad.  Reads the
    passwd database."""
    try:
        if value.isascii() and value.isdigit():
            pwd.getpwuid(int(value))
        else:
            pwd.getpwnam(value)
    except (KeyError, OverflowError, ValueError):
        # ValueError: a NUL in the name, which no user has
        raise Bad("unknown user", value) from None
    return value


def system_group(value):
    """The group of ``group`` exists now.  Returns it, raises Bad.  Reads the
    group database."""
    try:
        if value.isascii() and value.isdigit():
            grp.getgrgid(int(value))
        else:
            grp.getgrnam(value)
    except (KeyError, OverflowError, ValueError):
        raise Bad("unknown group", value) from None
    return value


def system_chroot(value):
    """The directory of ``chroot`` exists.  Returns the path normalised
    (checked as written, as before: ``/gone/../srv`` is no directory),
    raises Bad.  Looks at the file system."""
    if not os.path.isdir(value):
        raise Bad("no such directory", value)
    return os.path.normpath(value)


# -- issue 16: the metrics endpoint --------------------------------------------------------------

METRICS_DEFAULT_ALLOWED = ("127.0.0.0/8", "::1/128")


class MetricsSpec:
    """``metrics ADDRESS:PORT [CIDR...]``: where the endpoint listens
    (``host``, ``port``) and who may scrape it (``allowed``: rules.AddrSpec
    nets; ``allowed_text``: as written, or loopback by default).  Equal
    when all three are."""

    __slots__ = ("host", "port", "allowed", "allowed_text")

    def __init__(self, host, port, allowed, allowed_text):
        self.host, self.port, self.allowed, self.allowed_text = host, port, tuple(allowed), tuple(allowed_text)

    @property
    def address(self):
        return self.host, self.port

    def __eq__(self, other):
        return isinstance(other, MetricsSpec) and (self.address, self.allowed_text) == (
            other.address, other.allowed_text)

    def __hash__(self):
        return hash((self.address, self.allowed_text))

    def __repr__(self):
        return "MetricsSpec(%s, %s)" % (listen_text(self.address), " ".join(self.allowed_text))


def to_net(part):
    """One address or CIDR of an access list as a rules.AddrSpec net (a bare
    address is that one host).  Raises Bad."""
    try:
        if "/" in part:
            spec = R.parse_addr_spec(part)
        else:
            spec = R.parse_addr_spec(part, "255.255.255.255" if ":" not in part else
                                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    except ValueError as exc:
        raise Bad("bad address in the access list: %s" % exc, part) from None
    if spec.kind != "net":
        raise Bad("the access list takes addresses or CIDR networks", part)
    return spec


def to_metrics(args):
    """The arguments of a ``metrics`` line: ADDRESS:PORT (a literal address,
    IPv6 in brackets), then the clients allowed to scrape, as addresses or
    CIDRs (spaces or commas between them; default: loopback only).
    Returns a MetricsSpec; raises Bad."""
    if not args:
        raise Bad("'metrics' needs an address: metrics ADDRESS:PORT [CIDR...]")
    tok = args[0]
    if not (tok.startswith("[") or ":" in tok):
        raise Bad("expected ADDRESS:PORT (for every address: 0.0.0.0:PORT or [::]:PORT)", tok)
    host, port = to_listen(tok)
    if is_inherited((host, port)):
        raise Bad("the metrics endpoint opens its own socket: expected ADDRESS:PORT", tok)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Bad("expected an IP address, not a host name", tok) from None
    texts = [p for a in args[1:] for p in a.split(",") if p]
    if not texts:
        texts = list(METRICS_DEFAULT_ALLOWED)
    return MetricsSpec(host, port, [to_net(t) for t in texts], texts)

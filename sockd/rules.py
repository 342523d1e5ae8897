"""The access rules of sockd.conf: address specifications, rule lines and
the first-match engine.  Pure: no sockets, no files, no clock.

A request is matched against the rules in file order; the first line whose
source, destination, user and port tests all pass decides; no matching line
means deny (the classic semantics).  What the engine needs that only the
outside world knows (host names of an address, a userfile's contents) is
handed in already looked up: the session resolves names before asking when
``Ruleset.needs_names`` says a rule looks at names, and userfiles are read
when the configuration is loaded.

Addresses are kept as (family, integer) so that a rule test is two integer
operations; a bounded memo of recent decisions makes a long rule file cost
nothing for the clients and destinations that come back.
"""

import ipaddress
import socket as _socket

_inet_pton = _socket.inet_pton
_AF_INET, _AF_INET6 = _socket.AF_INET, _socket.AF_INET6
_from_bytes = int.from_bytes

PERMIT, DENY = "permit", "deny"

PORT_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "gt": lambda a, b: a > b,
    "le": lambda a, b: a <= b,
    "ge": lambda a, b: a >= b,
}

V4_TRANSLATED = 0xFFFF0000        # ::ffff:0:a.b.c.d (RFC 2765), the upper 96 bits


def ip_key(text):
    """(family, int) for an address literal.  The IPv6 spellings of an IPv4
    address -- mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d`` (but not
    ``::`` and ``::1``) and translated ``::ffff:0:a.b.c.d`` -- are folded to
    IPv4, so that a rule and the private-destination guard see the one
    address whichever way a client writes it.  Raises ValueError."""
    try:
        return 4, _from_bytes(_inet_pton(_AF_INET, text), "big")
    except OSError:
        pass
    try:
        n = _from_bytes(_inet_pton(_AF_INET6, text.split("%", 1)[0]), "big")
    except (OSError, ValueError):
        raise ValueError("not an IP address: %r" % text) from None
    high = n >> 32
    if high == 0xFFFF or high == V4_TRANSLATED or (high == 0 and n > 1):
        return 4, n & 0xFFFFFFFF
    return 6, n


class AddrSpec:
    """One address field of a rule: a network (address and mask), a host
    name, a ``.zone``, or ``ALL``.

    kind is "net", "host", "zone" or "all".  A "net" with an all-zero mask
    matches every address of either family, as ``0.0.0.0 0.0.0.0`` always
    meant "any address"."""

    __slots__ = ("kind", "family", "addr", "mask", "name", "text")

    def __init__(self, kind, family=0, addr=0, mask=0, name=None, text=""):
        self.kind, self.family, self.addr, self.mask, self.name, self.text = kind, family, addr, mask, name, text

    @classmethod
    def any(cls):
        return cls("all", text="ALL")

    @property
    def is_any(self):
        return self.kind == "all" or (self.kind == "net" and self.mask == 0)

    @property
    def uses_names(self):
        return self.kind in ("host", "zone")

    def match(self, family, addr, names=()):
        """Does the address (family, int) or one of its ``names`` match?"""
        kind = self.kind
        if kind == "net":
            if self.mask == 0:
                return True
            return family == self.family and (addr & self.mask) == self.addr
        if kind == "all":
            return True
        if kind == "host":
            return any(n == self.name for n in names)
        # zone: ".xyz.com" matches xyz.com and anything under it
        return any(n == self.name[1:] or n.endswith(self.name) for n in names)

    def __repr__(self):
        return "AddrSpec(%s)" % self.text


def parse_addr_spec(addr_tok, mask_tok=None):
    """Build an AddrSpec from a rule's address token and its mask token.

    ``addr_tok`` may be CIDR (``10.0.0.0/8``, ``::1/128``; then ``mask_tok``
    must be None), a dotted quad or IPv6 literal with ``mask_tok`` a mask of
    the same family, ``ALL``, a host name, or a ``.zone``.  For names the mask
    is accepted and ignored, as in the classic route file.  Raises ValueError
    with the reason."""
    text = addr_tok if mask_tok is None else "%s %s" % (addr_tok, mask_tok)
    if addr_tok.upper() == "ALL":
        return AddrSpec("all", text=text)
    if addr_tok == "0/0":               # Dante's spelling of "any address"
        if mask_tok is not None:
            raise ValueError("a CIDR address takes no separate mask")
        return AddrSpec("net", 4, 0, 0, text=text)
    if "/" in addr_tok:
        if mask_tok is not None:
            raise ValueError("a CIDR address takes no separate mask")
        try:
            net = ipaddress.ip_network(addr_tok, strict=False)
        except ValueError:
            raise ValueError("bad CIDR address") from None
        return AddrSpec("net", net.version, int(net.network_address), int(net.netmask), text=text)
    try:
        ip = ipaddress.ip_address(addr_tok)
    except ValueError:
        ip = None
    if ip is not None:
        if mask_tok is None:
            raise ValueError("address without a mask")
        try:
            mask = ipaddress.ip_address(mask_tok)
        except ValueError:
            raise ValueError("bad mask") from None
        if mask.version != ip.version:
            raise ValueError("mask and address are of different families")
        m = int(mask)
        return AddrSpec("net", ip.version, int(ip) & m, m, text=text)
    name = addr_tok.lower().rstrip(".")
    if not valid_hostname(name.lstrip(".")):
        raise ValueError("not an address, a host name or a .zone")
    if mask_tok is not None:
        try:
            ipaddress.ip_address(mask_tok)
        except ValueError:
            raise ValueError("bad mask") from None
    if addr_tok.startswith("."):
        return AddrSpec("zone", name=name, text=text)
    return AddrSpec("host", name=name, text=text)


def valid_hostname(name):
    """A host name or zone: letters, digits, '-' and '_' in dot-separated
    labels; a last label of digits only is a mistyped address, not a name."""
    if not name or len(name) > 253 or name.rsplit(".", 1)[-1].isdigit():
        return False
    for label in name.split("."):
        if not label or len(label) > 63:
            return False
        if not all(c.isalnum() or c in "-_" for c in label):
            return False
    return True


def looks_like_mask(tok):
    try:
        ipaddress.ip_address(tok)
        return True
    except ValueError:
        return False


class Rule:
    """One permit/deny line, with where it came from."""

    __slots__ = ("action", "ident", "users", "methods", "src", "dst", "port_op", "port", "command",
                 "file", "line", "text", "tag")

    def __init__(self, action, src, dst=None, ident=None, users=None, port_op=None, port=0,
                 command=None, file="-", line=0, text="", methods=None, tag=None):
        self.action = action
        self.ident = ident          # None: the global -i/-I setting; else "I", "i" or "n"
        self.users = users          # None: any user; else a tuple of names and /userfiles
        self.methods = methods      # None: any method; else the SOCKS 5 methods (names) it needs
        self.src = src
        self.dst = dst or AddrSpec.any()
        self.port_op = port_op
        self.port = port
        self.command = command      # the ": shell command" template, or None
        self.file, self.line, self.text = file, line, text
        self.tag = tag              # tag=NAME: what limit bandwidth rule / quota rule call it

    @property
    def where(self):
        return "%s:%d" % (self.file, self.line)

    def __repr__(self):
        return "<Rule %s %s>" % (self.where, self.text)


class Request:
    """What the engine decides on.  Addresses are (family, int); names are
    lower-case tuples (empty when not looked up)."""

    __slots__ = ("src_family", "src_addr", "src_names", "dst_family", "dst_addr", "dst_names",
                 "port", "user", "method")

    def __init__(self, src, dst, port, user=None, src_names=(), dst_names=(), method=None):
        self.src_family, self.src_addr = src
        self.dst_family, self.dst_addr = dst if dst is not None else (0, 0)
        self.port = port
        self.user = user
        self.method = method        # how the client authenticated: none, username, gssapi (None: SOCKS 4)
        self.src_names = src_names
        self.dst_names = dst_names


class _NeedUser:
    """match() stops here: the user of the rule ``rule`` is not known yet
    (SOCKS 5 without authentication: it is identd's answer)."""

    def __init__(self, rule):
        self.rule = rule

    def __bool__(self):
        return False

    def __repr__(self):
        return "<need the user for %s>" % self.rule.where


NEED_USER = _NeedUser


class Ruleset:
    """The ordered rules plus the special #NO_IDENTD: and #BAD_ID: lines.

    ``userfiles`` maps each /path named in a *= list to the frozenset of
    names read from it, or None when it could not be read (no match)."""

    MEMO_SIZE = 4096

    def __init__(self, rules, no_identd=None, bad_id=None, userfiles=None):
        self.rules = list(rules)
        self.no_identd = no_identd    # (file, line, command) or None
        self.bad_id = bad_id
        self.userfiles = userfiles or {}
        self.needs_src_names = any(r.src.uses_names for r in self.rules)
        self.needs_dst_names = any(r.dst.uses_names for r in self.rules)
        # Without any *= list no line ever looks at the user, so callers
        # need not supply one (and the decision memo applies).
        self.has_users = any(r.users is not None for r in self.rules)
        self.has_methods = any(r.methods is not None for r in self.rules)
        self._memo = {}
        self._compiled = [self._compile(r) for r in self.rules]
        self._build_index()

    INDEX_FROM = 16     # rules; below this a plain scan is cheaper

    def _build_index(self):
        """Indexes on source, destination and port, so that a request looks
        only at the lines that could match it, still in file order.

        Each index maps a key to a bitset (a Python int) of rule positions:
        address-and-mask fields are filed under (family, mask, address), "eq"
        ports under the port; everything else (names, ALL, zero masks, other
        operators) is in an "always" set.  The candidates of a request are
        the AND of the three unions -- big-integer operations done in C --
        and are then checked in full, lowest position first.  Matters for
        long rule files (the scan costs ~60 ns a line) and in the fork model,
        where every child would otherwise walk, and so copy, all of the
        master's rule objects."""
        self._indexed = len(self.rules) >= self.INDEX_FROM
        if not self._indexed:
            return
        self._src = self._addr_index([r.src for r in self.rules])
        self._dst = self._addr_index([r.dst for r in self.rules])
        always, by_port = 0, {}
        for i, r in enumerate(self.rules):
            if r.port_op == "eq":
                by_port[r.port] = by_port.get(r.port, 0) | (1 << i)
            else:
                always |= 1 << i
        self._port = (always, by_port)

    @staticmethod
    def _addr_index(specs):
        always, index, masks = 0, {}, []
        for i, spec in enumerate(specs):
            if spec.kind == "net" and spec.mask:
                key = (spec.family, spec.mask, spec.addr)
                index[key] = index.get(key, 0) | (1 << i)
                if (spec.family, spec.mask) not in masks:
                    masks.append((spec.family, spec.mask))
            else:
                always |= 1 << i
        return always, index, tuple(masks)

    @staticmethod
    def _addr_bits(idx, fam, addr):
        bits, index, masks = idx
        for f, m in masks:
            if f == fam:
                bits |= index.get((f, m, addr & m), 0)
        return bits

    def _candidates(self, req):
        """The positions of the rules that may match, ascending; or None
        when there is no index (scan everything)."""
        if not self._indexed:
            return None
        bits = self._addr_bits(self._src, req.src_family, req.src_addr)
        if bits:
            bits &= self._addr_bits(self._dst, req.dst_family, req.dst_addr)
        if bits:
            always, by_port = self._port
            bits &= always | by_port.get(req.port, 0)
        out = []
        while bits:
            low = bits & -bits
            out.append(low.bit_length() - 1)
            bits ^= low
        return out

    @property
    def has_permit(self):
        return any(r.action == PERMIT for r in self.rules)

    def _compile(self, r):
        users = None
        if r.users is not None:
            names, files = set(), []
            for u in r.users:
                if u.startswith("/"):
                    files.append(u)
                else:
                    names.add(u)
            users = (frozenset(names), tuple(files))
        op = PORT_OPS[r.port_op] if r.port_op else None
        return (r, r.src, r.dst, users, op, r.port, r.methods)

    def user_matches(self, users, user, method=None):
        """Is ``user`` in a rule's *= list ``users``?  A GSS-API principal
        (``method`` gssapi) matches by its whole name, ``alice@REALM``, and by
        the name before the realm, ``alice``, for lists that name none."""
        if users is None:
            return True
        if user is None:
            return False
        names, files = users
        short = user.rsplit("@", 1)[0] if method == "gssapi" and "@" in user else None
        if user in names or (short is not None and short in names):
            return True
        for f in files:
            content = self.userfiles.get(f)
            if content is not None and (user in content or (short is not None and short in content)):
                return True
        return False

    def match(self, req, trace=None, user_of=None):
        """Return the first matching Rule, or None (deny).

        ``trace``, when a list, receives every rule examined (test_sockd_conf).
        ``user_of(rule)``, when given, is the user a rule's *= list tests
        (instead of ``req.user``); it may return a NEED_USER instance, which
        match() then returns at once: the caller learns the user and asks
        again."""
        if user_of is not None:
            return self._scan(req, trace, user_of)
        if trace is None and not req.src_names and not req.dst_names:
            key = (req.src_family, req.src_addr, req.dst_family, req.dst_addr, req.port, req.user, req.method)
            memo = self._memo
            hit = memo.get(key, self)
            if hit is not self:
                return hit
            rule = self._scan(req, None)
            if len(memo) >= self.MEMO_SIZE:
                memo.clear()
            memo[key] = rule
            return rule
        return self._scan(req, trace)

    def may_permit(self, src, user, method=None):
        """Could any permit line apply to this client and user, whatever the
        destination?  (A UDP association is granted on this; each datagram
        is then decided on its own.)"""
        fam, addr = src
        for rule, srcspec, _dst, users, _op, _port, methods in self._compiled:
            if rule.action != PERMIT:
                continue
            if srcspec.kind == "net":
                if srcspec.mask and (fam != srcspec.family or (addr & srcspec.mask) != srcspec.addr):
                    continue
            elif srcspec.kind != "all":
                continue
            if methods is not None and method not in methods:
                continue
            if users is not None and not self.user_matches(users, user, method):
                continue
            return rule
        return None

    def _scan(self, req, trace, user_of=None):
        sf, sa, df, da, port, user, method = (req.src_family, req.src_addr, req.dst_family, req.dst_addr,
                                              req.port, req.user, req.method)
        sn, dn = req.src_names, req.dst_names
        compiled = self._compiled
        if trace is None:
            picks = self._candidates(req)
            if picks is not None:
                compiled = [compiled[i] for i in picks]
        for rule, src, dst, users, op, rport, methods in compiled:
            if trace is not None:
                trace.append(rule)
            if src.kind == "net":
                if src.mask and (sf != src.family or (sa & src.mask) != src.addr):
                    continue
            elif not src.match(sf, sa, sn):
                continue
            if dst.kind == "net":
                if dst.mask and (df != dst.family or (da & dst.mask) != dst.addr):
                    continue
            elif not dst.match(df, da, dn):
                continue
            if op is not None and not op(port, rport):
                continue
            if methods is not None and method not in methods:
                continue
            if users is not None:
                u = user if user_of is None else user_of(rule)
                if isinstance(u, _NeedUser):
                    return u
                if not self.user_matches(users, u, method):
                    continue
            return rule
        return None

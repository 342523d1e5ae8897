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

NAMED = ("host", "zone")     # the kinds of AddrSpec that look at names

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

    __slots__ = ("kind", "family", "addr", "mask", "name", "text", "key")

    def __init__(self, kind, family=0, addr=0, mask=0, name=None, text=""):
        self.kind, self.family, self.addr, self.mask, self.name, self.text = kind, family, addr, mask, name, text
        # the Ruleset index's key: (family, mask, network) for an address
        # and mask, None for what the index cannot split on (_build_index)
        self.key = (family, mask, addr) if kind == "net" and mask else None

    @classmethod
    def any(cls):
        return cls("all", text="ALL")

    @property
    def is_any(self):
        return self.kind == "all" or (self.kind == "net" and self.mask == 0)

    @property
    def uses_names(self):
        return self.kind in NAMED

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


ANY = AddrSpec.any()     # a rule's destination when it names none (never changed, as no AddrSpec is)


def ip_literal(text):
    """(version, int) of an IP address literal, exactly as
    ``ipaddress.ip_address`` reads it, or None when it is none.  inet_pton
    first -- it accepts no text that ipaddress refuses, and for IPv4 the
    same texts (tests/unit/test_rules.py checks both) -- at a tenth of the
    cost; ipaddress for what inet_pton leaves (IPv6 scope ids)."""
    try:
        return 4, _from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, ValueError):
        pass
    if ":" not in text:
        return None
    try:
        return 6, _from_bytes(_inet_pton(_AF_INET6, text), "big")
    except (OSError, ValueError):
        pass
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


def cidr(tok):
    """(version, network, mask) of ``ADDRESS/PREFIX`` as
    ``ipaddress.ip_network(tok, strict=False)`` reads it (the host bits
    cleared).  Raises ValueError."""
    addr, _, prefix = tok.partition("/")
    lit = ip_literal(addr) if "%" not in addr else None
    if lit is not None and prefix.isascii() and prefix.isdigit():
        version, n = lit
        bits = 32 if version == 4 else 128
        p = int(prefix)
        if p <= bits:
            mask = ((1 << bits) - 1) ^ ((1 << (bits - p)) - 1)
            return version, n & mask, mask
    net = ipaddress.ip_network(tok, strict=False)       # the other spellings: ADDRESS/NETMASK ...
    return net.version, int(net.network_address), int(net.netmask)


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
            version, addr, mask = cidr(addr_tok)
        except ValueError:
            raise ValueError("bad CIDR address") from None
        return AddrSpec("net", version, addr, mask, text=text)
    ip = ip_literal(addr_tok)
    if ip is not None:
        if mask_tok is None:
            raise ValueError("address without a mask")
        mask = ip_literal(mask_tok)
        if mask is None:
            raise ValueError("bad mask")
        if mask[0] != ip[0]:
            raise ValueError("mask and address are of different families")
        m = mask[1]
        return AddrSpec("net", ip[0], ip[1] & m, m, text=text)
    name = addr_tok.lower().rstrip(".")
    if not valid_hostname(name.lstrip(".")):
        raise ValueError("not an address, a host name or a .zone")
    if mask_tok is not None and ip_literal(mask_tok) is None:
        raise ValueError("bad mask")
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
    return ip_literal(tok) is not None


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
        self.dst = dst or ANY
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
        self._memo = {}
        self._survey()
        self._indexed = len(self.rules) >= self.INDEX_FROM
        self._buckets = None        # the index: built by prepare(), or at the first match that needs it

    INDEX_FROM = 16     # rules; below this a plain scan is cheaper

    def _survey(self):
        """One pass over the lines: each compiled, ``_compiled`` (rule, src,
        dst, users, port test, port, methods), and needs_src_names,
        needs_dst_names, has_users and has_methods set."""
        compiled = self._compiled = []
        src_names = dst_names = has_users = has_methods = False
        for r in self.rules:
            src, dst, users, methods, op = r.src, r.dst, r.users, r.methods, r.port_op
            if users is not None:
                has_users = True
                users = _compiled_users(users)
            if methods is not None:
                has_methods = True
            compiled.append((r, src, dst, users, PORT_OPS[op] if op else None, r.port, methods))
            if src.key is None and src.kind in NAMED:
                src_names = True
            if dst.key is None and dst.kind in NAMED:
                dst_names = True
        self.needs_src_names, self.needs_dst_names = src_names, dst_names
        # Without any *= list no line ever looks at the user, so callers
        # need not supply one (and the decision memo applies).
        self.has_users, self.has_methods = has_users, has_methods

    def prepare(self):
        """Build the index now, if the file is long enough to use one: the
        master calls this before a generation forks, so that its processes
        inherit the index instead of each building its own at its first
        client.  Whoever only reads the file (``sockd -V``, the tools)
        never builds it: a quarter of -V's time for 100,000 lines."""
        if self._indexed and self._buckets is None:
            self._build_index()

    def _build_index(self):
        """An index on source, destination and port, so that a request looks
        only at the lines that could match it.

        A line is filed under (source key, destination key, port key): an
        address-and-mask field's key is (family, mask, network), a field
        the index cannot split on (a name, ALL, a zero mask) None; an "eq"
        port's key is the port, any other port test None.  A request looks
        up every key its addresses could have -- None, and for each mask of
        its family that some line uses, (family, mask, address & mask) --
        and the lists found hold, in file order, every line whose address
        and "eq" fields match it.  Each list is checked in full, up to the
        best line found so far; the lowest full match wins, which is the
        linear scan's answer (tests/unit/test_rules.py checks this against
        the scan for random rule sets).  Built in one pass, O(n) in memory.
        Matters for long rule files (the scan costs ~60 ns a line) and in
        the fork model, where every child would otherwise walk, and so
        copy, all of the master's rule objects.  A field's key is its own
        (AddrSpec.key), and a bucket's masks are noted once, when the
        bucket is made (docs/performance.md section 5).  ``_buckets`` is
        set last: a reader seeing it sees the rest."""
        buckets = {}           # (source key, destination key, port key) -> [positions]
        dst_masks = {}         # source key -> {family: [masks of the destinations filed under it]}
        src_masks = {}         # family -> [masks of the sources]
        permits = {}           # source key -> [positions of the permit lines]: may_permit()
        for i, r in enumerate(self.rules):
            src = r.src
            sk, dk = src.key, r.dst.key
            pk = r.port if r.port_op == "eq" else None
            picks = buckets.get((sk, dk, pk))
            if picks is None:
                # a new bucket: its keys' masks are noted (a key's mask is
                # its own, so once per bucket is enough)
                buckets[(sk, dk, pk)] = [i]
                if sk is not None:
                    _note_mask(src_masks, sk)
                fams = dst_masks.get(sk)
                if fams is None:
                    fams = dst_masks[sk] = {}
                if dk is not None:
                    _note_mask(fams, dk)
            else:
                picks.append(i)
            if r.action == PERMIT and (sk is not None or src.kind in ("all", "net")):
                p = permits.get(sk)
                if p is None:
                    permits[sk] = [i]
                else:
                    p.append(i)
        self._src_masks = {f: tuple(m) for f, m in src_masks.items()}
        shared = {}            # one dict for every source key whose destinations use the same masks
        dsts = {}
        for sk, fams in dst_masks.items():
            t = tuple(sorted((f, tuple(m)) for f, m in fams.items()))
            if t not in shared:
                shared[t] = dict(t)
            dsts[sk] = shared[t]
        self._dst_masks = dsts
        self._permits = permits
        self._buckets = buckets

    def _src_keys(self, fam, addr):
        """The source keys a request from (fam, addr) may be filed under."""
        return [None] + [(fam, m, addr & m) for m in self._src_masks.get(fam, ())]

    def _first(self, req, user_of):
        """The indexed match: the lowest line that matches ``req`` in full,
        or a NEED_USER for the lowest line whose user is not known yet, or
        None (no line: deny)."""
        if self._buckets is None:
            self._build_index()
        sf, sa, df, da, port = req.src_family, req.src_addr, req.dst_family, req.dst_addr, req.port
        buckets, compiled, test = self._buckets, self._compiled, self._test
        best, found = len(compiled), None
        dst_masks = self._dst_masks
        for sk in self._src_keys(sf, sa):
            masks = dst_masks.get(sk)
            if masks is None:
                continue
            for dk in [None] + [(df, m, da & m) for m in masks.get(df, ())]:
                for pk in (None, port):
                    picks = buckets.get((sk, dk, pk))
                    if picks is None:
                        continue
                    for i in picks:
                        if i >= best:
                            break
                        got = test(compiled[i], req, user_of)
                        if got is not None:
                            best, found = i, got
                            break
        return found

    @property
    def has_permit(self):
        return any(r.action == PERMIT for r in self.rules)

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
        is then decided on its own.)  The first such line, or None."""
        compiled, test = self._compiled, self._permit_test
        if not self._indexed:
            for entry in compiled:
                if test(entry, src, user, method):
                    return entry[0]
            return None
        if self._buckets is None:
            self._build_index()
        best = None
        for sk in self._src_keys(src[0], src[1]):
            for i in self._permits.get(sk, ()):
                if best is not None and i >= best:
                    break
                if test(compiled[i], src, user, method):
                    best = i
                    break
        return None if best is None else compiled[best][0]

    def _permit_test(self, entry, src, user, method):
        """Does the compiled line ``entry`` permit this client and user?"""
        rule, srcspec, _dst, users, _op, _port, methods = entry
        if rule.action != PERMIT:
            return False
        fam, addr = src
        if srcspec.kind == "net":
            if srcspec.mask and (fam != srcspec.family or (addr & srcspec.mask) != srcspec.addr):
                return False
        elif srcspec.kind != "all":
            return False
        if methods is not None and method not in methods:
            return False
        return users is None or self.user_matches(users, user, method)

    def _test(self, entry, req, user_of=None):
        """One compiled line against ``req``: its Rule when it matches, a
        NEED_USER when its user is not known yet, else None."""
        rule, src, dst, users, op, rport, methods = entry
        if src.kind == "net":
            if src.mask and (req.src_family != src.family or (req.src_addr & src.mask) != src.addr):
                return None
        elif not src.match(req.src_family, req.src_addr, req.src_names):
            return None
        if dst.kind == "net":
            if dst.mask and (req.dst_family != dst.family or (req.dst_addr & dst.mask) != dst.addr):
                return None
        elif not dst.match(req.dst_family, req.dst_addr, req.dst_names):
            return None
        if op is not None and not op(req.port, rport):
            return None
        if methods is not None and req.method not in methods:
            return None
        if users is not None:
            u = req.user if user_of is None else user_of(rule)
            if isinstance(u, _NeedUser):
                return u
            if not self.user_matches(users, u, req.method):
                return None
        return rule

    def _scan(self, req, trace, user_of=None):
        """The first line that matches ``req`` (a NEED_USER, None): through
        the index, or -- a short file, or a ``trace`` to fill with every
        line examined -- line by line."""
        if trace is None and self._indexed:
            return self._first(req, user_of)
        sf, sa, df, da, port, user, method = (req.src_family, req.src_addr, req.dst_family, req.dst_addr,
                                              req.port, req.user, req.method)
        sn, dn = req.src_names, req.dst_names
        for rule, src, dst, users, op, rport, methods in self._compiled:
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


def _note_mask(masks, key):
    """Note the mask of the index key ``key`` in ``masks`` (family ->
    [masks], each once, in the order first seen)."""
    known = masks.get(key[0])
    if known is None:
        masks[key[0]] = [key[1]]
    elif key[1] not in known:
        known.append(key[1])


def _compiled_users(users):
    """A rule's *= list as the engine tests it: (names, /userfiles)."""
    names, files = set(), []
    for u in users:
        if u.startswith("/"):
            files.append(u)
        else:
            names.add(u)
    return frozenset(names), tuple(files)

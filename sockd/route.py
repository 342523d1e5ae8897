"""The multi-homed route file (classic sockd.route(5)): which local address
to use towards which destinations.

Lines ``if_addr dst_addr dst_mask``, ``#`` comments, first match wins.
dst may be an address and mask, a CIDR, a host name or ``.zone`` (with a
mask that is ignored but, as in the classic file, may be given), or ALL.
The chosen address is the source of CONNECT's outgoing connection and the
listening address of BIND.  Pure: parsing and lookup, no sockets.
"""

import ipaddress

from . import rules as R

MAX_LINE = 1024


class Route:
    __slots__ = ("if_addr", "dst", "file", "line")

    def __init__(self, if_addr, dst, file, line):
        self.if_addr, self.dst, self.file, self.line = if_addr, dst, file, line


class RouteTable:
    def __init__(self, routes, path):
        self.routes = routes
        self.path = path
        self.uses_names = any(r.dst.uses_names for r in routes)

    def lookup(self, family, addr, names=()):
        """The Route for destination (family, int), or None."""
        for r in self.routes:
            if r.dst.match(family, addr, names):
                fam = 6 if ":" in r.if_addr else 4
                if r.dst.kind == "net" and r.dst.mask and fam != family:
                    continue
                if fam != family and r.dst.is_any:
                    continue
                return r
        return None


def parse(text, path="-"):
    """Returns (RouteTable, problems [(file, line, message)])."""
    routes, problems = [], []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if len(raw) > MAX_LINE:
            problems.append((path, lineno, "line longer than %d characters" % MAX_LINE))
            continue
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        try:
            ip = ipaddress.ip_address(tokens[0])
        except ValueError:
            problems.append((path, lineno, "if_addr must be an address of this host (near '%s')" % tokens[0][:60]))
            continue
        rest = tokens[1:]
        if not rest:
            problems.append((path, lineno, "missing dst_addr and dst_mask"))
            continue
        try:
            if "/" in rest[0] or rest[0].upper() == "ALL" and len(rest) == 1:
                dst = R.parse_addr_spec(rest[0])
                extra = rest[1:]
            elif len(rest) >= 2:
                dst = R.parse_addr_spec(rest[0], rest[1])
                extra = rest[2:]
            elif R.looks_like_mask(rest[0]):
                raise ValueError("missing dst_mask")
            else:
                dst = R.parse_addr_spec(rest[0])
                extra = []
        except ValueError as exc:
            problems.append((path, lineno, "%s (near '%s')" % (exc, " ".join(rest)[:60])))
            continue
        if extra:
            problems.append((path, lineno, "unexpected text (near '%s')" % extra[0][:60]))
            continue
        routes.append(Route(ip.compressed, dst, path, lineno))
    return RouteTable(routes, path), problems


def load(path):
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 22).decode("utf-8", "replace")
    except OSError as exc:
        return None, [(path, 0, "Unable to open routing file (%s): %s" % (path, exc.strerror))]
    return parse(text, path)

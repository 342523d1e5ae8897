"""What sockd must know about its own host: its addresses, and which
destinations are private to it (loopback, link-local -- where cloud
metadata services live -- and the host's own addresses).

The parsers of /proc/net/fib_trie and /proc/net/if_inet6 are pure; only
``local_addresses`` reads the files.
"""

import ipaddress

from . import rules as R

LOOPBACK4 = (0x7F000000, 0xFF000000)               # 127.0.0.0/8
LINKLOCAL4 = (0xA9FE0000, 0xFFFF0000)              # 169.254.0.0/16
LINKLOCAL6 = (0xFE80 << 112, 0xFFC0 << 112)        # fe80::/10
LOOPBACK6 = 1                                      # ::1


def parse_fib_trie(text):
    """The host's IPv4 addresses: the "/32 host LOCAL" leaves of fib_trie."""
    out = set()
    prev = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|--"):
            prev = s[3:].strip()
        elif "/32 host LOCAL" in s and prev:
            out.add(prev)
    return out


def parse_if_inet6(text):
    """The host's IPv6 addresses from /proc/net/if_inet6."""
    out = set()
    for line in text.splitlines():
        f = line.split()
        if f and len(f[0]) == 32:
            try:
                out.add(ipaddress.IPv6Address(int(f[0], 16)).compressed)
            except ValueError:
                pass
    return out


def local_addresses():
    """The (family, int) keys of every address of this host."""
    addrs = set()
    for path, parser in (("/proc/net/fib_trie", parse_fib_trie), ("/proc/net/if_inet6", parse_if_inet6)):
        try:
            with open(path) as f:
                addrs |= parser(f.read())
        except OSError:
            pass
    keys = set()
    for a in addrs:
        try:
            keys.add(R.ip_key(a))
        except ValueError:
            pass
    return frozenset(keys)


def is_loopback(key):
    fam, n = key
    if fam == 4:
        return n & LOOPBACK4[1] == LOOPBACK4[0]
    return n == LOOPBACK6


THIS_NETWORK4 = (0x00000000, 0xFF000000)          # 0.0.0.0/8: "this host on this network"


def is_unspecified(key):
    """0.0.0.0/8 or ``::``: never a destination (RFC 1122, 4291).  The
    kernel reads a connect to 0.0.0.0 or ``::`` as "this host", so such a
    destination would reach loopback services past every rule about
    127.0.0.0/8 and ::1."""
    fam, n = key
    if fam == 4:
        return n & THIS_NETWORK4[1] == THIS_NETWORK4[0]
    return n == 0


def is_private(key, own=frozenset()):
    """Loopback, link-local, or one of the host's own addresses."""
    fam, n = key
    if key in own or is_loopback(key):
        return True
    if fam == 4:
        return n & LINKLOCAL4[1] == LINKLOCAL4[0] or n == 0
    return n & LINKLOCAL6[1] == LINKLOCAL6[0] or n == 0
